//! Shared test harness: temp config dirs, the real `tokenwarden` binary, a browser
//! stand-in that follows authorization URLs, tracing to files for the secret scan,
//! and the loopback `SimIssuer` (the same one the demo embeds).
//!
//! Every log a test produces lands under `TOKENWARDEN_TEST_LOG_DIR` (when set by
//! `scripts/test.sh`), and every token the issuer hands out is appended to
//! `issued-tokens.txt` there; `scripts/scan-secrets.sh` then proves no token leaked.
#![allow(dead_code)]

pub mod gate;
pub mod inproc;
pub mod netlab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenwarden::engine::status::WorkloadStatus;
use tokenwarden::engine::Status;
#[allow(unused_imports)] // not every test binary uses every item
pub use tokenwarden_sim::issuer::{IssuerOptions, Mode, SimIssuer};

/// The policy compressed to milliseconds, as environment overrides.
pub const FAST_POLICY: &[(&str, &str)] = &[
    ("TOKENWARDEN_REFRESH_INITIAL_INTERVAL", "50ms"),
    ("TOKENWARDEN_REFRESH_MAX_INTERVAL", "200ms"),
    ("TOKENWARDEN_REFRESH_MAX_TRIES", "3"),
    ("TOKENWARDEN_REFRESH_MAX_ELAPSED", "2s"),
    ("TOKENWARDEN_RETRYING_INTERVAL", "100ms"),
    ("TOKENWARDEN_RETRYING_MAX_INTERVAL", "300ms"),
    ("TOKENWARDEN_RETRYING_CEILING", "1h"),
    ("TOKENWARDEN_REFRESH_LEAD_MIN", "100ms"),
    ("TOKENWARDEN_HTTP_TIMEOUT", "2s"),
    ("TOKENWARDEN_CONNECT_TIMEOUT", "1s"),
    ("TOKENWARDEN_WALL_CHECK_INTERVAL", "1s"),
    ("TOKENWARDEN_CONFIG_CHECK_INTERVAL", "100ms"),
];

/// The policy for in-process engines (same numbers as `FAST_POLICY`).
pub fn fast_policy() -> tokenwarden::engine::policy::Policy {
    let mut p = tokenwarden::engine::policy::Policy::default();
    let env: std::collections::HashMap<&str, &str> = FAST_POLICY.iter().copied().collect();
    p.apply_env(|k| env.get(k).map(|v| v.to_string()))
        .expect("fast policy is valid");
    p
}

/// Where this test's logs go.
pub fn log_dir(test: &str) -> PathBuf {
    let base = std::env::var_os("TOKENWARDEN_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tokenwarden-test-logs"));
    let d = base.join(test);
    std::fs::create_dir_all(&d).expect("log dir");
    d
}

/// The ledger the issuer appends issued tokens to (read by the secret scan).
pub fn ledger() -> Option<PathBuf> {
    std::env::var_os("TOKENWARDEN_TEST_LOG_DIR").map(|d| {
        let d = PathBuf::from(d);
        let _ = std::fs::create_dir_all(&d);
        d.join("issued-tokens.txt")
    })
}

/// Send this process's tracing (at `RUST_LOG`, default debug) to a file in the
/// test's log dir.
pub fn init_tracing(test: &str) {
    let file = std::fs::File::create(log_dir(test).join("in-process.log")).expect("log file");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}

pub async fn issuer(opts: IssuerOptions) -> SimIssuer {
    SimIssuer::start(IssuerOptions {
        ledger: ledger(),
        ..opts
    })
    .await
    .expect("issuer starts")
}

pub fn issuer_opts(lifetime_secs: u64) -> IssuerOptions {
    IssuerOptions {
        access_token_lifetime: Duration::from_secs(lifetime_secs),
        ..IssuerOptions::default()
    }
}

/// A `[[workload]]` block for `issuer`.
pub fn workload_toml(name: &str, issuer: &SimIssuer) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\nauthorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{}\"\nscopes = [\"read\"]\n\n",
        issuer.authorization_endpoint(),
        issuer.token_endpoint(),
        issuer.client_id()
    )
}

/// Follow an authorization URL as a signed-in user's browser would: GET it, then GET
/// the redirect (the loopback callback). Returns the callback page's status.
pub async fn browse(authorize_url: &str) -> u16 {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(authorize_url).send().await.expect("authorize");
    assert_eq!(r.status().as_u16(), 302, "issuer should redirect back");
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let cb = http.get(&loc).send().await.expect("callback");
    cb.status().as_u16()
}

/// One isolated instance: a temp config dir, its own keychain service name and logs.
pub struct TestEnv {
    pub test: String,
    pub dir: tempfile::TempDir,
    pub config_dir: PathBuf,
    pub service: String,
    pub extra_env: Vec<(String, String)>,
    children: std::sync::Mutex<Vec<Child>>,
}

impl TestEnv {
    pub fn new(test: &str) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("tw-")
            .tempdir()
            .expect("tempdir");
        let config_dir = dir.path().join("cfg");
        std::fs::create_dir_all(&config_dir).unwrap();
        TestEnv {
            test: test.to_string(),
            service: format!("tokenwarden-test-{}-{}", test, std::process::id()),
            dir,
            config_dir,
            extra_env: Vec::new(),
            children: Default::default(),
        }
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("workloads.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_file(), text).unwrap();
    }

    pub fn paths(&self) -> tokenwarden::paths::Paths {
        tokenwarden::paths::Paths::resolve(Some(self.config_dir.clone())).unwrap()
    }

    /// The binary with this env's config dir, logs, keychain service and fast policy.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(env!("CARGO_BIN_EXE_tokenwarden"), args)
    }

    /// [`Env::command`] for another of the package's programs.
    pub fn command_of(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .env("TOKENWARDEN_CONFIG_DIR", &self.config_dir)
            .env("TOKENWARDEN_LOG_DIR", log_dir(&self.test))
            .env("TOKENWARDEN_KEYRING_SERVICE", &self.service)
            .stdin(Stdio::null());
        for (k, v) in FAST_POLICY {
            c.env(k, v);
        }
        // `tokenwarden demo`'s issuer records what it issues for the secret scan.
        if let Some(l) = ledger() {
            c.env("TOKENWARDEN_DEMO_LEDGER", l);
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "debug");
        }
        c
    }

    /// Run a CLI command to completion. stdout is returned (not logged: it may hold a
    /// token); stderr is kept in the log dir and returned.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_of(env!("CARGO_BIN_EXE_tokenwarden"), args)
    }

    /// [`Env::run`] for another of the package's programs.
    pub fn run_of(&self, program: &str, args: &[&str]) -> Output {
        let id = rand::random::<u32>();
        let err_path = log_dir(&self.test).join(format!("cli-{id}.stderr"));
        let out = self
            .command_of(program, args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .output()
            .expect("run tokenwarden");
        // stdout is a log too, for the secret scan: all of it but `token`'s, whose
        // stdout is the token by design.
        if args.first() != Some(&"token") {
            let _ = std::fs::write(
                log_dir(&self.test).join(format!("cli-{id}.stdout")),
                format!(
                    "$ tokenwarden {}\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout)
                ),
            );
        }
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Start `tokenwarden daemon` and wait until its control socket answers.
    pub async fn start_daemon(&self) -> u32 {
        let err_path = log_dir(&self.test).join(format!("daemon-{}.stderr", rand::random::<u32>()));
        let mut child = self
            .command(&["daemon"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("spawn daemon");
        let pid = child.id();
        let paths = self.paths();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(mut c)) = tokenwarden::control::Client::connect(&paths).await {
                if c.call(&tokenwarden::control::Request::Ping).await.is_ok() {
                    self.children.lock().unwrap().push(child);
                    return pid;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon exited ({status}): {}", read(&err_path));
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                read(&err_path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL every daemon this env started and reap them.
    pub fn kill_daemons(&self) {
        for mut c in self.children.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM every daemon (a clean stop: in-flight refreshes finish and save).
    pub fn stop_daemons(&self) {
        for mut c in self.children.lock().unwrap().drain(..) {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> tokenwarden::control::Client {
        tokenwarden::control::Client::connect(&self.paths())
            .await
            .unwrap()
            .expect("daemon running")
    }

    pub async fn status(&self) -> Vec<WorkloadStatus> {
        let v = self
            .client()
            .await
            .call(&tokenwarden::control::Request::Status)
            .await
            .expect("status");
        serde_json::from_value(v).unwrap()
    }

    /// Wait (event-driven, through `watch`) until `name` satisfies `pred`.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&WorkloadStatus) -> bool,
    ) -> WorkloadStatus {
        let client = self.client().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(client.watch(move |ev: tokenwarden::engine::StatusChange| {
            let _ = tx.send(ev.workload);
        }));
        let name = name.to_string();
        let result = tokio::time::timeout(timeout, async {
            while let Some(w) = rx.recv().await {
                if w.name == name && pred(&w) {
                    return w;
                }
            }
            panic!("watch stream ended");
        })
        .await;
        watcher.abort();
        match result {
            Ok(w) => w,
            Err(_) => panic!(
                "timed out waiting for {name}; now: {:#?}",
                self.status().await
            ),
        }
    }

    pub async fn wait_status(
        &self,
        name: &str,
        status: Status,
        timeout: Duration,
    ) -> WorkloadStatus {
        self.wait_for(name, timeout, |w| w.status == status).await
    }

    /// Run `ARGS --no-browser --timeout 20s` (`login`, `add`) as a user would: when it
    /// prints an authorization URL, "open" it, then wait for the command to exit.
    /// `stdout` is the first line it printed.
    pub async fn run_with_browser(&self, args: &[&str]) -> Output {
        let (page, out) = self.run_following(args).await;
        if let Some(page) = page {
            assert_eq!(page, 200, "callback page");
        }
        out
    }

    /// [`TestEnv::run_with_browser`] that accepts any callback page: its status (`None`
    /// when no authorization URL was printed) and how the command ended.
    pub async fn run_following(&self, args: &[&str]) -> (Option<u16>, Output) {
        use std::io::BufRead;
        let err_path =
            log_dir(&self.test).join(format!("{}-{}.stderr", args[0], rand::random::<u32>()));
        let mut all = args.to_vec();
        all.extend_from_slice(&["--no-browser", "--timeout", "20s"]);
        let mut child = self
            .command(&all)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("spawn tokenwarden");
        let stdout = child.stdout.take().unwrap();
        let url = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            line.trim().to_string()
        })
        .await
        .unwrap();
        let _ = std::fs::write(err_path.with_extension("stdout"), format!("{url}\n"));
        let page = if url.starts_with("http") {
            Some(browse(&url).await)
        } else {
            None
        };
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let out = Output {
            code: status.code(),
            stdout: url,
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        };
        (page, out)
    }

    /// `login NAME --no-browser` as a user would (see [`TestEnv::run_with_browser`]).
    pub async fn login(&self, name: &str) -> Output {
        let out = self.run_with_browser(&["login", name]).await;
        assert!(
            out.stdout.starts_with("http")
                && out
                    .stdout
                    .contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
            "login printed {:?}",
            out.stdout
        );
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill_daemons();
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

pub fn file_store_header() -> String {
    "[secrets]\nstore = \"file\"\n\n".to_string()
}

/// Read a file to string, or empty.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The window program, built next to `tokenwarden` by `cargo build --workspace`
/// (`scripts/test.sh` builds it before the tests: it is another package's binary).
pub fn window_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(env!("CARGO_BIN_EXE_tokenwarden")).with_file_name("tokenwarden-window");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build --workspace --bins)",
            bin.display()
        );
        bin.to_string_lossy().into_owned()
    })
}
