//! JSON convenience (cargo feature `json`): sends and session values through `serde_json`.
//!
//! Each send serializes once and then behaves like its [`gateway`] namesake; a value that cannot
//! be serialized (a map with non-string keys, a failing `Serialize` impl) is an error and sends
//! nothing.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ClientId, GatewayError, Session, gateway};

/// Why a JSON send failed.
#[derive(Debug)]
pub enum SendError {
    /// The value could not be serialized; nothing was sent.
    Json(serde_json::Error),
    /// The gateway operation failed.
    Gateway(GatewayError),
}

impl From<serde_json::Error> for SendError {
    fn from(e: serde_json::Error) -> Self {
        SendError::Json(e)
    }
}

impl From<GatewayError> for SendError {
    fn from(e: GatewayError) -> Self {
        SendError::Gateway(e)
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Json(e) => write!(f, "not serializable as JSON: {e}"),
            SendError::Gateway(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {}

/// Sends `value` as JSON to one client.
pub fn send_to_client<T: Serialize + ?Sized>(client_id: &str, value: &T) -> Result<(), SendError> {
    Ok(gateway::send_to_client(
        client_id,
        &serde_json::to_vec(value)?,
    )?)
}

/// Sends `value` as JSON to each of `client_ids`.
pub fn send_to_clients<T: Serialize + ?Sized>(
    client_ids: &[ClientId],
    value: &T,
) -> Result<(), SendError> {
    Ok(gateway::send_to_clients(
        client_ids,
        &serde_json::to_vec(value)?,
    )?)
}

/// Sends `value` as JSON to every connected client except those in `exclude`.
pub fn send_to_all<T: Serialize + ?Sized>(
    value: &T,
    exclude: &[ClientId],
) -> Result<(), SendError> {
    Ok(gateway::send_to_all(&serde_json::to_vec(value)?, exclude)?)
}

/// Sends `value` as JSON to every client bound to any of `uids`.
pub fn send_to_uid<T: Serialize + ?Sized>(uids: &[String], value: &T) -> Result<(), SendError> {
    Ok(gateway::send_to_uid(uids, &serde_json::to_vec(value)?)?)
}

/// Sends `value` as JSON to every member of any of `groups` except those in `exclude`.
pub fn send_to_group<T: Serialize + ?Sized>(
    groups: &[String],
    value: &T,
    exclude: &[ClientId],
) -> Result<(), SendError> {
    Ok(gateway::send_to_group(
        groups,
        &serde_json::to_vec(value)?,
        exclude,
    )?)
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
