//! Goose's `config.yaml`: the `extensions:` mapping. No Rust crate edits YAML while
//! keeping its comments, so this is a careful edit of the text: the entry's own lines
//! are added, replaced or removed in a block-style `extensions:` mapping at the top
//! level, and nothing else is touched. A shape this does not handle (flow style,
//! tabs, an `extensions` key it cannot find) is refused and the file left as it is.
//! After every edit the result is parsed again and compared with what the edit meant
//! to do.

use super::{Entry, V};
use std::path::Path;

pub const KEY: &str = "extensions";

pub struct YamlDoc {
    text: String,
}

fn to_json(path: &Path, text: &str) -> anyhow::Result<serde_json::Value> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    let v: serde_json::Value = serde_norway::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(1);
        anyhow::anyhow!("{}:{line}: {e}", path.display())
    })?;
    match v {
        serde_json::Value::Object(_) => Ok(v),
        serde_json::Value::Null => Ok(serde_json::json!({})),
        _ => anyhow::bail!(
            "{}:1: the file does not hold a YAML mapping",
            path.display()
        ),
    }
}

/// Lines with their line breaks.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Where the `extensions:` block is: its header line, the first line after it, and
/// the indentation of its members (None: no member yet).
struct Block {
    header: usize,
    end: usize,
    member_indent: Option<usize>,
}

fn block(path: &Path, ls: &[&str]) -> anyhow::Result<Option<Block>> {
    let Some(header) = ls.iter().position(|l| {
        l.strip_prefix(KEY)
            .and_then(|r| r.strip_prefix(':'))
            .is_some_and(blank_or_comment)
    }) else {
        return Ok(None);
    };
    let mut end = header + 1;
    let mut last_content = header + 1;
    let mut member_indent = None;
    while end < ls.len() {
        let l = ls[end];
        if !blank_or_comment(l) {
            if l.starts_with('\t') || l[..l.len() - l.trim_start().len()].contains('\t') {
                anyhow::bail!(
                    "{}:{}: indented with a tab; edit `{KEY}` by hand",
                    path.display(),
                    end + 1
                );
            }
            if indent(l) == 0 {
                break;
            }
            if member_indent.is_none() {
                member_indent = Some(indent(l));
                if l.trim_start().starts_with('-') {
                    anyhow::bail!(
                        "{}:{}: `{KEY}` is a list, not a mapping; edit it by hand",
                        path.display(),
                        end + 1
                    );
                }
            }
            last_content = end + 1;
        }
        end += 1;
    }
    Ok(Some(Block {
        header,
        end: last_content,
        member_indent,
    }))
}

/// The lines `[start, end)` of member `name` of the block.
fn member(ls: &[&str], b: &Block, name: &str) -> Option<(usize, usize)> {
    let mi = b.member_indent?;
    let keys = [
        format!("{name}:"),
        format!("'{name}':"),
        format!("\"{name}\":"),
    ];
    let start = (b.header + 1..b.end).find(|&i| {
        let l = ls[i];
        indent(l) == mi && {
            let t = l.trim();
            keys.iter().any(|k| {
                t.strip_prefix(k.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with(' ') || r.starts_with('#'))
            })
        }
    })?;
    let mut end = start + 1;
    while end < b.end {
        let l = ls[end];
        if l.trim().is_empty() || indent(l) <= mi {
            break;
        }
        end += 1;
    }
    Some((start, end))
}

/// A string as YAML: plain when it cannot be read as anything else (a word, a
/// path, a URL), else double-quoted (JSON's escapes are YAML's).
fn scalar(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./@".contains(c) || c == ':')
        && !s.contains(": ")
        && !s.ends_with(':')
        && !is_keyword(s);
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
}

fn is_keyword(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
    )
}

fn key(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !is_keyword(name);
    if plain {
        name.to_string()
    } else {
        scalar(name)
    }
}

pub(crate) fn render(name: &str, entry: &Entry, mi: usize, nl: &str) -> String {
    let pad = " ".repeat(mi);
    let inner = " ".repeat(mi + 2);
    let mut s = format!("{pad}{}:{nl}", key(name));
    for (k, v) in entry {
        let v = match v {
            V::Str(x) => scalar(x),
            V::Bool(b) => b.to_string(),
            V::Int(i) => i.to_string(),
            V::List(l) => format!(
                "[{}]",
                l.iter().map(|x| scalar(x)).collect::<Vec<_>>().join(", ")
            ),
            V::Obj(o) if o.is_empty() => "{}".into(),
            V::Obj(_) => super::json::v_json(v).to_string(),
        };
        s.push_str(&format!("{inner}{}: {v}{nl}", key(k)));
    }
    s
}

impl YamlDoc {
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<YamlDoc> {
        let v = to_json(path, text)?;
        if let Some(e) = v.get(KEY) {
            if !(e.is_object() || e.is_null()) {
                anyhow::bail!("{}: `{KEY}` is not a mapping", path.display());
            }
            if block(path, &lines(text))?.is_none() {
                anyhow::bail!(
                    "{}: `{KEY}` is not written as a block mapping at the top level; edit it by hand",
                    path.display()
                );
            }
        }
        Ok(YamlDoc {
            text: text.to_string(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn servers(&self, path: &Path) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let v = to_json(path, &self.text)?;
        Ok(match v.get(KEY).and_then(|s| s.as_object()) {
            Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => Vec::new(),
        })
    }

    pub fn upsert(&mut self, path: &Path, name: &str, entry: &Entry) -> anyhow::Result<()> {
        let mut want = to_json(path, &self.text)?;
        let nl = if self.text.contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        let ls = lines(&self.text);
        let new = match block(path, &ls)? {
            None => {
                let mut t = self.text.clone();
                if !t.is_empty() && !t.ends_with('\n') {
                    t.push_str(nl);
                }
                t.push_str(&format!("{KEY}:{nl}"));
                t.push_str(&render(name, entry, 2, nl));
                t
            }
            Some(b) => {
                let mi = b.member_indent.unwrap_or(2);
                let rendered = render(name, entry, mi, nl);
                let (from, to, text) = match member(&ls, &b, name) {
                    Some((s, e)) => (s, e, rendered),
                    None => (b.end, b.end, rendered),
                };
                let mut t: String = ls[..from].concat();
                if !t.is_empty() && !t.ends_with('\n') {
                    t.push_str(nl);
                }
                t.push_str(&text);
                t.push_str(&ls[to..].concat());
                t
            }
        };
        let obj = want.as_object_mut().expect("checked at parse");
        let e = obj.entry(KEY).or_insert_with(|| serde_json::json!({}));
        if e.is_null() {
            *e = serde_json::json!({});
        }
        e.as_object_mut()
            .expect("checked at parse")
            .insert(name.to_string(), super::json::entry_json(entry));
        self.commit(path, new, want)
    }

    pub fn remove(&mut self, path: &Path, name: &str) -> anyhow::Result<()> {
        let mut want = to_json(path, &self.text)?;
        let ls = lines(&self.text);
        let Some(b) = block(path, &ls)? else {
            return Ok(());
        };
        let Some((s, e)) = member(&ls, &b, name) else {
            return Ok(());
        };
        let new = format!("{}{}", ls[..s].concat(), ls[e..].concat());
        if let Some(m) = want.get_mut(KEY).and_then(|s| s.as_object_mut()) {
            m.remove(name);
        }
        // Goose reads an `extensions:` with no members as null.
        if want
            .get(KEY)
            .and_then(|s| s.as_object())
            .is_some_and(|m| m.is_empty())
            && to_json(path, &new)
                .ok()
                .is_some_and(|v| v.get(KEY).is_some_and(|x| x.is_null()))
        {
            want[KEY] = serde_json::Value::Null;
        }
        self.commit(path, new, want)
    }

    fn commit(&mut self, path: &Path, new: String, want: serde_json::Value) -> anyhow::Result<()> {
        match to_json(path, &new) {
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
