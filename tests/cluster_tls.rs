//! TLS between nodes with real `hubbub` processes and certificates made by `rcgen`:
//!
//! - a key that does not go with its certificate stops start-up, naming the key;
//! - three nodes whose certificates one CA signed form one view over mutual TLS;
//! - clients that open TCP and never handshake do not stop a fourth node from joining
//!   through the node they stall, and are disconnected after the handshake timeout;
//! - a node whose certificate another CA signed (trusting ours or its own) and a node
//!   without TLS are refused, with a log line saying why, never appear up anywhere,
//!   and nobody crashes.
//!
//! One test drives the phases in order (see tests/cluster_membership.rs for why).

mod common;

use common::processes::{
    converged, peer_state, test_dir, view_of, wait_for, Node, Nodes, CONVERGE, FAILURE_TIMEOUT_MS,
    WATCH_REFUSED,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A certificate authority made for the test.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate's PEM file.
    file: PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let file = dir.join(format!("{name}.crt"));
        std::fs::write(&file, cert.pem()).expect("CA written");
        Self {
            issuer: Issuer::new(params, key),
            file,
        }
    }

    /// Signs a node certificate for 127.0.0.1 and localhost, writes it and its key as
    /// `<label>.crt` and `<label>.key`, and returns the paths (certificate, key).
    fn node_files(&self, dir: &Path, label: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("node params");
        params.distinguished_name.push(DnType::CommonName, label);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("node key");
        let cert = params.signed_by(&key, &self.issuer).expect("node cert");
        let cert_file = dir.join(format!("{label}.crt"));
        let key_file = dir.join(format!("{label}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("cert written");
        std::fs::write(&key_file, key.serialize_pem()).expect("key written");
        (cert_file, key_file)
    }
}

/// The `[cluster.tls]` table for these files.
fn tls_table(cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "[cluster.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    )
}

/// A node with a certificate signed by `signer`, trusting `trusted`.
fn tls_node(
    dir: &Path,
    name: &str,
    seeds: &[SocketAddr],
    signer: &Authority,
    trusted: &Authority,
) -> Node {
    let mut node = Node::new(dir, name, "test-cookie", seeds, name);
    let (cert, key) = signer.node_files(dir, name);
    node.extra_config = tls_table(&cert, &key, &trusted.file);
    node
}

/// Waits until every node of `nodes` has logged `text`.
fn all_logged(nodes: &[Node], text: &str, what: &str) {
    wait_for(CONVERGE, what, || {
        let missing: Vec<&str> = nodes
            .iter()
            .filter(|n| !n.log_text().contains(text))
            .map(|n| n.name.as_str())
            .collect();
        missing
            .is_empty()
            .then_some(())
            .ok_or(format!("not yet logged by {missing:?}"))
    });
}

#[test]
fn mutual_tls_admits_the_cluster_and_refuses_the_rest() {
    let dir = test_dir("hubbub-tls");
    let ours = Authority::new(&dir, "cluster-ca");
    let other = Authority::new(&dir, "other-ca");
    let mut nodes = Nodes {
        dir: dir.clone(),
        nodes: Vec::new(),
    };

    // ---- a key that is not the certificate's stops start-up, naming the key ----
    let started = Instant::now();
    let mut mismatched = Node::new(&dir, "mismatched", "test-cookie", &[], "mismatched");
    let (cert, _) = ours.node_files(&dir, "mismatched");
    let (_, wrong_key) = ours.node_files(&dir, "mismatched-other");
    mismatched.extra_config = tls_table(&cert, &wrong_key, &ours.file);
    mismatched.start();
    nodes.nodes.push(mismatched);
    let mismatched = &mut nodes.nodes[0];
    let status = wait_for(CONVERGE, "a node with a mismatched key to exit", || {
        mismatched
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
            .ok_or_else(|| "still running".to_owned())
    });
    let log = mismatched.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("cluster.tls.key"), "{log}");
    assert!(
        log.contains("is not the private key of the certificate"),
        "{log}"
    );
    mismatched.child = None;
    nodes.nodes.clear();
    println!(
        "mismatched key refused at start-up in {:?}",
        started.elapsed()
    );

    // ---- three nodes with certificates from one CA form one view ----
    for i in 1..=3 {
        let name = format!("n{i}");
        nodes.nodes.push(tls_node(&dir, &name, &[], &ours, &ours));
    }
    let seeds: Vec<SocketAddr> = nodes.nodes.iter().map(|n| n.cluster).collect();
    for node in &mut nodes.nodes {
        node.seeds = seeds.clone();
        node.voters = vec!["n1".into(), "n2".into(), "n3".into()];
    }
    let started = Instant::now();
    for node in nodes.nodes.iter_mut().rev() {
        node.start();
    }
    let all: Vec<&Node> = nodes.nodes.iter().collect();
    let statuses = converged(&all, "three TLS nodes to form one view");
    println!("formed over TLS: {:?}", started.elapsed());
    for status in &statuses {
        for peer in status["peers"].as_array().expect("peers") {
            assert_eq!(peer["state"], "up", "{status}");
            assert!(peer["rtt_ms"].is_number(), "{status}");
        }
    }
    for node in &nodes.nodes {
        let log = node.log_text();
        assert!(
            !log.contains("TLS handshake failed"),
            "{}: {log}",
            node.name
        );
        assert!(
            !log.contains("cluster.tls.cert is not"),
            "{}: {log}",
            node.name
        );
    }

    // ---- clients that never handshake do not block n1's listener ----
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(nodes.nodes[0].cluster).expect("TCP to n1"))
        .collect();
    // n4 knows only n1, and nobody knows n4: it can join only through n1 accepting
    // it, after the stalled connections.
    let n1 = nodes.nodes[0].cluster;
    let mut n4 = tls_node(&dir, "n4", &[n1], &ours, &ours);
    let joining = Instant::now();
    n4.start();
    nodes.nodes.push(n4);
    let all: Vec<&Node> = nodes.nodes.iter().collect();
    let statuses = converged(&all, "n4 to join through n1 while n1 is stalled");
    println!(
        "n4 joined past 3 stalled handshakes in {:?}",
        joining.elapsed()
    );
    for mut socket in stalled {
        socket
            .set_read_timeout(Some(Duration::from_millis(FAILURE_TIMEOUT_MS * 4)))
            .expect("read timeout");
        let mut byte = [0_u8; 1];
        match socket.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a stalled handshake was not closed by n1: {other:?}"),
        }
    }
    println!(
        "stalled handshakes closed {:?} after they were opened",
        joining.elapsed()
    );
    assert!(nodes.nodes[0].log_text().contains("no handshake within"));
    let view_before_intruders = statuses[0]["view_id"].clone();

    // ---- intruders: another CA's certificate, and no TLS at all ----
    let members = nodes.nodes.len();
    let seeds: Vec<SocketAddr> = nodes.nodes.iter().map(|n| n.cluster).collect();
    // Trusts our CA, so it takes our nodes for servers; its own certificate is not ours.
    let mut rogue = tls_node(&dir, "rogue", &seeds, &other, &ours);
    // Trusts only its own CA: it refuses our nodes' certificates itself.
    let mut stranger = tls_node(&dir, "stranger", &seeds, &other, &other);
    let mut plain = Node::new(&dir, "plain", "test-cookie", &seeds, "plain");
    // Each believes it is one of the cluster: alone it has no majority.
    for intruder in [&mut rogue, &mut stranger, &mut plain] {
        intruder.voters = vec!["n1".into(), "n2".into(), "n3".into(), intruder.name.clone()];
    }
    let intruding = Instant::now();
    rogue.start();
    stranger.start();
    plain.start();
    nodes.nodes.extend([rogue, stranger, plain]);
    let (members_nodes, intruders) = nodes.nodes.split_at(members);
    all_logged(
        members_nodes,
        "the peer's certificate is not signed by cluster.tls.ca",
        "the members to refuse the rogue's certificate",
    );
    all_logged(
        members_nodes,
        "the peer refused this node's certificate",
        "the members to log that the stranger refused their certificate",
    );
    all_logged(
        members_nodes,
        "the peer does not speak TLS",
        "the members to refuse the plain-TCP node",
    );
    all_logged(
        &intruders[..1],
        "cluster.tls.cert is not accepted by cluster.tls.ca",
        "the rogue to warn at start-up that its certificate will be refused",
    );
    all_logged(
        &intruders[1..2],
        "cannot connect to the peer at",
        "the stranger to log that it refused the members",
    );
    println!("every refusal logged in {:?}", intruding.elapsed());

    // Watch the intruders for a while: never up anywhere, the view never moves.
    let watch_until = Instant::now() + WATCH_REFUSED;
    while Instant::now() < watch_until {
        for node in &nodes.nodes[..members] {
            let status = node.status().expect("a member answers");
            assert_eq!(status["view_id"], view_before_intruders, "{status}");
            for intruder in ["rogue", "stranger", "plain"] {
                assert_ne!(peer_state(&status, intruder), Some("up"), "{status}");
            }
        }
        for intruder in &nodes.nodes[members..] {
            if let Some(status) = intruder.status() {
                assert_eq!(view_of(&status).len(), 1, "{status}");
                assert_eq!(status["has_quorum"], false, "{status}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let all: Vec<&Node> = nodes.nodes[..members].iter().collect();
    let statuses = converged(&all, "the members to still agree");
    assert_eq!(statuses[0]["view_id"], view_before_intruders);
    for node in &mut nodes.nodes {
        node.assert_alive();
    }
    println!("total: {:?}", started.elapsed());
}
