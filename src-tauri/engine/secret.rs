//! Secrets in a newtype that never prints itself.
//!
//! `Secret` has no `Display`, and its `Debug` is redacted, so an access or refresh
//! token cannot reach a log line or a `{:?}` by accident. The only way to read the
//! value is the explicit [`Secret::expose`].
//!
//! The text is shared, not copied, by clones: the monitor, the token it publishes for
//! the local proxy and every request the proxy forwards hold one allocation.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::from(value.into()))
    }

    /// The secret value. Call sites are the places that send it over the wire or
    /// into the secret store; grep for `expose(` to audit them.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
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

    #[test]
    fn serializes_as_its_text_and_clones_share_it() {
        let s = Secret::new("sim_rt_1");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"sim_rt_1\"");
        let back: Secret = serde_json::from_str("\"sim_rt_1\"").unwrap();
        assert_eq!(back, s);
        assert!(std::ptr::eq(s.expose(), s.clone().expose()));
    }
}
