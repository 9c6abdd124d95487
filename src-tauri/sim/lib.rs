//! The simulated world Tokenwarden is demonstrated and tested against, on loopback:
//!
//! * [`issuer`]: an OAuth 2.1 authorization server (authorization code + PKCE, refresh
//!   with strict rotation, dynamic registration, RFC 8414 metadata) whose failure
//!   modes can be switched at run time (outage, WAF page, rate limit, slow, hostile
//!   answers);
//! * [`remote`]: an OAuth-protected resource in front of an issuer (RFC 9728
//!   metadata, `WWW-Authenticate` challenges), standing in for a remote MCP server.

pub mod issuer;
pub mod remote;
