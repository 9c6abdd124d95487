//! The real OS keychain: gnome-keyring's Secret Service on a private D-Bus session
//! (started by `scripts/session.sh`, which `scripts/test.sh` and `.ci/run` use).
//!
//! keyring v3 silently falls back to a mock store that keeps nothing when built
//! without platform features; these tests prove the real store is in use by writing a
//! secret in one process and reading it back in others.
//!
//! They need the session: with `TOKENWARDEN_TEST_KEYCHAIN=1` (set by scripts/test.sh)
//! they run and must pass; without it they say they were skipped.

use crate::support;

use std::time::Duration;
use support::*;
use tokenwarden::engine::store::{KeychainBackend, SecretStore};
use tokenwarden::engine::{Secret, Status};

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

/// `env`'s entries in the keychain, as the binary keeps them.
fn keychain_store(env: &TestEnv) -> SecretStore {
    SecretStore::new(KeychainBackend::new(env.service.clone())).for_config_dir(&env.config_dir)
}

/// The entries of earlier versions (`NAME/tokens`, one per workload name).
fn legacy_store(env: &TestEnv) -> SecretStore {
    SecretStore::new(KeychainBackend::new(env.service.clone()))
}

/// What the daemons of `test` wrote to stderr (their log file has the same lines).
fn daemon_stderr(test: &str) -> String {
    std::fs::read_dir(log_dir(test))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("daemon-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
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
    let store = keychain_store(&env);
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

/// Two config dirs, each with a workload `w`, in one keychain service (a second
/// profile, a test dir): each keeps its own login, refreshes at its own issuer with
/// its own refresh token, and `remove` in one leaves the other signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_config_dirs_with_a_workload_of_one_name_keep_their_own_logins() {
    if !keychain_available() {
        return;
    }
    let opts = || IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(2)
    };
    let (a, b) = (issuer(opts()).await, issuer(opts()).await);
    let one = keychain_env("keychain_two_dirs_one", &a);
    let mut two = keychain_env("keychain_two_dirs_two", &b);
    two.service = one.service.clone();
    assert!(one.login("w").await.ok());
    assert!(two.login("w").await.ok());
    one.start_daemon().await;
    two.start_daemon().await;

    // A few rotations each (a foreign or reused refresh token is `invalid_grant`).
    let (na, nb) = (a.refresh_requests(), b.refresh_requests());
    assert!(
        a.wait_for_refresh_requests(na + 2, Duration::from_secs(10))
            .await
    );
    assert!(
        b.wait_for_refresh_requests(nb + 2, Duration::from_secs(10))
            .await
    );
    for (env, own, other) in [(&one, &a, &b), (&two, &b, &a)] {
        let st = env
            .wait_for("w", Duration::from_secs(10), |w| {
                w.status == Status::Running && w.attempts == 0 && w.reason.is_none()
            })
            .await;
        assert!(st.access_token_valid, "{st:?}");
        let rt = keychain_store(env)
            .load_tokens("w")
            .await
            .unwrap()
            .and_then(|t| t.refresh_token)
            .expect("its own entry");
        let issued = |i: &SimIssuer| i.issued_tokens().iter().any(|t| t == rt.expose());
        assert!(issued(own) && !issued(other), "its own issuer's token");
    }

    let rm = one.run(&["remove", "w"]);
    assert!(rm.ok(), "{rm:?}");
    assert_eq!(keychain_store(&one).load_tokens("w").await.unwrap(), None);
    let nb = b.refresh_requests();
    assert!(
        b.wait_for_refresh_requests(nb + 2, Duration::from_secs(10))
            .await
    );
    let st = two
        .wait_for("w", Duration::from_secs(10), |w| {
            w.status == Status::Running && w.attempts == 0
        })
        .await;
    assert!(st.reason.is_none(), "{st:?}");
    assert!(keychain_store(&two)
        .load_tokens("w")
        .await
        .unwrap()
        .is_some());
}

/// The entries of an earlier version (`w/tokens`, `w/client`: one per workload name
/// for every config dir) move to the first config dir that reads them, once: the
/// daemon runs on them and says so in its log, and another config dir with a `w`
/// finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keychain_entries_of_an_earlier_version_move_to_the_first_config_dir_once() {
    if !keychain_available() {
        return;
    }
    let issuer = issuer(IssuerOptions {
        strict_rotation: true,
        ..issuer_opts(2)
    })
    .await;
    let env = keychain_env("keychain_migration", &issuer);
    let legacy = legacy_store(&env);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let tokens = tokenwarden::demo::stored_tokens(issuer.direct_login(&http).await.unwrap());
    legacy.save_tokens("w", &tokens).await.unwrap();
    legacy
        .save_client_secret("w", &Secret::new("registered-client-secret"))
        .await
        .unwrap();

    env.start_daemon().await;
    let n = issuer.refresh_requests();
    assert!(
        issuer
            .wait_for_refresh_requests(n + 1, Duration::from_secs(10))
            .await
    );
    let st = env
        .wait_for("w", Duration::from_secs(10), |w| {
            w.status == Status::Running && w.attempts == 0 && w.access_token_valid
        })
        .await;
    assert!(st.reason.is_none(), "{st:?}");
    assert_eq!(legacy.load_tokens("w").await.unwrap(), None, "moved");
    assert_eq!(legacy.load_client_secret("w").await.unwrap(), None, "moved");
    let store = keychain_store(&env);
    assert!(store.load_tokens("w").await.unwrap().is_some());
    assert_eq!(
        store.load_client_secret("w").await.unwrap(),
        Some(Secret::new("registered-client-secret"))
    );
    // (The log dir keeps earlier runs' files: this config dir's lines name its key.)
    let key = tokenwarden::engine::store::config_dir_key(&env.config_dir);
    let said = daemon_stderr("keychain_migration");
    let moved: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("moved a stored entry shared by every config dir"))
        .filter(|l| l.contains(&key))
        .collect();
    assert_eq!(moved.len(), 2, "one line per entry, once: {moved:#?}");

    // Another config dir with a workload `w` in the same keychain service.
    let mut other = keychain_env("keychain_migration_other", &issuer);
    other.service = env.service.clone();
    let tok = other.run(&["token", "w"]);
    assert_eq!(tok.code, Some(4), "a login is needed: {tok:?}");
    assert!(tok.stderr.contains("not logged in"), "{}", tok.stderr);
    env.stop_daemons();
    assert!(keychain_store(&env)
        .load_tokens("w")
        .await
        .unwrap()
        .is_some());
}
