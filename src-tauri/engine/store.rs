//! Where tokens live: the OS keychain by default, an opt-in file store for machines
//! without one, and an in-memory store for unit tests.
//!
//! Contract of every backend (gitbutler `but-secret` style):
//! * a missing entry is `Ok(None)`, never an error;
//! * `delete` is idempotent;
//! * values are `Secret`s, so they never print;
//! * backends are blocking; [`SecretStore`] runs them on `spawn_blocking`.
//!
//! The keychain service name separates builds: `tokenwarden` for release builds,
//! `tokenwarden-dev` for debug builds (so development never touches the user's real
//! entries), overridable with `[secrets] service` or `TOKENWARDEN_KEYRING_SERVICE`.
//!
//! Entries belong to one config dir: a store made with [`SecretStore::for_config_dir`]
//! names them `NAME/tokens/KEY` and `NAME/client/KEY` (KEY: [`config_dir_key`]), so
//! two config dirs with a workload of the same name never share tokens. The entries of
//! earlier versions, `NAME/tokens` and `NAME/client` (shared by every config dir), move
//! to the new names once, to the first config dir that reads them.
//!
//! The tokens are stored with where they came from ([`Provenance`]): a workload whose
//! configuration now points elsewhere is refused its stored login
//! ([`SecretStore::load_login`]), so its refresh token never goes to another endpoint.

use crate::config::WorkloadConfig;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the keychain is locked: unlock your login keyring (for example with your desktop's Passwords and Keys app), or opt into the file store with `[secrets] store = \"file\"` in workloads.toml")]
    Locked,
    #[error("no keychain is available ({0}): start your desktop's keyring (gnome-keyring, KWallet) or opt into the file store with `[secrets] store = \"file\"` in workloads.toml")]
    Unavailable(String),
    #[error("the secret store failed: {0}")]
    Failed(String),
    #[error("the stored entry for `{0}` is unreadable; log in again to replace it")]
    Corrupt(String),
}

/// A blocking secret backend.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, account: &str) -> Result<Option<Secret>, StoreError>;
    fn set(&self, account: &str, value: &Secret) -> Result<(), StoreError>;
    fn delete(&self, account: &str) -> Result<(), StoreError>;
    fn describe(&self) -> String;
    /// Whether calls may block (I/O, D-Bus). Non-blocking backends run inline, which
    /// keeps virtual-time replays exact (no blocking-pool hop for the clock to skip over).
    fn is_blocking(&self) -> bool {
        true
    }
}

/// What one workload keeps in the store, as one JSON value in one entry (so the access
/// token, the refresh token and the expiry are always written together).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredTokens {
    pub access_token: Secret,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// Unix seconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// The lifetime the issuer granted, seconds (to schedule the refresh lead).
    #[serde(default)]
    pub lifetime: Option<u64>,
    /// Unix seconds when these tokens were obtained.
    pub obtained_at: u64,
    /// The scopes the sign-in asked for (the configured ones and any a step-up
    /// added); kept by refreshes. Empty: only the configured ones, or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

impl StoredTokens {
    /// Tokens just issued with an access token lifetime (a login made outside the
    /// engine, e.g. against the simulated issuer).
    pub fn issued_now(
        access_token: Secret,
        refresh_token: Option<Secret>,
        lifetime: Duration,
    ) -> Self {
        let now = unix_secs(SystemTime::now());
        let lifetime = lifetime.as_secs().max(1);
        StoredTokens {
            access_token,
            refresh_token,
            expires_at: Some(now + lifetime),
            lifetime: Some(lifetime),
            obtained_at: now,
            scopes: Vec::new(),
        }
    }

    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }
    pub fn lifetime(&self) -> Option<Duration> {
        self.lifetime.map(Duration::from_secs)
    }
    pub fn obtained_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.obtained_at)
    }
}

/// Where a login came from: the configuration its tokens were obtained (or last
/// refreshed) with. Stored next to the tokens in the same entry.
///
/// Members added later (an `issuer`) must be `#[serde(default)]` options, and a record
/// without one (written before it existed) must not count as a change; members this
/// version does not know are ignored when reading.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Provenance {
    pub token_endpoint: String,
    pub client_id: String,
    /// The protected resource (`url`) the access token is sent to.
    #[serde(default)]
    pub url: Option<String>,
    /// The extra trust root (`ca_file`) the token endpoint was reached with.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The authorization server's issuer (`issuer`, RFC 8414), when the configuration
    /// names one. A record without it (older, or a workload without `issuer`) matches
    /// whatever the configuration says now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl Provenance {
    /// The provenance of tokens obtained with `w`'s configuration now.
    pub fn of(w: &WorkloadConfig) -> Self {
        Provenance {
            token_endpoint: w.token_endpoint.to_string(),
            client_id: w.client_id.clone(),
            url: w.url.as_ref().map(|u| u.to_string()),
            ca_file: w.ca_file.as_ref().map(|p| p.to_string_lossy().into_owned()),
            issuer: w.issuer.clone(),
        }
    }

    /// The configuration keys whose values differ between this record and `now`.
    pub fn changed(&self, now: &Provenance) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if !same_url(&self.token_endpoint, &now.token_endpoint) {
            changed.push("token_endpoint");
        }
        if self.client_id != now.client_id {
            changed.push("client_id");
        }
        let url_same = match (&self.url, &now.url) {
            (Some(a), Some(b)) => same_url(a, b),
            (a, b) => a == b,
        };
        if !url_same {
            changed.push("url");
        }
        if self.ca_file != now.ca_file {
            changed.push("ca_file");
        }
        // Issuers are compared as strings (RFC 8414 §3.3), and only when both sides
        // name one.
        if let (Some(a), Some(b)) = (&self.issuer, &now.issuer) {
            if a != b {
                changed.push("issuer");
            }
        }
        changed
    }
}

/// URLs compared as parsed (`HTTP://Host:443/` and `http://host:443/` are one URL).
fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// What one tokens entry holds: the tokens and, since entries are kept per config dir,
/// where they came from (`None`: an entry from before, adopted by the next
/// [`SecretStore::load_login`]).
#[derive(Serialize, Deserialize)]
struct TokensEntry {
    #[serde(flatten)]
    tokens: StoredTokens,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provenance: Option<Provenance>,
}

/// A workload's stored login, checked against its configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// Nothing stored.
    Missing,
    /// Tokens obtained with the configuration the workload has now.
    Ready(StoredTokens),
    /// Tokens obtained with another configuration: these keys changed since. They are
    /// not to be used (their refresh token belongs to another token endpoint, their
    /// access token to another resource).
    Elsewhere { changed: Vec<&'static str> },
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The async face of a backend. Cheap to clone.
#[derive(Clone)]
pub struct SecretStore {
    backend: Arc<dyn Backend>,
    /// The config dir's [`config_dir_key`]; `None`: the entry names of earlier
    /// versions (tests and the demo's in-memory store).
    scope: Option<Arc<str>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.scope {
            Some(k) => write!(
                f,
                "SecretStore({}, config dir {k})",
                self.backend.describe()
            ),
            None => write!(f, "SecretStore({})", self.backend.describe()),
        }
    }
}

/// What tells one config dir's entries apart from another's: 16 hex digits of the
/// SHA-256 of its canonical path (the path as given when it cannot be resolved).
/// A config dir that is moved or renamed therefore needs a new login.
pub fn config_dir_key(dir: &Path) -> String {
    use sha2::Digest;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let digest = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The kinds of entry a workload has. A dynamically registered client's secret has its
/// own entry, so `logout` (which forgets the tokens) keeps the registration, and
/// `remove` deletes both.
const TOKENS: &str = "tokens";
const CLIENT: &str = "client";

/// The entry name of earlier versions (one per workload name, for every config dir).
fn legacy_account(workload: &str, kind: &str) -> String {
    format!("{workload}/{kind}")
}

/// What the client entry holds (JSON, room for more registration data later).
#[derive(Serialize, Deserialize)]
struct StoredClient {
    /// Absent for a public client whose registration is kept (`registration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration: Option<ClientRegistration>,
}

/// A client Tokenwarden registered itself (RFC 7591), kept with the authorization
/// server it was registered at, so it can register a fresh one there when the server
/// no longer knows it (`invalid_client`). No secret but `registration_access_token`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientRegistration {
    /// The authorization server's issuer, as published.
    pub issuer: String,
    pub registration_endpoint: String,
    pub client_id: String,
    /// Unix seconds; `None` or 0: the secret does not expire.
    #[serde(default)]
    pub client_secret_expires_at: Option<u64>,
    /// RFC 7592 client configuration endpoint, when the server gave one.
    #[serde(default)]
    pub registration_client_uri: Option<String>,
    #[serde(default)]
    pub registration_access_token: Option<Secret>,
}

impl SecretStore {
    pub fn new(backend: impl Backend) -> Self {
        SecretStore {
            backend: Arc::new(backend),
            scope: None,
        }
    }

    pub fn memory() -> Self {
        Self::new(MemoryBackend::default())
    }

    /// The same backend, with the entries of the config dir `dir` (see the module
    /// documentation).
    pub fn for_config_dir(self, dir: &Path) -> Self {
        SecretStore {
            scope: Some(config_dir_key(dir).into()),
            ..self
        }
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    fn account(&self, workload: &str, kind: &str) -> String {
        match &self.scope {
            Some(key) => format!("{workload}/{kind}/{key}"),
            None => legacy_account(workload, kind),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Backend) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let b = self.backend.clone();
        if !b.is_blocking() {
            return f(b.as_ref());
        }
        tokio::task::spawn_blocking(move || f(b.as_ref()))
            .await
            .map_err(|e| StoreError::Failed(format!("store task failed: {e}")))?
    }

    /// Read `workload`'s entry of `kind`. A scoped store that has none takes over the
    /// workload's entries of earlier versions first (write the new, then delete the
    /// old; both kinds at once, so a login and its registered client stay together).
    async fn get(&self, workload: &str, kind: &'static str) -> Result<Option<Secret>, StoreError> {
        let account = self.account(workload, kind);
        let scoped = self.scope.is_some();
        let name = workload.to_string();
        let accounts: Vec<(String, String)> = [TOKENS, CLIENT]
            .into_iter()
            .map(|k| (self.account(workload, k), legacy_account(workload, k)))
            .collect();
        self.run(move |b| {
            if let Some(v) = b.get(&account)? {
                return Ok(Some(v));
            }
            if !scoped {
                return Ok(None);
            }
            for (new, old) in &accounts {
                if b.get(new)?.is_some() {
                    continue;
                }
                let Some(v) = b.get(old)? else { continue };
                b.set(new, &v)?;
                b.delete(old)?;
                tracing::info!(
                    workload = %name,
                    from = %old,
                    to = %new,
                    "moved a stored entry shared by every config dir to this config dir's own (once)"
                );
            }
            b.get(&account)
        })
        .await
    }

    async fn set(
        &self,
        workload: &str,
        kind: &'static str,
        value: Secret,
    ) -> Result<(), StoreError> {
        let account = self.account(workload, kind);
        self.run(move |b| b.set(&account, &value)).await
    }

    /// Delete `workload`'s entry of `kind`, and the entry of earlier versions it would
    /// otherwise take over on the next read (a logout must not be undone by that).
    async fn delete(&self, workload: &str, kind: &'static str) -> Result<(), StoreError> {
        let account = self.account(workload, kind);
        let legacy = self.scope.is_some().then(|| legacy_account(workload, kind));
        self.run(move |b| {
            b.delete(&account)?;
            match legacy {
                Some(old) => b.delete(&old),
                None => Ok(()),
            }
        })
        .await
    }

    async fn load_entry(&self, workload: &str) -> Result<Option<TokensEntry>, StoreError> {
        self.get(workload, TOKENS)
            .await?
            .map(|s| {
                serde_json::from_str::<TokensEntry>(s.expose())
                    .map_err(|_| StoreError::Corrupt(workload.to_string()))
            })
            .transpose()
    }

    async fn save_entry(&self, workload: &str, entry: &TokensEntry) -> Result<(), StoreError> {
        let value = Secret::new(
            serde_json::to_string(entry).map_err(|e| StoreError::Failed(e.to_string()))?,
        );
        self.set(workload, TOKENS, value).await
    }

    /// The stored tokens, whatever configuration they came from (see
    /// [`SecretStore::load_login`] for the check).
    pub async fn load_tokens(&self, workload: &str) -> Result<Option<StoredTokens>, StoreError> {
        Ok(self.load_entry(workload).await?.map(|e| e.tokens))
    }

    /// Store tokens without saying where they came from: the next
    /// [`SecretStore::load_login`] adopts them for the configuration it has. Logins
    /// and refreshes of a configured workload use [`SecretStore::save_login`].
    pub async fn save_tokens(
        &self,
        workload: &str,
        tokens: &StoredTokens,
    ) -> Result<(), StoreError> {
        let entry = TokensEntry {
            tokens: tokens.clone(),
            provenance: None,
        };
        self.save_entry(workload, &entry).await
    }

    /// Store tokens just obtained (login) or refreshed with `w`'s configuration.
    pub async fn save_login(
        &self,
        w: &WorkloadConfig,
        tokens: &StoredTokens,
    ) -> Result<(), StoreError> {
        let entry = TokensEntry {
            tokens: tokens.clone(),
            provenance: Some(Provenance::of(w)),
        };
        self.save_entry(&w.name, &entry).await
    }

    /// `w`'s stored login, if it was made with the configuration `w` has now. An entry
    /// that does not say where it came from (from an earlier version) is adopted:
    /// stamped with the current configuration and saved so.
    pub async fn load_login(&self, w: &WorkloadConfig) -> Result<Login, StoreError> {
        let Some(mut entry) = self.load_entry(&w.name).await? else {
            return Ok(Login::Missing);
        };
        let now = Provenance::of(w);
        match &entry.provenance {
            Some(p) => {
                let changed = p.changed(&now);
                if !changed.is_empty() {
                    return Ok(Login::Elsewhere { changed });
                }
            }
            None => {
                entry.provenance = Some(now);
                match self.save_entry(&w.name, &entry).await {
                    Ok(()) => {
                        tracing::info!(workload = %w.name, "the stored login did not say where it came from; adopted it for the current configuration")
                    }
                    Err(e) => {
                        tracing::warn!(workload = %w.name, error = %e, "could not record where the stored login came from; trying again at the next load")
                    }
                }
            }
        }
        Ok(Login::Ready(entry.tokens))
    }

    /// Idempotent, like every delete.
    pub async fn delete_tokens(&self, workload: &str) -> Result<(), StoreError> {
        self.delete(workload, TOKENS).await
    }

    /// The client secret of a confidential client (`client_auth` other than `none`).
    pub async fn load_client_secret(&self, workload: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self
            .load_client(workload)
            .await?
            .and_then(|c| c.client_secret))
    }

    /// The registration of a client Tokenwarden registered itself, if kept.
    pub async fn load_registration(
        &self,
        workload: &str,
    ) -> Result<Option<ClientRegistration>, StoreError> {
        Ok(self
            .load_client(workload)
            .await?
            .and_then(|c| c.registration))
    }

    async fn load_client(&self, workload: &str) -> Result<Option<StoredClient>, StoreError> {
        self.get(workload, CLIENT)
            .await?
            .map(|s| {
                serde_json::from_str::<StoredClient>(s.expose())
                    .map_err(|_| StoreError::Corrupt(workload.to_string()))
            })
            .transpose()
    }

    pub async fn save_client_secret(
        &self,
        workload: &str,
        secret: &Secret,
    ) -> Result<(), StoreError> {
        self.save_client(workload, Some(secret), None).await
    }

    /// Keep a client's secret (if any) and its registration together, in one write.
    pub async fn save_client(
        &self,
        workload: &str,
        secret: Option<&Secret>,
        registration: Option<&ClientRegistration>,
    ) -> Result<(), StoreError> {
        let value = Secret::new(
            serde_json::to_string(&StoredClient {
                client_secret: secret.cloned(),
                registration: registration.cloned(),
            })
            .map_err(|e| StoreError::Failed(e.to_string()))?,
        );
        self.set(workload, CLIENT, value).await
    }

    /// Idempotent, like every delete.
    pub async fn delete_client_secret(&self, workload: &str) -> Result<(), StoreError> {
        self.delete(workload, CLIENT).await
    }
}

/// In-memory store for unit tests. Says so in its description.
#[derive(Default)]
pub struct MemoryBackend {
    map: Mutex<HashMap<String, Secret>>,
}

impl Backend for MemoryBackend {
    fn get(&self, account: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self.lock().get(account).cloned())
    }
    fn set(&self, account: &str, value: &Secret) -> Result<(), StoreError> {
        self.lock().insert(account.to_string(), value.clone());
        Ok(())
    }
    fn delete(&self, account: &str) -> Result<(), StoreError> {
        self.lock().remove(account);
        Ok(())
    }
    fn describe(&self) -> String {
        "in-memory store (tests only; keeps nothing)".into()
    }
    fn is_blocking(&self) -> bool {
        false
    }
}

impl MemoryBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Secret>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The OS keychain through the `keyring` crate: Secret Service on Linux, Keychain on
/// macOS, Credential Manager on Windows.
pub struct KeychainBackend {
    service: String,
}

impl KeychainBackend {
    pub fn new(service: impl Into<String>) -> Self {
        KeychainBackend {
            service: service.into(),
        }
    }

    fn entry(&self, account: &str) -> Result<keyring::Entry, StoreError> {
        keyring::Entry::new(&self.service, account).map_err(map_keyring)
    }
}

/// The default service name: release and debug builds never share entries.
pub fn default_service() -> String {
    if let Ok(s) = std::env::var("TOKENWARDEN_KEYRING_SERVICE") {
        if !s.trim().is_empty() {
            return s;
        }
    }
    if cfg!(debug_assertions) {
        "tokenwarden-dev".into()
    } else {
        "tokenwarden".into()
    }
}

fn map_keyring(e: keyring::Error) -> StoreError {
    match e {
        keyring::Error::NoStorageAccess(_) => StoreError::Locked,
        keyring::Error::PlatformFailure(inner) => StoreError::Unavailable(inner.to_string()),
        other => StoreError::Failed(other.to_string()),
    }
}

impl Backend for KeychainBackend {
    fn get(&self, account: &str) -> Result<Option<Secret>, StoreError> {
        match self.entry(account)?.get_password() {
            Ok(v) => Ok(Some(Secret::new(v))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(map_keyring(e)),
        }
    }
    fn set(&self, account: &str, value: &Secret) -> Result<(), StoreError> {
        self.entry(account)?
            .set_password(value.expose())
            .map_err(map_keyring)
    }
    fn delete(&self, account: &str) -> Result<(), StoreError> {
        match self.entry(account)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(map_keyring(e)),
        }
    }
    fn describe(&self) -> String {
        format!("OS keychain (service `{}`)", self.service)
    }
}

/// Opt-in file store: one file per entry in a 0700 directory, each 0600, written
/// atomically (temp file + fsync + rename), so a crash never leaves half a token.
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileBackend { dir: dir.into() }
    }

    fn path(&self, account: &str) -> PathBuf {
        // Accounts are `<workload>/<kind>`; workload names are validated to a safe
        // charset, so mapping `/` to `.` gives a flat, unambiguous file name.
        self.dir.join(format!("{}.json", account.replace('/', ".")))
    }
}

impl Backend for FileBackend {
    fn get(&self, account: &str) -> Result<Option<Secret>, StoreError> {
        match std::fs::read_to_string(self.path(account)) {
            Ok(s) => Ok(Some(Secret::new(s))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Failed(format!(
                "cannot read {}: {e}",
                self.path(account).display()
            ))),
        }
    }
    fn set(&self, account: &str, value: &Secret) -> Result<(), StoreError> {
        create_private_dir(&self.dir).map_err(|e| {
            StoreError::Failed(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        let path = self.path(account);
        crate::config::write_atomic(&path, value.expose().as_bytes(), true)
            .map_err(|e| StoreError::Failed(format!("cannot write {}: {e}", path.display())))
    }
    fn delete(&self, account: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.path(account)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Failed(e.to_string())),
        }
    }
    fn describe(&self) -> String {
        format!("file store in {}", self.dir.display())
    }
}

/// Create `dir` (and parents) readable by the owner only. A `dir` that already exists
/// must be a real directory (not a symbolic link) owned by this process's user; its
/// mode is then tightened to 0700. Anything else is refused with an error naming the
/// problem: another user's directory or a link planted in its place must never hold
/// this user's sockets, logs or secrets.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(dir)?;
        let refuse = |why: String| {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} {why}; refusing to use it", dir.display()),
            ))
        };
        if meta.file_type().is_symlink() {
            return refuse("is a symbolic link".into());
        }
        if !meta.is_dir() {
            return refuse("is not a directory".into());
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return refuse(format!("belongs to uid {}, not to uid {me}", meta.uid()));
        }
        if meta.mode() & 0o077 != 0 {
            tracing::info!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "tightening a private directory to 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_dirs_are_made_0700_and_links_or_other_users_dirs_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;

        let fresh = tmp.path().join("a/b/run");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);

        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700, "an existing dir is tightened");

        let target = tmp.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_private_dir(&link).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert_eq!(mode(&target), 0o755, "the link's target is left alone");

        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = create_private_dir(&file).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");

        // Another user's directory: only root can make one to test with.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = tmp.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = create_private_dir(&theirs).unwrap_err();
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
            assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
        }
    }

    fn sample() -> StoredTokens {
        StoredTokens {
            access_token: Secret::new("at"),
            refresh_token: Some(Secret::new("rt")),
            expires_at: Some(1_900_000_000),
            lifetime: Some(3600),
            obtained_at: 1_899_996_400,
            scopes: Vec::new(),
        }
    }

    async fn contract(store: SecretStore) {
        assert_eq!(
            store.load_tokens("w").await.unwrap(),
            None,
            "missing = Ok(None)"
        );
        store.save_tokens("w", &sample()).await.unwrap();
        assert_eq!(store.load_tokens("w").await.unwrap(), Some(sample()));
        store.delete_tokens("w").await.unwrap();
        store.delete_tokens("w").await.unwrap();
        assert_eq!(store.load_tokens("w").await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_backend_contract() {
        contract(SecretStore::memory()).await;
        client_secret_contract(SecretStore::memory()).await;
    }

    async fn client_secret_contract(store: SecretStore) {
        assert_eq!(store.load_client_secret("w").await.unwrap(), None);
        store.save_tokens("w", &sample()).await.unwrap();
        store
            .save_client_secret("w", &Secret::new("cs"))
            .await
            .unwrap();
        assert_eq!(
            store.load_client_secret("w").await.unwrap(),
            Some(Secret::new("cs"))
        );
        // Separate entries: forgetting the tokens keeps the registration.
        store.delete_tokens("w").await.unwrap();
        assert_eq!(
            store.load_client_secret("w").await.unwrap(),
            Some(Secret::new("cs"))
        );
        store.delete_client_secret("w").await.unwrap();
        store.delete_client_secret("w").await.unwrap();
        assert_eq!(store.load_client_secret("w").await.unwrap(), None);
    }

    #[tokio::test]
    async fn file_backend_contract_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        contract(SecretStore::new(FileBackend::new(&secrets))).await;
        client_secret_contract(SecretStore::new(FileBackend::new(&secrets))).await;
        let store = SecretStore::new(FileBackend::new(&secrets));
        store.save_tokens("w", &sample()).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&secrets), 0o700);
            assert_eq!(mode(&secrets.join("w.tokens.json")), 0o600);
        }
        // A garbled file is reported, not a panic.
        std::fs::write(secrets.join("w.tokens.json"), "{not json").unwrap();
        assert_eq!(
            store.load_tokens("w").await.unwrap_err(),
            StoreError::Corrupt("w".into())
        );
    }

    fn workload(extra: &str) -> WorkloadConfig {
        let text = format!(
            "[[workload]]\nname = \"w\"\ntoken_endpoint = \"https://a.example/token\"\nclient_id = \"c\"\n{extra}"
        );
        let cfg = crate::config::Config::parse(Path::new("/t/workloads.toml"), &text).unwrap();
        cfg.workloads[0].clone()
    }

    #[tokio::test]
    async fn scoped_stores_keep_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract(SecretStore::memory().for_config_dir(dir.path())).await;
        client_secret_contract(SecretStore::memory().for_config_dir(dir.path())).await;
        let secrets = dir.path().join("secrets");
        contract(SecretStore::new(FileBackend::new(&secrets)).for_config_dir(dir.path())).await;
        client_secret_contract(
            SecretStore::new(FileBackend::new(&secrets)).for_config_dir(dir.path()),
        )
        .await;
    }

    #[tokio::test]
    async fn two_config_dirs_keep_their_entries_of_one_name_apart() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shared = SecretStore::memory();
        let one = shared.clone().for_config_dir(d1.path());
        let two = shared.clone().for_config_dir(d2.path());
        one.save_tokens("w", &sample()).await.unwrap();
        one.save_client_secret("w", &Secret::new("cs"))
            .await
            .unwrap();
        assert_eq!(two.load_tokens("w").await.unwrap(), None);
        assert_eq!(two.load_client_secret("w").await.unwrap(), None);
        let other = StoredTokens {
            access_token: Secret::new("at2"),
            ..sample()
        };
        two.save_tokens("w", &other).await.unwrap();
        assert_eq!(one.load_tokens("w").await.unwrap(), Some(sample()));
        // Deleting in one (remove, logout) leaves the other signed in.
        two.delete_tokens("w").await.unwrap();
        two.delete_client_secret("w").await.unwrap();
        assert_eq!(one.load_tokens("w").await.unwrap(), Some(sample()));
        assert_eq!(
            one.load_client_secret("w").await.unwrap(),
            Some(Secret::new("cs"))
        );
        // The key is the canonical path: another spelling of it is the same dir.
        let dotted = d1.path().join("x").join("..");
        std::fs::create_dir(d1.path().join("x")).unwrap();
        assert_eq!(config_dir_key(&dotted), config_dir_key(d1.path()));
        assert_ne!(config_dir_key(d1.path()), config_dir_key(d2.path()));
    }

    #[tokio::test]
    async fn entries_of_earlier_versions_move_once_to_the_first_config_dir_that_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let legacy = SecretStore::new(FileBackend::new(&secrets));
        legacy.save_tokens("w", &sample()).await.unwrap();
        legacy
            .save_client_secret("w", &Secret::new("cs"))
            .await
            .unwrap();
        let (d1, d2) = (dir.path().join("one"), dir.path().join("two"));
        let one = SecretStore::new(FileBackend::new(&secrets)).for_config_dir(&d1);
        let two = SecretStore::new(FileBackend::new(&secrets)).for_config_dir(&d2);
        // Reading the tokens moves both entries of the workload (write new, delete old).
        assert_eq!(one.load_tokens("w").await.unwrap(), Some(sample()));
        let key = config_dir_key(&d1);
        let mut files: Vec<String> = std::fs::read_dir(&secrets)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            vec![
                format!("w.client.{key}.json"),
                format!("w.tokens.{key}.json")
            ]
        );
        assert_eq!(legacy.load_tokens("w").await.unwrap(), None);
        assert_eq!(
            one.load_client_secret("w").await.unwrap(),
            Some(Secret::new("cs"))
        );
        // The second config dir finds nothing: the entry is the first one's now.
        assert_eq!(two.load_tokens("w").await.unwrap(), None);
        assert_eq!(two.load_client_secret("w").await.unwrap(), None);
        assert_eq!(one.load_tokens("w").await.unwrap(), Some(sample()));

        // A logout before any read also deletes the old entry, which the next read
        // would otherwise take over (and so undo the logout).
        legacy.save_tokens("v", &sample()).await.unwrap();
        one.delete_tokens("v").await.unwrap();
        assert_eq!(one.load_tokens("v").await.unwrap(), None);
        assert_eq!(legacy.load_tokens("v").await.unwrap(), None);

        // An unscoped store (tests, the demo) reads and writes the old names only.
        legacy.save_tokens("u", &sample()).await.unwrap();
        assert_eq!(legacy.load_tokens("u").await.unwrap(), Some(sample()));
        assert!(secrets.join("u.tokens.json").exists());
    }

    #[tokio::test]
    async fn a_login_is_refused_to_a_workload_configured_elsewhere_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::memory().for_config_dir(dir.path());
        let w = workload("url = \"https://r.example/mcp\"\n");
        assert_eq!(store.load_login(&w).await.unwrap(), Login::Missing);
        store.save_login(&w, &sample()).await.unwrap();
        assert_eq!(store.load_login(&w).await.unwrap(), Login::Ready(sample()));
        // Another spelling of the same URLs is the same configuration.
        let same = workload("url = \"HTTPS://R.example:443/mcp\"\n");
        assert_eq!(
            store.load_login(&same).await.unwrap(),
            Login::Ready(sample())
        );

        let elsewhere = |w: WorkloadConfig| {
            let store = store.clone();
            async move {
                match store.load_login(&w).await.unwrap() {
                    Login::Elsewhere { changed } => changed,
                    other => panic!("{other:?}"),
                }
            }
        };
        let mut moved = w.clone();
        moved.token_endpoint = "https://b.example/token".parse().unwrap();
        assert_eq!(elsewhere(moved).await, vec!["token_endpoint"]);
        let mut other_client = w.clone();
        other_client.client_id = "c2".into();
        assert_eq!(elsewhere(other_client).await, vec!["client_id"]);
        let mut other_url = w.clone();
        other_url.url = Some("https://evil.example/mcp".parse().unwrap());
        assert_eq!(elsewhere(other_url).await, vec!["url"]);
        let mut no_url = w.clone();
        no_url.url = None;
        assert_eq!(elsewhere(no_url).await, vec!["url"]);
        let mut ca = w.clone();
        ca.ca_file = Some("/etc/other-ca.pem".into());
        assert_eq!(elsewhere(ca).await, vec!["ca_file"]);
        // Refused, not deleted: undoing the edit brings the login back.
        assert_eq!(store.load_login(&w).await.unwrap(), Login::Ready(sample()));

        // The issuer: compared when the login and the configuration both name one.
        let mut with_issuer = w.clone();
        with_issuer.issuer = Some("https://auth.example".into());
        assert_eq!(
            store.load_login(&with_issuer).await.unwrap(),
            Login::Ready(sample()),
            "a login from before issuers were recorded still fits"
        );
        store.save_login(&with_issuer, &sample()).await.unwrap();
        let mut other_issuer = with_issuer.clone();
        other_issuer.issuer = Some("https://auth.example/".into());
        assert_eq!(elsewhere(other_issuer).await, vec!["issuer"]);
    }

    #[tokio::test]
    async fn an_entry_without_provenance_is_adopted_by_the_current_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SecretStore::memory();
        // An entry of an earlier version: old name, no provenance.
        shared.save_tokens("w", &sample()).await.unwrap();
        let store = shared.clone().for_config_dir(dir.path());
        let w = workload("");
        assert_eq!(store.load_login(&w).await.unwrap(), Login::Ready(sample()));
        // Stamped now: a later edit of the configuration is noticed.
        let mut moved = w.clone();
        moved.token_endpoint = "https://b.example/token".parse().unwrap();
        assert_eq!(
            store.load_login(&moved).await.unwrap(),
            Login::Elsewhere {
                changed: vec!["token_endpoint"]
            }
        );
    }

    #[test]
    fn the_provenance_record_reads_members_it_does_not_know() {
        // A record written by a later version with more members still reads, and so
        // does one without the optional members.
        let later: Provenance = serde_json::from_str(
            r#"{"token_endpoint":"https://a.example/token","client_id":"c","url":null,"ca_file":null,"issuer":"https://a.example","tenant":"t"}"#,
        )
        .unwrap();
        let earlier: Provenance =
            serde_json::from_str(r#"{"token_endpoint":"https://a.example/token","client_id":"c"}"#)
                .unwrap();
        assert_eq!(later.issuer.as_deref(), Some("https://a.example"));
        assert!(later.changed(&earlier).is_empty());
        assert_eq!(earlier, Provenance::of(&workload("")));
    }

    #[test]
    fn keychain_errors_say_what_to_do() {
        let locked = map_keyring(keyring::Error::NoStorageAccess("locked".into()));
        assert_eq!(locked, StoreError::Locked);
        let msg = locked.to_string();
        assert!(
            msg.contains("unlock") && msg.contains("store = \"file\""),
            "{msg}"
        );
        let missing = map_keyring(keyring::Error::PlatformFailure("no bus".into()));
        let msg = missing.to_string();
        assert!(
            msg.contains("no keychain is available (no bus)") && msg.contains("file"),
            "{msg}"
        );
    }

    #[test]
    fn stored_tokens_debug_hides_secrets() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("\"at\"") && !s.contains("rt\""), "{s}");
    }
}
