//! From discovered endpoints to a load-balanced service.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tower::discover::Change;
use tower_service::Service;

use crate::discovery::Endpoint;

pin_project! {
    /// Turns the [`Change`]s of endpoints into changes of endpoint services,
    /// building each service once, when its endpoint appears. An endpoint
    /// `make` cannot build a service for (an address that is no valid
    /// authority) is skipped.
    pub(crate) struct EndpointServices<D, F> {
        #[pin]
        changes: D,
        make: F,
        skipped: std::collections::HashSet<String>,
    }
}

impl<D, F> EndpointServices<D, F> {
    pub(crate) fn new(changes: D, make: F) -> Self {
        Self {
            changes,
            make,
            skipped: std::collections::HashSet::new(),
        }
    }
}

impl<D, F, S, E> Stream for EndpointServices<D, F>
where
    D: Stream<Item = Result<Change<String, Endpoint>, E>>,
    F: FnMut(&Endpoint) -> Option<S>,
{
    type Item = Result<Change<String, S>, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            let change = match ready!(this.changes.as_mut().poll_next(cx)) {
                Some(Ok(Change::Insert(id, endpoint))) => match (this.make)(&endpoint) {
                    Some(service) => Change::Insert(id, service),
                    None => {
                        this.skipped.insert(id);
                        continue;
                    }
                },
                Some(Ok(Change::Remove(id))) => {
                    if this.skipped.remove(&id) {
                        continue;
                    }
                    Change::Remove(id)
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            };
            return Poll::Ready(Some(Ok(change)));
        }
    }
}

/// Keeps the endpoint that power-of-two-choices picked until the request is
/// sent.
///
/// tower's p2c `Balance` remembers its choice as an index into its ready
/// set and processes discovery updates on every `poll_ready`; a `Remove`
/// between `poll_ready` and `call` reorders that set, and the request goes
/// to whichever endpoint now sits at the index (tower-rs/tower#856). This
/// wrapper polls the balancer ready once and answers later polls itself
/// until `call`, so no discovery update lands between the choice and the
/// dispatch; the update is applied on the next request.
#[derive(Debug)]
pub(crate) struct PinnedChoice<S> {
    inner: S,
    chosen: bool,
}

impl<S> PinnedChoice<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            chosen: false,
        }
    }
}

impl<S, Req> Service<Req> for PinnedChoice<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.chosen {
            return Poll::Ready(Ok(()));
        }
        ready!(self.inner.poll_ready(cx))?;
        self.chosen = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.chosen = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        future::Ready,
        sync::{Arc, Mutex},
        task::Waker,
    };

    use tower::{balance::p2c::Balance, load::Constant};

    use super::*;

    /// An endpoint that answers with its name and records when it was last
    /// polled ready (p2c polls the endpoint it chose right before reporting
    /// ready, so the last one polled is the choice).
    struct Named {
        name: &'static str,
        last_polled: Arc<Mutex<Option<&'static str>>>,
    }

    impl Service<()> for Named {
        type Response = &'static str;
        type Error = Infallible;
        type Future = Ready<Result<&'static str, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            *self.last_polled.lock().unwrap() = Some(self.name);
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(self.name))
        }
    }

    fn poll_ready<S: Service<()>>(svc: &mut S) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// tower-rs/tower#856: three endpoints with loads 0, 1 and 10; after
    /// p2c has chosen, discovery removes the chosen endpoint and `poll_ready`
    /// is called again before `call`. The request must go to the endpoint
    /// that was chosen — never silently to another one.
    #[tokio::test]
    async fn removal_between_ready_and_call_does_not_redirect_the_request() {
        for _ in 0..64 {
            let last_polled = Arc::new(Mutex::new(None));
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for (name, load) in [("a", 0usize), ("b", 1), ("c", 10)] {
                let svc = Named {
                    name,
                    last_polled: last_polled.clone(),
                };
                tx.send(Change::Insert(name, Constant::new(svc, load)))
                    .unwrap();
            }
            let discover = futures_util::stream::poll_fn(move |cx| {
                rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>))
            });
            let mut balance = PinnedChoice::new(Balance::new(discover));
            tower::ServiceExt::ready(&mut balance).await.unwrap();
            let chosen = last_polled.lock().unwrap().expect("an endpoint was polled");
            tx.send(Change::Remove(chosen)).unwrap();
            assert!(poll_ready(&mut balance));
            let answered = balance.call(()).await.unwrap();
            assert_eq!(answered, chosen, "the request went to another endpoint");
            // The removal is applied before the next choice.
            tower::ServiceExt::ready(&mut balance).await.unwrap();
            let next = last_polled.lock().unwrap().expect("polled");
            assert_ne!(next, chosen, "a removed endpoint was chosen again");
        }
    }
}
