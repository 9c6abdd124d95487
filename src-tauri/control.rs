//! The local control socket: how the CLI (and scripts) talk to a running daemon.
//!
//! A Unix socket at `<config-dir>/run/control.sock`, in a 0700 directory, itself 0600,
//! and every connection's peer uid is checked against the daemon's effective uid: only
//! the same user gets in. A `token` request is logged with the peer's pid (never the
//! token), so the log tells which program took a token. The protocol is one JSON object per line each way:
//! `{"cmd":"status"}` → `{"ok":[...]}` or `{"error":{"code":..,"message":..}}`.
//! `{"cmd":"watch"}` turns the connection into a stream of `StatusChange` lines.
//! The desktop app also serves its window process here ([`UiHost`]): `{"cmd":"ui",...}`
//! runs one of the window's commands, `{"cmd":"ui_events"}` streams the window's events.
//!
//! On platforms without Unix sockets the daemon says so and the CLI works offline
//! (status from the state file, login/token directly against the store).

use crate::engine::supervisor::{Engine, StatusChange};
use crate::paths::Paths;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status,
    /// "Retry now": one workload, or all when `name` is null.
    Retry {
        name: Option<String>,
    },
    /// A valid access token (joins the single-flight refresh).
    Token {
        name: String,
    },
    /// Log a workload out: the engine stops using its tokens and deletes them (a
    /// refresh in flight cannot save them again).
    Logout {
        name: String,
    },
    /// Re-read workloads.toml (if `config`) and the stored tokens of `names`.
    Reload {
        #[serde(default)]
        config: bool,
        #[serde(default)]
        names: Vec<String>,
    },
    /// Stream status changes.
    Watch,
    /// One of the desktop window's commands (`commands.rs`), run by the app that owns
    /// the engine; refused by a daemon, which has no window.
    Ui {
        name: String,
        #[serde(default)]
        args: serde_json::Value,
    },
    /// Stream the desktop window's events (`Reply::Ui`).
    UiEvents,
}

/// An event for the desktop window: `event` is the name the page listens for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UiEvent {
    pub event: String,
    pub payload: serde_json::Value,
}

/// The answer to one of the window's commands, on its way.
pub type UiReply = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<serde_json::Value, RemoteError>> + Send>,
>;

/// What serves the desktop window's requests (the desktop app's shell).
pub trait UiHost: Send + Sync + 'static {
    fn call(&self, name: String, args: serde_json::Value) -> UiReply;
    fn events(&self) -> tokio::sync::broadcast::Receiver<UiEvent>;
}

pub type Ui = Option<std::sync::Arc<dyn UiHost>>;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteError {
    pub code: String,
    pub message: String,
    /// The form field a window command's error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for RemoteError {}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(RemoteError),
    Event(StatusChange),
    Ui(UiEvent),
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

fn err(code: &str, message: impl Into<String>) -> Reply {
    Reply::Error(RemoteError {
        code: code.into(),
        message: message.into(),
        field: None,
    })
}

fn engine_err(e: crate::engine::EngineError) -> Reply {
    err(e.code(), e.to_string())
}

/// Who is on the other end of a control connection (from the socket's credentials).
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer {
    pub pid: Option<i32>,
}

/// Handle one request (not `watch`).
async fn dispatch(engine: &Engine, paths: &Paths, peer: Peer, req: Request) -> Reply {
    match req {
        Request::Ping => Reply::Ok(serde_json::json!({"pid": std::process::id()})),
        Request::Status => match engine.status().await {
            Ok(s) => Reply::Ok(serde_json::to_value(s).unwrap_or_default()),
            Err(e) => engine_err(e),
        },
        Request::Retry { name } => match engine.retry(name.as_deref()).await {
            Ok(names) => Reply::Ok(serde_json::json!(names)),
            Err(e) => engine_err(e),
        },
        Request::Token { name } => match engine.granted(&name).await {
            // The one place a token leaves the engine: to the same user, on request.
            Ok(g) => {
                tracing::info!(workload = %name, peer_pid = ?peer.pid, "access token handed out over the control socket");
                Reply::Ok(serde_json::json!({
                    "access_token": g.token.expose(),
                    "expires_at": g
                        .expires_at
                        .and_then(crate::engine::status::rfc3339)
                        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                }))
            }
            Err(e) => {
                tracing::info!(workload = %name, peer_pid = ?peer.pid, error = %e, "token request over the control socket refused");
                engine_err(e)
            }
        },
        Request::Logout { name } => match engine.logout(&name).await {
            Ok(()) => Reply::Ok(serde_json::Value::Null),
            Err(e) => engine_err(e),
        },
        Request::Reload { config, names } => {
            let cfg = if config {
                match crate::ops::load_config(paths) {
                    Ok(c) => Some(c),
                    Err(e) => return err("config", format!("{e:#}")),
                }
            } else {
                None
            };
            match engine.reload(cfg, names).await {
                Ok(()) => Reply::Ok(serde_json::Value::Null),
                Err(e) => engine_err(e),
            }
        }
        Request::Watch | Request::UiEvents | Request::Ui { .. } => {
            err("bad_request", "handled by the connection")
        }
    }
}

#[cfg(unix)]
pub use unix::*;

#[cfg(unix)]
mod unix {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};
    use tokio_util::sync::CancellationToken;

    /// Bind the socket (the caller holds the daemon lock, so a leftover socket file is
    /// stale and removed).
    pub fn bind(paths: &Paths) -> anyhow::Result<UnixListener> {
        crate::engine::store::create_private_dir(&paths.run_dir)?;
        let _ = std::fs::remove_file(&paths.socket);
        let l = UnixListener::bind(&paths.socket)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", paths.socket.display()))?;
        std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    }

    pub async fn serve(
        listener: UnixListener,
        engine: Engine,
        paths: Paths,
        cancel: CancellationToken,
        ui: Ui,
    ) {
        // The process's own effective uid: the owner of the run dir could differ (a dir
        // made by another user, a root-owned leftover), the process's identity cannot.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let my_uid = unsafe { libc::geteuid() };
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let cred = stream.peer_cred().ok();
            let peer_uid = cred.map(|c| c.uid());
            if peer_uid != Some(my_uid) {
                tracing::warn!(?peer_uid, "control connection from another user refused");
                continue;
            }
            let peer = Peer {
                pid: cred.and_then(|c| c.pid()),
            };
            let engine = engine.clone();
            let paths = paths.clone();
            let cancel = cancel.clone();
            let ui = ui.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, peer, engine, paths, cancel, ui).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
        let _ = std::fs::remove_file(&paths.socket);
    }

    async fn write_reply(
        w: &mut (impl AsyncWriteExt + Unpin),
        reply: &Reply,
    ) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
        line.push(b'\n');
        w.write_all(&line).await?;
        w.flush().await
    }

    async fn connection(
        stream: UnixStream,
        peer: Peer,
        engine: Engine,
        paths: Paths,
        cancel: CancellationToken,
        ui: Ui,
    ) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            let mut limited = (&mut r).take(MAX_LINE as u64 + 1);
            let n = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                n = limited.read_line(&mut line) => n?,
            };
            if n == 0 {
                return Ok(());
            }
            if line.len() > MAX_LINE {
                write_reply(&mut w, &err("bad_request", "request too long")).await?;
                return Ok(());
            }
            let req: Request = match serde_json::from_str(line.trim()) {
                Ok(r) => r,
                Err(e) => {
                    write_reply(&mut w, &err("bad_request", format!("not a request: {e}"))).await?;
                    continue;
                }
            };
            if req == Request::Watch {
                let mut rx = engine.subscribe();
                // Start with the current state, then changes.
                if let Ok(list) = engine.status().await {
                    for s in list {
                        let ev = StatusChange {
                            previous: None,
                            refreshed: false,
                            recovered: false,
                            workload: s,
                        };
                        write_reply(&mut w, &Reply::Event(ev)).await?;
                    }
                }
                loop {
                    let ev = tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        ev = rx.recv() => ev,
                    };
                    match ev {
                        Ok(ev) => write_reply(&mut w, &Reply::Event(ev)).await?,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "a watcher fell behind");
                        }
                        Err(_) => return Ok(()),
                    }
                }
            }
            let reply = match (req, &ui) {
                (Request::Ui { .. } | Request::UiEvents, None) => err(
                    "no_window",
                    "this is `tokenwarden daemon`, which has no window; start the desktop app (`tokenwarden`)",
                ),
                (Request::Ui { name, args }, Some(ui)) => match ui.call(name, args).await {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => Reply::Error(e),
                },
                (Request::UiEvents, Some(ui)) => {
                    let mut rx = ui.events();
                    write_reply(&mut w, &Reply::Ok(serde_json::Value::Null)).await?;
                    loop {
                        let ev = tokio::select! {
                            _ = cancel.cancelled() => return Ok(()),
                            ev = rx.recv() => ev,
                        };
                        match ev {
                            Ok(ev) => write_reply(&mut w, &Reply::Ui(ev)).await?,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                // The window lists everything again on `lagged`.
                                tracing::warn!(missed = n, "the window fell behind");
                                let ev = UiEvent {
                                    event: "lagged".into(),
                                    payload: serde_json::Value::Null,
                                };
                                write_reply(&mut w, &Reply::Ui(ev)).await?;
                            }
                            Err(_) => return Ok(()),
                        }
                    }
                }
                (req, _) => dispatch(&engine, &paths, peer, req).await,
            };
            write_reply(&mut w, &reply).await?;
        }
    }

    /// A connection to the running daemon.
    pub struct Client {
        r: BufReader<tokio::net::unix::OwnedReadHalf>,
        w: tokio::net::unix::OwnedWriteHalf,
    }

    impl Client {
        /// `Ok(None)` when no daemon is running for this config dir.
        pub async fn connect(paths: &Paths) -> anyhow::Result<Option<Client>> {
            match UnixStream::connect(&paths.socket).await {
                Ok(s) => {
                    let (r, w) = s.into_split();
                    Ok(Some(Client {
                        r: BufReader::new(r),
                        w,
                    }))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(anyhow::anyhow!(
                    "cannot reach the daemon at {}: {e}",
                    paths.socket.display()
                )),
            }
        }

        async fn read(&mut self) -> anyhow::Result<Reply> {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).await?;
            if n == 0 {
                anyhow::bail!("the daemon closed the connection");
            }
            Ok(serde_json::from_str(&line)?)
        }

        /// Send one request; `Err` carries a `RemoteError` for a refused request.
        pub async fn call(&mut self, req: &Request) -> anyhow::Result<serde_json::Value> {
            let mut line = serde_json::to_vec(req)?;
            line.push(b'\n');
            self.w.write_all(&line).await?;
            match self.read().await? {
                Reply::Ok(v) => Ok(v),
                Reply::Error(e) => Err(e.into()),
                Reply::Event(_) | Reply::Ui(_) => anyhow::bail!("unexpected event"),
            }
        }

        /// Subscribe to the window's events (`ui_events`): once this returns, every
        /// later event reaches [`Client::next_ui_event`].
        pub async fn start_ui_events(&mut self) -> anyhow::Result<()> {
            self.call(&Request::UiEvents).await.map(|_| ())
        }

        /// The next window event; `Err` once the app closed the connection (it quit).
        pub async fn next_ui_event(&mut self) -> anyhow::Result<UiEvent> {
            loop {
                match self.read().await? {
                    Reply::Ui(ev) => return Ok(ev),
                    Reply::Error(e) => return Err(e.into()),
                    Reply::Ok(_) | Reply::Event(_) => {}
                }
            }
        }

        /// Start `watch` and yield events.
        pub async fn watch(mut self, mut on_event: impl FnMut(StatusChange)) -> anyhow::Result<()> {
            let mut line = serde_json::to_vec(&Request::Watch)?;
            line.push(b'\n');
            self.w.write_all(&line).await?;
            loop {
                match self.read().await? {
                    Reply::Event(ev) => on_event(ev),
                    Reply::Error(e) => return Err(e.into()),
                    Reply::Ok(_) | Reply::Ui(_) => {}
                }
            }
        }
    }
}

#[cfg(not(unix))]
pub use other::*;

#[cfg(not(unix))]
mod other {
    //! No control socket on this platform yet: the daemon runs, the CLI works offline.
    use super::*;
    use tokio_util::sync::CancellationToken;

    pub struct Listener;
    pub fn bind(_paths: &Paths) -> anyhow::Result<Listener> {
        tracing::warn!(
            "the control socket is not supported on this platform yet; the CLI works offline"
        );
        Ok(Listener)
    }
    pub async fn serve(
        _l: Listener,
        _engine: Engine,
        _paths: Paths,
        cancel: CancellationToken,
        _ui: Ui,
    ) {
        cancel.cancelled().await
    }
    pub struct Client;
    impl Client {
        pub async fn connect(_paths: &Paths) -> anyhow::Result<Option<Client>> {
            Ok(None)
        }
        pub async fn call(&mut self, _req: &Request) -> anyhow::Result<serde_json::Value> {
            anyhow::bail!("not supported on this platform")
        }
        pub async fn watch(self, _f: impl FnMut(StatusChange)) -> anyhow::Result<()> {
            anyhow::bail!("not supported on this platform")
        }
        pub async fn start_ui_events(&mut self) -> anyhow::Result<()> {
            anyhow::bail!("not supported on this platform")
        }
        pub async fn next_ui_event(&mut self) -> anyhow::Result<UiEvent> {
            anyhow::bail!("not supported on this platform")
        }
    }
}
