//! Background work that starts when it is first needed, not when its owner
//! is built.
//!
//! Layers and handles are built before the runtime that serves them exists
//! (in a `main` that creates the runtime afterwards, in synchronous
//! configuration code, in plain `#[test]`s). A control-plane task — a JWKS
//! refresher, a discovery watch, an upstream's endpoint follower — is
//! therefore kept here until the first use from inside a Tokio runtime
//! (the first request, the first await on the handle), and spawned then.
//! After that, every use costs one atomic load.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

type BoxTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type Prepare = Box<dyn FnOnce() -> BoxTask + Send + 'static>;

/// A task spawned on the first [`start`](Self::start) made inside a Tokio
/// runtime. Dropped unstarted, it never runs.
pub(crate) struct DeferredTask {
    started: AtomicBool,
    prepare: Mutex<Option<Prepare>>,
}

impl fmt::Debug for DeferredTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredTask")
            .field("started", &self.started.load(Ordering::Relaxed))
            .finish()
    }
}

impl DeferredTask {
    /// A task that `prepare` makes when it starts: `prepare` runs
    /// synchronously, inside the runtime, right before the spawn (to catch
    /// up on what changed since construction), and returns the task.
    pub(crate) fn new<P, F>(prepare: P) -> Self
    where
        P: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        Self {
            started: AtomicBool::new(false),
            prepare: Mutex::new(Some(Box::new(move || Box::pin(prepare()) as BoxTask))),
        }
    }

    /// Spawns the task if it has not been yet and a Tokio runtime is
    /// current; outside a runtime it does nothing (the next call tries
    /// again).
    #[inline]
    pub(crate) fn start(&self) {
        if !self.started.load(Ordering::Acquire) {
            self.start_slow();
        }
    }

    #[cold]
    fn start_slow(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut prepare = self.prepare.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(prepare) = prepare.take() {
            runtime.spawn(prepare());
        }
        self.started.store(true, Ordering::Release);
    }

    /// Whether the task was spawned.
    #[cfg(test)]
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::DeferredTask;

    #[test]
    fn outside_a_runtime_nothing_starts_and_nothing_panics() {
        let task = DeferredTask::new(|| async {});
        task.start();
        assert!(!task.started());
    }

    #[tokio::test]
    async fn the_task_runs_once_however_often_it_is_started() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let counted = runs.clone();
        let task = DeferredTask::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                let _ = tx.send(());
            }
        });
        for _ in 0..3 {
            task.start();
        }
        rx.await.unwrap();
        assert!(task.started());
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }
}
