//! The `primacy` binary: parses the command line and runs it.

#![forbid(unsafe_code)]

use clap::Parser;
use primacy::cli::{Cli, Command};
use primacy::config::Config;

fn main() {
    let cli = Cli::parse();
    primacy::telemetry::init();
    // A panic inside one session (e.g. a protocol library on hostile input)
    // closes that session only; log it as a structured event (rate-limited).
    primacy::telemetry::install_panic_hook();
    let result = match cli.command {
        Command::Serve => Config::load(cli.config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                config.validate_for_serve()?;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let result = rt.block_on(primacy::lifecycle::serve(config));
                // Sessions left after the drain are dropped; do not wait
                // on blocking tasks (a stuck database call) for long.
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                result
            }),
        _ => primacy::cli::run(cli),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
