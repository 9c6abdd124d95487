//! Tokenwarden's engine: everything that keeps workloads authenticated, with nothing
//! of a GUI in its dependency tree: the failure classifier and retry policy, the
//! per-workload state machine and its monitor task, the triggers (network change,
//! wake), the token stores (keychain, file), the config file, discovery and login,
//! and the local authenticating proxy the supervisor starts for each workload.

pub mod classify;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod machine;
pub mod monitor;
pub mod oauth;
pub mod policy;
pub mod proxy;
pub mod registration;
pub mod secret;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod triggers;

pub use clock::Clock;
pub use config::Config;
pub use machine::{Status, Trigger};
pub use secret::Secret;
pub use status::WorkloadStatus;
pub use store::SecretStore;
pub use supervisor::{Engine, EngineError, EngineOptions, StatusChange};
