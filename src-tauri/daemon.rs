//! `tokenwarden daemon`: the engine, the control socket, no GUI. Exactly one per
//! config directory ([`crate::instance`]). And the daemon (or desktop app) as another
//! process of the same user reaches it: over its control socket ([`Daemon`]).

use crate::control::{Client, Request};
use crate::engine::config::Config;
use crate::engine::Secret;
use crate::paths::Paths;
use crate::protocol::{self, ErrorCode};
use crate::service::{Options, Workloads};
use anyhow::Context;
use std::time::SystemTime;

/// Run until SIGINT/SIGTERM.
pub async fn run(paths: Paths) -> anyhow::Result<()> {
    let options = Options {
        paths,
        what: "daemon",
        lock: None,
        workloads: Workloads::Config,
        ui: None,
        log_changes: true,
        page_out_after: Some(std::time::Duration::from_secs(5)),
    };
    crate::service::run(options, Default::default()).await
}

/// Tell a running daemon something changed; fine if none runs.
pub async fn notify_daemon(paths: &Paths, req: Request) -> anyhow::Result<()> {
    if let Some(mut c) = Client::connect(paths).await? {
        c.call(&req)
            .await
            .context("the daemon refused the change")?;
    }
    Ok(())
}

/// A running daemon re-reads workloads.toml (after `add` or `remove` here).
pub async fn reload_config(paths: &Paths) -> anyhow::Result<()> {
    let req = Request::Reload {
        config: true,
        names: vec![],
    };
    notify_daemon(paths, req).await
}

/// A running daemon re-reads `name`'s tokens (after a login or logout here).
pub async fn reload_tokens(paths: &Paths, name: &str) -> anyhow::Result<()> {
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

pub fn remote(e: protocol::Error) -> anyhow::Error {
    e.into()
}

/// The daemon or desktop app running for the config dir, over its control socket
/// (nothing when none runs).
pub struct Daemon<'a>(pub &'a Paths);

impl crate::ops::Running for Daemon<'_> {
    fn reload(
        &self,
        config: Option<Config>,
        names: Vec<String>,
    ) -> crate::ops::Reply<'_, anyhow::Result<()>> {
        let req = Request::Reload {
            config: config.is_some(),
            names,
        };
        Box::pin(notify_daemon(self.0, req))
    }

    fn logout(&self, name: String) -> crate::ops::Reply<'_, Result<bool, crate::ops::OpsError>> {
        Box::pin(async move {
            let Some(mut c) = Client::connect(self.0).await.map_err(remote)? else {
                return Ok(false);
            };
            c.call(&Request::Logout { name }).await.map_err(remote)?;
            Ok(true)
        })
    }

    fn token(
        &self,
        name: String,
    ) -> crate::ops::Reply<'_, Result<Option<crate::ops::Granted>, crate::ops::OpsError>> {
        use crate::ops::OpsError;
        Box::pin(async move {
            let Some(mut c) = Client::connect(self.0).await.map_err(remote)? else {
                return Ok(None);
            };
            let v = c
                .call(&Request::Token { name: name.clone() })
                .await
                .map_err(|r| match r.code {
                    ErrorCode::Unauthenticated => OpsError::NeedsLogin(format!(
                        "{}; sign in with `tokenwarden login {name}`",
                        r.message
                    )),
                    ErrorCode::Unavailable => OpsError::Unavailable(r.message),
                    ErrorCode::Stopped => OpsError::Stopped(r.message),
                    _ => OpsError::Other(anyhow::anyhow!(r.message)),
                })?;
            let t = v
                .get("access_token")
                .and_then(|t| t.as_str())
                .ok_or_else(|| anyhow::anyhow!("the daemon sent no token"))?;
            let expires_at = v
                .get("expires_at")
                .and_then(|t| t.as_str())
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(SystemTime::from);
            Ok(Some(crate::ops::Granted {
                token: Secret::new(t),
                expires_at,
            }))
        })
    }

    fn status(
        &self,
    ) -> crate::ops::Reply<
        '_,
        Result<Option<Vec<crate::engine::WorkloadStatus>>, crate::ops::OpsError>,
    > {
        Box::pin(async move {
            let Some(mut c) = Client::connect(self.0).await.map_err(remote)? else {
                return Ok(None);
            };
            let v = c.call(&Request::Status).await.map_err(remote)?;
            Ok(Some(
                serde_json::from_value(v).map_err(anyhow::Error::from)?,
            ))
        })
    }
}
