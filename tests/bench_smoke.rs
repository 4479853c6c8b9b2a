//! Smoke run of the benchmark's load generator (`bench/hubbub-bench`): every scenario
//! but `efficiency` (which needs a cluster) with small numbers against a real `hubbub`
//! process, and `fanout` and `churn` against the Rust floor (`bench/peers/rust-floor`,
//! in-process). Each run writes its JSON result, and the counts in it must add up:
//! nothing lost, nothing refused, no error, every publish of `ack` acknowledged.
//! Latency is not checked here; the full benchmark is `bench/run.sh`
//! (docs/performance.md).

use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the node may take to be ready (`/readyz`: every shard of its room logs
/// has a leader, so joins and publishes are not refused as `unavailable`).
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A `hubbub` process with the benchmark's limits (rate limits off), killed on drop.
struct Node {
    child: Child,
    http: SocketAddr,
    dir: PathBuf,
}

impl Node {
    async fn start() -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("hubbub-bench-smoke-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let http = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"smoke\"\nhttp_addr = \"{http}\"\n\n\
                 [limits]\nmax_connections = 1000\nframes_per_second = 0\n\n\
                 [rate_limit]\nmessages_per_minute = 0\nconnections_per_ip = 0\n\
                 handshakes_per_ip_per_sec = 0\n\n\
                 [log]\nlevel = \"warn\"\n\n\
                 [storage]\ndir = {data:?}\n",
                data = dir.join("data").display().to_string(),
            ),
        )
        .expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hubbub"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HUBBUB_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().expect("spawn hubbub");
        let node = Self { child, http, dir };
        let started = Instant::now();
        while !node.ready().await {
            assert!(
                started.elapsed() < START_DEADLINE,
                "hubbub was not ready (/readyz) within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    async fn ready(&self) -> bool {
        let addr = self.http;
        let host = addr.to_string();
        matches!(
            hubbub_bench::probe::http_get(addr, &host, "/readyz").await,
            Some((200, _))
        )
    }

    fn url(&self) -> String {
        format!("ws://{}", self.http)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the load generator with `args` (after `--quiet --json FILE`) and returns the
/// JSON result it wrote.
async fn bench(dir: &std::path::Path, name: &str, args: &[&str]) -> Value {
    let json = dir.join(format!("{name}.json"));
    let mut argv = vec!["hubbub-bench", "--quiet", "--json"];
    let json_arg = json.to_string_lossy().into_owned();
    argv.push(&json_arg);
    argv.extend_from_slice(args);
    let cli = <hubbub_bench::Cli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("bad arguments {argv:?}: {e}"));
    let report = hubbub_bench::run(cli)
        .await
        .unwrap_or_else(|e| panic!("{name} did not run: {e}"));
    eprint!("{}", report.summary);
    let text = std::fs::read_to_string(&json).expect("the JSON result was written");
    let written: Value = serde_json::from_str(&text).expect("the JSON result parses");
    assert_eq!(written["scenario"], report.scenario);
    written
}

fn assert_no_errors(result: &Value, what: &str) {
    assert_eq!(result["errors_total"], 0, "{what}: errors in {result:#}");
}

fn assert_fanout_adds_up(result: &Value, clients: u64, rooms: u64, messages: u64) {
    assert_no_errors(result, "fanout");
    let r = &result["result"];
    assert_eq!(r["connected"], clients, "{r:#}");
    let step = &r["steps"][0];
    // Every member of a room receives every message of its room, its own included.
    assert_eq!(step["sent"], messages, "{step:#}");
    assert_eq!(step["expected"], messages * clients / rooms, "{step:#}");
    assert_eq!(step["received"], step["expected"], "{step:#}");
    assert_eq!(step["lost"], 0, "{step:#}");
    assert_eq!(step["extra"], 0, "{step:#}");
    assert_eq!(step["out_of_order"], 0, "{step:#}");
    assert_eq!(
        step["acks"], messages,
        "every publish acknowledged: {step:#}"
    );
    assert_eq!(step["latency"]["count"], step["received"], "{step:#}");
}

fn assert_churn_adds_up(result: &Value, cycles: u64) {
    assert_no_errors(result, "churn");
    let r = &result["result"];
    assert_eq!(r["offered"], cycles, "{r:#}");
    assert_eq!(r["completed"], cycles, "{r:#}");
    assert_eq!(r["failed"], 0, "{r:#}");
    assert_eq!(r["skipped"], 0, "{r:#}");
}

const FANOUT: [&str; 13] = [
    "fanout",
    "--clients",
    "20",
    "--rooms",
    "2",
    "--rate",
    "200",
    "--duration",
    "2",
    "--warmup",
    "0",
    "--drain-timeout",
    "10",
];
const RAMP: [&str; 20] = [
    "fanout",
    "--clients",
    "20",
    "--rooms",
    "2",
    "--rate",
    "50",
    "--duration",
    "1",
    "--warmup",
    "0",
    "--ramp",
    "--ramp-factor",
    "2",
    "--max-steps",
    "2",
    "--p99-bound-ms",
    "2000",
    "--drain-timeout",
    "10",
];
const CHURN: [&str; 5] = ["churn", "--rate", "20", "--duration", "2"];
const ACK: [&str; 11] = [
    "ack",
    "--publishers",
    "4",
    "--rooms",
    "2",
    "--rate",
    "40,80",
    "--duration",
    "1",
    "--warmup",
    "0",
];

/// Every publish of every step got its reply (the acknowledgement, sent once the
/// message is committed), each with a measured latency.
fn assert_ack_adds_up(result: &Value, publishers: u64, per_step: &[u64]) {
    assert_no_errors(result, "ack");
    let r = &result["result"];
    assert_eq!(r["connected"], publishers, "{r:#}");
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), per_step.len(), "{r:#}");
    for (step, &publishes) in steps.iter().zip(per_step) {
        assert_eq!(step["offered"], publishes, "{step:#}");
        assert_eq!(step["sent"], publishes, "{step:#}");
        assert_eq!(step["acked"], publishes, "{step:#}");
        assert_eq!(step["refused"], 0, "{step:#}");
        assert_eq!(step["timeouts"], 0, "{step:#}");
        assert_eq!(step["failed"], 0, "{step:#}");
        assert_eq!(step["latency"]["count"], publishes, "{step:#}");
        let p50 = step["latency"]["p50_ms"].as_f64().expect("p50");
        let max = step["latency"]["max_ms"].as_f64().expect("max");
        assert!(p50 > 0.0 && p50 <= max, "{step:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_adds_up_against_a_real_node() {
    let node = Node::start().await;
    let url = node.url();
    let dir = node.dir.clone();

    let fanout = bench(&dir, "fanout", &[&["--url", &url][..], &FANOUT].concat()).await;
    assert_fanout_adds_up(&fanout, 20, 2, 400);

    // A ramp of two steps that both hold (the p99 bound is loose: this is not a speed
    // test): it doubles the rate and reports the second as the highest that held.
    let ramp = bench(&dir, "ramp", &[&["--url", &url][..], &RAMP].concat()).await;
    assert_no_errors(&ramp, "ramp");
    let r = &ramp["result"];
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{r:#}");
    for (step, rate) in steps.iter().zip([50.0, 100.0]) {
        assert_eq!(step["rate"], rate, "{step:#}");
        assert_eq!(step["held"], true, "{step:#}");
        assert_eq!(step["lost"], 0, "{step:#}");
        assert_eq!(step["received"], step["expected"], "{step:#}");
    }
    assert_eq!(r["max_rate_held"], 100.0, "{r:#}");

    let pid = node.child.id().to_string();
    let idle = bench(
        &dir,
        "idle",
        &[
            "--url",
            &url,
            "--source-ips",
            "4",
            "idle",
            "--connections",
            "200",
            "--hold",
            "0.5",
            "--settle",
            "0.2",
            "--pid",
            &pid,
        ],
    )
    .await;
    assert_no_errors(&idle, "idle");
    let r = &idle["result"];
    assert_eq!(r["connected"], 200, "{r:#}");
    assert_eq!(r["failed"], 0, "{r:#}");
    assert_eq!(r["dropped_while_held"], 0, "{r:#}");
    assert_eq!(r["source_ips"], 4, "{r:#}");
    assert_eq!(r["rss_source"], "proc", "{r:#}");
    assert!(r["rss_per_connection_bytes"].is_number(), "{r:#}");

    let churn = bench(&dir, "churn", &[&["--url", &url][..], &CHURN].concat()).await;
    assert_churn_adds_up(&churn, 40);

    // Four publishers at 40 and then 80 messages/s for 1 s: 40 and 80 publishes, each
    // acknowledged by the node once committed to its durable room log.
    let ack = bench(&dir, "ack", &[&["--url", &url][..], &ACK].concat()).await;
    assert_ack_adds_up(&ack, 4, &[40, 80]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_churn_add_up_against_the_rust_floor() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("local addr"));
    let floor = tokio::spawn(rust_floor::serve(listener));
    let dir = std::env::temp_dir().join(format!("hubbub-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create test dir");

    let fanout = bench(&dir, "fanout", &[&["--url", &url][..], &FANOUT].concat()).await;
    assert_fanout_adds_up(&fanout, 20, 2, 400);
    let churn = bench(&dir, "churn", &[&["--url", &url][..], &CHURN].concat()).await;
    assert_churn_adds_up(&churn, 40);

    floor.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
