//! API keys, roles and IP lists through the real gateway, and tiers made real by consumers.

mod support;

use std::net::SocketAddr;

use gateway_auth::ApiKeyHash;
use gateway_test::{TestUpstream, raw_exchange};
use support::{addr, start};

/// `GET path` with extra header lines; returns (status, the whole response).
async fn get_with(gw: SocketAddr, path: &str, headers: &str) -> (String, String) {
    let res = raw_exchange(
        gw,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    (res[9..12].to_owned(), res)
}

fn config(route_extra: &str, top_extra: &str) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\ntrusted_proxies: [127.0.0.1]\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n  - name: api\n    upstream: up\n{route_extra}tiers:\n  gold: {{ rate: 5/min }}\n  free: {{ rate: 2/min }}\ndefault_tier: free\nconsumers:\n  - id: acme\n    tier: gold\n    roles: [orders.read]\n    api_keys:\n      - \"{acme}\"\n      - {{ digest: \"{old}\", expires: 2020-01-01 }}\n      - {{ digest: \"{revoked}\", revoked: true }}\n  - id: bob\n    api_keys: [\"{bob}\"]\n{top_extra}",
        acme = ApiKeyHash::of("acme-key"),
        old = ApiKeyHash::of("acme-old"),
        revoked = ApiKeyHash::of("acme-revoked"),
        bob = ApiKeyHash::of("bob-key"),
    )
}

#[tokio::test]
async fn api_keys_authenticate_consumers_and_never_reach_the_upstream() {
    let up = TestUpstream::echo().await;
    let gw = start(&config("    auth: { any_of: [api_key] }\n", ""), up.addr());
    let (status, _) = get_with(addr(&gw), "/", "x-api-key: acme-key\r\n").await;
    assert_eq!(status, "200");
    let seen = up.last_request();
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the key is stripped"
    );

    let (status, missing) = get_with(addr(&gw), "/", "").await;
    assert_eq!(status, "401");
    assert!(
        missing
            .to_ascii_lowercase()
            .contains("www-authenticate: apikey realm=\"gateway\""),
        "{missing}"
    );
    // Unknown, expired and revoked keys look the same from outside.
    let mut bodies = Vec::new();
    for key in ["guess", "acme-old", "acme-revoked"] {
        let (status, res) = get_with(addr(&gw), "/", &format!("x-api-key: {key}\r\n")).await;
        assert_eq!(status, "401", "{key}");
        assert!(!res.contains(key), "the key is never echoed");
        bodies.push(res.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn consumers_get_their_tiers_limits() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(
        &config(
            "    auth: { optional: true }\n    rate_limit: { by: consumer }\n",
            "",
        ),
        up.addr(),
    );
    let admitted = |key: &'static str| {
        let gw = addr(&gw);
        async move {
            let mut n = 0;
            for _ in 0..8 {
                let header = if key.is_empty() {
                    String::new()
                } else {
                    format!("x-api-key: {key}\r\n")
                };
                n += usize::from(get_with(gw, "/", &header).await.0 == "200");
            }
            n
        }
    };
    assert_eq!(admitted("acme-key").await, 5, "gold: 5/min");
    assert_eq!(
        admitted("bob-key").await,
        2,
        "no tier: the default tier, free"
    );
    assert_eq!(admitted("").await, 2, "anonymous: free, per IP");
}

#[tokio::test]
async fn keys_from_the_query_are_removed_and_roles_are_enforced() {
    let up = TestUpstream::echo().await;
    let gw = start(
        &config(
            "    auth: { any_of: [by_query], roles: [orders.read] }\n",
            "auth_providers:\n  by_query: { api_key: { query: api_key } }\n",
        ),
        up.addr(),
    );
    let (status, _) = get_with(addr(&gw), "/orders?x=1&api_key=acme-key", "").await;
    assert_eq!(status, "200");
    assert_eq!(up.last_request().uri, "/orders?x=1");
    // bob has no role.
    let (status, res) = get_with(addr(&gw), "/orders?api_key=bob-key", "").await;
    assert_eq!(status, "403", "{res}");
    // A key in the header is not this route's provider: absent, so 401.
    let (status, _) = get_with(addr(&gw), "/orders", "x-api-key: acme-key\r\n").await;
    assert_eq!(status, "401");
}

#[tokio::test]
async fn ip_lists_apply_to_the_resolved_client() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(
        &config(
            "    ip_filter: { allow: [198.51.100.0/24], deny: [198.51.100.66] }\n",
            "",
        ),
        up.addr(),
    );
    let from = |ip: &'static str| {
        get_with(
            addr(&gw),
            "/",
            Box::leak(format!("x-forwarded-for: {ip}\r\n").into_boxed_str()),
        )
    };
    assert_eq!(from("198.51.100.7").await.0, "200");
    assert_eq!(from("198.51.100.66").await.0, "403");
    assert_eq!(from("203.0.113.1").await.0, "403");
}

#[tokio::test]
async fn invalid_auth_config_names_file_line_and_field() {
    let bad = |route: &str, top: &str| {
        let yaml = config(route, top).replace("{UPSTREAM}", "127.0.0.1:1");
        match gateway::Config::parse(&yaml, "gw.yaml")
            .and_then(|c| gateway::Compiled::new(&c, "gw.yaml"))
        {
            Ok(_) => panic!("accepted: {route} {top}"),
            Err(e) => e.to_string(),
        }
    };
    let expect = |route: &str, top: &str, field: &str, msg: &str| {
        let e = bad(route, top);
        assert!(e.contains(field) && e.contains(msg), "{route}{top}=> {e}");
    };
    expect(
        "    auth: { any_of: [jwt] }\n",
        "",
        "routes[0].auth.any_of[0]",
        "unknown auth provider `jwt`",
    );
    expect(
        "",
        "  - id: eve\n    api_keys: [\"plaintext-key\"]\n",
        "consumers[2].api_keys[0]",
        "never the key itself",
    );
    expect(
        "",
        "  - id: eve\n    tier: platinum\n",
        "consumers[2].tier",
        "unknown tier `platinum`",
    );
    expect(
        "",
        "  - id: acme\n",
        "consumers[2].id",
        "duplicate consumer `acme`",
    );
    expect(
        "",
        &format!(
            "  - id: eve\n    api_keys: [\"{}\"]\n",
            ApiKeyHash::of("bob-key")
        ),
        "consumers[2].api_keys[0]",
        "already a key of `bob`",
    );
    expect(
        "",
        &format!(
            "  - id: eve\n    api_keys: [ {{ digest: \"{}\", expires: soon }} ]\n",
            ApiKeyHash::of("eve")
        ),
        "consumers[2].api_keys[0].expires",
        "not a UTC date",
    );
    expect(
        "    ip_filter: { deny: [not-an-ip] }\n",
        "",
        "routes[0].ip_filter.deny[0]",
        "not-an-ip",
    );
    expect(
        "",
        "auth_providers:\n  two: { api_key: { header: a, query: b } }\n",
        "auth_providers.two.api_key",
        "exactly one",
    );
    expect(
        "",
        "auth_providers:\n  api_key: { api_key: { header: x-key } }\n",
        "auth_providers.api_key",
        "built-in provider",
    );
    expect(
        "",
        "auth_providers:\n  k: { api_key: { header: x-gateway-key } }\n",
        "auth_providers.k.api_key.header",
        "cannot carry API keys",
    );
    expect(
        "",
        "auth_providers:\n  k: { api_key: { header: Proxy-Authorization } }\n",
        "auth_providers.k.api_key.header",
        "cannot carry API keys",
    );
    expect(
        "",
        "auth_providers:\n  k: { api_key: { query: \"\" } }\n",
        "auth_providers.k.api_key",
        "must not be empty",
    );
    expect(
        "    ip_filter: {}\n",
        "",
        "routes[0].ip_filter",
        "set `allow`, `deny` or both",
    );
    let e = bad("", "  - id: eve\n    api_keys: [\"plaintext-key\"]\n");
    assert!(
        !e.contains("plaintext-key"),
        "a key pasted in clear is not echoed: {e}"
    );
}

/// An ES256 key pair: the signing key and the public JWK (kid `k1`).
fn es256() -> (jsonwebtoken::EncodingKey, String) {
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
    };
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let p = pair.public_key().as_ref();
    let jwk = format!(
        "{{ kty: EC, crv: P-256, kid: k1, x: \"{}\", y: \"{}\" }}",
        B64.encode(&p[1..33]),
        B64.encode(&p[33..65])
    );
    (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

/// The `corp_jwt` provider: ES256 tokens from `https://idp.example` for `api`, roles in `roles`.
fn es256_provider(jwk: &str) -> String {
    format!(
        "auth_providers:\n  corp_jwt:\n    jwt:\n      issuers: [https://idp.example]\n      audiences: [api]\n      algorithms: [ES256]\n      roles_claim: roles\n      jwks: {{ keys: [ {jwk} ] }}\n"
    )
}

/// An `exp` five minutes ahead.
fn in_five_minutes() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300
}

fn jwt(key: &jsonwebtoken::EncodingKey, claims: &serde_json::Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("k1".into());
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

#[tokio::test]
async fn jwt_bearer_tokens_authenticate_and_are_not_forwarded() {
    let up = TestUpstream::echo().await;
    let (key, jwk) = es256();
    let providers = es256_provider(&jwk);
    let gw = start(
        &config(
            "    auth: { any_of: [corp_jwt, api_key], roles: [orders.read] }\n",
            &providers,
        ),
        up.addr(),
    );
    let exp = in_five_minutes();
    let good = jwt(
        &key,
        &serde_json::json!({ "sub": "u1", "iss": "https://idp.example", "aud": "api", "exp": exp, "roles": ["orders.read"] }),
    );
    let (status, _) = get_with(addr(&gw), "/", &format!("authorization: Bearer {good}\r\n")).await;
    assert_eq!(status, "200");
    assert!(
        up.last_request().headers.get("authorization").is_none(),
        "the token is stripped"
    );

    let wrong_aud = jwt(
        &key,
        &serde_json::json!({ "sub": "u1", "iss": "https://idp.example", "aud": "other", "exp": exp, "roles": ["orders.read"] }),
    );
    let (status, res) = get_with(
        addr(&gw),
        "/",
        &format!("authorization: Bearer {wrong_aud}\r\n"),
    )
    .await;
    assert_eq!(status, "401");
    assert!(
        res.contains("Bearer realm=\"gateway\", error=\"invalid_token\""),
        "{res}"
    );
    // A valid API key does not rescue an invalid token sent beside it.
    let (status, _) = get_with(
        addr(&gw),
        "/",
        &format!("authorization: Bearer {wrong_aud}\r\nx-api-key: acme-key\r\n"),
    )
    .await;
    assert_eq!(status, "401");
    // Roles come from the token: without `orders.read`, 403.
    let no_role = jwt(
        &key,
        &serde_json::json!({ "sub": "u2", "iss": "https://idp.example", "aud": "api", "exp": exp, "roles": "orders.read" }),
    );
    let (status, _) = get_with(
        addr(&gw),
        "/",
        &format!("authorization: Bearer {no_role}\r\n"),
    )
    .await;
    assert_eq!(status, "403", "a string is not a list of roles");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn invalid_jwt_config_is_refused() {
    let yaml = config(
        "    auth: { any_of: [corp_jwt] }\n",
        "auth_providers:\n  corp_jwt:\n    jwt: { algorithms: [HS256], secret_env: GATEWAY_TEST_UNSET_SECRET }\n",
    )
    .replace("{UPSTREAM}", "127.0.0.1:1");
    let e = gateway::Config::parse(&yaml, "gw.yaml")
        .and_then(|c| gateway::Compiled::new(&c, "gw.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("auth_providers.corp_jwt.jwt.issuers") && e.contains("at least one issuer"),
        "{e}"
    );
    assert!(e.contains("auth_providers.corp_jwt.jwt.audiences"), "{e}");
    assert!(e.contains("`GATEWAY_TEST_UNSET_SECRET` is not set"), "{e}");
    let bad = |jwt: &str| {
        let yaml = config(
            "    auth: { any_of: [corp_jwt] }\n",
            &format!("auth_providers:\n  corp_jwt:\n    jwt: {jwt}\n"),
        )
        .replace("{UPSTREAM}", "127.0.0.1:1");
        gateway::Config::parse(&yaml, "gw.yaml")
            .and_then(|c| gateway::Compiled::new(&c, "gw.yaml"))
            .unwrap_err()
            .to_string()
    };
    let e = bad(
        "{ issuers: [https://idp.example], audiences: [api], algorithms: [ES256], jwks_uri: \"http://idp.example/jwks\" }",
    );
    assert!(e.contains("jwks_uri") && e.contains("https://"), "{e}");
    let e = bad(
        "{ issuers: [http://idp.example], audiences: [api], algorithms: [ES256], discovery: true }",
    );
    assert!(
        e.contains("discovery needs exactly one https:// issuer"),
        "{e}"
    );
    let e = bad(
        "{ issuers: [https://idp.example], audiences: [api], algorithms: [ES256], discovery: true, ca_file: /nonexistent.pem }",
    );
    assert!(e.contains("cannot read `/nonexistent.pem`"), "{e}");
}

#[tokio::test]
async fn attribute_rules_allow_deny_and_shadow() {
    let up = TestUpstream::fixed("ok").await;
    let rules = "    auth:\n      rules:\n        - { effect: deny, client_ip: [198.51.100.66] }\n        - { effect: allow, role: orders.read }\n        - { effect: allow, methods: [GET], path_prefix: /public }\n";
    let gw = start(&config(rules, ""), up.addr());
    let post = |path: &'static str, key: &'static str, ip: &'static str| {
        let gw = addr(&gw);
        async move {
            raw_exchange(
                gw,
                format!("POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nx-forwarded-for: {ip}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await[9..12]
                .to_owned()
        }
    };
    assert_eq!(
        post("/x", "acme-key", "198.51.100.7").await,
        "200",
        "role orders.read"
    );
    assert_eq!(
        post("/x", "bob-key", "198.51.100.7").await,
        "403",
        "no rule allows bob's POST"
    );
    assert_eq!(
        get_with(
            addr(&gw),
            "/public/a",
            "x-api-key: bob-key\r\nx-forwarded-for: 198.51.100.7\r\n"
        )
        .await
        .0,
        "200"
    );
    assert_eq!(
        post("/x", "acme-key", "198.51.100.66").await,
        "403",
        "deny wins"
    );
    // Shadow mode: the same rules only log.
    let gw = start(
        &config(&format!("{rules}      rules_shadow: true\n"), ""),
        up.addr(),
    );
    let (status, _) = get_with(
        addr(&gw),
        "/x",
        "x-api-key: bob-key\r\nx-forwarded-for: 198.51.100.66\r\n",
    )
    .await;
    assert_eq!(status, "200");
}

#[tokio::test]
async fn invalid_rules_are_refused() {
    let bad = |rules: &str| {
        let yaml = config(&format!("    auth:\n      rules:\n{rules}"), "")
            .replace("{UPSTREAM}", "127.0.0.1:1");
        gateway::Config::parse(&yaml, "gw.yaml")
            .and_then(|c| gateway::Compiled::new(&c, "gw.yaml"))
            .unwrap_err()
            .to_string()
    };
    let e = bad("        - { effect: allow }\n");
    assert!(
        e.contains("routes[0].auth.rules[0]") && e.contains("at least one condition"),
        "{e}"
    );
    let e = bad("        - { effect: deny, time_of_day: \"9-17\" }\n");
    assert!(e.contains("routes[0].auth.rules[0].time_of_day"), "{e}");
    let e = bad("        - { effect: deny, header: { name: x-debug } }\n");
    assert!(e.contains("routes[0].auth.rules[0].header.value"), "{e}");
    let e = bad("        - { effect: maybe, role: x }\n");
    assert!(e.contains("gw.yaml:") && e.contains("maybe"), "{e}");
    // A decision point may not set framing or internal headers.
    for name in ["Content-Length", "x-gateway-consumer", "bad name"] {
        let yaml = config(
            &format!(
                "    auth:\n      ext_authz: {{ url: \"http://127.0.0.1:1/\", upstream_headers: [\"{name}\"] }}\n"
            ),
            "",
        )
        .replace("{UPSTREAM}", "127.0.0.1:1");
        let e = gateway::Config::parse(&yaml, "gw.yaml")
            .and_then(|c| gateway::Compiled::new(&c, "gw.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes[0].auth.ext_authz.upstream_headers") && e.contains(name),
            "{e}"
        );
    }
}

/// An OPA-style decision point: allows consumer `acme`, and records nothing else.
async fn decision_point() -> TestUpstream {
    TestUpstream::start(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let input: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // Credentials of any provider never reach the decision point.
        let text = input.to_string();
        let leaked = text.contains("acme-key") || text.contains("partner-secret");
        let allow = input["input"]["principal"]["consumer"] == "acme" && !leaked;
        http::Response::new(gateway_test::full(format!("{{\"result\": {allow}}}")))
    })
    .await
}

#[tokio::test]
async fn an_external_decision_point_authorizes_after_authentication() {
    let up = TestUpstream::fixed("ok").await;
    let pdp = decision_point().await;
    let gw = start(
        &config(
            &format!(
                "    auth:\n      ext_authz: {{ url: \"http://{}/v1/data/gateway/allow\", cache_ttl: 1m }}\n",
                pdp.addr()
            ),
            "auth_providers:\n  partner: { api_key: { header: x-partner-key } }\n",
        ),
        up.addr(),
    );
    assert_eq!(
        get_with(addr(&gw), "/x", "x-api-key: acme-key\r\n").await.0,
        "200"
    );
    assert_eq!(
        get_with(addr(&gw), "/x", "x-api-key: bob-key\r\n").await.0,
        "403"
    );
    // Another provider's credential on the request is withheld from the decision point.
    assert_eq!(
        get_with(
            addr(&gw),
            "/x?api_key=zzz",
            "x-api-key: acme-key\r\nx-partner-key: partner-secret\r\n"
        )
        .await
        .0,
        "200"
    );
    assert_eq!(pdp.requests().len(), 3);
    assert_eq!(pdp.last_request().uri, "/v1/data/gateway/allow");
    // The same request again: decided from the cache.
    assert_eq!(
        get_with(addr(&gw), "/x", "x-api-key: acme-key\r\n").await.0,
        "200"
    );
    assert_eq!(pdp.requests().len(), 3, "served from the cache");
}

#[tokio::test]
async fn a_decision_point_grants_allowlisted_headers_to_the_upstream() {
    let up = TestUpstream::fixed("ok").await;
    // OPA style: headers in the decision document.
    let opa = TestUpstream::start(|_req: http::Request<hyper::body::Incoming>| async move {
        http::Response::new(gateway_test::full(
            r#"{"result": {"allow": true, "headers": {"x-user-id": "42", "x-admin": "yes"}}}"#,
        ))
    })
    .await;
    // ext_authz style: an empty 200 whose response headers go upstream.
    let envoy = TestUpstream::start(|_req: http::Request<hyper::body::Incoming>| async move {
        let mut res = http::Response::new(gateway_test::full(""));
        res.headers_mut()
            .insert("x-user-id", http::HeaderValue::from_static("7"));
        res.headers_mut()
            .insert("x-admin", http::HeaderValue::from_static("yes"));
        res
    })
    .await;
    for (pdp, expected) in [(&opa, "42"), (&envoy, "7")] {
        let gw = start(
            &config(
                &format!(
                    "    auth:\n      ext_authz: {{ url: \"http://{}/allow\", upstream_headers: [X-User-Id, x-tenant] }}\n",
                    pdp.addr()
                ),
                "",
            ),
            up.addr(),
        );
        let (status, res) = get_with(
            addr(&gw),
            "/x",
            "x-api-key: acme-key\r\nx-user-id: 1\r\nx-tenant: forged\r\n",
        )
        .await;
        assert_eq!(status, "200", "{res}");
        let seen = up.last_request().headers;
        let ids: Vec<_> = seen.get_all("x-user-id").iter().collect();
        assert_eq!(ids, [expected], "only the decision point's value");
        assert!(seen.get("x-tenant").is_none(), "client copy removed");
        assert!(seen.get("x-admin").is_none(), "not on the allowlist");
    }
}

#[tokio::test]
async fn a_failing_decision_point_applies_the_failure_policy() {
    let up = TestUpstream::fixed("ok").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let route = |policy: &str| {
        format!(
            "    auth:\n      ext_authz: {{ url: \"http://{dead}/allow\", timeout: 1s{policy} }}\n"
        )
    };
    let closed = start(&config(&route(""), ""), up.addr());
    let (status, res) = get_with(addr(&closed), "/x", "x-api-key: acme-key\r\n").await;
    assert_eq!(status, "503", "fails closed by default: {res}");
    let open = start(&config(&route(", on_failure: open"), ""), up.addr());
    assert_eq!(
        get_with(addr(&open), "/x", "x-api-key: acme-key\r\n")
            .await
            .0,
        "200"
    );
}

#[tokio::test]
async fn rules_see_the_path_the_route_matched_not_the_rewritten_one() {
    let up = TestUpstream::echo().await;
    let yaml = config(
        "    match: { path_prefix: /v2/orders }\n    rewrite: /orders\n    auth:\n      rules:\n        - { effect: deny, path_prefix: /v2/orders/admin }\n",
        "",
    );
    let gw = start(&yaml, up.addr());
    assert_eq!(
        get_with(addr(&gw), "/v2/orders/1", "x-api-key: acme-key\r\n")
            .await
            .0,
        "200"
    );
    assert_eq!(up.last_request().uri, "/orders/1");
    assert_eq!(
        get_with(addr(&gw), "/v2/orders/admin/x", "x-api-key: acme-key\r\n")
            .await
            .0,
        "403"
    );
}

#[tokio::test]
async fn all_of_requires_every_provider_through_the_gateway() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(
        &config(
            "    auth: { all_of: [api_key, by_query] }\n",
            "auth_providers:\n  by_query: { api_key: { query: k } }\n",
        ),
        up.addr(),
    );
    assert_eq!(
        get_with(addr(&gw), "/?k=bob-key", "x-api-key: acme-key\r\n")
            .await
            .0,
        "200"
    );
    assert_eq!(
        get_with(addr(&gw), "/", "x-api-key: acme-key\r\n").await.0,
        "401"
    );
}

/// A token claim is attacker-controlled text: a subject carrying CR LF must not split the header
/// a transform builds from it. The request fails closed; nothing reaches the upstream.
#[tokio::test]
async fn a_token_subject_with_crlf_cannot_inject_a_header_through_a_transform() {
    let up = TestUpstream::echo().await;
    let (key, jwk) = es256();
    let providers = es256_provider(&jwk);
    let gw = start(
        &config(
            "    auth: { any_of: [corp_jwt] }\n    transform: { request_headers: { set: { x-user: \"${principal.sub}\" } } }\n",
            &providers,
        ),
        up.addr(),
    );
    let exp = in_five_minutes();
    let claims = |sub: &str| serde_json::json!({ "sub": sub, "iss": "https://idp.example", "aud": "api", "exp": exp });
    let fine = jwt(&key, &claims("alice"));
    let (status, _) = get_with(addr(&gw), "/", &format!("authorization: Bearer {fine}\r\n")).await;
    assert_eq!(status, "200");
    assert_eq!(up.last_request().headers["x-user"], "alice");
    let seen = up.requests().len();

    let evil = jwt(&key, &claims("alice\r\nx-admin: true"));
    let (status, res) =
        get_with(addr(&gw), "/", &format!("authorization: Bearer {evil}\r\n")).await;
    assert_eq!(status, "500", "{res}");
    assert!(res.contains("application/problem+json"), "{res}");
    assert!(!res.to_ascii_lowercase().contains("x-admin"), "{res}");
    assert_eq!(up.requests().len(), seen, "nothing reached the upstream");
}
