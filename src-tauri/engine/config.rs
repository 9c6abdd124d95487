//! `workloads.toml`: loading with errors that name file and line, and atomic edits.
//!
//! Invariants:
//! * a file that does not load is never rewritten: `add`/`remove` refuse to touch it;
//! * every write goes to a temp file in the same directory, is fsynced and renamed
//!   over the old one, so a crash leaves the old file or the new one, never half;
//! * edits go through `toml_edit`, so the user's comments and layout survive;
//! * secrets are never written here (client secrets and tokens go to the secret store).

use crate::policy::{Policy, RawValue};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use toml::Spanned;
use url::Url;

pub const FILE_NAME: &str = "workloads.toml";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreKind {
    #[default]
    Keychain,
    File,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub store: StoreKind,
    /// Keychain service name override.
    pub service: Option<String>,
    pub policy: Policy,
    pub workloads: Vec<WorkloadConfig>,
    /// `[registration] client_metadata_url` (and `client_metadata_port`): the
    /// Client ID Metadata Document `add --url` uses where the authorization server
    /// takes one and no `--client-metadata-url` is given.
    pub client_metadata: Option<crate::registration::ClientMetadata>,
    /// `[registration] client_metadata_port`: the loopback port of a Client ID
    /// Metadata Document's redirect URI (default 33418).
    pub client_metadata_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    pub name: String,
    pub url: Option<Url>,
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Url,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub listen_port: Option<u16>,
    pub ca_file: Option<PathBuf>,
    pub allow_http: bool,
    pub enabled: bool,
    /// RFC 8707 resource indicator sent on the authorization request, the code
    /// exchange and every refresh (the protected resource metadata's `resource`).
    pub resource: Option<String>,
    /// The fixed loopback port of the redirect URI a dynamically registered client
    /// was registered with (`http://127.0.0.1:PORT/callback`); `None` = any port.
    pub redirect_port: Option<u16>,
    /// How the client authenticates at the token endpoint. Anything but `None`
    /// means a client secret lives in the secret store (never in this file).
    pub client_auth: ClientAuth,
    /// The authorization server's issuer identifier, exactly as its metadata
    /// publishes it (RFC 8414 `issuer`). An authorization response's `iss`
    /// (RFC 9207) must be this string.
    pub issuer: Option<String>,
    /// The authorization server says it always sends `iss`
    /// (`authorization_response_iss_parameter_supported`): a response without it is
    /// refused. Only with `issuer`.
    pub iss_parameter: bool,
}

/// Client authentication at the token endpoint (RFC 6749 §2.3.1, RFC 7591 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A public client: `client_id` in the form, no secret.
    #[default]
    None,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// HTTP Basic with the form-urlencoded id and secret.
    ClientSecretBasic,
}

impl ClientAuth {
    /// The RFC 7591 `token_endpoint_auth_method` name (also the config value).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::ClientSecretPost => "client_secret_post",
            ClientAuth::ClientSecretBasic => "client_secret_basic",
        }
    }

    pub fn parse(s: &str) -> Option<ClientAuth> {
        match s {
            "none" => Some(ClientAuth::None),
            "client_secret_post" => Some(ClientAuth::ClientSecretPost),
            "client_secret_basic" => Some(ClientAuth::ClientSecretBasic),
            _ => None,
        }
    }

    /// Whether a client secret is needed (and kept in the secret store).
    pub fn needs_secret(self) -> bool {
        self != ClientAuth::None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    secrets: Option<RawSecrets>,
    #[serde(default)]
    registration: Option<RawRegistration>,
    #[serde(default)]
    policy: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    workload: Vec<RawWorkload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    client_metadata_url: Option<Spanned<String>>,
    client_metadata_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    store: Option<Spanned<String>>,
    service: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: Spanned<String>,
    url: Option<Spanned<String>>,
    authorization_endpoint: Option<Spanned<String>>,
    token_endpoint: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    listen_port: Option<u16>,
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default = "yes")]
    enabled: bool,
    resource: Option<Spanned<String>>,
    redirect_port: Option<Spanned<u16>>,
    client_auth: Option<Spanned<String>>,
    issuer: Option<Spanned<String>>,
    iss_parameter: Option<Spanned<bool>>,
}

fn yes() -> bool {
    true
}

/// Workload names: what is safe as a file name, a keychain account and a CLI word.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid workload name `{name}`: use 1-64 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        ))
    }
}

pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// An endpoint URL: https, or http to loopback, or http anywhere with `allow_http`.
pub fn check_endpoint(field: &str, raw: &str, allow_http: bool) -> Result<Url, String> {
    let url = Url::parse(raw.trim())
        .map_err(|e| format!("`{field}` is not a valid URL ({e}): `{raw}`"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) || allow_http => Ok(url),
        "http" => Err(format!(
            "`{field}` uses plain http:// to a non-loopback host ({raw}); tokens would travel unencrypted. Use https://, or set `allow_http = true` for this workload if you really mean it"
        )),
        other => Err(format!("`{field}` must be an https:// URL, not {other}://")),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(1)
}

impl Config {
    /// An empty configuration (no file yet).
    pub fn empty(path: PathBuf) -> Self {
        Config {
            path,
            store: StoreKind::Keychain,
            service: None,
            policy: Policy::default(),
            workloads: Vec::new(),
            client_metadata: None,
            client_metadata_port: None,
        }
    }

    /// Load `path`; a missing file is an empty configuration. Environment overrides of
    /// the policy are applied by the caller (`apply_env`), so tests stay hermetic.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::empty(path.to_path_buf()))
            }
            Err(e) => Err(ConfigError {
                path: path.to_path_buf(),
                line: None,
                message: format!("cannot read the file: {e}"),
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            path: path.to_path_buf(),
            line: span.map(|s| line_of(text, s.start)),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
        let base_dir = path.parent().unwrap_or(Path::new("."));

        let mut cfg = Config::empty(path.to_path_buf());
        if let Some(s) = raw.secrets {
            if let Some(store) = s.store {
                cfg.store = match store.get_ref().as_str() {
                    "keychain" => StoreKind::Keychain,
                    "file" => StoreKind::File,
                    other => {
                        return Err(err(
                            Some(store.span()),
                            format!(
                                "[secrets] store must be \"keychain\" or \"file\", not \"{other}\""
                            ),
                        ))
                    }
                };
            }
            cfg.service = s.service.filter(|s| !s.trim().is_empty());
        }
        if let Some(r) = raw.registration {
            cfg.client_metadata_port = r.client_metadata_port;
            if let Some(u) = r.client_metadata_url {
                cfg.client_metadata = Some(
                    crate::registration::ClientMetadata::parse(u.get_ref(), r.client_metadata_port)
                        .map_err(|m| err(Some(u.span()), format!("[registration] {m}")))?,
                );
            }
        }
        for (key, value) in &raw.policy {
            let v = match value.get_ref() {
                toml::Value::String(s) => RawValue::Text(s.clone()),
                toml::Value::Integer(i) => RawValue::Integer(*i),
                toml::Value::Float(f) => RawValue::Float(*f),
                toml::Value::Boolean(b) => RawValue::Bool(*b),
                _ => {
                    return Err(err(
                        Some(value.span()),
                        format!("[policy] {key}: expected a string or a number"),
                    ))
                }
            };
            cfg.policy
                .set(key, &v)
                .map_err(|m| err(Some(value.span()), format!("[policy] {m}")))?;
        }
        cfg.policy
            .check()
            .map_err(|m| err(None, format!("[policy] {m}")))?;

        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        for w in raw.workload {
            let name = w.name.get_ref().clone();
            validate_name(&name).map_err(|m| err(Some(w.name.span()), m))?;
            if !names.insert(name.clone()) {
                return Err(err(
                    Some(w.name.span()),
                    format!("duplicate workload name `{name}`"),
                ));
            }
            let endpoint =
                |field: &str, v: &Option<Spanned<String>>| -> Result<Option<Url>, ConfigError> {
                    v.as_ref()
                        .map(|s| {
                            check_endpoint(field, s.get_ref(), w.allow_http)
                                .map_err(|m| err(Some(s.span()), m))
                        })
                        .transpose()
                };
            let url = endpoint("url", &w.url)?;
            let authorization_endpoint =
                endpoint("authorization_endpoint", &w.authorization_endpoint)?;
            let token_endpoint = endpoint("token_endpoint", &w.token_endpoint)?.ok_or_else(|| {
                err(
                    Some(w.name.span()),
                    format!("workload `{name}` has no `token_endpoint` (`tokenwarden add {name} --url URL` discovers it and writes it here)"),
                )
            })?;
            let client_id = match &w.client_id {
                Some(c) if !c.get_ref().trim().is_empty() => c.get_ref().trim().to_string(),
                Some(c) => return Err(err(Some(c.span()), "`client_id` is empty".into())),
                None => {
                    return Err(err(
                        Some(w.name.span()),
                        format!("workload `{name}` has no `client_id` (`tokenwarden add {name} --url URL` registers one when the issuer allows it)"),
                    ))
                }
            };
            let resource = match &w.resource {
                Some(r) => {
                    let v = r.get_ref().trim();
                    let parsed = Url::parse(v).map_err(|e| {
                        err(
                            Some(r.span()),
                            format!("`resource` is not an absolute URI ({e}): `{v}`"),
                        )
                    })?;
                    if parsed.fragment().is_some() {
                        return Err(err(
                            Some(r.span()),
                            "`resource` must not have a #fragment (RFC 8707)".into(),
                        ));
                    }
                    Some(v.to_string())
                }
                None => None,
            };
            let redirect_port = match &w.redirect_port {
                Some(p) if *p.get_ref() == 0 => {
                    return Err(err(
                        Some(p.span()),
                        "`redirect_port` must be a fixed port (1-65535), not 0; remove the key to use any free port".into(),
                    ))
                }
                Some(p) => Some(*p.get_ref()),
                None => None,
            };
            let client_auth = match &w.client_auth {
                Some(c) => ClientAuth::parse(c.get_ref().trim()).ok_or_else(|| {
                    err(
                        Some(c.span()),
                        format!(
                            "`client_auth` must be \"none\", \"client_secret_post\" or \"client_secret_basic\", not \"{}\"",
                            c.get_ref()
                        ),
                    )
                })?,
                None => ClientAuth::None,
            };
            let issuer = match &w.issuer {
                Some(i) => {
                    let v = i.get_ref();
                    if v.trim().is_empty() || v.trim() != v || Url::parse(v).is_err() {
                        return Err(err(
                            Some(i.span()),
                            format!("`issuer` must be the authorization server's issuer identifier, an absolute URL exactly as its metadata publishes it, not `{v}`"),
                        ));
                    }
                    Some(v.clone())
                }
                None => None,
            };
            let iss_parameter = match &w.iss_parameter {
                Some(b) if *b.get_ref() && issuer.is_none() => {
                    return Err(err(
                        Some(b.span()),
                        "`iss_parameter = true` needs the `issuer` to compare `iss` with".into(),
                    ))
                }
                Some(b) => *b.get_ref(),
                None => false,
            };
            if let Some(p) = w.listen_port {
                if p != 0 && !ports.insert(p) {
                    return Err(err(
                        Some(w.name.span()),
                        format!("listen_port {p} is used by two workloads"),
                    ));
                }
            }
            let ca_file = match &w.ca_file {
                Some(c) => {
                    let p = base_dir.join(c.get_ref());
                    let bytes = read_ca_file(&p).map_err(|e| err(Some(c.span()), e))?;
                    reqwest::Certificate::from_pem_bundle(&bytes)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| {
                            err(
                                Some(c.span()),
                                format!("ca_file {} holds no PEM certificate", p.display()),
                            )
                        })?;
                    Some(p)
                }
                None => None,
            };
            cfg.workloads.push(WorkloadConfig {
                name,
                url,
                authorization_endpoint,
                token_endpoint,
                client_id,
                scopes: w.scopes,
                listen_port: w.listen_port,
                ca_file,
                allow_http: w.allow_http,
                enabled: w.enabled,
                resource,
                redirect_port,
                client_auth,
                issuer,
                iss_parameter,
            });
        }
        Ok(cfg)
    }

    pub fn workload(&self, name: &str) -> Option<&WorkloadConfig> {
        self.workloads.iter().find(|w| w.name == name)
    }
}

/// What `add` writes.
#[derive(Clone, Debug, Default)]
pub struct NewWorkload {
    pub name: String,
    pub url: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub ca_file: Option<String>,
    pub allow_http: bool,
    /// Local proxy port (written when given).
    pub listen_port: Option<u16>,
    /// RFC 8707 resource indicator.
    pub resource: Option<String>,
    /// Fixed loopback callback port of a dynamically registered client.
    pub redirect_port: Option<u16>,
    /// Written only when not `None`; the secret itself goes to the secret store.
    pub client_auth: ClientAuth,
    /// The authorization server's `issuer`, as its metadata publishes it.
    pub issuer: Option<String>,
    /// Written (as `iss_parameter = true`) only when true.
    pub iss_parameter: bool,
}

/// Held while one edit reads, changes and writes the file: `add`, `remove`, the
/// window's forms and the daemon keeping a proxy port may edit at the same time, and
/// an edit must not write back a table another one just removed (or drop one it just
/// added). An advisory lock on a file of its own next to the config (never deleted,
/// so every editor locks the same inode); released when dropped, or by the kernel.
struct EditLock {
    _file: std::fs::File,
}

impl EditLock {
    fn acquire(path: &Path) -> Result<EditLock, ConfigError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| FILE_NAME.to_string());
        let lock_path = path.with_file_name(format!(".{name}.edit-lock"));
        let fail = |what: &str, e: std::io::Error| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot {what} {}: {e}", lock_path.display()),
        };
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir).map_err(|e| fail("create the directory of", e))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(&lock_path).map_err(|e| fail("open", e))?;
        file.lock().map_err(|e| fail("lock", e))?;
        Ok(EditLock { _file: file })
    }
}

fn read_for_edit(path: &Path) -> Result<(String, Config), ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ConfigError {
                path: path.to_path_buf(),
                line: None,
                message: format!("cannot read the file: {e}"),
            })
        }
    };
    let cfg = Config::parse(path, &text)?;
    Ok((text, cfg))
}

fn commit_edit(path: &Path, new_text: &str) -> Result<Config, ConfigError> {
    // Validate what we are about to write with the same loader.
    let cfg = Config::parse(path, new_text)?;
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot create the config directory: {e}"),
        })?;
    }
    let looser = looser_mode(path, 0o600);
    // The file names the proxies' ports and the endpoints: the user's own (0600).
    write_atomic(path, new_text.as_bytes(), true).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        message: format!("cannot write the file: {e}"),
    })?;
    if let Some(mode) = looser {
        tracing::info!(file = %path.display(), "the file was {mode:o}; written 0600");
    }
    Ok(cfg)
}

/// The permission bits of `path` when it exists and allows more than `allowed`.
fn looser_mode(path: &Path, allowed: u32) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & !allowed != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, allowed);
        None
    }
}

/// Make the config dir exist and be the user's alone (0700): created so, or tightened
/// (with a log line) when it allows more. A dir that cannot be tightened (another
/// user's) is left as it is, with a warning.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        if let Some(mode) = looser_mode(dir, 0o700) {
            match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "the config directory was {mode:o}; now 0700")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "the config directory is {mode:o} and cannot be made 0700")
                }
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

fn edit_error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        path: path.to_path_buf(),
        line: None,
        message,
    }
}

/// Append a workload. Refuses if the file is broken or the name exists.
pub fn add_workload(path: &Path, w: &NewWorkload) -> Result<Config, ConfigError> {
    let _lock = EditLock::acquire(path)?;
    let (text, cfg) = read_for_edit(path)?;
    validate_name(&w.name).map_err(|m| edit_error(path, m))?;
    if cfg.workload(&w.name).is_some() {
        return Err(edit_error(
            path,
            format!("a workload named `{}` already exists", w.name),
        ));
    }
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| edit_error(path, e.to_string()))?;
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(&w.name);
    if let Some(u) = &w.url {
        t["url"] = toml_edit::value(u);
    }
    if let Some(a) = &w.authorization_endpoint {
        t["authorization_endpoint"] = toml_edit::value(a);
    }
    t["token_endpoint"] = toml_edit::value(&w.token_endpoint);
    t["client_id"] = toml_edit::value(&w.client_id);
    if !w.scopes.is_empty() {
        let mut arr = toml_edit::Array::new();
        for s in &w.scopes {
            arr.push(s.as_str());
        }
        t["scopes"] = toml_edit::value(arr);
    }
    if let Some(c) = &w.ca_file {
        t["ca_file"] = toml_edit::value(c);
    }
    if w.allow_http {
        t["allow_http"] = toml_edit::value(true);
    }
    if let Some(r) = &w.resource {
        t["resource"] = toml_edit::value(r);
    }
    if let Some(p) = w.redirect_port {
        t["redirect_port"] = toml_edit::value(i64::from(p));
    }
    if w.client_auth.needs_secret() {
        t["client_auth"] = toml_edit::value(w.client_auth.as_str());
    }
    if let Some(i) = &w.issuer {
        t["issuer"] = toml_edit::value(i);
    }
    if w.iss_parameter {
        t["iss_parameter"] = toml_edit::value(true);
    }
    if let Some(p) = w.listen_port {
        t["listen_port"] = toml_edit::value(i64::from(p));
    }
    match doc.get_mut("workload") {
        None => {
            let mut arr = toml_edit::ArrayOfTables::new();
            arr.push(t);
            doc.insert("workload", toml_edit::Item::ArrayOfTables(arr));
        }
        Some(item) => match item.as_array_of_tables_mut() {
            Some(arr) => arr.push(t),
            None => {
                return Err(edit_error(
                    path,
                    "`workload` must be written as [[workload]] tables".into(),
                ))
            }
        },
    }
    commit_edit(path, &doc.to_string())
}

/// Edit the `[[workload]]` tables of an existing workload `name`: refuses a broken file
/// or an unknown name; `edit` gets the document and must leave it valid (the result is
/// loaded again before it is written).
fn edit_existing(
    path: &Path,
    name: &str,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), String>,
) -> Result<Config, ConfigError> {
    let _lock = EditLock::acquire(path)?;
    let (text, cfg) = read_for_edit(path)?;
    if cfg.workload(name).is_none() {
        return Err(edit_error(path, format!("no workload named `{name}`")));
    }
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| edit_error(path, e.to_string()))?;
    edit(&mut doc).map_err(|m| edit_error(path, m))?;
    commit_edit(path, &doc.to_string())
}

fn workload_tables(
    doc: &mut toml_edit::DocumentMut,
) -> Result<&mut toml_edit::ArrayOfTables, String> {
    doc.get_mut("workload")
        .and_then(|i| i.as_array_of_tables_mut())
        .ok_or_else(|| "`workload` must be written as [[workload]] tables".to_string())
}

/// Remove a workload by name. Refuses if the file is broken or the name is unknown.
pub fn remove_workload(path: &Path, name: &str) -> Result<Config, ConfigError> {
    edit_existing(path, name, |doc| {
        let arr = workload_tables(doc)?;
        arr.retain(|t| t.get("name").and_then(|v| v.as_str()) != Some(name));
        if arr.is_empty() {
            doc.remove("workload");
        }
        Ok(())
    })
}

/// Set `enabled` of workload `name` (`enabled = true` is the default, so enabling
/// removes the key), keeping everything else of the file.
pub fn set_enabled(path: &Path, name: &str, enabled: bool) -> Result<Config, ConfigError> {
    edit_existing(path, name, |doc| {
        let table = workload_tables(doc)?
            .iter_mut()
            .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
            .ok_or_else(|| format!("no workload named `{name}`"))?;
        if enabled {
            table.remove("enabled");
        } else {
            table["enabled"] = toml_edit::value(false);
        }
        Ok(())
    })
}

/// Set (or replace) `listen_port` of workload `name`, keeping everything else of the
/// file. Refuses a broken file, an unknown name, and a port another workload uses.
pub fn set_listen_port(path: &Path, name: &str, port: u16) -> Result<Config, ConfigError> {
    edit_existing(path, name, |doc| {
        let table = workload_tables(doc)?
            .iter_mut()
            .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
            .ok_or_else(|| format!("no workload named `{name}`"))?;
        match table.get_mut("listen_port") {
            // Replace the value only, so a comment after it survives.
            Some(item) if item.is_value() => {
                let decor = item.as_value().map(|v| v.decor().clone());
                let mut v = toml_edit::Value::from(i64::from(port));
                if let Some(d) = decor {
                    *v.decor_mut() = d;
                }
                *item = toml_edit::Item::Value(v);
            }
            _ => {
                table["listen_port"] = toml_edit::value(i64::from(port));
            }
        }
        Ok(())
    })
}

/// Give workload `name` a newly registered client: `client_id` and `client_auth`
/// replaced in place (comments kept).
pub fn set_client(
    path: &Path,
    name: &str,
    client_id: &str,
    client_auth: ClientAuth,
) -> Result<Config, ConfigError> {
    edit_existing(path, name, |doc| {
        let table = workload_tables(doc)?
            .iter_mut()
            .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
            .ok_or_else(|| format!("no workload named `{name}`"))?;
        table["client_id"] = toml_edit::value(client_id);
        if client_auth == ClientAuth::None {
            table.remove("client_auth");
        } else {
            table["client_auth"] = toml_edit::value(client_auth.as_str());
        }
        Ok(())
    })
}

/// Point workload `name` at another authorization server (it moved): its endpoints,
/// issuer and `iss_parameter`, with the client registered there.
pub fn set_authorization_server(
    path: &Path,
    name: &str,
    a: &NewWorkload,
) -> Result<Config, ConfigError> {
    edit_existing(path, name, |doc| {
        let table = workload_tables(doc)?
            .iter_mut()
            .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
            .ok_or_else(|| format!("no workload named `{name}`"))?;
        table["token_endpoint"] = toml_edit::value(a.token_endpoint.as_str());
        match &a.authorization_endpoint {
            Some(e) => table["authorization_endpoint"] = toml_edit::value(e.as_str()),
            None => {
                table.remove("authorization_endpoint");
            }
        }
        match &a.issuer {
            Some(i) => table["issuer"] = toml_edit::value(i.as_str()),
            None => {
                table.remove("issuer");
            }
        }
        if a.iss_parameter {
            table["iss_parameter"] = toml_edit::value(true);
        } else {
            table.remove("iss_parameter");
        }
        table["client_id"] = toml_edit::value(a.client_id.as_str());
        if a.client_auth == ClientAuth::None {
            table.remove("client_auth");
        } else {
            table["client_auth"] = toml_edit::value(a.client_auth.as_str());
        }
        Ok(())
    })
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename,
/// fsync the directory. `private` makes the file 0600 from its creation on.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    write_atomic_with(path, bytes, if private { 0o600 } else { 0o644 }, |_| Ok(()))
}

/// [`write_atomic`] with the temp file created with `mode` (Unix) and handed to
/// `prepare` before it is synced and renamed (to copy an old file's mode or owner).
pub fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    prepare: impl FnOnce(&std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        prepare(&f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Largest `ca_file` read: a bundle of every public root CA is about 250 KB.
pub const CA_FILE_MAX: u64 = 1024 * 1024;

/// The bytes of a `ca_file`: a regular file of at most [`CA_FILE_MAX`] bytes. It is
/// opened without blocking and checked on the open handle, so a FIFO (which would
/// block the open until a writer comes) or a device such as `/dev/zero` (which never
/// ends) is refused at once instead of hanging or filling memory. Errors name the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let fail = |e: &dyn std::fmt::Display| format!("cannot read ca_file {}: {e}", path.display());
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let f = opts.open(path).map_err(|e| fail(&e))?;
    let meta = f.metadata().map_err(|e| fail(&e))?;
    if !meta.is_file() {
        return Err(fail(&"not a regular file"));
    }
    if meta.len() > CA_FILE_MAX {
        return Err(fail(&format!("larger than {} KiB", CA_FILE_MAX / 1024)));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(CA_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&e))?;
    if bytes.len() as u64 > CA_FILE_MAX {
        return Err(fail(&format!("larger than {} KiB", CA_FILE_MAX / 1024)));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_ca_file_that_is_a_fifo_a_device_or_huge_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("ca.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let big = tmp.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; CA_FILE_MAX as usize + 1]).unwrap();
        let zero = Path::new("/dev/zero").to_path_buf();
        // On a thread: a read that blocks must fail the test, not hang it.
        let (tx, rx) = std::sync::mpsc::channel();
        for p in [fifo, zero, big] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let r = read_ca_file(&p);
                let _ = tx.send((p, r));
            });
        }
        for _ in 0..3 {
            let (p, r) = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("read_ca_file returned within 10 s");
            let e = r.expect_err("refused");
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(
                e.contains("not a regular file") || e.contains("larger than 1024 KiB"),
                "{e}"
            );
        }
        // And through the config: the error points at the ca_file line.
        let text = format!(
            "[[workload]]\nname = \"a\"\ntoken_endpoint = \"https://auth.example/token\"\nclient_id = \"c\"\nca_file = \"{}\"\n",
            tmp.path().join("ca.fifo").display()
        );
        let e = Config::parse(&tmp.path().join("workloads.toml"), &text).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(e.to_string().contains(":5:"), "names the line: {e}");
    }
    use std::time::Duration;

    const GOOD: &str = r#"# my workloads
[secrets]
store = "keychain"

[policy]
retrying_ceiling = "12h"
refresh_max_tries = 3

[[workload]]
name = "github-mcp"
url = "https://remote.example/mcp"
authorization_endpoint = "https://auth.example/authorize"
token_endpoint = "https://auth.example/token"
client_id = "abc"
scopes = ["read"]
listen_port = 8765
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/cfg/workloads.toml"), text)
    }

    #[test]
    fn good_file_loads() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.store, StoreKind::Keychain);
        assert_eq!(c.policy.retrying_ceiling, Duration::from_secs(12 * 3600));
        assert_eq!(c.policy.refresh_max_tries, 3);
        let w = &c.workloads[0];
        assert_eq!(w.name, "github-mcp");
        assert_eq!(w.token_endpoint.as_str(), "https://auth.example/token");
        assert_eq!(w.scopes, vec!["read"]);
        assert_eq!(w.listen_port, Some(8765));
        assert!(w.enabled);
    }

    fn line_and_message(text: &str) -> (Option<usize>, String) {
        let e = parse(text).unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("/cfg/workloads.toml"), "{shown}");
        (e.line, e.message)
    }

    #[test]
    fn broken_files_report_the_line() {
        let wl = |body: &str| {
            format!("[secrets]\nstore = \"keychain\"\n\n[[workload]]\nname = \"a\"\n{body}\n")
        };
        let ok_ep = "token_endpoint = \"https://i.example/token\"\nclient_id = \"c\"";
        let cases: Vec<(String, usize, &str)> = vec![
            ("[secrets\nstore = 1\n".into(), 1, ""),
            (
                wl(&format!("{ok_ep}\ncolour = \"red\"")),
                8,
                "unknown field",
            ),
            (
                format!("{}[[workload]]\nname = \"a\"\n{ok_ep}\n", wl(ok_ep)),
                9,
                "duplicate workload name",
            ),
            (
                wl("token_endpoint = \"not a url\"\nclient_id = \"c\""),
                6,
                "not a valid URL",
            ),
            (
                wl("token_endpoint = \"http://auth.example/token\"\nclient_id = \"c\""),
                6,
                "allow_http",
            ),
            (
                wl(&format!("{ok_ep}\nca_file = \"/nonexistent/ca.pem\"")),
                8,
                "cannot read ca_file",
            ),
            ("[secrets]\nstore = \"vault\"\n".into(), 2, "keychain"),
            (
                "[policy]\nretrying_ceiling = \"forever\"\n".into(),
                2,
                "not a duration",
            ),
            (wl("client_id = \"c\""), 5, "no `token_endpoint`"),
            (
                "[[workload]]\nname = \"bad name!\"\n".into(),
                2,
                "invalid workload name",
            ),
            (
                wl(&format!("{ok_ep}\nclient_auth = \"private_key_jwt\"")),
                8,
                "`client_auth` must be",
            ),
            (wl(&format!("{ok_ep}\nredirect_port = 0")), 8, "not 0"),
            (wl(&format!("{ok_ep}\nredirect_port = 70000")), 8, ""),
            (
                wl(&format!("{ok_ep}\nresource = \"not a uri\"")),
                8,
                "not an absolute URI",
            ),
            (
                wl(&format!("{ok_ep}\nresource = \"https://r.example/mcp#x\"")),
                8,
                "fragment",
            ),
        ];
        for (text, line, needle) in cases {
            let (l, m) = line_and_message(&text);
            assert_eq!(l, Some(line), "{text}\n=> {m}");
            assert!(m.contains(needle), "{m} should contain {needle}");
        }
    }

    #[test]
    fn http_is_allowed_to_loopback_or_with_opt_in() {
        for ep in [
            "http://127.0.0.1:9/token",
            "http://localhost:9/t",
            "http://[::1]:9/t",
        ] {
            assert!(check_endpoint("token_endpoint", ep, false).is_ok(), "{ep}");
        }
        assert!(check_endpoint("token_endpoint", "http://auth.example/t", true).is_ok());
        assert!(check_endpoint("token_endpoint", "ftp://auth.example/t", true).is_err());
    }

    #[test]
    fn add_and_remove_keep_comments_and_refuse_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, GOOD).unwrap();
        let nw = NewWorkload {
            name: "other".into(),
            token_endpoint: "https://auth.example/token".into(),
            client_id: "xyz".into(),
            scopes: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let cfg = add_workload(&path, &nw).unwrap();
        assert_eq!(cfg.workloads.len(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my workloads"), "comments survive");
        assert!(add_workload(&path, &nw)
            .unwrap_err()
            .message
            .contains("already exists"));
        let cfg = remove_workload(&path, "github-mcp").unwrap();
        assert_eq!(cfg.workloads.len(), 1);
        assert!(remove_workload(&path, "nope").is_err());

        let broken = "[[workload]]\nname = \"x\"\ntoken_endpoint = \n";
        std::fs::write(&path, broken).unwrap();
        let e = add_workload(&path, &nw).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            broken,
            "left untouched"
        );
        assert!(remove_workload(&path, "x").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
    }

    #[test]
    fn discovery_keys_load_and_default() {
        let text = format!(
            "{GOOD}\n[[workload]]\nname = \"dcr\"\ntoken_endpoint = \"https://as.example/token\"\nclient_id = \"reg-1\"\nresource = \"https://remote.example/mcp\"\nredirect_port = 49152\nclient_auth = \"client_secret_basic\"\n"
        );
        let c = parse(&text).unwrap();
        let plain = &c.workloads[0];
        assert_eq!(plain.resource, None);
        assert_eq!(plain.redirect_port, None);
        assert_eq!(plain.client_auth, ClientAuth::None);
        let w = &c.workloads[1];
        assert_eq!(w.resource.as_deref(), Some("https://remote.example/mcp"));
        assert_eq!(w.redirect_port, Some(49152));
        assert_eq!(w.client_auth, ClientAuth::ClientSecretBasic);
        for a in [
            ClientAuth::None,
            ClientAuth::ClientSecretPost,
            ClientAuth::ClientSecretBasic,
        ] {
            assert_eq!(ClientAuth::parse(a.as_str()), Some(a));
        }
    }

    #[test]
    fn add_writes_the_discovery_keys_and_nothing_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let nw = NewWorkload {
            name: "remote".into(),
            url: Some("https://remote.example/mcp".into()),
            authorization_endpoint: Some("https://as.example/authorize".into()),
            token_endpoint: "https://as.example/token".into(),
            client_id: "reg-1".into(),
            listen_port: Some(40001),
            resource: Some("https://remote.example/mcp".into()),
            redirect_port: Some(40002),
            client_auth: ClientAuth::ClientSecretPost,
            ..Default::default()
        };
        let cfg = add_workload(&path, &nw).unwrap();
        let w = cfg.workload("remote").unwrap();
        assert_eq!(w.listen_port, Some(40001));
        assert_eq!(w.redirect_port, Some(40002));
        assert_eq!(w.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(w.resource.as_deref(), Some("https://remote.example/mcp"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("secret ="), "{text}");
        // A public client writes no client_auth line.
        let public = NewWorkload {
            name: "public".into(),
            token_endpoint: "https://as.example/token".into(),
            client_id: "p".into(),
            ..Default::default()
        };
        add_workload(&path, &public).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("client_auth").count(), 1, "{text}");
    }

    #[test]
    fn the_issuer_and_its_iss_flag_load_are_checked_and_written() {
        let w = |extra: &str| {
            format!("[[workload]]\nname = \"w\"\ntoken_endpoint = \"https://as.example/token\"\nclient_id = \"c\"\n{extra}\n")
        };
        let c = parse(&w(
            "issuer = \"https://as.example/tenant\"\niss_parameter = true",
        ))
        .unwrap();
        assert_eq!(
            c.workloads[0].issuer.as_deref(),
            Some("https://as.example/tenant")
        );
        assert!(c.workloads[0].iss_parameter);
        let c = parse(&w("")).unwrap();
        assert_eq!(
            (
                c.workloads[0].issuer.as_deref(),
                c.workloads[0].iss_parameter
            ),
            (None, false)
        );
        for (extra, line, needle) in [
            ("iss_parameter = true", 5, "needs the `issuer`"),
            ("issuer = \"as.example\"", 5, "absolute URL"),
            ("issuer = \" https://as.example\"", 5, "absolute URL"),
            ("issuer = \"\"", 5, "absolute URL"),
        ] {
            let e = parse(&w(extra)).unwrap_err();
            assert_eq!(e.line, Some(line), "{extra}: {e}");
            assert!(e.message.contains(needle), "{extra}: {e}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let nw = NewWorkload {
            name: "w".into(),
            token_endpoint: "https://as.example/token".into(),
            client_id: "c".into(),
            issuer: Some("https://as.example/tenant".into()),
            iss_parameter: true,
            ..Default::default()
        };
        let cfg = add_workload(&path, &nw).unwrap();
        let got = cfg.workload("w").unwrap();
        assert_eq!(got.issuer.as_deref(), Some("https://as.example/tenant"));
        assert!(got.iss_parameter);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("issuer = \"https://as.example/tenant\"\niss_parameter = true"),
            "{text}"
        );
        // Without the flag, no `iss_parameter` line.
        let plain = NewWorkload {
            name: "v".into(),
            iss_parameter: false,
            ..nw
        };
        add_workload(&path, &plain).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("iss_parameter").count(), 1, "{text}");
    }

    #[test]
    fn set_listen_port_edits_in_place_and_refuses_what_it_should() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let text = GOOD.replace("listen_port = 8765", "listen_port = 8765 # the proxy");
        let text = format!(
            "{text}\n[[workload]]\nname = \"second\"\ntoken_endpoint = \"https://auth.example/token\"\nclient_id = \"c\"\n"
        );
        std::fs::write(&path, &text).unwrap();
        // Replace an existing value: the trailing comment survives.
        let cfg = set_listen_port(&path, "github-mcp", 9000).unwrap();
        assert_eq!(cfg.workload("github-mcp").unwrap().listen_port, Some(9000));
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.contains("listen_port = 9000 # the proxy"), "{now}");
        assert!(now.starts_with("# my workloads"));
        // Add one where there was none.
        let cfg = set_listen_port(&path, "second", 9001).unwrap();
        assert_eq!(cfg.workload("second").unwrap().listen_port, Some(9001));
        // A port another workload has, an unknown name: refused, file unchanged.
        let before = std::fs::read_to_string(&path).unwrap();
        let e = set_listen_port(&path, "second", 9000).unwrap_err();
        assert!(e.message.contains("used by two workloads"), "{e}");
        assert!(set_listen_port(&path, "nope", 9002)
            .unwrap_err()
            .message
            .contains("no workload named"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        // A broken file is never rewritten.
        let broken = "[[workload]]\nname = \"x\"\ntoken_endpoint = \n";
        std::fs::write(&path, broken).unwrap();
        assert_eq!(set_listen_port(&path, "x", 1).unwrap_err().line, Some(3));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
    }

    #[test]
    fn add_to_a_missing_file_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        let nw = NewWorkload {
            name: "w".into(),
            token_endpoint: "http://127.0.0.1:1/token".into(),
            authorization_endpoint: Some("http://127.0.0.1:1/authorize".into()),
            client_id: "c".into(),
            ..Default::default()
        };
        add_workload(&path, &nw).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.workloads[0].name, "w");
        // No temp files left behind (the edit lock stays, by design).
        let left: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".workloads.toml.edit-lock")
            .collect();
        assert_eq!(left, [FILE_NAME]);
    }

    /// Editors at the same time (`add` in a shell, the window's form, the daemon
    /// keeping a proxy port): every edit lands, none writes back an older file.
    #[test]
    fn concurrent_edits_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, GOOD).unwrap();
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let nw = NewWorkload {
                            name: format!("w{t}-{i}"),
                            token_endpoint: "https://auth.example/token".into(),
                            client_id: "xyz".into(),
                            ..Default::default()
                        };
                        add_workload(&path, &nw).unwrap();
                        if t % 2 == 0 {
                            set_listen_port(&path, "github-mcp", 9000 + (t * 10 + i) as u16)
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.workloads.len(), 61, "every added workload is there");
        for t in 0..6 {
            for i in 0..10 {
                assert!(cfg.workload(&format!("w{t}-{i}")).is_some(), "w{t}-{i}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn edits_write_the_file_0600_in_a_0700_dir_and_tighten_looser_ones() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let base = tempfile::tempdir().unwrap();
        let new = NewWorkload {
            name: "w".into(),
            token_endpoint: "https://auth.example/token".into(),
            client_id: "abc".into(),
            ..NewWorkload::default()
        };

        // A new config dir and file.
        let dir = base.path().join("fresh/tokenwarden");
        let path = dir.join(FILE_NAME);
        add_workload(&path, &new).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        let lock = dir.join(format!(".{FILE_NAME}.edit-lock"));
        assert_eq!(mode(&lock), 0o600);

        // An older install: 0755 dir, 0644 file. The next write tightens both.
        let dir = base.path().join("old");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join(FILE_NAME);
        std::fs::write(&path, GOOD).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        set_listen_port(&path, "github-mcp", 9000).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("listen_port = 9000"));
    }
}
