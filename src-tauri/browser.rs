//! Which browser a sign-in opens: `TOKENWARDEN_BROWSER` (a program, given the URL as
//! its only argument), else `BROWSER` (the common convention: a `:`-separated list of
//! commands, each split at spaces, `%s` standing for the URL, else the URL appended;
//! the first that starts is used), else the system's default browser.

/// The commands to try, in order: program and arguments (the URL in place). Empty: the
/// system's default browser.
pub fn commands(
    tokenwarden_browser: Option<&std::ffi::OsStr>,
    browser: Option<&str>,
    url: &str,
) -> Vec<(std::ffi::OsString, Vec<String>)> {
    if let Some(cmd) = tokenwarden_browser.filter(|c| !c.is_empty()) {
        return vec![(cmd.to_os_string(), vec![url.to_string()])];
    }
    let Some(list) = browser else {
        return Vec::new();
    };
    list.split(':')
        .filter_map(|entry| {
            let mut words = entry.split_whitespace();
            let program = words.next()?;
            let mut args: Vec<String> = Vec::new();
            let mut placed = false;
            for w in words {
                let (arg, has_url) = substitute(w, url);
                placed |= has_url;
                args.push(arg);
            }
            if !placed {
                args.push(url.to_string());
            }
            Some((program.into(), args))
        })
        .collect()
}

/// `word` with `%s` replaced by `url` and `%%` by `%` (in one pass: the URL's own
/// `%` escapes stay); whether it held `%s`.
fn substitute(word: &str, url: &str) -> (String, bool) {
    let mut out = String::new();
    let mut placed = false;
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.clone().next() {
            Some('s') => {
                chars.next();
                out.push_str(url);
                placed = true;
            }
            Some('%') => {
                chars.next();
                out.push('%');
            }
            _ => out.push('%'),
        }
    }
    (out, placed)
}

/// Open `url` in the browser. An error means no browser could be started (what the
/// browser then does is not known here); it names each command tried.
pub fn open(url: &str) -> Result<(), String> {
    let browser = std::env::var("BROWSER").ok();
    let tried = commands(
        std::env::var_os("TOKENWARDEN_BROWSER").as_deref(),
        browser.as_deref().filter(|b| !b.trim().is_empty()),
        url,
    );
    if tried.is_empty() {
        return open::that_detached(url).map_err(|e| e.to_string());
    }
    let mut errors = Vec::new();
    for (program, args) in tried {
        match std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                // Reaped when it ends (a long-running app must not collect zombies).
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            Err(e) => errors.push(format!("{}: {e}", std::path::Path::new(&program).display())),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn strs(v: Vec<(std::ffi::OsString, Vec<String>)>) -> Vec<Vec<String>> {
        v.into_iter()
            .map(|(p, a)| {
                std::iter::once(p.to_string_lossy().into_owned())
                    .chain(a)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn tokenwarden_browser_first_then_the_browser_list() {
        let u = "http://127.0.0.1:1/authorize?a=1&redirect_uri=http%3A%2F%2F127.0.0.1%25s";
        assert_eq!(
            strs(commands(
                Some(OsStr::new("/opt/my browser")),
                Some("firefox"),
                u
            )),
            [["/opt/my browser", u]]
        );
        assert_eq!(
            strs(commands(None, Some("/no/such:firefox --new-tab %s:w3m"), u)),
            vec![
                vec!["/no/such", u],
                vec!["firefox", "--new-tab", u],
                vec!["w3m", u]
            ]
        );
        assert_eq!(
            strs(commands(Some(OsStr::new("")), Some("lynx"), u)),
            [["lynx", u]]
        );
        assert!(commands(None, None, u).is_empty());
        assert!(commands(None, Some(" : "), u).is_empty());
        assert_eq!(
            strs(commands(None, Some("open-it --url=%s --pct=100%%"), u)),
            [[
                "open-it".to_string(),
                format!("--url={u}"),
                "--pct=100%".into()
            ]]
        );
    }
}
