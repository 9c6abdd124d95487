//! `tokenwarden-window`: the Tauri app that is Tokenwarden's window, started by the
//! tray app (`tokenwarden`) when the window opens; it ends when the window is closed or
//! the app quits. The only program that links the web view (WebKitGTK on Linux).
//!
//! It holds nothing but the web view: each command the page invokes is forwarded, as
//! the page passed it, to the app over the control socket (`commands::dispatch` runs
//! it there), and each event the app sends is emitted to the page. The commands keep
//! their names, so `capabilities/default.json` grants exactly the same set (a unit
//! test in `desktop/commands.rs` checks the four lists agree).

use clap::Parser;
use serde_json::{json, Value};
use std::path::PathBuf;
use tauri::{AppHandle, Emitter, Manager, State, WebviewUrl, WebviewWindowBuilder};
use tokenwarden::control::{Client, RemoteError, Request};
use tokenwarden::desktop::commands::CmdError;
use tokenwarden::desktop::FOCUS;
use tokenwarden::paths::Paths;

/// Label of the one window.
const MAIN_WINDOW: &str = "main";

/// The window of the Tokenwarden app that runs for a config dir (started by it).
#[derive(Parser)]
#[command(name = "tokenwarden-window", version)]
struct Args {
    /// The config dir whose control socket the app serves.
    #[arg(long, env = "TOKENWARDEN_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Still one thread: the environment for WebKitGTK goes in now (the app set the same
    // for the process it started; this is for a window started by hand).
    tokenwarden::desktop::memory::prepare_env();
    tokenwarden::logging::init_cli();
    let run = || -> anyhow::Result<()> {
        let control = Paths::resolve(args.config_dir)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(window(control))
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenwarden-window: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Where the commands go: the control socket of the app that started this process.
struct Link(Paths);

impl Link {
    async fn call(&self, name: &str, args: Value) -> Result<Value, CmdError> {
        let control = &self.0;
        let gone = |why: String| {
            CmdError::new(
                "app_gone",
                format!("Tokenwarden is not running any more ({why}). Start it again."),
            )
        };
        let mut client = Client::connect(control)
            .await
            .map_err(|e| gone(format!("{e:#}")))?
            .ok_or_else(|| gone("its control socket is gone".into()))?;
        let req = Request::Ui {
            name: name.to_string(),
            args,
        };
        match client.call(&req).await {
            Ok(v) => Ok(v),
            Err(e) => match e.downcast::<RemoteError>() {
                Ok(r) => Err(CmdError {
                    code: r.code,
                    message: r.message,
                    field: r.field,
                }),
                Err(e) => Err(gone(format!("{e:#}"))),
            },
        }
    }
}

type L<'a> = State<'a, Link>;

#[tauri::command]
async fn app_info(link: L<'_>) -> Result<Value, CmdError> {
    link.call("app_info", json!({})).await
}

#[tauri::command]
async fn list_status(link: L<'_>) -> Result<Value, CmdError> {
    link.call("list_status", json!({})).await
}

#[tauri::command]
async fn retry(link: L<'_>, name: Option<String>) -> Result<Value, CmdError> {
    link.call("retry", json!({ "name": name })).await
}

#[tauri::command]
async fn reauthenticate(link: L<'_>, name: String) -> Result<Value, CmdError> {
    link.call("reauthenticate", json!({ "name": name })).await
}

#[tauri::command]
async fn remove_workload(link: L<'_>, name: String) -> Result<Value, CmdError> {
    link.call("remove_workload", json!({ "name": name })).await
}

#[tauri::command]
async fn add_workload(link: L<'_>, form: Value) -> Result<Value, CmdError> {
    link.call("add_workload", json!({ "form": form })).await
}

#[tauri::command]
async fn demo_control(link: L<'_>, action: String) -> Result<Value, CmdError> {
    link.call("demo_control", json!({ "action": action })).await
}

#[tauri::command]
async fn set_notifications(link: L<'_>, name: String, enabled: bool) -> Result<Value, CmdError> {
    link.call(
        "set_notifications",
        json!({ "name": name, "enabled": enabled }),
    )
    .await
}

#[tauri::command]
async fn set_autostart(link: L<'_>, enabled: bool) -> Result<Value, CmdError> {
    link.call("set_autostart", json!({ "enabled": enabled }))
        .await
}

#[tauri::command]
async fn start_demo(link: L<'_>) -> Result<Value, CmdError> {
    link.call("start_demo", json!({})).await
}

#[tauri::command]
async fn client_connections(link: L<'_>, name: String) -> Result<Value, CmdError> {
    link.call("client_connections", json!({ "name": name }))
        .await
}

#[tauri::command]
async fn connect_client(
    link: L<'_>,
    name: String,
    client: String,
    connect: bool,
) -> Result<Value, CmdError> {
    link.call(
        "connect_client",
        json!({ "name": name, "client": client, "connect": connect }),
    )
    .await
}

/// The window over the app serving `control`'s socket.
async fn window(control: Paths) -> anyhow::Result<()> {
    let mut events = Client::connect(&control).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "Tokenwarden is not running for {} (the window is opened by the app: start `tokenwarden`)",
            control.config_dir.display()
        )
    })?;
    // Subscribed before the page asks for the list: no change can fall in between.
    events.start_ui_events().await?;
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(move || run(control, events, rt))
}

fn run(control: Paths, events: Client, rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    if let Err(e) = gtk::init() {
        anyhow::bail!("the display cannot be opened: {e}");
    }
    tauri::async_runtime::set(rt);
    let app = tauri::Builder::default()
        .manage(Link(control))
        .invoke_handler(tauri::generate_handler![
            app_info,
            list_status,
            retry,
            reauthenticate,
            remove_workload,
            add_workload,
            demo_control,
            set_notifications,
            set_autostart,
            start_demo,
            client_connections,
            connect_client,
        ])
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
                link.call("window_closing", json!({ "pid": std::process::id() })),
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
            Ok(ev) if ev.event == FOCUS => focus(&app),
            Ok(ev) => {
                let _ = app.emit(&ev.event, ev.payload);
            }
            Err(e) => {
                tracing::info!(error = %format!("{e:#}"), "the app closed the window's connection");
                app.exit(0);
                return;
            }
        }
    }
}
