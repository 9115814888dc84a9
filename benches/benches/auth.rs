//! Per-request cost of authentication: API keys and JWTs (HS256, RS256, ES256), each with and
//! without the verified-token cache, against the same service without authentication.
//!
//! Run with `cargo bench -p gateway-benches --bench auth`.

use std::{
    convert::Infallible,
    future::ready,
    hint::black_box,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use criterion::{Criterion, criterion_group, criterion_main};
use gateway_auth::{ApiKeyAuth, ApiKeyHash, Consumer, JwtAuth, RequireAuthLayer, StaticApiKeys};
use gateway_benches::now;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tower::{Layer, Service, service_fn};

const HMAC: &[u8] = b"a benchmark secret of at least 32 bytes";

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Tokens signed with fresh keys, and the JWK set / secret that verify them.
struct Tokens {
    hs: String,
    rs: String,
    es: String,
    jwks: String,
}

fn tokens() -> Tokens {
    let claims = json!({
        "sub": "user-7", "iss": "https://idp.example", "aud": "api", "scope": "orders.read",
        "exp": SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600,
    });
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.to_owned());
        encode(&h, &claims, key).unwrap()
    };
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let rsa_pub = PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
    let rsa_key =
        EncodingKey::from_rsa_pem(pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref()).as_bytes())
            .unwrap();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = ec.public_key().as_ref();
    let jwks = json!({ "keys": [
        { "kty": "RSA", "kid": "rsa", "n": B64.encode(&rsa_pub.n), "e": B64.encode(&rsa_pub.e) },
        { "kty": "EC", "crv": "P-256", "kid": "ec", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]) },
    ]});
    Tokens {
        hs: sign(Algorithm::HS256, "hs", &EncodingKey::from_secret(HMAC)),
        rs: sign(Algorithm::RS256, "rsa", &rsa_key),
        es: sign(
            Algorithm::ES256,
            "ec",
            &EncodingKey::from_ec_der(pkcs8.as_ref()),
        ),
        jwks: jwks.to_string(),
    }
}

fn jwt(t: &Tokens, cache: usize) -> JwtAuth {
    JwtAuth::builder()
        .algorithms(["HS256", "RS256", "ES256"])
        .jwks_json(&t.jwks)
        .hmac_secret(Some("hs"), HMAC)
        .issuer("https://idp.example")
        .audience("api")
        .cache(cache)
        .build()
        .unwrap()
}

fn bench_auth(c: &mut Criterion) {
    let t = tokens();
    let inner =
        service_fn(|_req: Request<()>| ready(Ok::<_, Infallible>(Response::new(String::new()))));
    let mut g = c.benchmark_group("auth");
    let mut bare = inner;
    g.bench_function("baseline_service_call", |b| {
        b.iter(|| now(bare.call(black_box(Request::new(())))).unwrap());
    });
    let keys = StaticApiKeys::new().with_key(
        ApiKeyHash::of("bench-key-0123456789abcdef01234567"),
        Arc::new(Consumer::new("acme")),
    );
    let mut api = RequireAuthLayer::new(ApiKeyAuth::new(keys)).layer(inner);
    g.bench_function("api_key", |b| {
        b.iter(|| {
            let req = Request::builder()
                .header("x-api-key", "bench-key-0123456789abcdef01234567")
                .body(())
                .unwrap();
            let res = now(api.call(black_box(req))).unwrap();
            assert_eq!(res.status(), 200);
        });
    });
    for (name, token) in [("hs256", &t.hs), ("rs256", &t.rs), ("es256", &t.es)] {
        for (cached, capacity) in [("uncached", 0), ("cached", 10_000)] {
            let mut svc = RequireAuthLayer::new(jwt(&t, capacity)).layer(inner);
            let value = format!("Bearer {token}");
            g.bench_function(format!("jwt_{name}_{cached}"), |b| {
                b.iter(|| {
                    let req = Request::builder()
                        .header("authorization", value.as_str())
                        .body(())
                        .unwrap();
                    let res = now(svc.call(black_box(req))).unwrap();
                    assert_eq!(res.status(), 200);
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_auth);
criterion_main!(benches);
