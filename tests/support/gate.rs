//! Markers left by gated tests (desktop, keychain, root) when their gated part runs:
//! `scripts/test.sh` fails under CI when a gate it asked for left none, so a gate that
//! silently stopped running cannot pass for a green suite.

/// Record that `test` ran the part behind `gate` (`desktop`, `keychain`, `root`).
pub fn ran(gate: &str, test: &str) {
    let Some(dir) = std::env::var_os("TOKENWARDEN_TEST_LOG_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir).join("gates").join(gate);
    let name: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(name), ""))
    {
        panic!(
            "cannot leave the {gate} gate's marker in {}: {e}",
            dir.display()
        );
    }
}

/// Whether `test` may act as a second OS user (root only; CI runs as root). Not root:
/// `false` after a SKIPPED line, or a failure under `TOKENWARDEN_TEST_ROOT=1`.
#[allow(dead_code)] // not every test binary has root-only tests
pub fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        ran("root", test);
        return true;
    }
    assert!(
        std::env::var("TOKENWARDEN_TEST_ROOT").as_deref() != Ok("1"),
        "TOKENWARDEN_TEST_ROOT=1 but not running as root"
    );
    eprintln!("SKIPPED {test}: needs root to act as a second user (run scripts/test.sh as root)");
    false
}
