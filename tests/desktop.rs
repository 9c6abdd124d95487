//! End-to-end tests of the REAL desktop app: the `tokenwarden` binary (desktop build)
//! under Xvfb and the suite's private D-Bus session, driven through its real webview
//! with tauri-driver + WebKitWebDriver, its tray menu read and clicked over D-Bus
//! (`com.canonical.dbusmenu`), its notifications recorded by a tiny
//! `org.freedesktop.Notifications` server (tests/desktop/notify_recorder.py).
//!
//! Needs: TOKENWARDEN_TEST_DESKTOP=1 (scripts/test.sh sets it), a display in
//! TOKENWARDEN_TEST_DISPLAY (scripts/desktop-xvfb.sh) or DISPLAY, a session bus,
//! `tauri-driver`, `WebKitWebDriver`, `/usr/bin/python3` with dbus + gi. Without
//! TOKENWARDEN_TEST_DESKTOP the tests print SKIPPED and pass; with it, anything
//! missing fails loudly.
//!
//! Screenshots of the window in its states land in `artifacts/screenshots/`.
#![cfg(feature = "desktop")]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenwarden_sim::issuer::{IssuerOptions, SimIssuer};

/// Both scenarios own the notification name on the shared bus: one at a time, also
/// across processes (nextest runs each test in its own process): an OS file lock.
fn serial() -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("tokenwarden-desktop-e2e.lock"))
        .unwrap();
    f.lock().unwrap();
    f
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// WebDriver key codes.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

use crate::support::gate;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `Some(display)` when the desktop tests must run; `None` (after printing SKIPPED)
/// when they are not asked for. Panics when asked for but something is missing.
fn gate(test: &str) -> Option<String> {
    if std::env::var("TOKENWARDEN_TEST_DESKTOP").as_deref() != Ok("1") {
        eprintln!("SKIPPED {test}: set TOKENWARDEN_TEST_DESKTOP=1 (scripts/test.sh does) to drive the real app");
        return None;
    }
    let display = std::env::var("TOKENWARDEN_TEST_DISPLAY")
        .or_else(|_| std::env::var("DISPLAY"))
        .expect("TOKENWARDEN_TEST_DESKTOP=1 but no display: run under scripts/desktop-xvfb.sh (TOKENWARDEN_TEST_DISPLAY) or set DISPLAY");
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "TOKENWARDEN_TEST_DESKTOP=1 but no session bus: run under scripts/session.sh"
    );
    assert!(
        tauri_driver().is_file(),
        "tauri-driver not found ({}); scripts/deps.sh installs it",
        tauri_driver().display()
    );
    assert!(
        Path::new("/usr/bin/WebKitWebDriver").is_file(),
        "WebKitWebDriver missing: apt-get install webkit2gtk-driver (scripts/deps.sh)"
    );
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import dbus, gi"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "/usr/bin/python3 lacks dbus/gi: apt-get install python3-dbus python3-gi"
    );
    gate::ran("desktop", test);
    Some(display)
}

fn tauri_driver() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("tauri-driver"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin/tauri-driver")
}

fn log_dir(test: &str) -> PathBuf {
    let base = std::env::var_os("TOKENWARDEN_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("artifacts/test-logs"));
    let d = base.join(test);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child in its own process group, stopped (TERM, then KILL) on drop.
struct Group(Child);

impl Group {
    fn spawn(mut cmd: Command) -> Group {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        Group(cmd.spawn().expect("spawn"))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &pgid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &pgid])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// The notification recorder on the private bus.
struct Recorder {
    _proc: Group,
    file: PathBuf,
}

impl Recorder {
    fn start(dir: &Path) -> Recorder {
        let file = dir.join("notifications.jsonl");
        let _ = std::fs::remove_file(&file);
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(root().join("tests/desktop/notify_recorder.py"))
            .arg(&file)
            .stdin(Stdio::null());
        let proc = Group::spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("gdbus")
                .args([
                    "call",
                    "--session",
                    "--dest",
                    "org.freedesktop.DBus",
                    "--object-path",
                    "/org/freedesktop/DBus",
                    "--method",
                    "org.freedesktop.DBus.NameHasOwner",
                    "org.freedesktop.Notifications",
                ])
                .output()
                .expect("gdbus");
            if String::from_utf8_lossy(&out.stdout).contains("true") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the notification recorder did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Recorder { _proc: proc, file }
    }

    fn all(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait for a notification whose summary contains `summary`; returns it.
    async fn wait_for(&self, summary: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self
                .all()
                .into_iter()
                .find(|n| n["summary"].as_str().unwrap_or("").contains(summary))
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no notification with summary containing {summary:?} within {timeout:?}; got {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A tiny WebDriver client over tauri-driver.
struct Wd {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Wd {
    async fn req(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut r = self.http.request(method, &url);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if v["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    /// A session on the app started as `tokenwarden ARGS...`.
    async fn start(port: u16, args: &[&str]) -> Wd {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "tauri:options": {
                "application": root().join("tests/desktop/app-under-test.sh"),
                "args": args,
            }
        }}});
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = http
                .post(format!("{base}/session"))
                .header("content-type", "application/json")
                .body(caps.to_string())
                .send()
                .await;
            if let Ok(r) = r {
                let text = r.text().await.unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if let Some(id) = v["value"]["sessionId"].as_str() {
                    return Wd {
                        http,
                        base,
                        session: id.to_string(),
                    };
                }
                panic!("new session failed: {text}");
            }
            assert!(Instant::now() < deadline, "tauri-driver did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.req(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The WebDriver id of the first element matching `css` (panics if none).
    async fn element(&self, css: &str) -> String {
        let el = self
            .req(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        el[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.req(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Press and release each key of `keys` (WebDriver key codes such as [`TAB`]) on
    /// whatever has the focus, as a keyboard would.
    async fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k.to_string()}),
                    json!({"type": "keyUp", "value": k.to_string()}),
                ]
            })
            .collect();
        self.req(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.req(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.req(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Poll a JS expression until it returns a truthy value.
    async fn wait(&self, what: &str, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(&format!("return ({expr});")).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            if Instant::now() > deadline {
                let dump = self
                    .js("return [...document.querySelectorAll('li[data-workload]')].map(li => li.dataset.workload + ': ' + li.dataset.status + ' — ' + li.querySelector('.reason').textContent).join('\\n') + '\\nerror: ' + document.querySelector('#error-text').textContent;")
                    .await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}; window:\n{}",
                    dump.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status_of(&self, name: &str) -> String {
        self.js(&format!(
            "const li = document.querySelector('li[data-workload=\"{name}\"]'); return li ? li.dataset.status : null;"
        ))
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    async fn text(&self, name: &str, class: &str) -> String {
        self.js(&format!(
            "return document.querySelector('li[data-workload=\"{name}\"] .{class}').textContent;"
        ))
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    async fn wait_status(&self, name: &str, status: &str, timeout: Duration) {
        self.wait(
            &format!("{name} to be {status}"),
            &format!("(document.querySelector('li[data-workload=\"{name}\"]') || {{dataset: {{}}}}).dataset.status === '{status}'"),
            timeout,
        )
        .await;
    }

    /// Reload the page and wait until it is ready and `also` holds.
    async fn reload(&self, also: &str) {
        self.js("location.reload(); return true;").await;
        self.wait(
            "the window to reload",
            &format!("document.body.dataset.ready === '1' && {also}"),
            Duration::from_secs(20),
        )
        .await;
    }

    /// Resize the window to `width` px and assert that nothing overflows sideways.
    async fn assert_fits_width(&self, width: u32) {
        self.req(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": 760})),
        )
        .await;
        self.wait(
            &format!("the window to be {width} px wide"),
            &format!("window.innerWidth <= {}", width + 20),
            Duration::from_secs(5),
        )
        .await;
        let overflow = self
            .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
            .await;
        assert_eq!(overflow, json!(0), "horizontal overflow at {width} px");
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        // Let the webview paint what the DOM already holds (a resize, new cards).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let v = self.req(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .unwrap();
        let dir = root().join("artifacts/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn end(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

/// The app under tauri-driver.
struct App {
    _driver: Group,
    wd: Option<Wd>,
}

/// A loopback issuer that records every token it issues in the ledger
/// scripts/scan-secrets.sh checks all logs against.
async fn ledger_issuer() -> SimIssuer {
    SimIssuer::start(IssuerOptions {
        ledger: std::env::var_os("TOKENWARDEN_TEST_LOG_DIR")
            .map(|d| PathBuf::from(d).join("issued-tokens.txt")),
        ..IssuerOptions::default()
    })
    .await
    .unwrap()
}

/// Start the app under tauri-driver (`args` for the app, `extra` environment) and wait
/// until its window has loaded.
async fn open_app(
    display: &str,
    config_dir: &Path,
    log: &Path,
    extra: &[(&str, String)],
    args: &[&str],
) -> App {
    let (drv, port) = driver(display, config_dir, log, extra);
    let app = App {
        _driver: drv,
        wd: Some(Wd::start(port, args).await),
    };
    app.wd
        .as_ref()
        .expect("just started")
        .wait(
            "the window to load",
            "document.body.dataset.ready === '1'",
            Duration::from_secs(30),
        )
        .await;
    app
}

fn driver(display: &str, config_dir: &Path, log: &Path, extra: &[(&str, String)]) -> (Group, u16) {
    let port = free_port();
    let native = free_port();
    let mut cmd = Command::new(tauri_driver());
    cmd.args([
        "--port",
        &port.to_string(),
        "--native-port",
        &native.to_string(),
    ])
    .env("DISPLAY", display)
    .env("TOKENWARDEN_BIN", env!("CARGO_BIN_EXE_tokenwarden"))
    .env("TOKENWARDEN_CONFIG_DIR", config_dir)
    .env("TOKENWARDEN_LOG_DIR", log)
    .env("TOKENWARDEN_NOTIFY_COALESCE", "700ms")
    .env("TOKENWARDEN_CONFIG_CHECK_INTERVAL", "200ms")
    // At the level the rest of the suite runs (trace under scripts/test.sh), so the
    // secret scan reads everything the app can write.
    .env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
    )
    .env("NO_AT_BRIDGE", "1")
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(log.join("app.stdout")).unwrap())
    .stderr(std::fs::File::create(log.join("app.stderr")).unwrap());
    // The demo's issuer records what it issues where the secret scan reads it.
    if let Some(d) = std::env::var_os("TOKENWARDEN_TEST_LOG_DIR") {
        cmd.env(
            "TOKENWARDEN_DEMO_LEDGER",
            PathBuf::from(d).join("issued-tokens.txt"),
        );
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    (Group::spawn(cmd), port)
}

/// A tiny remote resource on 127.0.0.1: answers every request `200 {"ok":true}` and
/// counts the requests that arrived with a bearer token (the token itself is never
/// looked at or kept).
fn upstream() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bearer = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = bearer.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if head.contains("\r\nauthorization: bearer ") {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let body = "{\"ok\":true}";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, bearer)
}

/// The text on the X display's CLIPBOARD, as another application would paste it.
fn clipboard_text(display: &str) -> Option<String> {
    let out = Command::new("/usr/bin/python3")
        .arg(root().join("tests/desktop/clipboard.py"))
        .env("DISPLAY", display)
        .output()
        .expect("clipboard.py");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The app's pid, asked over its control socket.
async fn app_pid(control_dir: &Path) -> u32 {
    let paths = tokenwarden::paths::Paths::resolve(Some(control_dir.to_path_buf())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(mut c)) = tokenwarden::control::Client::connect(&paths).await {
            if let Ok(v) = c.call(&tokenwarden::control::Request::Ping).await {
                return v["pid"].as_u64().unwrap() as u32;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the app's control socket did not answer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// tray.py's answer, or its complaint (no tray item yet, ...).
fn try_tray(pid: u32, args: &[&str]) -> Result<Value, String> {
    let out = Command::new("/usr/bin/python3")
        .arg(root().join("tests/desktop/tray.py"))
        .arg(pid.to_string())
        .args(args)
        .output()
        .expect("tray.py");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "tray.py {args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_str(&text).map_err(|e| format!("tray.py {args:?}: {e}: {text}"))
}

fn tray(pid: u32, args: &[&str]) -> Value {
    try_tray(pid, args).unwrap_or_else(|e| panic!("{e}"))
}

fn labels_of(layout: &Value) -> Vec<String> {
    layout
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap_or("").to_string())
        .collect()
}

fn tray_labels(pid: u32) -> Vec<String> {
    labels_of(&tray(pid, &["layout"]))
}

/// Wait for a tray menu line (the tray may not be there yet).
async fn wait_tray(pid: u32, label: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let labels = match try_tray(pid, &["layout"]) {
            Ok(layout) => labels_of(&layout),
            Err(e) => vec![e],
        };
        if labels.iter().any(|l| l == label) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tray menu has no {label:?}: {labels:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait until the tray icon is `icons/tray-STATE.png` (compared pixel by pixel with the
/// file the item names on D-Bus).
async fn wait_tray_icon(pid: u32, state: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let shown = try_tray(pid, &["icon"]).unwrap_or_else(|e| json!({ "error": e }));
        if shown["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tray icon is not {state:?}: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait (10 s at most) until `xwindows("count")` says `n` mapped windows.
async fn wait_window_count(xwindows: &dyn Fn(&str) -> String, n: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while xwindows("count") != n {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pid`'s live descendants (the app's window is a child process, WebKit's processes
/// are the window's children).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        for t in std::fs::read_dir(format!("/proc/{}/task", out[i]))
            .into_iter()
            .flatten()
            .flatten()
        {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in list
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if pid_alive(c) && !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        i += 1;
    }
    out.remove(0);
    out
}

/// Launch the app a second time on `config` with `args` (the app `pid` runs there, its
/// window open): it hands over to the first, which says what it did (`expect`: the
/// window "brought to the front", or with `--hidden` "keeps running in the tray"), its
/// window stays the one window, and the second launch exits 0.
async fn second_launch(
    display: &str,
    config: &Path,
    log: &Path,
    pid: u32,
    args: &[&str],
    expect: &str,
) {
    let window = window_process(pid);
    assert!(window.is_some(), "the first instance's window is open");
    let stderr = log.join(format!("second-{}.stderr", rand::random::<u32>()));
    let second = Command::new(env!("CARGO_BIN_EXE_tokenwarden"))
        .args(args)
        .env("DISPLAY", display)
        .env("TOKENWARDEN_CONFIG_DIR", config)
        .env("TOKENWARDEN_LOG_DIR", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut second = Group(second);
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = second.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "the second instance did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let said = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(
        code,
        Some(0),
        "second launch hands over and exits 0: {said}"
    );
    assert!(
        said.contains(&format!(
            "Tokenwarden already runs for {}: {expect}",
            config.display()
        )),
        "the second launch says what the first did: {said}"
    );
    assert!(pid_alive(pid), "the first instance keeps running");
    assert_eq!(
        window_process(pid),
        window,
        "the first instance's window is focused, not replaced"
    );
}

/// The app's window process (a `tokenwarden-window` child of `pid`), if open.
fn window_process(pid: u32) -> Option<u32> {
    descendants(pid).into_iter().find(|c| {
        std::fs::read_to_string(format!("/proc/{c}/cmdline"))
            .unwrap_or_default()
            .split('\0')
            .next()
            .is_some_and(|a| a.ends_with("/tokenwarden-window"))
    })
}

/// The executable names of `pid`'s WebKit processes (those of its window).
fn webkit_children(pid: u32) -> Vec<String> {
    descendants(pid)
        .into_iter()
        .filter_map(|c| {
            let exe = std::fs::read_link(format!("/proc/{c}/exe")).unwrap_or_default();
            exe.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| n.starts_with("WebKit"))
        })
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn wait_exit(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still running after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_degrades_notifies_recovers_and_reauthenticates() {
    let Some(display) = gate("demo_degrades_notifies_recovers_and_reauthenticates") else {
        return;
    };
    let _serial = serial();
    // One directory per process: a retried run keeps the failed try's logs.
    let log = log_dir(&format!("desktop-demo-{}", std::process::id()));
    let recorder = Recorder::start(&log);
    let config = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut app = open_app(&display, config.path(), &log, &[], &["demo"]).await;
    let wd = app.wd.as_ref().unwrap();
    for name in tokenwarden::demo::WORKLOADS {
        wd.wait_status(name, "running", Duration::from_secs(30))
            .await;
    }
    eprintln!(
        "demo window up with 3 running workloads after {:?}",
        t0.elapsed()
    );
    assert!(
        wd.js("return !document.querySelector('#demo').hidden")
            .await
            == json!(true)
    );
    // One demo workload fronts the demo's remote MCP server: its card shows the local
    // address (and "Copy client config"); the others have no remote, so no address.
    let proxy_ui = wd
        .js("return [...document.querySelectorAll('li[data-workload]')].map(li => [li.dataset.workload, li.querySelector('.local').hidden, li.querySelector('.proxy-error').hidden, li.querySelector('.local-url').value]);")
        .await;
    let rows = proxy_ui.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{proxy_ui}");
    let mut local_url = String::new();
    for r in rows {
        let remote = r[0] == tokenwarden::demo::REMOTE_WORKLOAD;
        assert_eq!(
            r[1],
            json!(!remote),
            "address shown only with a remote: {proxy_ui}"
        );
        assert_eq!(r[2], json!(true), "no proxy error: {proxy_ui}");
        if remote {
            local_url = r[3].as_str().unwrap().to_string();
        }
    }
    assert!(
        local_url.starts_with("http://127.0.0.1:") && local_url.ends_with("/mcp"),
        "{proxy_ui}"
    );
    // A client with no token gets through to the demo remote.
    let r = reqwest::get(&local_url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("\"authorization_seen\":true"));
    assert!(
        wd.js("return document.querySelector('#settings').hidden")
            .await
            == json!(true),
        "the demo does not offer start at login"
    );
    wd.screenshot("running").await;

    // No layout that breaks at 360 px wide: nothing overflows sideways.
    wd.assert_fits_width(360).await;
    wd.screenshot("running-360px").await;

    // The tray menu, read over D-Bus.
    let footer = wd
        .js("return document.querySelector('#footer').textContent")
        .await;
    let control_dir = footer
        .as_str()
        .unwrap()
        .split("--config-dir ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let pid = app_pid(Path::new(&control_dir)).await;
    // The demo's tray says it is the demo.
    wait_tray(
        pid,
        "Demo: All 3 workloads running",
        Duration::from_secs(10),
    )
    .await;
    wait_tray_icon(pid, "running", Duration::from_secs(10)).await;
    // The icon's file is in the instance's private run dir, not a shared /tmp one.
    let icon_file = tray(pid, &["icon"])["file"].as_str().unwrap().to_string();
    assert!(
        Path::new(&icon_file).starts_with(Path::new(&control_dir).join("run")),
        "{icon_file} not in {control_dir}/run"
    );
    // The demo holds its own dir's lock: a launch there hands over to it.
    second_launch(
        &display,
        Path::new(&control_dir),
        &log,
        pid,
        &[],
        "its window was brought to the front",
    )
    .await;
    let labels = tray_labels(pid);
    for want in [
        "github-mcp — running",
        "github-mcp — running › Copy local address",
        "jira-mcp — running › Retry now",
        "Retry all now",
        "Open Tokenwarden",
        "Quit the demo",
    ] {
        assert!(
            labels.iter().any(|l| l == want),
            "{want:?} not in {labels:?}"
        );
    }

    // Break it: the issuer answers 403 with an HTML page.
    wd.click("#demo-waf").await;
    wd.wait(
        "the demo panel to show the WAF mode",
        "document.querySelector('#demo-mode').textContent.includes('WAF')",
        Duration::from_secs(5),
    )
    .await;
    wd.wait_status("github-mcp", "retrying", Duration::from_secs(90))
        .await;
    let reason = wd.text("github-mcp", "reason").await;
    assert!(
        reason.contains("403 with a web page, probably a firewall or VPN block"),
        "reason in plain words: {reason:?}"
    );
    let countdown = wd.text("github-mcp", "countdown").await;
    assert!(
        countdown.starts_with("in ") || countdown == "now",
        "a live countdown: {countdown:?}"
    );
    let n = recorder.wait_for("retrying", Duration::from_secs(20)).await;
    assert!(
        n["body"]
            .as_str()
            .unwrap()
            .contains("firewall or VPN block"),
        "degraded notification names the cause: {n}"
    );
    wait_tray(pid, "github-mcp — retrying", Duration::from_secs(10)).await;
    wait_tray_icon(pid, "retrying", Duration::from_secs(10)).await;
    for name in tokenwarden::demo::WORKLOADS {
        wd.wait_status(name, "retrying", Duration::from_secs(60))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let retrying_notes: Vec<Value> = recorder
        .all()
        .into_iter()
        .filter(|n| n["summary"].as_str().unwrap_or("").contains("retrying"))
        .collect();
    let named: String = retrying_notes
        .iter()
        .map(|n| format!("{} {}\n", n["summary"], n["body"]))
        .collect();
    for name in tokenwarden::demo::WORKLOADS {
        assert!(
            named.contains(name),
            "every degraded workload is named: {named}"
        );
    }
    // One note per workload at most (burst coalescing itself is unit-tested).
    assert!(retrying_notes.len() <= 3, "no repeats: {named}");
    wd.screenshot("retrying").await;

    // Heal: every workload recovers, and a "recovered" notification arrives.
    wd.click("#demo-heal").await;
    for name in tokenwarden::demo::WORKLOADS {
        wd.wait_status(name, "running", Duration::from_secs(60))
            .await;
    }
    let n = recorder
        .wait_for("recovered", Duration::from_secs(20))
        .await;
    assert!(n["body"].as_str().unwrap().contains("running"), "{n}");
    wait_tray(
        pid,
        "Demo: All 3 workloads running",
        Duration::from_secs(10),
    )
    .await;
    wait_tray_icon(pid, "running", Duration::from_secs(10)).await;

    // Revoke the grant: invalid_grant is a verdict → unauthenticated, at once.
    wd.click("#demo-revoke").await;
    wd.click("li[data-workload=\"github-mcp\"] [data-action=\"retry\"]")
        .await;
    wd.wait_status("github-mcp", "unauthenticated", Duration::from_secs(30))
        .await;
    let reason = wd.text("github-mcp", "reason").await;
    assert!(
        reason.contains("no longer accepts the saved sign-in (invalid_grant)"),
        "{reason:?}"
    );
    let n = recorder
        .wait_for("sign in again", Duration::from_secs(20))
        .await;
    assert!(n["body"].as_str().unwrap().contains("invalid_grant"), "{n}");
    assert!(
        n["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "Re-authenticate"),
        "the unauthenticated note offers Re-authenticate: {n}"
    );
    wd.screenshot("unauthenticated").await;
    wait_tray_icon(pid, "unauthenticated", Duration::from_secs(10)).await;

    // Re-authenticate from the tray menu (clicked over D-Bus) …
    wait_tray(pid, "Re-authenticate github-mcp…", Duration::from_secs(10)).await;
    tray(pid, &["click", "Re-authenticate github-mcp…"]);
    wd.wait_status("github-mcp", "running", Duration::from_secs(30))
        .await;
    // … and from the window, for whichever others went unauthenticated meanwhile.
    for name in ["jira-mcp", "notion-api"] {
        if wd.status_of(name).await != "running" {
            wd.click(&format!(
                "li[data-workload=\"{name}\"] [data-action=\"reauth\"]"
            ))
            .await;
            wd.wait_status(name, "running", Duration::from_secs(30))
                .await;
        }
    }

    // Quit from the tray: the process ends cleanly, and its throwaway dir goes with it;
    // the config dir it was started with was never touched.
    tray(pid, &["click", "Quit the demo"]);
    wait_exit(pid, Duration::from_secs(15)).await;
    assert!(
        !Path::new(&control_dir).exists(),
        "the demo's dir {control_dir} is removed when it quits"
    );
    assert_eq!(
        std::fs::read_dir(config.path()).unwrap().count(),
        0,
        "the demo wrote nothing to the config dir it was started with"
    );
    if let Some(wd) = app.wd.take() {
        wd.end().await;
    }
    eprintln!("desktop demo scenario done in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_workload_login_retry_now_and_single_instance() {
    let Some(display) = gate("real_workload_login_retry_now_and_single_instance") else {
        return;
    };
    let _serial = serial();
    // One directory per process: a retried run keeps the failed try's logs.
    let log = log_dir(&format!("desktop-real-{}", std::process::id()));
    let recorder = Recorder::start(&log);
    // Every token it issues goes to the ledger scripts/scan-secrets.sh checks all
    // logs against (the app's logs and the recorded notifications included).
    let issuer = ledger_issuer().await;
    let config = tempfile::tempdir().unwrap();
    // `api` reaches a remote resource through its local proxy; `blocked` would too, but
    // its listen_port is held by another program (this test).
    let (remote_port, bearer_seen) = upstream();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    std::fs::write(
        config.path().join("workloads.toml"),
        format!(
            "[secrets]\nstore = \"file\"\n\n[[workload]]\nname = \"api\"\nurl = \"http://127.0.0.1:{remote_port}/mcp\"\nauthorization_endpoint = \"{auth}\"\ntoken_endpoint = \"{token}\"\nclient_id = \"{client}\"\nscopes = [\"read\"]\n\n[[workload]]\nname = \"blocked\"\nurl = \"http://127.0.0.1:{remote_port}/other\"\nlisten_port = {taken_port}\nauthorization_endpoint = \"{auth}\"\ntoken_endpoint = \"{token}\"\nclient_id = \"{client}\"\n",
            auth = issuer.authorization_endpoint(),
            token = issuer.token_endpoint(),
            client = issuer.client_id()
        ),
    )
    .unwrap();
    let browser = root().join("tests/desktop/browser.sh");
    // A home of its own, so the start-at-login entry lands where the test looks.
    let home = tempfile::tempdir().unwrap();
    let xdg_config = home.path().join("config");
    let mut app = open_app(
        &display,
        config.path(),
        &log,
        &[
            ("TOKENWARDEN_BROWSER", browser.display().to_string()),
            // This scenario runs in dark mode (the demo one in light mode).
            ("GTK_THEME", "Adwaita:dark".to_string()),
            ("HOME", home.path().display().to_string()),
            ("XDG_CONFIG_HOME", xdg_config.display().to_string()),
        ],
        &[],
    )
    .await;
    let wd = app.wd.as_ref().unwrap();
    wd.wait_status("api", "unauthenticated", Duration::from_secs(20))
        .await;
    assert!(wd.js("return document.querySelector('#demo').hidden").await == json!(true));
    let pid = app_pid(config.path()).await;
    wait_tray(pid, "Re-authenticate api…", Duration::from_secs(10)).await;

    // The local proxy: `api`'s card shows its local address; `blocked`'s says in plain
    // words why it has none.
    let local_url = wd
        .wait(
            "api's local address",
            "(() => { const li = document.querySelector('li[data-workload=\"api\"]'); return li && !li.querySelector('.local').hidden && li.querySelector('.local-url').value; })()",
            Duration::from_secs(10),
        )
        .await
        .as_str()
        .unwrap()
        .to_string();
    let local_port: u16 = local_url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix("/mcp"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("local address {local_url:?}"));
    assert_ne!(
        local_port, remote_port,
        "the local proxy has a port of its own"
    );
    let blocked = wd
        .wait(
            "blocked's proxy error",
            "(() => { const li = document.querySelector('li[data-workload=\"blocked\"]'); const p = li && li.querySelector('.proxy-error'); return p && !p.hidden && li.querySelector('.local').hidden && p.textContent; })()",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        blocked,
        json!(format!("The local proxy is not running: another program already uses 127.0.0.1:{taken_port}. Close that program, or give this workload another listen_port in workloads.toml.")),
    );
    assert!(
        wd.js("return document.querySelector('li[data-workload=\"api\"] .proxy-error').hidden")
            .await
            == json!(true)
    );
    wd.screenshot("local-proxy-dark").await;
    drop(taken);
    // Out of the way for the rest of the scenario (Remove asks twice).
    wd.click("li[data-workload=\"blocked\"] [data-action=\"remove\"]")
        .await;
    wd.click("li[data-workload=\"blocked\"] [data-action=\"remove\"]")
        .await;
    wd.wait(
        "the blocked card to go",
        "!document.querySelector('li[data-workload=\"blocked\"]')",
        Duration::from_secs(10),
    )
    .await;

    // A hand edit of workloads.toml that cannot be used: a notification names the line,
    // the running workloads stay, the file is left as written; putting it back is
    // applied quietly.
    let file = config.path().join("workloads.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    let broken = format!("{good}\n[[workload]]\nname = \"typo\"\ntoken_endpoint = 42\n");
    std::fs::write(&file, &broken).unwrap();
    let n = recorder
        .wait_for("workloads.toml has an error", Duration::from_secs(15))
        .await;
    let body = n["body"].as_str().unwrap_or("");
    assert!(
        body.contains(&format!("workloads.toml:{}:", broken.lines().count()))
            && body.contains("keeps running the previous configuration"),
        "{n}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), broken);
    assert!(
        wd.js("return !!document.querySelector('li[data-workload=\"api\"]') && !document.querySelector('li[data-workload=\"typo\"]')")
            .await
            == json!(true)
    );
    // The window says it too, until the file is fixed.
    let banner = wd
        .wait(
            "the config error banner",
            "!document.querySelector('#config-error').hidden && document.querySelector('#config-error').textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        banner
            .as_str()
            .unwrap_or("")
            .contains(&format!("workloads.toml:{}:", broken.lines().count())),
        "{banner}"
    );
    std::fs::write(&file, &good).unwrap();
    wd.wait(
        "the config error banner to go",
        "document.querySelector('#config-error').hidden",
        Duration::from_secs(10),
    )
    .await;
    // A workload added by hand gets a card; taken out by hand, the card goes.
    let extra = format!(
        "{good}\n[[workload]]\nname = \"extra\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n",
        issuer.token_endpoint(),
        issuer.client_id()
    );
    std::fs::write(&file, &extra).unwrap();
    wd.wait(
        "a card for the workload added by hand",
        "!!document.querySelector('li[data-workload=\"extra\"]')",
        Duration::from_secs(15),
    )
    .await;
    std::fs::write(&file, &good).unwrap();
    wd.wait(
        "the card of the workload removed by hand to go",
        "!document.querySelector('li[data-workload=\"extra\"]')",
        Duration::from_secs(15),
    )
    .await;

    // "Re-authenticate" runs the real login flow; the stand-in browser follows the URL.
    wd.click("li[data-workload=\"api\"] [data-action=\"reauth\"]")
        .await;
    wd.wait_status("api", "running", Duration::from_secs(30))
        .await;
    assert_eq!(
        issuer.code_exchanges(),
        1,
        "one authorization code exchanged"
    );
    let dark = wd
        .js("return matchMedia('(prefers-color-scheme: dark)').matches && getComputedStyle(document.body).backgroundColor;")
        .await;
    assert_eq!(
        dark,
        json!("rgb(17, 20, 24)"),
        "dark mode follows the desktop theme"
    );
    wd.screenshot("running-dark").await;

    // "Copy client config" puts exactly what `tokenwarden client-config api` prints on
    // the clipboard, and says so.
    let expected = serde_json::to_string_pretty(&tokenwarden::engine::proxy::client_config(
        "api", &local_url,
    ))
    .unwrap();
    wd.click("li[data-workload=\"api\"] [data-action=\"copy-config\"]")
        .await;
    wd.wait(
        "the Copied confirmation",
        "document.querySelector('li[data-workload=\"api\"] .copied').textContent === 'Copied'",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        clipboard_text(&display).as_deref(),
        Some(expected.as_str()),
        "the clipboard holds the client config"
    );
    assert!(
        wd.js("return document.querySelector('li[data-workload=\"api\"] .client-config').hidden")
            .await
            == json!(true)
    );
    let cli = Command::new(env!("CARGO_BIN_EXE_tokenwarden"))
        .args(["client-config", "api"])
        .env("TOKENWARDEN_CONFIG_DIR", config.path())
        .env_remove("DISPLAY")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout).trim_end(),
        expected,
        "the window and the CLI give the same config"
    );
    // Without any clipboard the config is shown, selected, to copy by hand — and the
    // card still fits 360 px.
    wd.js("Object.defineProperty(navigator, 'clipboard', {value: undefined, configurable: true}); document.execCommand = () => false; return true;").await;
    wd.click("li[data-workload=\"api\"] [data-action=\"copy-config\"]")
        .await;
    let shown = wd
        .wait(
            "the client config shown as a fallback",
            "(() => { const li = document.querySelector('li[data-workload=\"api\"]'); const pre = li.querySelector('.client-config'); return !pre.hidden && !li.querySelector('.copy-fallback').hidden && li.querySelector('.copied').textContent === '' && pre.textContent; })()",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(shown, json!(expected));
    assert_eq!(
        wd.js("return String(window.getSelection());").await,
        json!(expected),
        "the shown config is selected, ready for Ctrl+C"
    );
    wd.assert_fits_width(360).await;
    wd.screenshot("client-config-360px-dark").await;
    wd.req(
        reqwest::Method::POST,
        "/window/rect",
        Some(json!({"width": 560, "height": 780})),
    )
    .await;

    // The local address really serves: the request reaches the remote with a token.
    let resp = reqwest::get(&local_url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "{\"ok\":true}");
    assert_eq!(
        bearer_seen.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the proxy added the bearer token"
    );

    // The CLI works against the app's control socket.
    let out = Command::new(env!("CARGO_BIN_EXE_tokenwarden"))
        .args(["status", "--json"])
        .env("TOKENWARDEN_CONFIG_DIR", config.path())
        .env_remove("DISPLAY")
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "api");
    assert_eq!(list[0]["status"], "running");
    assert_eq!(list[0]["live"], true, "answered by the running app");

    // "Retry now" in the window: exactly one refresh request at the issuer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = issuer.refresh_requests();
    wd.click("li[data-workload=\"api\"] [data-action=\"retry\"]")
        .await;
    assert!(
        issuer
            .wait_for_refresh_requests(before + 1, Duration::from_secs(10))
            .await,
        "Retry now made no refresh request"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(issuer.refresh_requests(), before + 1, "exactly one refresh");
    wd.wait(
        "the timeline to show the refresh",
        "document.querySelector('li[data-workload=\"api\"] .timeline').textContent.includes('token refreshed')",
        Duration::from_secs(5),
    )
    .await;

    // The same by keyboard only: from a freshly loaded window, Tab to api's "Retry now"
    // and press Enter: exactly one refresh again.
    wd.reload("!!document.querySelector('li[data-workload=\"api\"]')")
        .await;
    let target = "li[data-workload=\"api\"] [data-action=\"retry\"]";
    let mut path = Vec::new();
    loop {
        wd.keys(TAB).await;
        let at = wd
            .js("const e = document.activeElement; return e === document.body ? 'body' : (e.closest('li[data-workload]') ? e.closest('li[data-workload]').dataset.workload + ' ' : '') + (e.dataset.action || e.id || e.className || e.tagName);")
            .await;
        path.push(at.as_str().unwrap_or("?").to_string());
        if wd
            .js(&format!(
                "return document.activeElement.matches('{target}');"
            ))
            .await
            == json!(true)
        {
            break;
        }
        assert!(path.len() < 30, "Tab never reached Retry now: {path:?}");
    }
    assert_eq!(
        path.first().map(String::as_str),
        Some("retry-all"),
        "the first Tab stop is the header's Retry all now: {path:?}"
    );
    eprintln!("Tab stops to api's Retry now: {path:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = issuer.refresh_requests();
    wd.keys(ENTER).await;
    assert!(
        issuer
            .wait_for_refresh_requests(before + 1, Duration::from_secs(10))
            .await,
        "Enter on Retry now made no refresh request (Tab path {path:?})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        issuer.refresh_requests(),
        before + 1,
        "exactly one refresh by keyboard"
    );

    // invalid_grant → unauthenticated → Re-authenticate → running again.
    issuer.revoke_all();
    wd.click("li[data-workload=\"api\"] [data-action=\"retry\"]")
        .await;
    wd.wait_status("api", "unauthenticated", Duration::from_secs(20))
        .await;
    let note = recorder
        .wait_for("api needs you to sign in again", Duration::from_secs(20))
        .await;
    // This time from the notification's "Re-authenticate" action: the notification
    // server emits ActionInvoked(id, action) as a desktop would on a click.
    let out = Command::new("gdbus")
        .args([
            "emit",
            "--session",
            "--object-path",
            "/org/freedesktop/Notifications",
            "--signal",
            "org.freedesktop.Notifications.ActionInvoked",
            &format!("uint32 {}", note["id"]),
            "'reauthenticate'",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "gdbus emit: {out:?}");
    wd.wait_status("api", "running", Duration::from_secs(30))
        .await;
    assert_eq!(issuer.code_exchanges(), 2);

    // Errors from commands are shown as {code, message}: remove an unknown name.
    wd.js("window.__TAURI__.core.invoke('retry', {name: 'nope'}).catch(e => { document.querySelector('#error-text').textContent = e.message + ' [' + e.code + ']'; document.querySelector('#error').hidden = false; }); return true;").await;
    wd.wait(
        "the error banner",
        "!document.querySelector('#error').hidden && document.querySelector('#error-text').textContent.includes('[unknown_workload]')",
        Duration::from_secs(5),
    )
    .await;

    // The add form: validation in the window, then add → sign-in → running; Remove.
    wd.click("#add summary").await;
    wd.type_into("#add-form [name=name]", "api2").await;
    wd.type_into("#add-form [name=token_endpoint]", "ftp://nope")
        .await;
    wd.click("#add-form button[type=submit]").await;
    wd.wait(
        "a field error for the token endpoint",
        "document.querySelector('.field-error[data-for=token_endpoint]').textContent.includes('full URL') || document.querySelector('.field-error[data-for=token_endpoint]').textContent.includes('https')",
        Duration::from_secs(5),
    )
    .await;
    wd.type_into("#add-form [name=token_endpoint]", &issuer.token_endpoint())
        .await;
    wd.type_into(
        "#add-form [name=authorization_endpoint]",
        &issuer.authorization_endpoint(),
    )
    .await;
    wd.type_into("#add-form [name=client_id]", issuer.client_id())
        .await;
    wd.type_into("#add-form [name=scopes]", "read").await;
    wd.click("#add-form button[type=submit]").await;
    wd.wait_status("api2", "running", Duration::from_secs(30))
        .await;
    assert_eq!(issuer.code_exchanges(), 3, "the new workload signed in");
    let toml = std::fs::read_to_string(config.path().join("workloads.toml")).unwrap();
    assert!(toml.contains("name = \"api2\""), "{toml}");
    // The backend validates too: a duplicate name comes back as a field error.
    let dup = wd
        .js("return window.__TAURI__.core.invoke('add_workload', {form: {name: 'api', token_endpoint: 'https://a.example/token', authorization_endpoint: 'https://a.example/authorize', client_id: 'x', scopes: ''}}).then(() => 'ok', e => JSON.stringify(e));")
        .await;
    let dup: Value = serde_json::from_str(dup.as_str().unwrap()).unwrap();
    assert_eq!(dup["code"], "invalid", "{dup}");
    assert_eq!(dup["field"], "name", "{dup}");
    // Remove asks for a second click, then the card and the config entry go.
    wd.click("li[data-workload=\"api2\"] [data-action=\"remove\"]")
        .await;
    wd.click("li[data-workload=\"api2\"] [data-action=\"remove\"]")
        .await;
    wd.wait(
        "the api2 card to go",
        "!document.querySelector('li[data-workload=\"api2\"]')",
        Duration::from_secs(10),
    )
    .await;
    let toml = std::fs::read_to_string(config.path().join("workloads.toml")).unwrap();
    assert!(!toml.contains("api2"), "{toml}");

    // Add by URL alone: the app discovers the issuer from the remote (RFC 9728, RFC
    // 8414), registers a client (RFC 7591), signs in, and serves it on a local address.
    let remote = tokenwarden_sim::remote::SimRemote::start(
        issuer.clone(),
        tokenwarden_sim::remote::RemoteOptions::default(),
    )
    .await
    .unwrap();
    wd.click("#add summary").await;
    wd.type_into("#add-form [name=name]", "mcp").await;
    wd.type_into("#add-form [name=url]", &remote.url()).await;
    wd.click("#add-form button[type=submit]").await;
    wd.wait_status("mcp", "running", Duration::from_secs(30))
        .await;
    assert_eq!(
        issuer.registered_client_ids().len(),
        1,
        "a client was registered"
    );
    let toml = std::fs::read_to_string(config.path().join("workloads.toml")).unwrap();
    assert!(
        toml.contains(&issuer.registered_client_ids()[0])
            && toml.contains(&issuer.token_endpoint()),
        "{toml}"
    );
    let local = wd
        .wait(
            "the mcp card's local address",
            "document.querySelector('li[data-workload=\"mcp\"] .local-url') && document.querySelector('li[data-workload=\"mcp\"] .local-url').value",
            Duration::from_secs(10),
        )
        .await;
    let local = local.as_str().unwrap().to_string();
    let r = reqwest::Client::new()
        .post(&local)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "the remote answers through the local proxy"
    );
    wd.click("li[data-workload=\"mcp\"] [data-action=\"remove\"]")
        .await;
    wd.click("li[data-workload=\"mcp\"] [data-action=\"remove\"]")
        .await;
    wd.wait(
        "the mcp card to go",
        "!document.querySelector('li[data-workload=\"mcp\"]')",
        Duration::from_secs(10),
    )
    .await;

    // Start at login: off by default; the checkbox writes the XDG autostart entry (it
    // starts this binary on this config dir, hidden in the tray) and removes it again.
    let autostart_dir = xdg_config.join("autostart");
    let entries = || -> Vec<PathBuf> {
        std::fs::read_dir(&autostart_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        wd.js("return [document.querySelector('#settings').hidden, document.querySelector('#autostart').checked];")
            .await,
        json!([false, false]),
        "the setting is shown, and off"
    );
    assert!(entries().is_empty(), "no entry by default: {:?}", entries());
    wd.click("#autostart").await;
    wd.wait(
        "the start-at-login box to be on",
        "document.querySelector('#autostart').checked && !document.querySelector('#autostart').disabled",
        Duration::from_secs(5),
    )
    .await;
    let found = entries();
    assert_eq!(found.len(), 1, "one entry: {found:?}");
    let name = found[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("tokenwarden-") && name.ends_with(".desktop"),
        "{name}"
    );
    let entry = std::fs::read_to_string(&found[0]).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_tokenwarden")).unwrap();
    let exec = format!(
        "{} --config-dir {} --hidden",
        exe.display(),
        config.path().display()
    );
    assert!(
        entry.lines().any(|l| l == format!("Exec={exec}")),
        "Exec line {exec:?} in:\n{entry}"
    );
    assert!(
        entry.starts_with("# Written by Tokenwarden")
            && entry.contains("\n[Desktop Entry]\nType=Application\n"),
        "{entry}"
    );
    // The window shows the real state: a reload reads it back.
    wd.reload("document.querySelector('#autostart').checked")
        .await;
    wd.click("#autostart").await;
    wd.wait(
        "the start-at-login box to be off",
        "!document.querySelector('#autostart').checked && !document.querySelector('#autostart').disabled",
        Duration::from_secs(5),
    )
    .await;
    assert!(entries().is_empty(), "entry removed: {:?}", entries());

    // A second launch on the same config dir focuses the first and exits 0; one as the
    // login entry starts it (`--hidden`) leaves the first alone.
    second_launch(
        &display,
        config.path(),
        &log,
        pid,
        &[],
        "its window was brought to the front",
    )
    .await;
    second_launch(
        &display,
        config.path(),
        &log,
        pid,
        &["--hidden"],
        "it keeps running in the tray",
    )
    .await;

    // Closing the window (WM_DELETE_WINDOW, as a window manager's close button sends)
    // keeps the app — tray, engine, control socket — running; the tray reopens it.
    let xwindows = |cmd: &str| -> String {
        let out = Command::new("/usr/bin/python3")
            .arg(root().join("tests/desktop/xclose.py"))
            .arg(pid.to_string())
            .arg(cmd)
            .env("DISPLAY", &display)
            .output()
            .expect("xclose.py");
        assert!(
            out.status.success(),
            "xclose.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The window's process and its WebKit processes, by pid: once the window's process
    // is gone they are no longer the app's descendants, whether they ended or not.
    let closing = window_process(pid).expect("the window runs in a process of its own");
    let closing_webkit = descendants(closing);
    assert!(
        !closing_webkit.is_empty(),
        "WebKit runs under the window's process"
    );
    assert_eq!(xwindows("close"), "1", "one window to close");
    wait_window_count(&xwindows, "0", "the window did not close").await;
    wait_exit(closing, Duration::from_secs(10)).await;
    for p in closing_webkit {
        wait_exit(p, Duration::from_secs(15)).await;
    }
    assert!(pid_alive(pid), "closing the window does not quit");
    let _ = app_pid(config.path()).await;
    // With the window gone, its process and WebKit's go too; only the app is left.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !webkit_children(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "WebKit processes left after the window closed: {:?}",
            webkit_children(pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // (A window program of another protocol version refuses the app at the hello and
    // exits with EXIT_VERSION_MISMATCH: tests/cli.rs,
    // `another_protocol_version_is_refused_naming_both`.)
    tray(pid, &["click", "Open Tokenwarden"]);
    wait_window_count(
        &xwindows,
        "1",
        "Open Tokenwarden did not bring the window back",
    )
    .await;
    // … and WebKit starts afresh for the new window.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let kids = webkit_children(pid);
        if kids.iter().any(|k| k == "WebKitWebProcess")
            && kids.iter().any(|k| k == "WebKitNetworkProcess")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no WebKit processes for the reopened window: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The window is a process of its own: when it dies (a crash of the web view, here
    // SIGKILL), the engine and the tray carry on, and the tray opens a new window.
    let window = window_process(pid).expect("the window runs in a process of its own");
    // WebKit's processes are the window's children (re-parented once it dies: by pid).
    let webkit = descendants(window);
    assert!(!webkit.is_empty(), "WebKit runs under the window's process");
    // SAFETY: kill(2) on a child of the app under test, just read from /proc.
    assert_eq!(unsafe { libc::kill(window as i32, libc::SIGKILL) }, 0);
    wait_exit(window, Duration::from_secs(10)).await;
    for p in webkit {
        wait_exit(p, Duration::from_secs(15)).await;
    }
    assert!(pid_alive(pid), "the app survives its window's crash");
    assert_eq!(
        app_pid(config.path()).await,
        pid,
        "the control socket answers"
    );
    wait_tray(pid, "api — running", Duration::from_secs(10)).await;
    tray(pid, &["click", "Open Tokenwarden"]);
    wait_window_count(
        &xwindows,
        "1",
        "Open Tokenwarden did not open a window after the crash",
    )
    .await;
    let reopened = window_process(pid).expect("a window process");
    assert_ne!(reopened, window, "a new window process");
    app.wd.take();

    // Quit from the tray: clean stop, state written, the open window gone as well.
    tray(pid, &["click", "Quit"]);
    wait_exit(pid, Duration::from_secs(15)).await;
    wait_exit(reopened, Duration::from_secs(5)).await;
    let state = std::fs::read_to_string(config.path().join("state.json")).unwrap_or_default();
    assert!(
        state.contains("\"api\""),
        "state file written on quit: {state}"
    );

    // What the login entry runs starts the app in the tray, with no window.
    let mut words = exec.split(' ');
    let mut cmd = Command::new(words.next().unwrap());
    cmd.args(words)
        .env("DISPLAY", &display)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", &xdg_config)
        .env_remove("TOKENWARDEN_CONFIG_DIR")
        .env("TOKENWARDEN_LOG_DIR", &log)
        .env("NO_AT_BRIDGE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log.join("at-login.stderr")).unwrap());
    let at_login = Group::spawn(cmd);
    let pid2 = at_login.0.id();
    assert_eq!(
        app_pid(config.path()).await,
        pid2,
        "the app started at login"
    );
    wait_tray(pid2, "api — running", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = Command::new("/usr/bin/python3")
        .arg(root().join("tests/desktop/xclose.py"))
        .arg(pid2.to_string())
        .arg("count")
        .env("DISPLAY", &display)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "started at login: no window"
    );
    // Opened from the tray, its window goes with the app even when the app dies
    // without a word (SIGKILL): the window's connection closes.
    tray(pid2, &["click", "Open Tokenwarden"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let window = loop {
        if let Some(w) = window_process(pid2) {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "Open Tokenwarden started no window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // SAFETY: kill(2) on the app under test, whose pid the control socket gave.
    assert_eq!(unsafe { libc::kill(pid2 as i32, libc::SIGKILL) }, 0);
    wait_exit(pid2, Duration::from_secs(5)).await;
    wait_exit(window, Duration::from_secs(15)).await;
    drop(at_login);

    let secrets = std::fs::read_to_string(log.join("app.stderr")).unwrap_or_default();
    for t in issuer.issued_tokens() {
        assert!(
            !secrets.contains(&t),
            "a token leaked into the app's stderr"
        );
    }
}

/// The app's `tokenwarden demo --dir DIR` child ("Try the demo"): its pid and dir.
fn demo_child(pid: u32) -> Option<(u32, PathBuf)> {
    descendants(pid).into_iter().find_map(|c| {
        let cmdline = std::fs::read_to_string(format!("/proc/{c}/cmdline")).unwrap_or_default();
        let args: Vec<&str> = cmdline.split('\0').collect();
        let at = args.iter().position(|a| *a == "--dir")?;
        let dir = args.get(at + 1)?;
        (args.contains(&"demo") && pid_alive(c)).then(|| (c, PathBuf::from(dir)))
    })
}

/// A first run: nothing configured. The window opens on the empty state ("Add a
/// server", "Try the demo"); the demo runs as a process of its own on a throwaway dir
/// that goes when it quits, never in the user's config or tray; a server added by URL
/// alone ends running; "Connect to…" writes VS Code's file (in a home of its own); the
/// tray's per-workload submenu copies the local address and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_adds_a_server_by_url_connects_a_client_and_tries_the_demo() {
    let Some(display) = gate("first_run_adds_a_server_by_url_connects_a_client_and_tries_the_demo")
    else {
        return;
    };
    let _serial = serial();
    let log = log_dir(&format!("desktop-first-run-{}", std::process::id()));
    let _recorder = Recorder::start(&log);
    let issuer = ledger_issuer().await;
    let remote = tokenwarden_sim::remote::SimRemote::start(
        issuer.clone(),
        tokenwarden_sim::remote::RemoteOptions::default(),
    )
    .await
    .unwrap();
    // Nothing configured: the config dir does not even exist yet.
    let base = tempfile::tempdir().unwrap();
    let config = base.path().join("config");
    // A home of its own, with VS Code's user config file (and no other client's).
    let home = tempfile::tempdir().unwrap();
    let xdg_config = home.path().join("config");
    let vscode = xdg_config.join("Code/User/mcp.json");
    std::fs::create_dir_all(vscode.parent().unwrap()).unwrap();
    let vscode_before = "{\n  // my servers\n  \"servers\": {}\n}\n";
    std::fs::write(&vscode, vscode_before).unwrap();
    let browser = root().join("tests/desktop/browser.sh");
    let mut app = open_app(
        &display,
        &config,
        &log,
        &[
            ("TOKENWARDEN_BROWSER", browser.display().to_string()),
            ("HOME", home.path().display().to_string()),
            ("XDG_CONFIG_HOME", xdg_config.display().to_string()),
        ],
        &[],
    )
    .await;
    let wd = app.wd.as_ref().unwrap();
    let empty = wd
        .js("const e = document.querySelector('#empty'); return [e.hidden, document.querySelector('#empty-add').textContent, document.querySelector('#empty-demo').textContent, document.querySelector('#add').hidden, document.querySelector('#demo').hidden, document.querySelectorAll('li[data-workload]').length];")
        .await;
    assert_eq!(
        empty,
        json!([false, "Add a server", "Try the demo", false, true, 0]),
        "the empty state, the add form shown, no demo"
    );
    let pid = app_pid(&config).await;
    wait_tray(pid, "No workloads configured", Duration::from_secs(10)).await;

    // "Try the demo": a process of its own on a throwaway dir, with its own tray.
    wd.click("#empty-demo").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (demo_pid, demo_dir) = loop {
        if let Some(d) = demo_child(pid) {
            break d;
        }
        assert!(Instant::now() < deadline, "Try the demo started no demo");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        app_pid(&demo_dir).await,
        demo_pid,
        "the demo serves its own dir"
    );
    wait_tray(
        demo_pid,
        "Demo: All 3 workloads running",
        Duration::from_secs(60),
    )
    .await;
    // A second click brings the running demo forward instead of starting another.
    wd.click("#empty-demo").await;
    wd.wait(
        "the notice that the demo runs already",
        "document.querySelector('#notice').textContent.includes('runs already')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(demo_child(pid).map(|d| d.0), Some(demo_pid), "one demo");
    // The user's tray, window and config never show the demo's workloads.
    let labels = tray_labels(pid);
    assert!(
        labels.iter().any(|l| l == "No workloads configured")
            && !labels.iter().any(|l| l.contains("github-mcp")),
        "{labels:?}"
    );
    assert_eq!(
        wd.js("return document.querySelectorAll('li[data-workload]').length")
            .await,
        json!(0)
    );
    let cfg = std::fs::read_to_string(config.join("workloads.toml")).unwrap_or_default();
    assert!(!cfg.contains("[[workload]]"), "{cfg}");
    // Quitting the demo from its tray removes its dir; the app runs on.
    tray(demo_pid, &["click", "Quit the demo"]);
    wait_exit(demo_pid, Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while demo_dir.exists() {
        assert!(Instant::now() < deadline, "{} left", demo_dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pid_alive(pid));
    wd.screenshot("empty-state").await;

    // "Add a server": the form opens at its URL field; a URL and a name are enough.
    wd.click("#empty-add").await;
    assert_eq!(
        wd.js("return document.activeElement === document.querySelector('#add-form [name=url]');")
            .await,
        json!(true),
        "Add a server puts the focus on the URL"
    );
    wd.type_into("#add-form [name=url]", &remote.url()).await;
    wd.type_into("#add-form [name=name]", "mcp").await;
    wd.click("#add-form button[type=submit]").await;
    wd.wait_status("mcp", "running", Duration::from_secs(30))
        .await;
    assert!(
        wd.js("return document.querySelector('#empty').hidden")
            .await
            == json!(true)
    );
    let local_url = wd
        .wait(
            "the mcp card's local address",
            "document.querySelector('li[data-workload=\"mcp\"] .local-url').value",
            Duration::from_secs(10),
        )
        .await
        .as_str()
        .unwrap()
        .to_string();

    // "Connect to…": the eight clients, VS Code's file found; connecting writes it.
    wd.click("li[data-workload=\"mcp\"] .connect summary").await;
    let vs = "li[data-workload=\"mcp\"] .client[data-client=\"vscode\"]";
    let listed = wd
        .wait(
            "the clients to be listed",
            &format!("document.querySelector('{vs}') && [...document.querySelectorAll('li[data-workload=\"mcp\"] .client')].map(c => c.dataset.client + ': ' + c.querySelector('.client-state').textContent)"),
            Duration::from_secs(10),
        )
        .await;
    let listed: Vec<String> = serde_json::from_value(listed).unwrap();
    assert_eq!(listed.len(), 8, "{listed:?}");
    assert!(
        listed.contains(&"vscode: found, not connected".to_string()),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"cursor: no config file here".to_string()),
        "{listed:?}"
    );
    wd.screenshot("connect-to").await;
    wd.click(&format!("{vs} .client-toggle")).await;
    let said = wd
        .wait(
            "the connect result",
            &format!("document.querySelector('{vs}').dataset.connected === '1' && document.querySelector('li[data-workload=\"mcp\"] .connect-result').textContent"),
            Duration::from_secs(10),
        )
        .await;
    let said = said.as_str().unwrap();
    assert!(
        said.starts_with("Connected mcp to VS Code: wrote ") && said.contains("kept as "),
        "{said}"
    );
    let text = std::fs::read_to_string(&vscode).unwrap();
    assert!(text.contains("// my servers"), "{text}");
    let v: Value = jsonc_parser::parse_to_serde_value(&text, &Default::default()).unwrap();
    assert_eq!(
        v["servers"]["mcp"],
        json!({"type": "http", "url": local_url})
    );
    let backup = said
        .split("kept as ")
        .nth(1)
        .unwrap()
        .trim_end_matches(").");
    assert_eq!(std::fs::read_to_string(backup).unwrap(), vscode_before);
    assert_eq!(
        wd.js(&format!(
            "return document.querySelector('{vs} .client-toggle').getAttribute('aria-label');"
        ))
        .await,
        json!("Disconnect mcp from VS Code")
    );

    // The tray: a submenu per workload. "Copy local address" puts it on the clipboard
    // (read as another application would); "Retry now" makes one refresh.
    let sub = "mcp — running";
    wait_tray(
        pid,
        &format!("{sub} › Copy local address"),
        Duration::from_secs(10),
    )
    .await;
    tray(pid, &["click", &format!("{sub} › Copy local address")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while clipboard_text(&display).as_deref() != Some(local_url.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the clipboard holds {:?}, not the local address",
            clipboard_text(&display)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = issuer.refresh_requests();
    tray(pid, &["click", &format!("{sub} › Retry now")]);
    assert!(
        issuer
            .wait_for_refresh_requests(before + 1, Duration::from_secs(10))
            .await,
        "Retry now from the tray made no refresh request"
    );
    wd.wait_status("mcp", "running", Duration::from_secs(10))
        .await;

    tray(pid, &["click", "Quit"]);
    wait_exit(pid, Duration::from_secs(15)).await;
    if let Some(wd) = app.wd.take() {
        wd.end().await;
    }
}

/// SIGTERM to `child` (a process group of its own): its exit status, waited for a
/// bounded time.
async fn terminate(child: &mut Group, within: Duration) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child, not reaped yet.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "still running {within:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tray app and the windowed demo stop cleanly on SIGTERM (a logout, a service
/// manager): exit 0, the control socket gone, the lock free; the demo's dir removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_and_the_windowed_demo_stop_cleanly_on_sigterm() {
    let Some(display) = gate("the_app_and_the_windowed_demo_stop_cleanly_on_sigterm") else {
        return;
    };
    let _serial = serial();
    let log = log_dir(&format!("desktop-sigterm-{}", std::process::id()));
    let issuer = ledger_issuer().await;
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("workloads.toml"),
        format!(
            "[secrets]\nstore = \"file\"\n\n[[workload]]\nname = \"api\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n",
            issuer.authorization_endpoint(),
            issuer.token_endpoint(),
            issuer.client_id()
        ),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let command = |args: &[&str], stderr: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
        cmd.args(args)
            .env("DISPLAY", &display)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("TOKENWARDEN_CONFIG_DIR", config.path())
            .env("TOKENWARDEN_LOG_DIR", &log)
            .env("NO_AT_BRIDGE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log.join(stderr)).unwrap());
        cmd
    };

    let mut app = Group::spawn(command(&["--hidden"], "app.stderr"));
    let pid = app.0.id();
    assert_eq!(app_pid(config.path()).await, pid);
    wait_tray(pid, "Re-authenticate api…", Duration::from_secs(30)).await;
    let status = terminate(&mut app, Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "the app stops cleanly on SIGTERM: {status}"
    );
    let paths = tokenwarden::paths::Paths::resolve(Some(config.path().to_path_buf())).unwrap();
    assert!(!paths.socket.exists(), "the control socket is removed");
    tokenwarden::instance::acquire_lock(&paths).expect("the lock is free");

    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("demo");
    std::fs::create_dir(&dir).unwrap();
    let dir_arg = dir.display().to_string();
    let mut demo = Group::spawn(command(&["demo", "--dir", &dir_arg], "demo.stderr"));
    let demo_pid = demo.0.id();
    assert_eq!(app_pid(&dir).await, demo_pid);
    wait_tray(
        demo_pid,
        "Demo: All 3 workloads running",
        Duration::from_secs(60),
    )
    .await;
    let status = terminate(&mut demo, Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "the demo stops cleanly on SIGTERM: {status}"
    );
    assert!(!dir.exists(), "the demo's dir {} is removed", dir.display());
}

/// A start at login (`--hidden`) on a desktop with no tray host says once that the
/// app runs without a tray icon and how to open the window; with a tray host, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_start_without_a_tray_host_says_how_to_open_the_window() {
    let Some(display) = gate("hidden_without_tray") else {
        return;
    };
    let _serial = serial();
    let log = log_dir("hidden_without_tray");
    let recorder = Recorder::start(&log);
    let name_owned = |name: &str| {
        let out = Command::new("gdbus")
            .args([
                "call",
                "--session",
                "--dest",
                "org.freedesktop.DBus",
                "--object-path",
                "/org/freedesktop/DBus",
                "--method",
                "org.freedesktop.DBus.NameHasOwner",
                name,
            ])
            .output()
            .expect("gdbus");
        String::from_utf8_lossy(&out.stdout).contains("true")
    };
    assert!(
        !name_owned("org.kde.StatusNotifierWatcher"),
        "the suite's bus has no tray host"
    );
    let start = |config: &Path, tag: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
        cmd.arg("--hidden")
            .env("DISPLAY", &display)
            .env("TOKENWARDEN_CONFIG_DIR", config)
            .env("TOKENWARDEN_LOG_DIR", log.join(tag))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log.join(format!("{tag}.stderr"))).unwrap());
        Group::spawn(cmd)
    };
    // The app's log line saying what it decided (written before any notification).
    let decided = |tag: &str| {
        let path = log.join(format!("{tag}.stderr"));
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains("started hidden without a tray") {
                    return false;
                }
                if text.contains("started hidden: the tray shows the icon") {
                    return true;
                }
                assert!(Instant::now() < deadline, "no decision logged: {text}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let summary = "Tokenwarden runs without a tray icon";

    // No tray host: one notification, saying how to open the window.
    let config = tempfile::tempdir().unwrap();
    let app = start(config.path(), "no-host");
    assert!(!decided("no-host").await, "no tray host: it must say so");
    let note = recorder.wait_for(summary, Duration::from_secs(10)).await;
    assert!(
        note["body"].as_str().unwrap().contains("run `tokenwarden`"),
        "{note}"
    );
    assert!(pid_alive(app.0.id()), "it keeps running");
    drop(app);
    let count = recorder
        .all()
        .iter()
        .filter(|n| n["summary"] == summary)
        .count();
    assert_eq!(count, 1, "once: {:#?}", recorder.all());

    // A tray host on the bus: the icon shows, nothing to say.
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(root().join("tests/desktop/sni_watcher.py"))
        .stdin(Stdio::null());
    let _watcher = Group::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !name_owned("org.kde.StatusNotifierWatcher") {
        assert!(
            Instant::now() < deadline,
            "the stand-in tray host did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config = tempfile::tempdir().unwrap();
    let _app = start(config.path(), "host");
    assert!(decided("host").await, "a tray host: no note");
    let _ = app_pid(config.path()).await;
    let count = recorder
        .all()
        .iter()
        .filter(|n| n["summary"] == summary)
        .count();
    assert_eq!(count, 1, "no second note: {:#?}", recorder.all());
}

/// axe-core's source: tests/desktop/install.sh (run by scripts/deps.sh) installs the
/// version tests/desktop/package-lock.json pins.
fn axe_source() -> String {
    let p = root().join("tests/desktop/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `bash tests/desktop/install.sh` (scripts/deps.sh does)",
            p.display()
        )
    })
}

impl Wd {
    /// Run axe-core on the window as it is now and fail on any `serious` or `critical`
    /// violation; every violation found is printed. axe is injected through WebDriver
    /// (the page's CSP lets it load only its own scripts, and it never loads axe).
    async fn axe(&self, what: &str) {
        self.req(
            reqwest::Method::POST,
            "/timeouts",
            Some(json!({"script": 60_000})),
        )
        .await;
        if self.js("return typeof axe === 'object';").await != json!(true) {
            self.js(&format!("{}\n;return true;", axe_source())).await;
        }
        let r = self
            .req(
                reqwest::Method::POST,
                "/execute/async",
                Some(json!({"script": "const done = arguments[arguments.length - 1]; axe.run(document, {resultTypes: ['violations']}).then(r => done({version: axe.version, rules: r.passes.length + r.violations.length + r.incomplete.length + r.inapplicable.length, violations: r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ') + ': ' + (n.failureSummary || '').replace(/\\s+/g, ' '))}))}), e => done({error: String(e)}));", "args": []})),
            )
            .await;
        assert!(r["error"].is_null(), "axe-core failed on {what}: {r}");
        let violations = r["violations"].as_array().cloned().unwrap_or_default();
        eprintln!(
            "axe-core {} on {what}: {} rules, {} violations",
            r["version"].as_str().unwrap_or("?"),
            r["rules"],
            violations.len()
        );
        for v in &violations {
            eprintln!(
                "  {} [{}] {}: {}",
                v["id"], v["impact"], v["help"], v["nodes"]
            );
        }
        let bad: Vec<&Value> = violations
            .iter()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .collect();
        assert!(
            bad.is_empty(),
            "axe-core: serious or critical violations on {what}: {bad:#?}"
        );
    }

    /// The cards in window order, as `name status`; panics unless they are sorted
    /// worst state first (unauthenticated, retrying, running, stopped), then by name.
    async fn assert_sorted(&self) -> Vec<String> {
        let v = self
            .js("const rank = {unauthenticated: 0, retrying: 1, running: 2, stopped: 3}; const cards = [...document.querySelectorAll('#workloads > li')].map(li => [li.dataset.workload, li.dataset.status]); const sorted = cards.slice().sort((a, b) => (rank[a[1]] - rank[b[1]]) || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); return [JSON.stringify(cards) === JSON.stringify(sorted), cards.map(c => c.join(' '))];")
            .await;
        let order: Vec<String> = serde_json::from_value(v[1].clone()).unwrap();
        assert_eq!(v[0], json!(true), "cards not worst first: {order:?}");
        order
    }

    /// What a card offers and says: its status, its Retry/Refresh and Re-authenticate
    /// buttons (`null` when not offered; else `[text, accessible name, primary]`), its
    /// next-attempt fact (`null` when not shown; else `[label, text, title]`), its token.
    async fn card_ui(&self, name: &str) -> Value {
        self.js(&format!(
            "const li = document.querySelector('li[data-workload=\"{name}\"]'); const b = a => {{ const e = li.querySelector(`[data-action=\"${{a}}\"]`); return e.hidden ? null : [e.textContent, e.getAttribute('aria-label'), e.classList.contains('primary')]; }}; const f = li.querySelector('.f-next'); return {{status: li.dataset.status, retry: b('retry'), reauth: b('reauth'), next: f.hidden ? null : [f.querySelector('dt').textContent, f.querySelector('.rel').textContent, f.querySelector('.countdown').title], token: li.querySelector('.token').textContent}};"
        ))
        .await
    }

    /// Wait until `name`'s status is `status` AND every card is in its place.
    async fn wait_placed(&self, name: &str, status: &str, timeout: Duration) -> Vec<String> {
        self.wait_status(name, status, timeout).await;
        self.assert_sorted().await
    }
}

/// A healthy card: "Refresh now" (no Re-authenticate), its next refresh relative with
/// the absolute time in the tooltip, its token valid until a time.
fn assert_running_card(name: &str, ui: &Value) {
    assert_eq!(
        ui["retry"],
        json!(["Refresh now", format!("Refresh now ({name})"), false]),
        "{ui}"
    );
    assert_eq!(
        ui["reauth"],
        Value::Null,
        "a healthy card: no sign-in: {ui}"
    );
    let next = &ui["next"];
    assert_eq!(next[0], "Next refresh", "{ui}");
    let rel = next[1].as_str().unwrap_or("");
    assert!(rel.starts_with("in ") || rel == "now", "relative: {ui}");
    assert!(
        next[2].as_str().unwrap_or("").starts_with("at "),
        "the absolute time in the title: {ui}"
    );
    assert!(
        ui["token"]
            .as_str()
            .unwrap_or("")
            .starts_with("valid until"),
        "{ui}"
    );
}

/// A card that needs a sign-in: Re-authenticate (the primary action), nothing to
/// retry, no next attempt, and no "valid until" for a token that is not served.
fn assert_unauthenticated_card(name: &str, ui: &Value) {
    assert_eq!(ui["status"], "unauthenticated", "{ui}");
    assert_eq!(ui["retry"], Value::Null, "no Retry now: {ui}");
    assert_eq!(
        ui["reauth"],
        json!(["Re-authenticate", format!("Re-authenticate ({name})"), true]),
        "{ui}"
    );
    assert_eq!(ui["next"], Value::Null, "{ui}");
    assert!(
        !ui["token"].as_str().unwrap_or("").contains("valid until"),
        "a token that is not served has no 'valid until': {ui}"
    );
}

/// The demo in light and dark: cards worst first and kept so as states change, only
/// the actions that apply to each state, "Next refresh" on a healthy card, every
/// control named with its workload, the summary announced only when its words change,
/// the focus kept on a control whose card moves, and axe-core finding nothing serious
/// or critical in any of these states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_puts_the_worst_first_offers_what_applies_and_passes_axe() {
    let Some(display) = gate("window_worst_first_and_axe") else {
        return;
    };
    let _serial = serial();
    let log = log_dir(&format!("desktop-a11y-{}", std::process::id()));
    let _recorder = Recorder::start(&log);
    let config = tempfile::tempdir().unwrap();
    let mut app = open_app(&display, config.path(), &log, &[], &["demo"]).await;
    let wd = app.wd.as_ref().unwrap();
    for name in tokenwarden::demo::WORKLOADS {
        wd.wait_status(name, "running", Duration::from_secs(30))
            .await;
    }
    assert_eq!(
        wd.assert_sorted().await,
        [
            "github-mcp running",
            "jira-mcp running",
            "notion-api running"
        ]
    );
    for name in tokenwarden::demo::WORKLOADS {
        assert_running_card(name, &wd.card_ui(name).await);
    }
    // Every control of a card names its workload, after the words it shows.
    let unnamed = wd
        .js("return [...document.querySelectorAll('#workloads > li')].flatMap(li => [...li.querySelectorAll('button, summary, input')].filter(e => e.getClientRects().length).map(e => [li.dataset.workload, e.getAttribute('aria-label') || e.textContent.trim(), e.tagName === 'INPUT' ? '' : e.textContent.trim()])).filter(([w, name, shown]) => !name.includes(w) || !name.startsWith(shown));")
        .await;
    assert_eq!(unnamed, json!([]), "controls not named with their workload");
    wd.axe("the demo, light, all running").await;

    // A refresh changes no words of the summary: the live region is not written (a
    // screen reader would announce it again).
    let summary = wd
        .js("window.summaryWrites = 0; new MutationObserver(ms => { window.summaryWrites += ms.length; }).observe(document.querySelector('#summary'), {childList: true, characterData: true, subtree: true}); return document.querySelector('#summary').textContent;")
        .await;
    assert_eq!(summary, json!("All 3 workloads running."));
    let newest = "(document.querySelector('li[data-workload=\"jira-mcp\"] .timeline li time') || {}).dateTime || ''";
    let before = wd.js(&format!("return {newest};")).await;
    wd.click("li[data-workload=\"jira-mcp\"] [data-action=\"retry\"]")
        .await;
    wd.wait(
        "jira-mcp's refresh in its timeline",
        &format!("{newest} !== {before}"),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        wd.js("return window.summaryWrites;").await,
        json!(0),
        "the summary was rewritten with the same words"
    );

    // WAF: notion-api (last by name) fails its refresh and goes retrying: its card
    // moves to the top, offers "Retry now", not a sign-in; the focus stays on its button.
    wd.click("#demo-waf").await;
    wd.click("li[data-workload=\"notion-api\"] [data-action=\"retry\"]")
        .await;
    let focused = "document.activeElement === document.querySelector('li[data-workload=\"notion-api\"] [data-action=\"retry\"]')";
    assert_eq!(wd.js(&format!("return {focused};")).await, json!(true));
    let order = wd
        .wait_placed("notion-api", "retrying", Duration::from_secs(60))
        .await;
    // (github-mcp and jira-mcp may go retrying too on their own next refresh; until
    // they do, notion-api sits above them.)
    eprintln!("order with notion-api retrying: {order:?}");
    let ui = wd.card_ui("notion-api").await;
    assert_eq!(
        ui["retry"],
        json!(["Retry now", "Retry now (notion-api)", true]),
        "{ui}"
    );
    assert_eq!(ui["reauth"], Value::Null, "{ui}");
    assert_eq!(ui["next"][0], "Next attempt", "{ui}");
    assert_eq!(
        wd.js(&format!("return {focused};")).await,
        json!(true),
        "the focus stayed on notion-api's button as its card moved"
    );
    assert!(
        wd.js("return window.summaryWrites;").await != json!(0),
        "a changed summary is written"
    );
    wd.axe("the demo, light, one retrying").await;
    // Healed, every card is running again and back in name order.
    wd.click("#demo-heal").await;
    for name in tokenwarden::demo::WORKLOADS {
        wd.wait_status(name, "running", Duration::from_secs(60))
            .await;
    }
    assert_eq!(
        wd.assert_sorted().await,
        [
            "github-mcp running",
            "jira-mcp running",
            "notion-api running"
        ]
    );

    // Revoked: jira-mcp needs a sign-in: first, Re-authenticate only, no token time.
    wd.click("#demo-revoke").await;
    wd.click("li[data-workload=\"jira-mcp\"] [data-action=\"retry\"]")
        .await;
    let order = wd
        .wait_placed("jira-mcp", "unauthenticated", Duration::from_secs(30))
        .await;
    eprintln!("order with jira-mcp unauthenticated: {order:?}");
    assert_unauthenticated_card("jira-mcp", &wd.card_ui("jira-mcp").await);
    wd.axe("the demo, light, one unauthenticated").await;
    if let Some(wd) = app.wd.take() {
        wd.end().await;
    }
    drop(app);

    // Dark: the same checks of axe with a card in each of the three states.
    let config = tempfile::tempdir().unwrap();
    let mut app = open_app(
        &display,
        config.path(),
        &log,
        &[("GTK_THEME", "Adwaita:dark".to_string())],
        &["demo"],
    )
    .await;
    let wd = app.wd.as_ref().unwrap();
    for name in tokenwarden::demo::WORKLOADS {
        wd.wait_status(name, "running", Duration::from_secs(30))
            .await;
    }
    assert_eq!(
        wd.js("return matchMedia('(prefers-color-scheme: dark)').matches;")
            .await,
        json!(true)
    );
    wd.axe("the demo, dark, all running").await;
    wd.click("#demo-revoke").await;
    wd.click("li[data-workload=\"notion-api\"] [data-action=\"retry\"]")
        .await;
    wd.wait_placed("notion-api", "unauthenticated", Duration::from_secs(30))
        .await;
    wd.click("#demo-waf").await;
    wd.click("li[data-workload=\"jira-mcp\"] [data-action=\"retry\"]")
        .await;
    wd.wait_placed("jira-mcp", "retrying", Duration::from_secs(60))
        .await;
    wd.axe("the demo, dark, unauthenticated and retrying").await;
    wd.screenshot("worst-first-dark").await;
    if let Some(wd) = app.wd.take() {
        wd.end().await;
    }
}

impl Wd {
    /// Every visible button's and text field's border against what it is drawn on
    /// (the nearest opaque background behind it): `[what, ratio]` of those under 3:1
    /// (WCAG 1.4.11), which axe-core does not check.
    async fn faint_control_borders(&self) -> Value {
        self.js("const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number); const lum = ([r, g, b]) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); }; const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); }; const behind = e => { for (let p = e.parentElement; p; p = p.parentElement) { const c = rgb(getComputedStyle(p).backgroundColor); if (c.length === 3 || c[3] > 0) return c.slice(0, 3); } return [255, 255, 255]; }; return [...document.querySelectorAll('button, input[type=url], input:not([type]), input.local-url')].filter(e => e.getClientRects().length && !e.disabled && getComputedStyle(e).borderStyle !== 'none' && parseFloat(getComputedStyle(e).borderTopWidth) > 0).map(e => [(e.closest('li[data-workload]') ? e.closest('li[data-workload]').dataset.workload + ' ' : '') + (e.dataset.action || e.id || e.name || e.className || e.tagName), Math.round(ratio(rgb(getComputedStyle(e).borderTopColor).slice(0, 3), behind(e)) * 100) / 100]).filter(([, r]) => r < 3);")
            .await
    }

    /// Click a card's Remove twice (it asks for a confirmation) and wait for the card
    /// to go.
    async fn remove_card(&self, name: &str) {
        let b = format!("li[data-workload=\"{name}\"] [data-action=\"remove\"]");
        self.click(&b).await;
        self.click(&b).await;
        self.wait(
            &format!("{name}'s card to go"),
            &format!("!document.querySelector('li[data-workload=\"{name}\"]')"),
            Duration::from_secs(10),
        )
        .await;
    }

    /// What has the focus: `NAME heading`, `NAME ACTION`, or an id / tag outside cards.
    async fn focused(&self) -> String {
        self.js("const e = document.activeElement; const li = e.closest('li[data-workload]'); return li ? li.dataset.workload + ' ' + (e.classList.contains('name') ? 'heading' : (e.dataset.action || e.className)) : (e.id || (e.tagName === 'SUMMARY' ? e.parentElement.id + ' summary' : e.tagName));")
            .await
            .as_str()
            .unwrap_or("?")
            .to_string()
    }
}

/// The user's own workloads: a stopped card offers neither a retry nor a sign-in and
/// sits last, moving up once enabled; an add by URL keeps its discovery progress on
/// screen with the submit button busy, the new card takes the focus (and keeps it as
/// it moves when signed in); Remove hands the focus to the next card, the previous one,
/// then "Add a server". Borders of controls are 3:1 and axe-core finds nothing serious
/// or critical, in light and in dark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_cards_the_add_progress_and_the_focus_after_add_and_remove() {
    let Some(display) = gate("window_add_progress_and_focus") else {
        return;
    };
    let _serial = serial();
    let log = log_dir(&format!("desktop-focus-{}", std::process::id()));
    let _recorder = Recorder::start(&log);
    for scheme in ["light", "dark"] {
        user_window(&display, &log, scheme).await;
    }
}

async fn user_window(display: &str, log: &Path, scheme: &str) {
    let issuer = ledger_issuer().await;
    let remote = tokenwarden_sim::remote::SimRemote::start(
        issuer.clone(),
        tokenwarden_sim::remote::RemoteOptions::default(),
    )
    .await
    .unwrap();
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("workloads.toml");
    let workload = |name: &str| {
        format!(
            "\n[[workload]]\nname = \"{name}\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\n",
            issuer.authorization_endpoint(),
            issuer.token_endpoint(),
            issuer.client_id()
        )
    };
    let enabled = format!(
        "[secrets]\nstore = \"file\"\n{}{}",
        workload("api"),
        workload("web")
    );
    std::fs::write(
        &file,
        enabled.replacen("name = \"api\"\n", "name = \"api\"\nenabled = false\n", 1),
    )
    .unwrap();
    let browser = root().join("tests/desktop/browser.sh");
    let home = tempfile::tempdir().unwrap();
    let theme = if scheme == "dark" {
        "Adwaita:dark"
    } else {
        "Adwaita"
    };
    let mut app = open_app(
        display,
        config.path(),
        log,
        &[
            ("TOKENWARDEN_BROWSER", browser.display().to_string()),
            ("HOME", home.path().display().to_string()),
            (
                "XDG_CONFIG_HOME",
                home.path().join("config").display().to_string(),
            ),
            ("GTK_THEME", theme.to_string()),
        ],
        &[],
    )
    .await;
    let wd = app.wd.as_ref().unwrap();
    assert_eq!(
        wd.js("return matchMedia('(prefers-color-scheme: dark)').matches;")
            .await,
        json!(scheme == "dark")
    );
    wd.wait_status("api", "stopped", Duration::from_secs(20))
        .await;
    let order = wd
        .wait_placed("web", "unauthenticated", Duration::from_secs(20))
        .await;
    assert_eq!(order, ["web unauthenticated", "api stopped"]);
    let stopped = wd.card_ui("api").await;
    assert_eq!(
        [&stopped["retry"], &stopped["reauth"], &stopped["next"]],
        [&Value::Null, &Value::Null, &Value::Null],
        "a stopped card offers no retry and no sign-in: {stopped}"
    );
    assert!(
        !stopped["token"]
            .as_str()
            .unwrap_or("")
            .contains("valid until"),
        "{stopped}"
    );
    assert_unauthenticated_card("web", &wd.card_ui("web").await);
    assert_eq!(
        wd.js("return document.querySelector('#retry-all').hidden;")
            .await,
        json!(true),
        "nothing a retry can do: no Retry all now"
    );
    assert_eq!(wd.faint_control_borders().await, json!([]));
    wd.axe(&format!(
        "the user's window, {scheme}, unauthenticated and stopped"
    ))
    .await;

    // Enabled by a hand edit: api needs a sign-in now and moves above web (by name).
    std::fs::write(&file, &enabled).unwrap();
    let order = wd
        .wait_placed("api", "unauthenticated", Duration::from_secs(20))
        .await;
    assert_eq!(order, ["api unauthenticated", "web unauthenticated"]);

    // Add by URL while the remote does not answer yet: the discovery's progress stays
    // in the form and the submit button is busy until the add is through.
    remote.set_hang(true);
    wd.click("#add summary").await;
    wd.type_into("#add-form [name=url]", &remote.url()).await;
    wd.type_into("#add-form [name=name]", "mcp").await;
    wd.click("#add-form button[type=submit]").await;
    let busy = wd
        .wait(
            "the discovery's progress with the submit button busy",
            "(() => { const b = document.querySelector('#add-form button[type=submit]'); const p = document.querySelector('#add-progress'); return b.disabled && b.getAttribute('aria-busy') === 'true' && !p.hidden && p.textContent.includes('Discovering') && [b.textContent, p.textContent]; })()",
            Duration::from_secs(10),
        )
        .await;
    assert!(busy[1].as_str().unwrap().contains(&remote.url()), "{busy}");
    assert_eq!(wd.faint_control_borders().await, json!([]));
    wd.axe(&format!("the add form while an add runs, {scheme}"))
        .await;
    remote.set_hang(false);
    wd.wait_status("mcp", "running", Duration::from_secs(30))
        .await;
    assert_eq!(
        wd.js("const b = document.querySelector('#add-form button[type=submit]'); return [b.disabled, b.getAttribute('aria-busy'), b.textContent, document.querySelector('#add-progress').hidden, document.querySelector('#add').open];")
            .await,
        json!([false, "false", "Add and sign in", true, false])
    );
    // The new card has the focus; signed in, it moved below the two that need a
    // sign-in, and kept it.
    assert_eq!(
        wd.assert_sorted().await,
        ["api unauthenticated", "web unauthenticated", "mcp running"]
    );
    assert_eq!(wd.focused().await, "mcp heading");
    assert_running_card("mcp", &wd.card_ui("mcp").await);
    wd.axe(&format!("the user's window, {scheme}, after an add"))
        .await;

    // Remove: the focus goes to the next card, for the last one to the previous one,
    // with none left to "Add a server".
    wd.remove_card("web").await;
    assert_eq!(wd.focused().await, "mcp heading");
    wd.remove_card("mcp").await;
    assert_eq!(wd.focused().await, "api heading");
    wd.remove_card("api").await;
    assert_eq!(wd.focused().await, "empty-add");
    if let Some(wd) = app.wd.take() {
        wd.end().await;
    }
}
