//! The window's own process (`tokenwarden window`, started by the app when the window
//! opens; it ends when the window is closed or the app quits).
//!
//! It holds nothing but the web view: each command the page invokes is forwarded, as
//! the page passed it, to the app over the control socket (`commands::dispatch` runs
//! it there), and each event the app sends is emitted to the page. The commands keep
//! their names, so `capabilities/default.json` grants exactly the same set.
//!
//! Where there is no control socket (Windows, for now), or with
//! `TOKENWARDEN_WINDOW_IN_PROCESS=1`, the window is made in the app's own process
//! instead ([`in_process`]): the same commands call `commands::dispatch` directly and
//! the same events come from the shell's channel. Closing it then keeps WebKit's
//! libraries and their memory in the app.

use super::commands::CmdError;
use super::{Shell, MAIN_WINDOW};
use crate::control::{Client, RemoteError, Request};
use crate::paths::Paths;
use serde_json::{json, Value};
use std::sync::Arc;
use tauri::{AppHandle, Emitter, Manager, State, WebviewUrl, WebviewWindowBuilder};

/// The app's event that brings the window to the front (not passed to the page).
pub const FOCUS: &str = "tokenwarden:focus";

/// Does the window live in the app's own process (no control socket here, or asked
/// for with `TOKENWARDEN_WINDOW_IN_PROCESS`)?
pub fn in_process() -> bool {
    !cfg!(unix) || std::env::var_os("TOKENWARDEN_WINDOW_IN_PROCESS").is_some_and(|v| v == "1")
}

/// Where the commands go.
pub enum Link {
    /// The control socket of the app that started this window's process.
    Socket(Paths),
    /// The shell itself (the window in the app's process).
    Local(Arc<Shell>),
}

impl Link {
    async fn call(&self, name: &str, args: Value) -> Result<Value, CmdError> {
        let control = match self {
            Link::Local(shell) => {
                return super::commands::dispatch(shell.clone(), name, args).await
            }
            Link::Socket(control) => control,
        };
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

/// `tokenwarden window`: the window over the app serving `control`'s socket.
pub async fn main(control: Paths) -> anyhow::Result<()> {
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
    if !super::wait_for_display() {
        anyhow::bail!("the display cannot be opened");
    }
    tauri::async_runtime::set(rt);
    let app = with_commands(tauri::Builder::default(), Link::Socket(control))
        .setup(move |app| {
            let handle = app.handle().clone();
            build(&handle)?;
            tauri::async_runtime::spawn(pump(events, handle));
            Ok(())
        })
        .build(tauri::generate_context!())?;
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

/// The window's commands, over `link`.
pub fn with_commands(
    builder: tauri::Builder<tauri::Wry>,
    link: Link,
) -> tauri::Builder<tauri::Wry> {
    builder
        .manage(link)
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
        ])
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

/// The window in the app's own process: focus it, or make it (on the main thread).
pub fn show_in_process(app: &AppHandle) {
    let h = app.clone();
    let _ = app.run_on_main_thread(move || {
        if h.get_webview_window(MAIN_WINDOW).is_some() {
            focus(&h);
        } else if let Err(e) = build(&h) {
            tracing::error!(error = %e, "cannot open the window");
        }
    });
}

/// The window in the app's own process: the shell's events to the page.
pub async fn pump_in_process(shell: Arc<Shell>, app: AppHandle) {
    let mut rx = shell.events.subscribe();
    loop {
        match rx.recv().await {
            Ok(ev) if ev.event == FOCUS => focus(&app),
            Ok(ev) => {
                let _ = app.emit(&ev.event, ev.payload);
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                let _ = app.emit("lagged", ());
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
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
