//! `tokenwarden add NAME --url URL` as a user runs it: the real binary discovers the
//! authorization server of a loopback protected resource (`SimRemote`), registers a
//! client at the `SimIssuer` (RFC 7591), signs in (the test follows the printed
//! authorization URL as a browser would), and the daemon keeps it running. Bad
//! metadata of every kind is refused with a clear message and nothing written.
//! Secret store: the opt-in file store, so the store's content can be checked.

use crate::support;

use std::time::Duration;
use support::*;
use tokenwarden::engine::config::{ClientAuth, Config};
use tokenwarden::engine::discovery::{self, Discovered, DiscoveryError, DiscoveryOptions};
use tokenwarden::engine::Status;
use tokenwarden_sim::issuer::{
    AuthorizationIss, MetadataMode, RefreshTokens, RegistrationAuth, ResourceRequest, WellKnown,
};
use tokenwarden_sim::remote::{PrmMode, RemoteOptions, SimRemote};

async fn remote(issuer: &SimIssuer) -> SimRemote {
    SimRemote::start(issuer.clone(), RemoteOptions::default())
        .await
        .expect("remote starts")
}

/// Run `add ARGS --no-browser` to completion, following the authorization URL it
/// prints as a signed-in user's browser would.
async fn add(env: &TestEnv, args: &[&str]) -> Output {
    let mut all = vec!["add"];
    all.extend_from_slice(args);
    env.run_with_browser(&all).await
}

fn env_with_file_store(test: &str) -> TestEnv {
    let env = TestEnv::new(test);
    env.write_config(&file_store_header());
    env
}

/// Files of the file store that belong to `name`, shown without the config dir's key
/// (`w.tokens.<key>.json` as `w.tokens.json`).
fn stored_files(env: &TestEnv, name: &str) -> Vec<String> {
    let dir = env.paths().secrets_dir;
    let key = format!(
        ".{}.json",
        tokenwarden::engine::store::config_dir_key(&env.config_dir)
    );
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(&format!("{name}.")))
                .map(|f| f.replace(&key, ".json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn resources(issuer: &SimIssuer, request: ResourceRequest) -> Vec<Option<String>> {
    issuer
        .resources_seen()
        .into_iter()
        .filter(|r| r.request == request)
        .map(|r| r.resource)
        .collect()
}

/// Wait until the issuer saw more than `n` refresh requests and the workload is
/// `running` again with no failure.
async fn refreshed_after(env: &TestEnv, issuer: &SimIssuer, name: &str, n: u64) {
    assert!(
        issuer
            .wait_for_refresh_requests(n + 1, Duration::from_secs(10))
            .await,
        "a refresh reached the issuer"
    );
    env.wait_for(name, Duration::from_secs(10), |w| {
        w.status == Status::Running && w.reason.is_none() && w.attempts == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_url_discovers_registers_logs_in_and_runs() {
    let issuer = issuer(issuer_opts(30)).await;
    let remote = remote(&issuer).await;
    let env = env_with_file_store("discovery_public");
    env.start_daemon().await;

    let out = add(&env, &["w", "--url", &remote.url()]).await;
    assert!(out.ok(), "{out:?}");
    for said in [
        "authorization server:   http://127.0.0.1:",
        "token endpoint:",
        "Registered a new public client",
        "Signed in",
    ] {
        assert!(out.stderr.contains(said), "{said}: {}", out.stderr);
    }

    // What was written: the discovered endpoints, the registered client, the ports.
    let text = read(&env.config_file());
    let cfg = Config::load(&env.config_file()).unwrap();
    let w = cfg.workload("w").unwrap();
    assert_eq!(w.url.as_ref().unwrap().as_str(), remote.url());
    assert_eq!(w.token_endpoint.as_str(), issuer.token_endpoint());
    assert_eq!(
        w.authorization_endpoint.as_ref().unwrap().as_str(),
        issuer.authorization_endpoint()
    );
    assert_eq!(issuer.registered_client_ids(), vec![w.client_id.clone()]);
    assert_eq!(w.resource.as_deref(), Some(remote.url().as_str()));
    assert_eq!(w.client_auth, ClientAuth::None);
    assert_eq!(w.scopes, vec!["mcp:read", "mcp:write"], "scopes_supported");
    let redirect_port = w.redirect_port.expect("redirect_port written");
    let listen_port = w.listen_port.expect("listen_port written");
    assert_ne!(redirect_port, listen_port);
    assert!(
        !text.contains("client_secret") && !text.contains("sim_cs_"),
        "{text}"
    );
    // The login used the registered redirect URI and sent the resource indicator.
    assert!(
        out.stdout.contains(&format!(
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A{redirect_port}%2Fcallback"
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("resource="), "{}", out.stdout);
    // The client entry keeps the registration (where, which client), no secret.
    assert_eq!(
        stored_files(&env, "w"),
        vec!["w.client.json", "w.tokens.json"]
    );
    let entry = std::fs::read_dir(env.paths().secrets_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("w.client.")
        })
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(&read(&entry)).unwrap();
    assert!(entry.get("client_secret").is_none(), "{entry}");
    assert_eq!(entry["registration"]["client_id"], w.client_id.as_str());
    assert_eq!(entry["registration"]["issuer"], issuer.issuer());

    // The daemon runs it; the CLI says so.
    env.wait_status("w", Status::Running, Duration::from_secs(10))
        .await;
    let st = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v[0]["name"], "w");
    assert_eq!(v[0]["status"], "running", "{v}");
    let local = format!("http://127.0.0.1:{listen_port}/mcp");
    assert_eq!(v[0]["local_url"], local.as_str(), "{v}");

    // The daemon's local proxy reaches the remote with the workload's bearer.
    let r = reqwest::Client::new()
        .post(&local)
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    let seen = remote.last_authorization().unwrap();
    assert!(issuer.is_valid_access_token(seen.trim_start_matches("Bearer ")));
    // `list --json` shows what add wrote (no secret).
    let list = env.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list[0]["listen_port"], listen_port, "{list}");
    assert_eq!(list[0]["redirect_port"], redirect_port, "{list}");
    assert_eq!(list[0]["client_auth"], "none", "{list}");
    assert_eq!(list[0]["resource"], remote.url().as_str(), "{list}");
    // One paste switches an MCP client over.
    let cc = env.run(&["client-config", "w"]);
    assert!(cc.ok(), "{cc:?}");
    let cc: serde_json::Value = serde_json::from_str(&cc.stdout).unwrap();
    assert_eq!(cc, serde_json::json!({"mcpServers": {"w": {"url": local}}}));

    // A refresh sends the resource too; so did the authorization and the exchange.
    let n = issuer.refresh_requests();
    assert!(env.run(&["retry", "w"]).ok());
    refreshed_after(&env, &issuer, "w", n).await;
    let want = Some(remote.url());
    for request in [
        ResourceRequest::Authorize,
        ResourceRequest::CodeExchange,
        ResourceRequest::Refresh,
    ] {
        let seen = resources(&issuer, request);
        assert!(
            !seen.is_empty() && seen.iter().all(|r| *r == want),
            "{request:?}: {seen:?}"
        );
    }

    // The token opens the resource.
    let tok = env.run(&["token", "w"]);
    assert!(tok.ok(), "{tok:?}");
    let r = reqwest::Client::new()
        .post(remote.url())
        .bearer_auth(tok.stdout.trim())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_registration_keeps_the_secret_in_the_store_and_refreshes() {
    for (auth, written) in [
        (RegistrationAuth::SecretPost, ClientAuth::ClientSecretPost),
        (RegistrationAuth::SecretBasic, ClientAuth::ClientSecretBasic),
    ] {
        let issuer = issuer(IssuerOptions {
            registration_auth: auth,
            ..issuer_opts(1)
        })
        .await;
        let remote = remote(&issuer).await;
        let env = env_with_file_store(&format!("discovery_{}", written.as_str()));

        let out = add(&env, &["w", "--url", &remote.url()]).await;
        assert!(out.ok(), "{out:?}");
        assert!(
            out.stderr.contains("Registered a new confidential client")
                && out.stderr.contains(written.as_str()),
            "{}",
            out.stderr
        );
        let secrets = issuer.issued_client_secrets();
        assert_eq!(secrets.len(), 1);
        let text = read(&env.config_file());
        assert!(!text.contains(&secrets[0]), "no secret in the config");
        assert!(
            text.contains(&format!("client_auth = \"{}\"", written.as_str())),
            "{text}"
        );
        assert_eq!(
            stored_files(&env, "w"),
            vec!["w.client.json", "w.tokens.json"]
        );

        // `token` without a daemon refreshes the expired 1 s token with the secret.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let n = issuer.refresh_requests();
        let t = env.run(&["token", "w"]);
        assert!(t.ok(), "{t:?}");
        assert_eq!(issuer.refresh_requests(), n + 1);
        assert!(issuer.is_valid_access_token(t.stdout.trim()));

        // The daemon keeps refreshing it (1 s tokens: several refreshes).
        env.start_daemon().await;
        env.wait_status("w", Status::Running, Duration::from_secs(10))
            .await;
        let n = issuer.refresh_requests();
        refreshed_after(&env, &issuer, "w", n + 1).await;
        assert!(resources(&issuer, ResourceRequest::Refresh)
            .iter()
            .all(|r| *r == Some(remote.url())));

        // Logout keeps the registration: a plain login works again.
        assert!(env.run(&["logout", "w"]).ok());
        assert_eq!(stored_files(&env, "w"), vec!["w.client.json"]);
        let again = env.login("w").await;
        assert!(again.ok(), "{again:?}");
        env.wait_status("w", Status::Running, Duration::from_secs(10))
            .await;

        // Remove deletes both entries.
        assert!(env.run(&["remove", "w"]).ok());
        assert!(stored_files(&env, "w").is_empty());
        env.stop_daemons();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_endpoints_skip_discovery_and_registration() {
    let issuer = issuer(issuer_opts(30)).await;
    let remote = remote(&issuer).await;
    let env = env_with_file_store("discovery_explicit");
    let out = env.run(&[
        "add",
        "w",
        "--url",
        &remote.url(),
        "--token-endpoint",
        &issuer.token_endpoint(),
        "--authorization-endpoint",
        &issuer.authorization_endpoint(),
        "--client-id",
        issuer.client_id(),
        "--no-login",
    ]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(remote.requests() + remote.unauthorized_responses(), 0);
    assert_eq!(issuer.registrations(), 0);
    let cfg = Config::load(&env.config_file()).unwrap();
    let w = cfg.workload("w").unwrap();
    assert_eq!(w.client_id, issuer.client_id());
    assert!(
        w.listen_port.is_some(),
        "a proxy port is chosen for a --url"
    );
    assert_eq!((w.redirect_port, w.resource.as_deref()), (None, None));

    // --url with a client id but no token endpoint: discovery, no registration.
    let out = add(
        &env,
        &[
            "v",
            "--url",
            &remote.url(),
            "--client-id",
            issuer.client_id(),
        ],
    )
    .await;
    assert!(out.ok(), "{out:?}");
    assert!(out.stderr.contains("--client-id"), "{}", out.stderr);
    assert_eq!(issuer.registrations(), 0);
    let cfg = Config::load(&env.config_file()).unwrap();
    let v = cfg.workload("v").unwrap();
    assert_eq!(v.token_endpoint.as_str(), issuer.token_endpoint());
    assert_eq!(v.redirect_port, None);
    assert_ne!(v.listen_port, w.listen_port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_is_refused_clearly_and_nothing_is_written() {
    let issuer = issuer(issuer_opts(30)).await;
    let remote = remote(&issuer).await;
    let env = TestEnv::new("discovery_bad");
    let before = format!(
        "# kept byte for byte\n{}{}",
        file_store_header(),
        workload_toml("existing", &issuer)
    );
    env.write_config(&before);

    enum Break {
        As(MetadataMode),
        Prm(PrmMode),
        Url(&'static str),
    }
    let cases = [
        (Break::As(MetadataMode::WrongIssuer), "issuer mismatch"),
        (Break::As(MetadataMode::NoS256), "requires PKCE S256"),
        (Break::As(MetadataMode::NotJson), "not JSON"),
        (
            Break::As(MetadataMode::Huge { bytes: 4 << 20 }),
            "larger than 262144 bytes",
        ),
        (
            Break::As(MetadataMode::RedirectToOtherHost),
            "another origin",
        ),
        (
            Break::Prm(PrmMode::NoAuthorizationServers),
            "names no authorization server",
        ),
        (Break::Prm(PrmMode::WrongResource), "wrong resource"),
        (Break::Prm(PrmMode::NotJson), "text/html"),
        (Break::Prm(PrmMode::Huge { bytes: 4 << 20 }), "larger than"),
        (Break::Prm(PrmMode::RedirectToOtherHost), "another origin"),
        (
            Break::Prm(PrmMode::AuthorizationServer("http://as.example".into())),
            "plain http://",
        ),
        (Break::Url("http://remote.example/mcp"), "plain http://"),
    ];
    for (break_it, needle) in cases {
        issuer.set_metadata_mode(MetadataMode::Good);
        remote.set_prm_mode(PrmMode::Good);
        let mut url = remote.url();
        // The URL the error must name: the document that was wrong, or what it named.
        let origin = |u: &str| {
            let u = url::Url::parse(u).unwrap();
            u.origin().ascii_serialization()
        };
        let (what, named) = match break_it {
            Break::As(m) => {
                let w = format!("{m:?}");
                issuer.set_metadata_mode(m);
                (w, origin(&issuer.issuer()))
            }
            Break::Prm(m) => {
                let w = format!("{m:?}");
                let named = match &m {
                    PrmMode::AuthorizationServer(u) => u.clone(),
                    _ => origin(&remote.url()),
                };
                remote.set_prm_mode(m);
                (w, named)
            }
            Break::Url(u) => {
                url = u.to_string();
                (u.to_string(), u.to_string())
            }
        };
        let out = add(&env, &["bad", "--url", &url]).await;
        assert_eq!(out.code, Some(1), "{what}: {out:?}");
        assert!(out.stdout.is_empty(), "{what}: no login started");
        assert!(
            out.stderr.contains(needle) && out.stderr.contains(&named),
            "{what}: {} should say {needle} and name {named}",
            out.stderr
        );
        assert_eq!(read(&env.config_file()), before, "{what}: config untouched");
        assert!(
            stored_files(&env, "bad").is_empty(),
            "{what}: store untouched"
        );
        assert_eq!(issuer.registrations(), 0, "{what}: no client registered");
    }
}

/// `login NAME --no-browser`, the printed URL followed as a browser would; the
/// callback page's status whatever it is, and how the command ended.
async fn login_answered(env: &TestEnv, name: &str) -> (u16, Output) {
    let (page, out) = env.run_following(&["login", name]).await;
    (
        page.unwrap_or_else(|| panic!("no authorization URL: {out:?}")),
        out,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_is_stored_and_its_iss_checked_at_every_login() {
    let issuer = issuer(issuer_opts(30)).await;
    issuer.set_authorization_iss(AuthorizationIss::On);
    let remote = remote(&issuer).await;
    let env = env_with_file_store("discovery_iss");

    let out = add(&env, &["w", "--url", &remote.url()]).await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("always sent in sign-in answers"),
        "{}",
        out.stderr
    );
    let text = read(&env.config_file());
    assert!(
        text.contains(&format!(
            "issuer = \"{}\"\niss_parameter = true",
            issuer.base_url()
        )),
        "readable by hand: {text}"
    );
    let w = Config::load(&env.config_file())
        .unwrap()
        .workloads
        .remove(0);
    assert_eq!(w.issuer, Some(issuer.base_url()));
    assert!(w.iss_parameter);
    assert_eq!(
        issuer.code_exchanges(),
        1,
        "add signed in with the right iss"
    );

    // An answer without `iss`, or naming another issuer: refused before the
    // exchange, the login ends with the reason, the stored sign-in is untouched.
    for (iss, said) in [
        (AuthorizationIss::AdvertisedButOmitted, "without `iss`"),
        (
            AuthorizationIss::Forged {
                iss: "https://attacker.example".into(),
                advertised: true,
            },
            "names the issuer `https://attacker.example`",
        ),
        (
            AuthorizationIss::Forged {
                iss: format!("{}/", issuer.base_url()),
                advertised: true,
            },
            "names the issuer",
        ),
    ] {
        let what = format!("{iss:?}");
        issuer.set_authorization_iss(iss);
        let (page, out) = login_answered(&env, "w").await;
        assert_eq!(page, 400, "{what}: the page says it was refused");
        assert_eq!(out.code, Some(1), "{what}: {out:?}");
        assert!(
            out.stderr.contains(said) && out.stderr.contains("RFC 9207"),
            "{what}: {}",
            out.stderr
        );
        assert_eq!(issuer.code_exchanges(), 1, "{what}: no code exchanged");
    }
    issuer.set_authorization_iss(AuthorizationIss::On);
    let (page, out) = login_answered(&env, "w").await;
    assert_eq!((page, out.code), (200, Some(0)), "{out:?}");
    assert_eq!(issuer.code_exchanges(), 2);

    // A server that does not advertise it: no `iss` line, an absent `iss` is fine.
    issuer.set_authorization_iss(AuthorizationIss::Off);
    let out = add(&env, &["v", "--url", &remote.url()]).await;
    assert!(out.ok(), "{out:?}");
    let v = Config::load(&env.config_file()).unwrap();
    let v = v.workload("v").unwrap();
    assert_eq!(
        (v.issuer.clone(), v.iss_parameter),
        (Some(issuer.base_url()), false)
    );
}

async fn discover(remote: &SimRemote) -> Result<Discovered, DiscoveryError> {
    let url = url::Url::parse(&remote.url()).unwrap();
    discovery::discover(&url, &DiscoveryOptions::default()).await
}

/// An authorization server whose issuer has a path (a Keycloak realm): its metadata
/// is looked for at the MCP authorization spec's three locations, in its order, and
/// discovery stops at the first that answers. The error names every URL tried with
/// what it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_with_a_path_is_found_at_each_well_known_location_in_order() {
    let issuer = issuer(IssuerOptions {
        issuer_path: "/realms/x".into(),
        ..issuer_opts(30)
    })
    .await;
    let remote = remote(&issuer).await;
    let base = issuer.base_url();
    assert_eq!(issuer.issuer(), format!("{base}/realms/x"));
    let order = [
        "/.well-known/oauth-authorization-server/realms/x",
        "/.well-known/openid-configuration/realms/x",
        "/realms/x/.well-known/openid-configuration",
    ];
    for (n, at) in [
        WellKnown::OAuth,
        WellKnown::OidcInserted,
        WellKnown::OidcAppended,
    ]
    .into_iter()
    .enumerate()
    {
        issuer.set_metadata_mode(MetadataMode::OnlyAt(at));
        let before = issuer.metadata_requests().len();
        let d = discover(&remote)
            .await
            .unwrap_or_else(|e| panic!("{at:?}: {e}"));
        assert_eq!(d.issuer_identifier, issuer.issuer(), "{at:?}");
        assert_eq!(d.token_endpoint.as_str(), issuer.token_endpoint(), "{at:?}");
        assert_eq!(
            issuer.metadata_requests()[before..],
            order[..=n],
            "{at:?}: tried in order, stopped at the first answer"
        );
    }

    // None answers: every URL is named, each with its answer, in order.
    issuer.set_metadata_mode(MetadataMode::Missing);
    let e = discover(&remote).await.unwrap_err().to_string();
    let listed: Vec<String> = order
        .iter()
        .map(|p| format!("{base}{p} (HTTP 404)"))
        .collect();
    assert!(e.contains(&listed.join(", ")), "{e}");
    assert!(
        e.contains(&format!("{base}/realms/x publishes no metadata")),
        "{e}"
    );

    // The whole add with the path: the issuer identifier is stored as published.
    issuer.set_metadata_mode(MetadataMode::OnlyAt(WellKnown::OidcAppended));
    let env = env_with_file_store("discovery_issuer_path");
    let out = add(&env, &["w", "--url", &remote.url()]).await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("authorization server:   {base}/realms/x\n")),
        "{}",
        out.stderr
    );
    let cfg = Config::load(&env.config_file()).unwrap();
    assert_eq!(
        cfg.workload("w").unwrap().issuer.as_deref(),
        Some(format!("{base}/realms/x").as_str())
    );
}

/// Without a path: the RFC 8414 location, then OpenID discovery (one URL for the
/// inserted and appended forms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_without_a_path_has_two_well_known_locations() {
    let issuer = issuer(issuer_opts(30)).await;
    let remote = remote(&issuer).await;
    let base = issuer.base_url();
    issuer.set_metadata_mode(MetadataMode::OnlyAt(WellKnown::OidcInserted));
    discover(&remote).await.unwrap();
    assert_eq!(
        issuer.metadata_requests(),
        [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration"
        ]
    );
    issuer.set_metadata_mode(MetadataMode::Missing);
    let e = discover(&remote).await.unwrap_err().to_string();
    assert!(
        e.ends_with(&format!(
            "tried {base}/.well-known/oauth-authorization-server (HTTP 404), {base}/.well-known/openid-configuration (HTTP 404)"
        )),
        "{e}"
    );
}

/// RFC 8414 §3.3: the metadata's `issuer` is identical to the identifier the
/// location was made from, string for string; what is shown and stored is that
/// string, never a normalised URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_must_match_string_for_string() {
    let issuer = issuer(issuer_opts(30)).await;
    let remote = remote(&issuer).await;
    let base = issuer.base_url();

    // The resource names `base/`, the metadata says `base`: refused, both named.
    remote.set_prm_mode(PrmMode::AuthorizationServer(format!("{base}/")));
    let e = discover(&remote).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::IssuerMismatch { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains(&format!("its issuer is `{base}`"))
            && e.contains(&format!("fetched for `{base}/`"))
            && e.contains("RFC 8414 §3.3"),
        "{e}"
    );
    // The other way round: the metadata adds a `/` the resource never named.
    remote.set_prm_mode(PrmMode::Good);
    issuer.set_metadata_mode(MetadataMode::IssuerTrailingSlash);
    let e = discover(&remote).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("its issuer is `{base}/`"))
            && e.contains(&format!("fetched for `{base}`")),
        "{e}"
    );
    // Through `add`: refused, nothing written.
    let env = env_with_file_store("discovery_issuer_exact");
    let out = add(&env, &["w", "--url", &remote.url()]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("issuer mismatch"), "{}", out.stderr);
    assert!(Config::load(&env.config_file())
        .unwrap()
        .workloads
        .is_empty());

    // Identical strings pass, and that string is what is shown and stored: no `/`
    // the server never published.
    issuer.set_metadata_mode(MetadataMode::Good);
    let d = discover(&remote).await.unwrap();
    assert_eq!(d.issuer_identifier, base);
    let out = add(&env, &["w", "--url", &remote.url()]).await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("authorization server:   {base}\n")),
        "{}",
        out.stderr
    );
    let cfg = Config::load(&env.config_file()).unwrap();
    assert_eq!(
        cfg.workload("w").unwrap().issuer.as_deref(),
        Some(base.as_str())
    );

    // An issuer published with a trailing `/`, named so by the resource: identical,
    // accepted, and kept with its `/`.
    let slash = tokenwarden_sim::issuer::SimIssuer::start(IssuerOptions {
        issuer_path: "/".into(),
        ..issuer_opts(30)
    })
    .await
    .unwrap();
    let slash_remote = SimRemote::start(slash.clone(), RemoteOptions::default())
        .await
        .unwrap();
    let d = discover(&slash_remote).await.unwrap();
    assert_eq!(d.issuer_identifier, format!("{}/", slash.base_url()));
}

async fn post_initialize(url: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// `add --url` asks for `offline_access` when the authorization server lists it
/// (here the server grants a refresh token only with it); a `--scope` list stands
/// as given, and a login that then gets no refresh token says so at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_access_is_requested_when_listed_unless_the_scopes_are_given() {
    let issuer = issuer(IssuerOptions {
        scopes_supported: Some(vec![
            "mcp:read".into(),
            "mcp:write".into(),
            "offline_access".into(),
        ]),
        refresh_tokens: RefreshTokens::WithOfflineAccess,
        ..issuer_opts(3600)
    })
    .await;
    let remote = remote(&issuer).await;
    let env = env_with_file_store("discovery_offline_access");
    env.start_daemon().await;

    let out = add(&env, &["w", "--url", &remote.url()]).await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains("also asking for:        offline_access"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("no refresh token"), "{}", out.stderr);
    assert!(
        out.stdout.contains("offline_access"),
        "authorize: {}",
        out.stdout
    );
    let cfg = Config::load(&env.config_file()).unwrap();
    assert_eq!(
        cfg.workload("w").unwrap().scopes,
        ["mcp:read", "mcp:write", "offline_access"]
    );
    let w = env
        .wait_for("w", Duration::from_secs(10), |w| {
            w.status == Status::Running
        })
        .await;
    assert!(w.can_renew, "{w:?}");

    // --scope given: exactly that; the server then issues no refresh token, and the
    // login says what that means.
    let out = add(&env, &["v", "--url", &remote.url(), "--scope", "mcp:read"]).await;
    assert!(out.ok(), "{out:?}");
    assert!(!out.stderr.contains("also asking for"), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "This server issued no refresh token: the workload will need a new sign-in when the token expires at "
        ),
        "{}",
        out.stderr
    );
    let cfg = Config::load(&env.config_file()).unwrap();
    assert_eq!(cfg.workload("v").unwrap().scopes, ["mcp:read"]);
    let v = env
        .wait_for("v", Duration::from_secs(10), |w| {
            w.status == Status::Running
        })
        .await;
    assert!(!v.can_renew && v.access_token_valid, "{v:?}");
    let st = env.run(&["status", "--json", "v"]);
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st[0]["can_renew"], false, "{st}");
    let human = env.run(&["status", "v"]);
    assert!(
        human.stdout.contains("cannot renew (no refresh token)"),
        "{human:?}"
    );
    assert_eq!(issuer.refresh_requests(), 0);
}

/// A server that issues no refresh token (and no `expires_in`): the sign-in is
/// accepted, the workload runs until the remote rejects its token, then it is
/// `unauthenticated` with the reason, nothing is sent to the token endpoint, and a
/// new sign-in brings it back. With an `expires_in`, the expiry ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_refresh_tokens_runs_until_the_token_ends() {
    let issuer = issuer(IssuerOptions {
        refresh_tokens: RefreshTokens::Never,
        send_expires_in: false,
        ..issuer_opts(3600)
    })
    .await;
    let remote = remote(&issuer).await;
    let env = env_with_file_store("discovery_no_refresh_token");
    env.start_daemon().await;

    let out = add(&env, &["w", "--url", &remote.url()]).await;
    assert!(
        out.ok(),
        "a login without refresh token is accepted: {out:?}"
    );
    assert!(
        out.stderr.contains("This server issued no refresh token (and gave the token no expiry): the workload will need a new sign-in when the remote rejects the token"),
        "{}",
        out.stderr
    );
    let w = env
        .wait_for("w", Duration::from_secs(10), |w| {
            w.status == Status::Running
        })
        .await;
    assert!(
        !w.can_renew && w.access_token_valid && w.access_token_expires_at.is_none(),
        "valid until rejected: {w:?}"
    );
    let local = w.local_url.clone().expect("proxy");
    assert_eq!(post_initialize(&local).await.0, 200);
    let tok = env.run(&["token", "w"]);
    assert!(tok.ok(), "{tok:?}");

    // The remote rejects the token: unauthenticated, said plainly, no refresh tried.
    remote.reject_tokens_issued_so_far();
    let (status, body) = post_initialize(&local).await;
    assert_ne!(status, 200, "{body}");
    let w = env
        .wait_status("w", Status::Unauthenticated, Duration::from_secs(10))
        .await;
    assert_eq!(
        w.reason.as_deref(),
        Some("the remote rejected the access token; this server issues no refresh token: sign in again"),
        "{w:?}"
    );
    assert_eq!(w.hint.as_deref(), Some("Log in again: tokenwarden login w"));
    assert!(!w.access_token_valid && !w.can_renew, "{w:?}");
    assert_eq!(issuer.refresh_requests(), 0, "nothing to refresh with");
    assert_eq!(env.run(&["token", "w"]).code, Some(4), "login needed");

    // One sign-in brings it back.
    let out = env.run_with_browser(&["login", "w"]).await;
    assert!(out.ok(), "{out:?}");
    env.wait_for("w", Duration::from_secs(10), |w| {
        w.status == Status::Running && w.access_token_valid
    })
    .await;
    assert_eq!(post_initialize(&local).await.0, 200);

    // With `expires_in`: running until then, then unauthenticated by the clock.
    let short = tokenwarden_sim::issuer::SimIssuer::start(IssuerOptions {
        refresh_tokens: RefreshTokens::Never,
        ..issuer_opts(2)
    })
    .await
    .unwrap();
    let short_remote = SimRemote::start(short.clone(), RemoteOptions::default())
        .await
        .unwrap();
    let out = add(&env, &["x", "--url", &short_remote.url()]).await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains("the workload will need a new sign-in when the token expires at "),
        "{}",
        out.stderr
    );
    let x = env
        .wait_for("x", Duration::from_secs(10), |w| {
            w.status == Status::Unauthenticated
                && w.reason.as_deref().is_some_and(|r| r.contains("expired"))
        })
        .await;
    assert_eq!(
        x.reason.as_deref(),
        Some("the access token expired; this server issues no refresh token: sign in again"),
        "{x:?}"
    );
    assert!(!x.can_renew, "{x:?}");
    assert_eq!(short.refresh_requests(), 0);
}
