//! MCP clients' own config files: `connect` and `disconnect` write or remove the
//! entries that send a client through Tokenwarden, `import` finds the remote servers
//! already there, `client-config NAME --client CLIENT` prints one entry.
//!
//! Per client: where its user-level file is, its format, the key holding servers and
//! the entry Tokenwarden writes (sources in each client's doc comment on
//! [`ClientKind`]). Entries Tokenwarden wrote carry no marker key a client could
//! reject: an entry is ours when its name is the workload's and it reaches that
//! workload's local proxy (`url` / `serverUrl` / `httpUrl` / `uri` equal to its
//! `local_url`) or runs `tokenwarden … stdio NAME`.
//!
//! Every edit keeps the rest of the file as it was (see [`json`], [`toml`],
//! [`yaml`]), shows a unified diff first, asks on a terminal, keeps a timestamped
//! backup with the file's mode, and writes atomically with the file's mode and owner.
//! A file that cannot be parsed is refused, naming the file and line, and left as it
//! is.

pub mod json;
pub mod toml;
pub mod yaml;

use crate::engine::config::{self, Config};
use crate::ops::load_config;
use crate::paths::Paths;
use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// A value in an entry, in the order it is written.
#[derive(Clone, Debug, PartialEq)]
pub enum V {
    Str(String),
    Bool(bool),
    Int(i64),
    List(Vec<String>),
    Obj(Vec<(String, V)>),
}

/// One server entry: its keys in the order they are written.
pub type Entry = Vec<(String, V)>;

/// The MCP clients `connect`, `disconnect` and `import` know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ClientKind {
    /// Claude Desktop: `claude_desktop_config.json` in the app's config dir
    /// (macOS `~/Library/Application Support/Claude/`, Windows `%APPDATA%\Claude\`,
    /// Linux `~/.config/Claude/`), plain JSON, `mcpServers`; the file runs local
    /// stdio commands only (`command`, `args`, `env`), so the entry runs
    /// `tokenwarden stdio NAME`. Source: <https://modelcontextprotocol.io/quickstart/user>.
    ClaudeDesktop,
    /// Claude Code: user scope is top-level `mcpServers` in `~/.claude.json` (in
    /// `$CLAUDE_CONFIG_DIR` when set), plain JSON that Claude Code itself rewrites;
    /// `{"type": "http", "url": …}`, stdio `{"type": "stdio", "command", "args"}`.
    /// Source: <https://code.claude.com/docs/en/mcp>.
    ClaudeCode,
    /// VS Code: the user profile's `mcp.json` (Linux `~/.config/Code/User/`, macOS
    /// `~/Library/Application Support/Code/User/`, Windows `%APPDATA%\Code\User\`),
    /// JSONC, `servers`; `{"type": "http", "url": …}`, stdio
    /// `{"type": "stdio", "command", "args"}`. Source:
    /// <https://code.visualstudio.com/docs/copilot/reference/mcp-configuration>.
    Vscode,
    /// Cursor: `~/.cursor/mcp.json` (every OS), JSON, `mcpServers`; `{"url": …}`
    /// (Cursor tells Streamable HTTP from SSE itself), stdio `command`, `args`.
    /// Source: <https://cursor.com/docs/mcp>.
    Cursor,
    /// Windsurf: `~/.codeium/windsurf/mcp_config.json` (every OS), JSON,
    /// `mcpServers`; remote servers use `serverUrl`, stdio `command`, `args`.
    /// Source: <https://docs.windsurf.com/windsurf/cascade/mcp>.
    Windsurf,
    /// Gemini CLI: `~/.gemini/settings.json` (every OS), JSON with comments,
    /// `mcpServers`; Streamable HTTP is `httpUrl` (`url` is SSE), stdio `command`,
    /// `args`. Source: <https://github.com/google-gemini/gemini-cli/blob/main/docs/tools/mcp-server.md>.
    GeminiCli,
    /// Codex: `~/.codex/config.toml` (`$CODEX_HOME/config.toml` when set), TOML,
    /// `[mcp_servers.NAME]` with `url` (Streamable HTTP) or `command`, `args`.
    /// Source: <https://developers.openai.com/codex/mcp>.
    Codex,
    /// goose: `~/.config/goose/config.yaml` (Windows
    /// `%APPDATA%\Block\goose\config\config.yaml`), YAML, `extensions:`;
    /// `{enabled, type: streamable_http, name, description, uri, timeout}`, stdio
    /// `{type: stdio, cmd, args}`. Source:
    /// <https://block.github.io/goose/docs/guides/config-files>.
    Goose,
}

/// How a client's file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json(&'static str, json::Dialect),
    Toml,
    Yaml,
}

/// What a client's entry runs or reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The workload's local proxy (Streamable HTTP).
    Http(String),
    /// `tokenwarden [--config-dir DIR] stdio NAME`.
    Stdio { command: String, args: Vec<String> },
}

impl ClientKind {
    pub const ALL: [ClientKind; 8] = [
        ClientKind::ClaudeDesktop,
        ClientKind::ClaudeCode,
        ClientKind::Vscode,
        ClientKind::Cursor,
        ClientKind::Windsurf,
        ClientKind::GeminiCli,
        ClientKind::Codex,
        ClientKind::Goose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClientKind::ClaudeDesktop => "claude-desktop",
            ClientKind::ClaudeCode => "claude-code",
            ClientKind::Vscode => "vscode",
            ClientKind::Cursor => "cursor",
            ClientKind::Windsurf => "windsurf",
            ClientKind::GeminiCli => "gemini-cli",
            ClientKind::Codex => "codex",
            ClientKind::Goose => "goose",
        }
    }

    pub fn format(self) -> Format {
        use json::Dialect::*;
        match self {
            ClientKind::ClaudeDesktop | ClientKind::ClaudeCode => {
                Format::Json("mcpServers", Strict)
            }
            ClientKind::Vscode => Format::Json("servers", Jsonc),
            ClientKind::Cursor | ClientKind::Windsurf => Format::Json("mcpServers", Strict),
            ClientKind::GeminiCli => Format::Json("mcpServers", Jsonc),
            ClientKind::Codex => Format::Toml,
            ClientKind::Goose => Format::Yaml,
        }
    }

    /// Whether the client's file can name a Streamable HTTP server. Where it can, the
    /// entry reaches the local proxy directly (one hop less than a stdio bridge; the
    /// proxy never answers 401, so the client never starts an OAuth flow of its own).
    pub fn speaks_http(self) -> bool {
        self != ClientKind::ClaudeDesktop
    }

    /// The client's user-level file on this system.
    pub fn default_path(self) -> Option<PathBuf> {
        let base = directories::BaseDirs::new()?;
        let home = base.home_dir();
        let env_dir = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Some(match self {
            ClientKind::ClaudeDesktop => {
                base.config_dir().join("Claude/claude_desktop_config.json")
            }
            ClientKind::ClaudeCode => env_dir("CLAUDE_CONFIG_DIR")
                .unwrap_or_else(|| home.to_path_buf())
                .join(".claude.json"),
            ClientKind::Vscode => base.config_dir().join("Code/User/mcp.json"),
            ClientKind::Cursor => home.join(".cursor/mcp.json"),
            ClientKind::Windsurf => home.join(".codeium/windsurf/mcp_config.json"),
            ClientKind::GeminiCli => home.join(".gemini/settings.json"),
            ClientKind::Codex => env_dir("CODEX_HOME")
                .unwrap_or_else(|| home.join(".codex"))
                .join("config.toml"),
            ClientKind::Goose if cfg!(windows) => {
                base.config_dir().join("Block/goose/config/config.yaml")
            }
            ClientKind::Goose => env_dir("XDG_CONFIG_HOME")
                .unwrap_or_else(|| home.join(".config"))
                .join("goose/config.yaml"),
        })
    }

    /// The entry this client needs for `target`.
    pub fn entry(self, name: &str, target: &Target) -> Entry {
        let s = |k: &str, v: &str| (k.to_string(), V::Str(v.to_string()));
        match (self, target) {
            (ClientKind::Goose, Target::Http(url)) => vec![
                ("enabled".into(), V::Bool(true)),
                s("type", "streamable_http"),
                s("name", name),
                s("description", &format!("{name} through Tokenwarden")),
                s("uri", url),
                ("timeout".into(), V::Int(300)),
            ],
            (ClientKind::Goose, Target::Stdio { command, args }) => vec![
                ("enabled".into(), V::Bool(true)),
                s("type", "stdio"),
                s("name", name),
                s("description", &format!("{name} through Tokenwarden")),
                s("cmd", command),
                ("args".into(), V::List(args.clone())),
                ("timeout".into(), V::Int(300)),
            ],
            (ClientKind::ClaudeCode | ClientKind::Vscode, Target::Http(url)) => {
                vec![s("type", "http"), s("url", url)]
            }
            (ClientKind::ClaudeCode | ClientKind::Vscode, Target::Stdio { command, args }) => vec![
                s("type", "stdio"),
                s("command", command),
                ("args".into(), V::List(args.clone())),
            ],
            (ClientKind::Windsurf, Target::Http(url)) => vec![s("serverUrl", url)],
            (ClientKind::GeminiCli, Target::Http(url)) => vec![s("httpUrl", url)],
            (
                ClientKind::Cursor | ClientKind::Codex | ClientKind::ClaudeDesktop,
                Target::Http(url),
            ) => {
                vec![s("url", url)]
            }
            (_, Target::Stdio { command, args }) => vec![
                s("command", command),
                ("args".into(), V::List(args.clone())),
            ],
        }
    }
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const URL_KEYS: [&str; 4] = ["url", "serverUrl", "httpUrl", "uri"];

fn str_of<'a>(v: &'a serde_json::Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_str()))
}

fn args_of(v: &serde_json::Value) -> Vec<String> {
    v.get("args")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The file name of a command without `.exe`.
fn command_stem(c: &str) -> String {
    let base = c.rsplit(['/', '\\']).next().unwrap_or(c);
    base.strip_suffix(".exe").unwrap_or(base).to_string()
}

/// Whether `v` runs `tokenwarden … stdio NAME`.
fn is_our_stdio(name: &str, v: &serde_json::Value) -> bool {
    let Some(cmd) = str_of(v, &["command", "cmd"]) else {
        return false;
    };
    let args = args_of(v);
    command_stem(cmd) == "tokenwarden"
        && args.len() >= 2
        && args[args.len() - 2] == "stdio"
        && args[args.len() - 1] == name
}

/// Whether entry `v` named `name` is one Tokenwarden wrote: it runs our stdio bridge
/// for `name`, or reaches `local_url` (the workload's local proxy).
pub fn is_ours(name: &str, v: &serde_json::Value, local_url: Option<&str>) -> bool {
    is_our_stdio(name, v) || local_url.is_some_and(|u| str_of(v, &URL_KEYS).is_some_and(|x| x == u))
}

/// A file being edited.
pub enum Doc {
    Json(json::JsonDoc),
    Toml(toml::TomlDoc),
    Yaml(yaml::YamlDoc),
}

impl Doc {
    pub fn parse(kind: ClientKind, path: &Path, text: &str) -> anyhow::Result<Doc> {
        Ok(match kind.format() {
            Format::Json(key, d) => Doc::Json(json::JsonDoc::parse(path, text, key, d)?),
            Format::Toml => Doc::Toml(toml::TomlDoc::parse(path, text)?),
            Format::Yaml => Doc::Yaml(yaml::YamlDoc::parse(path, text)?),
        })
    }

    pub fn text(&self) -> String {
        match self {
            Doc::Json(d) => d.text().to_string(),
            Doc::Toml(d) => d.text(),
            Doc::Yaml(d) => d.text().to_string(),
        }
    }

    pub fn servers(&self, path: &Path) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        match self {
            Doc::Json(d) => d.servers(path),
            Doc::Toml(d) => d.servers(path),
            Doc::Yaml(d) => d.servers(path),
        }
    }

    pub fn upsert(&mut self, path: &Path, name: &str, e: &Entry) -> anyhow::Result<()> {
        match self {
            Doc::Json(d) => d.upsert(path, name, e),
            Doc::Toml(d) => d.upsert(path, name, e),
            Doc::Yaml(d) => d.upsert(path, name, e),
        }
    }

    pub fn remove(&mut self, path: &Path, name: &str) -> anyhow::Result<()> {
        match self {
            Doc::Json(d) => d.remove(path, name),
            Doc::Toml(d) => d.remove(path, name),
            Doc::Yaml(d) => d.remove(path, name),
        }
    }
}

/// One workload to connect: its name, what the entry reaches, and its local proxy's
/// URL (to recognise an HTTP entry of ours).
#[derive(Clone, Debug)]
pub struct Wanted {
    pub name: String,
    pub target: Target,
    pub local_url: Option<String>,
}

/// The new text of a client's file with `wanted` connected, and a line per name
/// saying what happens to it. An entry of the same name that Tokenwarden did not
/// write is refused unless `replace`. `old` is `None` for a missing file.
pub fn plan_connect(
    kind: ClientKind,
    path: &Path,
    old: Option<&str>,
    wanted: &[Wanted],
    replace: bool,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut doc = Doc::parse(kind, path, old.unwrap_or(""))?;
    let mut notes = Vec::new();
    for w in wanted {
        let entry = kind.entry(&w.name, &w.target);
        let want = json::entry_json(&entry);
        let servers = doc.servers(path)?;
        match servers.iter().find(|(n, _)| n == &w.name).map(|(_, v)| v) {
            None => {
                doc.upsert(path, &w.name, &entry)?;
                notes.push(format!("{}: added", w.name));
            }
            Some(v) if *v == want => notes.push(format!("{}: already connected", w.name)),
            Some(v) if is_ours(&w.name, v, w.local_url.as_deref()) => {
                doc.upsert(path, &w.name, &entry)?;
                notes.push(format!("{}: updated", w.name));
            }
            Some(v) if replace => {
                doc.upsert(path, &w.name, &entry)?;
                notes.push(format!(
                    "{}: replaced (it was {})",
                    w.name,
                    describe(v)
                ));
            }
            Some(v) => anyhow::bail!(
                "{}: an entry named `{}` is already there and Tokenwarden did not write it ({}); pass --replace to replace it, or pick another workload name",
                path.display(),
                w.name,
                describe(v)
            ),
        }
    }
    let new = doc.text();
    Ok((new, notes))
}

/// The new text with Tokenwarden's entries for `names` removed (all of ours when
/// `names` is empty); other entries of those names are left, with a note.
pub fn plan_disconnect(
    kind: ClientKind,
    path: &Path,
    old: &str,
    names: &[(String, Option<String>)],
    all: bool,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut doc = Doc::parse(kind, path, old)?;
    let mut notes = Vec::new();
    let servers = doc.servers(path)?;
    for (n, local) in names {
        match servers.iter().find(|(x, _)| x == n).map(|(_, v)| v) {
            Some(v) if is_ours(n, v, local.as_deref()) => {
                doc.remove(path, n)?;
                notes.push(format!("{n}: removed"));
            }
            Some(v) if !all => notes.push(format!(
                "{n}: left as it is (Tokenwarden did not write it: {})",
                describe(v)
            )),
            Some(_) => {}
            None if !all => notes.push(format!("{n}: not connected")),
            None => {}
        }
    }
    if all {
        // Stdio entries of ours whose workload is gone are ours too.
        for (n, v) in &servers {
            if !names.iter().any(|(x, _)| x == n) && is_our_stdio(n, v) {
                doc.remove(path, n)?;
                notes.push(format!("{n}: removed"));
            }
        }
    }
    Ok((doc.text(), notes))
}

/// A short description of an entry (URL without its query, or the command).
fn describe(v: &serde_json::Value) -> String {
    if let Some(u) = str_of(v, &URL_KEYS) {
        return format!("url {}", redact_url(u));
    }
    if let Some(c) = str_of(v, &["command", "cmd"]) {
        return format!("runs {}", command_stem(c));
    }
    "another kind of entry".into()
}

/// A URL as it may be shown: without user info, query or fragment (they can hold
/// keys).
pub fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut p) => {
            let had_query = p.query().is_some() || p.fragment().is_some();
            let _ = p.set_username("");
            let _ = p.set_password(None);
            p.set_query(None);
            p.set_fragment(None);
            let mut s = p.to_string();
            if had_query {
                s.push_str("?…");
            }
            s
        }
        Err(_) => "(not a URL)".into(),
    }
}

// ---------------------------------------------------------------------------------
// Reading, showing, asking, backing up, writing.

/// Largest client file read (Claude Code's `~/.claude.json` grows with history).
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// The file's text, `None` when it does not exist. Refuses what is not a regular
/// UTF-8 file of sane size, naming it.
pub fn read_client_file(path: &Path) -> anyhow::Result<Option<String>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    if meta.len() > MAX_FILE {
        anyhow::bail!("{} is larger than {MAX_FILE} bytes", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = json::line_of(
            &String::from_utf8_lossy(&e.as_bytes()[..e.utf8_error().valid_up_to()]),
            usize::MAX,
        );
        anyhow::anyhow!("{}:{line}: not UTF-8 text", path.display())
    })?;
    Ok(Some(text))
}

/// A unified diff of `old` (None: no file) to `new`.
pub fn diff(path: &Path, old: Option<&str>, new: &str) -> String {
    let a = match old {
        Some(_) => path.display().to_string(),
        None => "/dev/null".into(),
    };
    let b = path.display().to_string();
    similar::TextDiff::from_lines(old.unwrap_or(""), new)
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string()
}

/// The backup's name beside `path`: `NAME.tokenwarden-backup-YYYYmmddTHHMMSSZ`.
pub fn backup_path(path: &Path, now: time::OffsetDateTime) -> PathBuf {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = now
        .to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.tokenwarden-backup-{stamp}"))
}

/// Copy `path`'s `bytes` to a new backup beside it with the same mode; returns its
/// path.
pub fn write_backup(path: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let base = backup_path(path, time::OffsetDateTime::now_utc());
    let meta = std::fs::metadata(path)?;
    for i in 1..100 {
        let p = if i == 1 {
            base.clone()
        } else {
            PathBuf::from(format!("{}-{i}", base.display()))
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = match opts.open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot write the backup {}", p.display()))
            }
        };
        f.write_all(bytes)?;
        f.set_permissions(meta.permissions())?;
        f.sync_all()?;
        return Ok(p);
    }
    anyhow::bail!("cannot find a free backup name beside {}", path.display())
}

/// Replace `path` with `bytes` atomically (a temp file beside it, fsync, rename),
/// keeping an existing file's mode and owner (a new file gets 0600). A link is
/// followed: the file it points to is replaced, the link stays.
pub fn write_keeping_mode(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)
            .with_context(|| format!("cannot follow the link {}", path.display()))?,
        _ => path.to_path_buf(),
    };
    let old = std::fs::metadata(&path).ok();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::engine::config::write_atomic_with(&path, bytes, 0o600, |f| {
        if let Some(m) = &old {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                // Keep the owner when root edits another user's file (a no-op otherwise).
                let _ = std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid()));
            }
            f.set_permissions(m.permissions())?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

/// How a change is carried out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mode {
    /// Show the diff only.
    pub dry_run: bool,
    /// Write without asking.
    pub yes: bool,
}

/// Show the diff of `path` from `old` to `new`, ask when stdin is a terminal (unless
/// `yes`), then back up and write. Returns whether it wrote.
pub fn apply(path: &Path, old: Option<&str>, new: &str, mode: Mode) -> anyhow::Result<bool> {
    if old == Some(new) {
        return Ok(false);
    }
    // A closed stdout (`| head`) must not stop the write the user asked for.
    let mut out = std::io::stdout();
    let _ = out.write_all(diff(path, old, new).as_bytes());
    let _ = out.flush();
    if mode.dry_run {
        eprintln!("(dry run: {} not written)", path.display());
        return Ok(false);
    }
    if !mode.yes && std::io::stdin().is_terminal() {
        eprint!("Write {}? [y/N] ", path.display());
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
            eprintln!("Nothing written.");
            return Ok(false);
        }
    }
    if let Some(old) = old {
        let b = write_backup(path, old.as_bytes())?;
        eprintln!("Backup: {}", b.display());
    }
    write_keeping_mode(path, new.as_bytes())?;
    eprintln!("Wrote {}", path.display());
    Ok(true)
}

// ---------------------------------------------------------------------------------
// The commands.

/// The local proxy's address of workload `name`: the running daemon's, else from the
/// config (a port is chosen and written to workloads.toml now if none was yet).
pub async fn local_url(paths: &Paths, cfg: &Config, name: &str) -> anyhow::Result<String> {
    let local = crate::ops::local_url(paths, cfg, name, &crate::daemon::Daemon(paths))
        .await
        .map_err(crate::ops::OpsError::into_anyhow)?;
    if let Some(e) = &local.proxy_error {
        eprintln!("warning: {e}");
    }
    Ok(local.url)
}

/// `tokenwarden [--config-dir DIR] stdio NAME` by the absolute path of this program;
/// `--config-dir` when the config dir is not the default one.
pub fn stdio_target(paths: &Paths, name: &str) -> anyhow::Result<Target> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let mut args = Vec::new();
    let default = Paths::resolve(None).ok().map(|p| p.config_dir);
    if default.as_ref() != Some(&paths.config_dir) {
        args.push("--config-dir".to_string());
        args.push(paths.config_dir.display().to_string());
    }
    args.push("stdio".into());
    args.push(name.into());
    Ok(Target::Stdio {
        command: exe.display().to_string(),
        args,
    })
}

/// What `client`'s entry for `name` reaches: a stdio bridge where the client has no
/// HTTP entries (or `stdio` asks for one), else the local proxy.
pub async fn wanted(
    paths: &Paths,
    cfg: &Config,
    client: ClientKind,
    name: &str,
    stdio: bool,
) -> anyhow::Result<Wanted> {
    let local = local_url(paths, cfg, name).await?;
    let target = if stdio || !client.speaks_http() {
        stdio_target(paths, name)?
    } else {
        Target::Http(local.clone())
    };
    Ok(Wanted {
        name: name.to_string(),
        target,
        local_url: Some(local),
    })
}

fn file_of(client: ClientKind, file: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match file {
        Some(f) => Ok(f),
        None => client.default_path().ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find {client}'s config file (no home directory); pass --file PATH"
            )
        }),
    }
}

fn names_or_all(cfg: &Config, names: Vec<String>, all: bool) -> anyhow::Result<Vec<String>> {
    if all {
        return Ok(cfg
            .workloads
            .iter()
            .filter(|w| w.url.is_some())
            .map(|w| w.name.clone())
            .collect());
    }
    if names.is_empty() {
        anyhow::bail!("name the workloads to connect, or pass --all");
    }
    for n in &names {
        crate::ops::workload(cfg, n)?;
    }
    Ok(names)
}

/// `connect CLIENT NAME...|--all`.
#[allow(clippy::too_many_arguments)]
pub async fn connect(
    paths: &Paths,
    client: ClientKind,
    names: Vec<String>,
    all: bool,
    file: Option<PathBuf>,
    replace: bool,
    stdio: bool,
    mode: Mode,
) -> anyhow::Result<()> {
    let cfg = load_config(paths)?;
    let names = names_or_all(&cfg, names, all)?;
    if names.is_empty() {
        eprintln!("No workload with a remote URL to connect.");
        return Ok(());
    }
    let path = file_of(client, file)?;
    let old = read_client_file(&path)?;
    // Parse first: a broken file is refused before any port is chosen.
    Doc::parse(client, &path, old.as_deref().unwrap_or(""))?;
    let mut want = Vec::new();
    for n in &names {
        want.push(wanted(paths, &cfg, client, n, stdio).await?);
    }
    let (new, notes) = plan_connect(client, &path, old.as_deref(), &want, replace)?;
    for n in &notes {
        eprintln!("{client}: {n}");
    }
    if old.as_deref() == Some(new.as_str()) {
        eprintln!("{} is already connected; nothing to write.", path.display());
        return Ok(());
    }
    apply(&path, old.as_deref(), &new, mode)?;
    Ok(())
}

/// `disconnect CLIENT NAME...|--all`.
pub async fn disconnect(
    paths: &Paths,
    client: ClientKind,
    names: Vec<String>,
    all: bool,
    file: Option<PathBuf>,
    mode: Mode,
) -> anyhow::Result<()> {
    let cfg = load_config(paths)?;
    let names = names_or_all(&cfg, names, all)?;
    let path = file_of(client, file)?;
    let Some(old) = read_client_file(&path)? else {
        eprintln!("{} does not exist; nothing to remove.", path.display());
        return Ok(());
    };
    Doc::parse(client, &path, &old)?;
    let mut list = Vec::new();
    for n in names {
        // The local URL as configured; no port is chosen for a disconnect.
        let local = match cfg.workload(&n) {
            Some(w) => match (&w.url, w.listen_port) {
                (Some(u), Some(p)) if p != 0 => Some(crate::engine::proxy::local_url(
                    std::net::SocketAddr::from(([127, 0, 0, 1], p)),
                    u,
                    crate::engine::proxy::path_secret_for(&paths.config_file, &n)
                        .ok()
                        .flatten()
                        .as_ref(),
                )),
                _ => None,
            },
            None => None,
        };
        list.push((n, local));
    }
    let (new, notes) = plan_disconnect(client, &path, &old, &list, all)?;
    for n in &notes {
        eprintln!("{client}: {n}");
    }
    if new == old {
        eprintln!("Nothing to remove from {}.", path.display());
        return Ok(());
    }
    apply(&path, Some(&old), &new, mode)?;
    Ok(())
}

/// The entry alone, as it goes into `client`'s file.
pub fn entry_text(client: ClientKind, name: &str, target: &Target) -> String {
    let entry = client.entry(name, target);
    match client.format() {
        Format::Json(..) => format!(
            "{}: {}",
            serde_json::to_string(name).expect("a string serializes"),
            json::render(&V::Obj(entry), "", "  ", "\n")
        ),
        Format::Yaml => yaml::render(name, &entry, 0, "\n").trim_end().to_string(),
        Format::Toml => {
            let path = Path::new("entry");
            let mut doc = Doc::parse(client, path, "").expect("an empty file parses");
            doc.upsert(path, name, &entry)
                .expect("an entry fits an empty file");
            doc.text().trim().to_string()
        }
    }
}

/// `client-config NAME --client CLIENT`.
pub async fn client_config(
    paths: &Paths,
    name: &str,
    client: ClientKind,
    stdio: bool,
) -> anyhow::Result<()> {
    let cfg = load_config(paths)?;
    let w = wanted(paths, &cfg, client, name, stdio).await?;
    println!("{}", entry_text(client, name, &w.target));
    Ok(())
}

// ---------------------------------------------------------------------------------
// Import.

/// A remote server found in a client's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub client: ClientKind,
    pub path: PathBuf,
    pub name: String,
    pub url: String,
    /// How the client reaches it today: `http`, `sse` or `mcp-remote`.
    pub how: &'static str,
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// The remote servers in one client file: URL entries and stdio entries running
/// `mcp-remote URL`. Tokenwarden's own entries (its stdio bridge, or a URL on
/// 127.0.0.1 at one of `our_ports`, the workloads' local proxies) are left out.
pub fn find_remote(
    client: ClientKind,
    path: &Path,
    servers: &[(String, serde_json::Value)],
    our_ports: &[u16],
) -> Vec<Found> {
    let remote_url = |s: &str| -> Option<url::Url> {
        let u = url::Url::parse(s).ok()?;
        let ours = is_loopback(&u) && u.port().is_some_and(|p| our_ports.contains(&p));
        (matches!(u.scheme(), "http" | "https") && !ours).then_some(u)
    };
    let mut out = Vec::new();
    for (name, v) in servers {
        if is_our_stdio(name, v) {
            continue;
        }
        let typ = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if let Some(u) = str_of(v, &URL_KEYS) {
            let Some(u) = remote_url(u) else { continue };
            // Gemini CLI's `url` is SSE (`httpUrl` is Streamable HTTP).
            let sse = typ == "sse" || (client == ClientKind::GeminiCli && v.get("url").is_some());
            out.push(Found {
                client,
                path: path.to_path_buf(),
                name: name.clone(),
                url: u.to_string(),
                how: if sse { "sse" } else { "http" },
            });
            continue;
        }
        let Some(cmd) = str_of(v, &["command", "cmd"]) else {
            continue;
        };
        let args = args_of(v);
        let mut words = std::iter::once(cmd.to_string()).chain(args.iter().cloned());
        let runs_mcp_remote = words.any(|w| {
            let s = command_stem(&w);
            s == "mcp-remote" || s.starts_with("mcp-remote@")
        });
        if !runs_mcp_remote {
            continue;
        }
        // The URL is the first argument after mcp-remote that is one.
        let all: Vec<String> = std::iter::once(cmd.to_string()).chain(args_of(v)).collect();
        let at = all
            .iter()
            .position(|w| {
                let s = command_stem(w);
                s == "mcp-remote" || s.starts_with("mcp-remote@")
            })
            .unwrap_or(0);
        if let Some(u) = all[at + 1..].iter().find_map(|w| remote_url(w.as_str())) {
            out.push(Found {
                client,
                path: path.to_path_buf(),
                name: name.clone(),
                url: u.to_string(),
                how: "mcp-remote",
            });
        }
    }
    out
}

/// What `import` does with one server found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Add it as a workload of this name.
    Add,
    /// A workload of this name already reaches this URL: only the entries change.
    Known,
    /// Left alone, with the reason.
    Skip(String),
}

fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Decide, per server found, whether it becomes a workload: one workload per name;
/// a name that is already a workload for another URL, or not a valid workload name,
/// is skipped with a note.
pub fn decide(cfg: &Config, found: &[Found]) -> Vec<(Found, Decision)> {
    let mut out: Vec<(Found, Decision)> = Vec::new();
    for f in found {
        let d = if let Err(e) = config::validate_name(&f.name) {
            Decision::Skip(format!("not a workload name: {e}"))
        } else if let Some(w) = cfg.workload(&f.name) {
            match &w.url {
                Some(u) if same_url(u.as_str(), &f.url) => Decision::Known,
                _ => Decision::Skip(format!(
                    "a workload named `{}` already exists for another server",
                    f.name
                )),
            }
        } else if let Some((g, _)) = out
            .iter()
            .find(|(g, d)| g.name == f.name && *d == Decision::Add)
        {
            if same_url(&g.url, &f.url) {
                Decision::Known
            } else {
                Decision::Skip(format!(
                    "`{}` names another server in {} ({})",
                    f.name,
                    g.client,
                    redact_url(&g.url)
                ))
            }
        } else {
            Decision::Add
        };
        out.push((f.clone(), d));
    }
    out
}

/// `import [CLIENT...]`.
pub async fn import(
    paths: &Paths,
    clients: Vec<ClientKind>,
    mode: Mode,
    no_browser: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let mut kinds = if clients.is_empty() {
        ClientKind::ALL.to_vec()
    } else {
        clients
    };
    kinds.dedup();
    let cfg = load_config(paths)?;
    let our_ports: Vec<u16> = cfg.workloads.iter().filter_map(|w| w.listen_port).collect();
    let mut found = Vec::new();
    let mut looked = Vec::new();
    for k in kinds {
        let Some(path) = k.default_path() else {
            continue;
        };
        let text = match read_client_file(&path) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("{k}: skipped: {e:#}");
                continue;
            }
        };
        looked.push(path.display().to_string());
        match Doc::parse(k, &path, &text).and_then(|d| d.servers(&path)) {
            Ok(s) => found.extend(find_remote(k, &path, &s, &our_ports)),
            Err(e) => eprintln!("{k}: skipped (left as it is): {e:#}"),
        }
    }
    if found.is_empty() {
        eprintln!(
            "No remote MCP servers found{}.",
            if looked.is_empty() {
                " (no client config file exists)".to_string()
            } else {
                format!(" in {}", looked.join(", "))
            }
        );
        return Ok(());
    }
    let plan = decide(&cfg, &found);
    eprintln!("Found {} remote server entries:", plan.len());
    for (f, d) in &plan {
        eprintln!(
            "  {:<20} {:<15} {:<11} {}  -> {}",
            f.name,
            f.client.name(),
            f.how,
            redact_url(&f.url),
            match d {
                Decision::Add => "add as a workload".to_string(),
                Decision::Known => "already a workload".to_string(),
                Decision::Skip(why) => format!("skip: {why}"),
            }
        );
    }
    if mode.dry_run {
        eprintln!("(dry run: nothing added or written)");
        return Ok(());
    }
    let mut ready: Vec<String> = plan
        .iter()
        .filter(|(_, d)| *d == Decision::Known)
        .map(|(f, _)| f.name.clone())
        .collect();
    for (f, d) in &plan {
        if *d != Decision::Add || ready.contains(&f.name) {
            continue;
        }
        eprintln!("Adding `{}` ({})...", f.name, redact_url(&f.url));
        let args = crate::ops::AddArgs {
            name: f.name.clone(),
            url: Some(f.url.clone()),
            ..Default::default()
        };
        if let Err(e) = crate::ops::add_workload(paths, args, &|l| eprintln!("  {l}")).await {
            eprintln!("  could not add `{}`: {e:#}", f.name);
            continue;
        }
        crate::daemon::reload_config(paths).await?;
        if let Err(e) = crate::cli::login(paths, &f.name, no_browser, timeout).await {
            eprintln!(
                "  `{}` was added but not signed in ({e:#}); log in later with `tokenwarden login {}`",
                f.name, f.name
            );
        }
        ready.push(f.name.clone());
    }
    // Then each file's entries go through Tokenwarden, file by file.
    let cfg = load_config(paths)?;
    let mut files: Vec<(ClientKind, PathBuf)> = Vec::new();
    for (f, _) in plan.iter().filter(|(f, _)| ready.contains(&f.name)) {
        if !files.contains(&(f.client, f.path.clone())) {
            files.push((f.client, f.path.clone()));
        }
    }
    for (client, path) in files {
        let names: Vec<&String> = plan
            .iter()
            .filter(|(f, _)| f.client == client && f.path == path && ready.contains(&f.name))
            .map(|(f, _)| &f.name)
            .collect();
        let mut want = Vec::new();
        for n in names {
            want.push(wanted(paths, &cfg, client, n, false).await?);
        }
        let old = read_client_file(&path)?;
        let result =
            plan_connect(client, &path, old.as_deref(), &want, true).and_then(|(new, notes)| {
                for n in &notes {
                    eprintln!("{client}: {n}");
                }
                apply(
                    &path,
                    old.as_deref(),
                    &new,
                    Mode {
                        dry_run: false,
                        ..mode
                    },
                )
            });
        if let Err(e) = result {
            eprintln!("{client}: not rewritten: {e:#}");
        }
    }
    Ok(())
}
