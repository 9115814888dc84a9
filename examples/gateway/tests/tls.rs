//! TLS termination through the real gateway with certificates generated here: SNI selection,
//! ALPN, version floor, client certificates (required and optional) becoming principals, 421 on
//! a host the handshake was not made for, certificate rotation by reload, and bad files refused.

mod support;

use std::{net::SocketAddr, sync::Arc};

use gateway::{Compiled, Config, RunningGateway};
use gateway_auth::ApiKeyHash;
use gateway_test::{TestCa, TestUpstream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_cert::der::Decode;

/// A client identity: chain and key.
struct ClientId(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A client certificate with a URI SAN, from `ca`.
fn client(ca: &TestCa, uri: &str) -> ClientId {
    let (chain, key) = ca.client_uri(uri);
    ClientId(
        chain.into_iter().map(CertificateDer::from).collect(),
        PrivateKeyDer::Pkcs8(key.into()),
    )
}

fn start_tls(yaml: &str, upstream: SocketAddr) -> RunningGateway {
    let yaml = yaml.replace("{UPSTREAM}", &upstream.to_string());
    let config = Config::parse(&yaml, "tls.yaml").unwrap_or_else(|e| panic!("{e}"));
    let compiled = Compiled::new(&config, "tls.yaml").unwrap_or_else(|e| panic!("{e}"));
    gateway::start(compiled).expect("gateway starts")
}

fn config(pki: &TestCa, tls_extra: &str, top_extra: &str) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert: \"{a}.pem\", key: \"{a}.key\" }}\n        - {{ cert: \"{b}.pem\", key: \"{b}.key\" }}\n{tls_extra}workers: 1\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n{top_extra}  - name: all\n    match: {{ path_prefix: / }}\n    upstream: up\n",
        a = pki.path("a"),
        b = pki.path("b"),
    )
}

/// Connects with `sni`, optionally presenting `id` and limiting the client to TLS 1.2.
async fn connect(
    gw: SocketAddr,
    pki: &TestCa,
    sni: &str,
    id: Option<&ClientId>,
    tls12_only: bool,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.der().to_vec())).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut client = match id {
        Some(ClientId(chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(gw).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await?;
    // With TLS 1.3 a refused client certificate shows up on the first read: probe with nothing.
    tls.flush().await?;
    Ok(tls)
}

/// One HTTP/1.1 request over `tls`; the whole response, or the error that ended the connection.
async fn exchange(
    mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
) -> Result<String, std::io::Error> {
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The DNS names of the certificate the server presented.
fn served_names(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<String> {
    let der = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let cert = x509_cert::Certificate::from_der(der.as_ref()).unwrap();
    let (_, sans) = cert
        .tbs_certificate()
        .get_extension::<x509_cert::ext::pkix::SubjectAltName>()
        .unwrap()
        .unwrap();
    sans.0
        .iter()
        .filter_map(|n| match n {
            x509_cert::ext::pkix::name::GeneralName::DnsName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_requests_are_proxied_as_https() {
    let pki = TestCa::new("sni");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test", "*.wild.test"]);
    let up = TestUpstream::echo().await;
    let gw = start_tls(&config(&pki, "", ""), up.addr());
    let addr = gw.listen_addrs()[0];
    for (sni, expect) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.wild.test", "b.test"),
        ("unknown.test", "a.test"),
    ] {
        let tls = match connect(addr, &pki, sni, None, false, &[b"http/1.1"]).await {
            Ok(t) => t,
            // An unknown name gets the default certificate, which the client then rejects.
            Err(e) => {
                assert_eq!(sni, "unknown.test", "{sni}: {e}");
                continue;
            }
        };
        assert!(
            served_names(&tls).iter().any(|n| n.contains(expect)),
            "{sni}: {:?}",
            served_names(&tls)
        );
        let res = exchange(tls, sni, "/hello").await.unwrap();
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    }
    let seen = up.last_request().headers;
    assert_eq!(seen["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn alpn_negotiates_h2_and_the_version_floor_holds() {
    let pki = TestCa::new("alpn");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let up = TestUpstream::fixed("ok").await;
    let gw = start_tls(&config(&pki, "      min_version: \"1.3\"\n", ""), up.addr());
    let addr = gw.listen_addrs()[0];
    let tls = connect(addr, &pki, "a.test", None, false, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // A real HTTP/2 request over the negotiated connection.
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(
            http::Request::get("https://a.test/x")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let tls = connect(addr, &pki, "a.test", None, false, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // TLS 1.2 is below the floor.
    assert!(
        connect(addr, &pki, "a.test", None, true, &[b"http/1.1"])
            .await
            .is_err()
    );
}

fn mtls_config(pki: &TestCa, mode: &str) -> String {
    config(
        pki,
        &format!(
            "      client_auth: {{ ca: \"{}\", mode: {mode} }}\n",
            pki.path("clients-ca.pem")
        ),
        "  - name: orders\n    match: { path_prefix: /orders }\n    upstream: up\n    auth: { any_of: [clients], roles: [orders.read] }\n",
    ) + &format!(
        "consumers:\n  - id: acme\n    roles: [orders.read]\n    api_keys: [\"{}\"]\nauth_providers:\n  clients:\n    mtls:\n      consumers:\n        \"uri:spiffe://test/acme\": acme\n",
        ApiKeyHash::of("unused-key")
    )
}

/// Whether a connection with `id` is refused: the handshake fails, or the connection ends
/// without an answer (TLS 1.3 clients learn of a refused certificate only after the handshake).
async fn refused(addr: SocketAddr, pki: &TestCa, id: Option<&ClientId>) -> bool {
    match connect(addr, pki, "a.test", id, false, &[]).await {
        Err(_) => true,
        Ok(tls) => exchange(tls, "a.test", "/")
            .await
            .map_or(true, |r| r.is_empty()),
    }
}

#[tokio::test]
async fn required_client_certificates_become_principals() {
    let pki = TestCa::new("mtls");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let clients = TestCa::new("clients");
    std::fs::copy(clients.path("ca.pem"), pki.path("clients-ca.pem")).unwrap();
    let up = TestUpstream::fixed("ok").await;
    let gw = start_tls(&mtls_config(&pki, "required"), up.addr());
    let addr = gw.listen_addrs()[0];

    let acme = client(&clients, "spiffe://test/acme");
    let tls = connect(addr, &pki, "a.test", Some(&acme), false, &[])
        .await
        .unwrap();
    let res = exchange(tls, "a.test", "/orders/1").await.unwrap();
    assert!(
        res.starts_with("HTTP/1.1 200"),
        "mapped to acme, who has the role: {res}"
    );

    let other = client(&clients, "spiffe://test/other");
    let tls = connect(addr, &pki, "a.test", Some(&other), false, &[])
        .await
        .unwrap();
    let res = exchange(tls, "a.test", "/orders/1").await.unwrap();
    assert!(
        res.starts_with("HTTP/1.1 403"),
        "authenticated, without the role: {res}"
    );

    // No certificate, or one from another CA: no request gets through.
    assert!(refused(addr, &pki, None).await);
    let stranger = client(&TestCa::new("stranger"), "spiffe://test/acme");
    assert!(refused(addr, &pki, Some(&stranger)).await);

    // The handshake was for a.test: a request for b.test on it is misdirected.
    let tls = connect(addr, &pki, "a.test", Some(&acme), false, &[])
        .await
        .unwrap();
    let res = exchange(tls, "b.test", "/orders/1").await.unwrap();
    assert!(res.starts_with("HTTP/1.1 421"), "{res}");
    assert!(res.contains("application/problem+json"), "{res}");
}

#[tokio::test]
async fn optional_client_certificates_leave_the_decision_to_routes() {
    let pki = TestCa::new("optional");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let clients = TestCa::new("optional-clients");
    std::fs::copy(clients.path("ca.pem"), pki.path("clients-ca.pem")).unwrap();
    let up = TestUpstream::fixed("ok").await;
    let gw = start_tls(&mtls_config(&pki, "optional"), up.addr());
    let addr = gw.listen_addrs()[0];
    let tls = connect(addr, &pki, "a.test", None, false, &[])
        .await
        .unwrap();
    let res = exchange(tls, "a.test", "/public").await.unwrap();
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let tls = connect(addr, &pki, "a.test", None, false, &[])
        .await
        .unwrap();
    let res = exchange(tls, "a.test", "/orders/1").await.unwrap();
    assert!(res.starts_with("HTTP/1.1 401"), "{res}");
    let acme = client(&clients, "spiffe://test/acme");
    let tls = connect(addr, &pki, "a.test", Some(&acme), false, &[])
        .await
        .unwrap();
    let res = exchange(tls, "a.test", "/orders/1").await.unwrap();
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
}

#[tokio::test]
async fn renewed_certificates_are_served_after_a_reload() {
    let pki = TestCa::new("rotate");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let up = TestUpstream::fixed("ok").await;
    let file = pki.path("gateway.yaml");
    std::fs::write(
        &file,
        config(&pki, "", "").replace("{UPSTREAM}", &up.addr().to_string()),
    )
    .unwrap();
    let compiled = Compiled::new(&Config::load(file.as_ref()).unwrap(), &file).unwrap();
    let gw = gateway::start(compiled).unwrap();
    gw.set_config_file(&file);
    let addr = gw.listen_addrs()[0];
    let tls = connect(addr, &pki, "a.test", None, false, &[])
        .await
        .unwrap();
    assert!(served_names(&tls).iter().all(|n| !n.contains("renewed")));
    // The renewed certificate for a.test also covers renewed.a.test.
    pki.leaf("a", &["a.test", "renewed.a.test"]);
    let report = gw.reload().unwrap();
    assert!(report.restart_required.is_empty(), "{report:?}");
    let tls = connect(addr, &pki, "a.test", None, false, &[])
        .await
        .unwrap();
    assert!(
        served_names(&tls)
            .iter()
            .any(|n| n.contains("renewed.a.test")),
        "{:?}",
        served_names(&tls)
    );
    // A broken key file is refused and the running certificates stay.
    std::fs::write(pki.path("a.key"), "not a key").unwrap();
    let e = gw.reload().unwrap_err().to_string();
    assert!(e.contains("listeners[0].tls.certificates[0].key"), "{e}");
    let tls = connect(addr, &pki, "a.test", None, false, &[])
        .await
        .unwrap();
    let res = exchange(tls, "a.test", "/").await.unwrap();
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
}

#[test]
fn bad_tls_files_name_the_field() {
    let pki = TestCa::new("bad");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let check = |yaml: String| {
        let yaml = yaml.replace("{UPSTREAM}", "127.0.0.1:1");
        Config::parse(&yaml, "tls.yaml")
            .and_then(|c| Compiled::new(&c, "tls.yaml"))
            .unwrap_err()
            .to_string()
    };
    // A missing certificate file.
    let e = check(config(&pki, "", "").replace("a.pem", "missing.pem"));
    assert!(
        e.contains("listeners[0].tls.certificates[0].cert") && e.contains("missing.pem"),
        "{e}"
    );
    // The key of another certificate.
    let e = check(config(&pki, "", "").replace("a.key", "b.key"));
    assert!(e.contains("listeners[0].tls.certificates[0].key"), "{e}");
    // A client CA that does not exist; an unknown version.
    let e = check(config(&pki, "      client_auth: { ca: nowhere.pem }\n", ""));
    assert!(e.contains("listeners[0].tls.client_auth.ca"), "{e}");
    let e = check(config(&pki, "      min_version: \"1.1\"\n", ""));
    assert!(e.contains("min_version"), "{e}");
}
