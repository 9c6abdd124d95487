//! Today's MCP authorization against the project's own issuer and remote, through the
//! real binary: step-up (`403 insufficient_scope`) behind the local proxy.

mod support;

use std::time::Duration;
use support::*;
use tokenwarden::engine::Status;
use tokenwarden::sim_remote::{RemoteOptions, SimRemote};

struct Setup {
    env: TestEnv,
    issuer: SimIssuer,
    remote: SimRemote,
    /// The local proxy's URL for the remote's `/mcp`.
    local: String,
    http: reqwest::Client,
}

/// Workload `w` (scopes `read`) in front of a `SimRemote`, signed in, daemon up.
async fn setup(test: &str) -> Setup {
    init_tracing(test);
    let issuer = issuer(IssuerOptions::default()).await;
    let remote = SimRemote::start(issuer.clone(), RemoteOptions::default())
        .await
        .unwrap();
    let env = TestEnv::new(test);
    env.write_config(&format!(
        "{}{}\nurl = \"{}\"\n",
        file_store_header(),
        workload_toml("w", &issuer).trim_end(),
        remote.url()
    ));
    env.start_daemon().await;
    let out = env.login("w").await;
    assert!(out.ok(), "{out:?}");
    let s = env
        .wait_for("w", Duration::from_secs(10), |s| {
            s.status == Status::Running && s.local_url.is_some()
        })
        .await;
    Setup {
        env,
        issuer,
        remote,
        local: s.local_url.unwrap(),
        http: reqwest::Client::new(),
    }
}

impl Setup {
    /// `POST` a JSON-RPC call through the proxy to `path` (under `/mcp`).
    async fn call(&self, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.local))
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin"}}"#)
            .send()
            .await
            .unwrap()
    }

    /// The scopes the token the remote saw last was granted.
    fn last_token_scopes(&self) -> Vec<String> {
        let seen = self.remote.last_authorization().expect("a bearer");
        let token = seen.strip_prefix("Bearer ").expect("bearer");
        self.issuer
            .access_token_scopes(token)
            .expect("a known token")
    }

    /// `login w` as a user would; the scopes its authorization URL asked for.
    async fn login(&self) -> (Option<u16>, Output, Vec<String>) {
        let (page, out) = self.env.run_following(&["login", "w"]).await;
        let url = url::Url::parse(&out.stdout).expect("an authorization URL");
        let scopes = url
            .query_pairs()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.split(' ').map(str::to_string).collect())
            .unwrap_or_default();
        (page, out, scopes)
    }
}

/// The proxy's answer to a step-up: `403`, a JSON reason, and no challenge of its own
/// (a client behind the proxy must not start an OAuth flow).
async fn assert_step_up_answer(r: reqwest::Response, says: &str) -> serde_json::Value {
    assert_eq!(r.status(), 403);
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "the challenge must not reach the client: {:?}",
        r.headers()
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "insufficient_scope", "{v}");
    assert_eq!(v["workload"], "w", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_challenge_asks_for_one_sign_in_with_the_union_and_the_call_then_succeeds() {
    let s = setup("authz_step_up").await;
    s.remote
        .require_scopes("/mcp/admin", Some(&["admin"]), None);
    assert_eq!(s.call("").await.status(), 200);

    let r = s.call("/admin").await;
    assert_step_up_answer(r, "needs more permission: admin. Re-authenticate").await;
    let st = s
        .env
        .wait_for("w", Duration::from_secs(5), |w| !w.needs_scopes.is_empty())
        .await;
    assert_eq!(st.status, Status::Running, "{st:?}");
    assert_eq!(st.needs_scopes, ["admin"]);
    assert_eq!(st.reason.as_deref(), Some("needs more permission: admin"));
    assert_eq!(
        st.hint.as_deref(),
        Some("Re-authenticate to grant it: tokenwarden login w")
    );
    // The token still serves every other call meanwhile.
    assert_eq!(s.call("").await.status(), 200);
    // `status` (the CLI's table) says it too.
    let out = s.env.run(&["status", "w"]);
    assert!(
        out.stdout.contains("needs more permission: admin"),
        "{out:?}"
    );

    // The sign-in asks for the union: what was asked before and the challenge's.
    let (page, out, asked) = s.login().await;
    assert_eq!(page, Some(200));
    assert!(out.ok(), "{out:?}");
    assert_eq!(asked, ["read", "admin"]);
    let st = s
        .env
        .wait_for("w", Duration::from_secs(5), |w| w.needs_scopes.is_empty())
        .await;
    assert_eq!((st.status, st.reason), (Status::Running, None));

    // The same call succeeds now, with a token that has both scopes.
    let r = s.call("/admin").await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.last_token_scopes(), ["read", "admin"]);
    assert_eq!(s.remote.insufficient_scope_responses(), 1);

    // The next sign-in keeps what the step-up added.
    let (_, out, asked) = s.login().await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(asked, ["read", "admin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_the_user_refuses_leaves_the_workload_running_and_still_asking() {
    let s = setup("authz_step_up_refused").await;
    s.remote
        .require_scopes("/mcp/admin", Some(&["admin"]), None);
    assert_step_up_answer(s.call("/admin").await, "needs more permission: admin").await;
    s.env
        .wait_for("w", Duration::from_secs(5), |w| w.needs_scopes == ["admin"])
        .await;

    // At the authorization server, the user says no.
    s.issuer.refuse_scopes(&["admin"]);
    let (_, out, asked) = s.login().await;
    assert_eq!(asked, ["read", "admin"]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("access_denied"), "{}", out.stderr);

    // Nothing changed: the old token serves the other calls, the step-up still waits.
    assert_eq!(s.call("").await.status(), 200);
    assert_eq!(s.last_token_scopes(), ["read"]);
    assert_step_up_answer(s.call("/admin").await, "needs more permission: admin").await;
    let st = &s.env.status().await[0];
    assert_eq!(st.status, Status::Running);
    assert_eq!(st.needs_scopes, ["admin"]);
    assert_eq!(st.reason.as_deref(), Some("needs more permission: admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_keeps_asking_is_not_asked_about_again_after_two_sign_ins() {
    let s = setup("authz_step_up_loop").await;
    // It checks `admin` but asks for `extra`: no sign-in can satisfy it.
    s.remote
        .require_scopes("/mcp/admin", Some(&["admin"]), Some("extra"));
    assert_step_up_answer(s.call("/admin").await, "needs more permission: extra").await;
    s.env
        .wait_for("w", Duration::from_secs(5), |w| w.needs_scopes == ["extra"])
        .await;

    // First sign-in: asked for `extra`, still refused: asked once more.
    let (_, out, asked) = s.login().await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(asked, ["read", "extra"]);
    s.env
        .wait_for("w", Duration::from_secs(5), |w| w.needs_scopes.is_empty())
        .await;
    for _ in 0..3 {
        // However many calls are refused, one sign-in counts once.
        assert_step_up_answer(
            s.call("/admin").await,
            "needs more permission: extra. Re-authenticate",
        )
        .await;
    }
    let st = s
        .env
        .wait_for("w", Duration::from_secs(5), |w| w.needs_scopes == ["extra"])
        .await;
    assert_eq!(st.reason.as_deref(), Some("needs more permission: extra"));

    // Second sign-in, still refused: the user is not asked again.
    let (_, out, asked) = s.login().await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(asked, ["read", "extra"]);
    s.env
        .wait_for("w", Duration::from_secs(5), |w| w.needs_scopes.is_empty())
        .await;
    assert_step_up_answer(s.call("/admin").await, "does not ask again").await;
    let st = s
        .env
        .wait_for("w", Duration::from_secs(5), |w| {
            w.reason
                .as_deref()
                .is_some_and(|r| r.contains("does not ask again"))
        })
        .await;
    assert!(st.needs_scopes.is_empty(), "{st:?}");
    assert_eq!(st.status, Status::Running);
    assert!(st
        .reason
        .unwrap()
        .starts_with("needs more permission: extra; the remote refused 2 sign-ins"),);
    // Other calls still work.
    assert_eq!(s.call("").await.status(), 200);
}
