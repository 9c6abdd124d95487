//! Today's MCP authorization against the project's own issuer and remote, through the
//! real binary: step-up (`403 insufficient_scope`) behind the local proxy; client
//! registration in the spec's order (Client ID Metadata Documents served from a
//! loopback URL the test serves, dynamic registration as a native application).

use crate::support;

use std::time::Duration;
use support::*;
use tokenwarden::engine::config::Config;
use tokenwarden::engine::Status;
use tokenwarden_sim::issuer::ClientMetadataMode;
use tokenwarden_sim::remote::{RemoteOptions, SimRemote};

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

// ---------------------------------------------------------------------------
// Client registration in the spec's order
// ---------------------------------------------------------------------------

/// Serves `doc` at `http://127.0.0.1:PORT/tokenwarden.json` until dropped.
struct DocServer {
    url: String,
    doc: std::sync::Arc<std::sync::Mutex<String>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn doc_server() -> DocServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/tokenwarden.json", listener.local_addr().unwrap());
    let doc = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let served = doc.clone();
    let app = axum::Router::new().route(
        "/tokenwarden.json",
        axum::routing::get(move || {
            let body = served.lock().unwrap().clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    DocServer {
        url,
        doc,
        _stop: tx,
    }
}

impl DocServer {
    fn serve(&self, doc: &str) {
        *self.doc.lock().unwrap() = doc.to_string();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tokenwarden client-metadata ARGS`: the document it prints.
fn client_metadata(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["client-metadata"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert!(out.ok(), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// An issuer taking Client ID Metadata Documents as `mode` says, its remote, a
/// daemon, and a document server.
/// The config has `[registration] client_metadata_port` = a free port (logins of
/// tests running at once must not share the default one).
async fn registration_setup(
    test: &str,
    mode: ClientMetadataMode,
) -> (TestEnv, SimIssuer, SimRemote, DocServer, u16) {
    init_tracing(test);
    let issuer = issuer(IssuerOptions::default()).await;
    issuer.set_client_metadata(mode);
    let remote = SimRemote::start(issuer.clone(), RemoteOptions::default())
        .await
        .unwrap();
    let env = TestEnv::new(test);
    let port = free_port();
    env.write_config(&format!(
        "{}[registration]\nclient_metadata_port = {port}\n",
        file_store_header()
    ));
    env.start_daemon().await;
    (env, issuer, remote, doc_server().await, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_taking_client_metadata_documents_gets_the_users_and_nothing_is_registered() {
    let (env, issuer, remote, docs, port) =
        registration_setup("authz_cimd", ClientMetadataMode::Accept).await;
    let doc = client_metadata(&env, &["--url", &docs.url]);
    assert_eq!(doc["client_id"], docs.url.as_str());
    assert_eq!(
        doc["redirect_uris"],
        serde_json::json!([format!("http://127.0.0.1:{port}/callback")])
    );
    assert_eq!(doc["application_type"], "native");
    docs.serve(&doc.to_string());

    let out = env
        .run_with_browser(&[
            "add",
            "w",
            "--url",
            &remote.url(),
            "--client-metadata-url",
            &docs.url,
        ])
        .await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains("Using the Client ID Metadata Document at"),
        "{}",
        out.stderr
    );
    let cfg = Config::load(&env.config_file()).unwrap();
    let w = cfg.workload("w").unwrap();
    assert_eq!(w.client_id, docs.url);
    assert_eq!(w.redirect_port, Some(port));
    assert_eq!(issuer.registrations(), 0, "nothing registered");
    assert!(issuer.client_metadata_fetches() >= 1);
    env.wait_for("w", Duration::from_secs(10), |s| {
        s.status == Status::Running && s.access_token_valid
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_client_metadata_document_is_the_default_and_a_server_without_support_registers_a_native_client(
) {
    let (env, issuer, remote, docs, port) =
        registration_setup("authz_cimd_default", ClientMetadataMode::Accept).await;
    env.write_config(&format!(
        "{}[registration]\nclient_metadata_url = \"{}\"\nclient_metadata_port = {port}\n",
        file_store_header(),
        docs.url
    ));
    // `client-metadata` without --url prints the configured one.
    let doc = client_metadata(&env, &[]);
    assert_eq!(doc["client_id"], docs.url.as_str());
    assert_eq!(
        doc["redirect_uris"],
        serde_json::json!([format!("http://127.0.0.1:{port}/callback")])
    );
    docs.serve(&doc.to_string());
    let out = env
        .run_with_browser(&["add", "a", "--url", &remote.url()])
        .await;
    assert!(out.ok(), "{out:?}");
    let cfg = Config::load(&env.config_file()).unwrap();
    assert_eq!(cfg.workload("a").unwrap().client_id, docs.url);
    assert_eq!(issuer.registrations(), 0);

    // A server that does not take them: dynamic registration, as a native app.
    issuer.set_client_metadata(ClientMetadataMode::Off);
    let out = env
        .run_with_browser(&["add", "b", "--url", &remote.url()])
        .await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("Registered a new public client"),
        "{}",
        out.stderr
    );
    let requests = issuer.registration_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["application_type"], "native", "{}", requests[0]);
    let cfg = Config::load(&env.config_file()).unwrap();
    assert_ne!(cfg.workload("b").unwrap().client_id, docs.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_document_is_refused_at_add_and_a_server_refusing_it_says_invalid_client() {
    let (env, issuer, remote, docs, _) =
        registration_setup("authz_cimd_refused", ClientMetadataMode::Accept).await;
    let before = read(&env.config_file());
    // A document that names another client id: refused before anything is written.
    let mut doc = client_metadata(&env, &["--url", &docs.url]);
    doc["client_id"] = "https://elsewhere.example/tw.json".into();
    docs.serve(&doc.to_string());
    let add = |name: &'static str| {
        let (env, remote, url) = (&env, remote.url(), docs.url.clone());
        async move {
            env.run(&[
                "add",
                name,
                "--url",
                &remote,
                "--client-metadata-url",
                &url,
                "--no-login",
            ])
        }
    };
    let out = add("w").await;
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains("names the client id `https://elsewhere.example/tw.json`, not its own URL")
            && out.stderr.contains("tokenwarden client-metadata --url"),
        "{}",
        out.stderr
    );
    assert_eq!(read(&env.config_file()), before, "nothing written");
    // One that lists another redirect URI: the same.
    let mut doc = client_metadata(&env, &["--url", &docs.url]);
    doc["redirect_uris"] = serde_json::json!(["http://127.0.0.1:1/callback"]);
    docs.serve(&doc.to_string());
    let out = add("w").await;
    assert!(
        out.stderr.contains("does not list the redirect URI"),
        "{}",
        out.stderr
    );
    assert_eq!(read(&env.config_file()), before, "nothing written");

    // A good document the server's policy refuses: the sign-in says so.
    let doc = client_metadata(&env, &["--url", &docs.url]);
    docs.serve(&doc.to_string());
    issuer.set_client_metadata(ClientMetadataMode::RejectByPolicy);
    let out = add("w").await;
    assert!(out.ok(), "{out:?}");
    let (page, out) = env.run_following(&["login", "w"]).await;
    assert!(page.is_some());
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("invalid_client") && out.stderr.contains("Client ID Metadata Document"),
        "{}",
        out.stderr
    );
    assert_eq!(issuer.registrations(), 0);
}

// ---------------------------------------------------------------------------
// Registered clients that age
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_client_the_server_forgot_is_registered_again_with_one_sign_in() {
    let (env, issuer, remote, _docs, _) =
        registration_setup("authz_invalid_client", ClientMetadataMode::Off).await;
    let out = env
        .run_with_browser(&["add", "w", "--url", &remote.url()])
        .await;
    assert!(out.ok(), "{out:?}");
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    let first = Config::load(&env.config_file())
        .unwrap()
        .workload("w")
        .unwrap()
        .clone();

    // The server loses its registrations: the next refresh gets `invalid_client`.
    issuer.forget_registered_clients();
    assert!(env.run(&["retry", "w"]).ok());
    let st = env
        .wait_status("w", Status::Unauthenticated, Duration::from_secs(10))
        .await;
    assert!(
        st.reason.as_deref().unwrap().starts_with("invalid_client"),
        "{st:?}"
    );

    // One sign-in: a fresh client at the same server, then running again.
    let (page, out) = env.run_following(&["login", "w"]).await;
    assert_eq!(page, Some(200));
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains("no longer knows the client registered for `w`: registered a new one"),
        "{}",
        out.stderr
    );
    assert_eq!(issuer.registrations(), 2);
    let now = Config::load(&env.config_file())
        .unwrap()
        .workload("w")
        .unwrap()
        .clone();
    assert_ne!(now.client_id, first.client_id);
    assert_eq!(issuer.registered_client_ids().last(), Some(&now.client_id));
    assert_eq!(
        now.redirect_port, first.redirect_port,
        "the same redirect URI"
    );
    env.wait_for("w", Duration::from_secs(10), |s| {
        s.status == Status::Running && s.access_token_valid
    })
    .await;
    // And it refreshes with the new client.
    let before = issuer.refresh_requests();
    assert!(env.run(&["retry", "w"]).ok());
    assert!(
        issuer
            .wait_for_refresh_requests(before + 1, Duration::from_secs(10))
            .await
    );
    let st = env
        .wait_for("w", Duration::from_secs(10), |s| {
            s.status == Status::Running && s.attempts == 0 && s.reason.is_none()
        })
        .await;
    assert!(st.access_token_valid);

    // A sign-in while the client is known registers nothing.
    let out = env.login("w").await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(issuer.registrations(), 2);
}

/// "Retry now" until a refresh reaches the issuer (a retry asked for while the
/// previous refresh is still being saved is folded into it).
async fn refresh_now(env: &TestEnv, issuer: &SimIssuer) {
    let before = issuer.refresh_requests();
    for _ in 0..20 {
        assert!(env.run(&["retry", "w"]).ok());
        if issuer
            .wait_for_refresh_requests(before + 1, Duration::from_millis(500))
            .await
        {
            return;
        }
    }
    panic!("no refresh reached the issuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_about_to_expire_is_renewed_and_a_failed_renewal_is_tried_again() {
    init_tracing("authz_secret_renewal");
    let issuer = issuer(IssuerOptions {
        registration_auth: tokenwarden_sim::issuer::RegistrationAuth::SecretPost,
        ..IssuerOptions::default()
    })
    .await;
    // Secrets last 10 minutes; Tokenwarden renews those that end within the hour.
    issuer.set_client_secret_lifetime(Some(Duration::from_secs(600)));
    let remote = SimRemote::start(issuer.clone(), RemoteOptions::default())
        .await
        .unwrap();
    let env = TestEnv::new("authz_secret_renewal");
    env.write_config(&format!(
        "{}[policy]\nclient_secret_renew_lead = \"1h\"\n",
        file_store_header()
    ));
    env.start_daemon().await;
    let out = env
        .run_with_browser(&["add", "w", "--url", &remote.url()])
        .await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("Registered a new confidential client"),
        "{}",
        out.stderr
    );
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    let secret_file = || {
        std::fs::read_dir(env.paths().secrets_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("w.client.")
            })
            .map(|p| read(&p))
            .unwrap()
    };
    let first = secret_file();

    // The renewal fails once (503): the refresh still goes out with the secret it has.
    issuer.fail_client_updates(1);
    refresh_now(&env, &issuer).await;
    let st = env
        .wait_for("w", Duration::from_secs(10), |s| {
            s.status == Status::Running && s.attempts == 0
        })
        .await;
    assert_eq!(st.reason, None);
    assert_eq!(issuer.client_updates(), 0);
    assert_eq!(secret_file(), first, "nothing renewed yet");

    // The next refresh renews it (RFC 7592: same client id, a new secret) and
    // authenticates with the new one (the server no longer takes the old one).
    refresh_now(&env, &issuer).await;
    let st = env
        .wait_for("w", Duration::from_secs(10), |s| {
            s.status == Status::Running && s.attempts == 0
        })
        .await;
    assert_eq!(st.reason, None);
    assert_eq!(issuer.client_updates(), 1);
    assert_ne!(secret_file(), first, "the new secret is stored");
    assert_eq!(issuer.registrations(), 1, "the same client, renewed");
    // It keeps working with the renewed secret.
    refresh_now(&env, &issuer).await;
    env.wait_for("w", Duration::from_secs(10), |s| {
        s.status == Status::Running && s.attempts == 0 && s.reason.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_moved_to_another_authorization_server_gets_a_client_registered_there() {
    let (env, first, remote, _docs, _) =
        registration_setup("authz_moved_server", ClientMetadataMode::Off).await;
    let out = env
        .run_with_browser(&["add", "w", "--url", &remote.url()])
        .await;
    assert!(out.ok(), "{out:?}");
    // The same server: a sign-in registers nothing.
    let out = env.login("w").await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(first.registrations(), 1);

    // The resource now names another authorization server.
    let second = issuer(IssuerOptions::default()).await;
    remote.set_prm_mode(tokenwarden_sim::remote::PrmMode::AuthorizationServer(
        second.issuer(),
    ));
    let out = env.login("w").await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "`w` now signs in at {} (was {}): registered a new client there",
            second.issuer(),
            first.issuer()
        )),
        "{}",
        out.stderr
    );
    assert_eq!((first.registrations(), second.registrations()), (1, 1));
    let w = Config::load(&env.config_file())
        .unwrap()
        .workload("w")
        .unwrap()
        .clone();
    assert_eq!(w.issuer.as_deref(), Some(second.issuer().as_str()));
    assert_eq!(w.token_endpoint.as_str(), second.token_endpoint());
    assert_eq!(second.registered_client_ids(), vec![w.client_id.clone()]);
    // Signed in there, and it refreshes there.
    env.wait_for("w", Duration::from_secs(10), |s| {
        s.status == Status::Running
            && s.access_token_valid
            && s.token_endpoint == second.token_endpoint()
    })
    .await;
    refresh_now(&env, &second).await;
}
