//! Loading and validating `Settings`.
//!
//! Owns: choosing where configuration comes from ([`ConfigSource`]), layering built-in
//! defaults < TOML file < `HUBBUB_SECTION__KEY` environment variables, checking the
//! result against the rules every limit must satisfy ([`Settings::validate`]), and the
//! commented template that `hubbub default-config` prints ([`default_config_toml`]).
//!
//! Must not know: how the settings are used. It never reads anything but the file it is
//! given and the environment it is handed, and it never panics on what it reads: every
//! mistake becomes a [`ConfigError`] that names the key and the reason.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use config::{Config, Environment, FileFormat, Format, Map, Source, Value, ValueKind};

use super::{HeartbeatSettings, LimitSettings, LogSettings, NodeSettings, RoomSettings, Settings};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "HUBBUB_CONFIG";

/// Prefix of environment variables that override settings: `HUBBUB_SECTION__KEY`.
const ENV_PREFIX: &str = "HUBBUB";
/// Between the prefix and the section (`HUBBUB_LIMITS`).
const ENV_PREFIX_SEPARATOR: &str = "_";
/// Between a section and its key (`LIMITS__MAX_CONNECTIONS`). Two underscores, because
/// keys themselves contain one.
const ENV_SEPARATOR: &str = "__";

/// Bytes of a frame that are envelope (type, room, ids) rather than message content.
const FRAME_ENVELOPE_BYTES: usize = 1024;
/// Worst-case UTF-8 bytes per character.
const MAX_UTF8_BYTES_PER_CHAR: usize = 4;
const MIN_FRAME_BYTES: usize = 256;
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
const MAX_OUTBOUND_QUEUE: usize = 1_000_000;
const MAX_ROOM_HISTORY: usize = 100_000;
const MIN_HEARTBEAT_INTERVAL_MS: u64 = 100;
const MAX_NODE_NAME_CHARS: usize = 64;

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

/// Loads and validates settings from `source` and the process environment.
pub fn load(source: &ConfigSource) -> Result<Settings, ConfigError> {
    load_with_env(source, std::env::vars_os().map(lossy_pair))
}

/// Loads and validates settings from `source` and the given environment variables, so
/// tests can supply an environment without touching the process's.
///
/// Layers, later wins: built-in defaults, the file (if any), then `HUBBUB_SECTION__KEY`
/// variables (`HUBBUB_LIMITS__MAX_CONNECTIONS=5`). Variables without the `HUBBUB_` prefix
/// are ignored, and so is `HUBBUB_CONFIG`, which names the file rather than a setting.
/// Any other `HUBBUB_` variable must name a setting.
pub fn load_with_env(
    source: &ConfigSource,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let defaults = Config::try_from(&Settings::default())?;
    let overrides = setting_overrides(env, &defaults)?;

    let mut builder = Config::builder().add_source(defaults.clone());
    if let ConfigSource::File(path) = source {
        builder = builder.add_source(TomlFile::read(path)?);
    }
    // No `try_parsing`: the config crate already parses a string into a number when the
    // field is a number, and parsing up front would turn a node called `007` into `7`.
    let environment = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_PREFIX_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(Some(overrides));
    let merged = builder.add_source(environment).build()?;
    let not_integers = non_integer_counts(&merged, &defaults);
    if !not_integers.is_empty() {
        return Err(ConfigError::Parse {
            message: not_integers.join("\n"),
        });
    }
    let settings: Settings = merged.try_deserialize()?;

    settings.validate()?;
    Ok(settings)
}

/// `std::env::vars` would panic on a variable that is not UTF-8. Read lossily instead:
/// such a `HUBBUB_` variable then fails loading or validation by name, not silently.
fn lossy_pair((key, value): (OsString, OsString)) -> (String, String) {
    (
        key.to_string_lossy().into_owned(),
        value.to_string_lossy().into_owned(),
    )
}

/// The `HUBBUB_` variables that override settings, keyed as the environment has them.
/// A variable that names no setting is an error naming the variable, which is clearer
/// than the unknown-field error deserialisation would give.
fn setting_overrides(
    env: impl IntoIterator<Item = (String, String)>,
    defaults: &Config,
) -> Result<Map<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}{ENV_PREFIX_SEPARATOR}").to_lowercase();
    let mut overrides = Map::new();
    let mut unknown = Vec::new();
    for (name, value) in env {
        let lower = name.to_lowercase();
        let Some(key) = lower.strip_prefix(&prefix) else {
            continue;
        };
        if lower == CONFIG_PATH_ENV.to_lowercase() {
            continue;
        }
        let path = key.replace(ENV_SEPARATOR, ".");
        if is_setting(defaults, &path) {
            overrides.insert(name, value);
        } else {
            unknown.push(format!(
                "environment variable {name}: `{path}` is not a setting \
                 (expected {ENV_PREFIX}_SECTION__KEY, e.g. {ENV_PREFIX}_LIMITS__MAX_CONNECTIONS)"
            ));
        }
    }
    if unknown.is_empty() {
        Ok(overrides)
    } else {
        unknown.sort();
        Err(ConfigError::Parse {
            message: unknown.join("\n"),
        })
    }
}

/// Whether `path` (`section.key`) names a leaf of the settings tree.
fn is_setting(defaults: &Config, path: &str) -> bool {
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

    /// Every broken rule, as `section.key: reason`; empty when the settings are valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Problems::default();
        check_node(&self.node, &mut problems);
        check_limits(&self.limits, &mut problems);
        check_rooms(&self.rooms, &mut problems);
        check_heartbeat(&self.heartbeat, &mut problems);
        check_log(&self.log, &mut problems);
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
    let name = &node.name;
    if name.is_empty() {
        problems.add("node.name", "must not be empty");
        return;
    }
    let chars = name.chars().count();
    if chars > MAX_NODE_NAME_CHARS {
        problems.add(
            "node.name",
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
            "node.name",
            format_args!("may only contain ASCII letters, digits, `_`, `.` and `-`, not {bad:?}"),
        );
    }
}

fn check_limits(limits: &LimitSettings, problems: &mut Problems) {
    if limits.max_connections < 1 {
        problems.add("limits.max_connections", "must be at least 1");
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
    if limits.frames_per_second > 0 && limits.frames_burst < 1 {
        problems.add(
            "limits.frames_burst",
            "must be at least 1 when limits.frames_per_second is above 0 \
             (set frames_per_second = 0 to turn rate limiting off)",
        );
    }
}

fn check_rooms(rooms: &RoomSettings, problems: &mut Problems) {
    if !(1..=MAX_ROOM_HISTORY).contains(&rooms.history) {
        problems.add(
            "rooms.history",
            format_args!(
                "must be between 1 and {MAX_ROOM_HISTORY}, not {}",
                rooms.history
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
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
        load_with_env(&file.source(), env)
    }

    /// The problems `validate` reports for settings changed by `change`.
    fn problems_after(change: impl FnOnce(&mut Settings)) -> Vec<String> {
        let mut settings = Settings::default();
        change(&mut settings);
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
        let settings = load_with_env(&ConfigSource::Defaults, no_env()).expect("defaults load");
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
            env(&[("HUBBUB_NODE__NAME", "007")]),
        )
        .expect("env loads");
        assert_eq!(settings.node.name, "007");
    }

    #[test]
    fn config_path_variable_and_foreign_variables_are_not_settings() {
        let settings = load_with_env(
            &ConfigSource::Defaults,
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
    fn unknown_hubbub_variable_names_the_variable() {
        let error = load_with_env(
            &ConfigSource::Defaults,
            env(&[("HUBBUB_LIMITS__MAX_CONECTIONS", "5"), ("HUBBUB_LOG", "x")]),
        )
        .expect_err("unknown variables fail");
        let message = error.to_string();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        assert!(
            message.contains("HUBBUB_LIMITS__MAX_CONECTIONS")
                && message.contains("limits.max_conections"),
            "{message}"
        );
        assert!(message.contains("HUBBUB_LOG"), "{message}");
    }

    #[test]
    fn bad_env_value_names_the_key() {
        let error = load_with_env(
            &ConfigSource::Defaults,
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
        let error = load_with_env(&file.source(), no_env()).expect_err("string is no count");
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
            let message = load_with_env(&file.source(), no_env())
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
        let error = load_with_env(&file.source(), no_env()).expect_err("bad TOML fails");
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
        let error = load_with_env(&ConfigSource::File(path.clone()), no_env())
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
        let error = load_with_env(&ConfigSource::File(without_extension), no_env())
            .expect_err("the exact path is used");
        assert!(matches!(error, ConfigError::NotFound { .. }), "{error:?}");
    }

    #[test]
    fn directory_is_unreadable_and_named() {
        let dir = std::env::temp_dir();
        let error = load_with_env(&ConfigSource::File(dir.clone()), no_env())
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
    fn max_connections_must_be_at_least_one() {
        let problems = problems_after(|s| s.limits.max_connections = 0);
        assert_eq!(problems, ["limits.max_connections: must be at least 1"]);
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
    fn room_history_must_be_in_range() {
        assert_one_problem(&problems_after(|s| s.rooms.history = 0), "rooms.history");
        assert_one_problem(
            &problems_after(|s| s.rooms.history = 100_001),
            "rooms.history",
        );
        assert!(problems_after(|s| s.rooms.history = 100_000).is_empty());
    }

    #[test]
    fn heartbeat_interval_has_a_floor() {
        assert_one_problem(
            &problems_after(|s| s.heartbeat.interval_ms = 99),
            "heartbeat.interval_ms",
        );
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
                // Only the name, which defaults to the host name, is left commented out.
                assert_eq!(
                    commented,
                    section == "node" && key == "name",
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
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster.toml"));
        let settings =
            load_with_env(&ConfigSource::File(path), no_env()).expect("cluster.toml loads");
        assert_eq!(settings.problems(), Vec::<String>::new());
    }
}
