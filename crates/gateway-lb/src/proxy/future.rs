use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{
    ResponseBody,
    headers::strip_hop_by_hop,
    pool::{Exchanged, ProxyError},
    service::{error_response, timeout_response},
};

/// The boxed upstream exchange. hyper's connection futures cannot be named, so this is the one
/// allocation per proxied request that remains.
pub(crate) type Exchange =
    std::pin::Pin<Box<dyn Future<Output = Result<Exchanged, ProxyError>> + Send>>;

pin_project! {
    /// Response future of [`Upstream`](crate::Upstream).
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Ready { response: Option<Response<ResponseBody>> },
        Waiting {
            #[pin]
            fut: Exchange,
            #[pin]
            sleep: Option<Sleep>,
            body_timeout: Option<Duration>,
        },
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl ResponseFuture {
    pub(crate) fn ready(response: Response<ResponseBody>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn upstream(
        fut: Exchange,
        timeout: Option<Duration>,
        body_timeout: Option<Duration>,
    ) -> Self {
        Self {
            state: State::Waiting {
                fut,
                sleep: timeout.map(tokio::time::sleep),
                body_timeout,
            },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            StateProj::Waiting {
                fut,
                sleep,
                body_timeout,
            } => {
                if let Poll::Ready(result) = fut.poll(cx) {
                    return Poll::Ready(Ok(match result {
                        Ok((res, on_end)) => {
                            let (mut parts, body) = res.into_parts();
                            strip_hop_by_hop(&mut parts.headers);
                            Response::from_parts(
                                parts,
                                ResponseBody::upstream(body, on_end, *body_timeout),
                            )
                        }
                        Err(err) => {
                            tracing::debug!(error = ?err, "upstream request failed");
                            error_response(&err)
                        }
                    }));
                }
                if let Some(sleep) = sleep.as_pin_mut() {
                    ready!(sleep.poll(cx));
                    return Poll::Ready(Ok(timeout_response()));
                }
                Poll::Pending
            }
        }
    }
}
