use std::{
    collections::{BTreeMap, VecDeque},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use tokio::{sync::watch, time::Instant};
use tower::discover::Change;

use super::Endpoint;
use crate::deferred::DeferredTask;

/// The healthy endpoints of one service at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Endpoints by ID.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// When the source last confirmed this set.
    pub confirmed_at: Instant,
    /// Whether the source is failing (the set is the last known one).
    pub stale: bool,
}

impl Snapshot {
    /// A fresh snapshot of `endpoints`.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|e| (e.id().to_owned(), e))
                .collect(),
            confirmed_at: Instant::now(),
            stale: false,
        }
    }

    /// How long ago the source last confirmed this set.
    pub fn age(&self) -> Duration {
        self.confirmed_at.elapsed()
    }
}

/// A shared view of one service's endpoints, kept current by one watcher
/// (a Consul blocking-query loop, or a static list) and read by any number
/// of balancers and observers.
///
/// A watcher that runs as a background task (Consul) starts the first time
/// its watch is read inside a Tokio runtime, so a watch can be made before
/// the runtime that serves it.
#[derive(Debug, Clone)]
pub struct EndpointWatch {
    rx: watch::Receiver<Arc<Snapshot>>,
    watcher: Option<Arc<DeferredTask>>,
}

impl EndpointWatch {
    /// Wraps a receiver that a watcher publishes snapshots to.
    pub fn new(rx: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self { rx, watcher: None }
    }

    /// A watch whose watcher is a task that starts with the first read.
    #[cfg_attr(not(feature = "consul"), allow(dead_code))]
    pub(crate) fn deferred(rx: watch::Receiver<Arc<Snapshot>>, watcher: DeferredTask) -> Self {
        Self {
            rx,
            watcher: Some(Arc::new(watcher)),
        }
    }

    /// Starts the watcher's task if it has one and a Tokio runtime is
    /// current; after the first time, one atomic load.
    #[inline]
    pub(crate) fn start(&self) {
        if let Some(watcher) = &self.watcher {
            watcher.start();
        }
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.start();
        self.rx.borrow().clone()
    }

    /// A receiver that changes with every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.start();
        self.rx.clone()
    }

    /// A [`Discover`](tower::discover::Discover) stream of the changes
    /// between snapshots: first an `Insert` for every current endpoint,
    /// then `Insert`/`Remove` as the set changes. An endpoint whose address
    /// or tags change is removed and inserted again.
    pub fn changes(&self) -> Changes {
        self.start();
        let mut rx = self.rx.clone();
        rx.mark_changed();
        Changes {
            watcher: self.watcher.clone(),
            rx,
            known: BTreeMap::new(),
            queue: VecDeque::new(),
            changed: None,
        }
    }
}

type Changed =
    Pin<Box<dyn std::future::Future<Output = (watch::Receiver<Arc<Snapshot>>, bool)> + Send>>;

/// The [`Discover`](tower::discover::Discover) stream of an
/// [`EndpointWatch`]; ends when the watcher stops.
pub struct Changes {
    /// Started at every poll, for a stream made outside a runtime.
    watcher: Option<Arc<DeferredTask>>,
    rx: watch::Receiver<Arc<Snapshot>>,
    known: BTreeMap<String, Endpoint>,
    queue: VecDeque<Change<String, Endpoint>>,
    changed: Option<Changed>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl Changes {
    fn diff(&mut self, snapshot: &Snapshot) {
        let removed: Vec<String> = self
            .known
            .iter()
            .filter(|(id, e)| snapshot.endpoints.get(*id) != Some(e))
            .map(|(id, _)| id.clone())
            .collect();
        for id in removed {
            self.known.remove(&id);
            self.queue.push_back(Change::Remove(id));
        }
        for (id, endpoint) in &snapshot.endpoints {
            if !self.known.contains_key(id) {
                self.known.insert(id.clone(), endpoint.clone());
                self.queue
                    .push_back(Change::Insert(id.clone(), endpoint.clone()));
            }
        }
    }
}

impl Stream for Changes {
    type Item = Result<Change<String, Endpoint>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(watcher) = &this.watcher {
            watcher.start();
        }
        loop {
            if let Some(change) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match this.rx.has_changed() {
                Ok(true) => {
                    let snapshot = this.rx.borrow_and_update().clone();
                    this.diff(&snapshot);
                    continue;
                }
                Ok(false) => {}
                Err(_) => {
                    // The watcher is gone: deliver what it last published,
                    // then end (waiting on a closed channel would spin).
                    let snapshot = this.rx.borrow_and_update().clone();
                    this.diff(&snapshot);
                    if this.queue.is_empty() {
                        return Poll::Ready(None);
                    }
                    continue;
                }
            }
            let changed = this.changed.get_or_insert_with(|| {
                let mut rx = this.rx.clone();
                Box::pin(async move {
                    let alive = rx.changed().await.is_ok();
                    (rx, alive)
                })
            });
            let (rx, alive) = std::task::ready!(changed.as_mut().poll(cx));
            this.changed = None;
            if !alive {
                return Poll::Ready(None);
            }
            // The clone saw the change; mark ours so the loop diffs it.
            drop(rx);
            this.rx.mark_changed();
        }
    }
}

/// A fixed (or hand-updated) list of endpoints with the same interface as
/// Consul discovery: the embedded default when no Consul is configured.
///
/// ```
/// use tower_gateway::discovery::{Endpoint, StaticDiscovery};
///
/// let orders = StaticDiscovery::new([
///     Endpoint::new("orders-1", "127.0.0.1", 3001),
///     Endpoint::new("orders-2", "127.0.0.1", 3002),
/// ]);
/// assert_eq!(orders.watch().current().endpoints.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl StaticDiscovery {
    /// A source that always reports `endpoints`.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::new(endpoints)));
        Self { tx: Arc::new(tx) }
    }

    /// Replaces the list (for tests, or an orchestrator of your own).
    pub fn set(&self, endpoints: impl IntoIterator<Item = Endpoint>) {
        self.tx.send_replace(Arc::new(Snapshot::new(endpoints)));
    }

    /// The shared view.
    pub fn watch(&self) -> EndpointWatch {
        EndpointWatch::new(self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    /// A source dropped right after an update: the stream delivers the
    /// update and then ends, instead of spinning.
    #[tokio::test]
    async fn a_closed_source_ends_the_stream_after_its_last_update() {
        let source = StaticDiscovery::new([Endpoint::new("a", "127.0.0.1", 1)]);
        let mut changes = source.watch().changes();
        assert!(matches!(changes.next().await, Some(Ok(Change::Insert(id, _))) if id == "a"));
        source.set([Endpoint::new("b", "127.0.0.1", 2)]);
        drop(source);
        let rest = tokio::time::timeout(Duration::from_secs(1), changes.collect::<Vec<_>>())
            .await
            .expect("the stream ended");
        let ids: Vec<String> = rest
            .into_iter()
            .map(|c| match c {
                Ok(Change::Insert(id, _)) => format!("+{id}"),
                Ok(Change::Remove(id)) => format!("-{id}"),
                Err(never) => match never {},
            })
            .collect();
        assert_eq!(ids, ["-a", "+b"]);
    }
}
