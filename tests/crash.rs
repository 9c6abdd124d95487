//! A SIGKILL during a refresh, the short version of `benches/crash.rs` that runs with
//! the suite: the real daemon, strict rotation at the loopback issuer (every refresh
//! invalidates the refresh token it presents), the file store. The daemon is killed at
//! the two instants the campaign can only hit by chance, a few times each:
//!
//! * with its refresh held unanswered at the issuer: nothing has rotated, so the stored
//!   refresh token must still be the valid one, and a restarted daemon refreshes with it;
//! * right after it announced a refresh (the `refreshed` status change): the issuer has
//!   rotated, so the new refresh token must already be on disk.
//!
//! Loss is only allowed between the issuer rotating and the store write finishing
//! (docs/resilience.md); neither instant is inside that window.

use crate::support;

use std::time::{Duration, Instant};
use support::*;
use tokenwarden::engine::store::{FileBackend, SecretStore};
use tokenwarden::engine::{Status, StatusChange};

const ROUNDS: usize = 3;
const WAIT: Duration = Duration::from_secs(15);

fn file_store(env: &TestEnv) -> SecretStore {
    SecretStore::new(FileBackend::new(env.paths().secrets_dir)).for_config_dir(&env.config_dir)
}

/// The refresh token the store holds for `w` (the test fails when there is none).
async fn stored_refresh_token(env: &TestEnv) -> String {
    let tokens = file_store(env)
        .load_tokens("w")
        .await
        .expect("the store reads")
        .expect("tokens are stored");
    tokens
        .refresh_token
        .expect("a refresh token is stored")
        .expose()
        .to_string()
}

/// The refresh token the issuer accepts now (strict rotation: exactly one).
fn newest_refresh_token(issuer: &SimIssuer) -> String {
    issuer
        .issued_tokens()
        .into_iter()
        .rfind(|t| t.starts_with("sim_rt_"))
        .expect("a refresh token was issued")
}

/// Poll `cond` every 5 ms until it holds; fail with `what` after [`WAIT`].
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_refresh_loses_no_refresh_token() {
    // 30-second tokens: the daemon refreshes only when the test asks (`retry`).
    let issuer = issuer(IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(30)
    })
    .await;
    let env = TestEnv::new("crash_sigkill");
    env.write_config(&format!(
        "{}{}",
        file_store_header(),
        workload_toml("w", &issuer)
    ));
    assert!(env.login("w").await.ok());

    for round in 0..ROUNDS {
        // Killed while the refresh is held at the issuer.
        let before = stored_refresh_token(&env).await;
        env.start_daemon().await;
        env.wait_status("w", Status::Running, WAIT).await;
        issuer.hold_refreshes(true);
        let n = issuer.refresh_requests();
        assert!(env.run(&["retry", "w"]).ok());
        assert!(issuer.wait_for_refresh_requests(n + 1, WAIT).await);
        // Counted as a request a moment before it is counted as in flight.
        until("the refresh is held at the issuer", || {
            issuer.refreshes_in_flight() == 1
        })
        .await;
        env.kill_daemons();
        // The issuer drops the request whose client died, unanswered: nothing rotated.
        until("the issuer drops the killed daemon's refresh", || {
            issuer.refreshes_in_flight() == 0
        })
        .await;
        issuer.hold_refreshes(false);
        let stored = stored_refresh_token(&env).await;
        // (Tokens are compared, never printed: a failure message is a log too.)
        assert!(
            stored == before,
            "round {round}: the store was left as it was"
        );
        assert!(
            issuer.is_valid_refresh_token(&stored),
            "round {round}: killed before the issuer answered, the stored refresh token is lost"
        );

        // Restarted, the daemon refreshes with it; killed the moment it says so.
        env.start_daemon().await;
        env.wait_status("w", Status::Running, WAIT).await;
        let client = env.client().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(client.watch(move |ev: StatusChange| {
            let _ = tx.send(ev);
        }));
        // A watch starts with each workload's current status, sent once it is
        // subscribed: after that first event no change can be missed.
        let first = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the watch reports the current status")
            .expect("watch stream");
        assert_eq!(first.workload.name, "w");
        assert!(env.run(&["retry", "w"]).ok());
        let change = tokio::time::timeout(WAIT, async {
            loop {
                let ev = rx.recv().await.expect("watch stream");
                if ev.refreshed || ev.workload.status == Status::Unauthenticated {
                    return ev;
                }
            }
        })
        .await
        .expect("the restarted daemon refreshes");
        env.kill_daemons();
        watcher.abort();
        assert!(
            change.refreshed,
            "round {round}: the restarted daemon could not refresh: {:?}",
            change.workload
        );
        let stored = stored_refresh_token(&env).await;
        assert!(stored != before, "round {round}: the refresh was saved");
        assert!(
            stored == newest_refresh_token(&issuer),
            "round {round}: killed after the daemon announced its refresh, the store \
             must hold the token the issuer rotated to"
        );
        assert!(issuer.is_valid_refresh_token(&stored));
    }
    assert_eq!(issuer.code_exchanges(), 1, "no sign-in was needed again");
}
