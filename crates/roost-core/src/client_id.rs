//! [`ClientId`]: the identifier a client gives in CONNECT (MQTT 5.0 §3.1.3.1), or the one the
//! server assigned it.
//!
//! One type from the driver through the session registry to the cluster's session registry, so
//! a client id is never confused with a topic, a node name or any other string. It holds an
//! `Arc<str>`: the registry, the session, its connection and every message it publishes share
//! one allocation.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A client identifier. Cheap to clone (one `Arc`); compares, hashes and orders as its string,
/// and borrows as `&str` so maps keyed by it can be looked up with a plain `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Wraps an id. No validation: MQTT allows any UTF-8 string up to the length the node
    /// configures (`mqtt.max_client_id_length`, checked at CONNECT).
    pub fn new(id: impl Into<Arc<str>>) -> ClientId {
        ClientId(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string (for the `publisher` of a message).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> ClientId {
        ClientId(s.into())
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> ClientId {
        ClientId(s.into())
    }
}

impl From<Arc<str>> for ClientId {
    fn from(s: Arc<str>) -> ClientId {
        ClientId(s)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn looks_up_by_str_and_shares_its_allocation() {
        let id = ClientId::from("sensor-1");
        let mut m = HashMap::new();
        m.insert(id.clone(), 1);
        assert_eq!(m.get("sensor-1"), Some(&1));
        assert_eq!(id.to_string(), "sensor-1");
        assert_eq!(format!("{id:?}"), "\"sensor-1\"");
        let copy = id.clone();
        assert!(Arc::ptr_eq(id.as_arc(), copy.as_arc()));
    }
}
