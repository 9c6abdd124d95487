//! Network-up trigger (if-watch): an IP address appearing on any interface.
//!
//! if-watch reports addresses, not carrier: a VPN's tun device, DHCP on a new network
//! or a re-added address all show up as `Up(addr)`. On start it reports every existing
//! address once; those are remembered and only addresses not seen before count, so a
//! start-up does not look like a network change. Loopback is ignored.

use super::Signal;
use futures::StreamExt;
use if_watch::IfEvent;
use std::collections::HashSet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub async fn watch(tx: mpsc::Sender<Signal>, cancel: CancellationToken) {
    let mut watcher = match if_watch::tokio::IfWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch network interfaces; the network trigger is off");
            return;
        }
    };
    // The first batch of events (the reply to the initial dump) is the current set of
    // addresses: the baseline, not a change.
    let mut known = HashSet::new();
    let first = tokio::select! {
        _ = cancel.cancelled() => return,
        e = watcher.next() => e,
    };
    let mut batch = vec![first];
    while let Some(e) = futures::FutureExt::now_or_never(watcher.next()) {
        batch.push(e);
    }
    for e in batch {
        match e {
            Some(Ok(IfEvent::Up(net))) => {
                known.insert(net);
            }
            Some(Ok(IfEvent::Down(net))) => {
                known.remove(&net);
            }
            Some(Err(_)) => {}
            None => return,
        }
    }
    tracing::debug!(addresses = known.len(), "watching network interfaces");
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = watcher.next() => e,
        };
        match event {
            Some(Ok(IfEvent::Up(net))) => {
                let addr = net.addr();
                let new = known.insert(net);
                if !new || addr.is_loopback() {
                    continue;
                }
                tracing::debug!(%addr, "address up");
                // A full channel already holds a pending signal: dropping this one coalesces.
                let _ = tx.try_send(Signal::NetworkUp { addr });
            }
            Some(Ok(IfEvent::Down(net))) => {
                known.remove(&net);
                tracing::debug!(addr = %net.addr(), "address down");
            }
            Some(Err(e)) => tracing::debug!(error = %e, "interface watcher error"),
            None => {
                tracing::warn!("the interface watcher ended; the network trigger is off");
                return;
            }
        }
    }
}
