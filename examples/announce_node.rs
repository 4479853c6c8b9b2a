//! A node whose `news:*` rooms are announce-only (only the user `editor` may publish)
//! and whose `kids:*` rooms mask a few words. Everything else is plain chat.
//!
//! ```sh
//! cargo run --example announce_node -- [--config cluster.toml --node a]
//! ```

use hubbub::behaviour::{AnnounceOnly, WordFilter};
use hubbub::config::{load, ConfigSource};
use hubbub::{Application, Behaviours};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flag = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let path = flag("--config").map(Into::into);
    let node = flag("--node");
    let settings = load(&ConfigSource::from_args(path), node.as_deref())?;
    hubbub::telemetry::init(&settings.log, &settings.node.name)?;
    let behaviours = Behaviours::new()
        .with("news:*", AnnounceOnly::new(["editor"]))?
        .with("kids:*", WordFilter::new(["darn", "heck"]))?;
    actix_web::rt::System::new().block_on(async {
        Application::build_with(settings, behaviours)?
            .run_until_stopped()
            .await
    })?;
    Ok(())
}
