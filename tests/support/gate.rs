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
