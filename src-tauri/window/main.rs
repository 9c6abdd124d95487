//! `tokenwarden-window`: the Tauri app that is Tokenwarden's window, started by the
//! tray app (`tokenwarden`) when the window opens; it ends when the window is closed or
//! the app quits. The only program that links the web view (WebKitGTK on Linux).
//!
//! It holds nothing but the web view and knows nothing of Tokenwarden but its control
//! protocol ([`tokenwarden_protocol`]): each command the page invokes becomes a
//! [`UiCommand`] (an unknown name or wrong arguments are refused here) and is sent to
//! the app over the control socket (`commands::dispatch` runs it there), and each event
//! the app sends is emitted to the page. Which commands the page may invoke at all is
//! `capabilities/default.json` (tauri checks it before the handler); a test below checks
//! it and `build.rs` against [`UiCommand::NAMES`].
//!
//! An app of another protocol version refuses the hello: this program then exits with
//! [`EXIT_VERSION_MISMATCH`] (the app tells the user to restart it).

use clap::Parser;
use serde_json::Value;
use std::path::PathBuf;
use tauri::{AppHandle, Emitter, Manager, WebviewUrl, WebviewWindowBuilder};
use tokenwarden_protocol::{
    Client, Error, ErrorCode, Request, UiCommand, UiEventKind, EXIT_VERSION_MISMATCH,
};

/// Label of the one window.
const MAIN_WINDOW: &str = "main";

/// The window of the Tokenwarden app that runs for a config dir (started by it).
#[derive(Parser)]
#[command(name = "tokenwarden-window", version)]
struct Args {
    /// The config dir whose control socket the app serves (the app passes its own).
    #[arg(long, env = "TOKENWARDEN_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
}

/// Warnings and errors on stderr unless `RUST_LOG` says more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Still one thread: the environment for WebKitGTK goes in now (the app set the same
    // for the process it started; this is for a window started by hand).
    tokenwarden_protocol::webview::prepare_env();
    init_logging();
    let run = || -> Result<(), Failure> {
        let dir = args.config_dir.ok_or_else(|| {
            anyhow::anyhow!("no config dir: the window is started by the Tokenwarden app, which passes --config-dir")
        })?;
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?;
        rt.block_on(window(dir))
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure::Protocol(e)) if e.code == ErrorCode::VersionMismatch => {
            eprintln!("tokenwarden-window: {e}");
            std::process::ExitCode::from(EXIT_VERSION_MISMATCH)
        }
        Err(e) => {
            eprintln!("tokenwarden-window: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Why the window could not run.
#[derive(Debug)]
enum Failure {
    /// The app refused or could not be reached.
    Protocol(Error),
    Other(anyhow::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Protocol(e) => write!(f, "{e}"),
            Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Protocol(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Where the commands go: the control socket of the app that started this process
/// (its config dir).
#[derive(Clone)]
struct Link(std::sync::Arc<PathBuf>);

impl Link {
    async fn call(&self, req: &Request) -> Result<Value, Error> {
        let gone = |why: String| {
            Error::new(
                ErrorCode::AppGone,
                format!("Tokenwarden is not running any more ({why}). Start it again."),
            )
        };
        let mut client = match Client::connect(&*self.0).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(gone("its control socket is gone".into())),
            Err(e) if e.code == ErrorCode::Unreachable => return Err(gone(e.message)),
            Err(e) => return Err(e),
        };
        client.call(req).await.map_err(|e| match e.code {
            ErrorCode::Unreachable => gone(e.message),
            _ => e,
        })
    }
}

/// The page's `invoke(name, args)`: after tauri's capability check, as a [`UiCommand`]
/// to the app; the answer, or the error `{code, message, field}`, back to the page.
fn invoke(invoke: tauri::ipc::Invoke) -> bool {
    let link = invoke.message.webview_ref().state::<Link>().inner().clone();
    let args = match invoke.message.payload() {
        tauri::ipc::InvokeBody::Json(v) => Ok(v.clone()),
        tauri::ipc::InvokeBody::Raw(_) => Err(Error::new(
            ErrorCode::BadRequest,
            "the arguments must be a JSON object",
        )),
    };
    let cmd = args.and_then(|a| UiCommand::from_invoke(invoke.message.command(), a));
    invoke.resolver.respond_async(async move {
        let cmd = cmd.map_err(tauri::ipc::InvokeError::from)?;
        link.call(&Request::Ui(cmd))
            .await
            .map_err(tauri::ipc::InvokeError::from)
    });
    true
}

/// The window over the app serving `dir`'s socket.
async fn window(dir: PathBuf) -> Result<(), Failure> {
    let mut events = Client::connect(&dir).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "Tokenwarden is not running for {} (the window is opened by the app: start `tokenwarden`)",
            dir.display()
        )
    })?;
    // Subscribed before the page asks for the list: no change can fall in between.
    events.start_ui_events().await?;
    let rt = tokio::runtime::Handle::current();
    Ok(tokio::task::block_in_place(move || {
        run_window(dir, events, rt)
    })?)
}

fn run_window(dir: PathBuf, events: Client, rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    if let Err(e) = gtk::init() {
        anyhow::bail!("the display cannot be opened: {e}");
    }
    tauri::async_runtime::set(rt);
    let app = tauri::Builder::default()
        .manage(Link(std::sync::Arc::new(dir)))
        .invoke_handler(invoke)
        .setup(move |app| {
            let handle = app.handle().clone();
            build(&handle)?;
            tauri::async_runtime::spawn(pump(events, handle));
            Ok(())
        })
        .build(tauri::generate_context!("../../tauri.conf.json"))?;
    // Closing the window ends the process (the default once no window is left). The
    // app hears of it first, so that "Open Tokenwarden" from now on starts a new window
    // instead of asking this one to the front.
    app.run_return(|app, event| {
        if let tauri::RunEvent::WindowEvent {
            event: tauri::WindowEvent::Destroyed,
            ..
        } = event
        {
            let link = app.state::<Link>();
            let told = tauri::async_runtime::block_on(tokio::time::timeout(
                std::time::Duration::from_secs(1),
                link.call(&Request::WindowClosing {
                    pid: std::process::id(),
                }),
            ));
            if !matches!(told, Ok(Ok(_))) {
                tracing::debug!("could not tell the app the window closed");
            }
        }
    });
    Ok(())
}

fn build(app: &AppHandle) -> tauri::Result<tauri::WebviewWindow> {
    WebviewWindowBuilder::new(app, MAIN_WINDOW, WebviewUrl::App("index.html".into()))
        .title("Tokenwarden")
        .inner_size(560.0, 780.0)
        .min_inner_size(360.0, 400.0)
        .build()
}

fn focus(app: &AppHandle) {
    let h = app.clone();
    let _ = app.run_on_main_thread(move || {
        if let Some(w) = h.get_webview_window(MAIN_WINDOW) {
            let _ = w.unminimize();
            let _ = w.show();
            let _ = w.set_focus();
        }
    });
}

/// Emit the app's events to the page until the app closes the connection (it quit),
/// then end this process too.
async fn pump(mut events: Client, app: AppHandle) {
    loop {
        match events.next_ui_event().await {
            Ok(ev) if ev.event == UiEventKind::Focus => focus(&app),
            Ok(ev) => {
                let _ = app.emit(ev.event.as_str(), ev.payload);
            }
            Err(e) => {
                tracing::info!(error = %e, "the app closed the window's connection");
                app.exit(0);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokenwarden_protocol::{UiCommand, UiEventKind};

    /// The page listens for every event the app sends it (all but `Focus`, which this
    /// program handles), by the same name.
    #[test]
    fn the_page_listens_for_every_event() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let page = std::fs::read_to_string(root.join("../../ui/app.js")).unwrap();
        use UiEventKind::*;
        for e in [
            Status,
            StatusAll,
            Row,
            Removed,
            Demo,
            Login,
            Error,
            ConfigError,
            Lagged,
        ] {
            let listen = format!("listen(\"{}\"", e.as_str());
            assert!(page.contains(&listen), "the page does not {listen}");
        }
    }

    /// `build.rs` gives each command an `allow-<name>` permission, and the capability
    /// grants exactly those to the window: both list [`UiCommand::NAMES`] (the app's
    /// `dispatch` matches the enum, so the compiler holds it to the same list).
    #[test]
    fn build_rs_and_the_capability_list_the_commands() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        let build = read("build.rs");
        let list = build
            .split("const COMMANDS: &[&str] = &[")
            .nth(1)
            .and_then(|r| r.split("];").next())
            .expect("COMMANDS in build.rs");
        let commands: Vec<&str> = list
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(commands, UiCommand::NAMES, "build.rs lists the commands");
        let caps: serde_json::Value =
            serde_json::from_str(&read("capabilities/default.json")).unwrap();
        let granted: Vec<String> = caps["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str()?.strip_prefix("allow-").map(str::to_string))
            .collect();
        let want: Vec<String> = UiCommand::NAMES
            .iter()
            .map(|c| c.replace('_', "-"))
            .collect();
        assert_eq!(
            granted, want,
            "capabilities/default.json grants exactly the commands"
        );
    }
}
