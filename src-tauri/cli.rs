//! The command line. With no subcommand: the desktop app (when built with the
//! `desktop` feature). Everything else talks to the running daemon over the control
//! socket, or works directly on the config and the secret store when none runs.

use crate::clients::ClientKind;
use crate::control::{Client, Request};
use crate::daemon::{reload_config, reload_tokens, remote, Daemon};
use crate::engine::config::{self, Config, WorkloadConfig};
use crate::engine::status::WorkloadStatus;
use crate::ops::{load_config, open_browser, AddArgs};
use crate::paths::Paths;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(Parser, Debug)]
#[command(
    name = "tokenwarden",
    version,
    about = "Keeps OAuth-backed remote workloads authenticated through VPN drops, sleep and issuer outages"
)]
pub struct Cli {
    /// Configuration directory (workloads.toml, state, control socket).
    #[arg(long, env = "TOKENWARDEN_CONFIG_DIR", global = true)]
    pub config_dir: Option<PathBuf>,
    /// The desktop app (no subcommand): start in the tray without opening the window,
    /// as the start-at-login entry does.
    #[arg(long)]
    pub hidden: bool,
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// Run the engine and the control socket without a GUI.
    Daemon,
    /// Show the status of every workload, or of the named ones.
    ///
    /// With names, the exit code says how they are (the worst of them): 0 running,
    /// 3 retrying, 4 unauthenticated, 5 stopped, 1 a name that is not configured.
    #[command(
        after_help = "Examples:\n  tokenwarden status\n  tokenwarden status github-mcp || echo \"needs attention\"\n  tokenwarden status --json | jq '.[] | select(.status != \"running\")'"
    )]
    Status {
        /// Only these workloads (and an exit code for them).
        names: Vec<String>,
        /// One JSON array, one object per workload.
        #[arg(long)]
        json: bool,
    },
    /// Print status changes as they happen (from the running daemon).
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Attempt a refresh now ("Retry now"), overriding any wait.
    Retry {
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Sign in in the browser (authorization code + PKCE) and store the tokens.
    Login {
        /// The workload's name.
        name: String,
        /// Print the authorization URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// How long to wait for the browser's callback.
        #[arg(long, default_value = "5m")]
        timeout: humantime::Duration,
    },
    /// Forget a workload's tokens.
    Logout {
        /// The workload's name.
        name: String,
    },
    /// Add a workload to workloads.toml, then log in. With --url alone, everything
    /// else is discovered (RFC 9728, RFC 8414) and a client is registered (RFC 7591).
    Add {
        /// The workload's name.
        name: String,
        /// The protected resource (a remote MCP server's URL). Without
        /// --token-endpoint the authorization server is discovered from it; without
        /// --client-id a client is registered there.
        #[arg(long)]
        url: Option<String>,
        /// The token endpoint (no discovery then).
        #[arg(long)]
        token_endpoint: Option<String>,
        /// The authorization endpoint for the browser sign-in (no discovery then).
        #[arg(long)]
        authorization_endpoint: Option<String>,
        /// A client ID registered at the authorization server (no registration then).
        #[arg(long)]
        client_id: Option<String>,
        /// The URL of a Client ID Metadata Document you host (`tokenwarden
        /// client-metadata` prints it), used as the client id where the authorization
        /// server takes them (default: `[registration] client_metadata_url`).
        #[arg(long)]
        client_metadata_url: Option<String>,
        /// A scope to request (repeatable; default with --url: what the server asks for).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An extra trust root (PEM) for TLS-inspecting corporate proxies.
        #[arg(long)]
        ca_file: Option<String>,
        /// Allow plain http:// to a non-loopback host.
        #[arg(long)]
        allow_http: bool,
        /// Only write the configuration; log in later.
        #[arg(long)]
        no_login: bool,
        /// Print the authorization URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// How long to wait for the browser's callback.
        #[arg(long, default_value = "5m")]
        timeout: humantime::Duration,
    },
    /// Remove a workload and its stored tokens.
    Remove {
        /// The workload's name.
        name: String,
    },
    /// List the configured workloads.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a valid access token (refreshing if needed), for scripts.
    ///
    /// Exit codes: 0 a token was printed, 4 a login is needed, 3 no valid token now
    /// because of a transient failure (Tokenwarden keeps retrying), 5 the workload is
    /// disabled, 1 anything else.
    #[command(
        after_help = "Example:\n  curl -H \"Authorization: Bearer $(tokenwarden token github-mcp)\" https://api.example/"
    )]
    Token {
        /// The workload's name.
        name: String,
        /// `{"access_token": ..., "expires_at": RFC 3339 or null}` instead of the bare token.
        #[arg(long)]
        json: bool,
    },
    /// Start monitoring a disabled workload again (removes `enabled = false`).
    Enable {
        /// The workload's name.
        name: String,
    },
    /// Stop monitoring a workload and close its local proxy; its login is kept
    /// (`enabled = false` in workloads.toml).
    Disable {
        /// The workload's name.
        name: String,
    },
    /// Print a shell completion script: `tokenwarden completions bash > ~/.local/share/bash-completion/completions/tokenwarden`.
    Completions {
        /// The shell: bash, zsh or fish.
        shell: CompletionShell,
    },
    /// Print the manual page (roff): `tokenwarden man | man -l -`.
    Man,
    /// Print the daemon's and the app's log lines (their daily files in the log
    /// directory: TOKENWARDEN_LOG_DIR, else ~/.local/state/tokenwarden/logs).
    #[command(
        after_help = "Examples:\n  tokenwarden logs github-mcp\n  tokenwarden logs -f\n  tokenwarden logs -n 50 github-mcp"
    )]
    Logs {
        /// Only the lines about this workload (`workload=NAME`).
        name: Option<String>,
        /// Keep printing new lines as they are written (Ctrl-C ends it).
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines (default: all; 10 with --follow).
        #[arg(short = 'n', long)]
        lines: Option<usize>,
    },
    /// Check what Tokenwarden needs here: the config, the keychain, notifications,
    /// a tray host, the network monitor, the daemon and every local proxy port.
    ///
    /// One line per check (ok, warn, FAIL) with the fix; exit code 1 when a check FAILs.
    Doctor,
    /// Print the Client ID Metadata Document to host at URL (its client id), with the
    /// loopback redirect URI sign-ins use; then `add --client-metadata-url URL`.
    ClientMetadata {
        /// Where you will host it: an https URL with a path (default:
        /// `[registration] client_metadata_url`). The redirect URI's port is
        /// `[registration] client_metadata_port`, else 33418.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the JSON an MCP client needs to reach the workload's local proxy; with
    /// --client, the entry alone in that client's format.
    ClientConfig {
        /// The workload's name.
        name: String,
        /// The entry alone, in this client's format (claude-desktop, claude-code, vscode,
        /// cursor, windsurf, gemini-cli, codex, goose).
        #[arg(long)]
        client: Option<ClientKind>,
        /// An entry running `tokenwarden stdio NAME` instead of the local proxy's URL.
        #[arg(long, requires = "client")]
        stdio: bool,
    },
    /// Point an MCP client at workloads through Tokenwarden: writes the client's
    /// config file (shows the diff first, asks on a terminal, keeps a backup).
    #[command(
        after_help = "Examples:\n  tokenwarden connect vscode github-mcp\n  tokenwarden connect claude-desktop --all\n  tokenwarden connect vscode --all --file .vscode/mcp.json --dry-run"
    )]
    Connect {
        /// The client: claude-desktop, claude-code, vscode, cursor, windsurf, gemini-cli, codex, goose.
        client: ClientKind,
        #[command(flatten)]
        target: ClientTarget,
        /// Replace an entry of the same name that Tokenwarden did not write.
        #[arg(long)]
        replace: bool,
        /// Entries running `tokenwarden stdio NAME` even where the client speaks HTTP.
        #[arg(long)]
        stdio: bool,
    },
    /// Remove Tokenwarden's entries from an MCP client's config file.
    Disconnect {
        /// The client (as for connect).
        client: ClientKind,
        #[command(flatten)]
        target: ClientTarget,
    },
    /// Find the remote servers in MCP clients' config files (all known clients when
    /// none is named), add each as a workload and log in, then offer to send the
    /// clients through Tokenwarden.
    Import {
        clients: Vec<ClientKind>,
        /// List what was found; add and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite the clients' files without asking.
        #[arg(long)]
        yes: bool,
        /// Print each authorization URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// How long to wait for each browser callback.
        #[arg(long, default_value = "5m")]
        timeout: humantime::Duration,
    },
    /// An MCP stdio server for MCP clients that start local servers: JSON-RPC on
    /// stdin/stdout, carried to the workload's remote through the running
    /// Tokenwarden's local proxy (which adds the token). Logs on stderr.
    Stdio {
        /// The workload's name.
        name: String,
    },
    /// A built-in demo: an embedded issuer and three workloads you can break and heal,
    /// in the desktop window (or in the terminal with --terminal or without a display).
    Demo {
        /// Keyboard controls in the terminal instead of the window.
        #[arg(long)]
        terminal: bool,
        /// The empty private directory to run on (the desktop app's "Try the demo"
        /// makes one); removed when the demo ends.
        #[arg(long, hide = true, conflicts_with = "terminal")]
        dir: Option<PathBuf>,
    },
}

/// Exit codes: 0 success, 1 failure, 2 bad usage or configuration.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Still one thread: the desktop app's environment for WebKitGTK goes in now.
    #[cfg(feature = "desktop")]
    if matches!(
        cli.command,
        None | Some(CliCommand::Demo {
            terminal: false,
            ..
        })
    ) {
        crate::desktop::memory::prepare_env();
    }
    let paths = match Paths::resolve(cli.config_dir.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tokenwarden: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // The demo (also what a bare `tokenwarden` runs headless with nothing configured)
    // prints its own story on stdout; the daemon and the desktop app log at info to
    // stderr and their log file.
    let runs_demo = match &cli.command {
        Some(CliCommand::Demo { .. }) => true,
        None => {
            Config::load(&paths.config_file).is_ok_and(|c| c.workloads.is_empty())
                && !desktop_shows_a_window()
        }
        _ => false,
    };
    let is_daemon = !runs_demo && matches!(cli.command, Some(CliCommand::Daemon) | None);
    if is_daemon {
        if let Err(e) = crate::logging::init_daemon(&paths.log_dir) {
            eprintln!("tokenwarden: {e:#}");
            return std::process::ExitCode::from(1);
        }
    } else {
        crate::logging::init_cli();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokenwarden: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.command, paths, cli.hidden)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                // A state, not a failure: only a message that was added is printed.
                if e.chain().count() > 1 {
                    eprintln!("tokenwarden: {e}");
                }
                return std::process::ExitCode::from(*code);
            }
            eprintln!("tokenwarden: {e:#}");
            let usage = e.downcast_ref::<config::ConfigError>().is_some();
            std::process::ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

async fn dispatch(command: Option<CliCommand>, paths: Paths, hidden: bool) -> anyhow::Result<()> {
    let Some(command) = command else {
        return run_default(paths, hidden).await;
    };
    if hidden {
        anyhow::bail!(
            "--hidden is for the desktop app (`tokenwarden --hidden`), not for subcommands"
        );
    }
    match command {
        CliCommand::Daemon => crate::daemon::run(paths).await,
        CliCommand::Status { names, json } => status(&paths, &names, json).await,
        CliCommand::Watch { json } => watch(&paths, json).await,
        CliCommand::Retry { name, all: _ } => retry(&paths, name).await,
        CliCommand::Login {
            name,
            no_browser,
            timeout,
        } => login(&paths, &name, no_browser, timeout.into()).await,
        CliCommand::Logout { name } => logout(&paths, &name).await,
        CliCommand::Enable { name } => set_enabled(&paths, &name, true).await,
        CliCommand::Disable { name } => set_enabled(&paths, &name, false).await,
        CliCommand::Logs {
            name,
            follow,
            lines,
        } => crate::logs::show(&paths.log_dir, name.as_deref(), follow, lines).await,
        CliCommand::Doctor => match crate::doctor::examine(&paths).await? {
            true => Ok(()),
            false => Err(Exit(1).into()),
        },
        CliCommand::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "tokenwarden", &mut std::io::stdout());
            Ok(())
        }
        CliCommand::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
        CliCommand::Add {
            name,
            url,
            token_endpoint,
            authorization_endpoint,
            client_id,
            client_metadata_url,
            scopes,
            ca_file,
            allow_http,
            no_login,
            no_browser,
            timeout,
        } => {
            let args = AddArgs {
                name: name.clone(),
                url,
                token_endpoint,
                authorization_endpoint,
                client_id,
                client_metadata_url,
                scopes,
                ca_file,
                allow_http,
            };
            crate::ops::add_workload(&paths, args, &|line| eprintln!("{line}"))
                .await
                .map_err(said)?;
            reload_config(&paths).await?;
            if no_login {
                eprintln!("Log in with: tokenwarden login {name}");
                Ok(())
            } else {
                login(&paths, &name, no_browser, timeout.into()).await
            }
        }
        CliCommand::Remove { name } => {
            crate::ops::remove(&paths, &name, None, &Daemon(&paths))
                .await
                .map_err(said)?;
            eprintln!("Removed `{name}` and its stored tokens");
            Ok(())
        }
        CliCommand::List { json } => {
            let cfg = load_config(&paths)?;
            if json {
                let list: Vec<_> = cfg
                    .workloads
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "name": w.name,
                            "url": w.url.as_ref().map(|u| u.as_str()),
                            "token_endpoint": w.token_endpoint.as_str(),
                            "authorization_endpoint": w.authorization_endpoint.as_ref().map(|u| u.as_str()),
                            "client_id": w.client_id,
                            "scopes": w.scopes,
                            "resource": w.resource,
                            "client_auth": w.client_auth.as_str(),
                            "redirect_port": w.redirect_port,
                            "listen_port": w.listen_port,
                            "enabled": w.enabled,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if cfg.workloads.is_empty() {
                eprintln!(
                    "No workloads in {}. Add one with `tokenwarden add`.",
                    paths.config_file.display()
                );
            } else {
                for w in &cfg.workloads {
                    println!("{}\t{}", w.name, w.token_endpoint);
                }
            }
            Ok(())
        }
        CliCommand::Token { name, json } => token(&paths, &name, json).await,
        CliCommand::ClientMetadata { url } => {
            let cfg = load_config(&paths)?;
            let doc = crate::engine::registration::document_for(
                url.as_deref(),
                cfg.client_metadata.as_ref(),
                cfg.client_metadata_port,
            )
            .map_err(|m| anyhow::anyhow!(m))?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        CliCommand::ClientConfig {
            name,
            client: None,
            stdio: _,
        } => client_config(&paths, &name).await,
        CliCommand::ClientConfig {
            name,
            client: Some(client),
            stdio,
        } => crate::clients::client_config(&paths, &name, client, stdio).await,
        CliCommand::Connect {
            client,
            target: t,
            replace,
            stdio,
        } => {
            let mode = crate::clients::Mode {
                dry_run: t.dry_run,
                yes: t.yes,
            };
            crate::clients::connect(&paths, client, t.names, t.all, t.file, replace, stdio, mode)
                .await
        }
        CliCommand::Disconnect { client, target: t } => {
            let mode = crate::clients::Mode {
                dry_run: t.dry_run,
                yes: t.yes,
            };
            crate::clients::disconnect(&paths, client, t.names, t.all, t.file, mode).await
        }
        CliCommand::Import {
            clients,
            dry_run,
            yes,
            no_browser,
            timeout,
        } => {
            let mode = crate::clients::Mode { dry_run, yes };
            crate::clients::import(&paths, clients, mode, no_browser, timeout.into()).await
        }
        CliCommand::Stdio { name } => crate::stdio::serve(&paths, &name).await,
        CliCommand::Demo { terminal, dir } => demo(terminal, dir).await,
    }
}

/// Whether a bare `tokenwarden` is the desktop app with its window and tray (a desktop
/// build with a display).
fn desktop_shows_a_window() -> bool {
    #[cfg(feature = "desktop")]
    return crate::desktop::has_display();
    #[cfg(not(feature = "desktop"))]
    false
}

/// `tokenwarden` with no subcommand: the desktop app when built (over the user's
/// config, even an empty one); headless, the demo when nothing is configured,
/// otherwise the engine.
async fn run_default(paths: Paths, hidden: bool) -> anyhow::Result<()> {
    let cfg = load_config(&paths)?;
    #[cfg(feature = "desktop")]
    return crate::desktop::main(paths, cfg, hidden).await;
    #[cfg(not(feature = "desktop"))]
    {
        let _ = hidden;
        if cfg.workloads.is_empty() {
            eprintln!(
                "No workloads in {}: starting the built-in demo. Add your own with `tokenwarden add`.",
                paths.config_file.display()
            );
            return crate::demo::run_headless().await;
        }
        crate::daemon::run(paths).await
    }
}

/// The demo never touches the user's configuration: it runs on a throwaway config
/// directory (its own instance lock and control socket) with an in-memory store.
async fn demo(terminal: bool, dir: Option<PathBuf>) -> anyhow::Result<()> {
    #[cfg(feature = "desktop")]
    if !terminal {
        return crate::desktop::demo(dir).await;
    }
    if let Some(d) = dir {
        anyhow::bail!(
            "--dir {} is for the desktop demo (this build has none)",
            d.display()
        );
    }
    let _ = terminal;
    crate::demo::run_headless().await
}

async fn require_daemon(paths: &Paths) -> anyhow::Result<Client> {
    Client::connect(paths).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "no tokenwarden daemon runs for {}; start one with `tokenwarden daemon`",
            paths.config_dir.display()
        )
    })
}

async fn status(paths: &Paths, names: &[String], json: bool) -> anyhow::Result<()> {
    let mut list: Vec<WorkloadStatus> = match Client::connect(paths).await? {
        Some(mut c) => serde_json::from_value(c.call(&Request::Status).await.map_err(remote)?)?,
        None => {
            let cfg = load_config(paths)?;
            let state = crate::engine::supervisor::load_state(&paths.state_file);
            if !json {
                eprintln!("(no daemon runs: last known status)");
            }
            cfg.workloads
                .iter()
                .map(|w| match state.get(&w.name) {
                    Some(p) => p.offline_view(&w.name, w.token_endpoint.as_str(), &cfg.policy),
                    None => offline_unknown(w),
                })
                .collect()
        }
    };
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !list.iter().any(|s| &s.name == *n))
        .collect();
    if !names.is_empty() {
        list.retain(|s| names.contains(&s.name));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        if list.is_empty() && names.is_empty() {
            eprintln!("No workloads. Add one with `tokenwarden add`.");
        }
        if !list.is_empty() {
            print_status_table(&list);
        }
    }
    if !unknown.is_empty() {
        let unknown: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
        return Err(anyhow::Error::new(Exit(1)).context(format!(
            "no workload named {} (see `tokenwarden list`)",
            unknown.join(", ")
        )));
    }
    match names.is_empty() {
        true => Ok(()),
        false => match status_exit_code(&list) {
            0 => Ok(()),
            code => Err(Exit(code).into()),
        },
    }
}

/// The exit code of `status NAME...`: the worst state among them.
pub fn status_exit_code(list: &[WorkloadStatus]) -> u8 {
    use crate::engine::Status;
    let has = |st: Status| list.iter().any(|s| s.status == st);
    if has(Status::Unauthenticated) {
        4
    } else if has(Status::Retrying) {
        3
    } else if has(Status::Stopped) {
        5
    } else {
        0
    }
}

/// An exit code a script can use (`status`, `token`); its context, if any, is printed.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// Which workloads `connect` / `disconnect` act on, in which file, and how.
#[derive(clap::Args, Debug)]
pub struct ClientTarget {
    /// The workloads.
    #[arg(required_unless_present = "all")]
    names: Vec<String>,
    /// Every workload with a remote URL.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// Another file than the client's user-level one (e.g. a project's .vscode/mcp.json).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Show the diff only; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write without asking (also what happens without a terminal).
    #[arg(long)]
    yes: bool,
}

/// The shells `completions` writes for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn offline_unknown(w: &WorkloadConfig) -> WorkloadStatus {
    let status = if w.enabled {
        crate::engine::Status::Unauthenticated
    } else {
        crate::engine::Status::Stopped
    };
    WorkloadStatus {
        reason: Some("never monitored yet".into()),
        hint: Some("start the daemon: tokenwarden daemon".into()),
        live: false,
        ..WorkloadStatus::bare(&w.name, status, w.token_endpoint.as_str())
    }
}

fn local_time(t: &time::OffsetDateTime) -> String {
    let t = time::UtcOffset::current_local_offset()
        .map(|o| t.to_offset(o))
        .unwrap_or(*t);
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&fmt).unwrap_or_default()
}

/// Whether to colour the status words: stdout is a terminal and `NO_COLOR` is not set
/// (<https://no-color.org>).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A status word, coloured on a terminal: red needs you, yellow retries, green runs.
fn status_word(st: crate::engine::Status, width: usize, colour: bool) -> String {
    use crate::engine::Status;
    let word = format!("{:<width$}", st.as_str());
    if !colour {
        return word;
    }
    let code = match st {
        Status::Unauthenticated => "31",
        Status::Retrying => "33",
        Status::Running => "32",
        Status::Stopped => "2",
    };
    format!("\x1b[{code}m{word}\x1b[0m")
}

/// `t` relative to `now` in a few characters: `in 4m`, `3h ago`, `now`.
pub fn relative(t: time::OffsetDateTime, now: time::OffsetDateTime) -> String {
    let d = t - now;
    let secs = d.whole_seconds();
    let a = secs.unsigned_abs();
    let span = match a {
        0..=4 => return "now".into(),
        5..=89 => format!("{a}s"),
        90..=5399 => format!("{}m", (a + 30) / 60),
        5400..=129_599 => format!("{}h", (a + 1800) / 3600),
        _ => format!("{}d", (a + 43_200) / 86_400),
    };
    if secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `status` for people: a table with headers, times relative to now (the local
/// zone named in the header), then hints and proxy problems under it.
fn print_status_table(list: &[WorkloadStatus]) {
    use crate::engine::Status;
    let now = time::OffsetDateTime::now_utc();
    let zone = time::UtcOffset::current_local_offset()
        .map(|o| {
            let (h, m, _) = o.as_hms();
            format!(
                "UTC{}{:02}:{:02}",
                if o.is_negative() { '-' } else { '+' },
                h.unsigned_abs(),
                m.unsigned_abs()
            )
        })
        .unwrap_or_else(|_| "UTC".into());
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|s| {
            let since = s.since.map(|t| relative(t, now)).unwrap_or_default();
            let next = match (&s.next_attempt_at, s.status) {
                (Some(t), Status::Retrying) => format!("attempt {}", relative(*t, now)),
                (Some(t), Status::Running) if s.attempts > 0 => {
                    format!("attempt {}", relative(*t, now))
                }
                (Some(t), Status::Running) => format!("refresh {}", relative(*t, now)),
                _ => String::new(),
            };
            let mut token = match (&s.access_token_expires_at, s.access_token_valid) {
                (Some(t), true) => format!("valid, ends {}", relative(*t, now)),
                (None, true) => "valid until rejected".into(),
                _ if s.live && s.status != Status::Stopped => "none valid".into(),
                _ => String::new(),
            };
            if !s.can_renew && s.status == Status::Running {
                // No refresh token: a new sign-in when this one ends.
                token.push_str(", cannot renew (no refresh token)");
            }
            let detail = match (&s.reason, &s.gives_up_at) {
                (Some(r), Some(g)) => format!("{r} (gives up {})", relative(*g, now)),
                (Some(r), None) => r.clone(),
                (None, _) => s
                    .local_url
                    .clone()
                    .map(|u| format!("proxy {u}"))
                    .unwrap_or_default(),
            };
            [s.name.clone(), since, next, token, detail]
        })
        .collect();
    let header = ["NAME", "STATUS", "SINCE", "NEXT", "TOKEN", "DETAIL"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain(std::iter::once(
                header[if i == 0 { 0 } else { i + 1 }].len(),
            ))
            .max()
            .unwrap_or(0)
    };
    let (w_name, w_since, w_next, w_token) = (width(0), width(1), width(2), width(3));
    let w_status = list
        .iter()
        .map(|s| s.status.as_str().len())
        .chain(std::iter::once(6))
        .max()
        .unwrap_or(6);
    println!(
        "{:<w_name$}  {:<w_status$}  {:<w_since$}  {:<w_next$}  {:<w_token$}  DETAIL  (times: {zone})",
        header[0], header[1], header[2], header[3], header[4]
    );
    let colour = colour();
    for (s, r) in list.iter().zip(&rows) {
        let line = format!(
            "{:<w_name$}  {}  {:<w_since$}  {:<w_next$}  {:<w_token$}  {}",
            r[0],
            status_word(s.status, w_status, colour),
            r[1],
            r[2],
            r[3],
            r[4]
        );
        println!("{}", line.trim_end());
    }
    for s in list {
        if let Some(e) = &s.proxy_error {
            println!("{}: proxy: {e}", s.name);
        }
        if let Some(h) = &s.hint {
            println!("{}: {h}", s.name);
        }
    }
}

/// One status change for `watch`: a line per change.
fn print_status_line(s: &WorkloadStatus) {
    let mut line = format!("{:<20} {:<16}", s.name, s.status.as_str());
    if let Some(t) = &s.since {
        line.push_str(&format!(" since {}", local_time(t)));
    }
    if let Some(r) = &s.reason {
        line.push_str(&format!("  {r}"));
    }
    if let Some(t) = &s.next_attempt_at {
        if s.status != crate::engine::Status::Running || s.attempts > 0 {
            line.push_str(&format!("  next attempt {}", local_time(t)));
        }
    }
    if let Some(h) = &s.hint {
        line.push_str(&format!("  hint: {h}"));
    }
    println!("{line}");
}

async fn watch(paths: &Paths, json: bool) -> anyhow::Result<()> {
    let c = require_daemon(paths).await?;
    c.watch(|ev: crate::engine::StatusChange| {
        if json {
            if let Ok(s) = serde_json::to_string(&ev) {
                println!("{s}");
            }
        } else {
            print_status_line(&ev.workload);
        }
    })
    .await
    .map_err(remote)
}

async fn retry(paths: &Paths, name: Option<String>) -> anyhow::Result<()> {
    let mut c = require_daemon(paths).await?;
    let v = c.call(&Request::Retry { name }).await.map_err(remote)?;
    let names: Vec<String> = serde_json::from_value(v)?;
    eprintln!("Retrying now: {}", names.join(", "));
    Ok(())
}

pub(crate) async fn login(
    paths: &Paths,
    name: &str,
    no_browser: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let login = crate::ops::begin_login(
        paths,
        name,
        None,
        None,
        &crate::daemon::Daemon(paths),
        &|note| eprintln!("{note}"),
    )
    .await
    .map_err(said)?;
    let url = login.authorize_url();
    if no_browser {
        println!("{url}");
        eprintln!(
            "Open the URL above in a browser to sign in to `{name}`. Waiting up to {} for the sign-in...",
            humantime::format_duration(timeout)
        );
    } else {
        match open_browser(&url) {
            Ok(()) => eprintln!(
                "Opening your browser to sign in to `{name}`. If it does not open, visit:\n{url}"
            ),
            // The listener stays open: the address works when opened by hand.
            Err(e) => eprintln!(
                "Could not open a browser ({e}). Open this address yourself to sign in to `{name}`:\n{url}"
            ),
        }
        eprintln!(
            "Waiting up to {} for the sign-in...",
            humantime::format_duration(timeout)
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let tokens = login.finish(timeout).await.map_err(said)?;
    reload_tokens(paths, name).await?;
    eprintln!("Signed in: `{name}` is running");
    if tokens.refresh_token.is_none() {
        eprintln!("{}", no_refresh_token_note(tokens.expires_at()));
    }
    Ok(())
}

/// Said at login when the server issued no refresh token: the workload runs until
/// the access token ends, then needs a new sign-in.
pub fn no_refresh_token_note(expires_at: Option<std::time::SystemTime>) -> String {
    match expires_at {
        Some(t) => format!(
            "This server issued no refresh token: the workload will need a new sign-in when the token expires at {}",
            humantime::format_rfc3339_seconds(t)
        ),
        None => "This server issued no refresh token (and gave the token no expiry): the workload will need a new sign-in when the remote rejects the token".into(),
    }
}

/// `logout`: by the running daemon or desktop app, else here ([`crate::ops::logout`]).
async fn logout(paths: &Paths, name: &str) -> anyhow::Result<()> {
    crate::ops::logout(paths, name, &Daemon(paths))
        .await
        .map_err(said)?;
    eprintln!("Logged out of `{name}`");
    Ok(())
}

/// `message` with the exit code `code` (see [`Exit`]).
fn exit_with(code: u8, message: String) -> anyhow::Error {
    anyhow::Error::new(Exit(code)).context(message)
}

/// Print a token as `token` does: bare, or with `--json` its expiry too.
fn print_token(token: &str, expires_at: Option<SystemTime>, json: bool) {
    if json {
        let at = expires_at
            .and_then(crate::engine::status::rfc3339)
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
        println!(
            "{}",
            serde_json::json!({ "access_token": token, "expires_at": at })
        );
    } else {
        println!("{token}");
    }
}

async fn token(paths: &Paths, name: &str, json: bool) -> anyhow::Result<()> {
    let g = crate::ops::token(paths, name, &Daemon(paths))
        .await
        .map_err(said)?;
    print_token(g.token.expose(), g.expires_at, json);
    Ok(())
}

/// A use case's error as the command line says it: its message, and the exit code
/// (2 a configuration or argument it refuses, 4 a login is needed, 3 no token now
/// because of a transient failure, 5 the workload is disabled, 1 anything else).
fn said(e: crate::ops::OpsError) -> anyhow::Error {
    use crate::ops::OpsError;
    match e {
        OpsError::Config(c) | OpsError::Exists(c) => c.into(),
        OpsError::NeedsLogin(m) => exit_with(4, m),
        OpsError::Unavailable(m) => exit_with(3, m),
        OpsError::Stopped(m) => exit_with(5, m),
        OpsError::Login(e) => e.into(),
        OpsError::Other(e) => e,
        e @ OpsError::UnknownWorkload { .. } => anyhow::anyhow!("{e}"),
    }
}

/// `enable` / `disable NAME`: the config edit, applied by the running daemon at once.
async fn set_enabled(paths: &Paths, name: &str, enabled: bool) -> anyhow::Result<()> {
    config::set_enabled(&paths.config_file, name, enabled)?;
    reload_config(paths).await?;
    eprintln!(
        "`{name}` is {}",
        if enabled {
            "enabled: monitored again"
        } else {
            "disabled: not monitored, its local proxy closed (its login is kept)"
        }
    );
    Ok(())
}

/// `client-config NAME`: the local proxy's address (see `clients::local_url`) in the
/// `mcpServers` JSON most clients take.
async fn client_config(paths: &Paths, name: &str) -> anyhow::Result<()> {
    let (json, local) = crate::ops::client_config(paths, name, &Daemon(paths))
        .await
        .map_err(said)?;
    if let Some(e) = &local.proxy_error {
        eprintln!("warning: {e}");
    }
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Status;

    #[test]
    fn relative_times_read_at_a_glance() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let at = |s: i64| now + time::Duration::seconds(s);
        assert_eq!(relative(at(0), now), "now");
        assert_eq!(relative(at(3), now), "now");
        assert_eq!(relative(at(42), now), "in 42s");
        assert_eq!(relative(at(-42), now), "42s ago");
        assert_eq!(relative(at(4 * 60), now), "in 4m");
        assert_eq!(relative(at(-3 * 3600), now), "3h ago");
        assert_eq!(relative(at(3 * 86_400), now), "in 3d");
    }

    #[test]
    fn status_words_are_coloured_only_when_asked_and_keep_their_width() {
        assert_eq!(status_word(Status::Running, 15, false), "running        ");
        let red = status_word(Status::Unauthenticated, 15, true);
        assert!(red.starts_with("\x1b[31munauthenticated") && red.ends_with("\x1b[0m"));
        assert_eq!(
            status_exit_code(&[
                WorkloadStatus::bare("a", Status::Running, "https://a.example/t"),
                WorkloadStatus::bare("b", Status::Stopped, "https://a.example/t"),
            ]),
            5
        );
        assert_eq!(
            status_exit_code(&[
                WorkloadStatus::bare("a", Status::Retrying, "https://a.example/t"),
                WorkloadStatus::bare("b", Status::Unauthenticated, "https://a.example/t"),
            ]),
            4
        );
    }
}
