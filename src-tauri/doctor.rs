//! `tokenwarden doctor`: what this machine gives Tokenwarden, one line per check with
//! a verdict (`ok`, `warn`, `FAIL`) and, where something is wrong, the fix in one line.
//! The exit code is 1 when a check FAILs (warnings: 0).
//!
//! Checks: the configuration (parses, else its line), the secret store (on Linux the
//! Secret Service on the session bus: reachable, a default keyring, unlocked), the
//! notification service and a tray host (StatusNotifierWatcher) on the session bus,
//! the network monitor (a netlink watch of addresses), whether a daemon or the app
//! runs, and every local proxy port (free, or served by the running Tokenwarden).

use crate::control::{Client, Request};
use crate::engine::config::{Config, StoreKind};
use crate::engine::status::WorkloadStatus;
use crate::paths::Paths;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, with less than it could (no tray, no notifications, ...).
    Warn,
    /// Broken: Tokenwarden cannot do its job until it is fixed.
    Fail,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Check {
    pub what: String,
    pub verdict: Verdict,
    pub detail: String,
    /// One line: what to do about it (not for `Ok`).
    pub fix: Option<String>,
}

fn check(what: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        what: what.into(),
        verdict,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// Run every check, print them, and say whether nothing FAILed.
pub async fn examine(paths: &Paths) -> anyhow::Result<bool> {
    let checks = checks(paths).await;
    let width = checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
    for c in &checks {
        println!("{:<4}  {:<width$}  {}", c.verdict.word(), c.what, c.detail);
        if let Some(fix) = &c.fix {
            println!("{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    match (failed, warned) {
        (0, 0) => println!("\nAll {} checks passed.", checks.len()),
        (0, w) => println!("\nNothing broken; {w} warning(s)."),
        (f, _) => println!("\n{f} check(s) failed."),
    }
    Ok(failed == 0)
}

/// Every check, in the order they are printed.
pub async fn checks(paths: &Paths) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match crate::ops::load_config(paths) {
        Ok(c) => {
            out.push(check(
                "config",
                Verdict::Ok,
                format!(
                    "{}: {} workload(s)",
                    paths.config_file.display(),
                    c.workloads.len()
                ),
            ));
            Some(c)
        }
        Err(e) => {
            let line = e
                .downcast_ref::<crate::engine::config::ConfigError>()
                .and_then(|c| c.line);
            let fix = match line {
                Some(l) => format!(
                    "correct line {l} of {} (a running Tokenwarden keeps its last good configuration until then)",
                    paths.config_file.display()
                ),
                None => format!(
                    "correct {} or the TOKENWARDEN_* setting named",
                    paths.config_file.display()
                ),
            };
            out.push(check("config", Verdict::Fail, format!("{e:#}")).fix(fix));
            None
        }
    };
    out.push(match config.as_ref().map(|c| c.store) {
        Some(StoreKind::File) => check(
            "keychain",
            Verdict::Ok,
            format!(
                "not used: tokens are kept in {} (`store = \"file\"`)",
                paths.secrets_dir.display()
            ),
        ),
        _ => tokio::task::spawn_blocking(session::keychain)
            .await
            .unwrap_or_else(|e| check("keychain", Verdict::Fail, e.to_string())),
    });
    let (notifications, tray) =
        tokio::task::spawn_blocking(|| (session::notification_service(), session::tray_host()))
            .await
            .unwrap_or_else(|e| {
                let c = check("session bus", Verdict::Warn, e.to_string());
                (c.clone(), c)
            });
    out.push(notifications);
    out.push(tray);
    out.push(network_monitor().await);

    let running = running_statuses(paths).await;
    out.push(match &running {
        Ok(Some(_)) => check(
            "daemon",
            Verdict::Ok,
            format!(
                "a daemon or the app runs for {}",
                paths.config_dir.display()
            ),
        ),
        Ok(None) => check(
            "daemon",
            Verdict::Warn,
            "none runs: workloads are not kept signed in now",
        )
        .fix("systemctl --user enable --now tokenwarden (or start the Tokenwarden app)"),
        Err(e) => check("daemon", Verdict::Fail, format!("{e:#}")).fix(format!(
            "stop whatever holds {} and start Tokenwarden again",
            paths.socket.display()
        )),
    });
    if let Some(config) = &config {
        let served = running.ok().flatten().unwrap_or_default();
        out.extend(proxy_ports(config, &served));
    }
    out
}

/// The statuses of the running daemon or app (`None`: none runs).
async fn running_statuses(paths: &Paths) -> anyhow::Result<Option<Vec<WorkloadStatus>>> {
    let Some(mut c) = Client::connect(paths).await? else {
        return Ok(None);
    };
    let v = tokio::time::timeout(Duration::from_secs(5), c.call(&Request::Status))
        .await
        .map_err(|_| anyhow::anyhow!("the running daemon does not answer"))?
        .map_err(|e| anyhow::anyhow!("the running daemon: {e:#}"))?;
    Ok(Some(serde_json::from_value(v)?))
}

/// The port of a `local_url` (`http://127.0.0.1:PORT/...`).
fn port_of(local_url: &str) -> Option<u16> {
    url::Url::parse(local_url).ok()?.port()
}

/// Each workload's local proxy port: free, or served by the running Tokenwarden for
/// that workload; anything else holding it keeps the proxy from starting.
fn proxy_ports(config: &Config, served: &[WorkloadStatus]) -> Vec<Check> {
    let mut out = Vec::new();
    for w in &config.workloads {
        if w.url.is_none() {
            continue;
        }
        let what = format!("proxy {}", w.name);
        let Some(port) = w.listen_port else {
            out.push(check(
                what,
                Verdict::Ok,
                "no port yet: a free one is chosen and kept at the first start",
            ));
            continue;
        };
        let ours = served
            .iter()
            .any(|s| s.name == w.name && s.local_url.as_deref().and_then(port_of) == Some(port));
        if ours {
            out.push(check(
                what,
                Verdict::Ok,
                format!("127.0.0.1:{port} served by the running Tokenwarden"),
            ));
            continue;
        }
        out.push(
            match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
                Ok(_) => check(what, Verdict::Ok, format!("127.0.0.1:{port} free")),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => check(
                    what,
                    Verdict::Fail,
                    format!("127.0.0.1:{port} is taken by another program"),
                )
                .fix(format!(
                    "see which with `ss -ltnp 'sport = :{port}'` and stop it, or give `{}` another listen_port in workloads.toml",
                    w.name
                )),
                Err(e) => check(
                    what,
                    Verdict::Fail,
                    format!("127.0.0.1:{port} cannot be bound: {e}"),
                )
                .fix(format!(
                    "give `{}` another listen_port in workloads.toml",
                    w.name
                )),
            },
        );
    }
    out
}

/// The network trigger's watch of addresses (if-watch: netlink on Linux).
async fn network_monitor() -> Check {
    use futures::StreamExt;
    let what = "network monitor";
    let mut watcher = match if_watch::tokio::IfWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            return check(what, Verdict::Warn, format!("cannot watch addresses: {e}")).fix(
                "recovery after a network change then waits for the retry cadence; allow netlink sockets (container or sandbox settings)",
            )
        }
    };
    // Its first answer is the current set of addresses.
    match tokio::time::timeout(Duration::from_secs(2), watcher.next()).await {
        Ok(Some(Ok(_))) => check(what, Verdict::Ok, "watching address changes"),
        Ok(Some(Err(e))) => check(
            what,
            Verdict::Warn,
            format!("the address watch failed: {e}"),
        )
        .fix("recovery after a network change then waits for the retry cadence"),
        Ok(None) | Err(_) => check(
            what,
            Verdict::Warn,
            "the address watch reports nothing (no address at all?)",
        )
        .fix("recovery after a network change then waits for the retry cadence"),
    }
}

/// Whether a tray host (StatusNotifierWatcher) is on the session bus: `None` where
/// that cannot be known (no session bus; a system whose tray is its own).
pub fn tray_host_present() -> Option<bool> {
    session::tray_host_present()
}

#[cfg(target_os = "linux")]
mod session {
    //! The session bus: Secret Service, notifications, tray host.
    use super::{check, Check, Verdict};
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
    use dbus::blocking::Connection;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn bus() -> Result<Connection, String> {
        Connection::new_session().map_err(|e| {
            format!(
                "no session bus ({})",
                e.message()
                    .unwrap_or("DBUS_SESSION_BUS_ADDRESS unset or unreachable")
            )
        })
    }

    fn bus_proxy(conn: &Connection) -> dbus::blocking::Proxy<'_, &Connection> {
        conn.with_proxy("org.freedesktop.DBus", "/org/freedesktop/DBus", TIMEOUT)
    }

    /// Whether `name` is owned now, or can be started on demand.
    fn present(conn: &Connection, name: &str) -> (bool, bool) {
        let p = bus_proxy(conn);
        let owned = p
            .method_call("org.freedesktop.DBus", "NameHasOwner", (name,))
            .map(|(b,): (bool,)| b)
            .unwrap_or(false);
        let activatable = p
            .method_call("org.freedesktop.DBus", "ListActivatableNames", ())
            .map(|(names,): (Vec<String>,)| names.iter().any(|n| n == name))
            .unwrap_or(false);
        (owned, activatable)
    }

    pub fn keychain() -> Check {
        let what = "keychain";
        let no_bus_fix = "run Tokenwarden in your desktop session, or set `store = \"file\"` under [secrets] in workloads.toml";
        let conn = match bus() {
            Ok(c) => c,
            Err(e) => return check(what, Verdict::Fail, e).fix(no_bus_fix),
        };
        let (owned, activatable) = present(&conn, "org.freedesktop.secrets");
        if !owned && !activatable {
            return check(
                what,
                Verdict::Fail,
                "no Secret Service (org.freedesktop.secrets) on the session bus",
            )
            .fix("install and start gnome-keyring (or KeePassXC with its Secret Service), or set `store = \"file\"` under [secrets]");
        }
        let service = conn.with_proxy(
            "org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            TIMEOUT,
        );
        let default: dbus::Path = match service.method_call(
            "org.freedesktop.Secret.Service",
            "ReadAlias",
            ("default",),
        ) {
            Ok((p,)) => p,
            Err(e) => {
                return check(
                    what,
                    Verdict::Fail,
                    format!(
                        "the Secret Service does not answer: {}",
                        e.message().unwrap_or("no reason given")
                    ),
                )
                .fix(
                    "restart your keyring (gnome-keyring-daemon), or sign in to the desktop again",
                )
            }
        };
        if &*default == "/" {
            return check(what, Verdict::Fail, "the Secret Service has no default keyring")
                .fix("create a default keyring (Passwords and Keys / Seahorse: New Keyring, set as default)");
        }
        let collection = conn.with_proxy("org.freedesktop.secrets", default.clone(), TIMEOUT);
        match collection.get::<bool>("org.freedesktop.Secret.Collection", "Locked") {
            Ok(false) => check(
                what,
                Verdict::Ok,
                format!("Secret Service reachable; default keyring {default} unlocked"),
            ),
            Ok(true) => check(
                what,
                Verdict::Fail,
                format!("the default keyring {default} is locked"),
            )
            .fix("unlock it (Passwords and Keys / Seahorse), or sign in to the desktop with your password so it unlocks"),
            Err(e) => check(
                what,
                Verdict::Fail,
                format!(
                    "cannot read whether the default keyring is locked: {}",
                    e.message().unwrap_or("no reason given")
                ),
            )
            .fix("restart your keyring (gnome-keyring-daemon)"),
        }
    }

    pub fn notification_service() -> Check {
        let what = "notifications";
        let conn = match bus() {
            Ok(c) => c,
            Err(e) => {
                return check(what, Verdict::Warn, e).fix(
                    "the app cannot say when a workload needs you; run it in a desktop session",
                )
            }
        };
        match present(&conn, "org.freedesktop.Notifications") {
            (true, _) => {
                let server = conn
                    .with_proxy(
                        "org.freedesktop.Notifications",
                        "/org/freedesktop/Notifications",
                        TIMEOUT,
                    )
                    .method_call(
                        "org.freedesktop.Notifications",
                        "GetServerInformation",
                        (),
                    )
                    .map(|(name, _vendor, version, _spec): (String, String, String, String)| {
                        format!(" ({name} {version})")
                    })
                    .unwrap_or_default();
                check(
                    what,
                    Verdict::Ok,
                    format!("a notification service runs{server}"),
                )
            }
            (false, true) => check(
                what,
                Verdict::Ok,
                "a notification service starts on demand",
            ),
            (false, false) => check(
                what,
                Verdict::Warn,
                "no notification service (org.freedesktop.Notifications) on the session bus",
            )
            .fix("install one (your desktop's, or dunst / mako) so the app can say when a workload needs you"),
        }
    }

    pub fn tray_host_present() -> Option<bool> {
        let conn = bus().ok()?;
        Some(present(&conn, "org.kde.StatusNotifierWatcher").0)
    }

    pub fn tray_host() -> Check {
        let what = "tray host";
        let conn = match bus() {
            Ok(c) => c,
            Err(e) => {
                return check(what, Verdict::Warn, e)
                    .fix("the app runs without a tray icon; open its window with `tokenwarden`")
            }
        };
        match present(&conn, "org.kde.StatusNotifierWatcher") {
            (true, _) => check(
                what,
                Verdict::Ok,
                "a tray host (StatusNotifierWatcher) is on the session bus",
            ),
            (false, _) => check(
                what,
                Verdict::Warn,
                "no tray host (org.kde.StatusNotifierWatcher) on the session bus: the app has no tray icon",
            )
            .fix("GNOME: enable the AppIndicator extension (gnome-shell-extension-appindicator); meanwhile `tokenwarden` opens the window"),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod session {
    //! The keychain, notifications and the tray are the system's own here.
    use super::{check, Check, Verdict};

    pub fn keychain() -> Check {
        check(
            "keychain",
            Verdict::Ok,
            "the system keychain (not checked here)",
        )
    }

    pub fn notification_service() -> Check {
        check(
            "notifications",
            Verdict::Ok,
            "the system's (not checked here)",
        )
    }

    pub fn tray_host() -> Check {
        check("tray host", Verdict::Ok, "the system's (not checked here)")
    }

    pub fn tray_host_present() -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_url_names_its_port() {
        assert_eq!(port_of("http://127.0.0.1:41234/mcp"), Some(41234));
        assert_eq!(port_of("not a url"), None);
    }
}
