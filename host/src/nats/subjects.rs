//! The subjects of one deployment (`wg.<name>.…`), and which of them a command is published
//! on: the membership-aware fan-out of ARCHITECTURE.md ("Several machines").
//!
//! Group and uid names may hold bytes a subject cannot (`.`, `*`, `>`, spaces), so their
//! subjects carry a hash of the name; the name travels in the command, so a gateway that
//! subscribed for another name with the same hash delivers nothing for it.

use std::net::SocketAddrV4;

use sha2::{Digest, Sha256};

use crate::ops::Command;
use crate::wire::PROTOCOL_VERSION;

/// The subject names of one deployment.
#[derive(Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The subjects under `wg.<name>.`.
    pub fn new(name: &str) -> Self {
        Self {
            prefix: format!("wg.{name}"),
        }
    }

    /// Where gateways announce themselves: one subject per internal protocol version, so a
    /// process hears only the gateways it can link to, and never misreads an announcement
    /// of another version's layout during a rolling upgrade.
    pub fn nodes(&self) -> String {
        format!("{}.nodes.v{PROTOCOL_VERSION}", self.prefix)
    }

    /// Where a starting node asks every gateway to announce itself at once.
    pub fn hello(&self) -> String {
        format!("{}.hello", self.prefix)
    }

    /// Commands for every client: every gateway subscribes.
    pub fn all(&self) -> String {
        format!("{}.all", self.prefix)
    }

    /// Commands about clients of the gateway at `internal` (the address in their ids).
    pub fn gateway(&self, internal: SocketAddrV4) -> String {
        let [a, b, c, d] = internal.ip().octets();
        let port = internal.port();
        format!("{}.gw.{a:02x}{b:02x}{c:02x}{d:02x}{port:04x}", self.prefix)
    }

    /// Where the process drawing `id` sends its marks to itself (`nats::confirm`): nobody
    /// else subscribes.
    pub fn marks(&self, id: u64) -> String {
        format!("{}.mark.{id:016x}", self.prefix)
    }

    /// Commands for the members of group `name`, wherever they are.
    pub fn group(&self, name: &str) -> String {
        format!("{}.group.{}", self.prefix, hash(name))
    }

    /// Commands for the clients bound to uid `name`, wherever they are.
    pub fn uid(&self, name: &str) -> String {
        format!("{}.uid.{}", self.prefix, hash(name))
    }

    /// The subjects `command` is published on, each once. A command naming several groups
    /// (or uids) goes to each of their subjects; the gateway that receives it on more than
    /// one delivers it only from the first listed ([`Self::first_held`]).
    pub fn route(&self, command: &Command) -> Vec<String> {
        let mut subjects = match command {
            Command::SendToAll { .. } => vec![self.all()],
            Command::SendToGroup { groups, .. } => groups.iter().map(|g| self.group(g)).collect(),
            Command::Ungroup { group } => vec![self.group(group)],
            Command::SendToUid { uids, .. } => uids.iter().map(|u| self.uid(u)).collect(),
            Command::SendToClients { clients, .. } => {
                clients.iter().map(|c| self.gateway(c.gateway)).collect()
            }
            other => other
                .target()
                .map(|c| self.gateway(c.gateway))
                .into_iter()
                .collect(),
        };
        // Keeps the first of each, in the command's order.
        let mut seen = std::collections::HashSet::new();
        subjects.retain(|s| seen.insert(s.clone()));
        subjects
    }

    /// For a command that arrived on one of several group or uid subjects: the first of its
    /// subjects for which `subscribed` holds, which is the one copy a gateway delivers.
    /// `None` for a command that goes on one subject only (always delivered).
    pub fn first_held(
        &self,
        command: &Command,
        subscribed: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let subjects = match command {
            Command::SendToGroup { groups, .. } if groups.len() > 1 => {
                groups.iter().map(|g| self.group(g)).collect::<Vec<_>>()
            }
            Command::SendToUid { uids, .. } if uids.len() > 1 => {
                uids.iter().map(|u| self.uid(u)).collect()
            }
            _ => return None,
        };
        subjects.into_iter().find(|s| subscribed(s))
    }
}

/// 64 bits of SHA-256 in hex: stable across processes and versions (a seeded hash is not),
/// and collisions are harmless (see the module doc).
fn hash(name: &str) -> String {
    hex::encode(&Sha256::digest(name.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::client_id::ClientId;

    #[test]
    fn each_command_goes_where_its_recipients_are_and_once_per_subject() {
        let s = Subjects::new("t");
        let gw = |port| SocketAddrV4::new([127, 0, 0, 1].into(), port);
        let data = Bytes::from_static(b"x");
        let groups = Command::SendToGroup {
            groups: vec!["a.b c".into(), "z".into(), "a.b c".into()],
            data: data.clone(),
            exclude: vec![],
        };
        let routed = s.route(&groups);
        assert_eq!(routed, [s.group("a.b c"), s.group("z")]);
        assert!(routed[0].starts_with("wg.t.group.") && !routed[0][11..].contains('.'));
        let clients = Command::SendToClients {
            clients: vec![ClientId::new(gw(1), 1), ClientId::new(gw(2), 1)],
            data: data.clone(),
        };
        assert_eq!(s.route(&clients), [s.gateway(gw(1)), s.gateway(gw(2))]);
        assert_eq!(s.gateway(gw(1)), "wg.t.gw.7f0000010001");
        let all = Command::SendToAll {
            data,
            exclude: vec![],
        };
        assert_eq!(s.route(&all), ["wg.t.all"]);
        let join = Command::JoinGroup {
            client: ClientId::new(gw(3), 9),
            group: "a".into(),
        };
        assert_eq!(s.route(&join), [s.gateway(gw(3))]);
        assert_eq!(
            s.first_held(&groups, |x| x == s.group("z")),
            Some(s.group("z"))
        );
        assert_eq!(s.first_held(&groups, |_| true), Some(s.group("a.b c")));
        assert_eq!(s.first_held(&join, |_| true), None);
    }
}
