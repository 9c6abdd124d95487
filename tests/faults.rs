//! The fault matrix: every row of the failure classification table (`docs/design.md`)
//! and the hostile shapes of the "prove it" issue, each answered for real over
//! 127.0.0.1 and fed through the real token endpoint client (`oauth::token_request`,
//! with the client `oauth::http_client` builds). Each row asserts the class (permanent
//! verdict / transient with the right kind and `Retry-After` / a token with the right
//! lifetime), that the reason is printable and short, and that the answer came in time.
//!
//! Where the answer comes from:
//! * the `SimIssuer` in one of its modes (`Mode::Raw` for bodies that are not UTF-8 and
//!   for headers such as `Retry-After` on a 503 or `Location` on a 302);
//! * a few tiny loopback servers of this file for what an HTTP server cannot say: a TCP
//!   reset or a close before any answer, and TLS with the test certificates of
//!   `tests/fixtures/tls/` (untrusted self-signed, wrong name, and a trusted one as the
//!   positive control, trusted through `ca_file`);
//! * a resolver that fails, for a DNS failure without any DNS traffic.
//!
//! Every row gets its own issuer and all rows run at once, so the matrix takes about as
//! long as its slowest row (a timeout of `http_timeout` = 1 s). The `monitor_*` tests
//! then drive a real engine through representative rows: the workload ends in the
//! right status and is not stuck (the issuer heals, "Retry now", `running` again).

use crate::support;
use crate::support::inproc;

use inproc::*;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use support::*;
use tokenwarden::engine::classify::{BodyShape, Failure, FailureKind, MAX_EXPIRES_IN};
use tokenwarden::engine::config::Config;
use tokenwarden::engine::oauth;
use tokenwarden::engine::policy::Policy;
use tokenwarden::engine::{Engine, Status, WorkloadStatus};
use url::Url;

/// Lifetime assumed for a token without a usable `expires_in` (distinct from every
/// `expires_in` the rows send, so the assertion tells them apart).
const ASSUMED: Duration = Duration::from_secs(1234);

/// The fast test policy with a 1 s request timeout.
fn policy() -> Policy {
    let mut p = fast_policy();
    p.http_timeout = Duration::from_secs(1);
    p.connect_timeout = Duration::from_secs(1);
    p.assumed_token_lifetime = ASSUMED;
    p
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

/// How the token endpoint answers.
#[derive(Clone, Debug)]
enum Endpoint {
    Mode(Mode),
    /// A loopback listener of this file: reads the request, then resets (RST).
    ResetBeforeAnswer,
    /// A loopback listener of this file: reads the request, then closes (FIN).
    CloseWithoutAnswer,
    /// A resolver that fails for the token endpoint's host name.
    DnsFailure,
    /// `https://` to the issuer's plain HTTP port (a portal answering in clear text).
    PlainHttpOnHttps,
    /// A TLS server with the fixture certificate `cert`; `trust_ca` = `ca_file` is the
    /// test CA.
    Tls {
        cert: &'static str,
        trust_ca: bool,
    },
}

/// A transient failure's kind.
#[derive(Clone, Debug)]
enum K {
    Timeout,
    Connect,
    Tls,
    Network,
    TooLarge,
    Http(u16, BodyShape),
    OAuth(u16, &'static str),
    NotToken(u16, BodyShape),
}

impl K {
    fn matches(&self, f: &FailureKind) -> bool {
        match (self, f) {
            (K::Timeout, FailureKind::Timeout)
            | (K::Connect, FailureKind::Connect)
            | (K::Tls, FailureKind::Tls)
            | (K::Network, FailureKind::Network)
            | (K::TooLarge, FailureKind::TooLarge { .. }) => true,
            (K::Http(s, b), FailureKind::Http { status, body }) => s == status && b == body,
            (K::NotToken(s, b), FailureKind::NotTokenResponse { status, body }) => {
                s == status && b == body
            }
            (K::OAuth(s, e), FailureKind::OAuth { status, error, .. }) => s == status && e == error,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
enum Want {
    /// Permanent, with this RFC 6749 code as the reason and a hint.
    Verdict(&'static str),
    /// Transient, of this kind, with `Retry-After` in this range (`None`: no wait).
    Transient(K, Option<RangeInclusive<Duration>>),
    /// A token; `expires_in` as parsed (`None` = absent or unusable), and whether it
    /// was unusable. The stored lifetime must be `expires_in` or `ASSUMED`.
    Token {
        expires_in: Option<Duration>,
        invalid: bool,
    },
}

#[derive(Clone)]
struct Row {
    name: String,
    answer: Endpoint,
    want: Want,
}

/// The matrix under construction.
struct Rows(Vec<Row>);

impl Rows {
    fn add(&mut self, name: impl Into<String>, answer: Endpoint, want: Want) {
        self.0.push(Row {
            name: name.into(),
            answer,
            want,
        });
    }
}

fn transient(k: K) -> Want {
    Want::Transient(k, None)
}

fn status(status: u16, content_type: &str, body: &str) -> Endpoint {
    Endpoint::Mode(Mode::Status {
        status,
        content_type: content_type.into(),
        body: body.into(),
    })
}

fn raw(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Endpoint {
    Endpoint::Mode(Mode::Raw {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
    })
}

fn oauth_error(status: u16, error: &str) -> Endpoint {
    Endpoint::Mode(Mode::OAuthError {
        status,
        error: error.into(),
    })
}

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const WAF: &str = "<!DOCTYPE html><html><body><h1>Access denied</h1></body></html>";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every row of the matrix. `Retry-After` dates are made relative to now.
fn rows() -> Vec<Row> {
    use BodyShape::*;
    let mut r = Rows(Vec::new());

    // --- connect refused/reset, DNS failure, timeout, TLS failure: transient
    r.add(
        "connection refused",
        Endpoint::Mode(Mode::Down),
        transient(K::Connect),
    );
    r.add("DNS failure", Endpoint::DnsFailure, transient(K::Connect));
    r.add(
        "reset before any answer",
        Endpoint::ResetBeforeAnswer,
        transient(K::Network),
    );
    r.add(
        "closed before any answer",
        Endpoint::CloseWithoutAnswer,
        transient(K::Network),
    );
    r.add(
        "reset mid-body",
        Endpoint::Mode(Mode::ResetMidBody),
        transient(K::Network),
    );
    r.add(
        "hang (no answer)",
        Endpoint::Mode(Mode::Hang),
        transient(K::Timeout),
    );
    r.add(
        "trickle 1 byte/s",
        Endpoint::Mode(Mode::Trickle {
            bytes_per_second: 1,
        }),
        transient(K::Timeout),
    );
    r.add(
        "headers then silence",
        Endpoint::Mode(Mode::Trickle {
            bytes_per_second: 0,
        }),
        transient(K::Timeout),
    );
    r.add(
        "TLS: self-signed certificate (captive portal)",
        Endpoint::Tls {
            cert: "self-signed",
            trust_ca: false,
        },
        transient(K::Tls),
    );
    r.add(
        "TLS: certificate for another name",
        Endpoint::Tls {
            cert: "wrong-name",
            trust_ca: true,
        },
        transient(K::Tls),
    );
    r.add(
        "TLS: certificate from an unknown CA",
        Endpoint::Tls {
            cert: "loopback",
            trust_ca: false,
        },
        transient(K::Tls),
    );
    r.add(
        "TLS: plain HTTP on https://",
        Endpoint::PlainHttpOnHttps,
        transient(K::Tls),
    );

    // --- 5xx, 408, 429 (Retry-After honoured): transient whatever the body
    r.add(
        "500 JSON {}",
        status(500, JSON, "{}"),
        transient(K::Http(500, Json)),
    );
    r.add(
        "502 HTML",
        status(502, HTML, WAF),
        transient(K::Http(502, Html)),
    );
    r.add(
        "503 empty",
        status(503, "", ""),
        transient(K::Http(503, Empty)),
    );
    r.add(
        "504 text",
        status(504, "text/plain", "gateway timeout"),
        transient(K::Http(504, Text)),
    );
    r.add(
        "599 empty",
        status(599, "", ""),
        transient(K::Http(599, Empty)),
    );
    r.add(
        "503 HTML + Retry-After: 5",
        raw(
            503,
            &[("content-type", HTML), ("retry-after", "5")],
            WAF.as_bytes(),
        ),
        Want::Transient(K::Http(503, Html), Some(secs(5)..=secs(5))),
    );
    let in_40s = httpdate::fmt_http_date(SystemTime::now() + secs(40));
    r.add(
        "503 + Retry-After: HTTP-date in 40 s",
        raw(503, &[("retry-after", in_40s.as_str())], b""),
        Want::Transient(K::Http(503, Empty), Some(secs(37)..=secs(40))),
    );
    let past = httpdate::fmt_http_date(SystemTime::now() - secs(600));
    r.add(
        "503 + Retry-After: HTTP-date in the past",
        raw(503, &[("retry-after", past.as_str())], b""),
        Want::Transient(K::Http(503, Empty), Some(Duration::ZERO..=Duration::ZERO)),
    );
    r.add(
        "504 JSON invalid_grant (5xx wins)",
        oauth_error(504, "invalid_grant"),
        transient(K::Http(504, Json)),
    );
    r.add(
        "408 empty",
        status(408, "", ""),
        transient(K::Http(408, Empty)),
    );
    r.add(
        "408 JSON invalid_request (408 wins)",
        oauth_error(408, "invalid_request"),
        transient(K::Http(408, Json)),
    );
    r.add(
        "429 + Retry-After: 7 (seconds)",
        Endpoint::Mode(Mode::RateLimited {
            retry_after: "7".into(),
        }),
        Want::Transient(
            K::OAuth(429, "temporarily_unavailable"),
            Some(secs(7)..=secs(7)),
        ),
    );
    let in_30s = httpdate::fmt_http_date(SystemTime::now() + secs(30));
    r.add(
        "429 + Retry-After: HTTP-date in 30 s",
        Endpoint::Mode(Mode::RateLimited {
            retry_after: in_30s,
        }),
        Want::Transient(
            K::OAuth(429, "temporarily_unavailable"),
            Some(secs(27)..=secs(30)),
        ),
    );
    r.add(
        "429 + Retry-After: 10 days (capped)",
        Endpoint::Mode(Mode::RateLimited {
            retry_after: "864000".into(),
        }),
        Want::Transient(
            K::OAuth(429, "temporarily_unavailable"),
            Some(policy().retry_after_max..=policy().retry_after_max),
        ),
    );
    r.add(
        "429 + Retry-After: garbage (ignored)",
        Endpoint::Mode(Mode::RateLimited {
            retry_after: "soon".into(),
        }),
        transient(K::OAuth(429, "temporarily_unavailable")),
    );
    r.add(
        "429 without Retry-After, empty",
        status(429, "", ""),
        transient(K::Http(429, Empty)),
    );
    r.add(
        "429 JSON invalid_grant (429 wins)",
        oauth_error(429, "invalid_grant"),
        transient(K::Http(429, Json)),
    );

    // --- 4xx without an RFC 6749 error code: transient
    r.add(
        "403 WAF HTML page",
        Endpoint::Mode(Mode::Waf403),
        transient(K::Http(403, Html)),
    );
    r.add(
        "403 HTML without content type",
        status(403, "", WAF),
        transient(K::Http(403, Html)),
    );
    r.add(
        "400 HTML",
        status(400, HTML, "<html><body>Bad Request</body></html>"),
        transient(K::Http(400, Html)),
    );
    r.add(
        "401 empty",
        status(401, "", ""),
        transient(K::Http(401, Empty)),
    );
    r.add(
        "400 empty JSON type",
        status(400, JSON, ""),
        transient(K::Http(400, Empty)),
    );
    r.add(
        "404 text",
        status(404, "text/plain", "not found"),
        transient(K::Http(404, Text)),
    );
    r.add(
        "407 proxy auth",
        status(407, "text/plain", "proxy authentication required"),
        transient(K::Http(407, Text)),
    );
    r.add(
        "400 JSON without error",
        status(400, JSON, r#"{"message":"nope"}"#),
        transient(K::Http(400, Json)),
    );
    r.add(
        "400 JSON error not a string",
        status(400, JSON, r#"{"error":42}"#),
        transient(K::Http(400, Json)),
    );
    r.add(
        "400 JSON array",
        status(400, JSON, r#"[{"error":"invalid_grant"}]"#),
        transient(K::Http(400, Json)),
    );

    // --- 2xx that is not a token response: transient
    r.add(
        "200 HTML login page",
        Endpoint::Mode(Mode::LoginPage200),
        transient(K::NotToken(200, Html)),
    );
    r.add(
        "200 JSON, no access_token",
        status(200, JSON, r#"{"token_type":"Bearer"}"#),
        transient(K::NotToken(200, Json)),
    );
    r.add(
        "200 JSON, empty access_token",
        status(200, JSON, r#"{"access_token":""}"#),
        transient(K::NotToken(200, Json)),
    );
    r.add(
        "200 JSON, numeric access_token",
        status(200, JSON, r#"{"access_token":12345}"#),
        transient(K::NotToken(200, Json)),
    );
    r.add(
        "200 JSON array",
        status(200, JSON, "[1,2]"),
        transient(K::NotToken(200, Json)),
    );
    r.add(
        "200 truncated JSON",
        status(200, JSON, r#"{"access_token":"abc"#),
        transient(K::NotToken(200, Text)),
    );
    r.add(
        "200 empty",
        status(200, JSON, ""),
        transient(K::NotToken(200, Empty)),
    );
    r.add(
        "204 no content",
        status(204, "", ""),
        transient(K::NotToken(204, Empty)),
    );

    // --- redirects (a captive portal): not followed, transient
    r.add(
        "302 to a portal",
        raw(
            302,
            &[
                ("location", "http://portal.example/login"),
                ("content-type", HTML),
            ],
            b"<a href=\"http://portal.example/login\">login</a>",
        ),
        transient(K::Http(302, Html)),
    );
    r.add(
        "307 to a portal, empty",
        raw(307, &[("location", "http://portal.example/login")], b""),
        transient(K::Http(307, Empty)),
    );

    // --- RFC 6749 error codes
    for code in ["temporarily_unavailable", "server_error"] {
        r.add(
            format!("400 {code}"),
            oauth_error(400, code),
            transient(K::OAuth(400, code)),
        );
    }
    r.add(
        "503 temporarily_unavailable",
        oauth_error(503, "temporarily_unavailable"),
        transient(K::OAuth(503, "temporarily_unavailable")),
    );
    r.add(
        "500 server_error",
        oauth_error(500, "server_error"),
        transient(K::OAuth(500, "server_error")),
    );
    for code in [
        "vendor_specific_error",
        "invalid_token",
        "access_denied",
        "slow_down",
        "INVALID_GRANT",
    ] {
        r.add(
            format!("400 unknown code {code}"),
            oauth_error(400, code),
            transient(K::OAuth(400, code)),
        );
    }
    for code in tokenwarden::engine::classify::PERMANENT_CODES {
        r.add(
            format!("400 {code}"),
            oauth_error(400, code),
            Want::Verdict(code),
        );
    }
    r.add(
        "401 invalid_client",
        oauth_error(401, "invalid_client"),
        Want::Verdict("invalid_client"),
    );
    // A verdict needs the status of an OAuth error answer (RFC 6749 §5.2): a WAF or
    // gateway that sends an OAuth-looking body under another status has judged nothing.
    for (st, code) in [
        (200, "invalid_grant"),
        (200, "invalid_request"),
        (302, "invalid_request"),
        (403, "invalid_request"),
        (403, "invalid_client"),
        (401, "invalid_grant"),
    ] {
        r.add(
            format!("{st} with {code}"),
            oauth_error(st, code),
            transient(K::OAuth(st, code)),
        );
    }
    r.add(
        "403 invalid_grant (Auth0's answer to a revoked refresh token)",
        oauth_error(403, "invalid_grant"),
        Want::Verdict("invalid_grant"),
    );
    r.add(
        "400 invalid_grant, JSON without content type",
        status(400, "", r#"{"error":"invalid_grant"}"#),
        Want::Verdict("invalid_grant"),
    );

    // --- invalid UTF-8
    r.add(
        "200 JSON-ish, invalid UTF-8 token",
        raw(
            200,
            &[("content-type", JSON)],
            b"{\"access_token\":\"ab\xff\xfecd\",\"expires_in\":60}",
        ),
        transient(K::NotToken(200, Binary)),
    );
    r.add(
        "200 binary garbage",
        raw(
            200,
            &[("content-type", "application/octet-stream")],
            &[0xff, 0xfe, 0x00, 0x80, 0xc3],
        ),
        transient(K::NotToken(200, Binary)),
    );
    r.add(
        "400 binary garbage",
        raw(400, &[], &[0xff, 0xfe, 0x00, 0x80]),
        transient(K::Http(400, Binary)),
    );
    r.add(
        "400 invalid_grant, Latin-1 description",
        raw(
            400,
            &[("content-type", JSON)],
            b"{\"error\":\"invalid_grant\",\"error_description\":\"Jeton expir\xe9\"}",
        ),
        Want::Verdict("invalid_grant"),
    );
    r.add(
        "503 server_error, Latin-1 description",
        raw(
            503,
            &[("content-type", JSON)],
            b"{\"error\":\"server_error\",\"error_description\":\"\xe9chec\"}",
        ),
        transient(K::OAuth(503, "server_error")),
    );

    // --- size: abandoned at the cap
    r.add(
        "50 MB chunked body",
        Endpoint::Mode(Mode::Huge {
            bytes: 50 * 1024 * 1024,
        }),
        transient(K::TooLarge),
    );
    let big = vec![b' '; 1024 * 1024];
    r.add(
        "1 MiB body with Content-Length",
        raw(200, &[("content-type", JSON)], &big),
        transient(K::TooLarge),
    );

    // --- token responses with odd expires_in
    let token = |expires_in: &str| {
        status(
            200,
            JSON,
            &format!(
                r#"{{"access_token":"sim_at_matrix","token_type":"Bearer","expires_in":{expires_in}}}"#
            ),
        )
    };
    let ok = |s: Option<Duration>| Want::Token {
        expires_in: s,
        invalid: false,
    };
    let unusable = Want::Token {
        expires_in: None,
        invalid: true,
    };
    r.add("expires_in 3600", token("3600"), ok(Some(secs(3600))));
    r.add("expires_in 1", token("1"), ok(Some(secs(1))));
    r.add(
        "expires_in 1.5",
        token("1.5"),
        ok(Some(Duration::from_millis(1500))),
    );
    r.add(
        "expires_in \"3600\"",
        token("\"3600\""),
        ok(Some(secs(3600))),
    );
    r.add("expires_in 1e30", token("1e30"), ok(Some(MAX_EXPIRES_IN)));
    r.add(
        "expires_in 2^64",
        token("18446744073709551616"),
        ok(Some(MAX_EXPIRES_IN)),
    );
    r.add(
        "expires_in 10^40",
        token(&format!("1{}", "0".repeat(40))),
        ok(Some(MAX_EXPIRES_IN)),
    );
    r.add("expires_in -1", token("-1"), unusable.clone());
    r.add("expires_in 0", token("0"), unusable.clone());
    r.add("expires_in 0.5", token("0.5"), unusable.clone());
    r.add("expires_in -1e30", token("-1e30"), unusable.clone());
    r.add("expires_in \"abc\"", token("\"abc\""), unusable.clone());
    r.add("expires_in \"NaN\"", token("\"NaN\""), unusable.clone());
    r.add("expires_in \"inf\"", token("\"inf\""), unusable.clone());
    r.add("expires_in true", token("true"), unusable.clone());
    r.add("expires_in []", token("[]"), unusable.clone());
    r.add("expires_in null", token("null"), ok(None));
    r.add(
        "expires_in absent",
        status(200, JSON, r#"{"access_token":"sim_at_matrix"}"#),
        ok(None),
    );
    r.add(
        "expires_in 1e400 (out of JSON's f64 range)",
        token("1e400"),
        ok(Some(MAX_EXPIRES_IN)),
    );

    // --- TLS positive control: the same server, trusted through ca_file
    r.add(
        "TLS: trusted through ca_file (control)",
        Endpoint::Tls {
            cert: "loopback",
            trust_ca: true,
        },
        ok(Some(secs(60))),
    );
    r.0
}

// ---------------------------------------------------------------------------
// Running a row
// ---------------------------------------------------------------------------

struct Outcome {
    name: String,
    result: Result<tokenwarden::engine::classify::TokenResponse, Failure>,
    elapsed: Duration,
    /// `Huge`/`Trickle`: body bytes the issuer managed to write.
    issuer_sent: u64,
}

const FORM: &[(&str, &str)] = &[
    ("grant_type", "refresh_token"),
    ("refresh_token", "sim_rt_matrix"),
    ("client_id", "tokenwarden-test"),
];

/// The real clients (`oauth::http_client`), built once: building one reads the system
/// trust roots, which takes a while.
#[derive(Clone)]
struct Clients {
    plain: reqwest::Client,
    /// `ca_file` = the test CA.
    test_ca: reqwest::Client,
}

async fn run_row(row: Row, clients: Clients) -> Outcome {
    let p = policy();
    let issuer = issuer(IssuerOptions::default()).await;
    let http = clients.plain;
    let mut _keep: Option<Box<dyn std::any::Any + Send>> = None;
    let (client, endpoint) = match &row.answer {
        Endpoint::Mode(mode) => {
            issuer.set_mode(mode.clone());
            (http, issuer.token_endpoint())
        }
        Endpoint::ResetBeforeAnswer | Endpoint::CloseWithoutAnswer => {
            let reset = matches!(row.answer, Endpoint::ResetBeforeAnswer);
            let (addr, task) = rude_server(reset).await;
            _keep = Some(Box::new(AbortOnDrop(task)));
            (http, format!("http://{addr}/token"))
        }
        Endpoint::DnsFailure => {
            let client = reqwest::Client::builder()
                .timeout(p.http_timeout)
                .connect_timeout(p.connect_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(Arc::new(NoDns))
                .build()
                .unwrap();
            (client, "http://issuer.invalid/token".to_string())
        }
        Endpoint::PlainHttpOnHttps => (http, format!("https://{}/token", issuer.local_addr())),
        Endpoint::Tls { cert, trust_ca } => {
            let server = TlsServer::start(cert);
            let endpoint = format!("https://{}/token", server.addr);
            _keep = Some(Box::new(server));
            let client = if *trust_ca { clients.test_ca } else { http };
            (client, endpoint)
        }
    };
    let endpoint = Url::parse(&endpoint).unwrap();
    let started = Instant::now();
    let result = oauth::token_request(&client, &endpoint, FORM, &p).await;
    let elapsed = started.elapsed();
    let issuer_sent = settled_bytes_sent(&issuer).await;
    issuer.shutdown();
    Outcome {
        name: row.name.clone(),
        result,
        elapsed,
        issuer_sent,
    }
}

/// The issuer's raw byte count once it stops growing (the issuer notices the client
/// left at its next write).
async fn settled_bytes_sent(issuer: &SimIssuer) -> u64 {
    let mut last = issuer.raw_bytes_sent();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = issuer.raw_bytes_sent();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Check one outcome against its row; the problems, empty when it passes.
fn check(row: &Row, out: &Outcome, p: &Policy) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = |m: String| problems.push(m);
    match (&row.want, &out.result) {
        (Want::Verdict(code), Err(f)) => {
            if !f.is_permanent() || f.oauth_code() != Some(code) {
                bad(format!(
                    "want verdict {code}, got {:?} ({})",
                    f.kind,
                    f.reason()
                ));
            }
            if f.reason() != *code {
                bad(format!("reason {:?} should be the code", f.reason()));
            }
            if f.hint().is_none() {
                bad("a verdict carries a hint".into());
            }
        }
        (Want::Transient(k, ra), Err(f)) => {
            if f.is_permanent() || !k.matches(&f.kind) {
                bad(format!(
                    "want transient {k:?}, got {:?} ({})",
                    f.kind,
                    f.reason()
                ));
            }
            if f.hint().is_some() {
                bad("no hint on a transient failure".into());
            }
            match (ra, f.retry_after) {
                (None, None) => {}
                (Some(r), Some(got)) if r.contains(&got) => {}
                (want, got) => bad(format!("Retry-After: want {want:?}, got {got:?}")),
            }
        }
        (
            Want::Token {
                expires_in,
                invalid,
            },
            Ok(t),
        ) => {
            if t.access_token.expose().is_empty() {
                bad("empty access token".into());
            }
            if t.expires_in != *expires_in || t.expires_in_invalid != *invalid {
                bad(format!(
                    "expires_in: want {expires_in:?} (invalid {invalid}), got {:?} (invalid {})",
                    t.expires_in, t.expires_in_invalid
                ));
            }
            // As a refresh stores it: the refresh token it was sent with is kept.
            let sent = tokenwarden::engine::Secret::new("the refresh token sent");
            let (stored, lifetime) = oauth::to_stored(t.clone(), Some(sent), SystemTime::now(), p);
            let want_lifetime = expires_in.unwrap_or(ASSUMED);
            if lifetime != want_lifetime {
                bad(format!(
                    "lifetime: want {want_lifetime:?}, got {lifetime:?}"
                ));
            }
            let now = tokenwarden::engine::store::unix_secs(SystemTime::now());
            let exp = stored.expires_at.unwrap_or(0);
            if exp <= now.saturating_sub(2) || exp > now + want_lifetime.as_secs() + 2 {
                bad(format!("expires_at {exp} is not now + {want_lifetime:?}"));
            }
        }
        (want, Ok(_)) => bad(format!("want {want:?}, got a token")),
        (want, Err(f)) => bad(format!("want {want:?}, got {:?} ({})", f.kind, f.reason())),
    }
    if let Err(f) = &out.result {
        let reason = f.reason();
        if reason.chars().any(char::is_control) || reason.chars().count() > 400 {
            bad(format!("reason not short and printable: {reason:?}"));
        }
    }
    // In time: a timeout at http_timeout (+ the outer deadline's second), everything
    // else well before it.
    let limit = match &row.want {
        Want::Transient(K::Timeout, _) => p.http_timeout + Duration::from_millis(1500),
        _ => Duration::from_millis(2500),
    };
    if out.elapsed > limit {
        bad(format!("took {:?} (limit {limit:?})", out.elapsed));
    }
    problems
}

/// Every row of the classification table and the issue's hostile shapes, through the
/// real client, all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_every_row_ends_in_the_right_class() {
    init_tracing("fault_matrix");
    let p = policy();
    let rows = rows();
    let clients = Clients {
        plain: oauth::http_client(&p, None).unwrap(),
        test_ca: oauth::http_client(&p, Some(fixture_path("ca.pem").as_ref())).unwrap(),
    };
    let started = Instant::now();
    let tasks = rows
        .iter()
        .map(|row| tokio::spawn(run_row(row.clone(), clients.clone())));
    let outcomes: Vec<Outcome> =
        tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(tasks))
            .await
            .expect("no row may get stuck")
            .into_iter()
            .map(|r| r.expect("no row panics"))
            .collect();
    let total = started.elapsed();

    let mut failures = Vec::new();
    eprintln!("{:<48} {:>9}  result", "row", "time");
    for (row, out) in rows.iter().zip(&outcomes) {
        let shown = match &out.result {
            Ok(t) => format!("token, lifetime {:?}", t.expires_in.unwrap_or(ASSUMED)),
            Err(f) => format!("{:?}: {}", f.class(), f.reason()),
        };
        eprintln!("{:<48} {:>7}ms  {shown}", out.name, out.elapsed.as_millis());
        for problem in check(row, out, &p) {
            failures.push(format!("{}: {problem}", row.name));
        }
    }
    eprintln!("{} rows in {:?}", rows.len(), total);

    // The 50 MB body was abandoned at the cap, not buffered: the issuer could write
    // little more than the cap plus what the kernel's socket buffers absorbed.
    let huge = outcomes
        .iter()
        .find(|o| o.name == "50 MB chunked body")
        .unwrap();
    eprintln!(
        "50 MB row: the issuer wrote {} bytes before the client left",
        huge.issuer_sent
    );
    if huge.issuer_sent > 16 * 1024 * 1024 {
        failures.push(format!(
            "50 MB row: {} bytes were sent, the client kept reading",
            huge.issuer_sent
        ));
    }
    let trickle = outcomes
        .iter()
        .find(|o| o.name == "trickle 1 byte/s")
        .unwrap();
    if trickle.issuer_sent > 3 {
        failures.push(format!(
            "trickle: {} bytes in about a second",
            trickle.issuer_sent
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Servers for what an HTTP server cannot say
// ---------------------------------------------------------------------------

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts, reads the request head, then resets (`reset`) or closes the connection
/// without answering.
async fn rude_server(reset: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            if reset {
                // SO_LINGER 0: close sends RST.
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(Duration::ZERO));
            }
            drop(sock);
        }
    });
    (addr, task)
}

struct NoDns;

impl reqwest::dns::Resolve for NoDns {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such host (test resolver)",
            )) as Box<dyn std::error::Error + Send + Sync>)
        })
    }
}

fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A TLS server on 127.0.0.1 (a std thread with rustls) that answers every request
/// with a token response of lifetime 60 s. Stops on drop.
struct TlsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl TlsServer {
    fn start(cert: &str) -> TlsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture_path(&format!("{cert}.pem")))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture_path(&format!("{cert}.key"))).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(sock) = sock {
                    serve_tls(sock, config.clone());
                }
            }
        });
        TlsServer { addr, stop }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn serve_tls(sock: std::net::TcpStream, config: Arc<rustls::ServerConfig>) {
    use std::io::{Read, Write};
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = sock.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return, // handshake refused by the client, or gone
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = r#"{"access_token":"tls_at_matrix","token_type":"Bearer","expires_in":60}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(answer.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

// ---------------------------------------------------------------------------
// Representative rows through a real monitor
// ---------------------------------------------------------------------------

struct Setup {
    engine: Engine,
    issuer: SimIssuer,
    _dir: tempfile::TempDir,
}

/// One workload `w`, logged in for real (code + PKCE), under an engine with the fast
/// policy and a 1 s request timeout.
async fn setup(test: &str) -> Setup {
    init_tracing(test);
    let issuer = issuer(issuer_opts(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::parse(
        &dir.path().join("workloads.toml"),
        &workload_toml("w", &issuer),
    )
    .unwrap();
    cfg.policy = policy();
    let store = login_all(&cfg).await;
    let engine = start_engine(cfg, store, Some(dir.path().join("state.json")));
    wait_for(&engine, Duration::from_secs(10), |w| {
        w.status == Status::Running
    })
    .await;
    Setup {
        engine,
        issuer,
        _dir: dir,
    }
}

/// Wait (driven by status events) until `pred` holds for `w`.
async fn wait_for(
    engine: &Engine,
    timeout: Duration,
    pred: impl Fn(&WorkloadStatus) -> bool,
) -> WorkloadStatus {
    wait_for_workload(engine, "w", timeout, pred).await
}

/// Break the issuer with `mode`, press "Retry now", and wait for `want` with a reason
/// starting `reason`; the engine stays responsive meanwhile. Then heal the issuer,
/// "Retry now" again: `running`, no failed attempts, a valid access token.
async fn monitor_row(test: &str, mode: Mode, want: Status, reason: &str) {
    let s = setup(test).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut rx = s.engine.subscribe();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv().await {
            seen2.lock().unwrap().push(ev.workload.status);
        }
    });
    s.issuer.set_mode(mode);
    s.engine.retry(Some("w")).await.unwrap();
    let st = wait_for(&s.engine, Duration::from_secs(15), |w| w.status == want).await;
    let got = st.reason.clone().unwrap_or_default();
    assert!(got.starts_with(reason), "{test}: reason {got:?}");
    assert_eq!(
        st.hint.is_some(),
        want == Status::Unauthenticated,
        "{test}: hint {:?}",
        st.hint
    );
    if want == Status::Retrying {
        assert!(
            st.next_attempt_at.is_some() && st.gives_up_at.is_some(),
            "{st:#?}"
        );
        assert!(
            !seen.lock().unwrap().contains(&Status::Unauthenticated),
            "{test}: never unauthenticated"
        );
    }
    tokio::time::timeout(Duration::from_secs(1), s.engine.status())
        .await
        .expect("the engine answers while the workload fails")
        .unwrap();

    s.issuer.set_mode(Mode::Healthy);
    s.engine.retry(Some("w")).await.unwrap();
    let st = wait_for(&s.engine, Duration::from_secs(10), |w| {
        w.status == Status::Running && w.attempts == 0
    })
    .await;
    assert!(
        st.access_token_valid && st.reason.is_none(),
        "{test}: {st:#?}"
    );
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_waf_403_is_retrying_then_heals() {
    monitor_row("faults_waf", Mode::Waf403, Status::Retrying, "HTTP 403: ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_invalid_grant_with_latin1_description_is_unauthenticated_then_heals() {
    let mode = Mode::Raw {
        status: 400,
        headers: vec![("content-type".into(), JSON.into())],
        body: b"{\"error\":\"invalid_grant\",\"error_description\":\"Jeton expir\xe9\"}".to_vec(),
    };
    monitor_row(
        "faults_latin1_grant",
        mode,
        Status::Unauthenticated,
        "invalid_grant",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_50_mb_body_is_retrying_then_heals() {
    let mode = Mode::Huge {
        bytes: 50 * 1024 * 1024,
    };
    monitor_row("faults_huge", mode, Status::Retrying, "response too large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_trickle_is_a_timeout_then_heals() {
    let mode = Mode::Trickle {
        bytes_per_second: 1,
    };
    monitor_row("faults_trickle", mode, Status::Retrying, "timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_reset_mid_body_is_retrying_then_heals() {
    monitor_row(
        "faults_reset",
        Mode::ResetMidBody,
        Status::Retrying,
        "connection broken",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_invalid_utf8_200_is_retrying_then_heals() {
    let mode = Mode::Raw {
        status: 200,
        headers: vec![("content-type".into(), JSON.into())],
        body: b"{\"access_token\":\"ab\xff\xfecd\"}".to_vec(),
    };
    monitor_row("faults_utf8_200", mode, Status::Retrying, "HTTP 200: ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_server_error_is_retrying_then_heals() {
    let mode = Mode::OAuthError {
        status: 400,
        error: "server_error".into(),
    };
    monitor_row(
        "faults_server_error",
        mode,
        Status::Retrying,
        "HTTP 400 server_error: ",
    )
    .await;
}

/// An issuer that repeats the refresh token it was sent (in `error_description`, or
/// as the `error` code itself): the engine classifies the answer as usual, and the
/// token reaches neither the status nor the logs (the secret scan reads them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_echoing_the_sent_refresh_token_never_shows_it() {
    let s = setup("faults_echo_sent").await;
    let cases = [
        ("server_error", Status::Retrying, "HTTP 400 server_error: "),
        ("oops {sent}", Status::Retrying, "HTTP 400 unknown: "),
        ("invalid_grant", Status::Unauthenticated, "invalid_grant"),
    ];
    for (error, want, reason) in cases {
        s.issuer.set_mode(Mode::EchoSent {
            status: 400,
            error: error.into(),
        });
        s.engine.retry(Some("w")).await.unwrap();
        let st = wait_for(&s.engine, Duration::from_secs(15), |w| w.status == want).await;
        let shown = serde_json::to_string(&st).unwrap();
        assert!(
            st.reason.as_deref().unwrap_or("").starts_with(reason),
            "{error}: {shown}"
        );
        for t in s.issuer.issued_tokens() {
            assert!(
                !shown.contains(&t),
                "{error}: the sent token is shown: {shown}"
            );
        }
        if want == Status::Unauthenticated {
            break;
        }
        s.issuer.set_mode(Mode::Healthy);
        s.engine.retry(Some("w")).await.unwrap();
        wait_for(&s.engine, Duration::from_secs(10), |w| {
            w.status == Status::Running && w.attempts == 0
        })
        .await;
    }
    s.engine.shutdown().await;
}

/// Odd `expires_in` values: the token is used, with the lifetime the row says, and the
/// monitor keeps a refresh scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_odd_expires_in_runs_with_the_right_lifetime() {
    let s = setup("faults_expires_in").await;
    let cases: &[(&str, Duration)] = &[
        ("-1", ASSUMED),
        ("0", ASSUMED),
        ("\"abc\"", ASSUMED),
        ("true", ASSUMED),
        ("null", ASSUMED),
        ("\"3600\"", secs(3600)),
        ("1e30", MAX_EXPIRES_IN),
        ("18446744073709551616", MAX_EXPIRES_IN),
        ("1e400", MAX_EXPIRES_IN),
    ];
    for (value, lifetime) in cases {
        s.issuer.set_mode(Mode::Status {
            status: 200,
            content_type: JSON.into(),
            body: format!(r#"{{"access_token":"sim_at_odd","expires_in":{value}}}"#),
        });
        let mut rx = s.engine.subscribe();
        s.engine.retry(Some("w")).await.unwrap();
        let st = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(ev) = rx.recv().await {
                    if ev.refreshed {
                        return ev.workload;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expires_in {value}: no refresh"));
        assert_eq!(st.status, Status::Running, "expires_in {value}");
        assert!(
            st.access_token_valid && st.next_attempt_at.is_some(),
            "expires_in {value}: {st:#?}"
        );
        let expires = st.access_token_expires_at.unwrap();
        let left = (expires - time::OffsetDateTime::now_utc()).whole_seconds();
        let want = lifetime.as_secs() as i64;
        assert!(
            (want - 3..=want + 1).contains(&left),
            "expires_in {value}: {left} s left, want {want}"
        );
    }
    // And back to real tokens.
    s.issuer.set_mode(Mode::Healthy);
    s.engine.retry(Some("w")).await.unwrap();
    wait_for(&s.engine, Duration::from_secs(5), |w| {
        w.status == Status::Running
            && w.attempts == 0
            && w.access_token_expires_at
                .is_some_and(|e| (e - time::OffsetDateTime::now_utc()).whole_seconds() <= 60)
    })
    .await;
    s.engine.shutdown().await;
}
