//! tracing setup: pretty by default, JSON with `--log-format json`; RUST_LOG overrides the level.

use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// Installs the global tracing subscriber writing to stderr.
pub(crate) fn init(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "info,reconix=debug,reconix_reconcilers=debug,reconix_nixcli=debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless, so its error is ignored.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
