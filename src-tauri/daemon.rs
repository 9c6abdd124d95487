//! `tokenwarden daemon`: the engine, the control socket, no GUI. Exactly one per
//! config directory ([`crate::instance`]).

use crate::engine::{Engine, EngineOptions};
use crate::instance::acquire_lock;
use crate::ops::{load_config, make_store};
use crate::paths::Paths;

/// Run until SIGINT/SIGTERM.
pub async fn run(paths: Paths) -> anyhow::Result<()> {
    let _lock = acquire_lock(&paths)?;
    let config = load_config(&paths)?;
    let store = make_store(&config, &paths);
    tracing::info!(
        config = %paths.config_file.display(),
        workloads = config.workloads.len(),
        store = %store.describe(),
        pid = std::process::id(),
        "daemon starting"
    );
    let running = crate::config_watch::running(&config);
    let engine = Engine::start(EngineOptions {
        state_path: Some(paths.state_file.clone()),
        sources: crate::engine::triggers::Sources::all(),
        ..EngineOptions::new(config, store)
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::config_watch::run(
        paths.clone(),
        engine.clone(),
        running,
        cancel.clone(),
        |_| {}, // the log says it
    ));
    let listener = crate::control::bind(&paths)?;
    let server = tokio::spawn(crate::control::serve(
        listener,
        engine.clone(),
        paths.clone(),
        cancel.clone(),
        None,
    ));
    let mut events = engine.subscribe();
    let logger = tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            let w = &ev.workload;
            if ev.previous.is_some_and(|p| p != w.status) {
                tracing::info!(
                    workload = %w.name,
                    from = ev.previous.map(|p| p.as_str()).unwrap_or("-"),
                    to = w.status.as_str(),
                    reason = w.reason.as_deref().unwrap_or(""),
                    "status changed"
                );
            }
        }
    });
    // Once started, the pages only starting touched go back (see `pageout`).
    let settle = tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let ranges = tokio::task::spawn_blocking(crate::pageout::mapped_files)
            .await
            .unwrap_or(0);
        tracing::debug!(ranges, "started: paged out mapped files");
    });
    shutdown_signal().await;
    settle.abort();
    tracing::info!("stopping");
    cancel.cancel();
    engine.shutdown().await;
    logger.abort();
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
