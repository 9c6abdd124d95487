//! JSON and JSON-with-comments client files, edited by splicing the text: only the
//! bytes of the entry being added, replaced or removed change (plus the one comma
//! that joins it to its neighbour). Every other byte, comment, blank line and the
//! file's indentation and line endings stay as they were. After every edit the
//! result is parsed again and compared with what the edit meant to do; a mismatch
//! refuses the edit.

use super::{Entry, V};
use jsonc_parser::ast::{Object, ObjectProp, Value};
use jsonc_parser::common::Ranged;
use jsonc_parser::tokens::{Token, TokenAndRange};
use jsonc_parser::{CollectOptions, CommentCollectionStrategy, ParseOptions};
use std::path::Path;

/// What a client accepts in its JSON file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Plain JSON (the client parses it with `JSON.parse`).
    Strict,
    /// Comments and trailing commas (VS Code's JSONC, Gemini CLI's settings).
    Jsonc,
}

fn options(d: Dialect) -> ParseOptions {
    let loose = d == Dialect::Jsonc;
    ParseOptions {
        allow_comments: loose,
        allow_loose_object_property_names: false,
        allow_trailing_commas: loose,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    }
}

/// A client's JSON file and the key under which it keeps its servers.
pub struct JsonDoc {
    text: String,
    key: &'static str,
    dialect: Dialect,
}

struct Parsed<'a> {
    root: Object<'a>,
    tokens: Vec<TokenAndRange<'a>>,
}

fn parse<'a>(path: &Path, text: &'a str, d: Dialect) -> anyhow::Result<Parsed<'a>> {
    let collect = CollectOptions {
        comments: CommentCollectionStrategy::Off,
        tokens: true,
    };
    let r = jsonc_parser::parse_to_ast(text, &collect, &options(d)).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}: {} (column {}){}",
            path.display(),
            e.line_display(),
            e.kind(),
            e.column_display(),
            if d == Dialect::Strict {
                "; this client reads plain JSON"
            } else {
                ""
            }
        )
    })?;
    match r.value {
        Some(Value::Object(root)) => Ok(Parsed {
            root,
            tokens: r.tokens.unwrap_or_default(),
        }),
        _ => anyhow::bail!("{}:1: the file does not hold a JSON object", path.display()),
    }
}

fn serde_value(path: &Path, text: &str, d: Dialect) -> anyhow::Result<serde_json::Value> {
    jsonc_parser::parse_to_serde_value::<serde_json::Value>(text, &options(d))
        .map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.line_display(), e.kind()))
}

fn find<'b, 'a>(o: &'b Object<'a>, key: &str) -> Option<&'b ObjectProp<'a>> {
    o.properties.iter().find(|p| p.name.as_str() == key)
}

impl JsonDoc {
    /// Parse `text` (an empty file counts as `{}`); refuses what the client would not
    /// read, naming the file and line.
    pub fn parse(
        path: &Path,
        text: &str,
        key: &'static str,
        dialect: Dialect,
    ) -> anyhow::Result<JsonDoc> {
        let text = if text.trim().is_empty() {
            "{}\n".to_string()
        } else {
            text.to_string()
        };
        let p = parse(path, &text, dialect)?;
        if let Some(s) = find(&p.root, key) {
            if !matches!(s.value, Value::Object(_)) {
                anyhow::bail!(
                    "{}:{}: `{key}` is not an object",
                    path.display(),
                    line_of(&text, s.range.start)
                );
            }
        }
        Ok(JsonDoc { text, key, dialect })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The servers the file names, each as JSON.
    pub fn servers(&self, path: &Path) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let v = serde_value(path, &self.text, self.dialect)?;
        Ok(match v.get(self.key).and_then(|s| s.as_object()) {
            Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => Vec::new(),
        })
    }

    /// Add `name`, or replace its value where it is.
    pub fn upsert(&mut self, path: &Path, name: &str, entry: &Entry) -> anyhow::Result<()> {
        let before = serde_value(path, &self.text, self.dialect)?;
        let nl = newline(&self.text);
        let new = {
            let p = parse(path, &self.text, self.dialect)?;
            let unit = indent_unit(&self.text, &p.root);
            match find(&p.root, self.key) {
                None => {
                    let value = V::Obj(vec![(name.to_string(), V::Obj(entry.clone()))]);
                    let oi = line_indent(&self.text, p.root.range.start);
                    let ci = format!("{oi}{unit}");
                    insert_prop(
                        &self.text, &p, &p.root, self.key, &value, &ci, &oi, &unit, nl,
                    )
                }
                Some(sp) => {
                    let Value::Object(servers) = &sp.value else {
                        unreachable!("checked at parse")
                    };
                    let oi = line_indent(&self.text, sp.range.start);
                    match find(servers, name) {
                        Some(existing) => {
                            let ci = line_indent(&self.text, existing.range.start);
                            let r = existing.value.range();
                            let rendered = render(&V::Obj(entry.clone()), &ci, &unit, nl);
                            format!(
                                "{}{}{}",
                                &self.text[..r.start],
                                rendered,
                                &self.text[r.end..]
                            )
                        }
                        None => {
                            let ci = match servers.properties.first() {
                                Some(f) if own_line(&self.text, f.range.start) => {
                                    line_indent(&self.text, f.range.start)
                                }
                                _ => format!("{oi}{unit}"),
                            };
                            let value = V::Obj(entry.clone());
                            insert_prop(&self.text, &p, servers, name, &value, &ci, &oi, &unit, nl)
                        }
                    }
                }
            }
        };
        let mut want = before;
        let obj = want
            .as_object_mut()
            .expect("root is an object")
            .entry(self.key)
            .or_insert_with(|| serde_json::json!({}));
        obj.as_object_mut()
            .expect("checked at parse")
            .insert(name.to_string(), entry_json(entry));
        self.commit(path, new, want)
    }

    /// Remove `name` (absent: nothing changes).
    pub fn remove(&mut self, path: &Path, name: &str) -> anyhow::Result<()> {
        let before = serde_value(path, &self.text, self.dialect)?;
        let new = {
            let p = parse(path, &self.text, self.dialect)?;
            let Some(Value::Object(servers)) = find(&p.root, self.key).map(|s| &s.value) else {
                return Ok(());
            };
            let Some(i) = servers
                .properties
                .iter()
                .position(|x| x.name.as_str() == name)
            else {
                return Ok(());
            };
            remove_prop(&self.text, &p, servers, i)
        };
        let mut want = before;
        if let Some(m) = want.get_mut(self.key).and_then(|s| s.as_object_mut()) {
            m.remove(name);
        }
        self.commit(path, new, want)
    }

    fn commit(&mut self, path: &Path, new: String, want: serde_json::Value) -> anyhow::Result<()> {
        match serde_value(path, &new, self.dialect) {
            Ok(got) if got == want => {
                self.text = new;
                Ok(())
            }
            _ => anyhow::bail!(
                "{}: cannot edit this file safely (the edit would change more than the entry); edit it by hand",
                path.display()
            ),
        }
    }
}

/// The JSON value an entry renders to.
pub fn entry_json(e: &Entry) -> serde_json::Value {
    v_json(&V::Obj(e.clone()))
}

pub(crate) fn v_json(v: &V) -> serde_json::Value {
    match v {
        V::Str(s) => serde_json::Value::String(s.clone()),
        V::Bool(b) => serde_json::Value::Bool(*b),
        V::Int(i) => serde_json::Value::from(*i),
        V::List(l) => serde_json::Value::Array(
            l.iter()
                .map(|s| serde_json::Value::String(s.clone()))
                .collect(),
        ),
        V::Obj(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), v_json(v))).collect())
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `v` as JSON text whose first line continues the current one and whose nested
/// lines are indented from `base` by `unit`.
pub(crate) fn render(v: &V, base: &str, unit: &str, nl: &str) -> String {
    match v {
        V::Obj(o) if o.is_empty() => "{}".into(),
        V::Obj(o) => {
            let inner = format!("{base}{unit}");
            let mut s = String::from("{");
            for (i, (k, v)) in o.iter().enumerate() {
                s.push_str(nl);
                s.push_str(&inner);
                s.push_str(&json_str(k));
                s.push_str(": ");
                s.push_str(&render(v, &inner, unit, nl));
                if i + 1 < o.len() {
                    s.push(',');
                }
            }
            s.push_str(nl);
            s.push_str(base);
            s.push('}');
            s
        }
        V::List(l) => format!(
            "[{}]",
            l.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(", ")
        ),
        other => v_json(other).to_string(),
    }
}

fn newline(text: &str) -> &'static str {
    if text.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    }
}

pub(crate) fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0)
}

/// Whether only whitespace precedes `pos` on its line.
fn own_line(text: &str, pos: usize) -> bool {
    text[line_start(text, pos)..pos]
        .chars()
        .all(|c| c == ' ' || c == '\t')
}

/// The whitespace that starts the line holding `pos`.
fn line_indent(text: &str, pos: usize) -> String {
    let ls = line_start(text, pos);
    text[ls..]
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// The file's indentation step: how far the root's first member is indented
/// (two spaces when that cannot be seen).
fn indent_unit(text: &str, root: &Object) -> String {
    let base = line_indent(text, root.range.start);
    match root.properties.first() {
        Some(p) if own_line(text, p.range.start) => {
            let i = line_indent(text, p.range.start);
            match i.strip_prefix(base.as_str()) {
                Some(u) if !u.is_empty() => u.to_string(),
                _ => "  ".into(),
            }
        }
        _ => "  ".into(),
    }
}

fn next_token<'t, 'a>(
    tokens: &'t [TokenAndRange<'a>],
    pos: usize,
) -> Option<&'t TokenAndRange<'a>> {
    tokens.iter().find(|t| t.range.start >= pos)
}

/// Where a line that follows `pos` on the same line may go: after a comment that
/// ends that line, so the comment stays with what it was written beside.
fn after_line_comment(text: &str, pos: usize) -> usize {
    let end = text[pos..]
        .find('\n')
        .map(|i| pos + i)
        .unwrap_or(text.len());
    let end = if end > pos && text[..end].ends_with('\r') {
        end - 1
    } else {
        end
    };
    let rest = text[pos..end].trim();
    let whole_comment = rest.starts_with("//")
        || (rest.starts_with("/*")
            && rest.ends_with("*/")
            && rest[2..].find("*/") == Some(rest.len() - 4));
    if whole_comment {
        end
    } else {
        pos
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_prop(
    text: &str,
    p: &Parsed,
    obj: &Object,
    key: &str,
    value: &V,
    ci: &str,
    oi: &str,
    unit: &str,
    nl: &str,
) -> String {
    let prop = format!("{}: {}", json_str(key), render(value, ci, unit, nl));
    match obj.properties.last() {
        Some(last) => {
            let end = last.range.end;
            let comma = next_token(&p.tokens, end)
                .filter(|t| matches!(t.token, Token::Comma) && t.range.start < obj.range.end);
            match comma {
                Some(c) => {
                    let pos = after_line_comment(text, c.range.end);
                    format!("{}{nl}{ci}{prop},{}", &text[..pos], &text[pos..])
                }
                None => {
                    let pos = after_line_comment(text, end);
                    format!(
                        "{},{}{nl}{ci}{prop}{}",
                        &text[..end],
                        &text[end..pos],
                        &text[pos..]
                    )
                }
            }
        }
        None => {
            let open = obj.range.start + 1;
            let close = obj.range.end - 1;
            let inner = &text[open..close];
            if inner.contains('\n') {
                let pos = after_line_comment(text, open);
                format!("{}{nl}{ci}{prop}{}", &text[..pos], &text[pos..])
            } else {
                format!("{}{nl}{ci}{prop}{nl}{oi}{}", &text[..open], &text[close..])
            }
        }
    }
}

/// The inverse of `insert_prop`: the property, its line's indentation and the line
/// break before it, and the comma that joined it to its neighbour.
fn remove_prop(text: &str, p: &Parsed, obj: &Object, i: usize) -> String {
    let x = &obj.properties[i];
    let mut start = x.range.start;
    if own_line(text, start) {
        start = line_start(text, start);
        if text[..start].ends_with("\r\n") {
            start -= 2;
        } else if text[..start].ends_with('\n') {
            start -= 1;
        }
    }
    let comma_after = next_token(&p.tokens, x.range.end)
        .filter(|t| matches!(t.token, Token::Comma) && t.range.start < obj.range.end);
    let mut cuts = Vec::new();
    match comma_after {
        Some(c) => cuts.push((start, c.range.end)),
        None => {
            cuts.push((start, x.range.end));
            if i > 0 {
                let prev = &obj.properties[i - 1];
                if let Some(c) = next_token(&p.tokens, prev.range.end)
                    .filter(|t| matches!(t.token, Token::Comma) && t.range.start < x.range.start)
                {
                    cuts.push((c.range.start, c.range.end));
                }
            }
        }
    }
    cuts.sort();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (a, b) in cuts {
        out.push_str(&text[at..a]);
        at = b;
    }
    out.push_str(&text[at..]);
    // The last member gone: an object left with only blank space inside is `{}`.
    if obj.properties.len() == 1 {
        let open = obj.range.start + 1;
        let close_in_out = out[open..].find('}').map(|j| open + j);
        if let Some(close) = close_in_out {
            if out[open..close].trim().is_empty() {
                out.replace_range(open..close, "");
            }
        }
    }
    out
}
