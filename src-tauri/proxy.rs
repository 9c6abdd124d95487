//! The local authenticating proxy: one per workload with a `url`, on
//! `127.0.0.1:<listen_port>`.
//!
//! Every method and path is forwarded to the workload's remote origin with
//! `Authorization: Bearer <access token>`; the client's own `Authorization` is
//! dropped. Bodies stream both ways (SSE and chunked streamable HTTP arrive event by
//! event); only a request body of at most `proxy_replay_bytes` is held, so it can be
//! sent again after a `401`.
//!
//! Outages are where it differs from a plain bearer-injecting proxy:
//! * while the access token is valid it serves, even when the workload is `retrying`;
//! * with no valid token it answers `503` with `Retry-After` and a JSON body saying
//!   why, never `401`, so an MCP client does not start an OAuth flow of its own;
//! * an upstream `401` makes the workload's monitor refresh once (single-flight with
//!   the timer, triggers and every other request) and the request is replayed once;
//!   only a refresh that ends in an OAuth verdict makes the workload
//!   `unauthenticated`.
//!
//! Requests whose `Host` is not the loopback address, or that carry a non-loopback
//! `Origin`, are refused (DNS rebinding: a web page must not reach a signed-in
//! remote through this port).

use crate::engine::monitor::{Command, MonitorShared, TokenError};
use crate::engine::policy::Policy;
use crate::engine::secret::Secret;
use crate::engine::status::WorkloadStatus;
use crate::engine::Status;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;
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
}

/// A running proxy. Dropping it (or `stop`) closes the port and ends open streams.
pub struct Proxy {
    pub addr: SocketAddr,
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
    crate::engine::oauth::trust_ca_file(b, ca_file)?
        .build()
        .map_err(|e| format!("cannot build the proxy's HTTP client: {e}"))
}

/// `http://127.0.0.1:PORT/<the remote's path>`: what a client is pointed at.
pub fn local_url(addr: SocketAddr, upstream: &Url) -> String {
    let mut path = upstream.path().to_string();
    if let Some(q) = upstream.query() {
        path.push('?');
        path.push_str(q);
    }
    format!("http://127.0.0.1:{}{path}", addr.port())
}

/// The JSON an MCP client needs to reach the local proxy.
pub fn client_config(name: &str, local_url: &str) -> serde_json::Value {
    serde_json::json!({ "mcpServers": { name: { "url": local_url } } })
}

/// Serve `ctx` on `listener` until stopped.
pub fn spawn(listener: std::net::TcpListener, ctx: ProxyCtx) -> std::io::Result<Proxy> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let state = Arc::new(Shared {
        ctx,
        port: addr.port(),
        cancel: cancel.clone(),
    });
    let app = axum::Router::new().fallback(forward).with_state(state);
    let signal = cancel.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::warn!(error = %e, "proxy stopped with an error");
        }
    });
    Ok(Proxy {
        addr,
        cancel,
        task: Some(task),
    })
}

struct Shared {
    ctx: ProxyCtx,
    port: u16,
    cancel: CancellationToken,
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

fn copy_headers(from: &HeaderMap, skip_content_length: bool) -> HeaderMap {
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

/// Is `host` (a `Host` or `Origin` authority) this machine's loopback?
fn loopback_authority(authority: &str, port: Option<u16>) -> bool {
    let Ok(u) = Url::parse(&format!("http://{authority}")) else {
        return false;
    };
    crate::engine::config::is_loopback_host(&u)
        && port.is_none_or(|p| u.port_or_known_default() == Some(p))
}

fn check_origin(headers: &HeaderMap, port: u16) -> Result<(), &'static str> {
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| loopback_authority(h, Some(port)));
    if !host_ok {
        return Err("the Host header must name this proxy's loopback address");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin.to_str().ok().is_some_and(|o| {
            o == "null"
                || Url::parse(o).is_ok_and(|u| {
                    crate::engine::config::is_loopback_host(&u)
                        && matches!(u.scheme(), "http" | "https")
                })
        });
        if !ok {
            return Err("requests from web pages of other sites are refused");
        }
    }
    Ok(())
}

impl Shared {
    /// A valid access token, or the `503` to answer. The monitor publishes its usable
    /// token, so most requests never wait for it. During a failure episode with
    /// an expired token the monitor is not asked: a busy client must not turn into
    /// a refresh per request.
    async fn token(&self, rejected: Option<Secret>) -> Result<Secret, Response> {
        if rejected.is_none() {
            if let Some((t, exp)) = self.ctx.monitor.usable_token() {
                if exp > SystemTime::now() + Duration::from_secs(1) {
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
            Some(t) => Command::Rejected(Box::new((t, tx))),
            None => Command::Token(tx),
        };
        let stopped = || TokenError::Stopped {
            name: self.ctx.name.clone(),
        };
        if self.ctx.monitor.send(cmd).is_err() {
            return Err(unavailable(self, &stopped()));
        }
        let wait = self.ctx.policy.http_timeout + Duration::from_secs(2);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(t))) => Ok(t),
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
                let f = crate::engine::classify::classify_transport(&e);
                tracing::info!(workload = %self.ctx.name, reason = %f.reason(), "upstream request failed");
                Err(error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    &format!("the remote could not be reached: {}", f.reason()),
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
    fn relay(&self, resp: reqwest::Response) -> Response {
        let status = resp.status();
        let headers = copy_headers(resp.headers(), false);
        let stream = resp
            .bytes_stream()
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

async fn forward(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(why) = check_origin(&parts.headers, s.port) {
        tracing::warn!(workload = %s.ctx.name, "proxy refused a request: {why}");
        return error(StatusCode::FORBIDDEN, "forbidden", why, &s, None);
    }
    let mut target = s.ctx.upstream.clone();
    target.set_path(parts.uri.path());
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
    let headers = copy_headers(&parts.headers, !streaming);
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
    s.relay(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_and_origins_pass() {
        let h = |host: &str, origin: Option<&str>| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            if let Some(o) = origin {
                m.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            check_origin(&m, 8765)
        };
        assert!(h("127.0.0.1:8765", None).is_ok());
        assert!(h("localhost:8765", Some("http://localhost:3000")).is_ok());
        assert!(h("127.0.0.1:8765", Some("null")).is_ok());
        assert!(h("evil.example:8765", None).is_err(), "DNS rebinding");
        assert!(h("127.0.0.1:9999", None).is_err(), "another port");
        assert!(h("127.0.0.1:8765", Some("https://evil.example")).is_err());
        assert!(HeaderMap::new().get(header::HOST).is_none());
        assert!(check_origin(&HeaderMap::new(), 8765).is_err());
    }

    #[test]
    fn hop_by_hop_and_client_authorization_are_dropped() {
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
        m.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        m.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let out = copy_headers(&m, false);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.contains_key(header::ACCEPT) && out.contains_key(header::CONTENT_LENGTH));
        assert!(!copy_headers(&m, true).contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn local_url_and_client_config() {
        let u = Url::parse("https://remote.example/mcp?x=1").unwrap();
        let l = local_url("127.0.0.1:8765".parse().unwrap(), &u);
        assert_eq!(l, "http://127.0.0.1:8765/mcp?x=1");
        assert_eq!(
            client_config("gh", &l).to_string(),
            r#"{"mcpServers":{"gh":{"url":"http://127.0.0.1:8765/mcp?x=1"}}}"#
        );
    }
}
