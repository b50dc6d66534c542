//! Metrics every Tradeplex binary exports besides its own: the `process_*` family
//! (resident memory, CPU seconds, open file descriptors, start time; Linux only) and
//! `tradeplex_build_info{version, commit} 1`, so a dashboard can tell which build runs.

use prometheus::{IntGaugeVec, Opts, Registry};

/// The version every crate of the workspace shares.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built from (12 hex digits), or "unknown" outside a git checkout.
pub const COMMIT: &str = env!("TRADEPLEX_COMMIT");

/// Registers the process collector and the build-info gauge in `registry`. Panics only
/// if called twice on one registry (a programming error).
pub fn register(registry: &Registry) {
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics registered once per registry");
    let info = IntGaugeVec::new(
        Opts::new(
            "tradeplex_build_info",
            "Always 1; the labels say which build runs (commit \"unknown\" outside git)",
        ),
        &["version", "commit"],
    )
    .expect("static metric definition");
    info.with_label_values(&[VERSION, COMMIT]).set(1);
    registry
        .register(Box::new(info))
        .expect("build info registered once per registry");
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn process_and_build_info_are_exported() {
        let r = Registry::new();
        register(&r);
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let line = format!("tradeplex_build_info{{commit=\"{COMMIT}\",version=\"{VERSION}\"}} 1");
        assert!(text.contains(&line), "{text}");
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "no {name} in\n{text}");
        }
    }
}
