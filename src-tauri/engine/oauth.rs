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

use crate::classify::{
    classify_response_sent, classify_transport, Failure, FailureKind, TokenResponse,
};
use crate::config::{ClientAuth, WorkloadConfig};
use crate::policy::Policy;
use crate::secret::Secret;
use crate::store::{unix_secs, StoredTokens};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
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
        let pem = crate::config::read_ca_file(path)?;
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
///
/// Without any refresh token (a server that issues none) and without a usable
/// `expires_in`, the access token has no expiry: it is used until the remote
/// rejects it (there is nothing to renew it with ahead of time, so assuming a
/// lifetime would only end a working session early). Otherwise a missing
/// `expires_in` means `assumed_token_lifetime`.
pub fn to_stored(
    resp: TokenResponse,
    previous_refresh: Option<Secret>,
    now: SystemTime,
    policy: &Policy,
) -> (StoredTokens, Duration) {
    let refresh_token = resp.refresh_token.or(previous_refresh);
    // Only a lifetime that was left out means "until rejected"; one that was sent but
    // cannot be used is replaced by the assumed lifetime, as for every other token.
    if refresh_token.is_none() && resp.expires_in.is_none() && !resp.expires_in_invalid {
        tracing::info!("no refresh token and no expires_in: the access token is used until the remote rejects it");
        let tokens = StoredTokens {
            access_token: resp.access_token,
            refresh_token: None,
            expires_at: None,
            lifetime: None,
            obtained_at: unix_secs(now),
            scopes: Vec::new(),
        };
        return (tokens, policy.assumed_token_lifetime);
    }
    if resp.expires_in_invalid {
        tracing::warn!(
            assumed = %humantime::format_duration(policy.assumed_token_lifetime),
            "token response had an unusable expires_in; assuming the default lifetime"
        );
    }
    let lifetime = resp.expires_in.unwrap_or(policy.assumed_token_lifetime);
    let tokens = StoredTokens {
        access_token: resp.access_token,
        refresh_token,
        expires_at: Some(unix_secs(now + lifetime).max(unix_secs(now) + 1)),
        lifetime: Some(lifetime.as_secs().max(1)),
        obtained_at: unix_secs(now),
        scopes: Vec::new(),
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
    #[error("the sign-in answer came without `iss`, but the authorization server {expected} always sends it (RFC 9207); refused before using it: it may come from another server (a mix-up attack). Run the login again")]
    IssuerMissing { expected: String },
    #[error("the sign-in answer names the issuer `{found}`, but `{workload}` signs in at {expected} (RFC 9207); refused before using it: it may come from another server (a mix-up attack). Run the login again")]
    IssuerMismatch {
        workload: String,
        expected: String,
        found: String,
    },
    #[error("a newer sign-in of `{0}` replaced this one")]
    Replaced(String),
    #[error("the earlier sign-in of `{0}` did not stop; try again")]
    EarlierLoginStuck(String),
    #[error("exchanging the authorization code failed: {}", .0.reason())]
    Exchange(Failure),
    #[error("cannot listen for the browser callback on 127.0.0.1: {0}")]
    Listen(std::io::Error),
    #[error("the authorization server did not accept the Client ID Metadata Document at {url} as a client: {error}{}. Check that the server can fetch that URL and that it serves what `tokenwarden client-metadata --url {url}` prints; or register a client there and use --client-id", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    ClientMetadataRefused {
        url: String,
        error: String,
        description: Option<String>,
    },
    #[error("the callback port 127.0.0.1:{port} that `{workload}`'s client was registered with is in use (another sign-in still waiting, or another program); close it and try again, or register a new client with `tokenwarden remove {workload}` and `tokenwarden add {workload} --url URL`")]
    RedirectPortBusy { workload: String, port: u16 },
}

/// A prepared login: the loopback listener is bound, the URL is ready to open.
pub struct PendingLogin {
    // Declared first: dropped before `registration` says the listener is closed.
    listener: tokio::net::TcpListener,
    pub authorize_url: Url,
    redirect_uri: Url,
    csrf: oauth2::CsrfToken,
    verifier: oauth2::PkceCodeVerifier,
    workload: WorkloadConfig,
    client_secret: Option<Secret>,
    /// Cancelled when a newer sign-in of the workload replaces this one.
    cancel: CancellationToken,
    /// Its place in [`WaitingLogins`], when it has one.
    registration: Option<Registered>,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("workload", &self.workload.name)
            .field("redirect_uri", &self.redirect_uri.as_str())
            .finish_non_exhaustive()
    }
}

/// The workload as a sign-in sees it: its `scopes` are the configured ones, those
/// the stored login asked for (a step-up's stay with the workload), and `step_up`
/// (the scopes a remote's `insufficient_scope` challenge asks for now), each once, in
/// that order: the MCP authorization spec's union of the scopes requested before and
/// the challenge's.
pub async fn for_sign_in(
    store: &crate::store::SecretStore,
    w: &WorkloadConfig,
    step_up: &[String],
) -> WorkloadConfig {
    let before = match store.load_login(w).await {
        Ok(crate::store::Login::Ready(t)) => t.scopes,
        _ => Vec::new(),
    };
    let mut out = w.clone();
    for s in before.iter().chain(step_up) {
        if !out.scopes.contains(s) {
            out.scopes.push(s.clone());
        }
    }
    out
}

/// Bind the loopback redirect listener (127.0.0.1, any port: RFC 8252 §7.3, or the
/// workload's `redirect_port` when its client was registered with a fixed one) and
/// build the authorization URL with PKCE S256, a fresh `state` and the `resource`
/// indicator. A confidential client's secret is added with
/// [`PendingLogin::with_client_secret`] before [`PendingLogin::finish`]. Where a
/// second sign-in of the same workload may start while one waits (the desktop
/// app), [`WaitingLogins::prepare`] is the way in.
pub async fn prepare_login(w: &WorkloadConfig) -> Result<PendingLogin, LoginError> {
    let auth = w
        .authorization_endpoint
        .clone()
        .ok_or_else(|| LoginError::NoAuthorizationEndpoint(w.name.clone()))?;
    // The address literally: `localhost` is never resolved for the listener.
    let bind_to =
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, w.redirect_port.unwrap_or(0)));
    let listener = match tokio::net::TcpListener::bind(bind_to).await {
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
        cancel: CancellationToken::new(),
        registration: None,
    })
}

impl PendingLogin {
    /// The client secret to authenticate the code exchange with (for `client_auth`
    /// other than `none`; the CLI and the desktop app load it from the secret store).
    pub fn with_client_secret(mut self, client_secret: Option<Secret>) -> Self {
        self.client_secret = client_secret;
        self
    }

    /// Wait for the browser's callback (each connection served on its own, so an
    /// idle or bogus one holds nothing back), check `state` and the RFC 9207 `iss`,
    /// exchange the code. Returns the tokens to store. The listener is closed as soon
    /// as the callback came (or the wait ended).
    pub async fn finish(
        self,
        http: &reqwest::Client,
        policy: &Policy,
        timeout: Duration,
    ) -> Result<StoredTokens, LoginError> {
        let PendingLogin {
            listener,
            redirect_uri,
            csrf,
            verifier,
            workload,
            client_secret,
            cancel,
            registration,
            ..
        } = self;
        let check = std::sync::Arc::new(CallbackCheck {
            state: Secret::new(csrf.secret().clone()),
            workload: workload.name.clone(),
            issuer: workload.issuer.clone(),
            iss_required: workload.iss_parameter,
        });
        let waited = tokio::select! {
            r = tokio::time::timeout(timeout, wait_for_code(&listener, check)) => Some(r),
            _ = cancel.cancelled() => None,
        };
        drop(listener);
        drop(registration);
        let code = match waited {
            None => return Err(LoginError::Replaced(workload.name.clone())),
            Some(Err(_)) => return Err(LoginError::Timeout(timeout)),
            Some(Ok(r)) => r.map_err(|e| match e {
                // A client id that is a Client ID Metadata Document's URL: say which
                // document the server refused.
                LoginError::Denied { error, description }
                    if matches!(error.as_str(), "invalid_client" | "unauthorized_client")
                        && (workload.client_id.starts_with("https://")
                            || workload.client_id.starts_with("http://")) =>
                {
                    LoginError::ClientMetadataRefused {
                        url: workload.client_id.clone(),
                        error,
                        description,
                    }
                }
                e => e,
            })?,
        };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", verifier.secret().as_str()),
        ];
        let authorization = client_part(&workload, client_secret.as_ref(), &mut form);
        let resp = token_request_as(http, &workload.token_endpoint, &form, authorization, policy)
            .await
            .map_err(LoginError::Exchange)?;
        if resp.refresh_token.is_none() {
            // Accepted: the workload runs while the access token lasts, then needs
            // a new sign-in (the monitor says so).
            tracing::info!(workload = %workload.name, "the sign-in returned no refresh token");
        }
        let mut tokens = to_stored(resp, None, SystemTime::now(), policy).0;
        tokens.scopes = workload.scopes.clone();
        Ok(tokens)
    }
}

/// The sign-ins of one process that wait for the browser, one per workload (the
/// desktop app's "Re-authenticate"). Starting one cancels the waiting one of the same
/// workload and waits until its listener is closed before binding, so the fixed
/// `redirect_port` of a registered client is free for the new one.
#[derive(Default)]
pub struct WaitingLogins {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    /// Held from cancelling the old sign-in to registering the new one, so two
    /// presses at once cannot both find the port free (or both busy).
    binding: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

struct Slot {
    id: u64,
    cancel: CancellationToken,
    /// Cancelled once the sign-in's listener is closed.
    closed: CancellationToken,
}

/// A [`PendingLogin`]'s place in [`WaitingLogins`]: dropped right after its
/// listener, it says the listener is closed and frees the place.
struct Registered {
    logins: std::sync::Weak<WaitingLogins>,
    name: String,
    id: u64,
    closed: CancellationToken,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.closed.cancel();
        if let Some(logins) = self.logins.upgrade() {
            let mut slots = logins.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.get(&self.name).is_some_and(|s| s.id == self.id) {
                slots.remove(&self.name);
            }
        }
    }
}

/// How long a new sign-in waits for the one it replaces to close its listener.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(5);

impl WaitingLogins {
    /// [`prepare_login`], after cancelling the waiting sign-in of the same workload
    /// and waiting until its listener is closed. The earlier one's
    /// [`PendingLogin::finish`] ends with [`LoginError::Replaced`].
    pub async fn prepare(
        self: &std::sync::Arc<Self>,
        w: &WorkloadConfig,
    ) -> Result<PendingLogin, LoginError> {
        let _one_at_a_time = self.binding.lock().await;
        let old = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&w.name);
        if let Some(old) = old {
            tracing::info!(workload = %w.name, "a new sign-in replaces the waiting one");
            old.cancel.cancel();
            if tokio::time::timeout(REPLACE_TIMEOUT, old.closed.cancelled())
                .await
                .is_err()
            {
                return Err(LoginError::EarlierLoginStuck(w.name.clone()));
            }
        }
        let mut pending = prepare_login(w).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).insert(
            w.name.clone(),
            Slot {
                id,
                cancel: pending.cancel.clone(),
                closed: closed.clone(),
            },
        );
        pending.registration = Some(Registered {
            logins: std::sync::Arc::downgrade(self),
            name: w.name.clone(),
            id,
            closed,
        });
        Ok(pending)
    }

    /// Whether a sign-in of `name` is waiting for the browser.
    pub fn is_waiting(&self, name: &str) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
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

/// How long one callback connection may take to send its request head.
const CALLBACK_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Callback connections served at once; past it, new ones wait in the backlog
/// until one ends (each ends within [`CALLBACK_HEAD_TIMEOUT`] plus its answer).
const CALLBACK_MAX_CONNECTIONS: usize = 64;

/// What a callback must bring to belong to this login.
struct CallbackCheck {
    state: Secret,
    workload: String,
    /// The workload's `issuer`, what a present `iss` must be.
    issuer: Option<String>,
    /// The server always sends `iss` (`iss_parameter`): it must be there.
    iss_required: bool,
}

/// RFC 9207 §2.4 for an authorization response (code or error) whose `state` is
/// right. With a stored issuer, a present `iss` must be it exactly (string
/// comparison), and with `iss_parameter` it must be present. Without a stored issuer
/// there is nothing to compare a present `iss` with: it is logged and the response
/// is used (workloads added with explicit endpoints; `add --url` stores the issuer).
fn check_iss(check: &CallbackCheck, iss: Option<&str>) -> Result<(), LoginError> {
    match (check.issuer.as_deref(), iss) {
        (Some(expected), Some(found)) if found == expected => Ok(()),
        (Some(expected), Some(found)) => Err(LoginError::IssuerMismatch {
            workload: check.workload.clone(),
            expected: expected.to_string(),
            found: crate::classify::sanitize(found, 200),
        }),
        (Some(expected), None) if check.iss_required => Err(LoginError::IssuerMissing {
            expected: expected.to_string(),
        }),
        (Some(_), None) | (None, None) => Ok(()),
        (None, Some(found)) => {
            tracing::info!(workload = %check.workload, iss = %crate::classify::sanitize(found, 200), "the sign-in answer names an issuer; the workload has no `issuer` to compare it with, so it is not checked");
            Ok(())
        }
    }
}

/// Accept connections on the loopback listener until one brings `code` with the right
/// `state` and `iss` (or an `error`, or an `iss` that is wrong). Each connection is
/// served by a task of its own with its own head timeout, so an idle or slow one
/// holds nothing back; the first callback that settles the login wins, and the
/// others still open are dropped with the listener. Other requests (favicon, a stale
/// tab, a forged callback) get a 404 or an error page and the wait goes on.
async fn wait_for_code(
    listener: &tokio::net::TcpListener,
    check: std::sync::Arc<CallbackCheck>,
) -> Result<Secret, LoginError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Secret, LoginError>>(1);
    let settled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Dropped on return: the connections still open are closed.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            Some(outcome) = rx.recv() => return outcome,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept(), if conns.len() < CALLBACK_MAX_CONNECTIONS => {
                match accepted {
                    Ok((sock, _)) => {
                        conns.spawn(serve_callback(sock, check.clone(), tx.clone(), settled.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors, say: do not spin.
                        tracing::warn!(error = %e, "callback accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

/// One connection to the callback listener.
async fn serve_callback(
    mut sock: tokio::net::TcpStream,
    check: std::sync::Arc<CallbackCheck>,
    tx: tokio::sync::mpsc::Sender<Result<Secret, LoginError>>,
    settled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let target =
        match tokio::time::timeout(CALLBACK_HEAD_TIMEOUT, read_request_target(&mut sock)).await {
            Ok(Some(t)) => t,
            _ => return,
        };
    let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else {
        respond(&mut sock, 400, &page_error("bad request")).await;
        return;
    };
    if url.path() != "/callback" {
        respond(&mut sock, 404, &page_error("not found")).await;
        return;
    }
    let q = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    let state_ok =
        q("state").is_some_and(|s| constant_time_eq(s.as_bytes(), check.state.expose().as_bytes()));
    if !state_ok {
        tracing::warn!(workload = %check.workload, "login callback with a wrong or missing state ignored");
        respond(
            &mut sock,
            400,
            &page_error("This sign-in link does not belong to the login in progress."),
        )
        .await;
        return;
    }
    // The response is ours (right state); from here on it settles the login.
    let (status, page, outcome) = if let Err(e) = check_iss(&check, q("iss").as_deref()) {
        tracing::warn!(workload = %check.workload, error = %e, "sign-in answer refused");
        (400, page_error(&e.to_string()), Err(e))
    } else if let Some(error) = q("error") {
        let error = crate::classify::sanitize(&error, 64);
        let description = q("error_description").map(|d| crate::classify::sanitize(&d, 200));
        let page = page_error(&format!("The issuer answered: {error}"));
        (200, page, Err(LoginError::Denied { error, description }))
    } else {
        match q("code") {
            Some(code) if !code.is_empty() => (200, PAGE_OK.to_string(), Ok(Secret::new(code))),
            _ => {
                respond(
                    &mut sock,
                    400,
                    &page_error("The callback had no authorization code."),
                )
                .await;
                return;
            }
        }
    };
    if settled.swap(true, Ordering::SeqCst) {
        respond(
            &mut sock,
            400,
            &page_error("This sign-in has already been answered."),
        )
        .await;
        return;
    }
    // The page goes out before the login hears of it: the login ending closes the
    // connections still open.
    respond(&mut sock, status, &page).await;
    let _ = tx.send(outcome).await;
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
    use crate::config::Config;

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
    fn a_lifetime_left_out_without_a_refresh_token_means_until_rejected() {
        let policy = Policy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let resp = |expires_in: Option<u64>, invalid: bool, refresh: bool| TokenResponse {
            access_token: Secret::new("at"),
            refresh_token: refresh.then(|| Secret::new("rt")),
            expires_in: expires_in.map(Duration::from_secs),
            expires_in_invalid: invalid,
            scope: None,
        };
        // Left out, no refresh token: no expiry (used until the remote rejects it).
        let (t, _) = to_stored(resp(None, false, false), None, now, &policy);
        assert_eq!((t.expires_at, t.lifetime), (None, None));
        // Sent but unusable: the assumed lifetime, refresh token or not.
        let assumed = unix_secs(now + policy.assumed_token_lifetime);
        let (t, _) = to_stored(resp(None, true, false), None, now, &policy);
        assert_eq!(t.expires_at, Some(assumed));
        // Left out with a refresh token (this one's or the one kept): assumed too.
        let (t, _) = to_stored(resp(None, false, true), None, now, &policy);
        assert_eq!(t.expires_at, Some(assumed));
        let (t, _) = to_stored(
            resp(None, false, false),
            Some(Secret::new("old")),
            now,
            &policy,
        );
        assert_eq!(t.expires_at, Some(assumed));
        assert_eq!(t.refresh_token, Some(Secret::new("old")));
        // A lifetime that was sent is used.
        let (t, _) = to_stored(resp(Some(60), false, false), None, now, &policy);
        assert_eq!(t.expires_at, Some(unix_secs(now) + 60));
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

/// Logins against the real loopback issuer (the `SimIssuer`), the browser step done
/// by following the authorization URL as a signed-in user's browser would.
#[cfg(test)]
mod login_tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;
    use tokenwarden_sim::issuer::{AuthorizationIss, IssuerOptions, SimIssuer};

    const WAIT: Duration = Duration::from_secs(20);

    async fn issuer() -> SimIssuer {
        SimIssuer::start(IssuerOptions::default()).await.unwrap()
    }

    fn workload_of(issuer: &SimIssuer, extra: &str) -> WorkloadConfig {
        let text = format!(
            "[[workload]]\nname = \"w\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n{extra}\n",
            issuer.authorization_endpoint(),
            issuer.token_endpoint(),
            issuer.client_id(),
        );
        Config::parse(std::path::Path::new("/x/workloads.toml"), &text)
            .unwrap()
            .workloads
            .remove(0)
    }

    fn no_redirects() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// The issuer's redirect back to the callback, for `authorize_url`.
    async fn authorize(authorize_url: &str) -> Url {
        let r = no_redirects().get(authorize_url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 302, "the issuer redirects back");
        Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
    }

    /// GET `url` (the callback): status and page.
    async fn get(url: &Url) -> (u16, String) {
        let r = no_redirects().get(url.clone()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `url` with its query parameter `name` set to `value` (`None`: removed).
    fn with_param(url: &Url, name: &str, value: Option<&str>) -> Url {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(n, _)| n != name)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        let mut out = url.clone();
        {
            let mut q = out.query_pairs_mut();
            q.clear();
            for (n, v) in &pairs {
                q.append_pair(n, v);
            }
            if let Some(v) = value {
                q.append_pair(name, v);
            }
        }
        out
    }

    type Finish = tokio::task::JoinHandle<Result<StoredTokens, LoginError>>;

    fn finish_in_background(pending: PendingLogin) -> Finish {
        let http = http_client(&Policy::default(), None).unwrap();
        tokio::spawn(async move { pending.finish(&http, &Policy::default(), WAIT).await })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_callbacks_are_refused_and_the_real_one_completes_the_login() {
        let issuer = issuer().await;
        let pending = prepare_login(&workload_of(&issuer, "")).await.unwrap();
        let authorize_url = pending.authorize_url.to_string();
        let finish = finish_in_background(pending);
        let callback = authorize(&authorize_url).await;

        // A forged callback (another login's state, or none) carrying a real code.
        for forged in [
            with_param(&callback, "state", Some("forged-state")),
            with_param(&callback, "state", None),
            with_param(&callback, "state", Some("")),
        ] {
            let (status, page) = get(&forged).await;
            assert_eq!(status, 400, "{forged}");
            assert!(page.contains("does not belong to the login"), "{page}");
        }
        // An error with a forged state does not end it either.
        let forged_error = with_param(
            &with_param(&callback, "code", None),
            "error",
            Some("access_denied"),
        );
        let forged_error = with_param(&forged_error, "state", Some("x"));
        assert_eq!(get(&forged_error).await.0, 400);
        assert_eq!(issuer.code_exchanges(), 0, "nothing exchanged yet");
        assert!(!finish.is_finished(), "the login still waits");

        // The real callback completes the login.
        let (status, page) = get(&callback).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("Signed in"), "{page}");
        let tokens = finish.await.unwrap().unwrap();
        assert!(issuer.is_valid_access_token(tokens.access_token.expose()));
        assert_eq!(issuer.code_exchanges(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_callback_with_the_right_state_ends_the_login_with_the_issuers_error() {
        let issuer = issuer().await;
        let pending = prepare_login(&workload_of(&issuer, "")).await.unwrap();
        // A request the issuer refuses: it redirects back with `error` and our state.
        let authorize_url = pending
            .authorize_url
            .to_string()
            .replace("code_challenge_method=S256", "code_challenge_method=plain");
        let finish = finish_in_background(pending);
        let callback = authorize(&authorize_url).await;
        assert!(
            callback.query_pairs().any(|(n, _)| n == "error"),
            "{callback}"
        );
        let (status, page) = get(&callback).await;
        assert_eq!(status, 200);
        assert!(
            page.contains("The issuer answered: invalid_request"),
            "{page}"
        );
        let e = finish.await.unwrap().unwrap_err();
        assert!(
            matches!(&e, LoginError::Denied { error, description: Some(d) } if error == "invalid_request" && d.contains("S256")),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("the issuer refused the login: invalid_request"),
            "{e}"
        );
        assert_eq!(issuer.code_exchanges(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_do_not_hold_the_callback_back() {
        use tokio::io::AsyncWriteExt as _;
        let issuer = issuer().await;
        let pending = prepare_login(&workload_of(&issuer, "")).await.unwrap();
        let port = pending.redirect_uri.port().unwrap();
        let authorize_url = pending.authorize_url.to_string();
        let finish = finish_in_background(pending);

        // Connections that send nothing, or half a request head, and stay open.
        let mut idle = Vec::new();
        for i in 0..4 {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /callback?state=").await.unwrap();
            }
            idle.push(s);
        }
        let still_open = |idle: &[tokio::net::TcpStream]| {
            idle.iter().all(|s| {
                let mut buf = [0u8; 1];
                matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
        };
        // A request that does not end the login (a stale tab's callback) is answered
        // while they are all open: nothing waits behind them.
        let callback = authorize(&authorize_url).await;
        let stale = with_param(&callback, "state", Some("stale-tab"));
        assert_eq!(get(&stale).await.0, 400);
        assert!(
            still_open(&idle),
            "answered only after idle connections were dropped"
        );
        // The real redirect completes the login; the idle ones are closed with it.
        assert_eq!(get(&callback).await.0, 200);
        let tokens = finish.await.unwrap().unwrap();
        assert!(issuer.is_valid_access_token(tokens.access_token.expose()));
        for mut s in idle {
            use tokio::io::AsyncReadExt as _;
            let mut buf = [0u8; 64];
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "closed with the login");
        }
    }

    #[test]
    fn iss_is_checked_by_exact_string_when_an_issuer_is_stored() {
        let check = |issuer: Option<&str>, required: bool, iss: Option<&str>| {
            check_iss(
                &CallbackCheck {
                    state: Secret::new("s"),
                    workload: "w".into(),
                    issuer: issuer.map(str::to_string),
                    iss_required: required,
                },
                iss,
            )
        };
        let a = Some("https://as.example/tenant");
        assert!(check(a, true, a).is_ok());
        assert!(check(a, false, a).is_ok());
        assert!(
            check(a, false, None).is_ok(),
            "not advertised: may be absent"
        );
        assert!(matches!(
            check(a, true, None),
            Err(LoginError::IssuerMissing { .. })
        ));
        for other in [
            "https://as.example/tenant/",
            "https://AS.example/tenant",
            "https://as.example",
            "https://evil.example/tenant",
            "",
        ] {
            let e = check(a, false, Some(other)).unwrap_err();
            assert!(matches!(e, LoginError::IssuerMismatch { .. }), "{other}");
            assert!(e.to_string().contains("https://as.example/tenant"), "{e}");
        }
        // Nothing stored: nothing to compare with (logged, used).
        assert!(check(None, false, Some("https://anything.example")).is_ok());
        assert!(check(None, false, None).is_ok());
        // What the server sent is shown sanitized.
        let e = check(a, false, Some("https://x\n<script>")).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    /// One login against the issuer answering as `iss` says, for a workload with
    /// `extra` keys. The callback page's status, and the outcome.
    async fn login_with_iss(
        iss: AuthorizationIss,
        extra: &str,
    ) -> (SimIssuer, u16, Result<StoredTokens, LoginError>) {
        let issuer = issuer().await;
        issuer.set_authorization_iss(iss);
        let extra = extra.replace("{issuer}", &issuer.base_url());
        let pending = prepare_login(&workload_of(&issuer, &extra)).await.unwrap();
        let authorize_url = pending.authorize_url.to_string();
        let finish = finish_in_background(pending);
        let (status, _) = get(&authorize(&authorize_url).await).await;
        (issuer, status, finish.await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rfc9207_iss_is_refused_before_the_code_is_exchanged() {
        let stored = "issuer = \"{issuer}\"\niss_parameter = true";
        let stored_not_advertised = "issuer = \"{issuer}\"";
        let forged = |advertised| AuthorizationIss::Forged {
            iss: "https://attacker.example".into(),
            advertised,
        };
        // Refused: advertised but missing; present but another issuer.
        for (iss, extra, want) in [
            (
                AuthorizationIss::AdvertisedButOmitted,
                stored,
                "without `iss`",
            ),
            (forged(true), stored, "https://attacker.example"),
            (
                forged(false),
                stored_not_advertised,
                "https://attacker.example",
            ),
        ] {
            let what = format!("{iss:?} with {extra}");
            let (issuer, status, outcome) = login_with_iss(iss, extra).await;
            let e = outcome.expect_err(&what);
            assert!(
                matches!(
                    e,
                    LoginError::IssuerMissing { .. } | LoginError::IssuerMismatch { .. }
                ),
                "{what}: {e:?}"
            );
            assert!(e.to_string().contains(want), "{what}: {e}");
            assert_eq!(status, 400, "{what}: the page says so");
            assert_eq!(issuer.code_exchanges(), 0, "{what}: no code exchanged");
        }
        // Accepted: the right `iss`; none from a server that does not advertise it;
        // anything from a workload without a stored issuer (nothing to compare).
        for (iss, extra) in [
            (AuthorizationIss::On, stored),
            (AuthorizationIss::On, stored_not_advertised),
            (AuthorizationIss::Off, stored_not_advertised),
            (forged(true), ""),
        ] {
            let what = format!("{iss:?} with {extra}");
            let (issuer, status, outcome) = login_with_iss(iss, extra).await;
            let tokens = outcome.expect(&what);
            assert_eq!(status, 200, "{what}");
            assert!(issuer.is_valid_access_token(tokens.access_token.expose()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_sign_in_replaces_the_waiting_one_on_the_registered_port() {
        let issuer = issuer().await;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let w = workload_of(&issuer, &format!("redirect_port = {port}"));
        let logins = Arc::new(WaitingLogins::default());
        let first = logins.prepare(&w).await.unwrap();
        let first_url = first.authorize_url.to_string();
        let first = finish_in_background(first);
        assert!(logins.is_waiting("w"));

        // Pressed again: the waiting one is cancelled and its port bound anew.
        let second = logins.prepare(&w).await.unwrap();
        assert_eq!(second.redirect_uri.port(), Some(port));
        let e = first.await.unwrap().unwrap_err();
        assert!(
            matches!(e, LoginError::Replaced(ref n) if n == "w"),
            "{e:?}"
        );
        let second_url = second.authorize_url.to_string();
        let second = finish_in_background(second);
        // The first one's answer (its state) is not the second's.
        assert_eq!(get(&authorize(&first_url).await).await.0, 400);
        assert_eq!(get(&authorize(&second_url).await).await.0, 200);
        second.await.unwrap().unwrap();
        assert!(!logins.is_waiting("w"), "the place is freed");
        // Once done, the port is free again.
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
