//! The local proxy against a remote with Nagle's algorithm on: a streamed answer's body
//! must not wait for the proxy's delayed ACK of the answer's head.
//!
//! The remote here writes each answer as a server without `TCP_NODELAY` does: the head
//! in one write, then an SSE event and the last chunk in writes of their own, which the
//! kernel holds until the head is ACKed. On a reused connection the proxy's kernel
//! delays that ACK for its delayed-ACK timer unless the proxy asks for it at once
//! (`TCP_QUICKACK`). What is counted is the kernel's own count of ACKs sent by that
//! timer (`DelayedACKs` in `/proc/net/netstat`), in a network namespace of this test's
//! own so that nothing else on the machine adds to it. Root only (a namespace).

use crate::support;
use crate::support::inproc;

use inproc::*;
use std::io::{Read, Write};
use std::time::Duration;
use support::*;
use tokenwarden::engine::config::Config;
use tokenwarden::engine::Status;

const REQUESTS: u64 = 20;

/// `DelayedACKs` of the calling thread's network namespace.
fn delayed_acks() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names
            .split_whitespace()
            .position(|n| n == "DelayedACKs")
            .expect("TcpExt has DelayedACKs");
        return values.split_whitespace().nth(i).unwrap().parse().unwrap();
    }
    panic!("no TcpExt line in /proc/net/netstat");
}

/// A loopback HTTP/1.1 server with Nagle's algorithm on: each request answered 200 with
/// an SSE body, head and body in separate writes.
fn nagle_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            c.set_nodelay(false).unwrap();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: the head, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match c.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        match c.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let event =
                        "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
                    let writes = [
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
                        format!("{:x}\r\n{event}\r\n", event.len()),
                        "0\r\n\r\n".to_string(),
                    ];
                    for w in writes {
                        if c.write_all(w.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

#[test]
fn streamed_answers_from_a_nagle_server_do_not_wait_for_a_delayed_ack() {
    let test = "streamed_answers_from_a_nagle_server_do_not_wait_for_a_delayed_ack";
    let required = std::env::var("TOKENWARDEN_TEST_ROOT").as_deref() == Ok("1");
    // SAFETY: unshare only changes this thread's network namespace; the runtime and
    // every thread below start after it and so share it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        assert!(
            !required,
            "TOKENWARDEN_TEST_ROOT=1 but no network namespace: {}",
            std::io::Error::last_os_error()
        );
        eprintln!("SKIPPED: needs root for a network namespace of its own");
        return;
    }
    let st = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(st.success(), "ip link set lo up");
    gate::ran("root", test);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        init_tracing(test);
        let remote = nagle_server();
        let issuer = issuer(IssuerOptions::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workloads.toml");
        let text = format!(
            "{}\nurl = \"{remote}\"\n",
            workload_toml("w", &issuer).trim_end()
        );
        std::fs::write(&path, &text).unwrap();
        let mut cfg = Config::parse(&path, &text).unwrap();
        cfg.policy = fast_policy();
        let store = login_all(&cfg).await;
        let engine = start_engine(cfg, store, None);
        let s = wait_for_workload(&engine, "w", Duration::from_secs(5), |s| {
            s.status == Status::Running && s.local_url.is_some()
        })
        .await;
        let local = s.local_url.unwrap();
        let http = reqwest::Client::new();
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#;
        let call = || async {
            let r = http.post(&local).body(body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            assert!(text.contains(r#""result":{}"#), "{text}");
        };
        // The first answers come on a fresh connection (the kernel ACKs those at once).
        for _ in 0..3 {
            call().await;
        }
        let before = delayed_acks();
        for _ in 0..REQUESTS {
            call().await;
        }
        let delayed = delayed_acks() - before;
        eprintln!("{REQUESTS} streamed answers: {delayed} ACKs sent by the delayed-ACK timer");
        assert!(
            delayed < REQUESTS / 2,
            "{delayed} of {REQUESTS} answers waited for a delayed ACK"
        );
        drop(engine);
    });
}
