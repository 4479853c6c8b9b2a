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
//! One test drives those phases in order (see tests/cluster/membership.rs for why).
//! Another gives two nodes HTTPS listeners (`[http.tls]` with `peer_ca`) and relays a
//! Socket.IO session held by one through the other: polling and the WebSocket upgrade.

use crate::membership::{all_logged, assert_peers_up, watch_refused, CONVERGE};
use crate::support::{wait_for, Cluster, NodeSpec, COOKIE, DEADLINE, FAILURE_TIMEOUT_MS};
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

/// A certificate authority made for the test.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate's PEM file.
    file: PathBuf,
    /// Its certificate, for clients of the test to trust.
    der: CertificateDer<'static>,
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
            der: cert.der().clone(),
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

/// A client of the nodes' HTTPS listeners trusting `ca` alone.
fn trusting(ca: &Authority) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).expect("a trust anchor");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_to(
    addr: SocketAddr,
    trust: &Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(trust.clone())
        .connect(ServerName::from(addr.ip()), tcp)
        .await
        .expect("TLS handshake with the node")
}

/// One HTTPS request (`connection: close`): the status and the body (de-chunked).
async fn https(
    addr: SocketAddr,
    trust: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut tls = tls_to(addr, trust).await;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: text/plain;charset=UTF-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .expect("request written");
    let mut answer = Vec::new();
    // A server that closes without close_notify ends the read with an error, after
    // the whole answer.
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer))
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut body = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        body
    } else {
        rest.to_owned()
    };
    (status, body)
}

#[tokio::test]
async fn socket_io_sessions_are_relayed_between_https_listeners() {
    let mut cluster = Cluster::plan("https-relay", 2).await;
    let dir = cluster.dir().to_owned();
    let ca = Authority::new(&dir, "http-ca");
    for name in ["a", "b"] {
        let (cert, key) = ca.node_files(&dir, &format!("{name}-http"));
        cluster.add_admin(name);
        cluster
            .config(name)
            .set(
                "http.tls",
                "cert",
                format!("{:?}", cert.display().to_string()),
            )
            .set(
                "http.tls",
                "key",
                format!("{:?}", key.display().to_string()),
            )
            .set(
                "http.tls",
                "peer_ca",
                format!("{:?}", ca.file.display().to_string()),
            );
    }
    for name in ["a", "b"] {
        cluster.start_node(name).await;
    }
    cluster
        .wait_converged(&["a".to_owned(), "b".to_owned()])
        .await;
    let trust = trusting(&ca);
    let (a, b) = (cluster.http_addr("a"), cluster.http_addr("b"));

    // The handshake on a: a's session.
    let (status, open) = https(
        a,
        &trust,
        "GET",
        "/socket.io/?EIO=4&transport=polling&user=roamer",
        "",
    )
    .await;
    assert_eq!(status, 200, "{open}");
    let handshake: serde_json::Value =
        serde_json::from_str(open.strip_prefix('0').expect("an OPEN packet")).expect("JSON");
    let sid = handshake["sid"].as_str().expect("a sid").to_owned();
    assert!(sid.starts_with("a."), "{sid}");
    let polling = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");

    // Its CONNECT posted to b reaches a (once b has heard where a's listener is).
    wait_for(
        DEADLINE,
        "b to relay a POST for a's session",
        async || match https(b, &trust, "POST", &polling, "40").await {
            (200, body) if body == "ok" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // The answer, polled from b, is a's.
    let (status, connected) = https(b, &trust, "GET", &polling, "").await;
    assert_eq!(status, 200, "{connected}");
    assert!(connected.starts_with("40{\"sid\":"), "{connected}");

    // The WebSocket upgrade on b is relayed to a over TLS too.
    let url = format!("wss://{b}/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls_to(b, &trust).await)
        .await
        .expect("the upgrade on b");
    let next_text = async move |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message in time")
            .expect("the relay open")
            .expect("a message");
        if let Message::Text(text) = message {
            return text.as_str().to_owned();
        }
    };
    ws.send(Message::text("2probe")).await.expect("probe");
    assert_eq!(next_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.expect("upgrade");
    ws.send(Message::text(r#"421["join",{"room":"over-https"}]"#))
        .await
        .expect("join");
    // Engine.IO's noop (what ends a poll still waiting at the upgrade) may come first.
    let mut ack = next_text(&mut ws).await;
    if ack == "6" {
        ack = next_text(&mut ws).await;
    }
    let ack: serde_json::Value =
        serde_json::from_str(ack.strip_prefix("431").unwrap_or_else(|| panic!("{ack}")))
            .expect("an ack of JSON");
    assert_eq!(ack[0]["ok"], true, "{ack}");
    // The session's user, as a (its holder) knows it.
    assert_eq!(ack[0]["data"]["members"][0]["id"], "roamer", "{ack}");
}
