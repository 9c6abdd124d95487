//! `tokenwarden daemon`: the engine, the control socket, no GUI. Exactly one per
//! config directory ([`crate::instance`]).

use crate::paths::Paths;
use crate::service::{Options, Workloads};

/// Run until SIGINT/SIGTERM.
pub async fn run(paths: Paths) -> anyhow::Result<()> {
    let options = Options {
        paths,
        what: "daemon",
        lock: None,
        workloads: Workloads::Config,
        ui: None,
        log_changes: true,
        page_out_after: Some(std::time::Duration::from_secs(5)),
    };
    crate::service::run(options, Default::default()).await
}
