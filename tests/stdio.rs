//! `tokenwarden stdio NAME` as MCP clients use it: the official MCP TypeScript SDK's
//! client (`tests/mcp/client.mjs`, `StdioClientTransport`, as Claude Desktop spawns
//! local servers) starts the real binary, which reaches an SDK server behind OAuth
//! (`tests/mcp/server.mjs`) through the real daemon's local proxy. The server takes
//! exactly the tokens the loopback `SimIssuer` considers valid (asked through a small
//! RFC 7662 shaped introspection endpoint this file serves), so a `401` from it is
//! real. Secret store: the file store (no D-Bus needed).
//!
//! Needs Node.js and `npm ci --prefix tests/mcp` (scripts/deps.sh does it).

use crate::support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokenwarden::engine::Status;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn mcp_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    assert!(
        d.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "the MCP SDK is not installed: run `bash scripts/deps.sh` (it runs `npm ci --prefix tests/mcp`)"
    );
    d
}

/// The resource server's token check: `POST /introspect` `token=...` →
/// `{"active": bool}`; active = valid at the issuer and not declared expired here.
struct Introspection {
    url: String,
    expired: Arc<Mutex<HashSet<String>>>,
    checks: Arc<std::sync::atomic::AtomicU64>,
}

impl Introspection {
    async fn start(issuer: &SimIssuer) -> Introspection {
        use axum::routing::post;
        let expired: Arc<Mutex<HashSet<String>>> = Default::default();
        let checks: Arc<std::sync::atomic::AtomicU64> = Default::default();
        let (issuer2, expired2, checks2) = (issuer.clone(), expired.clone(), checks.clone());
        let app = axum::Router::new().route(
            "/introspect",
            post(
                move |axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| {
                    let token = form.get("token").cloned().unwrap_or_default();
                    checks2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let active = issuer2.is_valid_access_token(&token)
                        && !expired2.lock().unwrap().contains(&token);
                    async move { axum::Json(json!({ "active": active })) }
                },
            ),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Introspection {
            url,
            expired,
            checks,
        }
    }

    /// The remote now takes every token issued so far as expired (a `401`).
    fn expire_all(&self, issuer: &SimIssuer) {
        self.expired.lock().unwrap().extend(issuer.issued_tokens());
    }
}

/// `tests/mcp/server.mjs`: an SDK server (`streamable` or `sse`) behind OAuth.
struct McpServer {
    child: tokio::process::Child,
    url: String,
}

impl McpServer {
    async fn start(env: &TestEnv, mode: &str, introspect: &str) -> McpServer {
        let dir = mcp_dir();
        let err = log_dir(&env.test).join(format!("mcp-server-{mode}.stderr"));
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("server.mjs"))
            .args([mode, introspect])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), out.read_line(&mut line))
            .await
            .expect("the MCP server starts")
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server said {line:?} ({e}): {}", read(&err)));
        McpServer {
            child,
            url: v["url"].as_str().unwrap().to_string(),
        }
    }

    async fn stats(&self) -> Value {
        let u = url::Url::parse(&self.url).unwrap().join("/stats").unwrap();
        reqwest::get(u).await.unwrap().json().await.unwrap()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `tests/mcp/client.mjs` spawning `tokenwarden stdio NAME`.
struct McpClient {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: PathBuf,
}

impl McpClient {
    fn start(env: &TestEnv, name: &str) -> McpClient {
        let dir = mcp_dir();
        let stderr =
            log_dir(&env.test).join(format!("mcp-client-{}.stderr", rand::random::<u32>()));
        let client = dir.join("client.mjs");
        let mut cmd = env.command_of(
            "node",
            &[
                client.to_str().unwrap(),
                env!("CARGO_BIN_EXE_tokenwarden"),
                "stdio",
                name,
            ],
        );
        cmd.current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        McpClient {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            stderr,
        }
    }

    /// One order to the client, its answer.
    async fn op(&mut self, order: Value) -> Value {
        self.stdin
            .write_all(format!("{order}\n").as_bytes())
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).unwrap(),
            other => panic!(
                "the client did not answer {order} ({other:?}): {}",
                read(&self.stderr)
            ),
        }
    }

    async fn call(&mut self, name: &str, args: Value) -> Value {
        self.op(json!({"op": "call", "name": name, "args": args}))
            .await
    }

    fn stderr(&self) -> String {
        read(&self.stderr)
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A daemon whose workload `name` fronts an SDK server (`mode`) and is logged in.
struct Setup {
    env: TestEnv,
    issuer: SimIssuer,
    introspection: Introspection,
    server: McpServer,
}

async fn setup(test: &str, mode: &str, lifetime_secs: u64, extra_env: &[(&str, &str)]) -> Setup {
    init_tracing(test);
    let issuer = issuer(issuer_opts(lifetime_secs)).await;
    let introspection = Introspection::start(&issuer).await;
    let mut env = TestEnv::new(test);
    for (k, v) in extra_env {
        env.extra_env.push((k.to_string(), v.to_string()));
    }
    let server = McpServer::start(&env, mode, &introspection.url).await;
    env.write_config(&format!(
        "{}{}\nurl = \"{}\"\n",
        file_store_header(),
        workload_toml("remote", &issuer).trim_end(),
        server.url
    ));
    env.start_daemon().await;
    let out = env.login("remote").await;
    assert!(out.ok(), "{out:?}");
    env.wait_for("remote", Duration::from_secs(10), |s| {
        s.status == Status::Running && s.access_token_valid && s.local_url.is_some()
    })
    .await;
    Setup {
        env,
        issuer,
        introspection,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_client_initializes_lists_and_calls_tools_through_the_bridge() {
    let s = setup("stdio_sdk_basic", "streamable", 3600, &[]).await;
    let mut c = McpClient::start(&s.env, "remote");
    let started = Instant::now();
    let r = c.op(json!({"op": "connect"})).await;
    assert_eq!(r["ok"], true, "{r}\n{}", c.stderr());
    eprintln!(
        "spawn -> initialized: {} ms (client side)",
        started.elapsed().as_millis()
    );
    assert_eq!(r["server"]["name"], "tokenwarden-test-remote");
    let pid = r["pid"].as_u64().unwrap();

    let r = c.op(json!({"op": "list"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let tools: Vec<&str> = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"echo") && tools.contains(&"slow_count"),
        "{tools:?}"
    );

    let r = c
        .call("echo", json!({"text": "hello through tokenwarden"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(text_of(&r), "hello through tokenwarden");

    // An SSE answer: every progress notification arrives, then the result.
    let r = c
        .call("slow_count", json!({"n": 5, "interval_ms": 20}))
        .await;
    assert_eq!(text_of(&r), "counted to 5", "{r}");
    assert_eq!(r["progress"], 5, "{r}");

    // The server closes the answer's stream after the first event: the bridge resumes
    // it with Last-Event-ID and the answer arrives.
    let resumes_before = s.server.stats().await["resumes"].as_u64().unwrap();
    let r = c.call("dropping_count", json!({"n": 3})).await;
    assert_eq!(r["ok"], true, "{r}\n{}", c.stderr());
    assert_eq!(text_of(&r), "counted to 3 across a dropped stream");
    assert_eq!(r["progress"], 3, "{r}");
    let stats = s.server.stats().await;
    assert!(
        stats["resumes"].as_u64().unwrap() > resumes_before,
        "{stats}"
    );

    // The server's own GET stream dropped, then a log message sent on it: it arrives
    // once the bridge resumed that stream (with the id of the message before).
    let resumes_before = s.server.stats().await["resumes"].as_u64().unwrap();
    let r = c
        .call("drop_server_stream", json!({"text": "sent while dropped"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = c.op(json!({"op": "notes"})).await;
        let notes = n["notes"].as_array().unwrap();
        if notes
            .iter()
            .any(|m| m["params"]["data"] == "sent while dropped")
        {
            assert!(
                s.server.stats().await["resumes"].as_u64().unwrap() > resumes_before,
                "resumed, not a new stream"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log message never arrived: {n}\n{}",
            c.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What a bridge costs (printed, not asserted).
    let proc_status = read(std::path::Path::new(&format!("/proc/{pid}/status")));
    for key in ["VmRSS", "VmHWM"] {
        if let Some(l) = proc_status.lines().find(|l| l.starts_with(key)) {
            eprintln!("bridge {l}");
        }
    }

    // Every request came from the same process; closing stdin ends the session
    // (DELETE) and the bridge exits 0.
    let deletes = s.server.stats().await["deletes"].as_u64().unwrap();
    let r = c.op(json!({"op": "close"})).await;
    assert_eq!(r["pid"].as_u64(), Some(pid));
    assert_eq!(r["exit"]["code"], 0, "{r}\n{}", c.stderr());
    assert_eq!(
        s.server.stats().await["deletes"].as_u64().unwrap(),
        deletes + 1,
        "the session was deleted"
    );
    let stderr = c.stderr();
    assert!(!stderr.contains('\u{1b}'), "plain text logs: {stderr}");
}

/// Run the bridge directly, feeding it raw lines; returns (stdout lines, exit code).
async fn raw_bridge(env: &TestEnv, name: &str, lines: &[&str]) -> (Vec<String>, Option<i32>) {
    let err = log_dir(&env.test).join(format!("stdio-{}.stderr", rand::random::<u32>()));
    let mut cmd = env.command(&["stdio", name]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    for l in lines {
        stdin.write_all(format!("{l}\n").as_bytes()).await.unwrap();
        // Requests are answered before the next line goes in (in order, simply).
        let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
        let expects_answer = v.get("id").is_some() || v.is_null();
        if expects_answer {
            match tokio::time::timeout(Duration::from_secs(20), out.next_line()).await {
                Ok(Ok(Some(line))) => got.push(line),
                other => panic!("no answer to {l}: {other:?}: {}", read(&err)),
            }
        }
    }
    drop(stdin);
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(20), out.next_line()).await
    {
        got.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the bridge exits after stdin ends")
        .unwrap();
    (got, status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_carries_only_json_rpc_lines_even_for_bad_input() {
    let s = setup(
        "stdio_stdout_clean",
        "streamable",
        3600,
        &[("RUST_LOG", "trace")],
    )
    .await;
    // 2025-11-25: the SDK's server then starts each event stream with an empty
    // "priming" event (an id to resume from), which must not reach stdout.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let (lines, code) = raw_bridge(
        &s.env,
        "remote",
        &[
            init,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "this is not json",
            "42",
            r#"{"jsonrpc":"2.0","id":"two","method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"slow_count","arguments":{"n":3,"interval_ms":10},"_meta":{"progressToken":"p"}}}"#,
        ],
    )
    .await;
    assert_eq!(code, Some(0));
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
        assert_eq!(v["jsonrpc"], "2.0", "{l}");
    }
    let v: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_id = |id: Value| {
        v.iter()
            .find(|m| m["id"] == id && m.get("method").is_none())
            .unwrap_or_else(|| panic!("no answer to {id}: {lines:#?}"))
    };
    assert_eq!(
        by_id(json!(1))["result"]["protocolVersion"],
        "2025-11-25",
        "{lines:#?}"
    );
    let errors: Vec<&Value> = v
        .iter()
        .filter(|m| m["id"].is_null() && m.get("error").is_some())
        .map(|m| &m["error"]["code"])
        .collect();
    assert_eq!(errors, [&json!(-32700), &json!(-32600)], "{lines:#?}");
    assert!(by_id(json!("two"))["result"]["tools"].is_array());
    // Three progress notifications, then the answer.
    let progress = v
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    assert_eq!(progress, 3, "{lines:#?}");
    assert_eq!(
        v.last().unwrap()["result"]["content"][0]["text"],
        "counted to 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_session_is_answered_in_time_and_the_same_bridge_carries_on() {
    // 2-second tokens; the bridge holds a request at most 2 s (the default is 25 s).
    let s = setup(
        "stdio_outage",
        "streamable",
        2,
        &[("TOKENWARDEN_STDIO_MAX_HOLD", "2s")],
    )
    .await;
    let mut c = McpClient::start(&s.env, "remote");
    let r = c.op(json!({"op": "connect"})).await;
    assert_eq!(r["ok"], true, "{r}\n{}", c.stderr());
    let pid = r["pid"].clone();
    let r = c.call("echo", json!({"text": "before"})).await;
    assert_eq!(text_of(&r), "before", "{r}");

    // The issuer goes down; the access token runs out.
    s.issuer.set_mode(Mode::Down);
    s.env
        .wait_for("remote", Duration::from_secs(10), |w| !w.access_token_valid)
        .await;
    let r = c.call("echo", json!({"text": "during"})).await;
    eprintln!("answered during the outage after {} ms: {r}", r["ms"]);
    assert_eq!(r["ok"], false, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert_eq!(
        r["error"]["code"], -32000,
        "the bridge's answer, not the client's timeout: {r}"
    );
    assert!(
        message.contains("`remote`") && message.contains("next attempt"),
        "{message}"
    );
    // The next attempt was a second away: the request was held, within the bound.
    let held: u64 = message
        .split("(held ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("held, and says so: {message}"));
    assert!(
        (1..=2).contains(&held),
        "held within the 2 s bound: {message}"
    );
    assert_eq!(r["pid"], pid);

    // Healed: the same bridge process, the same session, carries on.
    s.issuer.set_mode(Mode::Healthy);
    s.env
        .wait_for("remote", Duration::from_secs(10), |w| {
            w.status == Status::Running && w.access_token_valid
        })
        .await;
    let r = c.call("echo", json!({"text": "after"})).await;
    assert_eq!(text_of(&r), "after", "{r}\n{}", c.stderr());
    assert_eq!(r["pid"], pid);
    assert_eq!(
        s.server.stats().await["initializes"],
        1,
        "one session throughout"
    );
    let r = c.op(json!({"op": "close"})).await;
    assert_eq!(r["exit"]["code"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_bridges_started_at_once_after_an_expiry_cause_one_refresh() {
    let s = setup("stdio_ten", "streamable", 3600, &[]).await;
    // The remote takes the current access token as expired from now on.
    s.introspection.expire_all(&s.issuer);
    let refreshes = s.issuer.refresh_requests();
    let mut clients: Vec<McpClient> = (0..10)
        .map(|_| McpClient::start(&s.env, "remote"))
        .collect();
    let answers =
        futures::future::join_all(clients.iter_mut().enumerate().map(|(i, c)| async move {
            let r = c.op(json!({"op": "connect"})).await;
            assert_eq!(r["ok"], true, "{r}\n{}", c.stderr());
            c.call("echo", json!({"text": format!("bridge {i}")})).await
        }))
        .await;
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(text_of(r), format!("bridge {i}"), "{r}");
    }
    assert!(s.server.stats().await["unauthorized"].as_u64().unwrap() >= 1);
    assert_eq!(
        s.issuer.refresh_requests() - refreshes,
        1,
        "ten bridges, one refresh"
    );
    assert!(
        s.introspection
            .checks
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sse_remote_works_through_the_bridge() {
    let s = setup("stdio_legacy_sse", "sse", 3600, &[]).await;
    let mut c = McpClient::start(&s.env, "remote");
    let r = c.op(json!({"op": "connect"})).await;
    assert_eq!(r["ok"], true, "{r}\n{}", c.stderr());
    let r = c.op(json!({"op": "list"})).await;
    assert!(
        r["tools"].as_array().unwrap().contains(&json!("echo")),
        "{r}"
    );
    let r = c
        .call("echo", json!({"text": "over the old transport"}))
        .await;
    assert_eq!(text_of(&r), "over the old transport", "{r}");
    let r = c
        .call("slow_count", json!({"n": 4, "interval_ms": 10}))
        .await;
    assert_eq!(r["progress"], 4, "{r}");
    let r = c.op(json!({"op": "close"})).await;
    assert_eq!(r["exit"]["code"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_the_client_is_told_how_to_start_one_and_the_bridge_exits_non_zero() {
    init_tracing("stdio_no_daemon");
    let issuer = issuer(issuer_opts(3600)).await;
    let env = TestEnv::new("stdio_no_daemon");
    env.write_config(&format!(
        "{}{}\nurl = \"http://127.0.0.1:9/mcp\"\n\n[[workload]]\nname = \"token-only\"\ntoken_endpoint = \"{}\"\nclient_id = \"c\"\n",
        file_store_header(),
        workload_toml("remote", &issuer).trim_end(),
        issuer.token_endpoint()
    ));
    let mut c = McpClient::start(&env, "remote");
    let r = c.op(json!({"op": "connect"})).await;
    assert_eq!(r["ok"], false, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not running") && message.contains("tokenwarden daemon"),
        "{message}"
    );
    let r = c.op(json!({"op": "close"})).await;
    assert_eq!(r["exit"]["code"], 1, "{r}");
    assert!(c.stderr().contains("tokenwarden daemon"), "{}", c.stderr());

    // An unknown name and a workload without `url`: the same kind of answer.
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    for (name, says) in [
        ("nope", "no workload named `nope`"),
        ("token-only", "has no `url`"),
    ] {
        let (lines, code) = raw_bridge(&env, name, &[init]).await;
        assert_eq!(code, Some(1), "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["id"], 0);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
    }
}
