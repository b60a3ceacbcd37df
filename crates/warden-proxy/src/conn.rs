//! The deadline on each request's header, which pingora does not have.
//!
//! pingora times out each *read* of a request header (60 s, the keepalive timeout), not
//! the header as a whole: a client sending one byte every 59 s holds a connection and a
//! task forever ("slowloris"). [`Guarded`] wraps the proxy's application and every
//! accepted connection in a [`HeaderDeadline`], which watches the bytes going by:
//!
//! * idle (between requests): no deadline of its own; pingora's keepalive timeout applies;
//! * the first byte of a request starts the clock; the end of its header (`CRLF CRLF`,
//!   or `LF LF`, which pingora's parser also accepts) stops it. Over
//!   `limits.header_timeout`, warden writes a 408 (best effort: the client may not be
//!   reading), the next read fails, pingora closes the connection, and
//!   `warden_http_refusals_total{reason="header_timeout"}` counts it;
//! * a header still incomplete after `limits.max_header_bytes` is cut off the same way
//!   (431, `reason="header_too_large"`), so a client cannot make warden buffer the 1 MiB
//!   pingora would; a complete header over the limit is refused by the proxy with 431;
//! * the body is not watched here (the proxy's body deadline covers it); the first
//!   response bytes written end the request, except interim `1xx` responses;
//!   `101 Switching Protocols` turns the watch off for good (a tunnel is not HTTP).
//!
//! Bytes pipelined behind a request in the same read are not scanned; the next read
//! starts a new clock, so a pipelining client is still bounded by one timeout per read
//! it makes after a response.

use std::any::Any;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use warden_metrics::{HttpRefusal, Metrics};

use crate::Shared;

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request.
    Idle,
    /// Reading a request header; `tail` holds the last bytes seen (for a `CRLF CRLF` split
    /// across reads).
    Header { tail: u32 },
    /// Header complete: body and response.
    Request,
    /// Upgraded: not HTTP any more.
    Tunnel,
}

/// A connection with a deadline on each request header.
pub struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    max_header_bytes: usize,
    header_bytes: usize,
    phase: Phase,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl HeaderDeadline {
    /// Wraps a connection.
    #[must_use]
    pub fn new(
        inner: Stream,
        timeout: Duration,
        max_header_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            timeout,
            max_header_bytes,
            header_bytes: 0,
            phase: Phase::Idle,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            expired: false,
            metrics,
        }
    }

    fn saw_write(&mut self, bytes: &[u8]) {
        self.phase.write(bytes);
    }

    /// Gives up on the connection: counts why, tries to tell the client, and fails the read.
    fn refuse(&mut self, cx: &mut Context<'_>, why: HttpRefusal) -> Poll<io::Result<()>> {
        self.expired = true;
        self.metrics.http_refusal(why);
        let (status, message): (&[u8], &str) = match why {
            HttpRefusal::HeaderTooLarge => (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "request header over limits.max_header_bytes",
            ),
            _ => (
                b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "request header not complete within limits.header_timeout",
            ),
        };
        // Best effort and never waiting: the client may not read, or its window be full.
        let _ = Pin::new(&mut self.inner).poll_write(cx, status);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)))
    }
}

impl Phase {
    /// Bytes read from the client; `true` when they start a request header.
    fn read(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return false;
        }
        let (tail, started) = match *self {
            Phase::Idle => (0, true),
            Phase::Header { tail } => (tail, false),
            Phase::Request | Phase::Tunnel => return false,
        };
        // Only a LF can end a header: look at each one with the (up to) two bytes before
        // it, which may have come in the previous read (`tail`). LF LF, or LF CR LF (the
        // end of CRLF CRLF), ends it.
        for i in memchr::memchr_iter(b'\n', bytes) {
            let last = bytes[i.saturating_sub(2)..=i]
                .iter()
                .fold(tail, |t, &b| (t << 8) | u32::from(b));
            if last & 0xffff == 0x0a0a || last & 0x00ff_ffff == 0x000a_0d0a {
                *self = Phase::Request;
                return started;
            }
        }
        let tail = bytes[bytes.len().saturating_sub(4)..]
            .iter()
            .fold(tail, |t, &b| (t << 8) | u32::from(b));
        *self = Phase::Header { tail };
        started
    }

    /// Bytes written to the client.
    fn write(&mut self, bytes: &[u8]) {
        if *self == Phase::Tunnel || bytes.is_empty() {
            return;
        }
        if bytes.starts_with(b"HTTP/1.1 101") || bytes.starts_with(b"HTTP/1.0 101") {
            *self = Phase::Tunnel;
        } else if *self == Phase::Request
            && !(bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1"))
        {
            *self = Phase::Idle;
        }
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request header timed out",
            )));
        }
        if matches!(this.phase, Phase::Header { .. }) && this.sleep.as_mut().poll(cx).is_ready() {
            return this.refuse(cx, HttpRefusal::HeaderTimeout);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if this.phase.read(new) {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                this.header_bytes = 0;
            }
            if matches!(this.phase, Phase::Header { .. }) {
                this.header_bytes += new.len();
                if this.header_bytes > this.max_header_bytes {
                    return this.refuse(cx, HttpRefusal::HeaderTooLarge);
                }
                // Register the timer's waker, so an idle slow client is still cut off.
                let _ = this.sleep.as_mut().poll(cx);
            }
        }
        r
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.saw_write(&buf[..n]);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&r, bufs.iter().find(|b| !b.is_empty())) {
            let n = (*n).min(first.len());
            this.saw_write(&first[..n]);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === the rest of pingora's IO trait: delegated ===

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// A pingora application whose connections get a [`HeaderDeadline`] (the timeout is read
/// from the settings in force when the connection is accepted).
pub struct Guarded<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    linger: Duration,
}

impl<A> Guarded<A> {
    /// Wraps an application.
    #[must_use]
    pub fn new(inner: A, shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            linger: Duration::ZERO,
        }
    }

    /// How long connections idle between requests are kept once the listeners have
    /// closed (graceful upgrade or stop), before pingora drops them.
    ///
    /// pingora drops such a connection as soon as it stops listening, and a client may be
    /// sending its next request on it right then: the client sees the connection closed
    /// without an answer (HTTP lets it retry an idempotent request; wrk, for one, counts
    /// an error). Kept a while instead, each next request on them is served and answered
    /// with `Connection: close` (pingora's own behaviour once shutting down), so the
    /// client moves to a new connection, which the new process of an upgrade accepts.
    /// Keep it under `server.grace_period`: the runtime stops after that.
    #[must_use]
    pub fn idle_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.shared.settings.load().limits.clone();
        let guarded = HeaderDeadline::new(
            stream,
            limits.header_timeout,
            limits.max_header_bytes,
            Arc::clone(&self.shared.metrics),
        );
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        if !self.linger.is_zero() {
            tokio::time::sleep(self.linger).await;
        }
        self.inner.cleanup().await;
    }
}

// `Any` is what pingora's IO trait needs of the wrapper (blanket impl): keep it 'static.
const _: fn() = || {
    fn assert_io<T: pingora::protocols::IO + Any>() {}
    assert_io::<HeaderDeadline>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn after(reads: &[&[u8]]) -> (Phase, usize) {
        let mut p = Phase::Idle;
        let starts = reads.iter().filter(|r| p.read(r)).count();
        (p, starts)
    }

    #[test]
    fn the_end_of_a_header_is_found_across_reads() {
        assert_eq!(
            after(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
            (Phase::Request, 1)
        );
        assert_eq!(
            after(&[b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r", b"\n"]),
            (Phase::Request, 1)
        );
        assert_eq!(
            after(&[b"GET / HTTP/1.1\nHost: x\n\n"]),
            (Phase::Request, 1)
        );
        assert!(matches!(
            after(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]).0,
            Phase::Header { .. }
        ));
        assert_eq!(after(&[b"", b""]), (Phase::Idle, 0));
    }

    /// The byte-at-a-time scan the line-feed search replaced: both must agree on where
    /// a header ends, however the bytes are split into reads.
    fn reference(reads: &[&[u8]]) -> Option<(usize, usize)> {
        let mut tail = 0u32;
        for (r, read) in reads.iter().enumerate() {
            for (i, &b) in read.iter().enumerate() {
                tail = (tail << 8) | u32::from(b);
                if tail == 0x0d0a_0d0a
                    || tail & 0xffff == 0x0a0a
                    || tail & 0x00ff_ffff == 0x000a_0d0a
                {
                    return Some((r, i));
                }
            }
        }
        None
    }

    #[test]
    fn the_line_feed_search_agrees_with_a_byte_at_a_time_scan() {
        // SplitMix64: deterministic inputs over the bytes that matter (CR, LF, others).
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for _ in 0..20_000 {
            let len = 1 + (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| [b'\r', b'\n', b'a', b':'][(next() % 4) as usize])
                .collect();
            // Cut into reads at random places.
            let mut reads: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            while at < len {
                let n = 1 + (next() % 5) as usize;
                let end = (at + n).min(len);
                reads.push(&bytes[at..end]);
                at = end;
            }
            let want = reference(&reads);
            let mut p = Phase::Idle;
            let mut got = None;
            for (r, read) in reads.iter().enumerate() {
                p.read(read);
                if p == Phase::Request {
                    got = Some(r);
                    break;
                }
            }
            assert_eq!(got, want.map(|(r, _)| r), "{bytes:?} split as {reads:?}");
        }
    }

    #[test]
    fn a_response_ends_the_request_but_interim_ones_do_not_and_101_ends_the_watch() {
        let mut p = Phase::Request;
        p.write(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(p, Phase::Request);
        p.write(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(p, Phase::Idle);
        assert!(p.read(b"G"), "the next request starts the clock");
        let mut p = Phase::Request;
        p.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(!p.read(b"\x81\x05hello") && p == Phase::Tunnel);
    }
}
