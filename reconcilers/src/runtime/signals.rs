//! Unix signal glue for the daemon: SIGTERM/SIGINT shut down, SIGHUP reloads the spec.
//!
//! Thin and untested on purpose: everything it drives (`CancellationToken`, the reload channel)
//! is tested where it is consumed.

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The exit status after a forced exit (128 + SIGINT, what shells report for Ctrl-C).
const FORCED_EXIT_CODE: i32 = 130;

/// Cancels `shutdown` on the first SIGTERM or SIGINT and exits the process on the second.
///
/// Must be called within a tokio runtime; the returned task runs until the process ends.
///
/// # Errors
/// Returns the error of installing a signal handler.
pub fn shutdown_on_signals(shutdown: CancellationToken) -> io::Result<JoinHandle<()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let mut received = false;
        loop {
            let name = tokio::select! {
                Some(()) = terminate.recv() => "SIGTERM",
                Some(()) = interrupt.recv() => "SIGINT",
                else => return,
            };
            if received {
                warn!(signal = name, "second signal, exiting without waiting");
                std::process::exit(FORCED_EXIT_CODE);
            }
            received = true;
            info!(
                signal = name,
                "shutting down after in-flight steps, signal again to force exit"
            );
            shutdown.cancel();
        }
    }))
}

/// Returns a channel that receives `()` on each SIGHUP, for [`SpecReloader::reload_on`].
///
/// Must be called within a tokio runtime.
///
/// [`SpecReloader::reload_on`]: super::SpecReloader::reload_on
///
/// # Errors
/// Returns the error of installing the signal handler.
pub fn sighup_stream() -> io::Result<mpsc::Receiver<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!(signal = "SIGHUP", "reloading the spec");
            match sender.try_send(()) {
                // A reload already pending covers this signal too.
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Closed(())) => return,
            }
        }
    });
    Ok(receiver)
}
