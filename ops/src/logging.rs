//! Structured logs through `tracing`, to stderr (stdout is for command output):
//! human-readable by default, one JSON object per line with `json = true`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a filter such as `info` or
/// `tradeplex_broker=debug,info`; `RUST_LOG` overrides it when set.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    // A second init (e.g. from a test) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
