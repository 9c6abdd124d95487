//! A small but real OAuth 2 authorization server that runs on loopback.
//!
//! `tokenwarden` uses it for its built-in demo and as the fake issuer of its
//! integration tests. It speaks the authorization-code grant with PKCE (S256
//! only) and the refresh-token grant, and can be switched at run time into a
//! number of failure [`Mode`]s that mimic what a token endpoint looks like from
//! behind a WAF, a captive portal, a dead VPN, a rate limiter or a broken
//! middlebox.
//!
//! # Network
//!
//! The server binds `127.0.0.1` only (never a wildcard address) and serves
//! plain HTTP/1.1 with axum. Endpoints:
//!
//! * `GET /` – a plain-text page naming the endpoints (for the demo).
//! * `GET /authorize` – behaves like a user who is already signed in and
//!   approves: validates the request and answers `302 Found` back to a loopback
//!   `redirect_uri` with a single-use `code` (bound to the client, the redirect
//!   URI and the PKCE challenge, valid for five minutes).
//! * `POST /token` – `authorization_code` and `refresh_token` grants, public
//!   client authenticated by `client_id` in the form or by HTTP Basic; a
//!   dynamically registered confidential client must authenticate exactly as it
//!   was registered (`client_secret_post` or `client_secret_basic`).
//! * `GET /.well-known/oauth-authorization-server<path>` (RFC 8414),
//!   `GET /.well-known/openid-configuration<path>` and
//!   `GET <path>/.well-known/openid-configuration` (OpenID Connect Discovery), where
//!   `<path>` is [`IssuerOptions::issuer_path`] (a Keycloak realm, an Entra tenant;
//!   empty by default) – the metadata: `issuer` = [`SimIssuer::issuer`], the
//!   endpoints, `code_challenge_methods_supported: ["S256"]`,
//!   `registration_endpoint`, `scopes_supported` when
//!   [`IssuerOptions::scopes_supported`] says so. [`MetadataMode`] breaks it on
//!   purpose (wrong issuer, a trailing `/` added to it, no S256, not JSON, huge, a
//!   redirect to another host, only at one location, missing); every metadata
//!   request is recorded ([`SimIssuer::metadata_requests`]).
//! * `POST /register` – RFC 7591 dynamic client registration. A registered client
//!   is valid alongside the configured `client_id`; its redirect URIs are checked
//!   exactly at `/authorize`. [`IssuerOptions::registration_auth`] makes it a
//!   confidential client (a `sim_cs_` secret, sent back once and appended to the
//!   ledger) whose `/token` requests must carry the secret.
//!
//! RFC 9207: [`SimIssuer::set_authorization_iss`] makes the metadata advertise
//! `authorization_response_iss_parameter_supported` and the `/authorize` redirects
//! (code or error) carry `iss`, or omit or forge it ([`AuthorizationIss`]).
//!
//! The RFC 8707 `resource` parameter is accepted on `/authorize` and `/token` and
//! recorded per request ([`SimIssuer::resources_seen`]); a value that is not an
//! absolute URI without a fragment gets `invalid_target`.
//!
//! Tokens are random, URL-safe, carry the prefixes `sim_at_` (access),
//! `sim_rt_` (refresh) and `sim_code_` (authorization codes) so that logs can be
//! scanned for leaks, and are never logged by this module.
//!
//! # Modes
//!
//! The current [`Mode`] is applied to every `POST /token` request after the
//! request has been counted (and, for refreshes, after `refresh_delay` and while
//! [`SimIssuer::hold_refreshes`] holds them), and before any grant logic. Only a `Healthy` answer ever consumes a code or a
//! refresh token or issues tokens.
//!
//! * `Healthy` – normal OAuth behaviour.
//! * `Waf403` – `403` with a `text/html` "Access denied" page, like a WAF/CDN.
//! * `LoginPage200` – `200` with a `text/html` captive-portal / VPN login page.
//! * `Down` – the listening socket is closed and every open connection is
//!   dropped, so new connections are refused. Leaving `Down` binds the same
//!   port again and serves.
//! * `Status` – an arbitrary status, content type and (UTF-8) body.
//! * `Raw` – an arbitrary status, headers (`Content-Type`, `Retry-After`,
//!   `Location`, ...) and body *bytes*, which need not be UTF-8. Still a
//!   well-formed HTTP answer (with a `Content-Length`; no `Content-Type` unless
//!   one is given). It exists for the shapes `Status` cannot express: invalid
//!   UTF-8 bodies, a `5xx` with `Retry-After`, a redirect with a `Location`.
//!   Header names or values that are not valid HTTP are skipped.
//! * `OAuthError` – a JSON OAuth error with the given status.
//! * `RateLimited` – `429` with the given `Retry-After` value verbatim and a
//!   JSON `temporarily_unavailable` body.
//! * `Hang` – the request is read and never answered. When the mode changes or
//!   the issuer shuts down, the connection is closed without an answer. If the
//!   client gives up first, the request is dropped.
//! * `Huge` – `200 application/json`, chunked (no `Content-Length`, so the
//!   client has to cap what it streams), whose body is exactly `bytes` long and
//!   is not a token response. It is streamed, never held in memory.
//! * `Trickle` – `200` with a `Content-Length` and a token-looking JSON body
//!   sent a few bytes at a time at roughly `bytes_per_second` (0 = headers and
//!   then nothing). Its tokens were never issued and are not valid.
//!   [`SimIssuer::raw_bytes_sent`] counts the body bytes the byte-level modes
//!   (`Huge`, `Trickle`) managed to write, so a test can show a client stopped
//!   reading early.
//! * `ResetMidBody` – headers with a `Content-Length`, about half of the body,
//!   then the TCP connection is reset.
//!
//! The byte-level modes (`Hang`, `Huge`, `Trickle`, `ResetMidBody`, `Down`)
//! take the raw TCP stream away from the HTTP server for that connection: the
//! listener hands axum a thin wrapper around each accepted socket whose stream
//! can be taken out (or dropped) by the issuer.
//!
//! # Example
//!
//! ```text
//! let issuer = SimIssuer::start(IssuerOptions::default()).await?;
//! issuer.set_mode(Mode::Waf403);
//! // ... exercise the client ...
//! issuer.set_mode(Mode::Healthy);
//! issuer.shutdown();
//! ```

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

/// How long an authorization code can be redeemed.
const CODE_LIFETIME: Duration = Duration::from_secs(300);
/// Random characters in a token, after its prefix.
const TOKEN_RANDOM_CHARS: usize = 43;
/// Listen backlog of the loopback socket.
const BACKLOG: u32 = 1024;

/// Configuration of a [`SimIssuer`].
#[derive(Clone, Debug)]
pub struct IssuerOptions {
    /// The only client the issuer knows. Default `"tokenwarden-test"`.
    pub client_id: String,
    /// Lifetime of access tokens; `expires_in` is sent as whole seconds,
    /// rounded up, at least 1. Default 3600 s.
    pub access_token_lifetime: Duration,
    /// Every refresh issues a new refresh token. Default `true`.
    pub rotate_refresh_tokens: bool,
    /// With rotation, a refresh token is invalid once it has been used
    /// (reuse gets `400 invalid_grant`). Without rotation the same refresh
    /// token is kept and stays valid. Default `true`.
    pub strict_rotation: bool,
    /// Under strict rotation, presenting an already used refresh token also
    /// revokes every token of that grant (refresh-token reuse detection as
    /// some real issuers do it). Default `false`.
    pub revoke_grant_on_reuse: bool,
    /// Artificial latency before a refresh request is answered (in every
    /// mode). Default zero.
    pub refresh_delay: Duration,
    /// If set, every access and refresh token issued is appended to this file,
    /// one per line (created if missing, flushed per line).
    pub ledger: Option<PathBuf>,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// What `POST /register` makes: public clients (default) or confidential ones.
    pub registration_auth: RegistrationAuth,
    /// The path of the issuer identifier (`/realms/x`; `/` for an identifier with a
    /// trailing slash). Default empty: the issuer is [`SimIssuer::base_url`].
    pub issuer_path: String,
    /// `scopes_supported` in the metadata. Default `None`: not published.
    pub scopes_supported: Option<Vec<String>>,
    /// When the code exchange issues a refresh token. Default `Always`.
    pub refresh_tokens: RefreshTokens,
    /// Token answers carry `expires_in`. Default `true`. (The access token still
    /// stops working after `access_token_lifetime`.)
    pub send_expires_in: bool,
}

/// When the authorization code exchange issues a refresh token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RefreshTokens {
    #[default]
    Always,
    /// Never (GitHub OAuth apps, many API gateways).
    Never,
    /// Only when the authorization request asked for the `offline_access` scope.
    WithOfflineAccess,
}

/// One of the well-known metadata locations of an issuer with path `<path>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WellKnown {
    /// `/.well-known/oauth-authorization-server<path>` (RFC 8414).
    OAuth,
    /// `/.well-known/openid-configuration<path>`.
    OidcInserted,
    /// `<path>/.well-known/openid-configuration`.
    OidcAppended,
}

/// Whether the issuer takes an HTTPS URL (here: any URL, the tests serve loopback
/// ones) as `client_id`, fetching the Client ID Metadata Document there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientMetadataMode {
    /// Not advertised; a URL client id is an unknown client.
    #[default]
    Off,
    /// Advertised (`client_id_metadata_document_supported`); at `/authorize` the
    /// document is fetched and checked: JSON, `client_id` identical to the URL,
    /// `client_name`, `redirect_uris` listing the request's `redirect_uri`.
    Accept,
    /// Advertised, fetched and checked, then refused by the server's policy (a
    /// domain it does not trust): `error=invalid_client` to a listed redirect URI.
    RejectByPolicy,
}

/// The kind of client `POST /register` creates, whatever the request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegistrationAuth {
    /// `token_endpoint_auth_method: "none"`, no secret.
    #[default]
    Public,
    /// A `client_secret`, to be sent in the `/token` form.
    SecretPost,
    /// A `client_secret`, to be sent with HTTP Basic.
    SecretBasic,
}

impl RegistrationAuth {
    fn method(self) -> &'static str {
        match self {
            RegistrationAuth::Public => "none",
            RegistrationAuth::SecretPost => "client_secret_post",
            RegistrationAuth::SecretBasic => "client_secret_basic",
        }
    }
}

/// How the authorization server metadata is served (both well-known locations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MetadataMode {
    /// Correct metadata at both locations.
    #[default]
    Good,
    /// `issuer` names another server.
    WrongIssuer,
    /// `code_challenge_methods_supported: ["plain"]`.
    NoS256,
    /// `200 text/html`.
    NotJson,
    /// `200 application/json`, chunked (no `Content-Length`), `bytes` long.
    Huge { bytes: usize },
    /// `302` to the same document at `http://localhost:PORT` (another origin).
    /// That other origin serves the good document, so following it would "work".
    RedirectToOtherHost,
    /// Only at `/.well-known/openid-configuration`; `404` at the RFC 8414 location.
    OidcOnly,
    /// Only at this location; `404` at the others.
    OnlyAt(WellKnown),
    /// `issuer` is [`SimIssuer::issuer`] with a `/` appended.
    IssuerTrailingSlash,
    /// `404` at both.
    Missing,
}

/// What `/authorize` redirects say about the issuer (RFC 9207), and whether the
/// metadata advertises `authorization_response_iss_parameter_supported`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AuthorizationIss {
    /// No `iss`, nothing advertised (a server that predates RFC 9207).
    #[default]
    Off,
    /// Advertised; every redirect carries `iss` = [`SimIssuer::base_url`].
    On,
    /// Advertised, but the redirects carry no `iss`.
    AdvertisedButOmitted,
    /// The redirects carry `iss` = `iss`; advertised or not.
    Forged { iss: String, advertised: bool },
}

/// Which request carried a `resource` parameter (or did not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceRequest {
    Authorize,
    CodeExchange,
    Refresh,
}

/// One request's `resource` parameter, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceSeen {
    pub request: ResourceRequest,
    pub resource: Option<String>,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            client_id: "tokenwarden-test".to_string(),
            access_token_lifetime: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            strict_rotation: true,
            revoke_grant_on_reuse: false,
            refresh_delay: Duration::ZERO,
            ledger: None,
            port: 0,
            registration_auth: RegistrationAuth::Public,
            issuer_path: String::new(),
            scopes_supported: None,
            refresh_tokens: RefreshTokens::Always,
            send_expires_in: true,
        }
    }
}

/// How `POST /token` answers. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Normal OAuth behaviour.
    Healthy,
    /// `403`, `text/html` "Access denied" page, as a WAF or CDN would send.
    Waf403,
    /// `200`, `text/html` captive-portal / VPN login page.
    LoginPage200,
    /// Listener closed and connections dropped: connections are refused.
    Down,
    /// An arbitrary answer.
    Status {
        status: u16,
        content_type: String,
        body: String,
    },
    /// An arbitrary answer with extra headers and a body that need not be UTF-8.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// JSON `{"error": error, "error_description": ...}` with `status`.
    OAuthError { status: u16, error: String },
    /// `429` with `Retry-After: retry_after` verbatim and a JSON
    /// `temporarily_unavailable` body.
    RateLimited { retry_after: String },
    /// The request is read and never answered.
    Hang,
    /// `200 application/json`, chunked, `bytes` long, not a token response.
    Huge { bytes: usize },
    /// `200` token-looking JSON sent a few bytes at a time.
    Trickle { bytes_per_second: u32 },
    /// Headers with `Content-Length`, part of the body, then a TCP reset.
    ResetMidBody,
    /// JSON error with `status` whose `error_description` repeats the refresh token
    /// (or code) it was sent, as a careless issuer does; `{sent}` in `error` is
    /// replaced by it too.
    EchoSent { status: u16, error: String },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Waf403 => "waf403",
            Mode::LoginPage200 => "login-page-200",
            Mode::Down => "down",
            Mode::Status { .. } => "status",
            Mode::Raw { .. } => "raw",
            Mode::OAuthError { .. } => "oauth-error",
            Mode::RateLimited { .. } => "rate-limited",
            Mode::Hang => "hang",
            Mode::Huge { .. } => "huge",
            Mode::Trickle { .. } => "trickle",
            Mode::ResetMidBody => "reset-mid-body",
            Mode::EchoSent { .. } => "echo-sent",
        }
    }
}

/// A running simulated issuer. Cheap to clone; all clones share one server.
/// The server stops on [`SimIssuer::shutdown`] or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct SimIssuer {
    inner: Arc<Inner>,
    _guard: Arc<ShutdownOnDrop>,
}

impl std::fmt::Debug for SimIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimIssuer")
            .field("addr", &self.inner.addr)
            .field("mode", &self.mode())
            .finish()
    }
}

struct ShutdownOnDrop(Arc<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl SimIssuer {
    /// Binds `127.0.0.1:opts.port` and starts serving on the current Tokio
    /// runtime.
    pub async fn start(opts: IssuerOptions) -> io::Result<SimIssuer> {
        Self::serve(bind_loopback(opts.port)?, opts)
    }

    /// Serve on a listener the caller bound. Only for tests that put the issuer in a
    /// network namespace of their own (bound from a thread inside it), so that taking
    /// an address away is a real outage. `Mode::Down` rebinds the same address from
    /// the runtime's namespace, so it is meant for loopback issuers.
    pub async fn start_on(
        listener: std::net::TcpListener,
        opts: IssuerOptions,
    ) -> io::Result<SimIssuer> {
        listener.set_nonblocking(true)?;
        Self::serve(TcpListener::from_std(listener)?, opts)
    }

    fn serve(listener: TcpListener, opts: IssuerOptions) -> io::Result<SimIssuer> {
        let addr = listener.local_addr()?;
        let ledger = match &opts.ledger {
            Some(path) => Some(OpenOptions::new().create(true).append(true).open(path)?),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let (mode_tx, _) = watch::channel(Mode::Healthy);
        let (refresh_count, _) = watch::channel(0u64);
        let (code_count, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            addr,
            client_id: opts.client_id,
            registration_auth: opts.registration_auth,
            registered: Mutex::new(HashMap::new()),
            registration_count: AtomicU64::new(0),
            resources: Mutex::new(Vec::new()),
            metadata_mode: Mutex::new(MetadataMode::Good),
            authorization_iss: Mutex::new(AuthorizationIss::Off),
            issuer_path: opts.issuer_path,
            scopes_supported: opts.scopes_supported,
            refresh_tokens: opts.refresh_tokens,
            send_expires_in: opts.send_expires_in,
            metadata_requests: Mutex::new(Vec::new()),
            rotate: opts.rotate_refresh_tokens,
            strict: opts.strict_rotation,
            revoke_grant_on_reuse: opts.revoke_grant_on_reuse,
            refresh_delay: opts.refresh_delay,
            hold: watch::channel(false).0,
            runtime: tokio::runtime::Handle::current(),
            generation_root: shutdown.clone(),
            shutdown,
            mode_tx,
            net: Mutex::new(NetState {
                listener: Some(listener),
                accept_waker: None,
                generation: CancellationToken::new(),
            }),
            conns: Arc::new(Mutex::new(ConnRegistry::default())),
            refresh_count,
            code_count,
            in_flight_refreshes: AtomicU64::new(0),
            max_in_flight_refreshes: AtomicU64::new(0),
            raw_bytes_sent: Arc::new(AtomicU64::new(0)),
            tokens: Mutex::new(TokenState {
                access_lifetime: opts.access_token_lifetime,
                codes: HashMap::new(),
                access: HashMap::new(),
                refresh: HashMap::new(),
                grants: HashMap::new(),
                next_grant: 1,
                issued: Vec::new(),
                ledger,
            }),
            refused_scopes: Mutex::new(Vec::new()),
            client_metadata: Mutex::new(ClientMetadataMode::Off),
            client_metadata_fetches: AtomicU64::new(0),
            registration_requests: Mutex::new(Vec::new()),
            client_secret_lifetime: Mutex::new(None),
            client_updates: AtomicU64::new(0),
            failing_client_updates: AtomicU64::new(0),
        });
        lock(&inner.net).generation = inner.generation_root.child_token();

        let app = Router::new()
            .route("/", get(index_page))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/register", post(register))
            .route("/register/{client_id}", axum::routing::put(update_client))
            // The well-known locations depend on the issuer's path.
            .fallback(get(metadata).fallback(not_found))
            .with_state(inner.clone());
        let make_service = app.into_make_service_with_connect_info::<ConnHandle>();
        let listener = SimListener {
            inner: inner.clone(),
        };
        let signal = inner.shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, make_service)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!("sim issuer: server stopped with an error: {err}");
            }
        });
        tracing::debug!("sim issuer listening on http://{addr}");
        Ok(SimIssuer {
            _guard: Arc::new(ShutdownOnDrop(inner.clone())),
            inner,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The issuer identifier: `base_url() + issuer_path`, what the metadata's
    /// `issuer` says (and a protected resource names in `authorization_servers`).
    pub fn issuer(&self) -> String {
        self.inner.issuer()
    }

    /// The paths of the metadata requests received, in order.
    pub fn metadata_requests(&self) -> Vec<String> {
        lock(&self.inner.metadata_requests).clone()
    }

    /// `base_url() + "/token"`
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// `base_url() + "/authorize"`
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.base_url())
    }

    /// The socket address the issuer listens on (always 127.0.0.1).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The port the issuer listens on.
    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// The configured client id (registered clients are valid alongside it).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// `base_url() + "/register"` (RFC 7591).
    pub fn registration_endpoint(&self) -> String {
        format!("{}/register", self.base_url())
    }

    /// `base_url() + "/.well-known/oauth-authorization-server"` (RFC 8414).
    pub fn metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-authorization-server", self.base_url())
    }

    /// Switches how the authorization server metadata is served.
    pub fn set_metadata_mode(&self, mode: MetadataMode) {
        *lock(&self.inner.metadata_mode) = mode;
    }

    /// Client secrets issued from now on (registration and RFC 7592 updates) expire
    /// after `lifetime` (`client_secret_expires_at`; the token endpoint then answers
    /// `invalid_client`), and registrations give an RFC 7592 configuration endpoint
    /// (`PUT /register/<client_id>`) with a `registration_access_token`. `None`:
    /// secrets never expire, no configuration endpoint.
    pub fn set_client_secret_lifetime(&self, lifetime: Option<Duration>) {
        *lock(&self.inner.client_secret_lifetime) = lifetime;
    }

    /// RFC 7592 updates (`PUT /register/<client_id>`) answered with a new secret.
    pub fn client_updates(&self) -> u64 {
        self.inner.client_updates.load(Ordering::SeqCst)
    }

    /// The next `n` RFC 7592 updates get `503` (a transient failure).
    pub fn fail_client_updates(&self, n: u64) {
        self.inner.failing_client_updates.store(n, Ordering::SeqCst);
    }

    /// Forget every client `POST /register` made (a server that lost or purged its
    /// registrations): they get `invalid_client` from now on.
    pub fn forget_registered_clients(&self) {
        lock(&self.inner.registered).clear();
    }

    /// How URL client ids (Client ID Metadata Documents) are treated.
    pub fn set_client_metadata(&self, mode: ClientMetadataMode) {
        *lock(&self.inner.client_metadata) = mode;
    }

    /// Client ID Metadata Documents fetched (at `/authorize`).
    pub fn client_metadata_fetches(&self) -> u64 {
        self.inner.client_metadata_fetches.load(Ordering::SeqCst)
    }

    /// The JSON bodies of the `POST /register` requests received, in order.
    pub fn registration_requests(&self) -> Vec<serde_json::Value> {
        lock(&self.inner.registration_requests).clone()
    }

    /// The user refuses to grant these scopes: an authorization request asking for
    /// any of them is answered `error=access_denied` (the consent screen's "Deny").
    /// Empty: every scope is granted as asked.
    pub fn refuse_scopes(&self, scopes: &[&str]) {
        *lock(&self.inner.refused_scopes) = scopes.iter().map(|s| s.to_string()).collect();
    }

    /// The scopes the grant of `access_token` was issued with (`None`: an unknown
    /// token). It is a token: assert with it, do not log it.
    pub fn access_token_scopes(&self, access_token: &str) -> Option<Vec<String>> {
        let tokens = lock(&self.inner.tokens);
        let grant = tokens.access.get(access_token)?.grant;
        let scope = tokens.grants.get(&grant)?.scope.clone().unwrap_or_default();
        Some(
            scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// Switches what the `/authorize` redirects and the metadata say about `iss`.
    pub fn set_authorization_iss(&self, iss: AuthorizationIss) {
        *lock(&self.inner.authorization_iss) = iss;
    }

    /// `POST /register` requests received (valid or not).
    pub fn registrations(&self) -> u64 {
        self.inner.registration_count.load(Ordering::SeqCst)
    }

    /// The client ids `POST /register` created, in order.
    pub fn registered_client_ids(&self) -> Vec<String> {
        let mut v: Vec<(u64, String)> = lock(&self.inner.registered)
            .iter()
            .map(|(id, c)| (c.seq, id.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// The client secrets `POST /register` handed out (confidential registrations).
    pub fn issued_client_secrets(&self) -> Vec<String> {
        lock(&self.inner.registered)
            .values()
            .filter_map(|c| c.secret.clone())
            .collect()
    }

    /// The `resource` parameter of every `/authorize`, code exchange and refresh
    /// request, in order of arrival (counted whatever the mode).
    pub fn resources_seen(&self) -> Vec<ResourceSeen> {
        lock(&self.inner.resources).clone()
    }

    /// Switches how `POST /token` answers (both grants). Entering `Down`
    /// closes the listener and drops every connection before returning;
    /// leaving it binds the same port again before returning (retrying in the
    /// background if the port is briefly unavailable).
    pub fn set_mode(&self, mode: Mode) {
        self.inner.set_mode(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.inner.mode_tx.borrow().clone()
    }

    /// Revokes every grant issued so far: all refresh tokens (and access
    /// tokens) issued until now become invalid; refreshing with them gets
    /// `400 invalid_grant`.
    pub fn revoke_all(&self) {
        let mut tokens = lock(&self.inner.tokens);
        for grant in tokens.grants.values_mut() {
            grant.revoked = true;
        }
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_token_lifetime(&self, d: Duration) {
        lock(&self.inner.tokens).access_lifetime = d;
    }

    /// Lifetime of access tokens issued from now on.
    pub fn access_token_lifetime(&self) -> Duration {
        lock(&self.inner.tokens).access_lifetime
    }

    /// `POST /token` requests with `grant_type=refresh_token` received, counted
    /// on arrival whatever the mode.
    pub fn refresh_requests(&self) -> u64 {
        *self.inner.refresh_count.borrow()
    }

    /// `POST /token` requests with `grant_type=authorization_code` received,
    /// counted on arrival whatever the mode.
    pub fn code_exchanges(&self) -> u64 {
        *self.inner.code_count.borrow()
    }

    /// The most refresh requests that were in flight at once.
    pub fn max_concurrent_refreshes(&self) -> u64 {
        self.inner.max_in_flight_refreshes.load(Ordering::SeqCst)
    }

    /// Body bytes the byte-level modes (`Huge`, `Trickle`) have written to
    /// sockets so far, over all connections. A client that abandons a huge body
    /// at its cap stops this count far below the body's size (what is left in
    /// flight is bounded by the kernel's socket buffers).
    pub fn raw_bytes_sent(&self) -> u64 {
        self.inner.raw_bytes_sent.load(Ordering::SeqCst)
    }

    /// `true`: refresh requests that arrive (or wait) are held, counted and in flight
    /// but unanswered; `false` releases them, and they are answered as the mode then
    /// says. A test's way to keep a refresh in flight exactly as long as it needs.
    pub fn hold_refreshes(&self, hold: bool) {
        self.inner.hold.send_replace(hold);
    }

    /// Refresh requests in flight right now.
    pub fn refreshes_in_flight(&self) -> u64 {
        self.inner.in_flight_refreshes.load(Ordering::SeqCst)
    }

    /// Every access and refresh token ever issued, in order of issue.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.inner.tokens).issued.clone()
    }

    /// A code + PKCE login done straight against this issuer's endpoints, without a
    /// loopback callback listener (benchmarks that need thousands of logins fast).
    /// `http` must not follow redirects (`reqwest::redirect::Policy::none()`).
    pub async fn direct_login(&self, http: &reqwest::Client) -> io::Result<DirectLogin> {
        let verifier = format!("{:064x}", rand::random::<u128>());
        let redirect = "http://127.0.0.1:9/cb";
        let url = format!(
            "{}?response_type=code&client_id={}&redirect_uri={}&state=s&code_challenge={}&code_challenge_method=S256",
            self.authorization_endpoint(),
            self.client_id(),
            redirect,
            pkce_s256_challenge(&verifier)
        );
        let r = http.get(url).send().await.map_err(io::Error::other)?;
        let code = r
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| Url::parse(l).ok())
            .and_then(|l| {
                l.query_pairs()
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned())
            })
            .ok_or_else(|| io::Error::other("the issuer sent no code"))?;
        let bytes = http
            .post(self.token_endpoint())
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("client_id", self.client_id()),
                ("code_verifier", &verifier),
            ])
            .send()
            .await
            .map_err(io::Error::other)?
            .bytes()
            .await
            .map_err(io::Error::other)?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)?;
        let field = |k: &str| {
            body[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| io::Error::other(format!("no {k} in the token response")))
        };
        Ok(DirectLogin {
            access_token: field("access_token")?,
            refresh_token: field("refresh_token")?,
            lifetime: self.access_token_lifetime().max(Duration::from_secs(1)),
        })
    }

    /// Issued by this issuer, not expired by its lifetime, not revoked.
    pub fn is_valid_access_token(&self, token: &str) -> bool {
        let tokens = lock(&self.inner.tokens);
        match tokens.access.get(token) {
            Some(entry) => Instant::now() < entry.expires_at && !tokens.grant_revoked(entry.grant),
            None => false,
        }
    }

    /// Issued, not used up under strict rotation, not revoked.
    pub fn is_valid_refresh_token(&self, token: &str) -> bool {
        let tokens = lock(&self.inner.tokens);
        match tokens.refresh.get(token) {
            Some(entry) => !entry.used && !tokens.grant_revoked(entry.grant),
            None => false,
        }
    }

    /// Waits until at least `n` refresh requests have arrived; `false` on
    /// timeout.
    pub async fn wait_for_refresh_requests(&self, n: u64, timeout: Duration) -> bool {
        wait_for_count(&self.inner.refresh_count, n, timeout).await
    }

    /// Waits until at least `n` code exchanges have arrived; `false` on
    /// timeout.
    pub async fn wait_for_code_exchanges(&self, n: u64, timeout: Duration) -> bool {
        wait_for_count(&self.inner.code_count, n, timeout).await
    }

    /// Stops accepting, drops every connection and stops the server. Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Whether [`SimIssuer::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

/// `BASE64URL-NOPAD(SHA256(verifier))`, the PKCE S256 code challenge.
/// The tokens of a [`SimIssuer::direct_login`] (no `Debug`: they are live tokens).
pub struct DirectLogin {
    pub access_token: String,
    pub refresh_token: String,
    /// The access token's lifetime as issued.
    pub lifetime: Duration,
}

pub fn pkce_s256_challenge(verifier: &str) -> String {
    base64url_nopad(&sha256(verifier.as_bytes()))
}

async fn wait_for_count(counter: &watch::Sender<u64>, n: u64, timeout: Duration) -> bool {
    let mut rx = counter.subscribe();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n))
        .await
        .is_ok_and(|result| result.is_ok());
    reached
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

struct Inner {
    addr: SocketAddr,
    client_id: String,
    registration_auth: RegistrationAuth,
    registered: Mutex<HashMap<String, RegisteredClient>>,
    registration_count: AtomicU64,
    resources: Mutex<Vec<ResourceSeen>>,
    metadata_mode: Mutex<MetadataMode>,
    authorization_iss: Mutex<AuthorizationIss>,
    issuer_path: String,
    scopes_supported: Option<Vec<String>>,
    refresh_tokens: RefreshTokens,
    send_expires_in: bool,
    metadata_requests: Mutex<Vec<String>>,
    rotate: bool,
    strict: bool,
    revoke_grant_on_reuse: bool,
    refresh_delay: Duration,
    /// `true`: refresh requests wait ([`SimIssuer::hold_refreshes`]).
    hold: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    /// Parent of the per-listener generations (same as `shutdown`).
    generation_root: CancellationToken,
    mode_tx: watch::Sender<Mode>,
    net: Mutex<NetState>,
    conns: Arc<Mutex<ConnRegistry>>,
    refresh_count: watch::Sender<u64>,
    code_count: watch::Sender<u64>,
    in_flight_refreshes: AtomicU64,
    max_in_flight_refreshes: AtomicU64,
    /// Body bytes written by the byte-level modes (`Huge`, `Trickle`).
    raw_bytes_sent: Arc<AtomicU64>,
    tokens: Mutex<TokenState>,
    /// Scopes the signed-in user refuses to grant ([`SimIssuer::refuse_scopes`]).
    refused_scopes: Mutex<Vec<String>>,
    /// How URL client ids (Client ID Metadata Documents) are treated.
    client_metadata: Mutex<ClientMetadataMode>,
    client_metadata_fetches: AtomicU64,
    /// The body of every `POST /register` that parsed as JSON, in order.
    registration_requests: Mutex<Vec<serde_json::Value>>,
    /// Registered clients' secrets expire this long after they are issued.
    client_secret_lifetime: Mutex<Option<Duration>>,
    client_updates: AtomicU64,
    /// RFC 7592 updates still to answer `503`.
    failing_client_updates: AtomicU64,
}

/// A client made by `POST /register`.
struct RegisteredClient {
    seq: u64,
    redirect_uris: Vec<String>,
    secret: Option<String>,
    auth: RegistrationAuth,
    /// When the secret stops working ([`SimIssuer::set_client_secret_lifetime`]).
    secret_expires: Option<(Instant, u64)>,
    /// RFC 7592 access token of its configuration endpoint.
    registration_access_token: Option<String>,
}

struct NetState {
    listener: Option<TcpListener>,
    accept_waker: Option<Waker>,
    /// Cancelled when the issuer goes `Down` or shuts down: ends the tasks that
    /// hold raw streams taken from connections of that generation.
    generation: CancellationToken,
}

#[derive(Default)]
struct ConnRegistry {
    next_id: u64,
    conns: HashMap<u64, Arc<ConnShared>>,
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every
/// critical section here is short and panic-free by construction).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn update_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(existing) if existing.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn bind_loopback(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(BACKLOG)
}

impl Inner {
    fn mode(&self) -> Mode {
        self.mode_tx.borrow().clone()
    }

    fn generation(&self) -> CancellationToken {
        lock(&self.net).generation.clone()
    }

    fn set_mode(self: &Arc<Self>, mode: Mode) {
        let mut net = lock(&self.net);
        let going_down = mode == Mode::Down;
        tracing::debug!("sim issuer: mode -> {}", mode.name());
        let old = self.mode_tx.send_replace(mode);
        if self.shutdown.is_cancelled() {
            return;
        }
        let was_down = old == Mode::Down;
        if going_down && !was_down {
            net.listener = None;
            net.generation.cancel();
            net.generation = self.generation_root.child_token();
            self.kill_connections();
        } else if was_down && !going_down && net.listener.is_none() {
            match self.rebind() {
                Ok(listener) => {
                    net.listener = Some(listener);
                    if let Some(waker) = net.accept_waker.take() {
                        waker.wake();
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        "sim issuer: cannot bind {} again ({err}); retrying",
                        self.addr
                    );
                    let weak = Arc::downgrade(self);
                    self.runtime.spawn(rebind_retry(weak));
                }
            }
        }
    }

    fn rebind(&self) -> io::Result<TcpListener> {
        let _entered = self.runtime.enter();
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        socket.listen(BACKLOG)
    }

    /// Drops the stream of every open connection and wakes its task so that
    /// hyper sees the end of it. Called with `net` locked.
    fn kill_connections(&self) {
        let conns: Vec<Arc<ConnShared>> = lock(&self.conns).conns.values().cloned().collect();
        for conn in conns {
            conn.kill();
        }
    }

    fn shutdown(&self) {
        let mut net = lock(&self.net);
        self.shutdown.cancel();
        net.listener = None;
        self.kill_connections();
        if let Some(waker) = net.accept_waker.take() {
            waker.wake();
        }
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(SimIo, SocketAddr)>> {
        let mut net = lock(&self.net);
        update_waker(&mut net.accept_waker, cx.waker());
        let Some(listener) = net.listener.as_ref() else {
            return Poll::Pending;
        };
        match listener.poll_accept(cx) {
            Poll::Ready(Ok((stream, addr))) => {
                // Registered while `net` is locked so that a concurrent switch
                // to `Down` cannot miss this connection.
                let shared = Arc::new(ConnShared {
                    state: Mutex::new(ConnState {
                        stream: Some(stream),
                        read_waker: None,
                        write_waker: None,
                    }),
                });
                let mut registry = lock(&self.conns);
                let id = registry.next_id;
                registry.next_id += 1;
                registry.conns.insert(id, shared.clone());
                drop(registry);
                let io = SimIo {
                    shared,
                    id,
                    registry: Arc::downgrade(&self.conns),
                };
                Poll::Ready(Ok((io, addr)))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn rebind_retry(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.shutdown.is_cancelled() {
            return;
        }
        let mut net = lock(&inner.net);
        if net.listener.is_some() || inner.mode() == Mode::Down {
            return;
        }
        match inner.rebind() {
            Ok(listener) => {
                net.listener = Some(listener);
                if let Some(waker) = net.accept_waker.take() {
                    waker.wake();
                }
                tracing::debug!("sim issuer: listening again on {}", inner.addr);
                return;
            }
            Err(err) => tracing::debug!("sim issuer: rebind failed again: {err}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Listener and connection wrapper
// ---------------------------------------------------------------------------

struct SimListener {
    inner: Arc<Inner>,
}

impl axum::serve::Listener for SimListener {
    type Io = SimIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SimIo, SocketAddr) {
        loop {
            match std::future::poll_fn(|cx| self.inner.poll_accept(cx)).await {
                Ok(accepted) => return accepted,
                Err(err) => {
                    tracing::debug!("sim issuer: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.addr)
    }
}

struct ConnShared {
    state: Mutex<ConnState>,
}

struct ConnState {
    stream: Option<TcpStream>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl ConnShared {
    /// Takes the raw stream away from the HTTP server: afterwards hyper reads
    /// end-of-stream and its writes are discarded.
    fn take(&self) -> Option<TcpStream> {
        let mut state = lock(&self.state);
        let stream = state.stream.take();
        let wakers = [state.read_waker.take(), state.write_waker.take()];
        drop(state);
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
        stream
    }

    fn kill(&self) {
        drop(self.take());
    }
}

/// Handed to handlers through `ConnectInfo`.
#[derive(Clone)]
struct ConnHandle(Arc<ConnShared>);

impl Connected<IncomingStream<'_, SimListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        ConnHandle(stream.io().shared.clone())
    }
}

struct SimIo {
    shared: Arc<ConnShared>,
    id: u64,
    registry: Weak<Mutex<ConnRegistry>>,
}

impl Drop for SimIo {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry).conns.remove(&self.id);
        }
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        match state.stream.as_mut() {
            Some(stream) => {
                update_waker(&mut state.read_waker, cx.waker());
                Pin::new(stream).poll_read(cx, buf)
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        match state.stream.as_mut() {
            Some(stream) => {
                update_waker(&mut state.write_waker, cx.waker());
                Pin::new(stream).poll_write(cx, buf)
            }
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        match state.stream.as_mut() {
            Some(stream) => {
                update_waker(&mut state.write_waker, cx.waker());
                Pin::new(stream).poll_flush(cx)
            }
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        match state.stream.as_mut() {
            Some(stream) => {
                update_waker(&mut state.write_waker, cx.waker());
                Pin::new(stream).poll_shutdown(cx)
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

struct TokenState {
    access_lifetime: Duration,
    codes: HashMap<String, CodeEntry>,
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    grants: HashMap<u64, GrantEntry>,
    next_grant: u64,
    issued: Vec<String>,
    ledger: Option<File>,
}

struct CodeEntry {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: Option<String>,
    expires_at: Instant,
    /// The grant created by redeeming this code.
    redeemed: Option<u64>,
}

struct AccessEntry {
    grant: u64,
    expires_at: Instant,
}

struct RefreshEntry {
    grant: u64,
    used: bool,
}

struct GrantEntry {
    client_id: String,
    scope: Option<String>,
    revoked: bool,
}

struct Issued {
    access_token: String,
    expires_in: u64,
    refresh_token: Option<String>,
    scope: Option<String>,
}

/// An OAuth error answer: status, `error`, `error_description`.
struct OAuthFailure(StatusCode, &'static str, String);

fn invalid_grant(description: &str) -> OAuthFailure {
    OAuthFailure(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        description.to_string(),
    )
}

fn invalid_request(description: &str) -> OAuthFailure {
    OAuthFailure(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        description.to_string(),
    )
}

impl TokenState {
    fn grant_revoked(&self, grant: u64) -> bool {
        self.grants.get(&grant).is_none_or(|g| g.revoked)
    }

    fn record(&mut self, token: &str) {
        self.issued.push(token.to_string());
        self.append_ledger(token);
    }

    /// Only the ledger (client secrets: the leak scan checks them too).
    fn append_ledger(&mut self, token: &str) {
        if let Some(file) = self.ledger.as_mut() {
            let written = file
                .write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.flush());
            if let Err(err) = written {
                tracing::warn!("sim issuer: cannot append to the token ledger: {err}");
            }
        }
    }

    fn issue_access(&mut self, grant: u64) -> (String, u64) {
        let token = secret_token("sim_at_");
        let lifetime = self.access_lifetime;
        self.access.insert(
            token.clone(),
            AccessEntry {
                grant,
                expires_at: Instant::now() + lifetime,
            },
        );
        self.record(&token);
        (token, expires_in_secs(lifetime))
    }

    fn issue_refresh(&mut self, grant: u64) -> String {
        let token = secret_token("sim_rt_");
        self.refresh
            .insert(token.clone(), RefreshEntry { grant, used: false });
        self.record(&token);
        token
    }

    fn purge_expired_codes(&mut self) {
        let now = Instant::now();
        self.codes
            .retain(|_, code| code.redeemed.is_some() || code.expires_at > now);
    }
}

fn expires_in_secs(lifetime: Duration) -> u64 {
    let secs = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    secs.max(1)
}

/// A token as real issuers send them: RFC 6750's `b64token` characters, including the
/// ones that change under URL and JSON encoding (`+`, `/`), so the leak scan of the
/// test logs (scripts/scan-secrets.sh) also finds encoded copies.
fn secret_token(prefix: &str) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
    let mut rng = rand::rng();
    let mut body: Vec<u8> = (0..TOKEN_RANDOM_CHARS)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())])
        .collect();
    body[TOKEN_RANDOM_CHARS / 3] = b'+';
    body[2 * TOKEN_RANDOM_CHARS / 3] = b'/';
    format!("{prefix}{}", String::from_utf8(body).expect("ASCII"))
}

fn random_token(prefix: &str) -> String {
    let mut token = String::with_capacity(prefix.len() + TOKEN_RANDOM_CHARS);
    token.push_str(prefix);
    token.extend(
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(TOKEN_RANDOM_CHARS)
            .map(char::from),
    );
    token
}

impl Inner {
    fn exchange_code(&self, client_id: &str, form: &Params) -> Result<Issued, OAuthFailure> {
        let code = form.required("code")?;
        let redirect_uri = form.required("redirect_uri")?;
        let verifier = form.required("code_verifier")?;

        let mut tokens = lock(&self.tokens);
        // So is the PKCE verifier the client proved it with (one of RFC 7636's length:
        // a test's deliberately malformed one is not a secret worth scanning for).
        if (43..=128).contains(&verifier.len()) {
            tokens.append_ledger(verifier);
        }
        let now = Instant::now();
        let Some(entry) = tokens.codes.get(code) else {
            return Err(invalid_grant("unknown authorization code"));
        };
        if let Some(grant) = entry.redeemed {
            // RFC 6749 4.1.2: deny, and revoke what the code produced.
            if let Some(g) = tokens.grants.get_mut(&grant) {
                g.revoked = true;
            }
            return Err(invalid_grant("authorization code already used"));
        }
        if entry.expires_at <= now {
            return Err(invalid_grant("authorization code expired"));
        }
        if entry.client_id != client_id {
            return Err(invalid_grant(
                "authorization code was issued to another client",
            ));
        }
        if entry.redirect_uri != redirect_uri {
            return Err(invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        if !is_valid_verifier(verifier) {
            return Err(invalid_grant("code_verifier is malformed"));
        }
        if pkce_s256_challenge(verifier) != entry.challenge {
            return Err(invalid_grant("PKCE verification failed"));
        }
        let scope = entry.scope.clone();

        let grant = tokens.next_grant;
        tokens.next_grant += 1;
        tokens.grants.insert(
            grant,
            GrantEntry {
                client_id: client_id.to_string(),
                scope: scope.clone(),
                revoked: false,
            },
        );
        if let Some(entry) = tokens.codes.get_mut(code) {
            entry.redeemed = Some(grant);
        }
        let (access_token, expires_in) = tokens.issue_access(grant);
        let offline = scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|x| x == "offline_access"));
        let refresh_token = match self.refresh_tokens {
            RefreshTokens::Always => true,
            RefreshTokens::Never => false,
            RefreshTokens::WithOfflineAccess => offline,
        }
        .then(|| tokens.issue_refresh(grant));
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token,
            scope,
        })
    }

    fn refresh(&self, client_id: &str, form: &Params) -> Result<Issued, OAuthFailure> {
        let presented = form.required("refresh_token")?;

        let mut tokens = lock(&self.tokens);
        let Some(entry) = tokens.refresh.get(presented) else {
            return Err(invalid_grant("unknown refresh token"));
        };
        let grant_id = entry.grant;
        let used = entry.used;
        let Some(grant) = tokens.grants.get(&grant_id) else {
            return Err(invalid_grant("unknown refresh token"));
        };
        if grant.revoked {
            return Err(invalid_grant("refresh token has been revoked"));
        }
        if grant.client_id != client_id {
            return Err(invalid_grant("refresh token was issued to another client"));
        }
        if used {
            if self.revoke_grant_on_reuse {
                if let Some(g) = tokens.grants.get_mut(&grant_id) {
                    g.revoked = true;
                }
            }
            return Err(invalid_grant("refresh token has already been used"));
        }
        let scope = grant.scope.clone();

        let (access_token, expires_in) = tokens.issue_access(grant_id);
        let refresh_token = if self.rotate {
            if self.strict {
                if let Some(old) = tokens.refresh.get_mut(presented) {
                    old.used = true;
                }
            }
            Some(tokens.issue_refresh(grant_id))
        } else {
            None
        };
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token,
            scope,
        })
    }

    /// Client authentication: HTTP Basic and/or `client_id` in the form.
    fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form: &Params,
    ) -> Result<String, ClientAuthFailure> {
        let fail =
            |description: &'static str, basic: bool| ClientAuthFailure { description, basic };
        let basic = match headers.get(header::AUTHORIZATION) {
            Some(value) => match parse_basic(value) {
                Some(credentials) => Some(credentials),
                None => return Err(fail("malformed Authorization header", true)),
            },
            None => None,
        };
        let form_id = form.get("client_id");
        let client_id = match (basic.as_ref().map(|(id, _)| id.as_str()), form_id) {
            (Some(b), Some(f)) if b != f => {
                return Err(fail("client_id differs from the Basic credentials", true))
            }
            (Some(b), _) => b.to_string(),
            (None, Some(f)) => f.to_string(),
            (None, None) => return Err(fail("client authentication missing", false)),
        };
        if client_id == self.client_id {
            return Ok(client_id);
        }
        let registered = lock(&self.registered);
        let Some(client) = registered.get(&client_id) else {
            return Err(fail("unknown client", basic.is_some()));
        };
        if client
            .secret_expires
            .is_some_and(|(at, _)| Instant::now() >= at)
        {
            return Err(fail("the client secret has expired", basic.is_some()));
        }
        // A confidential client must authenticate exactly as it was registered.
        let expected = client.secret.as_deref().map(str::as_bytes);
        match client.auth {
            RegistrationAuth::Public => {}
            RegistrationAuth::SecretPost => {
                if basic.is_some() {
                    return Err(fail("this client must use client_secret_post", true));
                }
                let sent = form.get("client_secret").map(str::as_bytes);
                if sent.is_none() || sent != expected {
                    return Err(fail("missing or wrong client_secret", false));
                }
            }
            RegistrationAuth::SecretBasic => {
                if form.get("client_secret").is_some() {
                    return Err(fail("this client must use client_secret_basic", false));
                }
                let sent = basic.as_ref().map(|(_, s)| s.as_bytes());
                if sent.is_none() || sent != expected {
                    return Err(fail("missing or wrong Basic credentials", true));
                }
            }
        }
        Ok(client_id)
    }
}

/// Why client authentication failed; `basic` when HTTP Basic was used.
struct ClientAuthFailure {
    description: &'static str,
    basic: bool,
}

impl ClientAuthFailure {
    fn into_response(self) -> Response {
        let mut response =
            oauth_error_response(StatusCode::UNAUTHORIZED, "invalid_client", self.description);
        if self.basic {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sim-issuer\""),
            );
        }
        response
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` -> decoded (id, secret).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_std_decode(credentials.trim())?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // RFC 6749 2.3.1: both are application/x-www-form-urlencoded.
    let unescape = |s: &str| {
        let wrapped = format!("v={s}");
        url::form_urlencoded::parse(wrapped.as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// RFC 8707 §2: an absolute URI without a fragment.
fn is_resource_indicator(raw: &str) -> bool {
    Url::parse(raw).is_ok_and(|u| u.fragment().is_none())
}

/// RFC 7636: 43..=128 characters of `[A-Za-z0-9-._~]`.
fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge is 43 characters of base64url without padding.
fn is_valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/// Form or query parameters; remembers names that appeared more than once.
struct Params {
    values: HashMap<String, String>,
    duplicates: Vec<String>,
}

impl Params {
    fn parse(input: &[u8]) -> Params {
        let mut values = HashMap::new();
        let mut duplicates = Vec::new();
        for (name, value) in url::form_urlencoded::parse(input) {
            let name = name.into_owned();
            match values.entry(name) {
                Entry::Occupied(entry) => duplicates.push(entry.key().clone()),
                Entry::Vacant(entry) => {
                    entry.insert(value.into_owned());
                }
            }
        }
        Params { values, duplicates }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, OAuthFailure> {
        self.get(name)
            .ok_or_else(|| invalid_request(&format!("missing parameter: {name}")))
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

async fn index_page(State(inner): State<Arc<Inner>>) -> Response {
    tracing::debug!("sim issuer: GET /");
    let base = format!("http://{}", inner.addr);
    let body = format!(
        "tokenwarden simulated OAuth 2 issuer\n\
         \n\
         authorization endpoint: {base}/authorize  (GET, code flow, PKCE S256 required)\n\
         token endpoint:         {base}/token      (POST, authorization_code and refresh_token)\n\
         metadata:               {base}/.well-known/oauth-authorization-server\n\
         registration endpoint:  {base}/register   (POST, RFC 7591)\n\
         client_id:              {client}\n\
         redirect URIs:          http://127.0.0.1:PORT/..., http://localhost:PORT/..., http://[::1]:PORT/...\n\
         token mode:             {mode}\n",
        client = inner.client_id,
        mode = inner.mode().name(),
    );
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

impl Inner {
    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn issuer(&self) -> String {
        format!("{}{}", self.base_url(), self.issuer_path)
    }

    fn record_resource(&self, request: ResourceRequest, resource: Option<&str>) {
        lock(&self.resources).push(ResourceSeen {
            request,
            resource: resource.map(str::to_string),
        });
    }

    /// The `iss` the `/authorize` redirects carry, and whether it is advertised.
    fn iss_parameter(&self) -> (Option<String>, bool) {
        match &*lock(&self.authorization_iss) {
            AuthorizationIss::Off => (None, false),
            AuthorizationIss::On => (Some(self.issuer()), true),
            AuthorizationIss::AdvertisedButOmitted => (None, true),
            AuthorizationIss::Forged { iss, advertised } => (Some(iss.clone()), *advertised),
        }
    }

    /// The RFC 8414 document.
    fn metadata_json(&self) -> serde_json::Value {
        let base = self.base_url();
        let mut v = serde_json::json!({
            "issuer": self.issuer(),
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "registration_endpoint": format!("{base}/register"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        });
        if self.iss_parameter().1 {
            v["authorization_response_iss_parameter_supported"] = serde_json::Value::Bool(true);
        }
        if let Some(scopes) = &self.scopes_supported {
            v["scopes_supported"] = serde_json::json!(scopes);
        }
        if *lock(&self.client_metadata) != ClientMetadataMode::Off {
            v["client_id_metadata_document_supported"] = serde_json::Value::Bool(true);
        }
        v
    }
}

/// `200 application/json`, chunked (no `Content-Length`), exactly `bytes` long
/// (at least the 14 bytes of `{"padding":""}`): a document a client must cap
/// while streaming. Never held in memory.
pub(crate) fn huge_json_response(bytes: usize) -> Response {
    let prefix: &'static [u8] = b"{\"padding\":\"";
    let suffix: &'static [u8] = b"\"}";
    let mut remaining = bytes.saturating_sub(prefix.len() + suffix.len());
    let mut chunks = vec![Bytes::from_static(prefix)];
    while remaining > 0 {
        let n = remaining.min(FILL.len());
        chunks.push(Bytes::from_static(&FILL[..n]));
        remaining -= n;
    }
    chunks.push(Bytes::from_static(suffix));
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, io::Error>));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn not_found() -> Response {
    html_page(StatusCode::NOT_FOUND, "Not found", "nothing here")
}

/// `GET` of any other path: the metadata when it is one of the issuer's well-known
/// locations, else `404`.
async fn metadata(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    let issuer_path = inner.issuer_path.trim_end_matches('/');
    const AS: &str = "/.well-known/oauth-authorization-server";
    const OIDC: &str = "/.well-known/openid-configuration";
    let location = if path == format!("{AS}{issuer_path}") {
        WellKnown::OAuth
    } else if path == format!("{OIDC}{issuer_path}") {
        WellKnown::OidcInserted
    } else if path == format!("{issuer_path}{OIDC}") {
        WellKnown::OidcAppended
    } else {
        return not_found().await;
    };
    lock(&inner.metadata_requests).push(path.to_string());
    serve_metadata(&inner, &headers, location, path)
}

fn serve_metadata(inner: &Inner, headers: &HeaderMap, location: WellKnown, path: &str) -> Response {
    let suffix = match location {
        WellKnown::OAuth => "oauth-authorization-server",
        WellKnown::OidcInserted | WellKnown::OidcAppended => "openid-configuration",
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // `RedirectToOtherHost` sends clients to `localhost`, which serves the good
    // document: a client that followed would not notice anything wrong.
    let mode = if host.starts_with("localhost") {
        MetadataMode::Good
    } else {
        lock(&inner.metadata_mode).clone()
    };
    tracing::debug!("sim issuer: GET /.well-known/{suffix} mode={mode:?}");
    let json = |v: serde_json::Value| (StatusCode::OK, Json(v)).into_response();
    match mode {
        MetadataMode::Good => json(inner.metadata_json()),
        MetadataMode::WrongIssuer => {
            let mut v = inner.metadata_json();
            v["issuer"] = serde_json::Value::String("https://impostor.example".into());
            json(v)
        }
        MetadataMode::NoS256 => {
            let mut v = inner.metadata_json();
            v["code_challenge_methods_supported"] = serde_json::json!(["plain"]);
            json(v)
        }
        MetadataMode::NotJson => html_page(
            StatusCode::OK,
            "Sign in",
            "Sign in to the corporate network to continue.",
        ),
        MetadataMode::Huge { bytes } => huge_json_response(bytes),
        MetadataMode::RedirectToOtherHost => {
            let to = format!("http://localhost:{}{path}", inner.addr.port());
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        MetadataMode::OidcOnly if suffix == "openid-configuration" => json(inner.metadata_json()),
        MetadataMode::OnlyAt(at) if at == location => json(inner.metadata_json()),
        MetadataMode::IssuerTrailingSlash => {
            let mut v = inner.metadata_json();
            v["issuer"] = serde_json::Value::String(format!("{}/", inner.issuer()));
            json(v)
        }
        MetadataMode::OidcOnly | MetadataMode::OnlyAt(_) | MetadataMode::Missing => {
            html_page(StatusCode::NOT_FOUND, "Not found", "no metadata here")
        }
    }
}

/// RFC 7591 §3.2.2 error.
fn registration_error(error: &str, description: &str) -> Response {
    no_store(
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": error, "error_description": description})),
        )
            .into_response(),
    )
}

async fn register(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let seq = inner.registration_count.fetch_add(1, Ordering::SeqCst);
    tracing::debug!("sim issuer: POST /register");
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return registration_error(
            "invalid_client_metadata",
            "the body must be application/json",
        );
    }
    let Ok(serde_json::Value::Object(req)) = serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return registration_error("invalid_client_metadata", "the body must be a JSON object");
    };
    lock(&inner.registration_requests).push(serde_json::Value::Object(req.clone()));
    let redirect_uris: Vec<String> = req
        .get("redirect_uris")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if redirect_uris.is_empty() || redirect_uris.iter().any(|u| loopback_redirect(u).is_none()) {
        return registration_error(
            "invalid_redirect_uri",
            "redirect_uris must be http loopback URIs (127.0.0.1, localhost or [::1])",
        );
    }
    let grant_types = req
        .get("grant_types")
        .cloned()
        .unwrap_or_else(|| serde_json::json!(["authorization_code"]));
    if !grant_types
        .as_array()
        .is_some_and(|a| a.iter().any(|g| g == "authorization_code"))
    {
        return registration_error(
            "invalid_client_metadata",
            "grant_types must include authorization_code",
        );
    }
    let auth = inner.registration_auth;
    let client_id = random_token("sim_client_");
    let secret = (auth != RegistrationAuth::Public).then(|| secret_token("sim_cs_"));
    if let Some(secret) = &secret {
        lock(&inner.tokens).append_ledger(secret);
    }
    let lifetime = *lock(&inner.client_secret_lifetime);
    let secret_expires = lifetime.filter(|_| secret.is_some()).map(expiry);
    let rat = lifetime.map(|_| secret_token("sim_rat_"));
    if let Some(rat) = &rat {
        lock(&inner.tokens).append_ledger(rat);
    }
    lock(&inner.registered).insert(
        client_id.clone(),
        RegisteredClient {
            seq,
            redirect_uris: redirect_uris.clone(),
            secret: secret.clone(),
            auth,
            secret_expires,
            registration_access_token: rat.clone(),
        },
    );
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut answer = serde_json::json!({
        "client_id": client_id,
        "client_id_issued_at": issued_at,
        "client_name": req.get("client_name").cloned().unwrap_or(serde_json::Value::Null),
        "redirect_uris": redirect_uris,
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": auth.method(),
    });
    if let Some(scope) = req.get("scope").and_then(|s| s.as_str()) {
        answer["scope"] = serde_json::Value::String(scope.to_string());
    }
    if let Some(secret) = secret {
        answer["client_secret"] = serde_json::Value::String(secret);
        answer["client_secret_expires_at"] =
            serde_json::json!(secret_expires.map_or(0, |(_, unix)| unix));
    }
    if let Some(rat) = rat {
        answer["registration_access_token"] = serde_json::Value::String(rat);
        answer["registration_client_uri"] =
            serde_json::Value::String(format!("{}/register/{client_id}", inner.base_url()));
    }
    no_store((StatusCode::CREATED, Json(answer)).into_response())
}

/// A secret issued now that lasts `lifetime`: when it stops working, and as Unix
/// seconds for `client_secret_expires_at`.
fn expiry(lifetime: Duration) -> (Instant, u64) {
    let unix = std::time::SystemTime::now() + lifetime;
    let secs = unix
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (Instant::now() + lifetime, secs.max(1))
}

/// RFC 7592 §2.2: `PUT /register/<client_id>` with the registration access token:
/// a new secret (and expiry) for a confidential client.
async fn update_client(
    State(inner): State<Arc<Inner>>,
    axum::extract::Path(client_id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    tracing::debug!("sim issuer: PUT /register/<client>");
    let failing = inner
        .failing_client_updates
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again later").into_response();
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let lifetime = *lock(&inner.client_secret_lifetime);
    let mut registered = lock(&inner.registered);
    let Some(client) = registered.get_mut(&client_id) else {
        return (StatusCode::UNAUTHORIZED, "unknown client").into_response();
    };
    if bearer.is_none() || bearer != client.registration_access_token {
        return (StatusCode::UNAUTHORIZED, "wrong registration access token").into_response();
    }
    if client.auth == RegistrationAuth::Public {
        return registration_error("invalid_client_metadata", "a public client has no secret");
    }
    let secret = secret_token("sim_cs_");
    client.secret = Some(secret.clone());
    client.secret_expires = lifetime.map(expiry);
    let answer = serde_json::json!({
        "client_id": client_id,
        "client_secret": secret,
        "client_secret_expires_at": client.secret_expires.map_or(0, |(_, unix)| unix),
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": client.auth.method(),
        "registration_client_uri": format!("{}/register/{client_id}", inner.base_url()),
    });
    drop(registered);
    lock(&inner.tokens).append_ledger(&secret);
    inner.client_updates.fetch_add(1, Ordering::SeqCst);
    no_store((StatusCode::OK, Json(answer)).into_response())
}

fn html_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{message}</p></body></html>\n"
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A loopback `http` redirect URI (127.0.0.1, localhost or [::1]), no
/// fragment, no credentials.
fn loopback_redirect(raw: &str) -> Option<Url> {
    let url = Url::parse(raw).ok()?;
    if url.scheme() != "http"
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    let loopback = match url.host()? {
        url::Host::Domain(domain) => domain == "localhost",
        url::Host::Ipv4(ip) => ip == Ipv4Addr::LOCALHOST,
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    loopback.then_some(url)
}

fn redirect_to(url: &Url) -> Response {
    match HeaderValue::from_str(url.as_str()) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => html_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Server error",
            "cannot build the redirect",
        ),
    }
}

async fn authorize(State(inner): State<Arc<Inner>>, RawQuery(query): RawQuery) -> Response {
    tracing::debug!("sim issuer: GET /authorize");
    let params = Params::parse(query.unwrap_or_default().as_bytes());
    let dup = |name: &str| params.duplicates.iter().any(|d| d == name);

    inner.record_resource(ResourceRequest::Authorize, params.get("resource"));

    // Errors about the client or the redirect URI are shown, never redirected.
    let client_id = match params.get("client_id") {
        Some(id) if !dup("client_id") => id.to_string(),
        _ => {
            return html_page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "unknown or missing client_id",
            )
        }
    };
    if client_id.starts_with("http://") || client_id.starts_with("https://") {
        let mode = *lock(&inner.client_metadata);
        if mode != ClientMetadataMode::Off {
            if let Err(r) = client_metadata(
                &inner,
                &client_id,
                params.get("redirect_uri"),
                params.get("state"),
                mode,
            )
            .await
            {
                return r;
            }
        }
    }
    // A registered client's redirect URIs, compared exactly; the configured
    // client may use any loopback redirect URI.
    let registered_uris = lock(&inner.registered)
        .get(&client_id)
        .map(|c| c.redirect_uris.clone());
    if client_id != inner.client_id && registered_uris.is_none() {
        return html_page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "unknown or missing client_id",
        );
    }
    let redirect_raw = match params.get("redirect_uri") {
        Some(raw) if !dup("redirect_uri") => raw,
        _ => {
            return html_page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "missing redirect_uri",
            )
        }
    };
    if let Some(uris) = &registered_uris {
        if !uris.iter().any(|u| u == redirect_raw) {
            return html_page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "redirect_uri is not one this client registered",
            );
        }
    }
    let Some(redirect) = loopback_redirect(redirect_raw) else {
        return html_page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "redirect_uri must be an http loopback URI (127.0.0.1, localhost or [::1])",
        );
    };
    let state = params.get("state");
    let (iss, _) = inner.iss_parameter();
    let redirect_error = |error: &str, description: &str| {
        let mut url = redirect.clone();
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("error", error);
            pairs.append_pair("error_description", description);
            if let Some(state) = state {
                pairs.append_pair("state", state);
            }
            if let Some(iss) = &iss {
                pairs.append_pair("iss", iss);
            }
        }
        redirect_to(&url)
    };

    if let Some(name) = params.duplicates.first() {
        return redirect_error("invalid_request", &format!("duplicate parameter: {name}"));
    }
    match params.get("response_type") {
        Some("code") => {}
        None => return redirect_error("invalid_request", "missing response_type"),
        Some(_) => {
            return redirect_error(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
    }
    if params.get("code_challenge_method") != Some("S256") {
        return redirect_error("invalid_request", "code_challenge_method must be S256");
    }
    if params
        .get("resource")
        .is_some_and(|r| !is_resource_indicator(r))
    {
        return redirect_error(
            "invalid_target",
            "resource must be an absolute URI without a fragment",
        );
    }
    let challenge = match params.get("code_challenge") {
        Some(c) if is_valid_challenge(c) => c.to_string(),
        _ => return redirect_error("invalid_request", "missing or malformed code_challenge"),
    };

    if let Some(asked) = params.get("scope") {
        let refused = lock(&inner.refused_scopes).clone();
        if asked.split(' ').any(|s| refused.iter().any(|r| r == s)) {
            return redirect_error(
                "access_denied",
                "the user did not grant the requested scopes",
            );
        }
    }

    let code = random_token("sim_code_");
    {
        let mut tokens = lock(&inner.tokens);
        tokens.purge_expired_codes();
        // An authorization code is a secret of its own (the leak scan checks for it).
        tokens.append_ledger(&code);
        tokens.codes.insert(
            code.clone(),
            CodeEntry {
                client_id,
                redirect_uri: redirect_raw.to_string(),
                challenge,
                scope: params.get("scope").map(str::to_string),
                expires_at: Instant::now() + CODE_LIFETIME,
                redeemed: None,
            },
        );
    }
    let mut url = redirect;
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("code", &code);
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
        if let Some(iss) = &iss {
            pairs.append_pair("iss", iss);
        }
    }
    redirect_to(&url)
}

/// Fetch and check the Client ID Metadata Document at `client_id`; a good one makes
/// it a known public client with the document's redirect URIs. `Err`: the answer
/// (an error page, or `error=invalid_client` to a redirect URI the document lists).
async fn client_metadata(
    inner: &Inner,
    client_id: &str,
    redirect_uri: Option<&str>,
    state: Option<&str>,
    mode: ClientMetadataMode,
) -> Result<(), Response> {
    inner.client_metadata_fetches.fetch_add(1, Ordering::SeqCst);
    let page = |why: &str| {
        html_page(
            StatusCode::BAD_REQUEST,
            "Invalid client",
            &format!("the client metadata document was not accepted: {why}"),
        )
    };
    let fetched = async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        let r = http.get(client_id).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        let bytes = r.bytes().await.ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()
    }
    .await;
    let Some(doc) = fetched.filter(|d| d.is_object()) else {
        return Err(page("it could not be fetched as a JSON object"));
    };
    let uris: Vec<String> = doc["redirect_uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let listed = redirect_uri.filter(|r| uris.iter().any(|u| u == r));
    if doc["client_id"].as_str() != Some(client_id) {
        return Err(page("its client_id is not the URL it was fetched from"));
    }
    if !doc["client_name"].is_string() {
        return Err(page("it has no client_name"));
    }
    let Some(listed) = listed else {
        return Err(page("it does not list the redirect_uri of the request"));
    };
    if mode == ClientMetadataMode::RejectByPolicy {
        let mut url = Url::parse(listed).map_err(|_| page("bad redirect_uri"))?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("error", "invalid_client").append_pair(
                "error_description",
                "this server does not accept clients from that domain",
            );
            if let Some(state) = state {
                pairs.append_pair("state", state);
            }
            if let Some(iss) = inner.iss_parameter().0 {
                pairs.append_pair("iss", &iss);
            }
        }
        return Err(redirect_to(&url));
    }
    let seq = inner.registration_count.load(Ordering::SeqCst);
    lock(&inner.registered).insert(
        client_id.to_string(),
        RegisteredClient {
            seq,
            redirect_uris: uris,
            secret: None,
            auth: RegistrationAuth::Public,
            secret_expires: None,
            registration_access_token: None,
        },
    );
    Ok(())
}

/// Counts a refresh request in flight for as long as it lives.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn new(inner: &'a Inner) -> Self {
        let now = inner.in_flight_refreshes.fetch_add(1, Ordering::SeqCst) + 1;
        inner
            .max_in_flight_refreshes
            .fetch_max(now, Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight_refreshes.fetch_sub(1, Ordering::SeqCst);
    }
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_error_response(status: StatusCode, error: &str, description: &str) -> Response {
    no_store(
        (
            status,
            Json(serde_json::json!({
                "error": error,
                "error_description": description,
            })),
        )
            .into_response(),
    )
}

async fn token(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body);
    let grant_type = form.get("grant_type").unwrap_or("").to_string();
    let logged_grant = match grant_type.as_str() {
        known @ ("authorization_code" | "refresh_token" | "") => known,
        _ => "other",
    };
    tracing::debug!(
        "sim issuer: POST /token grant_type={logged_grant:?} mode={}",
        inner.mode().name()
    );

    match grant_type.as_str() {
        "authorization_code" => {
            inner.record_resource(ResourceRequest::CodeExchange, form.get("resource"))
        }
        "refresh_token" => inner.record_resource(ResourceRequest::Refresh, form.get("resource")),
        _ => {}
    }

    let _in_flight = if grant_type == "refresh_token" {
        inner.refresh_count.send_modify(|count| *count += 1);
        Some(InFlight::new(&inner))
    } else {
        if grant_type == "authorization_code" {
            inner.code_count.send_modify(|count| *count += 1);
        }
        None
    };
    if grant_type == "refresh_token" && !inner.refresh_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(inner.refresh_delay) => {}
            _ = inner.shutdown.cancelled() => return cut_connection(&conn),
        }
    }
    if grant_type == "refresh_token" {
        let mut hold = inner.hold.subscribe();
        tokio::select! {
            _ = hold.wait_for(|held| !*held) => {}
            _ = inner.shutdown.cancelled() => return cut_connection(&conn),
        }
    }

    let mode = inner.mode();
    if let Mode::EchoSent { status, error } = &mode {
        let sent = form
            .get("refresh_token")
            .or_else(|| form.get("code"))
            .unwrap_or("");
        return oauth_error_response(
            status_code(*status),
            &error.replace("{sent}", sent),
            &format!("the refresh token {sent} is not accepted here"),
        );
    }
    if mode != Mode::Healthy {
        return answer_in_mode(&inner, mode, &conn).await;
    }
    if inner.shutdown.is_cancelled() {
        return cut_connection(&conn);
    }

    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_encoded {
        return oauth_error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    if let Some(name) = form.duplicates.first() {
        return oauth_error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("duplicate parameter: {name}"),
        );
    }
    let client_id = match inner.authenticate_client(&headers, &form) {
        Ok(id) => id,
        Err(failure) => return failure.into_response(),
    };
    if form
        .get("resource")
        .is_some_and(|r| !is_resource_indicator(r))
    {
        return oauth_error_response(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource must be an absolute URI without a fragment",
        );
    }
    let outcome = match grant_type.as_str() {
        "authorization_code" => inner.exchange_code(&client_id, &form),
        "refresh_token" => inner.refresh(&client_id, &form),
        "" => Err(invalid_request("missing parameter: grant_type")),
        _ => Err(OAuthFailure(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code and refresh_token are supported".to_string(),
        )),
    };
    match outcome {
        Ok(issued) => {
            let mut json = serde_json::json!({
                "access_token": issued.access_token,
                "token_type": "Bearer",
            });
            if inner.send_expires_in {
                json["expires_in"] = issued.expires_in.into();
            }
            if let Some(refresh_token) = issued.refresh_token {
                json["refresh_token"] = serde_json::Value::String(refresh_token);
            }
            if let Some(scope) = issued.scope {
                json["scope"] = serde_json::Value::String(scope);
            }
            no_store((StatusCode::OK, Json(json)).into_response())
        }
        Err(OAuthFailure(status, error, description)) => {
            tracing::debug!("sim issuer: /token answered {status} {error}");
            oauth_error_response(status, error, &description)
        }
    }
}

/// Closes the connection without an answer (the response hyper then writes
/// goes nowhere).
fn cut_connection(conn: &ConnHandle) -> Response {
    conn.0.kill();
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

const WAF_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Access denied</title></head>\n\
<body><h1>Access denied</h1>\n\
<p>You don't have permission to access this resource. The request was blocked by the \
web application firewall.</p>\n\
<p>Reference #18.5c3e1b2.1700000000.sim</p></body></html>\n";

const LOGIN_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Network login</title></head>\n\
<body><h1>Sign in to continue</h1>\n\
<p>Your session on this network has expired. Sign in to the VPN / Wi-Fi portal to continue.</p>\n\
<form method=\"post\" action=\"/portal/login\">\
<label>User <input name=\"user\"></label> <label>Password <input type=\"password\" name=\"password\"></label> \
<button type=\"submit\">Sign in</button></form></body></html>\n";

/// The status to send for a configured `u16`; invalid or informational
/// (1xx, which cannot be a final answer) values become 500.
fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn answer_in_mode(inner: &Arc<Inner>, mode: Mode, conn: &ConnHandle) -> Response {
    match mode {
        Mode::Healthy => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Waf403 => (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            WAF_PAGE,
        )
            .into_response(),
        Mode::LoginPage200 => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            LOGIN_PAGE,
        )
            .into_response(),
        Mode::Down => cut_connection(conn),
        Mode::Status {
            status,
            content_type,
            body,
        } => {
            let mut response = (status_code(status), body).into_response();
            match HeaderValue::from_str(&content_type) {
                Ok(value) => {
                    response.headers_mut().insert(header::CONTENT_TYPE, value);
                }
                Err(_) => {
                    response.headers_mut().remove(header::CONTENT_TYPE);
                }
            }
            response
        }
        Mode::OAuthError { status, error } => oauth_error_response(
            status_code(status),
            &error,
            "simulated error from the sim issuer",
        ),
        Mode::RateLimited { retry_after } => {
            let mut response = oauth_error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many requests, retry later",
            );
            match HeaderValue::from_str(&retry_after) {
                Ok(value) => {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                Err(_) => tracing::warn!("sim issuer: Retry-After value is not a valid header"),
            }
            response
        }
        Mode::Hang => {
            let mut mode_rx = inner.mode_tx.subscribe();
            let generation = inner.generation();
            tokio::select! {
                _ = mode_rx.wait_for(|m| *m != Mode::Hang) => {}
                _ = generation.cancelled() => {}
            }
            cut_connection(conn)
        }
        Mode::Huge { bytes } => raw_answer(inner, conn, RawScript::Huge { bytes }),
        Mode::Trickle { bytes_per_second } => {
            raw_answer(inner, conn, RawScript::Trickle { bytes_per_second })
        }
        Mode::ResetMidBody => raw_answer(inner, conn, RawScript::ResetMidBody),
        // Answered in `token`, which has the form; this is only the shape without it.
        Mode::EchoSent { status, error } => oauth_error_response(
            status_code(status),
            &error.replace("{sent}", ""),
            "the refresh token is not accepted here",
        ),
        Mode::Raw {
            status,
            headers,
            body,
        } => {
            let mut response = (status_code(status), body).into_response();
            // Exactly the headers given: no default `application/octet-stream`.
            response.headers_mut().remove(header::CONTENT_TYPE);
            for (name, value) in headers {
                match (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    (Ok(name), Ok(value)) => {
                        response.headers_mut().append(name, value);
                    }
                    _ => tracing::warn!("sim issuer: skipped a header that is not valid HTTP"),
                }
            }
            response
        }
    }
}

// ---------------------------------------------------------------------------
// Byte-level answers
// ---------------------------------------------------------------------------

enum RawScript {
    Huge { bytes: usize },
    Trickle { bytes_per_second: u32 },
    ResetMidBody,
}

fn raw_answer(inner: &Arc<Inner>, conn: &ConnHandle, script: RawScript) -> Response {
    let generation = inner.generation();
    let lifetime = expires_in_secs(lock(&inner.tokens).access_lifetime);
    let sent = inner.raw_bytes_sent.clone();
    if let Some(stream) = conn.0.take() {
        tokio::spawn(async move {
            tokio::select! {
                result = run_script(stream, script, lifetime, &sent) => {
                    if let Err(err) = result {
                        tracing::debug!("sim issuer: raw answer ended: {err}");
                    }
                }
                _ = generation.cancelled() => {}
            }
        });
    }
    // Discarded: the connection no longer belongs to the HTTP server.
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// A token response whose tokens were never issued.
fn fake_token_body(lifetime: u64) -> String {
    serde_json::json!({
        "access_token": secret_token("sim_at_"),
        "token_type": "Bearer",
        "expires_in": lifetime,
    })
    .to_string()
}

fn raw_head(extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: application/json\r\n\
         Cache-Control: no-store\r\n\
         Connection: close\r\n\
         {extra}\r\n"
    )
}

static FILL: [u8; 64 * 1024] = [b' '; 64 * 1024];

async fn run_script(
    mut stream: TcpStream,
    script: RawScript,
    lifetime: u64,
    sent: &AtomicU64,
) -> io::Result<()> {
    match script {
        RawScript::Huge { bytes } => {
            stream
                .write_all(raw_head("Transfer-Encoding: chunked\r\n").as_bytes())
                .await?;
            // `{"padding":"` + spaces + `"}` (just spaces when too short).
            let (prefix, suffix): (&[u8], &[u8]) = if bytes >= 16 {
                (b"{\"padding\":\"", b"\"}")
            } else {
                (b"", b"")
            };
            write_chunk(&mut stream, prefix).await?;
            sent.fetch_add(prefix.len() as u64, Ordering::SeqCst);
            let mut remaining = bytes - prefix.len() - suffix.len();
            while remaining > 0 {
                let n = remaining.min(FILL.len());
                write_chunk(&mut stream, &FILL[..n]).await?;
                sent.fetch_add(n as u64, Ordering::SeqCst);
                remaining -= n;
            }
            write_chunk(&mut stream, suffix).await?;
            sent.fetch_add(suffix.len() as u64, Ordering::SeqCst);
            stream.write_all(b"0\r\n\r\n").await?;
            stream.flush().await?;
            stream.shutdown().await
        }
        RawScript::Trickle { bytes_per_second } => {
            let body = fake_token_body(lifetime);
            stream
                .write_all(raw_head(&format!("Content-Length: {}\r\n", body.len())).as_bytes())
                .await?;
            stream.flush().await?;
            if bytes_per_second == 0 {
                std::future::pending::<()>().await;
            }
            let step = (bytes_per_second / 10).max(1) as usize;
            let pause = Duration::from_secs_f64(step as f64 / f64::from(bytes_per_second));
            for piece in body.as_bytes().chunks(step) {
                tokio::time::sleep(pause).await;
                stream.write_all(piece).await?;
                stream.flush().await?;
                sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
            stream.shutdown().await
        }
        RawScript::ResetMidBody => {
            let body = fake_token_body(lifetime);
            let half = body.len() / 2;
            stream
                .write_all(raw_head(&format!("Content-Length: {}\r\n", body.len())).as_bytes())
                .await?;
            stream.write_all(&body.as_bytes()[..half]).await?;
            stream.flush().await?;
            // Let the client read the head before the reset reaches it.
            tokio::time::sleep(Duration::from_millis(150)).await;
            // SO_LINGER 0: closing sends RST instead of FIN (does not block).
            #[allow(deprecated)]
            stream.set_linger(Some(Duration::ZERO))?;
            drop(stream);
            Ok(())
        }
    }
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    stream
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await
}

// ---------------------------------------------------------------------------
// PKCE and Basic-auth encodings
// ---------------------------------------------------------------------------

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

fn base64url_nopad(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Standard-alphabet base64, padding optional.
fn base64_std_decode(input: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(input.trim_end_matches('='))
        .ok()
}
