//! The engine in-process against a real loopback issuer (`SimIssuer`), with the policy
//! compressed to milliseconds. Store: the in-memory store (these tests are about the
//! monitor; the keychain has its own tests in `keychain.rs`).

use crate::support;
use crate::support::inproc;

use inproc::*;
use std::time::Duration;
use support::*;
use tokenwarden::engine::config::Config;
use tokenwarden::engine::oauth;
use tokenwarden::engine::store::SecretStore;
use tokenwarden::engine::{Clock, Engine, EngineOptions, Status};

struct Setup {
    engine: Engine,
    issuer: SimIssuer,
    store: SecretStore,
    _dir: tempfile::TempDir,
}

/// One workload `w` logged in for real (code + PKCE through the issuer), then an
/// engine started over it.
async fn setup(test: &str, opts: IssuerOptions) -> Setup {
    init_tracing(test);
    let issuer = issuer(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workloads.toml");
    let mut cfg = Config::parse(&path, &workload_toml("w", &issuer)).unwrap();
    cfg.policy = fast_policy();
    let store = login_all(&cfg).await;
    let engine = start_engine(cfg, store.clone(), Some(dir.path().join("state.json")));
    Setup {
        engine,
        issuer,
        store,
        _dir: dir,
    }
}

/// Wait until `pred` holds for workload `w`, driven by status change events.
async fn wait_for(
    engine: &Engine,
    timeout: Duration,
    pred: impl Fn(&tokenwarden::engine::WorkloadStatus) -> bool,
) -> tokenwarden::engine::WorkloadStatus {
    wait_for_workload(engine, "w", timeout, pred).await
}

/// "Retry now", then wait for the refresh it caused to succeed.
async fn retry_until_refreshed(engine: &Engine) {
    let mut rx = engine.subscribe();
    engine.retry(Some("w")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ev) = rx.recv().await {
                if ev.refreshed {
                    return;
                }
            }
        }
    })
    .await
    .expect("a successful refresh");
}

/// Track every status the workload passes through.
fn record_statuses(engine: &Engine) -> std::sync::Arc<std::sync::Mutex<Vec<Status>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut rx = engine.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv().await {
            s2.lock().unwrap().push(ev.workload.status);
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_reproduction_waf_403_longer_than_short_retry_then_heals_by_itself() {
    let s = setup("seed_reproduction", issuer_opts(2)).await;
    let seen = record_statuses(&s.engine);
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running && w.access_token_valid
    })
    .await;

    // The laptop leaves the VPN: the token endpoint answers 403 + HTML.
    s.issuer.set_mode(Mode::Waf403);
    let retrying = wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Retrying
    })
    .await;
    let reason = retrying.reason.clone().unwrap();
    assert!(reason.starts_with("HTTP 403"), "{reason}");
    assert!(reason.contains("web page"), "{reason}");
    assert!(
        retrying.hint.is_none(),
        "no registration hint for a transient block"
    );
    assert!(retrying.gives_up_at.is_some() && retrying.next_attempt_at.is_some());
    assert!(retrying.attempts >= 3);

    // Stay blocked well past the short retry (several retrying attempts).
    let before = s.issuer.refresh_requests();
    assert!(
        s.issuer
            .wait_for_refresh_requests(before + 3, Duration::from_secs(10))
            .await
    );
    assert_eq!(s.engine.status().await.unwrap()[0].status, Status::Retrying);

    // The VPN is back: no user action.
    s.issuer.set_mode(Mode::Healthy);
    let back = wait_for(&s.engine, Duration::from_secs(5), |w| {
        w.status == Status::Running && w.attempts == 0
    })
    .await;
    assert!(back.access_token_valid && back.reason.is_none());
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.contains(&Status::Unauthenticated),
        "never wrongly unauthenticated: {seen:?}"
    );
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_is_unauthenticated_at_once_with_the_code_and_a_hint() {
    let s = setup("invalid_grant", issuer_opts(2)).await;
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    s.issuer.revoke_all();
    let before = s.issuer.refresh_requests();
    s.engine.retry(Some("w")).await.unwrap();
    let u = wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Unauthenticated
    })
    .await;
    assert_eq!(u.reason.as_deref(), Some("invalid_grant"));
    assert!(u.hint.unwrap().contains("Re-authenticate"));
    assert!(u.gives_up_at.is_none() && u.next_attempt_at.is_none());
    // One refresh, no short retry on a verdict, and no automatic attempts afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.issuer.refresh_requests(), before + 1);
    let e = s.engine.token("w").await.unwrap_err();
    assert_eq!(e.code(), "unauthenticated");
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let s = setup("retry_after", issuer_opts(30)).await;
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    s.issuer.set_mode(Mode::RateLimited {
        retry_after: "2".into(),
    });
    let before = s.issuer.refresh_requests();
    s.engine.retry(Some("w")).await.unwrap();
    let st = wait_for(&s.engine, Duration::from_secs(5), |w| w.attempts == 1).await;
    assert!(
        st.reason.as_deref().unwrap().starts_with("HTTP 429"),
        "{:?}",
        st.reason
    );
    let next = st.next_attempt_at.unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert!(
        next - now > time::Duration::milliseconds(1500),
        "next attempt honours Retry-After: {next} vs {now}"
    );
    // The short retry would have tried again after ~50 ms; Retry-After holds it for 2 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        s.issuer.refresh_requests(),
        before + 1,
        "no request inside Retry-After"
    );
    // The issuer recovers; the scheduled attempt after Retry-After brings it back.
    s.issuer.set_mode(Mode::Healthy);
    wait_for(&s.engine, Duration::from_secs(5), |w| {
        w.status == Status::Running && w.attempts == 0
    })
    .await;
    assert_eq!(s.issuer.refresh_requests(), before + 2);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_refresh_token_keeps_the_old_one() {
    let s = setup(
        "no_rotation",
        IssuerOptions {
            rotate_refresh_tokens: false,
            ..issuer_opts(30)
        },
    )
    .await;
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    let rt_before = s
        .store
        .load_tokens("w")
        .await
        .unwrap()
        .unwrap()
        .refresh_token;
    for _ in 0..3 {
        retry_until_refreshed(&s.engine).await;
    }
    wait_for(&s.engine, Duration::from_secs(5), |w| {
        w.status == Status::Running
    })
    .await;
    let stored = s.store.load_tokens("w").await.unwrap().unwrap();
    assert_eq!(stored.refresh_token, rt_before, "old refresh token kept");
    assert!(s.issuer.is_valid_access_token(stored.access_token.expose()));
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_after_another_writer_rotated_adopts_the_new_token() {
    let s = setup("rotated_elsewhere", issuer_opts(30)).await;
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    // Another process refreshes with the stored refresh token and saves the result
    // (as `tokenwarden token` does without a daemon), invalidating the engine's copy.
    let stored = s.store.load_tokens("w").await.unwrap().unwrap();
    let cfg = Config::parse(
        std::path::Path::new("/x/workloads.toml"),
        &workload_toml("w", &s.issuer),
    )
    .unwrap();
    let http = oauth::http_client(&fast_policy(), None).unwrap();
    let resp = oauth::refresh(
        &oauth::Transport::Http(http),
        &cfg.workloads[0],
        stored.refresh_token.as_ref().unwrap(),
        None,
        &fast_policy(),
    )
    .await
    .unwrap();
    let (mut newer, _) = oauth::to_stored(resp, None, std::time::SystemTime::now(), &fast_policy());
    // Make the other writer's access token look expired, so the engine must refresh
    // with the re-read refresh token rather than just adopt it.
    newer.expires_at = Some(1);
    s.store.save_tokens("w", &newer).await.unwrap();

    let n = s.issuer.refresh_requests();
    retry_until_refreshed(&s.engine).await;
    assert_eq!(
        s.issuer.refresh_requests(),
        n + 2,
        "the refused try, then the re-read token"
    );
    let st = s.engine.status().await.unwrap().remove(0);
    assert_eq!(st.status, Status::Running, "{st:#?}");
    assert!(st.access_token_valid);
    let now = s.store.load_tokens("w").await.unwrap().unwrap();
    assert!(s
        .issuer
        .is_valid_refresh_token(now.refresh_token.as_ref().unwrap().expose()));
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_gives_up_without_a_hint_and_user_retry_recovers() {
    init_tracing("ceiling");
    let issuer = issuer(issuer_opts(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::parse(
        &dir.path().join("workloads.toml"),
        &workload_toml("w", &issuer),
    )
    .unwrap();
    cfg.policy = fast_policy();
    cfg.policy.retrying_ceiling = Duration::from_millis(1500);
    let store = login_all(&cfg).await;
    let engine = start_engine(cfg, store, None);
    wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    issuer.set_mode(Mode::Status {
        status: 503,
        content_type: "text/plain".into(),
        body: "down".into(),
    });
    engine.retry(Some("w")).await.unwrap();
    let u = wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Unauthenticated
    })
    .await;
    let reason = u.reason.unwrap();
    assert!(reason.starts_with("gave up after"), "{reason}");
    assert!(reason.contains("HTTP 503"), "{reason}");
    assert!(u.hint.is_none(), "no registration hint after a ceiling");
    issuer.set_mode(Mode::Healthy);
    engine.retry(Some("w")).await.unwrap();
    wait_for(&engine, Duration::from_secs(5), |w| {
        w.status == Status::Running
    })
    .await;
    engine.shutdown().await;
}

/// Hostile and broken answers: none may panic or wedge the monitor, and each heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_token_responses_never_wedge_a_monitor() {
    let s = setup("hostile", issuer_opts(30)).await;
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    let modes = vec![
        (
            Mode::Huge {
                bytes: 50 * 1024 * 1024,
            },
            "response too large",
        ),
        (Mode::ResetMidBody, "connection broken"),
        (Mode::LoginPage200, "HTTP 200"),
        (Mode::Hang, "timeout"),
        (
            Mode::Trickle {
                bytes_per_second: 2,
            },
            "timeout",
        ),
        (
            Mode::Status {
                status: 200,
                content_type: "application/json".into(),
                body: r#"{"access_token":"#.into(),
            },
            "HTTP 200",
        ),
        (
            Mode::Status {
                status: 200,
                content_type: "application/json".into(),
                body: r#"{"token_type":"Bearer"}"#.into(),
            },
            "HTTP 200",
        ),
        (
            Mode::Status {
                status: 200,
                content_type: "application/octet-stream".into(),
                body: "\u{fffd}\u{0}".into(),
            },
            "HTTP 200",
        ),
        (
            Mode::Status {
                status: 302,
                content_type: "text/html".into(),
                body: "<a href=/portal>".into(),
            },
            "HTTP 302",
        ),
    ];
    for (mode, want) in modes {
        let label = format!("{mode:?}");
        s.issuer.set_mode(mode);
        s.engine.retry(Some("w")).await.unwrap();
        let st = wait_for(&s.engine, Duration::from_secs(10), |w| w.attempts >= 1).await;
        let reason = st.reason.clone().unwrap_or_default();
        assert!(reason.starts_with(want), "{label}: {reason}");
        assert_ne!(st.status, Status::Unauthenticated, "{label}");
        // Still responsive while failing.
        tokio::time::timeout(Duration::from_secs(1), s.engine.status())
            .await
            .expect("responsive")
            .unwrap();
        s.issuer.set_mode(Mode::Healthy);
        s.engine.retry(Some("w")).await.unwrap();
        wait_for(&s.engine, Duration::from_secs(10), |w| {
            w.status == Status::Running && w.attempts == 0
        })
        .await;
    }
    // Odd expires_in values are survivable: the token is used with an assumed lifetime.
    for body in [
        r#"{"access_token":"sim_at_odd1","expires_in":-1}"#,
        r#"{"access_token":"sim_at_odd2","expires_in":"soon"}"#,
        r#"{"access_token":"sim_at_odd3","expires_in":1e30}"#,
    ] {
        s.issuer.set_mode(Mode::Status {
            status: 200,
            content_type: "application/json".into(),
            body: body.into(),
        });
        retry_until_refreshed(&s.engine).await;
        let st = wait_for(&s.engine, Duration::from_secs(5), |w| {
            w.status == Status::Running && w.attempts == 0
        })
        .await;
        assert!(st.access_token_valid, "{body}");
    }
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_status_survives_a_restart_and_the_ceiling_keeps_counting() {
    init_tracing("restart_persist");
    let issuer = issuer(issuer_opts(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut cfg = Config::parse(
        &dir.path().join("workloads.toml"),
        &workload_toml("w", &issuer),
    )
    .unwrap();
    cfg.policy = fast_policy();
    let store = login_all(&cfg).await;
    let start = |cfg: Config| start_engine(cfg, store.clone(), Some(state.clone()));
    let engine = start(cfg.clone());
    wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    issuer.set_mode(Mode::Waf403);
    engine.retry(Some("w")).await.unwrap();
    let r1 = wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Retrying
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r1b = engine.status().await.unwrap().remove(0);
    engine.shutdown().await;

    let engine = start(cfg);
    let r2 = engine.status().await.unwrap().remove(0);
    // Right after restart the monitor restores the episode before its first attempt.
    let r2 = if r2.status == Status::Retrying {
        r2
    } else {
        wait_for(&engine, Duration::from_secs(5), |w| {
            w.status == Status::Retrying
        })
        .await
    };
    assert_eq!(r2.since, r1.since, "retrying since the same moment");
    assert!(r2.attempts >= r1b.attempts, "attempts carried over");
    // The ceiling did not restart: gives_up_at stays (within scheduling noise) where it was.
    let drift = (r2.gives_up_at.unwrap() - r1b.gives_up_at.unwrap()).abs();
    assert!(
        drift < time::Duration::seconds(2),
        "gives_up_at moved by {drift}"
    );
    issuer.set_mode(Mode::Healthy);
    wait_for(&engine, Duration::from_secs(5), |w| {
        w.status == Status::Running
    })
    .await;
    engine.shutdown().await;
}

/// `n` workloads of one issuer, logged in, then all in `retrying` behind a WAF 403
/// with a fixed retrying cadence.
async fn all_retrying_at_one_issuer(
    test: &str,
    n: usize,
    cadence: Duration,
) -> (Engine, SimIssuer, tempfile::TempDir) {
    init_tracing(test);
    let issuer = issuer(issuer_opts(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..n)
        .map(|i| workload_toml(&format!("w{i:02}"), &issuer))
        .collect();
    let mut cfg = Config::parse(&dir.path().join("workloads.toml"), &text).unwrap();
    cfg.policy = fast_policy();
    cfg.policy.retrying_interval = cadence;
    cfg.policy.retrying_max_interval = cadence;
    let store = login_all(&cfg).await;
    let engine = start_engine(cfg, store, None);
    tokio::time::timeout(Duration::from_secs(10), wait_all(&engine, Status::Running))
        .await
        .unwrap();
    issuer.set_mode(Mode::Waf403);
    engine.retry(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), wait_all(&engine, Status::Retrying))
        .await
        .unwrap();
    (engine, issuer, dir)
}

/// 20 workloads on one issuer in `retrying` (cadence 10 min): the first success
/// brings every one of them back within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_fan_out_brings_twenty_siblings_back_within_a_second() {
    let (engine, issuer, _dir) =
        all_retrying_at_one_issuer("fan_out", 20, Duration::from_secs(600)).await;
    let all = |st: Status| wait_all(&engine, st);

    issuer.set_mode(Mode::Healthy);
    let t0 = std::time::Instant::now();
    engine.retry(Some("w00")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), all(Status::Running))
        .await
        .unwrap();
    let took = t0.elapsed();
    eprintln!("20 workloads back {took:?} after the first success was asked for");
    assert!(took < Duration::from_secs(1), "{took:?}");
    for w in engine.status().await.unwrap() {
        if w.name != "w00" {
            assert!(w
                .detail
                .unwrap_or_default()
                .contains("another workload on this issuer recovered"));
        }
    }
    engine.shutdown().await;
}

/// A long outage at one token endpoint: once every workload is in its failure
/// episode, a scheduled attempt is not sent when a sibling just failed the same way,
/// so the issuer sees about one probe per backoff interval, not one per workload;
/// when the probe succeeds the fan-out brings everyone back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_is_probed_once_per_issuer_not_once_per_workload() {
    let (engine, issuer, _dir) =
        all_retrying_at_one_issuer("probe_per_issuer", 10, Duration::from_millis(200)).await;
    let all = |st: Status| wait_all(&engine, st);

    let before = issuer.refresh_requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = issuer.refresh_requests() - before;
    // Ten workloads on their own 200 ms schedules would send about 100.
    eprintln!("10 workloads, 2 s of retrying at 200 ms: {sent} refresh requests");
    assert!((5..=25).contains(&sent), "{sent} requests");
    let list = engine.status().await.unwrap();
    assert!(list.iter().all(|w| w.status == Status::Retrying));
    assert!(
        list.iter()
            .all(|w| w.reason.as_deref().unwrap_or("").contains("403")),
        "every workload shows the cause: {list:#?}"
    );

    issuer.set_mode(Mode::Healthy);
    tokio::time::timeout(Duration::from_secs(3), all(Status::Running))
        .await
        .expect("the next probe succeeds and the fan-out brings the rest back");
    engine.shutdown().await;
}

/// An injected 8-hour sleep (the wall clock jumps, the awake clock does not): the
/// token that expired "during sleep" is refreshed at once, the retrying workload is
/// tried at once, and its ceiling has not advanced by 8 hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_8_hour_wake_jump_expired_tokens_refresh_at_once_and_the_ceiling_holds() {
    init_tracing("wake_jump");
    let healthy = issuer(issuer_opts(600)).await;
    let blocked = issuer(issuer_opts(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}",
        workload_toml("a", &healthy),
        workload_toml("b", &blocked)
    );
    let mut cfg = Config::parse(&dir.path().join("workloads.toml"), &text).unwrap();
    cfg.policy = fast_policy();
    cfg.policy.retrying_interval = Duration::from_secs(600);
    cfg.policy.retrying_max_interval = Duration::from_secs(600);
    cfg.policy.wall_check_interval = Duration::from_secs(600); // only the wake trigger may act
    cfg.policy.wake_check_interval = Duration::from_millis(100);
    cfg.policy.wake_spread = Duration::from_millis(300);
    let store = login_all(&cfg).await;
    let clock = Clock::virtual_from(std::time::SystemTime::now());
    let engine = Engine::start(EngineOptions {
        clock: clock.clone(),
        sources: tokenwarden::engine::triggers::Sources {
            network: false,
            wake_clock: true,
            logind: false,
        },
        ..EngineOptions::new(cfg, store)
    });
    let get = |name: &'static str| {
        let engine = engine.clone();
        async move {
            engine
                .status()
                .await
                .unwrap()
                .into_iter()
                .find(|w| w.name == name)
                .unwrap()
        }
    };
    let wait =
        |name: &'static str,
         pred: Box<dyn Fn(&tokenwarden::engine::WorkloadStatus) -> bool + Send>| {
            let engine = engine.clone();
            async move {
                let mut rx = engine.subscribe();
                tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        if let Some(w) = engine
                            .status()
                            .await
                            .unwrap()
                            .into_iter()
                            .find(|w| w.name == name)
                        {
                            if pred(&w) {
                                return w;
                            }
                        }
                        let _ = rx.recv().await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {name}"))
            }
        };
    wait("a", Box::new(|w| w.status == Status::Running)).await;
    blocked.set_mode(Mode::Waf403);
    engine.retry(Some("b")).await.unwrap();
    let b0 = wait("b", Box::new(|w| w.status == Status::Retrying)).await;
    let a0 = get("a").await;
    assert!(a0.access_token_valid);

    // Sleep for 8 hours.
    let n_a = healthy.refresh_requests();
    let n_b = blocked.refresh_requests();
    clock.jump_wall(Duration::from_secs(8 * 3600));

    // "a": its token expired during the sleep and is refreshed right after wake.
    let before = a0.access_token_expires_at.unwrap() + time::Duration::hours(8);
    let a1 = wait(
        "a",
        Box::new(move |w| w.access_token_expires_at.is_some_and(|e| e > before)),
    )
    .await;
    assert_eq!(a1.status, Status::Running);
    assert_eq!(healthy.refresh_requests(), n_a + 1);
    assert!(a1.detail.unwrap_or_default().contains("woke from sleep"));

    // "b": attempted right after wake, and the ceiling did not count the sleep.
    let b1 = wait("b", Box::new(move |w| w.attempts > b0.attempts)).await;
    assert_eq!(blocked.refresh_requests(), n_b + 1);
    assert_eq!(b1.status, Status::Retrying);
    let moved = b1.gives_up_at.unwrap() - b0.gives_up_at.unwrap();
    assert!(
        (moved - time::Duration::hours(8)).abs() < time::Duration::seconds(5),
        "gives_up_at moved by {moved}: the 8 h of sleep did not count"
    );
    engine.shutdown().await;
}

/// A mass wake (everything due at once) never puts more than `issuer_max_concurrent`
/// refreshes in flight at one issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_at_one_issuer_are_capped_after_a_mass_wake() {
    init_tracing("issuer_cap");
    let issuer = issuer(IssuerOptions {
        refresh_delay: Duration::from_millis(100),
        ..issuer_opts(600)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("w{i:02}")).collect();
    let text: String = names.iter().map(|n| workload_toml(n, &issuer)).collect();
    let mut cfg = Config::parse(&dir.path().join("workloads.toml"), &text).unwrap();
    cfg.policy = fast_policy();
    cfg.policy.issuer_max_concurrent = 4;
    let store = login_all(&cfg).await;
    let engine = start_engine(cfg, store, None);
    let mut rx = engine.subscribe();
    let before = issuer.refresh_requests();
    engine.retry(None).await.unwrap();
    let mut refreshed = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while refreshed.len() < names.len() {
            if let Ok(ev) = rx.recv().await {
                if ev.refreshed {
                    refreshed.insert(ev.workload.name);
                }
            }
        }
    })
    .await
    .expect("every workload refreshed");
    assert_eq!(issuer.refresh_requests() - before, 30);
    let peak = issuer.max_concurrent_refreshes();
    eprintln!("peak concurrent refreshes at the issuer: {peak}");
    assert!(peak <= 4, "peak {peak}");
    assert!(peak >= 2, "still concurrent, not serialized: {peak}");
    engine.shutdown().await;
}

/// Token requests waiting on a refresh that hangs, then the workload is removed from
/// the configuration: every caller gets an answer once the in-flight refresh gives up
/// at the HTTP timeout (the access token, still valid, since they asked before the
/// removal; or "stopped"), none waits forever, and the name is unknown afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_a_refresh_are_answered_when_the_workload_is_removed() {
    let s = setup("removed_while_waiting", issuer_opts(60)).await;
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    s.issuer.set_mode(Mode::Hang);
    let before = s.issuer.refresh_requests();
    s.engine.retry(Some("w")).await.unwrap();
    // Once the issuer holds the refresh (hanging), token requests wait for it.
    assert!(
        s.issuer
            .wait_for_refresh_requests(before + 1, Duration::from_secs(10))
            .await
    );
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let e = s.engine.clone();
            tokio::spawn(async move { e.token("w").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "they wait for the refresh"
    );

    let empty = Config::parse(&s._dir.path().join("workloads.toml"), "").unwrap();
    let t0 = std::time::Instant::now();
    s.engine.reload(Some(empty), Vec::new()).await.unwrap();
    for t in waiting {
        let r = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("answered, not left waiting")
            .unwrap();
        // A request the monitor had taken waits for the refresh and gets the still valid
        // token; one still queued at the removal (a slow machine) is told it stopped.
        if let Err(e) = r {
            assert_eq!(e.code(), "stopped", "{e}");
        }
    }
    // Bounded by the HTTP timeout (2 s here) plus the grace for the in-flight refresh.
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
    assert!(s.engine.status().await.unwrap().is_empty());
    let e = s.engine.token("w").await.expect_err("removed");
    assert_eq!(e.code(), "unknown_workload");
    s.engine.shutdown().await;
}

/// A policy change restarts the monitors, except a change of `config_check_interval`
/// alone (only the config watcher reads it). A restart shows as a first report
/// (`previous: null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_policy_changes_that_matter_to_monitors_restart_them() {
    let s = setup("policy_restart", issuer_opts(60)).await;
    wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    let path = s._dir.path().join("workloads.toml");
    let reload_with = |edit: &dyn Fn(&mut tokenwarden::engine::policy::Policy)| {
        let mut cfg = Config::parse(&path, &workload_toml("w", &s.issuer)).unwrap();
        cfg.policy = fast_policy();
        edit(&mut cfg.policy);
        cfg
    };
    let restarted =
        |rx: &mut tokio::sync::broadcast::Receiver<tokenwarden::engine::StatusChange>| {
            let mut first_report = false;
            while let Ok(ev) = rx.try_recv() {
                first_report |= ev.previous.is_none();
            }
            first_report
        };

    let mut rx = s.engine.subscribe();
    let cfg = reload_with(&|p| p.config_check_interval = Duration::from_secs(9));
    s.engine.reload(Some(cfg), Vec::new()).await.unwrap();
    // Nothing to wait for when nothing happens: give a restart the time it would take.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !restarted(&mut rx),
        "config_check_interval alone restarts nothing"
    );

    let cfg = reload_with(&|p| {
        p.config_check_interval = Duration::from_secs(9);
        p.retrying_interval = Duration::from_millis(150);
    });
    s.engine.reload(Some(cfg), Vec::new()).await.unwrap();
    let first_report = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(ev) = rx.recv().await {
            if ev.previous.is_none() {
                return;
            }
        }
    })
    .await;
    assert!(
        first_report.is_ok(),
        "a retry policy change restarts the monitor"
    );
    s.engine.shutdown().await;
}

/// A workload whose `url` now names another remote (a hand edit while the engine
/// runs) does not get its stored login: the access token would go to that remote. It
/// says to log in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_made_for_another_remote_is_not_used_after_an_edit() {
    init_tracing("login_for_another_remote");
    let issuer = issuer(issuer_opts(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workloads.toml");
    let with_url = |url: &str| {
        let mut cfg = Config::parse(
            &path,
            &format!("{}url = \"{url}\"\n", workload_toml("w", &issuer)),
        )
        .unwrap();
        cfg.policy = fast_policy();
        cfg
    };
    let cfg = with_url("http://127.0.0.1:9/mcp");
    let store = SecretStore::memory().for_config_dir(dir.path());
    login_in_process(&cfg, "w", &store).await;
    let engine = start_engine(cfg.clone(), store.clone(), None);
    wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Running && w.access_token_valid
    })
    .await;
    assert!(engine.token("w").await.is_ok());

    engine
        .reload(Some(with_url("http://127.0.0.1:9/other")), vec![])
        .await
        .unwrap();
    let st = wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Unauthenticated
    })
    .await;
    assert!(
        st.reason.as_deref().unwrap().contains("another url"),
        "{st:?}"
    );
    assert_eq!(
        st.hint.as_deref(),
        Some("Log in again: tokenwarden login w")
    );
    assert!(!st.access_token_valid, "{st:?}");
    let refused = engine.token("w").await.unwrap_err();
    assert_eq!(refused.code(), "unauthenticated", "{refused}");

    // Undoing the edit brings the login back.
    engine.reload(Some(cfg), vec![]).await.unwrap();
    wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Running && w.access_token_valid
    })
    .await;
    engine.shutdown().await;
}
