//! Hand edits of `workloads.toml` reach a running daemon or desktop app without a
//! restart: the file is looked at every `config_check_interval` (its size and
//! modification time; one `stat`, no per-workload work) and read again when either
//! changed. New text that parses is applied like `add`/`remove` apply theirs (only the
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

/// What `stat` says of the file: enough to notice a change without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// The configuration `text` means, as the daemon would load it (with the
/// `TOKENWARDEN_*` policy overrides of this process).
fn parse(paths: &Paths, text: &str) -> anyhow::Result<Config> {
    let mut cfg = Config::parse(&paths.config_file, text)?;
    cfg.policy
        .apply_env(|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(cfg)
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

/// What [`run`] needs of the configuration the engine starts with.
pub fn running(cfg: &Config) -> (StoreKind, Option<String>, Duration) {
    (
        cfg.store,
        cfg.service.clone(),
        cfg.policy.config_check_interval,
    )
}

/// Watch `paths.config_file` until `cancel`. `store`, `service` and `interval` are
/// those of the configuration the engine was started with.
pub async fn run(
    paths: Paths,
    engine: Engine,
    (store, service, mut interval): (StoreKind, Option<String>, Duration),
    cancel: CancellationToken,
    report: impl Fn(Edit) + Send + 'static,
) {
    let mut last_stamp = stamp(&paths.config_file);
    // The text last seen (applied or reported): the same text is not handled twice.
    let mut last_text = std::fs::read_to_string(&paths.config_file).ok();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = stamp(&paths.config_file);
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let text = match std::fs::read_to_string(&paths.config_file) {
            Ok(t) => t,
            Err(e) => {
                if now.is_none() {
                    tracing::warn!(config = %paths.config_file.display(), "workloads.toml is gone; the running configuration stays");
                } else {
                    tracing::warn!(config = %paths.config_file.display(), error = %e, "cannot read workloads.toml; the running configuration stays");
                }
                continue;
            }
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        let cfg = match parse(&paths, &text) {
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
