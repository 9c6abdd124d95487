//! The engine: everything that keeps workloads authenticated, with no GUI and no
//! tauri imports. It builds and tests with `--no-default-features`.

pub mod classify;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod machine;
pub mod monitor;
pub mod oauth;
pub mod policy;
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
