//! The retry policy: every number that decides when the engine talks to an issuer.
//!
//! Defaults follow `docs/design.md` ("Policy"). Each value can be set in the `[policy]` table of
//! `workloads.toml` and overridden by an environment variable of the same name,
//! upper-cased and prefixed with `TOKENWARDEN_` (the environment wins). Durations are
//! written like `250ms`, `10s`, `5m`, `24h`; sub-second values work, which is how the
//! tests compress hours into milliseconds.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Refresh this fraction of the token's lifetime before it expires...
    pub refresh_lead_fraction: f64,
    /// ...but at least this long before (never more than half the lifetime)...
    pub refresh_lead_min: Duration,
    /// ...and at most this long before.
    pub refresh_lead_max: Duration,
    /// Short retry (status stays `running`): first interval, growth, jitter, caps.
    pub refresh_initial_interval: Duration,
    pub refresh_multiplier: f64,
    pub refresh_jitter: f64,
    pub refresh_max_interval: Duration,
    pub refresh_max_tries: u32,
    pub refresh_max_elapsed: Duration,
    /// `retrying`: first interval, growth, cap, jitter.
    pub retrying_interval: Duration,
    pub retrying_multiplier: f64,
    pub retrying_max_interval: Duration,
    pub retrying_jitter: f64,
    /// Give up on a transient failure after this much *awake* time.
    pub retrying_ceiling: Duration,
    /// A `Retry-After` longer than this is capped (a hostile header cannot park a workload).
    pub retry_after_max: Duration,
    /// Whole-request timeout (connect + headers + body) and connect timeout.
    pub http_timeout: Duration,
    pub connect_timeout: Duration,
    /// Token responses larger than this are refused (transient) without reading on.
    pub max_response_bytes: usize,
    /// Lifetime assumed when a token response has no usable `expires_in`.
    pub assumed_token_lifetime: Duration,
    /// A registered client's secret that expires within this is renewed (RFC 7592)
    /// before the next refresh.
    pub client_secret_renew_lead: Duration,
    /// Longest single sleep of a monitor: after it the wall clock is read again, so a
    /// suspend (which stops tokio's clock) delays a due refresh by at most this much.
    pub wall_check_interval: Duration,
    /// Triggers (network-up, wake, issuer recovery) on or off. Off leaves only the
    /// schedule and "Retry now" (used to measure what the triggers are worth).
    pub triggers: bool,
    /// After an address comes up, wait this long for routes and DNS to settle.
    pub network_settle: Duration,
    /// If the attempt after a network change fails to connect (DNS not ready), try
    /// once more this much later.
    pub network_followup: Duration,
    /// Per workload, at most `network_burst` attempts caused by network changes at
    /// once, refilled one per `network_refill`: a flapping link cannot hammer the issuer.
    pub network_burst: u32,
    pub network_refill: Duration,
    /// How often the wake detector compares the wall clock with the awake clock, and
    /// how big a difference counts as a sleep.
    pub wake_check_interval: Duration,
    pub wake_threshold: Duration,
    /// After a wake, due refreshes start spread over this long (jitter), not all at once.
    pub wake_spread: Duration,
    /// At most this many refreshes in flight at one token endpoint, across all its
    /// workloads (a mass wake of thousands of workloads must not flood the issuer).
    pub issuer_max_concurrent: u32,
    /// Local proxy: how long to wait for the remote's response headers (a stream may
    /// then last as long as it likes).
    pub proxy_upstream_timeout: Duration,
    /// Local proxy: request bodies up to this size are held so they can be sent again
    /// after a `401` and a refresh; larger ones stream straight through.
    pub proxy_replay_bytes: usize,
    /// Local proxy: a connection must send a complete request head within this long of
    /// opening, or of the end of its previous answer (so it is also how long an idle
    /// keep-alive connection is kept); then it is closed.
    pub proxy_header_timeout: Duration,
    /// Local proxy: connections one proxy serves at once. When full, a new connection
    /// takes the place of the longest-idle one (no request in flight); when every
    /// connection has a request in flight, it is answered `503` and closed.
    pub proxy_max_connections: u32,
    /// How often a running daemon or app looks at workloads.toml for hand edits.
    pub config_check_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            refresh_lead_fraction: 0.2,
            refresh_lead_min: Duration::from_secs(30),
            refresh_lead_max: Duration::from_secs(15 * 60),
            refresh_initial_interval: Duration::from_secs(10),
            refresh_multiplier: 1.5,
            refresh_jitter: 0.5,
            refresh_max_interval: Duration::from_secs(120),
            refresh_max_tries: 5,
            refresh_max_elapsed: Duration::from_secs(5 * 60),
            retrying_interval: Duration::from_secs(30),
            retrying_multiplier: 2.0,
            retrying_max_interval: Duration::from_secs(5 * 60),
            retrying_jitter: 0.2,
            retrying_ceiling: Duration::from_secs(24 * 3600),
            retry_after_max: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 256 * 1024,
            assumed_token_lifetime: Duration::from_secs(3600),
            client_secret_renew_lead: Duration::from_secs(24 * 3600),
            wall_check_interval: Duration::from_secs(60),
            triggers: true,
            network_settle: Duration::from_secs(1),
            network_followup: Duration::from_secs(2),
            network_burst: 3,
            network_refill: Duration::from_secs(10),
            wake_check_interval: Duration::from_secs(1),
            wake_threshold: Duration::from_secs(5),
            wake_spread: Duration::from_secs(2),
            issuer_max_concurrent: 8,
            proxy_upstream_timeout: Duration::from_secs(60),
            proxy_replay_bytes: 64 * 1024,
            proxy_header_timeout: Duration::from_secs(10),
            proxy_max_connections: 256,
            config_check_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Duration,
    Count,
    Fraction,
    Factor,
    Bytes,
    Bool,
}

/// Every settable key, with its kind. The env variable is `TOKENWARDEN_` + upper-case key.
pub const KEYS: &[(&str, Kind)] = &[
    ("refresh_lead_fraction", Kind::Fraction),
    ("refresh_lead_min", Kind::Duration),
    ("refresh_lead_max", Kind::Duration),
    ("refresh_initial_interval", Kind::Duration),
    ("refresh_multiplier", Kind::Factor),
    ("refresh_jitter", Kind::Fraction),
    ("refresh_max_interval", Kind::Duration),
    ("refresh_max_tries", Kind::Count),
    ("refresh_max_elapsed", Kind::Duration),
    ("retrying_interval", Kind::Duration),
    ("retrying_multiplier", Kind::Factor),
    ("retrying_max_interval", Kind::Duration),
    ("retrying_jitter", Kind::Fraction),
    ("retrying_ceiling", Kind::Duration),
    ("retry_after_max", Kind::Duration),
    ("http_timeout", Kind::Duration),
    ("connect_timeout", Kind::Duration),
    ("max_response_bytes", Kind::Bytes),
    ("assumed_token_lifetime", Kind::Duration),
    ("client_secret_renew_lead", Kind::Duration),
    ("wall_check_interval", Kind::Duration),
    ("triggers", Kind::Bool),
    ("network_settle", Kind::Duration),
    ("network_followup", Kind::Duration),
    ("network_burst", Kind::Count),
    ("network_refill", Kind::Duration),
    ("wake_check_interval", Kind::Duration),
    ("wake_threshold", Kind::Duration),
    ("wake_spread", Kind::Duration),
    ("issuer_max_concurrent", Kind::Count),
    ("proxy_upstream_timeout", Kind::Duration),
    ("proxy_replay_bytes", Kind::Bytes),
    ("proxy_header_timeout", Kind::Duration),
    ("proxy_max_connections", Kind::Count),
    ("config_check_interval", Kind::Duration),
];

pub fn env_name(key: &str) -> String {
    format!("TOKENWARDEN_{}", key.to_ascii_uppercase())
}

/// A value as written in the config or the environment.
#[derive(Clone, Debug, PartialEq)]
pub enum RawValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Policy {
    /// Set one key. The error says what was expected, without the key's location
    /// (the caller adds file and line, or the env variable name).
    pub fn set(&mut self, key: &str, value: &RawValue) -> Result<(), String> {
        let kind = KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                format!("unknown policy key `{key}` (known: {})", known.join(", "))
            })?;
        match kind {
            Kind::Duration => {
                let d = parse_duration(value)?;
                if d.is_zero() {
                    return Err(format!("`{key}` must be greater than zero"));
                }
                *self.duration_mut(key) = d;
            }
            Kind::Count => {
                let n = parse_int(value)?;
                if !(1..=1000).contains(&n) {
                    return Err(format!("`{key}` must be between 1 and 1000"));
                }
                match key {
                    "network_burst" => self.network_burst = n as u32,
                    "issuer_max_concurrent" => self.issuer_max_concurrent = n as u32,
                    "proxy_max_connections" => self.proxy_max_connections = n as u32,
                    _ => self.refresh_max_tries = n as u32,
                }
            }
            Kind::Bool => {
                self.triggers = match value {
                    RawValue::Bool(b) => *b,
                    RawValue::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                        "true" | "on" | "yes" | "1" => true,
                        "false" | "off" | "no" | "0" => false,
                        _ => return Err(format!("`{key}` must be true or false")),
                    },
                    _ => return Err(format!("`{key}` must be true or false")),
                };
            }
            Kind::Bytes => {
                let n = parse_int(value)?;
                if !(1024..=64 * 1024 * 1024).contains(&n) {
                    return Err(format!("`{key}` must be between 1024 and 67108864"));
                }
                match key {
                    "proxy_replay_bytes" => self.proxy_replay_bytes = n as usize,
                    _ => self.max_response_bytes = n as usize,
                }
            }
            Kind::Fraction => {
                let f = parse_float(value)?;
                if !(0.0..1.0).contains(&f) {
                    return Err(format!("`{key}` must be at least 0 and below 1"));
                }
                match key {
                    "refresh_lead_fraction" => self.refresh_lead_fraction = f,
                    "refresh_jitter" => self.refresh_jitter = f,
                    _ => self.retrying_jitter = f,
                }
            }
            Kind::Factor => {
                let f = parse_float(value)?;
                if !(1.0..=10.0).contains(&f) {
                    return Err(format!("`{key}` must be between 1 and 10"));
                }
                match key {
                    "refresh_multiplier" => self.refresh_multiplier = f,
                    _ => self.retrying_multiplier = f,
                }
            }
        }
        Ok(())
    }

    fn duration_mut(&mut self, key: &str) -> &mut Duration {
        match key {
            "refresh_lead_min" => &mut self.refresh_lead_min,
            "refresh_lead_max" => &mut self.refresh_lead_max,
            "refresh_initial_interval" => &mut self.refresh_initial_interval,
            "refresh_max_interval" => &mut self.refresh_max_interval,
            "refresh_max_elapsed" => &mut self.refresh_max_elapsed,
            "retrying_interval" => &mut self.retrying_interval,
            "retrying_max_interval" => &mut self.retrying_max_interval,
            "retrying_ceiling" => &mut self.retrying_ceiling,
            "retry_after_max" => &mut self.retry_after_max,
            "http_timeout" => &mut self.http_timeout,
            "connect_timeout" => &mut self.connect_timeout,
            "assumed_token_lifetime" => &mut self.assumed_token_lifetime,
            "client_secret_renew_lead" => &mut self.client_secret_renew_lead,
            "network_settle" => &mut self.network_settle,
            "network_followup" => &mut self.network_followup,
            "network_refill" => &mut self.network_refill,
            "wake_check_interval" => &mut self.wake_check_interval,
            "wake_threshold" => &mut self.wake_threshold,
            "wake_spread" => &mut self.wake_spread,
            "proxy_upstream_timeout" => &mut self.proxy_upstream_timeout,
            "proxy_header_timeout" => &mut self.proxy_header_timeout,
            "config_check_interval" => &mut self.config_check_interval,
            _ => &mut self.wall_check_interval,
        }
    }

    /// Apply `TOKENWARDEN_*` overrides from `lookup` (the process environment in
    /// production). Errors name the variable.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for (key, _) in KEYS {
            let var = env_name(key);
            if let Some(v) = lookup(&var) {
                self.set(key, &RawValue::Text(v.trim().to_string()))
                    .map_err(|e| format!("environment variable {var}: {e}"))?;
            }
        }
        self.check()
    }

    /// Cross-field checks, after all values are in.
    pub fn check(&self) -> Result<(), String> {
        if self.refresh_max_interval < self.refresh_initial_interval {
            return Err("refresh_max_interval must not be below refresh_initial_interval".into());
        }
        if self.retrying_max_interval < self.retrying_interval {
            return Err("retrying_max_interval must not be below retrying_interval".into());
        }
        if self.refresh_lead_max < self.refresh_lead_min {
            return Err("refresh_lead_max must not be below refresh_lead_min".into());
        }
        if self.proxy_header_timeout > Duration::from_secs(30) {
            return Err("proxy_header_timeout must be at most 30s".into());
        }
        Ok(())
    }

    /// How long before expiry to refresh a token of `lifetime`, with `jitter01` in [0, 1)
    /// pulling the refresh up to 10% of the lead earlier (spreads workloads apart).
    pub fn refresh_lead(&self, lifetime: Duration, jitter01: f64) -> Duration {
        let base = lifetime.mul_f64(self.refresh_lead_fraction);
        let lead = base.clamp(self.refresh_lead_min, self.refresh_lead_max);
        let lead = lead.min(lifetime / 2);
        lead + lead.mul_f64(0.1 * jitter01.clamp(0.0, 1.0))
    }
}

fn parse_duration(v: &RawValue) -> Result<Duration, String> {
    match v {
        RawValue::Text(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration like 250ms, 10s, 5m or 24h ({e})")),
        RawValue::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
        _ => Err("expected a duration like \"250ms\", \"10s\", \"5m\" or \"24h\"".into()),
    }
}

fn parse_int(v: &RawValue) -> Result<i64, String> {
    match v {
        RawValue::Integer(n) => Ok(*n),
        RawValue::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number")),
        RawValue::Float(_) | RawValue::Bool(_) => Err("expected a whole number".into()),
    }
}

fn parse_float(v: &RawValue) -> Result<f64, String> {
    let f = match v {
        RawValue::Float(f) => *f,
        RawValue::Integer(n) => *n as f64,
        RawValue::Bool(_) => return Err("expected a number".into()),
        RawValue::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?,
    };
    if f.is_finite() {
        Ok(f)
    } else {
        Err("expected a finite number".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_overrides_accept_sub_second_durations() {
        let env: HashMap<String, String> = [
            ("TOKENWARDEN_REFRESH_INITIAL_INTERVAL", "50ms"),
            ("TOKENWARDEN_REFRESH_MAX_INTERVAL", "200ms"),
            ("TOKENWARDEN_REFRESH_MAX_TRIES", "3"),
            ("TOKENWARDEN_REFRESH_MAX_ELAPSED", "1s"),
            ("TOKENWARDEN_RETRYING_INTERVAL", "100ms"),
            ("TOKENWARDEN_RETRYING_MAX_INTERVAL", "400ms"),
            ("TOKENWARDEN_RETRYING_CEILING", "24h"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut p = Policy::default();
        p.apply_env(|k| env.get(k).cloned()).unwrap();
        assert_eq!(p.refresh_initial_interval, Duration::from_millis(50));
        assert_eq!(p.refresh_max_interval, Duration::from_millis(200));
        assert_eq!(p.refresh_max_tries, 3);
        assert_eq!(p.refresh_max_elapsed, Duration::from_secs(1));
        assert_eq!(p.retrying_interval, Duration::from_millis(100));
        assert_eq!(p.retrying_max_interval, Duration::from_millis(400));
        assert_eq!(p.retrying_ceiling, Duration::from_secs(86400));
    }

    #[test]
    fn bad_values_are_named() {
        let mut p = Policy::default();
        let e = p
            .apply_env(|k| (k == "TOKENWARDEN_RETRYING_CEILING").then(|| "soon".to_string()))
            .unwrap_err();
        assert!(e.contains("TOKENWARDEN_RETRYING_CEILING"), "{e}");
        assert!(p
            .set("nope", &RawValue::Integer(1))
            .unwrap_err()
            .contains("unknown"));
        assert!(p.set("refresh_max_tries", &RawValue::Integer(0)).is_err());
        assert!(p
            .set("retrying_interval", &RawValue::Text("0s".into()))
            .is_err());
        let mut q = Policy::default();
        q.set("retrying_max_interval", &RawValue::Text("1s".into()))
            .unwrap();
        assert!(q.check().is_err());
    }

    /// The test's own map from key to field, to check `set` against.
    fn expect_set(p: &mut Policy, key: &str, d: Duration, n: u32, bytes: usize, f: f64) {
        match key {
            "refresh_lead_fraction" => p.refresh_lead_fraction = f,
            "refresh_lead_min" => p.refresh_lead_min = d,
            "refresh_lead_max" => p.refresh_lead_max = d,
            "refresh_initial_interval" => p.refresh_initial_interval = d,
            "refresh_multiplier" => p.refresh_multiplier = f,
            "refresh_jitter" => p.refresh_jitter = f,
            "refresh_max_interval" => p.refresh_max_interval = d,
            "refresh_max_tries" => p.refresh_max_tries = n,
            "refresh_max_elapsed" => p.refresh_max_elapsed = d,
            "retrying_interval" => p.retrying_interval = d,
            "retrying_multiplier" => p.retrying_multiplier = f,
            "retrying_max_interval" => p.retrying_max_interval = d,
            "retrying_jitter" => p.retrying_jitter = f,
            "retrying_ceiling" => p.retrying_ceiling = d,
            "retry_after_max" => p.retry_after_max = d,
            "http_timeout" => p.http_timeout = d,
            "connect_timeout" => p.connect_timeout = d,
            "max_response_bytes" => p.max_response_bytes = bytes,
            "assumed_token_lifetime" => p.assumed_token_lifetime = d,
            "client_secret_renew_lead" => p.client_secret_renew_lead = d,
            "wall_check_interval" => p.wall_check_interval = d,
            "triggers" => p.triggers = false,
            "network_settle" => p.network_settle = d,
            "network_followup" => p.network_followup = d,
            "network_burst" => p.network_burst = n,
            "network_refill" => p.network_refill = d,
            "wake_check_interval" => p.wake_check_interval = d,
            "wake_threshold" => p.wake_threshold = d,
            "wake_spread" => p.wake_spread = d,
            "issuer_max_concurrent" => p.issuer_max_concurrent = n,
            "proxy_upstream_timeout" => p.proxy_upstream_timeout = d,
            "proxy_replay_bytes" => p.proxy_replay_bytes = bytes,
            "proxy_header_timeout" => p.proxy_header_timeout = d,
            "proxy_max_connections" => p.proxy_max_connections = n,
            "config_check_interval" => p.config_check_interval = d,
            _ => panic!("the test does not know the key `{key}`"),
        }
    }

    #[test]
    fn every_key_sets_its_own_value_and_nothing_else() {
        let (d, n, bytes, fraction, factor) = (Duration::from_millis(7), 7, 4096, 0.37, 3.5);
        for (key, kind) in KEYS {
            let raw = match kind {
                Kind::Duration => RawValue::Text("7ms".into()),
                Kind::Count => RawValue::Integer(7),
                Kind::Bytes => RawValue::Text("4096".into()),
                Kind::Fraction => RawValue::Float(fraction),
                Kind::Factor => RawValue::Text("3.5".into()),
                Kind::Bool => RawValue::Text("off".into()),
            };
            let f = if *kind == Kind::Factor {
                factor
            } else {
                fraction
            };
            let mut got = Policy::default();
            got.set(key, &raw).unwrap_or_else(|e| panic!("{key}: {e}"));
            let mut want = Policy::default();
            expect_set(&mut want, key, d, n, bytes, f);
            assert_ne!(
                want,
                Policy::default(),
                "{key}: the test value is the default"
            );
            assert_eq!(got, want, "{key}");
            // The environment reaches the same key.
            let mut from_env = Policy::default();
            let text = match raw {
                RawValue::Text(t) => t,
                RawValue::Integer(i) => i.to_string(),
                RawValue::Float(x) => x.to_string(),
                RawValue::Bool(b) => b.to_string(),
            };
            let var = env_name(key);
            let _ = from_env.apply_env(|k| (k == var).then(|| format!(" {text} ")));
            assert_eq!(from_env, want, "{var}");
        }
    }

    #[test]
    fn triggers_take_the_usual_spellings_of_yes_and_no() {
        for (text, want) in [
            ("true", true),
            ("on", true),
            ("yes", true),
            ("1", true),
            (" ON ", true),
            ("false", false),
            ("off", false),
            ("no", false),
            ("0", false),
            ("False", false),
        ] {
            for start in [true, false] {
                let mut p = Policy {
                    triggers: start,
                    ..Policy::default()
                };
                p.set("triggers", &RawValue::Text(text.into())).unwrap();
                assert_eq!(p.triggers, want, "{text:?} from {start}");
            }
        }
        for start in [true, false] {
            let mut p = Policy {
                triggers: start,
                ..Policy::default()
            };
            p.set("triggers", &RawValue::Bool(!start)).unwrap();
            assert_eq!(p.triggers, !start);
        }
        let mut p = Policy::default();
        for bad in [RawValue::Text("maybe".into()), RawValue::Integer(1)] {
            let e = p.set("triggers", &bad).unwrap_err();
            assert!(e.contains("true or false"), "{e}");
        }
        assert!(p.triggers, "a refused value changes nothing");
    }

    #[test]
    fn numbers_are_accepted_up_to_their_bounds_and_refused_beyond() {
        let ok = |key: &str, v: RawValue| Policy::default().set(key, &v).is_ok();
        for key in [
            "refresh_max_tries",
            "network_burst",
            "issuer_max_concurrent",
        ] {
            assert!(ok(key, RawValue::Integer(1)) && ok(key, RawValue::Integer(1000)));
            assert!(!ok(key, RawValue::Integer(0)) && !ok(key, RawValue::Integer(1001)));
            assert!(!ok(key, RawValue::Float(2.0)) && !ok(key, RawValue::Text("two".into())));
        }
        for key in ["proxy_replay_bytes", "max_response_bytes"] {
            assert!(ok(key, RawValue::Integer(1024)) && ok(key, RawValue::Integer(67_108_864)));
            assert!(!ok(key, RawValue::Integer(1023)) && !ok(key, RawValue::Integer(67_108_865)));
        }
        for key in ["refresh_lead_fraction", "refresh_jitter", "retrying_jitter"] {
            assert!(ok(key, RawValue::Float(0.0)) && ok(key, RawValue::Float(0.999)));
            assert!(ok(key, RawValue::Integer(0)));
            assert!(!ok(key, RawValue::Float(1.0)) && !ok(key, RawValue::Float(-0.01)));
            assert!(!ok(key, RawValue::Text("NaN".into())) && !ok(key, RawValue::Bool(true)));
        }
        for key in ["refresh_multiplier", "retrying_multiplier"] {
            assert!(ok(key, RawValue::Float(1.0)) && ok(key, RawValue::Integer(10)));
            assert!(!ok(key, RawValue::Float(0.99)) && !ok(key, RawValue::Float(10.01)));
            assert!(!ok(key, RawValue::Text("inf".into())));
        }
        // Durations: text, or whole seconds; never negative or zero.
        let mut p = Policy::default();
        p.set("http_timeout", &RawValue::Integer(5)).unwrap();
        assert_eq!(p.http_timeout, Duration::from_secs(5));
        assert!(!ok("http_timeout", RawValue::Integer(-1)));
        assert!(!ok("http_timeout", RawValue::Integer(0)));
        assert!(!ok("http_timeout", RawValue::Float(1.5)));
    }

    #[test]
    fn cross_checks_allow_equal_bounds_and_refuse_inverted_ones() {
        let secs = Duration::from_secs;
        let base = Policy::default();
        let equal = [
            Policy {
                refresh_max_interval: base.refresh_initial_interval,
                ..base.clone()
            },
            Policy {
                retrying_max_interval: base.retrying_interval,
                ..base.clone()
            },
            Policy {
                refresh_lead_max: base.refresh_lead_min,
                ..base.clone()
            },
            Policy {
                proxy_header_timeout: secs(30),
                ..base.clone()
            },
        ];
        for p in equal {
            assert_eq!(p.check(), Ok(()), "{p:?}");
        }
        let inverted = [
            Policy {
                refresh_max_interval: base.refresh_initial_interval - secs(1),
                ..base.clone()
            },
            Policy {
                retrying_max_interval: base.retrying_interval - secs(1),
                ..base.clone()
            },
            Policy {
                refresh_lead_max: base.refresh_lead_min - secs(1),
                ..base.clone()
            },
            Policy {
                proxy_header_timeout: secs(31),
                ..base.clone()
            },
        ];
        for p in inverted {
            assert!(p.check().is_err(), "{p:?}");
        }
    }

    #[test]
    fn lead_is_a_fifth_of_lifetime_bounded_and_jittered_earlier() {
        let p = Policy::default();
        // 1 h token: 20% = 12 min.
        assert_eq!(
            p.refresh_lead(Duration::from_secs(3600), 0.0),
            Duration::from_secs(720)
        );
        // 10 h token: capped at 15 min.
        assert_eq!(
            p.refresh_lead(Duration::from_secs(36000), 0.0),
            Duration::from_secs(900)
        );
        // 5 min token: 60 s.
        assert_eq!(
            p.refresh_lead(Duration::from_secs(300), 0.0),
            Duration::from_secs(60)
        );
        // 20 s token: min 30 s would exceed half the lifetime, so 10 s.
        assert_eq!(
            p.refresh_lead(Duration::from_secs(20), 0.0),
            Duration::from_secs(10)
        );
        // Jitter only ever makes it earlier, by at most 10%.
        let j = p.refresh_lead(Duration::from_secs(3600), 0.999);
        assert!(j > Duration::from_secs(720) && j < Duration::from_secs(793));
    }
}
