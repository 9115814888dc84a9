//! Bulkhead behaviour.

use std::{convert::Infallible, sync::Arc, time::Duration};

use gateway_breaker::BulkheadLayer;
use gateway_core::{RejectReason, Rejection, ResponseFlags};
use http::{Request, Response, StatusCode};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt, service_fn};

fn gated(
    gate: Arc<Notify>,
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ use<> {
    service_fn(move |_req: Request<()>| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn sheds_beyond_the_limit_across_clones_and_frees_slots_on_completion() {
    let gate = Arc::new(Notify::new());
    let layer = BulkheadLayer::new(2);
    let svc = layer.layer(gated(gate.clone()));
    let a = tokio::spawn(svc.clone().oneshot(Request::new(())));
    let b = tokio::spawn(layer.layer(gated(gate.clone())).oneshot(Request::new(())));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 2);
    let shed = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let rejection = shed.extensions().get::<Rejection>().unwrap();
    assert_eq!(rejection.reason, RejectReason::Overloaded);
    assert!(rejection.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW));
    gate.notify_waiters();
    assert_eq!(a.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(b.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_frees_its_slot() {
    let gate = Arc::new(Notify::new());
    let layer = BulkheadLayer::new(1);
    let mut svc = layer.layer(gated(gate));
    let pending = svc.ready().await.unwrap().call(Request::new(()));
    assert_eq!(layer.in_flight(), 1);
    drop(pending);
    assert_eq!(layer.in_flight(), 0);
    let permit = layer.try_admit().expect("a free slot");
    assert!(layer.try_admit().is_none());
    drop(permit);
    assert!(layer.try_admit().is_some());
    tokio::time::advance(Duration::from_secs(1)).await;
}
