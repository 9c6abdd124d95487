//! Desktop notifications: which status changes deserve one, how bursts coalesce, and
//! how a flapping workload is kept quiet. The decision logic ([`Notifier`]) is pure
//! (time is passed in) and tested by tables; [`show`] hands a [`Note`] to the
//! platform (notify-rust) on a thread of its own.
//!
//! Rules:
//! * `running → retrying` is a *degraded* note, `retrying|unauthenticated → running`
//!   a *recovered* note, anything else `→ unauthenticated` an *unauthenticated* note.
//!   The first report of a monitor (no previous status) never notifies.
//! * Notes wait [`NotifyPolicy::coalesce`] before they go out; notes of one kind for
//!   workloads of one token endpoint that arrive in that window become one note
//!   ("3 workloads are retrying").
//! * A degrade that recovers before it went out cancels both (a blip nobody needs).
//! * A workload that already had a degraded note within [`NotifyPolicy::quiet`] gets
//!   no new one, and then no recovered note either: a flapping link stays quiet.
//! * A recovered note only follows an announced degrade or unauthenticated state.
//! * A remote that asks for more permission (`403 insufficient_scope`, status
//!   `needs_scopes`) gets one *needs permission* note per set of scopes, with
//!   "Re-authenticate"; the status does not change for it (the token still serves
//!   other calls), and a remote the user was asked too often is not noted again.
//! * Workloads the user muted are left out entirely.

use crate::engine::status::WorkloadStatus;
use crate::engine::{Status, StatusChange};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoteKind {
    Degraded,
    Recovered,
    Unauthenticated,
    NeedsPermission,
}

impl NoteKind {
    /// Whether the note offers "Re-authenticate".
    pub fn offers_sign_in(self) -> bool {
        matches!(self, NoteKind::Unauthenticated | NoteKind::NeedsPermission)
    }
}

/// One notification to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    pub summary: String,
    pub body: String,
    /// The workloads it names (for the "Re-authenticate" action).
    pub workloads: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
pub struct NotifyPolicy {
    pub coalesce: Duration,
    pub quiet: Duration,
}

impl Default for NotifyPolicy {
    fn default() -> Self {
        NotifyPolicy {
            coalesce: Duration::from_secs(2),
            quiet: Duration::from_secs(10 * 60),
        }
    }
}

impl NotifyPolicy {
    /// Defaults, overridden by `TOKENWARDEN_NOTIFY_COALESCE` / `TOKENWARDEN_NOTIFY_QUIET`
    /// (durations like `500ms`, `10m`); bad values are ignored with a warning.
    pub fn from_env() -> Self {
        let mut p = NotifyPolicy::default();
        let read = |k: &str, into: &mut Duration| {
            if let Ok(v) = std::env::var(k) {
                match humantime::parse_duration(v.trim()) {
                    Ok(d) => *into = d,
                    Err(e) => tracing::warn!(var = k, error = %e, "ignored"),
                }
            }
        };
        read("TOKENWARDEN_NOTIFY_COALESCE", &mut p.coalesce);
        read("TOKENWARDEN_NOTIFY_QUIET", &mut p.quiet);
        p
    }
}

#[derive(Clone, Debug)]
struct Pending {
    kind: NoteKind,
    status: WorkloadStatus,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct Notifier {
    policy: NotifyPolicy,
    pending: Vec<Pending>,
    /// When each workload last had a degraded note shown.
    last_degraded: HashMap<String, Instant>,
    /// Workloads whose degrade/unauthenticated state the user was told about.
    announced: HashSet<String>,
    /// The scopes each workload's remote last asked for (noted once per set).
    permission: HashMap<String, Vec<String>>,
}

impl Notifier {
    pub fn new(policy: NotifyPolicy) -> Self {
        Notifier {
            policy,
            ..Notifier::default()
        }
    }

    /// Take in one status change. `muted`: the user turned notifications off for it.
    pub fn observe(&mut self, ch: &StatusChange, muted: bool, now: Instant) {
        let w = &ch.workload;
        if w.needs_scopes.is_empty() {
            self.permission.remove(&w.name);
        } else if self.permission.get(&w.name) != Some(&w.needs_scopes) {
            self.permission
                .insert(w.name.clone(), w.needs_scopes.clone());
            if ch.previous.is_some() && !muted {
                self.pending.push(Pending {
                    kind: NoteKind::NeedsPermission,
                    status: w.clone(),
                    at: now,
                });
            }
        }
        let Some(prev) = ch.previous else { return };
        if prev == w.status || muted {
            return;
        }
        let kind = match (prev, w.status) {
            (Status::Running, Status::Retrying) => NoteKind::Degraded,
            (Status::Retrying | Status::Unauthenticated, Status::Running) => NoteKind::Recovered,
            (_, Status::Unauthenticated) => NoteKind::Unauthenticated,
            _ => return,
        };
        match kind {
            NoteKind::Degraded => {
                let recent = self
                    .last_degraded
                    .get(&w.name)
                    .is_some_and(|t| now.duration_since(*t) < self.policy.quiet);
                if recent {
                    return;
                }
            }
            NoteKind::Recovered => {
                // A degrade still waiting to go out: a blip, drop both.
                let before = self.pending.len();
                self.pending
                    .retain(|p| !(p.status.name == w.name && p.kind == NoteKind::Degraded));
                if self.pending.len() != before {
                    return;
                }
                if !self.announced.contains(&w.name) {
                    return;
                }
            }
            NoteKind::Unauthenticated => {
                self.pending.retain(|p| {
                    !(p.status.name == w.name
                        && matches!(p.kind, NoteKind::Degraded | NoteKind::NeedsPermission))
                });
            }
            NoteKind::NeedsPermission => {}
        }
        self.pending.push(Pending {
            kind,
            status: w.clone(),
            at: now,
        });
    }

    /// When [`flush`](Self::flush) has something to send.
    pub fn next_flush(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|p| p.at + self.policy.coalesce)
            .min()
    }

    /// The notes due at `now`, coalesced by kind and token endpoint.
    pub fn flush(&mut self, now: Instant) -> Vec<Note> {
        let Some(first_due) = self.next_flush() else {
            return Vec::new();
        };
        if first_due > now {
            return Vec::new();
        }
        // Everything of a group goes out once the group's oldest entry is due.
        let mut groups: BTreeMap<(NoteKind, String), Vec<Pending>> = BTreeMap::new();
        for p in self.pending.drain(..) {
            groups
                .entry((p.kind, p.status.token_endpoint.clone()))
                .or_default()
                .push(p);
        }
        let mut notes = Vec::new();
        for ((kind, endpoint), mut items) in groups {
            let due = items.iter().map(|p| p.at).min().unwrap_or(now) + self.policy.coalesce;
            if due > now {
                self.pending.append(&mut items);
                continue;
            }
            for p in &items {
                match kind {
                    NoteKind::Degraded => {
                        self.last_degraded.insert(p.status.name.clone(), now);
                        self.announced.insert(p.status.name.clone());
                    }
                    NoteKind::Unauthenticated => {
                        self.announced.insert(p.status.name.clone());
                    }
                    NoteKind::Recovered => {
                        self.announced.remove(&p.status.name);
                    }
                    NoteKind::NeedsPermission => {}
                }
            }
            notes.push(compose(kind, &endpoint, &items));
        }
        notes
    }
}

fn host_of(endpoint: &str) -> String {
    url::Url::parse(endpoint)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .unwrap_or_else(|| endpoint.to_string())
}

/// The cause in plain words: the engine's reason, with RFC 6749 codes explained.
pub fn plain_reason(reason: Option<&str>) -> String {
    let Some(r) = reason else {
        return "no reason given".into();
    };
    let explained = match r {
        "invalid_grant" => "the issuer no longer accepts the saved sign-in (invalid_grant)",
        "invalid_client" => "the issuer does not know this client any more (invalid_client)",
        "unauthorized_client" => {
            "the issuer does not allow this client to refresh (unauthorized_client)"
        }
        "invalid_scope" => "the issuer refused the requested scopes (invalid_scope)",
        "invalid_request" => {
            "the issuer rejected the refresh request as malformed (invalid_request)"
        }
        "unsupported_grant_type" => {
            "the issuer does not support refresh tokens here (unsupported_grant_type)"
        }
        other => return other.to_string(),
    };
    explained.to_string()
}

fn names(items: &[Pending]) -> String {
    let n: Vec<&str> = items.iter().map(|p| p.status.name.as_str()).collect();
    match n.len() {
        0 => String::new(),
        1 => n[0].to_string(),
        _ => format!("{} and {}", n[..n.len() - 1].join(", "), n[n.len() - 1]),
    }
}

fn compose(kind: NoteKind, endpoint: &str, items: &[Pending]) -> Note {
    let many = items.len() > 1;
    let who = names(items);
    let host = host_of(endpoint);
    let first = &items[0].status;
    let cause = plain_reason(first.reason.as_deref());
    let (summary, body) = match kind {
        NoteKind::Degraded => {
            let token = if items.iter().all(|p| p.status.access_token_valid) {
                " The current access token still works meanwhile."
            } else {
                ""
            };
            (
                if many {
                    format!("{} workloads are retrying ({host})", items.len())
                } else {
                    format!("{who} is retrying")
                },
                format!(
                    "{}Cannot refresh: {cause}. Tokenwarden keeps trying and retries as soon as the network changes.{token}",
                    if many { format!("{who}: ") } else { String::new() }
                ),
            )
        }
        NoteKind::Recovered => (
            if many {
                format!("{} workloads recovered ({host})", items.len())
            } else {
                format!("{who} recovered")
            },
            format!(
                "{}{} a fresh access token again and {} running.",
                if many {
                    format!("{who}: ")
                } else {
                    String::new()
                },
                if many { "have" } else { "has" },
                if many { "are" } else { "is" },
            ),
        ),
        // Composed below.
        NoteKind::NeedsPermission => (String::new(), String::new()),
        NoteKind::Unauthenticated => {
            let hint = first
                .hint
                .as_deref()
                .map(|h| format!(" {h}"))
                .unwrap_or_else(|| " Re-authenticate from the Tokenwarden window or tray.".into());
            (
                if many {
                    format!(
                        "{} workloads need you to sign in again ({host})",
                        items.len()
                    )
                } else {
                    format!("{who} needs you to sign in again")
                },
                format!(
                    "{}{cause}.{hint}",
                    if many {
                        format!("{who}: ")
                    } else {
                        String::new()
                    }
                ),
            )
        }
    };
    let (summary, body) = match kind {
        NoteKind::NeedsPermission => {
            let scopes = |p: &Pending| p.status.needs_scopes.join(" ");
            (
                if many {
                    format!("{} workloads need more permission ({host})", items.len())
                } else {
                    format!("{who} needs more permission")
                },
                format!(
                    "The remote asks for: {}. Re-authenticate to grant it; everything else keeps working meanwhile.",
                    items.iter().map(scopes).collect::<Vec<_>>().join("; ")
                ),
            )
        }
        _ => (summary, body),
    };
    Note {
        kind,
        summary,
        body,
        workloads: items.iter().map(|p| p.status.name.clone()).collect(),
    }
}

/// `text` safe to put into a notification body that the server reads as markup:
/// `&`, `<` and `>` escaped, so issuer text (an `error_description`, a reason) shows as
/// written and can never become a link or an image (KDE and dunst render `<a>` and
/// `<img>` in bodies).
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether the notification server reads bodies as markup (freedesktop's
/// `body-markup` capability), asked once per process. When the question cannot be
/// answered the body is escaped all the same: a stray `&amp;` is better than a link.
#[cfg(all(unix, not(target_os = "macos")))]
fn body_is_markup() -> bool {
    static MARKUP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MARKUP.get_or_init(|| match notify_rust::get_capabilities() {
        Ok(caps) => caps.iter().any(|c| c == "body-markup"),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the notification server's capabilities");
            true
        }
    })
}

/// A notification with the app's name and a category hint (where the platform has them).
/// The summary is plain text by the freedesktop spec (and built from workload names and
/// host names only); the body is escaped where the server reads markup.
fn notification(summary: &str, body: &str, category: &str) -> notify_rust::Notification {
    #[cfg(all(unix, not(target_os = "macos")))]
    let markup = body_is_markup();
    #[cfg(not(all(unix, not(target_os = "macos"))))]
    let markup = false;
    notification_as(summary, body, category, markup)
}

fn notification_as(
    summary: &str,
    body: &str,
    category: &str,
    markup: bool,
) -> notify_rust::Notification {
    let body = if markup {
        escape_markup(body)
    } else {
        body.to_string()
    };
    let mut n = notify_rust::Notification::new();
    n.appname("Tokenwarden")
        .summary(summary)
        .body(&body)
        .icon("dialog-information");
    #[cfg(all(unix, not(target_os = "macos")))]
    n.hint(notify_rust::Hint::Category(category.into()));
    #[cfg(not(all(unix, not(target_os = "macos"))))]
    let _ = category;
    n
}

/// Tell the user that a hand edit of workloads.toml cannot be used (`message` names the
/// file and the line) and that the running configuration stays.
pub fn show_config_error(message: &str) {
    show_problem(
        "workloads.toml has an error",
        &format!(
            "{}. Tokenwarden keeps running the previous configuration until the file is fixed.",
            message.trim_end_matches('.')
        ),
    );
}

/// A problem of the app itself (not of a workload), on a thread of its own.
pub fn show_problem(summary: &str, body: &str) {
    let n = notification(summary, body, "device.error");
    let spawned = std::thread::Builder::new()
        .name("notification".into())
        .spawn(move || {
            if let Err(e) = n.show() {
                tracing::warn!(error = %e, "could not show a notification");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the notification thread");
    }
}

/// Show a note through the platform's notification service, on a thread of its own
/// (the D-Bus call blocks; waiting for an action blocks until the note closes).
/// `on_reauth` runs when the user picks "Re-authenticate" on an unauthenticated note.
pub fn show(note: Note, on_reauth: impl FnOnce(Vec<String>) + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("notification".into())
        .spawn(move || {
            let category = match note.kind {
                NoteKind::Recovered => "network.connected",
                _ => "network.error",
            };
            #[cfg_attr(not(all(unix, not(target_os = "macos"))), allow(unused_mut))]
            let mut n = notification(&note.summary, &note.body, category);
            #[cfg(all(unix, not(target_os = "macos")))]
            {
                if note.kind.offers_sign_in() {
                    n.action("default", "Re-authenticate");
                    n.action("reauthenticate", "Re-authenticate");
                }
            }
            match n.show() {
                Ok(_handle) => {
                    tracing::debug!(summary = %note.summary, "notification shown");
                    #[cfg(all(unix, not(target_os = "macos")))]
                    if note.kind.offers_sign_in() {
                        let workloads = note.workloads.clone();
                        _handle.wait_for_action(move |action| {
                            if action == "default" || action == "reauthenticate" {
                                on_reauth(workloads);
                            }
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not show a notification"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the notification thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str, ep: &str, prev: Option<Status>, now: Status) -> StatusChange {
        StatusChange {
            workload: WorkloadStatus {
                reason: match now {
                    Status::Retrying => Some("HTTP 403: the token endpoint answered 403 with a web page, probably a firewall or VPN block".into()),
                    Status::Unauthenticated => Some("invalid_grant".into()),
                    _ => None,
                },
                access_token_valid: true,
                attempts: 1,
                ..WorkloadStatus::bare(name, now, ep)
            },
            previous: prev,
            refreshed: false,
            recovered: false,
        }
    }

    const EP: &str = "https://auth.example/token";
    const R: Option<Status> = Some(Status::Running);
    const T: Option<Status> = Some(Status::Retrying);

    fn policy() -> NotifyPolicy {
        NotifyPolicy {
            coalesce: Duration::from_secs(2),
            quiet: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_burst_of_one_issuer_is_one_note_naming_all() {
        let t0 = Instant::now();
        let mut n = Notifier::new(policy());
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            n.observe(
                &change(name, EP, R, Status::Retrying),
                false,
                t0 + Duration::from_millis(100 * i as u64),
            );
        }
        n.observe(
            &change("z", "https://other.example/token", R, Status::Retrying),
            false,
            t0,
        );
        assert!(n.flush(t0 + Duration::from_secs(1)).is_empty(), "waits");
        let notes = n.flush(t0 + Duration::from_secs(3));
        assert_eq!(notes.len(), 2);
        let a = notes.iter().find(|x| x.workloads.len() == 3).unwrap();
        assert_eq!(a.summary, "3 workloads are retrying (auth.example)");
        assert!(a.body.starts_with(
            "a, b and c: Cannot refresh: HTTP 403: the token endpoint answered 403 with a web page"
        ));
        let z = notes.iter().find(|x| x.workloads == ["z"]).unwrap();
        assert_eq!(z.summary, "z is retrying");
        assert_eq!(n.next_flush(), None);
    }

    #[test]
    fn recovery_follows_only_an_announced_degrade_and_flapping_stays_quiet() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_secs(x);
        let mut n = Notifier::new(policy());
        n.observe(&change("a", EP, R, Status::Retrying), false, s(0));
        assert_eq!(n.flush(s(2))[0].kind, NoteKind::Degraded);
        n.observe(&change("a", EP, T, Status::Running), false, s(10));
        let notes = n.flush(s(12));
        assert_eq!(notes[0].summary, "a recovered");
        // Flap within the quiet period: neither degrade nor recovery is shown.
        n.observe(&change("a", EP, R, Status::Retrying), false, s(20));
        assert!(n.flush(s(30)).is_empty());
        n.observe(&change("a", EP, T, Status::Running), false, s(40));
        assert!(n.flush(s(50)).is_empty());
        // After the quiet period it notifies again.
        n.observe(&change("a", EP, R, Status::Retrying), false, s(700));
        assert_eq!(n.flush(s(702)).len(), 1);
    }

    #[test]
    fn a_blip_inside_the_window_cancels_both() {
        let t0 = Instant::now();
        let mut n = Notifier::new(policy());
        n.observe(&change("a", EP, R, Status::Retrying), false, t0);
        n.observe(
            &change("a", EP, T, Status::Running),
            false,
            t0 + Duration::from_secs(1),
        );
        assert!(n.flush(t0 + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn unauthenticated_explains_the_code_and_muted_or_first_reports_are_silent() {
        let t0 = Instant::now();
        let mut n = Notifier::new(policy());
        n.observe(&change("m", EP, R, Status::Retrying), true, t0);
        n.observe(&change("f", EP, None, Status::Unauthenticated), false, t0);
        n.observe(&change("a", EP, T, Status::Unauthenticated), false, t0);
        let notes = n.flush(t0 + Duration::from_secs(2));
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].summary, "a needs you to sign in again");
        assert!(notes[0]
            .body
            .starts_with("the issuer no longer accepts the saved sign-in (invalid_grant)."));
        assert_eq!(notes[0].workloads, ["a"]);
    }

    #[test]
    fn a_step_up_is_noted_once_per_set_of_scopes_with_re_authenticate() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_secs(x);
        let asks = |name: &str, scopes: &[&str]| {
            let mut ch = change(name, EP, R, Status::Running);
            ch.workload.needs_scopes = scopes.iter().map(|s| s.to_string()).collect();
            ch
        };
        let mut n = Notifier::new(policy());
        n.observe(&asks("a", &["admin"]), false, s(0));
        // The same set again (every refused call reports it): no second note.
        n.observe(&asks("a", &["admin"]), false, s(1));
        let notes = n.flush(s(2));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].kind, NoteKind::NeedsPermission);
        assert!(notes[0].kind.offers_sign_in());
        assert_eq!(notes[0].summary, "a needs more permission");
        assert_eq!(
            notes[0].body,
            "The remote asks for: admin. Re-authenticate to grant it; everything else keeps working meanwhile."
        );
        assert_eq!(notes[0].workloads, ["a"]);
        n.observe(&asks("a", &["admin"]), false, s(10));
        assert!(n.flush(s(20)).is_empty());
        // Granted (the set clears), then asked again: a new note.
        n.observe(&asks("a", &[]), false, s(30));
        n.observe(&asks("a", &["admin"]), false, s(40));
        assert_eq!(n.flush(s(42)).len(), 1);
        // Muted workloads and the first report of a monitor stay silent.
        n.observe(&asks("m", &["x"]), true, s(50));
        let mut first = asks("f", &["x"]);
        first.previous = None;
        n.observe(&first, false, s(50));
        assert!(n.flush(s(60)).is_empty());
    }

    #[test]
    fn issuer_text_cannot_become_markup() {
        let t0 = Instant::now();
        let mut n = Notifier::new(policy());
        let mut ch = change("a", EP, R, Status::Retrying);
        ch.workload.reason = Some(
            "HTTP 400 temporarily_unavailable: <a href=\"https://evil.example\">click</a> & <img src=x>".into(),
        );
        n.observe(&ch, false, t0);
        let notes = n.flush(t0 + Duration::from_secs(60));
        assert_eq!(notes.len(), 1, "{notes:?}");
        let shown = notification_as(&notes[0].summary, &notes[0].body, "network.error", true);
        assert!(
            shown.body.contains(
                "&lt;a href=\"https://evil.example\"&gt;click&lt;/a&gt; &amp; &lt;img src=x&gt;"
            ),
            "{}",
            shown.body
        );
        assert!(!shown.body.contains('<') && !shown.body.contains('>'));
        assert_eq!(shown.summary, "a is retrying");
        // A server that shows bodies as plain text gets the text as written.
        let plain = notification_as(&notes[0].summary, &notes[0].body, "network.error", false);
        assert!(plain.body.contains("<a href="), "{}", plain.body);
    }
}
