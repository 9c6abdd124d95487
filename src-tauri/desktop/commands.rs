//! The commands the window calls (each granted by `capabilities/default.json`, listed
//! in `build.rs`), run here in the app that owns the engine: the window process
//! forwards each over the control socket ([`dispatch`]; see `src-tauri/window/`). Every error
//! reaches the UI as `{code, message}` (plus `field` for a form error) and is shown
//! there.

use super::{lock, Backend, DemoState, LoginEvent, Shell};
use crate::engine::config;
use crate::engine::oauth;
use crate::engine::EngineError;
use crate::sim_issuer::Mode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How long a sign-in waits for the browser.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Serialize)]
pub struct CmdError {
    pub code: String,
    pub message: String,
    /// The form field the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl CmdError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        CmdError {
            code: code.into(),
            message: message.into(),
            field: None,
        }
    }
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        CmdError {
            code: "invalid".into(),
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<EngineError> for CmdError {
    fn from(e: EngineError) -> Self {
        CmdError::new(e.code(), e.to_string())
    }
}

impl From<config::ConfigError> for CmdError {
    fn from(e: config::ConfigError) -> Self {
        CmdError::new("config", e.to_string())
    }
}

fn anyhow_err(code: &str, e: anyhow::Error) -> CmdError {
    CmdError::new(code, format!("{e:#}"))
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
fn set_autostart(shell: &Shell, enabled: bool) -> Result<bool, CmdError> {
    if shell.demo().is_some() {
        return Err(CmdError::new(
            "demo",
            "The demo does not start at login: switch it on in Tokenwarden's own window.",
        ));
    }
    super::autostart::set(&shell.paths, enabled).map_err(|m| CmdError::new("autostart", m))
}

/// Run the window's command `name` with its arguments (as the page passed them, the
/// window process forwarding them unchanged): the one entry point of the window.
pub async fn dispatch(
    shell: Arc<Shell>,
    name: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value, CmdError> {
    fn arg<T: serde::de::DeserializeOwned>(
        args: &serde_json::Value,
        key: &str,
    ) -> Result<T, CmdError> {
        let v = args.get(key).cloned().unwrap_or(serde_json::Value::Null);
        serde_json::from_value(v)
            .map_err(|e| CmdError::new("bad_request", format!("argument `{key}`: {e}")))
    }
    fn json(v: impl Serialize) -> Result<serde_json::Value, CmdError> {
        serde_json::to_value(v).map_err(|e| CmdError::new("internal", e.to_string()))
    }
    match name {
        "app_info" => json(app_info(&shell)),
        // The view the event forwarder keeps, in event order: a fresh engine snapshot
        // could be older than an event applied while it travelled.
        "list_status" => json(shell.rows()),
        // "Retry now" for one workload, or all (`name` null).
        "retry" => json(
            shell
                .engine()
                .retry(arg::<Option<String>>(&args, "name")?.as_deref())
                .await?,
        ),
        "reauthenticate" => json(start_reauth(shell, arg(&args, "name")?).await?),
        "remove_workload" => json(remove_workload(&shell, arg(&args, "name")?).await?),
        "add_workload" => json(add_workload(shell, arg(&args, "form")?).await?),
        "demo_control" => json(demo_control(&shell, arg(&args, "action")?)?),
        "set_notifications" => json(set_notifications(
            &shell,
            arg(&args, "name")?,
            arg(&args, "enabled")?,
        )?),
        "set_autostart" => json(set_autostart(&shell, arg(&args, "enabled")?)?),
        // "Try the demo" (the user's app only).
        "start_demo" => json(start_demo(&shell).await?),
        // "Connect to…" on a card: the clients, and connecting / disconnecting one.
        "client_connections" => json(client_connections(shell, arg(&args, "name")?).await?),
        "connect_client" => json(
            connect_client(
                shell,
                arg(&args, "name")?,
                arg(&args, "client")?,
                arg(&args, "connect")?,
            )
            .await?,
        ),
        // Not commands the page may invoke. From a second launch of the app:
        "show_window" => {
            if shell.quitting.load(std::sync::atomic::Ordering::Acquire) {
                return Err(CmdError::new("quitting", "Tokenwarden is quitting"));
            }
            if arg::<Option<bool>>(&args, "hidden")?.unwrap_or(false) {
                return Ok(serde_json::json!({ "window": "hidden" }));
            }
            tracing::info!("another launch asked for the window");
            Ok(match super::show_window(&shell) {
                super::WindowShown::Focused => serde_json::json!({ "window": "focused" }),
                super::WindowShown::Opened => serde_json::json!({ "window": "opened" }),
                super::WindowShown::Unavailable(why) => {
                    serde_json::json!({ "window": "unavailable", "message": why })
                }
            })
        }
        // From the window's process itself:
        "window_closing" => {
            super::window_closing(&shell, arg(&args, "pid")?);
            Ok(serde_json::Value::Null)
        }
        other => Err(CmdError::new(
            "bad_request",
            format!("no window command `{}`", other.escape_debug()),
        )),
    }
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
    shell.emit("login", event);
}

/// Start the sign-in of `name`: the real authorization-code flow in the browser for
/// the user's workloads (returns once the browser is asked; the rest goes out as
/// `login` events), the demo's built-in sign-in for the demo. A sign-in of `name`
/// still waiting is cancelled first (its listener closed before the new one binds,
/// so a registered client's fixed `redirect_port` is free). When no browser can be
/// started the sign-in keeps waiting and the `login` event gives the address to open.
pub async fn start_reauth(shell: Arc<Shell>, name: String) -> Result<(), CmdError> {
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
                    let err = anyhow_err("login", e);
                    emit_login(&shell, &name, "failed", err.message.clone());
                    Err(err)
                }
            }
        }
        Backend::Real { store, .. } => {
            let cfg =
                crate::daemon::load_config(&shell.paths).map_err(|e| anyhow_err("config", e))?;
            let w = cfg
                .workload(&name)
                .cloned()
                .ok_or_else(|| EngineError::UnknownWorkload(name.clone()))?;
            let http = oauth::http_client(&cfg.policy, w.ca_file.as_deref())
                .map_err(|m| CmdError::new("config", m))?;
            // The resource may name another authorization server now.
            let w = crate::engine::registration::follow_moved_server(
                &shell.paths.config_file,
                store,
                &w,
                &cfg.policy,
            )
            .await
            .map_err(|e| anyhow_err("registration", e))?
            .map_or(w, |(_, moved)| moved);
            let last = shell
                .engine()
                .status()
                .await
                .ok()
                .and_then(|l| l.into_iter().find(|s| s.name == name));
            // A client Tokenwarden registered that the server no longer knows
            // (`invalid_client`): a fresh one first.
            let refused = last.as_ref().is_some_and(|s| {
                s.status == crate::engine::Status::Unauthenticated
                    && s.reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("invalid_client"))
            });
            let w = if refused {
                crate::engine::registration::register_fresh_client(
                    &shell.paths.config_file,
                    store,
                    &w,
                    &http,
                    &cfg.policy,
                )
                .await
                .map_err(|e| anyhow_err("registration", e))?
                .unwrap_or(w)
            } else {
                w
            };
            let secret = crate::cli::client_secret(store, &w)
                .await
                .map_err(|e| anyhow_err("store", e))?;
            // A step-up the remote asked for: the sign-in asks for those scopes too.
            let needs = last.map(|s| s.needs_scopes).unwrap_or_default();
            let w = oauth::for_sign_in(store, &w, &needs).await;
            let pending = shell
                .logins
                .prepare(&w)
                .await
                .map_err(|e| CmdError::new("login", e.to_string()))?
                .with_client_secret(secret);
            let url = pending.authorize_url.to_string();
            let message = match crate::cli::open_browser(&url) {
                Ok(()) => format!("Sign in to {name} in your browser…"),
                Err(e) => {
                    tracing::warn!(workload = %name, error = %e, "could not open a browser; the sign-in waits for the address to be opened by hand");
                    format!("Could not open a browser ({e}). Open this address yourself to sign in to {name}: {url}")
                }
            };
            emit_login(&shell, &name, "waiting", message);
            let store = store.clone();
            let policy = cfg.policy.clone();
            tokio::spawn(async move {
                let outcome = pending.finish(&http, &policy, LOGIN_TIMEOUT).await;
                if let Err(oauth::LoginError::Replaced(_)) = outcome {
                    return; // the newer sign-in speaks for itself
                }
                let result = match outcome {
                    Ok(tokens) => match store.save_login(&w, &tokens).await {
                        Ok(()) => shell
                            .engine()
                            .reload(None, vec![name.clone()])
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(format!(
                            "signed in, but the tokens could not be stored: {e}"
                        )),
                    },
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

async fn remove_workload(shell: &Shell, name: String) -> Result<(), CmdError> {
    let Backend::Real { store, .. } = &shell.backend else {
        return Err(CmdError::new(
            "demo",
            "The demo's workloads cannot be removed: they go when you quit the demo.",
        ));
    };
    config::remove_workload(&shell.paths.config_file, &name)?;
    let cfg = crate::daemon::load_config(&shell.paths).map_err(|e| anyhow_err("config", e))?;
    shell.engine().reload(Some(cfg), vec![]).await?;
    store.delete_tokens(&name).await.map_err(|e| {
        CmdError::new(
            "store",
            format!("removed, but deleting its tokens failed: {e}"),
        )
    })?;
    store.delete_client_secret(&name).await.map_err(|e| {
        CmdError::new(
            "store",
            format!("removed, but deleting its registered client's secret failed: {e}"),
        )
    })?;
    shell.forget(&name);
    super::refresh_tray(shell);
    shell.emit("removed", &name);
    Ok(())
}

/// The add form, as typed.
#[derive(Debug, Deserialize)]
pub struct AddForm {
    name: String,
    /// The remote (an MCP server's URL): the rest is discovered and a client
    /// registered when the endpoints and client id are left empty.
    #[serde(default)]
    url: String,
    #[serde(default)]
    token_endpoint: String,
    #[serde(default)]
    authorization_endpoint: String,
    #[serde(default)]
    client_id: String,
    /// Scopes separated by spaces or commas.
    #[serde(default)]
    scopes: String,
}

fn validate(form: &AddForm) -> Result<crate::cli::AddArgs, CmdError> {
    let name = form.name.trim();
    config::validate_name(name).map_err(|m| CmdError::field("name", m))?;
    let opt = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    let url = opt(&form.url);
    if let Some(u) = &url {
        config::check_endpoint("url", u, false).map_err(|m| CmdError::field("url", m))?;
    }
    let token_endpoint = opt(&form.token_endpoint);
    let authorization_endpoint = opt(&form.authorization_endpoint);
    let client_id = opt(&form.client_id);
    for (field, v) in [
        ("token_endpoint", &token_endpoint),
        ("authorization_endpoint", &authorization_endpoint),
    ] {
        if let Some(v) = v {
            config::check_endpoint(field, v, false).map_err(|m| CmdError::field(field, m))?;
        }
    }
    if url.is_none() {
        // Without a URL nothing can be discovered: everything must be given.
        if token_endpoint.is_none() {
            return Err(CmdError::field(
                "token_endpoint",
                "give the remote's URL (the rest is discovered), or the token endpoint",
            ));
        }
        if authorization_endpoint.is_none() {
            return Err(CmdError::field(
                "authorization_endpoint",
                "an authorization endpoint is needed to sign in (or give the remote's URL)",
            ));
        }
        if client_id.is_none() {
            return Err(CmdError::field(
                "client_id",
                "a client id is needed (or give the remote's URL: a client is then registered)",
            ));
        }
    }
    Ok(crate::cli::AddArgs {
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
async fn add_workload(shell: Arc<Shell>, form: AddForm) -> Result<(), CmdError> {
    if shell.demo().is_some() {
        return Err(CmdError::new(
            "demo",
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
    let cfg = crate::cli::add_workload(&shell.paths, args, &say)
        .await
        .map_err(|e| match e.downcast::<config::ConfigError>() {
            Ok(c) if c.message.contains("already exists") => CmdError::field("name", c.message),
            Ok(c) => CmdError::from(c),
            Err(e) => anyhow_err("add", e),
        })?;
    shell.engine().reload(Some(cfg), vec![]).await?;
    start_reauth(shell, name).await
}

fn demo_control(shell: &Shell, action: String) -> Result<DemoState, CmdError> {
    let Some(demo) = shell.demo() else {
        return Err(CmdError::new(
            "not_demo",
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
            return Err(CmdError::new(
                "invalid",
                format!("unknown demo action `{other}`"),
            ))
        }
    }
    tracing::info!(action = %action, "demo control");
    let state = shell
        .demo_state()
        .ok_or_else(|| CmdError::new("not_demo", "demo controls work only in the demo"))?;
    shell.emit("demo", &state);
    Ok(state)
}

fn set_notifications(shell: &Shell, name: String, enabled: bool) -> Result<(), CmdError> {
    match shell.set_muted(&name, !enabled) {
        Ok(Some(row)) => {
            shell.emit("row", row);
            Ok(())
        }
        Ok(None) => Err(EngineError::UnknownWorkload(name).into()),
        Err(e) => Err(CmdError::new(
            "io",
            format!("cannot save the notification setting: {e}"),
        )),
    }
}

async fn start_demo(shell: &Shell) -> Result<super::DemoStarted, CmdError> {
    if shell.demo().is_some() {
        return Err(CmdError::new("demo", "This is the demo already."));
    }
    super::start_demo(shell)
        .await
        .map_err(|m| CmdError::new("demo", m))
}

/// The workload `name` of the user's config with its local address (for "Connect
/// to…"), or why it cannot be connected.
fn connectable(shell: &Shell, name: &str) -> Result<Option<String>, CmdError> {
    if shell.demo().is_some() {
        return Err(CmdError::new(
            "demo",
            "The demo's workloads go away with the demo: connect your own workloads to your clients.",
        ));
    }
    let st = lock(&shell.state);
    let w = st
        .statuses
        .get(name)
        .ok_or_else(|| EngineError::UnknownWorkload(name.to_string()))?;
    Ok(w.local_url.clone())
}

async fn client_connections(
    shell: Arc<Shell>,
    name: String,
) -> Result<Vec<super::connect::ClientState>, CmdError> {
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
    .map_err(|e| CmdError::new("internal", e.to_string()))
}

async fn connect_client(
    shell: Arc<Shell>,
    name: String,
    client: String,
    connect: bool,
) -> Result<super::connect::ConnectResult, CmdError> {
    let local = connectable(&shell, &name)?;
    let kind = super::connect::kind_of(&client).ok_or_else(|| {
        CmdError::new(
            "bad_request",
            format!("no client `{}`", client.escape_debug()),
        )
    })?;
    let path = kind.default_path().ok_or_else(|| {
        CmdError::new(
            "client",
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
    .map_err(|e| CmdError::new("internal", e.to_string()))?
    .map_err(|e| anyhow_err("client", e))
}

#[cfg(test)]
mod tests {
    /// The window's commands are listed in four places that must agree: `dispatch`
    /// here, `build.rs` (each gets an `allow-<name>` permission), the capability that
    /// grants them and the window program's forwarding handlers.
    #[test]
    fn every_window_command_is_listed_granted_forwarded_and_dispatched() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        let build = read("build.rs");
        let list = build
            .split("const COMMANDS: &[&str] = &[")
            .nth(1)
            .and_then(|r| r.split("];").next())
            .expect("COMMANDS in build.rs");
        let commands: Vec<String> = list
            .split(',')
            .map(|c| c.trim().trim_matches('"').to_string())
            .filter(|c| !c.is_empty())
            .collect();
        assert!(commands.len() >= 12, "{commands:?}");
        let caps: serde_json::Value =
            serde_json::from_str(&read("capabilities/default.json")).unwrap();
        let granted: Vec<String> = caps["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str()?.strip_prefix("allow-").map(str::to_string))
            .collect();
        let want: Vec<String> = commands.iter().map(|c| c.replace('_', "-")).collect();
        assert_eq!(
            granted, want,
            "capabilities/default.json grants exactly build.rs's list"
        );
        let window = read("src-tauri/window/main.rs");
        let handlers = window
            .split("generate_handler![")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .expect("generate_handler! in the window program");
        let handlers: Vec<&str> = handlers
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        assert_eq!(
            handlers, commands,
            "the window forwards exactly build.rs's list"
        );
        let here = read("src-tauri/desktop/commands.rs");
        let window_flat: String = window.split_whitespace().collect();
        for c in &commands {
            assert!(
                window_flat.contains(&format!("link.call(\"{c}\",")),
                "the window's `{c}` forwards under its own name"
            );
            assert!(
                here.contains(&format!("        \"{c}\" => ")),
                "dispatch runs `{c}`"
            );
        }
    }
}
