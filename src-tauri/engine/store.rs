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

use crate::engine::secret::Secret;
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
}

impl StoredTokens {
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

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The async face of a backend. Cheap to clone.
#[derive(Clone)]
pub struct SecretStore {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretStore({})", self.backend.describe())
    }
}

fn tokens_account(workload: &str) -> String {
    format!("{workload}/tokens")
}

/// A dynamically registered client's secret: its own entry, so `logout` (which
/// forgets the tokens) keeps the registration, and `remove` deletes both.
fn client_account(workload: &str) -> String {
    format!("{workload}/client")
}

/// What the client entry holds (JSON, room for more registration data later).
#[derive(Serialize, Deserialize)]
struct StoredClient {
    client_secret: Secret,
}

impl SecretStore {
    pub fn new(backend: impl Backend) -> Self {
        SecretStore {
            backend: Arc::new(backend),
        }
    }

    pub fn memory() -> Self {
        Self::new(MemoryBackend::default())
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
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

    pub async fn load_tokens(&self, workload: &str) -> Result<Option<StoredTokens>, StoreError> {
        let account = tokens_account(workload);
        let name = workload.to_string();
        self.run(move |b| {
            b.get(&account)?
                .map(|s| {
                    serde_json::from_str::<StoredTokens>(s.expose())
                        .map_err(|_| StoreError::Corrupt(name.clone()))
                })
                .transpose()
        })
        .await
    }

    pub async fn save_tokens(
        &self,
        workload: &str,
        tokens: &StoredTokens,
    ) -> Result<(), StoreError> {
        let account = tokens_account(workload);
        let value = Secret::new(
            serde_json::to_string(tokens).map_err(|e| StoreError::Failed(e.to_string()))?,
        );
        self.run(move |b| b.set(&account, &value)).await
    }

    pub async fn delete_tokens(&self, workload: &str) -> Result<(), StoreError> {
        let account = tokens_account(workload);
        self.run(move |b| b.delete(&account)).await
    }

    /// The client secret of a confidential client (`client_auth` other than `none`).
    pub async fn load_client_secret(&self, workload: &str) -> Result<Option<Secret>, StoreError> {
        let account = client_account(workload);
        let name = workload.to_string();
        self.run(move |b| {
            b.get(&account)?
                .map(|s| {
                    serde_json::from_str::<StoredClient>(s.expose())
                        .map(|c| c.client_secret)
                        .map_err(|_| StoreError::Corrupt(name.clone()))
                })
                .transpose()
        })
        .await
    }

    pub async fn save_client_secret(
        &self,
        workload: &str,
        secret: &Secret,
    ) -> Result<(), StoreError> {
        let account = client_account(workload);
        let value = Secret::new(
            serde_json::to_string(&StoredClient {
                client_secret: secret.clone(),
            })
            .map_err(|e| StoreError::Failed(e.to_string()))?,
        );
        self.run(move |b| b.set(&account, &value)).await
    }

    /// Idempotent, like every delete.
    pub async fn delete_client_secret(&self, workload: &str) -> Result<(), StoreError> {
        let account = client_account(workload);
        self.run(move |b| b.delete(&account)).await
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
        crate::engine::config::write_atomic(&path, value.expose().as_bytes(), true)
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
