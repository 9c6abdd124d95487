//! Tokenwarden keeps OAuth-backed remote workloads authenticated through the failures
//! real laptops see. See README.md and ARCHITECTURE.md.
//!
//! * [`engine`]: classification, policy, the state machine, monitors, stores, config
//!   (no GUI; builds with `--no-default-features`);
//! * [`daemon`], [`control`], [`cli`]: the headless daemon, its local control socket,
//!   and the command line;
//! * [`clients`]: MCP clients' config files (`connect`, `disconnect`, `import`);
//! * [`stdio`]: `tokenwarden stdio NAME`, the MCP stdio bridge to a workload's local proxy;
//! * [`sim_issuer`]: a loopback OAuth issuer for the demo and the tests;
//! * [`sim_remote`]: a loopback OAuth-protected resource (a fake remote MCP server)
//!   in front of a `sim_issuer`, for discovery and proxy tests.

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
pub mod engine;
pub mod logging;
pub mod logs;
pub mod pageout;
pub mod paths;
pub mod proxy;
pub mod sim_issuer;
pub mod sim_remote;
pub mod stdio;
