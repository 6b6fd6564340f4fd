use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;

use super::{
    AccessLogBody,
    entry::{Entry, Outcome},
};

pin_project! {
    /// The response future of [`AccessLog`](super::AccessLog).
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        entry: Option<Entry>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(future: F, entry: Option<Entry>) -> Self {
        Self { future, entry }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<AccessLogBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let mut entry = this.entry.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(entry) = entry.as_mut() {
                    entry.head(&response);
                }
                Ok(response.map(|body| AccessLogBody::new(body, entry)))
            }
            Err(error) => {
                if let Some(mut entry) = entry {
                    entry.log(Outcome::ServiceError);
                }
                Err(error)
            }
        })
    }
}
