//! Logging set-up and the named telemetry events of the pipeline.

pub mod events;

/// Install the log subscriber once; `RUST_LOG` overrides `default_filter`.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // stdout is for what the commands print (listening addresses, summaries).
        .with_writer(std::io::stderr)
        .try_init();
}
