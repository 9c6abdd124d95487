//! Footprint at scale: the engine with 100, 1,000 and 10,000 workloads against loopback
//! issuers. Reports resident memory per idle workload, idle CPU, and after a mass wake
//! (every token expired during an injected 2-hour sleep) the peak number of concurrent
//! refreshes at one issuer and the time until every workload has refreshed.
//!
//! Memory is RSS growth over the engine's start divided by the number of workloads,
//! measured after `malloc_trim(0)` (what is live) and before it (what glibc still holds
//! from the startup transients: each monitor's first report, the status lists this
//! benchmark polls while waiting).
//!
//! `cargo bench --no-default-features --bench footprint` (env: `FOOTPRINT_SIZES`,
//! default `100,1000,10000`; `FOOTPRINT_IDLE_SECS`, default 60). Linux (/proc).

use std::time::{Duration, Instant, SystemTime};
use tokenwarden::engine::config::Config;
use tokenwarden::engine::store::SecretStore;
use tokenwarden::engine::triggers::Sources;
use tokenwarden::engine::{Clock, Engine, EngineOptions};
use tokenwarden_sim::issuer::{IssuerOptions, SimIssuer};

const ISSUERS: usize = 4;

/// Give freed heap back to the OS, so RSS shows what is live (glibc keeps freed
/// memory of the startup transients, like the status lists polled below).
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of this process, in seconds.
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ
}

struct Row {
    n: usize,
    per_workload_bytes: f64,
    /// Before giving freed startup memory back (what RSS shows until the allocator
    /// reuses it).
    retained_per_workload: f64,
    base_mib: f64,
    idle_cpu_pct: f64,
    peak: u64,
    wake_secs: f64,
}

async fn measure(n: usize, idle: Duration) -> Row {
    let mut issuers = Vec::new();
    for _ in 0..ISSUERS {
        issuers.push(SimIssuer::start(IssuerOptions::default()).await.unwrap());
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let store = SecretStore::memory();
    let mut text = String::with_capacity(n * 200);
    for i in 0..n {
        let iss = &issuers[i % ISSUERS];
        text.push_str(&format!(
            "[[workload]]\nname = \"w{i}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n",
            iss.token_endpoint(),
            iss.client_id()
        ));
        store
            .save_tokens(
                &format!("w{i}"),
                &tokenwarden::demo::stored_tokens(iss.direct_login(&http).await.unwrap()),
            )
            .await
            .unwrap();
    }
    let mut cfg = Config::parse(std::path::Path::new("/footprint/workloads.toml"), &text).unwrap();
    cfg.policy.wake_check_interval = Duration::from_secs(1);
    let clock = Clock::virtual_from(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    trim();
    let base = rss_kib();
    let engine = Engine::start(EngineOptions {
        clock: clock.clone(),
        sources: Sources {
            network: false,
            wake_clock: true,
            logind: false,
        },
        ..EngineOptions::new(cfg, store)
    });
    // Wait until every monitor has loaded its tokens and reported.
    loop {
        let s = engine.status().await.unwrap();
        if s.len() == n && s.iter().all(|w| w.access_token_valid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retained = rss_kib();
    trim();
    let after = rss_kib();
    let retained_per_workload = (retained as f64 - base as f64) * 1024.0 / n as f64;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_cpu_pct = 100.0 * (cpu_secs() - cpu0) / t0.elapsed().as_secs_f64();

    // Mass wake: a 2-hour sleep; every token expired meanwhile.
    let mut rx = engine.subscribe();
    let t1 = Instant::now();
    clock.jump_wall(Duration::from_secs(2 * 3600));
    let mut refreshed = 0;
    while refreshed < n {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Ok(ev)) if ev.refreshed => refreshed += 1,
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(k))) => {
                eprintln!("(lagged {k} events; recounting)");
                refreshed = engine
                    .status()
                    .await
                    .unwrap()
                    .iter()
                    .filter(|w| w.access_token_valid)
                    .count();
            }
            _ => panic!("mass wake did not finish: {refreshed}/{n}"),
        }
    }
    let wake_secs = t1.elapsed().as_secs_f64();
    let peak = issuers
        .iter()
        .map(|i| i.max_concurrent_refreshes())
        .max()
        .unwrap_or(0);
    engine.shutdown().await;
    Row {
        n,
        per_workload_bytes: (after.saturating_sub(base)) as f64 * 1024.0 / n as f64,
        retained_per_workload,
        base_mib: base as f64 / 1024.0,
        idle_cpu_pct,
        peak,
        wake_secs,
    }
}

/// One row per size, each in a fresh process (the benchmark runs itself again with
/// `FOOTPRINT_ROW`): a row measured after a bigger or smaller run would inherit its
/// heap (fragmentation, arenas) and read a few hundred bytes per workload off.
fn main() {
    let sizes: Vec<usize> = std::env::var("FOOTPRINT_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle = Duration::from_secs(
        std::env::var("FOOTPRINT_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    if let Some(n) = std::env::var("FOOTPRINT_ROW")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(measure(n, idle));
        println!(
            "ROW | {} | {:.1} MiB | {:.0} B | {:.0} B | {:.2}% | {} | {:.2} s |",
            r.n,
            r.base_mib,
            r.per_workload_bytes,
            r.retained_per_workload,
            r.idle_cpu_pct,
            r.peak,
            r.wake_secs
        );
        return;
    }
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let mut rows = Vec::new();
    for n in sizes {
        let out = std::process::Command::new(&exe)
            .env("FOOTPRINT_ROW", n.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("the benchmark runs itself");
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find_map(|l| l.strip_prefix("ROW ")) {
            Some(row) if out.status.success() => rows.push(row.to_string()),
            _ => panic!("the row for {n} workloads failed ({}):\n{text}", out.status),
        }
    }
    println!("\nFootprint ({ISSUERS} loopback issuers; idle CPU over {} s; issuer_max_concurrent 8; wake_spread 2 s; each row in a fresh process)\n", idle.as_secs());
    println!("| workloads | process RSS before the engine | engine memory per idle workload (live, after malloc_trim) | same, before malloc_trim | idle CPU | mass wake: peak concurrent refreshes at one issuer | mass wake: all refreshed after |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    // What one more workload costs, with the fixed base taken out: the slope between
    // the two largest sizes.
    let parsed: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let c: Vec<&str> = r.split('|').map(str::trim).collect();
            let n: f64 = c.get(1)?.parse().ok()?;
            let per: f64 = c.get(3)?.trim_end_matches(" B").parse().ok()?;
            Some((n, per))
        })
        .collect();
    if let [.., (n1, p1), (n2, p2)] = parsed[..] {
        let slope = (n2 * p2 - n1 * p1) / (n2 - n1);
        println!("\nmarginal engine memory per idle workload ({n1} -> {n2}, live): {slope:.0} B (target: under 2 KB)");
    }
}
