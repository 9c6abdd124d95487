//! The supervisor owns the monitors, fans triggers in, publishes status changes and
//! persists the last known status of every workload.
//!
//! Callers reach it through a cloneable [`Engine`] handle that sends
//! `(command, oneshot reply)` pairs (mini-redis `buffered_client` style); no map of
//! monitors is shared behind a lock. Status changes go out on a broadcast channel
//! (`Engine::subscribe`): the control socket's event stream and the desktop shell are
//! both just subscribers.
//!
//! Issuer fan-out: a successful refresh at a token endpoint makes every other workload
//! of that endpoint that is in a failure episode attempt at once.

use crate::clock::Clock;
use crate::config::{Config, WorkloadConfig};
use crate::machine::{Status, Trigger};
use crate::monitor::{self, MonitorCtx, MonitorHandle, MonitorRequest, Report, TokenError};
use crate::oauth;
use crate::policy::Policy;
use crate::secret::Secret;
use crate::status::{Persisted, WorkloadStatus};
use crate::store::{SecretStore, StoreError};
use crate::triggers::{self, Signal, Sources};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A status change as published to subscribers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub workload: WorkloadStatus,
    /// The status before this change (`null` for the first report of a monitor).
    pub previous: Option<Status>,
    /// This change is a successful refresh.
    #[serde(default)]
    pub refreshed: bool,
    pub recovered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("no workload named `{0}` (see `tokenwarden list`)")]
    UnknownWorkload(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    Config(String),
    #[error("the engine has stopped")]
    Stopped,
    #[error("{0}")]
    Store(String),
}

impl EngineError {
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::UnknownWorkload(_) => "unknown_workload",
            EngineError::Token(t) => t.code(),
            EngineError::Config(_) => "config",
            EngineError::Stopped => "stopped",
            EngineError::Store(_) => "store",
        }
    }
}

#[allow(clippy::large_enum_variant)] // one short-lived message per request
enum EngineRequest {
    Status(oneshot::Sender<Vec<WorkloadStatus>>),
    Retry(
        Option<String>,
        Trigger,
        oneshot::Sender<Result<Vec<String>, EngineError>>,
    ),
    Token(
        String,
        oneshot::Sender<
            Result<oneshot::Receiver<Result<monitor::Granted, TokenError>>, EngineError>,
        >,
    ),
    /// Log a workload out (its monitor deletes the stored tokens).
    Logout(
        String,
        oneshot::Sender<Result<oneshot::Receiver<Result<(), StoreError>>, EngineError>>,
    ),
    /// Re-read which workloads exist (`Some` config) and/or whose tokens changed.
    Reload(
        Option<Config>,
        Vec<String>,
        oneshot::Sender<Result<(), EngineError>>,
    ),
}

/// Cloneable handle to the running engine.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<EngineRequest>,
    signals: mpsc::Sender<Signal>,
    events: broadcast::Sender<StatusChange>,
    cancel: CancellationToken,
    done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

pub struct EngineOptions {
    pub config: Config,
    pub store: SecretStore,
    pub clock: Clock,
    /// Where the last known statuses are kept (`None`: not persisted).
    pub state_path: Option<PathBuf>,
    /// Which trigger sources to run (the daemon: all).
    pub sources: Sources,
    /// Replace HTTP with a scripted token endpoint (virtual-time replays). `None`: HTTP.
    pub transport: Option<oauth::Transport>,
}

impl EngineOptions {
    /// System clock, nothing persisted, no trigger sources, HTTP to the issuers.
    /// Callers change what they need: `EngineOptions { sources, ..EngineOptions::new(c, s) }`.
    pub fn new(config: Config, store: SecretStore) -> Self {
        EngineOptions {
            config,
            store,
            clock: Clock::system(),
            state_path: None,
            sources: Sources::none(),
            transport: None,
        }
    }
}

impl Engine {
    pub fn start(opts: EngineOptions) -> Engine {
        let (tx, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(1024);
        let cancel = CancellationToken::new();
        let restored = opts
            .state_path
            .as_ref()
            .map(|p| load_state(p))
            .unwrap_or_default();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (signals_tx, signals_rx) = mpsc::channel(16);
        triggers::spawn(
            opts.sources,
            &opts.config.policy,
            opts.clock.clone(),
            signals_tx.clone(),
            cancel.clone(),
        );
        let sup = Supervisor {
            monitors: BTreeMap::new(),
            policy: Arc::new(opts.config.policy.clone()),
            config: opts.config,
            store: opts.store,
            clock: opts.clock,
            state_path: opts.state_path,
            persisted: restored,
            dirty: false,
            events: events.clone(),
            reports_tx,
            clients: HashMap::new(),
            transport: opts.transport,
            gates: HashMap::new(),
            proxies: HashMap::new(),
            proxy_errors: HashMap::new(),
            proxy_clients: HashMap::new(),
            chosen_ports: Default::default(),
            port_writes: Vec::new(),
        };
        let task = tokio::spawn(sup.run(rx, reports_rx, signals_rx, cancel.clone()));
        Engine {
            tx,
            signals: signals_tx,
            events,
            cancel,
            done: Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> EngineRequest,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Feed a trigger signal in, as a source would (benchmarks, platform hooks).
    pub fn inject(&self, signal: Signal) {
        let _ = self.signals.try_send(signal);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.events.subscribe()
    }

    pub async fn status(&self) -> Result<Vec<WorkloadStatus>, EngineError> {
        self.ask(EngineRequest::Status).await
    }

    /// "Retry now" for one workload, or all (`None`). Returns the names asked.
    pub async fn retry(&self, name: Option<&str>) -> Result<Vec<String>, EngineError> {
        self.trigger(name, Trigger::User).await
    }

    pub async fn trigger(
        &self,
        name: Option<&str>,
        trigger: Trigger,
    ) -> Result<Vec<String>, EngineError> {
        let name = name.map(str::to_string);
        self.ask(|tx| EngineRequest::Retry(name, trigger, tx))
            .await?
    }

    /// A valid access token, refreshing (single-flight) if needed.
    pub async fn token(&self, name: &str) -> Result<Secret, EngineError> {
        Ok(self.granted(name).await?.token)
    }

    /// [`Engine::token`] with the time the token expires at.
    pub async fn granted(&self, name: &str) -> Result<monitor::Granted, EngineError> {
        let n = name.to_string();
        let rx = self.ask(|tx| EngineRequest::Token(n, tx)).await??;
        Ok(rx.await.map_err(|_| EngineError::Stopped)??)
    }

    /// Log `name` out: its monitor stops using the tokens, abandons a refresh in flight
    /// and deletes the stored tokens (after a save already under way, never before);
    /// the workload shows "signed out".
    pub async fn logout(&self, name: &str) -> Result<(), EngineError> {
        let n = name.to_string();
        let rx = self.ask(|tx| EngineRequest::Logout(n, tx)).await??;
        rx.await.map_err(|_| EngineError::Stopped)?.map_err(|e| {
            EngineError::Store(format!(
                "signed out, but the stored tokens could not be deleted: {e}"
            ))
        })
    }

    /// Apply a new configuration and/or reload the tokens of `names`.
    pub async fn reload(
        &self,
        config: Option<Config>,
        names: Vec<String>,
    ) -> Result<(), EngineError> {
        self.ask(|tx| EngineRequest::Reload(config, names, tx))
            .await?
    }

    /// Stop every monitor (in-flight refreshes finish and save), write the state file.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(t) = self.done.lock().await.take() {
            let _ = t.await;
        }
    }
}

struct Supervisor {
    monitors: BTreeMap<String, MonitorHandle>,
    config: Config,
    policy: Arc<Policy>,
    store: SecretStore,
    clock: Clock,
    state_path: Option<PathBuf>,
    persisted: BTreeMap<String, Persisted>,
    dirty: bool,
    events: broadcast::Sender<StatusChange>,
    reports_tx: mpsc::UnboundedSender<Report>,
    /// HTTP clients shared per trust configuration (ca_file).
    clients: HashMap<Option<PathBuf>, reqwest::Client>,
    transport: Option<oauth::Transport>,
    /// One concurrency gate per token endpoint.
    gates: HashMap<url::Url, Arc<monitor::IssuerShared>>,
    /// The local proxy of each workload with a `url`, and why one is missing.
    proxies: HashMap<String, crate::proxy::Proxy>,
    proxy_errors: HashMap<String, String>,
    proxy_clients: HashMap<Option<PathBuf>, reqwest::Client>,
    /// Workloads whose proxy port this supervisor chose (and wrote back to the file).
    chosen_ports: std::collections::HashSet<String>,
    /// Those writes under way: a stop waits for them, so none lands after it (in a
    /// directory its owner then removes, as the demo's).
    port_writes: Vec<tokio::task::JoinHandle<()>>,
}

impl Supervisor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<EngineRequest>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut signals: mpsc::Receiver<Signal>,
        cancel: CancellationToken,
    ) {
        // Each monitor keeps the one shared copy of its configuration.
        let initial: Vec<WorkloadConfig> = std::mem::take(&mut self.config.workloads);
        for w in initial {
            self.spawn_monitor(w);
        }
        let debounce = Duration::from_millis(100);
        let mut flush_at: Option<tokio::time::Instant> = None;
        // Network changes settle before anyone acts on them; a burst of address events
        // inside the settle time is one trigger.
        let mut network_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(report) = reports.recv() => {
                    self.on_report(report);
                    if self.dirty && flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + debounce);
                    }
                }
                _ = async { tokio::time::sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {
                    flush_at = None;
                    self.flush().await;
                }
                Some(signal) = signals.recv() => match signal {
                    Signal::NetworkUp { addr } => {
                        if network_at.is_none() {
                            tracing::info!(%addr, settle = ?self.policy.network_settle, "network changed: an address came up");
                            network_at = Some(tokio::time::Instant::now() + self.policy.network_settle);
                        }
                    }
                    Signal::Wake { slept, source } => {
                        tracing::info!(?slept, source, "woke from sleep: re-checking every workload");
                        self.broadcast_trigger(Trigger::Wake);
                    }
                },
                _ = async { tokio::time::sleep_until(network_at.expect("guarded")).await }, if network_at.is_some() => {
                    network_at = None;
                    self.broadcast_trigger(Trigger::Network);
                }
            }
        }
        for (_, p) in std::mem::take(&mut self.proxies) {
            p.stop().await;
        }
        for w in std::mem::take(&mut self.port_writes) {
            let _ = w.await;
        }
        let monitors = std::mem::take(&mut self.monitors);
        for (_, m) in monitors {
            m.stop().await;
        }
        while let Ok(report) = reports.try_recv() {
            self.on_report(report);
        }
        self.flush().await;
    }

    fn transport_for(&mut self, w: &WorkloadConfig) -> oauth::Transport {
        if let Some(t) = &self.transport {
            return t.clone();
        }
        if let Some(c) = self.clients.get(&w.ca_file) {
            return oauth::Transport::Http(c.clone());
        }
        let client = oauth::http_client(&self.policy, w.ca_file.as_deref()).unwrap_or_else(|e| {
            tracing::error!(workload = %w.name, error = %e, "falling back to the system trust store");
            oauth::http_client(&self.policy, None).expect("a default client builds")
        });
        self.clients.insert(w.ca_file.clone(), client.clone());
        oauth::Transport::Http(client)
    }

    fn spawn_monitor(&mut self, w: WorkloadConfig) {
        let limit = self.policy.issuer_max_concurrent.max(1) as usize;
        let gate = self
            .gates
            .entry(w.token_endpoint.clone())
            .or_insert_with(|| Arc::new(monitor::IssuerShared::new(limit)))
            .clone();
        let name = w.name.clone();
        let ctx = MonitorCtx {
            issuer: gate,
            transport: self.transport_for(&w),
            workload: Arc::new(w),
            store: self.store.clone(),
            policy: self.policy.clone(),
            clock: self.clock.clone(),
        };
        let restored = self.persisted.get(&name).cloned();
        let mut handle = monitor::spawn(ctx, restored, self.reports_tx.clone());
        if let Some(port) = self.start_proxy(&handle) {
            self.chosen_ports.insert(name.clone());
            // The port now written to workloads.toml is part of this workload's
            // configuration: the next reload must not see a change (and restart it).
            handle.workload = Arc::new(WorkloadConfig {
                listen_port: Some(port),
                ..(*handle.workload).clone()
            });
        }
        self.monitors.insert(name, handle);
    }

    /// Start the local proxy of a workload that has a remote `url`. A port that cannot
    /// be had is reported in the status (`proxy_error`), not fatal. Returns the port
    /// the system chose when the configuration named none (it is being kept).
    fn start_proxy(&mut self, m: &MonitorHandle) -> Option<u16> {
        let w = &m.workload;
        let (Some(url), true) = (&w.url, w.enabled) else {
            return None;
        };
        let http = match self.proxy_clients.get(&w.ca_file) {
            Some(c) => c.clone(),
            None => match crate::proxy::http_client(&self.policy, w.ca_file.as_deref()) {
                Ok(c) => {
                    self.proxy_clients.insert(w.ca_file.clone(), c.clone());
                    c
                }
                Err(e) => {
                    self.proxy_errors.insert(w.name.clone(), e);
                    return None;
                }
            },
        };
        let path_secret = match crate::proxy::path_secret_for(&self.config.path, &w.name) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("the local proxy's path secret cannot be had: {e}");
                self.proxy_errors.insert(w.name.clone(), msg);
                return None;
            }
        };
        let port = w.listen_port.unwrap_or(0);
        let started = crate::proxy::bind(port).and_then(|l| {
            crate::proxy::spawn(
                l,
                crate::proxy::ProxyCtx {
                    name: w.name.clone(),
                    upstream: url.clone(),
                    monitor: m.shared.clone(),
                    http,
                    policy: self.policy.clone(),
                    path_secret,
                },
            )
        });
        match started {
            Ok(p) => {
                tracing::info!(workload = %w.name, local = %crate::proxy::local_url(p.addr, url, None), "local proxy listening");
                self.proxy_errors.remove(&w.name);
                let chosen = w.listen_port.is_none().then_some(p.addr.port());
                if let Some(port) = chosen {
                    self.keep_port(&w.name, port);
                }
                self.proxies.insert(w.name.clone(), p);
                chosen
            }
            Err(e) => {
                let msg = format!("the local proxy cannot listen on 127.0.0.1:{port}: {e}");
                tracing::error!(workload = %w.name, "{msg}");
                self.proxy_errors.insert(w.name.clone(), msg);
                None
            }
        }
    }

    /// A proxy port chosen by the system is written to workloads.toml, so clients
    /// configured with it keep working after a restart.
    fn keep_port(&mut self, name: &str, port: u16) {
        let path = self.config.path.clone();
        if !path.exists() {
            return;
        }
        let name = name.to_string();
        self.port_writes.retain(|w| !w.is_finished());
        self.port_writes.push(tokio::task::spawn_blocking(move || {
            match crate::config::set_listen_port(&path, &name, port) {
                Ok(_) => {
                    tracing::info!(workload = %name, port, "kept the proxy port in workloads.toml")
                }
                Err(e) => {
                    tracing::warn!(workload = %name, error = %e, "could not keep the proxy port in workloads.toml")
                }
            }
        }));
    }

    /// Whether `wanted` is the configuration workload `name` runs with. A proxy port
    /// this supervisor chose and wrote back, missing from `wanted` (an editor saved a
    /// copy of the file from before it was written), is the same workload: its port is
    /// kept and written back again, so clients configured with it keep working.
    fn unchanged(&mut self, name: &str, wanted: &WorkloadConfig) -> bool {
        let Some(m) = self.monitors.get(name) else {
            return false;
        };
        if *m.workload == *wanted {
            return true;
        }
        let lost_port = wanted.listen_port.is_none()
            && self.chosen_ports.contains(name)
            && *m.workload
                == WorkloadConfig {
                    listen_port: m.workload.listen_port,
                    ..wanted.clone()
                };
        if let (true, Some(port)) = (lost_port, m.workload.listen_port) {
            tracing::info!(workload = %name, port, "workloads.toml lost the proxy port chosen for this workload; keeping it");
            self.keep_port(name, port);
            return true;
        }
        false
    }

    /// Stop a workload's monitor and its proxy.
    async fn stop_workload(&mut self, name: &str) {
        if let Some(p) = self.proxies.remove(name) {
            p.stop().await;
        }
        self.proxy_errors.remove(name);
        self.chosen_ports.remove(name);
        if let Some(m) = self.monitors.remove(name) {
            m.stop().await;
        }
    }

    /// The engine's view plus what only the supervisor knows (the proxy).
    fn decorate(&self, s: &mut WorkloadStatus) {
        let m = self.monitors.get(&s.name);
        s.local_url = self.proxies.get(&s.name).and_then(|p| {
            m.and_then(|m| m.workload.url.as_ref())
                .map(|u| crate::proxy::local_url(p.addr, u, p.path_secret.as_ref()))
        });
        s.proxy_error = self.proxy_errors.get(&s.name).cloned();
    }

    fn on_report(&mut self, mut r: Report) {
        let name = r.status.name.clone();
        if !self.monitors.contains_key(&name) {
            return; // a removed workload's last words
        }
        self.persisted.insert(name.clone(), r.persisted);
        self.dirty = true;
        if r.refreshed {
            self.fan_out(&name);
        }
        self.decorate(&mut r.status);
        let _ = self.events.send(StatusChange {
            workload: r.status,
            previous: r.previous,
            refreshed: r.refreshed,
            recovered: r.recovered,
        });
    }

    /// Offer a trigger to every monitor; each one's state machine decides.
    fn broadcast_trigger(&self, trigger: Trigger) {
        for m in self.monitors.values() {
            m.shared.offer(MonitorRequest::Trigger(trigger));
        }
    }

    /// A refresh succeeded at `name`'s token endpoint: its failing siblings try now.
    fn fan_out(&self, name: &str) {
        let Some(src) = self.monitors.get(name) else {
            return;
        };
        let endpoint = &src.workload.token_endpoint;
        for (other, m) in &self.monitors {
            if other == name || &m.workload.token_endpoint != endpoint {
                continue;
            }
            if m.shared.in_failure_episode() {
                m.shared
                    .offer(MonitorRequest::Trigger(Trigger::IssuerRecovered));
            }
        }
    }

    async fn handle(&mut self, cmd: EngineRequest) {
        match cmd {
            EngineRequest::Status(reply) => {
                let list = self
                    .monitors
                    .values()
                    .map(|m| {
                        let mut s = m.shared.status();
                        self.decorate(&mut s);
                        s
                    })
                    .collect();
                let _ = reply.send(list);
            }
            EngineRequest::Retry(name, trigger, reply) => {
                let targets: Vec<String> = match name {
                    Some(n) if self.monitors.contains_key(&n) => vec![n],
                    Some(n) => {
                        let _ = reply.send(Err(EngineError::UnknownWorkload(n)));
                        return;
                    }
                    None => self.monitors.keys().cloned().collect(),
                };
                for t in &targets {
                    if let Some(m) = self.monitors.get(t) {
                        // A monitor with a backlog gains nothing from another copy.
                        m.shared.offer(MonitorRequest::Trigger(trigger));
                    }
                }
                let _ = reply.send(Ok(targets));
            }
            EngineRequest::Token(name, reply) => match self.monitors.get(&name) {
                Some(m) => {
                    let (tx, rx) = oneshot::channel();
                    let r = match m.shared.send(MonitorRequest::Token(tx)) {
                        Ok(()) => Ok(rx),
                        Err(_) => Err(EngineError::Stopped),
                    };
                    let _ = reply.send(r);
                }
                None => {
                    let _ = reply.send(Err(EngineError::UnknownWorkload(name)));
                }
            },
            EngineRequest::Logout(name, reply) => match self.monitors.get(&name) {
                Some(m) => {
                    let (tx, rx) = oneshot::channel();
                    let r = match m.shared.send(MonitorRequest::Logout(tx)) {
                        Ok(()) => Ok(rx),
                        Err(_) => Err(EngineError::Stopped),
                    };
                    let _ = reply.send(r);
                }
                None => {
                    let _ = reply.send(Err(EngineError::UnknownWorkload(name)));
                }
            },
            EngineRequest::Reload(config, names, reply) => {
                if let Some(cfg) = config {
                    self.apply_config(cfg).await;
                }
                for n in &names {
                    if let Some(m) = self.monitors.get(n) {
                        let _ = m.shared.send(MonitorRequest::Reload);
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn apply_config(&mut self, cfg: Config) {
        // `config_check_interval` is read by the config watcher only: changing it alone
        // restarts nothing.
        let monitors_see_a_change = Policy {
            config_check_interval: self.policy.config_check_interval,
            ..cfg.policy.clone()
        } != *self.policy;
        if !monitors_see_a_change && cfg.policy != *self.policy {
            self.policy = Arc::new(cfg.policy.clone());
        }
        if monitors_see_a_change {
            tracing::info!("policy changed; restarting monitors");
            self.policy = Arc::new(cfg.policy.clone());
            self.clients.clear();
            self.gates.clear();
            self.proxy_clients.clear();
            let all: Vec<String> = self.monitors.keys().cloned().collect();
            for name in all {
                self.stop_workload(&name).await;
            }
        }
        let wanted: BTreeMap<String, WorkloadConfig> = cfg
            .workloads
            .iter()
            .map(|w| (w.name.clone(), w.clone()))
            .collect();
        let existing: Vec<String> = self.monitors.keys().cloned().collect();
        for name in existing {
            let keep = wanted.get(&name).is_some_and(|w| self.unchanged(&name, w));
            if !keep {
                self.stop_workload(&name).await;
                if !wanted.contains_key(&name) {
                    tracing::info!(workload = %name, "workload removed");
                    self.persisted.remove(&name);
                    self.dirty = true;
                }
            }
        }
        for (name, w) in wanted {
            if !self.monitors.contains_key(&name) {
                tracing::info!(workload = %name, "workload started");
                self.spawn_monitor(w);
            }
        }
        self.config = Config {
            workloads: Vec::new(),
            ..cfg
        };
        self.flush().await;
    }

    async fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let state = StateFile {
            version: 1,
            workloads: self.persisted.clone(),
        };
        let bytes = match serde_json::to_vec_pretty(&state) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize the state file");
                return;
            }
        };
        let result =
            tokio::task::spawn_blocking(move || crate::config::write_atomic(&path, &bytes, true))
                .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the state file"),
            Err(e) => tracing::error!(error = %e, "state writer failed"),
        }
    }
}

/// `state.json`: the last known status per workload. Holds no secrets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub workloads: BTreeMap<String, Persisted>,
}

/// Read the state file. A damaged one is set aside (renamed, never deleted) and the
/// engine starts fresh.
pub fn load_state(path: &std::path::Path) -> BTreeMap<String, Persisted> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the state file; starting fresh");
            return BTreeMap::new();
        }
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(s) => s.workloads,
        Err(e) => {
            let aside = path.with_extension(format!(
                "json.damaged-{}",
                crate::store::unix_secs(std::time::SystemTime::now())
            ));
            let _ = std::fs::rename(path, &aside);
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "the state file was damaged; set it aside and starting fresh");
            BTreeMap::new()
        }
    }
}
