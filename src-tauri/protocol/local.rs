//! The local connection the protocol runs over, and the client.
//!
//! * Unix: the socket `<config-dir>/run/control.sock` ([`socket_path`]). The server
//!   makes it 0600 (its directory is 0700) and checks every connection's peer uid
//!   against its own effective uid: another user's connection is closed unanswered.
//! * Windows: the named pipe [`pipe_name`] (named after the config dir, as pipes live
//!   in one namespace per machine). The server creates it with `first_pipe_instance`
//!   (a pipe of that name made first by another program makes `bind` fail instead of
//!   serving next to it), rejects remote clients, and closes unanswered any connection
//!   whose client process runs as another user (the SID of its process token). This
//!   code is not built or tested here (no Windows machine): Linux is the tested path.
//!
//! Framing, hello and messages are the same on both (see the module above).

use super::{
    version_mismatch, Error, ErrorCode, Reply, Request, UiCommand, UiEvent, Welcome, MAX_LINE,
    PROTOCOL_VERSION,
};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The control socket of the Tokenwarden that runs for `config_dir` (Unix).
pub fn socket_path(config_dir: &Path) -> PathBuf {
    config_dir.join("run").join("control.sock")
}

/// The control pipe of the Tokenwarden that runs for `config_dir` (Windows): a hash of
/// the config dir's path (FNV-1a, the same in every build), lower-cased as Windows
/// paths compare.
pub fn pipe_name(config_dir: &Path) -> String {
    let path = config_dir.to_string_lossy().to_lowercase();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!(r"\\.\pipe\tokenwarden-control-{h:016x}")
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One connection, either end: JSON lines.
pub struct Connection {
    r: BufReader<Reader>,
    w: Writer,
}

/// What a client sent.
#[derive(Debug)]
pub enum Incoming {
    Request(Request),
    /// Not a request: answer with the error and read on.
    Bad(Error),
    /// A line longer than [`MAX_LINE`]: answer with the error and close.
    TooLong(Error),
    /// The client closed the connection.
    End,
}

impl Connection {
    fn new(
        r: impl AsyncRead + Send + Unpin + 'static,
        w: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Connection {
        Connection {
            r: BufReader::new(Box::new(r)),
            w: Box::new(w),
        }
    }

    /// The next request (server side); at most [`MAX_LINE`] bytes are read for it.
    pub async fn read_request(&mut self) -> std::io::Result<Incoming> {
        let mut line = String::new();
        let n = (&mut self.r)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(Incoming::End);
        }
        if line.len() > MAX_LINE {
            return Ok(Incoming::TooLong(Error::new(
                ErrorCode::BadRequest,
                "request too long",
            )));
        }
        Ok(match serde_json::from_str(line.trim()) {
            Ok(r) => Incoming::Request(r),
            Err(e) => Incoming::Bad(Error::new(
                ErrorCode::BadRequest,
                format!("not a request: {e}"),
            )),
        })
    }

    /// Send one reply (server side).
    pub async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        self.write_line(reply).await
    }

    async fn write_line(&mut self, v: &impl serde::Serialize) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.w.write_all(&line).await?;
        self.w.flush().await
    }

    /// The hello (server side): `Some(client)` when the client speaks version `ours`
    /// (answered with a [`Welcome`] from `server`), else `None` once the client was told
    /// why (the caller closes the connection).
    pub async fn handshake(&mut self, ours: u32, server: &str) -> std::io::Result<Option<String>> {
        let refusal = match self.read_request().await? {
            Incoming::End => return Ok(None),
            Incoming::Request(Request::Hello { version, client }) if version == ours => {
                let welcome = Welcome {
                    version: ours,
                    server: server.to_string(),
                };
                let v = serde_json::to_value(welcome).map_err(std::io::Error::other)?;
                self.send(&Reply::Ok(v)).await?;
                return Ok(Some(client));
            }
            Incoming::Request(Request::Hello { version, client }) => {
                version_mismatch(&client, Some(version), server, ours)
            }
            Incoming::Request(_) => version_mismatch("", None, server, ours),
            Incoming::Bad(mut e) | Incoming::TooLong(mut e) => {
                e.message = format!("{}; the first line must be a hello", e.message);
                e
            }
        };
        self.send(&Reply::Error(refusal)).await?;
        Ok(None)
    }

    /// The next reply (client side).
    async fn read_reply(&mut self) -> Result<Reply, Error> {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).await.map_err(|e| {
            Error::new(
                ErrorCode::Unreachable,
                format!("the connection to Tokenwarden broke: {e}"),
            )
        })?;
        if n == 0 {
            return Err(Error::new(
                ErrorCode::Unreachable,
                "Tokenwarden closed the connection",
            ));
        }
        serde_json::from_str(&line).map_err(|e| {
            Error::new(
                ErrorCode::BadReply,
                format!("Tokenwarden sent something that is not a reply: {e}"),
            )
        })
    }
}

/// Who is on the other end of a connection (from the operating system, not from what
/// the client says).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<i32>,
    /// Unix: the peer's uid.
    pub uid: Option<u32>,
}

/// A connection the listener took.
pub enum Accepted {
    /// The same user: serve it.
    Client(Connection, Peer),
    /// Another user (or one that cannot be told): closed unanswered when the
    /// [`Refused`] is dropped (after the caller logged it, so the log has it by the time
    /// the client sees the connection close).
    Refused(Peer, Refused),
}

/// A refused connection, open until dropped; nothing can be read from or sent to it.
pub struct Refused(#[allow(dead_code)] Box<dyn Send>);

#[cfg(unix)]
pub use unix::Listener;

#[cfg(unix)]
mod unix {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::net::UnixListener;

    extern "C" {
        // uid_t is a u32 on every Unix Tokenwarden builds for.
        fn geteuid() -> u32;
    }

    /// The server's end: the control socket.
    pub struct Listener {
        inner: UnixListener,
        uid: u32,
    }

    impl Listener {
        /// Listen for `config_dir`'s clients. The caller made `<config_dir>/run`
        /// private (0700) and holds the instance lock, so a socket file left there is
        /// stale and removed.
        pub fn bind(config_dir: &Path) -> std::io::Result<Listener> {
            let path = socket_path(config_dir);
            let _ = std::fs::remove_file(&path);
            let inner = UnixListener::bind(&path).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {}: {e}", path.display()),
                )
            })?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            // The process's own effective uid: the owner of the run dir could differ (a
            // dir made by another user, a root-owned leftover), the process's identity
            // cannot.
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { geteuid() };
            Ok(Listener { inner, uid })
        }

        /// The next connection, checked.
        pub async fn accept(&mut self) -> std::io::Result<Accepted> {
            let (stream, _) = self.inner.accept().await?;
            let cred = stream.peer_cred().ok();
            let peer = Peer {
                pid: cred.and_then(|c| c.pid()),
                uid: cred.map(|c| c.uid()),
            };
            if peer.uid != Some(self.uid) {
                return Ok(Accepted::Refused(peer, Refused(Box::new(stream))));
            }
            let (r, w) = stream.into_split();
            Ok(Accepted::Client(Connection::new(r, w), peer))
        }
    }

    pub(super) async fn connect(config_dir: &Path) -> Result<Option<Connection>, Error> {
        let path = socket_path(config_dir);
        match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => {
                let (r, w) = s.into_split();
                Ok(Some(Connection::new(r, w)))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::new(
                ErrorCode::Unreachable,
                format!("cannot reach Tokenwarden at {}: {e}", path.display()),
            )),
        }
    }
}

#[cfg(windows)]
pub use windows::Listener;

/// Untested (no Windows machine here): tokio's named pipes, and the Win32 calls that
/// find the client's user through `windows-sys`.
#[cfg(windows)]
mod windows {
    use super::*;
    use std::os::windows::io::AsRawHandle;
    use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeServer, ServerOptions};

    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_PIPE_BUSY, HANDLE as Handle};
    use windows_sys::Win32::Security::{EqualSid, GetTokenInformation, TokenUser, TOKEN_QUERY};
    use windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId;
    use windows_sys::Win32::System::Threading::{
        GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    };

    /// The user SID of `process`'s token, as the TOKEN_USER buffer holding it.
    /// SAFETY: `process` is a process handle with PROCESS_QUERY_LIMITED_INFORMATION.
    unsafe fn token_user(process: Handle) -> Option<Vec<u64>> {
        let mut token: Handle = std::ptr::null_mut();
        if OpenProcessToken(process, TOKEN_QUERY, &mut token) == 0 {
            return None;
        }
        let mut len = 0u32;
        GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut len);
        // u64s: TOKEN_USER starts with a pointer, so the buffer must be aligned.
        let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
        let ok = GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len);
        CloseHandle(token);
        (ok != 0).then_some(buf)
    }

    /// Does the client of `pipe` run as this process's user? (`pid`, for the log.)
    fn same_user(pipe: &NamedPipeServer) -> (bool, Option<i32>) {
        // SAFETY: plain Win32 calls on handles owned here or by `pipe` (alive for the
        // call); every handle opened is closed; a TOKEN_USER begins with the SID's
        // pointer, read only while its buffer lives.
        unsafe {
            let mut pid = 0u32;
            if GetNamedPipeClientProcessId(pipe.as_raw_handle() as Handle, &mut pid) == 0 {
                return (false, None);
            }
            let client = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if client.is_null() {
                return (false, Some(pid as i32));
            }
            let theirs = token_user(client);
            CloseHandle(client);
            let ours = token_user(GetCurrentProcess());
            let same = match (theirs, ours) {
                (Some(mut t), Some(mut o)) => {
                    let t_sid = *(t.as_mut_ptr() as *mut *mut std::ffi::c_void);
                    let o_sid = *(o.as_mut_ptr() as *mut *mut std::ffi::c_void);
                    EqualSid(t_sid, o_sid) != 0
                }
                _ => false,
            };
            (same, Some(pid as i32))
        }
    }

    /// The server's end: the control pipe.
    pub struct Listener {
        name: String,
        next: NamedPipeServer,
    }

    impl Listener {
        /// Create the pipe's first instance (failing when another program holds the
        /// name).
        pub fn bind(config_dir: &Path) -> std::io::Result<Listener> {
            let name = pipe_name(config_dir);
            let next = ServerOptions::new()
                .first_pipe_instance(true)
                .reject_remote_clients(true)
                .create(&name)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot listen on {name}: {e}"))
                })?;
            Ok(Listener { name, next })
        }

        /// The next connection, checked.
        pub async fn accept(&mut self) -> std::io::Result<Accepted> {
            self.next.connect().await?;
            let fresh = ServerOptions::new()
                .reject_remote_clients(true)
                .create(&self.name)?;
            let pipe = std::mem::replace(&mut self.next, fresh);
            let (same, pid) = same_user(&pipe);
            let peer = Peer { pid, uid: None };
            if !same {
                return Ok(Accepted::Refused(peer, Refused(Box::new(pipe))));
            }
            let (r, w) = tokio::io::split(pipe);
            Ok(Accepted::Client(Connection::new(r, w), peer))
        }
    }

    pub(super) async fn connect(config_dir: &Path) -> Result<Option<Connection>, Error> {
        let name = pipe_name(config_dir);
        let mut busy = 0;
        loop {
            match ClientOptions::new().open(&name) {
                Ok(pipe) => {
                    let (r, w) = tokio::io::split(pipe);
                    return Ok(Some(Connection::new(r, w)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                // Every instance taken for a moment (the server makes the next one).
                Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) && busy < 40 => {
                    busy += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorCode::Unreachable,
                        format!("cannot reach Tokenwarden at {name}: {e}"),
                    ))
                }
            }
        }
    }
}

#[cfg(not(any(unix, windows)))]
mod other {
    use super::*;
    pub(super) async fn connect(_config_dir: &Path) -> Result<Option<Connection>, Error> {
        Ok(None)
    }
}

#[cfg(not(any(unix, windows)))]
use other::connect;
#[cfg(unix)]
use unix::connect;
#[cfg(windows)]
use windows::connect;

/// A connection to the running Tokenwarden, past the hello.
pub struct Client {
    conn: Connection,
    server: Welcome,
}

/// This program's name, for the server's messages.
fn program() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "the client".into())
}

impl Client {
    /// Connect to the Tokenwarden that runs for `config_dir` (an app's `Paths` gives
    /// its config dir) and say hello. `Ok(None)` when none runs; a `version_mismatch`
    /// error naming both versions when it speaks another protocol version.
    pub async fn connect(config_dir: impl AsRef<Path>) -> Result<Option<Client>, Error> {
        let config_dir = config_dir.as_ref();
        let Some(mut conn) = connect(config_dir).await? else {
            return Ok(None);
        };
        let me = program();
        conn.write_line(&Request::Hello {
            version: PROTOCOL_VERSION,
            client: me.clone(),
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorCode::Unreachable,
                format!("cannot talk to Tokenwarden: {e}"),
            )
        })?;
        match conn.read_reply().await? {
            Reply::Ok(v) => {
                let server: Welcome = serde_json::from_value(v).map_err(|e| {
                    Error::new(ErrorCode::BadReply, format!("not a welcome: {e}"))
                })?;
                if server.version != PROTOCOL_VERSION {
                    return Err(version_mismatch(
                        &me,
                        Some(PROTOCOL_VERSION),
                        &server.server,
                        server.version,
                    ));
                }
                Ok(Some(Client { conn, server }))
            }
            // A server from before the hello does not know it.
            Reply::Error(e) if e.code == ErrorCode::BadRequest => Err(Error::new(
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version mismatch: {me} speaks control protocol version {PROTOCOL_VERSION}, \
                     the Tokenwarden running for {} speaks an older one (without versions); \
                     quit it and start it again",
                    config_dir.display()
                ),
            )),
            Reply::Error(e) => Err(e),
            Reply::Event(_) | Reply::Ui(_) => Err(Error::new(
                ErrorCode::BadReply,
                "Tokenwarden answered the hello with an event",
            )),
        }
    }

    /// Who answered the hello.
    pub fn server(&self) -> &Welcome {
        &self.server
    }

    async fn send(&mut self, req: &Request) -> Result<(), Error> {
        self.conn.write_line(req).await.map_err(|e| {
            Error::new(
                ErrorCode::Unreachable,
                format!("the connection to Tokenwarden broke: {e}"),
            )
        })
    }

    /// Send one request and wait for its answer.
    pub async fn call(&mut self, req: &Request) -> Result<serde_json::Value, Error> {
        self.send(req).await?;
        match self.conn.read_reply().await? {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e),
            Reply::Event(_) | Reply::Ui(_) => Err(Error::new(
                ErrorCode::BadReply,
                "an event where an answer was due",
            )),
        }
    }

    /// Run one of the window's commands.
    pub async fn ui(&mut self, cmd: UiCommand) -> Result<serde_json::Value, Error> {
        self.call(&Request::Ui(cmd)).await
    }

    /// Subscribe to the window's events (`ui_events`): once this returns, every later
    /// event reaches [`Client::next_ui_event`].
    pub async fn start_ui_events(&mut self) -> Result<(), Error> {
        self.call(&Request::UiEvents).await.map(|_| ())
    }

    /// The next window event; `Err` once the app closed the connection (it quit).
    pub async fn next_ui_event(&mut self) -> Result<UiEvent, Error> {
        loop {
            match self.conn.read_reply().await? {
                Reply::Ui(ev) => return Ok(ev),
                Reply::Error(e) => return Err(e),
                Reply::Ok(_) | Reply::Event(_) => {}
            }
        }
    }

    /// Start `watch` and hand each status change to `on_event` (as `E`: the engine's
    /// `StatusChange`) until the connection ends.
    pub async fn watch<E: serde::de::DeserializeOwned>(
        mut self,
        mut on_event: impl FnMut(E),
    ) -> Result<(), Error> {
        self.send(&Request::Watch).await?;
        loop {
            match self.conn.read_reply().await? {
                Reply::Event(ev) => on_event(serde_json::from_value(ev).map_err(|e| {
                    Error::new(ErrorCode::BadReply, format!("not a status change: {e}"))
                })?),
                Reply::Error(e) => return Err(e),
                Reply::Ok(_) | Reply::Ui(_) => {}
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    async fn raw_line(config_dir: &Path, line: &str) -> Reply {
        let s = tokio::net::UnixStream::connect(socket_path(config_dir))
            .await
            .unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let mut got = String::new();
        BufReader::new(r).read_line(&mut got).await.unwrap();
        serde_json::from_str(&got).unwrap()
    }

    /// A server on a real socket whose hello speaks `ours`, answering `ping`s.
    fn serve(dir: &Path, ours: u32) -> tokio::task::JoinHandle<()> {
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let mut l = Listener::bind(dir).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok(Accepted::Client(mut c, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    if c.handshake(ours, "tokenwarden (pid 1)")
                        .await
                        .unwrap()
                        .is_none()
                    {
                        return;
                    }
                    while let Ok(Incoming::Request(_)) = c.read_request().await {
                        c.send(&Reply::Ok(serde_json::json!("pong"))).await.unwrap();
                    }
                });
            }
        })
    }

    #[tokio::test]
    async fn another_version_is_refused_at_the_hello_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let server = serve(dir.path(), PROTOCOL_VERSION);
        let other = PROTOCOL_VERSION + 7;
        let hello = format!(r#"{{"cmd":"hello","version":{other},"client":"tokenwarden-window"}}"#);
        let Reply::Error(e) = raw_line(dir.path(), &hello).await else {
            panic!("a hello of another version was welcomed")
        };
        assert_eq!(e.code, ErrorCode::VersionMismatch);
        for want in [
            format!("tokenwarden-window speaks control protocol version {other}"),
            format!("tokenwarden (pid 1) speaks version {PROTOCOL_VERSION}"),
        ] {
            assert!(e.message.contains(&want), "{want:?} in {e}");
        }
        // A client from before the hello: its first request is refused the same way.
        let Reply::Error(e) = raw_line(dir.path(), r#"{"cmd":"status"}"#).await else {
            panic!("a request without a hello was answered")
        };
        assert_eq!(e.code, ErrorCode::VersionMismatch);
        assert!(e.message.contains("no version"), "{e}");
        assert!(
            e.message.contains(&format!("version {PROTOCOL_VERSION}")),
            "{e}"
        );
        // Garbage first.
        let Reply::Error(e) = raw_line(dir.path(), "{").await else {
            panic!("garbage was answered")
        };
        assert_eq!(e.code, ErrorCode::BadRequest);
        // The same version is welcomed and served.
        let mut c = Client::connect(dir.path()).await.unwrap().unwrap();
        assert_eq!(c.server().version, PROTOCOL_VERSION);
        assert_eq!(c.call(&Request::Ping).await.unwrap(), "pong");
        server.abort();
    }

    #[tokio::test]
    async fn the_client_refuses_a_server_of_another_version() {
        let dir = tempfile::tempdir().unwrap();
        let server = serve(dir.path(), PROTOCOL_VERSION + 1);
        let e = Client::connect(dir.path()).await.err().expect("refused");
        assert_eq!(e.code, ErrorCode::VersionMismatch);
        assert!(
            e.message.contains(&format!("version {PROTOCOL_VERSION}"))
                && e.message
                    .contains(&format!("version {}", PROTOCOL_VERSION + 1)),
            "{e}"
        );
        server.abort();
        // Nobody listening: not an error, just no Tokenwarden.
        let none = tempfile::tempdir().unwrap();
        assert!(Client::connect(none.path()).await.unwrap().is_none());
    }

    #[test]
    fn pipe_names_are_stable_and_per_config_dir() {
        let a = pipe_name(Path::new(r"C:\Users\a\AppData\Roaming\tokenwarden"));
        assert_eq!(
            a,
            pipe_name(Path::new(r"c:\users\a\appdata\roaming\TOKENWARDEN"))
        );
        assert_ne!(
            a,
            pipe_name(Path::new(r"C:\Users\b\AppData\Roaming\tokenwarden"))
        );
        assert!(a.starts_with(r"\\.\pipe\tokenwarden-control-"), "{a}");
        assert_eq!(
            pipe_name(Path::new("")),
            format!(
                r"\\.\pipe\tokenwarden-control-{:016x}",
                0xcbf2_9ce4_8422_2325u64
            )
        );
    }
}
