//! The real binary, as a user runs it: `tokenwarden daemon` in one shell, the CLI in
//! another, against a loopback issuer. Secret store: the opt-in file store (the
//! keychain is covered by `keychain.rs`), so these tests need no D-Bus.

use crate::support;

use std::time::Duration;
use support::*;
use tokenwarden::control::Request;
use tokenwarden::engine::store::{config_dir_key, FileBackend, SecretStore};
use tokenwarden::engine::Status;
use tokenwarden::protocol::{ErrorCode, UiCommand};

async fn env_with(test: &str, issuer: &SimIssuer, names: &[&str]) -> TestEnv {
    let env = TestEnv::new(test);
    let mut cfg = file_store_header();
    for n in names {
        cfg.push_str(&workload_toml(n, issuer));
    }
    env.write_config(&cfg);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_status_json_as_a_user_sees_them() {
    let issuer = issuer(issuer_opts(3)).await;
    let env = env_with("status_json", &issuer, &["alpha", "beta"]).await;
    env.start_daemon().await;

    // Not logged in yet: unauthenticated with a hint, through the CLI.
    let out = env.run(&["status", "--json"]);
    assert!(out.ok(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    for o in arr {
        for key in [
            "name",
            "status",
            "reason",
            "since",
            "next_attempt_at",
            "access_token_expires_at",
            "gives_up_at",
            "local_url",
        ] {
            assert!(o.get(key).is_some(), "missing {key} in {o}");
        }
        assert_eq!(o["status"], "unauthenticated");
        assert_eq!(o["reason"], "not logged in");
    }

    // Log in while the daemon runs: the URL is printed on stdout, exit 0 once stored.
    let login = env.login("alpha").await;
    assert!(login.ok(), "{login:?}");
    assert!(
        login.stdout.contains("code_challenge_method=S256"),
        "{}",
        login.stdout
    );
    assert!(login.stdout.contains("state="), "{}", login.stdout);
    env.wait_status("alpha", Status::Running, Duration::from_secs(10))
        .await;

    // A WAF block longer than the short retry: retrying with the cause in the reason.
    issuer.set_mode(Mode::Waf403);
    env.wait_status("alpha", Status::Retrying, Duration::from_secs(15))
        .await;
    let out = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let a = v
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "alpha")
        .unwrap()
        .clone();
    assert_eq!(a["status"], "retrying");
    assert!(a["reason"].as_str().unwrap().starts_with("HTTP 403"), "{a}");
    for key in [
        "since",
        "next_attempt_at",
        "access_token_expires_at",
        "gives_up_at",
    ] {
        let s = a[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} should be set: {a}"));
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    }
    let human = env.run(&["status"]);
    let mut lines = human.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS") && header.contains("(times: UTC"),
        "{human:?}"
    );
    let alpha = lines.find(|l| l.starts_with("alpha")).unwrap_or_default();
    assert!(alpha.contains("retrying"), "{human:?}");
    assert!(
        !alpha.contains('\x1b'),
        "no colour codes off a terminal: {alpha:?}"
    );

    issuer.set_mode(Mode::Healthy);
    env.wait_for("alpha", Duration::from_secs(10), |w| {
        w.status == Status::Running && w.attempts == 0
    })
    .await;

    // `retry` and `token` through the daemon.
    assert!(env.run(&["retry", "alpha"]).ok());
    assert!(env.run(&["retry", "--all"]).ok());
    let tok = env.run(&["token", "alpha"]);
    assert!(tok.ok(), "{tok:?}");
    assert!(issuer.is_valid_access_token(tok.stdout.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_retry_and_token_calls_make_one_refresh_at_a_time() {
    let issuer = issuer(IssuerOptions {
        refresh_delay: Duration::from_millis(150),
        strict_rotation: true,
        ..issuer_opts(30)
    })
    .await;
    let env = env_with("single_flight", &issuer, &["w"]).await;
    env.start_daemon().await;
    assert!(env.login("w").await.ok());
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;

    let before = issuer.refresh_requests();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let paths = env.paths();
        tasks.push(tokio::spawn(async move {
            let mut c = tokenwarden::control::Client::connect(&paths)
                .await
                .unwrap()
                .unwrap();
            let req = if i % 2 == 0 {
                Request::Retry {
                    name: Some("w".into()),
                }
            } else {
                Request::Token { name: "w".into() }
            };
            c.call(&req).await.map(|v| (i, v))
        }));
    }
    for t in tasks {
        let (i, v) = t.await.unwrap().expect("every call succeeds");
        if i % 2 == 1 {
            let tok = v["access_token"].as_str().unwrap();
            assert!(tok.starts_with("sim_at_"));
        }
    }
    env.wait_for("w", Duration::from_secs(10), |w| {
        w.status == Status::Running && w.attempts == 0
    })
    .await;
    // Let any refresh that the last "retry" started finish.
    let settle = std::time::Instant::now();
    while issuer.refreshes_in_flight() > 0 && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(issuer.max_concurrent_refreshes(), 1, "single flight");
    assert!(issuer.refresh_requests() > before);
    let st = env.status().await.remove(0);
    assert_eq!(st.status, Status::Running);
    assert!(
        st.reason.is_none(),
        "no invalid_grant or other error: {st:?}"
    );
    // The stored refresh token is the current one.
    let tok = env.run(&["token", "w"]);
    assert!(issuer.is_valid_access_token(tok.stdout.trim()));
}

/// Wait for the next successful refresh reported by the daemon.
async fn next_refresh(env: &TestEnv) {
    let c = env.client().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(c.watch(move |ev: tokenwarden::engine::StatusChange| {
        if ev.refreshed {
            let _ = tx.send(());
        }
    }));
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a refresh")
        .unwrap();
    watcher.abort();
}

/// SIGKILL at random moments between refreshes (strict rotation: every refresh
/// invalidates the previous refresh token), restart, and the chain must go on.
/// A kill inside the refresh itself (after the issuer rotated, before the store
/// write finished) is the one window the design cannot close; it is measured by the
/// crash campaign, not here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_restart_resumes_from_the_stored_refresh_token() {
    let issuer = issuer(IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(1)
    })
    .await;
    let env = env_with("sigkill", &issuer, &["w"]).await;
    env.start_daemon().await;
    assert!(env.login("w").await.ok());
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    for _ in 0..3 {
        // A 1 s token is refreshed about every 0.8 s.
        next_refresh(&env).await;
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 400)).await;
        env.kill_daemons();
        env.start_daemon().await;
        next_refresh(&env).await;
        let st = env.status().await.remove(0);
        assert_eq!(st.status, Status::Running, "{st:?}");
        assert!(st.reason.is_none(), "{st:?}");
    }
    let tok = env.run(&["token", "w"]);
    assert!(tok.ok(), "{tok:?}");
    assert!(issuer.is_valid_access_token(tok.stdout.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_per_config_dir() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("single_instance", &issuer, &["w"]).await;
    let pid = env.start_daemon().await;
    let second = env.run(&["daemon"]);
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(second.stderr.contains("already runs"), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!("pid {pid}")),
        "{}",
        second.stderr
    );
    // The desktop app started on its config dir asks it to hand over; a daemon has no
    // window, so the app says a daemon runs there (no display is opened, none waited for).
    let app = env
        .command(&[])
        .env("DISPLAY", ":99")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&app.stderr);
    assert_eq!(app.status.code(), Some(1), "{said}");
    assert!(
        said.contains("already runs for") && said.contains(&format!("pid {pid}")),
        "{said}"
    );
    assert!(
        !said.contains("does not answer"),
        "the daemon answered: {said}"
    );
    // A daemon has no window: the window's requests, and the window's program, are
    // refused.
    let err = env
        .client()
        .await
        .call(&Request::Ui(UiCommand::ListStatus {}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoWindow, "{err:?}");
    #[cfg(feature = "desktop")]
    {
        let window = env.run_of(support::window_bin(), &[]);
        assert_eq!(window.code, Some(1), "{window:?}");
        // the daemon's answer
        let why = "this is `tokenwarden daemon`, which has no window";
        assert!(window.stderr.contains(why), "{}", window.stderr);
    }
}

/// The control socket speaks one protocol version: the real daemon refuses a client of
/// another version (or of none: from before the hello) with both versions named, and
/// the CLI and the window's program refuse a Tokenwarden of another version the same
/// way (the window with the exit status the app turns into "restart Tokenwarden").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_refused_naming_both() {
    use tokenwarden::protocol::{local, PROTOCOL_VERSION};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("protocol_version", &issuer, &["w"]).await;
    let pid = env.start_daemon().await;
    let paths = env.paths();
    let first_answer = |line: String| {
        let socket = paths.socket.clone();
        async move {
            let s = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(line.as_bytes()).await.unwrap();
            let mut r = tokio::io::BufReader::new(r);
            let mut got = String::new();
            r.read_line(&mut got).await.unwrap();
            let mut more = String::new();
            let closed = r.read_line(&mut more).await.unwrap() == 0;
            assert!(closed, "the connection stays open after a refusal: {more}");
            serde_json::from_str::<serde_json::Value>(&got).unwrap()
        }
    };
    let newer = PROTOCOL_VERSION + 1;
    let got = first_answer(format!(
        "{{\"cmd\":\"hello\",\"version\":{newer},\"client\":\"tokenwarden-window\"}}\n{{\"cmd\":\"status\"}}\n"
    ))
    .await;
    assert_eq!(got["error"]["code"], "version_mismatch", "{got}");
    let message = got["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "tokenwarden-window speaks control protocol version {newer}"
        )) && message.contains(&format!("(pid {pid}) speaks version {PROTOCOL_VERSION}")),
        "{message}"
    );
    // A client from before the hello: its request is not served.
    let got = first_answer("{\"cmd\":\"token\",\"name\":\"w\"}\n".into()).await;
    assert_eq!(got["error"]["code"], "version_mismatch", "{got}");
    assert!(got.get("ok").is_none(), "{got}");
    // This version's client is served.
    assert!(env.client().await.call(&Request::Ping).await.is_ok());
    env.stop_daemons();

    // A Tokenwarden of another version (the protocol's own server side, answering its
    // hello as version PROTOCOL_VERSION + 1) on the config dir's socket.
    let mut listener = local::Listener::bind(&paths.config_dir).unwrap();
    let server = tokio::spawn(async move {
        while let Ok(local::Accepted::Client(mut c, _)) = listener.accept().await {
            let _ = c.handshake(newer, "tokenwarden 9.9.9 (pid 1)").await;
        }
    });
    let status = env.run(&["status"]);
    assert_eq!(status.code, Some(1), "{status:?}");
    for want in [
        format!("speaks control protocol version {PROTOCOL_VERSION}"),
        format!("tokenwarden 9.9.9 (pid 1) speaks version {newer}"),
    ] {
        assert!(status.stderr.contains(&want), "{want:?}: {}", status.stderr);
    }
    #[cfg(feature = "desktop")]
    {
        let window = env.run_of(support::window_bin(), &[]);
        assert_eq!(
            window.code,
            Some(tokenwarden::protocol::EXIT_VERSION_MISMATCH.into()),
            "{window:?}"
        );
        assert!(
            window.stderr.contains(&format!("speaks version {newer}"))
                && window
                    .stderr
                    .contains(&format!("version {PROTOCOL_VERSION}")),
            "{}",
            window.stderr
        );
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_give_a_clear_error_and_non_zero_exit() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("unknown_names", &issuer, &["w"]).await;
    for args in [
        vec!["login", "nope", "--no-browser"],
        vec!["logout", "nope"],
        vec!["remove", "nope"],
        vec!["token", "nope"],
    ] {
        let out = env.run(&args);
        assert_ne!(out.code, Some(0), "{args:?}");
        assert!(out.stderr.contains("nope"), "{args:?}: {}", out.stderr);
    }
    env.start_daemon().await;
    for args in [vec!["retry", "nope"], vec!["token", "nope"]] {
        let out = env.run(&args);
        assert_eq!(out.code, Some(1), "{args:?}");
        assert!(
            out.stderr.contains("no workload named `nope`"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_is_reported_with_file_and_line_and_left_untouched() {
    let env = TestEnv::new("broken_config");
    let broken = "[secrets]\nstore = \"file\"\n\n[[workload]]\nname = \"w\"\ntoken_endpoint = \"http://auth.example/token\"\nclient_id = \"c\"\n";
    env.write_config(broken);
    let out = env.run(&["daemon"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let want = format!("{}:6:", env.config_file().display());
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(out.stderr.contains("allow_http"), "{}", out.stderr);
    let add = env.run(&[
        "add",
        "x",
        "--token-endpoint",
        "https://a.example/t",
        "--client-id",
        "c",
        "--no-login",
    ]);
    assert_eq!(add.code, Some(2), "{add:?}");
    assert_eq!(read(&env.config_file()), broken, "left untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_list_remove_while_the_daemon_runs() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("add_remove", &issuer, &[]).await;
    env.start_daemon().await;
    let add = env.run(&[
        "add",
        "new",
        "--token-endpoint",
        &issuer.token_endpoint(),
        "--authorization-endpoint",
        &issuer.authorization_endpoint(),
        "--client-id",
        issuer.client_id(),
        "--scope",
        "read",
        "--no-login",
    ]);
    assert!(add.ok(), "{add:?}");
    let list = env.run(&["list"]);
    assert!(list.stdout.starts_with("new\t"), "{list:?}");
    env.wait_status("new", Status::Unauthenticated, Duration::from_secs(5))
        .await;
    assert!(env.login("new").await.ok());
    env.wait_status("new", Status::Running, Duration::from_secs(10))
        .await;
    let logout = env.run(&["logout", "new"]);
    assert!(logout.ok(), "{logout:?}");
    env.wait_for("new", Duration::from_secs(5), |w| {
        w.reason.as_deref() == Some("signed out")
    })
    .await;
    // A policy override that cannot be used is refused before the file changes.
    let before = read(&env.config_file());
    let bad = env
        .command(&["remove", "new"])
        .env("TOKENWARDEN_REFRESH_MAX_TRIES", "many")
        .output()
        .unwrap();
    assert!(!bad.status.success(), "{bad:?}");
    assert_eq!(read(&env.config_file()), before);
    let rm = env.run(&["remove", "new"]);
    assert!(rm.ok(), "{rm:?}");
    assert!(env.status().await.is_empty());
    assert!(!read(&env.config_file()).contains("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_times_out_with_a_clear_message() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("login_timeout", &issuer, &["w"]).await;
    let out = env.run(&["login", "w", "--no-browser", "--timeout", "300ms"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.starts_with("http://127.0.0.1:"),
        "URL on stdout: {out:?}"
    );
    assert!(
        out.stderr.contains("no browser callback within"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_listening_when_no_browser_can_be_started() {
    use std::io::BufRead;
    let issuer = issuer(issuer_opts(30)).await;
    let mut env = env_with("login_no_browser_starts", &issuer, &["w"]).await;
    let missing = env.dir.path().join("no-such-browser");
    env.extra_env
        .push(("TOKENWARDEN_BROWSER".into(), missing.display().to_string()));
    let mut child = env
        .command(&["login", "w", "--timeout", "20s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // What it says up to the address, then the rest (kept for the secret scan).
    let (said_tx, said_rx) = tokio::sync::oneshot::channel();
    let log = log_dir(&env.test).join("login.stderr");
    let reader = std::thread::spawn(move || {
        let mut said = String::new();
        let mut said_tx = Some(said_tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            said.push_str(&line);
            said.push('\n');
            if line.starts_with("http") {
                if let Some(tx) = said_tx.take() {
                    let _ = tx.send(said.clone());
                }
            }
        }
        std::fs::write(log, &said).unwrap();
        said
    });
    let said = said_rx.await.expect("the address is printed");
    assert!(
        said.contains("Could not open a browser")
            && said.contains("no-such-browser")
            && said.contains("Open this address yourself"),
        "{said}"
    );
    let url = said.lines().find(|l| l.starts_with("http")).unwrap();
    assert!(url.starts_with(&issuer.authorization_endpoint()), "{url}");
    // The listener is still there: opening the address by hand signs in.
    assert_eq!(browse(url).await, 200);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let said = reader.join().unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("Signed in"), "{said}");
    assert_eq!(issuer.code_exchanges(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_a_daemon_refreshes_and_saves_before_printing() {
    let issuer = issuer(IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(1)
    })
    .await;
    let env = env_with("token_offline", &issuer, &["w"]).await;
    assert!(env.login("w").await.ok());
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the 1 s token expire
    let n = issuer.refresh_requests();
    let t1 = env.run(&["token", "w"]);
    assert!(t1.ok(), "{t1:?}");
    assert_eq!(issuer.refresh_requests(), n + 1);
    assert!(issuer.is_valid_access_token(t1.stdout.trim()));
    // The rotated refresh token was saved: the next refresh works too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t2 = env.run(&["token", "w"]);
    assert!(t2.ok(), "{t2:?}");
    assert_ne!(t1.stdout, t2.stdout);
}

/// `tokenwarden demo --terminal`, as a newcomer runs it: it prints the local address
/// of the demo workload that fronts a (fake) remote MCP server; a client with no
/// token gets through it, also while the issuer is down (the token is still valid),
/// and `q` ends the demo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_demo_serves_its_remote_through_the_local_proxy() {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let env = TestEnv::new("terminal_demo");
    let stderr = std::fs::File::create(log_dir("terminal_demo").join("demo.stderr")).unwrap();
    let mut child = env
        .command(&["demo", "--terminal"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn the demo");
    let mut stdin = child.stdin.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo prints its proxy address");
        if let Some(rest) = line.split("curl ").nth(1) {
            break rest.trim().to_string();
        }
    };
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"),
        "{url}"
    );
    let http = reqwest::Client::new();
    let get = || async {
        let r = http.get(&url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    let (code, body) = get().await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"authorization_seen\":true"), "{body}");

    writeln!(stdin, "d").unwrap();
    loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if line.starts_with("issuer: Down") {
            break;
        }
    }
    let (code, body) = get().await;
    assert_eq!(code, 200, "served while the token is valid: {body}");

    writeln!(stdin, "q").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not quit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

/// SIGTERM (what a service manager, a logout or `kill` sends) and wait, a bounded
/// time, for the process to end.
async fn terminate(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child, not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {within:?} after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The terminal demo stops cleanly on SIGTERM as on Ctrl-C: exit 0, its throwaway
/// config dir removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_demo_stops_cleanly_on_sigterm() {
    use std::io::BufRead;
    use std::process::Stdio;
    let env = TestEnv::new("terminal_demo_sigterm");
    let stderr =
        std::fs::File::create(log_dir("terminal_demo_sigterm").join("demo.stderr")).unwrap();
    let mut child = env
        .command(&["demo", "--terminal"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn the demo");
    let _stdin = child.stdin.take().unwrap(); // kept open: the demo reads keys
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let dir = loop {
        let line = lines
            .next()
            .expect("the demo names its config dir")
            .unwrap();
        if let Some(rest) = line.split("--config-dir ").nth(1) {
            break std::path::PathBuf::from(rest.trim_end_matches(" status").trim());
        }
    };
    let paths = tokenwarden::paths::Paths::resolve(Some(dir.clone())).unwrap();
    let mut c = tokenwarden::control::Client::connect(&paths)
        .await
        .unwrap()
        .expect("the demo's control socket listens");
    c.call(&Request::Ping).await.unwrap();
    std::thread::spawn(move || lines.for_each(drop));

    let status = terminate(&mut child, Duration::from_secs(20)).await;
    assert!(status.success(), "a clean stop on SIGTERM: {status}");
    assert!(!dir.exists(), "the demo's dir {} is removed", dir.display());
}

/// The desktop app stops cleanly on SIGTERM also where its display cannot be opened
/// (it then runs without window and tray; the signal arrives while it still tries,
/// about ten seconds): exit 0, the state file written, the control socket gone, the
/// lock free.
#[cfg(feature = "desktop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_app_stops_cleanly_on_sigterm_without_a_usable_display() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("desktop_sigterm", &issuer, &["alpha"]).await;
    let stderr = std::fs::File::create(log_dir("desktop_sigterm").join("app.stderr")).unwrap();
    let mut child = env
        .command(&["--hidden"])
        // A display that names no server: GTK cannot open it.
        .env("DISPLAY", "tokenwarden-test-no-such-host:79")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn the app");
    let paths = env.paths();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(mut c)) = tokenwarden::control::Client::connect(&paths).await {
            if c.call(&Request::Ping).await.is_ok() {
                break;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the app exited early");
        assert!(
            std::time::Instant::now() < deadline,
            "the app did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Signed in through the app (so its state file has something to say).
    let login = env.login("alpha").await;
    assert!(login.ok(), "{login:?}");
    env.wait_status("alpha", Status::Running, Duration::from_secs(10))
        .await;

    let status = terminate(&mut child, Duration::from_secs(40)).await;
    assert!(status.success(), "a clean stop on SIGTERM: {status}");
    let state = std::fs::read_to_string(&paths.state_file).unwrap_or_default();
    assert!(state.contains("\"alpha\""), "state file written: {state}");
    assert!(!paths.socket.exists(), "the control socket is removed");
    tokenwarden::instance::acquire_lock(&paths).expect("the lock is free");
}

/// Hand edits of workloads.toml reach the running daemon: a table added by hand
/// starts; a broken edit is reported in the log with its line while the running
/// configuration stays and the file is left as written; fixing it applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_of_the_config_apply_while_the_daemon_runs() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("hand_edits", &issuer, &["a"]).await;
    env.start_daemon().await;
    env.wait_status("a", Status::Unauthenticated, Duration::from_secs(5))
        .await;

    let with_b = format!(
        "{}{}",
        read(&env.config_file()),
        workload_toml("b", &issuer)
    );
    env.write_config(&with_b);
    env.wait_status("b", Status::Unauthenticated, Duration::from_secs(10))
        .await;

    let broken = format!("{with_b}\n[[workload]]\nname = \"c\"\ntoken_endpoint = 42\n");
    let line = broken.lines().count();
    env.write_config(&broken);
    let want = format!("workloads.toml:{line}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = std::fs::read_dir(log_dir("hand_edits"))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<String>();
        if logs.contains("cannot be used") && logs.contains(&want) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broken edit is reported with {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = env.status().await.into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["a", "b"], "the running configuration stays");
    assert_eq!(
        read(&env.config_file()),
        broken,
        "the file is left as written"
    );

    // Fixed, and `a` removed by hand: applied.
    env.write_config(&format!(
        "{}{}",
        file_store_header(),
        workload_toml("b", &issuer)
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = env.status().await.into_iter().map(|w| w.name).collect();
        if names == ["b"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The proxy port the daemon chose and wrote back, lost when an editor saves a copy of
/// the file from before: the workload keeps its port (no restart, clients keep
/// working) and the port is written back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_port_lost_by_an_edit_is_kept() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = TestEnv::new("port_kept");
    let before = format!(
        "{}{}\nurl = \"http://127.0.0.1:9/mcp\"\n",
        file_store_header(),
        workload_toml("r", &issuer).trim_end()
    );
    env.write_config(&before);
    env.start_daemon().await;
    let first = env
        .wait_for("r", Duration::from_secs(10), |w| w.local_url.is_some())
        .await
        .local_url
        .unwrap();
    let port = first
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !read(&env.config_file()).contains(&format!("listen_port = {port}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the port is written back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The editor's older copy, without the port, plus an unrelated comment.
    env.write_config(&format!("# edited\n{before}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = read(&env.config_file());
        if text.starts_with("# edited") && text.contains(&format!("listen_port = {port}")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the port is written back again: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = env.status().await;
    assert_eq!(
        now[0].local_url.as_deref(),
        Some(first.as_str()),
        "same port"
    );
}

/// Everything the daemons of `env` wrote to stderr so far (a test reading them starts
/// with [`forget_daemon_logs`], so an earlier run's logs in the same dir do not count).
fn forget_daemon_logs(env: &TestEnv) {
    for e in std::fs::read_dir(log_dir(&env.test)).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("daemon-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn daemon_logs(env: &TestEnv) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(log_dir(&env.test)).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("daemon-") {
            all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    all
}

/// The control socket serves only its user, even when the modes of its directory and
/// file were loosened by hand; a token handed out is logged with the taker's pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_serves_only_its_user_and_logs_who_took_a_token() {
    if !gate::root("control_socket_serves_only_its_user") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let issuer = issuer(issuer_opts(60)).await;
    let env = env_with("control_only_owner", &issuer, &["w"]).await;
    forget_daemon_logs(&env);
    env.start_daemon().await;
    assert!(env.login("w").await.ok());
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    let t = env.run(&["token", "w"]);
    assert!(t.ok(), "{t:?}");
    let logs = daemon_logs(&env);
    let line = logs
        .lines()
        .find(|l| l.contains("access token handed out over the control socket"))
        .unwrap_or_else(|| panic!("no token line in {logs}"));
    assert!(
        line.contains("peer_pid=Some(") && line.contains("workload=w"),
        "{line}"
    );

    // Loosen every mode on the way to the socket, then knock as `nobody`.
    let paths = env.paths();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(env.dir.path(), 0o711);
    mode(&paths.config_dir, 0o711);
    mode(&paths.run_dir, 0o711);
    mode(&paths.socket, 0o666);
    let knock = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(
            // The daemon may close before the request is written (broken pipe) or
            // after (reset, or EOF): all three are a refusal.
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n\
             s.settimeout(10)\n\
             try:\n\
             \x20s.sendall(b'{\"cmd\":\"token\",\"name\":\"w\"}\\n')\n\
             \x20got=s.recv(65536)\n\
             except (BrokenPipeError, ConnectionResetError): got=b''\n\
             print('reply' if got else 'closed')",
        )
        .arg(&paths.socket)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&knock.stdout);
    assert_eq!(
        out.trim(),
        "closed",
        "another user got an answer: {out} {}",
        String::from_utf8_lossy(&knock.stderr)
    );
    let logs = daemon_logs(&env);
    assert!(
        logs.lines().any(
            |l| l.contains("control connection from another user refused")
                && l.contains("peer_uid=Some(65534)")
        ),
        "{logs}"
    );
    mode(&paths.run_dir, 0o700);
}

/// With no home directory (a service account, an empty environment) the daemon's logs
/// go to its config dir, never to a temp dir shared with other users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_home_the_logs_go_to_the_config_dir() {
    if !gate::root("without_a_home_the_logs_go_to_the_config_dir") {
        return;
    }
    // A uid with no passwd entry: no home directory can be found for it.
    const UID: u32 = 54_321;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(cfg.join("workloads.toml"), file_store_header()).unwrap();
    for p in [
        dir.path(),
        cfg.as_path(),
        cfg.join("workloads.toml").as_path(),
    ] {
        std::os::unix::fs::chown(p, Some(UID), Some(UID)).unwrap();
    }
    let mut child = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_tokenwarden"))
        .args(["daemon", "--config-dir"])
        .arg(&cfg)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log_dir("no_home_logs").join("daemon.stderr")).unwrap())
        .spawn()
        .unwrap();
    let logs = cfg.join("logs");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let found = loop {
        let any = std::fs::read_dir(&logs)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("tokenwarden"))
            })
            .unwrap_or(false);
        if any || std::time::Instant::now() > deadline {
            break any;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the daemon exited: {st}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no log file in {}", logs.display());
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&logs).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), UID);
}

/// A private bus standing in for the system bus (dbus-daemon with the tests' quiet
/// config), ended on drop.
struct PrivateBus {
    address: String,
    pid: u32,
}

impl PrivateBus {
    fn start() -> PrivateBus {
        let out = std::process::Command::new("dbus-daemon")
            .arg(format!(
                "--config-file={}/scripts/dbus-session.conf",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args(["--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .expect("dbus-daemon");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let address = lines.next().unwrap_or_default().to_string();
        let pid = lines.next().and_then(|p| p.trim().parse().ok());
        assert!(
            !address.is_empty() && pid.is_some(),
            "dbus-daemon did not start: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PrivateBus {
            address,
            pid: pid.unwrap(),
        }
    }

    /// PrepareForSleep(true), then (false), from logind's name (`own`) or not.
    fn prepare_for_sleep(&self, who: &str) {
        let out = std::process::Command::new("/usr/bin/python3")
            .arg(format!(
                "{}/tests/support/logind_signal.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args([&self.address, who])
            .output()
            .expect("logind_signal.py");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "sent",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.pid.to_string())
            .status();
    }
}

/// logind's `PrepareForSleep(false)` on the system bus is a wake: a `retrying`
/// workload whose next attempt is an hour away tries at once. The same signal from a
/// program that is not logind changes nothing. (logind cannot run here: a small
/// program owning its bus name on a private system bus sends what it would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logind_wake_makes_a_retrying_workload_try_at_once_and_only_logind_can_say_so() {
    let bus = PrivateBus::start();
    let issuer = issuer(issuer_opts(3600)).await;
    let mut env = env_with("logind_wake", &issuer, &["w"]).await;
    for (k, v) in [
        ("DBUS_SYSTEM_BUS_ADDRESS", bus.address.as_str()),
        ("TOKENWARDEN_RETRYING_INTERVAL", "1h"),
        ("TOKENWARDEN_RETRYING_MAX_INTERVAL", "1h"),
        ("TOKENWARDEN_REFRESH_MAX_TRIES", "1"),
        ("TOKENWARDEN_WAKE_SPREAD", "100ms"),
        ("TOKENWARDEN_TRIGGERS", "true"),
    ] {
        env.extra_env.push((k.into(), v.into()));
    }
    forget_daemon_logs(&env);
    env.start_daemon().await;
    assert!(env.login("w").await.ok());
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;

    // A failure episode whose next attempt is an hour away.
    issuer.set_mode(Mode::Waf403);
    assert!(env.run(&["retry", "w"]).ok());
    env.wait_status("w", Status::Retrying, Duration::from_secs(10))
        .await;
    let logs = || daemon_logs(&env);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !logs().contains("listening for logind PrepareForSleep") {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never subscribed to logind: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = issuer.refresh_requests();

    // Not logind: ignored. Then logind: one attempt, at once.
    bus.prepare_for_sleep("foreign");
    bus.prepare_for_sleep("own");
    assert!(
        issuer
            .wait_for_refresh_requests(before + 1, Duration::from_secs(10))
            .await,
        "no attempt after logind's wake: {}",
        logs()
    );
    let l = logs();
    let count = |s: &str| l.lines().filter(|line| line.contains(s)).count();
    assert_eq!(count("the system is going to sleep"), 1, "{l}");
    assert_eq!(count("woke from sleep (logind)"), 1, "{l}");
}

/// The file store of `env`'s config dir, as the binary keeps it.
fn file_store(env: &TestEnv) -> SecretStore {
    SecretStore::new(FileBackend::new(env.paths().secrets_dir)).for_config_dir(&env.config_dir)
}

/// The file names in `env`'s file store.
fn secret_files(env: &TestEnv) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.paths().secrets_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `logout` while a refresh hangs at the issuer: the daemon abandons the refresh and
/// deletes the tokens after any save under way, so the refresh, released afterwards,
/// cannot store them again. The workload stays signed out, also across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_during_a_refresh_in_flight_is_not_undone_by_that_refresh() {
    let issuer = issuer(IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(30)
    })
    .await;
    let env = env_with("logout_in_flight", &issuer, &["w"]).await;
    assert!(env.login("w").await.ok());
    env.start_daemon().await;
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;

    issuer.hold_refreshes(true);
    let n = issuer.refresh_requests();
    assert!(env.run(&["retry", "w"]).ok());
    assert!(
        issuer
            .wait_for_refresh_requests(n + 1, Duration::from_secs(10))
            .await
    );
    // The issuer counts a request before it counts it as in flight: wait for both.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while issuer.refreshes_in_flight() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(issuer.refreshes_in_flight(), 1, "the refresh hangs");

    let out = env.run(&["logout", "w"]);
    assert!(out.ok(), "{out:?}");
    let st = env.status().await.remove(0);
    assert_eq!(st.status, Status::Unauthenticated, "{st:?}");
    assert_eq!(st.reason.as_deref(), Some("signed out"), "{st:?}");
    assert!(
        st.hint.as_deref().unwrap().contains("tokenwarden login w"),
        "{st:?}"
    );
    assert!(!st.access_token_valid, "{st:?}");
    assert_eq!(file_store(&env).load_tokens("w").await.unwrap(), None);
    let tok = env.run(&["token", "w"]);
    assert_eq!(tok.code, Some(4), "no token after a logout: {tok:?}");

    // The refresh is released and answered; then a clean stop, which lets whatever
    // the daemon still has in flight finish and save.
    issuer.hold_refreshes(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while issuer.refreshes_in_flight() > 0 {
        assert!(std::time::Instant::now() < deadline, "the refresh ends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.stop_daemons();
    assert_eq!(
        file_store(&env).load_tokens("w").await.unwrap(),
        None,
        "the released refresh stored nothing"
    );
    assert_eq!(secret_files(&env), Vec::<String>::new());
    let out = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["status"], "unauthenticated", "{v}");
    assert_eq!(v[0]["reason"], "signed out", "{v}");

    // Started again, the daemon finds no login and asks the issuer nothing.
    env.start_daemon().await;
    let st = env
        .wait_for("w", Duration::from_secs(5), |w| {
            w.reason.as_deref() == Some("not logged in")
        })
        .await;
    assert_eq!(st.status, Status::Unauthenticated);
    assert_eq!(issuer.refresh_requests(), n + 1);
}

/// Without a daemon, `logout` deletes the entry itself (and holds the config dir's
/// lock meanwhile, so no daemon starts with the tokens half gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_a_daemon_deletes_the_tokens_itself() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("logout_offline", &issuer, &["w"]).await;
    assert!(env.login("w").await.ok());
    assert!(file_store(&env).load_tokens("w").await.unwrap().is_some());
    let out = env.run(&["logout", "w"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(file_store(&env).load_tokens("w").await.unwrap(), None);
    assert!(env.run(&["logout", "w"]).ok(), "idempotent");
    // The lock was released: a daemon starts.
    env.start_daemon().await;
    env.wait_status("w", Status::Unauthenticated, Duration::from_secs(5))
        .await;
}

/// A hand edit that points a logged-in workload at another issuer: the stored login
/// is not used, so the new token endpoint never sees the old refresh token; the
/// workload says to log in again, and a login there brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_to_another_token_endpoint_does_not_send_it_the_stored_refresh_token() {
    let opts = || IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(2)
    };
    let (a, b) = (issuer(opts()).await, issuer(opts()).await);
    let env = env_with("edit_token_endpoint", &a, &["w"]).await;
    assert!(env.login("w").await.ok());
    env.start_daemon().await;
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;

    env.write_config(&read(&env.config_file()).replace(&a.base_url(), &b.base_url()));
    let st = env
        .wait_for("w", Duration::from_secs(10), |w| {
            w.token_endpoint == b.token_endpoint() && w.status == Status::Unauthenticated
        })
        .await;
    assert_eq!(b.refresh_requests(), 0, "b never saw a's refresh token");
    let reason = st.reason.clone().unwrap();
    assert!(
        reason.contains("another token_endpoint") && reason.contains("not sent"),
        "{reason}"
    );
    assert_eq!(
        st.hint.as_deref(),
        Some("Log in again: tokenwarden login w"),
        "{st:?}"
    );
    let tok = env.run(&["token", "w"]);
    assert_eq!(tok.code, Some(4), "a login is needed: {tok:?}");
    // Not deleted (undoing the edit would bring it back), and not sent without a
    // daemon either.
    env.stop_daemons();
    assert!(file_store(&env).load_tokens("w").await.unwrap().is_some());
    let tok = env.run(&["token", "w"]);
    assert_eq!(tok.code, Some(4), "a login is needed: {tok:?}");
    assert!(tok.stderr.contains("log in again"), "{}", tok.stderr);
    assert_eq!(b.refresh_requests(), 0);

    // A login at the new issuer: running, refreshing there with its own tokens.
    env.start_daemon().await;
    assert!(env.login("w").await.ok());
    assert!(
        b.wait_for_refresh_requests(1, Duration::from_secs(10))
            .await
    );
    let st = env
        .wait_for("w", Duration::from_secs(10), |w| {
            w.status == Status::Running && w.attempts == 0
        })
        .await;
    assert!(st.reason.is_none(), "{st:?}");
}

/// An entry of an earlier version (`w.tokens.json`, shared by every config dir's
/// workload `w`) moves to this config dir's name the first time it is read, once, and
/// the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_entry_of_an_earlier_version_moves_to_this_config_dir_once() {
    let issuer = issuer(issuer_opts(30)).await;
    let env = env_with("file_store_migration", &issuer, &["w"]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let tokens = tokenwarden::demo::stored_tokens(issuer.direct_login(&http).await.unwrap());
    SecretStore::new(FileBackend::new(env.paths().secrets_dir))
        .save_tokens("w", &tokens)
        .await
        .unwrap();
    assert_eq!(secret_files(&env), ["w.tokens.json"]);

    let tok = env.run(&["token", "w"]);
    assert!(tok.ok(), "{tok:?}");
    assert_eq!(tok.stdout.trim(), tokens.access_token.expose());
    assert!(
        tok.stderr
            .contains("moved a stored entry shared by every config dir"),
        "{}",
        tok.stderr
    );
    let key = config_dir_key(&env.config_dir);
    assert_eq!(secret_files(&env), [format!("w.tokens.{key}.json")]);

    let again = env.run(&["token", "w"]);
    assert!(again.ok(), "{again:?}");
    assert!(!again.stderr.contains("moved a stored entry"), "once");
    assert!(env.run(&["logout", "w"]).ok());
    assert_eq!(secret_files(&env), Vec::<String>::new());
}

/// `connect`, `disconnect` and `client-config --client` through the real binary, on a
/// project's `.vscode/mcp.json` (JSONC with comments and a trailing comma) and a
/// Claude Desktop file (stdio entry by absolute path, with the config dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_an_mcp_clients_file() {
    let env = TestEnv::new("clients");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.write_config(&format!(
        "{}[[workload]]\nname = \"gh\"\nurl = \"https://remote.example/mcp\"\ntoken_endpoint = \"https://auth.example/token\"\nclient_id = \"c\"\nlisten_port = {port}\n",
        file_store_header()
    ));
    let local = format!("http://127.0.0.1:{port}/mcp");

    // Without --client: today's output, unchanged.
    let out = env.run(&["client-config", "gh"]);
    assert!(out.ok(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"mcpServers": {"gh": {"url": local}}}));
    // With --client: the entry alone, in that client's shape.
    let out = env.run(&["client-config", "gh", "--client", "vscode"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("\"gh\": {{\n  \"type\": \"http\",\n  \"url\": \"{local}\"\n}}\n")
    );
    let out = env.run(&["client-config", "gh", "--client", "codex"]);
    assert_eq!(out.stdout, format!("[mcp_servers.gh]\nurl = \"{local}\"\n"));

    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients");
    let original = read(&fixtures.join("vscode.json"));
    let project = env.dir.path().join("project/.vscode");
    std::fs::create_dir_all(&project).unwrap();
    let file = project.join("mcp.json");
    std::fs::write(&file, &original).unwrap();
    let f = file.to_str().unwrap();
    let entries = || std::fs::read_dir(&project).unwrap().count();

    // --dry-run: the diff, nothing written.
    let out = env.run(&["connect", "vscode", "gh", "--file", f, "--dry-run"]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.starts_with(&format!("--- {f}\n+++ {f}\n")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("+\t\t\"gh\": {\n"), "{}", out.stdout);
    assert!(out
        .stdout
        .contains(&format!("+\t\t\t\"url\": \"{local}\"\n")));
    assert_eq!(read(&file), original);
    assert_eq!(entries(), 1);

    // --yes: written, with a backup of the original beside it.
    let out = env.run(&["connect", "vscode", "gh", "--file", f, "--yes"]);
    assert!(out.ok(), "{out:?}");
    let connected = read(&file);
    assert!(connected.contains("// trailing comma: VS Code allows it"));
    assert!(connected.contains(&format!("\"url\": \"{local}\"")));
    assert_eq!(entries(), 2);
    assert!(out.stderr.contains("Backup: "), "{}", out.stderr);

    // Again: already connected, nothing written, no second backup.
    let out = env.run(&["connect", "vscode", "gh", "--file", f, "--yes"]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stderr.contains("already connected"), "{}", out.stderr);
    assert_eq!(read(&file), connected);
    assert_eq!(entries(), 2);

    // disconnect: the original bytes back.
    let out = env.run(&["disconnect", "vscode", "gh", "--file", f, "--yes"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(read(&file), original);

    // A file it cannot parse: refused with file and line, left byte for byte.
    let broken = "{\n\t\"servers\": {\n\t\t\"x\": {\"url\": \"https://a.example\"\n\t}\n";
    std::fs::write(&file, broken).unwrap();
    let out = env.run(&["connect", "vscode", "gh", "--file", f, "--yes"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains(&format!("{f}:")), "{}", out.stderr);
    assert_eq!(read(&file), broken);

    // Claude Desktop runs the stdio bridge by this program's absolute path, with the
    // config dir (not the default one). No terminal on stdin: it writes.
    let desktop = env.dir.path().join("Claude/claude_desktop_config.json");
    let out = env.run(&[
        "connect",
        "claude-desktop",
        "gh",
        "--file",
        desktop.to_str().unwrap(),
    ]);
    assert!(out.ok(), "{out:?}");
    let written: serde_json::Value = serde_json::from_str(&read(&desktop)).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_tokenwarden")).unwrap();
    assert_eq!(
        written,
        serde_json::json!({"mcpServers": {"gh": {
            "command": exe.to_str().unwrap(),
            "args": ["--config-dir", env.config_dir.to_str().unwrap(), "stdio", "gh"]
        }}})
    );
}

/// `import cursor` through the real binary: a Cursor file (in a temp home) names a
/// remote server (`SimRemote` behind a `SimIssuer`) twice, directly and through
/// `mcp-remote`; import lists it, adds it by URL (discovery, registration, one login
/// with the browser stand-in), then rewrites both entries to the local proxy and
/// leaves the unrelated one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_adds_a_found_remote_and_rewrites_the_clients_entries() {
    let issuer = issuer(issuer_opts(30)).await;
    let remote = tokenwarden_sim::remote::SimRemote::start(
        issuer.clone(),
        tokenwarden_sim::remote::RemoteOptions::default(),
    )
    .await
    .unwrap();
    let mut env = TestEnv::new("clients_import");
    env.write_config(&file_store_header());
    let home = env.dir.path().join("home");
    env.extra_env
        .push(("HOME".into(), home.display().to_string()));
    let file = home.join(".cursor/mcp.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let original = format!(
        "{{\n  \"mcpServers\": {{\n    \"sim\": {{\n      \"url\": \"{0}\"\n    }},\n    \"local-tool\": {{\n      \"command\": \"uvx\",\n      \"args\": [\"some-tool\"]\n    }}\n  }}\n}}\n",
        remote.url()
    );
    std::fs::write(&file, &original).unwrap();

    // --dry-run: the list, nothing added or written.
    let out = env.run(&["import", "cursor", "--dry-run"]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("Found 1 remote server entries"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("sim "), "{}", out.stderr);
    assert!(out.stderr.contains("add as a workload"), "{}", out.stderr);
    assert_eq!(read(&file), original);
    assert!(!read(&env.config_file()).contains("[[workload]]"));

    let out = env.run_with_browser(&["import", "cursor"]).await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("Registered a new public client"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Signed in"), "{}", out.stderr);
    let cfg = tokenwarden::engine::config::Config::load(&env.config_file()).unwrap();
    let w = cfg.workload("sim").expect("imported as a workload");
    assert_eq!(w.url.as_ref().unwrap().as_str(), remote.url());
    let local = format!("http://127.0.0.1:{}/mcp", w.listen_port.unwrap());
    let v: serde_json::Value = serde_json::from_str(&read(&file)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"mcpServers": {
            "sim": {"url": local},
            "local-tool": {"command": "uvx", "args": ["some-tool"]}
        }})
    );
    let backups = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tokenwarden-backup-")
        })
        .count();
    assert_eq!(backups, 1);

    // Imported once: a second import finds nothing left to do.
    let out = env.run(&["import", "cursor"]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("No remote MCP servers found"),
        "{}",
        out.stderr
    );
}

/// The exit codes scripts use: `status NAME...` (0 running, 3 retrying, 4
/// unauthenticated, 5 stopped, 1 unknown) and `token NAME` (4 a login is needed, 3 no
/// valid token because of a transient failure, 5 disabled); `enable` / `disable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_token_exit_codes_a_script_can_use() {
    let issuer = issuer(issuer_opts(2)).await;
    let env = env_with("exit_codes", &issuer, &["a", "b", "c"]).await;
    env.start_daemon().await;
    assert!(env.login("a").await.ok());
    env.wait_status("a", Status::Running, Duration::from_secs(10))
        .await;
    let code = |args: &[&str]| env.run(args);

    // `token --json`: the token and when it expires, the expiry the status shows.
    let out = code(&["token", "a", "--json"]);
    assert!(out.ok(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(issuer.is_valid_access_token(v["access_token"].as_str().unwrap()));
    let at = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let expires = at(v["expires_at"].as_str().expect("an expiry"));
    let st = env
        .wait_for("a", Duration::from_secs(5), |w| w.access_token_valid)
        .await;
    let shown = st.access_token_expires_at.expect("status shows the expiry");
    // The same token's expiry, or an older one's when a refresh came in between.
    assert!(
        expires <= shown + time::Duration::seconds(1),
        "{expires} vs {shown}"
    );
    assert!(expires > time::OffsetDateTime::now_utc());

    let out = code(&["status", "a"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("a ") && out.stdout.contains("running"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("b "), "only the named one: {out:?}");
    assert_eq!(code(&["status", "b"]).code, Some(4));
    assert_eq!(code(&["status", "a", "b"]).code, Some(4), "the worst");
    let out = code(&["status", "a", "nope"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no workload named nope"), "{out:?}");
    assert_eq!(code(&["status"]).code, Some(0), "all, no names: 0");
    let out = code(&["token", "b"]);
    assert_eq!(out.code, Some(4), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("tokenwarden login b"), "{out:?}");

    // Disabled: 5, for status and token; enabled again: back to needing a login.
    assert!(code(&["disable", "c"]).ok());
    env.wait_status("c", Status::Stopped, Duration::from_secs(10))
        .await;
    assert_eq!(code(&["status", "c"]).code, Some(5));
    assert_eq!(code(&["token", "c"]).code, Some(5));
    assert!(std::fs::read_to_string(env.config_file())
        .unwrap()
        .contains("enabled = false"));
    assert!(code(&["enable", "c"]).ok());
    env.wait_status("c", Status::Unauthenticated, Duration::from_secs(10))
        .await;
    assert!(!std::fs::read_to_string(env.config_file())
        .unwrap()
        .contains("enabled"));

    // A WAF blocks the issuer: retrying, and once the 2 s token is gone, no token (3).
    issuer.set_mode(Mode::Waf403);
    env.wait_for("a", Duration::from_secs(20), |w| {
        w.status == Status::Retrying && !w.access_token_valid
    })
    .await;
    assert_eq!(code(&["status", "a"]).code, Some(3));
    let out = code(&["token", "a"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stdout.is_empty());
}

/// Shell completions and the manual page come from the same command definitions.
#[test]
fn completions_and_the_man_page_name_every_command() {
    let env = TestEnv::new("completions");
    for shell in ["bash", "zsh", "fish"] {
        let out = env.run(&["completions", shell]);
        assert!(out.ok(), "{out:?}");
        for cmd in [
            "daemon", "status", "connect", "stdio", "enable", "disable", "doctor", "logs",
        ] {
            assert!(out.stdout.contains(cmd), "{shell}: {cmd} missing");
        }
    }
    let out = env.run(&["completions", "tcsh"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let man = env.run(&["man"]);
    assert!(man.ok(), "{man:?}");
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH tokenwarden"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    for cmd in ["daemon", "status", "token", "connect", "doctor", "logs"] {
        assert!(man.stdout.contains(cmd), "man: {cmd} missing");
    }
}

/// A rotated refresh token that the store refuses to take is kept in memory (the
/// daemon goes on handing out valid tokens and refreshing with it), saved as soon as
/// the store takes it again, and nothing is lost: a restarted daemon refreshes with
/// what is stored. (The store's directory is replaced by a file: that refuses writes
/// for root too, where a mode would not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_the_store_refuses_is_kept_and_saved_once_it_can_be() {
    let issuer = issuer(IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(2)
    })
    .await;
    let env = env_with("unsaved_rotation", &issuer, &["w"]).await;
    env.start_daemon().await;
    assert!(env.login("w").await.ok());
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;

    let dir = env.paths().secrets_dir;
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let stored_in = |d: &std::path::Path| {
        SecretStore::new(FileBackend::new(d.to_path_buf())).for_config_dir(&env.config_dir)
    };
    let before = issuer.refresh_requests();
    assert!(
        issuer
            .wait_for_refresh_requests(before + 2, Duration::from_secs(20))
            .await,
        "two rotations while the store refuses"
    );
    let t = env.run(&["token", "w"]);
    assert!(t.ok(), "{t:?}");
    assert!(issuer.is_valid_access_token(t.stdout.trim()));
    // What the store holds was rotated away: only the daemon's memory has the live one.
    let stale = stored_in(&aside)
        .load_tokens("w")
        .await
        .unwrap()
        .and_then(|t| t.refresh_token)
        .expect("the login's refresh token");
    assert!(!issuer.is_valid_refresh_token(stale.expose()));

    // The store takes writes again while the issuer is down (so no new refresh can save
    // anything): the refresh token kept in memory reaches the store by itself.
    issuer.set_mode(Mode::Down);
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored = stored_in(&dir).load_tokens("w").await.unwrap();
        if stored
            .and_then(|t| t.refresh_token)
            .is_some_and(|rt| issuer.is_valid_refresh_token(rt.expose()))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh token kept in memory never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nothing lost: after a clean stop a new daemon refreshes with what is stored.
    issuer.set_mode(Mode::Healthy);
    env.stop_daemons();
    let before = issuer.refresh_requests();
    env.start_daemon().await;
    assert!(
        issuer
            .wait_for_refresh_requests(before + 1, Duration::from_secs(20))
            .await
    );
    env.wait_for("w", Duration::from_secs(20), |w| {
        w.status == Status::Running && w.attempts == 0 && w.access_token_valid
    })
    .await;
    let t = env.run(&["token", "w"]);
    assert!(t.ok(), "{t:?}");
    assert!(issuer.is_valid_access_token(t.stdout.trim()));
}

/// The private keyring session (`scripts/session.sh`, as `scripts/test.sh` runs the
/// suite): with `TOKENWARDEN_TEST_KEYCHAIN=1` the test runs and must pass.
fn keychain_session(test: &str) -> bool {
    if std::env::var("TOKENWARDEN_TEST_KEYCHAIN").as_deref() == Ok("1") {
        assert!(
            std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
            "TOKENWARDEN_TEST_KEYCHAIN=1 but no session bus: run through scripts/session.sh"
        );
        gate::ran("keychain", test);
        true
    } else {
        eprintln!("SKIPPED {test}: needs the private keyring session (run `bash scripts/test.sh`)");
        false
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The line of `doctor`'s output about `what` (its verdict first).
fn doctor_line<'a>(out: &'a Output, what: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| {
            l.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(what)
        })
        .unwrap_or_else(|| panic!("no `{what}` line: {out:?}"))
}

/// `doctor` on a healthy session (keychain unlocked, ports free), with the daemon
/// serving the ports, with a port another program holds, and with a broken config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_what_is_broken_and_how_to_fix_it() {
    if !keychain_session("doctor") {
        return;
    }
    let issuer = issuer(issuer_opts(60)).await;
    let env = TestEnv::new("doctor");
    let (p1, p2) = (free_port(), free_port());
    let with_url = |name: &str, port: u16| {
        format!(
            "{}\nurl = \"http://127.0.0.1:9/mcp\"\nlisten_port = {port}\n\n",
            workload_toml(name, &issuer).trim_end()
        )
    };
    let config = with_url("one", p1) + &with_url("two", p2);
    env.write_config(&config);

    // Healthy: the keychain answers and is unlocked, the config parses, ports free.
    let out = env.run(&["doctor"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(doctor_line(&out, "keychain").starts_with("ok "), "{out:?}");
    assert!(
        doctor_line(&out, "keychain").contains("unlocked"),
        "{out:?}"
    );
    assert!(doctor_line(&out, "config").starts_with("ok "), "{out:?}");
    assert!(
        doctor_line(&out, "network monitor").starts_with("ok "),
        "{out:?}"
    );
    let l = doctor_line(&out, "proxy one");
    assert!(
        l.starts_with("ok ") && l.contains(&format!("{p1} free")),
        "{out:?}"
    );
    assert!(doctor_line(&out, "daemon").starts_with("warn"), "{out:?}");

    // The running daemon's own proxies: its ports are busy, and ours.
    env.start_daemon().await;
    env.wait_for("two", Duration::from_secs(10), |w| w.local_url.is_some())
        .await;
    env.wait_for("one", Duration::from_secs(10), |w| w.local_url.is_some())
        .await;
    let out = env.run(&["doctor"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(doctor_line(&out, "daemon").starts_with("ok "), "{out:?}");
    let l = doctor_line(&out, "proxy two");
    assert!(
        l.starts_with("ok ") && l.contains("served by the running Tokenwarden"),
        "{out:?}"
    );
    env.stop_daemons();

    // Another program on a proxy's port: FAIL, how to find it, exit 1.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", p2)).unwrap();
    let out = env.run(&["doctor"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let l = doctor_line(&out, "proxy two");
    assert!(
        l.starts_with("FAIL") && l.contains(&format!("127.0.0.1:{p2} is taken")),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("fix: see which with `ss -ltnp 'sport = :{p2}'`")),
        "{out:?}"
    );
    assert!(doctor_line(&out, "proxy one").starts_with("ok "), "{out:?}");
    drop(squatter);

    // A broken config: FAIL with its line, and the fix names the line.
    env.write_config(&format!(
        "{}\nlisten_port = \"high\"\n",
        workload_toml("one", &issuer).trim_end()
    ));
    let bad_line = 7;
    let out = env.run(&["doctor"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let l = doctor_line(&out, "config");
    assert!(
        l.starts_with("FAIL") && l.contains(&format!("workloads.toml:{bad_line}")),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("fix: correct line {bad_line} of ")),
        "{out:?}"
    );
}

/// A locked keyring is a FAIL with the fix (in a session of its own: locking the
/// suite's keyring would break the other tests).
#[test]
fn doctor_fails_on_a_locked_keyring() {
    if !keychain_session("doctor_locked") {
        return;
    }
    let env = TestEnv::new("doctor_locked");
    let root = env!("CARGO_MANIFEST_DIR");
    let lock = "gdbus call --session --dest org.freedesktop.secrets --object-path /org/freedesktop/secrets \
        --method org.freedesktop.Secret.Service.Lock \"['/org/freedesktop/secrets/collection/login']\" >&2 && exec \"$0\" doctor";
    let out = env.run_of(
        "bash",
        &[
            &format!("{root}/scripts/session.sh"),
            "sh",
            "-c",
            lock,
            env!("CARGO_BIN_EXE_tokenwarden"),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let l = doctor_line(&out, "keychain");
    assert!(l.starts_with("FAIL") && l.contains("is locked"), "{out:?}");
    assert!(out.stdout.contains("fix: unlock it"), "{out:?}");
}

/// `logs NAME`: the daemon's log lines about that workload only; `-n`; `-f` prints new
/// lines about it as they are written, and not the other workload's written before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_shows_and_follows_one_workloads_lines() {
    let issuer = issuer(issuer_opts(60)).await;
    let env = env_with("logs", &issuer, &["alpha", "beta"]).await;
    env.start_daemon().await;
    assert!(env.login("alpha").await.ok());
    env.wait_status("alpha", Status::Running, Duration::from_secs(10))
        .await;
    assert!(env.run(&["retry", "beta"]).ok());
    let about = |out: &Output, name: &str| {
        out.stdout
            .lines()
            .filter(|l| {
                l.contains(&format!("workload={name} ")) || l.ends_with(&format!("workload={name}"))
            })
            .count()
    };
    // Until beta's line is in the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let all = loop {
        let all = env.run(&["logs"]);
        assert!(all.ok(), "{all:?}");
        if about(&all, "beta") > 0 {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line about beta: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(about(&all, "alpha") > 0, "{all:?}");

    let alpha = env.run(&["logs", "alpha"]);
    assert!(alpha.ok(), "{alpha:?}");
    let n = alpha.stdout.lines().count();
    assert!(
        n > 0 && about(&alpha, "alpha") == n,
        "only alpha's lines: {alpha:?}"
    );
    assert_eq!(about(&alpha, "beta"), 0, "{alpha:?}");
    let last = env.run(&["logs", "-n", "1", "alpha"]);
    assert_eq!(
        last.stdout.lines().collect::<Vec<_>>(),
        alpha.stdout.lines().last().into_iter().collect::<Vec<_>>()
    );

    // Following: beta's line is written first, then alpha's; only alpha's arrives.
    let mut follow = env
        .command(&["logs", "-f", "-n", "0", "alpha"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert!(env.run(&["retry", "beta"]).ok());
    assert!(env.run(&["retry", "alpha"]).ok());
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains("retrying now") => break l,
            Ok(l) => seen.push(l),
            Err(e) => panic!("no new line about alpha ({e}); got {seen:?}"),
        }
    };
    assert!(found.contains("workload=alpha"), "{found}");
    assert!(
        seen.iter().all(|l| !l.contains("workload=beta")),
        "{seen:?}"
    );
    follow.kill().unwrap();
    let _ = follow.wait();

    // Hostile or missing input: a clear error, exit 1.
    let out = env.run(&["logs", "../x"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let mut empty = TestEnv::new("logs_empty");
    let dir = empty.dir.path().join("no-logs");
    empty
        .extra_env
        .push(("TOKENWARDEN_LOG_DIR".into(), dir.display().to_string()));
    let out = empty.run(&["logs"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no logs in"), "{out:?}");
}

/// `login` opens the browser `BROWSER` names (the first of its `:`-separated commands
/// that starts, `%s` the URL), as the desktop app's sign-in does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_opens_the_browser_the_browser_variable_names() {
    let issuer = issuer(issuer_opts(30)).await;
    let mut env = env_with("login_browser_variable", &issuer, &["w"]).await;
    let follow = format!("{}/tests/desktop/browser.sh", env!("CARGO_MANIFEST_DIR"));
    let missing = env.dir.path().join("no-such-browser");
    env.extra_env.push((
        "BROWSER".into(),
        format!("{}:sh {follow} %s", missing.display()),
    ));
    let out = env.run(&["login", "w", "--timeout", "20s"]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stderr.contains("Signed in"), "{out:?}");
}
