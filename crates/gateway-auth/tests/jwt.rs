//! JWT verification with real keys generated here (RSA 2048, EC P-256, Ed25519, HMAC), and the
//! attack catalogue of RFC 8725 and the gateway issue.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use gateway_auth::{Authenticate, Credential, JwtAuth};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const HMAC: &[u8] = b"a test secret that is at least 32 bytes long";

struct Keys {
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    attacker_ec: EncodingKey,
    attacker_jwk: Value,
    rsa_public_der: Vec<u8>,
    jwks: String,
}

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

fn ec_pair() -> (EncodingKey, Value) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({ "kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]) });
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

fn keys() -> Keys {
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let rsa_der = rsa.as_der().unwrap();
    let rsa_pub = PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
    let (ec, mut ec_jwk) = ec_pair();
    ec_jwk["kid"] = json!("ec-1");
    let (attacker_ec, attacker_jwk) = ec_pair();
    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let ed_pair = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let jwks = json!({ "keys": [
        { "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": B64.encode(&rsa_pub.n), "e": B64.encode(&rsa_pub.e) },
        ec_jwk,
        { "kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": B64.encode(ed_pair.public_key().as_ref()) },
    ]});
    Keys {
        rsa: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", rsa_der.as_ref()).as_bytes()).unwrap(),
        ec,
        ed: EncodingKey::from_ed_der(ed_pkcs8.as_ref()),
        attacker_ec,
        attacker_jwk,
        rsa_public_der: rsa.public_key().as_der().unwrap().as_ref().to_vec(),
        jwks: jwks.to_string(),
    }
}

fn auth(k: &Keys) -> JwtAuth {
    JwtAuth::builder()
        .algorithms(["RS256", "ES256", "EdDSA", "HS256"])
        .jwks_json(&k.jwks)
        .hmac_secret(Some("hs-1"), HMAC)
        .issuer("https://idp.example")
        .audience("api")
        .roles_claim("realm_access.roles")
        .tier_claim("tier")
        .cookie("session")
        .build()
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({
        "sub": "user-7", "iss": "https://idp.example", "aud": ["other", "api"],
        "exp": now() + 300, "scope": "orders.read orders.write", "tier": "gold",
        "realm_access": { "roles": ["admin"] },
    })
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    encode(&h, claims, key).unwrap()
}

fn check(auth: &JwtAuth, headers: &[(&str, String)]) -> Credential {
    let mut b = http::Request::builder();
    for (n, v) in headers {
        b = b.header(*n, v.as_str());
    }
    let (mut parts, ()) = b.body(()).unwrap().into_parts();
    auth.authenticate(&mut parts)
}

fn bearer(t: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {t}"))]
}

fn reason(c: Credential) -> &'static str {
    match c {
        Credential::Invalid(f) => f.reason(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn valid_tokens_of_every_family_become_principals() {
    let k = keys();
    let a = auth(&k);
    let hs = EncodingKey::from_secret(HMAC);
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", &k.rsa),
        (Algorithm::ES256, "ec-1", &k.ec),
        (Algorithm::EdDSA, "ed-1", &k.ed),
        (Algorithm::HS256, "hs-1", &hs),
    ] {
        let Credential::Valid(p) = check(&a, &bearer(&token(alg, kid, key, &claims()))) else {
            panic!("{alg:?} refused")
        };
        assert_eq!(p.subject(), "user-7");
        assert!(
            p.has_scope("orders.write") && p.has_role("admin"),
            "{alg:?}"
        );
        assert_eq!(p.tier(), Some("gold"));
        assert_eq!(
            p.attributes()["jwt.iss"],
            "https://idp.example",
            "claims are namespaced"
        );
        assert!(!p.attributes().contains_key("tier"));
    }
    // Without a kid, the keys of the token's family are tried.
    let no_kid = encode(&Header::new(Algorithm::ES256), &claims(), &k.ec).unwrap();
    assert!(matches!(check(&a, &bearer(&no_kid)), Credential::Valid(_)));
    // From the cookie too, and `scp` arrays count as scopes.
    let mut c = claims();
    c["scp"] = json!(["extra"]);
    let t = token(Algorithm::ES256, "ec-1", &k.ec, &c);
    let Credential::Valid(p) = check(&a, &[("cookie", format!("session={t}"))]) else {
        panic!("cookie refused")
    };
    assert!(p.has_scope("extra"));
}

#[test]
fn alg_none_in_any_case_and_empty_signatures_are_refused() {
    let k = keys();
    let a = auth(&k);
    let body = B64.encode(claims().to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let head = B64.encode(json!({ "alg": alg, "typ": "JWT" }).to_string());
        for t in [format!("{head}.{body}."), format!("{head}.{body}")] {
            assert!(
                matches!(check(&a, &bearer(&t)), Credential::Invalid(_)),
                "{alg}"
            );
        }
    }
    let valid = token(Algorithm::ES256, "ec-1", &k.ec, &claims());
    let stripped = format!("{}.", valid.rsplit_once('.').unwrap().0);
    assert_eq!(reason(check(&a, &bearer(&stripped))), "bad signature");
}

#[test]
fn key_confusion_and_foreign_keys_are_refused() {
    let k = keys();
    // HS256 signed with the RSA public key as the HMAC secret: refused even when HS256 is allowed
    // (it is only ever checked against HMAC keys).
    let confused = token(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(&k.rsa_public_der),
        &claims(),
    );
    assert_eq!(
        reason(check(&auth(&k), &bearer(&confused))),
        "no key for this token"
    );
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&k.rsa_public_der),
    )
    .unwrap();
    assert_eq!(
        reason(check(&auth(&k), &bearer(&confused))),
        "bad signature"
    );
    // An attacker's key embedded in the header (jwk) or pointed at (jku) is ignored.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    h.jwk = Some(serde_json::from_value(k.attacker_jwk.clone()).unwrap());
    h.jku = Some("https://attacker.example/jwks".into());
    let forged = encode(&h, &claims(), &k.attacker_ec).unwrap();
    assert_eq!(reason(check(&auth(&k), &bearer(&forged))), "bad signature");
    // kid injection: no configured key has it.
    let injected = token(Algorithm::ES256, "../../../../dev/null", &k.ec, &claims());
    assert_eq!(
        reason(check(&auth(&k), &bearer(&injected))),
        "no key for this token"
    );
    // An algorithm outside the allowlist.
    let es_only = JwtAuth::builder()
        .algorithms(["ES256"])
        .jwks_json(&k.jwks)
        .build()
        .unwrap();
    let rs = token(Algorithm::RS256, "rsa-1", &k.rsa, &claims());
    assert_eq!(
        reason(check(&es_only, &bearer(&rs))),
        "algorithm not allowed"
    );
}

#[test]
fn claims_are_checked() {
    let k = keys();
    let a = auth(&k);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        check(&a, &bearer(&token(Algorithm::ES256, "ec-1", &k.ec, &c)))
    };
    assert_eq!(
        reason(with(&|c| c["iss"] = json!("https://evil.example"))),
        "wrong issuer"
    );
    assert_eq!(
        reason(with(&|c| c["aud"] = json!("someone-else"))),
        "wrong audience"
    );
    assert_eq!(
        reason(with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        })),
        "missing required claim"
    );
    assert_eq!(
        reason(with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        })),
        "missing required claim"
    );
    assert_eq!(
        reason(with(&|c| {
            c.as_object_mut().unwrap().remove("sub");
        })),
        "missing required claim"
    );
    assert_eq!(
        reason(with(&|c| c["exp"] = json!(now() - 3600))),
        "expired token"
    );
    // `exp` as a string is not an `exp` (no coercion).
    assert_eq!(
        reason(with(&|c| c["exp"] = json!((now() + 300).to_string()))),
        "missing required claim"
    );
    assert_eq!(
        reason(with(&|c| c["nbf"] = json!(now() + 3600))),
        "token not yet valid"
    );
    assert_eq!(
        reason(with(&|c| c["scope"] = json!(["orders.read"]))),
        "malformed claim"
    );
    // Within the leeway: still valid.
    assert!(matches!(
        with(&|c| c["exp"] = json!(now() - 30)),
        Credential::Valid(_)
    ));
    // A roles claim that is a string grants nothing (not coerced to a one-element list).
    let Credential::Valid(p) = with(&|c| c["realm_access"]["roles"] = json!("admin")) else {
        panic!("refused")
    };
    assert!(!p.has_role("admin"));
}

#[test]
fn headers_and_transport_attacks_are_refused() {
    let k = keys();
    let a = auth(&k);
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    h.crit = Some(vec!["exp".into()]);
    let crit = encode(&h, &claims(), &k.ec).unwrap();
    assert_eq!(reason(check(&a, &bearer(&crit))), "token has a crit header");
    let mut big = claims();
    big["pad"] = json!("x".repeat(9000));
    assert_eq!(
        reason(check(
            &a,
            &bearer(&token(Algorithm::ES256, "ec-1", &k.ec, &big))
        )),
        "malformed or oversized token"
    );
    let t = token(Algorithm::ES256, "ec-1", &k.ec, &claims());
    let two = vec![
        ("authorization", format!("Bearer {t}")),
        ("authorization", format!("Bearer {t}")),
    ];
    assert_eq!(reason(check(&a, &two)), "several tokens in one request");
    let both = vec![
        ("authorization", format!("Bearer {t}")),
        ("cookie", format!("session={t}")),
    ];
    assert_eq!(reason(check(&a, &both)), "several tokens in one request");
    // A malformed bearer header is refused and stripped, never "absent".
    for odd in ["Bearer", "bearer\t", "BEARER  ", "Bearer\tabc"] {
        let (mut parts, ()) = http::Request::builder()
            .header("authorization", odd)
            .body(())
            .unwrap()
            .into_parts();
        assert!(
            matches!(a.authenticate(&mut parts), Credential::Invalid(_)),
            "{odd:?}"
        );
        assert!(parts.headers.get("authorization").is_none(), "{odd:?}");
    }
    // Another scheme is not this provider's credential, and is left in place.
    let (mut parts, ()) = http::Request::builder()
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(())
        .unwrap()
        .into_parts();
    assert!(matches!(a.authenticate(&mut parts), Credential::Absent));
    assert!(parts.headers.get("authorization").is_some());
}

#[test]
fn misconfiguration_is_refused_at_build_time() {
    let k = keys();
    let err = JwtAuth::builder()
        .algorithms(["HS256"])
        .hmac_secret(None, HMAC)
        .leeway(std::time::Duration::from_secs(3600))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("at most 5 minutes"), "{err}");
    let err = JwtAuth::builder()
        .algorithms(["HS256"])
        .jwks_json(&k.jwks)
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no configured key can verify `HS256`"),
        "{err}"
    );
    let err = JwtAuth::builder()
        .algorithms(["none"])
        .hmac_secret(None, HMAC)
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown algorithm `none`"),
        "{err}"
    );
    let err = JwtAuth::builder()
        .algorithms(["HS256"])
        .hmac_secret(None, b"short")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    let err = JwtAuth::builder()
        .algorithms(["ES256"])
        .jwks_json("{\"keys\": 1}")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("invalid JWK set"), "{err}");
}

#[test]
fn repeated_tokens_are_served_from_the_cache_and_expired_ones_never_are() {
    let k = keys();
    let a = auth(&k);
    let mut c = claims();
    c["exp"] = json!(now() + 2);
    let t = token(Algorithm::ES256, "ec-1", &k.ec, &c);
    assert!(matches!(check(&a, &bearer(&t)), Credential::Valid(_)));
    assert!(
        matches!(check(&a, &bearer(&t)), Credential::Valid(_)),
        "served from the cache"
    );
    // An expired token is never cached: with the leeway it verifies, but the cache keeps it only
    // until `exp`, so a token past `exp` + leeway is refused even after it was seen.
    let strict = JwtAuth::builder()
        .algorithms(["ES256"])
        .jwks_json(&k.jwks)
        .leeway(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let mut old = claims();
    old["exp"] = json!(now() - 1);
    let t = token(Algorithm::ES256, "ec-1", &k.ec, &old);
    assert_eq!(reason(check(&strict, &bearer(&t))), "expired token");
    assert_eq!(reason(check(&strict, &bearer(&t))), "expired token");
}
