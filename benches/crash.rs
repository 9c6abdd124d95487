//! Crash campaign: SIGKILL the daemon at random instants across many refresh cycles
//! under strict refresh-token rotation, restart it each time, and count refresh tokens
//! lost (the stored one no longer accepted by the issuer).
//!
//! `cargo bench --no-default-features --bench crash` (set `CRASH_CYCLES`, default 200).
//! Uses the real binary (`tokenwarden daemon`), the opt-in file store, and the loopback
//! `SimIssuer` with 1-second tokens, so a refresh (and a rotation) happens about every
//! 0.8 s. A lost token is counted, reported, and repaired by a fresh login.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokenwarden::engine::store::{FileBackend, SecretStore};
use tokenwarden_sim::issuer::{IssuerOptions, SimIssuer};

async fn login(dir: &std::path::Path, bin: &str) {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .args(["login", "w", "--no-browser", "--timeout", "20s"])
        .env("TOKENWARDEN_CONFIG_DIR", dir)
        .env("TOKENWARDEN_LOG_DIR", dir.join("logs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        std::io::BufReader::new(out).read_line(&mut l).unwrap();
        l.trim().to_string()
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(2))
        .build()
        .unwrap();
    http.get(url).send().await.unwrap();
    assert!(tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
        .success());
}

async fn wait_socket(dir: &std::path::Path) {
    let paths = tokenwarden::paths::Paths::resolve(Some(dir.to_path_buf())).unwrap();
    for _ in 0..500 {
        if let Ok(Some(mut c)) = tokenwarden::control::Client::connect(&paths).await {
            if c.call(&tokenwarden::control::Request::Ping).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("daemon did not start");
}

fn main() {
    let cycles: usize = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bin = env!("CARGO_BIN_EXE_tokenwarden");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let issuer = SimIssuer::start(IssuerOptions {
            access_token_lifetime: Duration::from_secs(1),
            strict_rotation: true,
            ..IssuerOptions::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("workloads.toml"),
            format!(
                "[secrets]\nstore = \"file\"\n\n[[workload]]\nname = \"w\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n",
                issuer.authorization_endpoint(),
                issuer.token_endpoint(),
                issuer.client_id()
            ),
        )
        .unwrap();
        let store =
            SecretStore::new(FileBackend::new(dir.path().join("secrets"))).for_config_dir(dir.path());
        login(dir.path(), bin).await;
        let started = Instant::now();
        let refreshes_before = issuer.refresh_requests();
        let mut lost = 0;
        for _ in 0..cycles {
            let mut child = Command::new(bin)
                .arg("daemon")
                .env("TOKENWARDEN_CONFIG_DIR", dir.path())
                .env("TOKENWARDEN_LOG_DIR", dir.path().join("logs"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            wait_socket(dir.path()).await;
            // A random instant within the next two refresh cycles.
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 1600)).await;
            child.kill().unwrap();
            child.wait().unwrap();
            let stored = store.load_tokens("w").await.unwrap().unwrap();
            let rt_ok = stored.refresh_token.as_ref().is_some_and(|t| issuer.is_valid_refresh_token(t.expose()));
            if !rt_ok {
                lost += 1;
                login(dir.path(), bin).await;
            }
        }
        let refreshes = issuer.refresh_requests() - refreshes_before;
        // The window: how long one save of the token file takes (the part of a refresh
        // between the issuer's answer and the token being safe on disk).
        let tokens = store.load_tokens("w").await.unwrap().unwrap();
        let mut samples = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            store.save_tokens("w-window-probe", &tokens).await.unwrap();
            samples.push(t.elapsed());
        }
        store.delete_tokens("w-window-probe").await.unwrap();
        samples.sort();
        println!("\nCrash campaign: SIGKILL at random instants, strict rotation, file store\n");
        println!("| kills | refreshes during the campaign | refresh tokens lost | loss per kill | store write (median / p99) | elapsed |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| {cycles} | {refreshes} | {lost} | {:.2}% | {:.2} ms / {:.2} ms | {:.0} s |",
            100.0 * lost as f64 / cycles as f64,
            samples[samples.len() / 2].as_secs_f64() * 1000.0,
            samples[samples.len() * 99 / 100].as_secs_f64() * 1000.0,
            started.elapsed().as_secs_f64()
        );
    });
}
