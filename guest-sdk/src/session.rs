//! A typed view of the WIT `session`, GatewayWorker's `$_SESSION`.

/// A client's session: a string map with unique keys, in no meaningful order.
///
/// It is a copy: changing it changes nothing at the gateway until it is written back with
/// [`Client::set_session`](crate::Client::set_session), or until the changed keys alone are sent
/// with [`gateway::update_session`](crate::gateway::update_session).
#[derive(Clone, Debug, Default)]
pub struct Session(Vec<(String, String)>);

impl Session {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if it is set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).map(|i| self.0[i].1.as_str())
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        match self.position(&key) {
            Some(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        // Order is not meaningful, so the cheap removal is fine.
        self.position(key).map(|i| self.0.swap_remove(i).1)
    }

    /// The `(key, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs as the WIT `session` list that [`gateway`](crate::gateway) calls take.
    pub fn as_slice(&self) -> &[(String, String)] {
        &self.0
    }

    // Sessions hold a handful of keys: a linear scan beats hashing and keeps plugins small.
    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }
}

/// Wraps a WIT `session` list, whose keys the host keeps unique.
impl From<Vec<(String, String)>> for Session {
    fn from(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }
}

/// Unwraps into the WIT `session` list.
impl From<Session> for Vec<(String, String)> {
    fn from(session: Session) -> Self {
        session.0
    }
}

/// Collects pairs; a key listed twice keeps its last value.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Session {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut session = Self::new();
        for (key, value) in pairs {
            session.set(key, value);
        }
        session
    }
}

#[cfg(test)]
mod tests {
    use super::Session;

    #[test]
    fn set_replaces_and_remove_forgets() {
        let mut session: Session = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        assert_eq!(session.len(), 2);
        assert_eq!(session.get("a"), Some("3"));
        assert_eq!(session.set("b", "4"), Some("2".to_string()));
        assert_eq!(session.remove("a"), Some("3".to_string()));
        assert_eq!(session.get("a"), None);
        assert_eq!(session.iter().collect::<Vec<_>>(), [("b", "4")]);
        let raw: Vec<(String, String)> = session.into();
        assert_eq!(raw, [("b".to_string(), "4".to_string())]);
    }
}
