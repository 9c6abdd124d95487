//! Talking to the issuer: the token endpoint client (refresh and code exchange) and
//! the interactive login (authorization code + PKCE S256 + `state`, RFC 8252 loopback
//! redirect).
//!
//! Every request carries the workload's RFC 8707 `resource` indicator when it has one
//! (authorization URL, code exchange, refresh), and authenticates the client as
//! `client_auth` says: `client_id` in the form (public client), plus `client_secret`
//! (`client_secret_post`), or HTTP Basic over the form-urlencoded id and secret
//! (`client_secret_basic`, RFC 6749 §2.3.1). The secret comes from the secret store
//! and is passed in by the caller; it never reaches a log or an error message.
//!
//! The token endpoint is called with reqwest directly rather than through oauth2's
//! `exchange_*` helpers, because classification needs what those hide: the status,
//! `Retry-After`, and a body read under a size cap. oauth2 builds the authorization
//! URL and makes the PKCE pair and the `state` value.
//!
//! Limits that keep a hostile or broken issuer from hurting a monitor: redirects are
//! not followed (a captive portal's 302 is a transient failure), the whole exchange has
//! a deadline (`http_timeout`), and bodies past `max_response_bytes` are abandoned.

use crate::engine::classify::{
    classify_response_sent, classify_transport, Failure, FailureKind, TokenResponse,
};
use crate::engine::config::{ClientAuth, WorkloadConfig};
use crate::engine::policy::Policy;
use crate::engine::secret::Secret;
use crate::engine::store::{unix_secs, StoredTokens};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

/// An HTTP client for one trust configuration (system roots + optional `ca_file`).
pub fn http_client(
    policy: &Policy,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    client_builder(policy, ca_file)?
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// What every client shares: the policy's timeouts, no redirects (callers that follow
/// some override it), the user agent, system roots + optional `ca_file`.
pub fn client_builder(
    policy: &Policy,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder, String> {
    let b = reqwest::Client::builder()
        .timeout(policy.http_timeout)
        .connect_timeout(policy.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokenwarden/", env!("CARGO_PKG_VERSION")));
    trust_ca_file(b, ca_file)
}

/// Add the certificates of `ca_file` (PEM) to the system trust roots of `b`.
pub fn trust_ca_file(
    mut b: reqwest::ClientBuilder,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder, String> {
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b)
}

/// POST a form to the token endpoint and classify the answer.
pub async fn token_request(
    http: &reqwest::Client,
    endpoint: &Url,
    form: &[(&str, &str)],
    policy: &Policy,
) -> Result<TokenResponse, Failure> {
    token_request_as(http, endpoint, form, None, policy).await
}

/// [`token_request`] with an optional `Authorization` header (client_secret_basic).
async fn token_request_as(
    http: &reqwest::Client,
    endpoint: &Url,
    form: &[(&str, &str)],
    authorization: Option<reqwest::header::HeaderValue>,
    policy: &Policy,
) -> Result<TokenResponse, Failure> {
    let deadline = policy.http_timeout + Duration::from_secs(1);
    let inner = token_request_inner(http, endpoint, form, authorization, policy);
    match tokio::time::timeout(deadline, inner).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(FailureKind::Timeout)),
    }
}

/// Form fields of a token request whose values are secrets.
const SECRET_FORM_FIELDS: &[&str] = &["refresh_token", "client_secret", "code", "code_verifier"];

/// Every secret a token request carried, as the server may repeat it: the form's secret
/// values as sent and URL-encoded, and for HTTP Basic client authentication the header's
/// base64 and the client secret inside it (RFC 6749 §2.3.1 form-encodes it first).
fn sent_secrets(form: &[(&str, &str)], authorization: Option<&str>) -> Vec<String> {
    use base64::Engine as _;
    let encoded = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let mut out: Vec<String> = Vec::new();
    for (_, v) in form.iter().filter(|(k, _)| SECRET_FORM_FIELDS.contains(k)) {
        out.push(v.to_string());
        out.push(encoded(v));
    }
    if let Some(b64) = authorization.and_then(|a| a.strip_prefix("Basic ")) {
        out.push(b64.to_string());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((_, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            let plain: String = url::form_urlencoded::parse(format!("s={secret}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            out.push(secret.to_string());
            out.push(plain);
        }
    }
    out.retain(|v| !v.is_empty());
    out.sort();
    out.dedup();
    out
}

async fn token_request_inner(
    http: &reqwest::Client,
    endpoint: &Url,
    form: &[(&str, &str)],
    authorization: Option<reqwest::header::HeaderValue>,
    policy: &Policy,
) -> Result<TokenResponse, Failure> {
    let authorization_sent = authorization
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut req = http
        .post(endpoint.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form);
    if let Some(value) = authorization {
        req = req.header(reqwest::header::AUTHORIZATION, value);
    }
    let resp = req.send().await.map_err(|e| classify_transport(&e))?;
    let status = resp.status().as_u16();
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(reqwest::header::CONTENT_TYPE);
    let retry_after = header(reqwest::header::RETRY_AFTER);
    let limit = policy.max_response_bytes;
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Failure::new(FailureKind::TooLarge { limit }));
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify_transport(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(Failure::new(FailureKind::TooLarge { limit }));
        }
        body.extend_from_slice(&chunk);
    }
    tracing::debug!(status, bytes = body.len(), "token endpoint answered");
    // An issuer that echoes what it was sent must not put it in front of people.
    let sent = sent_secrets(form, authorization_sent.as_deref());
    let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
    classify_response_sent(
        status,
        content_type.as_deref(),
        retry_after.as_deref(),
        &body,
        SystemTime::now(),
        policy.retry_after_max,
        &sent,
    )
}

/// A refresh as a scripted endpoint sees it (no secrets).
#[derive(Clone, Debug)]
pub struct ScriptedRefresh {
    pub workload: String,
    pub token_endpoint: Url,
}

type ScriptFn = dyn Fn(
        ScriptedRefresh,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TokenResponse, Failure>> + Send>,
    > + Send
    + Sync;

/// How refreshes reach the token endpoint: over HTTP, or (for virtual-time replays
/// of outage traces, where no socket may wait on a paused clock) a scripted answer.
#[derive(Clone)]
pub enum Transport {
    Http(reqwest::Client),
    Scripted(std::sync::Arc<ScriptFn>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Http(_) => f.write_str("Transport::Http"),
            Transport::Scripted(_) => f.write_str("Transport::Scripted"),
        }
    }
}

/// `Basic base64(urlencode(client_id) ":" urlencode(secret))` (RFC 6749 §2.3.1), marked
/// sensitive so reqwest never shows it.
pub fn basic_authorization(client_id: &str, secret: &Secret) -> reqwest::header::HeaderValue {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(client_id), enc(secret.expose()));
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {b64}"))
        .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// Add the client's authentication to a token request's form (or return the Basic
/// header), and the RFC 8707 `resource` indicator when the workload has one.
/// A confidential client whose secret is missing goes out without it: the issuer's
/// `invalid_client` is then the verdict, with its re-register hint.
fn client_part<'a>(
    w: &'a WorkloadConfig,
    client_secret: Option<&'a Secret>,
    form: &mut Vec<(&'static str, &'a str)>,
) -> Option<reqwest::header::HeaderValue> {
    if let Some(r) = &w.resource {
        form.push(("resource", r.as_str()));
    }
    match (w.client_auth, client_secret) {
        (ClientAuth::ClientSecretBasic, Some(secret)) => {
            return Some(basic_authorization(&w.client_id, secret));
        }
        (ClientAuth::ClientSecretPost, Some(secret)) => {
            form.push(("client_id", w.client_id.as_str()));
            form.push(("client_secret", secret.expose()));
            return None;
        }
        (auth, None) if auth.needs_secret() => {
            tracing::warn!(workload = %w.name, client_auth = auth.as_str(), "the client secret is missing from the secret store; sending the request without it");
        }
        _ => {}
    }
    form.push(("client_id", w.client_id.as_str()));
    None
}

/// `grant_type=refresh_token`. `client_secret` is the workload's client secret from
/// the secret store when `client_auth` is not `none` (ignored otherwise).
pub async fn refresh(
    transport: &Transport,
    w: &WorkloadConfig,
    refresh_token: &Secret,
    client_secret: Option<&Secret>,
    policy: &Policy,
) -> Result<TokenResponse, Failure> {
    let http = match transport {
        Transport::Http(c) => c,
        Transport::Scripted(f) => {
            return f(ScriptedRefresh {
                workload: w.name.clone(),
                token_endpoint: w.token_endpoint.clone(),
            })
            .await
        }
    };
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    let authorization = client_part(w, client_secret, &mut form);
    token_request_as(http, &w.token_endpoint, &form, authorization, policy).await
}

/// Turn a token response into what is stored. A response without `refresh_token`
/// keeps `previous_refresh` (RFC 6749 §6: the old one stays valid).
pub fn to_stored(
    resp: TokenResponse,
    previous_refresh: Option<Secret>,
    now: SystemTime,
    policy: &Policy,
) -> (StoredTokens, Duration) {
    if resp.expires_in_invalid {
        tracing::warn!(
            assumed = %humantime::format_duration(policy.assumed_token_lifetime),
            "token response had an unusable expires_in; assuming the default lifetime"
        );
    }
    let lifetime = resp.expires_in.unwrap_or(policy.assumed_token_lifetime);
    let tokens = StoredTokens {
        access_token: resp.access_token,
        refresh_token: resp.refresh_token.or(previous_refresh),
        expires_at: Some(unix_secs(now + lifetime).max(unix_secs(now) + 1)),
        lifetime: Some(lifetime.as_secs().max(1)),
        obtained_at: unix_secs(now),
    };
    (tokens, lifetime)
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("workload `{0}` has no authorization_endpoint; add one to workloads.toml")]
    NoAuthorizationEndpoint(String),
    #[error("no browser callback within {}; run the login again", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the issuer refused the login: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Denied {
        error: String,
        description: Option<String>,
    },
    #[error("exchanging the authorization code failed: {}", .0.reason())]
    Exchange(Failure),
    #[error("the issuer granted no refresh token, so the workload could not be kept alive; ask for the `offline_access` scope if the issuer needs it")]
    NoRefreshToken,
    #[error("cannot listen for the browser callback on 127.0.0.1: {0}")]
    Listen(std::io::Error),
    #[error("the callback port 127.0.0.1:{port} that `{workload}`'s client was registered with is in use (another sign-in still waiting, or another program); close it and try again, or register a new client with `tokenwarden remove {workload}` and `tokenwarden add {workload} --url URL`")]
    RedirectPortBusy { workload: String, port: u16 },
}

/// A prepared login: the loopback listener is bound, the URL is ready to open.
pub struct PendingLogin {
    listener: tokio::net::TcpListener,
    pub authorize_url: Url,
    redirect_uri: Url,
    csrf: oauth2::CsrfToken,
    verifier: oauth2::PkceCodeVerifier,
    workload: WorkloadConfig,
    client_secret: Option<Secret>,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("workload", &self.workload.name)
            .field("redirect_uri", &self.redirect_uri.as_str())
            .finish_non_exhaustive()
    }
}

/// Bind the loopback redirect listener (127.0.0.1, any port: RFC 8252 §7.3, or the
/// workload's `redirect_port` when its client was registered with a fixed one) and
/// build the authorization URL with PKCE S256, a fresh `state` and the `resource`
/// indicator. A confidential client's secret is added with
/// [`PendingLogin::with_client_secret`] before [`PendingLogin::finish`].
pub async fn prepare_login(w: &WorkloadConfig) -> Result<PendingLogin, LoginError> {
    let auth = w
        .authorization_endpoint
        .clone()
        .ok_or_else(|| LoginError::NoAuthorizationEndpoint(w.name.clone()))?;
    let listener =
        match tokio::net::TcpListener::bind(("127.0.0.1", w.redirect_port.unwrap_or(0))).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(LoginError::RedirectPortBusy {
                    workload: w.name.clone(),
                    port: w.redirect_port.unwrap_or(0),
                })
            }
            Err(e) => return Err(LoginError::Listen(e)),
        };
    let port = listener.local_addr().map_err(LoginError::Listen)?.port();
    let redirect_uri =
        Url::parse(&format!("http://127.0.0.1:{port}/callback")).expect("static URL shape");
    let client = oauth2::basic::BasicClient::new(oauth2::ClientId::new(w.client_id.clone()))
        .set_auth_uri(oauth2::AuthUrl::from_url(auth))
        .set_redirect_uri(oauth2::RedirectUrl::from_url(redirect_uri.clone()));
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(oauth2::CsrfToken::new_random)
        .add_scopes(w.scopes.iter().cloned().map(oauth2::Scope::new))
        .set_pkce_challenge(challenge);
    if let Some(r) = &w.resource {
        request = request.add_extra_param("resource", r.as_str());
    }
    let (authorize_url, csrf) = request.url();
    Ok(PendingLogin {
        listener,
        authorize_url,
        redirect_uri,
        csrf,
        verifier,
        workload: w.clone(),
        client_secret: None,
    })
}

impl PendingLogin {
    /// The client secret to authenticate the code exchange with (for `client_auth`
    /// other than `none`; the CLI and the desktop app load it from the secret store).
    pub fn with_client_secret(mut self, client_secret: Option<Secret>) -> Self {
        self.client_secret = client_secret;
        self
    }

    /// Wait for the browser's callback, check `state`, exchange the code. Returns the
    /// tokens to store.
    pub async fn finish(
        self,
        http: &reqwest::Client,
        policy: &Policy,
        timeout: Duration,
    ) -> Result<StoredTokens, LoginError> {
        let code = tokio::time::timeout(timeout, wait_for_code(&self.listener, self.csrf.secret()))
            .await
            .map_err(|_| LoginError::Timeout(timeout))??;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", self.verifier.secret().as_str()),
        ];
        let authorization = client_part(&self.workload, self.client_secret.as_ref(), &mut form);
        let resp = token_request_as(
            http,
            &self.workload.token_endpoint,
            &form,
            authorization,
            policy,
        )
        .await
        .map_err(LoginError::Exchange)?;
        if resp.refresh_token.is_none() {
            return Err(LoginError::NoRefreshToken);
        }
        Ok(to_stored(resp, None, SystemTime::now(), policy).0)
    }
}

const PAGE_OK: &str = "<!doctype html><meta charset=utf-8><title>Tokenwarden</title><body style=\"font-family:sans-serif;margin:3em\"><h1>Signed in</h1><p>Tokenwarden has the new sign-in. You can close this tab.</p>";

fn page_error(msg: &str) -> String {
    let esc = msg
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<!doctype html><meta charset=utf-8><title>Tokenwarden</title><body style=\"font-family:sans-serif;margin:3em\"><h1>Sign-in failed</h1><p>{esc}</p>")
}

/// Accept connections on the loopback listener until one brings `code` with the right
/// `state` (or an `error`). Other requests (favicon, a stale tab) get a 404 or an
/// error page and the wait goes on.
async fn wait_for_code(
    listener: &tokio::net::TcpListener,
    expected_state: &str,
) -> Result<Secret, LoginError> {
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "callback accept failed");
                continue;
            }
        };
        let target =
            match tokio::time::timeout(Duration::from_secs(10), read_request_target(&mut sock))
                .await
            {
                Ok(Some(t)) => t,
                _ => continue,
            };
        let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else {
            respond(&mut sock, 400, &page_error("bad request")).await;
            continue;
        };
        if url.path() != "/callback" {
            respond(&mut sock, 404, &page_error("not found")).await;
            continue;
        }
        let q = |k: &str| {
            url.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
        };
        let state_ok =
            q("state").is_some_and(|s| constant_time_eq(s.as_bytes(), expected_state.as_bytes()));
        if !state_ok {
            tracing::warn!("login callback with a wrong or missing state ignored");
            respond(
                &mut sock,
                400,
                &page_error("This sign-in link does not belong to the login in progress."),
            )
            .await;
            continue;
        }
        if let Some(error) = q("error") {
            let description =
                q("error_description").map(|d| crate::engine::classify::sanitize(&d, 200));
            respond(
                &mut sock,
                200,
                &page_error(&format!("The issuer answered: {error}")),
            )
            .await;
            return Err(LoginError::Denied {
                error: crate::engine::classify::sanitize(&error, 64),
                description,
            });
        }
        match q("code") {
            Some(code) if !code.is_empty() => {
                respond(&mut sock, 200, PAGE_OK).await;
                return Ok(Secret::new(code));
            }
            _ => {
                respond(
                    &mut sock,
                    400,
                    &page_error("The callback had no authorization code."),
                )
                .await;
            }
        }
    }
}

/// Read an HTTP/1 request head (capped at 16 KiB) and return the request target.
async fn read_request_target(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request_head(&buf) {
            Head::Incomplete => {}
            Head::Target(target) => return Some(target),
            Head::Invalid => return None,
        }
    }
}

/// The most bytes a request head on the callback socket may take, its closing blank
/// line included.
#[doc(hidden)]
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What the bytes read so far from the callback socket make of a request head.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// No blank line yet, and room for one: read on.
    Incomplete,
    /// A `GET` with this origin-form target (it starts with `/`).
    Target(String),
    /// Anything else: another method or target form, a head that is not UTF-8, or no
    /// blank line within [`MAX_REQUEST_HEAD`] bytes.
    Invalid,
}

/// Read an HTTP/1 request head from the bytes received so far. Only the head (up to
/// and including the first blank line) is looked at, so the answer does not depend on
/// how the bytes arrived: once it is not [`Head::Incomplete`], more bytes do not
/// change it.
#[doc(hidden)]
pub fn parse_request_head(buf: &[u8]) -> Head {
    let window = &buf[..buf.len().min(MAX_REQUEST_HEAD)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST_HEAD {
            Head::Invalid
        } else {
            Head::Incomplete
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Head::Invalid;
    };
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) if target.starts_with('/') => Head::Target(target.to_string()),
        _ => Head::Invalid,
    }
}

#[cfg(test)]
mod request_head_tests {
    use super::*;

    fn target(s: &str) -> Head {
        Head::Target(s.to_string())
    }

    #[test]
    fn a_get_head_gives_its_target() {
        let head = b"GET /callback?code=c&state=s HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n";
        assert_eq!(parse_request_head(head), target("/callback?code=c&state=s"));
        // Bare LF inside the head, extra spaces between the parts.
        assert_eq!(
            parse_request_head(b"GET   /a  HTTP/1.1\nHost: x\r\n\r\n"),
            target("/a")
        );
        for partial in [&b""[..], b"GET /callback", b"GET / HTTP/1.1\r\n\r"] {
            assert_eq!(parse_request_head(partial), Head::Incomplete, "{partial:?}");
        }
    }

    #[test]
    fn other_methods_target_forms_and_broken_heads_are_invalid() {
        for head in [
            &b"POST /callback HTTP/1.1\r\n\r\n"[..],
            b"get /callback HTTP/1.1\r\n\r\n",
            b"GET http://127.0.0.1/callback HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"GET\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \xc3\r\n\r\n",
        ] {
            assert_eq!(parse_request_head(head), Head::Invalid, "{head:?}");
        }
    }

    #[test]
    fn bytes_after_the_head_do_not_matter() {
        let head = b"GET /callback?code=c HTTP/1.1\r\n\r\n";
        for tail in [
            &b""[..],
            b"\xff\xfe",
            b"POST / HTTP/1.1\r\n\r\n",
            &[b'x'; 20_000],
        ] {
            let buf = [&head[..], tail].concat();
            assert_eq!(parse_request_head(&buf), target("/callback?code=c"));
        }
    }

    #[test]
    fn the_head_is_capped_at_16_kib() {
        let line = b"GET /callback HTTP/1.1\r\nX: ";
        let head = |len: usize| {
            let mut h = line.to_vec();
            h.resize(len - 4, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        assert_eq!(
            parse_request_head(&head(MAX_REQUEST_HEAD)),
            target("/callback")
        );
        assert_eq!(
            parse_request_head(&head(MAX_REQUEST_HEAD + 1)),
            Head::Invalid
        );
        let endless = vec![b'a'; MAX_REQUEST_HEAD];
        assert_eq!(
            parse_request_head(&endless[..MAX_REQUEST_HEAD - 1]),
            Head::Incomplete
        );
        assert_eq!(parse_request_head(&endless), Head::Invalid);
    }

    /// The async reader over a real loopback socket: `bytes` sent in `pieces`, each
    /// flushed before the next. The client then closes its side (`close`) or keeps the
    /// connection open until the reader has given its answer and let go of it.
    async fn read_from_client(bytes: Vec<u8>, pieces: usize, close: bool) -> Option<String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            let size = bytes.len().div_ceil(pieces.max(1)).max(1);
            for piece in bytes.chunks(size) {
                if c.write_all(piece).await.is_err() {
                    return; // the reader gave up and closed
                }
                c.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            if close {
                let _ = c.shutdown().await;
            }
            // Until the reader lets go.
            let _ = c.read(&mut [0u8; 1]).await;
        });
        let (mut sock, _) = listener.accept().await.unwrap();
        // A bound for a reader that hangs, not a measure of speed.
        let target = tokio::time::timeout(Duration::from_secs(60), read_request_target(&mut sock))
            .await
            .expect("the reader answers without waiting for the client to close");
        drop(sock);
        client.await.unwrap();
        target
    }

    #[tokio::test]
    async fn the_reader_takes_the_head_however_it_arrives() {
        let head = b"GET /callback?code=c&state=s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
        for pieces in [1, 3, head.len()] {
            assert_eq!(
                read_from_client(head.clone(), pieces, false)
                    .await
                    .as_deref(),
                Some("/callback?code=c&state=s"),
                "{pieces} pieces"
            );
        }
        // What follows the head in the same read is not part of it.
        let mut with_tail = head.clone();
        with_tail.extend_from_slice(b"\xff\xfe");
        assert_eq!(
            read_from_client(with_tail, 1, false).await.as_deref(),
            Some("/callback?code=c&state=s")
        );
    }

    #[tokio::test]
    async fn the_reader_gives_up_on_endless_closed_and_bad_heads() {
        // No blank line within 16 KiB: the reader stops at the cap while the client
        // still sends (four times that) and keeps the connection open.
        let endless = vec![b'a'; 4 * MAX_REQUEST_HEAD];
        assert_eq!(read_from_client(endless, 64, false).await, None);
        // Closed before the blank line.
        assert_eq!(
            read_from_client(b"GET /callback HTTP/1.1\r\n".to_vec(), 1, true).await,
            None
        );
        assert_eq!(
            read_from_client(b"POST /callback HTTP/1.1\r\n\r\n".to_vec(), 1, false).await,
            None
        );
    }
}

async fn respond(sock: &mut tokio::net::TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(msg.as_bytes()).await;
    let _ = sock.shutdown().await;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::Config;

    fn workload(extra: &str) -> WorkloadConfig {
        let text = format!(
            "[[workload]]\nname = \"w\"\nauthorization_endpoint = \"http://127.0.0.1:9/authorize\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"my client\"\n{extra}\n"
        );
        Config::parse(std::path::Path::new("/x/workloads.toml"), &text)
            .unwrap()
            .workloads
            .remove(0)
    }

    #[test]
    fn basic_credentials_are_form_urlencoded_then_base64() {
        use base64::Engine as _;
        let v = basic_authorization("my client", &Secret::new("p:w&d+"));
        assert!(v.is_sensitive());
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(String::from_utf8(raw).unwrap(), "my+client:p%3Aw%26d%2B");
    }

    #[test]
    fn every_form_of_a_sent_secret_is_known() {
        let secret = Secret::new("s3/cr+t=");
        let basic = basic_authorization("my client", &secret);
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt/1+2="),
            ("client_id", "my client"),
        ];
        let sent = sent_secrets(&form, basic.to_str().ok());
        for want in ["rt/1+2=", "rt%2F1%2B2%3D", "s3/cr+t=", "s3%2Fcr%2Bt%3D"] {
            assert!(sent.iter().any(|s| s == want), "{want} in {sent:?}");
        }
        let b64 = basic.to_str().unwrap().strip_prefix("Basic ").unwrap();
        assert!(sent.iter().any(|s| s == b64));
        assert!(!sent
            .iter()
            .any(|s| s == "refresh_token" || s == "my client"));
    }

    #[test]
    fn client_part_follows_client_auth_and_adds_the_resource() {
        let secret = Secret::new("s3cret");
        fn names(form: &[(&'static str, &str)]) -> Vec<&'static str> {
            form.iter().map(|(n, _)| *n).collect()
        }

        let public = workload("resource = \"https://r.example/mcp\"");
        let mut form = vec![];
        assert!(client_part(&public, None, &mut form).is_none());
        assert_eq!(
            form,
            vec![
                ("resource", "https://r.example/mcp"),
                ("client_id", "my client")
            ]
        );

        let post = workload("client_auth = \"client_secret_post\"");
        let mut form = vec![];
        assert!(client_part(&post, Some(&secret), &mut form).is_none());
        assert_eq!(
            form,
            vec![("client_id", "my client"), ("client_secret", "s3cret")]
        );

        let basic = workload("client_auth = \"client_secret_basic\"");
        let mut form = vec![];
        assert!(client_part(&basic, Some(&secret), &mut form).is_some());
        assert!(
            names(&form).is_empty(),
            "no client_id or secret in the form"
        );

        // A missing secret goes out as a public client (the issuer decides).
        let mut form = vec![];
        assert!(client_part(&basic, None, &mut form).is_none());
        assert_eq!(names(&form), vec!["client_id"]);
    }

    #[tokio::test]
    async fn login_binds_the_registered_port_and_says_when_it_is_busy() {
        let busy = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let w = workload(&format!(
            "redirect_port = {port}\nresource = \"https://r.example/mcp\""
        ));
        let e = prepare_login(&w).await.unwrap_err();
        assert!(
            matches!(e, LoginError::RedirectPortBusy { port: p, .. } if p == port),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        drop(busy);
        let pending = prepare_login(&w).await.unwrap();
        let url = pending.authorize_url.to_string();
        assert!(
            url.contains(&format!(
                "redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fcallback"
            )),
            "{url}"
        );
        assert!(
            url.contains("resource=https%3A%2F%2Fr.example%2Fmcp"),
            "{url}"
        );
    }
}
