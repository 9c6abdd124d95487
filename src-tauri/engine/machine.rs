//! The pure decision logic of one workload's monitor.
//!
//! Nothing here does I/O or reads a clock: every method takes `now` and, where
//! randomness matters, a jitter value in [0, 1). The monitor task feeds it outcomes
//! and asks it when to act next; the tables of tests at the bottom drive it through
//! every transition.
//!
//! ```text
//!                 success                                   success
//!        ┌──────────────────────┐                 ┌──────────────────────────┐
//!        v                      │                 │                          │
//!   ┌─────────┐  transient  ┌───┴────────┐  short retry exhausted  ┌─────────┴┐
//!   │ running │────────────>│  running   │────────────────────────>│ retrying │──┐ transient:
//!   └─────────┘             │(short retry│  (tries or elapsed)     └────┬─────┘<─┘ capped backoff
//!        │                  │  detail)   │                              │
//!        │ permanent        └─────┬──────┘ permanent                    │ permanent, or ceiling
//!        v                        v                                     v (awake time, and at least
//!   ┌─────────────────┐<──────────────────────────────────────────────────  one attempt after the
//!   │ unauthenticated │  needs the user: Re-authenticate (login → running)   latest wake/network event)
//!   └─────────────────┘
//! ```
//! `stopped` is set by the user (the workload is disabled) and left only by enabling it.
//!
//! A login without a refresh token (a server that issues none) cannot renew: such a
//! machine is `running` while its access token lasts, with nothing scheduled but the
//! token's expiry (a token without `expires_in` lasts until the remote rejects it),
//! and goes straight to `unauthenticated` (`Unauth::NoRefreshToken`) when the token
//! expires or the remote rejects it. No trigger starts an attempt for it.
//!
//! Invariants:
//! * only a permanent verdict (`Failure::is_permanent`) or the ceiling leads to
//!   `unauthenticated`; the registration hint is given for the verdict only;
//! * the ceiling counts awake time (`Now::awake`), so sleep never counts;
//! * a `Retry-After` is honoured by every attempt except the user's "Retry now".

use crate::classify::Failure;
use crate::clock::Now;
use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// The four status words, shown everywhere the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Retrying,
    Unauthenticated,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Unauthenticated => "unauthenticated",
            Status::Stopped => "stopped",
        }
    }
}

/// Why a workload is `unauthenticated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Unauth {
    /// The issuer rendered a verdict.
    /// (Failures are boxed here and below: every idle workload keeps a machine and
    /// its persisted copy, and a failure is the rare, large part.)
    Verdict { failure: Box<Failure> },
    /// Transient failures lasted past the ceiling.
    Ceiling { failure: Box<Failure> },
    /// There is no stored login.
    NoLogin,
    /// The access token ended (it expired, or the remote rejected it when `rejected`)
    /// and the server issues no refresh token.
    NoRefreshToken {
        #[serde(default)]
        rejected: bool,
    },
    /// The user logged out.
    SignedOut,
    /// The stored login was made with another configuration (these keys of
    /// workloads.toml changed since); its tokens are not sent anywhere.
    /// (Boxed like the failures above.)
    ConfigChanged { changed: Box<Vec<String>> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Running,
    Retrying,
    Unauthenticated(Unauth),
    Stopped,
}

/// A run of consecutive failures, from the first failure to the next success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub started_wall: SystemTime,
    /// Awake time spent in the episode before `awake_mark` (carried over a restart).
    pub awake_before: Duration,
    /// `Now::awake` when this process started counting the episode.
    pub awake_mark: Duration,
    /// Failed attempts in the episode.
    pub attempts: u32,
    /// Failed attempts since entering `retrying`.
    pub retrying_attempts: u32,
    /// Set by a wake or network event: the ceiling may not end the episode before one
    /// more attempt has been made.
    pub owes_attempt: bool,
    /// `Retry-After`: no automatic attempt before this awake time.
    pub not_before: Option<Duration>,
}

impl Episode {
    pub fn awake_spent(&self, now: Now) -> Duration {
        self.awake_before + now.awake.saturating_sub(self.awake_mark)
    }
}

/// When the next attempt is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Proactive refresh: a wall-clock instant (survives sleep correctly).
    Wall(SystemTime),
    /// Backoff: an awake-clock instant.
    Awake(Duration),
    Now,
    Never,
}

/// Something asked for an attempt out of schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The user pressed "Retry now" (overrides `Retry-After`).
    User,
    /// A caller needs a token and the one held is expired.
    TokenRequest,
    /// A network interface came up.
    Network,
    /// The machine woke from sleep.
    Wake,
    /// Another workload on the same token endpoint just refreshed successfully.
    IssuerRecovered,
    /// The protected resource refused the current access token (`401` through the
    /// local proxy): refresh before it would be due.
    Rejected,
}

impl Trigger {
    pub fn describe(self) -> &'static str {
        match self {
            Trigger::User => "you asked to retry",
            Trigger::TokenRequest => "a token was requested",
            Trigger::Network => "network changed",
            Trigger::Wake => "woke from sleep",
            Trigger::IssuerRecovered => "another workload on this issuer recovered",
            Trigger::Rejected => "the remote rejected the access token",
        }
    }
}

/// What a step changed, for the monitor to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    pub status_changed: bool,
    /// The workload left a failure episode (short retry or `retrying`).
    pub recovered: bool,
}

#[derive(Clone, Debug, PartialEq)]
/// The fields are the machine's own: the monitor drives it through its transitions
/// (`on_*`), the restores below and reads it through the accessors.
pub struct Machine {
    phase: Phase,
    since: SystemTime,
    access_expires_at: Option<SystemTime>,
    episode: Option<Box<Episode>>,
    last_error: Option<Box<Failure>>,
    due: Due,
    last_trigger: Option<Trigger>,
    /// Token bucket for network-triggered attempts (see `Policy::network_burst`).
    net_budget: f64,
    /// Awake time at which `net_budget` was last brought up to date.
    net_budget_at: Duration,
    /// The current attempt was caused by a network change: if it fails to connect,
    /// one quick follow-up is allowed (DNS or routes may not have been ready).
    followup_armed: bool,
    /// The login has a refresh token (or there is no login yet). `false`: see
    /// [`Machine::without_refresh`].
    renewable: bool,
}

/// What a restart brings back of a workload's last known state (the state file).
#[derive(Clone, Debug)]
pub struct Restored {
    pub phase: Phase,
    pub since: SystemTime,
    pub last_error: Option<Box<Failure>>,
    pub episode: Option<Box<Episode>>,
}

impl Machine {
    pub fn phase(&self) -> &Phase {
        &self.phase
    }
    pub fn since(&self) -> SystemTime {
        self.since
    }
    pub fn access_expires_at(&self) -> Option<SystemTime> {
        self.access_expires_at
    }
    pub fn episode(&self) -> Option<&Episode> {
        self.episode.as_deref()
    }
    pub fn last_error(&self) -> Option<&Failure> {
        self.last_error.as_deref()
    }
    pub fn due(&self) -> &Due {
        &self.due
    }
    pub fn last_trigger(&self) -> Option<Trigger> {
        self.last_trigger
    }
    /// The login has a refresh token (or there is none yet).
    pub fn renewable(&self) -> bool {
        self.renewable
    }

    /// Show the last known state until the store has been read (not "not logged in").
    pub fn show_restored(&mut self, r: Restored) {
        self.phase = r.phase;
        self.since = r.since;
        self.last_error = r.last_error;
        self.episode = r.episode;
    }

    /// A verdict (or give-up) newer than the stored login stands: nothing is due.
    pub fn keep_verdict(&mut self, r: Restored) {
        self.phase = r.phase;
        self.since = r.since;
        self.last_error = r.last_error;
        self.due = Due::Never;
    }

    /// A failure episode under way before a restart goes on, with an attempt now.
    pub fn resume_episode(&mut self, r: Restored) {
        self.show_restored(r);
        self.due = Due::Now;
    }

    /// Keep "running since" across a restart.
    pub fn keep_since(&mut self, since: SystemTime) {
        self.since = since;
    }

    /// A persisted status, shown without a running monitor (nothing due).
    pub fn offline(now: Now, r: Restored, renewable: bool) -> Self {
        let mut m = Machine::no_login(now);
        m.keep_verdict(r);
        m.renewable = renewable;
        m
    }

    /// Needs the user for `why`, whatever was before (signed out, a login of another
    /// configuration).
    pub fn unauthenticated(now: Now, why: Unauth) -> Self {
        let mut m = Machine::no_login(now);
        m.phase = Phase::Unauthenticated(why);
        m
    }

    /// The remote refused the access token: it is useless whatever its expiry said.
    pub fn access_token_refused(&mut self, now: Now) {
        self.access_expires_at = Some(now.wall);
    }

    /// A login without a refresh token: next due when its access token ends.
    pub fn due_at_expiry(&mut self, expires_at: Option<SystemTime>) {
        self.due = expires_at.map_or(Due::Never, Due::Wall);
    }

    /// A workload with no login yet.
    pub fn no_login(now: Now) -> Self {
        Machine {
            phase: Phase::Unauthenticated(Unauth::NoLogin),
            since: now.wall,
            access_expires_at: None,
            episode: None,
            last_error: None,
            due: Due::Never,
            last_trigger: None,
            net_budget: f64::MAX,
            net_budget_at: now.awake,
            followup_armed: false,
            renewable: true,
        }
    }

    /// A workload disabled by the user.
    pub fn stopped(now: Now) -> Self {
        Machine {
            phase: Phase::Stopped,
            due: Due::Never,
            ..Machine::no_login(now)
        }
    }

    /// Tokens were loaded (startup or a fresh login). A still-valid access token is
    /// used until its refresh is due; otherwise refresh now.
    pub fn with_tokens(
        now: Now,
        access_expires_at: Option<SystemTime>,
        lifetime: Option<Duration>,
        policy: &Policy,
        jitter: f64,
    ) -> Self {
        let mut m = Machine {
            phase: Phase::Running,
            since: now.wall,
            due: Due::Now,
            ..Machine::no_login(now)
        };
        m.access_expires_at = access_expires_at;
        if let (Some(exp), Some(life)) = (access_expires_at, lifetime) {
            m.due = Due::Wall(refresh_at(exp, life, policy, jitter));
        }
        m
    }

    /// Tokens without a refresh token were loaded (a login at a server that issues
    /// none): `running` while the access token lasts, due at its expiry (never, for
    /// a token without one: it lasts until the remote rejects it); already expired
    /// means `unauthenticated`.
    pub fn without_refresh(now: Now, access_expires_at: Option<SystemTime>) -> Self {
        let mut m = Machine {
            phase: Phase::Running,
            since: now.wall,
            due: access_expires_at.map_or(Due::Never, Due::Wall),
            renewable: false,
            ..Machine::no_login(now)
        };
        m.access_expires_at = access_expires_at;
        if !m.access_token_valid(now) {
            m.token_ended(now, false);
        }
        m
    }

    /// A machine that cannot renew: its access token expired (`rejected`: the remote
    /// refused it). Ends in `unauthenticated`, nothing scheduled.
    pub fn token_ended(&mut self, now: Now, rejected: bool) -> Effect {
        debug_assert!(
            !self.renewable,
            "only a machine without refresh token ends so"
        );
        let before = self.status();
        if matches!(self.phase, Phase::Stopped) {
            return Effect::default();
        }
        // The token is useless now, whatever its expiry said.
        self.access_expires_at = Some(self.access_expires_at.map_or(now.wall, |e| e.min(now.wall)));
        self.due = Due::Never;
        self.episode = None;
        self.last_trigger = None;
        if before != Status::Unauthenticated {
            self.since = now.wall;
        }
        self.phase = Phase::Unauthenticated(Unauth::NoRefreshToken { rejected });
        Effect {
            status_changed: before != Status::Unauthenticated,
            recovered: false,
        }
    }

    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Running => Status::Running,
            Phase::Retrying => Status::Retrying,
            Phase::Unauthenticated(_) => Status::Unauthenticated,
            Phase::Stopped => Status::Stopped,
        }
    }

    pub fn is_due(&self, now: Now) -> bool {
        match self.due {
            Due::Wall(t) => now.wall >= t,
            Due::Awake(t) => now.awake >= t,
            Due::Now => true,
            Due::Never => false,
        }
    }

    /// How long until due, or `None` if never.
    pub fn time_until_due(&self, now: Now) -> Option<Duration> {
        match self.due {
            Due::Wall(t) => Some(t.duration_since(now.wall).unwrap_or(Duration::ZERO)),
            Due::Awake(t) => Some(t.saturating_sub(now.awake)),
            Due::Now => Some(Duration::ZERO),
            Due::Never => None,
        }
    }

    /// The wall time of the next attempt, for display.
    pub fn next_attempt_at(&self, now: Now) -> Option<SystemTime> {
        self.time_until_due(now).map(|d| now.wall + d)
    }

    /// When the ceiling ends the current episode if the machine stays awake.
    pub fn gives_up_at(&self, now: Now, policy: &Policy) -> Option<SystemTime> {
        let ep = self.episode.as_ref()?;
        if !matches!(self.phase, Phase::Running | Phase::Retrying) {
            return None;
        }
        Some(now.wall + policy.retrying_ceiling.saturating_sub(ep.awake_spent(now)))
    }

    /// A token without expiry is valid only when it cannot be renewed (it lasts
    /// until the remote rejects it).
    pub fn access_token_valid(&self, now: Now) -> bool {
        match self.access_expires_at {
            Some(t) => t > now.wall,
            None => !self.renewable && matches!(self.phase, Phase::Running),
        }
    }

    /// A refresh succeeded; the new tokens are already in the secret store.
    pub fn on_success(
        &mut self,
        now: Now,
        lifetime: Duration,
        policy: &Policy,
        jitter: f64,
    ) -> Effect {
        let before = self.status();
        let recovered = self.episode.is_some() || before != Status::Running;
        let expires = now.wall + lifetime;
        // The budget bounds useless attempts: a network-triggered attempt that worked
        // gives its unit back.
        if std::mem::take(&mut self.followup_armed) {
            self.net_budget = (self.net_budget + 1.0).min(f64::from(policy.network_burst));
        }
        self.access_expires_at = Some(expires);
        self.episode = None;
        self.last_error = None;
        self.due = Due::Wall(refresh_at(expires, lifetime, policy, jitter));
        if before != Status::Running {
            self.phase = Phase::Running;
            self.since = now.wall;
        }
        Effect {
            status_changed: before != Status::Running,
            recovered,
        }
    }

    /// A refresh failed. `jitter` in [0, 1) spreads the next attempt.
    pub fn on_failure(
        &mut self,
        failure: Failure,
        now: Now,
        policy: &Policy,
        jitter: f64,
    ) -> Effect {
        let before = self.status();
        if matches!(self.phase, Phase::Stopped) {
            return Effect::default();
        }
        if failure.is_permanent() {
            self.followup_armed = false;
            let failure = Box::new(failure);
            self.phase = Phase::Unauthenticated(Unauth::Verdict {
                failure: failure.clone(),
            });
            self.last_error = Some(failure);
            self.since = now.wall;
            self.episode = None;
            self.due = Due::Never;
            return Effect {
                status_changed: before != Status::Unauthenticated,
                recovered: false,
            };
        }
        if matches!(self.phase, Phase::Unauthenticated(_)) {
            // A user retry from `unauthenticated` failed transiently: start afresh in
            // `retrying`, the cause may clear.
            self.phase = Phase::Retrying;
            self.since = now.wall;
            self.episode = None;
        }
        let ep = self.episode.get_or_insert_with(|| {
            Box::new(Episode {
                started_wall: now.wall,
                awake_before: Duration::ZERO,
                awake_mark: now.awake,
                attempts: 0,
                retrying_attempts: 0,
                owes_attempt: false,
                not_before: None,
            })
        });
        ep.attempts += 1;
        ep.owes_attempt = false;
        let spent = ep.awake_spent(now);
        let mut delay = match self.phase {
            Phase::Running => {
                if ep.attempts >= policy.refresh_max_tries || spent >= policy.refresh_max_elapsed {
                    self.phase = Phase::Retrying;
                    self.since = now.wall;
                    ep.retrying_attempts = 0;
                    backoff(
                        policy.retrying_interval,
                        policy.retrying_multiplier,
                        0,
                        policy.retrying_max_interval,
                        policy.retrying_jitter,
                        jitter,
                    )
                } else {
                    backoff(
                        policy.refresh_initial_interval,
                        policy.refresh_multiplier,
                        ep.attempts - 1,
                        policy.refresh_max_interval,
                        policy.refresh_jitter,
                        jitter,
                    )
                }
            }
            _ => {
                if spent >= policy.retrying_ceiling {
                    let failure = Box::new(failure);
                    self.phase = Phase::Unauthenticated(Unauth::Ceiling {
                        failure: failure.clone(),
                    });
                    self.since = now.wall;
                    self.last_error = Some(failure);
                    self.due = Due::Never;
                    self.episode = None;
                    return Effect {
                        status_changed: true,
                        recovered: false,
                    };
                }
                ep.retrying_attempts += 1;
                backoff(
                    policy.retrying_interval,
                    policy.retrying_multiplier,
                    ep.retrying_attempts,
                    policy.retrying_max_interval,
                    policy.retrying_jitter,
                    jitter,
                )
            }
        };
        ep.not_before = None;
        if let Some(ra) = failure.retry_after {
            let ra = ra.min(policy.retry_after_max);
            delay = delay.max(ra);
            ep.not_before = Some(now.awake + ra);
        }
        // A network-triggered attempt that could not connect: the resolver or routes
        // may lag the address by a moment. One quick follow-up, paid from the budget.
        let followup = std::mem::take(&mut self.followup_armed)
            && failure.is_connectivity()
            && ep.not_before.is_none()
            && take_budget(&mut self.net_budget, &mut self.net_budget_at, now, policy);
        if followup {
            delay = delay.min(policy.network_followup);
        }
        self.due = Due::Awake(now.awake + delay);
        self.last_error = Some(Box::new(failure));
        Effect {
            status_changed: before != self.status(),
            recovered: false,
        }
    }

    /// Something asks for an attempt now. Returns whether the monitor should attempt
    /// (now, or for a wake within `wake_spread`); otherwise the schedule stands.
    pub fn on_trigger(&mut self, trigger: Trigger, now: Now, policy: &Policy, jitter: f64) -> bool {
        if !self.renewable {
            // Nothing to attempt: the token lasts until it ends (`token_ended`).
            return false;
        }
        match (&self.phase, trigger) {
            (Phase::Stopped, _)
            | (
                Phase::Unauthenticated(
                    Unauth::NoLogin | Unauth::SignedOut | Unauth::ConfigChanged { .. },
                ),
                _,
            ) => return false,
            // From a verdict or the ceiling only the user may try again.
            (Phase::Unauthenticated(_), Trigger::User) => {}
            (Phase::Unauthenticated(_), _) => return false,
            _ => {}
        }
        if !policy.triggers
            && matches!(
                trigger,
                Trigger::Network | Trigger::Wake | Trigger::IssuerRecovered
            )
        {
            return false;
        }
        let in_episode = self.episode.is_some();
        if let Some(ep) = self.episode.as_mut() {
            if matches!(trigger, Trigger::Network | Trigger::Wake) {
                ep.owes_attempt = true;
            }
            if trigger != Trigger::User && ep.not_before.is_some_and(|nb| now.awake < nb) {
                return false;
            }
        }
        let wanted = match trigger {
            Trigger::User => true,
            // A token request when the held token is expired.
            Trigger::TokenRequest => !self.access_token_valid(now) || in_episode,
            // A network change only matters to a failing workload, within its budget.
            Trigger::Network => {
                in_episode
                    && take_budget(&mut self.net_budget, &mut self.net_budget_at, now, policy)
            }
            Trigger::IssuerRecovered => in_episode,
            // The token is useless now, whatever its expiry says.
            Trigger::Rejected => true,
            // Wake also re-checks wall-clock deadlines that passed during the sleep.
            Trigger::Wake => in_episode || self.is_due(now),
        };
        if wanted {
            self.due = match trigger {
                Trigger::Wake => {
                    Due::Awake(now.awake + policy.wake_spread.mul_f64(jitter.clamp(0.0, 1.0)))
                }
                _ => Due::Now,
            };
            self.followup_armed = trigger == Trigger::Network;
            self.last_trigger = Some(trigger);
        }
        wanted
    }

    /// Short words for the status detail ("short retry 2 of 5").
    pub fn detail(&self, policy: &Policy) -> Option<String> {
        let ep = self.episode.as_ref()?;
        match self.phase {
            Phase::Running => Some(format!(
                "refresh failed {} time{}; retrying shortly (try {} of {})",
                ep.attempts,
                if ep.attempts == 1 { "" } else { "s" },
                ep.attempts + 1,
                policy.refresh_max_tries
            )),
            Phase::Retrying => Some(format!("{} failed attempts so far", ep.attempts)),
            _ => None,
        }
    }
}

/// Take one unit from a token bucket of `network_burst`, refilled one per
/// `network_refill` of awake time.
fn take_budget(budget: &mut f64, at: &mut Duration, now: Now, policy: &Policy) -> bool {
    let cap = f64::from(policy.network_burst);
    let elapsed = now.awake.saturating_sub(*at).as_secs_f64();
    let refill = policy.network_refill.as_secs_f64().max(1e-3);
    *budget = (budget.min(cap) + elapsed / refill).min(cap);
    *at = now.awake;
    if *budget >= 1.0 {
        *budget -= 1.0;
        true
    } else {
        false
    }
}

/// Wall time at which to refresh a token expiring at `expires` with `lifetime`.
pub fn refresh_at(
    expires: SystemTime,
    lifetime: Duration,
    policy: &Policy,
    jitter: f64,
) -> SystemTime {
    let lead = policy.refresh_lead(lifetime, jitter);
    expires.checked_sub(lead).unwrap_or(expires)
}

/// `initial * multiplier^n`, capped at `max`, then spread by ±`spread` using `jitter01`.
/// Checked arithmetic: huge `n` saturates at `max`.
pub fn backoff(
    initial: Duration,
    multiplier: f64,
    n: u32,
    max: Duration,
    spread: f64,
    jitter01: f64,
) -> Duration {
    let factor = multiplier.powi(n.min(1000) as i32);
    let secs = initial.as_secs_f64() * factor;
    let base = if secs.is_finite() && secs < max.as_secs_f64() {
        Duration::from_secs_f64(secs)
    } else {
        max
    };
    let j = (jitter01.clamp(0.0, 1.0) * 2.0 - 1.0) * spread;
    let jittered = base.as_secs_f64() * (1.0 + j);
    Duration::from_secs_f64(jittered.max(0.001))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{BodyShape, FailureKind};

    const MID: f64 = 0.5; // jitter value that yields no jitter

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    /// `now` at `awake` seconds with `slept` seconds of sleep before it.
    fn at(awake: f64, slept: f64) -> Now {
        Now {
            wall: t0() + Duration::from_secs_f64(awake + slept),
            awake: Duration::from_secs_f64(awake),
        }
    }

    fn waf() -> Failure {
        Failure::new(FailureKind::Http {
            status: 403,
            body: BodyShape::Html,
        })
    }

    fn verdict(code: &str) -> Failure {
        Failure::new(FailureKind::OAuth {
            status: 400,
            error: code.into(),
            description: None,
        })
    }

    fn running(policy: &Policy) -> Machine {
        let mut m = Machine::no_login(at(0.0, 0.0));
        m.phase = Phase::Running;
        m.on_success(at(0.0, 0.0), Duration::from_secs(3600), policy, MID);
        m
    }

    /// Fail until the status changes; returns the number of failures and the times.
    fn fail_until_status_changes(m: &mut Machine, p: &Policy, mut t: f64) -> (u32, f64) {
        let start = m.status();
        let mut n = 0;
        while m.status() == start && n < 10_000 {
            m.on_failure(waf(), at(t, 0.0), p, MID);
            n += 1;
            t += m
                .time_until_due(at(t, 0.0))
                .unwrap_or_default()
                .as_secs_f64();
        }
        (n, t)
    }

    #[test]
    fn success_schedules_refresh_at_lead_before_expiry() {
        let p = Policy::default();
        let m = running(&p);
        assert_eq!(m.status(), Status::Running);
        assert_eq!(m.access_expires_at, Some(t0() + Duration::from_secs(3600)));
        // 20% of an hour = 12 minutes before expiry, pulled 5% earlier by jitter 0.5.
        assert_eq!(m.due, Due::Wall(t0() + Duration::from_secs(3600 - 756)));
    }

    #[test]
    fn short_retry_recovering_keeps_running() {
        let p = Policy::default();
        let mut m = running(&p);
        let e = m.on_failure(waf(), at(2880.0, 0.0), &p, MID);
        assert!(!e.status_changed);
        assert_eq!(
            m.status(),
            Status::Running,
            "short retry does not change the status"
        );
        assert_eq!(
            m.due,
            Due::Awake(Duration::from_secs(2890)),
            "10 s initial interval"
        );
        assert!(m.detail(&p).unwrap().contains("try 2 of 5"));
        let e = m.on_success(at(2890.0, 0.0), Duration::from_secs(3600), &p, MID);
        assert!(e.recovered && !e.status_changed);
        assert!(m.episode.is_none() && m.last_error.is_none());
    }

    #[test]
    fn short_retry_exhausting_enters_retrying_with_toolhive_numbers() {
        let p = Policy::default();
        let mut m = running(&p);
        let mut waits = Vec::new();
        let mut t = 100.0;
        for _ in 0..4 {
            m.on_failure(waf(), at(t, 0.0), &p, MID);
            let w = m.time_until_due(at(t, 0.0)).unwrap().as_secs_f64();
            waits.push(w);
            t += w;
        }
        assert_eq!(waits, vec![10.0, 15.0, 22.5, 33.75]);
        assert_eq!(m.status(), Status::Running);
        let e = m.on_failure(waf(), at(t, 0.0), &p, MID);
        assert!(e.status_changed);
        assert_eq!(
            m.status(),
            Status::Retrying,
            "5th failure ends the short retry"
        );
        assert_eq!(m.since, at(t, 0.0).wall);
        assert_eq!(m.time_until_due(at(t, 0.0)), Some(Duration::from_secs(30)));
        // Then 60, 120, 240, 300 (cap), 300...
        let mut cadence = Vec::new();
        for _ in 0..6 {
            t += m.time_until_due(at(t, 0.0)).unwrap().as_secs_f64();
            m.on_failure(waf(), at(t, 0.0), &p, MID);
            cadence.push(m.time_until_due(at(t, 0.0)).unwrap().as_secs());
        }
        assert_eq!(cadence, vec![60, 120, 240, 300, 300, 300]);
    }

    #[test]
    fn short_retry_also_ends_on_max_elapsed() {
        let p = Policy {
            refresh_max_tries: 100,
            ..Policy::default()
        };
        let mut m = running(&p);
        m.on_failure(waf(), at(0.0, 0.0), &p, MID);
        m.on_failure(waf(), at(299.0, 0.0), &p, MID);
        assert_eq!(m.status(), Status::Running);
        m.on_failure(waf(), at(300.0, 0.0), &p, MID);
        assert_eq!(m.status(), Status::Retrying);
    }

    #[test]
    fn retrying_recovers_to_running() {
        let p = Policy::default();
        let mut m = running(&p);
        let (_, t) = fail_until_status_changes(&mut m, &p, 0.0);
        assert_eq!(m.status(), Status::Retrying);
        let e = m.on_success(at(t, 0.0), Duration::from_secs(3600), &p, MID);
        assert!(e.status_changed && e.recovered);
        assert_eq!(m.status(), Status::Running);
        assert_eq!(m.since, at(t, 0.0).wall);
        assert!(matches!(m.due, Due::Wall(_)));
    }

    #[test]
    fn ceiling_ends_in_unauthenticated_without_hint() {
        let p = Policy {
            retrying_ceiling: Duration::from_secs(3600),
            ..Policy::default()
        };
        let mut m = running(&p);
        let (_, t) = fail_until_status_changes(&mut m, &p, 0.0);
        assert_eq!(m.status(), Status::Retrying);
        let gives_up = m.gives_up_at(at(t, 0.0), &p).unwrap();
        assert_eq!(gives_up, at(3600.0, 0.0).wall);
        let (n, t_end) = fail_until_status_changes(&mut m, &p, t);
        assert_eq!(m.status(), Status::Unauthenticated);
        assert!(
            (3600.0..3600.0 + 301.0).contains(&t_end),
            "gave up at {t_end}"
        );
        assert!(n > 5);
        match &m.phase {
            Phase::Unauthenticated(Unauth::Ceiling { failure }) => {
                assert!(failure.hint().is_none())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.due, Due::Never);
    }

    #[test]
    fn permanent_error_during_retrying_is_unauthenticated_at_once_with_hint() {
        let p = Policy::default();
        let mut m = running(&p);
        let (_, t) = fail_until_status_changes(&mut m, &p, 0.0);
        assert_eq!(m.status(), Status::Retrying);
        let e = m.on_failure(verdict("invalid_grant"), at(t, 0.0), &p, MID);
        assert!(e.status_changed);
        match &m.phase {
            Phase::Unauthenticated(Unauth::Verdict { failure }) => {
                assert_eq!(failure.reason(), "invalid_grant");
                assert!(failure.hint().is_some());
            }
            other => panic!("{other:?}"),
        }
        // And from plain running too, on the first failure.
        let mut m = running(&p);
        m.on_failure(verdict("invalid_client"), at(10.0, 0.0), &p, MID);
        assert_eq!(m.status(), Status::Unauthenticated);
        assert!(
            !m.on_trigger(Trigger::Network, at(11.0, 0.0), &p, MID),
            "no automatic retry after a verdict"
        );
    }

    #[test]
    fn sleep_does_not_count_toward_the_ceiling() {
        let p = Policy {
            retrying_ceiling: Duration::from_secs(3600),
            ..Policy::default()
        };
        let mut m = running(&p);
        let (_, t) = fail_until_status_changes(&mut m, &p, 0.0);
        // 10 hours asleep, then the next failure: 10 h of wall time passed, little awake time.
        let woke = at(t + 1.0, 36000.0);
        assert!(m.on_trigger(Trigger::Wake, woke, &p, MID));
        m.on_failure(waf(), woke, &p, MID);
        assert_eq!(m.status(), Status::Retrying, "sleep did not count");
        let ep = m.episode.as_ref().unwrap();
        assert!(ep.awake_spent(woke) < Duration::from_secs(600));
        let gives_up = m.gives_up_at(woke, &p).unwrap();
        assert!(gives_up > woke.wall + Duration::from_secs(3000));
    }

    #[test]
    fn ceiling_waits_for_one_attempt_after_a_wake_or_network_event() {
        let p = Policy {
            retrying_ceiling: Duration::from_secs(600),
            ..Policy::default()
        };
        let mut m = running(&p);
        let (_, t) = fail_until_status_changes(&mut m, &p, 0.0);
        // Past the ceiling, but a network event owes an attempt...
        let late = at(t + 700.0, 0.0);
        m.episode.as_mut().unwrap().not_before = None;
        assert!(m.on_trigger(Trigger::Network, late, &p, MID));
        assert!(m.episode.as_ref().unwrap().owes_attempt);
        // ...which, if it fails, is the one that gives up; a success recovers.
        let mut m2 = m.clone();
        m.on_failure(waf(), late, &p, MID);
        assert_eq!(m.status(), Status::Unauthenticated);
        m2.on_success(late, Duration::from_secs(60), &p, MID);
        assert_eq!(m2.status(), Status::Running);
    }

    #[test]
    fn retry_after_is_honoured_by_schedule_and_triggers_but_not_by_the_user() {
        let p = Policy::default();
        let mut m = running(&p);
        let mut f = waf();
        f.kind = FailureKind::Http {
            status: 429,
            body: BodyShape::Empty,
        };
        f.retry_after = Some(Duration::from_secs(120));
        m.on_failure(f, at(100.0, 0.0), &p, MID);
        assert_eq!(
            m.due,
            Due::Awake(Duration::from_secs(220)),
            "max(10 s backoff, 120 s)"
        );
        assert!(!m.on_trigger(Trigger::Network, at(150.0, 0.0), &p, MID));
        assert!(!m.on_trigger(Trigger::IssuerRecovered, at(150.0, 0.0), &p, MID));
        assert!(!m.on_trigger(Trigger::TokenRequest, at(150.0, 0.0), &p, MID));
        assert!(!m.on_trigger(Trigger::Rejected, at(150.0, 0.0), &p, MID));
        assert_eq!(m.due, Due::Awake(Duration::from_secs(220)));
        assert!(m.on_trigger(Trigger::User, at(150.0, 0.0), &p, MID));
        assert_eq!(m.due, Due::Now);
        assert_eq!(m.last_trigger, Some(Trigger::User));
    }

    #[test]
    fn a_rejected_token_is_refreshed_at_once_but_not_after_a_verdict() {
        let p = Policy::default();
        let mut m = running(&p);
        assert!(m.access_token_valid(at(10.0, 0.0)));
        assert!(m.on_trigger(Trigger::Rejected, at(10.0, 0.0), &p, MID));
        assert_eq!(m.due, Due::Now);
        assert_eq!(m.last_trigger, Some(Trigger::Rejected));
        m.on_failure(verdict("invalid_grant"), at(11.0, 0.0), &p, MID);
        assert_eq!(m.status(), Status::Unauthenticated);
        assert!(!m.on_trigger(Trigger::Rejected, at(12.0, 0.0), &p, MID));
    }

    #[test]
    fn triggers_only_wake_failing_workloads() {
        let p = Policy::default();
        let mut m = running(&p);
        assert!(!m.on_trigger(Trigger::Network, at(10.0, 0.0), &p, MID));
        assert!(!m.on_trigger(Trigger::IssuerRecovered, at(10.0, 0.0), &p, MID));
        assert!(
            !m.on_trigger(Trigger::Wake, at(10.0, 0.0), &p, MID),
            "nothing due yet"
        );
        assert!(
            m.on_trigger(Trigger::Wake, at(10.0, 3000.0), &p, MID),
            "refresh became due during sleep"
        );
        let mut m = running(&p);
        m.on_failure(waf(), at(10.0, 0.0), &p, MID);
        assert!(m.on_trigger(Trigger::Network, at(11.0, 0.0), &p, MID));
        let mut m = Machine::no_login(at(0.0, 0.0));
        assert!(!m.on_trigger(Trigger::User, at(1.0, 0.0), &p, MID));
        let mut m = Machine::stopped(at(0.0, 0.0));
        assert!(!m.on_trigger(Trigger::User, at(1.0, 0.0), &p, MID));
    }

    #[test]
    fn user_retry_from_ceiling_that_fails_transiently_goes_back_to_retrying() {
        let p = Policy {
            retrying_ceiling: Duration::from_secs(600),
            ..Policy::default()
        };
        let mut m = running(&p);
        let (_, t) = fail_until_status_changes(&mut m, &p, 0.0);
        let (_, t) = fail_until_status_changes(&mut m, &p, t);
        assert_eq!(m.status(), Status::Unauthenticated);
        assert!(m.on_trigger(Trigger::User, at(t, 0.0), &p, MID));
        m.on_failure(waf(), at(t, 0.0), &p, MID);
        assert_eq!(m.status(), Status::Retrying);
        assert!(m.gives_up_at(at(t, 0.0), &p).unwrap() > at(t, 0.0).wall);
    }

    fn in_retrying(p: &Policy) -> (Machine, f64) {
        let mut m = running(p);
        let (_, t) = fail_until_status_changes(&mut m, p, 0.0);
        assert_eq!(m.status(), Status::Retrying);
        (m, t)
    }

    fn connect() -> Failure {
        Failure::new(FailureKind::Connect)
    }

    #[test]
    fn network_triggers_are_rate_limited_per_workload() {
        // Defaults: burst 3, one more per 10 s.
        let p = Policy::default();
        let (mut m, t) = in_retrying(&p);
        // 20 address-up events in 10 s, each answered by a failed attempt.
        let mut accepted = 0;
        for i in 0..20 {
            let now = at(t + f64::from(i) * 0.5, 0.0);
            if m.on_trigger(Trigger::Network, now, &p, MID) {
                accepted += 1;
                m.on_failure(waf(), now, &p, MID);
            }
        }
        assert_eq!(
            accepted, 3,
            "the burst only: the 10 s refill has not completed within 9.5 s"
        );
        // After the refill interval one more is allowed.
        assert!(m.on_trigger(Trigger::Network, at(t + 20.0, 0.0), &p, MID));
    }

    #[test]
    fn network_attempts_that_succeed_do_not_use_up_the_budget() {
        let p = Policy::default();
        let mut m = running(&p);
        // An outage every 2 s for a minute, each healed by the network trigger.
        for i in 0..30 {
            let t = 100.0 + f64::from(i) * 2.0;
            m.on_failure(waf(), at(t, 0.0), &p, MID);
            assert!(
                m.on_trigger(Trigger::Network, at(t + 1.0, 0.0), &p, MID),
                "outage {i}"
            );
            m.on_success(at(t + 1.0, 0.0), Duration::from_secs(3600), &p, MID);
        }
    }

    #[test]
    fn a_network_attempt_that_cannot_connect_gets_one_quick_follow_up() {
        let p = Policy::default();
        let (mut m, t) = in_retrying(&p);
        let now = at(t + 1.0, 0.0);
        assert!(m.on_trigger(Trigger::Network, now, &p, MID));
        assert!(m.followup_armed);
        m.on_failure(connect(), now, &p, MID);
        assert_eq!(
            m.due,
            Due::Awake(now.awake + p.network_followup),
            "DNS may lag: 2 s follow-up"
        );
        // The follow-up itself failing falls back to the retrying cadence.
        let later = at(t + 3.0, 0.0);
        m.on_failure(connect(), later, &p, MID);
        assert!(m.time_until_due(later).unwrap() >= Duration::from_secs(30));
        // An HTTP answer (not a connect failure) gets no follow-up.
        let (mut m, t) = in_retrying(&p);
        let now = at(t + 1.0, 0.0);
        assert!(m.on_trigger(Trigger::Network, now, &p, MID));
        m.on_failure(waf(), now, &p, MID);
        assert!(m.time_until_due(now).unwrap() >= Duration::from_secs(30));
    }

    #[test]
    fn follow_ups_are_paid_from_the_same_budget() {
        let p = Policy::default();
        let (mut m, t) = in_retrying(&p);
        let mut attempts = 0;
        let mut now_t = t;
        for _ in 0..20 {
            now_t += 0.5;
            let now = at(now_t, 0.0);
            if m.on_trigger(Trigger::Network, now, &p, MID) {
                attempts += 1;
                m.on_failure(connect(), now, &p, MID);
                if m.time_until_due(now).unwrap() <= p.network_followup {
                    attempts += 1; // the follow-up attempt
                    m.on_failure(connect(), now, &p, MID);
                }
            }
        }
        assert!(
            attempts <= 3,
            "at most the burst in 10 s, follow-ups included: {attempts}"
        );
    }

    #[test]
    fn wake_spreads_due_work_and_triggers_can_be_turned_off() {
        let p = Policy::default();
        let (mut m, t) = in_retrying(&p);
        assert!(m.on_trigger(Trigger::Wake, at(t, 3600.0), &p, 0.75));
        assert_eq!(
            m.due,
            Due::Awake(Duration::from_secs_f64(t) + p.wake_spread.mul_f64(0.75))
        );
        let off = Policy {
            triggers: false,
            ..Policy::default()
        };
        let (mut m, t) = in_retrying(&off);
        for tr in [Trigger::Network, Trigger::Wake, Trigger::IssuerRecovered] {
            assert!(!m.on_trigger(tr, at(t + 1.0, 0.0), &off, MID), "{tr:?}");
        }
        assert!(m.on_trigger(Trigger::User, at(t + 1.0, 0.0), &off, MID));
    }

    #[test]
    fn backoff_is_capped_jittered_and_saturating() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(30), 2.0, 0, s(300), 0.2, 0.5), s(30));
        assert_eq!(backoff(s(30), 2.0, 10_000, s(300), 0.2, 0.5), s(300));
        assert_eq!(
            backoff(s(30), 2.0, 0, s(300), 0.2, 0.0),
            Duration::from_secs(24)
        );
        assert_eq!(
            backoff(s(30), 2.0, 0, s(300), 0.2, 1.0),
            Duration::from_secs(36)
        );
        assert!(
            backoff(Duration::from_millis(1), 10.0, 999, s(1), 0.5, 0.0)
                >= Duration::from_millis(1)
        );
    }

    #[test]
    fn expiry_is_wall_clock_so_a_refresh_due_during_sleep_is_due_on_wake() {
        let p = Policy::default();
        let m = running(&p);
        assert!(!m.is_due(at(60.0, 0.0)));
        assert!(m.is_due(at(60.0, 8.0 * 3600.0)));
    }

    /// A login without a refresh token, through every way it can go: the table is
    /// (expiry, event, status after, reason tag, token still valid).
    #[test]
    fn a_login_without_refresh_token_runs_until_its_token_ends() {
        let p = Policy::default();
        let end = t0() + Duration::from_secs(3600);
        let hour = Some(end);
        // Expiry at one hour: running, due exactly then, nothing earlier.
        let m = Machine::without_refresh(at(0.0, 0.0), hour);
        assert_eq!((m.status(), m.due), (Status::Running, Due::Wall(end)));
        assert!(m.access_token_valid(at(3599.0, 0.0)) && !m.renewable);
        assert!(!m.is_due(at(3599.0, 0.0)) && m.is_due(at(3600.0, 0.0)));
        // No expiry: valid until rejected, nothing scheduled.
        let m = Machine::without_refresh(at(0.0, 0.0), None);
        assert_eq!((m.status(), m.due), (Status::Running, Due::Never));
        assert!(m.access_token_valid(at(1e7, 0.0)));
        // Loaded already expired: unauthenticated at once.
        let m = Machine::without_refresh(at(3600.0, 0.0), hour);
        assert_eq!(
            m.phase,
            Phase::Unauthenticated(Unauth::NoRefreshToken { rejected: false })
        );
        assert_eq!(m.due, Due::Never);

        for (expiry, rejected) in [(hour, false), (hour, true), (None, true)] {
            let mut m = Machine::without_refresh(at(0.0, 0.0), expiry);
            // No trigger asks for an attempt: there is nothing to renew with.
            for t in [
                Trigger::User,
                Trigger::TokenRequest,
                Trigger::Network,
                Trigger::Wake,
                Trigger::IssuerRecovered,
                Trigger::Rejected,
            ] {
                assert!(!m.on_trigger(t, at(10.0, 0.0), &p, MID), "{t:?}");
                assert_eq!(m.due, expiry.map_or(Due::Never, Due::Wall), "{t:?}");
            }
            let e = m.token_ended(at(20.0, 0.0), rejected);
            assert!(e.status_changed && !e.recovered);
            assert_eq!(
                m.phase,
                Phase::Unauthenticated(Unauth::NoRefreshToken { rejected }),
                "{expiry:?}"
            );
            assert_eq!((m.due, m.since), (Due::Never, at(20.0, 0.0).wall));
            assert!(!m.access_token_valid(at(20.0, 0.0)), "{expiry:?}");
            // Said once: a second end changes nothing.
            assert!(!m.token_ended(at(30.0, 0.0), rejected).status_changed);
            assert_eq!(m.since, at(20.0, 0.0).wall);
            // And "Retry now" does not leave it: only a new sign-in does.
            assert!(!m.on_trigger(Trigger::User, at(40.0, 0.0), &p, MID));
            assert_eq!(m.status(), Status::Unauthenticated);
        }
        // A machine that can renew keeps the old meaning of "no expiry": not valid.
        let mut m = Machine::no_login(at(0.0, 0.0));
        m.phase = Phase::Running;
        assert!(m.renewable && !m.access_token_valid(at(0.0, 0.0)));
    }

    #[test]
    fn the_no_refresh_token_reason_reads_from_state_written_before_it_said_why() {
        let old: Phase =
            serde_json::from_str(r#"{"phase":"unauthenticated","why":"no_refresh_token"}"#)
                .unwrap();
        assert_eq!(
            old,
            Phase::Unauthenticated(Unauth::NoRefreshToken { rejected: false })
        );
        let p = Phase::Unauthenticated(Unauth::NoRefreshToken { rejected: true });
        let back: Phase = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn status_and_trigger_words_are_the_ones_shown_everywhere() {
        for (s, word) in [
            (Status::Running, "running"),
            (Status::Retrying, "retrying"),
            (Status::Unauthenticated, "unauthenticated"),
            (Status::Stopped, "stopped"),
        ] {
            assert_eq!(s.as_str(), word);
            assert_eq!(serde_json::to_value(s).unwrap(), word, "JSON says the same");
        }
        let all = [
            Trigger::User,
            Trigger::TokenRequest,
            Trigger::Network,
            Trigger::Wake,
            Trigger::IssuerRecovered,
            Trigger::Rejected,
        ];
        let words: std::collections::HashSet<&str> = all.iter().map(|t| t.describe()).collect();
        assert_eq!(words.len(), all.len(), "each trigger says what it was");
        assert_eq!(Trigger::User.describe(), "you asked to retry");
        assert_eq!(Trigger::Network.describe(), "network changed");
    }

    #[test]
    fn a_stopped_workload_waits_and_loaded_tokens_are_refreshed_when_due() {
        let p = Policy::default();
        let now = at(10.0, 5.0);
        let m = Machine::stopped(now);
        assert_eq!(m.status(), Status::Stopped);
        assert!(!m.is_due(at(1e6, 0.0)));
        assert_eq!(m.next_attempt_at(now), None);
        // Tokens of unknown expiry: refresh at once.
        let m = Machine::with_tokens(now, None, None, &p, MID);
        assert_eq!((m.status(), m.since), (Status::Running, now.wall));
        assert!(m.is_due(now));
        assert_eq!(m.next_attempt_at(now), Some(now.wall));
        // A known expiry: due the lead before it (12 min of an hour, 5% earlier).
        let exp = now.wall + Duration::from_secs(3600);
        let m = Machine::with_tokens(now, Some(exp), Some(Duration::from_secs(3600)), &p, MID);
        assert_eq!(m.status(), Status::Running);
        let refresh = exp - Duration::from_secs(756);
        assert_eq!(m.due, Due::Wall(refresh));
        assert_eq!(m.next_attempt_at(now), Some(refresh));
        assert!(!m.is_due(now));
    }

    #[test]
    fn a_backoff_is_due_at_its_instant_and_not_before() {
        let p = Policy::default();
        let mut m = running(&p);
        m.on_failure(waf(), at(100.0, 0.0), &p, MID);
        let Due::Awake(t) = m.due else {
            panic!("a backoff runs on the awake clock: {:?}", m.due)
        };
        let wall = t0();
        let just_before = t - Duration::from_millis(1);
        assert!(!m.is_due(Now {
            wall,
            awake: just_before
        }));
        assert!(m.is_due(Now { wall, awake: t }));
    }

    #[test]
    fn a_success_is_a_recovery_only_after_a_failure() {
        let p = Policy::default();
        let hour = Duration::from_secs(3600);
        let mut m = running(&p);
        let e = m.on_success(at(3000.0, 0.0), hour, &p, MID);
        assert_eq!(e, Effect::default(), "a routine refresh");
        m.on_failure(waf(), at(6000.0, 0.0), &p, MID);
        let e = m.on_success(at(6010.0, 0.0), hour, &p, MID);
        assert!(e.recovered && !e.status_changed, "{e:?}");
        m.on_failure(verdict("invalid_grant"), at(9000.0, 0.0), &p, MID);
        assert!(m.on_trigger(Trigger::User, at(9010.0, 0.0), &p, MID));
        let e = m.on_success(at(9011.0, 0.0), hour, &p, MID);
        assert!(e.recovered && e.status_changed, "{e:?}");
    }

    #[test]
    fn retry_after_holds_triggers_until_its_instant() {
        let p = Policy::default();
        let mut m = running(&p);
        let mut f = waf();
        f.retry_after = Some(Duration::from_secs(120));
        m.on_failure(f, at(100.0, 0.0), &p, MID);
        assert!(!m.on_trigger(Trigger::IssuerRecovered, at(219.0, 0.0), &p, MID));
        assert!(m.on_trigger(Trigger::IssuerRecovered, at(220.0, 0.0), &p, MID));
    }

    #[test]
    fn a_token_request_refreshes_only_an_expired_token_or_a_failing_workload() {
        let p = Policy::default();
        let mut m = running(&p);
        assert!(!m.on_trigger(Trigger::TokenRequest, at(10.0, 0.0), &p, MID));
        assert!(m.on_trigger(Trigger::TokenRequest, at(3600.0, 0.0), &p, MID));
        let mut m = running(&p);
        m.on_failure(waf(), at(2900.0, 0.0), &p, MID);
        assert!(m.access_token_valid(at(2901.0, 0.0)));
        assert!(m.on_trigger(Trigger::TokenRequest, at(2901.0, 0.0), &p, MID));
    }

    #[test]
    fn retrying_counts_its_failed_attempts_in_the_detail() {
        let p = Policy::default();
        let (mut m, t) = in_retrying(&p);
        // Five short retries failed on the way in.
        assert_eq!(m.detail(&p).as_deref(), Some("5 failed attempts so far"));
        m.on_failure(waf(), at(t, 0.0), &p, MID);
        assert_eq!(m.detail(&p).as_deref(), Some("6 failed attempts so far"));
        m.on_success(at(t + 1.0, 0.0), Duration::from_secs(3600), &p, MID);
        assert_eq!(m.detail(&p), None);
    }
}
