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
//! One test drives the phases in order (see tests/cluster/membership.rs for why).

use crate::membership::{all_logged, assert_peers_up, watch_refused, CONVERGE};
use crate::support::{Cluster, NodeSpec, COOKIE, FAILURE_TIMEOUT_MS};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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

/// Gives node `key` a certificate signed by `signer`, trusting `trusted`.
fn use_tls(cluster: &mut Cluster, key: &str, signer: &Authority, trusted: &Authority) {
    let (cert, cert_key) = signer.node_files(cluster.dir(), key);
    cluster.config(key).tls(&cert, &cert_key, &trusted.file);
}

/// Plans an extra node `key` with the cluster's cookie and these seeds.
fn plan(cluster: &mut Cluster, key: &str, seeds: &[String]) {
    cluster.plan_extra(NodeSpec {
        key: key.to_owned(),
        name: key.to_owned(),
        cookie: COOKIE.to_owned(),
        seeds: seeds.to_vec(),
    });
}

#[tokio::test]
async fn mutual_tls_admits_the_cluster_and_refuses_the_rest() {
    let mut cluster = Cluster::plan("tls", 3).await;
    let dir = cluster.dir().to_owned();
    let ours = Authority::new(&dir, "cluster-ca");
    let other = Authority::new(&dir, "other-ca");

    // ---- a key that is not the certificate's stops start-up, naming the key ----
    let started = Instant::now();
    plan(&mut cluster, "mismatched", &[]);
    let (cert, _) = ours.node_files(&dir, "mismatched");
    let (_, wrong_key) = ours.node_files(&dir, "mismatched-other");
    cluster
        .config("mismatched")
        .seeds(&[] as &[String])
        .voters(&["mismatched"])
        .tls(&cert, &wrong_key, &ours.file);
    cluster.spawn_node("mismatched");
    let status = cluster.wait_exit("mismatched", CONVERGE).await;
    let log = cluster.log("mismatched");
    assert!(!status.success(), "{log}");
    assert!(log.contains("cluster.tls.key"), "{log}");
    assert!(
        log.contains("is not the private key of the certificate"),
        "{log}"
    );
    println!(
        "mismatched key refused at start-up in {:?}",
        started.elapsed()
    );

    // ---- three nodes with certificates from one CA form one view ----
    let three = ["a", "b", "c"];
    for name in three {
        use_tls(&mut cluster, name, &ours, &ours);
    }
    let started = Instant::now();
    for name in three.iter().rev() {
        cluster.start_node(name).await;
    }
    let statuses = cluster
        .converged_within(&three, CONVERGE, "three TLS nodes to form one view")
        .await;
    println!("formed over TLS: {:?}", started.elapsed());
    assert_peers_up(&statuses);
    for name in three {
        let log = cluster.log(name);
        assert!(!log.contains("TLS handshake failed"), "{name}: {log}");
        assert!(!log.contains("cluster.tls.cert is not"), "{name}: {log}");
    }

    // ---- clients that never handshake do not block a's listener ----
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let socket = TcpStream::connect(cluster.bind_addr("a")).await;
        stalled.push(socket.expect("TCP to a"));
    }
    // d knows only a, and nobody knows d (its only voter is itself): it can join only
    // through a accepting it, after the stalled connections.
    let a = cluster.bind_addr("a").to_string();
    plan(&mut cluster, "d", &[a]);
    cluster.config("d").voters(&["d"]);
    use_tls(&mut cluster, "d", &ours, &ours);
    let joining = Instant::now();
    cluster.start_node("d").await;
    let members = ["a", "b", "c", "d"];
    let statuses = cluster
        .converged_within(&members, CONVERGE, "d to join through a while a is stalled")
        .await;
    println!(
        "d joined past 3 stalled handshakes in {:?}",
        joining.elapsed()
    );
    for mut socket in stalled {
        let mut byte = [0_u8; 1];
        let within = Duration::from_millis(FAILURE_TIMEOUT_MS * 4);
        match tokio::time::timeout(within, socket.read(&mut byte)).await {
            Ok(Ok(0)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a stalled handshake was not closed by a: {other:?}"),
        }
    }
    println!(
        "stalled handshakes closed {:?} after they were opened",
        joining.elapsed()
    );
    assert!(cluster.log("a").contains("no handshake within"));
    let view_before_intruders = statuses[0]["view_id"].clone();

    // ---- intruders: another CA's certificate, and no TLS at all ----
    // Each believes it is one of the cluster (a, b, c and itself): alone it has no
    // majority.
    let seeds: Vec<String> = members.map(|n| cluster.bind_addr(n).to_string()).to_vec();
    let intruders = ["rogue", "stranger", "plain"];
    for intruder in intruders {
        plan(&mut cluster, intruder, &seeds);
    }
    // Trusts our CA, so it takes our nodes for servers; its own certificate is not ours.
    use_tls(&mut cluster, "rogue", &other, &ours);
    // Trusts only its own CA: it refuses our nodes' certificates itself.
    use_tls(&mut cluster, "stranger", &other, &other);
    let intruding = Instant::now();
    for intruder in intruders {
        cluster.start_node(intruder).await;
    }
    all_logged(
        &cluster,
        &members,
        "the peer's certificate is not signed by cluster.tls.ca",
        "the members to refuse the rogue's certificate",
    )
    .await;
    all_logged(
        &cluster,
        &members,
        "the peer refused this node's certificate",
        "the members to log that the stranger refused their certificate",
    )
    .await;
    all_logged(
        &cluster,
        &members,
        "the peer does not speak TLS",
        "the members to refuse the plain-TCP node",
    )
    .await;
    all_logged(
        &cluster,
        &["rogue"],
        "cluster.tls.cert is not accepted by cluster.tls.ca",
        "the rogue to warn at start-up that its certificate will be refused",
    )
    .await;
    all_logged(
        &cluster,
        &["stranger"],
        "cannot connect to the peer at",
        "the stranger to log that it refused the members",
    )
    .await;
    println!("every refusal logged in {:?}", intruding.elapsed());

    // Watch the intruders for a while: never up anywhere, the view never moves.
    watch_refused(&mut cluster, &members, &intruders, &view_before_intruders).await;
    println!("total: {:?}", started.elapsed());
}
