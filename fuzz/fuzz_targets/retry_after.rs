//! `parse_retry_after` (delta-seconds or HTTP-date) on arbitrary header values.
//!
//! Input: 8 bytes "now" (seconds since the epoch, folded into 1970 ..= 9999),
//! 4 bytes `k`, then the header value (UTF-8; other inputs are skipped).
//!
//! Invariants, beyond "never panics":
//! * delay-seconds are exactly that many seconds (however large: the classifier caps);
//! * an HTTP-date `k` seconds after `now` (whole seconds) is `k` seconds; one in the
//!   past is zero;
//! * a date is never further than the year 9999.
//!
//! The one crash so far (`seeds/retry_after/harness-crash-468ec9be`) was this harness
//! assuming the date bound for delay-seconds too; `+00200376420520689664` is a valid
//! `u64` to Rust, so the parser reads it as seconds, and the classifier caps it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use tokenwarden_engine::classify::parse_retry_after;

/// 9999-12-31T23:59:59Z, the last instant an HTTP-date can name.
const MAX_DATE_SECS: u64 = 253_402_300_799;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let now_secs = u64::from_be_bytes(data[..8].try_into().unwrap()) % MAX_DATE_SECS;
    let k = u64::from(u32::from_be_bytes(data[8..12].try_into().unwrap()));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);

    // Round trip of a date in the future and in the past.
    if now_secs + k <= MAX_DATE_SECS {
        let date = httpdate::fmt_http_date(now + Duration::from_secs(k));
        assert_eq!(
            parse_retry_after(&date, now),
            Some(Duration::from_secs(k)),
            "{date}"
        );
    }
    if let Some(past) = now_secs.checked_sub(k) {
        let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(past));
        assert_eq!(
            parse_retry_after(&date, now),
            Some(Duration::ZERO),
            "{date}"
        );
    }

    let Ok(value) = std::str::from_utf8(&data[12..]) else {
        return;
    };
    let parsed = parse_retry_after(value, now);
    // Delay-seconds, as `u64::from_str` reads them (a leading `+` included): any size,
    // the classifier caps it with `retry_after_max`.
    if let Ok(n) = value.trim().parse::<u64>() {
        assert_eq!(parsed, Some(Duration::from_secs(n)));
        return;
    }
    if let Some(d) = parsed {
        assert!(d.as_secs() <= MAX_DATE_SECS, "{d:?}");
    }
});
