//! Secrets in a newtype that never prints itself.
//!
//! `Secret` has no `Display`, and its `Debug` is redacted, so an access or refresh
//! token cannot reach a log line or a `{:?}` by accident. The only way to read the
//! value is the explicit [`Secret::expose`].

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call sites are the places that send it over the wire or
    /// into the secret store; grep for `expose(` to audit them.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("sim_at_supersecret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(&s)).contains("supersecret"));
    }
}
