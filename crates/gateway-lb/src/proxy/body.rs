use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use gateway_core::BoxError;
use std::{future::Future, time::Duration};
use tokio::time::Sleep;

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
        Upstream {
            #[pin]
            body: Incoming,
            on_end: Option<OnEnd>,
            // Boxed so the body stays `Unpin`; allocated only when a body timeout is set.
            idle: Option<Pin<Box<Sleep>>>,
            idle_for: Duration,
            // Whether the timer runs: it starts on the first `Pending` after a frame, so time the
            // client spends not reading (backpressure) is not counted against the upstream.
            armed: bool,
        },
        Full { #[pin] body: Full<Bytes> },
        Boxed { #[pin] body: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Upstream {
                body,
                on_end,
                idle_for,
                idle,
                ..
            } => f
                .debug_struct("Upstream")
                .field("body", body)
                .field("pooled", &on_end.is_some())
                .field("idle_timeout", &idle.as_ref().map(|_| idle_for))
                .finish(),
            Self::Full { body } => f.debug_struct("Full").field("body", body).finish(),
            Self::Boxed { .. } => f.debug_struct("Boxed").finish_non_exhaustive(),
        }
    }
}

impl ResponseBody {
    pub(crate) fn upstream(
        body: Incoming,
        on_end: Option<OnEnd>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self {
            kind: Kind::Upstream {
                body,
                on_end,
                idle: idle_timeout.map(|d| Box::pin(tokio::time::sleep(d))),
                idle_for: idle_timeout.unwrap_or_default(),
                armed: false,
            },
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

    /// Any other body (a cache's, a transform's), boxed.
    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Self {
            kind: Kind::Boxed {
                body: body.map_err(Into::into).boxed_unsync(),
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Upstream {
                mut body,
                on_end,
                idle,
                idle_for,
                armed,
            } => {
                let polled = body.as_mut().poll_frame(cx);
                if polled.is_pending()
                    && let Some(timer) = idle.as_mut()
                    && !*armed
                {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + *idle_for);
                    *armed = true;
                }
                if polled.is_pending()
                    && let Some(timer) = idle.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    // The upstream stopped sending: abort the stream rather than hang.
                    on_end.take();
                    *idle = None;
                    return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upstream response body idle timeout",
                    )))));
                }
                if let (Poll::Ready(Some(Ok(_))), Some(timer)) = (&polled, idle.as_mut()) {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + *idle_for);
                }
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
                polled.map_err(BoxError::from)
            }
            KindProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Boxed { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Full { body } => body.is_end_stream(),
            Kind::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Full { body } => body.size_hint(),
            Kind::Boxed { body } => body.size_hint(),
        }
    }
}
