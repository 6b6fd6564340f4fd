//! Graceful shutdown: stop accepting, ask connections to finish, cut the
//! rest at the deadline.

use std::{
    future::pending,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;

/// How a [`serve`](super::serve) loop ended, after its shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections open when the signal came.
    pub open: usize,
    /// Connections still open at the shutdown deadline, closed then with
    /// whatever they were doing (their requests were cut).
    pub cut: usize,
}

/// The connections' side of the shutdown: the signals they watch, and the
/// count of those cut.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    pub(crate) drain: watch::Receiver<bool>,
    pub(crate) cut: watch::Receiver<bool>,
    cut_count: Arc<AtomicUsize>,
}

impl Signals {
    pub(crate) fn cut_one(&self) {
        self.cut_count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The loop's side of the shutdown.
#[derive(Debug)]
pub(crate) struct Shutdown {
    drain: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    cut_count: Arc<AtomicUsize>,
}

impl Shutdown {
    pub(crate) fn new() -> (Self, Signals) {
        let (drain, drain_rx) = watch::channel(false);
        let (cut, cut_rx) = watch::channel(false);
        let cut_count = Arc::new(AtomicUsize::new(0));
        let signals = Signals {
            drain: drain_rx,
            cut: cut_rx,
            cut_count: cut_count.clone(),
        };
        (
            Self {
                drain,
                cut,
                cut_count,
            },
            signals,
        )
    }

    /// Asks every connection to finish (HTTP/2 GOAWAY, HTTP/1.1
    /// `Connection: close` on the current response) and waits for them
    /// until `timeout`; then cuts those left. Every [`Signals`] must have
    /// been handed to connection tasks or dropped: the wait ends when the
    /// last one is dropped.
    pub(crate) async fn run(self, open: usize, timeout: Duration) -> ShutdownReport {
        self.drain.send_replace(true);
        let finished = tokio::time::timeout(timeout, self.drain.closed()).await;
        if finished.is_err() {
            self.cut.send_replace(true);
            self.drain.closed().await;
        }
        ShutdownReport {
            open,
            cut: self.cut_count.load(Ordering::Relaxed),
        }
    }
}

/// Completes when the server asks connections to finish, or was dropped
/// (then connections finish on their own terms, as before a shutdown).
pub(crate) async fn draining(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|draining| *draining).await;
}

/// Completes when the shutdown deadline has passed; never if the server
/// was dropped without a shutdown.
pub(crate) async fn cut(cut: &mut watch::Receiver<bool>) {
    if cut.wait_for(|cut| *cut).await.is_err() {
        pending::<()>().await;
    }
}
