//! JSON convenience (cargo feature `json`): sends and session values through `serde_json`.
//!
//! Each send serializes once and then behaves like its [`gateway`] namesake; a value that cannot
//! be serialized (a map with non-string keys, a failing `Serialize` impl) is an error and sends
//! nothing.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ClientId, Session, gateway};

/// Sends `value` as JSON to one client; see [`gateway::send_to_client`] for the `bool`.
pub fn send_to_client<T: Serialize + ?Sized>(
    client_id: &str,
    value: &T,
) -> serde_json::Result<bool> {
    Ok(gateway::send_to_client(
        client_id,
        &serde_json::to_vec(value)?,
    ))
}

/// Sends `value` as JSON to each of `client_ids`.
pub fn send_to_clients<T: Serialize + ?Sized>(
    client_ids: &[ClientId],
    value: &T,
) -> serde_json::Result<()> {
    gateway::send_to_clients(client_ids, &serde_json::to_vec(value)?);
    Ok(())
}

/// Sends `value` as JSON to every connected client except those in `exclude`.
pub fn send_to_all<T: Serialize + ?Sized>(
    value: &T,
    exclude: &[ClientId],
) -> serde_json::Result<()> {
    gateway::send_to_all(&serde_json::to_vec(value)?, exclude);
    Ok(())
}

/// Sends `value` as JSON to every client bound to any of `uids`.
pub fn send_to_uid<T: Serialize + ?Sized>(uids: &[String], value: &T) -> serde_json::Result<()> {
    gateway::send_to_uid(uids, &serde_json::to_vec(value)?);
    Ok(())
}

/// Sends `value` as JSON to every member of any of `groups` except those in `exclude`.
pub fn send_to_group<T: Serialize + ?Sized>(
    groups: &[String],
    value: &T,
    exclude: &[ClientId],
) -> serde_json::Result<()> {
    gateway::send_to_group(groups, &serde_json::to_vec(value)?, exclude);
    Ok(())
}

impl Session {
    /// Parses the value of `key` as JSON; `Ok(None)` if the key is not set.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> serde_json::Result<Option<T>> {
        self.get(key).map(serde_json::from_str).transpose()
    }

    /// Sets `key` to `value` as JSON text.
    pub fn set_json<T: Serialize + ?Sized>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> serde_json::Result<()> {
        self.set(key, serde_json::to_string(value)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Session;

    #[test]
    fn session_values_round_trip_as_json() {
        let mut session = Session::new();
        session.set_json("room", &["a", "b"]).unwrap();
        assert_eq!(session.get("room"), Some(r#"["a","b"]"#));
        let room: Option<Vec<String>> = session.get_json("room").unwrap();
        assert_eq!(room, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(session.get_json::<u32>("missing").unwrap(), None);
        assert!(session.get_json::<u32>("room").is_err());
    }
}
