//! Build script: Tauri's code generation and access-control manifest. The config is
//! the repository's top-level `tauri.conf.json`; the capabilities are here, in
//! `capabilities/`.

fn main() {
    desktop();
}

/// The commands the window may call. Each gets an `allow-<name>` permission, and
/// `capabilities/default.json` grants exactly these to the main window.
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

fn desktop() {
    println!("cargo:rerun-if-changed=../../ui");
    println!("cargo:rerun-if-changed=../../icons");
    let attrs = tauri_build::Attributes::new()
        .config_path("../../tauri.conf.json")
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    if let Err(e) = tauri_build::try_build(attrs) {
        panic!("tauri-build failed: {e:#}");
    }
}
