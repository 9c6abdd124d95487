//! Keeping the desktop app small (measured by `scripts/measure-desktop.sh`;
//! docs/footprint.md). Most of the footprint is WebKitGTK and the GL driver it loads
//! (Mesa's, which maps libLLVM); the heap is a few MB. What helps, measured:
//!
//! * WebKit's DMA-BUF renderer draws the page with GL in the web process; without it
//!   (`WEBKIT_DISABLE_DMABUF_RENDERER=1`) the web process holds about 70 MB less
//!   anonymous memory for this page, which needs no GPU;
//! * GTK 3 on X11 opens the GL driver when it opens the display, to pick visuals, though
//!   it draws with cairo; `GDK_GL=disable` leaves that to WebKit, so an app started at
//!   login that never opens its window never maps libLLVM (about 45 MB RSS). X11 only:
//!   on Wayland the GL path of GTK may be what shows the page;
//! * the window is a program of its own (`tokenwarden-window`, `src-tauri/window/`):
//!   WebKit, its web and network processes, Mesa and libLLVM are loaded by it and gone
//!   with it when the window is closed. The tray app (`tokenwarden`) does not link
//!   WebKit or tauri at all: GTK, the AppIndicator tray and D-Bus are all it loads.
//!   Loading a library it never used still left ~45 MB of WebKit's pages resident when
//!   it was one binary; once started, the app also pages out what loading touched
//!   ([`crate::pageout::mapped_files`]), which the kernel does for files the user owns.
//!
//! A value the user set for any of these variables is left alone.

/// Set the environment for WebKitGTK and GTK (shared with the window's program, which
/// sets the same when started by hand).
pub use crate::protocol::webview::prepare_env;
