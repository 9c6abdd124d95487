//! Footprint of the desktop app, measured on the real binary (run by
//! `scripts/measure-desktop.sh`, which builds it in release mode and provides Xvfb and
//! a private bus). Ignored in the normal suite: it takes over a minute by design.
//!
//! Prints: cold start to tray icon exported on D-Bus, idle CPU over 60 s with 10
//! running workloads (app + WebKit child processes), resident memory (RSS and PSS,
//! whole process tree) with the window open, after it is closed, and when started
//! hidden as the start-at-login entry does (the window never opened).
#![cfg(feature = "desktop")]

use crate::support;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokenwarden::engine::config::Config;
use tokenwarden::engine::oauth;
use tokenwarden::engine::store::{FileBackend, SecretStore};
use tokenwarden_sim::issuer::{IssuerOptions, SimIssuer};

const WORKLOADS: usize = 10;

/// The user the app runs as: run as root, the app could page out the system's
/// libraries (src-tauri/pageout.rs), which a user's app cannot, so it runs as `nobody`
/// unless `MEASURE_AS_ROOT=1`.
fn as_nobody() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::env::var_os("MEASURE_AS_ROOT").is_none_or(|v| v != "1")
}

const NOBODY: u32 = 65534;

/// Start the app (the desktop build of this crate's binary) on `config_dir`.
fn launch(args: &[&str], display: &str, config_dir: &Path) -> std::process::Child {
    let mut cmd = if as_nobody() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "--",
            env!("CARGO_BIN_EXE_tokenwarden"),
        ]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_tokenwarden"))
    };
    // A home of its own, as a user's session has (the tray writes its icon under the
    // runtime dir; the session's own dirs belong to whoever started it).
    let home = config_dir.join("home");
    cmd.args(args)
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("DISPLAY", display)
        .env("TOKENWARDEN_CONFIG_DIR", config_dir)
        .env("TOKENWARDEN_LOG_DIR", config_dir.join("logs"))
        .env("RUST_LOG", "info")
        .env("NO_AT_BRIDGE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let f = t.path().join("children");
                for c in std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    if let Ok(c) = c.parse() {
                        if !out.contains(&c) {
                            out.push(c);
                        }
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// utime + stime of the whole tree, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    children(pid)
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

/// (RSS, PSS) of the whole tree in KiB, with the per-process breakdown.
fn memory(pid: u32) -> (u64, u64, Vec<String>) {
    let mut rss = 0;
    let mut pss = 0;
    let mut parts = Vec::new();
    for p in children(pid) {
        let roll = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        let field = |k: &str| {
            roll.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (r, s) = (field("Rss:"), field("Pss:"));
        let shared = field("Shared_Clean:") + field("Shared_Dirty:");
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        parts.push(format!(
            "{}({p}) rss {} MiB (shared with other processes {} MiB)",
            comm.trim(),
            r / 1024,
            shared / 1024
        ));
        rss += r;
        pss += s;
    }
    (rss, pss, parts)
}

fn py(script: &str, args: &[&str], display: &str) -> (bool, String) {
    let out = Command::new("/usr/bin/python3")
        .arg(root().join("tests/desktop").join(script))
        .args(args)
        .env("DISPLAY", display)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Sign a workload in the way the demo does: the real code flow, the test playing the
/// signed-in browser.
async fn login(cfg: &Config, name: &str, store: &SecretStore) {
    let w = cfg.workload(name).unwrap();
    let http = oauth::http_client(&cfg.policy, None).unwrap();
    let pending = oauth::prepare_login(w).await.unwrap();
    let url = pending.authorize_url.to_string();
    let browser = tokio::spawn(async move {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
    });
    let tokens = pending
        .finish(&http, &cfg.policy, Duration::from_secs(10))
        .await
        .unwrap();
    let _ = browser.await;
    store.save_tokens(name, &tokens).await.unwrap();
}

fn kib(k: u64) -> String {
    format!("{:.1} MB", k as f64 * 1024.0 / 1_000_000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run scripts/measure-desktop.sh"]
async fn measure_desktop_footprint() {
    let display = std::env::var("TOKENWARDEN_TEST_DISPLAY")
        .or_else(|_| std::env::var("DISPLAY"))
        .expect("a display (scripts/measure-desktop.sh provides Xvfb)");
    let idle_secs: u64 = std::env::var("MEASURE_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let issuer = SimIssuer::start(IssuerOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("[secrets]\nstore = \"file\"\n\n");
    for i in 0..WORKLOADS {
        text.push_str(&format!(
            "[[workload]]\nname = \"w{i}\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n\n",
            issuer.authorization_endpoint(),
            issuer.token_endpoint(),
            issuer.client_id()
        ));
    }
    let path = dir.path().join("workloads.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::parse(&path, &text).unwrap();
    let store = SecretStore::new(FileBackend::new(dir.path().join("secrets")));
    for i in 0..WORKLOADS {
        login(&cfg, &format!("w{i}"), &store).await;
    }
    for d in ["run", "cache", "config", "data"] {
        std::fs::create_dir_all(dir.path().join("home").join(d)).unwrap();
    }
    std::fs::set_permissions(
        dir.path().join("home/run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    if as_nobody() {
        let ok = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown of the config dir");
    }

    let started = Instant::now();
    let mut child = launch(&[], &display, dir.path());
    let pid = child.id();
    let tray_after = loop {
        let (ok, out) = py("tray.py", &[&pid.to_string(), "layout"], &display);
        if ok && out.contains("All 10 workloads running") {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no tray icon: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let window_after = loop {
        let (_, n) = py("xclose.py", &[&pid.to_string(), "count"], &display);
        if n == "1" {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no window");
        std::thread::sleep(Duration::from_millis(20));
    };
    tokio::time::sleep(Duration::from_secs(5)).await; // let the webview settle
    let (rss_open, pss_open, parts_open) = memory(pid);

    let refreshes_before = issuer.refresh_requests();
    let hz = 100.0; // USER_HZ on Linux
    let t0 = cpu_ticks(pid);
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let cpu_open = (cpu_ticks(pid) - t0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;

    let (_, closed) = py("xclose.py", &[&pid.to_string(), "close"], &display);
    assert_eq!(closed, "1");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss_closed, pss_closed, parts_closed) = memory(pid);
    let t1 = cpu_ticks(pid);
    let w1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let cpu_closed = (cpu_ticks(pid) - t1) as f64 / hz / w1.elapsed().as_secs_f64() * 100.0;
    // Again at the end of the idle window: what stays resident while the tray app runs.
    let (rss_closed_idle, pss_closed_idle, parts_closed_idle) = memory(pid);
    let refreshes = issuer.refresh_requests() - refreshes_before;

    let _ = py("tray.py", &[&pid.to_string(), "click", "Quit"], &display);
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_tokenwarden"));
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    let window_bin = Path::new(support::window_bin());
    let window_size = std::fs::metadata(window_bin).map(|m| m.len()).unwrap_or(0);

    // As the start-at-login entry starts it: `--hidden`, the window never opened.
    let mut hidden = launch(&["--hidden"], &display, dir.path());
    let hpid = hidden.id();
    let t2 = Instant::now();
    loop {
        let (ok, out) = py("tray.py", &[&hpid.to_string(), "layout"], &display);
        if ok && out.contains("All 10 workloads running") {
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(30),
            "no tray icon: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_hidden, pss_hidden, parts_hidden) = memory(hpid);
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (rss_hidden_idle, pss_hidden_idle, _) = memory(hpid);
    let (_, windows) = py("xclose.py", &[&hpid.to_string(), "count"], &display);
    let _ = py("tray.py", &[&hpid.to_string(), "click", "Quit"], &display);
    let deadline = Instant::now() + Duration::from_secs(15);
    let hidden_code = loop {
        if let Some(s) = hidden.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = hidden.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let euid = if as_nobody() {
        NOBODY
    } else {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    };
    println!(
        "\n| measurement ({WORKLOADS} workloads, {idle_secs} s idle windows, the app as uid {euid}) | value | target |"
    );
    println!("|---|---|---|");
    println!(
        "| cold start → tray icon on D-Bus | {:.2} s | < 1.5 s |",
        tray_after.as_secs_f64()
    );
    println!(
        "| cold start → window mapped | {:.2} s | |",
        window_after.as_secs_f64()
    );
    println!("| idle CPU, window open | {cpu_open:.2} % of one core | < 0.5 % |");
    println!("| idle CPU, window closed | {cpu_closed:.2} % of one core | < 0.5 % |");
    println!(
        "| memory, window open (RSS sum / PSS) | {} / {} | < 150 MB |",
        kib(rss_open),
        kib(pss_open)
    );
    println!(
        "| memory, window closed 10 s before (RSS sum / PSS) | {} / {} | < 60 MB |",
        kib(rss_closed),
        kib(pss_closed)
    );
    println!(
        "| memory, window closed, after {idle_secs} s idle (RSS sum / PSS) | {} / {} | < 60 MB |",
        kib(rss_closed_idle),
        kib(pss_closed_idle)
    );
    println!(
        "| memory, started hidden (at login), window never opened, 5 s after the tray (RSS sum / PSS) | {} / {} | < 60 MB |",
        kib(rss_hidden),
        kib(pss_hidden)
    );
    println!(
        "| memory, started hidden, after {idle_secs} s more idle (RSS sum / PSS) | {} / {} | < 60 MB |",
        kib(rss_hidden_idle),
        kib(pss_hidden_idle)
    );
    println!(
        "| binaries: the app `{}` / the window `{}` | {:.1} / {:.1} MB | |",
        bin.display(),
        window_bin.display(),
        size as f64 / 1e6,
        window_size as f64 / 1e6
    );
    println!("| refreshes at the issuer while idle | {refreshes} | (1 h tokens: 0 expected) |");
    println!("| exit code after tray Quit | {code:?} | Some(0) |");
    if euid == 0 {
        println!(
            "\nNote: run as root, the app may page out the system's libraries (src-tauri/pageout.rs); \
             as a normal user those pages stay resident (docs/footprint.md)."
        );
    }
    println!("\nprocesses, window open:  {}", parts_open.join(", "));
    println!("processes, window closed: {}", parts_closed.join(", "));
    println!(
        "processes, window closed, after the idle window: {}",
        parts_closed_idle.join(", ")
    );
    println!("processes, started hidden: {}", parts_hidden.join(", "));
    assert_eq!(code, Some(0), "Quit from the tray exits 0");
    assert_eq!(windows, "0", "--hidden opens no window");
    assert_eq!(
        hidden_code,
        Some(0),
        "Quit from the tray exits 0 (hidden start)"
    );
}
