//! Recovery latency after a network outage: address-up → `running`.
//!
//! `cargo bench --bench recovery` (root: it makes a network namespace and a veth pair,
//! like `tests/triggers.rs`). The issuer sits in the namespace; each outage removes the
//! host's address, fails the workload into `retrying`, then puts the address back and
//! measures until the workload is `running` again. Same policy both ways (retrying
//! cadence 5 s); once with the triggers on, once with them off. Prints a markdown table.
//! Set `RECOVERY_OUTAGES` to change the number of outages (default 30).

#[path = "../tests/support/netlab.rs"]
mod netlab;

use std::time::{Duration, Instant};
use tokenwarden::engine::config::Config;
use tokenwarden::engine::policy::{Policy, RawValue};
use tokenwarden::engine::store::SecretStore;
use tokenwarden::engine::triggers::Sources;
use tokenwarden::engine::{oauth, Engine, EngineOptions, Status};
use tokenwarden_sim::issuer::{IssuerOptions, SimIssuer};

fn policy(triggers: bool) -> Policy {
    let mut p = Policy::default();
    for (k, v) in [
        ("refresh_initial_interval", "50ms"),
        ("refresh_max_interval", "100ms"),
        ("refresh_max_elapsed", "1s"),
        ("retrying_interval", "5s"),
        ("retrying_max_interval", "5s"),
        ("http_timeout", "2s"),
        ("connect_timeout", "1s"),
    ] {
        p.set(k, &RawValue::Text(v.into())).unwrap();
    }
    p.refresh_max_tries = 2;
    p.triggers = triggers;
    p
}

async fn wait_status(engine: &Engine, want: Status, limit: Duration) -> bool {
    let mut rx = engine.subscribe();
    tokio::time::timeout(limit, async {
        loop {
            if engine.status().await.unwrap()[0].status == want {
                return;
            }
            let _ = rx.recv().await;
        }
    })
    .await
    .is_ok()
}

async fn run(lab: &netlab::NetLab, triggers: bool, outages: usize) -> Vec<Duration> {
    let issuer = SimIssuer::start_on(lab.bind_in_namespace(), IssuerOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[workload]]\nname = \"w\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\nallow_http = true\n",
        issuer.authorization_endpoint(),
        issuer.token_endpoint(),
        issuer.client_id()
    );
    let mut cfg = Config::parse(&dir.path().join("workloads.toml"), &text).unwrap();
    cfg.policy = policy(triggers);
    let store = SecretStore::memory();
    let w = cfg.workloads[0].clone();
    let http = oauth::http_client(&cfg.policy, None).unwrap();
    let pending = oauth::prepare_login(&w).await.unwrap();
    let url = pending.authorize_url.to_string();
    let browser = tokio::spawn(async move {
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(2))
            .build()
            .unwrap();
        c.get(url).send().await.map(|_| ())
    });
    let tokens = pending
        .finish(&http, &cfg.policy, Duration::from_secs(10))
        .await
        .unwrap();
    browser.await.unwrap().unwrap();
    store.save_tokens("w", &tokens).await.unwrap();
    let engine = Engine::start(EngineOptions {
        sources: Sources {
            network: true,
            wake_clock: false,
            logind: false,
        },
        ..EngineOptions::new(cfg, store)
    });
    assert!(wait_status(&engine, Status::Running, Duration::from_secs(10)).await);
    let mut latencies = Vec::new();
    for i in 0..outages {
        lab.address_down();
        engine.retry(Some("w")).await.unwrap();
        assert!(
            wait_status(&engine, Status::Retrying, Duration::from_secs(10)).await,
            "outage {i}"
        );
        // The address returns at a random point of the retrying cadence.
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 5000)).await;
        let t0 = Instant::now();
        lab.address_up();
        assert!(
            wait_status(&engine, Status::Running, Duration::from_secs(30)).await,
            "outage {i}"
        );
        latencies.push(t0.elapsed());
    }
    engine.shutdown().await;
    latencies
}

fn row(label: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    format!(
        "| {label} | {} | {} | {} | {} | {} |",
        v.len(),
        ms(v[0]),
        ms(pick(0.5)),
        ms(pick(0.95)),
        ms(v[v.len() - 1])
    )
}

fn main() {
    let outages: usize = std::env::var("RECOVERY_OUTAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let Some(lab) = netlab::netlab() else {
            println!("recovery benchmark skipped: needs root (network namespace + veth)");
            return;
        };
        let on = run(&lab, true, outages).await;
        let off = run(&lab, false, outages).await;
        println!("\nRecovery latency, address back up → `running` (retrying cadence 5 s, network_settle 1 s)\n");
        println!("| triggers | outages | min | median | p95 | max |");
        println!("|---|---|---|---|---|---|");
        println!("{}", row("on", on));
        println!("{}", row("off (schedule only)", off));
    });
}
