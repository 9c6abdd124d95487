//! "Connect to…" on a workload's card: the eight MCP clients Tokenwarden can write an
//! entry for, whether each has its config file on this machine and whether the workload
//! is connected there; connecting or disconnecting one from the window. The edits are
//! those of `tokenwarden connect` / `disconnect` ([`crate::clients`]: only the entry
//! changes, a timestamped backup beside the file, an atomic write keeping its mode),
//! without the terminal's diff and question: the window's click is the answer.
//!
//! Nothing of a client's file reaches the window but its path and what the entry of
//! this workload is (URLs without user info or query).

use crate::clients::{self, ClientKind, Doc, Target, Wanted};
use crate::paths::Paths;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A client's name as people know it.
pub fn label(kind: ClientKind) -> &'static str {
    match kind {
        ClientKind::ClaudeDesktop => "Claude Desktop",
        ClientKind::ClaudeCode => "Claude Code",
        ClientKind::Vscode => "VS Code",
        ClientKind::Cursor => "Cursor",
        ClientKind::Windsurf => "Windsurf",
        ClientKind::GeminiCli => "Gemini CLI",
        ClientKind::Codex => "Codex",
        ClientKind::Goose => "goose",
    }
}

/// One client as "Connect to…" lists it for a workload.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ClientState {
    /// `vscode`, ... (what `connect_client` takes).
    pub client: &'static str,
    pub label: &'static str,
    /// Its user-level config file (`null`: no home directory).
    pub path: Option<String>,
    /// The file exists.
    pub found: bool,
    /// An entry Tokenwarden wrote for this workload is in it.
    pub connected: bool,
    /// An entry of this name Tokenwarden did not write (what it is): connecting is
    /// refused rather than replacing it.
    pub other: Option<String>,
    /// The file cannot be read or parsed (path and line).
    pub error: Option<String>,
}

/// What a connect or disconnect did.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectResult {
    /// In words for the user.
    pub message: String,
    /// Whether the file was written.
    pub wrote: bool,
    pub path: String,
    /// Where the file's earlier bytes were kept (`null`: no file before, or not written).
    pub backup: Option<String>,
    /// The client as it is now.
    pub state: ClientState,
}

/// The workload as a client entry needs it.
pub struct Workload<'a> {
    pub name: &'a str,
    /// Its local proxy's address (`None`: not serving).
    pub local_url: Option<&'a str>,
    /// The config dir, for a stdio entry's `--config-dir`.
    pub paths: &'a Paths,
}

fn state_of(kind: ClientKind, path: Option<&Path>, w: &Workload<'_>) -> ClientState {
    let mut st = ClientState {
        client: kind.name(),
        label: label(kind),
        path: path.map(|p| p.display().to_string()),
        found: false,
        connected: false,
        other: None,
        error: None,
    };
    let Some(path) = path else {
        st.error = Some("no home directory".into());
        return st;
    };
    let text = match clients::read_client_file(path) {
        Ok(Some(t)) => t,
        Ok(None) => return st,
        Err(e) => {
            st.found = path.exists();
            st.error = Some(format!("{e:#}"));
            return st;
        }
    };
    st.found = true;
    let servers = Doc::parse(kind, path, &text).and_then(|d| d.servers(path));
    match servers {
        Ok(list) => {
            if let Some((_, v)) = list.iter().find(|(n, _)| n == w.name) {
                if clients::is_ours(w.name, v, w.local_url) {
                    st.connected = true;
                } else {
                    st.other = Some(describe(v));
                }
            }
        }
        Err(e) => st.error = Some(format!("{e:#}")),
    }
    st
}

/// What a foreign entry is, without user info, query or secrets.
fn describe(v: &serde_json::Value) -> String {
    for k in ["url", "serverUrl", "httpUrl", "uri"] {
        if let Some(u) = v.get(k).and_then(|u| u.as_str()) {
            return format!("an entry for {}", clients::redact_url(u));
        }
    }
    for k in ["command", "cmd"] {
        if let Some(c) = v.get(k).and_then(|c| c.as_str()) {
            let base = c.rsplit(['/', '\\']).next().unwrap_or(c);
            return format!("an entry running {base}");
        }
    }
    "another entry".into()
}

/// Every client, for workload `w` (`path_of`: where a client's file is; the user's
/// files in the app).
pub fn states(
    w: &Workload<'_>,
    path_of: &dyn Fn(ClientKind) -> Option<PathBuf>,
) -> Vec<ClientState> {
    ClientKind::ALL
        .iter()
        .map(|&k| state_of(k, path_of(k).as_deref(), w))
        .collect()
}

/// Parse a client's name as the window sends it.
pub fn kind_of(client: &str) -> Option<ClientKind> {
    ClientKind::ALL.into_iter().find(|k| k.name() == client)
}

/// Connect (`connect`) or disconnect workload `w` in `kind`'s file at `path`.
pub fn change(
    kind: ClientKind,
    path: &Path,
    w: &Workload<'_>,
    connect: bool,
) -> anyhow::Result<ConnectResult> {
    let old = clients::read_client_file(path)?;
    let who = label(kind);
    let (new, notes) = if connect {
        let Some(local) = w.local_url else {
            anyhow::bail!(
                "{} has no local address to connect to (its local proxy is not running)",
                w.name
            );
        };
        let target = if kind.speaks_http() {
            Target::Http(local.to_string())
        } else {
            clients::stdio_target(w.paths, w.name)?
        };
        let wanted = Wanted {
            name: w.name.to_string(),
            target,
            local_url: Some(local.to_string()),
        };
        clients::plan_connect(kind, path, old.as_deref(), &[wanted], false)?
    } else {
        let Some(old) = old.as_deref() else {
            return Ok(ConnectResult {
                message: format!(
                    "{} is not connected to {who}: {} does not exist.",
                    w.name,
                    path.display()
                ),
                wrote: false,
                path: path.display().to_string(),
                backup: None,
                state: state_of(kind, Some(path), w),
            });
        };
        let names = [(w.name.to_string(), w.local_url.map(str::to_string))];
        clients::plan_disconnect(kind, path, old, &names, false)?
    };
    let mut result = ConnectResult {
        message: String::new(),
        wrote: false,
        path: path.display().to_string(),
        backup: None,
        state: state_of(kind, Some(path), w),
    };
    if old.as_deref() == Some(new.as_str()) {
        // Already so, or an entry that is not ours (the note says which).
        let note = notes
            .first()
            .and_then(|n| n.split_once(": "))
            .map(|(_, what)| what.to_string())
            .unwrap_or_else(|| "nothing to change".into());
        result.message = format!("{who}: {} {note}; {} not written.", w.name, path.display());
        return Ok(result);
    }
    if let Some(old) = &old {
        result.backup = Some(
            clients::write_backup(path, old.as_bytes())?
                .display()
                .to_string(),
        );
    }
    clients::write_keeping_mode(path, new.as_bytes())?;
    result.wrote = true;
    result.state = state_of(kind, Some(path), w);
    let done = if connect {
        format!("Connected {} to {who}", w.name)
    } else {
        format!("Disconnected {} from {who}", w.name)
    };
    result.message = match &result.backup {
        Some(b) => format!(
            "{done}: wrote {} (the earlier file is kept as {b}).",
            path.display()
        ),
        None => format!("{done}: wrote {} (a new file).", path.display()),
    };
    tracing::info!(workload = %w.name, client = kind.name(), path = %path.display(), connect, "client config written from the window");
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload<'a>(paths: &'a Paths, local: Option<&'a str>) -> Workload<'a> {
        Workload {
            name: "mcp",
            local_url: local,
            paths,
        }
    }

    #[test]
    fn connect_and_disconnect_vscode_keep_the_rest_and_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().join("cfg"))).unwrap();
        let file = dir.path().join("Code/User/mcp.json");
        let local = "http://127.0.0.1:41234/mcp";
        let w = workload(&paths, Some(local));
        let at = |k: ClientKind| (k == ClientKind::Vscode).then(|| file.clone());
        // No file: listed, not found, not connected.
        let st = states(&w, &at);
        assert_eq!(st.len(), 8);
        let vs = st.iter().find(|s| s.client == "vscode").unwrap();
        assert_eq!((vs.found, vs.connected), (false, false));
        assert_eq!(vs.label, "VS Code");
        let others = st.iter().filter(|s| s.client != "vscode");
        assert!(others
            .clone()
            .all(|s| s.path.is_none() && s.error.is_some()));

        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let before = "{\n  // mine\n  \"servers\": {\n    \"other\": {\"type\": \"http\", \"url\": \"https://x.example/mcp?key=SECRET\"}\n  }\n}\n";
        std::fs::write(&file, before).unwrap();
        let vs = &states(&w, &at)[2];
        assert_eq!((vs.found, vs.connected), (true, false), "{vs:?}");

        let r = change(ClientKind::Vscode, &file, &w, true).unwrap();
        assert!(r.wrote && r.state.connected, "{r:?}");
        let backup = r.backup.clone().unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), before);
        assert!(
            r.message.starts_with("Connected mcp to VS Code: wrote "),
            "{}",
            r.message
        );
        assert!(r.message.contains(&backup), "{}", r.message);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("// mine") && text.contains("key=SECRET"),
            "{text}"
        );
        let v: serde_json::Value =
            jsonc_parser::parse_to_serde_value(&text, &Default::default()).unwrap();
        assert_eq!(v["servers"]["mcp"]["url"], local);
        assert_eq!(v["servers"]["mcp"]["type"], "http");

        // A second connect writes nothing.
        let again = change(ClientKind::Vscode, &file, &w, true).unwrap();
        assert!(!again.wrote && again.backup.is_none(), "{again:?}");
        assert!(
            again.message.contains("already connected"),
            "{}",
            again.message
        );

        let off = change(ClientKind::Vscode, &file, &w, false).unwrap();
        assert!(off.wrote && !off.state.connected, "{off:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    }

    #[test]
    fn an_entry_of_that_name_not_ours_is_left_and_named_without_its_query() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().join("cfg"))).unwrap();
        let file = dir.path().join("mcp.json");
        let before =
            "{\"mcpServers\": {\"mcp\": {\"url\": \"https://u:p@x.example/mcp?key=SECRET\"}}}";
        std::fs::write(&file, before).unwrap();
        let w = workload(&paths, Some("http://127.0.0.1:41234/mcp"));
        let st = state_of(ClientKind::Cursor, Some(&file), &w);
        assert!(!st.connected);
        let other = st.other.unwrap();
        assert!(
            !other.contains("SECRET") && !other.contains("u:p"),
            "{other}"
        );
        let e = change(ClientKind::Cursor, &file, &w, true).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("Tokenwarden did not write it") && !e.contains("SECRET"),
            "{e}"
        );
        let off = change(ClientKind::Cursor, &file, &w, false).unwrap();
        assert!(
            !off.wrote && off.message.contains("left as it is"),
            "{}",
            off.message
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    }

    #[test]
    fn a_broken_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().join("cfg"))).unwrap();
        let file = dir.path().join("mcp.json");
        std::fs::write(&file, "{\n  \"mcpServers\": {,\n").unwrap();
        let w = workload(&paths, Some("http://127.0.0.1:41234/mcp"));
        let st = state_of(ClientKind::Cursor, Some(&file), &w);
        assert!(
            st.found && st.error.as_deref().unwrap_or("").contains("mcp.json:2"),
            "{st:?}"
        );
        assert!(change(ClientKind::Cursor, &file, &w, true).is_err());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\n  \"mcpServers\": {,\n"
        );
        // Without a local address nothing is written.
        let none = workload(&paths, None);
        let good = dir.path().join("new.json");
        assert!(change(ClientKind::Cursor, &good, &none, true).is_err());
        assert!(!good.exists());
    }
}
