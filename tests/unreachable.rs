//! The local proxy when the remote cannot be reached, through the real daemon and the
//! real HTTP client: a `502` with a JSON body naming the workload (which stays
//! `running`: an unreachable remote says nothing about the sign-in), never a token.
//!
//! * a loopback port with nothing listening (held bound, so no one else takes it);
//! * a DNS failure (root): the remote is `remote.invalid` (RFC 6761: never resolves)
//!   and the daemon runs in a network namespace of its own with nothing but `lo`, whose
//!   `/etc/resolv.conf` (`/etc/netns/NAME/resolv.conf`, bind-mounted by
//!   `ip netns exec`) names a resolver on 127.0.0.1 where nothing listens. The lookup
//!   fails inside the machine: the namespace has no interface a packet could leave by.

use crate::support;
use crate::support::inproc::login_in_process;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tokenwarden::engine::config::Config;
use tokenwarden::engine::store::{FileBackend, SecretStore};
use tokenwarden::engine::Status;

const WAIT: Duration = Duration::from_secs(20);

/// Workload `w` of a fresh env, its remote at `url`, signed in (file store) without
/// asking the remote anything.
async fn signed_in(test: &str, issuer: &SimIssuer, url: &str) -> TestEnv {
    let mut env = TestEnv::new(test);
    // A remote that does not answer in time would make this a 504; bound it.
    env.extra_env
        .push(("TOKENWARDEN_PROXY_UPSTREAM_TIMEOUT".into(), "10s".into()));
    let text = format!(
        "{}{}\nurl = \"{url}\"\n",
        file_store_header(),
        workload_toml("w", issuer).trim_end()
    );
    env.write_config(&text);
    let cfg = Config::parse(&env.config_file(), &text).unwrap();
    let store =
        SecretStore::new(FileBackend::new(env.paths().secrets_dir)).for_config_dir(&env.config_dir);
    login_in_process(&cfg, "w", &store).await;
    env
}

/// The proxy's answer: status, `Content-Type`, body as JSON.
fn parse_answer(raw: &[u8]) -> (u16, String, serde_json::Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {body:?}"));
    (status, content_type, json)
}

/// What both cases assert about the answer and the workload afterwards.
async fn assert_bad_gateway(env: &TestEnv, issuer: &SimIssuer, raw: &[u8]) {
    let (status, content_type, body) = parse_answer(raw);
    assert_eq!(status, 502, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(body["error"], "upstream_unreachable", "{body}");
    assert_eq!(body["workload"], "w", "{body}");
    assert_eq!(body["status"], "running", "{body}");
    // Words about the remote: the token endpoint was never asked.
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.starts_with("the remote could not be reached: could not connect"),
        "{message}"
    );
    assert!(!message.contains("token endpoint"), "{message}");
    let text = String::from_utf8_lossy(raw);
    for token in issuer.issued_tokens() {
        assert!(!text.contains(&token), "a token in the answer");
    }
    let st = env.status().await.remove(0);
    assert_eq!(st.status, Status::Running, "{st:?}");
    assert_eq!(issuer.refresh_requests(), 0, "nothing to refresh");
}

/// `GET path` on a connected socket; the whole answer (`Connection: close`).
fn get(mut conn: std::net::TcpStream, port: u16, path: &str) -> Vec<u8> {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("the proxy answers");
    raw
}

/// The local proxy's port and path, once the workload runs with its proxy up.
async fn local_proxy(env: &TestEnv) -> (u16, String) {
    let st = env
        .wait_for("w", WAIT, |w| {
            w.status == Status::Running && w.local_url.is_some()
        })
        .await;
    let url = url::Url::parse(&st.local_url.unwrap()).unwrap();
    (url.port().unwrap(), url.path().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_port_with_nothing_listening_is_a_502_with_a_json_body() {
    let issuer = issuer(issuer_opts(300)).await;
    // Bound, not listening: connections to it are refused, and the port stays ours.
    let hole = tokio::net::TcpSocket::new_v4().unwrap();
    hole.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = hole.local_addr().unwrap().port();
    let env = signed_in(
        "unreachable_port",
        &issuer,
        &format!("http://127.0.0.1:{port}/mcp"),
    )
    .await;
    env.start_daemon().await;
    let (local, path) = local_proxy(&env).await;
    let raw = tokio::task::spawn_blocking(move || {
        get(
            std::net::TcpStream::connect(("127.0.0.1", local)).unwrap(),
            local,
            &path,
        )
    })
    .await
    .unwrap();
    assert_bad_gateway(&env, &issuer, &raw).await;
    drop(hole);
}

/// A network namespace with nothing but `lo`, its resolver 127.0.0.1 (nothing listens).
struct DnsLab {
    name: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

impl DnsLab {
    fn new() -> DnsLab {
        let name = format!("twdns{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let lab = DnsLab { name };
        ip(&["-n", &lab.name, "link", "set", "lo", "up"]);
        let etc = lab.etc();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        // Nothing can leave: `lo` is the namespace's only interface.
        let links = Command::new("ip")
            .args(["-n", &lab.name, "-o", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        let names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(str::trim))
            .collect();
        assert_eq!(names, ["lo"], "the namespace has only lo: {links}");
        // glibc would hand the lookup to an nscd of the host's namespace.
        assert!(
            !std::path::Path::new("/var/run/nscd/socket").exists(),
            "an nscd socket would resolve outside the namespace"
        );
        lab
    }

    fn etc(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// A TCP connection from inside the namespace (made by a thread that entered it;
    /// the socket stays in the namespace, the process does not move).
    fn connect(&self, port: u16) -> std::net::TcpStream {
        let ns = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(ns).expect("netns file");
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect in namespace")
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for DnsLab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_name_that_does_not_resolve_is_a_502_with_a_json_body() {
    const TEST: &str = "unreachable_dns";
    if !gate::root(TEST) {
        return;
    }
    let issuer = issuer(issuer_opts(300)).await;
    let env = signed_in(TEST, &issuer, "https://remote.invalid/mcp").await;
    let lab = DnsLab::new();

    // The daemon, inside the namespace (the control socket is a file: reachable).
    let err_path = log_dir(TEST).join("daemon.stderr");
    let mut daemon = env
        .command_of(
            "ip",
            &[
                "netns",
                "exec",
                &lab.name,
                env!("CARGO_BIN_EXE_tokenwarden"),
                "daemon",
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let paths = env.paths();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(mut c)) = tokenwarden::control::Client::connect(&paths).await {
            if c.call(&tokenwarden::control::Request::Ping).await.is_ok() {
                break;
            }
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            panic!("the daemon exited ({st}): {}", read(&err_path));
        }
        assert!(Instant::now() < deadline, "daemon: {}", read(&err_path));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (local, path) = local_proxy(&env).await;
    let conn = lab.connect(local);
    let raw = tokio::task::spawn_blocking(move || get(conn, local, &path))
        .await
        .unwrap();
    assert_bad_gateway(&env, &issuer, &raw).await;
    let _ = daemon.kill();
    let _ = daemon.wait();
}
