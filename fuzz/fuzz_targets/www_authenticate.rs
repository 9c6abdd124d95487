//! `parse_www_authenticate`, discovery's reading of the `WWW-Authenticate` fields a
//! remote answers with (where the `resource_metadata` URL and the scope come from).
//!
//! Input, used twice:
//! * as the header: UTF-8 (lossy), one field per `\n`;
//! * as a recipe for well-formed challenges (`scheme [ token68 | #auth-param ]`,
//!   quoted values with any characters, optional whitespace, empty list elements),
//!   serialized, cut into fields at list-element boundaries, and parsed back.
//!
//! Invariants, beyond "never panics":
//! * several fields are one comma list: parsing the fields is parsing them joined;
//! * bounded output: at most one challenge per input byte, and the schemes, token68s,
//!   parameter names and values together are no longer than the input;
//! * a scheme and a parameter name are a non-empty token, names lower-cased; a token68
//!   is `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`; never both a
//!   token68 and parameters; a value has no U+FFFD the input did not have;
//! * well-formed challenges round-trip: parsed back exactly as made (names
//!   lower-cased, quoted-pair escapes undone), whatever a quoted value contains;
//! * what was parsed, written out again, parses the same (idempotent);
//! * the same input parses the same way twice.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tokenwarden_engine::discovery::{parse_www_authenticate, Challenge};

const TCHAR: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const TOKEN68: &[u8] = b"-._~+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn is_tchar(c: u8) -> bool {
    TCHAR.contains(&c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|c| TOKEN68.contains(&c))
}

fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Challenges written out plainly (every value quoted).
fn serialize(chs: &[Challenge]) -> String {
    chs.iter()
        .map(|c| {
            let mut s = c.scheme.clone();
            if let Some(t) = &c.token68 {
                s.push(' ');
                s.push_str(t);
            } else if !c.params.is_empty() {
                s.push(' ');
                let params: Vec<String> = c
                    .params
                    .iter()
                    .map(|(n, v)| format!("{n}={}", quote(v)))
                    .collect();
                s.push_str(&params.join(", "));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_parsed(input: &str, out: &[Challenge]) {
    let had_fffd = input.contains('\u{fffd}');
    assert!(out.len() <= input.len(), "{} challenges", out.len());
    let mut total = 0;
    for c in out {
        assert!(is_token(&c.scheme), "scheme {:?}", c.scheme);
        total += c.scheme.len();
        if let Some(t) = &c.token68 {
            assert!(is_token68(t), "token68 {t:?}");
            assert!(c.params.is_empty(), "token68 and parameters: {c:?}");
            total += t.len();
        }
        for (n, v) in &c.params {
            assert!(is_token(n), "parameter name {n:?}");
            assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "name {n:?}");
            assert!(had_fffd || !v.contains('\u{fffd}'), "value {v:?}");
            total += n.len() + v.len();
        }
    }
    assert!(total <= input.len(), "{total} bytes out of {}", input.len());
}

/// Optional whitespace: none, one or two spaces or tabs.
fn ows(u: &mut Unstructured) -> Result<&'static str> {
    Ok(*u.choose(&["", "", " ", "\t", "  ", " \t"])?)
}

fn word(u: &mut Unstructured, alphabet: &[u8], max: usize) -> Result<String> {
    let len = u.int_in_range(1..=max)?;
    (0..len)
        .map(|_| u.choose(alphabet).map(|&c| char::from(c)))
        .collect()
}

/// List elements of one challenge (the scheme with its token68 or first parameter, then
/// each further parameter), and the challenge the parser should make of them.
fn challenge(u: &mut Unstructured) -> Result<(Vec<String>, Challenge)> {
    let scheme = word(u, TCHAR, 10)?;
    let mut want = Challenge {
        scheme: scheme.clone(),
        ..Default::default()
    };
    let sp = *u.choose(&[" ", "\t", "  "])?;
    match u.int_in_range(0..=2u8)? {
        0 => Ok((vec![scheme], want)),
        1 => {
            let mut t = word(u, TOKEN68, 24)?;
            for _ in 0..u.int_in_range(0..=2)? {
                t.push('=');
            }
            want.token68 = Some(t.clone());
            Ok((vec![format!("{scheme}{sp}{t}")], want))
        }
        _ => {
            let mut elements = Vec::new();
            for i in 0..u.int_in_range(1..=4)? {
                let name = word(u, TCHAR, 12)?;
                let (written, value) = if u.arbitrary()? {
                    let v = word(u, TCHAR, 12)?;
                    (v.clone(), v)
                } else {
                    let v: String = u.arbitrary()?;
                    (quote(&v), v)
                };
                let param = format!("{name}{}={}{written}", ows(u)?, ows(u)?);
                want.params.push((name.to_ascii_lowercase(), value));
                elements.push(if i == 0 {
                    format!("{scheme}{sp}{param}")
                } else {
                    param
                });
            }
            Ok((elements, want))
        }
    }
}

/// Well-formed challenges: the fields they are written as, and what they are.
fn well_formed(data: &[u8]) -> Result<(Vec<String>, Vec<Challenge>)> {
    let mut u = Unstructured::new(data);
    let mut elements = Vec::new();
    let mut want = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let (e, c) = challenge(&mut u)?;
        elements.extend(e);
        want.push(c);
    }
    // Join the elements with `OWS "," OWS` (and now and then an empty element), or
    // start a new field (the parser joins fields with ", ").
    let mut fields = vec![String::new()];
    for (i, e) in elements.iter().enumerate() {
        let field = fields.last_mut().unwrap();
        if i > 0 {
            if u.ratio(1, 4)? {
                fields.push(e.clone());
                continue;
            }
            field.push_str(ows(&mut u)?);
            field.push(',');
            if u.ratio(1, 8)? {
                field.push_str(" ,");
            }
            field.push_str(ows(&mut u)?);
        }
        field.push_str(e);
    }
    Ok((fields, want))
}

fuzz_target!(|data: &[u8]| {
    // The input as header fields.
    let text = String::from_utf8_lossy(data);
    let fields: Vec<&str> = text.split('\n').collect();
    let out = parse_www_authenticate(&fields);
    let joined = fields.join(", ");
    check_parsed(&joined, &out);
    assert_eq!(parse_www_authenticate(&[&joined]), out, "fields are a list");
    assert_eq!(parse_www_authenticate(&fields), out, "deterministic");
    let again = serialize(&out);
    assert_eq!(
        parse_www_authenticate(&[&again]),
        out,
        "written out: {again:?}"
    );

    // The input as a recipe for well-formed challenges.
    if let Ok((fields, want)) = well_formed(data) {
        let got = parse_www_authenticate(&fields);
        assert_eq!(got, want, "fields {fields:?}");
    }
});
