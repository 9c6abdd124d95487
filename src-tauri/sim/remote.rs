//! A fake OAuth-protected resource (a remote MCP server) on loopback, in front of a
//! [`SimIssuer`]: for discovery tests, proxy tests and the demo.
//!
//! It binds `127.0.0.1` only and serves plain HTTP/1.1 with axum. Bearer tokens are
//! checked with [`SimIssuer::is_valid_access_token`]; tokens are never logged.
//!
//! # Endpoints
//!
//! * `GET /.well-known/oauth-protected-resource/mcp` – RFC 9728 metadata for the
//!   `/mcp` resource: `resource` = [`SimRemote::url`], `authorization_servers` =
//!   the issuer's [`SimIssuer::issuer`], `scopes_supported`.
//! * `GET /.well-known/oauth-protected-resource` – the root variant (its
//!   `resource` is the origin, [`SimRemote::base_url`]).
//! * `/mcp` (any method) – without a valid bearer: `401` with
//!   `WWW-Authenticate: Bearer resource_metadata="…"` (plus `scope="…"` when
//!   configured, `error="invalid_token"` when a token was presented). With one:
//!   `200 {"ok":true,"method":…,"path":…,"body_len":…,"authorization_seen":true}`.
//! * `GET /mcp/sse?n=100&interval_ms=20` – `text/event-stream`, `n` events
//!   `interval_ms` apart, each `data: {"i":k,"sent_at_ms":…}` (Unix milliseconds).
//! * `POST /mcp/echo` – the request body streamed back (any size, never buffered).
//! * `/mcp/admin` – as `/mcp`; the path [`SimRemote::require_scopes`] is meant for.
//!
//! Every `/mcp*` request needs the bearer, counts in [`SimRemote::requests`], and
//! has its `Authorization` and `Cookie` headers recorded
//! ([`SimRemote::last_authorization`], [`SimRemote::last_cookie`]), so a test can check
//! what a proxy replaced or dropped.
//!
//! # Knobs
//!
//! * [`SimRemote::reject_next_valid_token`] – the next request with a valid token
//!   gets `401 invalid_token` once (a token revoked at the resource only);
//! * [`SimRemote::reject_tokens_issued_so_far`] – every token the issuer has issued
//!   until now gets `401 invalid_token` on every request; tokens issued later (a
//!   refresh) are accepted;
//! * [`RemoteOptions::browser_headers`] – `/mcp` answers carry `Set-Cookie` and
//!   `Access-Control-Allow-*` headers, like a remote made for browsers;
//! * [`SimRemote::require_scopes`] – requests to a path need scopes the token's
//!   grant may lack: `403` with an `insufficient_scope` challenge (step-up);
//! * [`SimRemote::set_hang`] – `/mcp*` requests are accepted and never answered
//!   until the knob is turned off (then they are served) or the server stops;
//! * [`SimRemote::set_prm_mode`] – break the protected resource metadata
//!   ([`PrmMode`]: no `authorization_servers`, wrong `resource`, not JSON, huge,
//!   a redirect to another host, same-origin redirects, another authorization
//!   server, only the root document, missing).
//!
//! # Example
//!
//! ```text
//! let issuer = SimIssuer::start(IssuerOptions::default()).await?;
//! let remote = SimRemote::start(issuer.clone(), RemoteOptions::default()).await?;
//! // tokenwarden add w --url {remote.url()}
//! ```

use crate::issuer::{huge_json_response, SimIssuer};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures::StreamExt as _;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Configuration of a [`SimRemote`].
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Name the metadata in the `401` challenge (`resource_metadata`). Off, a
    /// client has to find it at the well-known locations. Default `true`.
    pub advertise_metadata: bool,
    /// A `scope` parameter in the `401` challenge. Default none.
    pub challenge_scope: Option<String>,
    /// `scopes_supported` in the metadata. Default `["mcp:read", "mcp:write"]`.
    pub scopes_supported: Vec<String>,
    /// `POST /mcp` answers `405` before anything else (an SSE-only server: a client
    /// probing it has to use GET). Default `false`.
    pub get_only: bool,
    /// `/mcp` answers carry `Set-Cookie` and `Access-Control-Allow-Origin: *` /
    /// `-Credentials: true` (a remote made for browsers). Default `false`.
    pub browser_headers: bool,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            port: 0,
            advertise_metadata: true,
            challenge_scope: None,
            scopes_supported: vec!["mcp:read".into(), "mcp:write".into()],
            get_only: false,
            browser_headers: false,
        }
    }
}

/// How the protected resource metadata is served (both well-known locations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PrmMode {
    /// Correct metadata.
    #[default]
    Good,
    /// No `authorization_servers`.
    NoAuthorizationServers,
    /// `resource` names another server.
    WrongResource,
    /// `200 text/html`.
    NotJson,
    /// `200 application/json`, chunked, `bytes` long.
    Huge { bytes: usize },
    /// `302` to the same document at `http://localhost:PORT` (another origin, which
    /// serves the good document: following it would "work").
    RedirectToOtherHost,
    /// `hops` same-origin `302`s, then the good document.
    RedirectSameOrigin { hops: u8 },
    /// `authorization_servers: [this]` instead of the issuer.
    AuthorizationServer(String),
    /// `404` at the path-specific location, the good root document.
    RootOnly,
    /// `404`.
    Missing,
}

/// A running fake resource. Cheap to clone; all clones share one server, which
/// stops on [`SimRemote::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct SimRemote {
    inner: Arc<Inner>,
    _guard: Arc<ShutdownOnDrop>,
}

impl std::fmt::Debug for SimRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRemote")
            .field("addr", &self.inner.addr)
            .field("issuer", &self.inner.issuer.base_url())
            .finish_non_exhaustive()
    }
}

struct ShutdownOnDrop(Arc<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown.cancel();
    }
}

struct Inner {
    addr: SocketAddr,
    issuer: SimIssuer,
    opts: RemoteOptions,
    prm_mode: Mutex<PrmMode>,
    hang: watch::Sender<bool>,
    reject_next: AtomicBool,
    rejected: Mutex<std::collections::HashSet<String>>,
    requests: AtomicU64,
    unauthorized: AtomicU64,
    last_authorization: Mutex<Option<String>>,
    last_cookie: Mutex<Option<String>>,
    step_up: Mutex<Option<StepUp>>,
    insufficient: AtomicU64,
    shutdown: CancellationToken,
}

/// [`SimRemote::require_scopes`]: what a request needs and what the `403` asks for.
#[derive(Clone, Debug)]
struct StepUp {
    path: String,
    required: Vec<String>,
    challenge: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimRemote {
    /// Binds `127.0.0.1:opts.port` and serves on the current Tokio runtime, in front
    /// of `issuer` (whose tokens it accepts and which its metadata names).
    pub async fn start(issuer: SimIssuer, opts: RemoteOptions) -> io::Result<SimRemote> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port)))
                .await?;
        let addr = listener.local_addr()?;
        let (hang, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            addr,
            issuer,
            opts,
            prm_mode: Mutex::new(PrmMode::Good),
            hang,
            reject_next: AtomicBool::new(false),
            rejected: Mutex::new(Default::default()),
            requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            last_authorization: Mutex::new(None),
            last_cookie: Mutex::new(None),
            step_up: Mutex::new(None),
            insufficient: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
        });
        let app = Router::new()
            .route(
                "/.well-known/oauth-protected-resource/mcp",
                get(prm_path_specific),
            )
            .route("/.well-known/oauth-protected-resource", get(prm_root))
            .route("/prm-moved", get(prm_moved))
            .route("/mcp", any(mcp))
            .route("/mcp/admin", any(mcp))
            .route("/mcp/sse", get(sse))
            .route("/mcp/echo", post(echo))
            .with_state(inner.clone());
        let signal = inner.shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!("sim remote: server stopped with an error: {err}");
            }
        });
        tracing::debug!("sim remote listening on http://{addr}");
        Ok(SimRemote {
            _guard: Arc::new(ShutdownOnDrop(inner.clone())),
            inner,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The protected resource: `base_url() + "/mcp"`.
    pub fn url(&self) -> String {
        format!("{}/mcp", self.base_url())
    }

    /// `base_url() + "/.well-known/oauth-protected-resource/mcp"`.
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            self.base_url()
        )
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// The issuer whose tokens this resource accepts.
    pub fn issuer(&self) -> &SimIssuer {
        &self.inner.issuer
    }

    /// Requests to `/mcp*` received (whatever the answer).
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// `401` answers sent from `/mcp*`.
    pub fn unauthorized_responses(&self) -> u64 {
        self.inner.unauthorized.load(Ordering::SeqCst)
    }

    /// The `Authorization` header of the latest `/mcp*` request (`None` if it had
    /// none). It holds a token: assert on it, do not log it.
    pub fn last_authorization(&self) -> Option<String> {
        lock(&self.inner.last_authorization).clone()
    }

    /// The `Cookie` header of the latest `/mcp*` request (`None` if it had none).
    pub fn last_cookie(&self) -> Option<String> {
        lock(&self.inner.last_cookie).clone()
    }

    /// The next request with a valid token gets `401 invalid_token`, once.
    pub fn reject_next_valid_token(&self) {
        self.inner.reject_next.store(true, Ordering::SeqCst);
    }

    /// Every token the issuer has issued so far gets `401 invalid_token`, on every
    /// request, from now on (revoked at the resource only); a token issued after this
    /// call, by a refresh, is accepted.
    pub fn reject_tokens_issued_so_far(&self) {
        let issued = self.inner.issuer.issued_tokens();
        lock(&self.inner.rejected).extend(issued);
    }

    /// Requests to `path` (for example `/mcp/admin`) need a token whose grant has
    /// every scope of `required`; one without gets `403` with
    /// `WWW-Authenticate: Bearer error="insufficient_scope", scope="<challenge>"`
    /// (`challenge`: `required` joined, unless given: a server that asks for other
    /// scopes than it checks keeps asking whatever is granted). `None` turns it off.
    pub fn require_scopes(&self, path: &str, required: Option<&[&str]>, challenge: Option<&str>) {
        *lock(&self.inner.step_up) = required.map(|r| StepUp {
            path: path.to_string(),
            required: r.iter().map(|s| s.to_string()).collect(),
            challenge: challenge.map_or_else(|| r.join(" "), str::to_string),
        });
    }

    /// `403 insufficient_scope` answers sent.
    pub fn insufficient_scope_responses(&self) -> u64 {
        self.inner.insufficient.load(Ordering::SeqCst)
    }

    /// While on, `/mcp*` requests are accepted and left unanswered.
    pub fn set_hang(&self, on: bool) {
        self.inner.hang.send_replace(on);
    }

    /// Switches how the protected resource metadata is served.
    pub fn set_prm_mode(&self, mode: PrmMode) {
        *lock(&self.inner.prm_mode) = mode;
    }

    /// Stops the server (in-flight streams end). Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------
// Protected resource metadata
// ---------------------------------------------------------------------------

impl Inner {
    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn prm_json(&self, path_specific: bool) -> serde_json::Value {
        let base = self.base_url();
        serde_json::json!({
            "resource": if path_specific { format!("{base}/mcp") } else { base.clone() },
            "authorization_servers": [self.issuer.issuer()],
            "scopes_supported": self.opts.scopes_supported,
            "bearer_methods_supported": ["header"],
            "resource_name": "tokenwarden sim remote",
        })
    }
}

async fn prm_path_specific(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    serve_prm(&inner, &headers, true)
}

async fn prm_root(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    serve_prm(&inner, &headers, false)
}

/// The end of a `RedirectSameOrigin` chain: `?left=N` more hops, then the document.
async fn prm_moved(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let left: u8 = q.get("left").and_then(|v| v.parse().ok()).unwrap_or(0);
    if left > 0 {
        let to = format!("/prm-moved?left={}", left - 1);
        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    }
    Json(inner.prm_json(true)).into_response()
}

fn serve_prm(inner: &Inner, headers: &HeaderMap, path_specific: bool) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The other origin of `RedirectToOtherHost` serves the good document.
    let mode = if host.starts_with("localhost") {
        PrmMode::Good
    } else {
        lock(&inner.prm_mode).clone()
    };
    tracing::debug!(
        "sim remote: GET protected resource metadata (path_specific={path_specific}) mode={mode:?}"
    );
    let json = |v: serde_json::Value| Json(v).into_response();
    match mode {
        PrmMode::Good => json(inner.prm_json(path_specific)),
        PrmMode::NoAuthorizationServers => {
            let mut v = inner.prm_json(path_specific);
            if let Some(o) = v.as_object_mut() {
                o.remove("authorization_servers");
            }
            json(v)
        }
        PrmMode::WrongResource => {
            let mut v = inner.prm_json(path_specific);
            v["resource"] = serde_json::Value::String("https://elsewhere.example/mcp".into());
            json(v)
        }
        PrmMode::NotJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><body><h1>Sign in to continue</h1></body></html>",
        )
            .into_response(),
        PrmMode::Huge { bytes } => huge_json_response(bytes),
        PrmMode::RedirectToOtherHost => {
            let path = if path_specific {
                "/.well-known/oauth-protected-resource/mcp"
            } else {
                "/.well-known/oauth-protected-resource"
            };
            let to = format!("http://localhost:{}{path}", inner.addr.port());
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        PrmMode::RedirectSameOrigin { hops } => {
            let to = format!("/prm-moved?left={}", hops.saturating_sub(1));
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        PrmMode::AuthorizationServer(server) => {
            let mut v = inner.prm_json(path_specific);
            v["authorization_servers"] = serde_json::json!([server]);
            json(v)
        }
        PrmMode::RootOnly if !path_specific => json(inner.prm_json(false)),
        PrmMode::RootOnly | PrmMode::Missing => {
            (StatusCode::NOT_FOUND, "no metadata here").into_response()
        }
    }
}

// ---------------------------------------------------------------------------
// The protected endpoints
// ---------------------------------------------------------------------------

/// Count, record, honour `hang`, check the bearer. `Err` is the answer to send.
async fn admit(inner: &Inner, headers: &HeaderMap, path: &str) -> Result<(), Response> {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    *lock(&inner.last_authorization) = authorization.clone();
    *lock(&inner.last_cookie) = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if *inner.hang.borrow() {
        let mut rx = inner.hang.subscribe();
        tokio::select! {
            _ = rx.wait_for(|on| !*on) => {}
            _ = inner.shutdown.cancelled() => {
                return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
            }
        }
    }
    let token = authorization.as_deref().and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let valid = token
        .as_deref()
        .is_some_and(|t| inner.issuer.is_valid_access_token(t));
    let rejected = token
        .as_deref()
        .is_some_and(|t| lock(&inner.rejected).contains(t));
    if valid && !rejected && !inner.reject_next.swap(false, Ordering::SeqCst) {
        return match lock(&inner.step_up).clone() {
            Some(s) if s.path == path => {
                let granted = token
                    .as_deref()
                    .and_then(|t| inner.issuer.access_token_scopes(t))
                    .unwrap_or_default();
                if s.required.iter().all(|r| granted.contains(r)) {
                    return Ok(());
                }
                inner.insufficient.fetch_add(1, Ordering::SeqCst);
                let challenge = format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", error_description=\"more permission needed\"",
                    s.challenge,
                    inner.base_url()
                );
                tracing::debug!("sim remote: 403 insufficient_scope at {path}");
                let mut response = (
                    StatusCode::FORBIDDEN,
                    Json(serde_json::json!({"error": "insufficient_scope"})),
                )
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                Err(response)
            }
            _ => Ok(()),
        };
    }
    inner.unauthorized.fetch_add(1, Ordering::SeqCst);
    let mut challenge = if inner.opts.advertise_metadata {
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            inner.base_url()
        )
    } else {
        "Bearer realm=\"sim-remote\"".to_string()
    };
    if let Some(scope) = &inner.opts.challenge_scope {
        challenge.push_str(&format!(", scope=\"{scope}\""));
    }
    if token.is_some() {
        challenge.push_str(
            ", error=\"invalid_token\", error_description=\"the access token is not valid\"",
        );
    }
    tracing::debug!("sim remote: 401 (token presented: {})", token.is_some());
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "invalid_token"})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Err(response)
}

async fn mcp(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if inner.opts.get_only && method == Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")]).into_response();
    }
    if let Err(r) = admit(&inner, &headers, uri.path()).await {
        return r;
    }
    let mut body_len = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => body_len += c.len(),
            Err(_) => break,
        }
    }
    let mut response = Json(serde_json::json!({
        "ok": true,
        "method": method.as_str(),
        "path": uri.path(),
        "body_len": body_len,
        "authorization_seen": true,
    }))
    .into_response();
    if inner.opts.browser_headers {
        let h = response.headers_mut();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("sim_session=1; Path=/; HttpOnly"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("sim_pref=a; Path=/"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    response
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

async fn sse(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&inner, &headers, "").await {
        return r;
    }
    let n: u64 = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(100);
    let interval = Duration::from_millis(
        q.get("interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let shutdown = inner.shutdown.clone();
    let stream = futures::stream::unfold(0u64, move |k| {
        let shutdown = shutdown.clone();
        async move {
            if k >= n {
                return None;
            }
            if k > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
            let event = format!("data: {{\"i\":{k},\"sent_at_ms\":{}}}\n\n", unix_millis());
            Some((Ok::<_, io::Error>(Bytes::from(event)), k + 1))
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn echo(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = admit(&inner, &headers, "").await {
        return r;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let mut response = Body::from_stream(body.into_data_stream()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}
