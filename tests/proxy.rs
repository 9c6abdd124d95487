//! The local authenticating proxy, in-process: the real engine and its proxy between
//! a real HTTP client and the loopback fake remote (`SimRemote`, a protected resource
//! that checks bearer tokens against the `SimIssuer`).

#[path = "support/inproc.rs"]
mod inproc;
mod support;

use futures::StreamExt;
use inproc::*;
use std::time::{Duration, Instant};
use support::*;
use tokenwarden::engine::config::Config;
use tokenwarden::engine::{Engine, Status, WorkloadStatus};
use tokenwarden::sim_remote::{RemoteOptions, SimRemote};

struct Setup {
    engine: Engine,
    issuer: SimIssuer,
    remote: SimRemote,
    local: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// Workload `w` pointing at the fake remote, logged in, its engine (and proxy) up.
async fn setup(test: &str, lifetime: Duration, policy: &[(&str, &str)]) -> Setup {
    init_tracing(test);
    let issuer = issuer(IssuerOptions {
        access_token_lifetime: lifetime,
        ..IssuerOptions::default()
    })
    .await;
    let remote = SimRemote::start(issuer.clone(), RemoteOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workloads.toml");
    let text = format!(
        "{}\nurl = \"{}\"\n",
        workload_toml("w", &issuer).trim_end(),
        remote.url()
    );
    std::fs::write(&path, &text).unwrap();
    let mut cfg = Config::parse(&path, &text).unwrap();
    cfg.policy = fast_policy();
    for (k, v) in policy {
        cfg.policy
            .set(
                k,
                &tokenwarden::engine::policy::RawValue::Text(v.to_string()),
            )
            .unwrap();
    }
    let store = login_all(&cfg).await;
    let engine = start_engine(cfg, store, None);
    let s = wait_for_workload(&engine, "w", Duration::from_secs(5), |s| {
        s.status == Status::Running && s.local_url.is_some()
    })
    .await;
    Setup {
        engine,
        issuer,
        remote,
        local: s.local_url.unwrap(),
        dir,
        http: reqwest::Client::new(),
    }
}

async fn status(engine: &Engine) -> WorkloadStatus {
    engine.status().await.unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_remote_with_the_bearer_and_the_port_is_kept() {
    let s = setup("proxy_basic", Duration::from_secs(3600), &[]).await;
    assert!(s.local.starts_with("http://127.0.0.1:") && s.local.ends_with("/mcp"));
    let r = s
        .http
        .post(&s.local)
        .header("authorization", "Bearer the-clients-own-token")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let seen = s
        .remote
        .last_authorization()
        .expect("the remote saw a bearer");
    let token = seen.strip_prefix("Bearer ").expect("a bearer");
    assert!(
        s.issuer.is_valid_access_token(token),
        "the workload's token"
    );
    assert_ne!(token, "the-clients-own-token");

    // The port the system chose is written back, so client configs stay valid.
    let port: u16 = s.local["http://127.0.0.1:".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let path = s.dir.path().join("workloads.toml");
    let kept = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let cfg = Config::load(&path).unwrap();
            if let Some(p) = cfg.workloads[0].listen_port {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("listen_port written");
    assert_eq!(kept, port);

    // Reloading the file that now names the port changes nothing: the proxy (and a
    // stream open through it) stays up.
    let r = s
        .http
        .get(format!("{}/sse?n=30&interval_ms=20", s.local))
        .send()
        .await
        .unwrap();
    let mut cfg = Config::load(&path).unwrap();
    cfg.policy = fast_policy();
    s.engine.reload(Some(cfg), vec![]).await.unwrap();
    let events = r.text().await.unwrap().matches("data:").count();
    assert_eq!(events, 30, "the stream ran to its end across the reload");
    assert_eq!(
        status(&s.engine).await.local_url.as_deref(),
        Some(s.local.as_str())
    );

    // DNS rebinding: a page of another site resolving to 127.0.0.1 gets nothing.
    let r = s
        .http
        .get(&s.local)
        .header("host", format!("evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let before = s.remote.requests();
    let r = s
        .http
        .get(&s.local)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(s.remote.requests(), before, "refused requests never leave");
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one() {
    let s = setup("proxy_sse", Duration::from_secs(3600), &[]).await;
    let start = Instant::now();
    let r = s
        .http
        .get(format!("{}/sse?n=100&interval_ms=20", s.local))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("data:") {
                arrivals.push(start.elapsed());
            }
        }
    }
    assert_eq!(arrivals.len(), 100, "every event");
    let (first, last) = (arrivals[0], arrivals[99]);
    // 100 events 20 ms apart take about 2 s to send; a buffering proxy would hand
    // them all over at the end.
    assert!(
        last >= Duration::from_millis(1900),
        "the remote paces them: {last:?}"
    );
    assert!(
        first + Duration::from_millis(1500) < last,
        "first event at {first:?}, last at {last:?}: streamed, not buffered"
    );
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_serves_while_the_token_is_valid_then_503_then_serves_after_recovery() {
    let s = setup("proxy_outage", Duration::from_secs(3), &[]).await;
    s.issuer.set_mode(Mode::Down);
    // The refresh falls due (lead 20% of 3 s), fails, and the short retry runs out.
    let st = wait_for_workload(&s.engine, "w", Duration::from_secs(10), |w| {
        w.status == Status::Retrying
    })
    .await;
    assert!(st.access_token_valid, "still inside the token's lifetime");
    let r = s.http.get(&s.local).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "a valid token keeps serving while retrying"
    );

    wait_for_workload(&s.engine, "w", Duration::from_secs(10), |w| {
        !w.access_token_valid
    })
    .await;
    let served = s.remote.requests();
    let refreshes = s.issuer.refresh_requests();
    let r = s.http.get(&s.local).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry_after));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "token_unavailable", "{v}");
    assert_eq!(v["status"], "retrying");
    assert!(
        v["message"].as_str().unwrap().contains("keeps retrying"),
        "{v}"
    );
    for _ in 0..20 {
        assert_eq!(s.http.get(&s.local).send().await.unwrap().status(), 503);
    }
    assert_eq!(s.remote.requests(), served, "nothing sent without a token");
    assert!(
        s.issuer.refresh_requests() <= refreshes + 2,
        "a busy client does not turn into refreshes"
    );

    s.issuer.set_mode(Mode::Healthy);
    wait_for_workload(&s.engine, "w", Duration::from_secs(10), |w| {
        w.status == Status::Running && w.access_token_valid
    })
    .await;
    let r = s.http.get(&s.local).send().await.unwrap();
    assert_eq!(r.status(), 200, "serving again, no restart");
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_once_refreshes_once_and_replays() {
    let s = setup("proxy_401", Duration::from_secs(3600), &[]).await;
    let refreshes = s.issuer.refresh_requests();
    s.remote.reject_next_valid_token();
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#;
    let r = s.http.post(&s.local).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200, "replayed with the fresh token");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], body.len(), "the body was sent again whole");
    assert_eq!(
        s.issuer.refresh_requests(),
        refreshes + 1,
        "exactly one refresh"
    );
    let st = status(&s.engine).await;
    assert_eq!(st.status, Status::Running);
    assert_eq!(st.attempts, 0);

    // Concurrent 401s share one refresh (single-flight).
    s.remote.reject_next_valid_token();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (http, url) = (s.http.clone(), s.local.clone());
        calls.push(tokio::spawn(async move {
            http.post(url).body("{}").send().await.unwrap().status()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(s.issuer.refresh_requests(), refreshes + 2);

    // A body too large to hold is not replayed, but the token is refreshed and the
    // client is told to send again.
    s.remote.reject_next_valid_token();
    let big = vec![b'x'; 200 * 1024];
    let r = s.http.post(&s.local).body(big).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "token_refreshed", "{v}");
    assert_eq!(s.issuer.refresh_requests(), refreshes + 3);

    // A remote that keeps refusing tokens cannot turn every request into a refresh:
    // three per 30 s, then the client hears why.
    s.remote.reject_next_valid_token();
    let r = s.http.post(&s.local).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("keeps rejecting"),
        "{v}"
    );
    assert_eq!(
        s.issuer.refresh_requests(),
        refreshes + 3,
        "no fourth refresh"
    );
    assert_eq!(status(&s.engine).await.status, Status::Running);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_answers_503_unauthenticated_never_401() {
    let s = setup("proxy_unauth", Duration::from_secs(3600), &[]).await;
    s.issuer.revoke_all();
    // The remote refuses the revoked token; the refresh gets invalid_grant.
    let r = s.http.get(&s.local).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unauthenticated", "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("tokenwarden login w"));
    assert_eq!(status(&s.engine).await.status, Status::Unauthenticated);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_times_out_and_a_client_leaving_mid_stream_is_harmless() {
    let s = setup(
        "proxy_hang",
        Duration::from_secs(3600),
        &[("proxy_upstream_timeout", "500ms")],
    )
    .await;
    // A client leaves in the middle of a stream.
    let r = s
        .http
        .get(format!("{}/sse?n=100&interval_ms=20", s.local))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);

    s.remote.set_hang(true);
    let t = Instant::now();
    let r = s.http.get(&s.local).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_secs(5));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_timeout");
    s.remote.set_hang(false);
    assert_eq!(s.http.get(&s.local).send().await.unwrap().status(), 200);
    assert_eq!(status(&s.engine).await.status, Status::Running);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_ways() {
    let s = setup("proxy_large", Duration::from_secs(3600), &[]).await;
    let size = 32 * 1024 * 1024;
    let chunks = futures::stream::iter(
        (0..size / 65536).map(|i| Ok::<_, std::io::Error>(vec![(i % 251) as u8; 65536])),
    );
    let r = s
        .http
        .post(format!("{}/echo", s.local))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0usize;
    let mut stream = r.bytes_stream();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        for (k, b) in c.iter().enumerate() {
            let i = (got + k) / 65536;
            assert_eq!(*b, (i % 251) as u8);
        }
        got += c.len();
    }
    assert_eq!(got, size);
    s.engine.shutdown().await;
}
