//! `wasmgate genconfig`: a configuration to start from, with a fresh random secret, so that
//! nobody copies a secret out of the documentation onto a network.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use crate::config::secret::random_secret;

/// The configuration: every role in one process on loopback, with the keys to change for a
/// cluster across machines pointed out.
fn text(secret: &str) -> String {
    format!(
        r#"# wasmgate configuration, written by `wasmgate genconfig`.
# Every process of one cluster needs this same secret: keep the file private (mode 0600),
# or move the secret to `secret_file` or the WASMGATE_SECRET environment variable.
secret = "{secret}"

[register]
listen = "127.0.0.1:1236"        # across machines: a private address the others reach

[[gateway]]
listen = "ws://127.0.0.1:7272"   # where clients connect
app = "commands"                 # the plugin (plugins/commands.wasm) its clients talk to
# lan_ip = "10.0.0.2"            # across machines: this host's address the worker hosts reach
# register = "10.0.0.1:1236"

[worker]
plugins = "plugins"
# register = "10.0.0.1:1236"
"#
    )
}

/// Prints the configuration, or writes it to `output` (created owner-only, never over an
/// existing file).
pub fn run(output: Option<&Path>) -> anyhow::Result<()> {
    let text = text(&random_secret());
    let Some(path) = output else {
        print!("{text}");
        return Ok(());
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {} (mode 0600)", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SecretSource};

    #[test]
    fn the_configuration_is_valid_and_its_secret_fresh_and_long() {
        let (a, b) = (text(&random_secret()), text(&random_secret()));
        assert_ne!(a, b);
        let config = Config::from_toml(&a, Path::new("/nowhere/wasmgate.toml")).unwrap();
        let SecretSource::Inline(secret) = &config.secret else {
            panic!("the secret is inline: {:?}", config.secret)
        };
        assert_eq!(secret.len(), 64);
        assert!(config.register.is_some() && config.worker.is_some());
        assert_eq!(config.gateway.len(), 1);
    }
}
