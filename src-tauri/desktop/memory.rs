//! Keeping the desktop app small (measured by `scripts/measure-desktop.sh`; README,
//! "Desktop footprint"). Most of the footprint is WebKitGTK and the GL driver it loads
//! (Mesa's, which maps libLLVM); the heap is a few MB. What helps, measured:
//!
//! * WebKit's DMA-BUF renderer draws the page with GL in the web process; without it
//!   (`WEBKIT_DISABLE_DMABUF_RENDERER=1`) the web process holds about 70 MB less
//!   anonymous memory for this page, which needs no GPU;
//! * GTK 3 on X11 opens the GL driver when it opens the display, to pick visuals, though
//!   it draws with cairo; `GDK_GL=disable` leaves that to WebKit, so an app started at
//!   login that never opens its window never maps libLLVM (about 45 MB RSS). X11 only:
//!   on Wayland the GL path of GTK may be what shows the page;
//! * WebKit keeps its network process for the life of the app even with no web view
//!   (tauri keeps the web context alive on Linux for that reason): once the window is
//!   closed it is ended, and WebKit starts a new one when the window opens again.
//!
//! A value the user set for any of these variables is left alone.

/// Set the environment for WebKitGTK and GTK. Call while the process has one thread
/// (before the runtime starts): `setenv` races with threads reading the environment.
pub fn prepare_env() {
    if !cfg!(any(
        target_os = "linux",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    )) {
        return;
    }
    let unset = |k: &str| std::env::var_os(k).is_none();
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if unset("WEBKIT_DISABLE_DMABUF_RENDERER") {
        std::env::set_var("WEBKIT_DISABLE_DMABUF_RENDERER", "1");
    }
    if set("DISPLAY") && !set("WAYLAND_DISPLAY") && unset("GDK_GL") && unset("GDK_BACKEND") {
        std::env::set_var("GDK_GL", "disable");
    }
}

/// End WebKit's network process once no web view is left (the window is closed). The
/// process is found among this process's children by its executable's name.
#[cfg(target_os = "linux")]
pub fn end_network_process() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let mut children: Vec<i32> = Vec::new();
    for t in tasks.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    for pid in children {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == "WebKitNetworkProcess") {
            // SAFETY: kill(2) on a pid of our own child, read just now; no memory involved.
            let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
            if rc == 0 {
                tracing::info!(pid, "window closed: ended WebKit's network process");
            } else {
                tracing::debug!(pid, error = %std::io::Error::last_os_error(), "could not end WebKit's network process");
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn end_network_process() {}
