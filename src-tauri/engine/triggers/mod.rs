//! Trigger sources: things that happen outside a monitor and make a failing workload
//! worth trying again now instead of at its next scheduled attempt.
//!
//! * [`network`]: an IP address appeared (VPN tunnel up, DHCP on a new Wi-Fi);
//! * [`wake`]: the machine resumed (a wall-clock jump, and logind's `PrepareForSleep`
//!   on Linux when a system bus is there).
//!
//! Sources only send [`Signal`]s into one small channel with `try_send` (a full channel
//! means a signal is already pending, so dropping is coalescing). The supervisor
//! settles and fans them out; the pure state machine decides per workload whether to
//! act, within its rate limit and any `Retry-After`.

pub mod network;
pub mod wake;

use crate::clock::Clock;
use crate::policy::Policy;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An address came up on an interface.
    NetworkUp { addr: IpAddr },
    /// The machine woke after `slept` (as far as the source can tell).
    Wake {
        slept: Duration,
        source: &'static str,
    },
}

/// Which sources to run. The daemon runs all of them; tests choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sources {
    pub network: bool,
    pub wake_clock: bool,
    pub logind: bool,
}

impl Sources {
    pub fn all() -> Self {
        Sources {
            network: true,
            wake_clock: true,
            logind: true,
        }
    }
    pub fn none() -> Self {
        Sources {
            network: false,
            wake_clock: false,
            logind: false,
        }
    }
}

/// Start the chosen sources; they stop when `cancel` fires.
pub fn spawn(
    sources: Sources,
    policy: &Policy,
    clock: Clock,
    tx: mpsc::Sender<Signal>,
    cancel: CancellationToken,
) {
    if !policy.triggers {
        tracing::info!("triggers are off: only the schedule and \"Retry now\" start attempts");
        return;
    }
    if sources.network {
        tokio::spawn(network::watch(tx.clone(), cancel.clone()));
    }
    if sources.wake_clock {
        tokio::spawn(wake::watch_clock(
            clock,
            policy.wake_check_interval,
            policy.wake_threshold,
            tx.clone(),
            cancel.clone(),
        ));
    }
    if sources.logind {
        wake::watch_logind(tx);
    }
}
