//! "Start Tokenwarden when I log in" (off by default). The entry starts
//! `tokenwarden [--config-dir DIR] --hidden`: the engine and the tray, no window.
//!
//! * Linux (and the BSDs): an XDG autostart entry, written here rather than by
//!   auto-launch (tauri-plugin-autostart's backend), which ignores `XDG_CONFIG_HOME` and
//!   writes the executable's path unquoted into `Exec` (a path with a space breaks it). The entry is
//!   `$XDG_CONFIG_HOME/autostart/tokenwarden.desktop` (default config dir) or
//!   `tokenwarden-<hash of the config dir>.desktop` (any other), so each config dir has
//!   its own; it counts as enabled unless the desktop's own settings turned it off
//!   (`Hidden=true`, `X-GNOME-Autostart-enabled=false`).
//! * macOS and Windows: auto-launch (a login item / the `Run` key) with the same
//!   arguments (not built or tested here).

use crate::paths::Paths;
use std::path::PathBuf;

/// The arguments the login entry starts the app with.
pub fn args(paths: &Paths) -> Vec<String> {
    let mut args = Vec::new();
    if !is_default_dir(paths) {
        args.push("--config-dir".to_string());
        args.push(paths.config_dir.display().to_string());
    }
    args.push("--hidden".to_string());
    args
}

fn is_default_dir(paths: &Paths) -> bool {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
    Paths::resolve(None).is_ok_and(|d| canon(&d.config_dir) == canon(&paths.config_dir))
}

/// The program the entry runs: the AppImage when running from one, else this
/// executable (without the " (deleted)" Linux appends once a package upgrade replaced it).
fn program() -> std::io::Result<PathBuf> {
    if let Some(a) = std::env::var_os("APPIMAGE").map(PathBuf::from) {
        if a.is_file() {
            return Ok(a);
        }
    }
    let exe = std::env::current_exe()?;
    if !exe.exists() {
        if let Some(s) = exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            return Ok(PathBuf::from(s));
        }
    }
    Ok(exe)
}

/// Where the XDG entry for this config dir goes.
#[cfg_attr(any(target_os = "macos", windows), allow(dead_code))]
pub fn entry_path(paths: &Paths) -> Option<PathBuf> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    let name = match dir_tag(paths) {
        None => "tokenwarden.desktop".to_string(),
        Some(hex) => format!("tokenwarden-{hex}.desktop"),
    };
    Some(config_home.join("autostart").join(name))
}

/// What tells this config dir's login entry apart from the others': `None` for the
/// default dir, else a short hash of the dir.
fn dir_tag(paths: &Paths) -> Option<String> {
    if is_default_dir(paths) {
        return None;
    }
    use sha2::Digest;
    let dir = std::fs::canonicalize(&paths.config_dir).unwrap_or(paths.config_dir.clone());
    let digest = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
    Some(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
}

/// One argument of an `Exec` key (Desktop Entry Specification, "The Exec key"): quoted
/// when it holds a reserved character, `"`, `` ` ``, `$` and `\` escaped inside the
/// quotes, `%` doubled; then the string-value escaping of `\`.
pub fn exec_arg(arg: &str) -> String {
    const RESERVED: &[char] = &[
        ' ', '\t', '"', '\'', '\\', '>', '<', '~', '|', '&', ';', '$', '*', '?', '#', '(', ')', '`',
    ];
    let arg = arg.replace('%', "%%");
    let quoted = if arg.is_empty() || arg.contains(RESERVED) {
        let mut q = String::with_capacity(arg.len() + 2);
        q.push('"');
        for c in arg.chars() {
            if matches!(c, '"' | '`' | '$' | '\\') {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    } else {
        arg
    };
    quoted.replace('\\', "\\\\")
}

/// The whole `.desktop` file.
#[cfg_attr(any(target_os = "macos", windows), allow(dead_code))]
pub fn entry_text(program: &str, args: &[String]) -> Result<String, String> {
    let mut exec = exec_arg(program);
    for a in args {
        exec.push(' ');
        exec.push_str(&exec_arg(a));
    }
    if exec.chars().any(char::is_control) {
        return Err("the program path or config directory holds a control character, which an autostart entry cannot carry".into());
    }
    Ok(format!(
        "# Written by Tokenwarden (\"Start Tokenwarden when I log in\"); untick it there to remove.\n\
         [Desktop Entry]\n\
         Type=Application\n\
         Name=Tokenwarden\n\
         Comment=Keeps OAuth-backed workloads authenticated (starts in the tray)\n\
         Exec={exec}\n\
         Icon=tokenwarden\n\
         Terminal=false\n\
         StartupNotify=false\n\
         X-GNOME-Autostart-enabled=true\n"
    ))
}

/// Does `text` (an existing entry) start the app at login?
#[cfg_attr(any(target_os = "macos", windows), allow(dead_code))]
fn entry_enabled(text: &str) -> bool {
    !text.lines().map(str::trim).any(|l| {
        l.eq_ignore_ascii_case("Hidden=true")
            || l.eq_ignore_ascii_case("X-GNOME-Autostart-enabled=false")
    })
}

#[cfg(all(unix, not(target_os = "macos")))]
mod imp {
    use super::*;

    pub fn is_enabled(paths: &Paths) -> Result<bool, String> {
        let path = entry_path(paths).ok_or("no home directory (HOME) to keep the entry in")?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(entry_enabled(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn set(paths: &Paths, enabled: bool) -> Result<(), String> {
        let path = entry_path(paths).ok_or("no home directory (HOME) to keep the entry in")?;
        if enabled {
            let program = program().map_err(|e| format!("cannot find this program: {e}"))?;
            let text = entry_text(&program.display().to_string(), &args(paths))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            crate::engine::config::write_atomic(&path, text.as_bytes(), false)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(entry = %path.display(), "start at login: on");
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
            }
            tracing::info!(entry = %path.display(), "start at login: off");
        }
        Ok(())
    }
}

#[cfg(any(target_os = "macos", windows))]
mod imp {
    use super::*;

    /// A login item (macOS) or the `Run` key (Windows), through auto-launch (what
    /// tauri-plugin-autostart uses). Not built or tested here: no Mac or Windows.
    fn launcher(paths: &Paths) -> Result<auto_launch::AutoLaunch, String> {
        let program = program().map_err(|e| format!("cannot find this program: {e}"))?;
        // One login item per config dir, as on Linux.
        let name = match dir_tag(paths) {
            None => "Tokenwarden".to_string(),
            Some(hex) => format!("Tokenwarden {hex}"),
        };
        auto_launch::AutoLaunchBuilder::new()
            .set_app_name(&name)
            .set_app_path(&program.display().to_string())
            .set_args(&args(paths))
            .build()
            .map_err(|e| e.to_string())
    }

    pub fn is_enabled(paths: &Paths) -> Result<bool, String> {
        launcher(paths)?.is_enabled().map_err(|e| e.to_string())
    }

    pub fn set(paths: &Paths, enabled: bool) -> Result<(), String> {
        let al = launcher(paths)?;
        if enabled { al.enable() } else { al.disable() }.map_err(|e| e.to_string())
    }
}

/// Is start at login on? (The real state: the entry as it is now.)
pub fn is_enabled(paths: &Paths) -> Result<bool, String> {
    imp::is_enabled(paths)
}

/// Turn start at login on or off; returns the state afterwards.
pub fn set(paths: &Paths, enabled: bool) -> Result<bool, String> {
    imp::set(paths, enabled)?;
    imp::is_enabled(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_arguments_are_quoted_as_the_spec_asks() {
        assert_eq!(exec_arg("/usr/bin/tokenwarden"), "/usr/bin/tokenwarden");
        assert_eq!(exec_arg("--hidden"), "--hidden");
        assert_eq!(exec_arg("/opt/My Apps/tw"), "\"/opt/My Apps/tw\"");
        assert_eq!(exec_arg("/home/a/100%"), "/home/a/100%%");
        assert_eq!(exec_arg("a\"b"), "\"a\\\\\"b\"");
        assert_eq!(exec_arg("$HOME"), "\"\\\\$HOME\"");
        // one literal backslash: \\ inside the quotes, doubled again as a string value
        assert_eq!(exec_arg("a\\b"), "\"a\\\\\\\\b\"");
        assert_eq!(exec_arg(""), "\"\"");
    }

    #[test]
    fn the_entry_starts_the_app_hidden() {
        let args = vec![
            "--config-dir".to_string(),
            "/home/a/my config".to_string(),
            "--hidden".to_string(),
        ];
        let text = entry_text("/usr/bin/tokenwarden", &args).unwrap();
        assert!(text
            .contains("\nExec=/usr/bin/tokenwarden --config-dir \"/home/a/my config\" --hidden\n"));
        assert!(text.contains("\n[Desktop Entry]\nType=Application\n"));
        assert!(entry_enabled(&text));
        assert!(!entry_enabled(&format!("{text}Hidden=true\n")));
        assert!(entry_text("/tmp/a\nb", &args).is_err());
    }

    #[test]
    fn a_config_dir_of_its_own_is_passed_along() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().to_path_buf())).unwrap();
        assert_eq!(
            args(&paths),
            vec![
                "--config-dir".to_string(),
                dir.path().display().to_string(),
                "--hidden".to_string()
            ]
        );
        let name = entry_path(&paths).unwrap();
        let name = name.file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with("tokenwarden-") && name.ends_with(".desktop"),
            "{name}"
        );
    }
}
