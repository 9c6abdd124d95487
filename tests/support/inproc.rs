#![allow(dead_code)] // not every test binary uses every helper
//! The engine in-process: real logins against the loopback issuer into an in-memory
//! store, an engine on the system clock, and waiting on its status events.

use crate::support::browse;
use std::time::Duration;
use tokenwarden::engine::config::Config;
use tokenwarden::engine::oauth;
use tokenwarden::engine::store::SecretStore;
use tokenwarden::engine::{Engine, EngineOptions, WorkloadStatus};

/// Log every workload of `cfg` in for real; the tokens go to a fresh in-memory store.
pub async fn login_all(cfg: &Config) -> SecretStore {
    let store = SecretStore::memory();
    for w in &cfg.workloads {
        login_in_process(cfg, &w.name, &store).await;
    }
    store
}

/// The real login (code + PKCE through the issuer, `browse` playing the browser).
pub async fn login_in_process(cfg: &Config, name: &str, store: &SecretStore) {
    let w = cfg.workload(name).unwrap();
    let http = oauth::http_client(&cfg.policy, None).unwrap();
    let pending = oauth::prepare_login(w).await.unwrap();
    let url = pending.authorize_url.to_string();
    let browser = tokio::spawn(async move { browse(&url).await });
    let tokens = pending
        .finish(&http, &cfg.policy, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(browser.await.unwrap(), 200);
    store.save_tokens(name, &tokens).await.unwrap();
}

/// An engine on the system clock with no trigger sources and HTTP to the issuer.
pub fn start_engine(
    config: Config,
    store: SecretStore,
    state_path: Option<std::path::PathBuf>,
) -> Engine {
    Engine::start(EngineOptions {
        state_path,
        ..EngineOptions::new(config, store)
    })
}

/// Wait until `pred` holds for workload `name`, driven by status change events.
pub async fn wait_for_workload(
    engine: &Engine,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&WorkloadStatus) -> bool,
) -> WorkloadStatus {
    let mut rx = engine.subscribe();
    if let Some(s) = engine
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
    {
        if pred(&s) {
            return s;
        }
    }
    let r = tokio::time::timeout(timeout, async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.workload.name == name && pred(&ev.workload) => return ev.workload,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    match r {
        Ok(s) => s,
        Err(_) => panic!("timed out; status now {:#?}", engine.status().await),
    }
}

/// Wait until every workload has status `st`, driven by status change events.
pub async fn wait_all(engine: &Engine, st: tokenwarden::engine::Status) {
    let mut rx = engine.subscribe();
    loop {
        let list = engine.status().await.unwrap();
        if list.iter().all(|w| w.status == st) {
            return;
        }
        let _ = rx.recv().await;
    }
}
