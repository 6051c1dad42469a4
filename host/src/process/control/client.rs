//! The command line's side of the control socket: one request, one answer, bounded in time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::protocol::{Request, Response, TIMEOUT};

/// Why the command line got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No server listens on the socket.
    #[error("no server answers on {}", .0.display())]
    NotRunning(PathBuf),
    /// The socket failed.
    #[error("control socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer is not one this command line understands.
    #[error("control socket {}: unexpected answer: {source}", path.display())]
    Garbled {
        /// The socket.
        path: PathBuf,
        /// Why it did not parse.
        source: serde_json::Error,
    },
}

/// Asks the server listening on `socket`, waiting at most [`TIMEOUT`] for the answer.
pub fn ask(socket: &Path, request: Request) -> Result<Response, AskError> {
    let io = |source| AskError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) if is_nobody_there(&e) => return Err(AskError::NotRunning(socket.to_owned())),
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(&request).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| AskError::Garbled {
        path: socket.to_owned(),
        source,
    })
}

/// A socket file nobody listens on, or none at all.
fn is_nobody_there(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}
