//! The commands the window calls ([`UiCommand`]: each granted by
//! `capabilities/default.json`, listed in `build.rs`), run here in the app that owns the
//! engine: the window process forwards each over the control socket ([`dispatch`]; see
//! `src-tauri/window/`). Every error reaches the UI as the protocol's [`Error`], `{code,
//! message}` (plus `field` for a form error), and is shown there.

use super::{lock, Backend, DemoState, LoginEvent, Shell};
use crate::engine::config;
use crate::engine::oauth;
use crate::engine::EngineError;
use crate::ops::OpsError;
use crate::protocol::{AddForm, Error, ErrorCode, UiCommand, UiEventKind, WindowAnswer};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokenwarden_sim::issuer::Mode;

/// How long a sign-in waits for the browser.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

fn engine_err(e: EngineError) -> Error {
    crate::control::engine_error(e)
}

fn config_err(e: config::ConfigError) -> Error {
    Error::new(ErrorCode::Config, e.to_string())
}

fn anyhow_err(code: ErrorCode, e: anyhow::Error) -> Error {
    Error::new(code, format!("{e:#}"))
}

#[derive(Serialize)]
pub struct AppInfo {
    version: &'static str,
    demo: Option<DemoState>,
    /// The config dir whose control socket this app serves (for `--config-dir`).
    control_dir: String,
    config_file: String,
    /// Start at login: on/off as it is now; `null` where it cannot be offered (the demo)
    /// or read (the reason is logged).
    autostart: Option<bool>,
    /// Why the last hand edit of workloads.toml could not be used (file:line: ...).
    config_error: Option<String>,
    /// Sign-ins waiting for the browser, as their last `login` event said.
    logins: Vec<LoginEvent>,
}

fn app_info(shell: &Shell) -> AppInfo {
    let autostart = match shell.demo() {
        Some(_) => None,
        None => super::autostart::is_enabled(&shell.paths)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot read the start-at-login state"))
            .ok(),
    };
    AppInfo {
        version: env!("CARGO_PKG_VERSION"),
        demo: shell.demo_state(),
        control_dir: shell.control_paths.config_dir.display().to_string(),
        config_file: shell.paths.config_file.display().to_string(),
        autostart,
        config_error: shell.config_edits.borrow().error.clone(),
        logins: lock(&shell.logins_waiting).values().cloned().collect(),
    }
}

/// "Start Tokenwarden when I log in": returns the state afterwards.
fn set_autostart(shell: &Shell, enabled: bool) -> Result<bool, Error> {
    if shell.demo().is_some() {
        return Err(Error::new(
            ErrorCode::Demo,
            "The demo does not start at login: switch it on in Tokenwarden's own window.",
        ));
    }
    super::autostart::set(&shell.paths, enabled).map_err(|m| Error::new(ErrorCode::Autostart, m))
}

/// Run one of the window's commands (as the page invoked it, the window process
/// forwarding it): the one entry point of the window.
pub async fn dispatch(shell: Arc<Shell>, cmd: UiCommand) -> Result<serde_json::Value, Error> {
    fn json(v: impl Serialize) -> Result<serde_json::Value, Error> {
        serde_json::to_value(v).map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))
    }
    match cmd {
        UiCommand::AppInfo {} => json(app_info(&shell)),
        // The view the event forwarder keeps, in event order: a fresh engine snapshot
        // could be older than an event applied while it travelled.
        UiCommand::ListStatus {} => json(shell.rows()),
        // "Retry now" for one workload, or all (`name` null).
        UiCommand::Retry { name } => json(
            shell
                .engine()
                .retry(name.as_deref())
                .await
                .map_err(engine_err)?,
        ),
        UiCommand::Reauthenticate { name } => json(start_reauth(shell, name).await?),
        UiCommand::RemoveWorkload { name } => json(remove_workload(&shell, name).await?),
        UiCommand::AddWorkload { form } => json(add_workload(shell, form).await?),
        UiCommand::DemoControl { action } => json(demo_control(&shell, action)?),
        UiCommand::SetNotifications { name, enabled } => {
            json(set_notifications(&shell, name, enabled)?)
        }
        UiCommand::SetAutostart { enabled } => json(set_autostart(&shell, enabled)?),
        // "Try the demo" (the user's app only).
        UiCommand::StartDemo {} => json(start_demo(&shell).await?),
        // "Connect to…" on a card: the clients, and connecting / disconnecting one.
        UiCommand::ClientConnections { name } => json(client_connections(shell, name).await?),
        UiCommand::ConnectClient {
            name,
            client,
            connect,
        } => json(connect_client(shell, name, client, connect).await?),
    }
}

/// A second launch of the app asks for the window (`hidden`: it was started for the
/// tray only, and asks for nothing).
pub fn show_window(shell: &Shell, hidden: bool) -> Result<WindowAnswer, Error> {
    if shell.quitting() {
        return Err(Error::new(ErrorCode::Quitting, "Tokenwarden is quitting"));
    }
    if hidden {
        return Ok(WindowAnswer::Hidden);
    }
    tracing::info!("another launch asked for the window");
    Ok(match super::show_window(shell) {
        super::WindowShown::Focused => WindowAnswer::Focused,
        super::WindowShown::Opened => WindowAnswer::Opened,
        super::WindowShown::Unavailable(message) => WindowAnswer::Unavailable { message },
    })
}

fn emit_login(shell: &Shell, name: &str, state: &'static str, message: String) {
    let event = LoginEvent {
        name: name.to_string(),
        state,
        message,
    };
    // A window opened while a sign-in waits (from the tray, say) hears of it through
    // `app_info`: the events before it connected reached no page.
    {
        let mut waiting = lock(&shell.logins_waiting);
        if state == "waiting" {
            waiting.insert(name.to_string(), event.clone());
        } else {
            waiting.remove(name);
        }
    }
    shell.emit(UiEventKind::Login, event);
}

/// Start the sign-in of `name`: the real authorization-code flow in the browser for
/// the user's workloads (returns once the browser is asked; the rest goes out as
/// `login` events), the demo's built-in sign-in for the demo. A sign-in of `name`
/// still waiting is cancelled first (its listener closed before the new one binds,
/// so a registered client's fixed `redirect_port` is free). When no browser can be
/// started the sign-in keeps waiting and the `login` event gives the address to open.
pub async fn start_reauth(shell: Arc<Shell>, name: String) -> Result<(), Error> {
    match &shell.backend {
        Backend::Demo(demo) => {
            emit_login(&shell, &name, "waiting", format!("Signing in to {name}…"));
            match demo.relogin(&name).await {
                Ok(()) => {
                    emit_login(
                        &shell,
                        &name,
                        "done",
                        format!("Signed in: {name} is running"),
                    );
                    Ok(())
                }
                Err(e) => {
                    let err = anyhow_err(ErrorCode::Login, e);
                    emit_login(&shell, &name, "failed", err.message.clone());
                    Err(err)
                }
            }
        }
        Backend::Real { store, .. } => {
            let pending = crate::ops::begin_login(
                &shell.paths,
                &name,
                Some(store),
                Some(&shell.logins),
                shell.engine(),
                &|note| tracing::info!(workload = %name, "{note}"),
            )
            .await
            .map_err(|e| match e {
                OpsError::UnknownWorkload { name, .. } => {
                    engine_err(EngineError::UnknownWorkload(name))
                }
                OpsError::Login(e) => Error::new(ErrorCode::Login, e.to_string()),
                OpsError::Other(e) => anyhow_err(ErrorCode::Store, e),
                e => Error::new(ErrorCode::Config, e.to_string()),
            })?;
            let url = pending.authorize_url();
            let message = match crate::ops::open_browser(&url) {
                Ok(()) => format!("Sign in to {name} in your browser…"),
                Err(e) => {
                    tracing::warn!(workload = %name, error = %e, "could not open a browser; the sign-in waits for the address to be opened by hand");
                    format!("Could not open a browser ({e}). Open this address yourself to sign in to {name}: {url}")
                }
            };
            emit_login(&shell, &name, "waiting", message);
            tokio::spawn(async move {
                let outcome = pending.finish(LOGIN_TIMEOUT).await;
                if let Err(OpsError::Login(oauth::LoginError::Replaced(_))) = outcome {
                    return; // the newer sign-in speaks for itself
                }
                let result = match outcome {
                    Ok(_) => shell
                        .engine()
                        .reload(None, vec![name.clone()])
                        .await
                        .map_err(|e| e.to_string()),
                    Err(OpsError::Other(e)) => Err(format!("{e:#}")),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(workload = %name, "signed in from the desktop app");
                        emit_login(
                            &shell,
                            &name,
                            "done",
                            format!("Signed in: {name} is running"),
                        );
                    }
                    Err(m) => {
                        tracing::warn!(workload = %name, error = %m, "sign-in failed");
                        emit_login(&shell, &name, "failed", m);
                    }
                }
            });
            Ok(())
        }
    }
}

async fn remove_workload(shell: &Shell, name: String) -> Result<(), Error> {
    let Backend::Real { store, .. } = &shell.backend else {
        return Err(Error::new(
            ErrorCode::Demo,
            "The demo's workloads cannot be removed: they go when you quit the demo.",
        ));
    };
    crate::ops::remove(&shell.paths, &name, Some(store), shell.engine())
        .await
        .map_err(|e| match e {
            OpsError::Config(c) => config_err(c),
            OpsError::Other(e) => match e.downcast::<EngineError>() {
                Ok(e) => engine_err(e),
                Err(e) => anyhow_err(ErrorCode::Store, e),
            },
            e => Error::new(ErrorCode::Config, e.to_string()),
        })?;
    shell.forget(&name);
    super::refresh_tray(shell);
    shell.emit(UiEventKind::Removed, &name);
    Ok(())
}

fn validate(form: &AddForm) -> Result<crate::ops::AddArgs, Error> {
    let name = form.name.trim();
    config::validate_name(name).map_err(|m| Error::field("name", m))?;
    let opt = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    let url = opt(&form.url);
    if let Some(u) = &url {
        config::check_endpoint("url", u, false).map_err(|m| Error::field("url", m))?;
    }
    let token_endpoint = opt(&form.token_endpoint);
    let authorization_endpoint = opt(&form.authorization_endpoint);
    let client_id = opt(&form.client_id);
    for (field, v) in [
        ("token_endpoint", &token_endpoint),
        ("authorization_endpoint", &authorization_endpoint),
    ] {
        if let Some(v) = v {
            config::check_endpoint(field, v, false).map_err(|m| Error::field(field, m))?;
        }
    }
    if url.is_none() {
        // Without a URL nothing can be discovered: everything must be given.
        if token_endpoint.is_none() {
            return Err(Error::field(
                "token_endpoint",
                "give the remote's URL (the rest is discovered), or the token endpoint",
            ));
        }
        if authorization_endpoint.is_none() {
            return Err(Error::field(
                "authorization_endpoint",
                "an authorization endpoint is needed to sign in (or give the remote's URL)",
            ));
        }
        if client_id.is_none() {
            return Err(Error::field(
                "client_id",
                "a client id is needed (or give the remote's URL: a client is then registered)",
            ));
        }
    }
    Ok(crate::ops::AddArgs {
        name: name.to_string(),
        url,
        token_endpoint,
        authorization_endpoint,
        client_id,
        // The config's `[registration] client_metadata_url`, where the server takes it.
        client_metadata_url: None,
        scopes: form
            .scopes
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        ca_file: None,
        allow_http: false,
    })
}

/// Add a workload to workloads.toml, start monitoring it, and start its sign-in.
async fn add_workload(shell: Arc<Shell>, form: AddForm) -> Result<(), Error> {
    if shell.demo().is_some() {
        return Err(Error::new(ErrorCode::Demo,
            "This is the demo: add your own servers in Tokenwarden's own window (`tokenwarden`), which the demo never touches.",
        ));
    }
    let args = validate(&form)?;
    let name = args.name.clone();
    // Discovery and registration (when asked for) report progress as notices.
    let say = {
        let (shell, name) = (shell.clone(), name.clone());
        move |line: String| emit_login(&shell, &name, "waiting", line.trim().to_string())
    };
    let cfg = crate::ops::add_workload(&shell.paths, args, &say)
        .await
        .map_err(|e| match e {
            OpsError::Exists(c) => Error::field("name", c.message),
            OpsError::Config(c) => config_err(c),
            OpsError::Other(e) => anyhow_err(ErrorCode::Add, e),
            e => Error::new(ErrorCode::Add, e.to_string()),
        })?;
    shell
        .engine()
        .reload(Some(cfg), vec![])
        .await
        .map_err(engine_err)?;
    start_reauth(shell, name).await
}

fn demo_control(shell: &Shell, action: String) -> Result<DemoState, Error> {
    let Some(demo) = shell.demo() else {
        return Err(Error::new(
            ErrorCode::NotDemo,
            "demo controls work only in the demo",
        ));
    };
    match action.as_str() {
        "waf" => demo.issuer.set_mode(Mode::Waf403),
        "down" => demo.issuer.set_mode(Mode::Down),
        "revoke" => {
            demo.issuer.revoke_all();
            shell.set_demo_revoked(true);
        }
        "heal" => {
            demo.issuer.set_mode(Mode::Healthy);
            shell.set_demo_revoked(false);
        }
        other => {
            return Err(Error::new(
                ErrorCode::Invalid,
                format!("unknown demo action `{other}`"),
            ))
        }
    }
    tracing::info!(action = %action, "demo control");
    let state = shell
        .demo_state()
        .ok_or_else(|| Error::new(ErrorCode::NotDemo, "demo controls work only in the demo"))?;
    shell.emit(UiEventKind::Demo, &state);
    Ok(state)
}

fn set_notifications(shell: &Shell, name: String, enabled: bool) -> Result<(), Error> {
    match shell.set_muted(&name, !enabled) {
        Ok(Some(row)) => {
            shell.emit(UiEventKind::Row, row);
            Ok(())
        }
        Ok(None) => Err(engine_err(EngineError::UnknownWorkload(name))),
        Err(e) => Err(Error::new(
            ErrorCode::Io,
            format!("cannot save the notification setting: {e}"),
        )),
    }
}

async fn start_demo(shell: &Shell) -> Result<super::DemoStarted, Error> {
    if shell.demo().is_some() {
        return Err(Error::new(ErrorCode::Demo, "This is the demo already."));
    }
    super::start_demo(shell)
        .await
        .map_err(|m| Error::new(ErrorCode::Demo, m))
}

/// The workload `name` of the user's config with its local address (for "Connect
/// to…"), or why it cannot be connected.
fn connectable(shell: &Shell, name: &str) -> Result<Option<String>, Error> {
    if shell.demo().is_some() {
        return Err(Error::new(ErrorCode::Demo,
            "The demo's workloads go away with the demo: connect your own workloads to your clients.",
        ));
    }
    let st = lock(&shell.state);
    let w = st
        .statuses
        .get(name)
        .ok_or_else(|| engine_err(EngineError::UnknownWorkload(name.to_string())))?;
    Ok(w.local_url.clone())
}

async fn client_connections(
    shell: Arc<Shell>,
    name: String,
) -> Result<Vec<super::connect::ClientState>, Error> {
    let local = connectable(&shell, &name)?;
    tokio::task::spawn_blocking(move || {
        let w = super::connect::Workload {
            name: &name,
            local_url: local.as_deref(),
            paths: &shell.paths,
        };
        super::connect::states(&w, &|k| k.default_path())
    })
    .await
    .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))
}

async fn connect_client(
    shell: Arc<Shell>,
    name: String,
    client: String,
    connect: bool,
) -> Result<super::connect::ConnectResult, Error> {
    let local = connectable(&shell, &name)?;
    let kind = super::connect::kind_of(&client).ok_or_else(|| {
        Error::new(
            ErrorCode::BadRequest,
            format!("no client `{}`", client.escape_debug()),
        )
    })?;
    let path = kind.default_path().ok_or_else(|| {
        Error::new(
            ErrorCode::Client,
            format!(
                "cannot find {}'s config file (no home directory)",
                super::connect::label(kind)
            ),
        )
    })?;
    tokio::task::spawn_blocking(move || {
        let w = super::connect::Workload {
            name: &name,
            local_url: local.as_deref(),
            paths: &shell.paths,
        };
        super::connect::change(kind, &path, &w, connect)
    })
    .await
    .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?
    .map_err(|e| anyhow_err(ErrorCode::Client, e))
}
