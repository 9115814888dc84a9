use std::sync::Arc;

use gateway_core::DefaultClassifier;
use http::{HeaderValue, StatusCode};
use tower_layer::Layer;

use super::{
    CircuitBreakerConfig, CircuitBreakerHandle,
    breaker::Breaker,
    service::{CircuitBreaker, Fallback},
};

/// Layer that wraps a service in a circuit breaker.
///
/// Every service this layer makes, and every clone of those, shares one breaker: build one layer
/// per upstream (or per endpoint) and keep its [`handle`](Self::handle) to read or force the
/// state.
///
/// The service rejects while open and stays ready otherwise: `poll_ready` is the inner
/// service's. It is `Clone` when the inner service is.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: Arc<Breaker>,
    classifier: C,
    fallback: Option<Arc<Fallback>>,
}

impl CircuitBreakerLayer {
    /// A breaker with `config` and the default failure classification (5xx, timeouts, connect
    /// and protocol errors; not 429).
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            breaker: Arc::new(Breaker::new(config)),
            classifier: DefaultClassifier::new(),
            fallback: None,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses another failure classification (any [`gateway_core::ClassifyFailure`], closures
    /// included).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
            fallback: self.fallback,
        }
    }

    /// While open, answer with this static response instead of the `503` problem.
    #[must_use]
    pub fn fallback(
        mut self,
        status: StatusCode,
        content_type: HeaderValue,
        body: impl Into<String>,
    ) -> Self {
        self.fallback = Some(Arc::new(Fallback {
            status,
            content_type,
            body: body.into(),
        }));
        self
    }

    /// The handle to this layer's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            breaker: self.breaker.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            self.breaker.clone(),
            self.classifier.clone(),
            self.fallback.clone(),
        )
    }
}
