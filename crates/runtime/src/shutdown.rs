//! A shutdown request shared between the signal handler and the processing loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once SIGINT or SIGTERM arrives; the loop finishes its batch, commits and stops.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A shutdown nobody has requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the loop to stop after its current batch.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Requests shutdown on SIGINT or SIGTERM (call from within a tokio runtime); a second
    /// signal exits at once, for when the graceful stop hangs (an unreachable broker, say).
    pub fn on_signals(&self) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            let Ok(mut interrupt) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else {
                return;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutdown requested: finishing the batch and committing (a second signal exits at once)");
            shutdown.request();
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::warn!("second signal: exiting without committing");
            std::process::exit(130);
        });
    }
}
