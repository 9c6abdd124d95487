//! The control protocol: how the CLI, scripts and the window (`tokenwarden-window`)
//! talk to the running Tokenwarden (the daemon or the desktop app) over its local
//! socket. Self-contained (std, serde, serde_json, tokio, thiserror): the window's
//! program needs nothing else of Tokenwarden (but [`webview`], the environment its
//! web view starts with).
//!
//! **Transport** ([`local`]): one local connection per client, same user only: on Unix
//! the socket `<config-dir>/run/control.sock` (0600 in a 0700 dir, and the peer's uid
//! checked); on Windows a named pipe named after the config dir (see [`local`]).
//!
//! **Framing**: one JSON object per line each way, a request at most [`MAX_LINE`] bytes.
//!
//! **Hello**: the first line a client sends is [`Request::Hello`] with its
//! [`PROTOCOL_VERSION`]; the server answers `{"ok":{"version":N,"server":".."}}` when
//! the versions are equal, else `{"error":{"code":"version_mismatch",..}}` naming both
//! versions, and closes the connection. A first line that is not a hello (a client from
//! before versions were sent) gets the same error. [`Client::connect`] does the hello.
//!
//! **Requests** ([`Request`], tagged by `cmd`) and their answers ([`Reply`]):
//! `{"cmd":"status"}` → `{"ok":[...]}` or `{"error":{"code":..,"message":..}}` ([`Error`],
//! whose [`ErrorCode`] is what callers match on, never the message). `{"cmd":"watch"}`
//! turns the connection into a stream of `{"event":..}` lines (the engine's status
//! changes). The desktop app also serves its window: `{"cmd":"ui","name":..,"args":{..}}`
//! runs one of the window's commands ([`UiCommand`]: the page's `invoke(name, args)`),
//! `{"cmd":"ui_events"}` streams the window's events (`{"ui":{"event":..,"payload":..}}`).
//! A daemon, which has no window, answers those with `no_window`.

pub mod local;
pub mod webview;

pub use local::Client;

use serde::{Deserialize, Serialize};

/// The version of this protocol. Raise it with every change of a request, a reply, a
/// command's arguments or an error code: a client and a server of different versions
/// refuse each other at the hello, naming both versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line a server accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// The window's exit status when the app it was started by speaks another protocol
/// version (the app was updated, or went back, since it started): the app then tells
/// the user to restart it.
pub const EXIT_VERSION_MISMATCH: u8 = 3;

/// A request to the running Tokenwarden.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The first line of every connection: the client's protocol version.
    Hello {
        version: u32,
        /// Who asks (a program name), for the server's error message and log.
        #[serde(default)]
        client: String,
    },
    Ping,
    Status,
    /// "Retry now": one workload, or all when `name` is null.
    Retry {
        name: Option<String>,
    },
    /// A valid access token (joins the single-flight refresh).
    Token {
        name: String,
    },
    /// Log a workload out: the engine stops using its tokens and deletes them (a
    /// refresh in flight cannot save them again).
    Logout {
        name: String,
    },
    /// Re-read workloads.toml (if `config`) and the stored tokens of `names`.
    Reload {
        #[serde(default)]
        config: bool,
        #[serde(default)]
        names: Vec<String>,
    },
    /// Stream status changes.
    Watch,
    /// One of the window's commands, run by the desktop app (refused by a daemon).
    Ui(UiCommand),
    /// Stream the window's events ([`Reply::Ui`]).
    UiEvents,
    /// A second launch of the desktop app asks the first to show its window (nothing
    /// when `hidden`: it was started for the tray only).
    ShowWindow {
        #[serde(default)]
        hidden: bool,
    },
    /// The window's process says its window was closed.
    WindowClosing {
        pid: u32,
    },
}

/// The commands the window's page may call, with their arguments: `invoke(name, args)`
/// in the page is `{"name": name, "args": args}` here. Each is granted by
/// `capabilities/default.json` and listed in `build.rs` (a test checks both against
/// [`UiCommand::NAMES`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "name", content = "args", rename_all = "snake_case")]
pub enum UiCommand {
    AppInfo {},
    /// The rows the window shows, in event order.
    ListStatus {},
    /// "Retry now" for one workload, or all (`name` null).
    Retry {
        name: Option<String>,
    },
    Reauthenticate {
        name: String,
    },
    RemoveWorkload {
        name: String,
    },
    AddWorkload {
        form: AddForm,
    },
    /// The demo's controls: `waf`, `down`, `revoke`, `heal`.
    DemoControl {
        action: String,
    },
    SetNotifications {
        name: String,
        enabled: bool,
    },
    SetAutostart {
        enabled: bool,
    },
    /// "Try the demo".
    StartDemo {},
    /// "Connect to…" on a card: the clients, and connecting / disconnecting one.
    ClientConnections {
        name: String,
    },
    ConnectClient {
        name: String,
        client: String,
        connect: bool,
    },
}

impl UiCommand {
    /// Every command's name, in the order `build.rs` and the capability list them.
    pub const NAMES: &'static [&'static str] = &[
        "app_info",
        "list_status",
        "retry",
        "reauthenticate",
        "remove_workload",
        "add_workload",
        "demo_control",
        "set_notifications",
        "set_autostart",
        "start_demo",
        "client_connections",
        "connect_client",
    ];

    /// The name the page invokes this command by.
    pub fn name(&self) -> &'static str {
        match self {
            UiCommand::AppInfo {} => "app_info",
            UiCommand::ListStatus {} => "list_status",
            UiCommand::Retry { .. } => "retry",
            UiCommand::Reauthenticate { .. } => "reauthenticate",
            UiCommand::RemoveWorkload { .. } => "remove_workload",
            UiCommand::AddWorkload { .. } => "add_workload",
            UiCommand::DemoControl { .. } => "demo_control",
            UiCommand::SetNotifications { .. } => "set_notifications",
            UiCommand::SetAutostart { .. } => "set_autostart",
            UiCommand::StartDemo {} => "start_demo",
            UiCommand::ClientConnections { .. } => "client_connections",
            UiCommand::ConnectClient { .. } => "connect_client",
        }
    }

    /// The command the page invoked as `invoke(name, args)` (`args` an object, or null
    /// for none); a `bad_request` error for an unknown name or wrong arguments.
    pub fn from_invoke(name: &str, args: serde_json::Value) -> Result<UiCommand, Error> {
        if !Self::NAMES.contains(&name) {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("no window command `{}`", name.escape_debug()),
            ));
        }
        let args = match args {
            serde_json::Value::Null => serde_json::json!({}),
            a => a,
        };
        serde_json::from_value(serde_json::json!({ "name": name, "args": args })).map_err(|e| {
            Error::new(
                ErrorCode::BadRequest,
                format!("the arguments of `{name}`: {e}"),
            )
        })
    }
}

/// The add form, as typed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddForm {
    pub name: String,
    /// The remote (an MCP server's URL): the rest is discovered and a client
    /// registered when the endpoints and client id are left empty.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub token_endpoint: String,
    #[serde(default)]
    pub authorization_endpoint: String,
    #[serde(default)]
    pub client_id: String,
    /// Scopes separated by spaces or commas.
    #[serde(default)]
    pub scopes: String,
}

/// An event for the window: `event` is the name the page listens for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UiEvent {
    pub event: UiEventKind,
    pub payload: serde_json::Value,
}

/// The window's events, by the names the page listens for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UiEventKind {
    /// A workload's status changed: its row, the previous status, whether it refreshed.
    Status,
    /// Every row again (at start, after a config edit, after lagging).
    StatusAll,
    /// One row changed (a setting of the window).
    Row,
    /// A workload was removed: its name.
    Removed,
    /// The demo's state.
    Demo,
    /// A sign-in's progress: `{name, state, message}`.
    Login,
    /// An error of an action started outside the page (the tray): an [`Error`].
    Error,
    /// Why the last hand edit of workloads.toml cannot be used (or null).
    ConfigError,
    /// Events were missed: list everything again.
    Lagged,
    /// Come to the front (the window's program does not pass it to the page).
    #[serde(rename = "tokenwarden:focus")]
    Focus,
}

impl UiEventKind {
    /// The name the page listens for.
    pub fn as_str(self) -> &'static str {
        match self {
            UiEventKind::Status => "status",
            UiEventKind::StatusAll => "status-all",
            UiEventKind::Row => "row",
            UiEventKind::Removed => "removed",
            UiEventKind::Demo => "demo",
            UiEventKind::Login => "login",
            UiEventKind::Error => "error",
            UiEventKind::ConfigError => "config-error",
            UiEventKind::Lagged => "lagged",
            UiEventKind::Focus => "tokenwarden:focus",
        }
    }
}

/// One line from the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(Error),
    /// A status change of `watch` (the engine's `StatusChange`).
    Event(serde_json::Value),
    /// A window event of `ui_events`.
    Ui(UiEvent),
}

/// The answer to [`Request::ShowWindow`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "window", rename_all = "snake_case")]
pub enum WindowAnswer {
    /// The open window was brought to the front.
    Focused,
    /// A window was opened.
    Opened,
    /// Nothing asked (`hidden`): it keeps running in the tray.
    Hidden,
    /// No window: why, in words for the user.
    Unavailable { message: String },
}

/// The server's answer to a hello of the same version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    pub version: u32,
    /// The server program and its pid, for messages.
    pub server: String,
}

/// What went wrong, for every request and window command: a code to act on, and a
/// message for people (shown as is; never parsed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// The form field a window command's error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An `invalid` value in the form field `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Error {
        Error {
            code: ErrorCode::Invalid,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
}

/// What kind of error: serialised as the snake_case strings the page and scripts see.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client and the server speak different protocol versions.
    VersionMismatch,
    /// Not a request, or wrong arguments.
    BadRequest,
    /// The running Tokenwarden cannot be reached, or the connection broke.
    Unreachable,
    /// The server's answer could not be read.
    BadReply,
    /// A window's request to `tokenwarden daemon`, which has no window.
    NoWindow,
    /// The window's app is gone (it quit).
    AppGone,
    /// The app is quitting.
    Quitting,
    UnknownWorkload,
    /// The workload needs a sign-in.
    Unauthenticated,
    /// No valid token now (the issuer cannot be reached); try again later.
    Unavailable,
    /// The workload or the engine has stopped.
    Stopped,
    /// workloads.toml or a workload's settings.
    Config,
    /// The secret store.
    Store,
    /// A form value (see `field`).
    Invalid,
    /// Not in the demo.
    Demo,
    /// Only in the demo.
    NotDemo,
    Autostart,
    Login,
    /// Adding a workload (discovery, registration) failed.
    Add,
    /// An MCP client's config file.
    Client,
    Io,
    Internal,
}

impl ErrorCode {
    /// The code as it goes over the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::BadReply => "bad_reply",
            ErrorCode::NoWindow => "no_window",
            ErrorCode::AppGone => "app_gone",
            ErrorCode::Quitting => "quitting",
            ErrorCode::UnknownWorkload => "unknown_workload",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Stopped => "stopped",
            ErrorCode::Config => "config",
            ErrorCode::Store => "store",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Demo => "demo",
            ErrorCode::NotDemo => "not_demo",
            ErrorCode::Autostart => "autostart",
            ErrorCode::Login => "login",
            ErrorCode::Add => "add",
            ErrorCode::Client => "client",
            ErrorCode::Io => "io",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message of a version mismatch, naming both versions.
pub fn version_mismatch(client: &str, theirs: Option<u32>, server: &str, ours: u32) -> Error {
    let theirs = match theirs {
        Some(v) => format!("version {v}"),
        None => "no version (it is older than versioned protocols)".to_string(),
    };
    let client = if client.is_empty() {
        "the client"
    } else {
        client
    };
    Error::new(
        ErrorCode::VersionMismatch,
        format!(
            "protocol version mismatch: {client} speaks control protocol {theirs}, \
             {server} speaks version {ours}; both must be of one version (after an \
             update, quit the running Tokenwarden and start it again)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One of each command (a new variant fails to compile in `index` until added).
    fn every_command() -> Vec<UiCommand> {
        vec![
            UiCommand::AppInfo {},
            UiCommand::ListStatus {},
            UiCommand::Retry { name: None },
            UiCommand::Reauthenticate { name: "a".into() },
            UiCommand::RemoveWorkload { name: "a".into() },
            UiCommand::AddWorkload {
                form: AddForm {
                    name: "a".into(),
                    url: "https://mcp.example.com/mcp".into(),
                    scopes: "read write".into(),
                    ..AddForm::default()
                },
            },
            UiCommand::DemoControl {
                action: "waf".into(),
            },
            UiCommand::SetNotifications {
                name: "a".into(),
                enabled: false,
            },
            UiCommand::SetAutostart { enabled: true },
            UiCommand::StartDemo {},
            UiCommand::ClientConnections { name: "a".into() },
            UiCommand::ConnectClient {
                name: "a".into(),
                client: "cursor".into(),
                connect: true,
            },
        ]
    }

    fn index(c: &UiCommand) -> usize {
        match c {
            UiCommand::AppInfo {} => 0,
            UiCommand::ListStatus {} => 1,
            UiCommand::Retry { .. } => 2,
            UiCommand::Reauthenticate { .. } => 3,
            UiCommand::RemoveWorkload { .. } => 4,
            UiCommand::AddWorkload { .. } => 5,
            UiCommand::DemoControl { .. } => 6,
            UiCommand::SetNotifications { .. } => 7,
            UiCommand::SetAutostart { .. } => 8,
            UiCommand::StartDemo {} => 9,
            UiCommand::ClientConnections { .. } => 10,
            UiCommand::ConnectClient { .. } => 11,
        }
    }

    #[test]
    fn names_are_the_commands_and_their_wire_names() {
        let all = every_command();
        let idx: Vec<usize> = all.iter().map(index).collect();
        assert_eq!(idx, (0..UiCommand::NAMES.len()).collect::<Vec<_>>());
        for c in &all {
            assert_eq!(UiCommand::NAMES[index(c)], c.name());
            let wire = serde_json::to_value(c).unwrap();
            assert_eq!(wire["name"], c.name(), "{wire}");
        }
    }

    #[test]
    fn every_request_and_command_round_trips() {
        let mut requests = vec![
            Request::Hello {
                version: PROTOCOL_VERSION,
                client: "tokenwarden-window".into(),
            },
            Request::Ping,
            Request::Status,
            Request::Retry { name: None },
            Request::Retry {
                name: Some("a".into()),
            },
            Request::Token { name: "a".into() },
            Request::Logout { name: "a".into() },
            Request::Reload {
                config: true,
                names: vec!["a".into(), "b".into()],
            },
            Request::Watch,
            Request::UiEvents,
            Request::ShowWindow { hidden: true },
            Request::WindowClosing { pid: 42 },
        ];
        requests.extend(every_command().into_iter().map(Request::Ui));
        for r in requests {
            let line = serde_json::to_string(&r).unwrap();
            assert!(!line.contains('\n'));
            let back: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(back, r, "{line}");
        }
        let replies = vec![
            Reply::Ok(json!([1, 2])),
            Reply::Error(Error::field("name", "taken")),
            Reply::Error(Error::new(ErrorCode::NoWindow, "no window")),
            Reply::Event(json!({"workload": {"name": "a"}})),
            Reply::Ui(UiEvent {
                event: UiEventKind::Status,
                payload: json!({"row": 1}),
            }),
        ];
        for w in [
            WindowAnswer::Focused,
            WindowAnswer::Opened,
            WindowAnswer::Hidden,
            WindowAnswer::Unavailable {
                message: "m".into(),
            },
        ] {
            let v = serde_json::to_value(&w).unwrap();
            assert_eq!(serde_json::from_value::<WindowAnswer>(v).unwrap(), w);
        }
        assert_eq!(
            serde_json::to_value(WindowAnswer::Unavailable {
                message: "m".into()
            })
            .unwrap(),
            json!({"window": "unavailable", "message": "m"})
        );
        for r in replies {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), r, "{line}");
        }
    }

    /// What the page and scripts send and read, byte for byte as before the types.
    #[test]
    fn the_wire_format_is_the_pages_and_the_scripts() {
        let ui: Request = serde_json::from_str(
            r#"{"cmd":"ui","name":"set_notifications","args":{"name":"a","enabled":true}}"#,
        )
        .unwrap();
        assert_eq!(
            ui,
            Request::Ui(UiCommand::SetNotifications {
                name: "a".into(),
                enabled: true
            })
        );
        assert_eq!(
            serde_json::to_value(Request::Ui(UiCommand::ListStatus {})).unwrap(),
            json!({"cmd": "ui", "name": "list_status", "args": {}})
        );
        assert_eq!(
            serde_json::to_value(Request::Status).unwrap(),
            json!({"cmd": "status"})
        );
        // A page's `invoke("retry", {name: null})` and `invoke("list_status")`.
        assert_eq!(
            UiCommand::from_invoke("retry", json!({"name": null})).unwrap(),
            UiCommand::Retry { name: None }
        );
        assert_eq!(
            UiCommand::from_invoke("list_status", serde_json::Value::Null).unwrap(),
            UiCommand::ListStatus {}
        );
        let add = UiCommand::from_invoke(
            "add_workload",
            json!({"form": {"name": "x", "url": "https://h/mcp", "client_id": ""}}),
        )
        .unwrap();
        assert!(matches!(add, UiCommand::AddWorkload { form } if form.url == "https://h/mcp"));
        // Errors: codes as snake_case strings, `field` only when there is one.
        assert_eq!(
            serde_json::to_value(Error::new(ErrorCode::UnknownWorkload, "m")).unwrap(),
            json!({"code": "unknown_workload", "message": "m"})
        );
        assert_eq!(
            serde_json::to_value(Error::field("url", "m")).unwrap(),
            json!({"code": "invalid", "message": "m", "field": "url"})
        );
    }

    #[test]
    fn every_event_is_written_as_its_name() {
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
            Focus,
        ] {
            assert_eq!(serde_json::to_value(e).unwrap(), json!(e.as_str()));
            assert_eq!(
                serde_json::from_value::<UiEventKind>(json!(e.as_str())).unwrap(),
                e
            );
        }
    }

    #[test]
    fn every_code_is_written_as_its_name() {
        use ErrorCode::*;
        for c in [
            VersionMismatch,
            BadRequest,
            Unreachable,
            BadReply,
            NoWindow,
            AppGone,
            Quitting,
            UnknownWorkload,
            Unauthenticated,
            Unavailable,
            Stopped,
            Config,
            Store,
            Invalid,
            Demo,
            NotDemo,
            Autostart,
            Login,
            Add,
            Client,
            Io,
            Internal,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
            assert_eq!(
                serde_json::from_value::<ErrorCode>(json!(c.as_str())).unwrap(),
                c
            );
        }
    }

    #[test]
    fn hostile_commands_are_refused_with_a_clear_error() {
        for (name, args) in [
            ("nope", json!({})),
            ("show_window", json!({})),
            ("retry", json!({"name": 5})),
            ("reauthenticate", json!({})),
            ("set_autostart", json!("yes")),
            ("connect_client", json!({"name": "a", "client": "c"})),
        ] {
            let e = UiCommand::from_invoke(name, args).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{name}: {e:?}");
            assert!(
                e.message.contains(&name.escape_debug().to_string()),
                "{e:?}"
            );
        }
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"ui","name":"x"}"#).is_err());
    }
}
