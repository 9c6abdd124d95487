//! Outage replay: the same outage traces against four policies, side by side.
//!
//! `cargo bench --no-default-features --bench outage` prints a markdown table.
//!
//! * (1) `toolhive-before` and (2) `toolhive-after` are MODELS of ToolHive's published
//!   token-monitor behaviour (refresh at expiry on a monotonic timer; short retry 10 s
//!   x1.5 ±50%, 5 tries, 5 min; then (1) gives up, (2) retries every 10 minutes until
//!   24 hours), simulated as discrete events.
//! * (3) `tokenwarden` and (4) `tokenwarden+triggers` run the REAL engine (supervisor,
//!   monitors, state machine, wake detector) on tokio's paused clock with a virtual wall
//!   clock, against a scripted token endpoint, so a 30-hour trace replays in well under a
//!   second. The network-up events of a trace are injected as the network source would
//!   send them; sleeps jump the wall clock while the awake clock stands still.
//!
//! Columns: final status; time from the cause clearing to `running` with a fresh token;
//! awake time without a valid access token (during the trace window); refresh requests
//! sent; whether the workload was ever wrongly marked `unauthenticated` (a transient
//! outage shorter than the 24 h ceiling, no verdict).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokenwarden::engine::classify::{BodyShape, Failure, FailureKind, TokenResponse};
use tokenwarden::engine::config::Config;
use tokenwarden::engine::oauth::Transport;
use tokenwarden::engine::policy::Policy;
use tokenwarden::engine::store::{unix_secs, SecretStore, StoredTokens};
use tokenwarden::engine::triggers::{Signal, Sources};
use tokenwarden::engine::{Clock, Engine, EngineOptions, Secret, Status};

const H: f64 = 3600.0;
const M: f64 = 60.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Connect,
    Waf,
    RateLimited(u64),
}

#[derive(Clone, Debug)]
struct Trace {
    name: &'static str,
    /// Outage start (wall seconds from the trace start) and length.
    start: f64,
    len: f64,
    fault: Fault,
    /// Link flapping: the fault holds for the first half of every period.
    flap: Option<f64>,
    /// A sleep (offset from the outage start, length), inside the outage.
    sleep: Option<(f64, f64)>,
    /// A network-up event when the outage ends (and at every flap).
    net_up: bool,
    /// The grant is revoked at this offset from the outage start.
    revoke: Option<f64>,
}

impl Trace {
    fn clear(&self) -> f64 {
        self.start + self.len
    }
    fn end(&self) -> f64 {
        self.clear() + 2.0 * H
    }
    /// What the token endpoint answers at wall time `t`.
    fn outcome(&self, t: f64) -> Result<(), Result<Fault, ()>> {
        let in_outage = t >= self.start && t < self.clear();
        let faulty = in_outage
            && match self.flap {
                Some(p) => ((t - self.start) % p) < p / 2.0,
                None => true,
            };
        if faulty {
            return Err(Ok(self.fault));
        }
        if self.revoke.is_some_and(|r| t >= self.start + r) {
            return Err(Err(()));
        }
        Ok(())
    }
    fn wrong_unauth_possible(&self) -> bool {
        self.revoke.is_none() && self.len < 24.0 * H
    }
    /// Wall instants of network-up events.
    fn net_ups(&self) -> Vec<f64> {
        if !self.net_up {
            return vec![];
        }
        let mut v = Vec::new();
        if let Some(p) = self.flap {
            let mut t = self.start + p / 2.0;
            while t < self.clear() {
                v.push(t);
                t += p;
            }
        }
        v.push(self.clear());
        v
    }
}

fn traces() -> Vec<Trace> {
    let base = Trace {
        name: "",
        start: 2.0 * H,
        len: 0.0,
        fault: Fault::Connect,
        flap: None,
        sleep: None,
        net_up: true,
        revoke: None,
    };
    vec![
        Trace {
            name: "30 s blip",
            len: 30.0,
            ..base.clone()
        },
        Trace {
            name: "3 min WAF block (seed)",
            len: 3.0 * M,
            fault: Fault::Waf,
            ..base.clone()
        },
        Trace {
            name: "20 min outage",
            len: 20.0 * M,
            ..base.clone()
        },
        Trace {
            name: "2 h outage",
            len: 2.0 * H,
            ..base.clone()
        },
        Trace {
            name: "12 h VPN drop, 8 h asleep",
            len: 12.0 * H,
            sleep: Some((2.0 * H, 8.0 * H)),
            ..base.clone()
        },
        Trace {
            name: "45 min WAF, lifted server-side",
            len: 45.0 * M,
            fault: Fault::Waf,
            net_up: false,
            ..base.clone()
        },
        Trace {
            name: "10 min 429 Retry-After 120",
            len: 10.0 * M,
            fault: Fault::RateLimited(120),
            net_up: false,
            ..base.clone()
        },
        Trace {
            name: "link flapping 5 s for 2 min",
            len: 2.0 * M,
            flap: Some(5.0),
            ..base.clone()
        },
        Trace {
            name: "30 h outage (past ceiling)",
            len: 30.0 * H,
            ..base.clone()
        },
        Trace {
            name: "1 h outage, grant revoked at 30 min",
            len: H,
            revoke: Some(30.0 * M),
            ..base
        },
    ]
}

#[derive(Debug, Default)]
struct Metrics {
    final_status: String,
    recovery: Option<f64>,
    downtime: f64,
    requests: u64,
    wrong_unauth: bool,
}

/// Awake time in [from, to] not covered by `valid` intervals and not asleep.
fn downtime(valid: &[(f64, f64)], from: f64, to: f64, sleep: Option<(f64, f64)>) -> f64 {
    let mut v: Vec<(f64, f64)> = valid
        .iter()
        .map(|&(a, b)| (a.max(from), b.min(to)))
        .filter(|(a, b)| b > a)
        .collect();
    if let Some((s, e)) = sleep {
        v.push((s, e)); // asleep counts as "not down"
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut covered = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (a, b) in v {
        match cur {
            Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                covered += cb - ca;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    if let Some((ca, cb)) = cur {
        covered += cb - ca;
    }
    ((to - from) - covered).max(0.0)
}

/// Tiny deterministic PRNG for the models' jitter.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// ToolHive's monitor as published: refresh when the token expires (monotonic timer,
/// so a sleep delays it), short retry, then give up (`fixed_retry = None`) or retry
/// every 10 minutes until 24 hours.
fn toolhive_model(tr: &Trace, lifetime: f64, fixed_retry: Option<f64>) -> Metrics {
    let (sleep_at, sleep_len) = tr
        .sleep
        .map(|(o, l)| (tr.start + o, l))
        .unwrap_or((f64::MAX, 0.0));
    // Awake clock `a`; wall(a) adds the sleep once the sleep has begun.
    let wall = |a: f64| if a >= sleep_at { a + sleep_len } else { a };
    let mut rng = Lcg(42);
    let mut m = Metrics::default();
    let mut valid = vec![(0.0, lifetime)];
    let mut a = lifetime; // first refresh at expiry
    let end = tr.end();
    let mut status = "running";
    let mut recovered_at: Option<f64> = None;
    // Whether a failure is pending (a refresh failed and none has succeeded since).
    let mut failing = false;
    let mut healthy_at_clear: Option<bool> = None;
    'outer: while wall(a) < end {
        // One refresh episode starting at awake time `a`.
        let first_fail = a;
        let mut tries = 0;
        let mut delay = 10.0;
        loop {
            let w = wall(a);
            if w >= end {
                break 'outer;
            }
            if w >= tr.clear() && healthy_at_clear.is_none() {
                healthy_at_clear = Some(!failing);
            }
            if w >= tr.start {
                m.requests += 1;
            }
            match tr.outcome(w) {
                Ok(()) => {
                    valid.push((w, w + lifetime));
                    if w >= tr.clear() && recovered_at.is_none() && failing {
                        recovered_at = Some(w);
                    }
                    failing = false;
                    a += lifetime;
                    break;
                }
                Err(Err(())) => {
                    status = "unauthenticated";
                    break 'outer;
                }
                Err(Ok(_)) => {
                    failing = true;
                    tries += 1;
                    if tries < 5 && a - first_fail < 300.0 {
                        a += delay * (0.5 + rng.next());
                        delay *= 1.5;
                        continue;
                    }
                    match fixed_retry {
                        None => {
                            status = "unauthenticated";
                            if tr.wrong_unauth_possible() {
                                m.wrong_unauth = true;
                            }
                            break 'outer;
                        }
                        Some(every) => {
                            if a - first_fail >= 24.0 * H {
                                status = "unauthenticated";
                                break 'outer;
                            }
                            a += every;
                        }
                    }
                }
            }
        }
    }
    m.final_status = status.into();
    // Not failing when the cause cleared: nothing to recover from.
    m.recovery = if status == "running" && healthy_at_clear.unwrap_or(!failing) {
        Some(0.0)
    } else {
        recovered_at.map(|r| r - tr.clear())
    };
    m.downtime = downtime(
        &valid,
        tr.start,
        end,
        tr.sleep.map(|(o, l)| (tr.start + o, tr.start + o + l)),
    );
    m
}

/// The real engine in virtual time.
/// The real engine over `workloads` workloads sharing one token endpoint. With more
/// than one, `recovery` is until all are running and `downtime` counts time when none
/// had a valid token.
async fn tokenwarden(tr: &Trace, lifetime: f64, triggers: bool, workloads: usize) -> Metrics {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = Clock::virtual_from(t0);
    let wall_s = {
        let clock = clock.clone();
        move || clock.wall().duration_since(t0).unwrap().as_secs_f64()
    };
    let requests = Arc::new(AtomicU64::new(0));
    let valid = Arc::new(Mutex::new(vec![(0.0, lifetime)]));
    let transport = {
        let tr = tr.clone();
        let requests = requests.clone();
        let valid = valid.clone();
        let wall_s = wall_s.clone();
        Transport::Scripted(Arc::new(move |_req| {
            let tr = tr.clone();
            let requests = requests.clone();
            let valid = valid.clone();
            let wall_s = wall_s.clone();
            Box::pin(async move {
                // A round trip.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let w = wall_s();
                if w >= tr.start {
                    requests.fetch_add(1, Ordering::Relaxed);
                }
                match tr.outcome(w) {
                    Ok(()) => {
                        valid.lock().unwrap().push((w, w + lifetime));
                        Ok(TokenResponse {
                            access_token: Secret::new("replay-access"),
                            refresh_token: Some(Secret::new("replay-refresh")),
                            expires_in: Some(Duration::from_secs_f64(lifetime)),
                            expires_in_invalid: false,
                            scope: None,
                        })
                    }
                    Err(Err(())) => Err(Failure::new(FailureKind::OAuth {
                        status: 400,
                        error: "invalid_grant".into(),
                        description: None,
                    })),
                    Err(Ok(Fault::Connect)) => Err(Failure::new(FailureKind::Connect)),
                    Err(Ok(Fault::Waf)) => Err(Failure::new(FailureKind::Http {
                        status: 403,
                        body: BodyShape::Html,
                    })),
                    Err(Ok(Fault::RateLimited(s))) => Err(Failure {
                        kind: FailureKind::Http {
                            status: 429,
                            body: BodyShape::Json,
                        },
                        retry_after: Some(Duration::from_secs(s)),
                    }),
                }
            })
        }))
    };
    let names: Vec<String> = (0..workloads).map(|i| format!("w{i}")).collect();
    let text: String = names
        .iter()
        .map(|n| format!("[[workload]]\nname = \"{n}\"\ntoken_endpoint = \"https://issuer.example/token\"\nclient_id = \"c\"\n"))
        .collect();
    let mut cfg = Config::parse(std::path::Path::new("/replay/workloads.toml"), &text).unwrap();
    cfg.policy = Policy {
        triggers,
        ..Policy::default()
    };
    let store = SecretStore::memory();
    for n in &names {
        store
            .save_tokens(
                n,
                &StoredTokens {
                    access_token: Secret::new("replay-access"),
                    refresh_token: Some(Secret::new("replay-refresh")),
                    expires_at: Some(unix_secs(t0) + lifetime as u64),
                    lifetime: Some(lifetime as u64),
                    obtained_at: unix_secs(t0),
                    scopes: Vec::new(),
                },
            )
            .await
            .unwrap();
    }
    let engine = Engine::start(EngineOptions {
        clock: clock.clone(),
        sources: Sources {
            network: false,
            wake_clock: true,
            logind: false,
        },
        transport: Some(transport),
        ..EngineOptions::new(cfg, store)
    });
    let unauth_at = Arc::new(Mutex::new(None::<f64>));
    // (healthy now, first healthy moment after the cause cleared)
    let health = Arc::new(Mutex::new((true, None::<f64>)));
    let healthy_at_clear = Arc::new(Mutex::new(None::<bool>));
    {
        let mut rx = engine.subscribe();
        let unauth_at = unauth_at.clone();
        let health = health.clone();
        let wall_s = wall_s.clone();
        let clear = tr.clear();
        tokio::spawn(async move {
            let mut unhealthy = std::collections::BTreeSet::new();
            while let Ok(ev) = rx.recv().await {
                let w = wall_s();
                let s = &ev.workload;
                if s.status == Status::Unauthenticated {
                    unauth_at.lock().unwrap().get_or_insert(w);
                }
                if s.status == Status::Running && s.attempts == 0 {
                    unhealthy.remove(&s.name);
                } else {
                    unhealthy.insert(s.name.clone());
                }
                let healthy = unhealthy.is_empty();
                let mut h = health.lock().unwrap();
                h.0 = healthy;
                if healthy && w >= clear && h.1.is_none() {
                    h.1 = Some(w);
                }
            }
        });
    }
    // Walk the trace's events in wall time.
    let mut events: Vec<(f64, &str)> = tr.net_ups().into_iter().map(|t| (t, "net")).collect();
    if let Some((o, _)) = tr.sleep {
        events.push((tr.start + o, "sleep"));
    }
    events.push((tr.clear(), "clear"));
    events.push((tr.end(), "end"));
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, what) in events {
        let now = wall_s();
        if at > now {
            tokio::time::sleep(Duration::from_secs_f64(at - now)).await;
        }
        if at >= tr.clear() && healthy_at_clear.lock().unwrap().is_none() {
            *healthy_at_clear.lock().unwrap() = Some(health.lock().unwrap().0);
        }
        match what {
            "net" => engine.inject(Signal::NetworkUp {
                addr: std::net::Ipv4Addr::new(10, 0, 0, 2).into(),
            }),
            "sleep" => clock.jump_wall(Duration::from_secs_f64(tr.sleep.unwrap().1)),
            _ => {}
        }
    }
    let list = engine.status().await.unwrap();
    let status = list
        .iter()
        .map(|s| s.status)
        .find(|s| *s != Status::Running)
        .unwrap_or(Status::Running);
    engine.shutdown().await;
    let unauth = *unauth_at.lock().unwrap();
    let valid = valid.lock().unwrap().clone();
    let recovered = health.lock().unwrap().1;
    let was_healthy = healthy_at_clear.lock().unwrap().unwrap_or(false);
    Metrics {
        final_status: status.as_str().into(),
        recovery: if was_healthy && status == Status::Running {
            Some(0.0)
        } else {
            recovered.map(|r| r - tr.clear())
        },
        downtime: downtime(
            &valid,
            tr.start,
            tr.end(),
            tr.sleep.map(|(o, l)| (tr.start + o, tr.start + o + l)),
        ),
        requests: requests.load(Ordering::Relaxed),
        wrong_unauth: unauth.is_some() && tr.wrong_unauth_possible(),
    }
}

fn fmt_dur(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 2.0 * H {
        format!("{:.1} min", s / M)
    } else {
        format!("{:.1} h", s / H)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    println!("\nOutage replay (virtual time). (1), (2): models of ToolHive's published behaviour; (3), (4): the real engine.\n");
    println!("| trace | token | policy | final status | cause cleared → running | without valid token (awake) | refresh requests | wrongly unauthenticated |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut wrong_tw = 0;
    let mut max_event_recovery: f64 = 0.0;
    let mut max_quiet_recovery: f64 = 0.0;
    let mut short_outage_downtime: f64 = 0.0;
    let mut long_rate = (0.0, 0.0);
    for tr in traces() {
        for (lname, lifetime) in [("5 min", 5.0 * M), ("1 h", H)] {
            let rows: Vec<(&str, Metrics)> = vec![
                (
                    "(1) toolhive-before (model)",
                    toolhive_model(&tr, lifetime, None),
                ),
                (
                    "(2) toolhive-after (model)",
                    toolhive_model(&tr, lifetime, Some(10.0 * M)),
                ),
                (
                    "(3) tokenwarden",
                    rt.block_on(tokenwarden(&tr, lifetime, false, 1)),
                ),
                (
                    "(4) tokenwarden+triggers",
                    rt.block_on(tokenwarden(&tr, lifetime, true, 1)),
                ),
            ];
            for (pname, m) in &rows {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    tr.name,
                    lname,
                    pname,
                    m.final_status,
                    m.recovery.map(fmt_dur).unwrap_or_else(|| "never".into()),
                    fmt_dur(m.downtime),
                    m.requests,
                    if m.wrong_unauth { "**yes**" } else { "no" }
                );
            }
            let tw = &rows[3].1;
            if tw.wrong_unauth {
                wrong_tw += 1;
            }
            if tr.wrong_unauth_possible() {
                if let Some(r) = tw.recovery {
                    if tr.net_up {
                        max_event_recovery = max_event_recovery.max(r);
                    } else {
                        max_quiet_recovery = max_quiet_recovery.max(r);
                    }
                }
            }
            // Outages shorter than the refresh lead (20% of the lifetime) cost nothing.
            if tr.len < 0.2 * lifetime && tr.flap.is_none() {
                short_outage_downtime = short_outage_downtime.max(tw.downtime);
            }
            if tr.name.starts_with("2 h") {
                long_rate = (rows[1].1.requests as f64 / 2.0, tw.requests as f64 / 2.0);
            }
        }
    }
    // Workloads sharing one issuer: ToolHive's monitors are independent (N times one
    // workload's requests); Tokenwarden's share one probe per issuer.
    println!("\nWorkloads sharing one token endpoint (1 h tokens): refresh requests per hour of outage.\n");
    println!("| trace | workloads | (2) toolhive-after (model) | (4) tokenwarden+triggers | tokenwarden: all running after the cause cleared | wrongly unauthenticated |");
    println!("|---|---|---|---|---|---|");
    let mut shared_rate = (0.0, 0.0);
    for tr in traces().into_iter().filter(|t| {
        ["2 h outage", "12 h", "server-side"]
            .iter()
            .any(|k| t.name.contains(k))
    }) {
        for n in [1usize, 10] {
            let th = toolhive_model(&tr, H, Some(10.0 * M));
            let tw = rt.block_on(tokenwarden(&tr, H, true, n));
            let hours = tr.len / H;
            let rates = (
                n as f64 * th.requests as f64 / hours,
                tw.requests as f64 / hours,
            );
            if n == 10 && tr.name.starts_with("2 h") {
                shared_rate = rates;
            }
            println!(
                "| {} | {n} | {:.1}/h | {:.1}/h | {} | {} |",
                tr.name,
                rates.0,
                rates.1,
                tw.recovery.map(fmt_dur).unwrap_or_else(|| "never".into()),
                if tw.wrong_unauth { "**yes**" } else { "no" }
            );
        }
    }
    println!(
        "\nsummary: tokenwarden+triggers: wrongly unauthenticated {wrong_tw}/20; slowest recovery after a network-up/wake event {}; slowest without a local event {} (retrying cap 5 min); max downtime for outages shorter than the refresh lead {}; refresh requests per hour in the 2 h outage: one workload toolhive-after {:.1} vs tokenwarden+triggers {:.1}, ten workloads on one issuer {:.1} vs {:.1}; replayed in {:.1} s",
        fmt_dur(max_event_recovery),
        fmt_dur(max_quiet_recovery),
        fmt_dur(short_outage_downtime),
        long_rate.0,
        long_rate.1,
        shared_rate.0,
        shared_rate.1,
        started.elapsed().as_secs_f64()
    );
}
