//! `classify_response` on arbitrary answers from a token endpoint.
//!
//! Input: 2 bytes of HTTP status (big-endian, any `u16`), then
//! `content-type \n retry-after \n body` (an empty or non-UTF-8 header line = absent).
//!
//! Invariants, beyond "never panics":
//! * a success has a 2xx status and a non-empty access token taken from a JSON object
//!   that is valid UTF-8; its lifetime is unset or within 1 s ..= `MAX_EXPIRES_IN`;
//! * a failure's `reason()` is printable and at most `REASON_MAX` characters, and shows
//!   no `access_token` / `refresh_token` value of the body (beyond what the engine's own
//!   words happen to contain); `Retry-After` is capped;
//! * permanent only for the six RFC 6749 codes under the status of an OAuth error answer
//!   (`verdict_status`: 400; 401 for invalid_client; 403 for invalid_grant), and only
//!   a permanent failure carries a hint;
//! * the failure survives the JSON round trip of the persisted state;
//! * the same input classifies the same way twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use tokenwarden_engine::classify::{
    classify_response, sanitize, verdict_status, Class, Failure, FailureKind, MAX_EXPIRES_IN,
    PERMANENT_CODES,
};

const REASON_MAX: usize = 400;
/// Token values shorter than this are not checked (a one-letter "token" is part of
/// every sentence).
const SECRET_MIN: usize = 8;
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

struct Input<'a> {
    status: u16,
    content_type: Option<&'a str>,
    retry_after: Option<&'a str>,
    body: &'a [u8],
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    if data.len() < 2 {
        return None;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let mut rest = &data[2..];
    let mut line = || -> Option<&str> {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let l = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or(&[]);
        std::str::from_utf8(l).ok().filter(|s| !s.is_empty())
    };
    let content_type = line();
    let retry_after = line();
    Some(Input {
        status,
        content_type,
        retry_after,
        body: rest,
    })
}

/// `access_token` / `refresh_token` string values of the body's top-level object, read
/// strictly or (for JSON that is not UTF-8) lossily, as the classifier may.
fn secrets(body: &[u8]) -> Vec<String> {
    let doc: Option<serde_json::Value> = serde_json::from_slice(body)
        .ok()
        .or_else(|| serde_json::from_str(&String::from_utf8_lossy(body)).ok());
    let Some(serde_json::Value::Object(obj)) = doc else {
        return Vec::new();
    };
    ["access_token", "refresh_token"]
        .iter()
        .filter_map(|k| obj.get(*k).and_then(|v| v.as_str()))
        // As printed: control characters never reach a reason.
        .map(|s| sanitize(s, usize::MAX))
        .filter(|s| s.chars().count() >= SECRET_MIN)
        .collect()
}

/// The reason with every server-provided text taken out: only the engine's own words,
/// the status and a known error code (an unknown code the classifier replaced with
/// `unknown` is taken out too, so nothing is excused by it).
fn engine_words(f: &Failure) -> String {
    let mut g = f.clone();
    if let FailureKind::OAuth {
        error, description, ..
    } = &mut g.kind
    {
        *description = None;
        let known = PERMANENT_CODES.contains(&error.as_str())
            || error == "temporarily_unavailable"
            || error == "server_error";
        if !known {
            error.clear();
        }
    }
    g.reason()
}

fn check_failure(input: &Input, f: &Failure) {
    let reason = f.reason();
    assert!(
        !reason.chars().any(char::is_control),
        "reason not printable: {reason:?}"
    );
    assert!(
        reason.chars().count() <= REASON_MAX,
        "reason too long: {} chars",
        reason.chars().count()
    );
    let _ = (f.short(), f.describe(), f.is_connectivity());
    if let Some(ra) = f.retry_after {
        assert!(ra <= RETRY_AFTER_MAX, "Retry-After not capped: {ra:?}");
    }
    match f.class() {
        Class::Permanent => {
            let code = f.oauth_code().expect("a verdict has a code");
            assert!(PERMANENT_CODES.contains(&code));
            let s = input.status;
            assert!(matches!(s, 400 | 401 | 403), "verdict under status {s}");
            assert!(verdict_status(s, code), "{code} is no verdict under {s}");
            assert!(f.hint().is_some(), "a verdict has a hint");
            assert_eq!(reason, code);
        }
        Class::Transient => assert!(f.hint().is_none(), "hint on a transient failure"),
    }
    let own = engine_words(f);
    for secret in secrets(input.body) {
        assert!(
            !reason.contains(&secret) || own.contains(&secret),
            "a token value of the body shows in the reason {reason:?}"
        );
    }
    let json = serde_json::to_string(f).expect("a failure serializes");
    let back: Failure = serde_json::from_str(&json).expect("and deserializes");
    assert_eq!(back.kind, f.kind);
    assert_eq!(back.reason(), reason);
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = parse(data) else { return };
    let run = || {
        classify_response(
            input.status,
            input.content_type,
            input.retry_after,
            input.body,
            now(),
            RETRY_AFTER_MAX,
        )
    };
    let result = run();
    match &result {
        Ok(t) => {
            assert!(
                (200..=299).contains(&input.status),
                "token under {}",
                input.status
            );
            let access = t.access_token.expose();
            assert!(!access.is_empty(), "empty access token");
            let doc: serde_json::Value =
                serde_json::from_slice(input.body).expect("a token comes from valid JSON");
            assert_eq!(
                doc.get("access_token").and_then(|v| v.as_str()),
                Some(access)
            );
            if let Some(d) = t.expires_in {
                assert!(!t.expires_in_invalid);
                assert!(d >= Duration::from_secs(1) && d <= MAX_EXPIRES_IN, "{d:?}");
            }
            if let Some(r) = &t.refresh_token {
                assert!(!r.expose().is_empty());
            }
        }
        Err(f) => check_failure(&input, f),
    }
    // Deterministic.
    match (&result, &run()) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.access_token, b.access_token);
            assert_eq!(a.expires_in, b.expires_in);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("classified differently twice"),
    }
});
