//! The real OS keychain: gnome-keyring's Secret Service on a private D-Bus session
//! (started by `scripts/session.sh`, which `scripts/test.sh` and `.ci/run` use).
//!
//! keyring v3 silently falls back to a mock store that keeps nothing when built
//! without platform features; these tests prove the real store is in use by writing a
//! secret in one process and reading it back in others.
//!
//! They need the session: with `TOKENWARDEN_TEST_KEYCHAIN=1` (set by scripts/test.sh)
//! they run and must pass; without it they say they were skipped.

mod support;

use std::time::Duration;
use support::*;
use tokenwarden::engine::store::{KeychainBackend, SecretStore};
use tokenwarden::engine::Status;

fn keychain_available() -> bool {
    if std::env::var("TOKENWARDEN_TEST_KEYCHAIN").as_deref() == Ok("1") {
        assert!(
            std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
            "TOKENWARDEN_TEST_KEYCHAIN=1 but no session bus: run through scripts/session.sh"
        );
        gate::ran("keychain", "keychain");
        true
    } else {
        eprintln!("SKIPPED: needs the private keyring session (run `bash scripts/test.sh`)");
        false
    }
}

fn keychain_env(test: &str, issuer: &SimIssuer) -> TestEnv {
    let env = TestEnv::new(test);
    env.write_config(&format!(
        "[secrets]\nstore = \"keychain\"\n\n{}",
        workload_toml("w", issuer)
    ));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_written_by_one_process_is_read_back_by_others() {
    if !keychain_available() {
        return;
    }
    let issuer = issuer(IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(2)
    })
    .await;
    let env = keychain_env("keychain_cross_process", &issuer);

    // Process 1: `login` writes the tokens into the keychain.
    let login = env.login("w").await;
    assert!(login.ok(), "{login:?}");

    // This process reads them back through the keyring crate.
    let store = SecretStore::new(KeychainBackend::new(env.service.clone()));
    let stored = store
        .load_tokens("w")
        .await
        .unwrap()
        .expect("the login's tokens are in the keychain");
    assert!(issuer.is_valid_access_token(stored.access_token.expose()));

    // Process 2: `token` (no daemon) reads the same entry.
    let tok = env.run(&["token", "w"]);
    assert!(tok.ok(), "{tok:?}");
    assert_eq!(tok.stdout.trim(), stored.access_token.expose());

    // Process 3: the daemon starts from the keychain, refreshes (strict rotation) and
    // writes the rotated refresh token back, which this process then sees.
    env.start_daemon().await;
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    let n = issuer.refresh_requests();
    assert!(
        issuer
            .wait_for_refresh_requests(n + 2, Duration::from_secs(10))
            .await
    );
    let st = env
        .wait_for("w", Duration::from_secs(10), |w| {
            w.status == Status::Running && w.attempts == 0
        })
        .await;
    assert!(st.reason.is_none(), "{st:?}");
    // A clean stop lets an in-flight refresh finish and save its rotated token.
    env.stop_daemons();
    let after = store.load_tokens("w").await.unwrap().unwrap();
    assert_ne!(
        after.refresh_token, stored.refresh_token,
        "rotation reached the keychain"
    );
    assert!(issuer.is_valid_refresh_token(after.refresh_token.as_ref().unwrap().expose()));

    // Logout removes the entry (idempotently).
    assert!(env.run(&["logout", "w"]).ok());
    assert!(env.run(&["logout", "w"]).ok());
    assert_eq!(store.load_tokens("w").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_keychain_is_reported_with_what_to_do() {
    // Needs no keyring: it points the processes at a bus that does not exist.
    let issuer = issuer(issuer_opts(30)).await;
    let mut env = keychain_env("keychain_missing", &issuer);
    env.extra_env.push((
        "DBUS_SESSION_BUS_ADDRESS".into(),
        "unix:path=/nonexistent/bus".into(),
    ));

    let out = env.run(&["token", "w"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no keychain is available"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("store = \"file\""), "{}", out.stderr);

    // The daemon keeps running and shows the cause and the remedy in the status.
    env.start_daemon().await;
    let st = env
        .wait_for("w", Duration::from_secs(10), |w| {
            w.reason.as_deref().is_some_and(|r| r.contains("keychain"))
        })
        .await;
    assert_ne!(
        st.status,
        Status::Unauthenticated,
        "a missing keychain is not a verdict"
    );
    assert!(st.reason.unwrap().contains("file"), "says what to do");
}
