//! Logging set-up: `tracing` to stderr, filtered by `PRIMACY_LOG` (or
//! `RUST_LOG`), default `info`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("PRIMACY_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
