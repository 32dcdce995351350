//! The HTTP server's listener, bounded so that monitoring clients can never starve the agent.
//!
//! Every open connection costs a file descriptor, and the agent needs descriptors for netlink,
//! WireGuard, iptables and the API server. Idle clients (a scraper that keeps connections open,
//! or a slowloris) used to pile up until the process ran out of descriptors: `/health` timed out
//! and reconciles failed. Here:
//!
//! - a connection that moves no byte for `idle` is closed;
//! - at most `max` connections are open: a new one evicts the connection idle the longest, so a
//!   fresh `/health` probe always gets in, whatever hogs the port.
//!
//! axum's `serve` takes any [`Listener`], so the server itself is unchanged.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// How many connections the server keeps, and for how long an idle one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; the one idle the longest is closed for a new one.
    pub max: usize,
    /// A connection that moves no byte for this long is closed.
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    /// 64 connections (Prometheus, a kubelet probe and a few people need a handful), 30 s idle
    /// (longer than Prometheus' keep-alive between 15 s scrapes).
    fn default() -> Self {
        ConnectionLimits { max: 64, idle: Duration::from_secs(30) }
    }
}

/// What the listener and a connection share.
#[derive(Debug)]
struct Connection {
    /// Milliseconds since the listener started, at the last byte moved.
    last_active: AtomicU64,
    evicted: AtomicBool,
    waker: AtomicWaker,
}

/// A TCP listener that enforces [`ConnectionLimits`].
#[derive(Debug)]
pub struct BoundedListener {
    listener: TcpListener,
    limits: ConnectionLimits,
    started: Instant,
    open: Arc<Mutex<Vec<Weak<Connection>>>>,
}

impl BoundedListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        BoundedListener { listener, limits, started: Instant::now(), open: Arc::default() }
    }

    /// Registers a new connection, evicting the one idle the longest when the limit is reached.
    fn register(&self) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            last_active: AtomicU64::new(millis_since(self.started)),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut open = self.open.lock().expect("connection list lock");
        open.retain(|weak| weak.upgrade().is_some_and(|c| !c.evicted.load(Ordering::Relaxed)));
        while open.len() >= self.limits.max.max(1) {
            let oldest = open
                .iter()
                .enumerate()
                .filter_map(|(index, weak)| weak.upgrade().map(|c| (index, c)))
                .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed));
            let Some((index, victim)) = oldest else { break };
            victim.evicted.store(true, Ordering::Relaxed);
            victim.waker.wake();
            open.swap_remove(index);
        }
        open.push(Arc::downgrade(&connection));
        connection
    }
}

impl Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, address)) => {
                    let connection = self.register();
                    let idle = Box::pin(tokio::time::sleep(self.limits.idle));
                    let bounded =
                        BoundedStream { stream, connection, idle, limit: self.limits.idle, started: self.started };
                    return (bounded, address);
                }
                // Out of descriptors (EMFILE): wait for some to be closed, as axum does.
                Err(error) => {
                    tracing::warn!(%error, "the HTTP server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that ends when it is idle too long or evicted.
#[derive(Debug)]
pub struct BoundedStream {
    stream: TcpStream,
    connection: Arc<Connection>,
    idle: Pin<Box<Sleep>>,
    limit: Duration,
    started: Instant,
}

impl BoundedStream {
    /// `Err` when the connection must end; registers the wakers that end it otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.connection.waker.register(cx.waker());
        if self.connection.evicted.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "closed for a newer HTTP connection"));
        }
        if self.idle.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle too long"));
        }
        Ok(())
    }

    fn moved(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.limit);
        self.connection.last_active.store(millis_since(self.started), Ordering::Relaxed);
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.moved();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => match self.check(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, bytes) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // A client that stops reading is as idle as one that stops writing.
            Poll::Pending => match self.check(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use axum::Router;
    use axum::routing::get;

    use super::*;

    /// Serves `/health` on 127.0.0.1 with `limits`; returns the address.
    async fn server(limits: ConnectionLimits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/health", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(BoundedListener::new(listener, limits), router).await });
        address
    }

    /// A blocking `GET /health` with a 3 s timeout, from another thread.
    async fn get_health(address: SocketAddr) -> io::Result<String> {
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address)?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .await
        .unwrap()
    }

    /// Whether the server closed `stream` (read returns 0 or an error) within `within`.
    fn closed_within(mut stream: &std::net::TcpStream, within: Duration) -> bool {
        stream.set_read_timeout(Some(within)).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => !matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_clients_beyond_the_limit_do_not_keep_health_out() {
        let address = server(ConnectionLimits { max: 8, idle: Duration::from_secs(60) }).await;
        // 40 clients connect and send nothing.
        let idle: Vec<std::net::TcpStream> = (0..40).map(|_| std::net::TcpStream::connect(address).unwrap()).collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..3 {
            let response = get_health(address).await.expect("/health answers despite idle clients");
            assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("ok"), "{response}");
        }
        // The server closed the idle ones it had to: at most `max` are still open.
        let still_open = idle.iter().filter(|stream| !closed_within(stream, Duration::from_millis(50))).count();
        assert!(still_open <= 8, "{still_open} idle connections still open");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_is_closed_after_the_idle_time() {
        let address = server(ConnectionLimits { max: 8, idle: Duration::from_millis(300) }).await;
        let idle = std::net::TcpStream::connect(address).unwrap();
        let closed = tokio::task::spawn_blocking(move || closed_within(&idle, Duration::from_secs(5))).await.unwrap();
        assert!(closed, "an idle connection stays open");
        assert!(get_health(address).await.unwrap().ends_with("ok"));
    }
}
