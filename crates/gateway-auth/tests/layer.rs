//! `RequireAuthLayer` over tower services.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, SystemTime},
};

use gateway_auth::{
    ApiKeyAuth, ApiKeyHash, ApiKeyRecord, ApiKeySource, Consumer, RequireAuthLayer, StaticApiKeys,
};
use gateway_core::{Principal, RejectReason, Rejection};
use http::{HeaderName, Request, Response, StatusCode};
use tower::{Service, ServiceExt, service_fn, util::BoxCloneService};

type Svc = BoxCloneService<Request<()>, Response<String>, Infallible>;

fn keys() -> StaticApiKeys {
    let acme = Arc::new(Consumer::new("acme").tier("gold").roles(["orders.read"]));
    let bob = Arc::new(Consumer::new("bob"));
    let mut keys = StaticApiKeys::new()
        .with_key(ApiKeyHash::of("acme-key"), acme.clone())
        .with_key(ApiKeyHash::of("bob-key"), bob);
    keys.insert(
        ApiKeyHash::of("acme-old"),
        ApiKeyRecord {
            consumer: acme,
            not_after: Some(SystemTime::now() - Duration::from_secs(60)),
            revoked: false,
        },
    );
    keys
}

fn service(layer: RequireAuthLayer) -> Svc {
    BoxCloneService::new(
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|req: Request<()>| async move {
                let who = req
                    .extensions()
                    .get::<Principal>()
                    .map_or_else(|| String::from("anonymous"), |p| p.subject().to_owned());
                Ok::<_, Infallible>(Response::new(who))
            })),
    )
}

async fn call(svc: &mut Svc, headers: &[(&str, &str)]) -> Response<String> {
    let mut b = Request::builder().uri("/orders");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    svc.ready()
        .await
        .unwrap()
        .call(b.body(()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn unknown_and_expired_keys_get_the_same_answer() {
    let mut svc = service(RequireAuthLayer::new(ApiKeyAuth::new(keys())));
    let unknown = call(&mut svc, &[("x-api-key", "guess")]).await;
    let expired = call(&mut svc, &[("x-api-key", "acme-old")]).await;
    for res in [&unknown, &expired] {
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(
            res.extensions().get::<Rejection>().unwrap().reason,
            RejectReason::Unauthenticated
        );
    }
    assert_eq!(unknown.body(), expired.body(), "no hint which");
    assert!(!unknown.body().contains("guess"));
    assert_eq!(
        call(&mut svc, &[("x-api-key", "acme-key")]).await.body(),
        "acme"
    );
}

#[tokio::test]
async fn any_valid_provider_authenticates_but_an_invalid_credential_always_refuses() {
    let header = ApiKeyAuth::new(keys());
    let other = ApiKeyAuth::new(keys())
        .sources([ApiKeySource::Header(HeaderName::from_static("x-other-key"))]);
    let mut svc = service(RequireAuthLayer::new(header).or(other));
    assert_eq!(
        call(&mut svc, &[("x-other-key", "bob-key")]).await.body(),
        "bob"
    );
    // A valid key beside an invalid one is still a refusal, in either order.
    let res = call(
        &mut svc,
        &[("x-api-key", "acme-key"), ("x-other-key", "nope")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers().get_all("www-authenticate").iter().count(), 2);
    let res = call(
        &mut svc,
        &[("x-other-key", "nope"), ("x-api-key", "acme-key")],
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the other order too"
    );
    // Two valid credentials (a key in a link, another in the browser): refused, not picked.
    let res = call(
        &mut svc,
        &[("x-api-key", "acme-key"), ("x-other-key", "bob-key")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn optional_routes_admit_anonymous_callers_but_not_invalid_ones() {
    let mut svc = service(RequireAuthLayer::new(ApiKeyAuth::new(keys())).optional(true));
    assert_eq!(call(&mut svc, &[]).await.body(), "anonymous");
    assert_eq!(
        call(&mut svc, &[("x-api-key", "acme-key")]).await.body(),
        "acme"
    );
    let res = call(&mut svc, &[("x-api-key", "nope")]).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "never degraded to anonymous"
    );
}

#[tokio::test]
async fn roles_are_required_when_configured() {
    let mut svc =
        service(RequireAuthLayer::new(ApiKeyAuth::new(keys())).roles(["orders.read", "admin"]));
    assert_eq!(
        call(&mut svc, &[("x-api-key", "acme-key")]).await.status(),
        StatusCode::OK
    );
    let res = call(&mut svc, &[("x-api-key", "bob-key")]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.extensions().get::<Rejection>().unwrap().reason,
        RejectReason::Forbidden
    );
    // Anonymous callers on an optional route with roles: authenticate first.
    let mut svc = service(
        RequireAuthLayer::new(ApiKeyAuth::new(keys()))
            .optional(true)
            .roles(["admin"]),
    );
    assert_eq!(call(&mut svc, &[]).await.status(), StatusCode::UNAUTHORIZED);
}
