//! Where Tokenwarden keeps things. Everything per instance lives under the config
//! directory (`--config-dir` / `TOKENWARDEN_CONFIG_DIR`), which is what makes "one
//! daemon per config dir" and test isolation work.

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Paths {
    pub config_dir: PathBuf,
    /// `workloads.toml`.
    pub config_file: PathBuf,
    /// Last known status per workload (no secrets).
    pub state_file: PathBuf,
    /// Held (flock) by the running daemon; holds its pid.
    pub lock_file: PathBuf,
    /// Private (0700) directory for the control socket.
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    /// The opt-in file secret store.
    pub secrets_dir: PathBuf,
    pub log_dir: PathBuf,
}

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("dev", "tokenwarden", "tokenwarden")
}

impl Paths {
    pub fn resolve(config_dir: Option<PathBuf>) -> anyhow::Result<Paths> {
        let config_dir = match config_dir {
            Some(d) => d,
            None => project_dirs()
                .map(|p| p.config_dir().to_path_buf())
                .ok_or_else(|| {
                    anyhow::anyhow!("cannot find a home directory; pass --config-dir")
                })?,
        };
        let config_dir = std::path::absolute(&config_dir).unwrap_or(config_dir);
        let run_dir = config_dir.join("run");
        Ok(Paths {
            config_file: config_dir.join(crate::engine::config::FILE_NAME),
            state_file: config_dir.join("state.json"),
            lock_file: config_dir.join("daemon.lock"),
            socket: crate::protocol::local::socket_path(&config_dir),
            run_dir,
            secrets_dir: config_dir.join("secrets"),
            log_dir: default_log_dir().unwrap_or_else(|| config_dir.join("logs")),
            config_dir,
        })
    }
}

/// A `Paths` stands for its config dir where one is asked for (`Client::connect`).
impl AsRef<std::path::Path> for Paths {
    fn as_ref(&self) -> &std::path::Path {
        &self.config_dir
    }
}

/// `TOKENWARDEN_LOG_DIR`, else the platform's place for logs; `None` without a home
/// directory, where the logs go to the config dir's `logs/` (never a shared temp dir,
/// where another user could read them or plant a link first).
pub fn default_log_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TOKENWARDEN_LOG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let p = project_dirs()?;
    if cfg!(target_os = "macos") {
        if let Some(home) = directories::BaseDirs::new() {
            return Some(home.home_dir().join("Library/Logs/tokenwarden"));
        }
    }
    Some(
        p.state_dir()
            .unwrap_or_else(|| p.data_local_dir())
            .join("logs"),
    )
}
