//! Build script: Tauri's code generation and access-control manifest, only when the
//! `desktop` feature is on. `cargo build --no-default-features` runs nothing here and
//! needs no GUI libraries.

fn main() {
    #[cfg(feature = "desktop")]
    desktop();
}

/// The commands the window may call. Each gets an `allow-<name>` permission, and
/// `capabilities/default.json` grants exactly these to the main window.
#[cfg(feature = "desktop")]
const COMMANDS: &[&str] = &[
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

#[cfg(feature = "desktop")]
fn desktop() {
    println!("cargo:rerun-if-changed=ui");
    println!("cargo:rerun-if-changed=icons");
    let attrs = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    if let Err(e) = tauri_build::try_build(attrs) {
        panic!("tauri-build failed: {e:#}");
    }
}
