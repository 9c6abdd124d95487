//! What the engine publishes: the per-workload status view (the `status --json`
//! object, later the UI's row) and the record persisted across restarts.
//!
//! Neither type holds a secret; both are safe to log, send to a UI or write to disk.

use crate::classify::Failure;
use crate::clock::Now;
use crate::machine::{Episode, Machine, Phase, Status, Unauth};
use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// One workload as shown to people and scripts. Field names are a fixed interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub status: Status,
    /// The cause: an RFC 6749 code for a verdict, `HTTP 403: plain words` for a
    /// transient error, or a sentence for other states. `null` when healthy.
    pub reason: Option<String>,
    /// Extra state in plain words (short retry progress, what triggered an attempt).
    pub detail: Option<String>,
    /// What the user can do (only for a permanent verdict or a missing login).
    pub hint: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub access_token_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub gives_up_at: Option<OffsetDateTime>,
    pub access_token_valid: bool,
    /// Failed attempts in the current failure episode.
    pub attempts: u32,
    pub token_endpoint: String,
    /// The local proxy's address, when one serves this workload.
    pub local_url: Option<String>,
    /// Why the local proxy is not serving (its port is taken, ...), when it should.
    #[serde(default)]
    pub proxy_error: Option<String>,
    /// False when read from the persisted state because no daemon runs.
    pub live: bool,
    /// The workload renews its access token by itself (its login has a refresh
    /// token, or there is no login yet). `false`: the server issues no refresh
    /// token, so the workload needs a new sign-in whenever its access token ends.
    #[serde(default = "yes")]
    pub can_renew: bool,
    /// The remote answered `403 insufficient_scope` (step-up): the scopes its
    /// challenge asked for, which a sign-in is to ask for. Empty otherwise, and once
    /// the remote refused them to [`STEP_UP_LIMIT`] sign-ins that asked (the reason
    /// then says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_scopes: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A step-up the remote asked for (`403` with `error="insufficient_scope"`): the
/// challenge's scopes and how many sign-ins that already asked for them the remote
/// refused since. No secret in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUp {
    /// The challenge's `scope`, as sent (split on spaces).
    pub scopes: Vec<String>,
    /// Sign-ins that asked for every one of `scopes` and whose token the remote
    /// still refused for lack of them. At [`STEP_UP_LIMIT`] the user is not asked
    /// again.
    #[serde(default)]
    pub refused_logins: u32,
    /// The current login does not have `scopes` (a sign-in is asked for). `false`:
    /// the record is kept only to count refusals.
    #[serde(default)]
    pub pending: bool,
}

/// Sign-ins that asked for a challenge's scopes and were still refused them, after
/// which the user is not asked again for those scopes (a remote that keeps asking
/// cannot loop the user).
pub const STEP_UP_LIMIT: u32 = 2;

impl StepUp {
    pub fn gave_up(&self) -> bool {
        self.refused_logins >= STEP_UP_LIMIT
    }

    /// Say it in the status: the reason and the hint, unless the status already has
    /// a reason of its own (a failure says more than a missing permission).
    pub fn annotate(&self, st: &mut WorkloadStatus) {
        if !self.pending && !self.gave_up() {
            return;
        }
        if !self.gave_up() {
            // What a sign-in would be asked for (and what a notification names once).
            st.needs_scopes = self.scopes.clone();
        }
        if st.reason.is_some() || st.status == Status::Unauthenticated {
            return;
        }
        let scopes = self.scopes.join(" ");
        if self.gave_up() {
            st.reason = Some(format!(
                "needs more permission: {scopes}; the remote refused {} sign-ins that asked for it, so Tokenwarden does not ask again (check the server's scopes)",
                self.refused_logins
            ));
            st.hint = Some(format!(
                "Sign in again by hand if the permission can be granted: tokenwarden login {}",
                st.name
            ));
        } else {
            st.reason = Some(format!("needs more permission: {scopes}"));
            st.hint = Some(format!(
                "Re-authenticate to grant it: tokenwarden login {}",
                st.name
            ));
        }
    }
}

impl WorkloadStatus {
    /// A status with nothing known beyond the name, state and token endpoint; callers
    /// set what they know (the offline CLI view, test fixtures).
    pub fn bare(name: &str, status: Status, token_endpoint: &str) -> Self {
        WorkloadStatus {
            name: name.to_string(),
            status,
            reason: None,
            detail: None,
            hint: None,
            since: None,
            next_attempt_at: None,
            access_token_expires_at: None,
            gives_up_at: None,
            access_token_valid: false,
            attempts: 0,
            token_endpoint: token_endpoint.to_string(),
            local_url: None,
            proxy_error: None,
            live: true,
            can_renew: true,
            needs_scopes: Vec::new(),
        }
    }
}

pub fn rfc3339(t: SystemTime) -> Option<OffsetDateTime> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let secs = OffsetDateTime::from_unix_timestamp(d.as_secs() as i64).ok()?;
    Some(secs + time::Duration::milliseconds(d.subsec_millis() as i64))
}

pub fn view(
    name: &str,
    token_endpoint: &str,
    m: &Machine,
    now: Now,
    policy: &Policy,
) -> WorkloadStatus {
    let (reason, hint) = match m.phase() {
        Phase::Running => (m.last_error().map(Failure::reason), None),
        Phase::Retrying => (m.last_error().map(Failure::reason), None),
        Phase::Unauthenticated(Unauth::Verdict { failure }) => {
            (Some(failure.reason()), failure.hint())
        }
        Phase::Unauthenticated(Unauth::Ceiling { failure }) => (
            Some(format!(
                "gave up after {} of failures; last: {}",
                humantime::format_duration(round_secs(policy.retrying_ceiling)),
                failure.reason()
            )),
            None,
        ),
        Phase::Unauthenticated(Unauth::NoLogin) => (
            Some("not logged in".into()),
            Some(format!("Log in: tokenwarden login {name}")),
        ),
        Phase::Unauthenticated(Unauth::NoRefreshToken { rejected }) => (
            Some(format!(
                "{}; this server issues no refresh token: sign in again",
                if *rejected {
                    "the remote rejected the access token"
                } else {
                    "the access token expired"
                }
            )),
            Some(format!("Log in again: tokenwarden login {name}")),
        ),
        Phase::Unauthenticated(Unauth::SignedOut) => (
            Some("signed out".into()),
            Some(format!("Log in: tokenwarden login {name}")),
        ),
        Phase::Unauthenticated(Unauth::ConfigChanged { changed }) => (
            Some(format!(
                "the stored login was made with another {} (workloads.toml changed); its tokens are not sent to the new one",
                changed.join(", ")
            )),
            Some(format!("Log in again: tokenwarden login {name}")),
        ),
        Phase::Stopped => (Some("disabled in workloads.toml".into()), None),
    };
    let mut detail = m.detail(policy);
    if let Some(t) = m.last_trigger() {
        let d = format!("last attempt: {}", t.describe());
        detail = Some(match detail {
            Some(x) => format!("{x}; {d}"),
            None => d,
        });
    }
    WorkloadStatus {
        name: name.to_string(),
        status: m.status(),
        reason,
        detail,
        hint,
        since: rfc3339(m.since()),
        next_attempt_at: m.next_attempt_at(now).and_then(rfc3339),
        access_token_expires_at: m.access_expires_at().and_then(rfc3339),
        gives_up_at: m.gives_up_at(now, policy).and_then(rfc3339),
        access_token_valid: m.access_token_valid(now),
        attempts: m.episode().map(|e| e.attempts).unwrap_or(0),
        token_endpoint: token_endpoint.to_string(),
        local_url: None,
        proxy_error: None,
        live: true,
        can_renew: m.renewable(),
        needs_scopes: Vec::new(),
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// The part of a monitor's state that survives a restart (in `state.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub phase: Phase,
    /// Unix milliseconds.
    pub since_ms: u64,
    pub last_error: Option<Box<Failure>>,
    pub episode: Option<PersistedEpisode>,
    pub saved_at_ms: u64,
    /// [`WorkloadStatus::can_renew`] when saved.
    #[serde(default = "yes")]
    pub can_renew: bool,
    /// The step-up the remote asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<StepUp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedEpisode {
    pub started_ms: u64,
    /// Awake time the episode had used when saved: the ceiling keeps counting from it.
    pub awake_spent_ms: u64,
    pub attempts: u32,
    pub retrying_attempts: u32,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl Persisted {
    pub fn capture(m: &Machine, now: Now) -> Self {
        Persisted {
            phase: m.phase().clone(),
            since_ms: unix_ms(m.since()),
            last_error: m.last_error().cloned().map(Box::new),
            episode: m.episode().map(|e| PersistedEpisode {
                started_ms: unix_ms(e.started_wall),
                awake_spent_ms: e.awake_spent(now).as_millis() as u64,
                attempts: e.attempts,
                retrying_attempts: e.retrying_attempts,
            }),
            saved_at_ms: unix_ms(now.wall),
            can_renew: m.renewable(),
            step_up: None,
        }
    }

    /// Rebuild the failure episode in a new process: the ceiling continues from the
    /// awake time already spent, and one attempt is owed right after the restart.
    /// What a restart brings back of this record.
    pub fn restored(&self, now: Now) -> crate::machine::Restored {
        crate::machine::Restored {
            phase: self.phase.clone(),
            since: from_ms(self.since_ms),
            last_error: self.last_error.clone(),
            episode: self.restore_episode(now),
        }
    }

    pub fn restore_episode(&self, now: Now) -> Option<Box<Episode>> {
        self.episode.as_ref().map(|e| {
            Box::new(Episode {
                started_wall: from_ms(e.started_ms),
                awake_before: Duration::from_millis(e.awake_spent_ms),
                awake_mark: now.awake,
                attempts: e.attempts,
                retrying_attempts: e.retrying_attempts,
                owes_attempt: true,
                not_before: None,
            })
        })
    }

    /// A persisted status shown when no daemon runs.
    pub fn offline_view(
        &self,
        name: &str,
        token_endpoint: &str,
        policy: &Policy,
    ) -> WorkloadStatus {
        let now_wall = SystemTime::now();
        let now = Now {
            wall: now_wall,
            awake: Duration::ZERO,
        };
        let m = Machine::offline(now, self.restored(now), self.can_renew);
        let mut v = view(
            name,
            token_endpoint,
            &m,
            Now {
                wall: now_wall,
                awake: Duration::ZERO,
            },
            policy,
        );
        v.attempts = self.episode.as_ref().map(|e| e.attempts).unwrap_or(0);
        v.live = false;
        if let Some(s) = &self.step_up {
            s.annotate(&mut v);
        }
        v
    }
}
