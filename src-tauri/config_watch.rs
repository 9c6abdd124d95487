//! Hand edits of `workloads.toml` reach a running daemon or desktop app without a
//! restart: the file is looked at every `config_check_interval` (one `stat`: size,
//! times, inode; no per-workload work) and read again once a change has held still for
//! one interval (a file being written is not read half way). New text that parses is applied like `add`/`remove` apply theirs (only the
//! workloads whose table changed restart; a policy change restarts all). Text that does
//! not parse is reported once, with its line, and the running configuration stays
//! until the file is fixed. A file that disappears (an editor between writes, or a
//! mistake) changes nothing.
//!
//! What cannot change while running, the secret store (`[secrets]`), is reported as
//! needing a restart.

use crate::engine::config::{Config, StoreKind};
use crate::engine::Engine;
use crate::paths::Paths;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What `stat` says of the file: enough to notice a change without reading it (the
/// inode for an editor's rename over it, the change time for a same-size rewrite).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, i64, i64),
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.ctime(), m.ctime_nsec())
        },
    })
}

/// The configuration `text` means, as the daemon would load it (with the
/// `TOKENWARDEN_*` policy overrides of this process).
fn parse(paths: &Paths, text: &str) -> anyhow::Result<Config> {
    crate::ops::with_env_policy(Config::parse(&paths.config_file, text)?)
}

/// What became of an edit, for a shell that shows it (the desktop notifies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Applied {
        workloads: usize,
    },
    /// The new text cannot be used: the message names the file and line.
    Broken(String),
}

/// What [`watch`] needs of the configuration the engine starts with.
pub fn running(cfg: &Config) -> (StoreKind, Option<String>, Duration) {
    (
        cfg.store,
        cfg.service.clone(),
        cfg.policy.config_check_interval,
    )
}

/// Watch `paths.config_file` until `cancel`. `store`, `service` and `interval` are
/// those of the configuration the engine was started with.
pub async fn watch(
    paths: Paths,
    engine: Engine,
    (store, service, mut interval): (StoreKind, Option<String>, Duration),
    cancel: CancellationToken,
    report: impl Fn(Edit) + Send + 'static,
) {
    // Nothing seen yet: the first look reads the file, so an edit made between the
    // engine's start and this task's is not missed (the same text changes nothing).
    let mut last_stamp: Option<Option<Stamp>> = None;
    let mut last_text: Option<String> = None;
    // A change was seen; read once the file has held still for one interval, so a file
    // being written (emptied, then filled) is never read half way.
    let mut pending = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = stamp(&paths.config_file);
        if last_stamp != Some(now) {
            last_stamp = Some(now);
            pending = true;
            continue;
        }
        if !pending {
            continue;
        }
        pending = false;
        // Reading and parsing touch files a hand edit names (`ca_file`): off the async
        // runtime's threads, so a slow or strange file can hold up only this task.
        let file = paths.config_file.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&file))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let text = match read {
            Ok(t) => t,
            Err(e) => {
                if now.is_none() && last_text.is_none() {
                    // Never there (a first run with nothing configured): nothing to say.
                } else if now.is_none() {
                    tracing::warn!(config = %paths.config_file.display(), "workloads.toml is gone; the running configuration stays");
                } else {
                    tracing::warn!(config = %paths.config_file.display(), error = %e, "cannot read workloads.toml; the running configuration stays");
                }
                continue;
            }
        };
        // Written within the last moments: a rewrite in the same clock tick could leave
        // the stamp as it is, so look again next time (the text comparison is cheap).
        let fresh = now
            .and_then(|s| s.modified)
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < Duration::from_secs(2));
        pending = fresh;
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        let first = last_text.is_none();
        last_text = Some(text.clone());
        let parsed = {
            let (paths, text) = (paths.clone(), text.clone());
            tokio::task::spawn_blocking(move || parse(&paths, &text))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("reading workloads.toml failed: {e}")))
        };
        let cfg = match parsed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("workloads.toml was edited but cannot be used: {e:#}; the running configuration stays until the file is fixed");
                report(Edit::Broken(format!("{e:#}")));
                continue;
            }
        };
        if cfg.store != store || cfg.service != service {
            tracing::warn!("the secret store in workloads.toml changed; restart tokenwarden to use it (the running one stays)");
        }
        interval = cfg
            .policy
            .config_check_interval
            .max(Duration::from_millis(10));
        let n = cfg.workloads.len();
        match engine.reload(Some(cfg), Vec::new()).await {
            Ok(()) if first => {
                tracing::debug!(workloads = n, "workloads.toml read again after the start");
                report(Edit::Applied { workloads: n });
            }
            Ok(()) => {
                tracing::info!(
                    workloads = n,
                    "workloads.toml was edited; the new configuration is applied"
                );
                report(Edit::Applied { workloads: n });
            }
            Err(e) => {
                tracing::error!(error = %e, "could not apply the edited workloads.toml");
                return;
            }
        }
    }
}
