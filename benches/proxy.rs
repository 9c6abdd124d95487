//! The local proxy's cost, measured side by side in one run on loopback: requests per
//! second and latency (p50 / p99) through the proxy versus straight to the fake remote
//! with the same bearer, and the daemon's memory while 100 SSE streams are open.
//!
//! `cargo bench --no-default-features --bench proxy` (env: `PROXY_BENCH_REQUESTS`,
//! default 3000 sequential requests per path; `PROXY_BENCH_SECS`, default 3 s per
//! throughput run; `PROXY_BENCH_CONCURRENCY`, default 16). Linux (/proc).
//!
//! The proxy runs where it runs for users: inside `tokenwarden daemon` (a child
//! process, file store in a temp config dir). The issuer, the fake remote and the
//! load generator share this process. Everything is on one machine, so the proxy's
//! work competes for the same cores as the remote's and the client's: the throughput
//! ratio is a lower bound of what a machine with idle cores would see.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenwarden::control::{Client, Request};
use tokenwarden::engine::store::{FileBackend, SecretStore};
use tokenwarden::paths::Paths;
use tokenwarden_sim::issuer::{IssuerOptions, SimIssuer};
use tokenwarden_sim::remote::{RemoteOptions, SimRemote};

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pin the calling thread (and the threads it starts later, or a child after exec)
/// to one CPU.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn start_daemon(dir: &Path, cpu: Option<usize>) -> Daemon {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("daemon.stderr")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
    if let Some(cpu) = cpu {
        // SAFETY: pre_exec runs between fork and exec; sched_setaffinity is
        // async-signal-safe and touches no shared state.
        unsafe {
            cmd.pre_exec(move || {
                pin_to(cpu);
                Ok(())
            });
        }
    }
    Daemon(
        cmd.arg("daemon")
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

/// (local_url, access token) once the daemon runs the workload.
async fn wait_ready(paths: &Paths) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        if let Ok(Some(mut c)) = Client::connect(paths).await {
            if let Ok(v) = c.call(&Request::Status).await {
                if let Some(local) = v[0]["local_url"].as_str() {
                    if v[0]["status"] == "running" {
                        let t = c.call(&Request::Token { name: "w".into() }).await.unwrap();
                        let t = t["access_token"].as_str().unwrap().to_string();
                        return (local.to_string(), t);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

async fn one(http: &reqwest::Client, url: &str, bearer: Option<&str>) {
    let mut r = http.post(url).body(BODY);
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
}

/// Sequential latencies of both paths, interleaved in blocks so drift hits both.
async fn latencies(
    http: &reqwest::Client,
    direct: &str,
    local: &str,
    bearer: &str,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut d, mut p) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..20 {
        one(http, direct, Some(bearer)).await;
        one(http, local, None).await;
    }
    while d.len() < n {
        for _ in 0..100 {
            let t = Instant::now();
            one(http, direct, Some(bearer)).await;
            d.push(t.elapsed());
        }
        for _ in 0..100 {
            let t = Instant::now();
            one(http, local, None).await;
            p.push(t.elapsed());
        }
    }
    d.sort();
    p.sort();
    (d, p)
}

async fn throughput(url: &str, bearer: Option<&str>, conc: usize, secs: u64) -> f64 {
    let http = reqwest::Client::new();
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (http, url, bearer) = (http.clone(), url.to_string(), bearer.map(str::to_string));
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < stop {
                    one(&http, &url, bearer.as_deref()).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

static PINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // With two or more CPUs the load generator, the issuer and the remote share CPU 0
    // and the daemon (the proxy) gets CPU 1, as on a laptop whose remote server is
    // elsewhere: otherwise the proxy's work is taken from the remote's CPU and the
    // throughput ratio measures the machine, not the proxy. PROXY_BENCH_PIN=0: no pinning.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cpus >= 2 && std::env::var("PROXY_BENCH_PIN").as_deref() != Ok("0");
    if pin {
        assert!(pin_to(0), "cannot pin the benchmark to CPU 0");
    }
    PINNED.store(pin, std::sync::atomic::Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let n = env_num("PROXY_BENCH_REQUESTS", 3000) as usize;
    let secs = env_num("PROXY_BENCH_SECS", 3);
    let conc = env_num("PROXY_BENCH_CONCURRENCY", 16) as usize;
    let issuer = SimIssuer::start(IssuerOptions::default()).await.unwrap();
    let remote = SimRemote::start(issuer.clone(), RemoteOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[secrets]\nstore = \"file\"\n\n[[workload]]\nname = \"w\"\nurl = \"{}\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n",
        remote.url(),
        issuer.authorization_endpoint(),
        issuer.token_endpoint(),
        issuer.client_id()
    );
    std::fs::write(dir.path().join("workloads.toml"), text).unwrap();
    let paths = Paths::resolve(Some(dir.path().to_path_buf())).unwrap();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let tokens =
        tokenwarden::demo::stored_tokens(issuer.direct_login(&no_redirects).await.unwrap());
    let http = reqwest::Client::new();
    SecretStore::new(FileBackend::new(&paths.secrets_dir))
        .save_tokens("w", &tokens)
        .await
        .unwrap();
    let pinned = PINNED.load(std::sync::atomic::Ordering::Relaxed);
    let daemon = start_daemon(dir.path(), pinned.then_some(1));
    let pid = daemon.0.id();
    let (local, bearer) = wait_ready(&paths).await;
    let direct = remote.url();
    let rss_start = rss_kib(pid);

    let (d, p) = latencies(&http, &direct, &local, &bearer, n).await;
    let rps_direct = throughput(&direct, Some(&bearer), conc, secs).await;
    let rps_proxy = throughput(&local, None, conc, secs).await;

    // 100 SSE streams open at once through the proxy.
    let rss_idle = rss_kib(pid);
    let sse = format!("{local}/sse?n=600&interval_ms=100");
    let mut streams = Vec::new();
    for _ in 0..100 {
        let r = http
            .get(&sse)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let mut firsts = Vec::new();
    for r in &mut streams {
        firsts.push(r.chunk().await.unwrap().is_some());
    }
    assert!(firsts.iter().all(|f| *f), "every stream delivers");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_streams = rss_kib(pid);
    drop(streams);

    // 256 MiB up and echoed back down through the proxy: the daemon's memory must not
    // follow the body's size (streamed both ways, never held).
    let rss_before_big = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before_big));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    const MIB: usize = 1 << 20;
    let chunks = futures::stream::iter((0..256).map(|_| Ok::<_, std::io::Error>(vec![7u8; MIB])));
    let resp = http
        .post(format!("{local}/echo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut echoed = 0usize;
    let mut body = resp;
    while let Some(c) = body.chunk().await.unwrap() {
        echoed += c.len();
    }
    assert_eq!(echoed, 256 * MIB);
    sampler.abort();
    let big_peak = peak.load(std::sync::atomic::Ordering::Relaxed);

    let (dp50, dp99) = (pct(&d, 0.5), pct(&d, 0.99));
    let (pp50, pp99) = (pct(&p, 0.5), pct(&p, 0.99));
    println!(
        "\nLocal proxy versus direct, loopback, one run ({n} sequential requests per path, then {conc} concurrent clients for {secs} s per path; {}).\n",
        if pinned {
            "client, issuer and remote on CPU 0, the daemon on CPU 1"
        } else {
            "no CPU pinning: the proxy competes with the remote and the client"
        }
    );
    println!("| path | p50 | p99 | requests/s ({conc} clients) |");
    println!("|---|---|---|---|");
    println!(
        "| direct to the remote | {} | {} | {rps_direct:.0} |",
        ms(dp50),
        ms(dp99)
    );
    println!(
        "| through the proxy | {} | {} | {rps_proxy:.0} |",
        ms(pp50),
        ms(pp99)
    );
    println!(
        "| added by the proxy | {} | {} | {:.0}% of direct |",
        ms(pp50.saturating_sub(dp50)),
        ms(pp99.saturating_sub(dp99)),
        100.0 * rps_proxy / rps_direct
    );
    println!("\n| daemon memory (VmRSS) | |\n|---|---|");
    println!(
        "| after start, one workload | {:.1} MiB |",
        rss_start as f64 / 1024.0
    );
    println!(
        "| after the load runs | {:.1} MiB |",
        rss_idle as f64 / 1024.0
    );
    println!(
        "| with 100 SSE streams open | {:.1} MiB ({:+.1} KiB per stream) |",
        rss_streams as f64 / 1024.0,
        (rss_streams as f64 - rss_idle as f64) / 100.0
    );
    println!(
        "| peak while 256 MiB streamed up and back through it | {:.1} MiB ({:+.1} MiB) |",
        big_peak as f64 / 1024.0,
        (big_peak as f64 - rss_before_big as f64) / 1024.0
    );
    println!(
        "\nsummary: added p50 latency {} (target < 0.3 ms); throughput {:.0}% of direct (target >= 80%); 100 SSE streams: {:.1} MiB daemon RSS",
        ms(pp50.saturating_sub(dp50)),
        100.0 * rps_proxy / rps_direct,
        rss_streams as f64 / 1024.0
    );
    drop(daemon);
}
