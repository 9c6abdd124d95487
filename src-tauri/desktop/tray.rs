//! The tray icon: the worst state at a glance, and a menu that carries the detail
//! (tray tooltips do not work on Linux). The menu is rebuilt only when a workload's
//! status word changes, not on every refresh.

use crate::engine::status::WorkloadStatus;
use crate::engine::Status;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::AppHandle;

pub const TRAY_ID: &str = "tokenwarden";

/// The overall state the icon shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overall {
    /// No workload configured (or all stopped).
    Idle,
    Running,
    Retrying,
    Unauthenticated,
}

pub fn overall(list: &[WorkloadStatus]) -> Overall {
    let has = |s: Status| list.iter().any(|w| w.status == s);
    if has(Status::Unauthenticated) {
        Overall::Unauthenticated
    } else if has(Status::Retrying) {
        Overall::Retrying
    } else if has(Status::Running) {
        Overall::Running
    } else {
        Overall::Idle
    }
}

fn icon(o: Overall) -> tauri::Result<Image<'static>> {
    let bytes: &'static [u8] = match o {
        Overall::Idle => include_bytes!("../../icons/tray-idle.png"),
        Overall::Running => include_bytes!("../../icons/tray-running.png"),
        Overall::Retrying => include_bytes!("../../icons/tray-retrying.png"),
        Overall::Unauthenticated => include_bytes!("../../icons/tray-unauthenticated.png"),
    };
    Image::from_bytes(bytes)
}

/// The first line of the menu: the overall state in words.
pub fn headline(list: &[WorkloadStatus]) -> String {
    let count = |s: Status| list.iter().filter(|w| w.status == s).count();
    match overall(list) {
        Overall::Idle if list.is_empty() => "No workloads configured".into(),
        Overall::Idle => "All workloads stopped".into(),
        Overall::Running => {
            if list.len() == 1 {
                "Running".into()
            } else {
                format!("All {} workloads running", count(Status::Running))
            }
        }
        Overall::Retrying => format!("{} of {} retrying", count(Status::Retrying), list.len()),
        Overall::Unauthenticated => format!(
            "{} of {} need sign-in",
            count(Status::Unauthenticated),
            list.len()
        ),
    }
}

/// What a menu is built from; the menu is rebuilt only when this changes.
pub fn menu_key(list: &[WorkloadStatus]) -> Vec<(String, Status)> {
    list.iter().map(|w| (w.name.clone(), w.status)).collect()
}

fn build_menu(app: &AppHandle, list: &[WorkloadStatus]) -> tauri::Result<Menu<tauri::Wry>> {
    let menu = Menu::new(app)?;
    menu.append(&MenuItem::with_id(
        app,
        "headline",
        headline(list),
        false,
        None::<&str>,
    )?)?;
    if !list.is_empty() {
        menu.append(&PredefinedMenuItem::separator(app)?)?;
    }
    for w in list {
        let label = format!("{} — {}", w.name, w.status.as_str());
        menu.append(&MenuItem::with_id(
            app,
            format!("workload:{}", w.name),
            label,
            true,
            None::<&str>,
        )?)?;
    }
    let needs_login: Vec<&WorkloadStatus> = list
        .iter()
        .filter(|w| w.status == Status::Unauthenticated)
        .collect();
    if !needs_login.is_empty() {
        menu.append(&PredefinedMenuItem::separator(app)?)?;
        for w in needs_login {
            menu.append(&MenuItem::with_id(
                app,
                format!("reauth:{}", w.name),
                format!("Re-authenticate {}…", w.name),
                true,
                None::<&str>,
            )?)?;
        }
    }
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    menu.append(&MenuItem::with_id(
        app,
        "retry-all",
        "Retry all now",
        !list.is_empty(),
        None::<&str>,
    )?)?;
    menu.append(&MenuItem::with_id(
        app,
        "open",
        "Open Tokenwarden",
        true,
        None::<&str>,
    )?)?;
    menu.append(&MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?)?;
    Ok(menu)
}

/// Create the tray icon. Menu clicks go to `on_click(app, item_id)`.
pub fn create(
    app: &AppHandle,
    list: &[WorkloadStatus],
    on_click: impl Fn(&AppHandle, &str) + Send + Sync + 'static,
) -> tauri::Result<()> {
    let menu = build_menu(app, list)?;
    TrayIconBuilder::with_id(TRAY_ID)
        .icon(icon(overall(list))?)
        .title("Tokenwarden")
        .tooltip("Tokenwarden")
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(move |app, event| on_click(app, event.id().as_ref()))
        .build(app)?;
    Ok(())
}

/// Show a new state: icon always (cheap), menu when `rebuild_menu`.
pub fn update(app: &AppHandle, list: &[WorkloadStatus], rebuild_menu: bool) -> tauri::Result<()> {
    let Some(tray) = app.tray_by_id(TRAY_ID) else {
        return Ok(());
    };
    tray.set_icon(Some(icon(overall(list))?))?;
    if rebuild_menu {
        tray.set_menu(Some(build_menu(app, list)?))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, status: Status) -> WorkloadStatus {
        WorkloadStatus {
            access_token_valid: true,
            ..WorkloadStatus::bare(name, status, "https://a.example/token")
        }
    }

    #[test]
    fn the_worst_state_wins() {
        use Status::*;
        assert_eq!(overall(&[]), Overall::Idle);
        assert_eq!(overall(&[w("a", Stopped)]), Overall::Idle);
        assert_eq!(overall(&[w("a", Running)]), Overall::Running);
        assert_eq!(
            overall(&[w("a", Running), w("b", Retrying)]),
            Overall::Retrying
        );
        assert_eq!(
            overall(&[w("a", Unauthenticated), w("b", Retrying)]),
            Overall::Unauthenticated
        );
        assert_eq!(headline(&[]), "No workloads configured");
        assert_eq!(
            headline(&[w("a", Running), w("b", Running)]),
            "All 2 workloads running"
        );
        assert_eq!(
            headline(&[w("a", Running), w("b", Retrying)]),
            "1 of 2 retrying"
        );
    }
}
