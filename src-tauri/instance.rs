//! One process per config directory (the daemon or the desktop app), enforced by an OS
//! file lock, released by the kernel even on SIGKILL, so a crash never leaves a stale
//! lock.

use crate::paths::Paths;
use anyhow::Context;
use std::io::{Read, Seek, Write};

/// The held instance lock. Dropping it releases the lock.
pub struct InstanceLock {
    file: std::fs::File,
}

/// Take the per-config-dir lock, or say which process holds it.
pub fn acquire_lock(paths: &Paths) -> anyhow::Result<InstanceLock> {
    // Private (0700): an older install's looser dir is tightened here, at start.
    crate::engine::config::ensure_private_dir(&paths.config_dir)
        .with_context(|| format!("cannot create {}", paths.config_dir.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&paths.lock_file)
        .with_context(|| format!("cannot open {}", paths.lock_file.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let pid = owner.lines().next().unwrap_or("").trim();
            anyhow::bail!(
                "a tokenwarden daemon already runs for {} (pid {}); stop it first or use another --config-dir",
                paths.config_dir.display(),
                if pid.is_empty() { "unknown" } else { pid }
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", paths.lock_file.display()))
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(InstanceLock { file })
}

impl InstanceLock {
    /// Note, after the pid, the config dir whose control socket this process serves
    /// when it is not the locked one (the demo's own): a second launch of the desktop
    /// app finds the first there ([`control_dir_of_owner`]).
    pub fn note_control_dir(&mut self, dir: &std::path::Path) -> std::io::Result<()> {
        let text = format!("{}\n{}", std::process::id(), dir.display());
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }
}

/// The control dir the holder of `paths`' lock noted ([`InstanceLock::note_control_dir`]),
/// else `paths`' own.
pub fn control_dir_of_owner(paths: &Paths) -> std::path::PathBuf {
    std::fs::read_to_string(&paths.lock_file)
        .ok()
        .and_then(|t| t.lines().nth(1).map(|l| std::path::PathBuf::from(l.trim())))
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| paths.config_dir.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_names_the_holder_and_where_its_control_socket_is() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().to_path_buf())).unwrap();
        let mut lock = acquire_lock(&paths).unwrap();
        // Nothing noted: the config dir's own socket.
        assert_eq!(control_dir_of_owner(&paths), paths.config_dir);
        let demo = tempfile::tempdir().unwrap();
        lock.note_control_dir(demo.path()).unwrap();
        assert_eq!(control_dir_of_owner(&paths), demo.path());
        // A second taker is refused with the holder's pid (the first line).
        let err = acquire_lock(&paths).err().unwrap().to_string();
        assert!(
            err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(lock);
        // A relative or empty second line is not trusted.
        std::fs::write(&paths.lock_file, "1\nrelative/dir").unwrap();
        assert_eq!(control_dir_of_owner(&paths), paths.config_dir);
    }

    #[cfg(unix)]
    #[test]
    fn starting_makes_the_config_dir_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cfg");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = Paths::resolve(Some(dir.clone())).unwrap();
        let _lock = acquire_lock(&paths).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
