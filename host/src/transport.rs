//! Where internal links meet the network: every link between processes (register, gateway,
//! worker host, push client) is dialled with [`Trust::dial`] and accepted with
//! [`Trust::accept`], in the clear or over TLS with mutual certificates (`[internal_tls]`),
//! and every role above gets the same byte stream ([`Stream`]) to run the shared-secret
//! handshake and the frames of `wire` on.
//!
//! TLS does not replace the secret: a node must hold both a certificate of the cluster's CA
//! and the secret, so a leaked key pair alone does not let anyone in, and the handshake's
//! version agreement keeps working unchanged inside the encrypted stream.
//!
//! The two ends must agree on TLS. An acceptor tells them apart from the first byte, without
//! consuming it (a TLS record of a ClientHello starts with 22, wasmgate's handshake frame with
//! its length's high byte, 0), so each end refuses the other with a reason rather than a
//! garbled handshake: `TlsRefusal::PlaintextPeer` on a TLS node, `TlsRefusal::TlsPeer` on a
//! plaintext one, each logged by the caller with the peer and counted
//! (`internal_tls_refused_total`).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::config::InternalTlsConfig;
use crate::wire::handshake::{HANDSHAKE_TIMEOUT, HandshakeError};
use crate::wire::{LinkError, TlsRefusal};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// `[internal_tls]` files that cannot serve TLS; the message names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file is missing, unreadable or holds no PEM item of the kind its key needs.
    #[error("[internal_tls] {key} {}: {source}", path.display())]
    File {
        /// The key naming the file (`ca`, `cert`, `key`).
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the files together (a key that does not match the certificate, a CA
    /// certificate it cannot use).
    #[error("[internal_tls]: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA file's certificates cannot verify client certificates.
    #[error("[internal_tls] ca: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What an internal link proves on each end: the cluster secret, and, with `[internal_tls]`,
/// a certificate of the cluster's CA inside an encrypted stream. Cheap to clone.
#[derive(Clone)]
pub struct Trust {
    secret: Arc<[u8]>,
    tls: Option<Arc<Tls>>,
}

/// The loaded `[internal_tls]`.
struct Tls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Trust")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Links in the clear, authenticated by `secret` alone.
    pub fn plain(secret: Arc<[u8]>) -> Self {
        Self { secret, tls: None }
    }

    /// Links authenticated by `secret`, over TLS when `tls` is given; its files are read now,
    /// so a bad one fails the start and is named.
    pub fn load(secret: Arc<[u8]>, tls: Option<&InternalTlsConfig>) -> Result<Self, TlsSetupError> {
        let tls = tls.map(Tls::load).transpose()?.map(Arc::new);
        Ok(Self { secret, tls })
    }

    /// The cluster secret, for the handshake inside the stream.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Whether links run over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects to `addr` and, with TLS, runs its handshake (checking the peer's certificate
    /// against the CA and the cluster's server name), within the handshake's bound.
    pub async fn dial(&self, addr: SocketAddr) -> Result<Stream, LinkError> {
        let tcp = match timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(connected) => connected.map_err(LinkError::Connect)?,
            Err(_) => return Err(LinkError::Connect(io::ErrorKind::TimedOut.into())),
        };
        // Internal messages are small and latency matters more than packet count; the
        // writer tasks batch on their own.
        tcp.set_nodelay(true).map_err(LinkError::Connect)?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let connecting = tls.connector.connect(tls.server_name.clone(), tcp);
        let stream = finish(timeout(HANDSHAKE_TIMEOUT, connecting).await)?;
        Ok(Stream::Tls(Box::new(TlsStream::Client(stream))))
    }

    /// Takes a connection accepted from `peer`: refuses a peer that disagrees on TLS and,
    /// with TLS, runs its handshake, requiring a client certificate of the CA. Nothing of
    /// the peer's first message is consumed in the clear.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Stream, LinkError> {
        tcp.set_nodelay(true).map_err(LinkError::Connect)?;
        let mut first = [0u8; 1];
        match timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
            Err(_) => return Err(HandshakeError::Timeout.into()),
            Ok(Ok(0)) => return Err(HandshakeError::Closed.into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(LinkError::Connect(e)),
        }
        let opens_tls = first[0] == TLS_HANDSHAKE_RECORD;
        let Some(tls) = &self.tls else {
            if opens_tls {
                return Err(refused(TlsRefusal::TlsPeer));
            }
            return Ok(Stream::Plain(tcp));
        };
        if !opens_tls {
            return Err(refused(TlsRefusal::PlaintextPeer));
        }
        let stream = finish(timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp)).await)?;
        Ok(Stream::Tls(Box::new(TlsStream::Server(stream))))
    }
}

/// The outcome of a bounded TLS handshake, a failure counted.
fn finish<S>(outcome: Result<io::Result<S>, tokio::time::error::Elapsed>) -> Result<S, LinkError> {
    match outcome {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(refused(TlsRefusal::Handshake(e))),
        Err(_) => Err(refused(TlsRefusal::Timeout(HANDSHAKE_TIMEOUT))),
    }
}

fn refused(refusal: TlsRefusal) -> LinkError {
    crate::metrics::internal_tls_refused(refusal.reason());
    LinkError::Tls(refusal)
}

impl Tls {
    fn load(config: &InternalTlsConfig) -> Result<Self, TlsSetupError> {
        let file_error = |key: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| TlsSetupError::File { key, path, source }
        };
        let certs = |key, path: &Path| {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(file_error(key, path))?;
            if certs.is_empty() {
                return Err(file_error(key, path)(
                    rustls::pki_types::pem::Error::NoItemsFound,
                ));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca in certs("ca", &config.ca)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let chain = certs("cert", &config.cert)?;
        let key =
            PrivateKeyDer::from_pem_file(&config.key).map_err(file_error("key", &config.key))?;
        // An explicit provider, as for `wss`: no process-wide default has to be installed.
        let provider = Arc::new(ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|e| rustls::Error::General(format!("server_name: {e}")))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            server_name,
        })
    }
}

/// An internal connection, plain or TLS.
pub enum Stream {
    /// In the clear.
    Plain(TcpStream),
    /// Over TLS, either end.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The reading and writing halves, for a link's reader and its writer task.
    pub fn split(self) -> (LinkRead, LinkWrite) {
        match self {
            // The plain halves share no lock: the common case pays nothing for TLS.
            Stream::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (LinkRead::Plain(read), LinkWrite::Plain(write))
            }
            Stream::Tls(tls) => {
                let (read, write) = tokio::io::split(*tls);
                (LinkRead::Tls(read), LinkWrite::Tls(write))
            }
        }
    }

    /// The socket, if the stream is in the clear (a GatewayWorker connection is handed on
    /// as one).
    pub fn into_plain(self) -> Result<TcpStream, Self> {
        match self {
            Stream::Plain(tcp) => Ok(tcp),
            tls => Err(tls),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

/// The reading half of a [`Stream`].
pub enum LinkRead {
    /// In the clear.
    Plain(OwnedReadHalf),
    /// Over TLS.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a [`Stream`].
pub enum LinkWrite {
    /// In the clear.
    Plain(OwnedWriteHalf),
    /// Over TLS.
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for LinkRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            // A peer that stops (or dies) closes its socket without TLS's close_notify; read
            // as an end of stream, as in the clear. Frames are length-prefixed, so a stream
            // cut mid-frame is still an error (`FrameReader`), and truncation gains nothing.
            LinkRead::Tls(r) => match Pin::new(r).poll_read(cx, buf) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for LinkWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            LinkWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            LinkWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            LinkWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
