//! Per-key concurrency caps over real bodies.

use std::convert::Infallible;

use bytes::Bytes;
use gateway_core::ClientIp;
use gateway_ratelimit::{ConcurrencyLimitLayer, KeyBy};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

fn from(ip: [u8; 4]) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(ClientIp::direct(ip.into()));
    req
}

#[tokio::test]
async fn a_slot_is_held_until_the_response_body_ends() {
    let layer = ConcurrencyLimitLayer::new(2, KeyBy::client_ip());
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"data"))))
    }));
    let a = svc
        .ready()
        .await
        .unwrap()
        .call(from([192, 0, 2, 1]))
        .await
        .unwrap();
    let b = svc
        .ready()
        .await
        .unwrap()
        .call(from([192, 0, 2, 1]))
        .await
        .unwrap();
    let c = svc
        .ready()
        .await
        .unwrap()
        .call(from([192, 0, 2, 1]))
        .await
        .unwrap();
    assert_eq!(
        (a.status(), b.status(), c.status()),
        (
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        )
    );
    assert_eq!(c.headers()["content-type"], "application/problem+json");
    assert_eq!(layer.in_flight(), 2);
    // Reading a body to its end frees its slot.
    let body = a.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"data");
    assert_eq!(layer.in_flight(), 1);
    let d = svc
        .ready()
        .await
        .unwrap()
        .call(from([192, 0, 2, 1]))
        .await
        .unwrap();
    assert_eq!(d.status(), StatusCode::OK);
    drop((b, d));
    assert_eq!(layer.in_flight(), 0);
}
