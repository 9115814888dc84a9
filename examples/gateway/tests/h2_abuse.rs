//! HTTP/2 abuse against the real gateway over raw frames (h2c prior knowledge): rapid reset,
//! CONTINUATION floods and header-list bombs all end with the connection closed or the request
//! refused, never with unbounded work.

mod support;

use std::{net::SocketAddr, time::Duration};

use gateway_test::TestUpstream;
use support::{addr, simple, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | u8::try_from(v).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    v -= max;
    while v >= 128 {
        out.push(u8::try_from(v % 128).unwrap() | 0x80);
        v /= 128;
    }
    out.push(u8::try_from(v).unwrap());
}

/// A header block for `GET /` with authority `x`.
fn get_block() -> Vec<u8> {
    // :method GET, :scheme http, :path /, then :authority "x" (literal, indexed name 1).
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'x']
}

/// Connects and sends the preface and empty SETTINGS.
async fn connect(gw: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// What the server did: frames of each type until it closed the connection (or 10 s passed).
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<u32>,
    headers: usize,
    resets: usize,
    closed: bool,
}

async fn drain(mut s: TcpStream) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    seen.closed = true;
                    break;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_all).await;
    let mut at = 0;
    while buf.len() >= at + 9 {
        let len =
            usize::from(buf[at]) << 16 | usize::from(buf[at + 1]) << 8 | usize::from(buf[at + 2]);
        let kind = buf[at + 3];
        let payload = &buf[(at + 9).min(buf.len())..(at + 9 + len).min(buf.len())];
        match kind {
            GOAWAY if payload.len() >= 8 => {
                seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            HEADERS => seen.headers += 1,
            RST_STREAM => seen.resets += 1,
            _ => {}
        }
        at += 9 + len;
    }
    seen
}

#[tokio::test]
async fn rapid_reset_closes_the_connection_and_bounds_upstream_work() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(&simple(""), up.addr());
    let mut s = connect(addr(&gw)).await;
    let mut burst = Vec::new();
    for i in 0..2_000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &get_block(),
        ));
        burst.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    // The server may close the connection part way: a write error is the defence working.
    let _ = s.write_all(&burst).await;
    let seen = drain(s).await;
    assert!(seen.closed, "{seen:?}");
    assert!(seen.goaway.is_some(), "told why: {seen:?}");
    let reached = up.requests().len();
    assert!(
        reached < 500,
        "{reached} of 2000 cancelled requests reached the upstream"
    );
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(&simple(""), up.addr());
    let mut s = connect(addr(&gw)).await;
    // A HEADERS frame that never ends: 64 MiB of CONTINUATION frames of junk header bytes.
    let mut block = get_block();
    block.extend([0x40, 0x01, b'a', 0x01, b'b']);
    let _ = s.write_all(&frame(HEADERS, END_STREAM, 1, &block)).await;
    let junk = frame(
        CONTINUATION,
        0,
        1,
        &[0x40, 0x01, b'a', 0x01, b'b'].repeat(3000),
    );
    let mut sent = 0usize;
    for _ in 0..4_500 {
        if s.write_all(&junk).await.is_err() {
            break;
        }
        sent += junk.len();
    }
    let seen = drain(s).await;
    assert!(seen.closed, "{seen:?}");
    assert!(
        sent < 64 * 1024 * 1024,
        "the server stopped reading before the end"
    );
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_header_list_bomb_is_refused() {
    let up = TestUpstream::fixed("ok").await;
    let gw = start(&simple(""), up.addr());
    let mut s = connect(addr(&gw)).await;
    // One 4 KiB header added to the HPACK dynamic table, then referenced 2000 times with one
    // byte each: 8 MB of decoded headers from a 6 KB block.
    let mut block = get_block();
    block.push(0x40);
    hpack_int(0, 7, 6, &mut block);
    block.extend_from_slice(b"x-bomb");
    hpack_int(0, 7, 4096, &mut block);
    block.extend(std::iter::repeat_n(b'a', 4096));
    block.extend(std::iter::repeat_n(0xbe, 2000)); // dynamic index 62
    let _ = s
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await;
    let seen = drain(s).await;
    assert!(up.requests().is_empty(), "never forwarded");
    assert!(
        seen.goaway.is_some() || seen.resets > 0 || seen.headers > 0,
        "refused: {seen:?}"
    );
}

#[tokio::test]
async fn resets_of_accepted_requests_close_the_connection_too() {
    // Each stream is accepted and reaches the upstream before the client resets it, so h2's
    // own pending-accept counter never sees it: the gateway's per-connection count must.
    let (up, mut gate) = TestUpstream::gated().await;
    let gw = start(&simple("limits: { max_client_resets: 20 }\n"), up.addr());
    let mut s = connect(addr(&gw)).await;
    let mut sent = 0u32;
    for i in 0..200u32 {
        let stream = 2 * i + 1;
        let headers = frame(HEADERS, END_STREAM | END_HEADERS, stream, &get_block());
        if s.write_all(&headers).await.is_err() {
            break;
        }
        // Wait for the request to reach the upstream, or for the gateway to drop us.
        let mut scratch = [0u8; 4096];
        let arrived = loop {
            tokio::select! {
                () = gate.arrived() => break true,
                read = s.read(&mut scratch) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        break false;
                    }
                }
            }
        };
        if !arrived {
            break;
        }
        sent += 1;
        if s.write_all(&frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()))
            .await
            .is_err()
        {
            break;
        }
    }
    let seen = drain(s).await;
    assert!(seen.closed, "{seen:?}");
    assert!(
        sent <= 25,
        "{sent} requests reached the upstream before the connection closed"
    );
    gate.open();
}

#[tokio::test]
async fn pings_alone_do_not_keep_a_connection_open() {
    // Bytes moving is not activity: a client that only sends PINGs (or dribbles a header block)
    // is closed after the idle timeout like a silent one.
    let up = TestUpstream::fixed("ok").await;
    let gw = start(&simple("limits: { idle_timeout: 1s }\n"), up.addr());
    let s = connect(addr(&gw)).await;
    let (mut r, mut w) = s.into_split();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                read = r.read(&mut buf) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        return;
                    }
                }
                _ = tick.tick() => {
                    const PING: u8 = 0x6;
                    if w.write_all(&frame(PING, 0, 0, &[7; 8])).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was closed despite the PINGs"
    );
    assert!(up.requests().is_empty());
}
