//! The desktop shell (feature `desktop`): tray icon, notifications and a window over
//! the same [`Engine`] the daemon runs, with the control socket, so the CLI keeps
//! working while the app runs. With no workload configured it runs over the built-in
//! [`Demo`], with demo controls in the window.
//!
//! Two programs: this one (`tokenwarden`) owns the engine, the tray, the notifications
//! and everything the window shows, and links no web view; the window is a program of
//! its own (`tokenwarden-window`, `src-tauri/window/`, the Tauri app), started when it
//! is opened and gone when it is closed, that runs each command and receives each event
//! over the control socket ([`crate::control::UiHost`]). WebKit (its web and network
//! processes, Mesa, JavaScriptCore) thus lives only while the window is open, and a
//! crash of the web view cannot take the engine and its proxies down.
//!
//! Invariants:
//! * the engine knows nothing of the shell: the shell is one more subscriber of
//!   [`Engine::subscribe`] and turns status changes into tray updates, notifications
//!   and `status` events for the window (never polling);
//! * nothing secret reaches the webview: events and command results carry
//!   [`WorkloadStatus`] (which holds no secret), names and error messages;
//! * one instance per config directory: the daemon's file lock; a second launch asks
//!   the first, over its control socket, to show its window, and exits;
//! * closing the window keeps the tray app running (the window's process ends, its
//!   memory returned); "Quit" (or SIGTERM) stops the engine cleanly — in-flight refreshes
//!   finish and save, the state file is written — before the process exits.

pub mod autostart;
pub mod commands;
pub mod connect;
pub mod memory;
pub mod notify;
pub mod tray;
pub mod ui_loop;

use crate::demo::Demo;
use crate::engine::config::Config;
use crate::engine::status::WorkloadStatus;
use crate::engine::store::SecretStore;
use crate::engine::{Engine, Status, StatusChange};
use crate::paths::Paths;
use crate::protocol::{Error, ErrorCode, Request, UiCommand, UiEvent, UiEventKind, WindowAnswer};
use notify::{Notifier, NotifyPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use time::OffsetDateTime;
use tokenwarden_sim::issuer::Mode;
use tokio_util::sync::CancellationToken;

/// The window's program, next to this one.
pub const WINDOW_PROGRAM: &str = "tokenwarden-window";
/// How many recent attempts the timeline of a workload keeps.
const TIMELINE_LEN: usize = 8;

/// What the shell runs over.
pub enum Backend {
    /// The user's workloads.
    Real { engine: Engine, store: SecretStore },
    /// The built-in demo (nothing configured).
    Demo(Box<Demo>),
}

/// One line of a workload's timeline of recent attempts.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub ok: bool,
    pub status: Status,
    pub what: String,
}

/// A workload as the window shows it: the engine's status plus the shell's own data.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub status: WorkloadStatus,
    /// The cause in plain words (RFC 6749 codes explained), `null` when healthy.
    pub plain_reason: Option<String>,
    pub timeline: Vec<TimelineEntry>,
    pub notifications: bool,
    /// What an MCP client needs to reach the local proxy (`local_url`), pretty-printed
    /// exactly as `tokenwarden client-config NAME` prints it; `null` without a proxy.
    pub client_config: Option<String>,
    /// Why the local proxy is not serving (`proxy_error`), in plain words.
    pub plain_proxy_error: Option<String>,
    /// Increases with every change of this process's view (see `ShellState::version`).
    pub version: u64,
}

#[derive(Clone, Debug, Serialize)]
struct StatusEvent {
    #[serde(flatten)]
    row: Row,
    previous: Option<Status>,
    refreshed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoginEvent {
    pub name: String,
    /// `waiting` (for the browser), `done` or `failed`.
    pub state: &'static str,
    pub message: String,
}

/// The demo issuer as the demo panel shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DemoState {
    pub mode: &'static str,
    pub refresh_requests: u64,
    pub code_exchanges: u64,
}

#[derive(Default)]
struct ShellState {
    statuses: BTreeMap<String, WorkloadStatus>,
    /// Bumped on every change; each row carries the value of its last change, so the
    /// window can drop an answer older than an event it already showed.
    version: u64,
    versions: HashMap<String, u64>,
    timeline: HashMap<String, VecDeque<TimelineEntry>>,
    muted: BTreeSet<String>,
    menu_key: Option<tray::MenuKey>,
}

/// Everything the commands, the tray and the event forwarder share.
pub struct Shell {
    pub backend: Backend,
    /// The user's config dir (for a demo: where the demo was started from).
    pub paths: Paths,
    /// The config dir whose control socket this process serves (the demo's own).
    pub control_paths: Paths,
    state: Mutex<ShellState>,
    notifier: Mutex<Notifier>,
    /// Where per-workload notification switches are kept (`None` for the demo).
    prefs_file: Option<PathBuf>,
    /// The demo's grant was revoked (until "Heal").
    demo_revoked: std::sync::atomic::AtomicBool,
    /// Sign-ins waiting for the browser, by workload; a new one cancels the old one
    /// and waits for its listener to close before binding.
    logins: Arc<crate::engine::oauth::WaitingLogins>,
    /// The last `login` event of each sign-in still waiting (for a window opened later).
    logins_waiting: Mutex<BTreeMap<String, LoginEvent>>,
    /// Hand edits of workloads.toml: how many were handled, and why the last one could
    /// not be used (until one can).
    pub config_edits: tokio::sync::watch::Sender<ConfigEdits>,
    /// What the window is sent (its process subscribes over the control socket).
    events: tokio::sync::broadcast::Sender<UiEvent>,
    /// The tray exists (its menu is then kept up to date).
    tray_made: AtomicBool,
    /// The processes this app starts, and whether it is quitting, under one lock: a
    /// window or demo is never started once the quit has begun.
    children: Mutex<Children>,
    /// The runtime the engine runs on (the window's process is watched there).
    rt: tokio::runtime::Handle,
}

/// The window's and the demo's process, and the quit that ends them.
#[derive(Default)]
struct Children {
    /// The window's process while it runs.
    window: Option<WindowProcess>,
    /// The demo started by "Try the demo", while it runs (a process of its own).
    demo: Option<DemoProcess>,
    /// The tray's loop ended: no new window, no new demo.
    quitting: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ConfigEdits {
    pub applied: u64,
    pub error: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Prefs {
    #[serde(default)]
    notifications_off: BTreeSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shell {
    /// The app began to quit (no new window or demo).
    pub fn quitting(&self) -> bool {
        lock(&self.children).quitting
    }

    pub fn new(backend: Backend, paths: Paths, control_paths: Paths) -> Shell {
        let prefs_file = match &backend {
            Backend::Real { .. } => Some(paths.config_dir.join("desktop.json")),
            Backend::Demo(_) => None,
        };
        let muted = prefs_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Prefs>(&b).ok())
            .unwrap_or_default()
            .notifications_off;
        Shell {
            backend,
            paths,
            control_paths,
            state: Mutex::new(ShellState {
                muted,
                ..ShellState::default()
            }),
            notifier: Mutex::new(Notifier::new(NotifyPolicy::from_env())),
            prefs_file,
            demo_revoked: std::sync::atomic::AtomicBool::new(false),
            logins: Arc::default(),
            logins_waiting: Mutex::new(BTreeMap::new()),
            config_edits: tokio::sync::watch::Sender::new(ConfigEdits::default()),
            events: tokio::sync::broadcast::Sender::new(256),
            tray_made: AtomicBool::new(false),
            children: Mutex::new(Children::default()),
            rt: tokio::runtime::Handle::current(),
        }
    }

    /// Send the window an event (dropped when no window is open).
    pub fn emit(&self, event: UiEventKind, payload: impl Serialize) {
        if self.events.receiver_count() == 0 {
            return; // no window: not even encoded
        }
        match serde_json::to_value(payload) {
            Ok(payload) => {
                let _ = self.events.send(UiEvent { event, payload });
            }
            Err(e) => {
                tracing::warn!(event = event.as_str(), error = %e, "cannot encode a window event")
            }
        }
    }

    pub fn engine(&self) -> &Engine {
        match &self.backend {
            Backend::Real { engine, .. } => engine,
            Backend::Demo(d) => &d.engine,
        }
    }

    pub fn demo(&self) -> Option<&Demo> {
        match &self.backend {
            Backend::Demo(d) => Some(d),
            Backend::Real { .. } => None,
        }
    }

    pub fn set_demo_revoked(&self, revoked: bool) {
        self.demo_revoked
            .store(revoked, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn demo_state(&self) -> Option<DemoState> {
        let revoked = self.demo_revoked.load(std::sync::atomic::Ordering::Relaxed);
        self.demo().map(|d| DemoState {
            mode: match d.issuer.mode() {
                Mode::Healthy if revoked => "healthy, but the grant was revoked (invalid_grant)",
                Mode::Healthy => "healthy",
                Mode::Waf403 => "blocking refreshes (WAF 403 page)",
                Mode::Down => "down (connections refused)",
                _ => "misbehaving",
            },
            refresh_requests: d.issuer.refresh_requests(),
            code_exchanges: d.issuer.code_exchanges(),
        })
    }

    fn row_locked(st: &ShellState, w: &WorkloadStatus) -> Row {
        Row {
            plain_reason: w
                .reason
                .as_ref()
                .map(|r| notify::plain_reason(Some(r.as_str()))),
            timeline: st
                .timeline
                .get(&w.name)
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
            notifications: !st.muted.contains(&w.name),
            client_config: w.local_url.as_deref().map(|u| {
                serde_json::to_string_pretty(&crate::engine::proxy::client_config(&w.name, u))
                    .unwrap_or_default()
            }),
            plain_proxy_error: w.proxy_error.as_deref().map(plain_proxy_error),
            version: st.versions.get(&w.name).copied().unwrap_or(0),
            status: w.clone(),
        }
    }

    /// Replace the whole list (startup, a lagged subscriber, after a reload).
    pub fn replace_all(&self, list: Vec<WorkloadStatus>) -> Vec<Row> {
        let mut st = lock(&self.state);
        st.statuses = list.into_iter().map(|w| (w.name.clone(), w)).collect();
        st.version += 1;
        let v = st.version;
        st.versions = st.statuses.keys().map(|n| (n.clone(), v)).collect();
        let names: BTreeSet<String> = st.statuses.keys().cloned().collect();
        st.timeline.retain(|k, _| names.contains(k));
        st.statuses
            .values()
            .map(|w| Self::row_locked(&st, w))
            .collect()
    }

    pub fn rows(&self) -> Vec<Row> {
        let st = lock(&self.state);
        st.statuses
            .values()
            .map(|w| Self::row_locked(&st, w))
            .collect()
    }

    fn forget(&self, name: &str) {
        let mut st = lock(&self.state);
        st.statuses.remove(name);
        st.timeline.remove(name);
        st.versions.remove(name);
    }

    /// Take in a status change: the new row, and whether notifications are muted.
    fn apply(&self, ch: &StatusChange) -> (Row, bool) {
        let mut st = lock(&self.state);
        let w = &ch.workload;
        let before = st.statuses.get(&w.name).cloned();
        let entry = if ch.refreshed {
            Some((true, "token refreshed".to_string()))
        } else if ch.previous.is_some() && ch.previous != Some(w.status) {
            Some((
                w.status == Status::Running,
                match &w.reason {
                    Some(r) if w.status != Status::Running => format!(
                        "now {}: {}",
                        w.status.as_str(),
                        notify::plain_reason(Some(r))
                    ),
                    _ => format!("now {}", w.status.as_str()),
                },
            ))
        } else if before.as_ref().is_some_and(|b| w.attempts > b.attempts) {
            Some((
                false,
                format!(
                    "attempt failed: {}",
                    notify::plain_reason(w.reason.as_deref())
                ),
            ))
        } else {
            None
        };
        if let Some((ok, what)) = entry {
            let t = st.timeline.entry(w.name.clone()).or_default();
            t.push_back(TimelineEntry {
                at: OffsetDateTime::now_utc(),
                ok,
                status: w.status,
                what,
            });
            while t.len() > TIMELINE_LEN {
                t.pop_front();
            }
        }
        st.statuses.insert(w.name.clone(), w.clone());
        st.version += 1;
        let v = st.version;
        st.versions.insert(w.name.clone(), v);
        let muted = st.muted.contains(&w.name);
        (Self::row_locked(&st, w), muted)
    }

    /// Does the tray menu need rebuilding (a status word changed)?
    fn take_menu_change(&self) -> Option<Vec<WorkloadStatus>> {
        let mut st = lock(&self.state);
        let list: Vec<WorkloadStatus> = st.statuses.values().cloned().collect();
        let key = tray::menu_key(&list);
        if st.menu_key.as_ref() == Some(&key) {
            return None;
        }
        st.menu_key = Some(key);
        Some(list)
    }

    pub fn set_muted(&self, name: &str, muted: bool) -> std::io::Result<Option<Row>> {
        let mut st = lock(&self.state);
        if muted {
            st.muted.insert(name.to_string());
        } else {
            st.muted.remove(name);
        }
        if let Some(p) = &self.prefs_file {
            let prefs = Prefs {
                notifications_off: st.muted.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&prefs).unwrap_or_default();
            crate::engine::config::write_atomic(p, &bytes, false)?;
        }
        Ok(st.statuses.get(name).map(|w| Self::row_locked(&st, w)))
    }
}

/// The local proxy's problem in plain words, with what to do about it.
pub fn plain_proxy_error(e: &str) -> String {
    let lower = e.to_ascii_lowercase();
    let port = e
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|p| !p.is_empty());
    let at = port.map(|p| format!(" 127.0.0.1:{p}")).unwrap_or_default();
    if lower.contains("address already in use") || lower.contains("os error 98") {
        format!(
            "The local proxy is not running: another program already uses{at}. Close that program, or give this workload another listen_port in workloads.toml."
        )
    } else if lower.contains("permission denied") || lower.contains("os error 13") {
        format!(
            "The local proxy is not running: it is not allowed to listen on{at}. Give this workload a listen_port above 1024 in workloads.toml."
        )
    } else {
        format!("The local proxy is not running: {e}")
    }
}

/// Refresh the tray from the shell's statuses (only when a status word changed: the
/// icon and the menu show nothing else).
fn refresh_tray(shell: &Shell) {
    if !shell.tray_made.load(Ordering::Acquire) {
        return; // not made yet: it starts from the current list
    }
    if let Some(list) = shell.take_menu_change() {
        tray::update(list);
    }
}

/// What [`show_window`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowShown {
    /// The open window was asked to the front.
    Focused,
    /// A window's process was started.
    Opened,
    /// No window: why, in words for the user (also notified).
    Unavailable(String),
}

/// Show the window: focus it when its process runs, else start that process (on the
/// control socket this app serves: the demo's own for the demo).
pub fn show_window(shell: &Shell) -> WindowShown {
    let unavailable = |why: String| {
        tracing::error!(error = %why, "cannot open the window");
        notify::show_problem("Tokenwarden cannot open its window", &why);
        WindowShown::Unavailable(why)
    };
    let mut children = lock(&shell.children);
    if children.quitting {
        return WindowShown::Unavailable("Tokenwarden is quitting".into());
    }
    let slot = &mut children.window;
    // A window that is closing cannot come to the front: a new one is started (the
    // closing one ends by itself).
    if slot
        .as_ref()
        .is_some_and(|w| !w.closing && !*w.done.borrow())
    {
        shell.emit(UiEventKind::Focus, ());
        return WindowShown::Focused;
    }
    let exe = match window_program() {
        Ok(exe) => exe,
        Err(e) => return unavailable(format!("Cannot find this program: {e}.")),
    };
    // The window talks to this process: one of another protocol version (a package
    // upgrade replaced it since this app started) refuses at the hello and exits with
    // EXIT_VERSION_MISMATCH, which is told to the user below.
    if !exe.is_file() {
        return unavailable(format!(
            "{} is missing: build both programs (`cargo build --bins`) or reinstall Tokenwarden. The tray and your workloads keep running.",
            exe.display()
        ));
    }
    let _rt = shell.rt.enter();
    let spawned = tokio::process::Command::new(&exe)
        .arg("--config-dir")
        .arg(&shell.control_paths.config_dir)
        .stdin(std::process::Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return unavailable(format!(
                "Starting {} failed ({e}). The tray and your workloads keep running; reinstalling Tokenwarden should help.",
                exe.display()
            ))
        }
    };
    let pid = child.id();
    tracing::info!(pid, "window opened");
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let (kill, kill_rx) = tokio::sync::oneshot::channel::<()>();
    shell.rt.spawn(async move {
        tokio::select! {
            status = child.wait() => match status {
                Ok(s) if s.success() => tracing::info!(pid, "window closed"),
                Ok(s) if s.code() == Some(crate::protocol::EXIT_VERSION_MISMATCH.into()) => {
                    let why = "Tokenwarden was updated since it started: quit it from the tray and start it again to open the window. Your workloads keep running meanwhile.";
                    tracing::error!(pid, error = %why, "the window's program speaks another protocol version");
                    notify::show_problem("Tokenwarden cannot open its window", why);
                }
                Ok(s) => tracing::warn!(pid, status = %s, "the window's process ended abnormally"),
                Err(e) => tracing::warn!(pid, error = %e, "cannot wait for the window's process"),
            },
            // Asked for (a dropped sender, when a new window replaced a closing one,
            // is not a request: that one ends by itself).
            Ok(()) = kill_rx => {
                tracing::warn!(pid, "the window's process did not end with the app: killed");
                let _ = child.kill().await;
            }
        }
        let _ = done_tx.send(true);
        // Library pages this process shared with the window's were not given back at
        // start (shared pages stay); once WebKit's processes have followed the window's
        // (a moment later) they are this process's alone.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let ranges = tokio::task::spawn_blocking(crate::pageout::mapped_files)
            .await
            .unwrap_or(0);
        tracing::debug!(ranges, "window gone: paged out mapped files");
    });
    *slot = Some(WindowProcess {
        pid,
        done,
        kill: Some(kill),
        closing: false,
    });
    WindowShown::Opened
}

/// The window's program: `tokenwarden-window` beside this program.
fn window_program() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let name = format!("{WINDOW_PROGRAM}{}", std::env::consts::EXE_SUFFIX);
    Ok(exe.with_file_name(name))
}

/// The window's process while it runs.
struct WindowProcess {
    pid: Option<u32>,
    /// Its window was closed (it said so): the process is on its way out.
    closing: bool,
    /// Becomes true once the process ended (and was reaped).
    done: tokio::sync::watch::Receiver<bool>,
    /// Kills it.
    kill: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The window's process says its window was closed (`window_closing`).
fn window_closing(shell: &Shell, pid: u32) {
    if let Some(w) = lock(&shell.children)
        .window
        .as_mut()
        .filter(|w| w.pid == Some(pid))
    {
        w.closing = true;
    }
}

/// Close the window's process (the app quits): it ends by itself once the control
/// socket closes; one that has not within two seconds is killed.
async fn close_window(shell: &Shell) {
    let Some(mut w) = lock(&shell.children).window.take() else {
        return;
    };
    let wait = std::time::Duration::from_secs(2);
    if tokio::time::timeout(wait, w.done.wait_for(|d| *d))
        .await
        .is_err()
    {
        if let Some(k) = w.kill.take() {
            let _ = k.send(());
        }
        let _ = tokio::time::timeout(wait, w.done.wait_for(|d| *d)).await;
    }
}

/// The demo started from the window ("Try the demo"): `tokenwarden demo --dir DIR`,
/// a tray app and window of its own on a throwaway config dir.
struct DemoProcess {
    dir: PathBuf,
    /// Becomes true once the process ended (and was reaped, its dir removed).
    done: tokio::sync::watch::Receiver<bool>,
    /// Stops it (SIGTERM: its clean stop; killed after five seconds).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What "Try the demo" did.
#[derive(Clone, Debug, Serialize)]
pub struct DemoStarted {
    /// `started`, or `focused` (it ran already: its window was brought to the front).
    pub state: &'static str,
    /// Its config dir (`tokenwarden --config-dir DIR status` shows it).
    pub dir: String,
}

/// "Try the demo": start the demo as a process of its own on a new private temporary
/// dir, or bring the running one's window to the front. The demo removes its dir when
/// it ends; this app removes it too once the process is gone (killed, say).
pub async fn start_demo(shell: &Shell) -> Result<DemoStarted, String> {
    let running = {
        let children = lock(&shell.children);
        if children.quitting {
            return Err("Tokenwarden is quitting".into());
        }
        children
            .demo
            .as_ref()
            .filter(|d| !*d.done.borrow())
            .map(|d| d.dir.clone())
    };
    if let Some(dir) = running {
        let paths = Paths::resolve(Some(dir.clone())).map_err(|e| format!("{e:#}"))?;
        return match ask_first(&paths, false).await {
            Asked::Done(_) => Ok(DemoStarted {
                state: "focused",
                dir: dir.display().to_string(),
            }),
            Asked::NoAnswer(_) => {
                Err("The demo is still starting: its window opens in a moment.".into())
            }
            Asked::Failed(why) => Err(format!(
                "The demo runs, but its window cannot be opened: {why}"
            )),
            Asked::Daemon => Err("The demo runs without a window.".into()),
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("Cannot find this program: {e}."))?;
    let dir = tempfile::Builder::new()
        .prefix("tokenwarden-demo-")
        .tempdir()
        .map_err(|e| format!("Cannot make a directory for the demo: {e}."))?
        .keep();
    let _rt = shell.rt.enter();
    let spawned = tokio::process::Command::new(&exe)
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        // The demo never reads the user's config dir.
        .env_remove("TOKENWARDEN_CONFIG_DIR")
        .env_remove("TOKENWARDEN_START_HIDDEN")
        .stdin(std::process::Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("Starting the demo failed ({e})."));
        }
    };
    let pid = child.id();
    tracing::info!(pid, dir = %dir.display(), "demo started");
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gone = dir.clone();
    shell.rt.spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            Ok(()) = stop_rx => {
                // Not reaped yet (this task owns it): the pid is still the demo's.
                #[cfg(unix)]
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
                #[cfg(not(unix))]
                let _ = child.start_kill();
                match tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::warn!(pid, "the demo did not stop within 5 s: killed");
                        let _ = child.kill().await;
                        child.wait().await
                    }
                }
            }
        };
        match status {
            Ok(s) if s.success() => tracing::info!(pid, "demo ended"),
            Ok(s) => tracing::warn!(pid, status = %s, "the demo ended abnormally"),
            Err(e) => tracing::warn!(pid, error = %e, "cannot wait for the demo"),
        }
        match std::fs::remove_dir_all(&gone) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %gone.display(), error = %e, "cannot remove the demo's directory")
            }
            _ => {}
        }
        let _ = done_tx.send(true);
    });
    {
        let mut children = lock(&shell.children);
        if children.quitting {
            // The app began to quit while the demo started: it stops with it.
            let _ = stop.send(());
            return Err("Tokenwarden is quitting".into());
        }
        children.demo = Some(DemoProcess {
            dir: dir.clone(),
            done,
            stop: Some(stop),
        });
    }
    Ok(DemoStarted {
        state: "started",
        dir: dir.display().to_string(),
    })
}

/// The app quits: the demo it started quits too, and its dir goes.
async fn stop_demo(shell: &Shell) {
    let Some(mut d) = lock(&shell.children).demo.take() else {
        return;
    };
    if let Some(stop) = d.stop.take() {
        let _ = stop.send(());
    }
    let wait = std::time::Duration::from_secs(12);
    let _ = tokio::time::timeout(wait, d.done.wait_for(|x| *x)).await;
}

/// The shell as the control socket's [`crate::control::UiHost`].
struct Host(Arc<Shell>);

impl crate::control::UiHost for Host {
    fn call(&self, cmd: UiCommand) -> crate::control::UiReply {
        Box::pin(commands::dispatch(self.0.clone(), cmd))
    }

    fn show_window(&self, hidden: bool) -> crate::control::UiReply {
        let answer = commands::show_window(&self.0, hidden);
        Box::pin(async move {
            serde_json::to_value(answer?)
                .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))
        })
    }

    fn window_closing(&self, pid: u32) {
        window_closing(&self.0, pid)
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<UiEvent> {
        self.0.events.subscribe()
    }
}

/// Forward engine status changes to the window, the tray and the notifier.
async fn forward(shell: Arc<Shell>) {
    let mut rx = shell.engine().subscribe();
    let mut config_edits = shell.config_edits.subscribe();
    let mut applied = config_edits.borrow().applied;
    if let Ok(list) = shell.engine().status().await {
        let rows = shell.replace_all(list);
        shell.emit(UiEventKind::StatusAll, &rows);
        refresh_tray(&shell);
    }
    loop {
        let due = lock(&shell.notifier).next_flush();
        let sleep = async {
            match due {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(()) = config_edits.changed() => {
                let now = config_edits.borrow_and_update().clone();
                shell.emit(UiEventKind::ConfigError, now.error);
                // The engine says nothing of workloads an edit removed: list them again.
                if now.applied != applied {
                    applied = now.applied;
                    if let Ok(list) = shell.engine().status().await {
                        let rows = shell.replace_all(list);
                        shell.emit(UiEventKind::StatusAll, &rows);
                        refresh_tray(&shell);
                    }
                }
            }
            ev = rx.recv() => match ev {
                Ok(ch) => {
                    let (row, muted) = shell.apply(&ch);
                    lock(&shell.notifier).observe(&ch, muted, std::time::Instant::now());
                    shell.emit(UiEventKind::Status, StatusEvent {
                        row,
                        previous: ch.previous,
                        refreshed: ch.refreshed,
                    });
                    if let Some(d) = shell.demo_state() {
                        shell.emit(UiEventKind::Demo, d);
                    }
                    refresh_tray(&shell);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "status events lagged; reloading the list");
                    if let Ok(list) = shell.engine().status().await {
                        let rows = shell.replace_all(list);
                        shell.emit(UiEventKind::StatusAll, &rows);
                        refresh_tray(&shell);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = sleep => {
                let notes = lock(&shell.notifier).flush(std::time::Instant::now());
                for note in notes {
                    tracing::info!(summary = %note.summary, "notification");
                    let shell2 = shell.clone();
                    notify::show(note, move |names| {
                        for name in names {
                            let shell = shell2.clone();
                            shell2.rt.spawn(async move {
                                let _ = show_window(&shell);
                                if let Err(e) = commands::start_reauth(shell, name).await {
                                    tracing::warn!(error = %e.message, "re-authenticate from a notification failed");
                                }
                            });
                        }
                    });
                }
            }
        }
    }
}

fn on_tray_click(shell: &Arc<Shell>, id: &str) {
    let shell = shell.clone();
    match id {
        "open" => {
            let _ = show_window(&shell);
        }
        "quit" => {
            tracing::info!("quit from the tray");
            ui_loop::quit();
        }
        "retry-all" => {
            shell.rt.clone().spawn(async move {
                if let Err(e) = shell.engine().retry(None).await {
                    tracing::warn!(error = %e, "retry all failed");
                }
            });
        }
        other => {
            if let Some(name) = other
                .strip_prefix("reauth:")
                .or_else(|| other.strip_prefix("reauth-w:"))
            {
                let name = name.to_string();
                let _ = show_window(&shell);
                shell.rt.clone().spawn(async move {
                    if let Err(e) = commands::start_reauth(shell.clone(), name).await {
                        // A window opened just now may not listen yet: logged as well.
                        tracing::warn!(code = %e.code, error = %e.message, "re-authenticate from the tray failed");
                        shell.emit(UiEventKind::Error, &e);
                    }
                });
            } else if let Some(name) = other.strip_prefix("retry:") {
                let name = name.to_string();
                shell.rt.clone().spawn(async move {
                    match shell.engine().retry(Some(&name)).await {
                        Ok(_) => tracing::info!(workload = %name, "retry now from the tray"),
                        Err(e) => tracing::warn!(workload = %name, error = %e, "retry from the tray failed"),
                    }
                });
            } else if let Some(name) = other.strip_prefix("copy:") {
                // On the UI loop's thread already (the clipboard lives there).
                let url = lock(&shell.state)
                    .statuses
                    .get(name)
                    .and_then(|w| w.local_url.clone());
                match url.map(|u| tray::copy_to_clipboard(&u)) {
                    Some(Ok(())) => {
                        tracing::info!(workload = %name, "local address copied from the tray")
                    }
                    Some(Err(e)) => {
                        tracing::warn!(workload = %name, error = %e, "cannot copy the local address");
                        notify::show_problem(
                            "Tokenwarden cannot copy the local address",
                            &format!("{e}"),
                        );
                    }
                    None => tracing::warn!(workload = %name, "no local address to copy"),
                }
            } else if other.starts_with("workload:") {
                let _ = show_window(&shell);
            }
        }
    }
}

/// What the instance holding the lock said to a second launch.
enum Asked {
    /// It did what was asked: the words for the user.
    Done(String),
    /// It runs but cannot show its window: why.
    Failed(String),
    /// A daemon holds the lock (no window).
    Daemon,
    /// No answer (yet): why.
    NoAnswer(String),
}

/// Ask the instance holding `paths`' lock to show its window (nothing if `hidden`).
async fn ask_first(paths: &Paths, hidden: bool) -> Asked {
    // Read each time: the holder notes the demo's control dir once the demo started.
    let control = match Paths::resolve(Some(crate::instance::control_dir_of_owner(paths))) {
        Ok(c) => c,
        Err(e) => return Asked::NoAnswer(format!("{e:#}")),
    };
    let mut client = match crate::control::Client::connect(&control).await {
        Ok(Some(c)) => c,
        Ok(None) => return Asked::NoAnswer("its control socket does not listen".into()),
        // Another version holds the lock: asking again will not change that.
        Err(e) if e.code == ErrorCode::VersionMismatch => return Asked::Failed(e.message),
        Err(e) => return Asked::NoAnswer(e.message),
    };
    let req = Request::ShowWindow { hidden };
    let wait = std::time::Duration::from_secs(5);
    match tokio::time::timeout(wait, client.call(&req)).await {
        Err(_) => Asked::NoAnswer("it did not answer within 5 s".into()),
        Ok(Ok(v)) => match serde_json::from_value(v) {
            Ok(WindowAnswer::Focused) => Asked::Done("its window was brought to the front".into()),
            Ok(WindowAnswer::Opened) => Asked::Done("its window was opened".into()),
            Ok(WindowAnswer::Hidden) => Asked::Done("it keeps running in the tray".into()),
            Ok(WindowAnswer::Unavailable { message }) => Asked::Failed(message),
            Err(e) => Asked::Failed(format!("an answer not understood: {e}")),
        },
        Ok(Err(e)) if e.code == ErrorCode::NoWindow => Asked::Daemon,
        // Another version holds the lock: asking again will not change that.
        Ok(Err(e)) if e.code == ErrorCode::VersionMismatch => Asked::Failed(e.message),
        // `quitting`: the lock is free in a moment.
        Ok(Err(e)) => Asked::NoAnswer(e.message),
    }
}

/// Take the config dir's lock, or hand over to the desktop app holding it (`None`:
/// this launch is done). For about five seconds a holder that does not answer yet (it
/// is starting, or quitting) is asked again, and the lock tried again.
async fn lock_or_hand_over(
    paths: &Paths,
    hidden: bool,
) -> anyhow::Result<Option<crate::instance::InstanceLock>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let locked = match crate::instance::acquire_lock(paths) {
            Ok(l) => return Ok(Some(l)),
            Err(e) => e,
        };
        let runs = format!(
            "Tokenwarden already runs for {}",
            paths.config_dir.display()
        );
        match ask_first(paths, hidden).await {
            Asked::Done(what) => {
                tracing::info!(hidden, "Tokenwarden already runs here: handed over");
                eprintln!("{runs}: {what}");
                return Ok(None);
            }
            Asked::Failed(why) => anyhow::bail!("{runs}, but its window cannot be opened: {why}"),
            Asked::Daemon => return Err(locked),
            Asked::NoAnswer(why) if std::time::Instant::now() >= deadline => {
                return Err(locked.context(format!("it does not answer ({why})")));
            }
            Asked::NoAnswer(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

pub fn has_display() -> bool {
    if cfg!(any(
        target_os = "linux",
        target_os = "freebsd",
        target_os = "openbsd"
    )) {
        ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
    } else {
        true
    }
}

/// `tokenwarden` with no subcommand, desktop build: the app over the user's config
/// (nothing configured: an empty window whose first actions are "Add a server" and "Try
/// the demo"). Without a display it runs headless instead. `start_hidden` (`--hidden`,
/// or `TOKENWARDEN_START_HIDDEN` set): tray only, no window.
pub async fn main(paths: Paths, cfg: Config, start_hidden: bool) -> anyhow::Result<()> {
    if !has_display() {
        eprintln!("tokenwarden: no display (DISPLAY/WAYLAND_DISPLAY unset): running without the window and tray");
        if cfg.workloads.is_empty() {
            return crate::demo::run_headless().await;
        }
        return crate::daemon::run(paths).await;
    }
    let start_hidden = start_hidden || std::env::var_os("TOKENWARDEN_START_HIDDEN").is_some();
    let Some(lock_guard) = lock_or_hand_over(&paths, start_hidden).await? else {
        return Ok(());
    };
    // Hand edits of workloads.toml are applied while the app runs.
    let watched = crate::config_watch::running(&cfg);
    if cfg.workloads.is_empty() {
        eprintln!(
            "No workloads in {} yet: add one in the window, or with `tokenwarden add NAME --url URL`. `tokenwarden demo` shows the built-in demo.",
            paths.config_file.display()
        );
    }
    let (engine, store) = crate::service::start_engine(&paths, cfg, "desktop app");
    let shell = Arc::new(Shell::new(
        Backend::Real { engine, store },
        paths.clone(),
        paths,
    ));
    serve(shell, lock_guard, Some(watched), start_hidden).await
}

/// `tokenwarden demo`, desktop build: the built-in demo in a tray app and window of its
/// own, on a throwaway config dir (`dir`, made for it by the app's "Try the demo", else
/// a new temporary one) with its own lock and control socket; the dir goes when the
/// demo ends. The user's config, workloads and tray never see it.
pub async fn demo(dir: Option<PathBuf>) -> anyhow::Result<()> {
    if !has_display() {
        eprintln!("tokenwarden: no display (DISPLAY/WAYLAND_DISPLAY unset): the demo runs in the terminal");
        return crate::demo::run_headless().await;
    }
    let demo = Demo::start_in(dir).await?;
    let paths = Paths::resolve(Some(demo.dir.path().to_path_buf()))?;
    let lock_guard = crate::instance::acquire_lock(&paths)?;
    eprintln!(
        "Demo: watch from another shell with: tokenwarden --config-dir {} status",
        paths.config_dir.display()
    );
    let shell = Arc::new(Shell::new(
        Backend::Demo(Box::new(demo)),
        paths.clone(),
        paths,
    ));
    serve(shell, lock_guard, None, false).await
}

/// What the config watcher needs ([`crate::config_watch::running`]).
type Watched = (
    crate::engine::config::StoreKind,
    Option<String>,
    std::time::Duration,
);

/// The app around `shell` until "Quit" or a signal ([`crate::service`]: hand edits of
/// the config for the user's, the control socket, signals), the tray and the window;
/// then a clean stop.
async fn serve(
    shell: Arc<Shell>,
    lock_guard: crate::instance::InstanceLock,
    watched: Option<Watched>,
    start_hidden: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    let watch = watched.map(|running| {
        let s = shell.clone();
        crate::service::Watch {
            running,
            report: Box::new(move |edit| match edit {
                crate::config_watch::Edit::Broken(message) => {
                    notify::show_config_error(&message);
                    s.config_edits.send_modify(|c| c.error = Some(message));
                }
                crate::config_watch::Edit::Applied { .. } => {
                    s.config_edits.send_modify(|c| {
                        c.applied += 1;
                        c.error = None;
                    });
                }
            }),
        }
    });
    let shutdown = CancellationToken::new();
    let service = crate::service::start(
        crate::service::Options {
            paths: shell.control_paths.clone(),
            what: if shell.demo().is_some() {
                "demo"
            } else {
                "desktop app"
            },
            lock: Some(lock_guard),
            workloads: crate::service::Workloads::Started {
                engine: shell.engine().clone(),
                watch,
            },
            ui: Some(Arc::new(Host(shell.clone()))),
            log_changes: false,
            page_out_after: None,
        },
        shutdown.clone(),
    )
    .await?;
    let stopped = tokio::spawn(service.run());
    let s = shell.clone();
    let quit = shutdown.clone();
    let result = tokio::task::block_in_place(move || run_app(s, rt, start_hidden, quit));
    lock(&shell.children).quitting = true;
    // The engine, the control socket and the lock: stopped by the service.
    shutdown.cancel();
    stop_demo(&shell).await;
    let _ = stopped.await;
    close_window(&shell).await;
    // The tray's handler and other tasks may still hold the shell: the demo's dir goes
    // now, not when the last of them lets go.
    if let Some(demo) = shell.demo() {
        demo.dir.remove();
    }
    result
}

/// The tray and its event loop, on this (the main) thread, until "Quit" or a signal.
fn run_app(
    shell: Arc<Shell>,
    rt: tokio::runtime::Handle,
    start_hidden: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !ui_loop::init() {
        // The engine and the control socket keep working; only the UI is missing.
        eprintln!("tokenwarden: the display cannot be opened: running without the window and tray until stopped");
        tracing::error!("the display cannot be opened; running without the window and tray");
        rt.block_on(shutdown.cancelled());
        return Ok(());
    }
    let _rt = rt.enter();
    ui_loop::run(move || {
        // A signal (also one while the display was being opened) ends the loop.
        ui_loop::quit_when(shutdown.cancelled_owned());
        let initial = rt.block_on(shell.engine().status()).unwrap_or_default();
        shell.replace_all(initial.clone());
        let s = shell.clone();
        // The control socket's private directory (it exists: the socket listens).
        let icon_dir = shell.control_paths.run_dir.clone();
        let demo = shell.demo().is_some();
        match tray::create(&initial, &icon_dir, demo, move |id| on_tray_click(&s, id)) {
            Ok(()) => shell.tray_made.store(true, Ordering::Release),
            // Without a tray host the app still works through the window.
            Err(e) => tracing::warn!(error = %e, "no tray icon"),
        }
        let _ = shell.take_menu_change();
        if start_hidden {
            tracing::info!("started hidden: the window opens from the tray");
            // Without a tray the app would be invisible: say so, once.
            let tray_made = shell.tray_made.load(Ordering::Acquire);
            rt.spawn(async move {
                let host = tokio::task::spawn_blocking(crate::doctor::tray_host_present)
                    .await
                    .unwrap_or(None);
                match tray::hidden_without_tray_note(tray_made, host) {
                    Some((summary, body)) => {
                        tracing::warn!(
                            tray_made,
                            ?host,
                            "started hidden without a tray: notifying"
                        );
                        notify::show_problem(summary, body);
                    }
                    None => tracing::info!(?host, "started hidden: the tray shows the icon"),
                }
            });
        } else if cfg!(unix) {
            let _ = show_window(&shell);
        }
        // What GTK and the libraries touched only while starting goes back.
        rt.spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            let ranges = tokio::task::spawn_blocking(crate::pageout::mapped_files)
                .await
                .unwrap_or(0);
            tracing::info!(ranges, "started: paged out mapped files");
        });
        rt.spawn(forward(shell));
    });
    tray::remove();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_in_plain_words() {
        let taken = plain_proxy_error(
            "the local proxy cannot listen on 127.0.0.1:8765: Address already in use (os error 98)",
        );
        assert_eq!(
            taken,
            "The local proxy is not running: another program already uses 127.0.0.1:8765. Close that program, or give this workload another listen_port in workloads.toml."
        );
        let denied = plain_proxy_error(
            "the local proxy cannot listen on 127.0.0.1:80: Permission denied (os error 13)",
        );
        assert!(
            denied.contains("not allowed to listen on 127.0.0.1:80"),
            "{denied}"
        );
        assert_eq!(
            plain_proxy_error("bad CA file"),
            "The local proxy is not running: bad CA file"
        );
    }

    #[test]
    fn a_row_carries_the_client_config_of_its_local_proxy() {
        let mut w: WorkloadStatus = serde_json::from_value(serde_json::json!({
            "name": "gh", "status": "running", "reason": null, "detail": null, "hint": null,
            "since": null, "next_attempt_at": null, "access_token_expires_at": null,
            "gives_up_at": null, "access_token_valid": true, "attempts": 0,
            "token_endpoint": "https://auth.example/token", "local_url": null, "live": true
        }))
        .unwrap();
        let st = ShellState::default();
        let row = Shell::row_locked(&st, &w);
        assert_eq!(row.client_config, None);
        assert_eq!(row.plain_proxy_error, None);
        w.local_url = Some("http://127.0.0.1:8765/mcp".into());
        let row = Shell::row_locked(&st, &w);
        assert_eq!(
            row.client_config.as_deref(),
            Some("{\n  \"mcpServers\": {\n    \"gh\": {\n      \"url\": \"http://127.0.0.1:8765/mcp\"\n    }\n  }\n}")
        );
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["local_url"], "http://127.0.0.1:8765/mcp");
    }
}
