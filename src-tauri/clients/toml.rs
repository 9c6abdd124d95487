//! Codex's `config.toml`: `[mcp_servers.NAME]` tables, edited with toml_edit, which
//! keeps every other table, key, comment and blank line as written. After every edit
//! the result is parsed again and compared with what the edit meant to do.

use super::{Entry, V};
use std::path::Path;
use toml_edit::{DocumentMut, Item, Table};

pub const KEY: &str = "mcp_servers";

pub struct TomlDoc {
    doc: DocumentMut,
}

fn to_json(path: &Path, text: &str) -> anyhow::Result<serde_json::Value> {
    let v: toml::Value = toml::from_str(text).map_err(|e| err(path, text, &e))?;
    Ok(serde_json::to_value(v)?)
}

fn err(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let line = e
        .span()
        .map(|s| super::json::line_of(text, s.start))
        .unwrap_or(1);
    anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
}

impl TomlDoc {
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<TomlDoc> {
        to_json(path, text)?;
        let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
            let line = e
                .span()
                .map(|s| super::json::line_of(text, s.start))
                .unwrap_or(1);
            anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
        })?;
        if let Some(item) = doc.get(KEY) {
            if !item.is_table() {
                anyhow::bail!(
                    "{}: `{KEY}` is not written as `[{KEY}.NAME]` tables; edit it by hand",
                    path.display()
                );
            }
        }
        Ok(TomlDoc { doc })
    }

    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    pub fn servers(&self, path: &Path) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let v = to_json(path, &self.text())?;
        Ok(match v.get(KEY).and_then(|s| s.as_object()) {
            Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => Vec::new(),
        })
    }

    pub fn upsert(&mut self, path: &Path, name: &str, entry: &Entry) -> anyhow::Result<()> {
        let mut want = to_json(path, &self.text())?;
        let servers = self.doc.entry(KEY).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        let Some(servers) = servers.as_table_mut() else {
            anyhow::bail!("{}: `{KEY}` is not a table", path.display());
        };
        match servers.get_mut(name) {
            Some(Item::Table(t)) => {
                t.clear();
                fill(t, entry);
            }
            Some(_) => anyhow::bail!(
                "{}: `{KEY}.{name}` is not a table; edit it by hand",
                path.display()
            ),
            None => {
                let mut t = Table::new();
                t.decor_mut().set_prefix("\n");
                fill(&mut t, entry);
                servers.insert(name, Item::Table(t));
            }
        }
        want.as_object_mut()
            .expect("a TOML document is a table")
            .entry(KEY)
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .expect("checked at parse")
            .insert(name.to_string(), super::json::entry_json(entry));
        self.check(path, want)
    }

    pub fn remove(&mut self, path: &Path, name: &str) -> anyhow::Result<()> {
        let mut want = to_json(path, &self.text())?;
        let Some(servers) = self.doc.get_mut(KEY).and_then(|i| i.as_table_mut()) else {
            return Ok(());
        };
        servers.remove(name);
        if let Some(m) = want.get_mut(KEY).and_then(|s| s.as_object_mut()) {
            m.remove(name);
        }
        self.check(path, want)
    }

    fn check(&self, path: &Path, want: serde_json::Value) -> anyhow::Result<()> {
        match to_json(path, &self.text()) {
            Ok(got) if got == want => Ok(()),
            _ => anyhow::bail!(
                "{}: cannot edit this file safely (the edit would change more than the entry); edit it by hand",
                path.display()
            ),
        }
    }
}

fn fill(t: &mut Table, entry: &Entry) {
    for (k, v) in entry {
        t.insert(k, toml_edit::value(value(v)));
    }
}

fn value(v: &V) -> toml_edit::Value {
    match v {
        V::Str(s) => s.as_str().into(),
        V::Bool(b) => (*b).into(),
        V::Int(i) => (*i).into(),
        V::List(l) => {
            let a: toml_edit::Array = l.iter().map(|s| s.as_str()).collect();
            toml_edit::Value::Array(a)
        }
        V::Obj(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, v) in o {
                t.insert(k, value(v));
            }
            toml_edit::Value::InlineTable(t)
        }
    }
}
