//! What MCP clients see through Tokenwarden: sequential `tools/call` round trips with
//! SSE answers (Streamable HTTP), made by the official MCP TypeScript SDK's client
//! (`tests/mcp/bench-client.mjs`) against an SDK server (`tests/mcp/bench-server.mjs`)
//! on 127.0.0.1, along four paths side by side in one run:
//!
//! - direct: the SDK's Streamable HTTP client to the server, with the bearer header;
//! - proxy: the same client to the workload's `local_url` (the daemon adds the bearer);
//! - `tokenwarden stdio NAME`: the SDK's `StdioClientTransport` spawning the bridge;
//! - mcp-remote (the version tests/mcp/package.json pins), spawned the same way with a
//!   static `--header "Authorization: Bearer TOKEN"`, straight to the server.
//!
//! Each against two servers: TCP_NODELAY on every accepted socket (Node's default) and
//! off (Nagle's algorithm on). Printed: p50 / p99 per path, what the proxy and each
//! bridge add to direct, spawn → initialized of both bridges and their memory (VmHWM
//! from /proc, read after the run).
//!
//! `cargo bench --no-default-features --bench mcp` (env: `MCP_BENCH_CALLS`, default 500
//! measured calls per path and server, after `MCP_BENCH_WARMUP`, default 50;
//! `MCP_BENCH_SPAWNS`, default 5 spawns of each bridge to time start-up). Needs
//! Node.js and `bash tests/mcp/install.sh` (scripts/deps.sh runs it). Linux (/proc).
//!
//! The token comes from the loopback `SimIssuer` through a `tokenwarden daemon` this
//! bench starts on a temp config dir (file store); the server takes exactly the tokens
//! the issuer considers valid (checked once per token through a small introspection
//! endpoint served here). Everything shares the machine's cores, no CPU pinning.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenwarden::control::{Client, Request};
use tokenwarden::engine::store::{FileBackend, SecretStore};
use tokenwarden::paths::Paths;
use tokenwarden_sim::issuer::{IssuerOptions, SimIssuer};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The whole client run per server variant must end within this.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mcp_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    for m in ["@modelcontextprotocol/sdk", "mcp-remote"] {
        assert!(
            d.join("node_modules").join(m).is_dir(),
            "{m} is not installed: run `bash tests/mcp/install.sh` (scripts/deps.sh runs it)"
        );
    }
    d
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The resource server's token check: `POST /introspect` `token=...` → `{"active": bool}`.
async fn introspection(issuer: &SimIssuer) -> String {
    use axum::routing::post;
    let issuer = issuer.clone();
    let app = axum::Router::new().route(
        "/introspect",
        post(
            move |axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| {
                let token = form.get("token").cloned().unwrap_or_default();
                let active = issuer.is_valid_access_token(&token);
                async move { axum::Json(json!({ "active": active })) }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// `bench-server.mjs VARIANT`: (the process, its URL).
async fn start_server(
    dir: &Path,
    logs: &Path,
    variant: &str,
    introspect: &str,
) -> (Killed, String) {
    let err = logs.join(format!("server-{variant}.stderr"));
    let mut child = std::process::Command::new("node")
        .arg(dir.join("bench-server.mjs"))
        .args([variant, introspect])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("node runs");
    let out = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
    let child = Killed(child);
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(out).read_line(&mut line),
    )
    .await
    .expect("the MCP server starts")
    .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "server said {line:?} ({e}): {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    });
    (child, v["url"].as_str().unwrap().to_string())
}

fn start_daemon(dir: &Path) -> Killed {
    let log = std::fs::File::create(dir.join("daemon.stderr")).unwrap();
    Killed(
        Command::new(env!("CARGO_BIN_EXE_tokenwarden"))
            .arg("daemon")
            .env("TOKENWARDEN_CONFIG_DIR", dir)
            .env("TOKENWARDEN_LOG_DIR", dir.join("logs"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the daemon"),
    )
}

/// (local_url, access token) of `name` once the daemon runs it.
async fn wait_ready(paths: &Paths, name: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the daemon did not run `{name}`");
        if let Ok(Some(mut c)) = Client::connect(paths).await {
            if let Ok(v) = c.call(&Request::Status).await {
                let w = v
                    .as_array()
                    .and_then(|a| a.iter().find(|w| w["name"] == name));
                if let Some(w) = w.filter(|w| w["status"] == "running") {
                    if let Some(local) = w["local_url"].as_str() {
                        let t = c.call(&Request::Token { name: name.into() }).await.unwrap();
                        let t = t["access_token"].as_str().unwrap().to_string();
                        return (local.to_string(), t);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One path's figures from bench-client.mjs.
struct PathResult {
    label: String,
    calls: Vec<f64>,
    init: Vec<f64>,
    hwm_kib: Option<u64>,
    threads: Option<u64>,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

/// Run bench-client.mjs over `paths` (its MCP_BENCH config); bounded by [`RUN_LIMIT`].
async fn run_client(dir: &Path, logs: &Path, cfg: Value) -> Vec<PathResult> {
    let err = logs.join("client.stderr");
    let child = tokio::process::Command::new("node")
        .arg(dir.join("bench-client.mjs"))
        .current_dir(dir)
        .env("MCP_BENCH", cfg.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("the client run ends in time")
        .unwrap();
    assert!(
        out.status.success(),
        "the client run failed: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("the client prints JSON");
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut calls = nums(&p["calls_ms"]);
            calls.sort_by(f64::total_cmp);
            PathResult {
                label: p["label"].as_str().unwrap().to_string(),
                calls,
                init: nums(&p["init_ms"]),
                hwm_kib: p["vm_hwm_kib"].as_u64(),
                threads: p["threads"].as_u64(),
            }
        })
        .collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

const VARIANTS: [(&str, &str); 2] = [
    ("nodelay", "TCP_NODELAY on (Node's default)"),
    ("nagle", "TCP_NODELAY off (Nagle on)"),
];

async fn run() {
    let calls = env_num("MCP_BENCH_CALLS", 500);
    let warmup = env_num("MCP_BENCH_WARMUP", 50);
    let spawns = env_num("MCP_BENCH_SPAWNS", 5);
    let mcp = mcp_dir();
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("bench-logs");
    std::fs::create_dir_all(&logs).unwrap();

    let issuer = SimIssuer::start(IssuerOptions::default()).await.unwrap();
    let introspect = introspection(&issuer).await;
    let mut servers = Vec::new();
    let mut text = "[secrets]\nstore = \"file\"\n".to_string();
    for (variant, _) in VARIANTS {
        let (child, url) = start_server(&mcp, &logs, variant, &introspect).await;
        eprintln!("mcp bench: {variant} server at {url}");
        text.push_str(&format!(
            "\n[[workload]]\nname = \"{variant}\"\nurl = \"{url}\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n",
            issuer.authorization_endpoint(),
            issuer.token_endpoint(),
            issuer.client_id()
        ));
        servers.push((child, url));
    }
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("workloads.toml"), text).unwrap();
    let paths = Paths::resolve(Some(config.clone())).unwrap();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let store = SecretStore::new(FileBackend::new(&paths.secrets_dir));
    for (variant, _) in VARIANTS {
        let tokens =
            tokenwarden::demo::stored_tokens(issuer.direct_login(&no_redirects).await.unwrap());
        store.save_tokens(variant, &tokens).await.unwrap();
    }
    let daemon = start_daemon(&config);
    let mcp_remote = mcp.join("node_modules/mcp-remote/dist/proxy.js");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let mut all = Vec::new();
    for ((variant, _), (_, url)) in VARIANTS.iter().zip(&servers) {
        let (local, token) = wait_ready(&paths, variant).await;
        let bridge_env = json!({
            "PATH": std::env::var("PATH").unwrap_or_default(),
            "HOME": home,
            "TOKENWARDEN_CONFIG_DIR": config,
            "RUST_LOG": "warn",
            "MCP_REMOTE_CONFIG_DIR": home.join("mcp-auth"),
        });
        let run_logs = logs.join(variant);
        std::fs::create_dir_all(&run_logs).unwrap();
        let cfg = json!({
            "calls": calls,
            "warmup": warmup,
            "block": 50,
            "spawns": spawns,
            "log_dir": run_logs,
            "paths": [
                {"label": "direct", "url": url, "headers": {"Authorization": format!("Bearer {token}")}},
                {"label": "proxy", "url": local},
                {"label": "tokenwarden stdio", "command": env!("CARGO_BIN_EXE_tokenwarden"),
                 "args": ["stdio", variant], "env": bridge_env},
                {"label": "mcp-remote", "command": "node",
                 "args": [mcp_remote, url, "--header", format!("Authorization: Bearer {token}")],
                 "env": bridge_env},
            ],
        });
        all.push(run_client(&mcp, &run_logs, cfg).await);
    }
    drop(daemon);
    drop(servers);
    report(&all, calls, warmup, spawns);
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

fn added(v: f64) -> String {
    format!("{v:+.2} ms")
}

fn report(all: &[Vec<PathResult>], calls: u64, warmup: u64, spawns: u64) {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "\nMCP tools/call round trips with SSE answers, loopback, one run: {calls} sequential calls per path and server after {warmup} warm-up calls, paths taking turns in blocks of 50; official MCP TypeScript SDK client and server, Node.js {node}; {} CPUs, no pinning.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| server | path | p50 | p99 | added p50 | added p99 |");
    println!("|---|---|---|---|---|---|");
    for ((_, what), runs) in VARIANTS.iter().zip(all) {
        let direct = &runs[0].calls;
        let (d50, d99) = (pct(direct, 0.5), pct(direct, 0.99));
        for p in runs {
            let (p50, p99) = (pct(&p.calls, 0.5), pct(&p.calls, 0.99));
            let (a50, a99) = if p.label == "direct" {
                ("".to_string(), "".to_string())
            } else {
                (added(p50 - d50), added(p99 - d99))
            };
            println!(
                "| {what} | {} | {} | {} | {a50} | {a99} |",
                p.label,
                ms(p50),
                ms(p99)
            );
        }
    }
    println!(
        "\n| bridge | spawn → initialized (median of {}) | VmHWM after the run ({}) | threads |",
        (spawns + 1) * VARIANTS.len() as u64,
        VARIANTS[0].0
    );
    println!("|---|---|---|---|");
    let runs = &all[0];
    for p in runs.iter().filter(|p| p.hwm_kib.is_some()) {
        // Each variant's run spawned the bridge spawns + 1 times: all of them count.
        let init: Vec<f64> = all
            .iter()
            .flat_map(|r| r.iter().filter(|q| q.label == p.label))
            .flat_map(|q| q.init.iter().copied())
            .collect();
        println!(
            "| {} | {} | {:.1} MiB | {} |",
            p.label,
            ms(median(&init)),
            p.hwm_kib.unwrap() as f64 / 1024.0,
            p.threads.map_or("?".into(), |t| t.to_string())
        );
    }
    let get = |v: usize, label: &str| all[v].iter().find(|p| p.label == label).unwrap();
    let p50 = |v: usize, label: &str| pct(&get(v, label).calls, 0.5);
    let hwm = |label: &str| get(0, label).hwm_kib.unwrap_or(0) as f64;
    println!(
        "\nsummary: the proxy adds {} p50 to a streamed call (goal < 1 ms); against the Nagle-on server direct {} p50, through the proxy {} ({} added); tokenwarden stdio p50 {} vs mcp-remote {} (NODELAY server; goal: lower), VmHWM {:.0}% of mcp-remote's (goal < 25%)",
        added(p50(0, "proxy") - p50(0, "direct")),
        ms(p50(1, "direct")),
        ms(p50(1, "proxy")),
        added(p50(1, "proxy") - p50(1, "direct")),
        ms(p50(0, "tokenwarden stdio")),
        ms(p50(0, "mcp-remote")),
        100.0 * hwm("tokenwarden stdio") / hwm("mcp-remote"),
    );
}
