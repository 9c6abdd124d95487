//! `parse_request_head`, the login callback's reading of the HTTP/1 request head its
//! loopback socket receives from the browser (or from anything else that connects).
//!
//! Input: the bytes received, as they are (`-max_len` past 16 KiB reaches the cap).
//!
//! Invariants, beyond "never panics":
//! * the answer does not depend on how the bytes arrive: for every prefix the reader
//!   may have seen first, it is `Incomplete` or the answer for the whole input (once
//!   decided, more bytes change nothing); `Incomplete` only while there is no blank
//!   line and the input is under `MAX_REQUEST_HEAD`;
//! * a target starts with `/`, has no whitespace, is shorter than the input and than
//!   `MAX_REQUEST_HEAD`, and is the second word of a first line whose first word is
//!   `GET`, in a head (up to the first blank line, within the cap) that is UTF-8;
//! * every `GET` with such a target is read back exactly (round trip);
//! * the URL the callback makes of a target (`http://127.0.0.1` + target) keeps that
//!   origin, and its query reads without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwarden_engine::oauth::{parse_request_head, Head, MAX_REQUEST_HEAD};

const BLANK: &[u8] = b"\r\n\r\n";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check_target(data: &[u8], t: &str) {
    assert!(t.starts_with('/'), "{t:?}");
    assert!(!t.chars().any(char::is_whitespace), "{t:?}");
    assert!(t.len() < data.len() && t.len() < MAX_REQUEST_HEAD, "{t:?}");
    let end = find(data, BLANK).expect("a target comes from a complete head");
    assert!(end + BLANK.len() <= MAX_REQUEST_HEAD, "head past the cap");
    let head = std::str::from_utf8(&data[..end]).expect("a target comes from a UTF-8 head");
    let first = head.lines().next().unwrap_or_default();
    let mut words = first.split_whitespace();
    assert_eq!(words.next(), Some("GET"), "{first:?}");
    assert_eq!(words.next(), Some(t), "{first:?}");

    // What the callback does with it.
    if let Ok(url) = url::Url::parse(&format!("http://127.0.0.1{t}")) {
        assert_eq!(url.scheme(), "http", "{t:?}");
        assert_eq!(url.host_str(), Some("127.0.0.1"), "{t:?}");
        assert_eq!(url.port(), None, "{t:?}");
        assert!(url.path().starts_with('/'), "{t:?}");
        for (k, v) in url.query_pairs() {
            let _ = (k.len(), v.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = parse_request_head(data);
    match &whole {
        Head::Incomplete => {
            assert!(data.len() < MAX_REQUEST_HEAD);
            assert!(find(data, BLANK).is_none());
        }
        Head::Target(t) => check_target(data, t),
        Head::Invalid => {}
    }
    assert_eq!(parse_request_head(data), whole, "deterministic");

    // Prefixes the reader may have stopped at: around the first blank line, around the
    // cap, the middle, the first line, and a few the input picks.
    let n = data.len();
    let mut cuts = vec![
        n / 2,
        n.saturating_sub(1),
        MAX_REQUEST_HEAD - 1,
        MAX_REQUEST_HEAD,
    ];
    if let Some(end) = find(data, BLANK) {
        cuts.extend([end, end + 1, end + 3, end + 4, end + 5]);
    }
    if let Some(nl) = data.iter().position(|&b| b == b'\n') {
        cuts.extend([nl, nl + 1]);
    }
    cuts.extend(data.iter().take(4).map(|&b| usize::from(b) * 64));
    for cut in cuts.into_iter().filter(|&c| c <= n) {
        let early = parse_request_head(&data[..cut]);
        assert!(
            early == Head::Incomplete || early == whole,
            "{cut} of {n} bytes: {early:?}, all of them: {whole:?}"
        );
    }

    // Round trip: a GET of the input's first word, when it is a target.
    if let Some(word) = std::str::from_utf8(&data[..n.min(MAX_REQUEST_HEAD)])
        .unwrap_or_else(|e| std::str::from_utf8(&data[..e.valid_up_to()]).unwrap())
        .split(char::is_whitespace)
        .next()
        .filter(|w| w.starts_with('/'))
    {
        let request = format!("GET {word} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
        let want = if request.len() <= MAX_REQUEST_HEAD {
            Head::Target(word.to_string())
        } else {
            Head::Invalid
        };
        assert_eq!(parse_request_head(request.as_bytes()), want, "{word:?}");
    }
});
