//! Tokenwarden keeps OAuth-backed remote workloads authenticated through the failures
//! real laptops see. See README.md and ARCHITECTURE.md.
//!
//! * [`engine`]: the `tokenwarden-engine` crate re-exported: classification, policy,
//!   the state machine, monitors, stores, config, discovery, login and the local proxy
//!   (no GUI in its dependency tree);
//! * [`daemon`], [`control`], [`cli`]: the headless daemon, its local control socket,
//!   and the command line;
//! * [`protocol`]: the control protocol (requests, window commands, errors, hello) and
//!   its local transport and client, shared with the window's program;
//! * [`ops`]: the use cases (add, remove, login, logout, token) for every front end;
//! * [`service`]: how a config dir is run (lock, engine, control socket, signals), for
//!   the [`daemon`], the desktop app and the demo;
//! * [`clients`]: MCP clients' config files (`connect`, `disconnect`, `import`);
//! * [`stdio`]: `tokenwarden stdio NAME`, the MCP stdio bridge to a workload's local proxy;
//! * [`demo`]: the built-in demo, against the `tokenwarden-sim` crate's loopback
//!   issuer and remote.

pub mod browser;
pub mod cli;
pub mod clients;
pub mod config_watch;
pub mod control;
pub mod daemon;
pub mod demo;
#[cfg(feature = "desktop")]
pub mod desktop;
pub mod doctor;
/// The engine crate (`tokenwarden-engine`, `src-tauri/engine/`), proxy included.
pub use tokenwarden_engine as engine;
pub mod instance;
pub mod logging;
pub mod logs;
pub mod ops;
pub mod pageout;
pub mod paths;
/// The control protocol crate (`tokenwarden-protocol`, `src-tauri/protocol/`).
pub use tokenwarden_protocol as protocol;
pub mod service;
pub mod stdio;
