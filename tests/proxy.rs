//! The local authenticating proxy, in-process: the real engine and its proxy between
//! a real HTTP client and the loopback fake remote (`SimRemote`, a protected resource
//! that checks bearer tokens against the `SimIssuer`).

use crate::support;
use crate::support::inproc;

use futures::StreamExt;
use inproc::*;
use std::time::{Duration, Instant};
use support::*;
use tokenwarden::engine::config::Config;
use tokenwarden::engine::{Engine, Status, WorkloadStatus};
use tokenwarden_sim::remote::{RemoteOptions, SimRemote};

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
    let opts = IssuerOptions {
        access_token_lifetime: lifetime,
        ..IssuerOptions::default()
    };
    setup_with(test, opts, RemoteOptions::default(), policy).await
}

async fn setup_with(
    test: &str,
    issuer_opts: IssuerOptions,
    remote_opts: RemoteOptions,
    policy: &[(&str, &str)],
) -> Setup {
    init_tracing(test);
    let issuer = issuer(issuer_opts).await;
    let remote = SimRemote::start(issuer.clone(), remote_opts).await.unwrap();
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
    let opts = IssuerOptions {
        access_token_lifetime: Duration::from_secs(3600),
        refresh_delay: Duration::from_millis(300),
        ..IssuerOptions::default()
    };
    let s = setup_with("proxy_401", opts, RemoteOptions::default(), &[]).await;
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

    // Concurrent 401s share one refresh (single-flight): the remote refuses the
    // current token on every request until a refresh; it holds the five requests
    // until all have arrived with that token, then refuses them at once, and the
    // issuer is slow (`refresh_delay`), so the five rejections overlap the refresh.
    s.remote.reject_tokens_issued_so_far();
    let refused = s.remote.unauthorized_responses();
    let arrived = s.remote.requests();
    s.remote.set_hang(true);
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (http, url) = (s.http.clone(), s.local.clone());
        calls.push(tokio::spawn(async move {
            http.post(url).body("{}").send().await.unwrap().status()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.remote.requests() < arrived + 5 {
        assert!(
            Instant::now() < deadline,
            "the five requests reach the remote"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.remote.set_hang(false);
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(
        s.remote.unauthorized_responses(),
        refused + 5,
        "all five met the refused token"
    );
    assert_eq!(
        s.issuer.refresh_requests(),
        refreshes + 2,
        "one refresh for five 401s"
    );
    assert_eq!(s.issuer.max_concurrent_refreshes(), 1, "never two at once");

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

/// The proxy's port in a `local_url`.
fn port_of(local: &str) -> u16 {
    local["http://127.0.0.1:".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_get_403_and_nothing_is_forwarded() {
    let s = setup("proxy_web_pages", Duration::from_secs(3600), &[]).await;
    let port = port_of(&s.local);
    let before = s.remote.requests();
    let refused = |r: reqwest::Response, code: &'static str| async move {
        assert_eq!(r.status(), 403);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], code, "{v}");
        assert!(!v["message"].as_str().unwrap().is_empty(), "{v}");
    };
    // A sandboxed iframe, a file:// page, a data: URL: Origin `null`.
    let r = s
        .http
        .post(&s.local)
        .header("origin", "null")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    refused(r, "foreign_origin").await;
    // Another local web app, another port of this machine.
    let r = s
        .http
        .post(&s.local)
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    refused(r, "foreign_origin").await;
    // A browser's no-Origin GET (`<img src>`, a top-level navigation from elsewhere).
    for site in ["cross-site", "same-site"] {
        let r = s
            .http
            .get(&s.local)
            .header("sec-fetch-site", site)
            .send()
            .await
            .unwrap();
        refused(r, "cross_site").await;
    }
    // A CORS preflight is answered by the proxy, even from its own origin.
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, &s.local)
        .header("origin", format!("http://127.0.0.1:{port}"))
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    refused(r, "cors_preflight").await;
    assert_eq!(s.remote.requests(), before, "refused requests never leave");

    // The proxy's own origins, and what a browser sends for them, pass.
    for origin in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
    ] {
        let r = s
            .http
            .post(&s.local)
            .header("origin", &origin)
            .header("sec-fetch-site", "same-origin")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{origin}");
    }
    let r = s
        .http
        .get(&s.local)
        .header("sec-fetch-site", "none")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "typed into the address bar");
    assert_eq!(s.remote.requests(), before + 4);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_and_cors_headers_stay_on_their_side() {
    let remote = RemoteOptions {
        browser_headers: true,
        ..RemoteOptions::default()
    };
    let s = setup_with("proxy_cookies", IssuerOptions::default(), remote, &[]).await;
    let r = s
        .http
        .get(&s.local)
        .header("cookie", "local_app_session=secret-of-127-0-0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.remote.last_cookie(),
        None,
        "127.0.0.1's cookies stay here"
    );
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    assert!(
        !r.headers()
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        r.headers()
    );
    // The remote does send them (the same request straight to it).
    let bearer = s.remote.last_authorization().unwrap();
    let direct = s
        .http
        .get(s.remote.url())
        .header("authorization", bearer)
        .header("cookie", "a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(direct.headers().get_all("set-cookie").iter().count(), 2);
    assert_eq!(direct.headers()["access-control-allow-origin"], "*");
    assert_eq!(s.remote.last_cookie().as_deref(), Some("a=b"));
    s.engine.shutdown().await;
}

/// `curl` run as another real user (`nobody`), its status code and body.
fn curl_as_nobody(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("setpriv + curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_os_user_is_refused_and_the_owner_is_served() {
    let test = "proxy_other_user";
    if !gate::root(test) {
        return;
    }
    let s = setup(test, Duration::from_secs(3600), &[]).await;
    let before = s.remote.requests();
    let (code, body) = curl_as_nobody(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &s.local,
    ]);
    assert_eq!(code, "403", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "forbidden_user", "{v}");
    assert!(v["message"].as_str().unwrap().contains("uid 65534"), "{v}");
    assert_eq!(s.remote.requests(), before, "nothing forwarded");
    // A connection that sends nothing is refused as well, and closed in time.
    let (code, _) = curl_as_nobody(&["-X", "GET", &format!("{}/sse?n=1", s.local)]);
    assert_eq!(code, "403");
    assert_eq!(s.remote.requests(), before);

    // The owner (this process) is served.
    let r = s.http.post(&s.local).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.remote.requests(), before + 1);

    // The refusal is logged with the uid.
    let log = log_dir(test).join("in-process.log");
    let logged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("uid 65534")) {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a warning naming the uid");
    assert!(logged.contains("WARN"), "{logged}");
    s.engine.shutdown().await;
}

/// Read until the server closes the connection (EOF or reset); bytes read.
async fn until_closed(mut c: tokio::net::TcpStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_neither_block_a_request_nor_stay_open() {
    use tokio::io::AsyncWriteExt;
    // A bound of 1 s; 300 connections, more than `proxy_max_connections` (256).
    let s = setup(
        "proxy_idle_conns",
        Duration::from_secs(3600),
        &[("proxy_header_timeout", "1s")],
    )
    .await;
    let addr = format!("127.0.0.1:{}", port_of(&s.local));
    let mut held = Vec::new();
    for k in 0..300 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if k % 2 == 1 {
            // Slow: a request head that never ends.
            c.write_all(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .await
                .unwrap();
        }
        held.push(c);
    }
    // Keep-alive connections that had an answer and then fall idle.
    let mut kept = Vec::new();
    for _ in 0..5 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!("GET /mcp HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\"ok\":true") {
            use tokio::io::AsyncReadExt;
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "answered before closing");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        kept.push(c);
    }
    // With all of them open, a real client is answered.
    let before = s.remote.requests();
    let r = reqwest::Client::new().get(&s.local).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.remote.requests(), before + 1);

    // Every one of them is closed by the proxy (none stays open): observe EOF on each.
    let all: Vec<_> = held
        .into_iter()
        .chain(kept)
        .map(|c| tokio::spawn(until_closed(c)))
        .collect();
    let closed = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(all))
        .await
        .expect("the proxy closed every idle and slow connection");
    assert_eq!(closed.len(), 305);
    assert!(closed.iter().all(|r| r.is_ok()));
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_proxy_answers_503_and_serves_again_when_a_request_ends() {
    let s = setup(
        "proxy_busy",
        Duration::from_secs(3600),
        &[
            ("proxy_max_connections", "2"),
            ("proxy_upstream_timeout", "20s"),
        ],
    )
    .await;
    s.remote.set_hang(true);
    let mut hanging = Vec::new();
    for _ in 0..2 {
        let url = s.local.clone();
        // A client of its own each: two connections with a request in flight.
        hanging.push(tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.remote.requests() < 2 {
        assert!(
            Instant::now() < deadline,
            "both requests reached the remote"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = reqwest::Client::new().get(&s.local).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "busy", "{v}");
    assert_eq!(s.remote.requests(), 2, "not forwarded");

    s.remote.set_hang(false);
    for h in hanging {
        assert_eq!(h.await.unwrap(), 200);
    }
    // The finished connections are idle now: a new one takes the place of one.
    let r = reqwest::Client::new().get(&s.local).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.engine.shutdown().await;
}
