//! A network of our own for trigger tests (root only): a network namespace holding
//! the issuer, reached only over a veth pair whose host-side address the test removes
//! and re-adds, the way a VPN's tunnel address comes and goes.
//!
//! Before any address is touched, an `unreachable` route covers the test prefix
//! (198.51.100.0/24, TEST-NET-2), so while the address is gone no packet falls through
//! to the default route and leaves the machine. Tests holding a `NetLab` are
//! serialized across processes by a file lock, since they share these names.

// Also loaded by the benches, which have no `support` module.
#[allow(clippy::duplicate_mod)]
#[path = "gate.rs"]
mod gate;

use std::process::Command;

pub const NS: &str = "twlab";
pub const HOST_IF: &str = "twlab-h";
pub const NS_IF: &str = "twlab-n";
pub const HOST_CIDR: &str = "198.51.100.1/30";
pub const NS_IP: &str = "198.51.100.2";
pub const PREFIX: &str = "198.51.100.0/24";

pub struct NetLab {
    _lock: std::fs::File,
}

fn ip(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
}

fn must(args: &[&str]) {
    let st = ip(args).expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `Some(lab)` when the test can run; `None` (and a SKIPPED line) when it cannot.
/// Under `scripts/test.sh` as root (`TOKENWARDEN_TEST_ROOT=1`) a missing capability fails.
pub fn netlab() -> Option<NetLab> {
    let required = std::env::var("TOKENWARDEN_TEST_ROOT").as_deref() == Ok("1");
    if !is_root() {
        assert!(!required, "TOKENWARDEN_TEST_ROOT=1 but not running as root");
        eprintln!(
            "SKIPPED: needs root to create a network namespace (run scripts/test.sh as root)"
        );
        return None;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("tokenwarden-netlab.lock"))
        .expect("lock file");
    lock.lock().expect("netlab lock");
    gate::ran("root", "netlab");
    teardown();
    must(&["netns", "add", NS]);
    must(&["route", "add", "unreachable", PREFIX]);
    must(&[
        "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF,
    ]);
    must(&["link", "set", NS_IF, "netns", NS]);
    must(&["addr", "add", HOST_CIDR, "dev", HOST_IF]);
    must(&["link", "set", HOST_IF, "up"]);
    must(&[
        "-n",
        NS,
        "addr",
        "add",
        &format!("{NS_IP}/30"),
        "dev",
        NS_IF,
    ]);
    must(&["-n", NS, "link", "set", NS_IF, "up"]);
    must(&["-n", NS, "link", "set", "lo", "up"]);
    Some(NetLab { _lock: lock })
}

fn teardown() {
    let _ = ip(&["netns", "del", NS]);
    let _ = ip(&["link", "del", HOST_IF]);
    let _ = ip(&["route", "del", "unreachable", PREFIX]);
}

impl NetLab {
    /// The host loses its address on the link: the issuer becomes unreachable.
    pub fn address_down(&self) {
        must(&["addr", "del", HOST_CIDR, "dev", HOST_IF]);
    }

    /// The address comes back (a VPN reconnecting).
    pub fn address_up(&self) {
        must(&["addr", "add", HOST_CIDR, "dev", HOST_IF]);
    }

    /// Bind a TCP listener on the namespace's address, from a thread that entered the
    /// namespace (the socket stays there; the rest of the process does not move).
    pub fn bind_in_namespace(&self) -> std::net::TcpListener {
        std::thread::spawn(|| {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(format!("/var/run/netns/{NS}")).expect("netns file");
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpListener::bind((NS_IP, 0)).expect("bind in namespace")
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        teardown();
    }
}
