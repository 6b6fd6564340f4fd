//! Graceful shutdown: stop accepting, ask connections to finish, cut the
//! rest at the deadline.

use std::{
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

/// The connections' side of the shutdown: a receiver each connection task
/// holds until it ends (the shutdown waits for the last one to drop), and
/// the count of those cut. The drain and cut signals themselves reach each
/// connection through its own state (see `conn::ConnState::raise`).
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    pub(crate) drain: watch::Receiver<bool>,
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
    cut_count: Arc<AtomicUsize>,
}

impl Shutdown {
    pub(crate) fn new() -> (Self, Signals) {
        let (drain, drain_rx) = watch::channel(false);
        let cut_count = Arc::new(AtomicUsize::new(0));
        let signals = Signals {
            drain: drain_rx,
            cut_count: cut_count.clone(),
        };
        (Self { drain, cut_count }, signals)
    }

    /// Waits until `timeout` for the connections, already asked to finish
    /// (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close` on the current
    /// response), to end; then cuts those left (`cut_all`) and waits for
    /// them to go. Every [`Signals`] must have been handed to connection
    /// tasks or dropped: the wait ends when the last one is dropped.
    pub(crate) async fn run(
        self,
        open: usize,
        timeout: Duration,
        cut_all: impl FnOnce(),
    ) -> ShutdownReport {
        self.drain.send_replace(true);
        let finished = tokio::time::timeout(timeout, self.drain.closed()).await;
        if finished.is_err() {
            cut_all();
            self.drain.closed().await;
        }
        ShutdownReport {
            open,
            cut: self.cut_count.load(Ordering::Relaxed),
        }
    }
}
