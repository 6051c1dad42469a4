//! Internal links over TLS with mutual certificates (`[internal_tls]`), with real processes: a
//! register, two gateways and a worker host, each with a certificate of a CA made here, serve
//! clients end to end, and so does a push client of this process; a peer with no certificate,
//! one another CA signed, or that speaks plaintext, is refused, named in the log and counted,
//! while the bystander's replies keep arriving; a plaintext node refuses a TLS peer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use wasmgate::config::InternalTlsConfig;
use wasmgate::push::PushClient;
use wasmgate::transport::Trust;
use wasmgate::wire::{FrameReader, FrameWriter};
use wasmgate::wire::{Peer, connect_handshake};
use wasmgate_tests::cluster::{Node, PluginsDir, free_port};
use wasmgate_tests::plugins;
use wasmgate_tests::prometheus::scrape;

use crate::BIN;
use crate::bind_advertise::client;

/// Long enough for internal addresses off loopback; these stay on it, but a real cluster's
/// secret is what the test should look like.
const SECRET: &str = "a-secret-of-at-least-16-bytes";

/// How long a push client waits for every gateway to link.
const CONNECT_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A certificate authority made for one test.
struct Authority(CertifiedIssuer<'static, KeyPair>);

impl Authority {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// Writes `<name>.ca.pem`, `<name>.pem` and `<name>.key` into `dir`: this CA and a node
    /// certificate it signed for the cluster's default server name.
    fn node(&self, dir: &Path, name: &str) -> InternalTlsConfig {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["wasmgate".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        let files = InternalTlsConfig {
            ca: dir.join(format!("{name}.ca.pem")),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            server_name: "wasmgate".into(),
        };
        std::fs::write(&files.ca, self.0.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

/// The `[internal_tls]` section naming `files`.
fn section(files: &InternalTlsConfig) -> String {
    format!(
        "[internal_tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        files.ca, files.cert, files.key
    )
}

/// A worker host serving the `commands` plugin, registered at port `r`, with `tls`.
fn worker(plugins: &Path, r: u16, name: &str, tls: &str) -> String {
    format!(
        "secret = \"{SECRET}\"\n[worker]\nname = \"{name}\"\nplugins = {plugins:?}\ninstances = 1\n\
         register = \"127.0.0.1:{r}\"\n{tls}"
    )
}

/// Opens TLS to the gateway at `internal`, trusting the CA in `ca` but presenting no
/// certificate, and runs the handshake over it; the error if the link is refused.
async fn link_without_certificate(ca: &Path, internal: SocketAddr) -> Result<(), String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    let name = ServerName::try_from("wasmgate").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (reader, writer) = tokio::io::split(tls);
    let (mut reader, mut writer) = (FrameReader::new(reader), FrameWriter::new(writer));
    connect_handshake(&mut reader, &mut writer, SECRET.as_bytes(), Peer::Worker)
        .await
        .map_err(|e| e.to_string())
}

/// Starts a worker host with `config` that `register` refuses, logging `reason`; returns it
/// once both ends said so.
async fn refused_worker(register: &Node, config: &str, reason: &str) -> Node {
    let worker = Node::start(BIN, config);
    register
        .wait_for_line(&["register link dropped", reason])
        .await;
    worker.wait_for_line(&["cannot register"]).await;
    worker
}

/// Links to the gateway at `internal` as a worker host would, with `trust`; the error if the
/// link is refused.
async fn link(trust: &Trust, internal: SocketAddr) -> Result<(), String> {
    let (reader, writer) = trust
        .dial(internal)
        .await
        .map_err(|e| e.to_string())?
        .split();
    let (mut reader, mut writer) = (FrameReader::new(reader), FrameWriter::new(writer));
    connect_handshake(&mut reader, &mut writer, trust.secret(), Peer::Worker)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_and_refuses_foreign_certificates_and_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (r, g, bystander_port, internal, metrics) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let register = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n{}",
            section(&ca.node(dir.path(), "register"))
        ),
    );
    let gateway = |port: u16, keys: &str, name: &str| {
        format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\n\
             app = \"commands\"\nregister = \"127.0.0.1:{r}\"\n{keys}\n{}",
            section(&ca.node(dir.path(), name))
        )
    };
    let mut tested = Node::start(
        BIN,
        &gateway(
            g,
            &format!("internal_port = {internal}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\""),
            "gateway",
        ),
    );
    let _bystander_gateway = Node::start(BIN, &gateway(bystander_port, "", "bystander"));
    let _worker = Node::start(
        BIN,
        &worker(
            plugins.path(),
            r,
            "w",
            &section(&ca.node(dir.path(), "worker")),
        ),
    );

    // End to end over TLS: register, gateways and worker host all refuse plaintext, so a
    // reply proves every link is TLS.
    let mut bystander = client(bystander_port).await;
    assert_eq!(bystander.ask("echo before").await, "before");
    let mut c = client(g).await;
    assert_eq!(c.ask("echo over tls").await, "over tls");

    // A push client (a backend) finds the gateways through the register and links to them,
    // all over TLS with a certificate of its own.
    let backend = Trust::load(
        SECRET.as_bytes().into(),
        Some(&ca.node(dir.path(), "backend")),
    );
    let register_at = SocketAddr::from(([127, 0, 0, 1], r));
    let push = PushClient::connect_trusting(vec![register_at], backend.unwrap(), CONNECT_WITHIN)
        .await
        .expect("a push client over TLS links");
    assert_eq!(push.get_all_client_count().await.unwrap(), 2);
    let id = c.ask("whoami").await;
    push.send_to_client(
        id.parse::<wasmgate::client_id::ClientId>().unwrap(),
        "pushed over tls",
    )
    .await
    .unwrap();
    assert_eq!(c.recv().await, "pushed over tls");

    // No certificate at all, though the peer trusts our CA and knows the secret.
    let cluster_ca = ca.node(dir.path(), "no-cert").ca;
    let internal_addr = SocketAddr::from(([127, 0, 0, 1], internal));
    let refused = link_without_certificate(&cluster_ca, internal_addr).await;
    assert!(refused.is_err(), "a peer without a certificate linked");
    tested
        .wait_for_line(&["internal link closed", "peer sent no certificates"])
        .await;

    // A certificate of another CA, though the peer trusts ours and knows the secret: the
    // gateway refuses it (and so does the register, for a worker host that tries).
    let rogue = Authority::new().node(dir.path(), "rogue");
    let rogue = InternalTlsConfig {
        ca: ca.node(dir.path(), "rogue-trusts").ca,
        ..rogue
    };
    let rogue_trust = Trust::load(SECRET.as_bytes().into(), Some(&rogue)).unwrap();
    let refused = link(&rogue_trust, internal_addr).await;
    assert!(refused.is_err(), "a foreign certificate linked");
    tested
        .wait_for_line(&[
            "internal link closed",
            "TLS handshake failed",
            "invalid peer certificate",
        ])
        .await;
    let rogue = section(&rogue);
    let _rogue = refused_worker(
        &register,
        &worker(plugins.path(), r, "rogue", &rogue),
        "TLS handshake failed",
    )
    .await;
    assert_eq!(bystander.ask("echo during").await, "during");

    // Plaintext, with the right secret: refused, with the reason on the TLS end.
    let plain = Trust::plain(SECRET.as_bytes().into());
    assert!(
        link(&plain, internal_addr).await.is_err(),
        "plaintext linked"
    );
    tested
        .wait_for_line(&["internal link closed", "the peer speaks plaintext"])
        .await;
    let plain_worker = worker(plugins.path(), r, "plain", "");
    let _plain = refused_worker(&register, &plain_worker, "the peer speaks plaintext").await;

    let counted = scrape(SocketAddr::from(([127, 0, 0, 1], metrics))).await;
    let refusals = |reason| {
        counted
            .value("wasmgate_internal_tls_refused_total", &[("reason", reason)])
            .unwrap_or(0.0)
    };
    assert!(refusals("handshake") >= 1.0, "{counted:?}");
    assert!(refusals("plaintext_peer") >= 1.0, "{counted:?}");
    assert_eq!(bystander.ask("echo after").await, "after");
    assert_eq!(c.ask("echo still").await, "still");

    // A gateway that stops leaves the register as quietly over TLS as in the clear: its
    // links end without TLS's close_notify, which is not a failure.
    assert!(tested.terminate().await.success());
    register.wait_for_line(&["gateway unregistered"]).await;
    assert_eq!(bystander.ask("echo last").await, "last");
    let logs = register.logs();
    assert!(!logs.contains("close_notify"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_node_refuses_a_tls_peer() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (r, g) = (free_port(), free_port());
    let register = Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n"),
    );
    let _gateway = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\n\
             app = \"commands\"\nregister = \"127.0.0.1:{r}\"\n"
        ),
    );
    let _worker = Node::start(BIN, &worker(plugins.path(), r, "w", ""));
    let mut bystander = client(g).await;
    assert_eq!(bystander.ask("echo before").await, "before");

    let files = section(&Authority::new().node(dir.path(), "tls"));
    let tls_worker = worker(plugins.path(), r, "tls", &files);
    let _tls = refused_worker(&register, &tls_worker, "the peer opened TLS").await;
    assert_eq!(bystander.ask("echo after").await, "after");
}
