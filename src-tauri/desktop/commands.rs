//! The commands the window calls (each granted by `capabilities/default.json`, listed
//! in `build.rs`). Every error reaches the UI as `{code, message}` (plus `field` for a
//! form error) and is shown there.

use super::{lock, Backend, DemoState, LoginEvent, Row, Shell};
use crate::engine::config;
use crate::engine::oauth;
use crate::engine::EngineError;
use crate::sim_issuer::Mode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tauri::{AppHandle, Emitter, State};
use tokio_util::sync::CancellationToken;

/// How long a sign-in waits for the browser.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Tells sign-ins of one workload apart (a newer one replaces an older one).
static LOGIN_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Clone, Debug, Serialize)]
pub struct CmdError {
    pub code: String,
    pub message: String,
    /// The form field the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
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
            field: Some(field),
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

type Shared<'a> = State<'a, Arc<Shell>>;

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
}

#[tauri::command]
pub fn app_info(app: AppHandle, shell: Shared<'_>) -> AppInfo {
    let autostart = if shell.demo().is_some() {
        None
    } else {
        super::autostart::is_enabled(&app, &shell.paths)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot read the start-at-login state"))
            .ok()
    };
    AppInfo {
        version: env!("CARGO_PKG_VERSION"),
        demo: shell.demo_state(),
        control_dir: shell.control_paths.config_dir.display().to_string(),
        config_file: shell.paths.config_file.display().to_string(),
        autostart,
        config_error: shell.config_edits.borrow().error.clone(),
    }
}

/// "Start Tokenwarden when I log in": returns the state afterwards.
#[tauri::command]
pub fn set_autostart(app: AppHandle, shell: Shared<'_>, enabled: bool) -> Result<bool, CmdError> {
    if shell.demo().is_some() {
        return Err(CmdError::new(
            "demo",
            "The demo does not start at login. Add your own workloads with `tokenwarden add`, then switch it on.",
        ));
    }
    super::autostart::set(&app, &shell.paths, enabled).map_err(|m| CmdError::new("autostart", m))
}

#[tauri::command]
pub async fn list_status(shell: Shared<'_>) -> Result<Vec<Row>, CmdError> {
    // The view the event forwarder keeps, in event order: a fresh engine snapshot
    // could be older than an event applied while it travelled.
    Ok(shell.rows())
}

/// "Retry now" for one workload, or all (`name` null).
#[tauri::command]
pub async fn retry(shell: Shared<'_>, name: Option<String>) -> Result<Vec<String>, CmdError> {
    Ok(shell.engine().retry(name.as_deref()).await?)
}

#[tauri::command]
pub async fn reauthenticate(
    app: AppHandle,
    shell: Shared<'_>,
    name: String,
) -> Result<(), CmdError> {
    start_reauth(app, shell.inner().clone(), name).await
}

fn emit_login(app: &AppHandle, name: &str, state: &'static str, message: String) {
    let _ = app.emit(
        "login",
        LoginEvent {
            name: name.to_string(),
            state,
            message,
        },
    );
}

/// Open `url` in the browser: `TOKENWARDEN_BROWSER` (a command given the URL as its
/// only argument) when set, else the system's default browser.
fn open_browser(url: &str) -> Result<(), String> {
    match std::env::var_os("TOKENWARDEN_BROWSER").filter(|v| !v.is_empty()) {
        Some(cmd) => std::process::Command::new(cmd)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => open::that_detached(url).map_err(|e| e.to_string()),
    }
}

/// Start the sign-in of `name`: the real authorization-code flow in the browser for
/// the user's workloads (returns once the browser is asked; the rest goes out as
/// `login` events), the demo's built-in sign-in for the demo.
pub async fn start_reauth(app: AppHandle, shell: Arc<Shell>, name: String) -> Result<(), CmdError> {
    match &shell.backend {
        Backend::Demo(demo) => {
            emit_login(&app, &name, "waiting", format!("Signing in to {name}…"));
            match demo.relogin(&name).await {
                Ok(()) => {
                    emit_login(&app, &name, "done", format!("Signed in: {name} is running"));
                    Ok(())
                }
                Err(e) => {
                    let err = anyhow_err("login", e);
                    emit_login(&app, &name, "failed", err.message.clone());
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
            let secret = crate::cli::client_secret(store, &w)
                .await
                .map_err(|e| anyhow_err("store", e))?;
            let pending = oauth::prepare_login(&w)
                .await
                .map_err(|e| CmdError::new("login", e.to_string()))?
                .with_client_secret(secret);
            let url = pending.authorize_url.to_string();
            let cancel = CancellationToken::new();
            let id = LOGIN_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some((_, old)) = lock(&shell.logins).insert(name.clone(), (id, cancel.clone())) {
                old.cancel();
            }
            if let Err(e) = open_browser(&url) {
                lock(&shell.logins).remove(&name);
                return Err(CmdError::new(
                    "browser",
                    format!("could not open a browser ({e}); open this address yourself to sign in: {url}"),
                ));
            }
            emit_login(
                &app,
                &name,
                "waiting",
                format!("Sign in to {name} in your browser…"),
            );
            let store = store.clone();
            let policy = cfg.policy.clone();
            tauri::async_runtime::spawn(async move {
                let outcome = tokio::select! {
                    r = pending.finish(&http, &policy, LOGIN_TIMEOUT) => Some(r),
                    _ = cancel.cancelled() => None,
                };
                let Some(outcome) = outcome else {
                    return; // replaced by a newer sign-in
                };
                {
                    let mut logins = lock(&shell.logins);
                    if logins.get(&name).is_some_and(|(i, _)| *i == id) {
                        logins.remove(&name);
                    }
                }
                let result = match outcome {
                    Ok(tokens) => match store.save_tokens(&name, &tokens).await {
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
                        emit_login(&app, &name, "done", format!("Signed in: {name} is running"));
                    }
                    Err(m) => {
                        tracing::warn!(workload = %name, error = %m, "sign-in failed");
                        emit_login(&app, &name, "failed", m);
                    }
                }
            });
            Ok(())
        }
    }
}

#[tauri::command]
pub async fn remove_workload(
    app: AppHandle,
    shell: Shared<'_>,
    name: String,
) -> Result<(), CmdError> {
    let Backend::Real { store, .. } = &shell.backend else {
        return Err(CmdError::new(
            "demo",
            "The demo's workloads cannot be removed. Add your own with `tokenwarden add`; the demo stops once one exists.",
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
    super::refresh_tray(&app, &shell);
    let _ = app.emit("removed", &name);
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
#[tauri::command]
pub async fn add_workload(
    app: AppHandle,
    shell: Shared<'_>,
    form: AddForm,
) -> Result<(), CmdError> {
    if shell.demo().is_some() {
        return Err(CmdError::new(
            "demo",
            "This is the demo. Add your own workloads with `tokenwarden add NAME --url URL`, then start Tokenwarden again.",
        ));
    }
    let args = validate(&form)?;
    let name = args.name.clone();
    // Discovery and registration (when asked for) report progress as notices.
    let say = {
        let (app, name) = (app.clone(), name.clone());
        move |line: String| emit_login(&app, &name, "waiting", line.trim().to_string())
    };
    let cfg = crate::cli::add_workload(&shell.paths, args, &say)
        .await
        .map_err(|e| match e.downcast::<config::ConfigError>() {
            Ok(c) if c.message.contains("already exists") => CmdError::field("name", c.message),
            Ok(c) => CmdError::from(c),
            Err(e) => anyhow_err("add", e),
        })?;
    shell.engine().reload(Some(cfg), vec![]).await?;
    start_reauth(app, shell.inner().clone(), name).await
}

#[tauri::command]
pub async fn demo_control(
    app: AppHandle,
    shell: Shared<'_>,
    action: String,
) -> Result<DemoState, CmdError> {
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
    let _ = app.emit("demo", &state);
    Ok(state)
}

#[tauri::command]
pub fn set_notifications(
    app: AppHandle,
    shell: Shared<'_>,
    name: String,
    enabled: bool,
) -> Result<(), CmdError> {
    match shell.set_muted(&name, !enabled) {
        Ok(Some(row)) => {
            let _ = app.emit("row", row);
            Ok(())
        }
        Ok(None) => Err(EngineError::UnknownWorkload(name).into()),
        Err(e) => Err(CmdError::new(
            "io",
            format!("cannot save the notification setting: {e}"),
        )),
    }
}
