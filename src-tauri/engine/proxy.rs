//! The local authenticating proxy: one per workload with a `url`, on
//! `127.0.0.1:<listen_port>`.
//!
//! Every method and path is forwarded to the workload's remote origin with
//! `Authorization: Bearer <access token>`; the client's own `Authorization` and
//! `Cookie` are dropped, and the remote's `Set-Cookie` and `Access-Control-*` never
//! reach the client (they would belong to `127.0.0.1`, not to the remote). Bodies
//! stream both ways (SSE and chunked streamable HTTP arrive event by event); only a
//! request body of at most `proxy_replay_bytes` is held, so it can be sent again after
//! a `401`.
//!
//! Outages are where it differs from a plain bearer-injecting proxy:
//! * while the access token is valid it serves, even when the workload is `retrying`;
//! * with no valid token it answers `503` with `Retry-After` and a JSON body saying
//!   why, never `401`, so an MCP client does not start an OAuth flow of its own;
//! * an upstream `401` makes the workload's monitor refresh once (single-flight with
//!   the timer, triggers and every other request) and the request is replayed once;
//!   only a refresh that ends in an OAuth verdict makes the workload
//!   `unauthenticated`;
//! * an upstream `403` with `error="insufficient_scope"` (MCP step-up) is told to
//!   the monitor (status "needs more permission: SCOPES", one notification, a
//!   sign-in asking for the union of the scopes) and answered `403` with a JSON
//!   reason and without the challenge, so the client starts no OAuth flow of its own.
//!
//! Who may use it:
//! * only the user running Tokenwarden: on Linux the owner of the connecting socket is
//!   looked up per accepted connection ([`peer`]) and another uid gets a `403` (fail
//!   closed: a failed lookup is a refusal); where the owner cannot be looked up, the
//!   local URL carries a per-workload secret path prefix ([`PathSecret`]);
//! * not web pages: `Host` must be this proxy's loopback address and port (DNS
//!   rebinding), a present `Origin` must be the proxy's own
//!   (`http://127.0.0.1:PORT`, `http://localhost:PORT`, `http://[::1]:PORT`), a
//!   present `Sec-Fetch-Site` must be `same-origin` or `none`, and a CORS preflight is
//!   refused by the proxy itself; all with `403` and a JSON reason, never forwarded.
//!
//! Connections: hyper's HTTP/1 under the proxy's own accept loop. A connection must
//! send a complete request head within `proxy_header_timeout` of opening or of its
//! previous answer (so idle keep-alive connections close after it too); at most
//! `proxy_max_connections` are served at once, a new one taking the place of the
//! longest-idle one, and answered `503 busy` only when every one has a request in
//! flight.

#[cfg(target_os = "linux")]
pub mod peer;
#[cfg(target_os = "linux")]
pub mod quickack;

use crate::monitor::{MonitorRequest, MonitorShared, TokenError};
use crate::policy::Policy;
use crate::secret::Secret;
use crate::status::WorkloadStatus;
use crate::Status;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use url::Url;

/// What one proxy needs from the engine: the workload's monitor (its usable token,
/// its status for the `503` answers, and its queue for refreshes).
pub struct ProxyCtx {
    pub name: String,
    /// The remote URL; requests go to its origin with the local path and query.
    pub upstream: Url,
    pub monitor: Arc<MonitorShared>,
    pub http: reqwest::Client,
    pub policy: Arc<Policy>,
    /// The secret path prefix every request must start with, where the owner of a
    /// connection cannot be looked up ([`path_secret_for`]); `None` on Linux.
    pub path_secret: Option<PathSecret>,
}

/// A running proxy. Dropping it (or `stop`) closes the port and ends open streams.
pub struct Proxy {
    pub addr: SocketAddr,
    /// See [`ProxyCtx::path_secret`]: part of [`local_url`].
    pub path_secret: Option<PathSecret>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Stop accepting, end open streams, and wait (briefly) for the port to close.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Bind the proxy's port on 127.0.0.1 (never a wildcard); 0 picks a free port.
pub fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The HTTP client for upstream requests: no overall timeout (streams may last
/// hours), connect timeout from the policy, redirects passed back to the client.
pub fn http_client(
    policy: &Policy,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    let b = reqwest::Client::builder()
        .connect_timeout(policy.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true);
    crate::oauth::trust_ca_file(b, ca_file)?
        .build()
        .map_err(|e| format!("cannot build the proxy's HTTP client: {e}"))
}

/// `http://127.0.0.1:PORT/<the remote's path>`: what a client is pointed at (with
/// the path secret in front of the remote's path where there is one).
pub fn local_url(addr: SocketAddr, upstream: &Url, secret: Option<&PathSecret>) -> String {
    let mut path = upstream.path().to_string();
    if let Some(q) = upstream.query() {
        path.push('?');
        path.push_str(q);
    }
    let prefix = secret
        .map(|s| format!("/{}", s.0.expose()))
        .unwrap_or_default();
    format!("http://127.0.0.1:{}{prefix}{path}", addr.port())
}

/// A per-workload secret first path segment (`tw-` + 43 base64url characters), the
/// owner check where the owner of a connection cannot be looked up: only processes
/// that can read the user's config dir know it. `client-config` and `local_url` carry
/// it; the proxy strips it before forwarding. Never logged (`Debug` is redacted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSecret(Secret);

impl PathSecret {
    /// SHA-256 of the config dir's key and the workload's name: stable across
    /// restarts (client configs stay valid), different per workload.
    pub fn derive(key: &[u8], workload: &str) -> PathSecret {
        use base64::Engine as _;
        let mut h = Sha256::new();
        h.update(key);
        h.update([0u8]);
        h.update(workload.as_bytes());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize());
        PathSecret(Secret::new(format!("tw-{b64}")))
    }

    /// The path without the secret first segment (`/` when nothing follows), or
    /// `None` when the path does not start with it. The segment is compared in
    /// constant time.
    pub fn strip<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix('/')?;
        let (first, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let want = self.0.expose().as_bytes();
        let got = first.as_bytes();
        let mut diff = (want.len() != got.len()) as u8;
        for (k, w) in want.iter().enumerate() {
            diff |= w ^ got.get(k).copied().unwrap_or(0);
        }
        (diff == 0).then_some(if tail.is_empty() { "/" } else { tail })
    }
}

/// The path secret of `workload`, on platforms where the proxy cannot look up who owns
/// a connection; `None` on Linux, where it can. The key (32 random bytes) lives in
/// `proxy-path.key` (0600) beside `config_file`, made on first use.
pub fn path_secret_for(
    config_file: &std::path::Path,
    workload: &str,
) -> std::io::Result<Option<PathSecret>> {
    if cfg!(target_os = "linux") {
        return Ok(None);
    }
    let dir = config_file.parent().unwrap_or(std::path::Path::new("."));
    let key_file = dir.join("proxy-path.key");
    let key = match std::fs::read(&key_file) {
        Ok(k) if k.len() >= 32 => k,
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is damaged",
                key_file.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(&key_file) {
                Ok(mut f) => {
                    use std::io::Write as _;
                    f.write_all(&key)?;
                    f.sync_all()?;
                    key.to_vec()
                }
                // Another process made it first: use its key.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read(&key_file)?
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    Ok(Some(PathSecret::derive(&key, workload)))
}

/// The JSON an MCP client needs to reach the local proxy.
pub fn client_config(name: &str, local_url: &str) -> serde_json::Value {
    serde_json::json!({ "mcpServers": { name: { "url": local_url } } })
}

/// Refusals (another user, busy) answered at once; more are closed unanswered.
const REFUSING_AT_ONCE: usize = 32;

/// Serve `ctx` on `listener` until stopped.
pub fn spawn(listener: std::net::TcpListener, ctx: ProxyCtx) -> std::io::Result<Proxy> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let path_secret = ctx.path_secret.clone();
    let state = Arc::new(Shared {
        conns: Conns {
            max: ctx.policy.proxy_max_connections.max(1) as usize,
            epoch: Instant::now(),
            open: Mutex::new((0, HashMap::new())),
        },
        ctx,
        port: addr.port(),
        cancel: cancel.clone(),
        refusing: Semaphore::new(REFUSING_AT_ONCE),
        last_warning: Mutex::new(None),
        unreported: AtomicU64::new(0),
    });
    let task = tokio::spawn(accept_loop(listener, addr, state));
    Ok(Proxy {
        addr,
        path_secret,
        cancel,
        task: Some(task),
    })
}

/// Accept until stopped; each connection is a task of the set, so stopping the loop
/// (or aborting it) ends them all.
async fn accept_loop(listener: tokio::net::TcpListener, local: SocketAddr, s: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = s.cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(s.clone(), stream, peer, local));
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) => {}
                Err(e) => {
                    // Out of descriptors or memory: pause instead of spinning on it.
                    s.warn_limited(&format!("the local proxy cannot accept a connection: {e}"));
                    tokio::select! {
                        _ = s.cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    // Every connection's close token is a child of `s.cancel`: each shuts down
    // gracefully (an in-flight stream ends, see `relay`).
    while conns.join_next().await.is_some() {}
}

/// One accepted connection: owner check, a place among the served ones, then HTTP.
async fn connection(s: Arc<Shared>, stream: TcpStream, peer: SocketAddr, local: SocketAddr) {
    if let Err(why) = s.owner_check(peer, local).await {
        s.warn_limited(&format!("refused a connection from {peer}: {why}"));
        let message =
            format!("this proxy serves only the processes of the user running Tokenwarden: {why}");
        s.refuse(stream, StatusCode::FORBIDDEN, "forbidden_user", message)
            .await;
        return;
    }
    let Some(slot) = s.admit() else {
        s.warn_limited(&format!(
            "busy: all {} connections have a request in flight; answered 503",
            s.conns.max
        ));
        let message = format!(
            "the local proxy has {} requests in flight, its limit (proxy_max_connections); try again",
            s.conns.max
        );
        s.refuse(stream, StatusCode::SERVICE_UNAVAILABLE, "busy", message)
            .await;
        return;
    };
    let svc_state = s.clone();
    let conn_state = slot.state.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let busy = Busy::start(conn_state.clone(), svc_state.conns.epoch);
        let s = svc_state.clone();
        async move {
            let resp = forward(s, req.map(Body::new)).await;
            Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, _busy: busy }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(s.ctx.policy.proxy_header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(workload = %s.ctx.name, "proxy connection ended: {e}");
            }
            return;
        }
        _ = slot.state.close.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The connections a proxy serves, for its bound.
struct Conns {
    max: usize,
    /// `idle_since` counts milliseconds from here.
    epoch: Instant,
    /// Next id, and the open connections by id.
    open: Mutex<(u64, HashMap<u64, Arc<ConnState>>)>,
}

struct ConnState {
    /// Requests whose answer has not ended yet.
    in_flight: AtomicUsize,
    /// Since when it has had no request in flight (ms from `Conns::epoch`).
    idle_since: AtomicU64,
    /// Closes the connection gracefully (a child of the proxy's stop token).
    close: CancellationToken,
}

fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// A connection's place among the served ones; dropping it frees the place.
struct Slot {
    s: Arc<Shared>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.s.conns.open).1.remove(&self.id);
    }
}

/// A request in flight on a connection, until its answer's body ends or is dropped.
struct Busy {
    conn: Arc<ConnState>,
    epoch: Instant,
}

impl Busy {
    fn start(conn: Arc<ConnState>, epoch: Instant) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy { conn, epoch }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(millis_since(self.epoch), Ordering::SeqCst);
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body that keeps its request counted as in flight until it ends.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    ctx: ProxyCtx,
    port: u16,
    cancel: CancellationToken,
    conns: Conns,
    refusing: Semaphore,
    /// Refusal warnings: at most one per 10 s, with a count of the others.
    last_warning: Mutex<Option<Instant>>,
    unreported: AtomicU64,
}

impl Shared {
    /// Is the process at `peer` (connected to `local`) run by this process's user?
    #[cfg(target_os = "linux")]
    async fn owner_check(&self, peer: SocketAddr, local: SocketAddr) -> Result<(), String> {
        let me = peer::own_uid();
        match tokio::task::spawn_blocking(move || peer::peer_uid(peer, local)).await {
            Ok(Ok(uid)) if uid == me => Ok(()),
            Ok(Ok(uid)) => Err(format!("the connection is from uid {uid}, not {me}")),
            Ok(Err(e)) => Err(format!("the connection's owner cannot be looked up ({e})")),
            Err(e) => Err(format!("the connection's owner cannot be looked up ({e})")),
        }
    }

    /// Elsewhere the owner is not looked up: the path secret is checked per request.
    #[cfg(not(target_os = "linux"))]
    async fn owner_check(&self, _peer: SocketAddr, _local: SocketAddr) -> Result<(), String> {
        Ok(())
    }

    /// A place for a new connection: free, or the longest-idle connection's (closed
    /// for it); `None` when every connection has a request in flight.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = lock(&self.conns.open);
        if open.1.len() >= self.conns.max {
            let victim = open
                .1
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::SeqCst))
                .map(|(id, _)| *id)?;
            if let Some(c) = open.1.remove(&victim) {
                c.close.cancel();
            }
            tracing::debug!(workload = %self.ctx.name, "closed the longest-idle connection for a new one");
        }
        open.0 += 1;
        let id = open.0;
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(millis_since(self.conns.epoch)),
            close: self.cancel.child_token(),
        });
        open.1.insert(id, state.clone());
        Some(Slot {
            s: self.clone(),
            id,
            state,
        })
    }

    /// Answer one request on `stream` with `status` and a JSON reason, then close;
    /// with too many refusals under way, just close.
    async fn refuse(&self, stream: TcpStream, status: StatusCode, code: &str, message: String) {
        let Ok(_permit) = self.refusing.try_acquire() else {
            return;
        };
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        let busy = status == StatusCode::SERVICE_UNAVAILABLE;
        let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
            let mut r = Response::new(Body::from(body.clone()));
            *r.status_mut() = status;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if busy {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            async move { Ok::<_, Infallible>(r) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.ctx.policy.proxy_header_timeout)
            .keep_alive(false);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::select! {
            _ = conn => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    /// A warning, at most one per 10 s (another user or a client in a loop must not
    /// fill the log); the next one says how many were left out.
    fn warn_limited(&self, what: &str) {
        let mut last = lock(&self.last_warning);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let more = self.unreported.swap(0, Ordering::Relaxed);
        if more > 0 {
            tracing::warn!(workload = %self.ctx.name, "{what} (and {more} more since the last such warning)");
        } else {
            tracing::warn!(workload = %self.ctx.name, "{what}");
        }
    }
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), plus
/// the ones the proxy sets itself.
const DROPPED: &[HeaderName] = &[
    header::CONNECTION,
    header::HOST,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Which way headers are copied: each direction drops what belongs to the
/// `127.0.0.1` origin, not to the remote.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client to remote: the client's cookies for 127.0.0.1 stay here.
    Request,
    /// Remote to client: no cookies for 127.0.0.1, no CORS grants in the remote's name.
    Response,
}

fn dropped_for(way: Way, k: &HeaderName) -> bool {
    match way {
        Way::Request => *k == header::COOKIE || k.as_str() == "cookie2",
        Way::Response => {
            *k == header::SET_COOKIE
                || k.as_str() == "set-cookie2"
                || k.as_str().starts_with("access-control-")
        }
    }
}

fn copy_headers(from: &HeaderMap, skip_content_length: bool, way: Way) -> HeaderMap {
    let listed: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (k, v) in from {
        if DROPPED.contains(k)
            || k.as_str() == "keep-alive"
            || dropped_for(way, k)
            || (skip_content_length && *k == header::CONTENT_LENGTH)
            || listed.iter().any(|l| l == k.as_str())
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

/// A JSON error answer. `retry_after` adds the header (503s).
fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    s: &Shared,
    retry_after: Option<u64>,
) -> Response {
    let st = s.ctx.monitor.status();
    let body = serde_json::json!({
        "error": code,
        "message": message,
        "workload": s.ctx.name,
        "status": st.status.as_str(),
        "reason": st.reason,
        "retry_after": retry_after,
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Seconds until the monitor's next attempt, for `Retry-After` (1..=300).
fn retry_after(st: &WorkloadStatus) -> u64 {
    let now = SystemTime::now();
    let secs = st
        .next_attempt_at
        .map(SystemTime::from)
        .and_then(|t| t.duration_since(now).ok())
        .map(|d| d.as_secs_f64().ceil() as u64)
        .unwrap_or(30);
    secs.clamp(1, 300)
}

fn unavailable(s: &Shared, e: &TokenError) -> Response {
    let st = s.ctx.monitor.status();
    let (code, message) = match e {
        TokenError::Unauthenticated { .. } => (
            "unauthenticated",
            format!(
                "{e}. Sign in again: tokenwarden login {} (or \"Re-authenticate\" in the Tokenwarden window)",
                s.ctx.name
            ),
        ),
        TokenError::Stopped { .. } => ("stopped", e.to_string()),
        TokenError::Unavailable { .. } => ("token_unavailable", format!("{e}; Tokenwarden keeps retrying")),
    };
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        code,
        &message,
        s,
        Some(
            if st.status == Status::Running || st.status == Status::Retrying {
                retry_after(&st)
            } else {
                30
            },
        ),
    )
}

/// Is `host` (a `Host` authority) this machine's loopback?
fn loopback_authority(authority: &str, port: Option<u16>) -> bool {
    let Ok(u) = Url::parse(&format!("http://{authority}")) else {
        return false;
    };
    crate::config::is_loopback_host(&u) && port.is_none_or(|p| u.port_or_known_default() == Some(p))
}

/// The proxy's own origins: `http://` + `127.0.0.1`, `localhost` or `[::1]` + `:PORT`
/// (as browsers write an origin: lower case, no path; no port for port 80).
fn own_origin(origin: &str, port: u16) -> bool {
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| {
        origin.eq_ignore_ascii_case(&format!("http://{h}:{port}"))
            || (port == 80 && origin.eq_ignore_ascii_case(&format!("http://{h}")))
    })
}

/// Why a request must not be forwarded, before anything else is done for it: an
/// error code and a message, answered `403`.
fn check_request(
    method: &Method,
    headers: &HeaderMap,
    port: u16,
) -> Result<(), (&'static str, String)> {
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| loopback_authority(h, Some(port)));
    if !host_ok {
        return Err((
            "foreign_host",
            format!("the Host header must name this proxy's loopback address and port {port}"),
        ));
    }
    if method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return Err((
            "cors_preflight",
            "CORS preflight requests are refused: web pages may not use this proxy".into(),
        ));
    }
    let own = format!("http://127.0.0.1:{port}, http://localhost:{port} or http://[::1]:{port}");
    for origin in headers.get_all(header::ORIGIN) {
        if !origin.to_str().is_ok_and(|o| own_origin(o, port)) {
            return Err((
                "foreign_origin",
                format!("requests from web pages are refused: an Origin must be this proxy's own ({own})"),
            ));
        }
    }
    for site in headers.get_all("sec-fetch-site") {
        let ok = site
            .to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case("same-origin") || v.eq_ignore_ascii_case("none"));
        if !ok {
            return Err((
                "cross_site",
                "requests a browser made for a web page of another site are refused (Sec-Fetch-Site)".into(),
            ));
        }
    }
    Ok(())
}

/// A `403` before anything was forwarded: the reason, no workload status.
fn forbidden(s: &Shared, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message, "workload": s.ctx.name });
    let mut resp = (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl Shared {
    /// A valid access token, or the `503` to answer. The monitor publishes its usable
    /// token, so most requests never wait for it. During a failure episode with
    /// an expired token the monitor is not asked: a busy client must not turn into
    /// a refresh per request.
    async fn token(&self, rejected: Option<Secret>) -> Result<Secret, Response> {
        if rejected.is_none() {
            if let Some((t, exp)) = self.ctx.monitor.usable_token() {
                // No expiry: a token used until the remote rejects it.
                if exp.is_none_or(|e| e > SystemTime::now() + Duration::from_secs(1)) {
                    return Ok(t);
                }
            }
        }
        {
            let st = self.ctx.monitor.status();
            let expired = st
                .access_token_expires_at
                .map(SystemTime::from)
                .is_none_or(|t| t <= SystemTime::now());
            let in_episode = st.status == Status::Retrying || st.attempts > 0;
            if rejected.is_none() && expired && in_episode {
                let e = TokenError::Unavailable {
                    name: self.ctx.name.clone(),
                    reason: st
                        .reason
                        .clone()
                        .unwrap_or_else(|| "the token endpoint cannot be reached".into()),
                };
                return Err(unavailable(self, &e));
            }
        }
        let (tx, rx) = oneshot::channel();
        let cmd = match rejected {
            Some(t) => MonitorRequest::Rejected(Box::new((t, tx))),
            None => MonitorRequest::Token(tx),
        };
        let stopped = || TokenError::Stopped {
            name: self.ctx.name.clone(),
        };
        if self.ctx.monitor.send(cmd).is_err() {
            return Err(unavailable(self, &stopped()));
        }
        let wait = self.ctx.policy.http_timeout + Duration::from_secs(2);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(g))) => Ok(g.token),
            Ok(Ok(Err(e))) => Err(unavailable(self, &e)),
            Ok(Err(_)) => Err(unavailable(self, &stopped())),
            Err(_) => Err(unavailable(
                self,
                &TokenError::Unavailable {
                    name: self.ctx.name.clone(),
                    reason: "the refresh is taking too long".into(),
                },
            )),
        }
    }

    async fn send(
        &self,
        method: &axum::http::Method,
        target: &Url,
        headers: &HeaderMap,
        token: &Secret,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, Response> {
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                error(
                    StatusCode::BAD_GATEWAY,
                    "bad_token",
                    "the access token cannot be sent in a header",
                    self,
                    None,
                )
            })?;
        auth.set_sensitive(true);
        let req = self
            .ctx
            .http
            .request(method.clone(), target.clone())
            .headers(headers.clone())
            .header(header::AUTHORIZATION, auth)
            .body(body);
        match tokio::time::timeout(self.ctx.policy.proxy_upstream_timeout, req.send()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let f = crate::classify::classify_transport(&e);
                tracing::info!(workload = %self.ctx.name, cause = upstream_cause(&f), "upstream request failed");
                Err(error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    &format!("the remote could not be reached: {}", upstream_cause(&f)),
                    self,
                    None,
                ))
            }
            Err(_) => Err(error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                &format!(
                    "the remote did not answer within {}",
                    humantime::format_duration(self.ctx.policy.proxy_upstream_timeout)
                ),
                self,
                None,
            )),
        }
    }

    /// Pass the upstream answer through, body streamed, ending when the proxy stops.
    /// When the body is not there with the head, the upstream connection ACKs at once
    /// (see [`quickack`]: a Nagle-on server holds the body until the head is ACKed).
    fn relay(&self, resp: reqwest::Response) -> Response {
        let status = resp.status();
        let headers = copy_headers(resp.headers(), false, Way::Response);
        #[cfg(target_os = "linux")]
        let mut remote = resp.remote_addr();
        let mut body = resp.bytes_stream();
        let stream = futures::stream::poll_fn(move |cx| {
            let next = body.poll_next_unpin(cx);
            #[cfg(target_os = "linux")]
            if next.is_pending() {
                if let Some(addr) = remote.take() {
                    quickack::quickack_to(addr);
                }
            }
            next
        })
        .take_until(self.cancel.clone().cancelled_owned());
        let mut out = Response::new(Body::from_stream(stream));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }
}

/// The request body: held whole when small (replayable), else streamed.
enum ReqBody {
    Held(Bytes),
    Streaming(reqwest::Body),
}

async fn read_body(body: Body, limit: usize) -> Result<ReqBody, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut held: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len();
        held.push(chunk);
        if len > limit {
            let head = futures::stream::iter(held.into_iter().map(Ok::<_, axum::Error>));
            return Ok(ReqBody::Streaming(reqwest::Body::wrap_stream(
                head.chain(stream).map_err(std::io::Error::other),
            )));
        }
    }
    Ok(ReqBody::Held(match held.len() {
        0 => Bytes::new(),
        1 => held.pop().expect("one chunk"),
        _ => held.concat().into(),
    }))
}

async fn forward(s: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err((code, why)) = check_request(&parts.method, &parts.headers, s.port) {
        s.warn_limited(&format!("refused a request: {why}"));
        return forbidden(&s, code, &why);
    }
    let path = match &s.ctx.path_secret {
        None => parts.uri.path(),
        Some(secret) => match secret.strip(parts.uri.path()) {
            Some(p) => p,
            None => {
                s.warn_limited("refused a request without the proxy's path secret");
                return forbidden(
                    &s,
                    "path_secret",
                    "this proxy's URL starts with a secret path segment: use the URL `tokenwarden client-config` prints",
                );
            }
        },
    };
    let mut target = s.ctx.upstream.clone();
    target.set_path(path);
    target.set_query(parts.uri.query());

    let token = match s.token(None).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let body = match read_body(body, s.ctx.policy.proxy_replay_bytes).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                &format!("reading the request body failed: {e}"),
                &s,
                None,
            )
        }
    };
    let streaming = matches!(body, ReqBody::Streaming(_));
    let headers = copy_headers(&parts.headers, !streaming, Way::Request);
    let (first, replay) = match body {
        ReqBody::Held(b) => (reqwest::Body::from(b.clone()), Some(b)),
        ReqBody::Streaming(b) => (b, None),
    };
    let resp = match s
        .send(&parts.method, &target, &headers, &token, first)
        .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Some(scopes) = insufficient_scope(&resp) {
        drop(resp);
        return s.step_up(token, scopes).await;
    }
    if resp.status() != StatusCode::UNAUTHORIZED {
        return s.relay(resp);
    }
    drop(resp);
    tracing::info!(workload = %s.ctx.name, "the remote answered 401; refreshing the access token");
    let fresh = match s.token(Some(token)).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let Some(held) = replay else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_refreshed",
            "the remote refused the access token; it has been refreshed, but the request body was too large to send again: repeat the request",
            &s,
            Some(1),
        );
    };
    let resp = match s
        .send(
            &parts.method,
            &target,
            &headers,
            &fresh,
            reqwest::Body::from(held),
        )
        .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if resp.status() == StatusCode::UNAUTHORIZED {
        tracing::warn!(workload = %s.ctx.name, "the remote refused a freshly refreshed access token");
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_rejected_token",
            "the remote refused a freshly refreshed access token; check the workload's scopes and resource",
            &s,
            None,
        );
    }
    if let Some(scopes) = insufficient_scope(&resp) {
        drop(resp);
        return s.step_up(fresh, scopes).await;
    }
    s.relay(resp)
}

/// Why the remote could not be reached, in words about the remote (a transport
/// failure's own description speaks of the token endpoint).
fn upstream_cause(f: &crate::classify::Failure) -> &'static str {
    use crate::classify::FailureKind;
    match f.kind {
        FailureKind::Connect => {
            "could not connect (nothing listening, offline, VPN down, or its name does not resolve)"
        }
        FailureKind::Tls => {
            "the secure connection failed, often a captive portal or TLS inspection"
        }
        FailureKind::Timeout => "the connection timed out",
        _ => "the connection broke before the answer was complete",
    }
}

/// The scopes of an upstream `403` whose Bearer challenge says
/// `error="insufficient_scope"` (an MCP step-up); `None` for every other answer.
fn insufficient_scope(resp: &reqwest::Response) -> Option<Vec<String>> {
    if resp.status() != StatusCode::FORBIDDEN {
        return None;
    }
    let values: Vec<&str> = resp
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let challenges = crate::discovery::parse_www_authenticate(&values);
    let c = challenges.iter().find(|c| {
        c.scheme.eq_ignore_ascii_case("bearer") && c.param("error") == Some("insufficient_scope")
    })?;
    let mut scopes: Vec<String> = Vec::new();
    for sc in c
        .param("scope")
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
    {
        if !scopes.iter().any(|x| x == sc) {
            scopes.push(sc.to_string());
        }
    }
    Some(scopes)
}

impl Shared {
    /// The remote wants more scopes (`403 insufficient_scope`): the monitor records
    /// the step-up (status "needs more permission", one notification, a sign-in that
    /// asks for them), and the client gets a `403` with a JSON reason and no
    /// challenge, so it does not start an OAuth flow of its own.
    async fn step_up(&self, used: Secret, scopes: Vec<String>) -> Response {
        let (tx, rx) = oneshot::channel();
        let gave_up = if self
            .ctx
            .monitor
            .send(MonitorRequest::InsufficientScope(Box::new((
                used,
                scopes.clone(),
                tx,
            ))))
            .is_ok()
        {
            tokio::time::timeout(Duration::from_secs(2), rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
        } else {
            false
        };
        let name = &self.ctx.name;
        let wanted = if scopes.is_empty() {
            "permission the remote did not name".to_string()
        } else {
            scopes.join(" ")
        };
        let message = if gave_up {
            format!("`{name}` needs more permission: {wanted}; the remote refused it to the sign-ins that asked for it, so Tokenwarden does not ask again (check the server's scopes)")
        } else {
            format!("`{name}` needs more permission: {wanted}. Re-authenticate (tokenwarden login {name}, or \"Re-authenticate\" in Tokenwarden) to grant it, then repeat the request")
        };
        tracing::info!(workload = %name, scopes = %wanted, gave_up, "the remote asked for more permission (insufficient_scope)");
        error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            &message,
            self,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, headers: &[(&str, &str)]) -> Result<(), &'static str> {
        let mut m = HeaderMap::new();
        for (k, v) in headers {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        check_request(&method, &m, 8765).map_err(|(code, _)| code)
    }

    #[test]
    fn only_loopback_hosts_and_the_proxys_own_origins_pass() {
        let get = |h: &[(&str, &str)]| check(Method::GET, h);
        let host = ("host", "127.0.0.1:8765");
        assert_eq!(get(&[host]), Ok(()));
        assert_eq!(get(&[("host", "localhost:8765")]), Ok(()));
        for o in [
            "http://127.0.0.1:8765",
            "http://localhost:8765",
            "http://[::1]:8765",
            "HTTP://LOCALHOST:8765",
        ] {
            assert_eq!(get(&[host, ("origin", o)]), Ok(()), "{o}");
        }
        assert_eq!(
            get(&[("host", "evil.example:8765")]),
            Err("foreign_host"),
            "DNS rebinding"
        );
        assert_eq!(
            get(&[("host", "127.0.0.1:9999")]),
            Err("foreign_host"),
            "another port"
        );
        assert_eq!(get(&[]), Err("foreign_host"));
        for o in [
            "null",
            "https://evil.example",
            "http://localhost:3000",
            "https://127.0.0.1:8765",
            "http://127.0.0.2:8765",
            "http://127.0.0.1:8765/",
            "http://127.0.0.1",
            "",
        ] {
            assert_eq!(get(&[host, ("origin", o)]), Err("foreign_origin"), "{o:?}");
        }
        // Every Origin header counts, not only the first.
        assert_eq!(
            get(&[
                host,
                ("origin", "http://127.0.0.1:8765"),
                ("origin", "null")
            ]),
            Err("foreign_origin")
        );
    }

    #[test]
    fn browser_requests_for_other_sites_and_preflights_are_refused() {
        let host = ("host", "127.0.0.1:8765");
        for site in ["cross-site", "same-site", "Cross-Site", "something-new"] {
            assert_eq!(
                check(Method::GET, &[host, ("sec-fetch-site", site)]),
                Err("cross_site"),
                "{site}"
            );
        }
        for site in ["same-origin", "none"] {
            assert_eq!(
                check(Method::GET, &[host, ("sec-fetch-site", site)]),
                Ok(()),
                "{site}"
            );
        }
        let pre = [
            host,
            ("origin", "http://127.0.0.1:8765"),
            ("access-control-request-method", "POST"),
        ];
        assert_eq!(
            check(Method::OPTIONS, &pre),
            Err("cors_preflight"),
            "even from the proxy's own origin"
        );
        assert_eq!(
            check(Method::OPTIONS, &[host]),
            Ok(()),
            "a plain OPTIONS is forwarded"
        );
    }

    #[test]
    fn hop_by_hop_client_authorization_and_cookies_are_dropped() {
        let mut m = HeaderMap::new();
        m.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        m.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        m.insert("x-private", HeaderValue::from_static("1"));
        m.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        m.insert(header::COOKIE, HeaderValue::from_static("session=local"));
        m.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        m.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let out = copy_headers(&m, false, Way::Request);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.contains_key(header::ACCEPT) && out.contains_key(header::CONTENT_LENGTH));
        assert!(!copy_headers(&m, true, Way::Request).contains_key(header::CONTENT_LENGTH));

        let mut r = HeaderMap::new();
        r.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        r.append(header::SET_COOKIE, HeaderValue::from_static("c=d"));
        r.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        r.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        r.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
        r.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let out = copy_headers(&r, false, Way::Response);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn local_url_and_client_config() {
        let u = Url::parse("https://remote.example/mcp?x=1").unwrap();
        let l = local_url("127.0.0.1:8765".parse().unwrap(), &u, None);
        assert_eq!(l, "http://127.0.0.1:8765/mcp?x=1");
        assert_eq!(
            client_config("gh", &l).to_string(),
            r#"{"mcpServers":{"gh":{"url":"http://127.0.0.1:8765/mcp?x=1"}}}"#
        );
        let secret = PathSecret::derive(&[7; 32], "gh");
        let l = local_url("127.0.0.1:8765".parse().unwrap(), &u, Some(&secret));
        let rest = l.strip_prefix("http://127.0.0.1:8765/tw-").unwrap();
        assert_eq!(rest.len(), 43 + "/mcp?x=1".len(), "{l}");
        assert!(rest.ends_with("/mcp?x=1"));
        let path = &l["http://127.0.0.1:8765".len()..l.len() - "?x=1".len()];
        assert_eq!(secret.strip(path), Some("/mcp"));
    }

    #[test]
    fn path_secret_is_per_workload_stable_and_stripped_only_when_whole() {
        let a = PathSecret::derive(&[1; 32], "a");
        assert_eq!(a, PathSecret::derive(&[1; 32], "a"), "stable");
        assert_ne!(a, PathSecret::derive(&[1; 32], "b"), "per workload");
        assert_ne!(a, PathSecret::derive(&[2; 32], "a"), "per key");
        assert_eq!(format!("{a:?}"), "PathSecret(Secret(***))", "never printed");
        let seg = a.0.expose().to_string();
        assert!(seg.starts_with("tw-") && seg.len() == 46, "{seg}");
        assert_eq!(a.strip(&format!("/{seg}/mcp/sse")), Some("/mcp/sse"));
        assert_eq!(a.strip(&format!("/{seg}")), Some("/"));
        assert_eq!(a.strip(&format!("/{seg}/")), Some("/"));
        assert_eq!(a.strip("/mcp"), None);
        assert_eq!(a.strip("/"), None);
        assert_eq!(a.strip(""), None);
        assert_eq!(
            a.strip(&format!("/{}/mcp", &seg[..45])),
            None,
            "a prefix of it"
        );
        assert_eq!(a.strip(&format!("/{seg}x/mcp")), None, "longer");
        assert_eq!(a.strip(&format!("{seg}/mcp")), None, "no leading slash");
        assert_eq!(a.strip(&format!("/mcp/{seg}")), None, "first segment only");
        let b = PathSecret::derive(&[1; 32], "b");
        assert_eq!(b.strip(&format!("/{seg}/mcp")), None, "another workload's");
    }

    #[test]
    fn path_secret_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("workloads.toml");
        let first = path_secret_for(&cfg, "w").unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(first, None, "Linux checks the connection's owner instead");
            return;
        }
        assert_eq!(first, path_secret_for(&cfg, "w").unwrap());
    }
}
