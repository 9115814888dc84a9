//! A request body that says when it has been sent in full.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The client's request body on its way upstream, flagging when it has been read to the end,
    /// so that a timeout can tell a slow client from a slow upstream.
    #[derive(Debug)]
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        done: Option<Arc<AtomicBool>>,
    }
}

impl<B: Body> TrackedBody<B> {
    /// Wraps `inner`; the flag is `None` for a body that is already complete (nothing to track).
    pub(crate) fn new(inner: B) -> (Self, Option<Arc<AtomicBool>>) {
        let done = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        (
            Self {
                inner,
                done: done.clone(),
            },
            done,
        )
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if finished && let Some(done) = this.done.take() {
            done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
