//! One task per workload. It owns the workload's state machine and tokens and loops
//! on `select!` over its command queue (which also carries "stop"), the in-flight
//! refresh and a timer (mini-redis `Handler::run` style). What others may see of it
//! (status, usable token) and its queue live in one [`MonitorShared`] slot: an idle
//! workload costs under 2 KB (docs/footprint.md, "At scale").
//!
//! Invariants:
//! * at most one refresh is in flight per workload, whatever asked for it (timer,
//!   "Retry now", `token`, a trigger): requests that arrive meanwhile wait for it;
//! * a new refresh token is written to the secret store before the new access token is
//!   handed to anyone; a response without `refresh_token` keeps the old one;
//! * before an `invalid_grant` becomes a verdict, the store is read once more, in case
//!   another writer (a CLI `token`, a login) already rotated the refresh token;
//! * no single sleep is longer than `wall_check_interval`, so a refresh that fell due
//!   during a suspend starts at most that long after wake, even with no wake trigger;
//! * on shutdown an in-flight refresh is allowed to finish and save (bounded by the
//!   HTTP timeout), so a rotated refresh token is not lost to a clean stop;
//! * stored tokens are used only if they were obtained with the workload's current
//!   configuration (`SecretStore::load_login`): a refresh token is never sent to a
//!   token endpoint it did not come from;
//! * a logout abandons the refresh in flight and deletes the tokens after any save
//!   already under way (`writes`): nothing saves them again afterwards;
//! * a login without a refresh token is used while its access token lasts (until
//!   its expiry, or until the remote rejects it when it has none) and then ends in
//!   `unauthenticated` with nothing sent to the token endpoint
//!   ([`Machine::without_refresh`]).

use crate::classify::{Failure, FailureKind};
use crate::clock::Clock;
use crate::config::WorkloadConfig;
use crate::machine::{Machine, Phase, Status, Trigger, Unauth};
use crate::oauth;
use crate::policy::Policy;
use crate::secret::Secret;
use crate::status::{view, Persisted, StepUp, WorkloadStatus};
use crate::store::{Login, SecretStore, StoreError, StoredTokens};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a token could not be handed out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("`{name}` is unauthenticated: {reason}")]
    Unauthenticated { name: String, reason: String },
    #[error("`{name}` has no valid access token right now: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("`{name}` is stopped")]
    Stopped { name: String },
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Unauthenticated { .. } => "unauthenticated",
            TokenError::Unavailable { .. } => "unavailable",
            TokenError::Stopped { .. } => "stopped",
        }
    }
}

/// A valid access token handed out, with the wall-clock time it expires at (as the
/// monitor schedules by it; `None` when the issuer gave no lifetime).
#[derive(Clone, Debug)]
pub struct Granted {
    pub token: Secret,
    pub expires_at: Option<std::time::SystemTime>,
}

pub type TokenReply = oneshot::Sender<Result<Granted, TokenError>>;

pub enum MonitorRequest {
    Trigger(Trigger),
    Token(TokenReply),
    /// The protected resource answered `401` to this access token (local proxy).
    /// (Boxed: every monitor's channel holds a block of 32 commands.)
    Rejected(Box<(Secret, TokenReply)>),
    /// The stored tokens changed (a login or logout by another process).
    Reload,
    /// Log out: stop using the tokens, abandon a refresh in flight, delete the stored
    /// tokens (after any save already under way), show "signed out".
    Logout(oneshot::Sender<Result<(), StoreError>>),
    /// The protected resource answered `403` with `error="insufficient_scope"` to this
    /// access token, asking for these scopes (local proxy). The answer: whether the
    /// user is no longer asked for them ([`StepUp::gave_up`]).
    InsufficientScope(Box<(Secret, Vec<String>, oneshot::Sender<bool>)>),
}

/// What a monitor reports to its supervisor.
#[derive(Clone, Debug)]
pub struct Report {
    pub status: WorkloadStatus,
    pub previous: Option<Status>,
    /// A refresh just succeeded at this workload's token endpoint.
    pub refreshed: bool,
    /// The workload left a failure episode (short retry or `retrying`).
    pub recovered: bool,
    pub persisted: Persisted,
}

/// Shared, immutable inputs of one monitor.
pub struct MonitorCtx {
    pub workload: Arc<WorkloadConfig>,
    pub transport: oauth::Transport,
    /// Shared by every workload of this token endpoint.
    pub issuer: Arc<IssuerShared>,
    pub store: SecretStore,
    pub policy: Arc<Policy>,
    pub clock: Clock,
}

/// What the workloads of one token endpoint share.
pub struct IssuerShared {
    /// Caps concurrent refreshes at the endpoint (a mass wake must not flood it).
    pub gate: tokio::sync::Semaphore,
    /// The latest transient failure there, while no success followed it.
    recent: std::sync::Mutex<Option<SiblingFailure>>,
}

struct SiblingFailure {
    by: Arc<WorkloadConfig>,
    /// Awake time it ended.
    at: Duration,
    failure: Failure,
}

impl IssuerShared {
    pub fn new(max_concurrent: usize) -> Self {
        IssuerShared {
            gate: tokio::sync::Semaphore::new(max_concurrent),
            recent: std::sync::Mutex::new(None),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Option<SiblingFailure>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a monitor shares with the supervisor and the local proxy: its command queue,
/// its latest status and its usable access token, in one allocation (a channel, two
/// `watch`es and a cancellation token cost about 2 KB per idle workload).
pub struct MonitorShared {
    workload: Arc<WorkloadConfig>,
    state: std::sync::Mutex<SharedState>,
    /// Wakes the monitor: a command was queued, or it should stop.
    wake: tokio::sync::Notify,
}

struct SharedState {
    /// Empty (no allocation) while the monitor is idle.
    commands: std::collections::VecDeque<MonitorRequest>,
    /// Stop asked, or the monitor ended: commands are refused.
    closed: bool,
    /// Kept without the name and token endpoint (empty strings): the configuration
    /// holds them, and [`MonitorShared::status`] puts them back.
    status: WorkloadStatus,
    /// The access token while it may be handed out (running or retrying, not expired
    /// when published), with its expiry: the local proxy's fast path.
    token: Option<(Secret, Option<std::time::SystemTime>)>,
}

/// The monitor has stopped; the command was not queued.
#[derive(Debug)]
pub struct Stopped;

/// Commands beyond this many queued are dropped by [`MonitorShared::offer`]: a
/// monitor that is behind gains nothing from a second copy of the same trigger.
const OFFER_LIMIT: usize = 64;

impl MonitorShared {
    fn new(workload: Arc<WorkloadConfig>, mut status: WorkloadStatus) -> Self {
        status.name = String::new();
        status.token_endpoint = String::new();
        MonitorShared {
            workload,
            state: std::sync::Mutex::new(SharedState {
                commands: std::collections::VecDeque::new(),
                closed: false,
                status,
                token: None,
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a command (requests with a reply: the caller waits on it).
    pub fn send(&self, cmd: MonitorRequest) -> Result<(), Stopped> {
        {
            let mut s = self.lock();
            if s.closed {
                return Err(Stopped);
            }
            s.commands.push_back(cmd);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Queue a command unless the monitor is stopped or already has a backlog
    /// (fan-out triggers).
    pub fn offer(&self, cmd: MonitorRequest) {
        {
            let mut s = self.lock();
            if s.closed || s.commands.len() >= OFFER_LIMIT {
                return;
            }
            s.commands.push_back(cmd);
        }
        self.wake.notify_one();
    }

    /// The latest status the monitor published.
    pub fn status(&self) -> WorkloadStatus {
        let mut s = self.lock().status.clone();
        s.name.clone_from(&self.workload.name);
        s.token_endpoint = self.workload.token_endpoint.to_string();
        s
    }

    /// Retrying, or running with failed attempts (a short retry).
    pub fn in_failure_episode(&self) -> bool {
        let s = self.lock();
        s.status.status == Status::Retrying
            || (s.status.status == Status::Running && s.status.attempts > 0)
    }

    fn reason(&self) -> Option<String> {
        self.lock().status.reason.clone()
    }

    /// The access token while it may be handed out, with its expiry (`None`: it has
    /// none and lasts until the remote rejects it).
    pub fn usable_token(&self) -> Option<(Secret, Option<std::time::SystemTime>)> {
        self.lock().token.clone()
    }

    /// Refuse further commands and wake the monitor so it ends. Queued commands are
    /// dropped: whoever waits on their reply learns the monitor stopped.
    fn close(&self) {
        let dropped = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.commands)
        };
        drop(dropped);
        self.wake.notify_one();
    }

    /// The next command; `None` once closed.
    async fn next_command(&self) -> Option<MonitorRequest> {
        loop {
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(c) = s.commands.pop_front() {
                    return Some(c);
                }
            }
            // A notification sent while nobody waits is kept as a permit, so one sent
            // between the check above and this await is not lost.
            self.wake.notified().await;
        }
    }
}

/// The supervisor's side of a monitor. Dropping it stops the task.
pub struct MonitorHandle {
    pub shared: Arc<MonitorShared>,
    pub workload: Arc<WorkloadConfig>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MonitorHandle {
    /// Stop the task and wait for it (an in-flight refresh finishes and saves first).
    pub async fn stop(mut self) {
        self.shared.close();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

enum Outcome {
    Refreshed {
        tokens: StoredTokens,
        lifetime: Duration,
        saved: Result<(), String>,
    },
    /// Another writer already rotated and refreshed: use its tokens.
    Adopted(StoredTokens),
    Failed(Failure),
    /// Tokens (re)loaded from the store after a store failure.
    Loaded(Login),
}

type InFlight = Pin<Box<dyn Future<Output = Outcome> + Send>>;

struct Monitor {
    ctx: Arc<MonitorCtx>,
    machine: Machine,
    tokens: Option<StoredTokens>,
    shared: Arc<MonitorShared>,
    reports: mpsc::UnboundedSender<Report>,
    waiters: Vec<TokenReply>,
    in_flight: Option<InFlight>,
    /// Tokens that could not be saved yet (the store failed): kept, saved again later.
    unsaved: Option<Box<StoredTokens>>,
    last_status: Option<Status>,
    /// Refreshes caused by rejected access tokens in the current window, and the
    /// window's start (awake time).
    rejected_refreshes: (u8, Duration),
    /// Awake time the last attempt (or borrowed result) ended.
    last_attempt_at: Option<Duration>,
    /// The next attempt was asked for (trigger, token request): it goes out for real.
    triggered: bool,
    /// Held by every write of this workload's tokens and by a logout's delete: a save
    /// that began finishes before the delete (it runs in a task of its own, so even an
    /// abandoned refresh completes its write first), and none begins after it.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// A step-up the remote asked for, and the access token last counted as refused
    /// (in memory only: after a restart the same login may be counted once more).
    step_up: Option<Box<(StepUp, Option<Secret>)>>,
}

/// At most this many refreshes caused by rejected tokens per window: a remote that
/// refuses every token must not turn each request into a refresh at the issuer.
const REJECTED_REFRESH_BURST: u8 = 3;
const REJECTED_REFRESH_WINDOW: Duration = Duration::from_secs(30);

fn jitter() -> f64 {
    rand::random::<f64>()
}

pub fn spawn(
    ctx: MonitorCtx,
    restored: Option<Persisted>,
    reports: mpsc::UnboundedSender<Report>,
) -> MonitorHandle {
    let ctx = Arc::new(ctx);
    let now = ctx.clock.now();
    // Until the store has been read, show the last known state (not "not logged in").
    let mut machine = Machine::no_login(now);
    if let Some(r) = &restored {
        machine.show_restored(r.restored(now));
    }
    let initial = view(
        &ctx.workload.name,
        ctx.workload.token_endpoint.as_str(),
        &machine,
        now,
        &ctx.policy,
    );
    let shared = Arc::new(MonitorShared::new(ctx.workload.clone(), initial));
    let workload = ctx.workload.clone();
    let monitor = Monitor {
        ctx,
        machine,
        tokens: None,
        shared: shared.clone(),
        reports,
        waiters: Vec::new(),
        in_flight: None,
        unsaved: None,
        last_status: None,
        rejected_refreshes: (0, Duration::ZERO),
        last_attempt_at: None,
        triggered: false,
        writes: Arc::new(tokio::sync::Mutex::new(())),
        step_up: restored
            .as_ref()
            .and_then(|r| r.step_up.clone())
            .map(|s| Box::new((s, None))),
    };
    // Boxed: an `async fn` keeps its arguments twice (as captured and as moved
    // locals), which for a by-value monitor doubled every idle task.
    let task = tokio::spawn(Box::new(monitor).run(restored.map(Box::new)));
    MonitorHandle {
        shared,
        workload,
        task: Some(task),
    }
}

async fn pending_or(f: &mut Option<InFlight>) -> Outcome {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

enum Event {
    Request(Option<MonitorRequest>),
    /// (Boxed: the event is part of every idle task's state.)
    Done(Box<Outcome>),
    Tick,
}

impl Drop for Monitor {
    /// However the task ends (stopped, or a panic), later commands are refused and
    /// queued ones answered as stopped.
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Monitor {
    fn name(&self) -> &str {
        &self.ctx.workload.name
    }

    async fn run(mut self: Box<Self>, restored: Option<Box<Persisted>>) {
        // Sub-futures that run once or rarely are boxed, so the task's resident
        // state (kept for every idle workload) stays small.
        Box::pin(self.initialize(restored.map(|r| *r))).await;
        self.publish(false, false);
        loop {
            self.maybe_start_attempt();
            let now = self.ctx.clock.now();
            let cap = self.ctx.policy.wall_check_interval;
            let wait = if self.in_flight.is_some() {
                cap
            } else {
                self.machine.time_until_due(now).map_or(cap, |d| d.min(cap))
            };
            let event = tokio::select! {
                cmd = self.shared.next_command() => Event::Request(cmd),
                out = pending_or(&mut self.in_flight) => Event::Done(Box::new(out)),
                _ = tokio::time::sleep(wait) => Event::Tick,
            };
            match event {
                Event::Request(None) => break,
                // The proxy's hot path stays unboxed.
                Event::Request(Some(MonitorRequest::Token(reply))) => self.give_token(reply),
                Event::Request(Some(cmd)) => Box::pin(self.handle(cmd)).await,
                Event::Done(out) => {
                    self.in_flight = None;
                    self.apply(*out);
                }
                Event::Tick => Box::pin(self.retry_unsaved()).await,
            }
        }
        Box::pin(self.finish()).await;
    }

    /// Let an in-flight refresh finish so a rotated refresh token gets saved, then
    /// answer whoever still waits.
    async fn finish(&mut self) {
        if let Some(f) = self.in_flight.take() {
            let limit = self.ctx.policy.http_timeout + Duration::from_secs(5);
            if let Ok(out) = tokio::time::timeout(limit, f).await {
                self.apply(out);
            }
        }
        self.retry_unsaved().await;
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(TokenError::Stopped {
                name: self.ctx.workload.name.clone(),
            }));
        }
    }

    async fn initialize(&mut self, restored: Option<Persisted>) {
        let now = self.ctx.clock.now();
        if !self.ctx.workload.enabled {
            self.machine = Machine::stopped(now);
            return;
        }
        let loaded = self.ctx.store.load_login(&self.ctx.workload).await;
        match loaded {
            Ok(login) => self.adopt_login(login),
            Err(e) => {
                // Keychain locked or missing: a transient failure with what to do.
                self.machine = Machine::with_tokens(now, None, None, &self.ctx.policy, jitter());
                self.machine.on_failure(
                    store_failure(&e.to_string()),
                    now,
                    &self.ctx.policy,
                    jitter(),
                );
            }
        }
        let Some(r) = restored else { return };
        let Some(tokens) = &self.tokens else { return };
        match &r.phase {
            // A verdict (or give-up) newer than the stored login stands: do not hammer
            // the issuer with a refresh token it already refused.
            Phase::Unauthenticated(Unauth::Verdict { .. } | Unauth::Ceiling { .. })
                if r.since_ms / 1000 >= tokens.obtained_at =>
            {
                self.machine.keep_verdict(r.restored(now));
            }
            Phase::Running | Phase::Retrying if r.episode.is_some() => {
                self.machine.resume_episode(r.restored(now));
            }
            Phase::Running => {
                // Keep "running since" across a restart.
                self.machine.keep_since(crate::status::from_ms(r.since_ms));
            }
            _ => {}
        }
    }

    fn adopt_login(&mut self, login: Login) {
        let now = self.ctx.clock.now();
        let tokens = match login {
            Login::Ready(t) => Some(t),
            Login::Missing => None,
            Login::Elsewhere { changed } => {
                tracing::warn!(workload = %self.name(), changed = %changed.join(", "), "the stored login was made with another configuration; not using it (log in again)");
                self.machine = Machine::unauthenticated(
                    now,
                    Unauth::ConfigChanged {
                        changed: Box::new(changed.into_iter().map(String::from).collect()),
                    },
                );
                self.tokens = None;
                return;
            }
        };
        self.machine = match &tokens {
            Some(t) if t.refresh_token.is_none() => Machine::without_refresh(now, t.expires_at()),
            Some(t) => Machine::with_tokens(
                now,
                t.expires_at(),
                t.lifetime(),
                &self.ctx.policy,
                jitter(),
            ),
            None => Machine::no_login(now),
        };
        self.tokens = tokens;
        self.settle_step_up();
    }

    fn maybe_start_attempt(&mut self) {
        if self.in_flight.is_some() || !self.machine.is_due(self.ctx.clock.now()) {
            return;
        }
        let ctx = self.ctx.clone();
        match &self.tokens {
            None => {
                // Only reachable after a store failure: read the store again.
                self.in_flight = Some(Box::pin(async move {
                    match ctx.store.load_login(&ctx.workload).await {
                        Ok(t) => Outcome::Loaded(t),
                        Err(e) => Outcome::Failed(store_failure(&e.to_string())),
                    }
                }));
            }
            Some(t) if t.refresh_token.is_none() => {
                let now = self.ctx.clock.now();
                if self.machine.access_token_valid(now) {
                    self.machine.due_at_expiry(t.expires_at());
                } else {
                    self.token_ended(false);
                }
            }
            Some(_) => {
                if self.borrow_sibling_failure() {
                    return;
                }
                let t = self.tokens.clone().expect("matched Some above");
                tracing::debug!(workload = %self.name(), trigger = ?self.machine.last_trigger(), "refresh starting");
                self.triggered = false;
                self.in_flight = Some(Box::pin(attempt(ctx, t, self.writes.clone())));
            }
        }
    }

    async fn handle(&mut self, cmd: MonitorRequest) {
        let now = self.ctx.clock.now();
        match cmd {
            MonitorRequest::Trigger(t) => {
                if self.machine.on_trigger(t, now, &self.ctx.policy, jitter()) {
                    self.triggered = true;
                    tracing::info!(workload = %self.name(), "retrying now: {}", t.describe());
                    self.publish(false, false);
                } else {
                    tracing::debug!(workload = %self.name(), trigger = ?t, "trigger ignored");
                }
            }
            MonitorRequest::Token(reply) => self.give_token(reply),
            MonitorRequest::Rejected(r) => {
                let (used, reply) = *r;
                self.on_rejected(used, reply)
            }
            MonitorRequest::Reload => {
                match self.ctx.store.load_login(&self.ctx.workload).await {
                    Ok(t) => {
                        tracing::info!(workload = %self.name(), logged_in = matches!(t, Login::Ready(_)), "stored tokens reloaded");
                        self.adopt_login(t);
                        self.unsaved = None;
                    }
                    Err(e) => {
                        self.machine.on_failure(
                            store_failure(&e.to_string()),
                            now,
                            &self.ctx.policy,
                            jitter(),
                        );
                    }
                }
                self.publish(false, false);
                self.answer_waiters();
            }
            MonitorRequest::Logout(reply) => self.logout(reply).await,
            MonitorRequest::InsufficientScope(c) => {
                let (used, scopes, reply) = *c;
                let _ = reply.send(self.on_insufficient_scope(used, scopes));
            }
        }
    }

    /// The scopes the current login asked for: the configured ones and those its
    /// sign-in added.
    fn asked_scopes(&self) -> Vec<&str> {
        let mut asked: Vec<&str> = self
            .ctx
            .workload
            .scopes
            .iter()
            .map(String::as_str)
            .collect();
        if let Some(t) = &self.tokens {
            asked.extend(t.scopes.iter().map(String::as_str));
        }
        asked
    }

    /// The remote wants more scopes than `used` has (MCP step-up). The workload keeps
    /// running (the token still serves every other call) and says "needs more
    /// permission"; a sign-in then asks for the union of the scopes asked before and
    /// these. A login that already asked for them and is refused them still counts
    /// towards [`STEP_UP_LIMIT`], after which the user is not asked again. Returns
    /// whether that limit is reached.
    fn on_insufficient_scope(&mut self, used: Secret, scopes: Vec<String>) -> bool {
        let current = self.tokens.as_ref().map(|t| &t.access_token) == Some(&used);
        if !current || scopes.is_empty() {
            // An older token (a newer login may have the scopes), or a challenge that
            // names none: nothing to ask the user for.
            return self.step_up.as_ref().is_some_and(|s| s.0.gave_up());
        }
        let asked = self.asked_scopes();
        let covered = scopes.iter().all(|s| asked.contains(&s.as_str()));
        let (mut rec, counted) = match self.step_up.take() {
            Some(b) if b.0.scopes == scopes => *b,
            _ => (
                StepUp {
                    scopes,
                    refused_logins: 0,
                    pending: false,
                },
                None,
            ),
        };
        let mut counted = counted;
        if covered && counted.as_ref() != Some(&used) {
            // This login asked for them, and the remote still wants them.
            rec.refused_logins += 1;
            counted = Some(used);
        }
        let before = rec.pending;
        rec.pending = !rec.gave_up();
        let gave_up = rec.gave_up();
        if rec.pending && !before {
            tracing::warn!(workload = %self.name(), scopes = %rec.scopes.join(" "), refused_logins = rec.refused_logins, "the remote asks for more permission (insufficient_scope): a sign-in is needed");
        } else if gave_up {
            tracing::warn!(workload = %self.name(), scopes = %rec.scopes.join(" "), refused_logins = rec.refused_logins, "the remote keeps asking for more permission although the sign-ins asked for it: not asking again");
        }
        self.step_up = Some(Box::new((rec, counted)));
        self.publish(false, false);
        gave_up
    }

    /// After a login was adopted: a step-up whose scopes it asked for is no longer
    /// pending (the record stays, to count a remote that still refuses them).
    fn settle_step_up(&mut self) {
        let covered = match &self.step_up {
            Some(b) => {
                let asked = self.asked_scopes();
                b.0.scopes.iter().all(|s| asked.contains(&s.as_str()))
            }
            None => return,
        };
        if let Some(b) = self.step_up.as_mut() {
            if covered {
                b.0.pending = false;
            }
        }
    }

    /// Stop using the tokens, then delete them. The refresh in flight is abandoned: a
    /// save it already began holds `writes`, so the delete comes after it, and it can
    /// begin none after.
    async fn logout(&mut self, reply: oneshot::Sender<Result<(), StoreError>>) {
        let now = self.ctx.clock.now();
        if self.in_flight.take().is_some() {
            tracing::info!(workload = %self.name(), "logging out: the refresh in flight is abandoned");
        }
        self.tokens = None;
        self.unsaved = None;
        self.triggered = false;
        if self.machine.status() != Status::Stopped {
            self.machine = Machine::unauthenticated(now, Unauth::SignedOut);
        }
        // Nobody (the local proxy, a `token` caller) gets the access token from now on.
        self.publish(false, false);
        self.answer_waiters();
        let deleted = {
            let _writes = self.writes.lock().await;
            self.ctx.store.delete_tokens(self.name()).await
        };
        match &deleted {
            Ok(()) => {
                tracing::info!(workload = %self.name(), "signed out: the stored tokens are deleted")
            }
            Err(e) => {
                tracing::error!(workload = %self.name(), error = %e, "signed out, but the stored tokens could not be deleted")
            }
        }
        let _ = reply.send(deleted);
    }

    /// During a failure episode, a scheduled attempt is not sent when another workload
    /// of the same token endpoint failed transiently after this one's last attempt:
    /// its result stands for this one's (one probe per issuer, not one per workload).
    /// Asked-for attempts (triggers, "Retry now", token requests), an attempt owed
    /// after a wake or network change, and the attempt that could end the episode at
    /// the ceiling always go out.
    fn borrow_sibling_failure(&mut self) -> bool {
        let now = self.ctx.clock.now();
        let Some(ep) = self.machine.episode() else {
            return false;
        };
        if self.triggered
            || ep.owes_attempt
            || ep.awake_spent(now) >= self.ctx.policy.retrying_ceiling
        {
            return false;
        }
        let failure = {
            let recent = self.ctx.issuer.recent();
            match &*recent {
                Some(r)
                    if !Arc::ptr_eq(&r.by, &self.ctx.workload)
                        && self.last_attempt_at.is_none_or(|mine| r.at > mine) =>
                {
                    r.failure.clone()
                }
                _ => return false,
            }
        };
        tracing::debug!(workload = %self.name(), reason = %failure.reason(), "another workload at this token endpoint just failed; using its result instead of asking again");
        self.last_attempt_at = Some(now.awake);
        self.fail(failure);
        self.answer_waiters();
        true
    }

    /// A login without a refresh token ended (expired, or `rejected` by the remote):
    /// `unauthenticated`, said once, and whoever waits is told so.
    fn token_ended(&mut self, rejected: bool) {
        let now = self.ctx.clock.now();
        if self.machine.token_ended(now, rejected).status_changed {
            tracing::warn!(workload = %self.name(), rejected, "the access token ended and this server issues no refresh token: a new sign-in is needed");
        }
        self.publish(false, false);
        self.answer_waiters();
    }

    /// Hand out the access token, or start a refresh (single-flight) and answer when
    /// it ends.
    fn give_token(&mut self, reply: TokenReply) {
        let now = self.ctx.clock.now();
        if !self.machine.renewable()
            && self.machine.status() == Status::Running
            && !self.machine.access_token_valid(now)
        {
            // Expired before the timer noticed: end it now rather than say "retry".
            self.token_ended(false);
        }
        // After a verdict the grant is gone: do not hand out what is left of it.
        if self.machine.status() == Status::Unauthenticated {
            let _ = reply.send(Err(self.token_error()));
            return;
        }
        if let Some(t) = &self.tokens {
            if self.machine.access_token_valid(now) && self.in_flight.is_none() {
                let _ = reply.send(Ok(Granted {
                    token: t.access_token.clone(),
                    expires_at: self.machine.access_expires_at(),
                }));
                return;
            }
        }
        match self.machine.status() {
            Status::Stopped => {
                let _ = reply.send(Err(TokenError::Stopped {
                    name: self.name().into(),
                }));
            }
            _ if self.in_flight.is_some() => self.waiters.push(reply),
            _ => {
                if self
                    .machine
                    .on_trigger(Trigger::TokenRequest, now, &self.ctx.policy, jitter())
                {
                    self.triggered = true;
                    self.waiters.push(reply);
                } else {
                    let _ = reply.send(Err(self.token_error()));
                }
            }
        }
    }

    /// The protected resource refused `used`. If it is still the current token,
    /// refresh now (at most `REJECTED_REFRESH_BURST` times per
    /// `REJECTED_REFRESH_WINDOW`); otherwise hand out the newer one.
    fn on_rejected(&mut self, used: Secret, reply: TokenReply) {
        let current = self.tokens.as_ref().map(|t| &t.access_token);
        if current == Some(&used)
            && !self.machine.renewable()
            && self.machine.status() == Status::Running
        {
            tracing::info!(workload = %self.name(), "the remote rejected the access token, and there is no refresh token to renew it with");
            self.token_ended(true);
            return self.give_token(reply);
        }
        if current != Some(&used)
            || self.in_flight.is_some()
            || self.machine.status() != Status::Running && self.machine.status() != Status::Retrying
        {
            return self.give_token(reply);
        }
        let now = self.ctx.clock.now();
        let (count, since) = self.rejected_refreshes;
        let (count, since) = if now.awake.saturating_sub(since) >= REJECTED_REFRESH_WINDOW {
            (0, now.awake)
        } else {
            (count, since)
        };
        if count >= REJECTED_REFRESH_BURST {
            tracing::warn!(workload = %self.name(), "the remote keeps rejecting access tokens; not refreshing again yet");
            let _ = reply.send(Err(TokenError::Unavailable {
                name: self.name().into(),
                reason: "the remote keeps rejecting freshly refreshed access tokens (check the workload's scopes and resource)".into(),
            }));
            return;
        }
        if self
            .machine
            .on_trigger(Trigger::Rejected, now, &self.ctx.policy, jitter())
        {
            tracing::info!(workload = %self.name(), "the remote rejected the access token; refreshing now");
            self.rejected_refreshes = (count + 1, since);
            self.triggered = true;
            // The token is useless whatever its expiry said.
            self.machine.access_token_refused(now);
            self.publish(false, false);
            self.waiters.push(reply);
        } else {
            let _ = reply.send(Err(self.token_error()));
        }
    }

    fn token_error(&self) -> TokenError {
        let name = self.name().to_string();
        let reason = self
            .shared
            .reason()
            .unwrap_or_else(|| "no valid access token".into());
        match self.machine.status() {
            Status::Unauthenticated => TokenError::Unauthenticated { name, reason },
            Status::Stopped => TokenError::Stopped { name },
            _ => TokenError::Unavailable { name, reason },
        }
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = self.ctx.clock.now();
        let result = match &self.tokens {
            Some(t) if self.machine.access_token_valid(now) => Ok(Granted {
                token: t.access_token.clone(),
                expires_at: self.machine.access_expires_at(),
            }),
            _ => Err(self.token_error()),
        };
        for w in self.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }

    fn apply(&mut self, out: Outcome) {
        let now = self.ctx.clock.now();
        let policy = self.ctx.policy.clone();
        self.last_attempt_at = Some(now.awake);
        match &out {
            Outcome::Refreshed { .. } | Outcome::Adopted(_) => {
                *self.ctx.issuer.recent() = None;
            }
            Outcome::Failed(f)
                if !f.is_permanent() && !matches!(f.kind, FailureKind::SecretStore { .. }) =>
            {
                *self.ctx.issuer.recent() = Some(SiblingFailure {
                    by: self.ctx.workload.clone(),
                    at: now.awake,
                    failure: f.clone(),
                });
            }
            _ => {}
        }
        match out {
            Outcome::Refreshed {
                tokens,
                lifetime,
                saved,
            } => {
                if let Err(e) = saved {
                    tracing::error!(workload = %self.name(), error = %e, "the new tokens could not be saved; keeping them in memory and trying again");
                    self.unsaved = Some(Box::new(tokens.clone()));
                } else {
                    self.unsaved = None;
                }
                self.tokens = Some(tokens);
                let effect = self.machine.on_success(now, lifetime, &policy, jitter());
                if effect.recovered {
                    tracing::info!(workload = %self.name(), "refresh succeeded; recovered");
                } else {
                    tracing::debug!(workload = %self.name(), "refresh succeeded");
                }
                self.publish(true, effect.recovered);
            }
            Outcome::Adopted(tokens) => {
                tracing::info!(workload = %self.name(), "using tokens rotated by another process");
                let lifetime = tokens.lifetime().unwrap_or(policy.assumed_token_lifetime);
                let remaining = tokens
                    .expires_at()
                    .and_then(|e| e.duration_since(now.wall).ok())
                    .unwrap_or(Duration::ZERO);
                self.tokens = Some(tokens);
                let effect =
                    self.machine
                        .on_success(now, remaining.min(lifetime), &policy, jitter());
                self.publish(true, effect.recovered);
            }
            Outcome::Failed(f) => self.fail(f),
            Outcome::Loaded(t) => {
                self.adopt_login(t);
                self.publish(false, true);
            }
        }
        self.answer_waiters();
    }

    fn fail(&mut self, f: Failure) {
        let now = self.ctx.clock.now();
        let effect = self
            .machine
            .on_failure(f.clone(), now, &self.ctx.policy, jitter());
        if effect.status_changed {
            tracing::warn!(workload = %self.name(), status = self.machine.status().as_str(), reason = %f.reason(), "refresh failed");
        } else {
            tracing::info!(workload = %self.name(), reason = %f.reason(), "refresh failed; will retry");
        }
        self.publish(false, false);
    }

    async fn retry_unsaved(&mut self) {
        let Some(t) = self.unsaved.clone() else {
            return;
        };
        let _writes = self.writes.lock().await;
        match self.ctx.store.save_login(&self.ctx.workload, &t).await {
            Ok(()) => {
                tracing::info!(workload = %self.name(), "saved the tokens kept in memory");
                self.unsaved = None;
            }
            Err(e) => {
                tracing::warn!(workload = %self.name(), error = %e, "still cannot save tokens")
            }
        }
    }

    fn publish(&mut self, refreshed: bool, recovered: bool) {
        let now = self.ctx.clock.now();
        let mut status = view(
            self.name(),
            self.ctx.workload.token_endpoint.as_str(),
            &self.machine,
            now,
            &self.ctx.policy,
        );
        let previous = self.last_status.replace(status.status);
        let usable = match &self.tokens {
            Some(t)
                if matches!(status.status, Status::Running | Status::Retrying)
                    && self.machine.access_token_valid(now) =>
            {
                Some((t.access_token.clone(), self.machine.access_expires_at()))
            }
            _ => None,
        };
        // The shared copy goes without the name and endpoint; the report keeps them.
        if let Some(b) = &self.step_up {
            b.0.annotate(&mut status);
        }
        let name = std::mem::take(&mut status.name);
        let endpoint = std::mem::take(&mut status.token_endpoint);
        {
            let mut shared = self.shared.lock();
            shared.status = status.clone();
            shared.token = usable;
        }
        status.name = name;
        status.token_endpoint = endpoint;
        let _ = self.reports.send(Report {
            status,
            previous,
            refreshed,
            recovered,
            persisted: Persisted {
                step_up: self.step_up.as_ref().map(|b| b.0.clone()),
                ..Persisted::capture(&self.machine, now)
            },
        });
    }
}

fn store_failure(message: &str) -> Failure {
    Failure::new(FailureKind::SecretStore {
        message: message.to_string(),
    })
}

/// One refresh, including the rotation re-read and the save before use. Holds a
/// permit of the issuer's gate for its whole length.
async fn attempt(
    ctx: Arc<MonitorCtx>,
    used: StoredTokens,
    writes: Arc<tokio::sync::Mutex<()>>,
) -> Outcome {
    let Ok(_permit) = ctx.issuer.gate.acquire().await else {
        return Outcome::Failed(Failure::new(FailureKind::Network));
    };
    let Some(rt) = used.refresh_token.clone() else {
        return Outcome::Failed(Failure::new(FailureKind::Network));
    };
    // A registered client's secret about to expire is renewed first (best effort:
    // the one it has works until it expires, and the next attempt tries again).
    // Public clients have no secret: their attempts read nothing more.
    if let (oauth::Transport::Http(http), true) =
        (&ctx.transport, ctx.workload.client_auth.needs_secret())
    {
        if let Err(e) = crate::registration::renew_client_secret(
            &ctx.store,
            &ctx.workload,
            http,
            ctx.clock.wall(),
            &ctx.policy,
        )
        .await
        {
            tracing::warn!(workload = %ctx.workload.name, error = %e, "could not renew the client secret; trying again at the next refresh");
        }
    }
    let client_secret = match client_secret(&ctx).await {
        Ok(s) => s,
        Err(f) => return Outcome::Failed(f),
    };
    let client_secret = client_secret.as_ref();
    match oauth::refresh(
        &ctx.transport,
        &ctx.workload,
        &rt,
        client_secret,
        &ctx.policy,
    )
    .await
    {
        Ok(resp) => save_new(&ctx, resp, Some(rt), used.scopes.clone(), writes).await,
        Err(f) if f.oauth_code() == Some("invalid_grant") => {
            // Rotated by another writer meanwhile? Read the store once before giving up.
            match ctx.store.load_login(&ctx.workload).await {
                Ok(Login::Ready(stored))
                    if stored.refresh_token.is_some()
                        && stored.refresh_token != used.refresh_token =>
                {
                    let now = ctx.clock.wall();
                    if stored.expires_at().is_some_and(|e| e > now) {
                        return Outcome::Adopted(stored);
                    }
                    let Some(new_rt) = stored.refresh_token.clone() else {
                        return Outcome::Failed(f);
                    };
                    tracing::info!(workload = %ctx.workload.name, "refresh token was rotated elsewhere; retrying with it");
                    let w = &ctx.workload;
                    match oauth::refresh(&ctx.transport, w, &new_rt, client_secret, &ctx.policy)
                        .await
                    {
                        Ok(resp) => {
                            save_new(&ctx, resp, Some(new_rt), stored.scopes.clone(), writes).await
                        }
                        Err(f2) => Outcome::Failed(f2),
                    }
                }
                _ => Outcome::Failed(f),
            }
        }
        Err(f) => Outcome::Failed(f),
    }
}

/// A confidential client's secret (`client_auth` other than `none`), read from the
/// store for each attempt; public clients have none.
async fn client_secret(ctx: &MonitorCtx) -> Result<Option<Secret>, Failure> {
    if !ctx.workload.client_auth.needs_secret() {
        return Ok(None);
    }
    ctx.store
        .load_client_secret(&ctx.workload.name)
        .await
        .map_err(|e| store_failure(&e.to_string()))
}

async fn save_new(
    ctx: &Arc<MonitorCtx>,
    resp: crate::classify::TokenResponse,
    previous: Option<Secret>,
    scopes: Vec<String>,
    writes: Arc<tokio::sync::Mutex<()>>,
) -> Outcome {
    let (mut tokens, lifetime) = oauth::to_stored(resp, previous, ctx.clock.wall(), &ctx.policy);
    // The sign-in's scopes stay with its grant.
    tokens.scopes = scopes;
    // Write before use. Once `writes` is held the save is committed: it runs in a task
    // of its own, so a logout that abandons this attempt now waits for it to end.
    let held = writes.lock_owned().await;
    let (c, t) = (ctx.clone(), tokens.clone());
    let save = tokio::spawn(async move {
        let _held = held;
        // Two quick retries absorb a keychain hiccup.
        let mut saved = Err(String::new());
        for i in 0..3 {
            match c.store.save_login(&c.workload, &t).await {
                Ok(()) => {
                    saved = Ok(());
                    break;
                }
                Err(e) => {
                    saved = Err(e.to_string());
                    if i < 2 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        saved
    });
    let saved = save
        .await
        .unwrap_or_else(|e| Err(format!("the save task failed: {e}")));
    Outcome::Refreshed {
        tokens,
        lifetime,
        saved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> MonitorShared {
        let cfg = crate::config::Config::parse(
            std::path::Path::new("/t/workloads.toml"),
            "[[workload]]\nname = \"w1\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\n",
        )
        .unwrap();
        let w = Arc::new(cfg.workloads[0].clone());
        let status = WorkloadStatus::bare("w1", Status::Running, "http://127.0.0.1:9/token");
        MonitorShared::new(w, status)
    }

    #[tokio::test]
    async fn the_slot_queues_in_order_bounds_offers_and_refuses_after_close() {
        let s = shared();
        // The stored copy has no name or endpoint; the status handed out has both.
        assert!(s.lock().status.name.is_empty());
        let st = s.status();
        assert_eq!(st.name, "w1");
        assert_eq!(st.token_endpoint, "http://127.0.0.1:9/token");

        s.send(MonitorRequest::Reload).unwrap();
        for _ in 0..100 {
            s.offer(MonitorRequest::Trigger(Trigger::User));
        }
        assert_eq!(s.lock().commands.len(), OFFER_LIMIT);
        // `send` is not bounded by the offer limit: a caller waits on its reply.
        let (tx, mut rx) = oneshot::channel();
        s.send(MonitorRequest::Token(tx)).unwrap();
        assert!(matches!(
            s.next_command().await,
            Some(MonitorRequest::Reload)
        ));
        assert!(matches!(
            s.next_command().await,
            Some(MonitorRequest::Trigger(Trigger::User))
        ));

        // A command sent while the monitor waits wakes it.
        let s = Arc::new(s);
        s.lock().commands.clear();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.next_command().await.is_some() }
        });
        tokio::task::yield_now().await;
        s.send(MonitorRequest::Reload).unwrap();
        assert!(waiter.await.unwrap());

        // A token request cleared from the queue is answered as "stopped" (its
        // reply is dropped).
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));

        // Closing drops what is queued, wakes a waiting monitor with `None`, and
        // refuses what comes after.
        let (tx, mut queued) = oneshot::channel();
        s.send(MonitorRequest::Token(tx)).unwrap();
        s.close();
        assert!(matches!(
            queued.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(s.next_command().await.is_none());
        assert!(s.send(MonitorRequest::Reload).is_err());
        s.offer(MonitorRequest::Reload);
        assert!(s.lock().commands.is_empty());

        // "Stop" reaches a monitor that is waiting for commands.
        let s = Arc::new(shared());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.next_command().await.is_none() }
        });
        tokio::task::yield_now().await;
        s.close();
        assert!(waiter.await.unwrap());
    }
}
