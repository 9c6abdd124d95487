//! `tokenwarden stdio NAME`: an MCP stdio server that carries the client's session to
//! the workload's remote MCP server through the workload's local proxy.
//!
//! MCP clients that only start local servers (Claude Desktop's `mcpServers` with a
//! `command`) spawn this; it reads newline-delimited JSON-RPC on stdin, writes the
//! remote's messages on stdout (one JSON-RPC message per line, nothing else) and logs
//! on stderr (plain text). It never holds a token: the running daemon or desktop app
//! owns the refresh token and its local proxy adds the bearer, turns a `401` into one
//! single-flight refresh, and answers `503` + `Retry-After` when no valid token exists.
//! However many bridges run, the refresh token has one holder per config dir.
//!
//! Transports to the remote (through the proxy): Streamable HTTP (MCP 2025-03-26 and
//! later: POST per message, JSON or SSE answers, `Mcp-Session-Id`,
//! `MCP-Protocol-Version`, the GET event stream resumed with `Last-Event-ID`, `DELETE`
//! of the session on exit) and, when the remote answers the first POST with 400, 404
//! or 405, the older HTTP+SSE transport (2024-11-05: a GET event stream whose
//! `endpoint` event names where to POST).
//!
//! During an outage every request gets an answer: a `503` from the proxy is held and
//! resent while the next attempt is near ([`HOLD_RETRY_AFTER_MAX`], at most
//! [`MAX_HOLD`] in all), otherwise answered at once with a JSON-RPC error that names
//! the workload, why, and when the next attempt is. The same process carries on once
//! the token is back.

use crate::control::{Client, Request};
use crate::engine::status::WorkloadStatus;
use crate::paths::Paths;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use url::Url;

/// A `503` whose `Retry-After` is at most this is held and resent; a longer one is
/// answered at once with a JSON-RPC error.
pub const HOLD_RETRY_AFTER_MAX: Duration = Duration::from_secs(15);
/// The longest a request is held during an outage before it is answered with an
/// error (well under the 60 s most MCP clients wait for an answer).
/// `TOKENWARDEN_STDIO_MAX_HOLD` lowers it (tests).
pub const MAX_HOLD: Duration = Duration::from_secs(25);
/// While held, the proxy is asked again at least this often (a network or wake
/// trigger can bring the token back before the announced next attempt).
const HOLD_POLL: Duration = Duration::from_secs(1);
/// The largest JSON-RPC message taken from stdin or from the remote.
pub const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// With a startup error, how long to wait for the client's first request to answer it.
const STARTUP_ERROR_WAIT: Duration = Duration::from_secs(10);
/// Reconnecting the server's event stream: first wait, longest wait.
const STREAM_BACKOFF_MIN: Duration = Duration::from_millis(100);
const STREAM_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Attempts to resume an answer's event stream that ended before the answer.
const RESUME_TRIES: u32 = 5;
/// HTTP+SSE: how long to wait for the `endpoint` event.
const ENDPOINT_WAIT: Duration = Duration::from_secs(10);
/// `DELETE` of the session on exit: how long to wait for it.
const DELETE_WAIT: Duration = Duration::from_secs(2);

/// JSON-RPC error code of the bridge's own errors (outage, unreachable, remote errors).
pub const ERROR_CODE: i64 = -32000;

/// Run the bridge for `name` until stdin ends. A startup error (no daemon, unknown
/// workload, no `url`, no proxy) is written to stderr by the caller and answered to
/// the client's first request as a JSON-RPC error.
pub async fn serve(paths: &Paths, name: &str) -> anyhow::Result<()> {
    let stdin = spawn_stdin_reader();
    let (out, writer_done) = spawn_stdout_writer();
    let local = match resolve(paths, name).await {
        Ok(u) => u,
        Err(message) => {
            tracing::debug!("startup error: {message}");
            answer_startup_error(stdin, &out, &message).await;
            drop(out);
            let _ = tokio::time::timeout(Duration::from_secs(2), writer_done).await;
            anyhow::bail!("{message}");
        }
    };
    let hold = hold_from_env();
    let bridge = Arc::new(Bridge::new(name, local, out, hold)?);
    let eof = bridge.clone().serve(stdin).await;
    bridge.shutdown(eof).await;
    drop(bridge);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_done).await;
    Ok(())
}

/// `TOKENWARDEN_STDIO_MAX_HOLD` (a duration, at most [`MAX_HOLD`]) or [`MAX_HOLD`].
fn hold_from_env() -> Duration {
    std::env::var("TOKENWARDEN_STDIO_MAX_HOLD")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .map(|d| d.min(MAX_HOLD))
        .unwrap_or(MAX_HOLD)
}

fn no_daemon_message(paths: &Paths, name: &str) -> String {
    format!(
        "Tokenwarden is not running for {}: `tokenwarden stdio {name}` reaches `{name}` through it. \
         Start it with `tokenwarden daemon` (or open the Tokenwarden desktop app, or \
         `systemctl --user start tokenwarden` where it is installed as a service), then restart \
         this MCP server in your client.",
        paths.config_dir.display()
    )
}

/// The local proxy's URL for `name`, from the running daemon or app.
async fn resolve(paths: &Paths, name: &str) -> Result<Url, String> {
    let cfg = crate::ops::load_config(paths).map_err(|e| format!("{e:#}"))?;
    let Some(w) = cfg.workload(name) else {
        let known: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
        return Err(format!(
            "no workload named `{name}` in {}{}",
            cfg.path.display(),
            if known.is_empty() {
                ". Add one with `tokenwarden add NAME --url URL`".to_string()
            } else {
                format!(" (known: {})", known.join(", "))
            }
        ));
    };
    if w.url.is_none() {
        return Err(format!(
            "`{name}` has no `url`: it is a token-only workload, so there is no remote MCP server \
             to bridge to. Give it the server's URL in {} (`url = \"https://...\"`)",
            cfg.path.display()
        ));
    }
    if !w.enabled {
        return Err(format!(
            "`{name}` is disabled (`enabled = false` in {}); enable it to use it",
            cfg.path.display()
        ));
    }
    let mut client = match Client::connect(paths).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(no_daemon_message(paths, name)),
        Err(e) => return Err(format!("{e:#}")),
    };
    let list = client
        .call(&Request::Status)
        .await
        .map_err(|e| format!("Tokenwarden did not answer its status: {e:#}"))?;
    let list: Vec<WorkloadStatus> =
        serde_json::from_value(list).map_err(|e| format!("unexpected status answer: {e}"))?;
    let Some(s) = list.into_iter().find(|s| s.name == name) else {
        return Err(format!(
            "the running Tokenwarden does not know `{name}` yet; it reads {} again within a few \
             seconds of a change (or restart it)",
            cfg.path.display()
        ));
    };
    match (s.local_url, s.proxy_error) {
        (Some(u), _) => Url::parse(&u).map_err(|e| format!("bad local proxy URL `{u}`: {e}")),
        (None, Some(e)) => Err(format!("`{name}`'s local proxy is not running: {e}")),
        (None, None) => Err(format!(
            "`{name}`'s local proxy is not running (status: {})",
            s.status.as_str()
        )),
    }
}

/// One line from stdin, or why it could not be taken.
enum Incoming {
    Line(Vec<u8>),
    TooLong,
}

/// stdin on a thread of its own (a blocked read must not keep the runtime from
/// stopping). The channel ends at EOF or on a read error.
fn spawn_stdin_reader() -> mpsc::Receiver<Incoming> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut r = stdin.lock();
            loop {
                let mut line = Vec::new();
                match read_line_capped(&mut r, &mut line, MAX_MESSAGE) {
                    Ok(None) => break,
                    Ok(Some(false)) => {
                        if tx.blocking_send(Incoming::TooLong).is_err() {
                            break;
                        }
                    }
                    Ok(Some(true)) => {
                        if tx.blocking_send(Incoming::Line(line)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("reading stdin failed: {e}");
                        break;
                    }
                }
            }
        })
        .expect("spawn the stdin thread");
    rx
}

/// Read one line (without its end) of at most `max` bytes into `line`. `None` at EOF,
/// `Some(false)` when the line was longer (the rest of it is skipped).
pub fn read_line_capped(
    r: &mut impl std::io::BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    let mut too_long = false;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if any { Some(!too_long) } else { None });
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(!too_long));
        }
    }
}

/// stdout on a thread of its own: the one writer, so lines never interleave. The
/// oneshot fires when every sender is gone and everything is written.
fn spawn_stdout_writer() -> (mpsc::Sender<String>, oneshot::Receiver<()>) {
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut w = stdout.lock();
            while let Some(line) = rx.blocking_recv() {
                let ok = w
                    .write_all(line.as_bytes())
                    .and_then(|()| w.write_all(b"\n"))
                    .and_then(|()| w.flush());
                if let Err(e) = ok {
                    tracing::warn!("writing stdout failed: {e}");
                    break;
                }
            }
            let _ = done_tx.send(());
        })
        .expect("spawn the stdout thread");
    (tx, done_rx)
}

/// A JSON-RPC error response.
pub fn error_response(id: &Value, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": ERROR_CODE, "message": message });
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// With a startup error: answer the client's first request with it (so the user sees
/// it in the client), then return. Gives up at EOF or after [`STARTUP_ERROR_WAIT`].
async fn answer_startup_error(
    mut stdin: mpsc::Receiver<Incoming>,
    out: &mpsc::Sender<String>,
    message: &str,
) {
    let deadline = tokio::time::Instant::now() + STARTUP_ERROR_WAIT;
    while let Ok(Some(Incoming::Line(line))) = tokio::time::timeout_at(deadline, stdin.recv()).await
    {
        let Ok(v) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        let ids = request_ids(&v);
        if ids.is_empty() {
            continue;
        }
        for id in ids {
            let _ = out
                .send(error_response(&id, &format!("Tokenwarden: {message}"), None).to_string())
                .await;
        }
        return;
    }
}

/// The ids of the requests in a message or batch (a request has `method` and `id`).
pub fn request_ids(v: &Value) -> Vec<Value> {
    let one = |m: &Value| match (m.get("method"), m.get("id")) {
        (Some(_), Some(id)) if !id.is_null() => Some(id.clone()),
        _ => None,
    };
    match v {
        Value::Array(a) => a.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

/// The ids of the responses in a message or batch (a response has `id` and no
/// `method`).
fn response_ids(v: &Value) -> Vec<String> {
    let one = |m: &Value| match (m.get("method"), m.get("id")) {
        (None, Some(id)) => Some(id.to_string()),
        _ => None,
    };
    match v {
        Value::Array(a) => a.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

/// What the local proxy says about itself in an error answer.
#[derive(Clone, Debug, Default, serde::Deserialize)]
struct ProxyAnswer {
    error: String,
    #[serde(default)]
    message: String,
    workload: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    retry_after: Option<u64>,
}

fn secs_words(secs: u64) -> String {
    match secs {
        0 | 1 => "about a second".into(),
        2..=90 => format!("about {secs} s"),
        _ => format!("about {} min", secs.div_ceil(60)),
    }
}

/// The plain-words error for a request the proxy could not serve.
fn outage_message(name: &str, p: &ProxyAnswer, retry_after: Option<u64>, held: Duration) -> String {
    let why = p
        .reason
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| p.message.clone());
    let waited = if held >= Duration::from_millis(500) {
        format!(" (held {} s for it)", held.as_secs_f64().round() as u64)
    } else {
        String::new()
    };
    match p.error.as_str() {
        "unauthenticated" => format!(
            "Tokenwarden cannot reach `{name}`: it needs you to sign in again ({why}). Run \
             `tokenwarden login {name}` or use \"Re-authenticate\" in the Tokenwarden window. \
             The request was not sent."
        ),
        "stopped" => format!(
            "Tokenwarden cannot reach `{name}`: the workload is stopped ({}). The request was not sent.",
            p.message
        ),
        "token_unavailable" | "token_refreshed" => format!(
            "Tokenwarden cannot reach `{name}` now: it has no valid access token ({why}; status {}). \
             The next attempt to get one is in {}{waited}. The request was not sent to the remote; \
             try again then, or run `tokenwarden retry {name}`.",
            p.status.as_deref().unwrap_or("unknown"),
            secs_words(retry_after.or(p.retry_after).unwrap_or(30)),
        ),
        // A step-up: the remote refused this call for lack of scopes; the proxy's
        // message names them and the way to grant them.
        "insufficient_scope" => format!("Tokenwarden: {}", p.message),
        _ => format!("Tokenwarden could not reach `{name}`: {}", p.message),
    }
}

/// Server-sent events, parsed as the HTML standard says (`data`, `event`, `id`,
/// `retry`; comments ignored; CRLF, CR or LF line ends), with a size cap.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skip_lf: bool,
    data: String,
    has_data: bool,
    event: String,
    last_id: Option<String>,
    retry: Option<Duration>,
}

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    /// The last event id after this event (sent back as `Last-Event-ID`).
    pub id: Option<String>,
}

impl SseParser {
    /// Feed bytes; returns the events completed by them. `Err` when a line or an event
    /// is larger than [`MAX_MESSAGE`].
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut events = Vec::new();
        while !bytes.is_empty() {
            if self.skip_lf {
                self.skip_lf = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.line.extend_from_slice(&bytes[..i]);
                    self.skip_lf = bytes[i] == b'\r';
                    bytes = &bytes[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.field(&line)? {
                        events.push(ev);
                    }
                }
                None => {
                    self.line.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
            if self.line.len() + self.data.len() > MAX_MESSAGE {
                return Err(format!(
                    "an event larger than {} MiB",
                    MAX_MESSAGE / 1024 / 1024
                ));
            }
        }
        Ok(events)
    }

    /// The `retry` the server asked for, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    fn field(&mut self, line: &[u8]) -> Result<Option<SseEvent>, String> {
        if line.is_empty() {
            if !self.has_data {
                self.event.clear();
                return Ok(None);
            }
            let mut data = std::mem::take(&mut self.data);
            if data.ends_with('\n') {
                data.pop();
            }
            self.has_data = false;
            return Ok(Some(SseEvent {
                event: std::mem::take(&mut self.event),
                data,
                id: self.last_id.clone(),
            }));
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(line);
        let (name, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match name {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms.min(60_000)));
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

/// How the remote is reached.
#[derive(Clone, Debug)]
enum Mode {
    /// Not decided yet (before `initialize`).
    Unknown,
    Streamable,
    /// HTTP+SSE: POST to this endpoint, answers on the event stream.
    Legacy(Url),
    /// HTTP+SSE whose event stream ended: the session is gone.
    LegacyClosed,
}

struct State {
    mode: Mode,
    session_id: Option<String>,
    protocol_version: Option<String>,
    /// The id of the `initialize` request in flight (its answer names the version).
    init_id: Option<String>,
    /// The server's event stream has been opened (once per session).
    stream_started: bool,
}

struct Bridge {
    name: String,
    url: Url,
    http: reqwest::Client,
    out: mpsc::Sender<String>,
    state: Mutex<State>,
    /// Requests sent and not answered yet (their ids as JSON text).
    pending: Mutex<HashSet<String>>,
    /// Signalled whenever a pending request is answered.
    answered: tokio::sync::Notify,
    hold: Duration,
    cancel: CancellationToken,
}

/// What a POST came to.
enum Sent {
    /// Answered or accepted; nothing more to do.
    Done,
    /// Answer every id of the message with this error.
    Fail(String, Option<Value>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

fn is_event_stream(h: &HeaderMap) -> bool {
    header_str(h, CONTENT_TYPE.as_str())
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"))
}

fn is_json(h: &HeaderMap) -> bool {
    header_str(h, CONTENT_TYPE.as_str()).is_some_and(|c| {
        let c = c.to_ascii_lowercase();
        c.starts_with("application/json") || c.contains("+json")
    })
}

/// Read a body of at most [`MAX_MESSAGE`] bytes.
async fn body_capped(resp: reqwest::Response) -> Result<Vec<u8>, String> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| format!("reading the answer failed: {e}"))?;
        if out.len() + chunk.len() > MAX_MESSAGE {
            return Err(format!(
                "the answer is larger than {} MiB",
                MAX_MESSAGE / 1024 / 1024
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A short, printable excerpt of an error body (the server's JSON-RPC message if any).
fn body_excerpt(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
        {
            return m.chars().take(300).collect();
        }
    }
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

impl Bridge {
    fn new(
        name: &str,
        url: Url,
        out: mpsc::Sender<String>,
        hold: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Bridge {
            name: name.to_string(),
            url,
            http,
            out,
            state: Mutex::new(State {
                mode: Mode::Unknown,
                session_id: None,
                protocol_version: None,
                init_id: None,
                stream_started: false,
            }),
            pending: Mutex::new(HashSet::new()),
            answered: tokio::sync::Notify::new(),
            hold,
            cancel: CancellationToken::new(),
        })
    }

    /// Write one message to the client (as one line; only valid JSON goes out).
    async fn emit(&self, v: Value) {
        tracing::trace!(
            method = v.get("method").and_then(|m| m.as_str()),
            id = %v.get("id").unwrap_or(&serde_json::Value::Null),
            "to the client"
        );
        let answered = response_ids(&v);
        if !answered.is_empty() {
            let mut st = lock(&self.state);
            if let Some(init) = &st.init_id {
                if answered.contains(init) {
                    if let Some(ver) = v
                        .pointer("/result/protocolVersion")
                        .and_then(|p| p.as_str())
                    {
                        st.protocol_version = Some(ver.to_string());
                    }
                    st.init_id = None;
                }
            }
            drop(st);
            let mut p = lock(&self.pending);
            for id in &answered {
                p.remove(id);
            }
        }
        let _ = self.out.send(v.to_string()).await;
        self.answered.notify_waiters();
    }

    /// An event's data: a JSON-RPC message to write, or nothing (empty priming events).
    async fn emit_data(&self, data: &str) {
        if data.trim().is_empty() {
            return;
        }
        match serde_json::from_str::<Value>(data) {
            Ok(v) => self.emit(v).await,
            Err(e) => tracing::warn!("the remote sent an event that is not JSON ({e}); dropped"),
        }
    }

    /// Answer every request of `ids` still pending with an error.
    async fn fail(&self, ids: &[Value], message: &str, data: Option<Value>) {
        for id in ids {
            if lock(&self.pending).remove(&id.to_string()) {
                let _ = self
                    .out
                    .send(error_response(id, message, data.clone()).to_string())
                    .await;
                self.answered.notify_waiters();
            }
        }
    }

    fn is_pending(&self, ids: &[Value]) -> bool {
        let p = lock(&self.pending);
        ids.iter().any(|id| p.contains(&id.to_string()))
    }

    /// Read the client's messages until stdin ends (`true`) or a signal (`false`).
    async fn serve(self: Arc<Self>, mut stdin: mpsc::Receiver<Incoming>) -> bool {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let terminated = std::future::pending::<()>();
            let incoming = tokio::select! {
                i = stdin.recv() => i,
                _ = terminated => {
                    tracing::debug!("SIGTERM: ending the session");
                    return false;
                }
                _ = tokio::signal::ctrl_c() => return false,
            };
            let Some(incoming) = incoming else {
                return true;
            };
            let line = match incoming {
                Incoming::Line(l) => l,
                Incoming::TooLong => {
                    tracing::warn!(
                        "a message from the client was larger than {MAX_MESSAGE} bytes; dropped"
                    );
                    self.emit(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600,
                        "message": format!("Tokenwarden: the message is larger than {} MiB", MAX_MESSAGE / 1024 / 1024)}}))
                        .await;
                    continue;
                }
            };
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let v: Value = match serde_json::from_slice(&line) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
                Ok(_) => {
                    self.emit(
                        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600,
                        "message": "Tokenwarden: not a JSON-RPC message (an object or a batch)"}}),
                    )
                    .await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!("the client sent a line that is not JSON: {e}");
                    self.emit(
                        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700,
                        "message": format!("Tokenwarden: parse error: {e}")}}),
                    )
                    .await;
                    continue;
                }
            };
            let is_init = v.get("method").and_then(|m| m.as_str()) == Some("initialize");
            if is_init {
                // Everything after `initialize` needs its session: handled in line.
                self.send(v).await;
            } else {
                let me = self.clone();
                tokio::spawn(async move { me.send(v).await });
            }
        }
    }

    /// Send one message (or batch) from the client and deliver what comes back.
    async fn send(self: &Arc<Self>, v: Value) {
        let ids = request_ids(&v);
        {
            let mut p = lock(&self.pending);
            for id in &ids {
                p.insert(id.to_string());
            }
        }
        let is_init = v.get("method").and_then(|m| m.as_str()) == Some("initialize");
        if is_init {
            let mut st = lock(&self.state);
            st.init_id = ids.first().map(|i| i.to_string());
        }
        let body = v.to_string();
        let started = Instant::now();
        loop {
            let outcome = self.post_once(&body, &ids, is_init, started).await;
            match outcome {
                Ok(Sent::Done) => {
                    if is_init {
                        self.open_server_stream();
                    }
                    return;
                }
                Ok(Sent::Fail(message, data)) => {
                    if ids.is_empty() {
                        tracing::warn!("a notification was not delivered: {message}");
                    }
                    self.fail(&ids, &message, data).await;
                    return;
                }
                Err(wait) => {
                    // Held (outage): ask again after `wait`.
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One POST of `body`. `Err(wait)`: held during an outage, send again after `wait`.
    async fn post_once(
        self: &Arc<Self>,
        body: &str,
        ids: &[Value],
        is_init: bool,
        started: Instant,
    ) -> Result<Sent, Duration> {
        let (mode, session, version) = {
            let st = lock(&self.state);
            (
                st.mode.clone(),
                st.session_id.clone(),
                st.protocol_version.clone(),
            )
        };
        let target = match &mode {
            Mode::Legacy(endpoint) => endpoint.clone(),
            Mode::LegacyClosed => {
                return Ok(Sent::Fail(
                    format!(
                        "Tokenwarden: the remote `{}` closed its event stream, which ended the MCP session; restart this MCP server in your client",
                        self.name
                    ),
                    None,
                ))
            }
            _ => self.url.clone(),
        };
        let mut req = self
            .http
            .post(target)
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if matches!(mode, Mode::Streamable) {
            if let Some(s) = &session {
                req = req.header("mcp-session-id", s);
            }
            if let Some(v) = &version {
                req = req.header("mcp-protocol-version", v);
            }
        }
        let resp = match tokio::select! {
            r = req.send() => r,
            _ = self.cancel.cancelled() => return Ok(Sent::Done),
        } {
            Ok(r) => r,
            Err(e) => {
                // Named by its origin: where the owner of a connection cannot be looked
                // up, the local URL's path carries the proxy's path secret.
                let e = e.without_url();
                let at = self.url.origin().ascii_serialization();
                tracing::warn!("the local proxy at {at} cannot be reached: {e}");
                return Ok(Sent::Fail(
                    format!(
                        "Tokenwarden: its local proxy for `{}` ({}) cannot be reached ({}). Is Tokenwarden still running? Start it with `tokenwarden daemon` or the desktop app; this MCP server carries on once it is back.",
                        self.name,
                        at,
                        crate::engine::classify::classify_transport(&e).reason()
                    ),
                    None,
                ));
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_success() {
            if is_init && matches!(mode, Mode::Unknown) {
                let mut st = lock(&self.state);
                st.mode = Mode::Streamable;
                st.session_id = header_str(&headers, "mcp-session-id");
            }
            if status == StatusCode::ACCEPTED || ids.is_empty() && !is_event_stream(&headers) {
                if matches!(mode, Mode::Legacy(_)) || ids.is_empty() {
                    return Ok(Sent::Done);
                }
                return Ok(Sent::Fail(
                    format!(
                        "Tokenwarden: the remote `{}` accepted the request without answering it",
                        self.name
                    ),
                    None,
                ));
            }
            if matches!(mode, Mode::Legacy(_)) {
                // The answer comes on the event stream.
                return Ok(Sent::Done);
            }
            if is_event_stream(&headers) {
                self.clone().read_answer_stream(resp, ids.to_vec()).await;
                return Ok(Sent::Done);
            }
            let bytes = match body_capped(resp).await {
                Ok(b) => b,
                Err(e) => return Ok(Sent::Fail(format!("Tokenwarden: {e}"), None)),
            };
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(Sent::Done);
            }
            return match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => {
                    self.emit(v).await;
                    if self.is_pending(ids) {
                        Ok(Sent::Fail(
                            format!("Tokenwarden: the remote `{}` answered without a response to this request", self.name),
                            None,
                        ))
                    } else {
                        Ok(Sent::Done)
                    }
                }
                Err(e) => Ok(Sent::Fail(
                    format!(
                        "Tokenwarden: the remote `{}` answered with something that is not JSON ({e})",
                        self.name
                    ),
                    None,
                )),
            };
        }
        let bytes = body_capped(resp).await.unwrap_or_default();
        let proxy: Option<ProxyAnswer> = if is_json(&headers) {
            serde_json::from_slice::<ProxyAnswer>(&bytes)
                .ok()
                .filter(|p| p.workload == self.name)
        } else {
            None
        };
        if let Some(p) = proxy {
            let retry_after = header_str(&headers, RETRY_AFTER.as_str())
                .and_then(|r| r.parse::<u64>().ok())
                .or(p.retry_after);
            if status == StatusCode::SERVICE_UNAVAILABLE
                && matches!(p.error.as_str(), "token_unavailable" | "token_refreshed")
            {
                let wait = Duration::from_secs(retry_after.unwrap_or(30));
                let held = started.elapsed();
                if wait <= HOLD_RETRY_AFTER_MAX && held + wait.min(HOLD_POLL) <= self.hold {
                    tracing::info!(
                        "`{}` has no valid token ({}); holding the request, next attempt in {} s",
                        self.name,
                        p.reason.as_deref().unwrap_or(&p.message),
                        wait.as_secs()
                    );
                    return Err(wait.min(HOLD_POLL));
                }
                if ids.is_empty() {
                    tracing::warn!(
                        "`{}` has no valid token ({}): a notification from the client was dropped",
                        self.name,
                        p.reason.as_deref().unwrap_or(&p.message)
                    );
                    return Ok(Sent::Done);
                }
            }
            tracing::warn!(
                "`{}`: the local proxy answered {status}: {}",
                self.name,
                p.message
            );
            let data = json!({
                "workload": p.workload,
                "error": p.error,
                "status": p.status,
                "reason": p.reason,
                "retry_after": retry_after,
            });
            return Ok(Sent::Fail(
                outage_message(&self.name, &p, retry_after, started.elapsed()),
                Some(data),
            ));
        }
        if is_init && matches!(mode, Mode::Unknown) && matches!(status.as_u16(), 400 | 404 | 405) {
            tracing::info!(
                "`{}` answered {status} to a Streamable HTTP initialize: trying the HTTP+SSE transport",
                self.name
            );
            return match self.clone().start_legacy().await {
                Ok(()) => Box::pin(self.post_once(body, ids, false, started)).await,
                Err(e) => Ok(Sent::Fail(
                    format!(
                        "Tokenwarden: the remote `{}` answered HTTP {status} to initialize ({}), and its HTTP+SSE transport failed too: {e}",
                        self.name,
                        body_excerpt(&bytes)
                    ),
                    None,
                )),
            };
        }
        if status == StatusCode::NOT_FOUND && session.is_some() && matches!(mode, Mode::Streamable)
        {
            tracing::warn!("`{}` ended the MCP session (404)", self.name);
            return Ok(Sent::Fail(
                format!(
                    "Tokenwarden: the remote `{}` ended this MCP session (HTTP 404: {}); restart this MCP server in your client to start a new one",
                    self.name,
                    body_excerpt(&bytes)
                ),
                None,
            ));
        }
        tracing::warn!("`{}` answered {status}", self.name);
        Ok(Sent::Fail(
            format!(
                "Tokenwarden: the remote `{}` answered HTTP {}: {}",
                self.name,
                status.as_u16(),
                body_excerpt(&bytes)
            ),
            None,
        ))
    }

    /// Deliver the events of a POST's answer stream; if it ends before answering
    /// `ids`, resume it with `Last-Event-ID`, else answer them with an error.
    async fn read_answer_stream(self: Arc<Self>, resp: reqwest::Response, ids: Vec<Value>) {
        let mut parser = SseParser::default();
        let mut ended = self.read_events(resp, &mut parser, Some(&ids)).await;
        let mut tries = 0;
        while self.is_pending(&ids) && !self.cancel.is_cancelled() {
            let Some(last) = parser.last_id().map(str::to_string) else {
                break;
            };
            if tries >= RESUME_TRIES {
                break;
            }
            tries += 1;
            let wait = parser.retry().unwrap_or(STREAM_BACKOFF_MIN) * tries;
            tracing::debug!(
                "an answer stream ended ({ended}) before its answer; resuming after event {last}"
            );
            tokio::time::sleep(wait.min(STREAM_BACKOFF_MAX)).await;
            match self.get_stream(Some(&last)).await {
                Ok(resp) => ended = self.read_events(resp, &mut parser, Some(&ids)).await,
                Err(e) => ended = e,
            }
        }
        if self.is_pending(&ids) {
            self.fail(
                &ids,
                &format!(
                    "Tokenwarden: the remote `{}` closed the answer's stream before answering ({ended})",
                    self.name
                ),
                None,
            )
            .await;
        }
    }

    /// Read an event stream to its end (or until every id in `until` is answered),
    /// writing each message. Returns why it ended.
    async fn read_events(
        &self,
        resp: reqwest::Response,
        parser: &mut SseParser,
        until: Option<&[Value]>,
    ) -> String {
        use futures::StreamExt;
        let mut s = resp.bytes_stream();
        loop {
            let chunk = tokio::select! {
                c = s.next() => c,
                _ = self.cancel.cancelled() => return "stopping".into(),
            };
            let chunk = match chunk {
                None => return "the stream ended".into(),
                Some(Err(e)) => return format!("the stream broke: {e}"),
                Some(Ok(c)) => c,
            };
            let events = match parser.push(&chunk) {
                Ok(e) => e,
                Err(e) => return e,
            };
            for ev in events {
                tracing::trace!(id = ev.id.as_deref(), event = %ev.event, "event");
                if ev.event.is_empty() || ev.event == "message" {
                    self.emit_data(&ev.data).await;
                }
            }
            if until.is_some_and(|ids| !self.is_pending(ids)) {
                return "answered".into();
            }
        }
    }

    /// GET the server's event stream (with `Last-Event-ID` to resume).
    async fn get_stream(&self, last_id: Option<&str>) -> Result<reqwest::Response, String> {
        let (session, version) = {
            let st = lock(&self.state);
            (st.session_id.clone(), st.protocol_version.clone())
        };
        let mut req = self
            .http
            .get(self.url.clone())
            .header(ACCEPT, "text/event-stream");
        if let Some(s) = &session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(v) = &version {
            req = req.header("mcp-protocol-version", v);
        }
        if let Some(l) = last_id {
            req = req.header("last-event-id", l);
        }
        let resp = tokio::select! {
            r = req.send() => r.map_err(|e| format!("the local proxy cannot be reached: {}", e.without_url()))?,
            _ = self.cancel.cancelled() => return Err("stopping".into()),
        };
        if resp.status() == StatusCode::OK && is_event_stream(resp.headers()) {
            Ok(resp)
        } else {
            let status = resp.status();
            let bytes = body_capped(resp).await.unwrap_or_default();
            Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                body_excerpt(&bytes)
            ))
        }
    }

    /// After a successful `initialize` over Streamable HTTP: open the server's event
    /// stream (once).
    fn open_server_stream(self: &Arc<Self>) {
        {
            let mut st = lock(&self.state);
            if !matches!(st.mode, Mode::Streamable)
                || st.protocol_version.is_none()
                || st.stream_started
            {
                return;
            }
            st.stream_started = true;
        }
        tokio::spawn(self.clone().server_stream());
    }

    /// The server's own event stream (Streamable HTTP): open after `initialize`, kept
    /// open, resumed with `Last-Event-ID` after a drop (bounded backoff).
    async fn server_stream(self: Arc<Self>) {
        let mut parser = SseParser::default();
        let mut backoff = STREAM_BACKOFF_MIN;
        while !self.cancel.is_cancelled() {
            let last = parser.last_id().map(str::to_string);
            let wait = match self.get_stream(last.as_deref()).await {
                Ok(resp) => {
                    let before = parser.last_id().map(str::to_string);
                    let why = self.read_events(resp, &mut parser, None).await;
                    tracing::debug!("the server's event stream ended: {why}");
                    if parser.last_id().map(str::to_string) != before {
                        backoff = STREAM_BACKOFF_MIN;
                    }
                    parser.retry().unwrap_or(backoff).max(STREAM_BACKOFF_MIN)
                }
                Err(e) if e.starts_with("HTTP 405") => {
                    tracing::debug!("the remote has no event stream of its own (405)");
                    return;
                }
                Err(e) if e.starts_with("HTTP 404") || e.starts_with("HTTP 400") => {
                    tracing::warn!("the server's event stream is refused: {e}");
                    return;
                }
                Err(e) => {
                    tracing::debug!("the server's event stream: {e}");
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(STREAM_BACKOFF_MAX);
        }
    }

    /// HTTP+SSE (2024-11-05): open the event stream, wait for its `endpoint`.
    async fn start_legacy(self: Arc<Self>) -> Result<(), String> {
        let resp = tokio::select! {
            r = self.http.get(self.url.clone()).header(ACCEPT, "text/event-stream").send() =>
                r.map_err(|e| format!("the local proxy cannot be reached: {}", e.without_url()))?,
            _ = self.cancel.cancelled() => return Err("stopping".into()),
        };
        if resp.status() != StatusCode::OK || !is_event_stream(resp.headers()) {
            let status = resp.status();
            let bytes = body_capped(resp).await.unwrap_or_default();
            return Err(format!(
                "GET answered HTTP {}: {}",
                status.as_u16(),
                body_excerpt(&bytes)
            ));
        }
        let (tx, rx) = oneshot::channel::<String>();
        let me = self.clone();
        tokio::spawn(async move { me.legacy_stream(resp, tx).await });
        let data = tokio::time::timeout(ENDPOINT_WAIT, rx)
            .await
            .map_err(|_| format!("no `endpoint` event within {} s", ENDPOINT_WAIT.as_secs()))?
            .map_err(|_| "the event stream ended before its `endpoint` event".to_string())?;
        let endpoint = self
            .url
            .join(data.trim())
            .map_err(|e| format!("a bad `endpoint` ({e}): `{data}`"))?;
        if endpoint.origin() != self.url.origin() {
            return Err(format!(
                "the `endpoint` {endpoint} is not on the local proxy's origin"
            ));
        }
        tracing::debug!("HTTP+SSE endpoint: {}", endpoint.path());
        lock(&self.state).mode = Mode::Legacy(endpoint);
        Ok(())
    }

    async fn legacy_stream(self: Arc<Self>, resp: reqwest::Response, tx: oneshot::Sender<String>) {
        use futures::StreamExt;
        let mut tx = Some(tx);
        let mut parser = SseParser::default();
        let mut s = resp.bytes_stream();
        let why = loop {
            let chunk = tokio::select! {
                c = s.next() => c,
                _ = self.cancel.cancelled() => return,
            };
            let chunk = match chunk {
                None => break "the stream ended".to_string(),
                Some(Err(e)) => break format!("the stream broke: {e}"),
                Some(Ok(c)) => c,
            };
            let events = match parser.push(&chunk) {
                Ok(e) => e,
                Err(e) => break e,
            };
            for ev in events {
                match ev.event.as_str() {
                    "endpoint" => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(ev.data);
                        }
                    }
                    "" | "message" => self.emit_data(&ev.data).await,
                    _ => {}
                }
            }
        };
        tracing::warn!("`{}`: the HTTP+SSE event stream closed ({why})", self.name);
        lock(&self.state).mode = Mode::LegacyClosed;
        let ids: Vec<Value> = lock(&self.pending)
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect();
        self.fail(
            &ids,
            &format!(
                "Tokenwarden: the remote `{}` closed its event stream before answering ({why}); restart this MCP server in your client",
                self.name
            ),
            None,
        )
        .await;
    }

    /// After stdin ends: let the requests in flight be answered (bounded), stop the
    /// streams and `DELETE` the session.
    async fn shutdown(&self, wait: bool) {
        let deadline = tokio::time::Instant::now() + self.hold + Duration::from_secs(5);
        while wait && !lock(&self.pending).is_empty() {
            let answered = self.answered.notified();
            if lock(&self.pending).is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                tracing::warn!("stdin ended with requests unanswered; stopping anyway");
                break;
            }
        }
        self.cancel.cancel();
        let (mode, session, version) = {
            let st = lock(&self.state);
            (
                st.mode.clone(),
                st.session_id.clone(),
                st.protocol_version.clone(),
            )
        };
        if let (Mode::Streamable, Some(s)) = (mode, session) {
            let mut req = self
                .http
                .delete(self.url.clone())
                .header("mcp-session-id", s);
            if let Some(v) = version {
                req = req.header("mcp-protocol-version", v);
            }
            match tokio::time::timeout(DELETE_WAIT, req.send()).await {
                Ok(Ok(r)) => tracing::debug!("DELETE of the session: {}", r.status()),
                Ok(Err(e)) => tracing::debug!("DELETE of the session failed: {}", e.without_url()),
                Err(_) => tracing::debug!("DELETE of the session: no answer in time"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        chunks.iter().flat_map(|c| p.push(c).unwrap()).collect()
    }

    #[test]
    fn sse_events_across_chunks_and_line_ends() {
        let evs = events(&[
            b"id: 1\nda",
            b"ta: {\"a\":1}\r",
            b"\n\r\n: comment\n",
            b"event: endpoint\rdata: /m?s=1\r\r",
        ]);
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[0].id.as_deref(), Some("1"));
        assert_eq!(evs[1].event, "endpoint");
        assert_eq!(evs[1].data, "/m?s=1");
        assert_eq!(evs[1].id.as_deref(), Some("1"), "the last id carries over");
    }

    #[test]
    fn sse_multi_line_data_priming_and_retry() {
        let mut p = SseParser::default();
        let evs = p
            .push(b"id: p\nretry: 250\ndata: \n\ndata: [1,\ndata: 2]\n\n")
            .unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "", "an empty priming event");
        assert_eq!(evs[1].data, "[1,\n2]");
        assert_eq!(p.retry(), Some(Duration::from_millis(250)));
        assert_eq!(p.last_id(), Some("p"));
        assert!(
            p.push(b"event: x\n\n").unwrap().is_empty(),
            "no data, no event"
        );
    }

    #[test]
    fn sse_cap() {
        let mut p = SseParser::default();
        let big = vec![b'a'; MAX_MESSAGE + 1];
        assert!(p.push(&big).is_err());
    }

    #[test]
    fn lines_are_capped_and_the_rest_skipped() {
        let input = b"12345\nabcdefghij\nxy\r\nlast";
        let mut r = std::io::BufReader::with_capacity(3, &input[..]);
        let mut got = Vec::new();
        loop {
            let mut line = Vec::new();
            match read_line_capped(&mut r, &mut line, 6).unwrap() {
                None => break,
                Some(ok) => got.push((ok, String::from_utf8(line).unwrap())),
            }
        }
        assert_eq!(
            got,
            vec![
                (true, "12345".to_string()),
                (false, String::new()),
                (true, "xy".to_string()),
                (true, "last".to_string())
            ]
        );
    }

    #[test]
    fn request_and_response_ids() {
        let v: Value = serde_json::from_str(
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":"x","result":{}}]"#,
        )
        .unwrap();
        assert_eq!(request_ids(&v), vec![json!(1)]);
        assert_eq!(response_ids(&v), vec!["\"x\"".to_string()]);
    }

    #[test]
    fn outage_words_name_the_workload_the_reason_and_the_next_attempt() {
        let p = ProxyAnswer {
            error: "token_unavailable".into(),
            message: "m".into(),
            workload: "gh".into(),
            status: Some("retrying".into()),
            reason: Some("connection refused".into()),
            retry_after: Some(240),
        };
        let m = outage_message("gh", &p, Some(240), Duration::ZERO);
        assert!(
            m.contains("`gh`") && m.contains("connection refused"),
            "{m}"
        );
        assert!(m.contains("about 4 min"), "{m}");
        let m = outage_message(
            "gh",
            &ProxyAnswer {
                error: "unauthenticated".into(),
                ..p
            },
            None,
            Duration::ZERO,
        );
        assert!(m.contains("tokenwarden login gh"), "{m}");
        // A step-up is said as the proxy says it: no "could not reach".
        let m = outage_message(
            "gh",
            &ProxyAnswer {
                error: "insufficient_scope".into(),
                message: "`gh` needs more permission: admin. Re-authenticate".into(),
                workload: "gh".into(),
                status: Some("running".into()),
                reason: Some("needs more permission: admin".into()),
                retry_after: None,
            },
            None,
            Duration::ZERO,
        );
        assert_eq!(
            m,
            "Tokenwarden: `gh` needs more permission: admin. Re-authenticate"
        );
    }
}
