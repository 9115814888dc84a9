//! A Redis for tests that never touches anyone's data.
//!
//! [`TestRedis::start`] prefers a private `redis-server` started on a free port on 127.0.0.1
//! (nothing saved to disk, killed when dropped); failing that it uses the Redis at
//! `GATEWAY_TEST_REDIS_URL` with a key prefix unique to the test (it never flushes or deletes
//! keys it did not write); failing both it panics with what to install.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The environment variable naming a Redis that tests may write prefixed keys to.
pub const REDIS_URL_ENV: &str = "GATEWAY_TEST_REDIS_URL";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A Redis reserved for one test; see the [module docs](self).
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: String,
    private: Option<Private>,
}

#[derive(Debug)]
struct Private {
    port: u16,
    child: Option<Child>,
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn spawn(port: u16) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--loglevel", "warning", "--protected-mode", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Whether a Redis answers `PING` at `addr`.
async fn pings(addr: SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// Waits until our server answers on `port`; false if it exited (e.g. another process took the
/// port first, so whatever answers there would not be ours) or never came up.
async fn wait_until_up(port: u16, child: &mut Child) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Readiness polling (not a timing assumption): up to 10 s for the server to listen.
    for _ in 0..200 {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if pings(addr).await {
            // Still ours: it did not exit after losing the port.
            return matches!(child.try_wait(), Ok(None));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl TestRedis {
    /// A private `redis-server`, else `GATEWAY_TEST_REDIS_URL`; panics with instructions if
    /// neither is available.
    pub async fn start() -> Self {
        let prefix = format!(
            "gwtest:{}:{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        for _ in 0..3 {
            let port = free_port().await;
            let Ok(mut child) = spawn(port) else { break };
            let up = wait_until_up(port, &mut child).await;
            let mut private = Private {
                port,
                child: Some(child),
            };
            if up {
                return Self {
                    url: format!("redis://127.0.0.1:{port}/"),
                    prefix,
                    private: Some(private),
                };
            }
            private.kill();
        }
        if let Ok(url) = std::env::var(REDIS_URL_ENV) {
            return Self {
                url,
                prefix,
                private: None,
            };
        }
        panic!(
            "these tests need Redis: install `redis-server` (Debian/Ubuntu: `apt-get install redis-server`; \
             it is started privately on a free port), or set {REDIS_URL_ENV}=redis://HOST:PORT/DB to a Redis \
             the tests may write keys prefixed `gwtest:` to"
        );
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A key prefix unique to this test (use it for every key the test writes).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether this is a private server (which [`stop`](Self::stop) and
    /// [`restart`](Self::restart) control).
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// Stops the private server (an outage). Panics for a shared Redis.
    pub fn stop(&mut self) {
        self.private
            .as_mut()
            .expect("stop needs a private redis-server")
            .kill();
    }

    /// Starts the private server again on the same port (empty: it saves nothing).
    pub async fn restart(&mut self) {
        let p = self
            .private
            .as_mut()
            .expect("restart needs a private redis-server");
        p.kill();
        let mut child = spawn(p.port).expect("spawn redis-server");
        let up = wait_until_up(p.port, &mut child).await;
        p.child = Some(child);
        assert!(up, "redis-server did not come back on port {}", p.port);
    }
}

impl Private {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(p) = self.private.as_mut() {
            p.kill();
        }
    }
}

/// A TCP listener on 127.0.0.1 that accepts connections and never answers: a server that hangs.
pub async fn silent_listener() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}
