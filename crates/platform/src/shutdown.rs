//! The shutdown signal, passed into every service so tests can stop and restart services and
//! binaries stop on SIGTERM/SIGINT.

use tokio_util::sync::CancellationToken;

/// Cloneable; cancelling any clone stops everything that listens on it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once shutdown began.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    pub fn wait_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }

    /// Triggers this shutdown on SIGTERM or SIGINT (Ctrl-C). For binaries.
    pub fn trigger_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                () = me.wait() => {}
            }
            me.trigger();
        });
        Ok(())
    }
}
