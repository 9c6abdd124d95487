//! An immediate ACK on the upstream connection when an answer's head has come and its
//! body has not (Linux).
//!
//! A server with Nagle's algorithm on (no `TCP_NODELAY`) writes an answer's head as one
//! small segment and holds its next small write (an SSE event, the last chunk) until
//! that segment is acknowledged. The proxy reuses its upstream connection for request
//! after request, so the kernel takes the connection as interactive ("pingpong": it
//! sends within the ACK timeout of receiving) and delays the ACK of the head for its
//! delayed-ACK timer (40 ms and more) in the hope of carrying it on data; the proxy has
//! none to send. Every streamed answer then waited out that timer. `TCP_QUICKACK` on the
//! socket sends the pending ACK at once and leaves the interactive mode until the
//! next request goes out, so the server's held write comes without the wait.
//!
//! reqwest does not hand out its sockets; the connection is found by its remote
//! address among this process's descriptors (`/proc/self/fd`, `getpeername`). Other
//! pooled connections to the same remote get the option too: an early ACK is all it
//! does. Only called when an answer's body is not there yet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Set `TCP_QUICKACK` on every TCP socket of this process connected to `remote`;
/// how many there were.
pub fn quickack_to(remote: SocketAddr) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut n = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if peer_of(fd) == Some(remote) && set_quickack(fd) {
            n += 1;
        }
    }
    n
}

/// The remote address of the socket `fd`, if it is a connected IPv4 / IPv6 socket.
fn peer_of(fd: i32) -> Option<SocketAddr> {
    // SAFETY: a zeroed sockaddr_storage is valid; getpeername writes at most `len`
    // bytes into it and fails harmlessly on a descriptor that is not a socket (or
    // that was closed meanwhile).
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe {
        libc::getpeername(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

fn set_quickack(fd: i32) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a live local; on a socket that is not TCP
    // it fails with an error and changes nothing.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_connection_by_its_remote_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(quickack_to(addr), 0, "no connection yet");
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (_s, _) = l.accept().unwrap();
        assert_eq!(quickack_to(addr), 1);
        drop(c);
    }
}
