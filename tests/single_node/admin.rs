//! The operator's side of a node over real HTTP: the admin listener (`[admin] addr`)
//! takes `/metrics` and `/cluster` off the public one, `/healthz` and `/readyz` stay
//! on both, a wrong method is 405 with `Allow`, and the build a node runs shows in
//! `hubbub_build_info` and `GET /cluster`.

use crate::scrape::Metrics;
use crate::support::{test_settings, DEADLINE};
use hubbub::telemetry::metrics::{COMMIT, VERSION};
use hubbub::{Application, Settings};
use serde_json::Value as Json;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A node with its public and admin addresses.
struct Node {
    public: SocketAddr,
    admin: Option<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Node {
    /// Starts a node on port 0, with an admin listener on another port 0 when `admin`.
    async fn start(admin: bool) -> Self {
        let mut settings = test_settings();
        if admin {
            settings.admin.addr = "127.0.0.1:0".to_owned();
        }
        Self::start_with(settings).await
    }

    async fn start_with(settings: Settings) -> Self {
        let app = Application::build(settings).expect("node builds");
        let public = app.local_addr();
        let admin = app.admin_addr();
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let stopped = tokio::spawn(app.run(async move {
            let _ = signal.await;
        }));
        Self {
            public,
            admin,
            shutdown: Some(shutdown),
            stopped: Some(stopped),
        }
    }

    fn admin(&self) -> SocketAddr {
        self.admin.expect("the node has an admin listener")
    }

    /// Drains and stops the node, as SIGTERM would.
    async fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let stopped = self.stopped.take().expect("the node was running");
        timeout(DEADLINE, stopped)
            .await
            .expect("the node stops in time")
            .expect("the node task did not panic")
            .expect("the node stopped cleanly");
    }
}

/// One answer: status, headers (names in lower case), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 request with any method over a raw socket.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut stream = timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

#[tokio::test]
async fn the_admin_listener_takes_metrics_and_cluster_off_the_public_one() {
    let mut node = Node::start(true).await;
    let admin = node.admin();
    assert_ne!(admin.port(), node.public.port());

    // Public: the clients' routes and the probes; /metrics and /cluster are unknown.
    for path in ["/metrics", "/cluster"] {
        let answer = get(node.public, path).await;
        assert_eq!(answer.status, 404, "public {path}: {}", answer.body);
        assert!(answer.body.is_empty(), "public {path}: {}", answer.body);
    }
    assert_eq!(get(node.public, "/").await.status, 200);
    for path in ["/healthz", "/readyz"] {
        let answer = get(node.public, path).await;
        assert_eq!(answer.status, 200, "public {path}: {}", answer.body);
    }

    // Admin: the scrape, the cluster view (not clustered here) and the probes; not
    // the clients' routes.
    let scrape = get(admin, "/metrics").await;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    let metrics = Metrics::parse(&scrape.body);
    assert_eq!(metrics.value("hubbub_connections", &[]), 0.0);
    let cluster = get(admin, "/cluster").await;
    assert_eq!(cluster.status, 404, "{}", cluster.body);
    let cluster: Json = serde_json::from_str(&cluster.body).expect("JSON");
    assert_eq!(cluster["error"], "not clustered");
    assert_eq!(cluster["version"], VERSION);
    for path in ["/healthz", "/readyz"] {
        let answer = get(admin, path).await;
        assert_eq!(answer.status, 200, "admin {path}: {}", answer.body);
    }
    let ready: Json = serde_json::from_str(&get(admin, "/readyz").await.body).expect("JSON");
    assert_eq!(ready["status"], "ready");
    for path in ["/", "/ws"] {
        assert_eq!(get(admin, path).await.status, 404, "admin {path}");
    }

    // The admin listener stops with the node.
    node.shut_down().await;
    let refused = timeout(DEADLINE, async {
        loop {
            if TcpStream::connect(admin).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the admin listener still accepts after the node stopped"
    );
}

#[tokio::test]
async fn a_clustered_node_tells_its_version_in_cluster_on_the_admin_listener() {
    let mut settings = test_settings();
    settings.admin.addr = "127.0.0.1:0".to_owned();
    settings.cluster.enabled = true;
    settings.cluster.cookie = hubbub::config::Secret::new("test-cookie");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|free| free.local_addr())
        .expect("a free port");
    settings.cluster.bind = port;
    settings.cluster.voters = vec![settings.node.name.clone()];
    let mut node = Node::start_with(settings).await;
    let cluster = get(node.admin(), "/cluster").await;
    assert_eq!(cluster.status, 200, "{}", cluster.body);
    let cluster: Json = serde_json::from_str(&cluster.body).expect("JSON");
    assert_eq!(cluster["version"], VERSION, "{cluster}");
    assert_eq!(cluster["commit"], COMMIT, "{cluster}");
    assert!(cluster.get("rooms").is_some(), "{cluster}");
    assert_eq!(
        cluster["shards"].as_array().map(Vec::len),
        Some(16),
        "{cluster}"
    );
    assert_eq!(get(node.public, "/cluster").await.status, 404);
    node.shut_down().await;
}

#[tokio::test]
async fn without_an_admin_listener_everything_is_on_the_public_one() {
    let mut node = Node::start(false).await;
    assert_eq!(node.admin, None);
    let scrape = get(node.public, "/metrics").await;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    let cluster = get(node.public, "/cluster").await;
    assert_eq!(cluster.status, 404);
    let cluster: Json = serde_json::from_str(&cluster.body).expect("JSON");
    assert_eq!(cluster["error"], "not clustered");
    node.shut_down().await;
}

#[tokio::test]
async fn an_admin_address_that_is_taken_stops_start_up_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let mut settings = test_settings();
    settings.admin.addr = taken.local_addr().expect("addr").to_string();
    let error = Application::build(settings)
        .err()
        .expect("a taken admin port stops the node");
    assert!(error.to_string().contains("admin.addr"), "{error}");
}

#[tokio::test]
async fn the_build_is_in_metrics_and_names_a_real_commit() {
    let mut node = Node::start(false).await;
    let metrics = Metrics::parse(&get(node.public, "/metrics").await.body);
    assert_eq!(
        metrics.value(
            "hubbub_build_info",
            &[("version", VERSION), ("commit", COMMIT)]
        ),
        1.0
    );
    assert_eq!(VERSION, env!("CARGO_PKG_VERSION"));
    // Built in a git checkout (as here), the commit is one git knows.
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|out| out.status.success());
    if in_git {
        assert!(
            COMMIT.len() >= 4 && COMMIT.chars().all(|c| c.is_ascii_hexdigit()),
            "commit {COMMIT:?}"
        );
        let known = std::process::Command::new("git")
            .args(["cat-file", "-e", &format!("{COMMIT}^{{commit}}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("git runs");
        assert!(
            known.success(),
            "{COMMIT} is not a commit of this repository"
        );
    }
    node.shut_down().await;
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow_not_404() {
    let mut node = Node::start(true).await;
    let admin = node.admin();
    let routes = [
        (node.public, "/"),
        (node.public, "/ws"),
        (node.public, "/healthz"),
        (node.public, "/readyz"),
        (admin, "/healthz"),
        (admin, "/readyz"),
        (admin, "/metrics"),
        (admin, "/cluster"),
    ];
    for (addr, path) in routes {
        for method in ["POST", "PUT", "DELETE"] {
            let answer = request(addr, method, path).await;
            assert_eq!(answer.status, 405, "{method} {path} on {addr}");
            assert_eq!(
                answer.header("allow"),
                Some("GET"),
                "{method} {path} on {addr}"
            );
        }
    }
    // Unknown paths stay 404, whatever the method.
    assert_eq!(request(node.public, "POST", "/nowhere").await.status, 404);
    assert_eq!(request(node.public, "POST", "/metrics").await.status, 404);
    node.shut_down().await;

    // Without an admin listener, /metrics and /cluster are 405 on the public one.
    let mut node = Node::start(false).await;
    for path in ["/metrics", "/cluster"] {
        let answer = request(node.public, "POST", path).await;
        assert_eq!(answer.status, 405, "POST {path}");
        assert_eq!(answer.header("allow"), Some("GET"), "POST {path}");
    }
    node.shut_down().await;
}
