//! The environment WebKitGTK and GTK start with, set alike by the app (for itself and
//! the window's process it starts) and by the window's program (started by hand): see
//! the desktop app's footprint notes (`desktop/memory.rs`).
//!
//! * `WEBKIT_DISABLE_DMABUF_RENDERER=1`: the web process draws this page, which needs no
//!   GPU, without GL (about 70 MB less anonymous memory);
//! * `GDK_GL=disable` on X11: GTK 3 does not open the GL driver (libLLVM) just to pick
//!   visuals; on Wayland the GL path of GTK may be what shows the page.
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
