//! `[cluster]`: NATS as the cluster engine instead of the register mesh (ARCHITECTURE.md,
//! "Several machines: the NATS engine"). With it, gateways are found through announcements
//! on NATS and commands travel over NATS; events and queries keep the direct links.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[cluster]`: how this process reaches the NATS cluster and which deployment on it it
/// belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS servers to connect to (`nats://host:port`, or `tls://host:port` to require
    /// TLS); at least one. The client connects to one, learns the others from it, and moves
    /// to another when its server goes away. Keys `register` and `[register]` are refused
    /// beside it: a deployment has one engine.
    pub nats: Vec<String>,
    /// The deployment's name: the subject prefix `wg.<name>.`, so that two deployments can
    /// share one NATS. Letters, digits, `-` and `_`; "wasmgate" unless given.
    #[serde(default = "default_name")]
    pub name: String,
    /// The NATS user, with `password`; off unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The NATS user's password; needs `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A NATS token instead of `user`/`password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A PEM file of CA certificates the NATS servers' certificates must chain to; setting it
    /// requires TLS on every connection. A relative path starts in the configuration file's
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// This process's client certificate (PEM), for servers that verify clients; needs
    /// `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl ClusterConfig {
    /// Rejects settings that cannot work, naming the key.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.nats.is_empty() {
            return Err("`nats` must list at least one server".into());
        }
        for server in &self.nats {
            let scheme = server.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("nats" | "tls")) {
                return Err(format!(
                    "`nats`: {server:?} is not a nats://host:port or tls://host:port URL"
                ));
            }
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.name.is_empty() || !self.name.chars().all(name_ok) {
            return Err(format!(
                "`name` {:?} must be letters, digits, '-' or '_' (it is a NATS subject token)",
                self.name
            ));
        }
        if self.password.is_some() && self.user.is_none() {
            return Err("`password` needs `user`".into());
        }
        if self.user.is_some() && self.password.is_none() {
            return Err("`user` needs `password`".into());
        }
        if self.token.is_some() && self.user.is_some() {
            return Err("give `token` or `user`/`password`, not both".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("`tls_cert` and `tls_key` go together".into());
        }
        Ok(())
    }

    /// Whether connections must use TLS: a CA or client certificate is given, or a server is
    /// listed as `tls://`.
    pub fn tls_required(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.nats.iter().any(|s| s.starts_with("tls://"))
    }
}

fn default_name() -> String {
    "wasmgate".into()
}
