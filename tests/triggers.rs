//! Triggers against real kernel events (root only): the issuer sits in a network
//! namespace reachable only over a veth pair; removing the host's address is a real
//! outage and re-adding it a real recovery, seen by the daemon through if-watch.
//! Traffic goes only to loopback and to the namespace this test made.

use crate::support;

use crate::support::netlab;

use std::time::{Duration, Instant};
use support::*;
use tokenwarden::engine::Status;

/// The daemon's policy for these tests: the short retry compressed, the `retrying`
/// cadence left at 10 minutes, so only a trigger can bring a workload back quickly.
fn slow_retrying(env: &mut TestEnv) {
    for (k, v) in [
        ("TOKENWARDEN_RETRYING_INTERVAL", "10m"),
        ("TOKENWARDEN_RETRYING_MAX_INTERVAL", "10m"),
    ] {
        env.extra_env.push((k.into(), v.into()));
    }
}

async fn lab_setup(test: &str) -> Option<(netlab::NetLab, SimIssuer, TestEnv)> {
    let lab = netlab::netlab()?;
    let issuer = SimIssuer::start_on(
        lab.bind_in_namespace(),
        IssuerOptions {
            ledger: ledger(),
            ..issuer_opts(60)
        },
    )
    .await
    .unwrap();
    let mut env = TestEnv::new(test);
    slow_retrying(&mut env);
    env.write_config(&format!(
        "{}{}\nallow_http = true\n",
        file_store_header(),
        workload_toml("w", &issuer).trim_end()
    ));
    env.start_daemon().await;
    assert!(env.login("w").await.ok());
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    Some((lab, issuer, env))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_up_brings_a_retrying_workload_back_within_3s() {
    let Some((lab, _issuer, env)) = lab_setup("net_recovery").await else {
        return;
    };

    // The VPN drops: the issuer is unreachable; "Retry now" makes the failure immediate.
    lab.address_down();
    assert!(env.run(&["retry", "w"]).ok());
    let st = env
        .wait_status("w", Status::Retrying, Duration::from_secs(20))
        .await;
    assert!(
        st.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("connection failed"),
        "{st:?}"
    );
    let next = st.next_attempt_at.unwrap() - time::OffsetDateTime::now_utc();
    assert!(
        next > time::Duration::minutes(5),
        "the schedule alone would wait {next}"
    );

    // The address comes back: the network trigger, not the schedule, recovers it.
    let t0 = Instant::now();
    lab.address_up();
    let back = env
        .wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    let took = t0.elapsed();
    eprintln!("recovered {took:?} after the address came back");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(back.detail.unwrap_or_default().contains("network changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_causes_a_bounded_number_of_refreshes() {
    let Some((lab, issuer, env)) = lab_setup("net_flapping").await else {
        return;
    };
    // Failing for a reason the network cannot fix, so every trigger's attempt fails.
    issuer.set_mode(Mode::Waf403);
    assert!(env.run(&["retry", "w"]).ok());
    env.wait_status("w", Status::Retrying, Duration::from_secs(20))
        .await;

    // 20 flaps in 10 s.
    let before = issuer.refresh_requests();
    for _ in 0..20 {
        lab.address_down();
        tokio::time::sleep(Duration::from_millis(250)).await;
        lab.address_up();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the last settle and any follow-up run.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = issuer.refresh_requests() - before;
    eprintln!("20 flaps in 10 s caused {sent} refresh requests");
    // The bound: network_burst (3) + one refill per network_refill (10 s) over ~14 s.
    assert!(sent >= 1, "the triggers did fire");
    assert!(sent <= 4, "{sent} refresh requests");
    issuer.set_mode(Mode::Healthy);
}
