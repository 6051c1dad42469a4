//! The first exchange on every internal link: both ends prove they hold the shared secret
//! without sending it, and agree on the protocol version.
//!
//! GatewayWorker sends its secret key in clear in the first packet and compares it with `==`;
//! here each side proves knowledge of the secret with an HMAC over both sides' fresh nonces:
//!
//! ```text
//! connector                                     acceptor
//!   Hello { version, role, nonce_c }      ──▶
//!                                         ◀──   Challenge { version, nonce_a,
//!                                                 proof: HMAC(secret, "wasmgate-server" ‖ nonce_c ‖ nonce_a) }
//!   checks the acceptor's proof first, so an impostor acceptor learns nothing it could replay
//!   Proof(HMAC(secret, "wasmgate-client" ‖ nonce_a ‖ nonce_c)) ──▶
//!                                         ◀──   Welcome
//! ```
//!
//! Either side may answer `Refused` instead (unknown version, bad secret), so that both ends
//! log the real cause rather than "connection closed". The labels differ by direction so that
//! a proof can never be reflected back to the side that asked for it.
//!
//! The whole exchange is bounded by [`HANDSHAKE_TIMEOUT`] and by a tiny frame limit, so an
//! unauthenticated peer can hold neither a task nor memory for long. A peer that connects and
//! says nothing is what load-balancer and Kubernetes TCP probes look like;
//! [`HandshakeError::is_quiet`] tells callers to log those at debug level (GatewayWorker logs
//! each one as an error and floods its log).
//!
//! The handshake authenticates the two ends; it does not encrypt or sign the traffic after it.
//! Without `[internal_tls]` (`crate::transport`), internal ports belong on a private network.
//!
//! Compatibility: the layout of `Hello` and of the acceptor's answer to it is
//! frozen across protocol versions, so that peers of any two versions can always read each
//! other's first message and refuse cleanly.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

use super::codec::{FrameReader, FrameWriter, WireError};

/// How long either side waits for the whole handshake before dropping the link.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The frame limit while the peer is unauthenticated: every handshake message fits, and
/// anything else (an HTTP request sent to an internal port, say) fails on its length prefix.
const HANDSHAKE_MAX_FRAME: usize = 128;

/// Bytes of a link's start that tell wasmgate's handshake from another protocol on the same
/// port: the frame's length and the first byte of its message.
pub const OPENING: usize = 5;

/// Whether a link opens with wasmgate's handshake: a frame within the handshake's limit
/// whose message is `Hello` (postcard's variant tag 0, frozen with `Hello`'s layout).
/// GatewayWorker's packets differ in that byte: it is their command code, never 0.
pub fn is_opening(start: &[u8; OPENING]) -> bool {
    let len = u32::from_be_bytes([start[0], start[1], start[2], start[3]]);
    usize::try_from(len).is_ok_and(|len| len <= HANDSHAKE_MAX_FRAME) && start[4] == 0
}

/// Domain separation for the acceptor's proof.
const ACCEPTOR_LABEL: &[u8] = b"wasmgate-server";

/// The internal protocol's version, exchanged in the handshake; peers of different versions
/// refuse each other with a message naming both versions (8: gateway addresses may be IPv6).
pub const PROTOCOL_VERSION: u8 = 8;

/// Domain separation for the connector's proof.
const CONNECTOR_LABEL: &[u8] = b"wasmgate-client";

/// A fresh random value per handshake and side, so that no proof is valid twice.
type Nonce = [u8; 32];

/// An HMAC-SHA256 output.
type Tag = [u8; 32];

/// What the connecting side is; the acceptor learns it from the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// A gateway (registering with a register).
    Gateway,
    /// A worker host (registering with a register, or linking to a gateway).
    Worker,
    /// A push client: another application that asks the register for gateways and sends
    /// commands to them, but runs no plugins.
    Client,
}

impl Peer {
    /// The role's name in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Gateway => "gateway",
            Peer::Worker => "worker",
            Peer::Client => "client",
        }
    }
}

/// Why a side refuses the handshake; sent so that the other side can log the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Refusal {
    /// "I do not speak your version; I speak `supported`."
    UnknownVersion {
        /// The refusing side's version.
        supported: u8,
    },
    /// "Your proof is wrong: we do not share the secret."
    BadSecret,
}

/// Connecting side → accepting side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum ToAcceptor {
    /// The opening message.
    Hello {
        /// The connector's protocol version.
        version: u8,
        /// What the connector is.
        role: Peer,
        /// The connector's nonce.
        nonce: Nonce,
    },
    /// The connector's proof that it holds the secret.
    Proof(Tag),
    /// The connector gives up.
    Refused(Refusal),
}

/// Accepting side → connecting side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum ToConnector {
    /// The acceptor's proof and its own nonce.
    Challenge {
        /// The version the link will speak.
        version: u8,
        /// The acceptor's nonce.
        nonce: Nonce,
        /// The acceptor's proof that it holds the secret.
        proof: Tag,
    },
    /// The link is open.
    Welcome,
    /// The acceptor gives up.
    Refused(Refusal),
}

/// Why a handshake failed; the link is dropped in every case.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The two sides do not share the secret.
    #[error("the peer does not share our secret")]
    BadSecret,
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol version {0}; this build speaks version {PROTOCOL_VERSION}")]
    UnknownVersion(u8),
    /// The peer did not finish the handshake in time.
    #[error("the peer did not finish the handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// The peer closed the link before the handshake finished.
    #[error("the peer closed the link during the handshake")]
    Closed,
    /// The peer sent a well-formed handshake message out of turn.
    #[error("the peer broke the handshake sequence")]
    OutOfTurn,
    /// The link failed, or the peer sent something that is not a handshake message.
    #[error("handshake failed: {0}")]
    Wire(#[from] WireError),
}

impl HandshakeError {
    /// Whether this looks like a TCP probe or a network blip rather than a misconfigured
    /// peer: a peer that said nothing, hung up or reset the connection. Callers log these at
    /// debug level and everything else as a warning.
    pub fn is_quiet(&self) -> bool {
        matches!(
            self,
            HandshakeError::Timeout
                | HandshakeError::Closed
                | HandshakeError::Wire(WireError::Io(_))
        )
    }
}

impl From<Refusal> for HandshakeError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UnknownVersion { supported } => HandshakeError::UnknownVersion(supported),
            Refusal::BadSecret => HandshakeError::BadSecret,
        }
    }
}

/// Runs the connecting side over a fresh link, announcing `role`; on success the link is
/// authenticated both ways.
pub async fn connect_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    secret: &[u8],
    role: Peer,
) -> Result<(), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let link_max = reader.max_frame();
    reader.set_max_frame(HANDSHAKE_MAX_FRAME);
    let outcome = timeout(
        HANDSHAKE_TIMEOUT,
        connect_steps(reader, writer, secret, role),
    )
    .await;
    reader.set_max_frame(link_max);
    outcome.unwrap_or(Err(HandshakeError::Timeout))
}

/// Runs the accepting side over a fresh link; on success the link is authenticated both ways
/// and the peer's role is returned.
pub async fn accept_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    secret: &[u8],
) -> Result<Peer, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let link_max = reader.max_frame();
    reader.set_max_frame(HANDSHAKE_MAX_FRAME);
    let outcome = timeout(HANDSHAKE_TIMEOUT, accept_steps(reader, writer, secret)).await;
    reader.set_max_frame(link_max);
    outcome.unwrap_or(Err(HandshakeError::Timeout))
}

async fn connect_steps<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    secret: &[u8],
    role: Peer,
) -> Result<(), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let own_nonce: Nonce = rand::random();
    writer
        .send(&ToAcceptor::Hello {
            version: PROTOCOL_VERSION,
            role,
            nonce: own_nonce,
        })
        .await?;
    let (version, their_nonce, proof) = match next(reader).await? {
        ToConnector::Challenge {
            version,
            nonce,
            proof,
        } => (version, nonce, proof),
        ToConnector::Refused(refusal) => return Err(refusal.into()),
        ToConnector::Welcome => return Err(HandshakeError::OutOfTurn),
    };
    if version != PROTOCOL_VERSION {
        let refusal = Refusal::UnknownVersion {
            supported: PROTOCOL_VERSION,
        };
        refuse(writer, ToAcceptor::Refused(refusal)).await;
        return Err(HandshakeError::UnknownVersion(version));
    }
    if !verify(secret, ACCEPTOR_LABEL, &own_nonce, &their_nonce, &proof) {
        refuse(writer, ToAcceptor::Refused(Refusal::BadSecret)).await;
        return Err(HandshakeError::BadSecret);
    }
    let own_proof = sign(secret, CONNECTOR_LABEL, &their_nonce, &own_nonce);
    writer.send(&ToAcceptor::Proof(own_proof)).await?;
    match next(reader).await? {
        ToConnector::Welcome => Ok(()),
        ToConnector::Refused(refusal) => Err(refusal.into()),
        ToConnector::Challenge { .. } => Err(HandshakeError::OutOfTurn),
    }
}

async fn accept_steps<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    secret: &[u8],
) -> Result<Peer, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (version, role, their_nonce) = match next(reader).await? {
        ToAcceptor::Hello {
            version,
            role,
            nonce,
        } => (version, role, nonce),
        ToAcceptor::Refused(refusal) => return Err(refusal.into()),
        ToAcceptor::Proof(_) => return Err(HandshakeError::OutOfTurn),
    };
    if version != PROTOCOL_VERSION {
        let refusal = Refusal::UnknownVersion {
            supported: PROTOCOL_VERSION,
        };
        refuse(writer, ToConnector::Refused(refusal)).await;
        return Err(HandshakeError::UnknownVersion(version));
    }
    let own_nonce: Nonce = rand::random();
    writer
        .send(&ToConnector::Challenge {
            version: PROTOCOL_VERSION,
            nonce: own_nonce,
            proof: sign(secret, ACCEPTOR_LABEL, &their_nonce, &own_nonce),
        })
        .await?;
    match next(reader).await? {
        ToAcceptor::Proof(proof) => {
            if verify(secret, CONNECTOR_LABEL, &own_nonce, &their_nonce, &proof) {
                writer.send(&ToConnector::Welcome).await?;
                Ok(role)
            } else {
                refuse(writer, ToConnector::Refused(Refusal::BadSecret)).await;
                Err(HandshakeError::BadSecret)
            }
        }
        ToAcceptor::Refused(refusal) => Err(refusal.into()),
        ToAcceptor::Hello { .. } => Err(HandshakeError::OutOfTurn),
    }
}

/// The peer's next handshake message; the peer hanging up is [`HandshakeError::Closed`].
async fn next<R, M>(reader: &mut FrameReader<R>) -> Result<M, HandshakeError>
where
    R: AsyncRead + Unpin,
    M: serde::de::DeserializeOwned,
{
    reader.recv().await?.ok_or(HandshakeError::Closed)
}

/// Tells the peer why we give up. Best effort: we drop the link either way, and our own
/// error already names the cause.
async fn refuse<W: AsyncWrite + Unpin, M: Serialize>(writer: &mut FrameWriter<W>, refusal: M) {
    let _ = writer.send(&refusal).await;
}

/// The keyed MAC over `label ‖ first ‖ second`.
fn mac(secret: &[u8], label: &[u8], first: &Nonce, second: &Nonce) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(first);
    mac.update(second);
    mac
}

/// Our proof over the two nonces.
fn sign(secret: &[u8], label: &[u8], first: &Nonce, second: &Nonce) -> Tag {
    mac(secret, label, first, second)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks the peer's proof in constant time.
fn verify(secret: &[u8], label: &[u8], first: &Nonce, second: &Nonce, proof: &Tag) -> bool {
    mac(secret, label, first, second)
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf, duplex, split};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    type End = (
        FrameReader<ReadHalf<DuplexStream>>,
        FrameWriter<WriteHalf<DuplexStream>>,
    );

    fn ends() -> (End, End) {
        let (a, b) = duplex(4096);
        let (ar, aw) = split(a);
        let (br, bw) = split(b);
        (
            (FrameReader::new(ar), FrameWriter::new(aw)),
            (FrameReader::new(br), FrameWriter::new(bw)),
        )
    }

    async fn both(
        connector_secret: &[u8],
        acceptor_secret: &[u8],
    ) -> (Result<(), HandshakeError>, Result<Peer, HandshakeError>) {
        let ((mut cr, mut cw), (mut ar, mut aw)) = ends();
        tokio::join!(
            connect_handshake(&mut cr, &mut cw, connector_secret, Peer::Worker),
            accept_handshake(&mut ar, &mut aw, acceptor_secret),
        )
    }

    #[tokio::test]
    async fn a_hello_is_told_from_a_gatewayworker_packet_by_its_opening() {
        let (a, mut b) = duplex(4096);
        let mut writer = FrameWriter::new(a);
        let hello = ToAcceptor::Hello {
            version: PROTOCOL_VERSION,
            role: Peer::Worker,
            nonce: [7; 32],
        };
        writer.send(&hello).await.unwrap();
        let mut start = [0; OPENING];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut start)
            .await
            .unwrap();
        assert!(is_opening(&start), "{start:?}");
        // The rest of the frame still reads as the Hello once the opening is put back.
        drop(writer);
        let mut reader = FrameReader::new(b).after(&start);
        assert_eq!(reader.recv::<ToAcceptor>().await.unwrap(), Some(hello));
        // GatewayWorker's first packets: 202 and 200 (reference §9.4), 28 bytes and a body.
        assert!(!is_opening(&[0, 0, 0, 50, 202]));
        assert!(!is_opening(&[0, 0, 0, 60, 200]));
        // A frame over the handshake's limit is not a handshake either.
        assert!(!is_opening(&[0, 0, 1, 0, 0]));
    }

    #[tokio::test]
    async fn same_secret_succeeds_and_restores_the_frame_limit() {
        let ((mut cr, mut cw), (mut ar, mut aw)) = ends();
        let (connected, accepted) = tokio::join!(
            connect_handshake(&mut cr, &mut cw, b"s3cret", Peer::Gateway),
            accept_handshake(&mut ar, &mut aw, b"s3cret"),
        );
        connected.unwrap();
        assert_eq!(accepted.unwrap(), Peer::Gateway);
        assert_eq!(ar.max_frame(), crate::wire::MAX_FRAME);
        // The link carries large frames after the handshake; this one is bigger than the
        // pipe's buffer, so the write and the read run together.
        let big = "x".repeat(10_000);
        let (sent, received) = tokio::join!(cw.send(&big), ar.recv::<String>());
        sent.unwrap();
        assert_eq!(received.unwrap(), Some(big));
    }

    #[tokio::test]
    async fn empty_secret_is_still_a_secret() {
        let (connected, accepted) = both(b"", b"").await;
        connected.unwrap();
        assert_eq!(accepted.unwrap(), Peer::Worker);
        let (connected, accepted) = both(b"", b"x").await;
        assert!(matches!(connected, Err(HandshakeError::BadSecret)));
        assert!(matches!(accepted, Err(HandshakeError::BadSecret)));
    }

    #[tokio::test]
    async fn wrong_secret_fails_on_both_sides() {
        let (connected, accepted) = both(b"one", b"two").await;
        assert!(
            matches!(connected, Err(HandshakeError::BadSecret)),
            "{connected:?}"
        );
        assert!(
            matches!(accepted, Err(HandshakeError::BadSecret)),
            "{accepted:?}"
        );
    }

    #[tokio::test]
    async fn unknown_version_is_refused_with_both_versions_named() {
        let ((mut cr, mut cw), (mut ar, mut aw)) = ends();
        let future = PROTOCOL_VERSION + 1;
        cw.send(&ToAcceptor::Hello {
            version: future,
            role: Peer::Worker,
            nonce: [0; 32],
        })
        .await
        .unwrap();
        let accepted = accept_handshake(&mut ar, &mut aw, b"s").await;
        let error = accepted.unwrap_err();
        assert!(matches!(error, HandshakeError::UnknownVersion(v) if v == future));
        assert!(
            error.to_string().contains(&format!("version {future}")),
            "{error}"
        );
        assert_eq!(
            cr.recv::<ToConnector>().await.unwrap(),
            Some(ToConnector::Refused(Refusal::UnknownVersion {
                supported: PROTOCOL_VERSION
            }))
        );
    }

    #[tokio::test]
    async fn connector_names_the_acceptors_version() {
        let ((mut cr, mut cw), (mut ar, mut aw)) = ends();
        let acceptor = async move {
            let _hello: Option<ToAcceptor> = ar.recv().await.unwrap();
            aw.send(&ToConnector::Refused(Refusal::UnknownVersion {
                supported: 9,
            }))
            .await
            .unwrap();
        };
        let (connected, ()) = tokio::join!(
            connect_handshake(&mut cr, &mut cw, b"s", Peer::Worker),
            acceptor
        );
        assert!(
            matches!(connected, Err(HandshakeError::UnknownVersion(9))),
            "{connected:?}"
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_hello_is_refused() {
        for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0, 0, 0, 2, 0xff, 0xff]] {
            let (mut raw, acceptor) = duplex(4096);
            let (ar, aw) = split(acceptor);
            raw.write_all(garbage).await.unwrap();
            let accepted =
                accept_handshake(&mut FrameReader::new(ar), &mut FrameWriter::new(aw), b"s").await;
            let error = accepted.unwrap_err();
            assert!(matches!(error, HandshakeError::Wire(_)), "{error:?}");
            assert!(!error.is_quiet());
        }
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_is_quiet() {
        let ((cr, cw), (mut ar, mut aw)) = ends();
        drop((cr, cw));
        let error = accept_handshake(&mut ar, &mut aw, b"s").await.unwrap_err();
        assert!(matches!(error, HandshakeError::Closed), "{error:?}");
        assert!(error.is_quiet());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_quietly() {
        let ((_cr, _cw), (mut ar, mut aw)) = ends();
        let error = accept_handshake(&mut ar, &mut aw, b"s").await.unwrap_err();
        assert!(matches!(error, HandshakeError::Timeout), "{error:?}");
        assert!(error.is_quiet());
    }

    async fn over_tcp(
        connector_secret: &'static [u8],
        acceptor_secret: &'static [u8],
    ) -> (Result<(), HandshakeError>, Result<Peer, HandshakeError>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, w) = stream.into_split();
            accept_handshake(
                &mut FrameReader::new(r),
                &mut FrameWriter::new(w),
                acceptor_secret,
            )
            .await
        });
        let (r, w) = TcpStream::connect(address).await.unwrap().into_split();
        let connected = connect_handshake(
            &mut FrameReader::new(r),
            &mut FrameWriter::new(w),
            connector_secret,
            Peer::Client,
        )
        .await;
        (connected, acceptor.await.unwrap())
    }

    #[tokio::test]
    async fn over_loopback_tcp() {
        let (connected, accepted) = over_tcp(b"k", b"k").await;
        connected.unwrap();
        assert_eq!(accepted.unwrap(), Peer::Client);
        let (connected, accepted) = over_tcp(b"k", b"other").await;
        assert!(
            matches!(connected, Err(HandshakeError::BadSecret)),
            "{connected:?}"
        );
        assert!(
            matches!(accepted, Err(HandshakeError::BadSecret)),
            "{accepted:?}"
        );
    }
}
