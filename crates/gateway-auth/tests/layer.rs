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

#[tokio::test]
async fn scopes_are_all_required_and_cors_preflights_can_pass() {
    use gateway_auth::{Authenticate, Credential};
    /// A provider that authenticates everyone with fixed scopes.
    struct Scoped(&'static [&'static str]);
    impl Authenticate for Scoped {
        fn authenticate(&self, parts: &mut http::request::Parts) -> Credential {
            if parts.headers.contains_key("x-token") {
                Credential::Valid(
                    Principal::new("u", gateway_core::AuthMethod::Jwt)
                        .with_scopes(self.0.iter().copied()),
                )
            } else {
                Credential::Absent
            }
        }
        fn challenge(&self, _invalid: bool) -> &'static str {
            "Bearer realm=\"test\""
        }
    }
    let layer = |scopes: &'static [&'static str]| {
        service(
            RequireAuthLayer::new(Scoped(scopes))
                .scopes(["orders.read", "orders.write"])
                .cors_preflight(true),
        )
    };
    let mut both = layer(&["orders.read", "orders.write", "x"]);
    assert_eq!(
        call(&mut both, &[("x-token", "1")]).await.status(),
        StatusCode::OK
    );
    let mut one = layer(&["orders.read"]);
    assert_eq!(
        call(&mut one, &[("x-token", "1")]).await.status(),
        StatusCode::FORBIDDEN
    );
    // A preflight passes without credentials; a plain OPTIONS does not.
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/orders")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body(())
        .unwrap();
    assert_eq!(
        one.ready()
            .await
            .unwrap()
            .call(preflight)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let plain = Request::builder()
        .method("OPTIONS")
        .uri("/orders")
        .body(())
        .unwrap();
    assert_eq!(
        one.ready()
            .await
            .unwrap()
            .call(plain)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn all_of_requires_every_provider() {
    let header = ApiKeyAuth::new(keys());
    let other = ApiKeyAuth::new(keys())
        .sources([ApiKeySource::Header(HeaderName::from_static("x-other-key"))]);
    let mut svc = service(RequireAuthLayer::new(header).or(other).all_of(true));
    let both = call(
        &mut svc,
        &[("x-api-key", "acme-key"), ("x-other-key", "bob-key")],
    )
    .await;
    assert_eq!(both.body(), "acme", "the first provider's principal");
    assert_eq!(
        call(&mut svc, &[("x-api-key", "acme-key")]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let bad = call(
        &mut svc,
        &[("x-api-key", "acme-key"), ("x-other-key", "nope")],
    )
    .await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
}
