//! The control server: how the CLI, scripts and the window's program talk to the
//! running daemon or desktop app, over the local socket of [`crate::protocol`] (its
//! requests, replies, errors, hello and transport live there).
//!
//! Only the same user gets in (the transport checks each connection's peer), and the
//! first line must be a hello of this [`PROTOCOL_VERSION`]. A `token` request is logged
//! with the peer's pid (never the token), so the log tells which program took a token.
//! The desktop app also serves its window process here ([`UiHost`]): `ui` runs one of
//! the window's commands, `ui_events` streams the window's events.

use crate::engine::supervisor::{Engine, StatusChange};
use crate::paths::Paths;
use crate::protocol::local::{Accepted, Connection, Incoming, Listener, Peer};
use crate::protocol::PROTOCOL_VERSION;
pub use crate::protocol::{Client, Error, ErrorCode, Reply, Request, UiCommand, UiEvent};
use tokio_util::sync::CancellationToken;

/// The answer to one of the window's requests, on its way.
pub type UiReply =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, Error>> + Send>>;

/// What serves the desktop window's requests (the desktop app's shell).
pub trait UiHost: Send + Sync + 'static {
    /// One of the window's commands.
    fn call(&self, cmd: UiCommand) -> UiReply;
    /// A second launch asks for the window (`hidden`: for the tray only).
    fn show_window(&self, hidden: bool) -> UiReply;
    /// The window's process says its window was closed.
    fn window_closing(&self, pid: u32);
    fn events(&self) -> tokio::sync::broadcast::Receiver<UiEvent>;
}

pub type Ui = Option<std::sync::Arc<dyn UiHost>>;

fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error(Error::new(code, message))
}

/// The protocol's code for an engine error.
pub fn engine_code(e: &crate::engine::EngineError) -> ErrorCode {
    use crate::engine::monitor::TokenError;
    use crate::engine::EngineError;
    match e {
        EngineError::UnknownWorkload(_) => ErrorCode::UnknownWorkload,
        EngineError::Token(TokenError::Unauthenticated { .. }) => ErrorCode::Unauthenticated,
        EngineError::Token(TokenError::Unavailable { .. }) => ErrorCode::Unavailable,
        EngineError::Token(TokenError::Stopped { .. }) | EngineError::Stopped => ErrorCode::Stopped,
        EngineError::Config(_) => ErrorCode::Config,
        EngineError::Store(_) => ErrorCode::Store,
    }
}

/// An engine error as the protocol's error.
pub fn engine_error(e: crate::engine::EngineError) -> Error {
    Error::new(engine_code(&e), e.to_string())
}

fn engine_err(e: crate::engine::EngineError) -> Reply {
    Reply::Error(engine_error(e))
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
                    Err(e) => return err(ErrorCode::Config, format!("{e:#}")),
                }
            } else {
                None
            };
            match engine.reload(cfg, names).await {
                Ok(()) => Reply::Ok(serde_json::Value::Null),
                Err(e) => engine_err(e),
            }
        }
        Request::Hello { .. } => err(ErrorCode::BadRequest, "hello again"),
        Request::Watch
        | Request::UiEvents
        | Request::Ui(_)
        | Request::ShowWindow { .. }
        | Request::WindowClosing { .. } => err(ErrorCode::BadRequest, "handled by the connection"),
    }
}

/// Listen on the control socket of `paths` (the caller holds the instance lock, so a
/// leftover socket file is stale and removed).
pub fn bind(paths: &Paths) -> anyhow::Result<Listener> {
    crate::engine::store::create_private_dir(&paths.run_dir)?;
    Ok(Listener::bind(&paths.config_dir)?)
}

pub async fn serve(
    mut listener: Listener,
    engine: Engine,
    paths: Paths,
    cancel: CancellationToken,
    ui: Ui,
) {
    let server = format!(
        "{} {} (pid {})",
        if ui.is_some() {
            "the Tokenwarden app"
        } else {
            "tokenwarden daemon"
        },
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (conn, peer) = match accepted {
            Accepted::Client(conn, peer) => (conn, peer),
            Accepted::Refused(peer, refused) => {
                tracing::warn!(peer_uid = ?peer.uid, peer_pid = ?peer.pid, "control connection from another user refused");
                drop(refused);
                continue;
            }
        };
        let engine = engine.clone();
        let paths = paths.clone();
        let cancel = cancel.clone();
        let ui = ui.clone();
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(conn, peer, &server, engine, paths, cancel, ui).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
    #[cfg(unix)]
    let _ = std::fs::remove_file(&paths.socket);
}

async fn connection(
    mut conn: Connection,
    peer: Peer,
    server: &str,
    engine: Engine,
    paths: Paths,
    cancel: CancellationToken,
    ui: Ui,
) -> std::io::Result<()> {
    let hello = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        h = conn.handshake(PROTOCOL_VERSION, server) => h?,
    };
    let Some(client) = hello else {
        tracing::info!(peer_pid = ?peer.pid, "control connection refused at the hello (another protocol version)");
        return Ok(());
    };
    tracing::debug!(%client, peer_pid = ?peer.pid, "control connection");
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = conn.read_request() => r?,
        };
        let req = match incoming {
            Incoming::End => return Ok(()),
            Incoming::TooLong(e) => return conn.send(&Reply::Error(e)).await,
            Incoming::Bad(e) => {
                conn.send(&Reply::Error(e)).await?;
                continue;
            }
            Incoming::Request(r) => r,
        };
        if req == Request::Watch {
            let mut rx = engine.subscribe();
            let event =
                |ev: &StatusChange| Reply::Event(serde_json::to_value(ev).unwrap_or_default());
            // Start with the current state, then changes.
            if let Ok(list) = engine.status().await {
                for s in list {
                    let ev = StatusChange {
                        previous: None,
                        refreshed: false,
                        recovered: false,
                        workload: s,
                    };
                    conn.send(&event(&ev)).await?;
                }
            }
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) => conn.send(&event(&ev)).await?,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a watcher fell behind");
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
        let reply = match (req, &ui) {
            (Request::Ui(_) | Request::UiEvents | Request::ShowWindow { .. } | Request::WindowClosing { .. }, None) => err(
                ErrorCode::NoWindow,
                "this is `tokenwarden daemon`, which has no window; start the desktop app (`tokenwarden`)",
            ),
            (Request::Ui(cmd), Some(ui)) => match ui.call(cmd).await {
                Ok(v) => Reply::Ok(v),
                Err(e) => Reply::Error(e),
            },
            (Request::ShowWindow { hidden }, Some(ui)) => match ui.show_window(hidden).await {
                Ok(v) => Reply::Ok(v),
                Err(e) => Reply::Error(e),
            },
            (Request::WindowClosing { pid }, Some(ui)) => {
                ui.window_closing(pid);
                Reply::Ok(serde_json::Value::Null)
            }
            (Request::UiEvents, Some(ui)) => {
                let mut rx = ui.events();
                conn.send(&Reply::Ok(serde_json::Value::Null)).await?;
                loop {
                    let ev = tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        ev = rx.recv() => ev,
                    };
                    match ev {
                        Ok(ev) => conn.send(&Reply::Ui(ev)).await?,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            // The window lists everything again on `lagged`.
                            tracing::warn!(missed = n, "the window fell behind");
                            let ev = UiEvent {
                                event: crate::protocol::UiEventKind::Lagged,
                                payload: serde_json::Value::Null,
                            };
                            conn.send(&Reply::Ui(ev)).await?;
                        }
                        Err(_) => return Ok(()),
                    }
                }
            }
            (req, _) => dispatch(&engine, &paths, peer, req).await,
        };
        conn.send(&reply).await?;
    }
}
