//! JWK sets from a real local HTTPS identity provider (OpenID Connect discovery, rotation, key
//! floods, outages). The provider's certificate is issued by a CA generated here.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use gateway_auth::{Authenticate, Credential, JwtAuth};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};

/// A signing key and its public JWK.
struct SigningKey {
    key: EncodingKey,
    jwk: Value,
}

fn signing_key(kid: &str) -> SigningKey {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let p = pair.public_key().as_ref();
    SigningKey {
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({ "kty": "EC", "crv": "P-256", "kid": kid, "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65]) }),
    }
}

/// A local HTTPS identity provider.
struct Idp {
    issuer: String,
    ca: Vec<u8>,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
}

async fn idp() -> Idp {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test idp ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer_ca = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![String::from("localhost")]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer_ca).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let issuer = format!("https://127.0.0.1:{}", addr.port());
    let keys = Arc::new(Mutex::new(Vec::new()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let up = Arc::new(AtomicBool::new(true));
    let (iss, k, f, u) = (issuer.clone(), keys.clone(), fetches.clone(), up.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(stream).await else {
                continue;
            };
            let (iss, k, f, u) = (iss.clone(), k.clone(), f.clone(), u.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = match req.uri().path() {
                            "/.well-known/openid-configuration" => Some(
                                json!({ "issuer": iss, "jwks_uri": format!("{iss}/jwks") })
                                    .to_string(),
                            ),
                            "/jwks" => {
                                f.fetch_add(1, Ordering::SeqCst);
                                u.load(Ordering::SeqCst)
                                    .then(|| json!({ "keys": *k.lock().unwrap() }).to_string())
                            }
                            _ => None,
                        };
                        let res = match body {
                            Some(b) => http::Response::builder()
                                .header("cache-control", "max-age=3600")
                                .body(Full::new(Bytes::from(b))),
                            None => http::Response::builder()
                                .status(503)
                                .body(Full::new(Bytes::new())),
                        };
                        async move { Ok::<_, Infallible>(res.unwrap()) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Idp {
        issuer,
        ca: ca.der().to_vec(),
        keys,
        fetches,
        up,
    }
}

fn token(k: &SigningKey, kid: &str, issuer: &str) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.to_owned());
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    encode(
        &h,
        &json!({ "sub": "u", "iss": issuer, "aud": "api", "exp": exp }),
        &k.key,
    )
    .unwrap()
}

fn check(auth: &JwtAuth, token: &str) -> Credential {
    let (mut parts, ()) = http::Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts();
    auth.authenticate(&mut parts)
}

/// Waits (readiness polling, up to 10 s) until `token` verifies, or until it stops verifying
/// when `valid` is false.
async fn until(auth: &JwtAuth, token: &str, valid: bool) -> bool {
    for _ in 0..500 {
        if matches!(check(auth, token), Credential::Valid(_)) == valid {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn provider(idp: &Idp, cooldown: Duration) -> JwtAuth {
    JwtAuth::builder()
        .algorithms(["ES256"])
        .oidc_issuer(idp.issuer.clone())
        .audience("api")
        .extra_root(idp.ca.clone())
        .refetch_cooldown(cooldown)
        .cache(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_oidc_discovery_and_follow_rotation() {
    let idp = idp().await;
    let k1 = signing_key("k1");
    let k2 = signing_key("k2");
    idp.keys.lock().unwrap().push(k1.jwk.clone());
    let auth = provider(&idp, Duration::ZERO);
    let t1 = token(&k1, "k1", &idp.issuer);
    assert!(
        until(&auth, &t1, true).await,
        "keys fetched through discovery"
    );
    // The IdP rotates to k2: a k2 token triggers a refetch and then verifies; k1 is gone.
    *idp.keys.lock().unwrap() = vec![k2.jwk.clone()];
    let t2 = token(&k2, "k2", &idp.issuer);
    assert!(
        until(&auth, &t2, true).await,
        "refetched on the unknown kid"
    );
    assert!(auth.jwks_refetches_requested() >= 1);
    assert!(
        until(&auth, &t1, false).await,
        "the retired key no longer verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_kids_costs_one_fetch_per_cooldown() {
    let idp = idp().await;
    let k1 = signing_key("k1");
    idp.keys.lock().unwrap().push(k1.jwk.clone());
    let auth = provider(&idp, Duration::from_secs(3600));
    assert!(until(&auth, &token(&k1, "k1", &idp.issuer), true).await);
    let before = idp.fetches.load(Ordering::SeqCst);
    let requested = auth.jwks_refetches_requested();
    for i in 0..200 {
        let t = token(&k1, &format!("random-{i}"), &idp.issuer);
        assert!(matches!(check(&auth, &t), Credential::Invalid(_)));
    }
    assert_eq!(
        auth.jwks_refetches_requested(),
        requested,
        "within the cooldown: no refetch asked for"
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), before);
    assert_eq!(auth.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_are_kept_while_the_idp_is_down() {
    let idp = idp().await;
    let k1 = signing_key("k1");
    idp.keys.lock().unwrap().push(k1.jwk.clone());
    let auth = provider(&idp, Duration::ZERO);
    let t1 = token(&k1, "k1", &idp.issuer);
    assert!(until(&auth, &t1, true).await);
    idp.up.store(false, Ordering::SeqCst);
    // An unknown kid asks for a refetch, which fails.
    let before = idp.fetches.load(Ordering::SeqCst);
    let _ = check(&auth, &token(&k1, "unknown", &idp.issuer));
    for _ in 0..500 {
        if idp.fetches.load(Ordering::SeqCst) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        idp.fetches.load(Ordering::SeqCst) > before,
        "the refetch was attempted"
    );
    assert!(
        matches!(check(&auth, &t1), Credential::Valid(_)),
        "the last good keys still verify"
    );
}

#[test]
fn only_https_and_a_usable_configuration_are_accepted() {
    let err = JwtAuth::builder()
        .algorithms(["ES256"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no verification key"), "{err}");
}
