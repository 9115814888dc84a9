//! `Upgrade` proxying (WebSocket) through the real gateway, against a raw upstream that answers
//! `101` and then echoes bytes upper-cased: tunnels open only on routes that allow the protocol
//! and only after the upstream agrees, policies still apply, and shutdown closes them.

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use gateway_auth::ApiKeyHash;
use support::{addr, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A raw HTTP/1.1 upstream: `Upgrade: websocket` gets `101` then an upper-casing echo;
/// `/ws/refuse` gets `403`; anything else `200 plain`. Records every request head.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).to_ascii_lowercase())
}

impl RawUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let record = heads.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut s).await {
                        record.lock().unwrap().push(head.clone());
                        if head.contains("\r\nupgrade: websocket")
                            && !head.starts_with("get /ws/refuse")
                        {
                            let _ = s
                                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                                .await;
                            let mut buf = [0u8; 1024];
                            loop {
                                match s.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => {
                                        let up = buf[..n].to_ascii_uppercase();
                                        if s.write_all(&up).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        }
                        let res: &[u8] = if head.starts_with("get /ws/refuse") {
                            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain"
                        };
                        if s.write_all(res).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn config() -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nworkers: 1\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\nroutes:\n  - name: ws\n    match: {{ path_prefix: /ws }}\n    upstream: up\n    upgrades: [websocket]\n  - name: private-ws\n    match: {{ path_prefix: /private }}\n    upstream: up\n    upgrades: [websocket]\n    auth: {{ any_of: [api_key] }}\n  - name: plain\n    upstream: up\nconsumers:\n  - id: acme\n    api_keys: [\"{}\"]\n",
        ApiKeyHash::of("acme-key")
    )
}

const HANDSHAKE: &str = "connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Sends a request head and reads the response head.
async fn handshake(gw: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await.expect("a response");
    (s, head)
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled_on_routes_that_allow_them() {
    let up = RawUpstream::start().await;
    let gw = start(&config(), up.addr);
    let (mut s, head) = handshake(addr(&gw), "/ws/chat", HANDSHAKE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let forwarded = &up.heads()[0];
    assert!(forwarded.contains("\r\nupgrade: websocket"), "{forwarded}");
    assert!(forwarded.contains("\r\nconnection: upgrade"), "{forwarded}");
    assert!(
        forwarded.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{forwarded}"
    );
    // Bytes flow both ways, more than once.
    for word in ["hello", "again"] {
        s.write_all(word.as_bytes()).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, word.to_ascii_uppercase().as_bytes());
    }
    // Closing our side closes the tunnel.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes")
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn other_routes_and_protocols_get_plain_requests_and_refusals_pass_through() {
    let up = RawUpstream::start().await;
    let gw = start(&config(), up.addr);
    // A route without `upgrades`: the Upgrade field is removed, the request is a plain one.
    let (_, head) = handshake(addr(&gw), "/other", HANDSHAKE).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let forwarded = up.heads().pop().unwrap();
    assert!(!forwarded.contains("upgrade"), "{forwarded}");
    // h2c is never upgraded, even on a WebSocket route.
    let (_, head) = handshake(
        addr(&gw),
        "/ws/x",
        "connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!up.heads().pop().unwrap().contains("h2c"));
    // The upstream refuses the upgrade: its answer reaches the client, no tunnel.
    let (_, head) = handshake(addr(&gw), "/ws/refuse", HANDSHAKE).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(
        up.heads().pop().unwrap().contains("upgrade: websocket"),
        "it was asked"
    );
    // Policies apply to upgrades: no key, no tunnel, and the upstream never hears of it.
    let before = up.heads().len();
    let (_, head) = handshake(addr(&gw), "/private/chat", HANDSHAKE).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert_eq!(up.heads().len(), before);
    let (_, head) = handshake(
        addr(&gw),
        "/private/chat",
        &format!("{HANDSHAKE}x-api-key: acme-key\r\n"),
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        !up.heads().pop().unwrap().contains("acme-key"),
        "the key is not forwarded"
    );
}

#[tokio::test]
async fn shutdown_closes_open_tunnels() {
    let up = RawUpstream::start().await;
    let gw = start(&config(), up.addr);
    let (mut s, head) = handshake(addr(&gw), "/ws/chat", HANDSHAKE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    let stopping = tokio::spawn(gw.shutdown_and_wait());
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel was closed by the shutdown");
    stopping.await.unwrap();
}
