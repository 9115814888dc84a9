//! TLS to upstreams through the real gateway: a local HTTPS upstream with a generated CA, SNI,
//! verification failures, ALPN h2, and upstream mTLS.

mod support;

use std::{net::SocketAddr, sync::Arc};

use gateway_test::{TestCa, get};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{addr, start};

/// An HTTPS upstream answering `sni=… client=… version=…`; with `clients`, client certificates
/// from that CA are required.
async fn https_upstream(ca: &TestCa, clients: Option<&TestCa>) -> SocketAddr {
    let (chain, key) = ca.leaf("server", &["orders.internal"]);
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(key.into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(clients.der().to_vec()))
                .unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let sni = session.server_name().unwrap_or("none").to_owned();
                let client = session.peer_certificates().is_some();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = format!("sni={sni} client={client} version={:?}", req.version());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(up: SocketAddr, protocol: &str, tls: &str) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"https://{up}\"]\n    protocol: {protocol}\n{tls}routes:\n  - name: all\n    upstream: up\n"
    )
}

#[tokio::test]
async fn https_upstreams_are_verified_with_sni_and_alpn() {
    let ca = TestCa::new("server");
    let up = https_upstream(&ca, None).await;
    let tls = format!(
        "    tls: {{ ca_file: \"{}\", server_name: orders.internal }}\n",
        ca.path("ca.pem")
    );
    let gw = start(&config(up, "http1", &tls), up);
    let res = get(addr(&gw), "/x").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.text(),
        "sni=orders.internal client=false version=HTTP/1.1"
    );

    let gw = start(&config(up, "http2", &tls), up);
    let res = get(addr(&gw), "/x").await;
    assert_eq!(
        res.text(),
        "sni=orders.internal client=false version=HTTP/2.0",
        "ALPN h2"
    );

    // The system's roots do not know this CA: the handshake fails, the client gets a 502.
    let gw = start(
        &config(up, "http1", "    tls: { server_name: orders.internal }\n"),
        up,
    );
    let res = get(addr(&gw), "/x").await;
    assert_eq!(res.status, 502, "{}", res.text());
    // Nor does a name the certificate is not for pass.
    let other = format!(
        "    tls: {{ ca_file: \"{}\", server_name: billing.internal }}\n",
        ca.path("ca.pem")
    );
    let gw = start(&config(up, "http1", &other), up);
    assert_eq!(get(addr(&gw), "/x").await.status, 502);
}

#[tokio::test]
async fn upstream_mtls_presents_the_configured_certificate() {
    let ca = TestCa::new("server");
    let clients = TestCa::new("clients");
    clients.leaf("gateway", &["gateway.internal"]);
    let up = https_upstream(&ca, Some(&clients)).await;
    let base = format!(
        "ca_file: \"{}\", server_name: orders.internal",
        ca.path("ca.pem")
    );
    let gw = start(
        &config(up, "http1", &format!("    tls: {{ {base} }}\n")),
        up,
    );
    assert_eq!(
        get(addr(&gw), "/x").await.status,
        502,
        "no certificate, no connection"
    );
    let gw = start(
        &config(
            up,
            "http1",
            &format!(
                "    tls: {{ {base}, cert: \"{}\", key: \"{}\" }}\n",
                clients.path("gateway.pem"),
                clients.path("gateway.key")
            ),
        ),
        up,
    );
    let res = get(addr(&gw), "/x").await;
    assert_eq!(
        res.text(),
        "sni=orders.internal client=true version=HTTP/1.1"
    );
}

#[test]
fn bad_upstream_tls_blocks_name_the_field() {
    let ca = TestCa::new("bad");
    ca.leaf("a", &["a.internal"]);
    ca.leaf("b", &["b.internal"]);
    let check = |endpoint: &str, tls: &str| {
        let yaml = format!(
            "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  up:\n    endpoints: [\"{endpoint}\"]\n    tls: {{ {tls} }}\nroutes:\n  - name: all\n    upstream: up\n"
        );
        gateway::Config::parse(&yaml, "gw.yaml")
            .and_then(|c| gateway::Compiled::new(&c, "gw.yaml"))
            .unwrap_err()
            .to_string()
    };
    let e = check("http://127.0.0.1:1", "server_name: x");
    assert!(
        e.contains("upstreams.up.tls") && e.contains("https://"),
        "{e}"
    );
    let e = check("https://127.0.0.1:1", "ca_file: /nonexistent.pem");
    assert!(e.contains("upstreams.up.tls.ca_file"), "{e}");
    let e = check(
        "https://127.0.0.1:1",
        &format!(
            "cert: \"{}\", key: \"{}\"",
            ca.path("a.pem"),
            ca.path("b.key")
        ),
    );
    assert!(
        e.contains("upstreams.up.tls.cert") && e.contains("does not fit"),
        "{e}"
    );
    let e = check(
        "https://127.0.0.1:1",
        &format!("cert: \"{}\"", ca.path("a.pem")),
    );
    assert!(e.contains("go together"), "{e}");
}
