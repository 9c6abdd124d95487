//! `tokenwarden logs [-f] [-n N] [NAME]`: the daemon's and the app's log files (the
//! daily files in the log directory, oldest first), all of them or the lines about one
//! workload (`workload=NAME`); with `-f`, the last lines and then new ones as they are
//! written, across the daily rotation, until interrupted.

use std::collections::VecDeque;
use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `-f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Lines shown before following when `-n` is not given.
const FOLLOW_TAIL: usize = 10;

/// The log files in `dir` (`tokenwarden.YYYY-MM-DD.log`, and a plain
/// `tokenwarden.log`), oldest first.
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tokenwarden") && n.ends_with(".log"))
        })
        .collect();
    // The date in the name sorts them.
    files.sort();
    Ok(files)
}

/// Whether `line` is about workload `name`: it carries `workload=NAME` (a field or a
/// span), NAME not followed by another character a name may hold.
pub fn is_about(line: &[u8], name: &str) -> bool {
    let needle = format!("workload={name}");
    let needle = needle.as_bytes();
    let mut from = 0;
    while let Some(i) = find(&line[from..], needle) {
        let end = from + i + needle.len();
        let next = line.get(end).copied();
        if !next.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
            return true;
        }
        from += i + 1;
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Output that ends quietly when the reader goes away (`tokenwarden logs | head`).
struct Out<'a>(std::io::StdoutLock<'a>);

impl Out<'_> {
    /// `false`: the reader is gone.
    fn line(&mut self, line: &[u8]) -> anyhow::Result<bool> {
        let mut r = self.0.write_all(line);
        if r.is_ok() && !line.ends_with(b"\n") {
            r = self.0.write_all(b"\n");
        }
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn flush(&mut self) -> anyhow::Result<bool> {
        match self.0.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

pub async fn show(
    log_dir: &Path,
    name: Option<&str>,
    follow: bool,
    lines: Option<usize>,
) -> anyhow::Result<()> {
    if let Some(n) = name {
        crate::engine::config::validate_name(n).map_err(|e| anyhow::anyhow!(e))?;
    }
    let files = match log_files(log_dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => anyhow::bail!("cannot read the log directory {}: {e}", log_dir.display()),
    };
    if files.is_empty() && !follow {
        anyhow::bail!(
            "no logs in {} yet: the daemon and the app write them there once they have run",
            log_dir.display()
        );
    }
    let keep = lines.or(follow.then_some(FOLLOW_TAIL));
    let matches = |l: &[u8]| name.is_none_or(|n| is_about(l, n));
    let mut out = Out(std::io::stdout().lock());

    // The history: every matching line, or the last `keep` of them.
    let mut tail: VecDeque<Vec<u8>> = VecDeque::new();
    let mut position = None; // (file, bytes read) where following goes on
    for path in &files {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let mut reader = std::io::BufReader::new(file);
        let mut read = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || !line.ends_with(b"\n") {
                break; // a line still being written is read by -f
            }
            read += n as u64;
            if !matches(&line) {
                continue;
            }
            match keep {
                Some(k) => {
                    if k > 0 {
                        if tail.len() == k {
                            tail.pop_front();
                        }
                        tail.push_back(line.clone());
                    }
                }
                None => {
                    if !out.line(&line)? {
                        return Ok(());
                    }
                }
            }
        }
        position = Some((path.clone(), read));
    }
    for l in &tail {
        if !out.line(l)? {
            return Ok(());
        }
    }
    if !out.flush()? || !follow {
        return Ok(());
    }
    drop(tail);

    // Following: new bytes of the newest file; a newer file (the next day's) is
    // started from its beginning once the current one has been read to its end.
    let mut partial = Vec::new();
    loop {
        let newest = log_files(log_dir).unwrap_or_default().pop();
        let (path, offset) = match (&position, newest) {
            (None, None) => {
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
            (None, Some(n)) => (n, 0),
            (Some(p), _) => p.clone(),
        };
        let mut offset = offset;
        let mut grew = false;
        if let Ok(mut f) = std::fs::File::open(&path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0; // truncated: read it again from the start
                partial.clear();
            }
            if len > offset {
                f.seek(std::io::SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                f.take(len - offset).read_to_end(&mut buf)?;
                offset += buf.len() as u64;
                partial.extend_from_slice(&buf);
                grew = true;
            }
        }
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            if matches(&line) && !out.line(&line)? {
                return Ok(());
            }
        }
        if !out.flush()? {
            return Ok(());
        }
        position = Some((path.clone(), offset));
        if !grew {
            // Read to its end: move on to a newer file, if one has appeared.
            if let Some(next) = log_files(log_dir)
                .unwrap_or_default()
                .into_iter()
                .find(|p| p > &path)
            {
                partial.clear();
                position = Some((next, 0));
                continue;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_about_a_workload_by_its_whole_name() {
        let l = b"2026-01-01T00:00:00Z  INFO refresh failed workload=alpha reason=x\n";
        assert!(is_about(l, "alpha"));
        assert!(!is_about(l, "alph"));
        assert!(is_about(b"x workload=alpha.beta y", "alpha.beta"));
        assert!(!is_about(b"x workload=alpha.beta y", "alpha"));
        assert!(!is_about(b"x workload=alpha-2 y", "alpha"));
        assert!(is_about(b"monitor{workload=alpha}: x", "alpha"));
        assert!(is_about(b"x workload=alpha2 workload=alpha", "alpha"));
        assert!(!is_about(b"x name=alpha", "alpha"));
    }
}
