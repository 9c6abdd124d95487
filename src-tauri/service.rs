//! How Tokenwarden runs for a config dir, the same for the daemon, the desktop app and
//! the demo: the instance lock, the configuration and its secret store, the engine, the
//! control socket (serving the desktop window when there is one), hand edits of
//! `workloads.toml`, SIGINT and SIGTERM, and an orderly stop (in-flight refreshes finish
//! and save, the state file is written, the socket file goes, the lock is released).
//!
//! [`run`] does it all until a signal or `shutdown`; a shell with a loop of its own (the
//! desktop app's tray, the terminal demo's keyboard) calls [`start`], runs its loop
//! until `shutdown` is cancelled (a signal cancels it too), then [`Service::stop`].

use crate::config_watch::Edit;
use crate::control::Ui;
use crate::engine::config::Config;
use crate::engine::store::SecretStore;
use crate::engine::{Engine, EngineOptions};
use crate::instance::InstanceLock;
use crate::paths::Paths;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the configuration watcher needs: the configuration the engine started with
/// ([`crate::config_watch::running`]) and what to do with each edit.
pub struct Watch {
    pub running: (
        crate::engine::config::StoreKind,
        Option<String>,
        std::time::Duration,
    ),
    pub report: Box<dyn Fn(Edit) + Send + Sync>,
}

/// Which engine runs.
pub enum Workloads {
    /// `workloads.toml` of the config dir with its secret store (the daemon); hand
    /// edits are applied (the log says what became of them).
    Config,
    /// An engine the caller started ([`start_engine`] for the desktop app, the demo's
    /// own); `watch`: hand edits of `workloads.toml` are applied.
    Started {
        engine: Engine,
        watch: Option<Watch>,
    },
}

pub struct Options {
    /// The config dir whose lock and control socket this process holds.
    pub paths: Paths,
    /// What runs, for the log: "daemon", "desktop app", "demo".
    pub what: &'static str,
    /// The lock, when the caller took it already (the desktop app hands over to a
    /// running one first); else it is taken here.
    pub lock: Option<InstanceLock>,
    pub workloads: Workloads,
    /// Serves the desktop window's requests on the control socket.
    pub ui: Ui,
    /// Status changes go to the log (the daemon: the log is all it shows).
    pub log_changes: bool,
    /// Page out the mapped files that only starting touched, this long after the start
    /// (see [`crate::pageout`]); a shell with a UI does it once its UI is up.
    pub page_out_after: Option<Duration>,
}

/// A started service ([`start`]).
pub struct Service {
    engine: Engine,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    lock: InstanceLock,
}

/// The engine for `cfg` with its secret store: the state file of `paths`, every
/// trigger source.
pub fn start_engine(paths: &Paths, cfg: Config, what: &str) -> (Engine, SecretStore) {
    let store = crate::ops::make_store(&cfg, paths);
    tracing::info!(
        config = %paths.config_file.display(),
        workloads = cfg.workloads.len(),
        store = %store.describe(),
        pid = std::process::id(),
        "{what} starting"
    );
    let engine = Engine::start(EngineOptions {
        state_path: Some(paths.state_file.clone()),
        sources: crate::engine::triggers::Sources::all(),
        ..EngineOptions::new(cfg, store.clone())
    });
    (engine, store)
}

/// Run until SIGINT, SIGTERM or `shutdown`, then stop in order.
pub async fn run(options: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(options, shutdown.clone()).await?.run().await;
    Ok(())
}

/// Start: from here SIGINT and SIGTERM cancel `shutdown`. On an error, an engine the
/// caller gave is stopped.
pub async fn start(options: Options, shutdown: CancellationToken) -> anyhow::Result<Service> {
    let Options {
        paths,
        what,
        lock,
        workloads,
        ui,
        log_changes,
        page_out_after,
    } = options;
    let given = match &workloads {
        Workloads::Started { engine, .. } => Some(engine.clone()),
        Workloads::Config => None,
    };
    let started = start_inner(paths, what, lock, workloads, ui, shutdown).await;
    let mut service = match started {
        Ok(s) => s,
        Err(e) => {
            if let Some(engine) = given {
                engine.shutdown().await;
            }
            return Err(e);
        }
    };
    if log_changes {
        let mut events = service.engine.subscribe();
        service.tasks.push(tokio::spawn(async move {
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
        }));
    }
    if let Some(after) = page_out_after {
        // Once started, the pages only starting touched go back (see `pageout`).
        service.tasks.push(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let ranges = tokio::task::spawn_blocking(crate::pageout::mapped_files)
                .await
                .unwrap_or(0);
            tracing::debug!(ranges, "started: paged out mapped files");
        }));
    }
    Ok(service)
}

async fn start_inner(
    paths: Paths,
    what: &'static str,
    lock: Option<InstanceLock>,
    workloads: Workloads,
    ui: Ui,
    shutdown: CancellationToken,
) -> anyhow::Result<Service> {
    // First: a signal while starting stops the service once it runs.
    let mut signals = Signals::new();
    let lock = match lock {
        Some(l) => l,
        None => crate::instance::acquire_lock(&paths)?,
    };
    let owned = matches!(workloads, Workloads::Config);
    let (engine, watch) = match workloads {
        Workloads::Started { engine, watch } => (engine, watch),
        Workloads::Config => {
            let config = crate::ops::load_config(&paths)?;
            let running = crate::config_watch::running(&config);
            let (engine, _) = start_engine(&paths, config, what);
            let watch = Watch {
                running,
                report: Box::new(|_| {}), // the log says it
            };
            (engine, Some(watch))
        }
    };
    let cancel = CancellationToken::new();
    let listener = match crate::control::bind(&paths) {
        Ok(l) => l,
        Err(e) => {
            if owned {
                engine.shutdown().await;
            }
            return Err(e);
        }
    };
    let mut tasks = vec![tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = signals.recv() => {
                    tracing::info!("signal: stopping");
                    shutdown.cancel();
                }
                _ = shutdown.cancelled() => {}
            }
        }
    })];
    if let Some(Watch { running, report }) = watch {
        tasks.push(tokio::spawn(crate::config_watch::watch(
            paths.clone(),
            engine.clone(),
            running,
            cancel.clone(),
            report,
        )));
    }
    let server = tokio::spawn(crate::control::serve(
        listener,
        engine.clone(),
        paths,
        cancel.clone(),
        ui,
    ));
    Ok(Service {
        engine,
        cancel,
        shutdown,
        tasks,
        server,
        lock,
    })
}

impl Service {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Wait for SIGINT, SIGTERM or `shutdown`, then [`Service::stop`].
    pub async fn run(self) {
        self.shutdown.cancelled().await;
        self.stop().await
    }

    /// Stop in order: no new control connections and no config edits; the engine
    /// (in-flight refreshes finish and save, the state file is written); the control
    /// socket's file; the lock.
    pub async fn stop(self) {
        tracing::info!("stopping");
        self.shutdown.cancel();
        self.cancel.cancel();
        self.engine.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.server.await;
        drop(self.lock);
        tracing::info!("stopped");
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), taken over when made: from then on neither
/// ends the process by itself.
pub struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(i), Ok(t)) => Some((i, t)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot watch for SIGTERM; Ctrl-C only");
                    None
                }
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next signal.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.unix {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}
