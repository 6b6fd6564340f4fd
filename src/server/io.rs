//! The connection's IO, with a deadline on every write.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;

use super::serve::Slots;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

pin_project! {
    /// A connection's byte stream whose writes must make progress: a
    /// `poll_write`, `poll_flush` or `poll_shutdown` that stays pending
    /// (the client stopped reading, its receive window is full) for longer
    /// than the progress timeout fails with [`io::ErrorKind::TimedOut`],
    /// which closes the connection.
    ///
    /// Reads are untouched: how long a client may take to send is bounded
    /// by the header and body timeouts.
    ///
    /// It also holds the connection's slots (overall and per IP), so that
    /// an upgraded connection (WebSocket), which outlives hyper's, still
    /// counts against the caps.
    #[derive(Debug)]
    pub(crate) struct ProgressIo<T> {
        #[pin]
        inner: T,
        _slots: Slots,
        timeout: Duration,
        // Created on the first stalled write, then reset; one per
        // connection at most.
        stall: Option<Pin<Box<Sleep>>>,
        stalled: bool,
    }
}

impl<T> ProgressIo<T> {
    pub(crate) fn new(inner: T, timeout: Duration, slots: Slots) -> Self {
        Self {
            inner,
            _slots: slots,
            timeout,
            stall: None,
            stalled: false,
        }
    }
}

/// Times a pending write, flush or shutdown; a write that completes is
/// progress and stops the clock. (A completed flush is not: over TCP it
/// completes at once whether or not the client reads.)
fn watch<R>(
    poll: Poll<io::Result<R>>,
    cx: &mut Context<'_>,
    timeout: Duration,
    stall: &mut Option<Pin<Box<Sleep>>>,
    stalled: &mut bool,
    progress: bool,
) -> Poll<io::Result<R>> {
    if poll.is_ready() {
        if progress {
            *stalled = false;
        }
        return poll;
    }
    let sleep = match stall {
        Some(sleep) if *stalled => sleep,
        Some(sleep) => {
            sleep.as_mut().reset(Instant::now() + timeout);
            sleep
        }
        None => stall.insert(Box::pin(tokio::time::sleep(timeout))),
    };
    *stalled = true;
    ready!(sleep.as_mut().poll(cx));
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the client read nothing within the progress timeout",
    )))
}

impl<T: AsyncRead> AsyncRead for ProgressIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for ProgressIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        watch(poll, cx, *this.timeout, this.stall, this.stalled, true)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        watch(poll, cx, *this.timeout, this.stall, this.stalled, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        watch(poll, cx, *this.timeout, this.stall, this.stalled, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_shutdown(cx);
        watch(poll, cx, *this.timeout, this.stall, this.stalled, false)
    }
}
