//! The use cases, called alike by the command line, the desktop app and the control
//! server: load the configuration, make the secret store, add a workload (discovery,
//! registration), and what the others need of a workload. No printing, no process
//! exit, no clap: plain options in, results out.

use crate::engine::config::{self, Config, StoreKind, WorkloadConfig};
use crate::engine::discovery::{self, DiscoveryError, DiscoveryOptions};
use crate::engine::registration;
use crate::engine::store::{default_service, FileBackend, KeychainBackend, SecretStore};
use crate::engine::{Secret, WorkloadStatus};
use crate::paths::Paths;
use anyhow::Context;

/// Load `workloads.toml` and apply the `TOKENWARDEN_*` policy overrides.
pub fn load_config(paths: &Paths) -> anyhow::Result<Config> {
    with_env_policy(Config::load(&paths.config_file)?)
}

/// Apply this process's `TOKENWARDEN_*` policy overrides to a loaded configuration.
pub fn with_env_policy(mut cfg: Config) -> anyhow::Result<Config> {
    cfg.policy
        .apply_env(|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(cfg)
}

/// The secret store the configuration chose, with this config dir's entries. The file
/// store is used only when the config says `store = "file"`: never as a silent fallback.
pub fn make_store(cfg: &Config, paths: &Paths) -> SecretStore {
    match cfg.store {
        StoreKind::Keychain => {
            let service = std::env::var("TOKENWARDEN_KEYRING_SERVICE")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .or_else(|| cfg.service.clone())
                .unwrap_or_else(default_service);
            SecretStore::new(KeychainBackend::new(service))
        }
        StoreKind::File => SecretStore::new(FileBackend::new(&paths.secrets_dir)),
    }
    .for_config_dir(&paths.config_dir)
}

/// The scope that asks an authorization server for a refresh token (OpenID Connect
/// Core §11), requested by `add --url` when the server lists it.
const OFFLINE_ACCESS: &str = "offline_access";

/// What `add` was given (the CLI flags, or the window's add form).
#[derive(Clone, Debug, Default)]
pub struct AddArgs {
    pub name: String,
    pub url: Option<String>,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub client_id: Option<String>,
    /// A Client ID Metadata Document's URL (else the config's default).
    pub client_metadata_url: Option<String>,
    pub scopes: Vec<String>,
    pub ca_file: Option<String>,
    pub allow_http: bool,
}

/// A free port on 127.0.0.1 that no workload in `cfg` uses, with its listener (held
/// by the caller until the port is written, so two picks never collide).
fn free_loopback_port(cfg: &Config) -> anyhow::Result<(std::net::TcpListener, u16)> {
    let taken: std::collections::HashSet<u16> = cfg
        .workloads
        .iter()
        .flat_map(|w| [w.listen_port, w.redirect_port])
        .flatten()
        .collect();
    for _ in 0..16 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))
            .context("cannot pick a free port on 127.0.0.1")?;
        let port = l.local_addr()?.port();
        if !taken.contains(&port) {
            return Ok((l, port));
        }
    }
    anyhow::bail!("cannot pick a free port on 127.0.0.1 that no workload uses")
}

/// `add`: write the workload (discovering and registering what was not given), and
/// keep a registered client's secret in the secret store. On any failure nothing is
/// written: not the config file, not the store. Progress goes to `say` (the CLI's
/// stderr, the window's notices). Returns the configuration as written.
pub async fn add_workload(
    paths: &Paths,
    a: AddArgs,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<Config, OpsError> {
    let cfg = load_config(paths)?;
    let usage = |message: String| config::ConfigError {
        path: paths.config_file.clone(),
        line: None,
        message,
    };
    // What add_workload would refuse anyway, refused before any client is registered.
    config::validate_name(&a.name).map_err(usage)?;
    if cfg.workload(&a.name).is_some() {
        return Err(OpsError::Exists(usage(format!(
            "a workload named `{}` already exists",
            a.name
        ))));
    }
    let name = a.name.clone();
    let mut nw = config::NewWorkload {
        name: a.name,
        url: a.url.clone(),
        authorization_endpoint: a.authorization_endpoint.clone(),
        token_endpoint: a.token_endpoint.clone().unwrap_or_default(),
        client_id: a.client_id.clone().unwrap_or_default(),
        scopes: a.scopes.clone(),
        ca_file: a.ca_file.clone(),
        allow_http: a.allow_http,
        ..Default::default()
    };
    let mut client_secret: Option<Secret> = None;
    let mut registered = None;
    let mut held_ports = Vec::new();
    if a.token_endpoint.is_none() || a.client_id.is_none() {
        let Some(raw) = a.url.as_deref() else {
            return Err(anyhow::anyhow!(
                "give --url URL to discover the rest, or both --token-endpoint and --client-id"
            )
            .into());
        };
        let url = url::Url::parse(raw.trim())
            .map_err(|e| anyhow::anyhow!("--url is not a valid URL ({e}): `{raw}`"))?;
        let opts = DiscoveryOptions {
            policy: cfg.policy.clone(),
            allow_http: a.allow_http,
            // Relative to the config dir, as the config file's `ca_file` is.
            ca_file: a.ca_file.as_ref().map(|c| paths.config_dir.join(c)),
            resolve: Vec::new(),
        };
        say(format!("Discovering how {url} signs in..."));
        let d = discovery::discover(&url, &opts).await?;
        // As published (RFC 8414 §3.3), never a normalised URL.
        say(format!("  authorization server:   {}", d.issuer_identifier));
        say(format!(
            "  authorization endpoint: {}",
            d.authorization_endpoint
        ));
        say(format!("  token endpoint:         {}", d.token_endpoint));
        if let Some(r) = &d.resource_indicator {
            say(format!("  resource indicator:     {r}"));
        }
        say(format!(
            "  scopes it asks for:     {}",
            if d.scopes.is_empty() {
                "none named".to_string()
            } else {
                d.scopes.join(" ")
            }
        ));
        nw.url = Some(d.resource.to_string());
        nw.resource = d.resource_indicator.clone();
        if nw.authorization_endpoint.is_none() {
            nw.authorization_endpoint = Some(d.authorization_endpoint.to_string());
            // Sign-in answers come from this server: its `iss` (RFC 9207) is checked.
            // (An --authorization-endpoint of another server has another issuer.)
            nw.issuer = Some(d.issuer_identifier.clone());
            nw.iss_parameter = d.iss_parameter_supported;
            say(format!(
                "  issuer (RFC 9207 iss):  {}{}",
                d.issuer_identifier,
                if d.iss_parameter_supported {
                    "; always sent in sign-in answers"
                } else {
                    ""
                }
            ));
        }
        if nw.token_endpoint.is_empty() {
            nw.token_endpoint = d.token_endpoint.to_string();
        }
        if nw.scopes.is_empty() {
            nw.scopes = d.scopes.clone();
            // Without --scope: ask for a refresh token where the server says how.
            if d.server_scopes.iter().any(|s| s == OFFLINE_ACCESS)
                && !nw.scopes.iter().any(|s| s == OFFLINE_ACCESS)
            {
                nw.scopes.push(OFFLINE_ACCESS.into());
                say(format!("  also asking for:        {OFFLINE_ACCESS} (the authorization server lists it: it grants refresh tokens with it)"));
            }
        }
        // The spec's order: --client-id, else a Client ID Metadata Document the
        // server takes, else registration.
        let metadata = registration::metadata_for_add(
            a.client_metadata_url.as_deref(),
            cfg.client_metadata.as_ref(),
            cfg.client_metadata_port,
        )
        .map_err(usage)?;
        let mut by_metadata = false;
        if nw.client_id.is_empty() {
            if let registration::Source::Metadata(m) = registration::choose(&d, metadata.as_ref())?
            {
                let http = discovery::discovery_client(&opts)?;
                registration::check_document(&http, &m, &cfg.policy).await?;
                say(format!("Using the Client ID Metadata Document at {} as the client id (no registration; sign-in callback {})", m.url, m.redirect_uri()));
                nw.client_id = m.client_id().to_string();
                nw.redirect_port = Some(m.redirect_port);
                by_metadata = true;
            }
        }
        if nw.client_id.is_empty() {
            let endpoint = registration::registration_endpoint(&d)?;
            // The callback port the client is registered with; logins bind it again.
            let (callback, port) = free_loopback_port(&cfg)?;
            let redirect_uri = url::Url::parse(&format!("http://127.0.0.1:{port}/callback"))
                .map_err(anyhow::Error::from)?;
            let http = discovery::discovery_client(&opts)?;
            let reg = discovery::register(&http, &endpoint, &redirect_uri, &nw.scopes, &cfg.policy)
                .await?;
            held_ports.push(callback);
            say(format!(
                "Registered a new {} client at {endpoint} (client id {}; sign-in callback {redirect_uri}{})",
                if reg.client_secret.is_some() { "confidential" } else { "public" },
                reg.client_id,
                if reg.client_secret.is_some() {
                    format!("; its client secret goes to the secret store, sent as {}", reg.auth.as_str())
                } else {
                    String::new()
                }
            ));
            registered = Some(registration::record(&d.issuer_identifier, &endpoint, &reg));
            nw.client_id = reg.client_id;
            nw.redirect_port = Some(port);
            nw.client_auth = reg.auth;
            client_secret = reg.client_secret;
        } else if !by_metadata {
            say("Using the client id given with --client-id (no registration).".into());
        }
    }
    if nw.url.is_some() {
        // The local proxy's port, chosen once and then kept.
        let (l, port) = free_loopback_port(&cfg)?;
        held_ports.push(l);
        nw.listen_port = Some(port);
    }
    drop(held_ports);

    let store = make_store(&cfg, paths);
    if client_secret.is_some() || registered.is_some() {
        store
            .save_client(&name, client_secret.as_ref(), registered.as_ref())
            .await
            .context(
                "registered a client, but its secret could not be stored; nothing was written",
            )?;
    }
    if let Err(e) = config::add_workload(&paths.config_file, &nw) {
        if client_secret.is_some() || registered.is_some() {
            let _ = store.delete_client_secret(&name).await;
        }
        return Err(e.into());
    }
    let cfg = load_config(paths)?;
    say(format!("Added `{name}` to {}", paths.config_file.display()));
    Ok(cfg)
}

pub(crate) fn workload<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a WorkloadConfig> {
    find(cfg, name).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Open `url` in the browser: `TOKENWARDEN_BROWSER`, else `BROWSER`, else the
/// system's default browser ([`crate::browser`]). An error means no browser could be
/// started (what the browser then does is not known here).
pub(crate) fn open_browser(url: &str) -> Result<(), String> {
    crate::browser::open(url)
}

/// A confidential client's secret from the store (`None` for a public client).
pub(crate) async fn client_secret(
    store: &crate::engine::SecretStore,
    w: &WorkloadConfig,
) -> anyhow::Result<Option<Secret>> {
    if !w.client_auth.needs_secret() {
        return Ok(None);
    }
    let name = &w.name;
    let secret = store.load_client_secret(name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "`{name}` authenticates with {} but its client secret is not in the secret store; register again with `tokenwarden remove {name}` and `tokenwarden add {name} --url URL`",
            w.client_auth.as_str()
        )
    })?;
    Ok(Some(secret))
}

/// Why a use case failed, for the caller to word: the CLI as a message and an exit
/// code, the desktop app as `{code, message, field}`.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// `workloads.toml` cannot be used, or an argument is one it would refuse.
    #[error(transparent)]
    Config(config::ConfigError),
    /// `add`: a workload of that name exists already.
    #[error(transparent)]
    Exists(config::ConfigError),
    /// No workload of that name in the configuration.
    #[error("no workload named `{name}` in {}{}", path.display(), if known.is_empty() { String::new() } else { format!(" (known: {})", known.join(", ")) })]
    UnknownWorkload {
        name: String,
        path: std::path::PathBuf,
        known: Vec<String>,
    },
    /// A sign-in is needed (no tokens, a refused refresh, a login of another
    /// configuration).
    #[error("{0}")]
    NeedsLogin(String),
    /// No valid token now because of a transient failure (retried).
    #[error("{0}")]
    Unavailable(String),
    /// The workload is disabled.
    #[error("{0}")]
    Stopped(String),
    /// The browser sign-in failed (or a newer one replaced it).
    #[error(transparent)]
    Login(#[from] crate::engine::oauth::LoginError),
    /// Anything else, with what was being done.
    #[error(transparent)]
    Other(anyhow::Error),
}

impl From<config::ConfigError> for OpsError {
    fn from(e: config::ConfigError) -> Self {
        OpsError::Config(e)
    }
}

impl From<anyhow::Error> for OpsError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<config::ConfigError>() {
            Ok(c) => OpsError::Config(c),
            Err(e) => OpsError::Other(e),
        }
    }
}

impl From<DiscoveryError> for OpsError {
    fn from(e: DiscoveryError) -> Self {
        OpsError::Other(e.into())
    }
}

/// The workload `name` of `cfg`, or [`OpsError::UnknownWorkload`].
pub fn find<'a>(cfg: &'a Config, name: &str) -> Result<&'a WorkloadConfig, OpsError> {
    cfg.workload(name).ok_or_else(|| OpsError::UnknownWorkload {
        name: name.to_string(),
        path: cfg.path.clone(),
        known: cfg.workloads.iter().map(|w| w.name.clone()).collect(),
    })
}

/// A future a [`Running`] instance answers with.
pub type Reply<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where a use case's changes go besides the files: the engine this process runs (the
/// desktop app), or the daemon or app that runs for the config dir, reached by the
/// caller (the CLI: over the control socket), or nothing.
pub trait Running: Send + Sync {
    /// Take in the edited configuration (`Some`) and the stored tokens of `names`.
    fn reload(&self, config: Option<Config>, names: Vec<String>) -> Reply<'_, anyhow::Result<()>>;
    /// Log `name` out there; `Ok(false)`: nothing runs.
    fn logout(&self, name: String) -> Reply<'_, Result<bool, OpsError>>;
    /// A valid access token from there; `Ok(None)`: nothing runs.
    fn token(&self, name: String) -> Reply<'_, Result<Option<Granted>, OpsError>>;
    /// Every workload's status there; `Ok(None)`: nothing runs.
    fn status(&self) -> Reply<'_, Result<Option<Vec<WorkloadStatus>>, OpsError>>;
}

pub use crate::engine::monitor::Granted;

impl Running for crate::engine::Engine {
    fn reload(&self, config: Option<Config>, names: Vec<String>) -> Reply<'_, anyhow::Result<()>> {
        Box::pin(async move { Ok(crate::engine::Engine::reload(self, config, names).await?) })
    }
    fn logout(&self, name: String) -> Reply<'_, Result<bool, OpsError>> {
        Box::pin(async move {
            crate::engine::Engine::logout(self, &name)
                .await
                .map(|()| true)
                .map_err(|e| OpsError::Other(e.into()))
        })
    }
    fn token(&self, name: String) -> Reply<'_, Result<Option<Granted>, OpsError>> {
        Box::pin(async move {
            let e = match self.granted(&name).await {
                Ok(g) => return Ok(Some(g)),
                Err(e) => e,
            };
            Err(match e.code() {
                "unauthenticated" => OpsError::NeedsLogin(e.to_string()),
                "unavailable" => OpsError::Unavailable(e.to_string()),
                "stopped" => OpsError::Stopped(e.to_string()),
                _ => OpsError::Other(e.into()),
            })
        })
    }
    fn status(&self) -> Reply<'_, Result<Option<Vec<WorkloadStatus>>, OpsError>> {
        Box::pin(async move {
            crate::engine::Engine::status(self)
                .await
                .map(Some)
                .map_err(|e| OpsError::Other(e.into()))
        })
    }
}

/// Nothing runs for the config dir: changes stay in the files and the store.
pub struct NotRunning;

impl Running for NotRunning {
    fn reload(&self, _: Option<Config>, _: Vec<String>) -> Reply<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn logout(&self, _: String) -> Reply<'_, Result<bool, OpsError>> {
        Box::pin(async { Ok(false) })
    }
    fn token(&self, _: String) -> Reply<'_, Result<Option<Granted>, OpsError>> {
        Box::pin(async { Ok(None) })
    }
    fn status(&self) -> Reply<'_, Result<Option<Vec<WorkloadStatus>>, OpsError>> {
        Box::pin(async { Ok(None) })
    }
}

/// `remove`: the workload leaves `workloads.toml`, then `running` (so no monitor
/// saves its tokens again), then its tokens and its registered client's secret leave
/// the store.
pub async fn remove(
    paths: &Paths,
    name: &str,
    store: Option<&SecretStore>,
    running: &dyn Running,
) -> Result<(), OpsError> {
    // A policy override that cannot be applied is refused before the file changes.
    crate::engine::policy::Policy::default()
        .apply_env(|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!(e))?;
    let cfg = config::remove_workload(&paths.config_file, name)?;
    running
        .reload(Some(with_env_policy(cfg.clone())?), vec![])
        .await?;
    let made;
    let store = match store {
        Some(s) => s,
        None => {
            made = make_store(&cfg, paths);
            &made
        }
    };
    store
        .delete_tokens(name)
        .await
        .context("removed, but deleting its tokens failed")?;
    store
        .delete_client_secret(name)
        .await
        .context("removed, but deleting its registered client's secret failed")?;
    Ok(())
}

/// A browser sign-in under way ([`begin_login`]): open [`Login::authorize_url`], then
/// [`Login::finish`].
pub struct Login {
    workload: WorkloadConfig,
    store: SecretStore,
    http: reqwest::Client,
    policy: crate::engine::policy::Policy,
    pending: crate::engine::oauth::PendingLogin,
}

/// Start signing in to `name` (authorization code + PKCE): its callback listener is
/// bound when this returns. `store`: the one the caller runs with, else the
/// configuration's; `waiting`: the caller's sign-ins in progress (a new one of the
/// same workload replaces the old).
pub async fn begin_login(
    paths: &Paths,
    name: &str,
    store: Option<&SecretStore>,
    waiting: Option<&std::sync::Arc<crate::engine::oauth::WaitingLogins>>,
    running: &dyn Running,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<Login, OpsError> {
    let cfg = load_config(paths)?;
    let w = find(&cfg, name)?.clone();
    let store = store.cloned().unwrap_or_else(|| make_store(&cfg, paths));
    let http = crate::engine::oauth::http_client(&cfg.policy, w.ca_file.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    // The resource may name another authorization server now: a client registered
    // at the old one is not used there.
    let w = match registration::follow_moved_server(&paths.config_file, &store, &w, &cfg.policy)
        .await?
    {
        Some((from, moved)) => {
            say(format!(
                "`{name}` now signs in at {} (was {from}): registered a new client there (client id {})",
                moved.issuer.as_deref().unwrap_or("?"),
                moved.client_id
            ));
            moved
        }
        None => w,
    };
    let last = last_status(paths, &cfg, &w, running).await;
    // A client Tokenwarden registered that the server no longer knows: a fresh one.
    let w = if last.as_ref().is_some_and(client_refused) {
        match registration::register_fresh_client(
            &paths.config_file,
            &store,
            &w,
            &http,
            &cfg.policy,
        )
        .await?
        {
            Some(fresh) => {
                say(format!(
                    "The authorization server no longer knows the client registered for `{name}`: registered a new one (client id {})",
                    fresh.client_id
                ));
                fresh
            }
            None => w,
        }
    } else {
        w
    };
    let client_secret = client_secret(&store, &w).await?;
    // A step-up the remote asked for: the sign-in asks for those scopes too.
    let needs = last.map(|s| s.needs_scopes).unwrap_or_default();
    let w = crate::engine::oauth::for_sign_in(&store, &w, &needs).await;
    let pending = match waiting {
        Some(waiting) => waiting.prepare(&w).await?,
        None => crate::engine::oauth::prepare_login(&w).await?,
    }
    .with_client_secret(client_secret);
    Ok(Login {
        workload: w,
        store,
        http,
        policy: cfg.policy,
        pending,
    })
}

/// `w`'s status: from what runs for the config dir, else the last known state.
async fn last_status(
    paths: &Paths,
    cfg: &Config,
    w: &WorkloadConfig,
    running: &dyn Running,
) -> Option<WorkloadStatus> {
    if let Ok(Some(list)) = running.status().await {
        return list.into_iter().find(|s| s.name == w.name);
    }
    crate::engine::supervisor::load_state(&paths.state_file)
        .get(&w.name)
        .map(|p| p.offline_view(&w.name, w.token_endpoint.as_str(), &cfg.policy))
}

/// The issuer's verdict was `invalid_client`: it no longer knows the client.
fn client_refused(s: &WorkloadStatus) -> bool {
    s.status == crate::engine::Status::Unauthenticated
        && s.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("invalid_client"))
}

impl Login {
    /// The address to open in a browser.
    pub fn authorize_url(&self) -> String {
        self.pending.authorize_url.to_string()
    }

    /// Wait up to `timeout` for the browser's callback, then store the tokens.
    pub async fn finish(
        self,
        timeout: std::time::Duration,
    ) -> Result<crate::engine::store::StoredTokens, OpsError> {
        let tokens = self
            .pending
            .finish(&self.http, &self.policy, timeout)
            .await?;
        self.store
            .save_login(&self.workload, &tokens)
            .await
            .context("signed in, but the tokens could not be stored")?;
        Ok(tokens)
    }
}

/// `logout`: done by what runs for the config dir (its monitor stops using the tokens
/// and deletes them after any save under way, so a refresh in flight cannot store them
/// again). Only when nothing runs are the tokens deleted here, holding the config
/// dir's lock so that nothing starts meanwhile.
pub async fn logout(paths: &Paths, name: &str, running: &dyn Running) -> Result<(), OpsError> {
    let cfg = load_config(paths)?;
    find(&cfg, name)?;
    // A daemon that holds the lock but does not answer yet is starting: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if running.logout(name.to_string()).await? {
            return Ok(());
        }
        match crate::instance::acquire_lock(paths) {
            Ok(_lock) => {
                make_store(&cfg, paths)
                    .delete_tokens(name)
                    .await
                    .map_err(anyhow::Error::from)?;
                return Ok(());
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e
                    .context("cannot log out: the daemon for this config dir does not answer")
                    .into())
            }
        }
    }
}

/// `token`: a valid access token from what runs for the config dir; when nothing
/// runs, the stored one, or one refreshed here (and saved before it is returned).
pub async fn token(paths: &Paths, name: &str, running: &dyn Running) -> Result<Granted, OpsError> {
    use crate::engine::oauth;
    use crate::engine::store::Login as Stored;
    use std::time::SystemTime;
    if let Some(g) = running.token(name.to_string()).await? {
        return Ok(g);
    }
    let cfg = load_config(paths)?;
    let w = find(&cfg, name)?;
    let store = make_store(&cfg, paths);
    let stored = match store.load_login(w).await.map_err(anyhow::Error::from)? {
        Stored::Ready(t) => t,
        Stored::Missing => {
            return Err(OpsError::NeedsLogin(format!(
                "`{name}` is not logged in; run `tokenwarden login {name}`"
            )))
        }
        Stored::Elsewhere { changed } => return Err(OpsError::NeedsLogin(format!(
            "the stored login of `{name}` was made with another {} (workloads.toml changed), so it is not used; log in again: tokenwarden login {name}",
            changed.join(", ")
        ))),
    };
    let now = SystemTime::now();
    if stored.expires_at().is_some_and(|e| e > now) {
        return Ok(Granted {
            expires_at: stored.expires_at(),
            token: stored.access_token,
        });
    }
    let rt = stored.refresh_token.clone().ok_or_else(|| {
        OpsError::NeedsLogin(format!(
            "the access token expired and there is no refresh token; run `tokenwarden login {name}`"
        ))
    })?;
    let http =
        oauth::http_client(&cfg.policy, w.ca_file.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let client_secret = client_secret(&store, w).await?;
    let transport = oauth::Transport::Http(http);
    let resp = oauth::refresh(&transport, w, &rt, client_secret.as_ref(), &cfg.policy)
        .await
        .map_err(|f| {
            if f.is_permanent() {
                OpsError::NeedsLogin(format!("refresh refused ({}); run `tokenwarden login {name}`", f.reason()))
            } else {
                OpsError::Unavailable(format!("no valid access token now: the refresh failed ({}); try again later, or start `tokenwarden daemon`, which keeps retrying", f.reason()))
            }
        })?;
    let (tokens, _) = oauth::to_stored(resp, Some(rt), SystemTime::now(), &cfg.policy);
    store
        .save_login(w, &tokens)
        .await
        .context("could not store the refreshed tokens")?;
    Ok(Granted {
        expires_at: tokens.expires_at(),
        token: tokens.access_token,
    })
}

/// Where an MCP client reaches a workload's remote: its local proxy's address, and why
/// that proxy is not serving, if it is not.
pub struct LocalUrl {
    pub url: String,
    pub proxy_error: Option<String>,
}

/// The local proxy's address of workload `name`: what runs for the config dir says it,
/// else the config (a port is chosen and written to workloads.toml now if none was yet,
/// and `running` told).
pub async fn local_url(
    paths: &Paths,
    cfg: &Config,
    name: &str,
    running: &dyn Running,
) -> Result<LocalUrl, OpsError> {
    let w = find(cfg, name)?;
    let Some(url) = &w.url else {
        return Err(anyhow::anyhow!(
            "`{name}` has no `url`, so it has no local proxy (only workloads with a remote URL get one)"
        )
        .into());
    };
    let mut proxy_error = None;
    if let Some(list) = running.status().await? {
        if let Some(s) = list.into_iter().find(|s| s.name == name) {
            if let Some(u) = s.local_url {
                return Ok(LocalUrl {
                    url: u,
                    proxy_error: s.proxy_error,
                });
            }
            proxy_error = s.proxy_error;
        }
    }
    let port = match w.listen_port {
        Some(p) if p != 0 => p,
        _ => {
            let p = crate::engine::proxy::bind(0)
                .and_then(|l| l.local_addr())
                .map_err(anyhow::Error::from)?
                .port();
            config::set_listen_port(&paths.config_file, name, p)?;
            running.reload(Some(load_config(paths)?), vec![]).await?;
            p
        }
    };
    let secret = crate::engine::proxy::path_secret_for(&paths.config_file, name)
        .map_err(anyhow::Error::from)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    Ok(LocalUrl {
        url: crate::engine::proxy::local_url(addr, url, secret.as_ref()),
        proxy_error,
    })
}

/// `client-config NAME`: the `mcpServers` JSON most MCP clients take, pointing at the
/// workload's local proxy.
pub async fn client_config(
    paths: &Paths,
    name: &str,
    running: &dyn Running,
) -> Result<(serde_json::Value, LocalUrl), OpsError> {
    let cfg = load_config(paths)?;
    let local = local_url(paths, &cfg, name, running).await?;
    Ok((crate::engine::proxy::client_config(name, &local.url), local))
}

impl OpsError {
    /// As an `anyhow` error whose configuration error (or inner error) can still be
    /// told apart by `downcast`.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            OpsError::Config(c) | OpsError::Exists(c) => c.into(),
            OpsError::Login(e) => e.into(),
            OpsError::Other(e) => e,
            e => anyhow::anyhow!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_with(text: &str) -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().to_path_buf())).unwrap();
        std::fs::write(&paths.config_file, text).unwrap();
        (dir, paths)
    }

    const ONE: &str = "[secrets]\nstore = \"file\"\n\n[[workload]]\nname = \"gh\"\ntoken_endpoint = \"https://auth.example/token\"\nclient_id = \"c\"\n";

    /// The callers tell "that name exists" (the desktop's form marks the name field)
    /// from other configuration errors by the variant, not by the message's words.
    #[tokio::test]
    async fn adding_an_existing_name_is_its_own_error_and_writes_nothing() {
        let (_dir, paths) = paths_with(ONE);
        let args = AddArgs {
            name: "gh".into(),
            token_endpoint: Some("https://auth.example/token".into()),
            client_id: Some("c".into()),
            ..AddArgs::default()
        };
        let e = add_workload(&paths, args, &|_| {}).await.unwrap_err();
        assert!(matches!(e, OpsError::Exists(_)), "{e:?}");
        assert_eq!(std::fs::read_to_string(&paths.config_file).unwrap(), ONE);
        let bad = AddArgs {
            name: "no spaces allowed".into(),
            ..AddArgs::default()
        };
        let e = add_workload(&paths, bad, &|_| {}).await.unwrap_err();
        assert!(matches!(e, OpsError::Config(_)), "{e:?}");
    }

    #[tokio::test]
    async fn an_unknown_name_lists_the_known_ones() {
        let (_dir, paths) = paths_with(ONE);
        let e = token(&paths, "nope", &NotRunning).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, OpsError::UnknownWorkload { .. }), "{e:?}");
        assert!(text.starts_with("no workload named `nope` in "), "{text}");
        assert!(text.ends_with(" (known: gh)"), "{text}");
        let e = token(&paths, "gh", &NotRunning).await.unwrap_err();
        assert!(matches!(e, OpsError::NeedsLogin(_)), "{e:?}");
    }
}
