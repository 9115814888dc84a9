//! The Redis store against a real Redis (a private `redis-server` from `gateway-test`): two
//! "instances" share entries, a tag purge through one reaches the other, and a dead Redis is a
//! miss, never an error.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use gateway_cache::{CacheLayer, CacheStore, RedisStore};
use gateway_test::TestRedis;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

fn origin(
    calls: Arc<AtomicUsize>,
) -> tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible> {
    tower::util::BoxCloneService::new(service_fn(move |_req: Request<Full<Bytes>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .header("surrogate-key", "catalog")
                    .body(Full::new(Bytes::from(format!("answer {n}"))))
                    .unwrap(),
            )
        }
    }))
}

async fn get<S>(svc: &mut S, path: &str) -> (String, String)
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<gateway_cache::CacheBody<Full<Bytes>>>,
            Error = Infallible,
        >,
{
    let req = Request::get(format!("http://shop{path}"))
        .body(Full::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn instances_share_entries_and_purges_through_redis() {
    let redis = TestRedis::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let store =
        |_: u8| RedisStore::new(redis.url(), redis.prefix(), Duration::from_secs(2)).unwrap();
    let (a, b) = (store(0), store(1));
    let mut one = CacheLayer::new(a.clone()).layer(origin(calls.clone()));
    let mut two = CacheLayer::new(b.clone()).layer(origin(calls.clone()));

    let (status, body) = get(&mut one, "/catalog/1").await;
    assert!(status.contains("stored"), "{status}");
    // The entry reaches Redis after the body ends; a second request on the same instance waits
    // for that (it is coalesced with the store) and hits.
    let (status, _) = get(&mut one, "/catalog/1").await;
    assert!(status.contains("hit"), "{status}");
    let (status, shared) = get(&mut two, "/catalog/1").await;
    assert_eq!(status, "gateway; hit", "the other instance hits");
    assert_eq!(shared, body);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    for path in ["/catalog/2", "/other"] {
        get(&mut one, path).await;
        let (status, _) = get(&mut one, path).await;
        assert!(status.contains("hit"), "{status}");
    }
    assert_eq!(
        b.purge_tag("catalog").await,
        3,
        "both catalog pages and /other share the tag"
    );
    let (status, _) = get(&mut one, "/catalog/1").await;
    assert!(status.contains("fwd=miss"), "{status}");
    let (status, _) = get(&mut one, "/catalog/1").await;
    assert!(status.contains("hit"), "stored again: {status}");
    assert_eq!(a.purge_prefix("http://shop/catalog").await, 1);
    assert_eq!(a.errors() + b.errors(), 0);
}

#[tokio::test]
async fn a_dead_redis_is_a_miss_not_an_error() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let store = RedisStore::new(
        &format!("redis://{dead}/0"),
        "t:",
        Duration::from_millis(200),
    )
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = CacheLayer::new(store.clone()).layer(origin(calls.clone()));
    for _ in 0..3 {
        let (_, body) = get(&mut svc, "/x").await;
        assert!(body.starts_with("answer"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "every request went to the origin"
    );
    assert!(store.errors() > 0, "and the failures were counted");
}
