use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::pool::OnEnd;

pin_project! {
    /// The body of a response from [`Upstream`](crate::Upstream): the upstream's body streamed
    /// through untouched, or a body the proxy generated (a problem+json error).
    #[derive(Debug)]
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream { #[pin] body: Incoming, on_end: Option<OnEnd> },
        Full { #[pin] body: Full<Bytes> },
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Upstream { body, on_end } => f
                .debug_struct("Upstream")
                .field("body", body)
                .field("pooled", &on_end.is_some())
                .finish(),
            Self::Full { body } => f.debug_struct("Full").field("body", body).finish(),
        }
    }
}

impl ResponseBody {
    pub(crate) fn upstream(body: Incoming, on_end: Option<OnEnd>) -> Self {
        Self {
            kind: Kind::Upstream { body, on_end },
        }
    }

    /// A complete body from bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full {
                body: Full::new(bytes.into()),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }
}

impl From<String> for ResponseBody {
    fn from(s: String) -> Self {
        Self::full(s)
    }
}

impl From<Bytes> for ResponseBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Upstream { mut body, on_end } => {
                let polled = body.as_mut().poll_frame(cx);
                let done = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Ready(Some(Err(_))) => {
                        // The connection is broken: never reuse it.
                        on_end.take();
                        false
                    }
                    Poll::Pending => false,
                };
                if done && let Some(release) = on_end.take() {
                    release();
                }
                polled
            }
            KindProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Full { body } => body.size_hint(),
        }
    }
}
