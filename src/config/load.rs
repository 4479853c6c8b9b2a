//! Loading and validating `Settings`.
//!
//! Owns: choosing where configuration comes from ([`ConfigSource`]), layering built-in
//! defaults < TOML file < the file's `[[nodes]]` entry chosen with `--node` <
//! `HUBBUB_SECTION__KEY` environment variables, checking the result against the rules
//! every limit must satisfy ([`Settings::validate`]), and the commented template that
//! `hubbub default-config` prints ([`default_config_toml`]).
//!
//! Must not know: how the settings are used. It never reads anything but the file it is
//! given and the environment it is handed (validation only checks that the TLS files
//! `[cluster.tls]` and `[http.tls]` name exist and hold PEM of the right kind, with
//! `pem.rs`), and it never panics on what it reads: every mistake becomes a
//! [`ConfigError`] that names the key and the reason.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use config::{Config, Environment, FileFormat, Format, Map, Source, Value, ValueKind};

use super::pem::{check_pem_file, PemHolds};
use super::{
    ClusterSettings, HeartbeatSettings, LimitSettings, LogSettings, NodeEntry, NodeSettings,
    RoomSettings, Settings, StorageEngine, StorageSettings,
};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "HUBBUB_CONFIG";

/// Prefix of environment variables that override settings: `HUBBUB_SECTION__KEY`.
const ENV_PREFIX: &str = "HUBBUB";
/// Between the prefix and the section (`HUBBUB_LIMITS`).
const ENV_PREFIX_SEPARATOR: &str = "_";
/// Between a section and its key (`LIMITS__MAX_CONNECTIONS`). Two underscores, because
/// keys themselves contain one.
const ENV_SEPARATOR: &str = "__";
/// Settings whose environment variable holds a list: `HUBBUB_CLUSTER__SEEDS=a:1,b:2`.
const ENV_LIST_KEYS: &[&str] = &[
    "cluster.seeds",
    "cluster.voters",
    "auth.algorithms",
    "http.allowed_origins",
    "http.trusted_proxies",
    "api.keys",
    "hooks.pass_headers",
    "hooks.publish_rooms",
    "socketio.namespaces",
];
const ENV_LIST_SEPARATOR: char = ',';
/// Settings of optional tables, which the defaults lack, that the environment may set.
const OPTIONAL_SETTINGS: &[&str] = &[
    "cluster.tls.cert",
    "cluster.tls.key",
    "cluster.tls.ca",
    "http.tls.cert",
    "http.tls.key",
    "http.tls.peer_ca",
    "http.tls.peer_name",
];

/// Bytes of a frame that are envelope (type, room, ids) rather than message content.
const FRAME_ENVELOPE_BYTES: usize = 1024;
/// Worst-case UTF-8 bytes per character.
const MAX_UTF8_BYTES_PER_CHAR: usize = 4;
const MIN_FRAME_BYTES: usize = 256;
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
const MAX_OUTBOUND_QUEUE: usize = 1_000_000;
/// `limits.outbound_bytes`, when not 0: room for any one reply a node sends, at the
/// least, and at most 1 GiB.
const MIN_OUTBOUND_BYTES: u64 = 4_096;
const MAX_OUTBOUND_BYTES: u64 = 1 << 30;
const MAX_ROOM_HISTORY: usize = 100_000;
/// The smallest bound on the rooms' history bytes: each of up to 64 shards then
/// still holds a few of the largest messages.
const MIN_HISTORY_BYTES: u64 = 1024 * 1024;
/// The longest a large room gathers joins and leaves into one `presence_diff`: past
/// ten seconds a member list shown to clients would be too stale to be useful.
const MAX_PRESENCE_BATCH_MS: u64 = 10_000;
const MIN_HEARTBEAT_INTERVAL_MS: u64 = 100;
/// The longest heartbeat interval or timeout: a day. Every connection adds these to
/// the clock; far larger values would overflow it.
const MAX_HEARTBEAT_MS: u64 = 86_400_000;
const MAX_NODE_NAME_CHARS: usize = 64;
const MIN_CLUSTER_HEARTBEAT_MS: u64 = 10;
/// Heartbeats a peer must miss in a row before it is declared down.
const MISSED_HEARTBEATS_BEFORE_DOWN: u64 = 3;

/// The commented template with every setting at its default.
const DEFAULT_CONFIG_TOML: &str = include_str!("default.toml");

/// Where the file layer of the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// No file: built-in defaults, then the environment.
    Defaults,
    /// This TOML file over the built-in defaults, then the environment.
    File(PathBuf),
}

impl ConfigSource {
    /// The file given on the command line, else the one named by `HUBBUB_CONFIG` (when
    /// set and non-empty), else no file at all.
    pub fn from_args(path: Option<PathBuf>) -> Self {
        Self::choose(path, std::env::var_os(CONFIG_PATH_ENV))
    }

    /// [`ConfigSource::from_args`] with the value of `HUBBUB_CONFIG` passed in.
    fn choose(path: Option<PathBuf>, env_path: Option<OsString>) -> Self {
        match path {
            Some(path) => Self::File(path),
            None => match env_path {
                Some(env_path) if !env_path.is_empty() => Self::File(PathBuf::from(env_path)),
                _ => Self::Defaults,
            },
        }
    }
}

/// Why configuration could not be loaded. Every message names the file, the key or the
/// environment variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist.
    #[error("config file {}: not found", path.display())]
    NotFound { path: PathBuf },
    /// The config file exists but could not be read (permissions, a directory, not UTF-8).
    #[error("config file {}: cannot be read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, a value has the wrong type, or a key is unknown. The
    /// message is the config crate's, which names the key (and the file when it came
    /// from one).
    #[error("{message}")]
    Parse { message: String },
    /// The settings parsed but break one or more rules; one problem per entry, each
    /// starting with the key path. Displayed one problem per line, with no heading, so
    /// the caller can put its own above.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// The file describes several nodes (`[[nodes]]`) and `--node` chose none.
    #[error(
        "this file describes {} nodes ({}): choose one with --node NAME",
        names.len(),
        names.join(", ")
    )]
    NodeNotChosen { names: Vec<String> },
    /// `--node` names no `[[nodes]]` entry.
    #[error(
        "--node {name}: no [[nodes]] entry has that name; the file describes {}",
        names.join(", ")
    )]
    UnknownNode { name: String, names: Vec<String> },
    /// `--node` was given, but the configuration has no `[[nodes]]` to choose from.
    #[error(
        "--node {name}: the configuration has no [[nodes]] entries to choose from; \
         leave out --node, or describe every node in [[nodes]]"
    )]
    NoNodes { name: String },
}

impl From<config::ConfigError> for ConfigError {
    fn from(error: config::ConfigError) -> Self {
        Self::Parse {
            message: error.to_string(),
        }
    }
}

/// The commented TOML template with every section and key at its default value; what
/// `hubbub default-config` prints.
pub fn default_config_toml() -> &'static str {
    DEFAULT_CONFIG_TOML
}

/// Loads and validates the settings of one node from `source` and the process
/// environment. `node` is the `--node` choice: the `[[nodes]]` entry to run as when the
/// file describes a whole cluster.
pub fn load(source: &ConfigSource, node: Option<&str>) -> Result<Settings, ConfigError> {
    load_with_env(source, node, std::env::vars_os().map(lossy_pair))
}

/// Loads and validates the settings of one node from `source` and the given environment
/// variables, so tests can supply an environment without touching the process's.
///
/// Layers, later wins: built-in defaults, the file (if any), the file's `[[nodes]]`
/// entry named by `node`, then `HUBBUB_SECTION__KEY` variables
/// (`HUBBUB_LIMITS__MAX_CONNECTIONS=5`). Variables without the `HUBBUB_` prefix are
/// ignored, and so is `HUBBUB_CONFIG`, which names the file rather than a setting. Any
/// other `HUBBUB_` variable must name a setting.
///
/// A file with `[[nodes]]` needs `node` to name one of them ([`ConfigError::NodeNotChosen`],
/// [`ConfigError::UnknownNode`]); `node` without `[[nodes]]` is [`ConfigError::NoNodes`].
pub fn load_with_env(
    source: &ConfigSource,
    node: Option<&str>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let layers = Layers::read(source, env)?;
    let (base, merged) = layers.settings(None)?;
    if base.nodes.is_empty() {
        if let Some(name) = node {
            return Err(ConfigError::NoNodes {
                name: name.to_owned(),
            });
        }
        let problems = layers.placed_problems(&base, &merged);
        return if problems.is_empty() {
            Ok(base)
        } else {
            Err(ConfigError::Invalid(problems))
        };
    }
    let Some(name) = node else {
        return Err(ConfigError::NodeNotChosen {
            names: entry_names(&base.nodes),
        });
    };
    let Some(entry) = base.nodes.iter().find(|entry| entry.name == name) else {
        return Err(ConfigError::UnknownNode {
            name: name.to_owned(),
            names: entry_names(&base.nodes),
        });
    };
    let (settings, problems) = layers.resolve(entry, &base.nodes)?;
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Loads and validates every node `source` describes, with the process environment;
/// what `check-config` without `--node` checks.
pub fn load_every_node(source: &ConfigSource) -> Result<Vec<Settings>, ConfigError> {
    load_every_node_with_env(source, std::env::vars_os().map(lossy_pair))
}

/// [`load_every_node`] with the environment passed in.
///
/// Without `[[nodes]]` this is the one node [`load_with_env`] loads. With them, each
/// entry is resolved in turn (as `--node` would) and the settings of every node are
/// returned in file order; problems of all of them are reported together, each once.
pub fn load_every_node_with_env(
    source: &ConfigSource,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Settings>, ConfigError> {
    let layers = Layers::read(source, env)?;
    let (base, merged) = layers.settings(None)?;
    if base.nodes.is_empty() {
        let problems = layers.placed_problems(&base, &merged);
        return if problems.is_empty() {
            Ok(vec![base])
        } else {
            Err(ConfigError::Invalid(problems))
        };
    }
    let mut every = Vec::with_capacity(base.nodes.len());
    let mut problems: Vec<String> = Vec::new();
    for entry in &base.nodes {
        let (settings, entry_problems) = layers.resolve(entry, &base.nodes)?;
        // Problems of shared settings (and of the entries themselves) are the same for
        // every node; say each once.
        for problem in entry_problems {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        every.push(settings);
    }
    if problems.is_empty() {
        Ok(every)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn entry_names(entries: &[NodeEntry]) -> Vec<String> {
    entries.iter().map(|entry| entry.name.clone()).collect()
}

/// Everything settings are built from, read once: the defaults, the file and the
/// environment. [`Layers::settings`] stacks them, with a `[[nodes]]` entry between
/// the file and the environment when one is chosen.
struct Layers {
    defaults: Config,
    file: Option<TomlFile>,
    /// `HUBBUB_` variables of single values, keyed as the environment has them.
    env_values: Map<String, String>,
    /// `HUBBUB_` variables of lists (`HUBBUB_CLUSTER__SEEDS=a:1,b:2`), already split.
    env_lists: ValueLayer,
}

impl Layers {
    fn read(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = Config::try_from(&Settings::default())?;
        let (env_values, env_lists) = setting_overrides(env, &defaults)?;
        let file = match source {
            ConfigSource::File(path) => Some(TomlFile::read(path)?),
            ConfigSource::Defaults => None,
        };
        Ok(Self {
            defaults,
            file,
            env_values,
            env_lists,
        })
    }

    /// Defaults < file < `entry` (if any) < environment, deserialised but not validated,
    /// with the merged layers, which know where each value came from.
    fn settings(&self, entry: Option<ValueLayer>) -> Result<(Settings, Config), ConfigError> {
        let mut builder = Config::builder().add_source(self.defaults.clone());
        if let Some(file) = &self.file {
            builder = builder.add_source(file.clone());
        }
        if let Some(entry) = entry {
            builder = builder.add_source(entry);
        }
        // No `try_parsing`: the config crate already parses a string into a number when
        // the field is a number, and parsing up front would turn a node called `007`
        // into `7`. For the same reason lists are split by us, not by the crate, whose
        // list splitting only works with `try_parsing`.
        let environment = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_PREFIX_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .source(Some(self.env_values.clone()));
        let merged = builder
            .add_source(environment)
            .add_source(self.env_lists.clone())
            .build()?;
        let not_integers = non_integer_counts(&merged, &self.defaults);
        if !not_integers.is_empty() {
            return Err(ConfigError::Parse {
                message: not_integers.join("\n"),
            });
        }
        let settings = merged
            .clone()
            .try_deserialize()
            .map_err(|error| self.explain_unknown_key(error))?;
        Ok((settings, merged))
    }

    /// `settings`' problems, each followed by where the value at fault came from: the
    /// file and line, the environment variable, or the `[[nodes]]` entry. A problem
    /// of a value left at its default is left as it is.
    fn placed_problems(&self, settings: &Settings, merged: &Config) -> Vec<String> {
        self.place(settings.problems(), merged)
    }

    /// [`Layers::placed_problems`] for problems already found.
    fn place(&self, problems: Vec<String>, merged: &Config) -> Vec<String> {
        let Ok(tree) = merged.collect() else {
            return problems;
        };
        problems
            .into_iter()
            .map(|problem| {
                let key = problem.split_once(": ").map_or("", |(key, _)| key);
                match value_at(&tree, key).and_then(|value| value.origin()) {
                    Some(origin) => format!("{problem} ({})", self.describe_origin(key, origin)),
                    None => problem,
                }
            })
            .collect()
    }

    /// Where the value of `key` came from, for an operator: `in FILE line N`, `from
    /// HUBBUB_SECTION__KEY`, or `from [[nodes]] entry "a" in FILE`.
    fn describe_origin(&self, key: &str, origin: &str) -> String {
        match &self.file {
            Some(file) if origin == file.uri => match file.line_of(key) {
                Some(line) => format!("in {origin} line {line}"),
                None => format!("in {origin}"),
            },
            Some(file) if origin.starts_with("[[nodes]]") => {
                format!("from {origin} in {}", file.uri)
            }
            _ if origin == "the environment" => {
                let variable = self
                    .env_values
                    .keys()
                    .find(|name| env_path(name).as_deref() == Some(key))
                    .cloned()
                    .unwrap_or_else(|| env_variable(key));
                format!("from {variable}")
            }
            _ => format!("from {origin}"),
        }
    }

    /// An unknown key (serde's `unknown field` error) restated for an operator: the
    /// file and line it is on, and the nearest valid key when one is close enough to
    /// be a typo (`max_conections` → `max_connections`). Other errors pass unchanged.
    fn explain_unknown_key(&self, error: config::ConfigError) -> ConfigError {
        let (inner, table) = match &error {
            config::ConfigError::At { error, key, .. } => (error.as_ref(), key.clone()),
            other => (other, None),
        };
        let config::ConfigError::Message(message) = inner else {
            return error.into();
        };
        let Some((field, valid)) = unknown_field(message) else {
            return error.into();
        };
        let table = table.unwrap_or_default();
        let path = join_key(&table, &field);
        let place = self
            .file
            .as_ref()
            .map(|file| match file.line_of(&path) {
                Some(line) => format!(" in {} line {line}", file.uri),
                None => format!(" in {}", file.uri),
            })
            .unwrap_or_default();
        let hint = match nearest(&field, valid.iter().map(String::as_str)) {
            Some(near) => format!("; did you mean `{}`?", join_key(&table, near)),
            None if valid.is_empty() => String::new(),
            None => format!(
                " (the keys{} are {})",
                if table.is_empty() {
                    String::new()
                } else {
                    format!(" of {table}")
                },
                valid.join(", ")
            ),
        };
        ConfigError::Parse {
            message: format!("unknown key `{path}`{place}{hint}"),
        }
    }

    /// The settings of the node `entry` (one of `all`) describes, and their problems.
    ///
    /// The entry's own fields are checked under `nodes[i].…`. While any entry is broken,
    /// a problem of a key the entry fed (say `node.name` from a bad `nodes[1].name`)
    /// would only repeat it, so those are left out.
    fn resolve(
        &self,
        entry: &NodeEntry,
        all: &[NodeEntry],
    ) -> Result<(Settings, Vec<String>), ConfigError> {
        let (settings, merged) = self.settings(Some(self.entry_layer(entry, all)))?;
        let problems = settings.problems();
        if !problems.iter().any(|problem| problem.starts_with("nodes[")) {
            return Ok((settings, self.place(problems, &merged)));
        }
        let fed = self.keys_fed_by_entries();
        let problems = problems
            .into_iter()
            .filter(|problem| {
                let key = problem.split_once(": ").map_or("", |(key, _)| key);
                !fed.contains(&key)
            })
            .collect();
        Ok((settings, self.place(problems, &merged)))
    }

    /// The settings a chosen `[[nodes]]` entry gives: its name, addresses, the cluster
    /// turned on and, unless the file sets `cluster.seeds`, the advertised address of
    /// every entry in `all` as the seeds (a node may list itself).
    fn entry_layer(&self, entry: &NodeEntry, all: &[NodeEntry]) -> ValueLayer {
        let origin = format!("[[nodes]] entry {:?}", entry.name);
        let text = |value: String| Value::new(Some(&origin), ValueKind::String(value));
        let mut values = Map::new();
        values.insert("node.name".to_owned(), text(entry.name.clone()));
        values.insert(
            "node.http_addr".to_owned(),
            text(entry.http_addr.to_string()),
        );
        values.insert("cluster.bind".to_owned(), text(entry.bind.to_string()));
        values.insert(
            "cluster.advertise".to_owned(),
            text(entry.advertise.clone()),
        );
        values.insert(
            "cluster.enabled".to_owned(),
            Value::new(Some(&origin), ValueKind::Boolean(true)),
        );
        if !self.file_sets_seeds() {
            let seeds = all.iter().map(|node| text(node.advertise_addr())).collect();
            values.insert(
                "cluster.seeds".to_owned(),
                Value::new(Some(&origin), ValueKind::Array(seeds)),
            );
        }
        ValueLayer(values)
    }

    /// Whether the file gives `cluster.seeds` itself, which then wins over the seeds
    /// `[[nodes]]` imply.
    fn file_sets_seeds(&self) -> bool {
        let Some(tree) = self.file.as_ref().and_then(|file| file.collect().ok()) else {
            return false;
        };
        matches!(
            tree.get("cluster").map(|cluster| &cluster.kind),
            Some(ValueKind::Table(cluster)) if cluster.contains_key("seeds")
        )
    }

    /// The keys whose value comes from the chosen `[[nodes]]` entry: those it sets that
    /// the environment does not.
    fn keys_fed_by_entries(&self) -> Vec<&'static str> {
        let mut keys = vec![
            "node.name",
            "node.http_addr",
            "cluster.bind",
            "cluster.advertise",
        ];
        if !self.file_sets_seeds() {
            keys.push("cluster.seeds");
        }
        let from_env: Vec<String> = self
            .env_values
            .keys()
            .map(|name| env_path(name).unwrap_or_default())
            .chain(self.env_lists.0.keys().cloned())
            .collect();
        keys.retain(|key| !from_env.iter().any(|path| path == key));
        keys
    }
}

/// Settings given as values rather than text: a chosen `[[nodes]]` entry, or lists
/// from the environment. Keys are dotted paths (`cluster.seeds`).
#[derive(Debug, Clone, Default)]
struct ValueLayer(Map<String, Value>);

impl Source for ValueLayer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The value at a problem's key (`limits.max_connections`, `nodes[1].bind`,
/// `rooms.acl[0].pattern`) in a collected tree of settings.
fn value_at<'t>(tree: &'t Map<String, Value>, key: &str) -> Option<&'t Value> {
    let mut table = Some(tree);
    let mut found = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (segment, None),
        };
        let mut value = table?.get(name)?;
        if let Some(index) = index {
            let ValueKind::Array(items) = &value.kind else {
                return None;
            };
            value = items.get(index)?;
        }
        found = Some(value);
        table = match &value.kind {
            ValueKind::Table(inner) => Some(inner),
            _ => None,
        };
    }
    found
}

/// The environment variable of a setting: `limits.max_connections` →
/// `HUBBUB_LIMITS__MAX_CONNECTIONS`.
fn env_variable(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{ENV_PREFIX_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    )
}

/// `std::env::vars` would panic on a variable that is not UTF-8. Read lossily instead:
/// such a `HUBBUB_` variable then fails loading or validation by name, not silently.
fn lossy_pair((key, value): (OsString, OsString)) -> (String, String) {
    (
        key.to_string_lossy().into_owned(),
        value.to_string_lossy().into_owned(),
    )
}

/// The setting path (`limits.max_connections`) a `HUBBUB_` variable name stands for;
/// `None` for a variable without the prefix.
fn env_path(name: &str) -> Option<String> {
    let prefix = format!("{ENV_PREFIX}{ENV_PREFIX_SEPARATOR}").to_lowercase();
    let lower = name.to_lowercase();
    let key = lower.strip_prefix(&prefix)?;
    Some(key.replace(ENV_SEPARATOR, "."))
}

/// The `HUBBUB_` variables that override settings: single values keyed as the
/// environment has them, and lists (keys in [`ENV_LIST_KEYS`]) split on commas.
///
/// Only `HUBBUB_<SECTION>__<KEY>` names of a section of the settings are settings; a
/// key that is not one of that section's is an error naming the variable, which is
/// clearer than the unknown-field error deserialisation would give. Every other
/// `HUBBUB_` name (what a Kubernetes Service called `hubbub` injects into each pod:
/// `HUBBUB_PORT=tcp://…`, `HUBBUB_SERVICE_HOST`, `HUBBUB_PORT_8080_TCP_ADDR`) is left
/// alone; [`ignored_variables`] lists them for the one warning line.
fn setting_overrides(
    env: impl IntoIterator<Item = (String, String)>,
    defaults: &Config,
) -> Result<(Map<String, String>, ValueLayer), ConfigError> {
    let mut overrides = Map::new();
    let mut lists = ValueLayer::default();
    let mut unknown = Vec::new();
    for (name, value) in env {
        let Some(path) = setting_path(&name) else {
            continue;
        };
        if ENV_LIST_KEYS.contains(&path.as_str()) {
            let origin = "the environment".to_owned();
            // Spaces around items are dropped, and so are empty items, so an empty
            // variable is an empty list.
            let items = value
                .split(ENV_LIST_SEPARATOR)
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::new(Some(&origin), ValueKind::String(item.to_owned())))
                .collect();
            lists
                .0
                .insert(path, Value::new(Some(&origin), ValueKind::Array(items)));
        } else if is_setting(defaults, &path) {
            overrides.insert(name, value);
        } else {
            let hint = nearest_env_setting(defaults, &path)
                .map(|near| format!("; did you mean {near}?"))
                .unwrap_or_default();
            unknown.push(format!(
                "environment variable {name}: `{path}` is not a setting{hint} \
                 (expected {ENV_PREFIX}_SECTION__KEY, e.g. {ENV_PREFIX}_LIMITS__MAX_CONNECTIONS)"
            ));
        }
    }
    if unknown.is_empty() {
        Ok((overrides, lists))
    } else {
        unknown.sort();
        Err(ConfigError::Parse {
            message: unknown.join("\n"),
        })
    }
}

/// The setting path (`limits.max_connections`) a variable claims to set: `Some` for a
/// `HUBBUB_<SECTION>__<KEY>` name whose section is one of the settings' (the key may
/// still be unknown), `None` for every other variable, `HUBBUB_CONFIG` included.
fn setting_path(name: &str) -> Option<String> {
    if name.eq_ignore_ascii_case(CONFIG_PATH_ENV) {
        return None;
    }
    let path = env_path(name)?;
    let (section, key) = path.split_once('.')?;
    if key.is_empty() || !is_section(section) {
        return None;
    }
    Some(path)
}

/// Whether `section` is a top-level table of the settings: `nodes` included, which
/// the defaults leave out and the environment cannot set, and `http`, whose defaults
/// are all empty lists, which the config crate's tree drops (so it is asked of the
/// settings' own shape, not of `defaults`).
fn is_section(section: &str) -> bool {
    section == "nodes"
        || serde_json::to_value(Settings::default())
            .is_ok_and(|tree| tree.get(section).is_some_and(serde_json::Value::is_object))
}

/// The one warning line about `HUBBUB_` variables of `env` that are not settings and
/// are ignored (see [`setting_overrides`]), naming them (never their values); `None`
/// when there are none. `check-config` prints it and a node logs it at start.
pub fn environment_warning(env: impl IntoIterator<Item = (String, String)>) -> Option<String> {
    let ignored = ignored_variables(env);
    (!ignored.is_empty()).then(|| {
        format!(
            "ignoring {} environment variable{} that {} not settings (settings are \
             {ENV_PREFIX}_<SECTION>__<KEY>, e.g. {ENV_PREFIX}_LIMITS__MAX_CONNECTIONS): {}",
            ignored.len(),
            if ignored.len() == 1 { "" } else { "s" },
            if ignored.len() == 1 { "is" } else { "are" },
            ignored.join(", ")
        )
    })
}

/// The `HUBBUB_` variables of `env` that are not settings and are therefore ignored
/// (see [`setting_overrides`]), sorted; `HUBBUB_CONFIG`, which names the file, is not
/// among them.
fn ignored_variables(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut ignored: Vec<String> = env
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| {
            env_path(name).is_some()
                && !name.eq_ignore_ascii_case(CONFIG_PATH_ENV)
                && setting_path(name).is_none()
        })
        .collect();
    ignored.sort();
    ignored.dedup();
    ignored
}

/// The variable of the setting nearest to `path` (a known section, an unknown key),
/// when one is near enough to be a likely typo.
fn nearest_env_setting(defaults: &Config, path: &str) -> Option<String> {
    let (section, key) = path.split_once('.')?;
    let keys = defaults.get_table(section).ok()?;
    let mut candidates: Vec<String> = keys.keys().cloned().collect();
    candidates.extend(
        OPTIONAL_SETTINGS
            .iter()
            .filter_map(|setting| setting.strip_prefix(&format!("{section}.")))
            .map(str::to_owned),
    );
    let near = nearest(key, candidates.iter().map(String::as_str))?;
    Some(env_variable(&format!("{section}.{near}")))
}

/// Whether `path` (`section.key`) names a leaf of the settings tree.
fn is_setting(defaults: &Config, path: &str) -> bool {
    if OPTIONAL_SETTINGS.contains(&path) {
        return true;
    }
    let Some((section, key)) = path.split_once('.') else {
        return false;
    };
    if section.is_empty() || key.is_empty() || key.contains('.') {
        return false;
    }
    let Ok(sections) = defaults.get_table(section) else {
        return false;
    };
    sections.contains_key(key)
}

/// Integer settings given as a float, a boolean or a word. The config crate would round
/// `history = 1.5` and read `max_connections = true` or `=on` as 1; a count written that
/// way is a mistake, so it is reported in the crate's own words instead.
fn non_integer_counts(merged: &Config, defaults: &Config) -> Vec<String> {
    // `collect` rather than `get`: it keeps each value's origin (file or environment).
    let (Ok(default_tree), Ok(merged_tree)) = (defaults.collect(), merged.collect()) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (section, default_keys) in default_tree {
        let (ValueKind::Table(default_keys), Some(ValueKind::Table(keys))) = (
            default_keys.kind,
            merged_tree.get(&section).map(|value| &value.kind),
        ) else {
            // A section of another shape is left to deserialisation, which reports it.
            continue;
        };
        for (key, default) in default_keys {
            if !is_integer(&default.kind) {
                continue;
            }
            let Some(value) = keys.get(&key) else {
                continue;
            };
            let path = format!("{section}.{key}");
            let unexpected = match &value.kind {
                ValueKind::Float(float) => format!("floating point `{float}`"),
                ValueKind::Boolean(boolean) => format!("boolean `{boolean}`"),
                ValueKind::String(text) if text.parse::<i128>().is_err() => {
                    format!("string {text:?}")
                }
                _ => continue,
            };
            let origin = value
                .origin()
                .map(|origin| format!(" in {origin}"))
                .unwrap_or_default();
            problems.push(format!(
                "invalid type: {unexpected}, expected an integer for key `{path}`{origin}"
            ));
        }
    }
    problems.sort();
    problems
}

fn is_integer(kind: &ValueKind) -> bool {
    matches!(
        kind,
        ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_)
    )
}

/// One config file, read by us so a missing or unreadable file is reported plainly and
/// the path is used exactly as given (the config crate would also try `PATH.toml`).
#[derive(Debug, Clone)]
struct TomlFile {
    uri: String,
    text: String,
}

impl TomlFile {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Unreadable {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let text = match text.strip_prefix('\u{feff}') {
            Some(without_bom) => without_bom.to_owned(),
            None => text,
        };
        Ok(Self {
            uri: path.display().to_string(),
            text,
        })
    }
}

impl Source for TomlFile {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        FileFormat::Toml
            .parse(Some(&self.uri), &self.text)
            .map_err(|cause| config::ConfigError::FileParse {
                uri: Some(self.uri.clone()),
                cause,
            })
    }
}

impl TomlFile {
    /// The 1-based line of the file that sets `path` (`limits.max_connections`,
    /// `nodes[1].bind`, or a table such as `limitz`): a `key = ...` line under its
    /// table header, or the header itself. A plain scan of the lines, not a TOML
    /// parser (the text already parsed when this is asked): good for the files people
    /// write, `None` for what it cannot place (a key inside an inline table).
    fn line_of(&self, path: &str) -> Option<usize> {
        let mut table = String::new();
        let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, raw) in self.text.lines().enumerate() {
            let line = raw.trim();
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split_once("]]")) {
                let name = toml_key(name.0);
                let index = arrays.entry(name.clone()).or_insert(0);
                table = format!("{name}[{index}]");
                *index += 1;
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
                table = toml_key(name.0);
            } else if let Some((key, _)) = line.split_once('=') {
                if line.starts_with('#') {
                    continue;
                }
                let key = join_key(&table, &toml_key(key));
                if key == path || key.starts_with(&format!("{path}.")) {
                    return Some(i + 1);
                }
                continue;
            } else {
                continue;
            }
            if table == path || table.starts_with(&format!("{path}.")) {
                return Some(i + 1);
            }
        }
        None
    }
}

/// A TOML key as written (`max_connections`, `"quoted"`, `a . b`) in dotted form.
fn toml_key(written: &str) -> String {
    written
        .split('.')
        .map(|part| part.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

/// `field` under `table` (`limits` + `max_connections`); `field` alone at the root.
fn join_key(table: &str, field: &str) -> String {
    if table.is_empty() {
        field.to_owned()
    } else {
        format!("{table}.{field}")
    }
}

/// The unknown key and the valid ones from serde's `deny_unknown_fields` message:
/// "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", or "there are
/// no fields").
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let valid = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), valid))
}

/// The candidate nearest to `written` by edit distance, when it is near enough to be
/// a typo of it: at most a third of the longer of the two changed (one edit in
/// `max_conections`, not `x` for `ca`). Case is ignored.
fn nearest<'c>(written: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let written = written.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            (
                edit_distance(&written, &candidate.to_lowercase()),
                candidate,
            )
        })
        .filter(|(distance, candidate)| {
            *distance * 3 <= written.chars().count().max(candidate.chars().count())
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The edit distance of `a` and `b`: the fewest single-character insertions,
/// deletions, substitutions and swaps of two neighbours (`bnid` → `bind`, the
/// commonest typo) that turn one into the other (optimal string alignment). Keys are
/// short, so the `O(len(a) × len(b))` table is small.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: the distance of a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

impl Settings {
    /// Checks every rule and reports all broken ones at once, each as
    /// `section.key: reason`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The nodes the room logs' shards are placed over: `cluster.voters` when given,
    /// else the `[[nodes]]` names; this node alone when not clustered.
    pub fn cluster_nodes(&self) -> Vec<String> {
        if !self.cluster.enabled {
            vec![self.node.name.clone()]
        } else if !self.cluster.voters.is_empty() {
            self.cluster.voters.clone()
        } else {
            self.nodes.iter().map(|n| n.name.clone()).collect()
        }
    }

    /// Every broken rule, as `section.key: reason`; empty when the settings are valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Problems::default();
        check_node(&self.node, &mut problems);
        check_limits(&self.limits, &mut problems);
        check_rooms(&self.rooms, &mut problems);
        check_heartbeat(&self.heartbeat, &mut problems);
        check_log(&self.log, &mut problems);
        check_shutdown(&self.shutdown, &mut problems);
        check_socketio(&self.socketio, &mut problems);
        check_inbound_bytes(&self.limits, &self.socketio, &mut problems);
        check_cluster(&self.cluster, &mut problems);
        check_cluster_port(&self.cluster, &mut problems);
        check_raft(&self.cluster, &self.nodes, &mut problems);
        if self.cluster.enabled && !self.cluster_nodes().contains(&self.node.name) {
            if self.cluster.voters.is_empty() && self.nodes.is_empty() {
                problems.add(
                    "cluster.voters",
                    "must list the name of every node of the cluster when the nodes are not \
                     described by [[nodes]]: the room logs' Raft groups are placed over them, \
                     and they are never guessed from seeds",
                );
            } else {
                problems.add(
                    "cluster.voters",
                    format_args!(
                        "must include this node's name {:?}: every node of a cluster is listed",
                        self.node.name
                    ),
                );
            }
        }
        check_storage(&self.storage, &mut problems);
        let access =
            super::access::problems(&self.auth, &self.rooms.acl, &self.rate_limit, &self.http);
        for (key, reason) in access {
            problems.add(&key, reason);
        }
        check_nodes(&self.nodes, &mut problems);
        for (key, reason) in super::hooks::problems(&self.hooks, &self.webhooks) {
            problems.add(&key, reason);
        }
        check_cookie_strength(self, &mut problems);
        check_admin(self, &mut problems);
        check_api(&self.api, &mut problems);
        problems.0
    }
}

/// Broken rules found so far, in the order of the settings tree.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: &str, reason: impl std::fmt::Display) {
        self.0.push(format!("{key}: {reason}"));
    }
}

fn check_node(node: &NodeSettings, problems: &mut Problems) {
    check_node_name("node.name", &node.name, problems);
    if node.threads > MAX_THREADS {
        problems.add("node.threads", format!("must be at most {MAX_THREADS}"));
    }
}

/// The most threads `node.threads` may ask for, per runtime.
const MAX_THREADS: usize = 256;

/// Whether `name` may name a node (the rule of `node.name`): for node lists that
/// arrive at runtime (`POST /cluster/nodes`, a `SetNodes` log entry).
pub fn is_node_name(name: &str) -> bool {
    let mut problems = Problems(Vec::new());
    check_node_name("", name, &mut problems);
    problems.0.is_empty()
}

/// The rule for a node's name, wherever it is given (`node.name`, `nodes[i].name`).
fn check_node_name(key: &str, name: &str, problems: &mut Problems) {
    if name.is_empty() {
        problems.add(key, "must not be empty");
        return;
    }
    let chars = name.chars().count();
    if chars > MAX_NODE_NAME_CHARS {
        problems.add(
            key,
            format_args!("must be at most {MAX_NODE_NAME_CHARS} characters, not {chars}"),
        );
    }
    let bad: BTreeSet<char> = name
        .chars()
        .filter(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .collect();
    if !bad.is_empty() {
        let bad: String = bad.into_iter().collect();
        problems.add(
            key,
            format_args!("may only contain ASCII letters, digits, `_`, `.` and `-`, not {bad:?}"),
        );
    }
}

/// The most members `limits.presence_page` may ask one reply to list.
const MAX_PRESENCE_PAGE: usize = 10_000;
/// The largest `limits.max_reply_bytes`: a reply is one WebSocket frame.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// `max_reply_bytes` must hold a reply's frame, a full member page and one message at
/// its largest, so a page always carries at least one message within the bound.
fn check_reply_bounds(limits: &LimitSettings, problems: &mut Problems) {
    if !(1..=MAX_PRESENCE_PAGE).contains(&limits.presence_page) {
        problems.add(
            "limits.presence_page",
            format_args!(
                "must be between 1 and {MAX_PRESENCE_PAGE}, not {}",
                limits.presence_page
            ),
        );
        return;
    }
    let chars_bytes = limits
        .max_message_chars
        .saturating_mul(MAX_UTF8_BYTES_PER_CHAR);
    let content_bytes = match limits.max_message_bytes {
        0 => chars_bytes,
        bytes => bytes.min(chars_bytes),
    };
    let needed = crate::protocol::REPLY_ENVELOPE_BYTES
        .saturating_add(
            limits
                .presence_page
                .saturating_mul(crate::protocol::MAX_MEMBER_BYTES),
        )
        .saturating_add(crate::protocol::max_message_list_bytes(content_bytes));
    if limits.max_reply_bytes > MAX_REPLY_BYTES {
        problems.add(
            "limits.max_reply_bytes",
            format_args!(
                "must be at most {MAX_REPLY_BYTES} (16 MiB), not {}",
                limits.max_reply_bytes
            ),
        );
    } else if limits.max_reply_bytes < needed {
        problems.add(
            "limits.max_reply_bytes",
            format_args!(
                "must be at least {needed} so that a reply holds a page of \
                 limits.presence_page ({}) members and one message of {content_bytes} bytes \
                 (the smaller of limits.max_message_bytes and 4 bytes per character of \
                 limits.max_message_chars), not {}",
                limits.presence_page, limits.max_reply_bytes
            ),
        );
    }
}

fn check_limits(limits: &LimitSettings, problems: &mut Problems) {
    if limits.max_connections < 1 {
        problems.add("limits.max_connections", "must be at least 1");
    } else if limits.max_http_connections < limits.max_connections {
        problems.add(
            "limits.max_http_connections",
            format_args!(
                "must be at least limits.max_connections ({}), not {}: every WebSocket \
                 is one of them",
                limits.max_connections, limits.max_http_connections
            ),
        );
    }
    let frame_ok = (MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&limits.max_frame_bytes);
    if !frame_ok {
        problems.add(
            "limits.max_frame_bytes",
            format_args!(
                "must be between {MIN_FRAME_BYTES} and {MAX_FRAME_BYTES} (16 MiB), not {}",
                limits.max_frame_bytes
            ),
        );
    }
    if limits.max_message_chars < 1 {
        problems.add("limits.max_message_chars", "must be at least 1");
    } else if frame_ok {
        // Only against a frame size in range: a frame too small is already reported.
        let worst_case = limits
            .max_message_chars
            .saturating_mul(MAX_UTF8_BYTES_PER_CHAR);
        let room = limits.max_frame_bytes.saturating_sub(FRAME_ENVELOPE_BYTES);
        if worst_case > room {
            problems.add(
                "limits.max_message_chars",
                format_args!(
                    "{} characters can take {worst_case} bytes of UTF-8, more than \
                     limits.max_frame_bytes ({}) minus {FRAME_ENVELOPE_BYTES} bytes of \
                     envelope = {room}; lower limits.max_message_chars to at most {} \
                     or raise limits.max_frame_bytes",
                    limits.max_message_chars,
                    limits.max_frame_bytes,
                    room / MAX_UTF8_BYTES_PER_CHAR,
                ),
            );
        }
    }
    if limits.max_rooms_per_session < 1 {
        problems.add("limits.max_rooms_per_session", "must be at least 1");
    }
    if !(1..=MAX_OUTBOUND_QUEUE).contains(&limits.outbound_queue) {
        problems.add(
            "limits.outbound_queue",
            format_args!(
                "must be between 1 and {MAX_OUTBOUND_QUEUE}, not {}",
                limits.outbound_queue
            ),
        );
    }
    check_outbound_bytes(limits, problems);
    if limits.frames_per_second > 0 && limits.frames_burst < 1 {
        problems.add(
            "limits.frames_burst",
            "must be at least 1 when limits.frames_per_second is above 0 \
             (set frames_per_second = 0 to turn rate limiting off)",
        );
    }
    check_reply_bounds(limits, problems);
}

/// `limits.outbound_bytes` and `limits.node_outbound_bytes`.
fn check_outbound_bytes(limits: &LimitSettings, problems: &mut Problems) {
    let per_client = limits.outbound_bytes;
    if per_client != 0 && !(MIN_OUTBOUND_BYTES..=MAX_OUTBOUND_BYTES).contains(&per_client) {
        problems.add(
            "limits.outbound_bytes",
            format_args!(
                "must be 0 (no bound in bytes) or between {MIN_OUTBOUND_BYTES} and \
                 {MAX_OUTBOUND_BYTES} (1 GiB), not {per_client}"
            ),
        );
    }
    // A reply is queued whole: one that could not fit in the client's queue would close
    // every client that asks for a full page.
    let per_client_valid = (MIN_OUTBOUND_BYTES..=MAX_OUTBOUND_BYTES).contains(&per_client);
    let reply = limits.max_reply_bytes as u64;
    // Each bound out of its own range is reported once, by its own check.
    if per_client_valid && reply <= MAX_REPLY_BYTES as u64 && reply > per_client {
        problems.add(
            "limits.max_reply_bytes",
            format_args!(
                "must be at most limits.outbound_bytes ({per_client}), not {}: a reply \
                 larger than a client's queue would close the client that asked for it",
                limits.max_reply_bytes
            ),
        );
    }
    let node = limits.node_outbound_bytes;
    if node != 0 && node < per_client.max(MIN_OUTBOUND_BYTES) {
        problems.add(
            "limits.node_outbound_bytes",
            format_args!(
                "must be 0 (no budget) or at least limits.outbound_bytes ({per_client}) \
                 and {MIN_OUTBOUND_BYTES}, not {node}: one client alone may hold that much"
            ),
        );
    }
}

fn check_rooms(rooms: &RoomSettings, problems: &mut Problems) {
    if rooms.delivery_backlog_bytes == 0 {
        problems.add(
            "rooms.delivery_backlog_bytes",
            "must be at least 1 (1 sends every committed message through a read of the log)",
        );
    }
    if rooms.history_bytes != 0 && rooms.history_bytes < MIN_HISTORY_BYTES {
        problems.add(
            "rooms.history_bytes",
            format_args!(
                "must be 0 (no bound) or at least {MIN_HISTORY_BYTES}, not {}",
                rooms.history_bytes
            ),
        );
    }
    if !(1..=MAX_ROOM_HISTORY).contains(&rooms.history) {
        problems.add(
            "rooms.history",
            format_args!(
                "must be between 1 and {MAX_ROOM_HISTORY}, not {}",
                rooms.history
            ),
        );
    }
    if rooms.presence_batch_ms > MAX_PRESENCE_BATCH_MS {
        problems.add(
            "rooms.presence_batch_ms",
            format_args!(
                "must be at most {MAX_PRESENCE_BATCH_MS}, not {}",
                rooms.presence_batch_ms
            ),
        );
    }
}

fn check_heartbeat(heartbeat: &HeartbeatSettings, problems: &mut Problems) {
    if heartbeat.interval_ms < MIN_HEARTBEAT_INTERVAL_MS {
        problems.add(
            "heartbeat.interval_ms",
            format_args!(
                "must be at least {MIN_HEARTBEAT_INTERVAL_MS}, not {}",
                heartbeat.interval_ms
            ),
        );
    }
    for (key, value) in [
        ("heartbeat.interval_ms", heartbeat.interval_ms),
        ("heartbeat.timeout_ms", heartbeat.timeout_ms),
    ] {
        if value > MAX_HEARTBEAT_MS {
            problems.add(
                key,
                format_args!("must be at most {MAX_HEARTBEAT_MS} (a day), not {value}"),
            );
        }
    }
    if heartbeat.timeout_ms <= heartbeat.interval_ms {
        problems.add(
            "heartbeat.timeout_ms",
            format_args!(
                "must be greater than heartbeat.interval_ms ({}), not {}",
                heartbeat.interval_ms, heartbeat.timeout_ms
            ),
        );
    }
}

fn check_shutdown(shutdown: &super::ShutdownSettings, problems: &mut Problems) {
    if shutdown.timeout_secs == 0 {
        problems.add("shutdown.timeout_secs", "must be at least 1");
    }
    if shutdown.batch_size == 0 {
        problems.add("shutdown.batch_size", "must be at least 1");
    }
}

fn check_socketio(socketio: &super::SocketIoSettings, problems: &mut Problems) {
    if let Err(reason) = crate::socketio::Namespaces::new(&socketio.namespaces) {
        problems.add("socketio.namespaces", reason);
    }
    for (key, ms) in [
        ("socketio.ping_interval_ms", socketio.ping_interval_ms),
        ("socketio.ping_timeout_ms", socketio.ping_timeout_ms),
        ("socketio.connect_timeout_ms", socketio.connect_timeout_ms),
    ] {
        if !(MIN_HEARTBEAT_INTERVAL_MS..=MAX_HEARTBEAT_MS).contains(&ms) {
            problems.add(
                key,
                format_args!(
                    "must be between {MIN_HEARTBEAT_INTERVAL_MS} and {MAX_HEARTBEAT_MS}, not {ms}"
                ),
            );
        }
    }
    if !(1024..=MAX_FRAME_BYTES as u64).contains(&socketio.max_payload_bytes) {
        problems.add(
            "socketio.max_payload_bytes",
            format_args!(
                "must be between 1024 and {MAX_FRAME_BYTES}, not {}",
                socketio.max_payload_bytes
            ),
        );
    }
}

/// `limits.node_inbound_bytes`: room for the largest message one client may send on
/// either endpoint, or the budget would shed every such message alone.
fn check_inbound_bytes(
    limits: &LimitSettings,
    socketio: &super::SocketIoSettings,
    problems: &mut Problems,
) {
    let node = limits.node_inbound_bytes;
    let largest = (limits.max_frame_bytes as u64).max(socketio.max_payload_bytes);
    if node != 0 && node < largest {
        problems.add(
            "limits.node_inbound_bytes",
            format_args!(
                "must be 0 (no budget) or at least limits.max_frame_bytes ({}) and \
                 socketio.max_payload_bytes ({}), not {node}: one client's message may \
                 be that large",
                limits.max_frame_bytes, socketio.max_payload_bytes
            ),
        );
    }
}

fn check_log(log: &LogSettings, problems: &mut Problems) {
    let level = &log.level;
    if level.trim().is_empty() {
        // EnvFilter reads "" as "off"; whoever wants no logs can say `off`.
        problems.add(
            "log.level",
            "must not be empty (e.g. \"info\" or \"hubbub=debug,warn\")",
        );
    } else if let Err(error) = tracing_subscriber::EnvFilter::try_new(level) {
        problems.add(
            "log.level",
            format_args!("{level:?} is not a tracing filter: {error}"),
        );
    }
}

fn check_cluster(cluster: &ClusterSettings, problems: &mut Problems) {
    if !cluster.advertise.is_empty() {
        if let Err(reason) = check_dialable(&cluster.advertise) {
            problems.add(
                "cluster.advertise",
                format_args!("{:?} {reason}", cluster.advertise),
            );
        }
    } else if cluster.enabled && cluster.bind.ip().is_unspecified() {
        problems.add(
            "cluster.advertise",
            format_args!(
                "must be set when cluster.bind ({}) listens on every interface: peers \
                 cannot dial that address, so give the host:port they should dial",
                cluster.bind
            ),
        );
    }
    if cluster.enabled && cluster.cookie.is_blank() {
        problems.add(
            "cluster.cookie",
            "is required when cluster.enabled is true: every node of the cluster must \
             present the same secret (set it in the file or with HUBBUB_CLUSTER__COOKIE)",
        );
    }
    for (i, seed) in cluster.seeds.iter().enumerate() {
        if let Err(reason) = check_dialable(seed) {
            problems.add(
                "cluster.seeds",
                format_args!("seed {} {seed:?} {reason}", i + 1),
            );
        }
    }
    if cluster.heartbeat_ms < MIN_CLUSTER_HEARTBEAT_MS {
        problems.add(
            "cluster.heartbeat_ms",
            format_args!(
                "must be at least {MIN_CLUSTER_HEARTBEAT_MS}, not {}",
                cluster.heartbeat_ms
            ),
        );
    }
    let least_timeout = cluster
        .heartbeat_ms
        .saturating_mul(MISSED_HEARTBEATS_BEFORE_DOWN);
    if cluster.failure_timeout_ms < least_timeout {
        problems.add(
            "cluster.failure_timeout_ms",
            format_args!(
                "must be at least {MISSED_HEARTBEATS_BEFORE_DOWN} × cluster.heartbeat_ms \
                 ({MISSED_HEARTBEATS_BEFORE_DOWN} × {} = {least_timeout}), not {}: a peer \
                 must miss several heartbeats in a row before it is declared down, so one \
                 late heartbeat does not split the cluster",
                cluster.heartbeat_ms, cluster.failure_timeout_ms
            ),
        );
    }
    if let Some(tls) = &cluster.tls {
        for (key, path, holds) in [
            ("cluster.tls.cert", &tls.cert, PemHolds::Certificates),
            ("cluster.tls.key", &tls.key, PemHolds::PrivateKey),
            ("cluster.tls.ca", &tls.ca, PemHolds::Certificates),
        ] {
            if let Err(reason) = check_pem_file(path, holds) {
                problems.add(key, reason);
            }
        }
    }
}

// ---- the cluster port before authentication (membership/peer_port.rs) ----

/// Least `cluster.max_unauthenticated_bytes`: the cookie challenge's frames (names,
/// addresses, digests) take a few hundred bytes.
const MIN_UNAUTHENTICATED_BYTES: u64 = 1024;
/// Most `cluster.max_unauthenticated_bytes`: ractor_cluster's frame limit after
/// authentication (the largest envelope and framing room), beyond which the setting
/// would limit nothing.
const MAX_UNAUTHENTICATED_BYTES: u64 = 16 * 1024 * 1024 + 64 * 1024;
/// Most `cluster.max_unauthenticated`: far beyond any cluster's peers reconnecting at
/// once, and a bound on what those connections may hold together.
const MAX_UNAUTHENTICATED: usize = 100_000;

fn check_cluster_port(cluster: &ClusterSettings, problems: &mut Problems) {
    if !(1..=MAX_UNAUTHENTICATED).contains(&cluster.max_unauthenticated) {
        problems.add(
            "cluster.max_unauthenticated",
            format_args!(
                "must be between 1 and {MAX_UNAUTHENTICATED}, not {}: it is how many peer \
                 connections may be waiting to authenticate at once (0 would refuse every \
                 peer)",
                cluster.max_unauthenticated
            ),
        );
    }
    if !(MIN_UNAUTHENTICATED_BYTES..=MAX_UNAUTHENTICATED_BYTES)
        .contains(&cluster.max_unauthenticated_bytes)
    {
        problems.add(
            "cluster.max_unauthenticated_bytes",
            format_args!(
                "must be between {MIN_UNAUTHENTICATED_BYTES} and {MAX_UNAUTHENTICATED_BYTES}, \
                 not {}: the cookie challenge needs a few hundred bytes, and past the frame \
                 limit after authentication it would limit nothing",
                cluster.max_unauthenticated_bytes
            ),
        );
    }
}

// ---- end of the cluster port ----
/// The most shards `cluster.shards` may ask for: each is a Raft group with its own
/// tasks and heartbeats on every voter.
const MAX_SHARDS: u32 = 1024;

/// The most voters `cluster.replicas` may ask for per shard.
const MAX_REPLICAS: usize = 9;

fn check_raft(cluster: &ClusterSettings, entries: &[NodeEntry], problems: &mut Problems) {
    if !(1..=MAX_SHARDS).contains(&cluster.shards) {
        problems.add(
            "cluster.shards",
            format_args!("must be between 1 and {MAX_SHARDS}, not {}", cluster.shards),
        );
    }
    if !(1..=MAX_REPLICAS).contains(&cluster.replicas) {
        problems.add(
            "cluster.replicas",
            format_args!(
                "must be between 1 and {MAX_REPLICAS}, not {}",
                cluster.replicas
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, voter) in cluster.voters.iter().enumerate() {
        check_node_name(&format!("cluster.voters[{i}]"), voter, problems);
        if !seen.insert(voter.as_str()) {
            problems.add(
                "cluster.voters",
                format_args!("names {voter:?} more than once"),
            );
        }
    }
    if !entries.is_empty() && !cluster.voters.is_empty() {
        let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        for voter in &cluster.voters {
            if !names.contains(voter.as_str()) {
                problems.add(
                    "cluster.voters",
                    format_args!("names {voter:?}, which is not a [[nodes]] entry"),
                );
            }
        }
    }
}

fn check_storage(storage: &StorageSettings, problems: &mut Problems) {
    if let Err(reason) = storage.fsync_policy() {
        problems.add("storage.fsync", reason);
    }
    if storage.engine == StorageEngine::Durable {
        if storage.dir.as_os_str().is_empty() {
            problems.add("storage.dir", "must not be empty with engine \"durable\"");
        } else if storage.dir.exists() && !storage.dir.is_dir() {
            problems.add(
                "storage.dir",
                format_args!("{} exists and is not a directory", storage.dir.display()),
            );
        }
    }
}

/// Why `addr` is not a `host:port` a peer can dial, if it is not. The host is a name
/// (letters, digits, `-`, `.`, `_`), an IPv4 address or a bracketed IPv6 address, and
/// neither it nor the port may be the "any" placeholder.
fn check_dialable(addr: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. \"10.0.0.5:4370\" or \"node-a.internal:4370\"";
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("is not host:port ({EXAMPLE})"));
    };
    let ip = if let Some(inner) = host.strip_prefix('[') {
        let Some(Ok(ip)) = inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) else {
            return Err(format!(
                "has host {host:?}, which is not a bracketed IPv6 address"
            ));
        };
        Some(IpAddr::V6(ip))
    } else if host.contains(':') {
        return Err("has an IPv6 host without brackets (write \"[::1]:4370\")".to_owned());
    } else if host.is_empty() {
        return Err(format!("has no host ({EXAMPLE})"));
    } else if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "has host {host:?}, which is not a host name or IP address"
        ));
    } else {
        host.parse::<IpAddr>().ok()
    };
    if ip.is_some_and(|ip| ip.is_unspecified()) {
        return Err(format!(
            "has host {host}, which means every interface and cannot be dialled"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) => Err("has port 0, which cannot be dialled".to_owned()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "has port {port:?}, which is not a number from 1 to 65535"
        )),
    }
}

/// The `[[nodes]]` entries: each one's own fields, then that no two clash. Names,
/// and the addresses peers dial, must differ between all entries; listen addresses
/// only between entries on the same host (the same advertised host), so a file may
/// give every node `0.0.0.0:4370` on machines of its own.
fn check_nodes(entries: &[NodeEntry], problems: &mut Problems) {
    for (i, entry) in entries.iter().enumerate() {
        check_node_name(&format!("nodes[{i}].name"), &entry.name, problems);
        if !entry.advertise.is_empty() {
            if let Err(reason) = check_dialable(&entry.advertise) {
                problems.add(
                    &format!("nodes[{i}].advertise"),
                    format_args!("{:?} {reason}", entry.advertise),
                );
            }
        } else if entry.bind.port() == 0 {
            problems.add(
                &format!("nodes[{i}].bind"),
                format_args!(
                    "has port 0, which peers cannot dial: give it a port, or set \
                     nodes[{i}].advertise"
                ),
            );
        } else if entry.bind.ip().is_unspecified() {
            problems.add(
                &format!("nodes[{i}].advertise"),
                format_args!(
                    "must be set when bind ({}) listens on every interface: peers cannot \
                     dial that address, so give the host:port they should dial",
                    entry.bind
                ),
            );
        }
    }
    for (i, entry) in entries.iter().enumerate() {
        let earlier = &entries[..i];
        let clash = |same: &dyn Fn(&NodeEntry) -> bool| {
            earlier
                .iter()
                .position(same)
                .map(|j| format!("nodes[{j}] ({})", entries[j].name))
        };
        if let Some(other) = clash(&|e| e.name == entry.name) {
            problems.add(
                &format!("nodes[{i}].name"),
                format_args!(
                    "{:?} is also the name of {other}; --node chooses an entry by name, \
                     so names must be unique",
                    entry.name
                ),
            );
        }
        let host = advertised_host(entry);
        let same_host = |e: &NodeEntry| advertised_host(e).eq_ignore_ascii_case(&host);
        if entry.http_addr.port() != 0 {
            if let Some(other) = clash(&|e| same_host(e) && e.http_addr == entry.http_addr) {
                problems.add(
                    &format!("nodes[{i}].http_addr"),
                    format_args!(
                        "{} is also the http_addr of {other} on the same host",
                        entry.http_addr
                    ),
                );
            }
        }
        if entry.bind.port() != 0 {
            if let Some(other) = clash(&|e| same_host(e) && e.bind == entry.bind) {
                problems.add(
                    &format!("nodes[{i}].bind"),
                    format_args!(
                        "{} is also the bind of {other} on the same host",
                        entry.bind
                    ),
                );
            }
        }
        // Two entries without an advertise of their own advertise their binds, whose
        // clash is reported above.
        let advertise = entry.advertise_addr();
        let explicit = |e: &NodeEntry| !(entry.advertise.is_empty() && e.advertise.is_empty());
        if let Some(other) = clash(&|e| explicit(e) && e.advertise_addr() == advertise) {
            problems.add(
                &format!("nodes[{i}].advertise"),
                format_args!(
                    "{advertise} is also the address peers dial for {other}; each node \
                     needs its own"
                ),
            );
        }
    }
}

// ---- [admin] ----

/// `admin.addr`: empty, or an `IP:port` of its own (not the client listener's, nor
/// the cluster's).
/// The shortest server API key: a key is a bearer credential, so it must not be
/// guessable.
const MIN_API_KEY_CHARS: usize = 16;
/// `api.max_body_bytes`: room for a publish of a few words at the least, 16 MiB at most.
const MIN_API_BODY_BYTES: usize = 1_024;
const MAX_API_BODY_BYTES: usize = 16 * 1024 * 1024;

fn check_api(api: &super::ApiSettings, problems: &mut Problems) {
    for (i, key) in api.keys.iter().enumerate() {
        let chars = key.expose().chars().count();
        if key.is_blank() {
            problems.add(&format!("api.keys[{i}]"), "must not be empty");
        } else if chars < MIN_API_KEY_CHARS {
            problems.add(
                &format!("api.keys[{i}]"),
                format_args!(
                    "is {chars} characters long, fewer than the {MIN_API_KEY_CHARS} a key needs \
                     (make one with `openssl rand -hex 32`)"
                ),
            );
        } else if key
            .expose()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            problems.add(
                &format!("api.keys[{i}]"),
                "must not contain whitespace or control characters",
            );
        }
    }
    if !(MIN_API_BODY_BYTES..=MAX_API_BODY_BYTES).contains(&api.max_body_bytes) {
        problems.add(
            "api.max_body_bytes",
            format_args!("must be between {MIN_API_BODY_BYTES} and {MAX_API_BODY_BYTES}"),
        );
    }
    if api.requests_per_second > 0 && api.burst == 0 {
        problems.add(
            "api.burst",
            "must be at least 1 while api.requests_per_second is not 0",
        );
    }
}

fn check_admin(settings: &Settings, problems: &mut Problems) {
    let addr = settings.admin.addr.trim();
    if addr.is_empty() {
        return;
    }
    let Ok(admin) = addr.parse::<std::net::SocketAddr>() else {
        problems.add(
            "admin.addr",
            format_args!(
                "{addr:?} is not an \"IP:port\" address (e.g. \"127.0.0.1:9090\"); \
                 leave it empty for no admin listener"
            ),
        );
        return;
    };
    if admin.port() == 0 {
        return;
    }
    if admin == settings.node.http_addr {
        problems.add(
            "admin.addr",
            format_args!("{admin} is also node.http_addr; give the admin listener its own port"),
        );
    } else if settings.cluster.enabled && admin == settings.cluster.bind {
        problems.add(
            "admin.addr",
            format_args!("{admin} is also cluster.bind; give the admin listener its own port"),
        );
    }
}

// ---- the cluster cookie's strength ----

/// The cookies written in hubbub's own examples (cluster.toml, docker-compose.yml,
/// default.toml, docs/): public, so as good as none.
const EXAMPLE_COOKIES: &[&str] = &[
    "change-me-to-a-long-random-secret",
    // The auth secret's example in default.toml, which is as easy to paste.
    "a-long-random-secret-of-at-least-32-bytes",
];
/// The shortest cookie a cluster reachable from other machines may use.
const MIN_COOKIE_CHARS: usize = 32;
/// How to make a cookie, said wherever one is refused.
const MAKE_A_COOKIE: &str = "make one with `openssl rand -hex 32` and give every node the \
     same one as HUBBUB_CLUSTER__COOKIE";

/// Why the enabled cluster's cookie is too weak to guard it (an example cookie, or
/// fewer than [`MIN_COOKIE_CHARS`] characters); `None` when it is strong enough, blank
/// (reported as missing) or the cluster is off.
fn weak_cookie(settings: &Settings) -> Option<String> {
    let cluster = &settings.cluster;
    if !cluster.enabled || cluster.cookie.is_blank() {
        return None;
    }
    let cookie = cluster.cookie.expose();
    if EXAMPLE_COOKIES.contains(&cookie.trim()) {
        return Some("is the example cookie from hubbub's own files, which anyone can read".into());
    }
    let chars = cookie.chars().count();
    (chars < MIN_COOKIE_CHARS).then(|| {
        format!("is {chars} characters long, fewer than the {MIN_COOKIE_CHARS} a cookie needs")
    })
}

/// Whether every address the cluster listens on or dials (`cluster.bind`,
/// `cluster.advertise`, `cluster.seeds`, each `[[nodes]]` entry's `bind` and
/// `advertise`) is a loopback address (`127.0.0.0/8`, `[::1]`, `localhost`): a
/// cluster that no other machine can reach, as when trying `cluster.toml` out.
fn cluster_is_loopback_only(settings: &Settings) -> bool {
    let cluster = &settings.cluster;
    let listens = std::iter::once(cluster.bind)
        .chain(settings.nodes.iter().map(|entry| entry.bind))
        .all(|addr| addr.ip().is_loopback());
    let dials = std::iter::once(cluster.advertise.as_str())
        .chain(cluster.seeds.iter().map(String::as_str))
        .chain(settings.nodes.iter().map(|entry| entry.advertise.as_str()))
        .filter(|addr| !addr.is_empty())
        .all(is_loopback_host_port);
    listens && dials
}

/// Whether the host of `host:port` is a loopback address or `localhost`.
fn is_loopback_host_port(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A weak cookie stops a cluster that other machines can reach. On loopback only it
/// is let through, with a warning ([`warnings`]), so the one-machine try-out of
/// `cluster.toml` and the test harnesses keep working.
fn check_cookie_strength(settings: &Settings, problems: &mut Problems) {
    if let Some(weak) = weak_cookie(settings) {
        if !cluster_is_loopback_only(settings) {
            problems.add(
                "cluster.cookie",
                format_args!(
                    "{weak}; a peer that knows it joins the cluster and reads every \
                     room: {MAKE_A_COOKIE} (a weak cookie is allowed only while every \
                     cluster address is a loopback address, for a try-out on one machine)"
                ),
            );
        }
    }
}

/// What is wrong in `settings` but does not stop the node, one line each: a weak
/// cookie on a loopback-only cluster. `check-config` prints these and a node logs them
/// at start; [`environment_warning`] is the other warning.
pub fn warnings(settings: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(weak) = weak_cookie(settings) {
        if cluster_is_loopback_only(settings) {
            warnings.push(format!(
                "cluster.cookie: {weak}; accepted only because every cluster address is \
                 a loopback address; before other machines join, {MAKE_A_COOKIE}"
            ));
        }
    }
    warnings
}

/// The host part of the address peers dial for `entry`, which tells the entries that
/// share a machine.
fn advertised_host(entry: &NodeEntry) -> String {
    let addr = entry.advertise_addr();
    addr.rsplit_once(':')
        .map_or(addr.as_str(), |(host, _)| host)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LogFormat, Secret};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A TOML file under the temp dir, removed on drop.
    struct TempToml(PathBuf);

    impl TempToml {
        fn new(text: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "hubbub-config-unit-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).expect("write temp config");
            Self(path)
        }

        fn source(&self) -> ConfigSource {
            ConfigSource::File(self.0.clone())
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn load_toml(text: &str, env: Vec<(String, String)>) -> Result<Settings, ConfigError> {
        let file = TempToml::new(text);
        load_with_env(&file.source(), None, env)
    }

    /// The problems `validate` reports for settings changed by `change`.
    fn problems_after(change: impl FnOnce(&mut Settings)) -> Vec<String> {
        let mut settings = Settings::default();
        change(&mut settings);
        // A cluster lists its nodes (tested on its own below); these tests are about
        // other rules.
        if settings.cluster.enabled
            && settings.cluster.voters.is_empty()
            && settings.nodes.is_empty()
        {
            settings.cluster.voters = vec![settings.node.name.clone()];
        }
        match settings.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems,
            Err(other) => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Asserts exactly one problem, and that it starts with `key: `.
    fn assert_one_problem(problems: &[String], key: &str) {
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with(&format!("{key}: ")),
            "expected a problem with {key}, got {problems:#?}"
        );
    }

    #[test]
    fn source_prefers_the_argument_then_the_env_var_then_defaults() {
        let arg = PathBuf::from("/etc/hubbub/arg.toml");
        assert_eq!(
            ConfigSource::choose(Some(arg.clone()), Some("/from/env.toml".into())),
            ConfigSource::File(arg)
        );
        assert_eq!(
            ConfigSource::choose(None, Some("/from/env.toml".into())),
            ConfigSource::File("/from/env.toml".into())
        );
        assert_eq!(
            ConfigSource::choose(None, Some(OsString::new())),
            ConfigSource::Defaults
        );
        assert_eq!(ConfigSource::choose(None, None), ConfigSource::Defaults);
    }

    #[test]
    fn defaults_only_gives_the_built_in_defaults() {
        let settings =
            load_with_env(&ConfigSource::Defaults, None, no_env()).expect("defaults load");
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn built_in_defaults_are_valid() {
        assert_eq!(Settings::default().problems(), Vec::<String>::new());
    }

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest() {
        let settings = load_toml(
            "[limits]\nmax_connections = 7\n\n[log]\nformat = \"json\"\n",
            no_env(),
        )
        .expect("file loads");
        let mut expected = Settings::default();
        expected.limits.max_connections = 7;
        expected.log.format = LogFormat::Json;
        assert_eq!(settings, expected);
    }

    #[test]
    fn env_overrides_file() {
        let settings = load_toml(
            "[limits]\nmax_connections = 7\nmax_rooms_per_session = 3\n",
            env(&[("HUBBUB_LIMITS__MAX_CONNECTIONS", "5")]),
        )
        .expect("file and env load");
        assert_eq!(settings.limits.max_connections, 5);
        assert_eq!(settings.limits.max_rooms_per_session, 3);
    }

    #[test]
    fn env_keys_with_underscores_reach_nested_settings() {
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[
                ("HUBBUB_LIMITS__MAX_CONNECTIONS", "5"),
                ("HUBBUB_NODE__HTTP_ADDR", "0.0.0.0:9000"),
                ("HUBBUB_ROOMS__IDLE_TTL_SECS", "0"),
                ("HUBBUB_LIMITS__FRAMES_PER_SECOND", "0"),
                ("HUBBUB_HEARTBEAT__TIMEOUT_MS", "90000"),
                ("HUBBUB_LOG__FORMAT", "json"),
                ("HUBBUB_LOG__LEVEL", "hubbub=debug,warn"),
                ("HUBBUB_NODE__NAME", "node-a"),
            ]),
        )
        .expect("env loads");
        assert_eq!(settings.limits.max_connections, 5);
        assert_eq!(settings.node.http_addr, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(settings.rooms.idle_ttl_secs, 0);
        assert_eq!(settings.limits.frames_per_second, 0);
        assert_eq!(settings.heartbeat.timeout_ms, 90_000);
        assert_eq!(settings.log.format, LogFormat::Json);
        assert_eq!(settings.log.level, "hubbub=debug,warn");
        assert_eq!(settings.node.name, "node-a");
    }

    #[test]
    fn env_string_settings_keep_their_text() {
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_NODE__NAME", "007")]),
        )
        .expect("env loads");
        assert_eq!(settings.node.name, "007");
    }

    #[test]
    fn config_path_variable_and_foreign_variables_are_not_settings() {
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[
                ("HUBBUB_CONFIG", "/somewhere/hubbub.toml"),
                ("PATH", "/usr/bin"),
                ("HUBBUBBLE", "1"),
            ]),
        )
        .expect("ignored variables do not fail loading");
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn unknown_key_of_a_known_section_names_the_variable_and_the_nearest() {
        let error = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[
                ("HUBBUB_LIMITS__MAX_CONECTIONS", "5"),
                ("HUBBUB_CLUSTER__TLS__CERTT", "x"),
            ]),
        )
        .expect_err("unknown keys fail");
        let message = error.to_string();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        assert!(
            message.contains("environment variable HUBBUB_LIMITS__MAX_CONECTIONS: `limits.max_conections` is not a setting; did you mean HUBBUB_LIMITS__MAX_CONNECTIONS?"),
            "{message}"
        );
        assert!(
            message.contains("HUBBUB_CLUSTER__TLS__CERTT")
                && message.contains("did you mean HUBBUB_CLUSTER__TLS__CERT?"),
            "{message}"
        );
    }

    /// What a Kubernetes Service named `hubbub` puts in every pod's environment.
    const KUBERNETES_SERVICE_ENV: &[(&str, &str)] = &[
        ("HUBBUB_PORT", "tcp://10.96.0.12:8080"),
        ("HUBBUB_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("HUBBUB_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("HUBBUB_PORT_8080_TCP_PORT", "8080"),
        ("HUBBUB_PORT_8080_TCP_PROTO", "tcp"),
        ("HUBBUB_SERVICE_HOST", "10.96.0.12"),
        ("HUBBUB_SERVICE_PORT", "8080"),
        ("HUBBUB_SERVICE_PORT_HTTP", "8080"),
    ];

    #[test]
    fn variables_that_are_not_settings_are_ignored_with_one_warning() {
        let mut pairs = KUBERNETES_SERVICE_ENV.to_vec();
        pairs.extend([
            ("HUBBUB_LIMITS__MAX_CONNECTIONS", "5"),
            ("HUBBUB_CONFIG", ""),
            ("HUBBUB_LOG", "x"),
            ("HUBBUB_NOSUCHSECTION__KEY", "x"),
            ("PATH", "/usr/bin"),
        ]);
        let settings = load_with_env(&ConfigSource::Defaults, None, env(&pairs))
            .expect("a Kubernetes Service's variables do not stop a node");
        assert_eq!(settings.limits.max_connections, 5);

        let warning = environment_warning(env(&pairs)).expect("one warning line");
        assert!(!warning.contains('\n'), "{warning}");
        assert!(
            warning.starts_with("ignoring 10 environment variables"),
            "{warning}"
        );
        for (name, _) in KUBERNETES_SERVICE_ENV {
            assert!(warning.contains(name), "{name}: {warning}");
        }
        assert!(warning.contains("HUBBUB_LOG, "), "{warning}");
        assert!(warning.contains("HUBBUB_NOSUCHSECTION__KEY"), "{warning}");
        let (_, listed) = warning.rsplit_once("): ").expect("a list of names");
        let listed: Vec<&str> = listed.split(", ").collect();
        assert_eq!(listed.len(), 10, "{warning}");
        for not_listed in ["HUBBUB_LIMITS__MAX_CONNECTIONS", "HUBBUB_CONFIG", "PATH"] {
            assert!(!listed.contains(&not_listed), "{not_listed}: {warning}");
        }
        assert!(
            !warning.contains("10.96.0.12"),
            "values are not shown: {warning}"
        );
        assert_eq!(
            environment_warning(env(&[
                ("HUBBUB_LIMITS__MAX_CONNECTIONS", "5"),
                ("HUBBUB_CONFIG", "/etc/hubbub.toml")
            ])),
            None
        );
        let one = environment_warning(env(&[("HUBBUB_PORT", "tcp://x:1")])).expect("a warning");
        assert!(
            one.starts_with("ignoring 1 environment variable that is not"),
            "{one}"
        );
    }

    #[test]
    fn bad_env_value_names_the_key() {
        let error = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_LIMITS__MAX_CONNECTIONS", "lots")]),
        )
        .expect_err("non-number fails");
        let message = error.to_string();
        assert!(message.contains("limits.max_connections"), "{message}");
        assert!(message.contains("lots"), "{message}");
    }

    #[test]
    fn bad_value_type_in_file_names_the_key_and_file() {
        let file = TempToml::new("[limits]\nmax_connections = \"abc\"\n");
        let error = load_with_env(&file.source(), None, no_env()).expect_err("string is no count");
        let message = error.to_string();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        assert!(message.contains("`limits.max_connections`"), "{message}");
        assert!(message.contains("\"abc\""), "{message}");
        assert!(message.contains(&file.0.display().to_string()), "{message}");
    }

    #[test]
    fn counts_must_be_written_as_integers() {
        for (text, shown) in [
            ("[rooms]\nhistory = 1.5\n", "floating point `1.5`"),
            ("[limits]\nmax_connections = true\n", "boolean `true`"),
            ("[heartbeat]\ninterval_ms = 2e4\n", "floating point `20000`"),
        ] {
            let file = TempToml::new(text);
            let message = load_with_env(&file.source(), None, no_env())
                .expect_err("a non-integer count fails")
                .to_string();
            assert!(message.contains(shown), "{text}: {message}");
            assert!(
                message.contains(&file.0.display().to_string()),
                "{text}: {message}"
            );
        }
        let message = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_LIMITS__MAX_CONNECTIONS", "on")]),
        )
        .expect_err("a word is no count")
        .to_string();
        assert_eq!(
            message,
            "invalid type: string \"on\", expected an integer for key \
             `limits.max_connections` in the environment"
        );
    }

    #[test]
    fn negative_count_names_the_key() {
        let message = load_toml("[limits]\nmax_connections = -1\n", no_env())
            .expect_err("negative count fails")
            .to_string();
        assert!(message.contains("limits.max_connections"), "{message}");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let message = load_toml("[limits]\nmax_conections = 5\n", no_env())
            .expect_err("unknown key fails")
            .to_string();
        assert!(message.contains("max_conections"), "{message}");
    }

    #[test]
    fn unknown_section_in_file_is_named() {
        let message = load_toml("[limitz]\nmax_connections = 5\n", no_env())
            .expect_err("unknown section fails")
            .to_string();
        assert!(message.contains("limitz"), "{message}");
    }

    #[test]
    fn bad_log_format_names_the_key() {
        let message = load_toml("[log]\nformat = \"xml\"\n", no_env())
            .expect_err("unknown format fails")
            .to_string();
        assert!(message.contains("xml"), "{message}");
        assert!(message.contains("log.format"), "{message}");
    }

    #[test]
    fn bad_listen_address_names_the_key() {
        let message = load_toml("[node]\nhttp_addr = \"localhost\"\n", no_env())
            .expect_err("address without port fails")
            .to_string();
        assert!(message.contains("node.http_addr"), "{message}");
    }

    #[test]
    fn toml_syntax_error_names_the_file() {
        let file = TempToml::new("[limits\nmax_connections = 5\n");
        let error = load_with_env(&file.source(), None, no_env()).expect_err("bad TOML fails");
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&file.0.display().to_string()), "{message}");
    }

    #[test]
    fn odd_inputs_give_errors_not_panics() {
        for text in [
            "",
            "\u{feff}[limits]\nmax_connections = 3\n",
            "limits = 5\n",
            "[limits]\nmax_connections = 1e400\n",
            "[limits]\nmax_connections = 99999999999999999999999\n",
            "[limits]\nmax_connections = [1, 2]\n",
            "[limits]\nmax_connections = { a = 1 }\n",
            "[heartbeat]\ninterval_ms = 18446744073709551615\n",
            "[rooms]\nhistory = 1.5\n",
            "[node]\nname = 5\n",
            "[[node]]\nname = \"a\"\n",
            "\0\u{1}",
        ] {
            let _ = load_toml(text, no_env());
        }
        let bom = load_toml("\u{feff}[limits]\nmax_connections = 3\n", no_env())
            .expect("a byte-order mark is skipped");
        assert_eq!(bom.limits.max_connections, 3);
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = std::env::temp_dir().join("hubbub-config-unit-does-not-exist.toml");
        let error = load_with_env(&ConfigSource::File(path.clone()), None, no_env())
            .expect_err("missing file fails");
        assert!(matches!(error, ConfigError::NotFound { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn missing_file_is_not_looked_for_under_another_name() {
        let file = TempToml::new("[limits]\nmax_connections = 3\n");
        let without_extension = file.0.with_extension("");
        let error = load_with_env(&ConfigSource::File(without_extension), None, no_env())
            .expect_err("the exact path is used");
        assert!(matches!(error, ConfigError::NotFound { .. }), "{error:?}");
    }

    #[test]
    fn directory_is_unreadable_and_named() {
        let dir = std::env::temp_dir();
        let error = load_with_env(&ConfigSource::File(dir.clone()), None, no_env())
            .expect_err("a directory is no file");
        assert!(matches!(error, ConfigError::Unreadable { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&dir.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn node_name_rules() {
        assert_one_problem(&problems_after(|s| s.node.name.clear()), "node.name");
        assert_one_problem(
            &problems_after(|s| s.node.name = "a".repeat(65)),
            "node.name",
        );
        assert!(problems_after(|s| s.node.name = "a".repeat(64)).is_empty());
        let problems = problems_after(|s| s.node.name = "node one/ä".to_owned());
        assert_one_problem(&problems, "node.name");
        assert!(problems[0].contains('/'), "{problems:?}");
        assert!(problems_after(|s| s.node.name = "Node_1.eu-west".to_owned()).is_empty());
    }

    #[test]
    fn node_threads_is_bounded_and_zero_means_one_per_core() {
        assert_eq!(
            problems_after(|s| s.node.threads = 257),
            ["node.threads: must be at most 256"]
        );
        assert!(problems_after(|s| s.node.threads = 256).is_empty());
        let mut node = crate::config::NodeSettings::default();
        assert!(node.thread_count() >= 1);
        node.threads = 3;
        assert_eq!(node.thread_count(), 3);
    }

    #[test]
    fn max_connections_must_be_at_least_one() {
        let problems = problems_after(|s| s.limits.max_connections = 0);
        assert_eq!(problems, ["limits.max_connections: must be at least 1"]);
    }

    // ---- the cluster port before authentication ----

    #[test]
    fn the_cluster_port_limits_must_be_in_range() {
        for (bad, key) in [
            (
                (|s: &mut Settings| s.cluster.max_unauthenticated = 0) as fn(&mut Settings),
                "cluster.max_unauthenticated",
            ),
            (
                |s: &mut Settings| s.cluster.max_unauthenticated = 100_001,
                "cluster.max_unauthenticated",
            ),
            (
                |s: &mut Settings| s.cluster.max_unauthenticated_bytes = 1_023,
                "cluster.max_unauthenticated_bytes",
            ),
            (
                |s: &mut Settings| s.cluster.max_unauthenticated_bytes = 16_842_753,
                "cluster.max_unauthenticated_bytes",
            ),
        ] {
            assert_one_problem(&problems_after(bad), key);
        }
        assert!(problems_after(|s| {
            s.cluster.max_unauthenticated = 1;
            s.cluster.max_unauthenticated_bytes = 16_842_752;
        })
        .is_empty());
    }

    #[test]
    fn max_frame_bytes_must_be_in_range() {
        // Too small also leaves no room for a message; only the range is reported.
        assert_one_problem(
            &problems_after(|s| s.limits.max_frame_bytes = 255),
            "limits.max_frame_bytes",
        );
        assert_one_problem(
            &problems_after(|s| s.limits.max_frame_bytes = 16 * 1024 * 1024 + 1),
            "limits.max_frame_bytes",
        );
        assert!(problems_after(|s| s.limits.max_frame_bytes = 16 * 1024 * 1024).is_empty());
    }

    #[test]
    fn max_message_chars_must_be_at_least_one() {
        assert_one_problem(
            &problems_after(|s| s.limits.max_message_chars = 0),
            "limits.max_message_chars",
        );
    }

    #[test]
    fn message_must_fit_in_a_frame_and_both_keys_are_named() {
        let problems = problems_after(|s| {
            s.limits.max_frame_bytes = 4096;
            s.limits.max_message_chars = 769;
        });
        assert_one_problem(&problems, "limits.max_message_chars");
        assert!(
            problems[0].contains("limits.max_frame_bytes"),
            "{problems:?}"
        );
        // 768 * 4 = 3072 = 4096 - 1024 fits exactly.
        assert!(problems_after(|s| {
            s.limits.max_frame_bytes = 4096;
            s.limits.max_message_chars = 768;
        })
        .is_empty());
        // No overflow on absurd values.
        assert_one_problem(
            &problems_after(|s| s.limits.max_message_chars = usize::MAX),
            "limits.max_message_chars",
        );
    }

    #[test]
    fn max_rooms_per_session_must_be_at_least_one() {
        assert_one_problem(
            &problems_after(|s| s.limits.max_rooms_per_session = 0),
            "limits.max_rooms_per_session",
        );
    }

    #[test]
    fn outbound_queue_must_be_in_range() {
        assert_one_problem(
            &problems_after(|s| s.limits.outbound_queue = 0),
            "limits.outbound_queue",
        );
        assert_one_problem(
            &problems_after(|s| s.limits.outbound_queue = 1_000_001),
            "limits.outbound_queue",
        );
        assert!(problems_after(|s| s.limits.outbound_queue = 1_000_000).is_empty());
    }

    #[test]
    fn a_reply_must_fit_in_a_clients_queue() {
        assert_one_problem(
            &problems_after(|s| {
                s.limits.outbound_bytes = 100_000;
                s.limits.max_reply_bytes = 100_001;
            }),
            "limits.max_reply_bytes",
        );
        assert!(problems_after(|s| {
            s.limits.outbound_bytes = 0;
            s.limits.max_reply_bytes = 16 * 1024 * 1024;
        })
        .is_empty());
    }

    #[test]
    fn outbound_bytes_is_zero_or_in_range() {
        for bad in [1, MIN_OUTBOUND_BYTES - 1, MAX_OUTBOUND_BYTES + 1] {
            assert_one_problem(
                &problems_after(|s| {
                    s.limits.outbound_bytes = bad;
                    s.limits.node_outbound_bytes = 0;
                }),
                "limits.outbound_bytes",
            );
        }
        // The smallest bound that still holds a default reply (limits.max_reply_bytes).
        for good in [0, 262_144] {
            assert!(problems_after(|s| s.limits.outbound_bytes = good).is_empty());
        }
        assert!(problems_after(|s| {
            s.limits.outbound_bytes = MAX_OUTBOUND_BYTES;
            s.limits.node_outbound_bytes = MAX_OUTBOUND_BYTES;
        })
        .is_empty());
    }

    #[test]
    fn node_outbound_bytes_is_zero_or_at_least_one_clients_bound() {
        assert_one_problem(
            &problems_after(|s| s.limits.node_outbound_bytes = 1_048_575),
            "limits.node_outbound_bytes",
        );
        assert_one_problem(
            &problems_after(|s| {
                s.limits.outbound_bytes = 0;
                s.limits.node_outbound_bytes = MIN_OUTBOUND_BYTES - 1;
            }),
            "limits.node_outbound_bytes",
        );
        for good in [0, 1_048_576] {
            assert!(problems_after(|s| s.limits.node_outbound_bytes = good).is_empty());
        }
    }

    #[test]
    fn max_reply_bytes_must_hold_a_member_page_and_the_largest_message() {
        // Defaults: 2048 + 100 × 384 + 1024 + 2 × 16384 = 74240.
        assert!(problems_after(|s| s.limits.max_reply_bytes = 74_240).is_empty());
        assert_one_problem(
            &problems_after(|s| s.limits.max_reply_bytes = 74_239),
            "limits.max_reply_bytes",
        );
        assert_one_problem(
            &problems_after(|s| s.limits.max_reply_bytes = 0),
            "limits.max_reply_bytes",
        );
        assert_one_problem(
            &problems_after(|s| s.limits.max_reply_bytes = 16 * 1024 * 1024 + 1),
            "limits.max_reply_bytes",
        );
        // A larger page or larger messages need more; the message bound with
        // max_message_bytes = 0 is 4 bytes per character.
        assert_one_problem(
            &problems_after(|s| s.limits.presence_page = 1_000),
            "limits.max_reply_bytes",
        );
        assert!(problems_after(|s| {
            s.limits.max_message_bytes = 0;
            s.limits.max_message_chars = 100;
            s.limits.max_reply_bytes = 2048 + 100 * 384 + 1024 + 800;
        })
        .is_empty());
    }

    #[test]
    fn presence_page_must_be_in_range() {
        for page in [0, 10_001] {
            assert_one_problem(
                &problems_after(|s| s.limits.presence_page = page),
                "limits.presence_page",
            );
        }
        assert!(problems_after(|s| s.limits.presence_page = 1).is_empty());
    }

    #[test]
    fn frames_burst_is_needed_only_when_rate_limited() {
        assert_one_problem(
            &problems_after(|s| s.limits.frames_burst = 0),
            "limits.frames_burst",
        );
        assert!(problems_after(|s| {
            s.limits.frames_per_second = 0;
            s.limits.frames_burst = 0;
        })
        .is_empty());
    }

    #[test]
    fn delivery_backlog_bytes_is_at_least_one() {
        assert_one_problem(
            &problems_after(|s| s.rooms.delivery_backlog_bytes = 0),
            "rooms.delivery_backlog_bytes",
        );
        assert!(problems_after(|s| s.rooms.delivery_backlog_bytes = 1).is_empty());
    }

    #[test]
    fn history_bytes_is_off_or_at_least_a_mebibyte() {
        assert_one_problem(
            &problems_after(|s| s.rooms.history_bytes = 4096),
            "rooms.history_bytes",
        );
        assert!(problems_after(|s| s.rooms.history_bytes = 0).is_empty());
        assert!(problems_after(|s| s.rooms.history_bytes = 1024 * 1024).is_empty());
    }

    #[test]
    fn room_history_must_be_in_range() {
        assert_one_problem(&problems_after(|s| s.rooms.history = 0), "rooms.history");
        assert_one_problem(
            &problems_after(|s| s.rooms.presence_batch_ms = 10_001),
            "rooms.presence_batch_ms",
        );
        assert!(problems_after(|s| s.rooms.presence_batch_ms = 10_000).is_empty());
        assert_one_problem(
            &problems_after(|s| s.rooms.history = 100_001),
            "rooms.history",
        );
        assert!(problems_after(|s| s.rooms.history = 100_000).is_empty());
    }

    #[test]
    fn socketio_settings_are_checked() {
        assert!(problems_after(|_| {}).is_empty());
        assert_one_problem(
            &problems_after(|s| s.socketio.namespaces = vec!["chat".into()]),
            "socketio.namespaces",
        );
        assert_one_problem(
            &problems_after(|s| s.socketio.namespaces = vec!["/a,b".into()]),
            "socketio.namespaces",
        );
        assert!(problems_after(|s| s.socketio.namespaces = vec![]).is_empty());
        assert_one_problem(
            &problems_after(|s| s.socketio.ping_timeout_ms = 99),
            "socketio.ping_timeout_ms",
        );
        assert_one_problem(
            &problems_after(|s| s.socketio.connect_timeout_ms = 86_400_001),
            "socketio.connect_timeout_ms",
        );
        assert_one_problem(
            &problems_after(|s| s.socketio.max_payload_bytes = 1023),
            "socketio.max_payload_bytes",
        );
    }

    #[test]
    fn max_http_connections_is_at_least_max_connections() {
        assert!(problems_after(|s| s.limits.max_http_connections = 10_000).is_empty());
        assert_one_problem(
            &problems_after(|s| s.limits.max_http_connections = 9_999),
            "limits.max_http_connections",
        );
    }

    #[test]
    fn node_inbound_bytes_is_zero_or_room_for_the_largest_message() {
        assert!(problems_after(|s| s.limits.node_inbound_bytes = 0).is_empty());
        assert!(problems_after(|s| s.limits.node_inbound_bytes = 100_000).is_empty());
        assert_one_problem(
            &problems_after(|s| s.limits.node_inbound_bytes = 99_999),
            "limits.node_inbound_bytes",
        );
        assert_one_problem(
            &problems_after(|s| {
                s.socketio.max_payload_bytes = 1024;
                s.limits.node_inbound_bytes = 65_535;
            }),
            "limits.node_inbound_bytes",
        );
    }

    #[test]
    fn heartbeat_interval_has_a_floor() {
        assert_one_problem(
            &problems_after(|s| s.heartbeat.interval_ms = 99),
            "heartbeat.interval_ms",
        );
    }

    #[test]
    fn heartbeat_values_have_a_ceiling_of_a_day() {
        let problems = problems_after(|s| {
            s.heartbeat.interval_ms = 86_400_000;
            s.heartbeat.timeout_ms = u64::MAX;
        });
        assert_one_problem(&problems, "heartbeat.timeout_ms");
        assert!(problems[0].contains("at most 86400000"), "{problems:?}");
        assert!(problems_after(|s| s.heartbeat.timeout_ms = 86_400_000).is_empty());
    }

    #[test]
    fn heartbeat_timeout_must_exceed_interval() {
        let problems = problems_after(|s| s.heartbeat.timeout_ms = s.heartbeat.interval_ms);
        assert_one_problem(&problems, "heartbeat.timeout_ms");
        assert!(
            problems[0].contains("heartbeat.interval_ms"),
            "{problems:?}"
        );
    }

    #[test]
    fn log_level_must_be_a_tracing_filter() {
        assert_one_problem(
            &problems_after(|s| s.log.level = "hubbub=loud".to_owned()),
            "log.level",
        );
        assert_one_problem(
            &problems_after(|s| s.log.level = " ".to_owned()),
            "log.level",
        );
        assert!(problems_after(|s| s.log.level = "hubbub=debug,warn".to_owned()).is_empty());
    }

    #[test]
    fn all_problems_are_reported_together() {
        let error = load_toml(
            "[limits]\nmax_connections = 0\noutbound_queue = 0\n\n\
             [heartbeat]\ninterval_ms = 10\n\n[rooms]\nhistory = 0\n",
            env(&[("HUBBUB_LOG__LEVEL", "hubbub=loud")]),
        )
        .expect_err("invalid settings fail");
        let ConfigError::Invalid(problems) = &error else {
            panic!("expected Invalid, got {error:?}");
        };
        let keys: Vec<&str> = problems
            .iter()
            .filter_map(|p| p.split_once(": ").map(|(key, _)| key))
            .collect();
        assert_eq!(
            keys,
            [
                "limits.max_connections",
                "limits.outbound_queue",
                "rooms.history",
                "heartbeat.interval_ms",
                "log.level",
            ]
        );
        let message = error.to_string();
        assert_eq!(message.lines().collect::<Vec<_>>(), *problems);
    }

    #[test]
    fn default_template_loads_as_the_defaults() {
        let settings = load_toml(default_config_toml(), no_env()).expect("template loads");
        assert_eq!(settings, Settings::default());
    }

    /// The template's line for `key`, with any leading `#` removed; `None` if absent.
    fn template_key_line<'t>(section: &[&'t str], key: &str) -> Option<(usize, &'t str, bool)> {
        section.iter().enumerate().find_map(|(i, line)| {
            let (text, commented) = match line.trim_start().strip_prefix('#') {
                Some(rest) => (rest.trim_start(), true),
                None => (line.trim_start(), false),
            };
            let rest = text.strip_prefix(key)?;
            rest.trim_start()
                .starts_with('=')
                .then_some((i, *line, commented))
        })
    }

    #[test]
    fn default_template_documents_every_setting() {
        let defaults = toml::Value::try_from(Settings::default()).expect("defaults serialise");
        let template = default_config_toml();
        let lines: Vec<&str> = template.lines().collect();
        let sections = defaults.as_table().expect("settings are a table");
        for (section, keys) in sections {
            let header = format!("[{section}]");
            let start = lines
                .iter()
                .position(|line| line.trim() == header)
                .unwrap_or_else(|| panic!("template lacks {header}"));
            let end = lines[start + 1..]
                .iter()
                .position(|line| line.trim_start().starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            let body = &lines[start + 1..end];
            for key in keys.as_table().expect("sections are tables").keys() {
                let (i, line, commented) = template_key_line(body, key)
                    .unwrap_or_else(|| panic!("template lacks {section}.{key}"));
                // Only the name, which defaults to the host name, and the cookie and
                // the auth secret, which have no default and belong in the
                // environment, are commented out.
                assert_eq!(
                    commented,
                    (section == "node" && key == "name")
                        || (section == "cluster" && key == "cookie")
                        || (section == "auth" && key == "secret"),
                    "{section}.{key}: {line}"
                );
                let before = i.checked_sub(1).map(|j| body[j].trim_start());
                assert!(
                    before.is_some_and(|b| b.starts_with('#') && b.len() > 2),
                    "{section}.{key} is not preceded by a comment"
                );
            }
        }
    }

    #[test]
    fn example_cluster_file_loads_and_is_valid() {
        let source = ConfigSource::File(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/cluster.toml"
        )));
        let every = load_every_node_with_env(&source, no_env()).expect("cluster.toml loads");
        let names: Vec<&str> = every.iter().map(|s| s.node.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        for (i, name) in names.iter().enumerate() {
            let settings = load_with_env(&source, Some(name), no_env())
                .unwrap_or_else(|e| panic!("--node {name}: {e}"));
            assert_eq!(settings, every[i]);
            assert_eq!(settings.problems(), Vec::<String>::new());
            assert!(settings.cluster.enabled);
            assert_eq!(settings.cluster.heartbeat_ms, 500);
            assert_eq!(settings.cluster.failure_timeout_ms, 3_000);
            assert_eq!(
                settings.cluster.cookie.expose(),
                "change-me-to-a-long-random-secret"
            );
            assert_eq!(
                settings.node.http_addr,
                SocketAddr::from(([127, 0, 0, 1], 8081 + i as u16))
            );
            assert_eq!(
                settings.cluster.bind,
                SocketAddr::from(([127, 0, 0, 1], 4371 + i as u16))
            );
        }
    }

    // ---- [cluster] ----

    #[test]
    fn cluster_defaults_are_a_single_node() {
        let cluster = load_with_env(&ConfigSource::Defaults, None, no_env())
            .expect("defaults load")
            .cluster;
        assert!(!cluster.enabled);
        assert_eq!(cluster.bind, SocketAddr::from(([127, 0, 0, 1], 4370)));
        assert_eq!(cluster.advertise, "");
        assert_eq!(cluster.advertise_addr(), "127.0.0.1:4370");
        assert_eq!(cluster.cookie.expose(), "");
        assert!(cluster.seeds.is_empty());
        assert_eq!(cluster.heartbeat_ms, 500);
        assert_eq!(cluster.failure_timeout_ms, 3_000);
        assert_eq!(cluster.tls, None);
        assert_eq!(cluster, ClusterSettings::default());
    }

    #[test]
    fn advertise_addr_prefers_advertise() {
        let cluster = ClusterSettings {
            advertise: "node-a.internal:4370".to_owned(),
            ..ClusterSettings::default()
        };
        assert_eq!(cluster.advertise_addr(), "node-a.internal:4370");
    }

    /// A valid enabled cluster, for changing one thing.
    fn enabled_cluster(s: &mut Settings) {
        s.cluster.enabled = true;
        s.cluster.cookie = Secret::new("s3cret-cookie-of-at-least-32-chars");
    }

    #[test]
    fn cookie_never_shows_in_debug_or_display() {
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[
                ("HUBBUB_CLUSTER__ENABLED", "true"),
                ("HUBBUB_NODE__NAME", "a"),
                ("HUBBUB_CLUSTER__VOTERS", "a"),
                (
                    "HUBBUB_CLUSTER__COOKIE",
                    "s3cret-cookie-of-at-least-32-chars",
                ),
            ]),
        )
        .expect("env cookie loads");
        assert_eq!(
            settings.cluster.cookie.expose(),
            "s3cret-cookie-of-at-least-32-chars"
        );
        for shown in [
            format!("{settings:?}"),
            format!("{settings:#?}"),
            format!("{:?}", settings.cluster),
            format!("{}", settings.cluster.cookie),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert!(format!("{settings:?}").contains("cookie: [redacted]"));
    }

    #[test]
    fn api_keys_come_from_the_environment_as_a_list_and_never_show() {
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[(
                "HUBBUB_API__KEYS",
                "first-api-key-0123456789,second-api-key-0123456789",
            )]),
        )
        .expect("env keys load");
        let keys: Vec<&str> = settings.api.keys.iter().map(|k| k.expose()).collect();
        assert_eq!(
            keys,
            ["first-api-key-0123456789", "second-api-key-0123456789"]
        );
        assert!(settings.api.enabled());
        assert!(!Settings::default().api.enabled());
        for shown in [format!("{settings:?}"), format!("{:?}", settings.api)] {
            assert!(!shown.contains("api-key"), "{shown}");
        }
    }

    #[test]
    fn api_settings_have_bounds() {
        for (adjust, key) in [
            (
                (|s: &mut Settings| s.api.keys = vec![Secret::new("short")]) as fn(&mut Settings),
                "api.keys[0]",
            ),
            (
                |s: &mut Settings| s.api.keys = vec![Secret::new("has a space in it 0123")],
                "api.keys[0]",
            ),
            (
                |s: &mut Settings| s.api.keys = vec![Secret::new("  ")],
                "api.keys[0]",
            ),
            (
                |s: &mut Settings| s.api.max_body_bytes = 100,
                "api.max_body_bytes",
            ),
            (
                |s: &mut Settings| s.api.max_body_bytes = 17 * 1024 * 1024,
                "api.max_body_bytes",
            ),
            (|s: &mut Settings| s.api.burst = 0, "api.burst"),
        ] {
            let problems = problems_after(adjust);
            assert_one_problem(&problems, key);
            assert!(!problems[0].contains("short\""), "{problems:?}");
        }
        // Off: no key, and a zero rate needs no burst.
        assert!(problems_after(|s| {
            s.api.requests_per_second = 0;
            s.api.burst = 0;
        })
        .is_empty());
    }

    #[test]
    fn cookie_is_required_when_enabled() {
        let problems = problems_after(|s| s.cluster.enabled = true);
        assert_one_problem(&problems, "cluster.cookie");
        assert!(
            problems[0].contains("HUBBUB_CLUSTER__COOKIE"),
            "{problems:?}"
        );
        assert_one_problem(
            &problems_after(|s| {
                enabled_cluster(s);
                s.cluster.cookie = Secret::new("  ");
            }),
            "cluster.cookie",
        );
        assert!(problems_after(enabled_cluster).is_empty());
        // Not needed by a node that runs alone.
        assert!(problems_after(|s| s.cluster.enabled = false).is_empty());
    }

    #[test]
    fn storage_fsync_is_always_never_or_an_interval_in_ms() {
        use crate::config::FsyncPolicy;
        use std::time::Duration;
        for (text, policy) in [
            ("always", FsyncPolicy::Always),
            ("never", FsyncPolicy::Never),
            ("100ms", FsyncPolicy::Interval(Duration::from_millis(100))),
            ("1ms", FsyncPolicy::Interval(Duration::from_millis(1))),
            (
                "10000ms",
                FsyncPolicy::Interval(Duration::from_millis(10_000)),
            ),
        ] {
            assert_eq!(FsyncPolicy::parse(text), Ok(policy));
            assert!(problems_after(|s| s.storage.fsync = text.to_owned()).is_empty());
        }
        for bad in ["", "100", "0ms", "10001ms", "1s", "Always", "-5ms", "fast"] {
            let problems = problems_after(|s| s.storage.fsync = bad.to_owned());
            assert_one_problem(&problems, "storage.fsync");
            assert!(problems[0].contains(&format!("{bad:?}")), "{problems:?}");
        }
    }

    #[test]
    fn storage_dir_must_be_usable_for_the_durable_engine() {
        let problems = problems_after(|s| s.storage.dir = PathBuf::new());
        assert_one_problem(&problems, "storage.dir");
        // The memory engine does not use it.
        assert!(problems_after(|s| {
            s.storage.dir = PathBuf::new();
            s.storage.engine = StorageEngine::Memory;
        })
        .is_empty());
        let file = std::env::temp_dir().join(format!("hubbub-storage-dir-{}", std::process::id()));
        std::fs::write(&file, b"").expect("write");
        let problems = problems_after(|s| s.storage.dir = file.clone());
        let _ = std::fs::remove_file(&file);
        assert_one_problem(&problems, "storage.dir");
        assert!(
            problems[0].contains(&file.display().to_string()),
            "{problems:?}"
        );
    }

    #[test]
    fn shards_and_replicas_have_bounds() {
        for (shards, ok) in [
            (0, false),
            (1, true),
            (16, true),
            (1024, true),
            (1025, false),
        ] {
            let problems = problems_after(|s| s.cluster.shards = shards);
            if ok {
                assert!(problems.is_empty(), "{shards}: {problems:?}");
            } else {
                assert_one_problem(&problems, "cluster.shards");
            }
        }
        for (replicas, ok) in [(0, false), (1, true), (3, true), (9, true), (10, false)] {
            let problems = problems_after(|s| s.cluster.replicas = replicas);
            if ok {
                assert!(problems.is_empty(), "{replicas}: {problems:?}");
            } else {
                assert_one_problem(&problems, "cluster.replicas");
            }
        }
    }

    #[test]
    fn a_cluster_of_node_and_seeds_must_list_its_voters_with_this_node() {
        let mut settings = Settings::default();
        settings.cluster.enabled = true;
        settings.cluster.cookie = Secret::new("a-cookie-long-enough-for-any-address-here");
        let problems = settings.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("cluster.voters: must list")),
            "{problems:?}"
        );
        settings.cluster.voters = vec!["other".into()];
        let problems = settings.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("must include this node's name")),
            "{problems:?}"
        );
        settings.cluster.voters = vec![settings.node.name.clone(), "other".into()];
        assert!(
            !settings
                .problems()
                .iter()
                .any(|p| p.starts_with("cluster.voters")),
            "{:?}",
            settings.problems()
        );
    }

    #[test]
    fn voters_are_valid_distinct_names_and_entries_of_nodes() {
        let names = |v: &[&str]| v.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert!(problems_after(|s| s.cluster.voters = names(&["a", "b", "c"])).is_empty());
        let problems = problems_after(|s| s.cluster.voters = names(&["a", "b", "a"]));
        assert_one_problem(&problems, "cluster.voters");
        assert!(problems[0].contains("\"a\""), "{problems:?}");
        let problems = problems_after(|s| s.cluster.voters = names(&["a", "no spaces"]));
        assert_one_problem(&problems, "cluster.voters[1]");
        let entry = |name: &str, port: u16| NodeEntry {
            name: name.to_owned(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            bind: SocketAddr::from(([127, 0, 0, 1], port + 1000)),
            advertise: String::new(),
        };
        let problems = problems_after(|s| {
            s.nodes = vec![entry("a", 8081), entry("b", 8082)];
            s.cluster.voters = names(&["a", "c"]);
        });
        assert_one_problem(&problems, "cluster.voters");
        assert!(problems[0].contains("\"c\""), "{problems:?}");
    }

    #[test]
    fn seeds_must_be_dialable_host_ports() {
        let good = [
            "10.0.0.5:4370",
            "node-a.internal:4370",
            "hubbub_b:1",
            "[::1]:4370",
            "localhost:65535",
        ];
        assert!(problems_after(|s| s.cluster.seeds = good.map(str::to_owned).to_vec()).is_empty());
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:70000",
            "10.0.0.5:x",
            ":4370",
            "::1:4370",
            "[nope]:4370",
            "0.0.0.0:4370",
            "a b:4370",
            "",
        ] {
            let problems = problems_after(|s| s.cluster.seeds = vec![bad.to_owned()]);
            assert_one_problem(&problems, "cluster.seeds");
            assert!(problems[0].contains(&format!("{bad:?}")), "{problems:?}");
        }
        // Every bad seed is reported, numbered.
        let problems = problems_after(|s| {
            s.cluster.seeds = vec!["a:1".into(), "b".into(), "c:0".into()];
        });
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("cluster.seeds: seed 2 "),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("cluster.seeds: seed 3 "),
            "{problems:?}"
        );
    }

    #[test]
    fn seeds_load_from_the_file_and_from_a_comma_separated_variable() {
        let from_file = load_toml(
            "[cluster]
seeds = [\"10.0.0.5:4370\", \"10.0.0.6:4370\"]
",
            no_env(),
        )
        .expect("file seeds load");
        assert_eq!(from_file.cluster.seeds, ["10.0.0.5:4370", "10.0.0.6:4370"]);

        let from_env = load_toml(
            "[cluster]
seeds = [\"10.0.0.5:4370\"]
",
            env(&[("HUBBUB_CLUSTER__SEEDS", "a:1, b:2,c:3,")]),
        )
        .expect("env seeds load");
        assert_eq!(from_env.cluster.seeds, ["a:1", "b:2", "c:3"]);

        let single = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_CLUSTER__SEEDS", "a:1")]),
        )
        .expect("one seed loads");
        assert_eq!(single.cluster.seeds, ["a:1"]);

        let cleared = load_toml(
            "[cluster]
seeds = [\"10.0.0.5:4370\"]
",
            env(&[("HUBBUB_CLUSTER__SEEDS", "")]),
        )
        .expect("empty variable loads");
        assert!(cleared.cluster.seeds.is_empty());
    }

    #[test]
    fn list_parsing_leaves_other_variables_alone() {
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[
                ("HUBBUB_CLUSTER__SEEDS", "a:1,b:2"),
                ("HUBBUB_LOG__LEVEL", "hubbub=debug,warn"),
                ("HUBBUB_NODE__NAME", "007"),
                ("HUBBUB_CLUSTER__ADVERTISE", "node-a:4370"),
                ("HUBBUB_CLUSTER__HEARTBEAT_MS", "100"),
            ]),
        )
        .expect("env loads");
        assert_eq!(settings.cluster.seeds, ["a:1", "b:2"]);
        assert_eq!(settings.log.level, "hubbub=debug,warn");
        assert_eq!(settings.node.name, "007");
        assert_eq!(settings.cluster.advertise, "node-a:4370");
        assert_eq!(settings.cluster.heartbeat_ms, 100);
    }

    #[test]
    fn bad_seed_from_the_environment_is_reported() {
        let error = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_CLUSTER__SEEDS", "a:1,b")]),
        )
        .expect_err("a seed without a port fails");
        let ConfigError::Invalid(problems) = &error else {
            panic!("expected Invalid, got {error:?}");
        };
        assert_one_problem(problems, "cluster.seeds");
    }

    #[test]
    fn advertise_must_be_a_dialable_host_port() {
        assert_one_problem(
            &problems_after(|s| s.cluster.advertise = "node-a".to_owned()),
            "cluster.advertise",
        );
        assert_one_problem(
            &problems_after(|s| s.cluster.advertise = "node-a:0".to_owned()),
            "cluster.advertise",
        );
        assert!(problems_after(|s| s.cluster.advertise = "node-a:4370".to_owned()).is_empty());
        // Peers cannot dial 0.0.0.0, so an enabled node listening there must advertise.
        let problems = problems_after(|s| {
            enabled_cluster(s);
            s.cluster.bind = SocketAddr::from(([0, 0, 0, 0], 4370));
        });
        assert_one_problem(&problems, "cluster.advertise");
        assert!(problems_after(|s| {
            enabled_cluster(s);
            s.cluster.bind = SocketAddr::from(([0, 0, 0, 0], 4370));
            s.cluster.advertise = "10.0.0.5:4370".to_owned();
        })
        .is_empty());
    }

    #[test]
    fn cluster_heartbeat_has_a_floor() {
        let problems = problems_after(|s| {
            s.cluster.heartbeat_ms = 9;
            s.cluster.failure_timeout_ms = 1_000;
        });
        assert_one_problem(&problems, "cluster.heartbeat_ms");
        assert!(problems_after(|s| {
            s.cluster.heartbeat_ms = 10;
            s.cluster.failure_timeout_ms = 30;
        })
        .is_empty());
    }

    #[test]
    fn failure_timeout_must_cover_several_heartbeats() {
        let problems = problems_after(|s| {
            s.cluster.heartbeat_ms = 500;
            s.cluster.failure_timeout_ms = 1_499;
        });
        assert_one_problem(&problems, "cluster.failure_timeout_ms");
        assert!(problems[0].contains("cluster.heartbeat_ms"), "{problems:?}");
        assert!(problems[0].contains("1500"), "{problems:?}");
        assert!(
            problems[0].contains("miss several heartbeats"),
            "{problems:?}"
        );
        assert!(problems_after(|s| s.cluster.failure_timeout_ms = 1_500).is_empty());
        // No overflow on absurd values.
        assert_one_problem(
            &problems_after(|s| s.cluster.heartbeat_ms = u64::MAX),
            "cluster.failure_timeout_ms",
        );
    }

    /// PEM blocks of each kind: well-formed, though not a real certificate or key
    /// (validation checks the PEM only).
    const PEM_CERTIFICATE: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBCgKCAQEA\n-----END PRIVATE KEY-----\n";

    #[test]
    fn tls_files_must_exist_and_each_is_named() {
        let cert = TempToml::new(PEM_CERTIFICATE);
        let key = TempToml::new(PEM_KEY);
        let missing = std::env::temp_dir().join(format!(
            "hubbub-config-unit-{}-missing.pem",
            std::process::id()
        ));
        let text = format!(
            "[cluster.tls]
cert = {:?}
key = {:?}
ca = {:?}
",
            cert.0.display().to_string(),
            missing.display().to_string(),
            std::env::temp_dir().display().to_string(),
        );
        let error = load_toml(&text, no_env()).expect_err("missing TLS files fail");
        let ConfigError::Invalid(problems) = &error else {
            panic!("expected Invalid, got {error:?}");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("cluster.tls.key: "), "{problems:?}");
        assert!(problems[0].contains("not found"), "{problems:?}");
        assert!(problems[1].starts_with("cluster.tls.ca: "), "{problems:?}");
        assert!(problems[1].contains("not a file"), "{problems:?}");

        let all_present = format!(
            "[cluster.tls]
cert = {0:?}
key = {1:?}
ca = {0:?}
",
            cert.0.display().to_string(),
            key.0.display().to_string(),
        );
        let settings = load_toml(&all_present, no_env()).expect("present TLS files load");
        let tls = settings.cluster.tls.expect("tls table read");
        assert_eq!(tls.cert, cert.0);
        assert_eq!(tls.key, key.0);
    }

    #[test]
    fn tls_files_must_hold_pem_of_their_kind() {
        let cert = TempToml::new(PEM_CERTIFICATE);
        let key = TempToml::new(PEM_KEY);
        let not_pem = TempToml::new("not really a certificate");
        let broken = TempToml::new("-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n");
        let text = format!(
            "[cluster.tls]
cert = {:?}
key = {:?}
ca = {:?}
",
            not_pem.0.display().to_string(),
            cert.0.display().to_string(),
            broken.0.display().to_string(),
        );
        let problems = match load_toml(&text, no_env()) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("cluster.tls.cert: ")
                && problems[0].contains("holds no PEM certificate"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("cluster.tls.key: ")
                && problems[1].contains("holds no PEM private key"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("cluster.tls.ca: ")
                && problems[2].contains("not well-formed PEM"),
            "{problems:?}"
        );
        let swapped = format!(
            "[cluster.tls]
cert = {0:?}
key = {1:?}
ca = {0:?}
",
            key.0.display().to_string(),
            cert.0.display().to_string(),
        );
        assert_eq!(
            match load_toml(&swapped, no_env()) {
                Err(ConfigError::Invalid(problems)) => problems.len(),
                other => panic!("expected Invalid, got {other:?}"),
            },
            3
        );
    }

    #[test]
    fn tls_table_needs_all_three_files() {
        let message = load_toml(
            "[cluster.tls]
cert = \"/x.crt\"
",
            no_env(),
        )
        .expect_err("partial TLS table fails")
        .to_string();
        assert!(message.contains("key"), "{message}");
        assert!(message.contains("cluster.tls"), "{message}");
    }

    #[test]
    fn tls_files_can_come_from_the_environment() {
        let pem = TempToml::new(&format!("{PEM_CERTIFICATE}{PEM_KEY}"));
        let path = pem.0.display().to_string();
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[
                ("HUBBUB_CLUSTER__TLS__CERT", &path),
                ("HUBBUB_CLUSTER__TLS__KEY", &path),
                ("HUBBUB_CLUSTER__TLS__CA", &path),
            ]),
        )
        .expect("env TLS loads");
        assert_eq!(settings.cluster.tls.expect("tls set").ca, pem.0);
    }

    #[test]
    fn unknown_cluster_key_is_rejected() {
        let message = load_toml(
            "[cluster]
cookei = \"x\"
",
            no_env(),
        )
        .expect_err("typo fails")
        .to_string();
        assert!(message.contains("cookei"), "{message}");
    }

    // ---- [[nodes]] ----

    const THREE_NODES: &str = "\
        [cluster]\n\
        cookie = \"s3cret-cookie-of-at-least-32-chars\"\n\
        \n\
        [[nodes]]\n\
        name = \"a\"\n\
        http_addr = \"127.0.0.1:8081\"\n\
        bind = \"127.0.0.1:4371\"\n\
        \n\
        [[nodes]]\n\
        name = \"b\"\n\
        http_addr = \"127.0.0.1:8082\"\n\
        bind = \"0.0.0.0:4372\"\n\
        advertise = \"hubbub-b.internal:4372\"\n\
        \n\
        [[nodes]]\n\
        name = \"c\"\n\
        http_addr = \"127.0.0.1:8083\"\n\
        bind = \"127.0.0.1:4373\"\n";

    fn load_node(
        text: &str,
        node: Option<&str>,
        env: Vec<(String, String)>,
    ) -> Result<Settings, ConfigError> {
        let file = TempToml::new(text);
        load_with_env(&file.source(), node, env)
    }

    fn invalid(result: Result<Settings, ConfigError>) -> Vec<String> {
        match result {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn each_node_of_a_three_node_file_resolves() {
        let all_seeds = ["127.0.0.1:4371", "hubbub-b.internal:4372", "127.0.0.1:4373"];
        let expected = [
            (
                "a",
                "127.0.0.1:8081",
                "127.0.0.1:4371",
                "",
                "127.0.0.1:4371",
            ),
            (
                "b",
                "127.0.0.1:8082",
                "0.0.0.0:4372",
                "hubbub-b.internal:4372",
                "hubbub-b.internal:4372",
            ),
            (
                "c",
                "127.0.0.1:8083",
                "127.0.0.1:4373",
                "",
                "127.0.0.1:4373",
            ),
        ];
        for (name, http, bind, advertise, dialled) in expected {
            let settings = load_node(THREE_NODES, Some(name), no_env())
                .unwrap_or_else(|e| panic!("--node {name}: {e}"));
            assert_eq!(settings.node.name, name);
            assert_eq!(settings.node.http_addr.to_string(), http);
            assert_eq!(settings.cluster.bind.to_string(), bind);
            assert_eq!(settings.cluster.advertise, advertise);
            assert_eq!(settings.cluster.advertise_addr(), dialled);
            assert!(settings.cluster.enabled, "--node {name}");
            assert_eq!(settings.cluster.seeds, all_seeds, "--node {name}");
            assert_eq!(
                settings.cluster.cookie.expose(),
                "s3cret-cookie-of-at-least-32-chars"
            );
            assert_eq!(settings.nodes.len(), 3);
        }
    }

    #[test]
    fn whole_file_resolves_every_node_in_order() {
        let file = TempToml::new(THREE_NODES);
        let every = load_every_node_with_env(&file.source(), no_env()).expect("file is valid");
        let names: Vec<&str> = every.iter().map(|s| s.node.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        for (name, settings) in ["a", "b", "c"].iter().zip(&every) {
            let alone = load_with_env(&file.source(), Some(name), no_env()).expect("loads");
            assert_eq!(&alone, settings);
        }
    }

    #[test]
    fn whole_file_without_nodes_is_the_one_node() {
        let file = TempToml::new(
            "[limits]
max_connections = 7
",
        );
        let every = load_every_node_with_env(&file.source(), no_env()).expect("valid");
        assert_eq!(every.len(), 1);
        assert_eq!(every[0].limits.max_connections, 7);
        assert!(!every[0].cluster.enabled);
    }

    #[test]
    fn explicit_seeds_win_over_the_entries() {
        let text = THREE_NODES.replace(
            "[cluster]
",
            "[cluster]
seeds = [\"127.0.0.1:4371\"]
",
        );
        let settings = load_node(&text, Some("c"), no_env()).expect("loads");
        assert_eq!(settings.cluster.seeds, ["127.0.0.1:4371"]);

        let settings = load_node(
            &text,
            Some("c"),
            env(&[("HUBBUB_CLUSTER__SEEDS", "10.0.0.9:4370")]),
        )
        .expect("loads");
        assert_eq!(settings.cluster.seeds, ["10.0.0.9:4370"]);
    }

    #[test]
    fn the_entry_wins_over_the_file_and_the_environment_over_the_entry() {
        let text = THREE_NODES.replace(
            "[cluster]
",
            "[node]
name = \"from-file\"
http_addr = \"127.0.0.1:9999\"

             [cluster]
enabled = false
bind = \"127.0.0.1:4999\"
",
        );
        let settings = load_node(&text, Some("b"), no_env()).expect("loads");
        assert_eq!(settings.node.name, "b");
        assert_eq!(settings.node.http_addr.to_string(), "127.0.0.1:8082");
        assert_eq!(settings.cluster.bind.to_string(), "0.0.0.0:4372");
        assert!(settings.cluster.enabled);

        let settings = load_node(
            &text,
            Some("b"),
            env(&[
                ("HUBBUB_NODE__HTTP_ADDR", "127.0.0.1:9002"),
                ("HUBBUB_CLUSTER__ADVERTISE", "10.0.0.2:4372"),
                (
                    "HUBBUB_CLUSTER__COOKIE",
                    "from-env-0123456789abcdef0123456789",
                ),
            ]),
        )
        .expect("loads");
        assert_eq!(settings.node.name, "b");
        assert_eq!(settings.node.http_addr.to_string(), "127.0.0.1:9002");
        assert_eq!(settings.cluster.advertise, "10.0.0.2:4372");
        assert_eq!(
            settings.cluster.cookie.expose(),
            "from-env-0123456789abcdef0123456789"
        );
        // The seeds are still the addresses the file gives each entry.
        assert_eq!(settings.cluster.seeds[1], "hubbub-b.internal:4372");
    }

    #[test]
    fn a_file_with_nodes_needs_a_node_chosen() {
        let error = load_node(THREE_NODES, None, no_env()).expect_err("no --node fails");
        assert!(
            matches!(&error, ConfigError::NodeNotChosen { names } if names == &["a", "b", "c"]),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "this file describes 3 nodes (a, b, c): choose one with --node NAME"
        );
    }

    #[test]
    fn an_unknown_node_lists_the_names() {
        let error = load_node(THREE_NODES, Some("d"), no_env()).expect_err("unknown fails");
        assert!(
            matches!(error, ConfigError::UnknownNode { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("--node d"), "{message}");
        assert!(message.contains("a, b, c"), "{message}");
    }

    #[test]
    fn a_node_needs_nodes_to_choose_from() {
        for source in [ConfigSource::Defaults, TempToml::new("").source()] {
            let error = load_with_env(&source, Some("a"), no_env()).expect_err("fails");
            assert!(matches!(error, ConfigError::NoNodes { .. }), "{error:?}");
            assert!(error.to_string().contains("[[nodes]]"), "{error}");
        }
    }

    #[test]
    fn nodes_need_a_cookie() {
        let text = THREE_NODES.replace(
            "cookie = \"s3cret-cookie-of-at-least-32-chars\"
",
            "",
        );
        let problems = invalid(load_node(&text, Some("a"), no_env()));
        assert_one_problem(&problems, "cluster.cookie");
        // Given in the environment instead, it is enough.
        assert!(load_node(
            &text,
            Some("a"),
            env(&[(
                "HUBBUB_CLUSTER__COOKIE",
                "s3cret-of-at-least-thirty-two-chars"
            )])
        )
        .is_ok());
    }

    #[test]
    fn duplicate_names_and_addresses_are_all_reported() {
        let text = "\
            [cluster]\ncookie = \"0123456789abcdef0123456789abcdef\"\n\
            [[nodes]]\nname = \"a\"\nhttp_addr = \"127.0.0.1:8081\"\nbind = \"127.0.0.1:4371\"\n\
            [[nodes]]\nname = \"a\"\nhttp_addr = \"127.0.0.1:8081\"\nbind = \"127.0.0.1:4371\"\n\
            [[nodes]]\nname = \"c\"\nhttp_addr = \"127.0.0.1:8083\"\nbind = \"127.0.0.1:4373\"\n\
            advertise = \"127.0.0.1:4371\"\n";
        let file = TempToml::new(text);
        let problems = match load_every_node_with_env(&file.source(), no_env()) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let keys: Vec<&str> = problems
            .iter()
            .filter_map(|p| p.split_once(": ").map(|(key, _)| key))
            .collect();
        assert_eq!(
            keys,
            [
                "nodes[1].name",
                "nodes[1].http_addr",
                "nodes[1].bind",
                "nodes[2].advertise",
            ],
            "{problems:#?}"
        );
        assert!(problems[0].contains("nodes[0] (a)"), "{problems:?}");
        // The same with a node chosen: a broken file does not start.
        assert_eq!(
            invalid(load_with_env(&file.source(), Some("c"), no_env())),
            problems
        );
    }

    #[test]
    fn nodes_on_different_hosts_may_share_listen_addresses() {
        let text = "\
            [cluster]\ncookie = \"0123456789abcdef0123456789abcdef\"\n\
            [[nodes]]\nname = \"a\"\nhttp_addr = \"0.0.0.0:8080\"\nbind = \"0.0.0.0:4370\"\n\
            advertise = \"10.0.0.1:4370\"\n\
            [[nodes]]\nname = \"b\"\nhttp_addr = \"0.0.0.0:8080\"\nbind = \"0.0.0.0:4370\"\n\
            advertise = \"10.0.0.2:4370\"\n";
        let settings = load_node(text, Some("b"), no_env()).expect("valid");
        assert_eq!(settings.cluster.seeds, ["10.0.0.1:4370", "10.0.0.2:4370"]);
    }

    #[test]
    fn a_bad_entry_is_reported_under_its_own_key_once() {
        let text = THREE_NODES
            .replace("name = \"c\"", "name = \"c c\"")
            .replace(
                "advertise = \"hubbub-b.internal:4372\"",
                "advertise = \"hubbub-b.internal\"",
            );
        let file = TempToml::new(&text);
        let problems = match load_every_node_with_env(&file.source(), no_env()) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let keys: Vec<&str> = problems
            .iter()
            .filter_map(|p| p.split_once(": ").map(|(key, _)| key))
            .collect();
        assert_eq!(
            keys,
            ["nodes[1].advertise", "nodes[2].name"],
            "{problems:#?}"
        );
        // A node that is fine itself still does not start from a broken file.
        assert_eq!(
            invalid(load_with_env(&file.source(), Some("a"), no_env())),
            problems
        );
    }

    #[test]
    fn an_entry_must_give_peers_an_address_to_dial() {
        let text = THREE_NODES.replace("bind = \"127.0.0.1:4373\"", "bind = \"127.0.0.1:0\"");
        let problems = invalid(load_node(&text, Some("a"), no_env()));
        assert_one_problem(&problems, "nodes[2].bind");
        let text = THREE_NODES.replace("bind = \"127.0.0.1:4373\"", "bind = \"0.0.0.0:4373\"");
        let problems = invalid(load_node(&text, Some("a"), no_env()));
        assert_one_problem(&problems, "nodes[2].advertise");
    }

    #[test]
    fn an_entry_with_an_unknown_or_missing_field_is_rejected() {
        let message = load_node(
            &THREE_NODES.replace(
                "name = \"a\"",
                "name = \"a\"
port = 1",
            ),
            Some("a"),
            no_env(),
        )
        .expect_err("unknown field fails")
        .to_string();
        assert!(message.contains("port"), "{message}");
        let message = load_node(
            &THREE_NODES.replace(
                "bind = \"127.0.0.1:4371\"
",
                "",
            ),
            Some("b"),
            no_env(),
        )
        .expect_err("missing bind fails")
        .to_string();
        assert!(message.contains("bind"), "{message}");
    }

    #[test]
    fn nodes_cannot_come_from_the_environment() {
        let message = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_NODES__NAME", "a")]),
        )
        .expect_err("not a setting")
        .to_string();
        assert!(message.contains("HUBBUB_NODES__NAME"), "{message}");
    }

    // ---- what an operator is told ----

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("max_conections", "max_connections"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("bind", "bnid"), 1);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(
            nearest(
                "max_conections",
                ["max_rooms_per_session", "max_connections"]
            ),
            Some("max_connections")
        );
        assert_eq!(
            nearest("Max_Connections", ["max_connections"]),
            Some("max_connections")
        );
        assert_eq!(nearest("x", ["ca", "key"]), None);
        assert_eq!(nearest("completely_different", ["max_connections"]), None);
    }

    #[test]
    fn unknown_key_in_file_names_the_file_the_line_and_the_nearest_key() {
        let file =
            TempToml::new("[node]\nthreads = 2\n\n[limits]\n# the cap\nmax_conections = 5\n");
        let message = load_with_env(&file.source(), None, no_env())
            .expect_err("unknown key fails")
            .to_string();
        assert_eq!(
            message,
            format!(
                "unknown key `limits.max_conections` in {} line 6; did you mean \
                 `limits.max_connections`?",
                file.0.display()
            )
        );
    }

    #[test]
    fn unknown_key_without_a_near_one_lists_the_valid_keys() {
        let file = TempToml::new("[shutdown]\nwhenever = 5\n");
        let message = load_with_env(&file.source(), None, no_env())
            .expect_err("unknown key fails")
            .to_string();
        assert!(
            message.contains(&format!(
                "unknown key `shutdown.whenever` in {} line 2",
                file.0.display()
            )),
            "{message}"
        );
        assert!(
            message.contains("timeout_secs") && message.contains("batch_size"),
            "{message}"
        );
    }

    #[test]
    fn unknown_section_and_keys_of_entries_are_placed_too() {
        let file = TempToml::new("[limitz]\nmax_connections = 5\n");
        let message = load_with_env(&file.source(), None, no_env())
            .expect_err("unknown section fails")
            .to_string();
        assert!(
            message.contains(&format!(
                "unknown key `limitz` in {} line 1; did you mean `limits`?",
                file.0.display()
            )),
            "{message}"
        );

        let text = format!("{THREE_NODES}bnid = \"127.0.0.1:4374\"\n");
        let file = TempToml::new(&text);
        let message = load_every_node_with_env(&file.source(), no_env())
            .expect_err("unknown entry field fails")
            .to_string();
        let line = text
            .lines()
            .position(|l| l.starts_with("bnid"))
            .expect("the line")
            + 1;
        assert!(
            message.contains(&format!(
                "unknown key `nodes[2].bnid` in {} line {line}; did you mean `nodes[2].bind`?",
                file.0.display()
            )),
            "{message}"
        );

        let file =
            TempToml::new("[cluster.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\ncaa = \"d\"\n");
        let message = load_with_env(&file.source(), None, no_env())
            .expect_err("unknown tls field fails")
            .to_string();
        assert!(
            message.contains(&format!(
                "unknown key `cluster.tls.caa` in {} line 5; did you mean `cluster.tls.ca`?",
                file.0.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn a_range_error_names_the_file_and_line_or_the_variable() {
        let file = TempToml::new("[limits]\nmax_connections = 0\n\n[rooms]\nhistory = 0\n");
        let problems = invalid(load_with_env(&file.source(), None, no_env()));
        let shown = file.0.display().to_string();
        assert_eq!(
            problems,
            [
                format!("limits.max_connections: must be at least 1 (in {shown} line 2)"),
                format!("rooms.history: must be between 1 and 100000, not 0 (in {shown} line 5)"),
            ]
        );
        let problems = invalid(load_with_env(
            &file.source(),
            None,
            env(&[
                ("HUBBUB_ROOMS__HISTORY", "200000"),
                ("HUBBUB_LIMITS__MAX_CONNECTIONS", "5"),
            ]),
        ));
        assert_eq!(
            problems,
            ["rooms.history: must be between 1 and 100000, not 200000 (from HUBBUB_ROOMS__HISTORY)"]
        );
        // A list from the environment, and a problem of a [[nodes]] entry.
        let problems = invalid(load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_CLUSTER__SEEDS", "10.0.0.1:0")]),
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("cluster.seeds: ")
                && problems[0].ends_with(" (from HUBBUB_CLUSTER__SEEDS)"),
            "{problems:?}"
        );
        let text = THREE_NODES.replace("name = \"c\"", "name = \"c c\"");
        let file = TempToml::new(&text);
        let problems = invalid(
            load_every_node_with_env(&file.source(), no_env()).map(|mut every| every.remove(0)),
        );
        let line = text
            .lines()
            .position(|l| l.contains("c c"))
            .expect("the line")
            + 1;
        assert!(
            problems.iter().any(|p| p.starts_with("nodes[2].name: ")
                && p.ends_with(&format!(" (in {} line {line})", file.0.display()))),
            "{problems:#?}"
        );
    }

    #[test]
    fn admin_addr_is_empty_or_an_address_of_its_own() {
        assert_eq!(Settings::default().admin.listen_addr(), None);
        assert!(problems_after(|s| s.admin.addr = "127.0.0.1:9090".to_owned()).is_empty());
        assert!(problems_after(|s| s.admin.addr = "127.0.0.1:0".to_owned()).is_empty());
        assert_one_problem(
            &problems_after(|s| s.admin.addr = "localhost:9090".to_owned()),
            "admin.addr",
        );
        assert_one_problem(
            &problems_after(|s| s.admin.addr = "127.0.0.1:8080".to_owned()),
            "admin.addr",
        );
        let problems = problems_after(|s| {
            enabled_cluster(s);
            s.admin.addr = "127.0.0.1:4370".to_owned();
        });
        assert_one_problem(&problems, "admin.addr");
        assert!(problems[0].contains("cluster.bind"), "{problems:?}");
        let settings = load_with_env(
            &ConfigSource::Defaults,
            None,
            env(&[("HUBBUB_ADMIN__ADDR", "10.0.0.5:9090")]),
        )
        .expect("loads");
        assert_eq!(
            settings.admin.listen_addr(),
            Some("10.0.0.5:9090".parse().unwrap())
        );
    }

    // ---- the cookie's strength ----

    /// A cluster reachable from other machines, with `cookie`.
    fn reachable_cluster(s: &mut Settings, cookie: &str) {
        s.cluster.enabled = true;
        s.cluster.cookie = Secret::new(cookie);
        s.cluster.bind = "0.0.0.0:4370".parse().unwrap();
        s.cluster.advertise = "10.0.0.5:4370".to_owned();
    }

    #[test]
    fn a_reachable_cluster_refuses_example_and_short_cookies() {
        for (cookie, why) in [
            ("change-me-to-a-long-random-secret", "example cookie"),
            ("  change-me-to-a-long-random-secret ", "example cookie"),
            (
                "a-long-random-secret-of-at-least-32-bytes",
                "example cookie",
            ),
            ("test-cookie", "11 characters long, fewer than the 32"),
            ("0123456789abcdef0123456789abcde", "31 characters long"),
        ] {
            let problems = problems_after(|s| reachable_cluster(s, cookie));
            assert_one_problem(&problems, "cluster.cookie");
            assert!(problems[0].contains(why), "{cookie}: {problems:?}");
            assert!(problems[0].contains("openssl rand -hex 32"), "{problems:?}");
            assert!(
                !problems[0].contains(cookie.trim()),
                "the cookie is shown: {problems:?}"
            );
        }
        assert!(
            problems_after(|s| reachable_cluster(s, "0123456789abcdef0123456789abcdef")).is_empty()
        );
        // Off, nothing is checked; blank is reported as missing, once.
        assert!(problems_after(|s| s.cluster.cookie = Secret::new("x")).is_empty());
        assert_one_problem(
            &problems_after(|s| reachable_cluster(s, "")),
            "cluster.cookie",
        );
    }

    #[test]
    fn any_address_off_loopback_makes_the_cluster_reachable() {
        let weak = |change: &dyn Fn(&mut Settings)| {
            problems_after(|s| {
                s.cluster.enabled = true;
                s.cluster.voters = vec![s.node.name.clone()];
                s.cluster.cookie = Secret::new("test-cookie");
                change(s);
            })
        };
        assert!(weak(&|_| {}).is_empty(), "bind 127.0.0.1 alone is loopback");
        assert!(weak(&|s| s.cluster.seeds = vec![
            "localhost:4371".into(),
            "[::1]:4372".into(),
            "127.0.0.2:4373".into()
        ])
        .is_empty());
        assert_one_problem(
            &weak(&|s| s.cluster.seeds = vec!["127.0.0.1:4371".into(), "10.0.0.6:4370".into()]),
            "cluster.cookie",
        );
        assert_one_problem(
            &weak(&|s| s.cluster.seeds = vec!["node-b:4370".into()]),
            "cluster.cookie",
        );
        assert_one_problem(
            &weak(&|s| s.cluster.advertise = "10.0.0.5:4370".into()),
            "cluster.cookie",
        );
        assert_one_problem(
            &weak(&|s| s.cluster.bind = "10.0.0.5:4370".parse().unwrap()),
            "cluster.cookie",
        );
        assert_one_problem(
            &weak(&|s| {
                s.node.name = "b".into();
                s.cluster.voters.clear();
                s.nodes = vec![NodeEntry {
                    name: "b".into(),
                    http_addr: "127.0.0.1:8082".parse().unwrap(),
                    bind: "127.0.0.1:4372".parse().unwrap(),
                    advertise: "hubbub-b.internal:4372".into(),
                }]
            }),
            "cluster.cookie",
        );
    }

    #[test]
    fn a_weak_cookie_on_loopback_only_is_a_warning() {
        let mut settings = Settings::default();
        settings.cluster.enabled = true;
        settings.cluster.voters = vec![settings.node.name.clone()];
        settings.cluster.cookie = Secret::new("test-cookie");
        assert!(settings.problems().is_empty());
        let warnings = warnings(&settings);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("cluster.cookie: is 11 characters long"),
            "{warnings:?}"
        );
        assert!(
            warnings[0].contains("loopback") && warnings[0].contains("openssl rand -hex 32"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("test-cookie"), "{warnings:?}");

        settings.cluster.cookie = Secret::new("0123456789abcdef0123456789abcdef");
        assert!(crate::config::warnings(&settings).is_empty());
        settings.cluster.cookie = Secret::new("test-cookie");
        settings.cluster.enabled = false;
        assert!(crate::config::warnings(&settings).is_empty());
        settings.cluster.enabled = true;
        settings.cluster.seeds = vec!["10.0.0.6:4370".into()];
        assert!(
            crate::config::warnings(&settings).is_empty(),
            "refused, not warned"
        );
    }

    #[test]
    fn the_example_cluster_file_runs_on_one_machine_with_a_warning_only() {
        let source = ConfigSource::File(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/cluster.toml"
        )));
        for settings in load_every_node_with_env(&source, no_env()).expect("cluster.toml loads") {
            let warnings = warnings(&settings);
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains("example cookie"), "{warnings:?}");
        }
        // The same file with a node on another machine stops.
        let problems = invalid(load_with_env(
            &source,
            Some("a"),
            env(&[("HUBBUB_CLUSTER__ADVERTISE", "10.0.0.1:4371")]),
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("cluster.cookie: is the example cookie"),
            "{problems:?}"
        );
        assert!(
            problems[0].ends_with(&format!(
                "(in {} line {})",
                source_path(&source),
                cookie_line()
            )),
            "{problems:?}"
        );
    }

    fn source_path(source: &ConfigSource) -> String {
        match source {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Defaults => String::new(),
        }
    }

    /// The line of cluster.toml that sets the cookie.
    fn cookie_line() -> usize {
        include_str!("../../cluster.toml")
            .lines()
            .position(|line| line.starts_with("cookie ="))
            .expect("cluster.toml sets a cookie")
            + 1
    }

    #[test]
    fn every_example_cookie_of_the_repository_is_refused() {
        // The cookies written in the repository's examples and docs.
        let sources = [
            include_str!("../../cluster.toml"),
            include_str!("default.toml"),
            include_str!("../../docker-compose.yml"),
            include_str!("../../docs/configuration.md"),
            include_str!("../../docs/operations.md"),
            include_str!("../../docs/cluster.md"),
        ];
        let mut found = 0;
        for text in sources {
            for line in text.lines() {
                let Some((_, value)) = line.split_once("cookie = \"") else {
                    continue;
                };
                let Some((cookie, _)) = value.split_once('"') else {
                    continue;
                };
                found += 1;
                assert!(
                    EXAMPLE_COOKIES.contains(&cookie),
                    "{cookie:?} is not in EXAMPLE_COOKIES"
                );
            }
        }
        assert!(found >= 3, "found {found} example cookies");
    }
}
