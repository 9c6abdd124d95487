//! `tokenwarden demo`: an embedded issuer on loopback and three demo workloads with
//! short token lifetimes and a compressed policy, so a newcomer sees
//! degrade → retrying → recover within a minute. Break and heal it from the keyboard.
//! One workload ([`REMOTE_WORKLOAD`]) fronts an embedded protected resource (a fake
//! remote MCP server), so its local proxy can be tried with any client: no token
//! needed on `127.0.0.1`.
//!
//! Demo data lives apart from the user's: an in-memory secret store and a temporary
//! config directory (its control socket works, so `tokenwarden --config-dir DIR status`
//! in another shell shows the demo too), removed when the demo ends.

use crate::engine::config::Config;
use crate::engine::policy::Policy;
use crate::engine::store::SecretStore;
use crate::engine::{oauth, Engine, EngineOptions, Status};
use std::time::Duration;
use tokenwarden_sim::issuer::{IssuerOptions, Mode, SimIssuer};
use tokenwarden_sim::remote::{RemoteOptions, SimRemote};

pub const WORKLOADS: [&str; 3] = ["github-mcp", "jira-mcp", "notion-api"];

/// The demo workload with a remote `url` (served through a local proxy).
pub const REMOTE_WORKLOAD: &str = "github-mcp";

/// The compressed demo policy: seconds instead of minutes.
pub fn demo_policy() -> Policy {
    let mut p = Policy::default();
    let set = |p: &mut Policy, k: &str, v: &str| {
        p.set(k, &crate::engine::policy::RawValue::Text(v.into()))
            .expect("valid demo policy");
    };
    set(&mut p, "refresh_lead_min", "3s");
    set(&mut p, "refresh_initial_interval", "1s");
    set(&mut p, "refresh_max_interval", "3s");
    set(&mut p, "refresh_max_elapsed", "8s");
    set(&mut p, "retrying_interval", "2s");
    set(&mut p, "retrying_max_interval", "8s");
    set(&mut p, "retrying_ceiling", "10m");
    set(&mut p, "http_timeout", "3s");
    set(&mut p, "connect_timeout", "2s");
    set(&mut p, "wall_check_interval", "5s");
    p.refresh_max_tries = 3;
    p
}

/// A running demo: the issuer, the engine and the throwaway config dir.
pub struct Demo {
    pub issuer: SimIssuer,
    /// The protected resource behind [`REMOTE_WORKLOAD`].
    pub remote: SimRemote,
    pub engine: Engine,
    pub store: SecretStore,
    pub config: Config,
    pub dir: ThrowawayDir,
}

/// The demo's config directory, removed with everything in it when dropped.
pub struct ThrowawayDir(std::path::PathBuf);

impl ThrowawayDir {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Remove it now (the demo ended; whoever still holds the demo cannot use it).
    pub fn remove(&self) {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove the demo's directory");
            }
            _ => {}
        }
    }
}

impl Drop for ThrowawayDir {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Demo {
    /// The demo on a new temporary directory.
    pub async fn start() -> anyhow::Result<Demo> {
        Demo::start_in(None).await
    }

    /// The demo on `dir` (an empty, private directory made for it by whoever started
    /// this process: the desktop app's "Try the demo"), else on a new temporary one.
    /// Either is removed when the demo ends.
    pub async fn start_in(dir: Option<std::path::PathBuf>) -> anyhow::Result<Demo> {
        let issuer = SimIssuer::start(IssuerOptions {
            client_id: "tokenwarden-demo".into(),
            access_token_lifetime: Duration::from_secs(20),
            // Every token the demo issues, appended to this file: the test suite scans
            // the app's logs for them.
            ledger: std::env::var_os("TOKENWARDEN_DEMO_LEDGER").map(std::path::PathBuf::from),
            ..IssuerOptions::default()
        })
        .await?;
        let remote = SimRemote::start(issuer.clone(), RemoteOptions::default()).await?;
        let dir = match dir {
            Some(d) => {
                crate::engine::config::ensure_private_dir(&d)?;
                if std::fs::read_dir(&d)?.next().is_some() {
                    anyhow::bail!(
                        "{} is not empty: the demo runs only on a directory of its own",
                        d.display()
                    );
                }
                ThrowawayDir(d)
            }
            None => ThrowawayDir(
                tempfile::Builder::new()
                    .prefix("tokenwarden-demo-")
                    .tempdir()?
                    .keep(),
            ),
        };
        let mut text = String::new();
        for name in WORKLOADS {
            text.push_str(&format!(
                "[[workload]]\nname = \"{name}\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"tokenwarden-demo\"\nscopes = [\"read\"]\n",
                issuer.authorization_endpoint(),
                issuer.token_endpoint()
            ));
            if name == REMOTE_WORKLOAD {
                text.push_str(&format!("url = \"{}\"\n", remote.url()));
            }
            text.push('\n');
        }
        let path = dir.path().join(crate::engine::config::FILE_NAME);
        std::fs::write(&path, &text)?;
        let mut config = Config::parse(&path, &text)?;
        config.policy = demo_policy();
        let store = SecretStore::memory();
        for name in WORKLOADS {
            login(&config, name, &store).await?;
        }
        let engine = Engine::start(EngineOptions {
            sources: crate::engine::triggers::Sources::all(),
            ..EngineOptions::new(config.clone(), store.clone())
        });
        Ok(Demo {
            issuer,
            remote,
            engine,
            store,
            config,
            dir,
        })
    }

    /// Sign a workload in again (what "Re-authenticate" does in the demo).
    pub async fn relogin(&self, name: &str) -> anyhow::Result<()> {
        login(&self.config, name, &self.store).await?;
        self.engine.reload(None, vec![name.to_string()]).await?;
        Ok(())
    }

    /// Re-authenticate every workload that needs it.
    pub async fn relogin_unauthenticated(&self) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        for s in self.engine.status().await? {
            if s.status == Status::Unauthenticated {
                self.relogin(&s.name).await?;
                done.push(s.name);
            }
        }
        Ok(done)
    }
}

/// The login flow for real, with the demo itself playing the signed-in browser.
async fn login(config: &Config, name: &str, store: &SecretStore) -> anyhow::Result<()> {
    let w = config
        .workload(name)
        .ok_or_else(|| anyhow::anyhow!("no demo workload {name}"))?;
    let http = oauth::http_client(&config.policy, None).map_err(|e| anyhow::anyhow!(e))?;
    let pending = oauth::prepare_login(w).await?;
    let url = pending.authorize_url.to_string();
    let browser = tokio::spawn(async move {
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(2))
            .build()?;
        c.get(url).send().await
    });
    let tokens = pending
        .finish(&http, &config.policy, Duration::from_secs(10))
        .await?;
    let _ = browser.await;
    store.save_tokens(name, &tokens).await?;
    Ok(())
}

const HELP: &str = "keys: [w] simulate WAF block  [d] take the issuer down  [r] revoke the grant  [h] heal  [t] retry all now  [l] re-authenticate  [s] status  [q] quit";

/// The headless demo: status changes on stdout, keyboard controls on stdin.
pub async fn run_headless() -> anyhow::Result<()> {
    let demo = Demo::start().await?;
    let paths = crate::paths::Paths::resolve(Some(demo.dir.path().to_path_buf()))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = crate::service::start(
        crate::service::Options {
            paths: paths.clone(),
            what: "demo",
            lock: None,
            workloads: crate::service::Workloads::Started {
                engine: demo.engine.clone(),
                watch: None,
            },
            ui: None,
            log_changes: false,
            page_out_after: None,
        },
        shutdown.clone(),
    )
    .await?;
    println!(
        "Tokenwarden demo: an embedded issuer at {} and {} workloads.",
        demo.issuer.base_url(),
        WORKLOADS.len()
    );
    println!(
        "Watch from another shell: tokenwarden --config-dir {} status",
        paths.config_dir.display()
    );
    if let Some(url) = demo
        .engine
        .status()
        .await?
        .into_iter()
        .find(|s| s.name == REMOTE_WORKLOAD)
        .and_then(|s| s.local_url)
    {
        println!(
            "{REMOTE_WORKLOAD} fronts a fake remote MCP server; its local proxy adds the token: curl {url}"
        );
    }
    println!("{HELP}");
    let mut events = demo.engine.subscribe();
    // Read on a thread of its own, never waited for: a read blocked on the terminal
    // cannot hold up the end.
    let (keys, mut stdin) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            if keys.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let w = &ev.workload;
                    if ev.previous != Some(w.status) || ev.refreshed {
                        let what = if ev.refreshed { "refreshed" } else { "" };
                        println!(
                            "{}  {:<12} {:<16} {} {}",
                            time::OffsetDateTime::now_utc().format(time::macros::format_description!("[hour]:[minute]:[second]")).unwrap_or_default(),
                            w.name,
                            w.status.as_str(),
                            what,
                            w.reason.as_deref().unwrap_or("")
                        );
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            line = stdin.recv(), if stdin_open => match line {
                Some(Ok(l)) => {
                    let mode = match l.trim() {
                        "w" => Some(Mode::Waf403),
                        "d" => Some(Mode::Down),
                        "h" => Some(Mode::Healthy),
                        "r" => { demo.issuer.revoke_all(); println!("grant revoked: the next refresh gets invalid_grant"); None }
                        "t" => { demo.engine.retry(None).await?; None }
                        "l" => { let n = demo.relogin_unauthenticated().await?; println!("re-authenticated: {}", n.join(", ")); None }
                        "s" => { for s in demo.engine.status().await? { println!("  {:<12} {:<16} {}", s.name, s.status.as_str(), s.reason.unwrap_or_default()); } None }
                        "q" => break,
                        "" => None,
                        _ => { println!("{HELP}"); None }
                    };
                    if let Some(m) = mode {
                        println!("issuer: {m:?}");
                        demo.issuer.set_mode(m);
                    }
                }
                _ => stdin_open = false,
            },
            // SIGINT, SIGTERM
            _ = shutdown.cancelled() => break,
        }
    }
    service.stop().await;
    Ok(())
}

/// The tokens of a login made straight against the simulated issuer, as the store
/// keeps them (benchmarks and tests that need many logins fast).
pub fn stored_tokens(
    login: tokenwarden_sim::issuer::DirectLogin,
) -> crate::engine::store::StoredTokens {
    use crate::engine::Secret;
    crate::engine::store::StoredTokens::issued_now(
        Secret::new(login.access_token),
        Some(Secret::new(login.refresh_token)),
        login.lifetime,
    )
}
