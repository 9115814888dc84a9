//! Criterion benchmarks live in `benches/`; this library holds what they share.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

/// Polls a future that is ready at once (the benchmarked services answer without waiting), so
/// a benchmark measures the service and not an executor.
///
/// # Panics
///
/// When the future is not ready at once.
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the benchmarked services answer at once"),
    }
}
