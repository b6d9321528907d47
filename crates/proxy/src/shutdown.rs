//! Shutdown signals: the first SIGTERM / Ctrl-C asks for a drain, a second one ends the remaining
//! calls (with BYE) so the process can exit. The admin API's drain starts the same drain without
//! counting as a signal, so a later SIGTERM (an orchestrator stopping the node) does not force it.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;

/// A cloneable handle counting shutdown requests (signals or [`Shutdown::trigger`]).
///
/// The first request starts the drain ([`Shutdown::wait`] resolves); a second means the operator
/// will not wait for it ([`Shutdown::wait_forced`] resolves).
#[derive(Debug, Clone)]
pub struct Shutdown {
    requests: Arc<watch::Sender<u32>>,
    /// Set by [`Shutdown::request_drain`]: draining without a signal.
    drain: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// A handle that only [`Shutdown::trigger`] fires.
    pub fn new() -> Self {
        Self {
            requests: Arc::new(watch::Sender::new(0)),
            drain: Arc::new(watch::Sender::new(false)),
        }
    }

    /// A handle fired by SIGTERM and Ctrl-C (SIGINT), each one counted. Spawns a task on the current
    /// Tokio runtime; fails if the signal handlers cannot be installed.
    pub fn listen() -> io::Result<Self> {
        let shutdown = Self::new();
        #[cfg(unix)]
        let (mut terminate, mut interrupt) = {
            use tokio::signal::unix::{SignalKind, signal};
            (
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            )
        };
        let handle = shutdown.clone();
        tokio::spawn(async move {
            loop {
                #[cfg(unix)]
                let signal = tokio::select! {
                    Some(()) = terminate.recv() => "SIGTERM",
                    Some(()) = interrupt.recv() => "SIGINT",
                    else => return,
                };
                #[cfg(not(unix))]
                let signal = match tokio::signal::ctrl_c().await {
                    Ok(()) => "Ctrl-C",
                    Err(_) => return,
                };
                handle.trigger();
                if handle.requests() == 1 {
                    tracing::info!(
                        signal,
                        "shutdown requested: draining; send it again to end the remaining calls with BYE"
                    );
                } else {
                    tracing::warn!(
                        signal,
                        "second shutdown request: ending the remaining calls with BYE"
                    );
                }
            }
        });
        Ok(shutdown)
    }

    /// Counts one shutdown request, as a signal would.
    pub fn trigger(&self) {
        self.requests.send_modify(|n| *n = n.saturating_add(1));
    }

    /// Starts the drain without counting a signal (the admin API); returns whether this call
    /// started it (false when a drain was already under way).
    pub fn request_drain(&self) -> bool {
        let already = self.triggered();
        let first = self
            .drain
            .send_if_modified(|drain| !std::mem::replace(drain, true));
        first && !already
    }

    /// Requests so far.
    pub fn requests(&self) -> u32 {
        *self.requests.borrow()
    }

    /// Whether shutdown (a signal or the admin drain) has been requested.
    pub fn triggered(&self) -> bool {
        self.requests() >= 1 || *self.drain.borrow()
    }

    /// Resolves once shutdown has been requested (immediately if it already was).
    pub async fn wait(&self) {
        let mut drain = self.drain.subscribe();
        tokio::select! {
            () = self.wait_for(1) => {}
            _ = drain.wait_for(|drain| *drain) => {}
        }
    }

    /// Resolves once shutdown has been requested a second time.
    pub async fn wait_forced(&self) {
        self.wait_for(2).await;
    }

    async fn wait_for(&self, requests: u32) {
        let mut rx = self.requests.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n >= requests).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    async fn resolves(future: impl std::future::Future<Output = ()>) -> bool {
        timeout(Duration::from_secs(1), future).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_drains_second_forces() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.triggered());
        assert!(!resolves(shutdown.wait()).await);

        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        });
        shutdown.clone().trigger();
        waiter.await.unwrap();
        assert!(shutdown.triggered());
        assert_eq!(shutdown.requests(), 1);
        assert!(
            resolves(shutdown.wait()).await,
            "resolves again once triggered"
        );
        assert!(!resolves(shutdown.wait_forced()).await);

        shutdown.trigger();
        assert!(resolves(shutdown.wait_forced()).await);
        assert_eq!(shutdown.requests(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn admin_drain_is_idempotent_and_not_a_signal() {
        let shutdown = Shutdown::new();
        assert!(
            shutdown.request_drain(),
            "the first request starts the drain"
        );
        assert!(!shutdown.request_drain(), "a second one changes nothing");
        assert!(shutdown.triggered());
        assert!(resolves(shutdown.wait()).await);
        // The orchestrator's SIGTERM afterwards is the first signal, not a forced exit.
        shutdown.trigger();
        assert!(!resolves(shutdown.wait_forced()).await);
        shutdown.trigger();
        assert!(resolves(shutdown.wait_forced()).await);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_is_counted() {
        let shutdown = Shutdown::listen().unwrap();
        // The handler is installed by `listen`, so SIGTERM cannot kill the test process.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(resolves(shutdown.wait()).await, "SIGTERM triggers shutdown");
    }
}
