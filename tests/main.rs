//! The app's integration tests, one binary: each module an area, all against the real
//! `tokenwarden` binary, the loopback issuer and remote (`tokenwarden-sim`), the real
//! keychain, namespaces and web view where they say so. `support` is the shared harness.
//! Run one area with a filter: `cargo nextest run --test tests 'proxy::'`.

mod support;

mod authorization;
mod cli;
mod clients;
mod crash;
mod desktop;
mod desktop_measure;
mod discovery;
mod engine;
mod faults;
mod keychain;
mod proxy;
mod stdio;
mod triggers;
mod unreachable;
mod upstream_ack;
