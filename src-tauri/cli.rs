//! The command line. With no subcommand: the desktop app (when built with the
//! `desktop` feature). Everything else talks to the running daemon over the control
//! socket, or works directly on the config and the secret store when none runs.

use crate::clients::ClientKind;
use crate::control::{Client, RemoteError, Request};
use crate::daemon::{load_config, make_store};
use crate::engine::config::{self, Config, WorkloadConfig};
use crate::engine::discovery::{self, DiscoveryOptions};
use crate::engine::oauth;
use crate::engine::status::WorkloadStatus;
use crate::engine::store::Login;
use crate::engine::Secret;
use crate::paths::Paths;
use anyhow::Context;
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
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        None | Some(Command::Demo {
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
        Some(Command::Demo { .. }) => true,
        None => {
            Config::load(&paths.config_file).is_ok_and(|c| c.workloads.is_empty())
                && !desktop_shows_a_window()
        }
        _ => false,
    };
    let is_daemon = !runs_demo && matches!(cli.command, Some(Command::Daemon) | None);
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
    match rt.block_on(run(cli.command, paths, cli.hidden)) {
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

async fn run(command: Option<Command>, paths: Paths, hidden: bool) -> anyhow::Result<()> {
    let Some(command) = command else {
        return run_default(paths, hidden).await;
    };
    if hidden {
        anyhow::bail!(
            "--hidden is for the desktop app (`tokenwarden --hidden`), not for subcommands"
        );
    }
    match command {
        Command::Daemon => crate::daemon::run(paths).await,
        Command::Status { names, json } => status(&paths, &names, json).await,
        Command::Watch { json } => watch(&paths, json).await,
        Command::Retry { name, all: _ } => retry(&paths, name).await,
        Command::Login {
            name,
            no_browser,
            timeout,
        } => login(&paths, &name, no_browser, timeout.into()).await,
        Command::Logout { name } => logout(&paths, &name).await,
        Command::Enable { name } => set_enabled(&paths, &name, true).await,
        Command::Disable { name } => set_enabled(&paths, &name, false).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "tokenwarden", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
        Command::Add {
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
            add_workload(&paths, args, &|line| eprintln!("{line}")).await?;
            reload_config(&paths).await?;
            if no_login {
                eprintln!("Log in with: tokenwarden login {name}");
                Ok(())
            } else {
                login(&paths, &name, no_browser, timeout.into()).await
            }
        }
        Command::Remove { name } => {
            let cfg = config::remove_workload(&paths.config_file, &name)?;
            reload_config(&paths).await?;
            let store = make_store(&cfg, &paths);
            store.delete_tokens(&name).await?;
            store.delete_client_secret(&name).await?;
            eprintln!("Removed `{name}` and its stored tokens");
            Ok(())
        }
        Command::List { json } => {
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
        Command::Token { name, json } => token(&paths, &name, json).await,
        Command::ClientMetadata { url } => {
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
        Command::ClientConfig {
            name,
            client: None,
            stdio: _,
        } => client_config(&paths, &name).await,
        Command::ClientConfig {
            name,
            client: Some(client),
            stdio,
        } => crate::clients::client_config(&paths, &name, client, stdio).await,
        Command::Connect {
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
        Command::Disconnect { client, target: t } => {
            let mode = crate::clients::Mode {
                dry_run: t.dry_run,
                yes: t.yes,
            };
            crate::clients::disconnect(&paths, client, t.names, t.all, t.file, mode).await
        }
        Command::Import {
            clients,
            dry_run,
            yes,
            no_browser,
            timeout,
        } => {
            let mode = crate::clients::Mode { dry_run, yes };
            crate::clients::import(&paths, clients, mode, no_browser, timeout.into()).await
        }
        Command::Stdio { name } => crate::stdio::run(&paths, &name).await,
        Command::Demo { terminal, dir } => demo(terminal, dir).await,
    }
}

/// The scope that asks an authorization server for a refresh token (OpenID Connect
/// Core §11), requested by `add --url` when the server lists it.
const OFFLINE_ACCESS: &str = "offline_access";

/// What `add` was given (the CLI flags, or the window's add form).
#[derive(Clone, Debug, Default)]
pub struct AddArgs {
    pub name: String,
    pub url: Option<String>,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub client_id: Option<String>,
    /// A Client ID Metadata Document's URL (else the config's default).
    pub client_metadata_url: Option<String>,
    pub scopes: Vec<String>,
    pub ca_file: Option<String>,
    pub allow_http: bool,
}

/// A free port on 127.0.0.1 that no workload in `cfg` uses, with its listener (held
/// by the caller until the port is written, so two picks never collide).
fn free_loopback_port(cfg: &Config) -> anyhow::Result<(std::net::TcpListener, u16)> {
    let taken: std::collections::HashSet<u16> = cfg
        .workloads
        .iter()
        .flat_map(|w| [w.listen_port, w.redirect_port])
        .flatten()
        .collect();
    for _ in 0..16 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))
            .context("cannot pick a free port on 127.0.0.1")?;
        let port = l.local_addr()?.port();
        if !taken.contains(&port) {
            return Ok((l, port));
        }
    }
    anyhow::bail!("cannot pick a free port on 127.0.0.1 that no workload uses")
}

/// `add`: write the workload (discovering and registering what was not given), and
/// keep a registered client's secret in the secret store. On any failure nothing is
/// written: not the config file, not the store. Progress goes to `say` (the CLI's
/// stderr, the window's notices). Returns the configuration as written.
pub async fn add_workload(
    paths: &Paths,
    a: AddArgs,
    say: &(dyn Fn(String) + Send + Sync),
) -> anyhow::Result<Config> {
    let cfg = load_config(paths)?;
    let usage = |message: String| config::ConfigError {
        path: paths.config_file.clone(),
        line: None,
        message,
    };
    // What add_workload would refuse anyway, refused before any client is registered.
    config::validate_name(&a.name).map_err(usage)?;
    if cfg.workload(&a.name).is_some() {
        return Err(usage(format!("a workload named `{}` already exists", a.name)).into());
    }
    let name = a.name.clone();
    let mut nw = config::NewWorkload {
        name: a.name,
        url: a.url.clone(),
        authorization_endpoint: a.authorization_endpoint.clone(),
        token_endpoint: a.token_endpoint.clone().unwrap_or_default(),
        client_id: a.client_id.clone().unwrap_or_default(),
        scopes: a.scopes.clone(),
        ca_file: a.ca_file.clone(),
        allow_http: a.allow_http,
        ..Default::default()
    };
    let mut client_secret: Option<Secret> = None;
    let mut registered = None;
    let mut held_ports = Vec::new();
    if a.token_endpoint.is_none() || a.client_id.is_none() {
        let Some(raw) = a.url.as_deref() else {
            anyhow::bail!(
                "give --url URL to discover the rest, or both --token-endpoint and --client-id"
            );
        };
        let url = url::Url::parse(raw.trim())
            .map_err(|e| anyhow::anyhow!("--url is not a valid URL ({e}): `{raw}`"))?;
        let opts = DiscoveryOptions {
            policy: cfg.policy.clone(),
            allow_http: a.allow_http,
            // Relative to the config dir, as the config file's `ca_file` is.
            ca_file: a.ca_file.as_ref().map(|c| paths.config_dir.join(c)),
            resolve: Vec::new(),
        };
        say(format!("Discovering how {url} signs in..."));
        let d = discovery::discover(&url, &opts).await?;
        // As published (RFC 8414 §3.3), never a normalised URL.
        say(format!("  authorization server:   {}", d.issuer_identifier));
        say(format!(
            "  authorization endpoint: {}",
            d.authorization_endpoint
        ));
        say(format!("  token endpoint:         {}", d.token_endpoint));
        if let Some(r) = &d.resource_indicator {
            say(format!("  resource indicator:     {r}"));
        }
        say(format!(
            "  scopes it asks for:     {}",
            if d.scopes.is_empty() {
                "none named".to_string()
            } else {
                d.scopes.join(" ")
            }
        ));
        nw.url = Some(d.resource.to_string());
        nw.resource = d.resource_indicator.clone();
        if nw.authorization_endpoint.is_none() {
            nw.authorization_endpoint = Some(d.authorization_endpoint.to_string());
            // Sign-in answers come from this server: its `iss` (RFC 9207) is checked.
            // (An --authorization-endpoint of another server has another issuer.)
            nw.issuer = Some(d.issuer_identifier.clone());
            nw.iss_parameter = d.iss_parameter_supported;
            say(format!(
                "  issuer (RFC 9207 iss):  {}{}",
                d.issuer_identifier,
                if d.iss_parameter_supported {
                    "; always sent in sign-in answers"
                } else {
                    ""
                }
            ));
        }
        if nw.token_endpoint.is_empty() {
            nw.token_endpoint = d.token_endpoint.to_string();
        }
        if nw.scopes.is_empty() {
            nw.scopes = d.scopes.clone();
            // Without --scope: ask for a refresh token where the server says how.
            if d.server_scopes.iter().any(|s| s == OFFLINE_ACCESS)
                && !nw.scopes.iter().any(|s| s == OFFLINE_ACCESS)
            {
                nw.scopes.push(OFFLINE_ACCESS.into());
                say(format!("  also asking for:        {OFFLINE_ACCESS} (the authorization server lists it: it grants refresh tokens with it)"));
            }
        }
        // The spec's order: --client-id, else a Client ID Metadata Document the
        // server takes, else registration.
        let metadata = crate::engine::registration::metadata_for_add(
            a.client_metadata_url.as_deref(),
            cfg.client_metadata.as_ref(),
            cfg.client_metadata_port,
        )
        .map_err(usage)?;
        let mut by_metadata = false;
        if nw.client_id.is_empty() {
            if let crate::engine::registration::Source::Metadata(m) =
                crate::engine::registration::choose(&d, metadata.as_ref())?
            {
                let http = discovery::discovery_client(&opts)?;
                crate::engine::registration::check_document(&http, &m, &cfg.policy).await?;
                say(format!("Using the Client ID Metadata Document at {} as the client id (no registration; sign-in callback {})", m.url, m.redirect_uri()));
                nw.client_id = m.client_id().to_string();
                nw.redirect_port = Some(m.redirect_port);
                by_metadata = true;
            }
        }
        if nw.client_id.is_empty() {
            let endpoint = crate::engine::registration::registration_endpoint(&d)?;
            // The callback port the client is registered with; logins bind it again.
            let (callback, port) = free_loopback_port(&cfg)?;
            let redirect_uri = url::Url::parse(&format!("http://127.0.0.1:{port}/callback"))?;
            let http = discovery::discovery_client(&opts)?;
            let reg = discovery::register(&http, &endpoint, &redirect_uri, &nw.scopes, &cfg.policy)
                .await?;
            held_ports.push(callback);
            say(format!(
                "Registered a new {} client at {endpoint} (client id {}; sign-in callback {redirect_uri}{})",
                if reg.client_secret.is_some() { "confidential" } else { "public" },
                reg.client_id,
                if reg.client_secret.is_some() {
                    format!("; its client secret goes to the secret store, sent as {}", reg.auth.as_str())
                } else {
                    String::new()
                }
            ));
            registered = Some(crate::engine::registration::record(
                &d.issuer_identifier,
                &endpoint,
                &reg,
            ));
            nw.client_id = reg.client_id;
            nw.redirect_port = Some(port);
            nw.client_auth = reg.auth;
            client_secret = reg.client_secret;
        } else if !by_metadata {
            say("Using the client id given with --client-id (no registration).".into());
        }
    }
    if nw.url.is_some() {
        // The local proxy's port, chosen once and then kept.
        let (l, port) = free_loopback_port(&cfg)?;
        held_ports.push(l);
        nw.listen_port = Some(port);
    }
    drop(held_ports);

    let store = make_store(&cfg, paths);
    if client_secret.is_some() || registered.is_some() {
        store
            .save_client(&name, client_secret.as_ref(), registered.as_ref())
            .await
            .context(
                "registered a client, but its secret could not be stored; nothing was written",
            )?;
    }
    if let Err(e) = config::add_workload(&paths.config_file, &nw) {
        if client_secret.is_some() || registered.is_some() {
            let _ = store.delete_client_secret(&name).await;
        }
        return Err(e.into());
    }
    let cfg = load_config(paths)?;
    say(format!("Added `{name}` to {}", paths.config_file.display()));
    Ok(cfg)
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

pub(crate) fn workload<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a WorkloadConfig> {
    cfg.workload(name).ok_or_else(|| {
        let known: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
        anyhow::anyhow!(
            "no workload named `{name}` in {}{}",
            cfg.path.display(),
            if known.is_empty() {
                String::new()
            } else {
                format!(" (known: {})", known.join(", "))
            }
        )
    })
}

/// Tell a running daemon something changed; fine if none runs.
async fn notify_daemon(paths: &Paths, req: Request) -> anyhow::Result<()> {
    if let Some(mut c) = Client::connect(paths).await? {
        c.call(&req)
            .await
            .context("the daemon refused the change")?;
    }
    Ok(())
}

/// A running daemon re-reads workloads.toml (after `add` or `remove` here).
pub(crate) async fn reload_config(paths: &Paths) -> anyhow::Result<()> {
    let req = Request::Reload {
        config: true,
        names: vec![],
    };
    notify_daemon(paths, req).await
}

/// A running daemon re-reads `name`'s tokens (after a login or logout here).
async fn reload_tokens(paths: &Paths, name: &str) -> anyhow::Result<()> {
    let names = vec![name.to_string()];
    notify_daemon(
        paths,
        Request::Reload {
            config: false,
            names,
        },
    )
    .await
}

async fn require_daemon(paths: &Paths) -> anyhow::Result<Client> {
    Client::connect(paths).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "no tokenwarden daemon runs for {}; start one with `tokenwarden daemon`",
            paths.config_dir.display()
        )
    })
}

pub(crate) fn remote(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<RemoteError>() {
        Ok(r) => anyhow::anyhow!(r.message),
        Err(e) => e,
    }
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
    c.watch(|ev| {
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
    let cfg = load_config(paths)?;
    let w = workload(&cfg, name)?.clone();
    let store = make_store(&cfg, paths);
    let http =
        oauth::http_client(&cfg.policy, w.ca_file.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    // The resource may name another authorization server now: a client registered
    // at the old one is not used there.
    let w = match crate::engine::registration::follow_moved_server(
        &paths.config_file,
        &store,
        &w,
        &cfg.policy,
    )
    .await?
    {
        Some((from, moved)) => {
            eprintln!(
                "`{name}` now signs in at {} (was {from}): registered a new client there (client id {})",
                moved.issuer.as_deref().unwrap_or("?"),
                moved.client_id
            );
            moved
        }
        None => w,
    };
    let last = last_status(paths, &cfg, &w).await;
    // A client Tokenwarden registered that the server no longer knows: a fresh one.
    let w = match last.as_ref().filter(|s| client_refused(s)) {
        Some(_) => match crate::engine::registration::register_fresh_client(
            &paths.config_file,
            &store,
            &w,
            &http,
            &cfg.policy,
        )
        .await?
        {
            Some(fresh) => {
                eprintln!(
                    "The authorization server no longer knows the client registered for `{name}`: registered a new one (client id {})",
                    fresh.client_id
                );
                fresh
            }
            None => w,
        },
        None => w,
    };
    let client_secret = client_secret(&store, &w).await?;
    let needs = last.map(|s| s.needs_scopes).unwrap_or_default();
    let w = oauth::for_sign_in(&store, &w, &needs).await;
    let pending = oauth::prepare_login(&w)
        .await?
        .with_client_secret(client_secret);
    let url = pending.authorize_url.to_string();
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
    let tokens = pending.finish(&http, &cfg.policy, timeout).await?;
    store
        .save_login(&w, &tokens)
        .await
        .context("signed in, but the tokens could not be stored")?;
    reload_tokens(paths, name).await?;
    eprintln!("Signed in: `{name}` is running");
    if tokens.refresh_token.is_none() {
        eprintln!("{}", no_refresh_token_note(tokens.expires_at()));
    }
    Ok(())
}

/// `w`'s status: from the running daemon, else the last known state.
async fn last_status(paths: &Paths, cfg: &Config, w: &WorkloadConfig) -> Option<WorkloadStatus> {
    if let Ok(Some(mut c)) = Client::connect(paths).await {
        let list: Vec<WorkloadStatus> = c
            .call(&Request::Status)
            .await
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        return list.into_iter().find(|s| s.name == w.name);
    }
    let state = crate::engine::supervisor::load_state(&paths.state_file);
    state
        .get(&w.name)
        .map(|p| p.offline_view(&w.name, w.token_endpoint.as_str(), &cfg.policy))
}

/// The issuer's verdict was `invalid_client`: it no longer knows the client.
fn client_refused(s: &WorkloadStatus) -> bool {
    s.status == crate::engine::Status::Unauthenticated
        && s.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("invalid_client"))
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

/// Open `url` in the browser: `TOKENWARDEN_BROWSER` (a command given the URL as its
/// only argument) when set, else the system's default browser. An error means no
/// browser could be started (what the browser then does is not known here).
pub(crate) fn open_browser(url: &str) -> Result<(), String> {
    match std::env::var_os("TOKENWARDEN_BROWSER").filter(|v| !v.is_empty()) {
        Some(cmd) => std::process::Command::new(&cmd)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map(|mut child| {
                // Reaped when it ends (a long-running app must not collect zombies).
                std::thread::spawn(move || child.wait());
            })
            .map_err(|e| format!("{}: {e}", std::path::Path::new(&cmd).display())),
        None => open::that_detached(url).map_err(|e| e.to_string()),
    }
}

/// A confidential client's secret from the store (`None` for a public client).
pub(crate) async fn client_secret(
    store: &crate::engine::SecretStore,
    w: &WorkloadConfig,
) -> anyhow::Result<Option<Secret>> {
    if !w.client_auth.needs_secret() {
        return Ok(None);
    }
    let name = &w.name;
    let secret = store.load_client_secret(name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "`{name}` authenticates with {} but its client secret is not in the secret store; register again with `tokenwarden remove {name}` and `tokenwarden add {name} --url URL`",
            w.client_auth.as_str()
        )
    })?;
    Ok(Some(secret))
}

/// `logout`: done by the running daemon or desktop app, whose monitor stops using the
/// tokens and deletes them after any save under way, so a refresh in flight cannot
/// store them again. Only when none runs is the entry deleted here, holding the config
/// dir's lock so that none starts meanwhile.
async fn logout(paths: &Paths, name: &str) -> anyhow::Result<()> {
    let cfg = load_config(paths)?;
    workload(&cfg, name)?;
    // A daemon that holds the lock but does not answer yet is starting: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(mut c) = Client::connect(paths).await? {
            let req = Request::Logout {
                name: name.to_string(),
            };
            c.call(&req).await.map_err(remote)?;
            break;
        }
        match crate::daemon::acquire_lock(paths) {
            Ok(_lock) => {
                make_store(&cfg, paths).delete_tokens(name).await?;
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(
                    e.context("cannot log out: the daemon for this config dir does not answer")
                )
            }
        }
    }
    eprintln!("Logged out of `{name}`");
    Ok(())
}

/// `message` with the exit code `code` (see [`Exit`]).
fn exit_with(code: u8, message: String) -> anyhow::Error {
    anyhow::Error::new(Exit(code)).context(message)
}

/// The exit code of a refused `token` request, by the engine's error code.
fn token_exit_code(code: &str) -> u8 {
    match code {
        "unauthenticated" => 4,
        "unavailable" => 3,
        "stopped" => 5,
        _ => 1,
    }
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
    if let Some(mut c) = Client::connect(paths).await? {
        let v = c
            .call(&Request::Token {
                name: name.to_string(),
            })
            .await
            .map_err(|e| match e.downcast::<RemoteError>() {
                Ok(r) => match token_exit_code(&r.code) {
                    4 => exit_with(
                        4,
                        format!("{}; sign in with `tokenwarden login {name}`", r.message),
                    ),
                    code => exit_with(code, r.message),
                },
                Err(e) => e,
            })?;
        let t = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow::anyhow!("the daemon sent no token"))?;
        let expires_at = v
            .get("expires_at")
            .and_then(|t| t.as_str())
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(SystemTime::from);
        print_token(t, expires_at, json);
        return Ok(());
    }
    // No daemon: use the stored token, or refresh it here (saving before printing).
    let cfg = load_config(paths)?;
    let w = workload(&cfg, name)?;
    let store = make_store(&cfg, paths);
    let stored = match store.load_login(w).await? {
        Login::Ready(t) => t,
        Login::Missing => {
            return Err(exit_with(
                4,
                format!("`{name}` is not logged in; run `tokenwarden login {name}`"),
            ))
        }
        Login::Elsewhere { changed } => return Err(exit_with(4, format!(
            "the stored login of `{name}` was made with another {} (workloads.toml changed), so it is not used; log in again: tokenwarden login {name}",
            changed.join(", ")
        ))),
    };
    let now = SystemTime::now();
    if stored.expires_at().is_some_and(|e| e > now) {
        print_token(stored.access_token.expose(), stored.expires_at(), json);
        return Ok(());
    }
    let rt = stored.refresh_token.clone().ok_or_else(|| {
        exit_with(
            4,
            format!("the access token expired and there is no refresh token; run `tokenwarden login {name}`"),
        )
    })?;
    let http =
        oauth::http_client(&cfg.policy, w.ca_file.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let client_secret = client_secret(&store, w).await?;
    let transport = oauth::Transport::Http(http);
    let resp = oauth::refresh(&transport, w, &rt, client_secret.as_ref(), &cfg.policy)
        .await
        .map_err(|f| {
            if f.is_permanent() {
                exit_with(4, format!("refresh refused ({}); run `tokenwarden login {name}`", f.reason()))
            } else {
                exit_with(3, format!("no valid access token now: the refresh failed ({}); try again later, or start `tokenwarden daemon`, which keeps retrying", f.reason()))
            }
        })?;
    let (tokens, _) = oauth::to_stored(resp, Some(rt), SystemTime::now(), &cfg.policy);
    store
        .save_login(w, &tokens)
        .await
        .context("could not store the refreshed tokens")?;
    print_token(tokens.access_token.expose(), tokens.expires_at(), json);
    Ok(())
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
    let cfg = load_config(paths)?;
    let local = crate::clients::local_url(paths, &cfg, name).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::proxy::client_config(name, &local))?
    );
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
