//! From a protected resource's URL to everything a login needs: OAuth discovery
//! (RFC 9728 protected resource metadata, RFC 8414 authorization server metadata with
//! the OpenID Connect discovery fallback) and dynamic client registration (RFC 7591).
//!
//! The walk, as the MCP authorization spec describes it:
//! 1. probe the URL without a token (an MCP `initialize` POST; GET if that gets `405`)
//!    and read `WWW-Authenticate: Bearer resource_metadata="…", scope="…"`;
//! 2. fetch the protected resource metadata: the `resource_metadata` URL when given,
//!    else `/.well-known/oauth-protected-resource/<path>`, then the root one; its
//!    `resource` must identify the URL (origin + path, or the origin);
//! 3. fetch the metadata of `authorization_servers[0]`, in the MCP authorization
//!    spec's order: RFC 8414 `/.well-known/oauth-authorization-server<path>`, then
//!    OpenID discovery with the path inserted (`/.well-known/openid-configuration
//!    <path>`), then appended (`<path>/.well-known/openid-configuration`; for an
//!    issuer without a path the last two are one URL); its `issuer` must be the
//!    identifier the locations were made from, string for string (RFC 8414 §3.3);
//!    it must have an authorization and a token endpoint and support PKCE `S256`.
//!
//! Invariants:
//! * every URL met (the resource, metadata URLs, endpoints) is `https://`, or
//!   `http://` to a loopback host, unless `allow_http` ([`check_endpoint`]);
//! * redirects: at most [`MAX_REDIRECTS`], all within the origin of the request;
//!   a redirect to another origin is refused, never followed;
//! * documents are JSON (by `Content-Type`), read under `policy.max_response_bytes`
//!   (streamed and abandoned past it) and the policy's timeouts;
//! * nothing here is written anywhere: discovery only reads, registration only
//!   returns what the server made. A registered client secret is a [`Secret`] and
//!   never appears in a log line, a `Debug` output or an error message.
//!
//! A `4xx` at a metadata location means "not here": the next candidate is tried.
//! Anything else that is wrong (a `5xx`, a non-JSON or oversized document, a foreign
//! redirect, a document that contradicts the URL) stops discovery with a
//! [`DiscoveryError`] naming the URL and the problem.

use crate::classify::sanitize;
use crate::config::{check_endpoint, ClientAuth};
use crate::policy::Policy;
use crate::secret::Secret;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use serde_json::Value;
use std::path::PathBuf;
use url::Url;

/// Same-origin redirects followed per request.
pub const MAX_REDIRECTS: usize = 3;
/// The MCP protocol version named in the probe's `initialize`.
pub const MCP_PROTOCOL_VERSION: &str = "2025-06-18";

const PRM_SUFFIX: &str = "oauth-protected-resource";
const AS_SUFFIX: &str = "oauth-authorization-server";
const OIDC_SUFFIX: &str = "openid-configuration";

/// How to discover.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryOptions {
    /// Timeouts (`http_timeout`, `connect_timeout`) and the document size cap
    /// (`max_response_bytes`).
    pub policy: Policy,
    /// Allow plain `http://` to a non-loopback host (the workload's `allow_http`).
    pub allow_http: bool,
    /// An extra trust root (the workload's `ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Host names answered with these addresses instead of DNS (as `curl --resolve`
    /// does): tests reach a loopback server under a public name with it.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
}

/// What discovery found: everything `add` writes for a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The protected resource (the URL discovery started from).
    pub resource: Url,
    /// The protected resource metadata's `resource` value, sent as the RFC 8707
    /// `resource` parameter.
    pub resource_indicator: Option<String>,
    /// The authorization server (`authorization_servers[0]`) as a parsed URL, to
    /// build its well-known locations. Shown and stored is `issuer_identifier`.
    pub issuer: Url,
    /// The metadata's `issuer` exactly as published, identical to
    /// `authorization_servers[0]` (what an RFC 9207 `iss` in an authorization
    /// response is compared with, as a string).
    pub issuer_identifier: String,
    /// `authorization_response_iss_parameter_supported` (RFC 9207): the server
    /// always sends `iss` in its authorization responses.
    pub iss_parameter_supported: bool,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    /// Present when the authorization server supports dynamic client registration.
    pub registration_endpoint: Option<Url>,
    /// `client_id_metadata_document_supported`: the server takes an HTTPS URL of a
    /// Client ID Metadata Document as `client_id` (no registration needed).
    pub client_id_metadata_document_supported: bool,
    /// The challenge's `scope`, else the resource's `scopes_supported`, else empty.
    pub scopes: Vec<String>,
    /// The authorization server metadata's `scopes_supported` (empty when absent):
    /// `add` asks for `offline_access` when it is listed.
    pub server_scopes: Vec<String>,
}

/// A client registered by [`register`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub client_id: String,
    /// Only when the server made a confidential client despite the request for a
    /// public one; goes to the secret store, never to the config file.
    pub client_secret: Option<Secret>,
    /// How the token endpoint wants the client to authenticate.
    pub auth: ClientAuth,
    /// `client_secret_expires_at` (Unix seconds; 0 or absent: never).
    pub client_secret_expires_at: Option<u64>,
    /// RFC 7592: the client configuration endpoint and its access token.
    pub registration_client_uri: Option<String>,
    pub registration_access_token: Option<Secret>,
}

/// Why discovery or registration failed. Every message names the URL at fault and
/// says what is wrong in plain words; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{message} (`tokenwarden add --allow-http` sets that; found in {found_in})")]
    UnsafeUrl { found_in: String, message: String },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("no answer from {url} within {}", humantime::format_duration(*.timeout))]
    Timeout {
        url: String,
        timeout: std::time::Duration,
    },
    #[error("{what} at {url} answered HTTP {status}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
    },
    #[error("{url} redirected to another origin ({location}); discovery follows redirects only within the same origin, so it stopped there")]
    CrossOriginRedirect { url: String, location: String },
    #[error("{url} redirected more than {MAX_REDIRECTS} times; discovery stopped there")]
    TooManyRedirects { url: String },
    #[error("the document at {url} is larger than {limit} bytes; refusing it")]
    TooLarge { url: String, limit: usize },
    #[error("{url} answered with {content_type}, not JSON; expected OAuth metadata there")]
    NotJson { url: String, content_type: String },
    #[error("the document at {url} is not usable metadata: {reason}")]
    InvalidMetadata { url: String, reason: String },
    #[error("{url} publishes no OAuth protected resource metadata (RFC 9728); tried {}{}. Is it an OAuth-protected MCP server? Otherwise give --token-endpoint and --authorization-endpoint", list(.tried), .probe.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    NoResourceMetadata {
        url: String,
        tried: Vec<String>,
        probe: Option<String>,
    },
    #[error("wrong resource: the protected resource metadata at {metadata_url} is for `{resource}`, not for {expected}; refusing it (RFC 9728 §3.3)")]
    ResourceMismatch {
        metadata_url: String,
        resource: String,
        expected: String,
    },
    #[error("the protected resource metadata at {metadata_url} names no authorization server (`authorization_servers` is missing or empty)")]
    NoAuthorizationServer { metadata_url: String },
    /// `tried`: each URL with what it answered, in the order tried.
    #[error("the authorization server {issuer} publishes no metadata (RFC 8414 or OpenID discovery); tried {}", list(.tried))]
    NoServerMetadata { issuer: String, tried: Vec<String> },
    #[error("issuer mismatch: the metadata at {metadata_url} says its issuer is `{found}`, but it was fetched for `{expected}`; the two must be identical, character for character; refusing it (RFC 8414 §3.3)")]
    IssuerMismatch {
        metadata_url: String,
        expected: String,
        found: String,
    },
    #[error("the authorization server metadata at {metadata_url} has no `{field}`")]
    MissingEndpoint {
        metadata_url: String,
        field: &'static str,
    },
    #[error("the authorization server {issuer} does not support PKCE with S256 (code_challenge_methods_supported: {methods}, at {metadata_url}); Tokenwarden requires PKCE S256 and will not sign in without it")]
    PkceS256Required {
        issuer: String,
        metadata_url: String,
        methods: String,
    },
    #[error("the authorization server {issuer} offers no dynamic client registration (no `registration_endpoint`){}: register a client there yourself and pass --client-id ID{}", if *.client_metadata_supported { " and Tokenwarden has no Client ID Metadata Document to give it" } else { "" }, if *.client_metadata_supported { ", or host the document `tokenwarden client-metadata --url URL` prints at that URL and pass --client-metadata-url URL (it takes them)" } else { "" })]
    NoRegistrationEndpoint {
        issuer: String,
        client_metadata_supported: bool,
    },
    #[error("the Client ID Metadata Document at {url} {reason}; host the one `tokenwarden client-metadata --url {url}` prints there")]
    BadClientMetadata { url: String, reason: String },
    #[error("the authorization server refused to register a client at {endpoint}: HTTP {status}{}{}", .error.as_ref().map(|e| format!(" {e}")).unwrap_or_default(), .description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    RegistrationRefused {
        endpoint: String,
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    #[error("the client registration answer from {endpoint} is not usable: {reason}")]
    BadRegistration { endpoint: String, reason: String },
    #[error("{found_in} names {url} as its {field}, a loopback address, but the resource {resource} is not on this machine; refusing it (metadata of a remote server must not point Tokenwarden at local services)")]
    LoopbackEndpoint {
        found_in: String,
        field: String,
        url: String,
        resource: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

fn list(urls: &[String]) -> String {
    urls.join(", ")
}

// ---------------------------------------------------------------------------
// WWW-Authenticate
// ---------------------------------------------------------------------------

/// One challenge of a `WWW-Authenticate` header (RFC 9110 §11.6.1).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Challenge {
    /// As sent; compare case-insensitively.
    pub scheme: String,
    pub token68: Option<String>,
    /// Names lower-cased, values unquoted; in order, duplicates kept.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first value of `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token68_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }
    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        (self.pos > start).then(|| std::str::from_utf8(&self.s[start..self.pos]).unwrap_or(""))
    }
    /// A quoted-string with quoted-pairs; `None` when unterminated.
    fn quoted(&mut self) -> Option<String> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    self.pos += 1;
                    out.push(self.peek()?);
                    self.pos += 1;
                }
                c => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
    /// At `pos`: `token68` followed by optional whitespace and then `,` or the end?
    /// Returns its length.
    fn token68_len(&self) -> Option<usize> {
        let mut i = self.pos;
        while self.s.get(i).copied().is_some_and(is_token68_char) {
            i += 1;
        }
        if i == self.pos {
            return None;
        }
        while self.s.get(i) == Some(&b'=') {
            i += 1;
        }
        let len = i - self.pos;
        while matches!(self.s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        matches!(self.s.get(i), None | Some(b',')).then_some(len)
    }
    /// At `pos` (after optional whitespace): `token BWS "=" BWS ( token /
    /// quoted-string )`, i.e. an auth-param? (`dXNlcg==` is a token68: no value
    /// follows its first `=`.)
    fn at_param(&self) -> bool {
        let mut i = self.pos;
        while matches!(self.s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        let start = i;
        while self.s.get(i).copied().is_some_and(is_tchar) {
            i += 1;
        }
        if i == start {
            return false;
        }
        while matches!(self.s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        if self.s.get(i) != Some(&b'=') {
            return false;
        }
        i += 1;
        while matches!(self.s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        self.s.get(i).is_some_and(|&c| c == b'"' || is_tchar(c))
    }
}

/// Parse `WWW-Authenticate` field values (several fields are one comma list) into
/// challenges: `scheme [ token68 | #auth-param ]`, quoted strings with escapes,
/// several challenges per field. Parsing stops at the first malformed part; the
/// challenges complete before it are returned.
pub fn parse_www_authenticate<S: AsRef<str>>(values: &[S]) -> Vec<Challenge> {
    let joined = values
        .iter()
        .map(|v| v.as_ref())
        .collect::<Vec<_>>()
        .join(", ");
    let mut c = Cursor {
        s: joined.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    'challenges: loop {
        // Empty list elements are allowed.
        loop {
            c.skip_ws();
            if c.peek() == Some(b',') {
                c.pos += 1;
            } else {
                break;
            }
        }
        if c.peek().is_none() {
            break;
        }
        let Some(scheme) = c.token() else { break };
        let mut ch = Challenge {
            scheme: scheme.to_string(),
            ..Default::default()
        };
        match c.peek() {
            None => {
                out.push(ch);
                break;
            }
            Some(b',') => {
                out.push(ch);
                continue;
            }
            Some(b' ' | b'\t') => c.skip_ws(),
            Some(_) => break,
        }
        if c.peek().is_none() || c.peek() == Some(b',') {
            out.push(ch);
            continue;
        }
        if !c.at_param() {
            if let Some(len) = c.token68_len() {
                let v = &joined[c.pos..c.pos + len];
                ch.token68 = Some(v.to_string());
                c.pos += len;
                out.push(ch);
                continue;
            }
            break;
        }
        // auth-param list; a list element that is not `name=` starts a new challenge.
        loop {
            c.skip_ws();
            let Some(name) = c.token() else {
                break 'challenges;
            };
            c.skip_ws();
            if c.peek() != Some(b'=') {
                break 'challenges;
            }
            c.pos += 1;
            c.skip_ws();
            let value = match c.peek() {
                Some(b'"') => match c.quoted() {
                    Some(v) => v,
                    None => break 'challenges,
                },
                _ => match c.token() {
                    Some(v) => v.to_string(),
                    None => break 'challenges,
                },
            };
            ch.params.push((name.to_ascii_lowercase(), value));
            c.skip_ws();
            match c.peek() {
                None => {
                    out.push(ch);
                    break 'challenges;
                }
                Some(b',') => {
                    while matches!(c.peek(), Some(b',' | b' ' | b'\t')) {
                        c.pos += 1;
                    }
                    if c.peek().is_none() {
                        out.push(ch);
                        break 'challenges;
                    }
                    if !c.at_param() {
                        out.push(ch);
                        continue 'challenges;
                    }
                }
                Some(_) => break 'challenges,
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Well-known locations
// ---------------------------------------------------------------------------

/// RFC 8414 §3.1 / RFC 9728 §3.1: `/.well-known/<suffix>` inserted between the host
/// and the path, with a terminating `/` of the path removed; the query is kept, the
/// fragment dropped. `https://h/mcp` -> `https://h/.well-known/<suffix>/mcp`;
/// `https://h/` -> `https://h/.well-known/<suffix>`.
pub fn well_known_url(base: &Url, suffix: &str) -> Url {
    let mut u = base.clone();
    u.set_fragment(None);
    let path = base.path().trim_end_matches('/');
    u.set_path(&format!("/.well-known/{suffix}{path}"));
    u
}

/// `/.well-known/<suffix>` at the root of `base`'s origin.
pub fn root_well_known_url(base: &Url, suffix: &str) -> Url {
    let mut u = base.clone();
    u.set_fragment(None);
    u.set_query(None);
    u.set_path(&format!("/.well-known/{suffix}"));
    u
}

/// OpenID Connect Discovery 1.0 §4: `<issuer>/.well-known/openid-configuration`
/// appended to the issuer's path.
pub fn appended_well_known_url(base: &Url, suffix: &str) -> Url {
    let mut u = base.clone();
    u.set_fragment(None);
    u.set_query(None);
    let path = base.path().trim_end_matches('/');
    u.set_path(&format!("{path}/.well-known/{suffix}"));
    u
}

fn dedup(urls: Vec<Url>) -> Vec<Url> {
    let mut out: Vec<Url> = Vec::new();
    for u in urls {
        if !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

/// Where to look for a resource's metadata, in order (after the challenge's
/// `resource_metadata`): path-specific, then root.
pub fn resource_metadata_urls(resource: &Url) -> Vec<Url> {
    dedup(vec![
        well_known_url(resource, PRM_SUFFIX),
        root_well_known_url(resource, PRM_SUFFIX),
    ])
}

/// Where to look for an authorization server's metadata, in order: RFC 8414, OpenID
/// discovery with the path inserted (RFC 8414 §5), OpenID discovery appended.
pub fn server_metadata_urls(issuer: &Url) -> Vec<Url> {
    dedup(vec![
        well_known_url(issuer, AS_SUFFIX),
        well_known_url(issuer, OIDC_SUFFIX),
        appended_well_known_url(issuer, OIDC_SUFFIX),
    ])
}

/// Origin + path without a terminating `/` (scheme and host are lower-cased and the
/// default port dropped by URL parsing).
fn resource_key(u: &Url) -> String {
    format!(
        "{}{}",
        u.origin().ascii_serialization(),
        u.path().trim_end_matches('/')
    )
}

/// RFC 9728 §3.3 / §7.3: the metadata's `resource` must identify the URL: its origin
/// and path, or its origin alone (compared after normalisation; query and fragment
/// are not part of the comparison).
pub fn resource_matches(resource: &str, url: &Url) -> bool {
    let Ok(r) = Url::parse(resource) else {
        return false;
    };
    if r.fragment().is_some() {
        return false;
    }
    let key = resource_key(&r);
    key == resource_key(url) || key == url.origin().ascii_serialization()
}

// ---------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------

/// The HTTP client for discovery and registration: the policy's timeouts, `ca_file`,
/// and at most [`MAX_REDIRECTS`] redirects, all within the origin of the request
/// (anything else stops, and [`DiscoveryError::CrossOriginRedirect`] or
/// [`DiscoveryError::TooManyRedirects`] says so).
pub fn discovery_client(opts: &DiscoveryOptions) -> Result<reqwest::Client, DiscoveryError> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    let mut b = crate::oauth::client_builder(&opts.policy, opts.ca_file.as_deref())
        .map_err(DiscoveryError::Client)?
        .redirect(redirects);
    for (host, addr) in &opts.resolve {
        b = b.resolve(host, *addr);
    }
    b.build().map_err(|e| DiscoveryError::Client(e.to_string()))
}

fn safe_url(
    found_in: &str,
    what: &str,
    raw: &str,
    allow_http: bool,
) -> Result<Url, DiscoveryError> {
    check_endpoint(what, raw, allow_http).map_err(|message| DiscoveryError::UnsafeUrl {
        found_in: found_in.to_string(),
        message,
    })
}

/// Whether `url` names this machine: a loopback or unspecified IP address
/// (127.0.0.0/8, `::1`, their IPv4-mapped forms, `0.0.0.0`, `::`), `localhost` or a
/// name under `.localhost` (RFC 6761: resolvers answer those with loopback).
pub fn names_this_machine(url: &Url) -> bool {
    use std::net::IpAddr;
    let ip_local = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip_local(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => ip_local(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

/// The loopback rule: metadata of a resource that is not on this machine must not
/// name an endpoint that is (`url`, the `field` found in `found_in`). A remote
/// server could otherwise point the client's requests, and a registered client's
/// redirect, at local services. A loopback resource may name loopback endpoints.
pub fn check_not_loopback(
    resource: &Url,
    found_in: &str,
    field: &str,
    url: &Url,
) -> Result<(), DiscoveryError> {
    if names_this_machine(url) && !names_this_machine(resource) {
        return Err(DiscoveryError::LoopbackEndpoint {
            found_in: found_in.to_string(),
            field: field.to_string(),
            url: url.to_string(),
            resource: resource.to_string(),
        });
    }
    Ok(())
}

/// [`safe_url`] and the loopback rule ([`check_not_loopback`]) for a URL that the
/// metadata of `resource` names.
fn named_url(
    resource: &Url,
    found_in: &str,
    what: &str,
    raw: &str,
    allow_http: bool,
) -> Result<Url, DiscoveryError> {
    let url = safe_url(found_in, what, raw, allow_http)?;
    check_not_loopback(resource, found_in, what, &url)?;
    Ok(url)
}

/// The innermost cause of a transport error, in the operating system's words.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    sanitize(&cur.to_string(), 200)
}

pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    url: &Url,
    policy: &Policy,
) -> Result<reqwest::Response, DiscoveryError> {
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            DiscoveryError::Timeout {
                url: url.to_string(),
                timeout: policy.http_timeout,
            }
        } else {
            DiscoveryError::Unreachable {
                url: url.to_string(),
                reason: root_cause(&e),
            }
        }
    })?;
    if resp.status().is_redirection() {
        if let Some(location) = resp.headers().get(LOCATION) {
            // The redirect policy stopped here: another origin, or too many.
            let raw = location.to_str().unwrap_or("?");
            let from = resp.url().clone();
            let foreign = from
                .join(raw)
                .map(|to| to.origin() != from.origin())
                .unwrap_or(true);
            return Err(if foreign {
                DiscoveryError::CrossOriginRedirect {
                    url: from.to_string(),
                    location: sanitize(raw, 200),
                }
            } else {
                DiscoveryError::TooManyRedirects {
                    url: from.to_string(),
                }
            });
        }
    }
    Ok(resp)
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(v) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body of `resp` as a JSON object: JSON by `Content-Type`, at most
/// `max_response_bytes` (streamed, abandoned past the cap).
pub(crate) async fn read_json(
    resp: reqwest::Response,
    policy: &Policy,
) -> Result<serde_json::Map<String, Value>, DiscoveryError> {
    let url = resp.url().to_string();
    let content_type = resp.headers().get(CONTENT_TYPE);
    if !is_json(content_type) {
        let content_type = content_type
            .map(|v| format!("`{}`", sanitize(v.to_str().unwrap_or("?"), 100)))
            .unwrap_or_else(|| "no Content-Type".into());
        return Err(DiscoveryError::NotJson { url, content_type });
    }
    let limit = policy.max_response_bytes;
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(DiscoveryError::TooLarge { url, limit });
    }
    let mut resp = resp;
    let mut body = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            if e.is_timeout() {
                DiscoveryError::Timeout {
                    url: url.to_string(),
                    timeout: policy.http_timeout,
                }
            } else {
                DiscoveryError::Unreachable {
                    url: url.to_string(),
                    reason: format!("the answer broke off: {}", root_cause(&e)),
                }
            }
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > limit {
            return Err(DiscoveryError::TooLarge { url, limit });
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DiscoveryError::InvalidMetadata {
            url,
            reason: "it is JSON but not an object".into(),
        }),
        Err(e) => Err(DiscoveryError::InvalidMetadata {
            url,
            reason: format!("invalid JSON ({e})"),
        }),
    }
}

/// GET a metadata document. `Ok(Err(status))` for a `4xx` (not published here).
async fn fetch_metadata(
    http: &reqwest::Client,
    url: &Url,
    what: &'static str,
    policy: &Policy,
) -> Result<Result<serde_json::Map<String, Value>, u16>, DiscoveryError> {
    tracing::debug!(%url, what, "discovery: fetching");
    let req = http.get(url.clone()).header(ACCEPT, "application/json");
    let resp = send(req, url, policy).await?;
    let status = resp.status();
    if status.is_client_error() {
        tracing::debug!(%url, status = status.as_u16(), "discovery: not here");
        return Ok(Err(status.as_u16()));
    }
    if !status.is_success() {
        return Err(DiscoveryError::Status {
            what,
            url: resp.url().to_string(),
            status: status.as_u16(),
        });
    }
    read_json(resp, policy).await.map(Ok)
}

/// What the unauthenticated probe learnt.
#[derive(Debug, Default)]
struct Probe {
    status: u16,
    resource_metadata: Option<String>,
    scope: Option<String>,
}

async fn probe(
    http: &reqwest::Client,
    url: &Url,
    policy: &Policy,
) -> Result<Probe, DiscoveryError> {
    let initialize = serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": MCP_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "tokenwarden", "version": env!("CARGO_PKG_VERSION")},
        },
    });
    let accept = "application/json, text/event-stream";
    let post = http
        .post(url.clone())
        .header(ACCEPT, accept)
        .header(CONTENT_TYPE, "application/json")
        .body(initialize.to_string());
    let mut resp = send(post, url, policy).await?;
    if resp.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED {
        tracing::debug!(%url, "discovery: POST not allowed; probing with GET");
        resp = send(http.get(url.clone()).header(ACCEPT, accept), url, policy).await?;
    }
    let status = resp.status().as_u16();
    let values: Vec<&str> = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let challenges = parse_www_authenticate(&values);
    let bearer = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"));
    let probe = Probe {
        status,
        resource_metadata: bearer
            .and_then(|b| b.param("resource_metadata"))
            .map(str::to_string),
        scope: bearer.and_then(|b| b.param("scope")).map(str::to_string),
    };
    tracing::debug!(%url, status, challenge = bearer.is_some(), resource_metadata = probe.resource_metadata.is_some(), "discovery: probe answered");
    // The body (possibly an endless event stream) is not read.
    Ok(probe)
}

fn string_list(
    map: &serde_json::Map<String, Value>,
    key: &str,
    url: &Url,
) -> Result<Option<Vec<String>>, DiscoveryError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| DiscoveryError::InvalidMetadata {
                url: url.to_string(),
                reason: format!("`{key}` must be an array of strings"),
            }),
        Some(_) => Err(DiscoveryError::InvalidMetadata {
            url: url.to_string(),
            reason: format!("`{key}` must be an array of strings"),
        }),
    }
}

fn string_field<'a>(
    map: &'a serde_json::Map<String, Value>,
    key: &str,
    url: &Url,
) -> Result<Option<&'a str>, DiscoveryError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(DiscoveryError::InvalidMetadata {
            url: url.to_string(),
            reason: format!("`{key}` must be a string"),
        }),
    }
}

/// The protected resource metadata, validated against `url`.
struct ResourceMetadata {
    resource: String,
    authorization_server: Url,
    /// `authorization_servers[0]` as written: the issuer identifier.
    authorization_server_id: String,
    scopes_supported: Vec<String>,
}

fn check_resource_metadata(
    map: &serde_json::Map<String, Value>,
    metadata_url: &Url,
    url: &Url,
    allow_http: bool,
) -> Result<ResourceMetadata, DiscoveryError> {
    let resource = string_field(map, "resource", metadata_url)?.ok_or_else(|| {
        DiscoveryError::InvalidMetadata {
            url: metadata_url.to_string(),
            reason: "it has no `resource` (RFC 9728 §2 requires it)".into(),
        }
    })?;
    if !resource_matches(resource, url) {
        return Err(DiscoveryError::ResourceMismatch {
            metadata_url: metadata_url.to_string(),
            resource: sanitize(resource, 200),
            expected: url.to_string(),
        });
    }
    let servers = string_list(map, "authorization_servers", metadata_url)?.unwrap_or_default();
    let Some(first) = servers.first() else {
        return Err(DiscoveryError::NoAuthorizationServer {
            metadata_url: metadata_url.to_string(),
        });
    };
    let authorization_server = named_url(
        url,
        metadata_url.as_str(),
        "authorization_servers[0]",
        first,
        allow_http,
    )?;
    if authorization_server.query().is_some() || authorization_server.fragment().is_some() {
        return Err(DiscoveryError::InvalidMetadata {
            url: metadata_url.to_string(),
            reason: format!(
                "authorization server `{}` has a query or fragment, which an issuer identifier cannot have (RFC 8414 §2)",
                sanitize(first, 200)
            ),
        });
    }
    Ok(ResourceMetadata {
        resource: resource.to_string(),
        authorization_server,
        authorization_server_id: first.clone(),
        scopes_supported: string_list(map, "scopes_supported", metadata_url)?.unwrap_or_default(),
    })
}

/// The endpoints of an authorization server's metadata, validated.
struct ServerMetadata {
    issuer_identifier: String,
    iss_parameter_supported: bool,
    authorization_endpoint: Url,
    token_endpoint: Url,
    registration_endpoint: Option<Url>,
    client_id_metadata_document_supported: bool,
    scopes_supported: Vec<String>,
}

/// `issuer` is the identifier the metadata locations were made from, as written in
/// the protected resource metadata.
fn check_server_metadata(
    map: &serde_json::Map<String, Value>,
    metadata_url: &Url,
    issuer: &str,
    resource: &Url,
    allow_http: bool,
) -> Result<ServerMetadata, DiscoveryError> {
    // RFC 8414 §3.3 (and OpenID Connect Discovery §4.3): identical to the identifier
    // the location was made from, compared as strings: a trailing `/`, a default
    // port or upper-case letters make another issuer.
    let found = map.get("issuer").and_then(Value::as_str);
    if found != Some(issuer) {
        return Err(DiscoveryError::IssuerMismatch {
            metadata_url: metadata_url.to_string(),
            expected: sanitize(issuer, 200),
            found: found
                .map(|f| sanitize(f, 200))
                .unwrap_or_else(|| "(none)".into()),
        });
    }
    let issuer_identifier = issuer.to_string();
    let endpoint = |field: &'static str| -> Result<Option<Url>, DiscoveryError> {
        string_field(map, field, metadata_url)?
            .map(|raw| named_url(resource, metadata_url.as_str(), field, raw, allow_http))
            .transpose()
    };
    let authorization_endpoint =
        endpoint("authorization_endpoint")?.ok_or_else(|| DiscoveryError::MissingEndpoint {
            metadata_url: metadata_url.to_string(),
            field: "authorization_endpoint",
        })?;
    let token_endpoint =
        endpoint("token_endpoint")?.ok_or_else(|| DiscoveryError::MissingEndpoint {
            metadata_url: metadata_url.to_string(),
            field: "token_endpoint",
        })?;
    let registration_endpoint = endpoint("registration_endpoint")?;
    let methods = string_list(map, "code_challenge_methods_supported", metadata_url)?;
    if !methods
        .as_ref()
        .is_some_and(|m| m.iter().any(|x| x == "S256"))
    {
        return Err(DiscoveryError::PkceS256Required {
            issuer: sanitize(issuer, 200),
            metadata_url: metadata_url.to_string(),
            methods: match methods {
                None => "absent".into(),
                Some(m) if m.is_empty() => "empty".into(),
                Some(m) => sanitize(&m.join(", "), 200),
            },
        });
    }
    // RFC 9207 §3: a boolean; anything else (absent, a string) is "no".
    let iss_parameter_supported = map
        .get("authorization_response_iss_parameter_supported")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ServerMetadata {
        issuer_identifier,
        iss_parameter_supported,
        authorization_endpoint,
        token_endpoint,
        registration_endpoint,
        client_id_metadata_document_supported: map
            .get("client_id_metadata_document_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        scopes_supported: string_list(map, "scopes_supported", metadata_url)?.unwrap_or_default(),
    })
}

/// Discover the OAuth configuration of the protected resource at `url`. See the
/// module documentation for the steps and what is refused.
pub async fn discover(url: &Url, opts: &DiscoveryOptions) -> Result<Discovered, DiscoveryError> {
    let url = safe_url("the URL given", "url", url.as_str(), opts.allow_http)?;
    let policy = &opts.policy;
    let http = discovery_client(opts)?;

    // 1. Probe.
    let probe = probe(&http, &url, policy).await?;

    // 2. Protected resource metadata.
    let mut candidates = Vec::new();
    if let Some(raw) = &probe.resource_metadata {
        let found_in = format!("the WWW-Authenticate header of {url}");
        candidates.push(named_url(
            &url,
            &found_in,
            "resource_metadata",
            raw,
            opts.allow_http,
        )?);
    }
    candidates.extend(resource_metadata_urls(&url));
    let candidates = dedup(candidates);
    let mut prm = None;
    for candidate in &candidates {
        if let Ok(map) =
            fetch_metadata(&http, candidate, "the protected resource metadata", policy).await?
        {
            prm = Some((candidate.clone(), map));
            break;
        }
    }
    let Some((prm_url, prm)) = prm else {
        return Err(DiscoveryError::NoResourceMetadata {
            url: url.to_string(),
            tried: candidates.iter().map(Url::to_string).collect(),
            probe: (probe.resource_metadata.is_none()).then(|| {
                format!(
                    "the URL answered HTTP {} without a Bearer resource_metadata challenge",
                    probe.status
                )
            }),
        });
    };
    let rm = check_resource_metadata(&prm, &prm_url, &url, opts.allow_http)?;
    tracing::debug!(metadata = %prm_url, issuer = %rm.authorization_server, "discovery: protected resource metadata accepted");

    // 3. Authorization server metadata.
    let issuer = rm.authorization_server;
    let issuer_id = rm.authorization_server_id;
    let mut tried = Vec::new();
    let mut found = None;
    for candidate in server_metadata_urls(&issuer) {
        match fetch_metadata(
            &http,
            &candidate,
            "the authorization server metadata",
            policy,
        )
        .await?
        {
            Ok(map) => {
                found = Some((candidate, map));
                break;
            }
            Err(status) => tried.push(format!("{candidate} (HTTP {status})")),
        }
    }
    let Some((as_url, as_meta)) = found else {
        return Err(DiscoveryError::NoServerMetadata {
            issuer: sanitize(&issuer_id, 200),
            tried,
        });
    };
    let sm = check_server_metadata(&as_meta, &as_url, &issuer_id, &url, opts.allow_http)?;
    tracing::debug!(metadata = %as_url, "discovery: authorization server metadata accepted");

    let scopes = match probe.scope.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => s.split_whitespace().map(str::to_string).collect(),
        _ => rm.scopes_supported,
    };
    Ok(Discovered {
        resource: url,
        resource_indicator: Some(rm.resource),
        issuer,
        issuer_identifier: sm.issuer_identifier,
        iss_parameter_supported: sm.iss_parameter_supported,
        authorization_endpoint: sm.authorization_endpoint,
        token_endpoint: sm.token_endpoint,
        registration_endpoint: sm.registration_endpoint,
        client_id_metadata_document_supported: sm.client_id_metadata_document_supported,
        scopes,
        server_scopes: sm.scopes_supported,
    })
}

// ---------------------------------------------------------------------------
// Dynamic client registration
// ---------------------------------------------------------------------------

/// Register a public client (RFC 7591) for the authorization code grant with
/// `redirect_uri`. A server that makes a confidential client anyway is accepted when
/// it says how the secret is to be sent (`client_secret_post` or
/// `client_secret_basic`, the RFC 7591 default when it says nothing).
pub async fn register(
    http: &reqwest::Client,
    endpoint: &Url,
    redirect_uri: &Url,
    scopes: &[String],
    policy: &Policy,
) -> Result<Registration, DiscoveryError> {
    let mut body = serde_json::json!({
        "client_name": "Tokenwarden",
        // A desktop app with a loopback redirect (MCP authorization: a client MUST
        // say which; OpenID Connect servers assume "web" without it).
        "application_type": "native",
        "redirect_uris": [redirect_uri.as_str()],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    if !scopes.is_empty() {
        body["scope"] = Value::String(scopes.join(" "));
    }
    let req = http
        .post(endpoint.clone())
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    registration_answer(req, endpoint, policy).await
}

/// RFC 7592 §2.2: update `w`'s registered client at its configuration endpoint `uri`
/// with its `registration_access_token`, sending its metadata again; the answer
/// (a new client secret and expiry, where the server renews them) is read as a
/// registration's. The client id stays.
pub async fn update_registration(
    http: &reqwest::Client,
    uri: &Url,
    access_token: &Secret,
    w: &crate::config::WorkloadConfig,
    redirect_uri: &Url,
    policy: &Policy,
) -> Result<Registration, DiscoveryError> {
    let (scopes, auth) = (&w.scopes, w.client_auth);
    let mut body = serde_json::json!({
        "client_id": w.client_id,
        "client_name": "Tokenwarden",
        "application_type": "native",
        "redirect_uris": [redirect_uri.as_str()],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": auth.as_str(),
    });
    if !scopes.is_empty() {
        body["scope"] = Value::String(scopes.join(" "));
    }
    let mut bearer =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", access_token.expose()))
            .map_err(|_| DiscoveryError::BadRegistration {
                endpoint: uri.to_string(),
                reason: "its registration_access_token cannot be sent in a header".into(),
            })?;
    bearer.set_sensitive(true);
    let req = http
        .put(uri.clone())
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, "application/json")
        .header(reqwest::header::AUTHORIZATION, bearer)
        .body(body.to_string());
    registration_answer(req, uri, policy).await
}

/// Send a registration request (RFC 7591 / 7592) and read its answer.
async fn registration_answer(
    req: reqwest::RequestBuilder,
    endpoint: &Url,
    policy: &Policy,
) -> Result<Registration, DiscoveryError> {
    let resp = send(req, endpoint, policy).await?;
    let status = resp.status().as_u16();
    if !matches!(status, 200 | 201) {
        // RFC 7591 §3.2.2: `error` and `error_description` in a JSON body.
        let (error, description) = match read_json(resp, policy).await {
            Ok(map) => (
                map.get("error")
                    .and_then(Value::as_str)
                    .map(|e| sanitize(e, 64)),
                map.get("error_description")
                    .and_then(Value::as_str)
                    .map(|d| sanitize(d, 200)),
            ),
            Err(_) => (None, None),
        };
        return Err(DiscoveryError::RegistrationRefused {
            endpoint: endpoint.to_string(),
            status,
            error,
            description,
        });
    }
    let bad = |reason: &str| DiscoveryError::BadRegistration {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let map = read_json(resp, policy).await?;
    let client_secret_expires_at = map
        .get("client_secret_expires_at")
        .and_then(Value::as_u64)
        .filter(|e| *e != 0);
    let registration_client_uri = map
        .get("registration_client_uri")
        .and_then(Value::as_str)
        .map(|u| sanitize(u, 2000));
    let registration_access_token = map
        .get("registration_access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    let client_id = match map.get("client_id").and_then(Value::as_str) {
        Some(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => return Err(bad("it has no `client_id`")),
    };
    let client_secret = map
        .get("client_secret")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    let method = map
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str);
    let auth = match (&client_secret, method) {
        (None, None | Some("none")) => ClientAuth::None,
        (None, Some(m)) => {
            return Err(bad(&format!(
                "it asks for `{}` client authentication but gave no client secret",
                sanitize(m, 64)
            )))
        }
        (Some(_), None | Some("client_secret_basic")) => ClientAuth::ClientSecretBasic,
        (Some(_), Some("client_secret_post")) => ClientAuth::ClientSecretPost,
        (Some(_), Some("none")) => {
            tracing::warn!(%endpoint, "registration returned a client secret for a public client; ignoring the secret");
            return Ok(Registration {
                client_id,
                client_secret: None,
                auth: ClientAuth::None,
                client_secret_expires_at: None,
                registration_client_uri,
                registration_access_token,
            });
        }
        (Some(_), Some(m)) => {
            return Err(bad(&format!(
                "it registered a client with `{}` authentication, which Tokenwarden does not support (only none, client_secret_post, client_secret_basic)",
                sanitize(m, 64)
            )))
        }
    };
    if let Some(exp) = map.get("client_secret_expires_at").and_then(Value::as_u64) {
        if exp != 0 && client_secret.is_some() {
            tracing::warn!(%endpoint, expires_at = exp, "the registered client secret expires; the workload will need a new registration then");
        }
    }
    tracing::info!(%endpoint, client_auth = auth.as_str(), "client registered");
    Ok(Registration {
        client_id,
        client_secret,
        auth,
        client_secret_expires_at,
        registration_client_uri,
        registration_access_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwarden_sim::issuer::{IssuerOptions, MetadataMode, RegistrationAuth, SimIssuer};
    use tokenwarden_sim::remote::{PrmMode, RemoteOptions, SimRemote};

    fn one(header: &str) -> Vec<Challenge> {
        parse_www_authenticate(&[header])
    }

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            token68: None,
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn www_authenticate_mcp_challenge() {
        let c = one(
            r#"Bearer resource_metadata="https://r.example/.well-known/oauth-protected-resource/mcp", scope="files:read files:write""#,
        );
        assert_eq!(
            c,
            vec![ch(
                "Bearer",
                &[
                    (
                        "resource_metadata",
                        "https://r.example/.well-known/oauth-protected-resource/mcp"
                    ),
                    ("scope", "files:read files:write"),
                ]
            )]
        );
        assert_eq!(c[0].param("SCOPE"), Some("files:read files:write"));
    }

    #[test]
    fn www_authenticate_several_challenges_quoted_commas_and_escapes() {
        let c = one(
            r#"Basic realm="a, b", Bearer error="invalid_token", error_description="say \"hi\", then go", resource_metadata="https://r/m""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0], ch("Basic", &[("realm", "a, b")]));
        assert_eq!(c[1].scheme, "Bearer");
        assert_eq!(c[1].param("error"), Some("invalid_token"));
        assert_eq!(
            c[1].param("error_description"),
            Some(r#"say "hi", then go"#)
        );
        assert_eq!(c[1].param("resource_metadata"), Some("https://r/m"));
    }

    #[test]
    fn www_authenticate_token68_bare_schemes_tokens_and_whitespace() {
        let c =
            one("Negotiate abc+/==, Bearer realm=x ,  , NTLM,bearer   Resource_Metadata = \"u\"");
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(c[0].scheme, "Negotiate");
        assert_eq!(c[0].token68.as_deref(), Some("abc+/=="));
        assert!(c[0].params.is_empty());
        assert_eq!(c[1], ch("Bearer", &[("realm", "x")]));
        assert_eq!(c[2], ch("NTLM", &[]));
        // Scheme and parameter names are case-insensitive; BWS around `=`.
        assert_eq!(c[3], ch("bearer", &[("resource_metadata", "u")]));
    }

    #[test]
    fn www_authenticate_several_fields_and_broken_input() {
        let c = parse_www_authenticate(&["Basic realm=\"x\"", "Bearer scope=\"a\""]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].param("scope"), Some("a"));
        // An unterminated quote: the complete challenges before it are kept.
        let c = one("Basic realm=\"x\", Bearer realm=\"never closed");
        assert_eq!(c, vec![ch("Basic", &[("realm", "x")])]);
        for junk in ["", "   ", ",,,", "=", "\"", "Bearer =x", "Bearer a=\"\\"] {
            let _ = one(junk); // no panic
        }
        assert_eq!(one("Bearer"), vec![ch("Bearer", &[])]);
        assert_eq!(one("Bearer a=\"\""), vec![ch("Bearer", &[("a", "")])]);
    }

    #[test]
    fn www_authenticate_token68_with_padding_is_not_a_parameter() {
        // Base64 whose characters are all token characters, then `=` padding: not
        // `name=value`, since no value follows the `=`.
        let c = one("Basic dXNlcg==, Bearer resource_metadata=\"https://r/m\"");
        let mut basic = ch("Basic", &[]);
        basic.token68 = Some("dXNlcg==".into());
        assert_eq!(
            c,
            vec![basic, ch("Bearer", &[("resource_metadata", "https://r/m")])]
        );
        let c = one("Negotiate abc= , Bearer realm=x");
        assert_eq!(c[0].token68.as_deref(), Some("abc="));
        assert_eq!(c[1], ch("Bearer", &[("realm", "x")]));
        // A parameter with BWS before its value is still one.
        assert_eq!(
            one("Bearer realm= \"x\""),
            vec![ch("Bearer", &[("realm", "x")])]
        );
        // A list element `abc==` after parameters ends the challenge before it (kept).
        assert_eq!(
            one("Bearer realm=x, abc=="),
            vec![ch("Bearer", &[("realm", "x")])]
        );
    }

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn well_known_urls_insert_the_suffix_between_host_and_path() {
        let cases = [
            (
                "https://r.example/mcp",
                "https://r.example/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "https://r.example/",
                "https://r.example/.well-known/oauth-protected-resource",
            ),
            (
                "https://r.example",
                "https://r.example/.well-known/oauth-protected-resource",
            ),
            (
                "https://r.example/a/b/",
                "https://r.example/.well-known/oauth-protected-resource/a/b",
            ),
            (
                "https://r.example:8443/t1/mcp?x=1#frag",
                "https://r.example:8443/.well-known/oauth-protected-resource/t1/mcp?x=1",
            ),
        ];
        for (base, want) in cases {
            assert_eq!(
                well_known_url(&u(base), PRM_SUFFIX).as_str(),
                want,
                "{base}"
            );
        }
        assert_eq!(
            resource_metadata_urls(&u("https://r.example/mcp?x=1")),
            vec![
                u("https://r.example/.well-known/oauth-protected-resource/mcp?x=1"),
                u("https://r.example/.well-known/oauth-protected-resource"),
            ]
        );
        // No path: one candidate, not two equal ones.
        assert_eq!(resource_metadata_urls(&u("https://r.example")).len(), 1);
    }

    #[test]
    fn server_metadata_urls_rfc8414_then_oidc_inserted_then_appended() {
        assert_eq!(
            server_metadata_urls(&u("https://as.example/tenant1/")),
            vec![
                u("https://as.example/.well-known/oauth-authorization-server/tenant1"),
                u("https://as.example/.well-known/openid-configuration/tenant1"),
                u("https://as.example/tenant1/.well-known/openid-configuration"),
            ]
        );
        assert_eq!(
            server_metadata_urls(&u("https://as.example")),
            vec![
                u("https://as.example/.well-known/oauth-authorization-server"),
                u("https://as.example/.well-known/openid-configuration"),
            ]
        );
    }

    #[test]
    fn resource_must_be_the_url_or_its_origin() {
        let url = u("https://R.example:443/mcp/?q=1");
        for ok in [
            "https://r.example/mcp",
            "https://r.example/mcp/",
            "https://r.example:443/mcp",
            "https://r.example",
            "https://r.example/",
            "HTTPS://R.EXAMPLE/mcp",
        ] {
            assert!(resource_matches(ok, &url), "{ok}");
        }
        for bad in [
            "https://r.example/other",
            "https://r.example/mcp/sub",
            "https://r.example/mc",
            "http://r.example/mcp",
            "https://r.example:8443/mcp",
            "https://evil.example/mcp",
            "https://r.example/mcp#x",
            "mcp",
            "",
        ] {
            assert!(!resource_matches(bad, &url), "{bad}");
        }
    }

    #[test]
    fn loopback_endpoints_are_refused_for_a_remote_resource_only() {
        for local in [
            "http://127.0.0.1:8080/token",
            "http://127.1.2.3/token",
            "https://[::1]/token",
            "http://[::ffff:127.0.0.1]/token",
            "http://0.0.0.0:9/token",
            "http://[::]/token",
            "http://localhost/token",
            "https://LOCALHOST.:8443/token",
            "http://api.localhost/token",
            "http://2130706433/token", // 127.0.0.1 as one number
            "http://0x7f.1/token",
        ] {
            assert!(names_this_machine(&u(local)), "{local}");
            let e = check_not_loopback(
                &u("https://remote.example/mcp"),
                "the metadata at https://remote.example/m",
                "token_endpoint",
                &u(local),
            )
            .unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, DiscoveryError::LoopbackEndpoint { .. })
                    && msg.contains("token_endpoint")
                    && msg.contains("https://remote.example/mcp")
                    && msg.contains("loopback"),
                "{msg}"
            );
            // A resource on this machine may name local endpoints.
            for resource in ["http://127.0.0.1:3000/mcp", "http://localhost:3000/mcp"] {
                check_not_loopback(&u(resource), "m", "token_endpoint", &u(local)).unwrap();
            }
        }
        for remote in [
            "https://as.example/token",
            "https://localhost.example/token",
            "https://mylocalhost/token",
            "http://10.0.0.1/token",
            "https://[2001:db8::1]/token",
            "http://128.0.0.1/token",
        ] {
            assert!(!names_this_machine(&u(remote)), "{remote}");
            check_not_loopback(&u("https://remote.example/mcp"), "m", "f", &u(remote)).unwrap();
        }
    }

    // ---- against the loopback simulators -------------------------------------

    fn opts() -> DiscoveryOptions {
        let policy = Policy {
            http_timeout: std::time::Duration::from_secs(5),
            connect_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        };
        DiscoveryOptions {
            policy,
            ..Default::default()
        }
    }

    async fn sims(
        issuer_opts: IssuerOptions,
        remote_opts: RemoteOptions,
    ) -> (SimIssuer, SimRemote) {
        let issuer = SimIssuer::start(issuer_opts).await.unwrap();
        let remote = SimRemote::start(issuer.clone(), remote_opts).await.unwrap();
        (issuer, remote)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovers_the_sim_remote_and_its_issuer() {
        let (issuer, remote) = sims(
            IssuerOptions::default(),
            RemoteOptions {
                challenge_scope: Some("mcp:read offline".into()),
                ..Default::default()
            },
        )
        .await;
        let d = discover(&u(&remote.url()), &opts()).await.unwrap();
        assert_eq!(d.resource, u(&remote.url()));
        assert_eq!(d.resource_indicator.as_deref(), Some(remote.url().as_str()));
        assert_eq!(d.issuer, u(&issuer.base_url()));
        assert_eq!(d.token_endpoint, u(&issuer.token_endpoint()));
        assert_eq!(
            d.authorization_endpoint,
            u(&issuer.authorization_endpoint())
        );
        assert_eq!(
            d.registration_endpoint,
            Some(u(&issuer.registration_endpoint()))
        );
        // The challenge's scope wins over scopes_supported.
        assert_eq!(d.scopes, vec!["mcp:read", "offline"]);
        assert_eq!(remote.unauthorized_responses(), 1, "one probe");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_issuer_is_kept_as_published_with_its_iss_flag() {
        use tokenwarden_sim::issuer::AuthorizationIss;
        let (issuer, remote) = sims(IssuerOptions::default(), RemoteOptions::default()).await;
        let d = discover(&u(&remote.url()), &opts()).await.unwrap();
        // `http://127.0.0.1:PORT` as published (the parsed URL would add a `/`).
        assert_eq!(d.issuer_identifier, issuer.base_url());
        assert!(!d.iss_parameter_supported);
        issuer.set_authorization_iss(AuthorizationIss::On);
        let d = discover(&u(&remote.url()), &opts()).await.unwrap();
        assert!(d.iss_parameter_supported);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_resource_pointing_at_loopback_is_refused() {
        // The SimRemote under a public name: its challenge names its metadata at
        // 127.0.0.1, which a resource elsewhere must not do.
        let (_issuer, remote) = sims(IssuerOptions::default(), RemoteOptions::default()).await;
        let url = u(&format!("http://remote.test:{}/mcp", remote.port()));
        let o = DiscoveryOptions {
            allow_http: true,
            resolve: vec![("remote.test".into(), remote.local_addr())],
            ..opts()
        };
        let e = discover(&url, &o).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, DiscoveryError::LoopbackEndpoint { .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "{}/.well-known/oauth-protected-resource/mcp",
                remote.base_url()
            )) && msg.contains("resource_metadata")
                && msg.contains("remote.test"),
            "{msg}"
        );
        assert_eq!(remote.unauthorized_responses(), 1, "the probe only");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn falls_back_to_well_known_get_probe_and_openid_configuration() {
        let (issuer, remote) = sims(
            IssuerOptions::default(),
            RemoteOptions {
                advertise_metadata: false,
                get_only: true,
                ..Default::default()
            },
        )
        .await;
        issuer.set_metadata_mode(MetadataMode::OidcOnly);
        let d = discover(&u(&remote.url()), &opts()).await.unwrap();
        assert_eq!(d.token_endpoint, u(&issuer.token_endpoint()));
        assert_eq!(d.scopes, vec!["mcp:read", "mcp:write"], "scopes_supported");
        assert_eq!(remote.requests(), 1, "the GET probe after the 405");

        // Nothing at the path-specific location: the root document (resource = origin).
        remote.set_prm_mode(PrmMode::RootOnly);
        let d = discover(&u(&remote.url()), &opts()).await.unwrap();
        assert_eq!(d.resource_indicator, Some(remote.base_url()));
        remote.set_prm_mode(PrmMode::Missing);
        let e = discover(&u(&remote.url()), &opts()).await.unwrap_err();
        assert!(
            matches!(e, DiscoveryError::NoResourceMetadata { .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("oauth-protected-resource/mcp") && msg.contains("without a Bearer"),
            "{msg}"
        );
        issuer.set_metadata_mode(MetadataMode::Missing);
        remote.set_prm_mode(PrmMode::Good);
        let e = discover(&u(&remote.url()), &opts()).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::NoServerMetadata { .. }), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_origin_redirects_are_followed_up_to_three() {
        let (_issuer, remote) = sims(IssuerOptions::default(), RemoteOptions::default()).await;
        remote.set_prm_mode(PrmMode::RedirectSameOrigin { hops: 3 });
        discover(&u(&remote.url()), &opts()).await.unwrap();
        remote.set_prm_mode(PrmMode::RedirectSameOrigin { hops: 4 });
        let e = discover(&u(&remote.url()), &opts()).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::TooManyRedirects { .. }), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_documents_are_refused_with_the_url_and_the_problem() {
        let (issuer, remote) = sims(IssuerOptions::default(), RemoteOptions::default()).await;
        let mut small = opts();
        small.policy.max_response_bytes = 64 * 1024;
        enum Break {
            As(MetadataMode),
            Prm(PrmMode),
        }
        let cases = [
            (Break::As(MetadataMode::WrongIssuer), "issuer mismatch"),
            (Break::As(MetadataMode::NoS256), "PKCE S256"),
            (Break::As(MetadataMode::NotJson), "not JSON"),
            (
                Break::As(MetadataMode::Huge { bytes: 4 << 20 }),
                "larger than 65536 bytes",
            ),
            (
                Break::As(MetadataMode::RedirectToOtherHost),
                "another origin",
            ),
            (
                Break::Prm(PrmMode::NoAuthorizationServers),
                "names no authorization server",
            ),
            (Break::Prm(PrmMode::WrongResource), "wrong resource"),
            (Break::Prm(PrmMode::NotJson), "text/html"),
            (Break::Prm(PrmMode::Huge { bytes: 1 << 20 }), "larger than"),
            (Break::Prm(PrmMode::RedirectToOtherHost), "another origin"),
            (
                Break::Prm(PrmMode::AuthorizationServer("http://as.example".into())),
                "plain http://",
            ),
        ];
        for (break_it, needle) in cases {
            issuer.set_metadata_mode(MetadataMode::Good);
            remote.set_prm_mode(PrmMode::Good);
            match break_it {
                Break::As(m) => issuer.set_metadata_mode(m),
                Break::Prm(m) => remote.set_prm_mode(m),
            }
            let e = discover(&u(&remote.url()), &small).await.unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg} should contain {needle}");
            assert!(msg.contains("http://"), "names a URL: {msg}");
        }
        // Plain http to a non-loopback host: refused before any request.
        let e = discover(&u("http://remote.example/mcp"), &opts())
            .await
            .unwrap_err();
        assert!(matches!(e, DiscoveryError::UnsafeUrl { .. }), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registers_public_and_confidential_clients() {
        for (auth, want) in [
            (RegistrationAuth::Public, ClientAuth::None),
            (RegistrationAuth::SecretPost, ClientAuth::ClientSecretPost),
            (RegistrationAuth::SecretBasic, ClientAuth::ClientSecretBasic),
        ] {
            let issuer = SimIssuer::start(IssuerOptions {
                registration_auth: auth,
                ..Default::default()
            })
            .await
            .unwrap();
            let o = opts();
            let http = discovery_client(&o).unwrap();
            let reg = register(
                &http,
                &u(&issuer.registration_endpoint()),
                &u("http://127.0.0.1:45678/callback"),
                &["mcp:read".to_string()],
                &o.policy,
            )
            .await
            .unwrap();
            assert_eq!(reg.auth, want);
            assert_eq!(issuer.registered_client_ids(), vec![reg.client_id.clone()]);
            assert_eq!(reg.client_secret.is_some(), want.needs_secret());
            let shown = format!("{reg:?}");
            for s in issuer.issued_client_secrets() {
                assert!(!shown.contains(&s), "Debug shows no secret");
            }
            // A redirect URI the issuer refuses: a clear error with its code.
            let e = register(
                &http,
                &u(&issuer.registration_endpoint()),
                &u("https://app.example/callback"),
                &[],
                &o.policy,
            )
            .await
            .unwrap_err();
            assert!(e.to_string().contains("invalid_redirect_uri"), "{e}");
        }
    }
}
