use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use gateway_core::BoxError;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A request body as the retry layer hands it on: buffered (and so replayable) or streaming
    /// through untouched.
    #[derive(Debug)]
    pub struct ReplayBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] body: B },
    }
}

impl<B> ReplayBody<B> {
    /// A body passed through as it is (never replayed).
    pub fn streaming(body: B) -> Self {
        Self {
            inner: Inner::Streaming { body },
        }
    }

    /// A complete, replayable body.
    pub fn buffered(data: Bytes) -> Self {
        Self {
            inner: Inner::Buffered { data: Some(data) },
        }
    }

    /// Whether the body is buffered (and so can be replayed).
    pub fn is_buffered(&self) -> bool {
        matches!(self.inner, Inner::Buffered { .. })
    }

    /// A copy for another attempt, when the body is buffered.
    pub(crate) fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            Inner::Buffered { data } => Some(Self {
                inner: Inner::Buffered { data: data.clone() },
            }),
            Inner::Streaming { .. } => None,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Buffered { data } => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            InnerProj::Streaming { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Buffered { data } => data.as_ref().is_none_or(Bytes::is_empty),
            Inner::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Streaming { body } => body.size_hint(),
        }
    }
}

/// A copy of a request for another attempt, when its body is buffered.
pub(crate) fn clone_request<B>(
    req: &http::Request<ReplayBody<B>>,
) -> Option<http::Request<ReplayBody<B>>> {
    let body = req.body().try_clone()?;
    let mut clone = http::Request::new(body);
    *clone.method_mut() = req.method().clone();
    *clone.uri_mut() = req.uri().clone();
    *clone.version_mut() = req.version();
    *clone.headers_mut() = req.headers().clone();
    *clone.extensions_mut() = req.extensions().clone();
    Some(clone)
}
