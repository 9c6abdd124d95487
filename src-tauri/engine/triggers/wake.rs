//! Wake trigger.
//!
//! Tokio's timers run on the monotonic clock, which stops while the machine sleeps
//! (Linux, macOS), so after a resume every timer is late and nothing notices by itself.
//! A single process-wide tick compares how far the wall clock moved with how far the
//! awake clock moved: a difference above the threshold is a sleep (tailscale's
//! `pollWallTime` idea). On Linux, logind's `PrepareForSleep(false)` on the system bus
//! reports the resume at once when a system bus is there.

use super::Signal;
use crate::clock::{Clock, Now};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the machine slept between two readings, if it did. A wall clock that went
/// backwards (NTP correction) is not a sleep.
pub fn detect(prev: Now, cur: Now, threshold: Duration) -> Option<Duration> {
    let wall = cur.wall.duration_since(prev.wall).ok()?;
    let awake = cur.awake.saturating_sub(prev.awake);
    let slept = wall.saturating_sub(awake);
    (slept >= threshold).then_some(slept)
}

pub async fn watch_clock(
    clock: Clock,
    every: Duration,
    threshold: Duration,
    tx: mpsc::Sender<Signal>,
    cancel: CancellationToken,
) {
    let mut prev = clock.now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cur = clock.now();
        if let Some(slept) = detect(prev, cur, threshold) {
            tracing::info!(slept = %humantime::format_duration(Duration::from_secs(slept.as_secs())), "woke from sleep (wall clock jumped)");
            let _ = tx.try_send(Signal::Wake {
                slept,
                source: "clock",
            });
        }
        prev = cur;
    }
}

/// Listen for logind's `PrepareForSleep(false)` on a thread of its own (the dbus crate is
/// blocking). Without a system bus this logs once and returns.
#[cfg(target_os = "linux")]
pub fn watch_logind(tx: mpsc::Sender<Signal>) {
    let spawned = std::thread::Builder::new()
        .name("logind-watch".into())
        .spawn(move || {
            let conn = match dbus::blocking::Connection::new_system() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "no system bus; wake detection by the clock only");
                    return;
                }
            };
            // From logind only: the bus daemon matches the sender against the owner of
            // `org.freedesktop.login1`, so another program on the bus cannot fake wakes.
            let rule = dbus::message::MatchRule::new_signal("org.freedesktop.login1.Manager", "PrepareForSleep")
                .with_path("/org/freedesktop/login1")
                .with_sender("org.freedesktop.login1");
            let tx2 = tx.clone();
            let added = conn.add_match(rule, move |(going_to_sleep,): (bool,), _, _| {
                if going_to_sleep {
                    tracing::info!("the system is going to sleep");
                } else {
                    tracing::info!("woke from sleep (logind)");
                    let _ = tx2.try_send(Signal::Wake { slept: Duration::ZERO, source: "logind" });
                }
                true
            });
            if let Err(e) = added {
                tracing::debug!(error = %e, "cannot subscribe to logind; wake detection by the clock only");
                return;
            }
            tracing::debug!("listening for logind PrepareForSleep");
            while !tx.is_closed() {
                if let Err(e) = conn.process(Duration::from_secs(60)) {
                    tracing::debug!(error = %e, "logind watch ended");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the logind watcher");
    }
}

/// Other platforms: the wall-clock detector alone (macOS and Windows power
/// notifications are not wired up yet).
#[cfg(not(target_os = "linux"))]
pub fn watch_logind(_tx: mpsc::Sender<Signal>) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn at(wall: u64, awake: u64) -> Now {
        Now {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(wall),
            awake: Duration::from_secs(awake),
        }
    }

    #[test]
    fn a_wall_jump_beyond_the_awake_time_is_a_sleep() {
        let t = Duration::from_secs(5);
        assert_eq!(detect(at(1000, 10), at(1001, 11), t), None, "normal tick");
        assert_eq!(detect(at(1000, 10), at(1004, 11), t), None, "small drift");
        assert_eq!(
            detect(at(1000, 10), at(1000 + 8 * 3600 + 1, 11), t),
            Some(Duration::from_secs(8 * 3600))
        );
        assert_eq!(
            detect(at(1000, 10), at(900, 11), t),
            None,
            "wall clock set back"
        );
        // A late tick (busy machine) moves both clocks: not a sleep.
        assert_eq!(detect(at(1000, 10), at(1030, 40), t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_watcher_reports_an_injected_jump() {
        let clock = Clock::virtual_from(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        tokio::spawn(watch_clock(
            clock.clone(),
            Duration::from_secs(1),
            Duration::from_secs(5),
            tx,
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(rx.try_recv().is_err(), "no sleep yet");
        clock.jump_wall(Duration::from_secs(8 * 3600));
        let sig = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            sig,
            Signal::Wake {
                slept: Duration::from_secs(8 * 3600),
                source: "clock"
            }
        );
        cancel.cancel();
    }
}
