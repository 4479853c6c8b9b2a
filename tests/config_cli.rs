//! The configuration commands of the real `hubbub` binary: `default-config` prints the
//! template, `check-config` validates defaults < file < chosen `[[nodes]]` entry <
//! environment (every entry when no `--node` is given) and exits 0 (`ok` on stdout) or
//! 2 (the problem, naming key and reason, on stderr).
//!
//! Every command runs with the `HUBBUB_` variables of the caller's environment removed,
//! so the tests do not depend on how they are invoked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Exit code of `check-config` when the configuration is invalid or unreadable.
const EXIT_INVALID_CONFIG: i32 = 2;

/// The binary with no `HUBBUB_` variables inherited from the caller.
fn hubbub() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hubbub"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().to_uppercase().starts_with("HUBBUB_") {
            command.env_remove(&name);
        }
    }
    command.env_remove("HUBBUB_CONFIG");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run the hubbub binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts `check-config` accepted the configuration.
fn assert_ok(output: &Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    assert!(
        stdout(output).lines().any(|line| line.starts_with("ok")),
        "no line starting with `ok` in stdout: {}",
        stdout(output)
    );
}

/// Asserts `check-config` rejected the configuration and its stderr names every one of
/// `expected`; returns stderr.
fn assert_rejected(output: &Output, expected: &[&str]) -> String {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(EXIT_INVALID_CONFIG),
        "stdout: {}\nstderr: {err}",
        stdout(output)
    );
    for needle in expected {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    err
}

/// A config file under the temp dir with a name unique to this process and test,
/// removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(text: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hubbub-config-cli-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write temp config");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn default_config_prints_the_template() {
    let output = run(hubbub().arg("default-config"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), hubbub::config::default_config_toml());
}

#[test]
fn printed_default_config_passes_check_config() {
    let printed = run(hubbub().arg("default-config"));
    assert_eq!(
        printed.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&printed)
    );
    let file = TempConfig::new(&stdout(&printed));
    assert_ok(&run(hubbub()
        .args(["check-config", "--config"])
        .arg(file.path())));
}

#[test]
fn check_config_without_a_file_validates_the_defaults() {
    assert_ok(&run(hubbub().arg("check-config")));
}

/// The example three-node cluster at the root of the repository.
const CLUSTER_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster.toml");

#[test]
fn check_config_accepts_the_example_cluster_file() {
    let output = run(hubbub().args(["check-config", "--config", CLUSTER_FILE]));
    assert_ok(&output);
    let out = stdout(&output);
    assert!(out.contains("3 nodes"), "{out}");
    for node in ["node a, http 127.0.0.1:8081", "node b, http 127.0.0.1:8082"] {
        assert!(out.contains(node), "{out}");
    }
    assert!(out.contains("node c, http 127.0.0.1:8083"), "{out}");
}

#[test]
fn check_config_resolves_one_node_of_the_example_cluster_file() {
    let output = run(hubbub().args(["check-config", "--config", CLUSTER_FILE, "--node", "b"]));
    assert_ok(&output);
    let out = stdout(&output);
    assert!(
        out.contains("node b, http 127.0.0.1:8082, cluster 127.0.0.1:4372"),
        "{out}"
    );
    assert!(!out.contains("node a"), "{out}");
    // `--node` is global: before the command works as well.
    assert_ok(&run(hubbub().args([
        "--node",
        "c",
        "--config",
        CLUSTER_FILE,
        "check-config",
    ])));
}

#[test]
fn check_config_never_prints_the_cookie() {
    let secret = "do-not-print-this-cookie";
    for args in [
        &["check-config", "--config", CLUSTER_FILE][..],
        &["check-config", "--config", CLUSTER_FILE, "--node", "a"][..],
    ] {
        let output = run(hubbub().args(args).env("HUBBUB_CLUSTER__COOKIE", secret));
        assert_ok(&output);
        assert!(!stdout(&output).contains(secret), "{}", stdout(&output));
        assert!(!stderr(&output).contains(secret), "{}", stderr(&output));
    }
}

#[test]
fn check_config_says_whether_the_server_api_is_on_and_never_prints_a_key() {
    let output = run(hubbub().arg("check-config"));
    assert_ok(&output);
    assert!(
        stdout(&output).contains("server API off"),
        "{}",
        stdout(&output)
    );
    let (old, new) = ("old-api-key-do-not-print", "new-api-key-do-not-print");
    let output = run(hubbub()
        .arg("check-config")
        .env("HUBBUB_API__KEYS", format!("{old},{new}")));
    assert_ok(&output);
    let out = stdout(&output);
    assert!(
        out.contains("server API on at http_addr/api/ (2 keys)"),
        "{out}"
    );
    for key in [old, new] {
        assert!(!out.contains(key), "{out}");
        assert!(!stderr(&output).contains(key), "{}", stderr(&output));
    }
    // A short key is refused, and the refusal does not show it either.
    let output = run(hubbub()
        .arg("check-config")
        .env("HUBBUB_API__KEYS", "short-key"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("api.keys[0]"),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains("short-key"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn environment_overrides_the_chosen_node() {
    let output = run(hubbub()
        .args(["check-config", "--config", CLUSTER_FILE, "--node", "a"])
        .env("HUBBUB_NODE__HTTP_ADDR", "127.0.0.1:9001")
        .env("HUBBUB_CLUSTER__SEEDS", "127.0.0.1:4372,127.0.0.1:4373"));
    assert_ok(&output);
    let out = stdout(&output);
    assert!(out.contains("node a, http 127.0.0.1:9001"), "{out}");
    assert!(
        out.contains("seeds [127.0.0.1:4372, 127.0.0.1:4373]"),
        "{out}"
    );
}

/// Three nodes where the second repeats the first's name and addresses.
const DUPLICATE_NODES: &str = "\
[cluster]
cookie = \"x\"

[[nodes]]
name = \"a\"
http_addr = \"127.0.0.1:8081\"
bind = \"127.0.0.1:4371\"

[[nodes]]
name = \"a\"
http_addr = \"127.0.0.1:8081\"
bind = \"127.0.0.1:4371\"

[[nodes]]
name = \"c\"
http_addr = \"127.0.0.1:8083\"
bind = \"127.0.0.1:4373\"
";

#[test]
fn check_config_rejects_duplicate_nodes_naming_them() {
    let file = TempConfig::new(DUPLICATE_NODES);
    let err = assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &["nodes[1].name", "nodes[1].http_addr", "nodes[1].bind"],
    );
    assert!(err.contains("nodes[0] (a)"), "{err}");
    // Choosing a node of a broken file does not help.
    assert_rejected(
        &run(hubbub()
            .args(["check-config", "--node", "c", "--config"])
            .arg(file.path())),
        &["nodes[1].name"],
    );
}

#[test]
fn check_config_rejects_an_unknown_node_listing_the_names() {
    assert_rejected(
        &run(hubbub().args(["check-config", "--config", CLUSTER_FILE, "--node", "d"])),
        &["--node d", "a, b, c"],
    );
}

#[test]
fn check_config_rejects_a_node_without_nodes() {
    assert_rejected(
        &run(hubbub().args(["check-config", "--node", "a"])),
        &["--node a", "[[nodes]]"],
    );
}

/// Runs `command`, which must exit by itself within a few seconds; a node that started
/// serving instead is killed and the test fails.
fn run_expecting_exit(command: &mut Command) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the hubbub binary");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if child.try_wait().expect("poll the hubbub binary").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "hubbub kept running instead of exiting; stderr: {}",
                stderr(&output)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn serve_without_node_refuses_a_file_of_nodes_before_binding() {
    // Ports 0 so that, were it to start, it would not collide with anything.
    let file = TempConfig::new(
        "[cluster]\ncookie = \"x\"\n\n\
         [[nodes]]\nname = \"a\"\nhttp_addr = \"127.0.0.1:0\"\nbind = \"127.0.0.1:4371\"\n\n\
         [[nodes]]\nname = \"b\"\nhttp_addr = \"127.0.0.1:0\"\nbind = \"127.0.0.1:4372\"\n",
    );
    for args in [&["serve"][..], &[][..]] {
        let output = run_expecting_exit(hubbub().args(args).arg("--config").arg(file.path()));
        let err = assert_rejected(
            &output,
            &["this file describes 2 nodes (a, b): choose one with --node NAME"],
        );
        assert!(!err.contains("listening"), "{err}");
    }
}

#[test]
fn check_config_accepts_a_valid_file() {
    let file = TempConfig::new("[limits]\nmax_connections = 5\n");
    assert_ok(&run(hubbub()
        .args(["check-config", "--config"])
        .arg(file.path())));
}

#[test]
fn check_config_reports_the_hooks_and_webhooks_without_urls_or_secrets() {
    let file = TempConfig::new(
        "[hooks]\nconnect_url = \"https://backend.example/connect?token=t0p\"\n\
         publish_url = \"https://backend.example/publish\"\npublish_rooms = [\"mod-*\"]\n\n\
         [[webhooks]]\nname = \"crm\"\nurl = \"https://backend.example/events\"\n\
         events = [\"publish\"]\nsecret = \"do-not-print-this-secret\"\n",
    );
    let output = run(hubbub().args(["check-config", "--config"]).arg(file.path()));
    assert_ok(&output);
    let out = stdout(&output);
    assert!(
        out.contains(
            "connect hook (fail_closed), publish hook for mod-* (fail_open), webhooks [crm]"
        ),
        "{out}"
    );
    for hidden in ["t0p", "do-not-print-this-secret", "backend.example"] {
        assert!(!out.contains(hidden), "{out}");
        assert!(!stderr(&output).contains(hidden), "{}", stderr(&output));
    }
    // A webhook without a secret is refused, naming the key.
    let file = TempConfig::new(
        "[[webhooks]]\nurl = \"http://127.0.0.1:9/\"\nevents = [\"join\", \"publsh\"]\n",
    );
    let output = run(hubbub().args(["check-config", "--config"]).arg(file.path()));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("publsh"), "{}", stderr(&output));
    let file =
        TempConfig::new("[[webhooks]]\nurl = \"http://127.0.0.1:9/\"\nevents = [\"join\"]\n");
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &["webhooks[0].secret", "required"],
    );
}

#[test]
fn check_config_rejects_an_invalid_value_naming_key_and_reason() {
    let file = TempConfig::new("[limits]\nmax_connections = 0\n");
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &["limits.max_connections", "at least 1"],
    );
}

#[test]
fn check_config_reports_every_problem() {
    let file = TempConfig::new(
        "[limits]\nmax_connections = 0\n\n[heartbeat]\ninterval_ms = 1000\ntimeout_ms = 500\n",
    );
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &["limits.max_connections", "heartbeat.timeout_ms"],
    );
}

#[test]
fn check_config_rejects_a_wrong_type_naming_the_key() {
    let file = TempConfig::new("[limits]\nmax_connections = \"abc\"\n");
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &["limits.max_connections", "abc"],
    );
}

#[test]
fn check_config_rejects_an_unknown_key_naming_file_line_and_the_nearest_key() {
    let file = TempConfig::new("[limits]\nmax_frame_bytes = 65536\nmax_conections = 5\n");
    let shown = format!(
        "unknown key `limits.max_conections` in {} line 3; did you mean `limits.max_connections`?",
        file.path().display()
    );
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &[shown.as_str()],
    );
}

#[test]
fn check_config_names_the_file_and_line_of_a_value_out_of_range() {
    let file = TempConfig::new("[node]\nthreads = 2\n\n[limits]\nmax_connections = 0\n");
    let shown = format!(
        "limits.max_connections: must be at least 1 (in {} line 5)",
        file.path().display()
    );
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &[shown.as_str()],
    );
    assert_rejected(
        &run(hubbub()
            .arg("check-config")
            .env("HUBBUB_ROOMS__HISTORY", "0")),
        &["rooms.history: must be between 1 and 100000, not 0 (from HUBBUB_ROOMS__HISTORY)"],
    );
}

/// What a Kubernetes Service named `hubbub` puts in the environment of every pod.
const KUBERNETES_SERVICE_ENV: &[(&str, &str)] = &[
    ("HUBBUB_PORT", "tcp://10.96.0.12:8080"),
    ("HUBBUB_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    ("HUBBUB_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ("HUBBUB_PORT_8080_TCP_PORT", "8080"),
    ("HUBBUB_PORT_8080_TCP_PROTO", "tcp"),
    ("HUBBUB_SERVICE_HOST", "10.96.0.12"),
    ("HUBBUB_SERVICE_PORT", "8080"),
];

/// The lines of `text` that are warnings.
fn warning_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.contains("warning"))
        .collect()
}

#[test]
fn check_config_ignores_variables_that_are_not_settings_with_one_warning() {
    let mut command = hubbub();
    command
        .arg("check-config")
        .env("HUBBUB_LIMITS__MAX_CONNECTIONS", "7");
    for (name, value) in KUBERNETES_SERVICE_ENV {
        command.env(name, value);
    }
    let output = run(&mut command);
    assert_ok(&output);
    let err = stderr(&output);
    let warnings = warning_lines(&err);
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with("hubbub: warning: ignoring 7 environment variables"),
        "{err}"
    );
    for (name, _) in KUBERNETES_SERVICE_ENV {
        assert!(warnings[0].contains(name), "{name}: {err}");
    }
    assert!(!err.contains("10.96.0.12"), "values are not shown: {err}");
    let (_, listed) = warnings[0].rsplit_once("): ").expect("a list of names");
    assert_eq!(
        listed.split(", ").count(),
        KUBERNETES_SERVICE_ENV.len(),
        "{err}"
    );
    assert!(
        !listed.contains("HUBBUB_LIMITS__MAX_CONNECTIONS"),
        "a setting: {err}"
    );

    // Without such variables, no warning.
    let output = run(hubbub().arg("check-config"));
    assert_ok(&output);
    assert!(
        warning_lines(&stderr(&output)).is_empty(),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_config_rejects_an_unknown_key_of_a_known_section_in_the_environment() {
    assert_rejected(
        &run(hubbub()
            .arg("check-config")
            .env("HUBBUB_PORT", "tcp://10.96.0.12:8080")
            .env("HUBBUB_LIMITS__MAX_CONECTIONS", "5")),
        &[
            "environment variable HUBBUB_LIMITS__MAX_CONECTIONS",
            "did you mean HUBBUB_LIMITS__MAX_CONNECTIONS?",
        ],
    );
}

/// A valid cookie, 64 hex characters as `openssl rand -hex 32` makes.
const STRONG_COOKIE: &str = "3f1c0e5a9b7d2c4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e";

#[test]
fn the_example_cluster_file_is_accepted_with_a_warning_on_one_machine_only() {
    let output = run(hubbub().args(["check-config", "--config", CLUSTER_FILE]));
    assert_ok(&output);
    let err = stderr(&output);
    let warnings = warning_lines(&err);
    assert_eq!(warnings.len(), 1, "one warning for the three nodes: {err}");
    assert!(
        warnings[0].contains("cluster.cookie: is the example cookie"),
        "{err}"
    );
    assert!(warnings[0].contains("openssl rand -hex 32"), "{err}");

    // One node dialled at another machine's address: refused, with how to fix it.
    let err = assert_rejected(
        &run(hubbub()
            .args(["check-config", "--config", CLUSTER_FILE, "--node", "a"])
            .env("HUBBUB_CLUSTER__SEEDS", "127.0.0.1:4372,10.0.0.3:4373")),
        &[
            "cluster.cookie: is the example cookie",
            "openssl rand -hex 32",
        ],
    );
    assert!(err.contains("HUBBUB_CLUSTER__COOKIE"), "{err}");
    // A strong cookie from the environment fixes it, without a warning.
    let output = run(hubbub()
        .args(["check-config", "--config", CLUSTER_FILE, "--node", "a"])
        .env("HUBBUB_CLUSTER__SEEDS", "127.0.0.1:4372,10.0.0.3:4373")
        .env("HUBBUB_CLUSTER__COOKIE", STRONG_COOKIE));
    assert_ok(&output);
    assert!(
        warning_lines(&stderr(&output)).is_empty(),
        "{}",
        stderr(&output)
    );
}

/// One node of a cluster across machines, with `cookie`.
fn reachable_node(cookie: &str) -> TempConfig {
    TempConfig::new(&format!(
        "[node]\nname = \"a\"\nhttp_addr = \"127.0.0.1:0\"\n\n\
         [cluster]\nenabled = true\nbind = \"0.0.0.0:0\"\nadvertise = \"10.0.0.5:4370\"\n\
         cookie = \"{cookie}\"\nseeds = [\"10.0.0.5:4370\", \"10.0.0.6:4370\"]\n\
         voters = [\"a\", \"b\"]\n"
    ))
}

#[test]
fn check_config_and_serve_refuse_a_short_cookie_off_loopback() {
    let file = reachable_node("short-cookie");
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(file.path())),
        &[
            "cluster.cookie: is 12 characters long",
            "openssl rand -hex 32",
        ],
    );
    let output = run_expecting_exit(hubbub().args(["serve", "--config"]).arg(file.path()));
    let err = assert_rejected(&output, &["cluster.cookie: is 12 characters long"]);
    assert!(!err.contains("listening"), "{err}");
    assert!(
        !err.contains("short-cookie"),
        "the cookie is not shown: {err}"
    );

    let file = reachable_node(STRONG_COOKIE);
    let output = run(hubbub().args(["check-config", "--config"]).arg(file.path()));
    assert_ok(&output);
    assert!(
        warning_lines(&stderr(&output)).is_empty(),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_node_starts_among_kubernetes_service_variables_and_warns_once() {
    let mut command = hubbub();
    command
        .arg("serve")
        .env("HUBBUB_NODE__HTTP_ADDR", "127.0.0.1:0")
        .env("HUBBUB_LOG__FORMAT", "json")
        // No room logs left in the working directory.
        .env("HUBBUB_STORAGE__ENGINE", "memory")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (name, value) in KUBERNETES_SERVICE_ENV {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start the hubbub binary");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|line: &String| line.contains("hubbub is listening"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the node did not start listening: {log:#?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let warnings: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("environment variable"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log:#?}");
    assert!(
        warnings[0].contains("\"WARN\"") || warnings[0].contains("warn"),
        "{log:#?}"
    );
    for (name, _) in KUBERNETES_SERVICE_ENV {
        assert!(warnings[0].contains(name), "{name}: {log:#?}");
    }
}

#[test]
fn check_config_checks_the_http_tls_files() {
    let missing = TempConfig::new(
        "[http.tls]\ncert = \"/nonexistent/http.crt\"\nkey = \"/nonexistent/http.key\"\n",
    );
    assert_rejected(
        &run(hubbub()
            .args(["check-config", "--config"])
            .arg(missing.path())),
        &[
            "http.tls.cert: file /nonexistent/http.crt not found",
            "http.tls.key: ",
        ],
    );

    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let cert = TempConfig::new(&made.cert.pem());
    let key = TempConfig::new(&made.signing_key.serialize_pem());
    let file = TempConfig::new(&format!(
        "[http.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.path().display().to_string(),
        key.path().display().to_string()
    ));
    let output = run(hubbub().args(["check-config", "--config"]).arg(file.path()));
    assert_ok(&output);
    assert!(
        stdout(&output).contains(", https 127.0.0.1:8080"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn check_config_rejects_a_missing_file_naming_it() {
    let path = std::env::temp_dir().join(format!(
        "hubbub-config-cli-{}-missing.toml",
        std::process::id()
    ));
    let shown = path.display().to_string();
    assert_rejected(
        &run(hubbub().args(["check-config", "--config"]).arg(&path)),
        &[shown.as_str()],
    );
}

#[test]
fn check_config_reads_the_file_named_by_hubbub_config() {
    let file = TempConfig::new("[rooms]\nhistory = 0\n");
    assert_rejected(
        &run(hubbub()
            .arg("check-config")
            .env("HUBBUB_CONFIG", file.path())),
        &["rooms.history"],
    );

    let valid = TempConfig::new("[rooms]\nhistory = 10\n");
    assert_ok(&run(hubbub()
        .arg("check-config")
        .env("HUBBUB_CONFIG", valid.path())));
}

#[test]
fn check_config_prefers_the_flag_to_hubbub_config() {
    let invalid = TempConfig::new("[rooms]\nhistory = 0\n");
    let valid = TempConfig::new("[rooms]\nhistory = 10\n");
    assert_ok(&run(hubbub()
        .args(["check-config", "--config"])
        .arg(valid.path())
        .env("HUBBUB_CONFIG", invalid.path())));
}

#[test]
fn environment_overrides_reach_check_config() {
    assert_rejected(
        &run(hubbub()
            .arg("check-config")
            .env("HUBBUB_LIMITS__MAX_CONNECTIONS", "0")),
        &["limits.max_connections"],
    );
}

#[test]
fn environment_overrides_the_file() {
    let file = TempConfig::new("[limits]\nmax_connections = 0\n");
    assert_ok(&run(hubbub()
        .args(["check-config", "--config"])
        .arg(file.path())
        .env("HUBBUB_LIMITS__MAX_CONNECTIONS", "5")));
}

/// The configuration guide, which quotes `hubbub default-config` and has a reference
/// table of every key.
const CONFIGURATION_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");

/// The bodies of the ```toml fenced blocks of a Markdown text, each ending in a newline
/// as a printed file does.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut open: Option<String> = None;
    for line in markdown.lines() {
        match open.as_mut() {
            None if line.trim_end() == "```toml" => open = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(open.take()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn configuration_doc_quotes_default_config_and_documents_every_key() {
    let fix = "update docs/configuration.md: paste the output of \
               `cargo run -q -- default-config` into the ```toml block under \
               \"## The default configuration\", and give every key a row in the \
               reference table";
    let printed = run(hubbub().arg("default-config"));
    assert_eq!(
        printed.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&printed)
    );
    let template = stdout(&printed);
    let doc = std::fs::read_to_string(CONFIGURATION_DOC)
        .unwrap_or_else(|e| panic!("cannot read {CONFIGURATION_DOC}: {e}; {fix}"));

    assert!(
        toml_blocks(&doc).contains(&template),
        "docs/configuration.md has no ```toml block holding the output of \
         `hubbub default-config` verbatim; {fix}"
    );

    // Keys the template sets, plus those it leaves commented out (`node.name`, whose
    // default is the host name), which only the defaults themselves list.
    let parsed: toml::Table = template.parse().expect("default-config prints TOML");
    let defaults = toml::Table::try_from(hubbub::Settings::default()).expect("defaults serialise");
    let mut keys = std::collections::BTreeSet::new();
    for table in [&parsed, &defaults] {
        for (section, entries) in table {
            let entries = entries.as_table().expect("every section is a table");
            keys.extend(entries.keys().map(|key| format!("{section}.{key}")));
        }
    }
    assert!(keys.contains("node.name"), "{keys:?}");

    let table_rows: Vec<&str> = doc
        .lines()
        .filter(|line| line.trim_start().starts_with('|'))
        .collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| {
            let cell = format!("`{key}`");
            !table_rows.iter().any(|row| row.contains(&cell))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md's reference table lacks {missing:?}; {fix}"
    );
}
