//! The tray icon: the worst state at a glance, and a menu that carries the detail
//! (tray tooltips do not work on Linux): a submenu per workload ("Copy local address",
//! "Retry now", "Re-authenticate…"). The menu is rebuilt only when a workload's status
//! word (or whether it has a local address) changes, not on every refresh. The demo's
//! tray says it is the demo.

use crate::engine::status::WorkloadStatus;
use crate::engine::Status;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use tray_icon::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

pub const TRAY_ID: &str = "tokenwarden";

/// This tray is the demo's (set once, before the tray is made).
static DEMO: AtomicBool = AtomicBool::new(false);

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

/// The PNG (in `icons/`) of a state.
fn icon_png(o: Overall) -> &'static [u8] {
    match o {
        Overall::Idle => include_bytes!("../../icons/tray-idle.png"),
        Overall::Running => include_bytes!("../../icons/tray-running.png"),
        Overall::Retrying => include_bytes!("../../icons/tray-retrying.png"),
        Overall::Unauthenticated => include_bytes!("../../icons/tray-unauthenticated.png"),
    }
}

fn icon(o: Overall) -> anyhow::Result<Icon> {
    let (rgba, width, height) = decode_png(icon_png(o))?;
    Ok(Icon::from_rgba(rgba, width, height)?)
}

/// An 8-bit RGBA PNG (what `icons/generate.py` writes) as its pixels.
fn decode_png(bytes: &[u8]) -> anyhow::Result<(Vec<u8>, u32, u32)> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
    let mut rgba = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut rgba)?;
    if (info.color_type, info.bit_depth) != (png::ColorType::Rgba, png::BitDepth::Eight) {
        anyhow::bail!(
            "the tray icons are 8-bit RGBA PNGs, not {:?} {:?}",
            info.color_type,
            info.bit_depth
        );
    }
    rgba.truncate(info.buffer_size());
    Ok((rgba, info.width, info.height))
}

/// The first line of the menu: the overall state in words (the demo's says so).
pub fn headline(list: &[WorkloadStatus]) -> String {
    let words = state_words(list);
    if DEMO.load(Ordering::Relaxed) {
        format!("Demo: {words}")
    } else {
        words
    }
}

fn state_words(list: &[WorkloadStatus]) -> String {
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

/// What a menu is built from (name, status word, has a local address); the menu is
/// rebuilt only when this changes.
pub type MenuKey = Vec<(String, Status, bool, bool, bool)>;

pub fn menu_key(list: &[WorkloadStatus]) -> MenuKey {
    list.iter()
        .map(|w| {
            (
                w.name.clone(),
                w.status,
                w.local_url.is_some(),
                w.can_renew,
                w.needs_scopes.is_empty(),
            )
        })
        .collect()
}

/// A workload's submenu: its label, and its items (id, label).
pub fn workload_items(w: &WorkloadStatus) -> (String, Vec<(String, String)>) {
    let mut items = Vec::new();
    if w.local_url.is_some() {
        items.push((format!("copy:{}", w.name), "Copy local address".to_string()));
    }
    // As the window: retrying helps a workload that is trying (not one that needs a
    // sign-in, nor a stopped one).
    if matches!(w.status, Status::Running | Status::Retrying) {
        items.push((format!("retry:{}", w.name), "Retry now".to_string()));
    }
    items.push((
        format!("reauth-w:{}", w.name),
        "Re-authenticate…".to_string(),
    ));
    // A workload whose server issues no refresh token says so: it will need a sign-in.
    let renew = if w.can_renew { "" } else { ", cannot renew" };
    // A remote that asked for more permission (step-up): a sign-in grants it.
    let more = if w.needs_scopes.is_empty() {
        ""
    } else {
        ", needs more permission"
    };
    (
        format!("{} — {}{renew}{more}", w.name, w.status.as_str()),
        items,
    )
}

/// The menu of `list`. Item ids: per workload (in its submenu) `copy:NAME`,
/// `retry:NAME`, `reauth-w:NAME`; `reauth:NAME` (those needing a sign-in),
/// `retry-all`, `open`, `quit`.
fn build_menu(list: &[WorkloadStatus]) -> anyhow::Result<Menu> {
    let menu = Menu::new();
    menu.append(&MenuItem::with_id("headline", headline(list), false, None))?;
    if !list.is_empty() {
        menu.append(&PredefinedMenuItem::separator())?;
    }
    for w in list {
        let (label, items) = workload_items(w);
        let sub = Submenu::with_id(format!("workload:{}", w.name), label, true);
        for (id, text) in items {
            sub.append(&MenuItem::with_id(id, text, true, None))?;
        }
        menu.append(&sub)?;
    }
    let needs_login: Vec<&WorkloadStatus> = list
        .iter()
        .filter(|w| w.status == Status::Unauthenticated || !w.needs_scopes.is_empty())
        .collect();
    if !needs_login.is_empty() {
        menu.append(&PredefinedMenuItem::separator())?;
        for w in needs_login {
            menu.append(&MenuItem::with_id(
                format!("reauth:{}", w.name),
                format!("Re-authenticate {}…", w.name),
                true,
                None,
            ))?;
        }
    }
    menu.append(&PredefinedMenuItem::separator())?;
    menu.append(&MenuItem::with_id(
        "retry-all",
        "Retry all now",
        !list.is_empty(),
        None,
    ))?;
    menu.append(&MenuItem::with_id("open", "Open Tokenwarden", true, None))?;
    let quit = if DEMO.load(Ordering::Relaxed) {
        "Quit the demo"
    } else {
        "Quit"
    };
    menu.append(&MenuItem::with_id("quit", quit, true, None))?;
    Ok(menu)
}

thread_local! {
    /// The tray icon (it lives on the UI loop's thread).
    static TRAY: RefCell<Option<TrayIcon>> = const { RefCell::new(None) };
}

/// Create the tray icon (on the UI loop's thread). Menu clicks go to
/// `on_click(item_id)`, on that thread. `icon_dir`: where the icon's PNG is written for
/// the tray host to read (Linux); a private directory of this instance, not a shared
/// `/tmp/tray-icon` where another instance's icon of the same name, or another user's
/// planted link, would be.
pub fn create(
    list: &[WorkloadStatus],
    icon_dir: &std::path::Path,
    demo: bool,
    on_click: impl Fn(&str) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    DEMO.store(demo, Ordering::Relaxed);
    let title = if demo {
        "Tokenwarden demo"
    } else {
        "Tokenwarden"
    };
    MenuEvent::set_event_handler(Some(move |event: MenuEvent| on_click(event.id().as_ref())));
    // The icon's own events (enter, move, click; not sent on Linux) are not used: with
    // no handler they would pile up in tray-icon's unbounded channel.
    tray_icon::TrayIconEvent::set_event_handler(Some(|_: tray_icon::TrayIconEvent| {}));
    let tray = TrayIconBuilder::new()
        .with_id(TRAY_ID)
        .with_temp_dir_path(icon_dir)
        .with_icon(icon(overall(list))?)
        .with_title(title)
        .with_tooltip(title)
        .with_menu(Box::new(build_menu(list)?))
        .with_menu_on_left_click(true)
        .build()?;
    TRAY.with(|t| *t.borrow_mut() = Some(tray));
    Ok(())
}

/// The one notification of a hidden start (`--hidden`, the start-at-login entry) that
/// no tray can show: the icon could not be made, or no tray host is on the session bus
/// (`host`: `None` when that cannot be known). Summary and body.
pub fn hidden_without_tray_note(
    tray_made: bool,
    host: Option<bool>,
) -> Option<(&'static str, &'static str)> {
    if tray_made && host != Some(false) {
        return None;
    }
    Some((
        "Tokenwarden runs without a tray icon",
        "No tray on this desktop can show it. Your workloads are kept signed in; to open the window, start Tokenwarden again from the applications menu or run `tokenwarden`.",
    ))
}

/// Show a new state (on the UI loop's thread): icon and menu.
pub fn update(list: Vec<WorkloadStatus>) {
    super::ui_loop::invoke(move || {
        TRAY.with(|t| {
            let t = t.borrow();
            let Some(tray) = t.as_ref() else {
                return; // no tray host
            };
            let result = icon(overall(&list)).and_then(|i| Ok(tray.set_icon(Some(i))?));
            if let Err(e) = result {
                tracing::warn!(error = %e, "tray icon update failed");
            }
            match build_menu(&list) {
                Ok(menu) => tray.set_menu(Some(Box::new(menu))),
                Err(e) => tracing::warn!(error = %e, "tray menu update failed"),
            }
        })
    });
}

/// Put `text` on the clipboard (on the UI loop's thread), as a copy in any other
/// application would: GTK's CLIPBOARD selection, served by this process while it runs.
pub fn copy_to_clipboard(text: &str) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let clipboard = gtk::Clipboard::get(&gtk::gdk::SELECTION_CLIPBOARD);
        clipboard.set_text(text);
        // Kept by a clipboard manager, where there is one, after this app quits.
        clipboard.store();
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = text;
        anyhow::bail!("the clipboard is not available from the tray on this system")
    }
}

/// Take the tray icon down (on the UI loop's thread, before it ends).
pub fn remove() {
    TRAY.with(|t| t.borrow_mut().take());
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
    fn a_hidden_start_says_so_only_when_no_tray_shows_it() {
        assert_eq!(hidden_without_tray_note(true, Some(true)), None);
        assert_eq!(
            hidden_without_tray_note(true, None),
            None,
            "unknown: no note"
        );
        let (summary, body) = hidden_without_tray_note(true, Some(false)).unwrap();
        assert!(summary.contains("without a tray"));
        assert!(body.contains("run `tokenwarden`"));
        assert!(hidden_without_tray_note(false, None).is_some());
    }

    #[test]
    fn each_state_has_an_icon() {
        for o in [
            Overall::Idle,
            Overall::Running,
            Overall::Retrying,
            Overall::Unauthenticated,
        ] {
            let (rgba, w, h) = decode_png(icon_png(o)).unwrap();
            assert!(w >= 16 && h >= 16, "{o:?}: {w}x{h}");
            assert_eq!(rgba.len(), (w * h * 4) as usize, "{o:?}");
            assert!(icon(o).is_ok(), "{o:?}");
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

    #[test]
    fn a_workload_submenu_copies_its_local_address_only_when_it_has_one() {
        let mut a = w("a", Status::Running);
        let (label, items) = workload_items(&a);
        assert_eq!(label, "a — running");
        assert_eq!(
            items,
            [
                ("retry:a".to_string(), "Retry now".to_string()),
                ("reauth-w:a".to_string(), "Re-authenticate…".to_string()),
            ]
        );
        for s in [Status::Unauthenticated, Status::Stopped] {
            let (_, items) = workload_items(&w("a", s));
            assert!(
                items.iter().all(|(id, _)| !id.starts_with("retry:")),
                "no Retry now when {s:?}: {items:?}"
            );
        }
        let before = menu_key(std::slice::from_ref(&a));
        a.local_url = Some("http://127.0.0.1:8765/mcp".into());
        let (_, items) = workload_items(&a);
        assert_eq!(items[0], ("copy:a".into(), "Copy local address".into()));
        assert_ne!(
            menu_key(std::slice::from_ref(&a)),
            before,
            "a local address appearing rebuilds the menu"
        );
        // A server without refresh tokens: the label says the workload cannot renew.
        let before = menu_key(std::slice::from_ref(&a));
        a.can_renew = false;
        assert_eq!(workload_items(&a).0, "a — running, cannot renew");
        assert_ne!(menu_key(std::slice::from_ref(&a)), before);
        // A remote that asks for more permission: the label says so.
        let before = menu_key(std::slice::from_ref(&a));
        a.needs_scopes = vec!["admin".into()];
        assert_eq!(
            workload_items(&a).0,
            "a — running, cannot renew, needs more permission"
        );
        assert_ne!(menu_key(std::slice::from_ref(&a)), before);
    }
}
