//! Whose process is on the other end of a connection the proxy accepted (Linux).
//!
//! A loopback connection has both ends on this machine: the client's socket is the
//! one whose local address is the peer's address and whose remote address is the
//! proxy's. Its owner (the uid that created it) is asked of the kernel by that exact
//! 4-tuple with one `sock_diag` netlink request (`SOCK_DIAG_BY_FAMILY`, the interface
//! `ss` uses; no dump, one answer). Where that interface is missing or forbidden,
//! `/proc/net/tcp` (`tcp6`) is read instead. Either way the answer must name a live
//! socket with exactly that 4-tuple; anything else is an error, and the caller refuses
//! the connection (fail closed).
//!
//! Both calls block briefly (microseconds for netlink; a file read the size of the
//! machine's socket table for procfs): callers run them off the async threads.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// TCP states whose socket is not the client's open socket (or reports no owner):
/// `SYN_RECV`, `TIME_WAIT`, `LISTEN`, `NEW_SYN_RECV`.
const NOT_A_CLIENT: [u8; 4] = [3, 6, 10, 12];

/// The uid owning the client socket at `peer` that is connected to `local`.
pub fn peer_uid(peer: SocketAddr, local: SocketAddr) -> io::Result<u32> {
    match sock_diag_uid(peer, local) {
        Ok(uid) => Ok(uid),
        Err(netlink) => procfs_uid(peer, local).map_err(|procfs| {
            io::Error::new(
                procfs.kind(),
                format!("sock_diag: {netlink}; /proc/net/tcp: {procfs}"),
            )
        }),
    }
}

/// This process's effective uid: the owner a proxy serves.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Both ends in one family (IPv4 when both are; else both as IPv6).
fn same_family(peer: SocketAddr, local: SocketAddr) -> (u8, [u8; 16], [u8; 16]) {
    match (peer.ip(), local.ip()) {
        (IpAddr::V4(p), IpAddr::V4(l)) => {
            let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
            a[..4].copy_from_slice(&p.octets());
            b[..4].copy_from_slice(&l.octets());
            (libc::AF_INET as u8, a, b)
        }
        (p, l) => {
            let v6 = |ip: IpAddr| -> Ipv6Addr {
                match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                }
            };
            (libc::AF_INET6 as u8, v6(p).octets(), v6(l).octets())
        }
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;

/// `nlmsghdr` + `inet_diag_req_v2` asking for the socket `src:sport -> dst:dport`.
fn sock_diag_request(peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (family, src, dst) = same_family(peer, local);
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    m.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&peer.port().to_be_bytes());
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&src);
    m.extend_from_slice(&dst);
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    debug_assert_eq!(m.len(), NLMSG_HDRLEN + REQ_LEN);
    m
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The uid in one `inet_diag_msg`, if it is the socket asked for.
fn parse_diag_msg(msg: &[u8], request: &[u8]) -> io::Result<u32> {
    if msg.len() < MSG_LEN {
        return Err(io::Error::other("short inet_diag_msg"));
    }
    // The id (ports and addresses) must be the one asked for: bytes 4..40 of the
    // message are bytes 8..44 of the request's inet_diag_req_v2.
    let asked = &request[NLMSG_HDRLEN + 8..NLMSG_HDRLEN + 44];
    if msg[0] != request[NLMSG_HDRLEN] || &msg[4..40] != asked {
        return Err(io::Error::other("the kernel answered about another socket"));
    }
    if NOT_A_CLIENT.contains(&msg[1]) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the peer's socket is in TCP state {}", msg[1]),
        ));
    }
    Ok(u32_at(msg, 64))
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

fn sock_diag_uid(peer: SocketAddr, local: SocketAddr) -> io::Result<u32> {
    // SAFETY: plain syscalls on a descriptor this function owns; every buffer passed
    // is a live local of the length given.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = Fd(fd);
        // The kernel answers while handling the send; the timeout only keeps a
        // blocking thread from waiting forever on a kernel that does not.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let req = sock_diag_request(peer, local);
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            fd.0,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        let n = libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        parse_answer(&buf[..n as usize], &req)
    }
}

/// Walk the netlink messages of one answer.
fn parse_answer(mut buf: &[u8], req: &[u8]) -> io::Result<u32> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let body = &buf[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_ERROR if body.len() >= 4 => {
                let errno = -(u32_at(body, 0) as i32);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
            NLMSG_DONE => break,
            SOCK_DIAG_BY_FAMILY => return parse_diag_msg(body, req),
            _ => {}
        }
        buf = &buf[(len + 3) & !3..];
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "the kernel knows no such socket",
    ))
}

/// One `/proc/net/tcp{,6}` address, `0100007F:1F90`, as 16 bytes and a port.
fn parse_proc_addr(s: &str) -> Option<([u8; 16], u16)> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut out = [0u8; 16];
    if ip.len() != 8 && ip.len() != 32 {
        return None;
    }
    // Each 8-digit group is one 32-bit word of the address as the kernel holds it
    // (network order), printed as a number in this machine's byte order.
    for (k, chunk) in ip.as_bytes().chunks(8).enumerate() {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        out[k * 4..k * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some((out, port))
}

/// The uid column of the line for `peer -> local` in `table` (a `/proc/net/tcp` text).
fn procfs_lookup(table: &str, peer: ([u8; 16], u16), local: ([u8; 16], u16)) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return None;
        }
        let state = u8::from_str_radix(f[3], 16).ok()?;
        (parse_proc_addr(f[1])? == peer
            && parse_proc_addr(f[2])? == local
            && !NOT_A_CLIENT.contains(&state))
        .then(|| f[7].parse().ok())
        .flatten()
    })
}

fn procfs_uid(peer: SocketAddr, local: SocketAddr) -> io::Result<u32> {
    let (family, src, dst) = same_family(peer, local);
    let v4 = family == libc::AF_INET as u8;
    let file = if v4 {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let table = std::fs::read_to_string(file)?;
    let key = |a: [u8; 16], port| {
        let mut k = [0u8; 16];
        if v4 {
            k[..4].copy_from_slice(&a[..4]);
        } else {
            k = a;
        }
        (k, port)
    };
    procfs_lookup(&table, key(src, peer.port()), key(dst, local.port())).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no open socket {peer} -> {local} in {file}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A real loopback connection: (client, accepted, client's addr, listener's addr).
    fn pair() -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let c = TcpStream::connect(local).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        (c, s, peer, local)
    }

    #[test]
    fn both_lookups_name_this_process_as_the_owner_of_its_own_connection() {
        let (_c, _s, peer, local) = pair();
        assert_eq!(sock_diag_uid(peer, local).unwrap(), own_uid());
        assert_eq!(procfs_uid(peer, local).unwrap(), own_uid());
        assert_eq!(peer_uid(peer, local).unwrap(), own_uid());
    }

    #[test]
    fn a_socket_that_does_not_exist_is_an_error_not_a_uid() {
        let (c, s, peer, local) = pair();
        let wrong = SocketAddr::from(([127, 0, 0, 1], local.port().wrapping_add(1)));
        assert!(sock_diag_uid(peer, wrong).is_err());
        assert!(procfs_uid(peer, wrong).is_err());
        // The listening socket's own address is not a client socket.
        assert!(peer_uid(local, SocketAddr::from(([0, 0, 0, 0], 0))).is_err());
        drop((c, s));
    }

    #[test]
    fn procfs_lines_are_read_like_the_kernel_writes_them() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0 20 4 30 10 -1\n   \
             1: 0100007F:D431 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1\n";
        let ip = |a: [u8; 4]| {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&a);
            k
        };
        let lo = ip([127, 0, 0, 1]);
        if cfg!(target_endian = "little") {
            assert_eq!(procfs_lookup(table, (lo, 8080), (lo, 54321)), Some(1000));
            // TIME_WAIT reports no owner: not an answer.
            assert_eq!(procfs_lookup(table, (lo, 54321), (lo, 8080)), None);
        }
        assert_eq!(procfs_lookup("header only\n", (lo, 1), (lo, 2)), None);
        assert_eq!(parse_proc_addr("nonsense"), None);
        assert_eq!(parse_proc_addr("0100007F:XYZ"), None);
    }

    #[test]
    fn a_netlink_error_answer_is_an_error() {
        let req = sock_diag_request(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0u8; 10]);
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        err.extend_from_slice(&[0u8; 16]);
        let e = parse_answer(&err, &req).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(parse_answer(&[], &req).is_err());
        assert!(parse_answer(&[1, 2, 3], &req).is_err());
    }
}
