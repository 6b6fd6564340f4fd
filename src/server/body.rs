//! The request body the service sees: hyper's, with a progress timeout.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{BoxError, conn::ConnState};
use crate::connection::RequestBodyTimeout;

pin_project! {
    /// The body of a request served by [`serve`](super::serve): the bytes
    /// the client sends, which must keep coming.
    ///
    /// When no frame arrives for the server's progress timeout, the body
    /// yields a [`RequestBodyTimeout`] error (a boxed one: find it with
    /// `error.downcast_ref::<RequestBodyTimeout>()`, or anywhere in a
    /// source chain). The proxy answers 408 for it and frees the upstream
    /// stream; a service that reads the body itself sees the typed error,
    /// and [`serve`](super::serve) answers 408 when the service fails with
    /// it.
    ///
    /// It implements [`http_body::Body`] with `Data = Bytes`, which axum,
    /// tonic and hyper services accept.
    #[derive(Debug)]
    pub struct Body {
        #[pin]
        inner: Incoming,
        timeout: Duration,
        // Created the first time the body has to wait, then reset: bodies
        // that never wait allocate nothing.
        stall: Option<Pin<Box<Sleep>>>,
        waiting: bool,
        // HTTP/1.1: told when the body has been read to its end, so that an
        // earlier response is sent with `Connection: close`.
        conn: Option<Arc<ConnState>>,
    }
}

impl Body {
    pub(crate) fn new(inner: Incoming, timeout: Duration, conn: Option<Arc<ConnState>>) -> Self {
        Self {
            inner,
            timeout,
            stall: None,
            waiting: false,
            conn,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.waiting = false;
                if frame.is_trailers() || this.inner.is_end_stream() {
                    read_to_end(this.conn);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => {
                read_to_end(this.conn);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = *this.timeout;
                let sleep = match this.stall {
                    Some(sleep) if *this.waiting => sleep,
                    Some(sleep) => {
                        sleep.as_mut().reset(Instant::now() + timeout);
                        sleep
                    }
                    None => this.stall.insert(Box::pin(tokio::time::sleep(timeout))),
                };
                *this.waiting = true;
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(RequestBodyTimeout(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn read_to_end(conn: &mut Option<Arc<ConnState>>) {
    if let Some(conn) = conn.take() {
        conn.body_read();
    }
}
