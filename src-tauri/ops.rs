//! The use cases, called alike by the command line, the desktop app and the control
//! server: load the configuration, make the secret store, add a workload (discovery,
//! registration), and what the others need of a workload. No printing, no process
//! exit, no clap: plain options in, results out.

use crate::engine::config::{self, Config, StoreKind, WorkloadConfig};
use crate::engine::discovery::{self, DiscoveryError, DiscoveryOptions};
use crate::engine::store::{default_service, FileBackend, KeychainBackend, SecretStore};
use crate::engine::Secret;
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
) -> anyhow::Result<Config> {
    let cfg = load_config(paths)?;
    let usage = |message: String| config::ConfigError {
        path: paths.config_file.clone(),
        line: None,
        message,
    };
    // What add_workload would refuse anyway, refused before any client is registered.
    config::validate_name(&a.name).map_err(usage)?;
    if cfg.workload(&a.name).is_some() {
        return Err(usage(format!("a workload named `{}` already exists", a.name)).into());
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
    let mut held_ports = Vec::new();
    if a.token_endpoint.is_none() || a.client_id.is_none() {
        let Some(raw) = a.url.as_deref() else {
            anyhow::bail!(
                "give --url URL to discover the rest, or both --token-endpoint and --client-id"
            );
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
        if nw.client_id.is_empty() {
            let endpoint = d.registration_endpoint.clone().ok_or_else(|| {
                DiscoveryError::NoRegistrationEndpoint {
                    issuer: d.issuer_identifier.clone(),
                }
            })?;
            // The callback port the client is registered with; logins bind it again.
            let (callback, port) = free_loopback_port(&cfg)?;
            let redirect_uri = url::Url::parse(&format!("http://127.0.0.1:{port}/callback"))?;
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
            nw.client_id = reg.client_id;
            nw.redirect_port = Some(port);
            nw.client_auth = reg.auth;
            client_secret = reg.client_secret;
        } else {
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
    if let Some(secret) = &client_secret {
        store.save_client_secret(&name, secret).await.context(
            "registered a client, but its secret could not be stored; nothing was written",
        )?;
    }
    if let Err(e) = config::add_workload(&paths.config_file, &nw) {
        if client_secret.is_some() {
            let _ = store.delete_client_secret(&name).await;
        }
        return Err(e.into());
    }
    let cfg = load_config(paths)?;
    say(format!("Added `{name}` to {}", paths.config_file.display()));
    Ok(cfg)
}

pub(crate) fn workload<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a WorkloadConfig> {
    cfg.workload(name).ok_or_else(|| {
        let known: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
        anyhow::anyhow!(
            "no workload named `{name}` in {}{}",
            cfg.path.display(),
            if known.is_empty() {
                String::new()
            } else {
                format!(" (known: {})", known.join(", "))
            }
        )
    })
}

/// Open `url` in the browser: `TOKENWARDEN_BROWSER` (a command given the URL as its
/// only argument) when set, else the system's default browser. An error means no
/// browser could be started (what the browser then does is not known here).
pub(crate) fn open_browser(url: &str) -> Result<(), String> {
    match std::env::var_os("TOKENWARDEN_BROWSER").filter(|v| !v.is_empty()) {
        Some(cmd) => std::process::Command::new(&cmd)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map(|mut child| {
                // Reaped when it ends (a long-running app must not collect zombies).
                std::thread::spawn(move || child.wait());
            })
            .map_err(|e| format!("{}: {e}", std::path::Path::new(&cmd).display())),
        None => open::that_detached(url).map_err(|e| e.to_string()),
    }
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
