//! How `add` gets a client id, in the order the MCP authorization spec gives: the
//! `client_id` the user passes (a pre-registered client); else a Client ID Metadata
//! Document the user hosts, when the authorization server takes them
//! (`client_id_metadata_document_supported`): its URL is the client id and nothing is
//! registered; else dynamic client registration (RFC 7591, [`crate::discovery::register`],
//! as a `native` application); else an error saying what to pass.
//!
//! A Client ID Metadata Document is hosted by the user (Tokenwarden runs no server
//! reachable by an authorization server): `tokenwarden client-metadata --url URL`
//! prints the document for that URL, whose one redirect URI is the loopback callback
//! every sign-in with it uses (`http://127.0.0.1:PORT/callback`, PORT fixed, since
//! servers compare redirect URIs with the document's exactly).

use crate::config::{self, WorkloadConfig};
use crate::discovery::{self, Discovered, DiscoveryError, Registration};
use crate::policy::Policy;
use crate::store::{ClientRegistration, SecretStore};
use serde_json::Value;
use url::Url;

/// The loopback port of a Client ID Metadata Document's redirect URI, unless
/// `[registration] client_metadata_port` says otherwise.
pub const DEFAULT_REDIRECT_PORT: u16 = 33418;

/// A Client ID Metadata Document the user hosts: its URL (the client id) and the port
/// of the loopback redirect URI it lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMetadata {
    pub url: Url,
    pub redirect_port: u16,
}

impl ClientMetadata {
    /// `raw` must be an `https` URL with a path (the draft's rule for a client id),
    /// or `http` to this machine (a document served locally, for testing).
    pub fn parse(raw: &str, redirect_port: Option<u16>) -> Result<Self, String> {
        let url = Url::parse(raw.trim())
            .map_err(|e| format!("the client metadata URL is not a valid URL ({e}): `{raw}`"))?;
        let local_http = url.scheme() == "http" && discovery::names_this_machine(&url);
        if url.scheme() != "https" && !local_http {
            return Err(format!(
                "the client metadata URL must be https (it is the client id): `{raw}`"
            ));
        }
        if url.path().is_empty() || url.path() == "/" {
            return Err(format!(
                "the client metadata URL needs a path, as https://example.com/tokenwarden.json: `{raw}`"
            ));
        }
        if url.fragment().is_some() || url.username() != "" || url.password().is_some() {
            return Err(format!(
                "the client metadata URL must have no fragment and no user name: `{raw}`"
            ));
        }
        let redirect_port = redirect_port.unwrap_or(DEFAULT_REDIRECT_PORT);
        if redirect_port == 0 {
            return Err("the client metadata redirect port cannot be 0".into());
        }
        Ok(ClientMetadata { url, redirect_port })
    }

    /// The client id: the document's URL, as written.
    pub fn client_id(&self) -> &str {
        self.url.as_str()
    }

    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}/callback", self.redirect_port)
    }

    /// The document to host at [`ClientMetadata::url`].
    pub fn document(&self) -> Value {
        serde_json::json!({
            "client_id": self.client_id(),
            "client_name": "Tokenwarden",
            "redirect_uris": [self.redirect_uri()],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
        })
    }
}

/// The document `tokenwarden client-metadata` prints: for `url`, else the config's
/// default, with the config's redirect port (one setting, so `add` and the hosted
/// document always agree).
pub fn document_for(
    url: Option<&str>,
    default: Option<&ClientMetadata>,
    port: Option<u16>,
) -> Result<Value, String> {
    let m = match (url, default) {
        (Some(u), _) => ClientMetadata::parse(u, port)?,
        (None, Some(d)) => d.clone(),
        (None, None) => {
            return Err(
                "give --url URL: where you will host the document (an https URL with a path, which becomes the client id)"
                    .into(),
            )
        }
    };
    Ok(m.document())
}

/// The Client ID Metadata Document `add` may use: `--client-metadata-url` (with the
/// config's port), else the config's `[registration] client_metadata_url`.
pub fn metadata_for_add(
    given: Option<&str>,
    default: Option<&ClientMetadata>,
    port: Option<u16>,
) -> Result<Option<ClientMetadata>, String> {
    match given {
        Some(u) => ClientMetadata::parse(u, port)
            .map(Some)
            .map_err(|m| format!("--client-metadata-url: {m}")),
        None => Ok(default.cloned()),
    }
}

/// Where the client id of a workload without `--client-id` comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The user's Client ID Metadata Document.
    Metadata(ClientMetadata),
    /// Dynamic client registration at this endpoint.
    Register(Url),
}

/// The spec's order for a workload without a pre-registered client id.
pub fn choose(d: &Discovered, metadata: Option<&ClientMetadata>) -> Result<Source, DiscoveryError> {
    if d.client_id_metadata_document_supported {
        if let Some(m) = metadata {
            return Ok(Source::Metadata(m.clone()));
        }
    }
    registration_endpoint(d).map(Source::Register)
}

/// Where to register a client dynamically, or the error that says what to pass
/// instead.
pub fn registration_endpoint(d: &Discovered) -> Result<Url, DiscoveryError> {
    d.registration_endpoint
        .clone()
        .ok_or_else(|| DiscoveryError::NoRegistrationEndpoint {
            issuer: d.issuer_identifier.clone(),
            client_metadata_supported: d.client_id_metadata_document_supported,
        })
}

/// Fetch the hosted document and check what the authorization server will check:
/// JSON, `client_id` identical to its URL, a `client_name`, and the redirect URI the
/// sign-ins use among its `redirect_uris`. A mistake shows here, at `add`, instead
/// of as an error page in the browser at the first sign-in.
pub async fn check_document(
    http: &reqwest::Client,
    m: &ClientMetadata,
    policy: &Policy,
) -> Result<(), DiscoveryError> {
    let bad = |reason: String| DiscoveryError::BadClientMetadata {
        url: m.url.to_string(),
        reason,
    };
    let resp = discovery::send(
        http.get(m.url.clone())
            .header(reqwest::header::ACCEPT, "application/json"),
        &m.url,
        policy,
    )
    .await?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(bad(format!("answered HTTP {status}")));
    }
    let map = discovery::read_json(resp, policy).await?;
    match map.get("client_id").and_then(Value::as_str) {
        Some(id) if id == m.client_id() => {}
        Some(id) => {
            return Err(bad(format!(
                "names the client id `{}`, not its own URL",
                crate::classify::sanitize(id, 200)
            )))
        }
        None => return Err(bad("has no `client_id`".into())),
    }
    if !map.get("client_name").is_some_and(Value::is_string) {
        return Err(bad("has no `client_name`".into()));
    }
    let uri = m.redirect_uri();
    let listed = map
        .get("redirect_uris")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(uri.as_str())));
    if !listed {
        return Err(bad(format!(
            "does not list the redirect URI {uri} among its `redirect_uris`"
        )));
    }
    Ok(())
}

/// What to keep of a registration `add` made at `issuer`'s `endpoint`.
pub fn record(issuer: &str, endpoint: &Url, reg: &Registration) -> ClientRegistration {
    ClientRegistration {
        issuer: issuer.to_string(),
        registration_endpoint: endpoint.to_string(),
        client_id: reg.client_id.clone(),
        client_secret_expires_at: reg.client_secret_expires_at,
        registration_client_uri: reg.registration_client_uri.clone(),
        registration_access_token: reg.registration_access_token.clone(),
    }
}

/// The authorization server answered `invalid_client` for `w`'s client (it no longer
/// knows it). When Tokenwarden registered that client itself, register a fresh one
/// at the same server (same redirect URI and scopes), keep it, and write its id to
/// `config_path`: the workload then needs one sign-in, not `remove` and `add`.
/// `Ok(None)`: not a client Tokenwarden registered (nothing to do here).
pub async fn register_fresh_client(
    config_path: &std::path::Path,
    store: &SecretStore,
    w: &WorkloadConfig,
    http: &reqwest::Client,
    policy: &Policy,
) -> anyhow::Result<Option<WorkloadConfig>> {
    let Some(old) = store.load_registration(&w.name).await? else {
        return Ok(None);
    };
    if old.client_id != w.client_id {
        // The workload's client is another one now (edited by hand).
        return Ok(None);
    }
    let endpoint = Url::parse(&old.registration_endpoint)?;
    let port = w.redirect_port.ok_or_else(|| {
        anyhow::anyhow!(
            "`{}` has no redirect_port to register a client with",
            w.name
        )
    })?;
    let redirect_uri = Url::parse(&format!("http://127.0.0.1:{port}/callback"))?;
    let reg = discovery::register(http, &endpoint, &redirect_uri, &w.scopes, policy).await?;
    let kept = record(&old.issuer, &endpoint, &reg);
    store
        .save_client(&w.name, reg.client_secret.as_ref(), Some(&kept))
        .await?;
    config::set_client(config_path, &w.name, &reg.client_id, reg.auth)?;
    tracing::info!(workload = %w.name, issuer = %old.issuer, "the authorization server no longer knew the registered client; registered a fresh one");
    Ok(Some(WorkloadConfig {
        client_id: reg.client_id,
        client_auth: reg.auth,
        ..w.clone()
    }))
}

/// Before a sign-in of a workload whose client Tokenwarden registered: discover the
/// authorization server its protected resource names now. When that is another
/// server than the one the client was registered at (its `issuer`), the client is not
/// used there: a new one is registered at the new server, kept with it, and the
/// workload's endpoints, issuer and client id are written to `config_path` (its old
/// tokens, from the old server, are then refused: the sign-in replaces them).
/// `Ok(None)`: nothing changed, not a registered client, or no `url`. A discovery that
/// fails leaves the workload as it is (the sign-in then says what is wrong).
pub async fn follow_moved_server(
    config_path: &std::path::Path,
    store: &SecretStore,
    w: &WorkloadConfig,
    policy: &Policy,
) -> anyhow::Result<Option<(String, WorkloadConfig)>> {
    let (Some(url), Some(old)) = (&w.url, store.load_registration(&w.name).await?) else {
        return Ok(None);
    };
    if old.client_id != w.client_id {
        return Ok(None);
    }
    let opts = discovery::DiscoveryOptions {
        policy: policy.clone(),
        allow_http: w.allow_http,
        ca_file: w.ca_file.clone(),
        resolve: Vec::new(),
    };
    let d = match discovery::discover(url, &opts).await {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(workload = %w.name, error = %e, "could not check which authorization server the resource names; signing in as configured");
            return Ok(None);
        }
    };
    if d.issuer_identifier == old.issuer {
        return Ok(None);
    }
    let endpoint = registration_endpoint(&d)?;
    let port = w.redirect_port.ok_or_else(|| {
        anyhow::anyhow!(
            "`{}` has no redirect_port to register a client with",
            w.name
        )
    })?;
    let redirect_uri = Url::parse(&format!("http://127.0.0.1:{port}/callback"))?;
    let http = discovery::discovery_client(&opts)?;
    let reg = discovery::register(&http, &endpoint, &redirect_uri, &w.scopes, policy).await?;
    let kept = record(&d.issuer_identifier, &endpoint, &reg);
    store
        .save_client(&w.name, reg.client_secret.as_ref(), Some(&kept))
        .await?;
    let moved = config::NewWorkload {
        name: w.name.clone(),
        token_endpoint: d.token_endpoint.to_string(),
        authorization_endpoint: Some(d.authorization_endpoint.to_string()),
        issuer: Some(d.issuer_identifier.clone()),
        iss_parameter: d.iss_parameter_supported,
        client_id: reg.client_id.clone(),
        client_auth: reg.auth,
        ..Default::default()
    };
    let cfg = config::set_authorization_server(config_path, &w.name, &moved)?;
    tracing::info!(workload = %w.name, from = %old.issuer, to = %d.issuer_identifier, "the resource names another authorization server; registered a client there");
    let now = cfg
        .workload(&w.name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("`{}` is gone from the configuration", w.name))?;
    Ok(Some((old.issuer, now)))
}

/// Renew `w`'s client secret when Tokenwarden registered the client, the secret
/// expires within `client_secret_renew_lead` and the registration gave an RFC 7592
/// configuration endpoint and access token: the same client id, a new secret kept in
/// the store. `Ok(false)`: nothing to renew (or no way to: then it is logged, and an
/// expired secret ends in `invalid_client`, after which one sign-in registers a fresh
/// client). An error is transient for the caller: the secret it has still works until
/// it expires, and the next attempt tries again.
pub async fn renew_client_secret(
    store: &SecretStore,
    w: &WorkloadConfig,
    http: &reqwest::Client,
    now: std::time::SystemTime,
    policy: &Policy,
) -> anyhow::Result<bool> {
    let Some(reg) = store.load_registration(&w.name).await? else {
        return Ok(false);
    };
    let Some(expires) = reg.client_secret_expires_at else {
        return Ok(false);
    };
    let now = crate::store::unix_secs(now);
    if reg.client_id != w.client_id
        || !w.client_auth.needs_secret()
        || expires > now.saturating_add(policy.client_secret_renew_lead.as_secs())
    {
        return Ok(false);
    }
    let (Some(uri), Some(token)) = (&reg.registration_client_uri, &reg.registration_access_token)
    else {
        tracing::warn!(workload = %w.name, expires_at = expires, "the client secret expires soon and the server gave no way to renew it (RFC 7592); once it has expired, a sign-in registers a new client");
        return Ok(false);
    };
    let uri = Url::parse(uri)?;
    let port = w.redirect_port.unwrap_or(0);
    let redirect_uri = Url::parse(&format!("http://127.0.0.1:{port}/callback"))?;
    let renewed =
        discovery::update_registration(http, &uri, token, w, &redirect_uri, policy).await?;
    if renewed.client_id != w.client_id {
        anyhow::bail!("the client configuration endpoint answered for another client");
    }
    let Some(secret) = renewed.client_secret.as_ref() else {
        anyhow::bail!("the client configuration endpoint answered without a client secret");
    };
    let kept = ClientRegistration {
        client_secret_expires_at: renewed.client_secret_expires_at,
        registration_client_uri: renewed
            .registration_client_uri
            .clone()
            .or(reg.registration_client_uri.clone()),
        registration_access_token: renewed
            .registration_access_token
            .clone()
            .or(reg.registration_access_token.clone()),
        ..reg
    };
    store
        .save_client(&w.name, Some(secret), Some(&kept))
        .await?;
    tracing::info!(workload = %w.name, expires_at = ?kept.client_secret_expires_at, "renewed the client secret (RFC 7592)");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_with_a_path_or_local_http_are_client_ids() {
        for ok in [
            "https://me.example/tokenwarden.json",
            "https://me.example/a/b?x=1",
            "http://127.0.0.1:8080/cimd.json",
            "http://localhost/cimd.json",
        ] {
            assert!(ClientMetadata::parse(ok, None).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("http://me.example/c.json", "must be https"),
            ("https://me.example", "needs a path"),
            ("https://me.example/", "needs a path"),
            ("https://me.example/c.json#x", "no fragment"),
            ("https://u@me.example/c.json", "no user name"),
            ("not a url", "not a valid URL"),
        ] {
            let e = ClientMetadata::parse(bad, None).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(ClientMetadata::parse("https://me.example/c.json", Some(0)).is_err());
    }

    fn discovered(cimd: bool, registration: bool) -> Discovered {
        let u = |s: &str| Url::parse(s).unwrap();
        Discovered {
            resource: u("https://mcp.example/mcp"),
            resource_indicator: None,
            issuer: u("https://as.example"),
            issuer_identifier: "https://as.example".into(),
            iss_parameter_supported: false,
            authorization_endpoint: u("https://as.example/authorize"),
            token_endpoint: u("https://as.example/token"),
            registration_endpoint: registration.then(|| u("https://as.example/register")),
            client_id_metadata_document_supported: cimd,
            scopes: Vec::new(),
            server_scopes: Vec::new(),
        }
    }

    #[test]
    fn the_spec_order_metadata_document_then_registration_then_a_clear_error() {
        let m = ClientMetadata::parse("https://me.example/tw.json", None).unwrap();
        let reg = Source::Register(Url::parse("https://as.example/register").unwrap());
        // A document is used only where the server takes them.
        assert_eq!(
            choose(&discovered(true, true), Some(&m)).unwrap(),
            Source::Metadata(m.clone())
        );
        assert_eq!(choose(&discovered(false, true), Some(&m)).unwrap(), reg);
        assert_eq!(choose(&discovered(true, true), None).unwrap(), reg);
        assert_eq!(
            choose(&discovered(true, false), Some(&m)).unwrap(),
            Source::Metadata(m.clone())
        );
        // Neither: the error says what to pass.
        let e = choose(&discovered(false, false), Some(&m))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pass --client-id ID") && !e.contains("client-metadata"),
            "{e}"
        );
        let e = choose(&discovered(true, false), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pass --client-id ID")
                && e.contains("pass --client-metadata-url URL")
                && e.contains("tokenwarden client-metadata --url URL"),
            "{e}"
        );
    }

    #[test]
    fn the_document_names_its_url_and_the_loopback_redirect() {
        let m = ClientMetadata::parse("https://me.example/tw.json", Some(40000)).unwrap();
        let d = m.document();
        assert_eq!(d["client_id"], "https://me.example/tw.json");
        assert_eq!(d["client_name"], "Tokenwarden");
        assert_eq!(
            d["redirect_uris"],
            serde_json::json!(["http://127.0.0.1:40000/callback"])
        );
        assert_eq!(d["token_endpoint_auth_method"], "none");
        assert_eq!(d["application_type"], "native");
        let default = ClientMetadata::parse("https://me.example/tw.json", None).unwrap();
        assert_eq!(default.redirect_port, DEFAULT_REDIRECT_PORT);
    }
}
