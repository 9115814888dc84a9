//! gRPC through the real gateway over HTTP/2: trailers reach the client, and the gateway's own
//! refusals are gRPC statuses a gRPC client can read.

mod support;

use bytes::Bytes;
use gateway_test::{TestUpstream, full, h2_client};
use http_body_util::{BodyExt, Full};
use support::{addr, start};

fn grpc_request(gw: std::net::SocketAddr, path: &str) -> http::Request<gateway_test::TestBody> {
    http::Request::post(format!("http://{gw}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // An empty message: no compression flag, zero length.
        .body(full(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap()
}

#[tokio::test]
async fn grpc_trailers_pass_through_and_local_errors_are_grpc_statuses() {
    // A gRPC server: one empty message, then `grpc-status: 0` in the trailers.
    let up = TestUpstream::start(|_req: http::Request<hyper::body::Incoming>| async move {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        trailers.insert("grpc-message", http::HeaderValue::from_static("fine"));
        let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
            .map_err(|never| match never {})
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        let mut res = http::Response::new(body);
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        res
    })
    .await;
    let gw = start(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  grpc:\n    endpoints: [\"{UPSTREAM}\"]\n    protocol: http2\nroutes:\n  - name: greeter\n    match: { path_prefix: /helloworld.Greeter }\n    upstream: grpc\n    rate_limit: { by: global, rate: 1/h }\n",
        up.addr(),
    );
    let client = h2_client();

    let res = client
        .request(grpc_request(addr(&gw), "/helloworld.Greeter/SayHello"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap();
    let trailers = body
        .trailers()
        .expect("trailers reached the client")
        .clone();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    assert_eq!(body.to_bytes(), Bytes::from_static(&[0, 0, 0, 0, 0]));
    assert_eq!(up.last_request().headers["te"], "trailers");

    // The limit (1/h) is spent: RESOURCE_EXHAUSTED, as a trailers-only response.
    let res = client
        .request(grpc_request(addr(&gw), "/helloworld.Greeter/SayHello"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "8");
    assert!(res.headers().contains_key("retry-after"));
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    // No route: UNIMPLEMENTED. A plain HTTP client still gets problem+json.
    let res = client
        .request(grpc_request(addr(&gw), "/other.Service/Call"))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "12");
    assert_eq!(
        res.headers()["grpc-message"],
        "no%20route%20matches%20this%20request"
    );
    let plain = client
        .request(
            http::Request::get(format!("http://{}/other", addr(&gw)))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(plain.status(), 404);
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
}
