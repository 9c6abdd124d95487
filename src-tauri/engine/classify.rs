//! Failure classification: is this refresh failure *transient* (keep trying) or a
//! *permanent* OAuth verdict (stop and ask the user)?
//!
//! The table (`docs/design.md`), which the unit tests below walk row by row:
//!
//! | response from the token endpoint                                   | class     |
//! |--------------------------------------------------------------------|-----------|
//! | connect refused/reset, DNS failure, timeout, TLS failure           | transient |
//! | HTTP 5xx, 408, 429 (`Retry-After` honoured)                        | transient |
//! | HTTP 4xx whose body has no RFC 6749 `error` code (HTML, empty)     | transient |
//! | HTTP 2xx whose body is not a token response (HTML login page)      | transient |
//! | `error` = `temporarily_unavailable` / `server_error`               | transient |
//! | `error` = `invalid_grant`, `invalid_client`, `unauthorized_client`,|           |
//! |   `unsupported_grant_type`, `invalid_scope`, `invalid_request`,    |           |
//! |   under a status an OAuth error answer may have (see below)        | permanent |
//! | the same codes under any other status (2xx, 3xx, 403, 404...)      | transient |
//!
//! A verdict needs the status RFC 6749 §5.2 gives an error answer: `400`, or `401`
//! for `invalid_client`. One exception, from a widely used issuer: `403` with
//! `invalid_grant` (Auth0 answers a revoked or reused refresh token that way). A WAF
//! or API gateway that answers `{"error":"invalid_request"}` under `200`, a redirect or
//! `403` has not judged the grant, so it is a passing block, not a reason to sign out.
//!
//! Invariant: only the six codes of the permanent row are permanent. Anything the engine
//! does not understand (an unknown `error` code, a redirect, a body too large) is
//! transient: a workload is never killed on a guess. Transport errors are classified
//! by error variant (`reqwest::Error` kinds, `std::io::Error` kinds, `rustls::Error`
//! in the source chain), never by matching message text.
//!
//! Server-provided text (`error`, `error_description`) reaches `reason()` only
//! printable, bounded, and never repeating a token value of the same body. The fuzz
//! target `token_response` (fuzz/) checks these invariants on arbitrary answers.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// Whether an error answer under `status` can carry a verdict (module docs): `400`,
/// `401` for `invalid_client`, and `403` for `invalid_grant`.
pub fn verdict_status(status: u16, code: &str) -> bool {
    match status {
        400 => true,
        401 => code == "invalid_client",
        403 => code == "invalid_grant",
        _ => false,
    }
}

pub const PERMANENT_CODES: [&str; 6] = [
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_request",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Transient,
    Permanent,
}

/// What a response body looked like, for plain-words explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyShape {
    Empty,
    Html,
    Json,
    Text,
    Binary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureKind {
    /// No answer in time (connect, headers or body).
    Timeout,
    /// Could not connect: refused, unreachable, DNS not resolving.
    Connect,
    /// TLS handshake or certificate failure (a captive portal intercepting HTTPS).
    Tls,
    /// The connection broke during the exchange (reset, truncated body).
    Network,
    /// A non-2xx status without an RFC 6749 error code.
    Http { status: u16, body: BodyShape },
    /// An RFC 6749 error response.
    OAuth {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// A 2xx whose body is not a token response.
    NotTokenResponse { status: u16, body: BodyShape },
    /// The body was larger than the configured cap.
    TooLarge { limit: usize },
    /// The secret store could not be read or written.
    SecretStore { message: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(flatten)]
    pub kind: FailureKind,
    /// Server-requested wait (`Retry-After`), already capped by the policy.
    #[serde(default, with = "opt_millis")]
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(kind: FailureKind) -> Self {
        Failure {
            kind,
            retry_after: None,
        }
    }

    pub fn class(&self) -> Class {
        match &self.kind {
            FailureKind::OAuth { status, error, .. }
                if PERMANENT_CODES.contains(&error.as_str()) && verdict_status(*status, error) =>
            {
                Class::Permanent
            }
            _ => Class::Transient,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.class() == Class::Permanent
    }

    pub fn oauth_code(&self) -> Option<&str> {
        match &self.kind {
            FailureKind::OAuth { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The `reason` shown in `status`: the RFC 6749 code for a verdict; the HTTP status
    /// (or transport kind) and a plain description for a transient error.
    pub fn reason(&self) -> String {
        match &self.kind {
            FailureKind::OAuth { error, .. } if self.is_permanent() => error.clone(),
            _ => format!("{}: {}", self.short(), self.describe()),
        }
    }

    /// A few words: `HTTP 403`, `timeout`, `invalid_grant`.
    pub fn short(&self) -> String {
        match &self.kind {
            FailureKind::Timeout => "timeout".into(),
            FailureKind::Connect => "connection failed".into(),
            FailureKind::Tls => "TLS failure".into(),
            FailureKind::Network => "connection broken".into(),
            FailureKind::Http { status, .. } | FailureKind::NotTokenResponse { status, .. } => {
                format!("HTTP {status}")
            }
            FailureKind::OAuth { status, error, .. } => format!("HTTP {status} {error}"),
            FailureKind::TooLarge { .. } => "response too large".into(),
            FailureKind::SecretStore { .. } => "secret store".into(),
        }
    }

    /// The cause in plain words, for people.
    pub fn describe(&self) -> String {
        match &self.kind {
            FailureKind::Timeout => "the token endpoint did not answer in time".into(),
            FailureKind::Connect => {
                "could not reach the token endpoint (offline, VPN down, or DNS not ready)".into()
            }
            FailureKind::Tls => {
                "the secure connection failed, often a captive portal or TLS inspection".into()
            }
            FailureKind::Network => "the connection broke before the answer was complete".into(),
            FailureKind::Http { status, body } => match (status, body) {
                (429, _) => "the issuer is rate-limiting requests".into(),
                (408, _) => "the issuer timed out waiting for the request".into(),
                (300..=399, _) => {
                    "the token endpoint redirected elsewhere, probably a captive portal or proxy"
                        .into()
                }
                (500..=599, BodyShape::Html) => {
                    "the issuer or a proxy in front of it is failing (it answered with a web page)"
                        .into()
                }
                (500..=599, _) => "the issuer is having a server error".into(),
                (_, BodyShape::Html) => format!(
                    "the token endpoint answered {status} with a web page, probably a firewall or VPN block"
                ),
                (_, BodyShape::Empty) => format!(
                    "the token endpoint answered {status} with an empty body, probably a proxy or firewall"
                ),
                _ => format!("the token endpoint answered {status} without an OAuth error code"),
            },
            FailureKind::OAuth {
                error, description, ..
            } => {
                let base = match error.as_str() {
                    "invalid_grant" => "the sign-in has expired or was revoked",
                    "invalid_client" => "the issuer does not accept this client",
                    "unauthorized_client" => "this client may not use refresh tokens",
                    "unsupported_grant_type" => "the issuer does not support refresh tokens",
                    "invalid_scope" => "the requested scopes are no longer allowed",
                    "invalid_request" => "the issuer rejected the refresh request",
                    "temporarily_unavailable" => "the issuer is temporarily unavailable",
                    "server_error" => "the issuer had an internal error",
                    _ => "the issuer returned an error the engine does not know",
                };
                let base = match description {
                    // The description comes from the server: keep it short and printable.
                    Some(d) if !d.is_empty() => format!("{base} ({})", sanitize(d, 160)),
                    _ => base.into(),
                };
                match &self.kind {
                    FailureKind::OAuth { status, .. }
                        if PERMANENT_CODES.contains(&error.as_str()) && !self.is_permanent() =>
                    {
                        format!("{base}, but under HTTP {status}, which an OAuth verdict does not use (a firewall or gateway?): treated as temporary")
                    }
                    _ => base,
                }
            }
            FailureKind::NotTokenResponse { body, .. } => match body {
                BodyShape::Html => {
                    "the token endpoint answered with a web page instead of tokens, probably a captive portal or VPN login"
                        .into()
                }
                _ => "the token endpoint's answer was not a token response".into(),
            },
            FailureKind::TooLarge { limit } => {
                format!("the token endpoint sent more than {limit} bytes, which no token response needs")
            }
            FailureKind::SecretStore { message } => message.clone(),
        }
    }

    /// A hint for the user, only for a permanent verdict (never for a ceiling give-up).
    pub fn hint(&self) -> Option<String> {
        if !self.is_permanent() {
            return None;
        }
        Some(match self.oauth_code() {
            Some("invalid_client") | Some("unauthorized_client") => {
                "The issuer no longer knows this client. Re-authenticate: a client Tokenwarden registered itself is registered again first; for one you gave (client_id), check it at the issuer.".into()
            }
            _ => {
                "Re-authenticate. If the issuer keeps refusing, your client registration may be stale: remove the workload and add it again.".into()
            }
        })
    }

    /// A connect-level failure that a network change may have caused.
    pub fn is_connectivity(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Connect | FailureKind::Timeout | FailureKind::Network | FailureKind::Tls
        )
    }
}

/// A parsed token endpoint success.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    /// `None` when absent or unusable (negative, zero, not a number); see `expires_in_note`.
    pub expires_in: Option<Duration>,
    pub expires_in_invalid: bool,
    pub scope: Option<String>,
}

/// Longest lifetime believed from `expires_in` (absurd values are clamped to it).
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(366 * 24 * 3600);

/// Classify a complete HTTP answer from the token endpoint.
pub fn classify_response(
    status: u16,
    content_type: Option<&str>,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
    retry_after_max: Duration,
) -> Result<TokenResponse, Failure> {
    classify_response_sent(
        status,
        content_type,
        retry_after,
        body,
        now,
        retry_after_max,
        &[],
    )
}

/// [`classify_response`] for an answer to a request that carried `sent` secrets (the
/// refresh token, a client secret, a code verifier): server text that repeats one of
/// them is never shown, like text repeating a token of the body itself.
pub fn classify_response_sent(
    status: u16,
    content_type: Option<&str>,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
    retry_after_max: Duration,
    sent: &[&str],
) -> Result<TokenResponse, Failure> {
    let shape = body_shape(content_type, body);
    let json: Option<serde_json::Value> = if shape == BodyShape::Json {
        parse_json_lenient(body)
    } else {
        None
    };
    // JSON that is not valid UTF-8 (a Latin-1 `error_description`, say) is read once
    // more, lossily, for its `error` code only: an accented description must not turn
    // a verdict into 24 hours of retries. Tokens are never taken from this reading.
    let lossy: Option<serde_json::Value> = if shape == BodyShape::Binary {
        serde_json::from_str(&String::from_utf8_lossy(body)).ok()
    } else {
        None
    };
    let error_doc = json.as_ref().or(lossy.as_ref());
    let retry_after = retry_after
        .and_then(|v| parse_retry_after(v, now))
        .map(|d| d.min(retry_after_max));
    let fail = |kind| Failure { kind, retry_after };

    // An RFC 6749 error code is read under any status (some servers send it with 200);
    // whether it is a verdict depends on the status too (`verdict_status`).
    if let Some(err) = error_doc
        .and_then(|j| j.get("error"))
        .and_then(|e| e.as_str())
    {
        // Server text that repeats a token of the same body (an echoing or broken
        // issuer) is not shown: the description is dropped, an unknown code replaced.
        let mut secrets = body_secrets(error_doc);
        secrets.extend(
            sent.iter()
                .map(|v| sanitize(v, usize::MAX))
                .filter(|v| !v.is_empty()),
        );
        let description = error_doc
            .and_then(|j| j.get("error_description"))
            .and_then(|d| d.as_str())
            .map(|d| sanitize(d, usize::MAX))
            .filter(|d| !shows_secret(d, &secrets))
            .map(|d| sanitize(&d, 300));
        let code = sanitize(err, usize::MAX);
        let known = PERMANENT_CODES.contains(&code.as_str())
            || code == "temporarily_unavailable"
            || code == "server_error";
        let error = if known || !shows_secret(&code, &secrets) {
            sanitize(&code, 64)
        } else {
            "unknown".to_string()
        };
        let f = fail(FailureKind::OAuth {
            status,
            error,
            description,
        });
        // 5xx, 408 and 429 are transient whatever the body says.
        let verdict_code = f.oauth_code().is_some_and(|c| PERMANENT_CODES.contains(&c));
        if ((500..=599).contains(&status) || status == 408 || status == 429) && verdict_code {
            return Err(fail(FailureKind::Http {
                status,
                body: BodyShape::Json,
            }));
        }
        return Err(f);
    }
    if !(200..=299).contains(&status) {
        return Err(fail(FailureKind::Http {
            status,
            body: shape,
        }));
    }
    let Some(obj) = json.as_ref().and_then(|j| j.as_object()) else {
        return Err(fail(FailureKind::NotTokenResponse {
            status,
            body: shape,
        }));
    };
    let access = obj
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty());
    let Some(access) = access else {
        return Err(fail(FailureKind::NotTokenResponse {
            status,
            body: BodyShape::Json,
        }));
    };
    let refresh = obj
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    let (expires_in, expires_in_invalid) = match obj.get("expires_in") {
        None | Some(serde_json::Value::Null) => (None, false),
        Some(v) => match parse_expires_in(v) {
            Some(d) => (Some(d), false),
            None => (None, true),
        },
    };
    Ok(TokenResponse {
        access_token: Secret::new(access),
        refresh_token: refresh,
        expires_in,
        expires_in_invalid,
        scope: obj.get("scope").and_then(|v| v.as_str()).map(String::from),
    })
}

/// A JSON body. An object with a number serde_json cannot hold (beyond `f64`, such as
/// `"expires_in": 1e400`) is read member by member: such a number becomes the largest
/// `f64` of its sign, and a member that still cannot be read (too deep, a broken escape)
/// is left out, never kept as text, so it cannot turn into a token. One absurd field
/// then no longer makes a whole token response unreadable (which would be retried as
/// transient until the ceiling).
fn parse_json_lenient(body: &[u8]) -> Option<serde_json::Value> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Some(v);
    }
    // Not JSON at all, or cut short: the second reading fails as well.
    type Members = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;
    let members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice::<Members>(body)
            .ok()?
            .into_iter()
            .filter_map(|(k, raw)| {
                let text = raw.get();
                let v = serde_json::from_str(text).ok().or_else(|| {
                    let huge = match text.as_bytes().first()? {
                        b'-' => -f64::MAX,
                        b'0'..=b'9' => f64::MAX,
                        _ => return None,
                    };
                    serde_json::Number::from_f64(huge).map(serde_json::Value::Number)
                })?;
                Some((k, v))
            })
            .collect();
    Some(serde_json::Value::Object(members))
}

/// The token values a body carries (printable form), to keep them out of `reason()`.
fn body_secrets(doc: Option<&serde_json::Value>) -> Vec<String> {
    ["access_token", "refresh_token", "id_token"]
        .iter()
        .filter_map(|k| doc?.get(*k)?.as_str())
        .map(|v| sanitize(v, usize::MAX))
        .filter(|v| !v.is_empty())
        .collect()
}

fn shows_secret(text: &str, secrets: &[String]) -> bool {
    secrets.iter().any(|s| text.contains(s.as_str()))
}

fn parse_expires_in(v: &serde_json::Value) -> Option<Duration> {
    let secs: f64 = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        // Digits only ("3600", "1e400"): Rust would also read "inf" and "NaN".
        serde_json::Value::String(s)
            if s.trim().bytes().all(|b| b"0123456789+-.eE".contains(&b)) =>
        {
            s.trim().parse().ok()?
        }
        _ => return None,
    };
    if secs == f64::INFINITY {
        return Some(MAX_EXPIRES_IN); // "1e400" as a string: clamped like 1e30
    }
    if !secs.is_finite() || secs < 1.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.min(MAX_EXPIRES_IN.as_secs_f64()),
    ))
}

/// `Retry-After`: delta-seconds or an HTTP-date. Dates in the past mean "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

pub fn body_shape(content_type: Option<&str>, body: &[u8]) -> BodyShape {
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return BodyShape::Empty;
    }
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let looks_html = {
        let head: Vec<u8> = trimmed
            .iter()
            .take(15)
            .map(u8::to_ascii_lowercase)
            .collect();
        head.starts_with(b"<!doctype") || head.starts_with(b"<html") || head.starts_with(b"<")
    };
    if ct.contains("html") || looks_html {
        return BodyShape::Html;
    }
    // JSON is UTF-8 (RFC 8259 §8.1); skipping with `IgnoredAny` does not check that.
    if std::str::from_utf8(body).is_err() {
        return BodyShape::Binary;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        BodyShape::Json
    } else {
        BodyShape::Text
    }
}

/// Classify a transport error by walking its source chain for known error types.
pub fn classify_transport(err: &reqwest::Error) -> Failure {
    if err.is_timeout() {
        return Failure::new(FailureKind::Timeout);
    }
    if chain_has_rustls(err) {
        return Failure::new(FailureKind::Tls);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut io_kind = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        source = e.source();
    }
    if let Some(kind) = io_kind {
        use std::io::ErrorKind::*;
        if kind == TimedOut {
            return Failure::new(FailureKind::Timeout);
        }
        if matches!(
            kind,
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ) && !err.is_connect()
        {
            return Failure::new(FailureKind::Network);
        }
    }
    if err.is_connect() {
        Failure::new(FailureKind::Connect)
    } else {
        Failure::new(FailureKind::Network)
    }
}

/// Whether a `rustls::Error` sits anywhere in the chain. `io::Error::source()` skips
/// the error it wraps, so wrapped I/O errors are opened with `get_ref` as well.
fn chain_has_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if chain_has_rustls(inner) {
            return true;
        }
    }
    e.source().is_some_and(chain_has_rustls)
}

/// Keep server-provided text printable and short.
pub fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect::<String>()
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(3600);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn run(
        status: u16,
        ct: Option<&str>,
        ra: Option<&str>,
        body: &str,
    ) -> Result<TokenResponse, Failure> {
        classify_response(status, ct, ra, body.as_bytes(), now(), MAX)
    }

    fn class_of(status: u16, ct: Option<&str>, body: &str) -> Class {
        match run(status, ct, None, body) {
            Ok(_) => panic!("expected a failure for {status} {body:?}"),
            Err(f) => f.class(),
        }
    }

    const HTML: &str = "<!DOCTYPE html><html><body><h1>Access denied</h1></body></html>";

    #[test]
    fn table_http_statuses() {
        use Class::*;
        let json = Some("application/json");
        let html = Some("text/html; charset=utf-8");
        let rows: &[(u16, Option<&str>, &str, Class)] = &[
            // 5xx, 408, 429: transient whatever the body
            (500, json, "{}", Transient),
            (502, html, HTML, Transient),
            (503, None, "", Transient),
            (504, json, r#"{"error":"invalid_grant"}"#, Transient),
            (408, None, "", Transient),
            (429, json, r#"{"error":"slow_down"}"#, Transient),
            // 4xx without an RFC 6749 code
            (403, html, HTML, Transient),
            (403, None, HTML, Transient),
            (401, None, "", Transient),
            (400, json, r#"{"message":"nope"}"#, Transient),
            (404, Some("text/plain"), "not found", Transient),
            (407, None, "proxy auth", Transient),
            // 2xx that is not a token response
            (200, html, "<html><form>VPN login</form></html>", Transient),
            (200, json, r#"{"token":"x"}"#, Transient),
            (200, json, "[1,2]", Transient),
            (200, json, "", Transient),
            (200, json, r#"{"access_token":""}"#, Transient),
            (200, json, r#"{"access_token":"abc""#, Transient),
            // redirects (captive portals)
            (302, None, "", Transient),
            // transient OAuth codes
            (
                400,
                json,
                r#"{"error":"temporarily_unavailable"}"#,
                Transient,
            ),
            (400, json, r#"{"error":"server_error"}"#, Transient),
            (400, json, r#"{"error":"some_vendor_code"}"#, Transient),
            // permanent OAuth verdicts
            (400, json, r#"{"error":"invalid_grant"}"#, Permanent),
            (401, json, r#"{"error":"invalid_client"}"#, Permanent),
            (400, json, r#"{"error":"unauthorized_client"}"#, Permanent),
            (
                400,
                json,
                r#"{"error":"unsupported_grant_type"}"#,
                Permanent,
            ),
            (400, json, r#"{"error":"invalid_scope"}"#, Permanent),
            (400, json, r#"{"error":"invalid_request"}"#, Permanent),
            // a verdict needs 400 (401 for invalid_client, 403 for invalid_grant)
            (200, json, r#"{"error":"invalid_grant"}"#, Transient),
            (200, json, r#"{"error":"invalid_request"}"#, Transient),
            (302, json, r#"{"error":"invalid_request"}"#, Transient),
            (403, json, r#"{"error":"invalid_request"}"#, Transient),
            (403, json, r#"{"error":"invalid_client"}"#, Transient),
            (403, json, r#"{"error":"invalid_grant"}"#, Permanent),
            (401, json, r#"{"error":"invalid_grant"}"#, Transient),
            (404, json, r#"{"error":"invalid_scope"}"#, Transient),
            (422, json, r#"{"error":"unauthorized_client"}"#, Transient),
            // content-type missing but JSON body
            (
                400,
                None,
                r#"{"error":"invalid_grant","error_description":"revoked"}"#,
                Permanent,
            ),
        ];
        for (status, ct, body, want) in rows {
            assert_eq!(
                class_of(*status, *ct, body),
                *want,
                "status {status} body {body:?}"
            );
        }
    }

    #[test]
    fn reasons_name_the_code_or_the_status_in_plain_words() {
        let f = run(400, None, None, r#"{"error":"invalid_grant"}"#).unwrap_err();
        assert_eq!(f.reason(), "invalid_grant");
        assert!(f.hint().is_some());
        let f = run(403, Some("text/html"), None, HTML).unwrap_err();
        assert_eq!(
            f.reason(),
            "HTTP 403: the token endpoint answered 403 with a web page, probably a firewall or VPN block"
        );
        assert!(
            f.hint().is_none(),
            "no registration hint for transient errors"
        );
        let f = run(200, Some("text/html"), None, HTML).unwrap_err();
        assert!(f.describe().contains("captive portal"));
    }

    #[test]
    fn retry_after_seconds_and_http_date_and_cap() {
        let f = run(429, None, Some("120"), "").unwrap_err();
        assert_eq!(f.retry_after, Some(Duration::from_secs(120)));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        let f = run(503, None, Some(&date), "").unwrap_err();
        assert_eq!(f.retry_after, Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(90));
        let f = run(503, None, Some(&past), "").unwrap_err();
        assert_eq!(f.retry_after, Some(Duration::ZERO));
        let f = run(429, None, Some("999999999"), "").unwrap_err();
        assert_eq!(f.retry_after, Some(MAX), "capped");
        let f = run(429, None, Some("soon"), "").unwrap_err();
        assert_eq!(f.retry_after, None, "garbage ignored");
    }

    #[test]
    fn token_responses_parse_with_odd_expires_in() {
        let ok = |body: &str| run(200, Some("application/json"), None, body).unwrap();
        let t = ok(
            r#"{"access_token":"a","refresh_token":"r","expires_in":3600,"token_type":"Bearer"}"#,
        );
        assert_eq!(t.access_token.expose(), "a");
        assert_eq!(t.refresh_token.as_ref().map(Secret::expose), Some("r"));
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        let t = ok(r#"{"access_token":"a","expires_in":"60"}"#);
        assert_eq!(t.expires_in, Some(Duration::from_secs(60)));
        assert!(t.refresh_token.is_none());
        for bad in ["-1", "0", "\"soon\"", "[]", "0.2"] {
            let t = ok(&format!(r#"{{"access_token":"a","expires_in":{bad}}}"#));
            assert_eq!(t.expires_in, None, "{bad}");
            assert!(t.expires_in_invalid, "{bad}");
        }
        let t = ok(r#"{"access_token":"a","expires_in":1e30}"#);
        assert_eq!(t.expires_in, Some(MAX_EXPIRES_IN));
        // Beyond f64: serde_json cannot hold the number; the rest of the body counts.
        let t = ok(r#"{"access_token":"a","refresh_token":"r","expires_in":1e400}"#);
        assert_eq!(t.access_token.expose(), "a");
        assert_eq!(t.refresh_token.as_ref().map(Secret::expose), Some("r"));
        assert_eq!(t.expires_in, Some(MAX_EXPIRES_IN));
        let t = ok(r#"{"access_token":"a","expires_in":-1e400}"#);
        assert_eq!(t.expires_in, None);
        assert!(t.expires_in_invalid);
        let t = ok(r#"{"access_token":"a","expires_in":60,"extra":{"n":1e999}}"#);
        assert_eq!(t.expires_in, Some(Duration::from_secs(60)));
        let t = ok(r#"{"access_token":"a","expires_in":"1e400"}"#);
        assert_eq!(
            t.expires_in,
            Some(MAX_EXPIRES_IN),
            "a number in a string, too"
        );
        // A member that cannot be read never becomes a token (nor an error code).
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for body in [
            r#"{"access_token":1e400}"#.to_string(),
            format!(r#"{{"access_token":{deep},"x":1e400}}"#),
            r#"{"access_token":"\ud800x","x":1e400}"#.to_string(),
        ] {
            let f = run(200, Some("application/json"), None, &body).unwrap_err();
            assert!(
                matches!(f.kind, FailureKind::NotTokenResponse { .. }),
                "{body}: {f:?}"
            );
        }
        let t = ok(r#"{"access_token":"a","refresh_token":1e400,"expires_in":60}"#);
        assert!(
            t.refresh_token.is_none(),
            "no refresh token made of number text"
        );
        let t = ok(&format!(
            r#"{{"access_token":"a","refresh_token":{deep},"x":1e400}}"#
        ));
        assert!(t.refresh_token.is_none());
        let f = run(
            400,
            Some("application/json"),
            None,
            r#"{"error":1e400,"x":1}"#,
        )
        .unwrap_err();
        assert!(
            !f.is_permanent(),
            "no error code made of number text: {f:?}"
        );
        // ...and a verdict next to such a number is still a verdict.
        let f = run(
            400,
            Some("application/json"),
            None,
            r#"{"error":"invalid_grant","expires_in":1e400}"#,
        )
        .unwrap_err();
        assert!(f.is_permanent());
        let t = ok(r#"{"access_token":"a"}"#);
        assert_eq!(t.expires_in, None);
        assert!(!t.expires_in_invalid);
    }

    #[test]
    fn invalid_utf8_and_binary_bodies_are_transient() {
        let f =
            classify_response(200, None, None, &[0xff, 0xfe, 0x00, 0x80], now(), MAX).unwrap_err();
        assert_eq!(f.class(), Class::Transient);
        assert!(matches!(
            f.kind,
            FailureKind::NotTokenResponse {
                body: BodyShape::Binary,
                ..
            }
        ));
        let f = classify_response(400, None, None, &[0xff, 0xfe], now(), MAX).unwrap_err();
        assert_eq!(f.class(), Class::Transient);
        // JSON-looking but not UTF-8: not a token, whatever it says.
        let f = classify_response(
            200,
            Some("application/json"),
            None,
            b"{\"access_token\":\"ab\xff\xfecd\",\"expires_in\":60}",
            now(),
            MAX,
        )
        .unwrap_err();
        assert_eq!(
            f.kind,
            FailureKind::NotTokenResponse {
                status: 200,
                body: BodyShape::Binary
            }
        );
    }

    /// Found by the fault matrix: a verdict whose `error_description` is Latin-1 (not
    /// UTF-8) was classed as a 400 without an error code, so transient, and the workload
    /// would have retried a revoked grant for 24 hours.
    #[test]
    fn an_error_code_in_json_that_is_not_utf8_still_counts() {
        let body = b"{\"error\":\"invalid_grant\",\"error_description\":\"Jeton expir\xe9\"}";
        let f =
            classify_response(400, Some("application/json"), None, body, now(), MAX).unwrap_err();
        assert!(f.is_permanent(), "{f:?}");
        assert_eq!(f.reason(), "invalid_grant");
        assert!(
            f.describe().contains("Jeton expir\u{fffd}"),
            "{}",
            f.describe()
        );
        let body = b"{\"error\":\"server_error\",\"error_description\":\"\xe9chec\"}";
        let f = classify_response(503, None, None, body, now(), MAX).unwrap_err();
        assert_eq!(f.class(), Class::Transient);
        assert_eq!(f.oauth_code(), Some("server_error"));
        // 5xx still wins over a verdict read this way.
        let body = b"{\"error\":\"invalid_grant\",\"error_description\":\"\xe9\"}";
        let f = classify_response(503, None, None, body, now(), MAX).unwrap_err();
        assert_eq!(f.class(), Class::Transient);
    }

    /// Found by the fuzz target `token_response` (fuzz/, about 1.1 million runs in):
    /// an unknown `error` code that repeated the body's `refresh_token` showed the
    /// token in `reason()`, which goes to `status`, the UI and logs. The input as found
    /// (a 400 whose JSON is not UTF-8, so read lossily):
    #[test]
    fn fuzz_crash_token_value_in_error_code_is_not_shown() {
        let body: &[u8] = b"{\"error\":\"ser\xff\xff\xff\xff\x8a\x8e\xa6zGMT_0246-159\x9d\x8c2\xa1\x9c\x9be \",\"refresh_token\":\"MT_0246-159\x9d\x8c2\xa1\x9c\x9be \",\"oken\":\"\"}";
        let f =
            classify_response(400, Some("application/json"), None, body, now(), MAX).unwrap_err();
        assert_eq!(f.class(), Class::Transient);
        assert!(!f.reason().contains("MT_0246-159"), "{}", f.reason());
        assert_eq!(f.oauth_code(), Some("unknown"));
    }

    #[test]
    fn token_values_of_the_body_never_reach_the_reason() {
        let secret = "sim_rt_0123456789abcdef";
        for body in [
            // echoed in the description (dropped), or as the code (replaced)
            format!(
                r#"{{"error":"server_error","error_description":"bad {secret}","refresh_token":"{secret}"}}"#
            ),
            format!(
                r#"{{"error":"invalid_grant","error_description":"{secret}","access_token":"{secret}"}}"#
            ),
            format!(r#"{{"error":"x{secret}","refresh_token":"{secret}"}}"#),
            // only visible once control characters are removed
            format!(
                r#"{{"error":"server_error","error_description":"sim_rt_{}","refresh_token":"{secret}"}}"#,
                &secret[7..]
            ),
            // longer than the shown part of a code: no prefix of it either
            format!(
                r#"{{"error":"{0}{0}{0}{0}","refresh_token":"{0}{0}{0}{0}"}}"#,
                secret
            ),
        ] {
            let f = run(400, None, None, &body).unwrap_err();
            assert!(!f.reason().contains("0123456789"), "{}", f.reason());
        }
        // A verdict stays a verdict, and text without tokens is still shown.
        let f = run(400, None, None, &format!(r#"{{"error":"invalid_grant","error_description":"{secret}","refresh_token":"{secret}"}}"#)).unwrap_err();
        assert!(f.is_permanent());
        let f = run(400, None, None, r#"{"error":"server_error","error_description":"try later","refresh_token":"sim_rt_x"}"#).unwrap_err();
        assert!(f.describe().contains("(try later)"), "{}", f.describe());
    }

    #[test]
    fn server_text_is_sanitized() {
        let f = run(
            400,
            None,
            None,
            "{\"error\":\"invalid_grant\",\"error_description\":\"bad\\u001b[31m\\nthing\"}",
        )
        .unwrap_err();
        assert!(!f.describe().contains('\u{1b}'));
        assert!(!f.describe().contains('\n'));
    }

    #[tokio::test]
    async fn transport_errors_are_transient_by_variant() {
        // Connection refused: bind a port, then free it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let err = client
            .post(format!("http://127.0.0.1:{port}/token"))
            .send()
            .await
            .unwrap_err();
        let f = classify_transport(&err);
        assert_eq!(f.kind, FailureKind::Connect);
        assert_eq!(f.class(), Class::Transient);

        // Timeout: a listener that accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let err = client
            .post(format!("http://{addr}/token"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify_transport(&err).kind, FailureKind::Timeout);

        // TLS failure: speak HTTPS to a plain TCP server that answers garbage.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nthis is not tls").await;
            }
        });
        let err = client
            .post(format!("https://{addr}/token"))
            .send()
            .await
            .unwrap_err();
        let f = classify_transport(&err);
        assert_eq!(f.kind, FailureKind::Tls, "{err:?}");
        assert_eq!(f.class(), Class::Transient);
        hold.abort();
        srv.abort();
    }

    /// What `status` shows for each kind of answer: the words a user reads.
    #[test]
    fn each_answer_has_its_own_plain_words() {
        let json = Some("application/json");
        let rows: &[(u16, Option<&str>, &str, &str)] = &[
            (429, json, "{}", "HTTP 429: the issuer is rate-limiting requests"),
            (408, None, "", "HTTP 408: the issuer timed out waiting for the request"),
            (
                302,
                None,
                "",
                "HTTP 302: the token endpoint redirected elsewhere, probably a captive portal or proxy",
            ),
            (
                502,
                Some("text/html"),
                HTML,
                "HTTP 502: the issuer or a proxy in front of it is failing (it answered with a web page)",
            ),
            (500, json, "{}", "HTTP 500: the issuer is having a server error"),
            (
                401,
                None,
                "",
                "HTTP 401: the token endpoint answered 401 with an empty body, probably a proxy or firewall",
            ),
            (
                404,
                Some("text/plain"),
                "not found",
                "HTTP 404: the token endpoint answered 404 without an OAuth error code",
            ),
        ];
        for (status, ct, body, want) in rows {
            let f = run(*status, *ct, None, body).unwrap_err();
            assert_eq!(&f.reason(), want, "{status} {body:?}");
        }
    }

    #[test]
    fn each_oauth_code_is_explained() {
        let words = [
            ("invalid_grant", "the sign-in has expired or was revoked"),
            ("invalid_client", "the issuer does not accept this client"),
            (
                "unauthorized_client",
                "this client may not use refresh tokens",
            ),
            (
                "unsupported_grant_type",
                "the issuer does not support refresh tokens",
            ),
            (
                "invalid_scope",
                "the requested scopes are no longer allowed",
            ),
            ("invalid_request", "the issuer rejected the refresh request"),
            (
                "temporarily_unavailable",
                "the issuer is temporarily unavailable",
            ),
            ("server_error", "the issuer had an internal error"),
            (
                "slow_down",
                "the issuer returned an error the engine does not know",
            ),
        ];
        for (code, want) in words {
            let f = run(400, None, None, &format!(r#"{{"error":"{code}"}}"#)).unwrap_err();
            assert_eq!(f.describe(), want, "{code}");
            // A verdict shows its code; a transient code the status and the words.
            if PERMANENT_CODES.contains(&code) {
                assert_eq!(f.reason(), code);
            } else {
                assert_eq!(f.reason(), format!("HTTP 400 {code}: {want}"));
            }
            // An empty description adds nothing; a real one is quoted.
            let body = format!(r#"{{"error":"{code}","error_description":""}}"#);
            assert_eq!(run(400, None, None, &body).unwrap_err().describe(), want);
            let body = format!(r#"{{"error":"{code}","error_description":"see the admin"}}"#);
            assert_eq!(
                run(400, None, None, &body).unwrap_err().describe(),
                format!("{want} (see the admin)")
            );
        }
    }

    #[test]
    fn a_verdict_code_under_a_status_no_verdict_uses_says_so() {
        let f = run(200, None, None, r#"{"error":"invalid_grant"}"#).unwrap_err();
        assert!(!f.is_permanent());
        assert_eq!(
            f.describe(),
            "the sign-in has expired or was revoked, but under HTTP 200, which an OAuth verdict \
             does not use (a firewall or gateway?): treated as temporary"
        );
        // A real verdict, and a transient code, say nothing of the kind.
        for body in [
            r#"{"error":"invalid_grant"}"#,
            r#"{"error":"server_error"}"#,
        ] {
            let f = run(400, None, None, body).unwrap_err();
            assert!(!f.describe().contains("but under"), "{body}");
        }
    }

    #[test]
    fn the_hint_follows_the_verdict() {
        for code in ["invalid_client", "unauthorized_client"] {
            let f = run(400, None, None, &format!(r#"{{"error":"{code}"}}"#)).unwrap_err();
            assert!(
                f.hint()
                    .unwrap()
                    .starts_with("The issuer no longer knows this client."),
                "{code}"
            );
        }
        let f = run(400, None, None, r#"{"error":"invalid_scope"}"#).unwrap_err();
        assert!(f.hint().unwrap().starts_with("Re-authenticate."));
    }

    #[test]
    fn expires_in_is_believed_up_to_366_days() {
        assert_eq!(MAX_EXPIRES_IN, Duration::from_secs(31_622_400));
    }

    #[test]
    fn text_repeating_a_secret_the_request_sent_is_not_shown() {
        let body = br#"{"error":"invalid_grant","error_description":"rt-123 is revoked"}"#;
        let f = classify_response_sent(400, None, None, body, now(), MAX, &["rt-123"]).unwrap_err();
        assert!(!f.describe().contains("rt-123"), "{}", f.describe());
        // An empty value stands for nothing: the description stays.
        let f = classify_response_sent(400, None, None, body, now(), MAX, &[""]).unwrap_err();
        assert!(
            f.describe().contains("(rt-123 is revoked)"),
            "{}",
            f.describe()
        );
    }

    #[test]
    fn a_known_code_is_shown_even_when_a_secret_contains_it() {
        let known = PERMANENT_CODES
            .iter()
            .chain(&["temporarily_unavailable", "server_error"]);
        for code in known {
            let body = format!(r#"{{"error":"{code}"}}"#);
            let f = classify_response_sent(400, None, None, body.as_bytes(), now(), MAX, &[code])
                .unwrap_err();
            assert_eq!(f.oauth_code(), Some(*code));
        }
        // An unknown code is shown, unless it repeats a secret.
        let f = run(400, None, None, r#"{"error":"slow_down"}"#).unwrap_err();
        assert_eq!(f.oauth_code(), Some("slow_down"));
        let body = br#"{"error":"rt-123"}"#;
        let f = classify_response_sent(400, None, None, body, now(), MAX, &["rt-123"]).unwrap_err();
        assert_eq!(f.oauth_code(), Some("unknown"));
    }

    #[test]
    fn a_verdict_code_under_5xx_408_or_429_is_read_as_that_status() {
        for status in [408, 429, 503] {
            let f = run(
                status,
                Some("application/json"),
                None,
                r#"{"error":"invalid_grant"}"#,
            )
            .unwrap_err();
            assert_eq!(
                f.kind,
                FailureKind::Http {
                    status,
                    body: BodyShape::Json
                },
                "{status}"
            );
        }
    }

    #[test]
    fn expires_in_as_text_counts_only_when_it_is_digits() {
        for text in ["inf", "infinity", "NaN", "-inf"] {
            let body = format!(r#"{{"access_token":"a","expires_in":"{text}"}}"#);
            let t = run(200, Some("application/json"), None, &body).unwrap();
            assert_eq!(t.expires_in, None, "{text}");
            assert!(t.expires_in_invalid, "{text}");
        }
    }

    #[test]
    fn a_one_second_lifetime_is_believed() {
        let t = run(
            200,
            Some("application/json"),
            None,
            r#"{"access_token":"a","expires_in":1}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(1)));
    }

    #[test]
    fn html_is_known_by_its_content_type_or_its_first_tag() {
        assert_eq!(body_shape(Some("text/html"), b"blocked"), BodyShape::Html);
        assert_eq!(body_shape(None, HTML.as_bytes()), BodyShape::Html);
        assert_eq!(body_shape(None, b"  <div>blocked</div>"), BodyShape::Html);
        assert_eq!(body_shape(Some("text/plain"), b"blocked"), BodyShape::Text);
    }

    #[test]
    fn retry_after_survives_the_persisted_state() {
        let mut f = Failure::new(FailureKind::Connect);
        f.retry_after = Some(Duration::from_millis(1500));
        let text = serde_json::to_string(&f).unwrap();
        let back: Failure = serde_json::from_str(&text).unwrap();
        assert_eq!(back, f, "{text}");
    }

    /// A reset while connecting (here: during the TLS handshake) is a failure to
    /// connect; a reset after the request went out is a broken connection. (reqwest
    /// wraps the handshake's reset in an I/O error of kind `Other`, whose `source()`
    /// skips the reset: the variant check sees `Other` and the connect flag decides.)
    #[tokio::test]
    async fn a_reset_is_a_failed_connect_or_a_broken_connection_by_when_it_came() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut s, _)) = l.accept().await {
                // Wait for the first bytes (a TLS hello, or a request head), then reset.
                let mut buf = [0u8; 1];
                let _ = s.read(&mut buf).await;
                // SO_LINGER 0: the close is a reset (and does not block).
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                drop(s);
            }
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let err = client
            .post(format!("https://{addr}/token"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert_eq!(
            classify_transport(&err).kind,
            FailureKind::Connect,
            "{err:?}"
        );
        let err = client
            .post(format!("http://{addr}/token"))
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_connect(), "{err:?}");
        assert_eq!(
            classify_transport(&err).kind,
            FailureKind::Network,
            "{err:?}"
        );
        server.abort();
    }
}
