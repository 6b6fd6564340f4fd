use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::entry::{Entry, Outcome};

pin_project! {
    /// A response body that counts the bytes sent and logs the request when
    /// it ends, fails, or is dropped.
    pub struct AccessLogBody<B> {
        #[pin]
        body: B,
        entry: Option<Entry>,
    }
}

impl<B: Body> AccessLogBody<B> {
    pub(super) fn new(body: B, mut entry: Option<Entry>) -> Self {
        // A body that is over before it starts is not polled by hyper, and
        // the render step replaces a refusal's empty body with the problem
        // document: the request ends with its head.
        if body.is_end_stream()
            && let Some(entry) = entry.as_mut()
        {
            entry.log(Outcome::Complete);
        }
        Self { body, entry }
    }
}

/// An empty body that logs nothing: the body of a refusal made outside the
/// layer, which the stack's render step fills in.
impl<B: Default> Default for AccessLogBody<B> {
    fn default() -> Self {
        Self {
            body: B::default(),
            entry: None,
        }
    }
}

impl<B> fmt::Debug for AccessLogBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLogBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for AccessLogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if let Some(entry) = this.entry.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        entry.add_response_bytes(data.remaining());
                    }
                }
                Some(Err(_)) => entry.log(Outcome::BodyError),
                None => entry.log(Outcome::Complete),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
