//! The `hubbub` binary: parses arguments, loads settings, runs a node.

use clap::{Parser, Subcommand};
use hubbub::config::{self, ConfigSource};
use hubbub::Application;
use std::path::PathBuf;
use std::process::ExitCode;

/// An actor-model clustered chat node.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it and without HUBBUB_CONFIG, built-in
    /// defaults apply. HUBBUB_SECTION__KEY environment variables override both.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The node to run as, by name, when the file describes a whole cluster with
    /// [[nodes]] entries. `check-config` without it checks every node.
    #[arg(long, global = true, value_name = "NAME")]
    node: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve,
    /// Load and validate the configuration, then exit.
    CheckConfig,
    /// Print a commented configuration with every key at its default.
    DefaultConfig,
}

/// Exit code for a configuration that does not load or validate.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = ConfigSource::from_args(cli.config);
    let node = cli.node.as_deref();
    match cli.command.unwrap_or(Command::Serve) {
        Command::DefaultConfig => {
            print!("{}", config::default_config_toml());
            ExitCode::SUCCESS
        }
        Command::CheckConfig => {
            let loaded = match node {
                Some(node) => config::load(&source, Some(node)).map(|settings| vec![settings]),
                None => config::load_every_node(&source),
            };
            match loaded {
                Ok(every) => {
                    for warning in warnings(&every) {
                        eprintln!("hubbub: warning: {warning}");
                    }
                    print_valid(&every);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hubbub: invalid configuration:\n{e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Serve => {
            let settings = match config::load(&source, node) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("hubbub: invalid configuration:\n{e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            if let Err(e) = hubbub::telemetry::init(&settings.log, &settings.node.name) {
                eprintln!("hubbub: cannot start logging: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            for warning in warnings(std::slice::from_ref(&settings)) {
                tracing::warn!("{warning}");
            }
            match actix_web::rt::System::new().block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "hubbub stopped with an error");
                    eprintln!("hubbub: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What does not stop a node but should be fixed: `HUBBUB_` variables that are not
/// settings (one line), then each node's warnings, each said once.
fn warnings(every: &[hubbub::Settings]) -> Vec<String> {
    let environment = std::env::vars_os().map(|(name, value)| {
        (
            name.to_string_lossy().into_owned(),
            value.to_string_lossy().into_owned(),
        )
    });
    let mut warnings: Vec<String> = config::environment_warning(environment)
        .into_iter()
        .collect();
    for settings in every {
        for warning in config::warnings(settings) {
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    warnings
}

/// `check-config`'s report: one line for one node, else a line per node under `ok`.
fn print_valid(every: &[hubbub::Settings]) {
    match every {
        [one] => println!("ok: configuration is valid ({})", describe(one)),
        _ => {
            println!("ok: configuration is valid for {} nodes", every.len());
            for settings in every {
                println!("  {}", describe(settings));
            }
        }
    }
}

/// Who a node is and where it listens, and whether its server API is on; never the
/// cookie or an API key.
fn describe(settings: &hubbub::Settings) -> String {
    let scheme = if settings.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut text = format!(
        "node {}, {scheme} {}",
        settings.node.name, settings.node.http_addr
    );
    let cluster = &settings.cluster;
    if cluster.enabled {
        text.push_str(&format!(", cluster {}", cluster.bind));
        if !cluster.advertise.is_empty() {
            text.push_str(&format!(" advertised as {}", cluster.advertise));
        }
        text.push_str(&format!(", seeds [{}]", cluster.seeds.join(", ")));
    }
    // Whether the server API is on and where; how many keys, never which.
    let api = &settings.api;
    if api.enabled() {
        let keys = api.keys.iter().filter(|k| !k.is_blank()).count();
        let on = match settings.admin.listen_addr() {
            Some(admin) => format!("admin {admin}"),
            None => "http_addr".to_owned(),
        };
        let plural = if keys == 1 { "" } else { "s" };
        text.push_str(&format!(
            ", server API on at {on}/api/ ({keys} key{plural})"
        ));
    } else {
        text.push_str(", server API off (no [api] keys)");
    }
    text.push_str(&hubbub::hooks::describe(settings));
    text
}

async fn serve(settings: hubbub::Settings) -> std::io::Result<()> {
    Application::build(settings)?.run_until_stopped().await
}
