//! MCP clients' config files (`connect`, `disconnect`, `import`): one realistic file
//! per client in `fixtures/clients/` (comments where the format allows them, entries
//! of other servers), edited through the library as the CLI does. Golden outputs
//! are `fixtures/clients/NAME.connected.EXT`; `TOKENWARDEN_UPDATE_GOLDEN=1`
//! rewrites them (then read the diff).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokenwarden::clients::{
    self, find_remote, plan_connect, plan_disconnect, ClientKind, Doc, Mode, Target, Wanted,
};

const LOCAL: &str = "http://127.0.0.1:8765/mcp";
const EXE: &str = "/opt/tokenwarden/bin/tokenwarden";

fn fixture_name(k: ClientKind) -> (&'static str, &'static str) {
    match k {
        ClientKind::Codex => ("codex", "toml"),
        ClientKind::Goose => ("goose", "yaml"),
        other => (other.name(), "json"),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients")
}

fn fixture(k: ClientKind) -> (PathBuf, String) {
    let (n, ext) = fixture_name(k);
    let p = fixtures().join(format!("{n}.{ext}"));
    let t = std::fs::read_to_string(&p).unwrap();
    (p, t)
}

fn stdio(name: &str) -> Target {
    Target::Stdio {
        command: EXE.into(),
        args: vec![
            "--config-dir".into(),
            "/home/me/.config/tw-work".into(),
            "stdio".into(),
            name.into(),
        ],
    }
}

fn wanted(k: ClientKind, name: &str) -> Wanted {
    Wanted {
        name: name.into(),
        target: if k.speaks_http() {
            Target::Http(LOCAL.into())
        } else {
            stdio(name)
        },
        local_url: Some(LOCAL.into()),
    }
}

fn golden(k: ClientKind, got: &str) {
    let (n, ext) = fixture_name(k);
    let p = fixtures().join(format!("{n}.connected.{ext}"));
    if std::env::var_os("TOKENWARDEN_UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, got).unwrap();
    }
    let want = std::fs::read_to_string(&p).unwrap_or_default();
    assert_eq!(got, want, "{k}: output differs from {}", p.display());
}

#[test]
fn connect_writes_each_clients_entry_exactly_and_disconnect_gives_the_original_back() {
    for k in ClientKind::ALL {
        let (path, original) = fixture(k);
        let w = wanted(k, "gh-mcp");
        let (connected, notes) = plan_connect(k, &path, Some(&original), &[w], false).unwrap();
        assert_eq!(notes, ["gh-mcp: added"], "{k}");
        golden(k, &connected);

        // The entry reads back as the client's shape.
        let doc = Doc::parse(k, &path, &connected).unwrap();
        let servers = doc.servers(&path).unwrap();
        let (_, v) = servers.iter().find(|(n, _)| n == "gh-mcp").unwrap();
        assert!(clients::is_ours("gh-mcp", v, Some(LOCAL)), "{k}: {v}");

        // Idempotent: a second connect changes nothing and says so.
        let (again, notes) =
            plan_connect(k, &path, Some(&connected), &[wanted(k, "gh-mcp")], false).unwrap();
        assert_eq!(again, connected, "{k}");
        assert_eq!(notes, ["gh-mcp: already connected"], "{k}");

        // Every other byte kept: removing the entry gives the original bytes.
        let (back, notes) = plan_disconnect(
            k,
            &path,
            &connected,
            &[("gh-mcp".into(), Some(LOCAL.into()))],
            false,
        )
        .unwrap();
        assert_eq!(notes, ["gh-mcp: removed"], "{k}");
        assert_eq!(back, original, "{k}: disconnect did not restore the file");

        // A stdio entry (`connect --stdio`) comes and goes the same way.
        let ws = Wanted {
            target: stdio("gh-mcp"),
            ..wanted(k, "gh-mcp")
        };
        let (s, _) = plan_connect(k, &path, Some(&original), &[ws], false).unwrap();
        assert!(s.contains(EXE), "{k}");
        let (back, _) = plan_disconnect(k, &path, &s, &[("gh-mcp".into(), None)], true).unwrap();
        assert_eq!(back, original, "{k}: stdio entry");
    }
}

#[test]
fn two_entries_in_one_connect_and_removed_in_any_order() {
    for k in ClientKind::ALL {
        let (path, original) = fixture(k);
        let (two, notes) = plan_connect(
            k,
            &path,
            Some(&original),
            &[wanted(k, "one"), wanted(k, "two")],
            false,
        )
        .unwrap();
        assert_eq!(notes, ["one: added", "two: added"], "{k}");
        for first in ["one", "two"] {
            let other = if first == "one" { "two" } else { "one" };
            let (a, _) =
                plan_disconnect(k, &path, &two, &[(first.into(), Some(LOCAL.into()))], false)
                    .unwrap();
            let (b, _) =
                plan_disconnect(k, &path, &a, &[(other.into(), Some(LOCAL.into()))], false)
                    .unwrap();
            assert_eq!(b, original, "{k}: removing {first} first");
        }
    }
}

#[test]
fn an_entry_tokenwarden_did_not_write_is_refused_unless_replace_and_never_removed() {
    for k in ClientKind::ALL {
        let (path, original) = fixture(k);
        let doc = Doc::parse(k, &path, &original).unwrap();
        let theirs = doc.servers(&path).unwrap()[0].0.clone();
        let err = plan_connect(k, &path, Some(&original), &[wanted(k, &theirs)], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--replace"), "{k}: {err}");
        assert!(err.contains(&path.display().to_string()), "{k}: {err}");

        let (replaced, notes) =
            plan_connect(k, &path, Some(&original), &[wanted(k, &theirs)], true).unwrap();
        assert!(notes[0].contains("replaced"), "{k}: {notes:?}");
        let doc = Doc::parse(k, &path, &replaced).unwrap();
        let servers = doc.servers(&path).unwrap();
        // Replaced where it was: same names in the same order, only its value changed.
        let before: Vec<String> = Doc::parse(k, &path, &original)
            .unwrap()
            .servers(&path)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let after: Vec<String> = servers.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(before.len(), after.len(), "{k}");
        let v = &servers.iter().find(|(n, _)| *n == theirs).unwrap().1;
        assert!(clients::is_ours(&theirs, v, Some(LOCAL)), "{k}");

        // disconnect leaves another program's entry alone, and says so.
        let (same, notes) = plan_disconnect(
            k,
            &path,
            &original,
            &[(theirs.clone(), Some(LOCAL.into()))],
            false,
        )
        .unwrap();
        assert_eq!(same, original, "{k}");
        assert!(notes[0].contains("left as it is"), "{k}: {notes:?}");
    }
}

#[test]
fn a_missing_or_empty_file_gets_just_our_entry() {
    for k in ClientKind::ALL {
        let path = PathBuf::from("/nonexistent/config");
        let (new, _) = plan_connect(k, &path, None, &[wanted(k, "gh-mcp")], false).unwrap();
        let doc = Doc::parse(k, &path, &new).unwrap();
        let servers = doc.servers(&path).unwrap();
        assert_eq!(servers.len(), 1, "{k}: {new}");
        let (again, _) = plan_connect(k, &path, Some(""), &[wanted(k, "gh-mcp")], false).unwrap();
        assert_eq!(again, new, "{k}");
        // And the entry alone (`client-config NAME --client`) is what the file got.
        let alone = clients::entry_text(k, "gh-mcp", &wanted(k, "gh-mcp").target);
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert!(
            squash(&new).contains(&squash(&alone)),
            "{k}:\n{alone}\nnot in\n{new}"
        );
    }
    let vs = plan_connect(
        ClientKind::Vscode,
        Path::new("x"),
        None,
        &[wanted(ClientKind::Vscode, "gh-mcp")],
        false,
    )
    .unwrap()
    .0;
    assert_eq!(
        vs,
        "{\n  \"servers\": {\n    \"gh-mcp\": {\n      \"type\": \"http\",\n      \"url\": \"http://127.0.0.1:8765/mcp\"\n    }\n  }\n}\n"
    );
}

#[test]
fn unparseable_files_are_refused_naming_the_file_and_line() {
    let cases: &[(ClientKind, &str, &str)] = &[
        // Claude Desktop reads plain JSON: a comment is an error there.
        (
            ClientKind::ClaudeDesktop,
            "{\n  \"mcpServers\": {}\n  // no\n}\n",
            ":3:",
        ),
        (
            ClientKind::ClaudeCode,
            "{\n  \"a\": 1,\n  \"b\": \n}\n",
            ":4:",
        ),
        (
            ClientKind::Vscode,
            "{\n\t\"servers\": {\n\t\t\"x\": {\n\t/* open\n}\n",
            ":",
        ),
        (ClientKind::Cursor, "{\"mcpServers\": []}", "not an object"),
        (
            ClientKind::Windsurf,
            "[1, 2]",
            "does not hold a JSON object",
        ),
        (
            ClientKind::GeminiCli,
            "{\n  \"mcpServers\": {\n    \"a\": {\"httpUrl\": \"x\",,}\n  }\n}\n",
            ":3:",
        ),
        (
            ClientKind::Codex,
            "model = \"x\"\n[mcp_servers.a]\nurl = \n",
            ":3:",
        ),
        (
            ClientKind::Codex,
            "mcp_servers = { a = { url = \"https://a\" } }\n",
            "edit it by hand",
        ),
        (
            ClientKind::Goose,
            "extensions:\n  a:\n    type: stdio\n   cmd: x\n",
            ":4:",
        ),
        (
            ClientKind::Goose,
            "extensions: {a: {type: stdio, cmd: x}}\n",
            "block mapping",
        ),
        (ClientKind::Goose, "extensions:\n- a\n", "not a mapping"),
    ];
    for (k, text, want) in cases {
        let path = Path::new("/home/me/client.conf");
        let err = plan_connect(*k, path, Some(text), &[wanted(*k, "gh-mcp")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/home/me/client.conf"), "{k}: {err}");
        assert!(err.contains(want), "{k}: `{want}` not in: {err}");
    }
}

#[test]
fn import_finds_url_entries_and_mcp_remote_commands_and_skips_ours() {
    let mut got = Vec::new();
    for k in ClientKind::ALL {
        let (path, text) = fixture(k);
        // Our own entry (connected before) is never imported.
        let (text, _) = plan_connect(k, &path, Some(&text), &[wanted(k, "ours")], false).unwrap();
        let doc = Doc::parse(k, &path, &text).unwrap();
        for f in find_remote(k, &path, &doc.servers(&path).unwrap(), &[8765]) {
            got.push(format!("{} {} {} {}", f.client, f.name, f.how, f.url));
        }
    }
    got.sort();
    let want = [
        "claude-code sentry http https://mcp.sentry.dev/mcp",
        "claude-desktop linear mcp-remote https://mcp.linear.app/sse",
        "codex docs mcp-remote https://docs.example.com/mcp",
        "codex figma http https://mcp.figma.com/mcp",
        "cursor context7 http https://mcp.context7.com/mcp",
        "cursor notion mcp-remote https://mcp.notion.com/mcp",
        "gemini-cli atlassian http https://mcp.atlassian.com/v1/mcp",
        "gemini-cli legacy-sse sse https://legacy.example.com/sse",
        "goose asana http https://mcp.asana.com/mcp",
        "goose github-remote mcp-remote https://api.githubcopilot.com/mcp/",
        "vscode github http https://api.githubcopilot.com/mcp/",
        "windsurf github http https://api.githubcopilot.com/mcp/",
    ];
    assert_eq!(got, want);
}

#[test]
fn import_rewrites_the_found_entries_in_place_and_keeps_the_rest() {
    for k in ClientKind::ALL {
        let (path, original) = fixture(k);
        let doc = Doc::parse(k, &path, &original).unwrap();
        let servers = doc.servers(&path).unwrap();
        let found = find_remote(k, &path, &servers, &[8765]);
        let want: Vec<Wanted> = found.iter().map(|f| wanted(k, &f.name)).collect();
        let (new, notes) = plan_connect(k, &path, Some(&original), &want, true).unwrap();
        assert_eq!(notes.len(), found.len(), "{k}");
        let after = Doc::parse(k, &path, &new).unwrap().servers(&path).unwrap();
        let names = |s: &[(String, serde_json::Value)]| {
            let mut n: Vec<String> = s.iter().map(|(n, _)| n.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&servers), names(&after), "{k}");
        for (n, v) in &after {
            if found.iter().any(|f| &f.name == n) {
                assert!(clients::is_ours(n, v, Some(LOCAL)), "{k}: {n}");
            } else {
                let before = &servers.iter().find(|(m, _)| m == n).unwrap().1;
                assert_eq!(v, before, "{k}: {n} changed");
            }
        }
        // Found again: nothing (they go through Tokenwarden now).
        assert!(find_remote(k, &path, &after, &[8765]).is_empty(), "{k}");
    }
}

#[test]
fn apply_backs_up_writes_atomically_and_keeps_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let k = ClientKind::Vscode;
    let (_, original) = fixture(k);
    let path = dir.path().join("mcp.json");
    std::fs::write(&path, &original).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (new, _) = plan_connect(k, &path, Some(&original), &[wanted(k, "gh-mcp")], false).unwrap();
    let yes = Mode {
        dry_run: false,
        yes: true,
    };

    // A dry run writes nothing.
    assert!(!clients::apply(
        &path,
        Some(&original),
        &new,
        Mode {
            dry_run: true,
            yes: true
        }
    )
    .unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    assert!(clients::apply(&path, Some(&original), &new, yes).unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&path), 0o640, "the file keeps its mode");
    let backups: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".tokenwarden-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let b = backups[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let stamp = b.strip_prefix("mcp.json.tokenwarden-backup-").unwrap();
    assert_eq!(stamp.len(), "20250101T000000Z".len(), "{b}");
    assert!(stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T', "{b}");
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), original);
    assert_eq!(mode(&backups[0]), 0o640, "the backup has the file's mode");
    // No temp file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

    // Unchanged text: nothing written, no second backup.
    assert!(!clients::apply(&path, Some(&new), &new, yes).unwrap());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

    // A link (a dotfiles checkout) stays a link; the file it points to changes.
    let real = dir.path().join("real.json");
    std::fs::write(&real, &original).unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(clients::apply(&link, Some(&original), &new, yes).unwrap());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&real).unwrap(), new);

    // A missing file and its directory are created, private.
    let fresh = dir.path().join("a/b/mcp.json");
    assert!(clients::apply(&fresh, None, &new, yes).unwrap());
    assert_eq!(mode(&fresh), 0o600);
}

#[test]
fn a_file_that_is_not_a_regular_utf8_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.json");
    std::fs::write(&p, b"{\n\"a\": \"\xff\"}").unwrap();
    let e = clients::read_client_file(&p).unwrap_err().to_string();
    assert!(e.contains("bad.json:2: not UTF-8"), "{e}");
    let e = clients::read_client_file(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(clients::read_client_file(&dir.path().join("none"))
        .unwrap()
        .is_none());
}
