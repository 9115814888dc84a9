//! Upgraded connections (WebSocket and other `Upgrade` protocols): bytes copied both ways until
//! either side closes, nothing moves for the idle timeout, or shutdown begins.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
};

/// Copies between `a` and `b`. A side that ends its stream has its end passed on (a half close);
/// the tunnel ends when both have, when either fails, after `idle` without a byte read, or when
/// `shutdown` turns true.
pub(crate) async fn pump<A, B>(a: A, b: B, idle: Duration, mut shutdown: watch::Receiver<bool>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut from_a = vec![0u8; 16 * 1024];
    let mut from_b = vec![0u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        tokio::select! {
            read = ar.read(&mut from_a), if a_open => match read {
                Ok(0) | Err(_) => {
                    a_open = false;
                    let _ = bw.shutdown().await;
                }
                Ok(n) => {
                    if bw.write_all(&from_a[..n]).await.is_err() {
                        return;
                    }
                }
            },
            read = br.read(&mut from_b), if b_open => match read {
                Ok(0) | Err(_) => {
                    b_open = false;
                    let _ = aw.shutdown().await;
                }
                Ok(n) => {
                    if aw.write_all(&from_b[..n]).await.is_err() {
                        return;
                    }
                }
            },
            () = tokio::time::sleep(idle) => {
                tracing::debug!(?idle, "closing an idle upgraded connection");
                return;
            }
            () = crate::server::shutting_down(&mut shutdown) => return,
        }
    }
}
