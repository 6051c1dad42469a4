//! The pid file: for service managers and `kill`, never needed by wasmgate's own commands.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A file holding this process's id, removed when dropped.
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes the process id to `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
