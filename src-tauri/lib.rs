//! Tokenwarden keeps OAuth-backed remote workloads authenticated through the failures
//! real laptops see. See README.md and ARCHITECTURE.md.

pub mod engine;
// pub mod sim_issuer;
