//! The per-connection watchdog: the header read timeout (from the first byte of each
//! request head), the idle timeout and the maximum connection age, enforced by one sleep
//! per connection that [`Activity`] moves, rather than a timer per request; and the
//! graceful end of a connection on shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::budget::Budget;
use super::h2frames::{FloodKind, FrameGuard, Verdict};
use super::{ConnLimits, Phase};
use crate::live::LiveConn;

/// A served connection that can be asked to finish gracefully.
pub trait Graceful: Future {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves `conn` to completion while enforcing the connection's timeouts and shutdown.
pub async fn drive<C>(
    conn: C,
    activity: &Activity,
    limits: ConnLimits,
    mut phase: watch::Receiver<Phase>,
    live: Option<&LiveConn>,
) where
    C: Graceful,
    C::Output: Into<Result<(), hyper::Error>>,
{
    let conn = std::pin::pin!(conn);
    let mut conn = conn;
    let mut draining = false;
    // Lame duck: the connection is asked to close at its next request (HTTP/1.1
    // `Connection: close` on that response, HTTP/2 GOAWAY after that stream), never before
    // one, so a client is not cut off between its handshake and its first request.
    let mut lame = false;
    // Once asked to close, the connection must keep making progress: every
    // `limits.idle_timeout` at least PROGRESS_BYTES must move, or it is dropped (a client
    // that stops reading, or an h2 client that never opens its flow-control window, only
    // answering PINGs, would otherwise hold its streams and their upstream connections).
    let mut progress: Option<(Instant, u64)> = None;
    let sleep = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        if draining {
            let moved = activity.moved.load(Ordering::Relaxed);
            match progress {
                None => progress = Some((now, moved)),
                Some((since, at)) if now.duration_since(since) >= limits.idle_timeout => {
                    if moved.saturating_sub(at) < PROGRESS_BYTES {
                        tracing::debug!(
                            "closing connection: no progress since it was asked to close"
                        );
                        return;
                    }
                    progress = Some((now, moved));
                }
                Some(_) => {}
            }
        }
        let stall = activity.stall_deadline(limits.send_timeout);
        if stall.is_some_and(|d| d <= now) {
            tracing::debug!(
                "closing connection: the client took none of the response data it was sent \
                 within limits.send_timeout"
            );
            return;
        }
        let (deadline, action) = activity.next_deadline(now, &limits);
        if deadline <= now {
            match action {
                Action::Close => {
                    tracing::debug!("closing connection: request head not received in time");
                    return;
                }
                Action::Graceful => {
                    if !draining {
                        conn.as_mut().graceful();
                        draining = true;
                    }
                }
                Action::Recheck => {}
            }
        }
        // Wake at the deadline, but at least every half header timeout so a request head
        // that starts arriving on an idle connection is timed from its first byte.
        let mut wake = deadline
            .max(now + Duration::from_millis(10))
            .min(now + limits.header_read_timeout / 2);
        if let Some((since, _)) = progress {
            wake = wake.min((since + limits.idle_timeout).max(now + Duration::from_millis(10)));
        }
        if let Some(d) = stall {
            wake = wake.min(d.max(now + Duration::from_millis(10)));
        }
        sleep.as_mut().reset(wake);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res.into() {
                    let text = crate::core::text::error_chain(&e);
                    if text.contains("ENHANCE_YOUR_CALM") {
                        ABUSE_LOG.note(&text);
                    }
                    tracing::debug!(error = %text, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed() => {
                let p = *phase.borrow();
                if changed.is_err() || p == Phase::Force {
                    return;
                }
                if p >= Phase::Draining && !draining {
                    conn.as_mut().graceful();
                    draining = true;
                } else if p == Phase::LameDuck && !draining {
                    lame = true;
                    if activity.asks_close_now() {
                        conn.as_mut().graceful();
                        draining = true;
                    }
                }
            }
            () = activity.request_seen.notified(), if lame && !draining => {
                conn.as_mut().graceful();
                draining = true;
            }
            _ = &mut sleep => {}
            () = activity.flood_found.notified() => {
                // The GOAWAY (ENHANCE_YOUR_CALM) goes out at the next frame boundary; the
                // client gets a moment to read it, then the connection is dropped.
                let _ = tokio::time::timeout(FLOOD_LINGER, conn.as_mut()).await;
                return;
            }
            reason = async { live.expect("set").closed().await }, if live.is_some() => {
                // GOAWAY on HTTP/2 (Connection: close on an idle HTTP/1.1 connection), a
                // moment to write it, then the connection is dropped: requests still in
                // flight are cut.
                tracing::debug!(reason = reason.as_str(), "closing connection: its certificate is no longer allowed");
                if !draining {
                    conn.as_mut().graceful();
                }
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                return;
            }
        }
    }
}

/// How long a connection closed by the open-connection registry gets to write its GOAWAY
/// (or finish an idle HTTP/1.1 close) before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// How long a connection that flooded control frames is kept after its GOAWAY.
const FLOOD_LINGER: Duration = Duration::from_millis(500);

/// How many bytes a closing connection must move per `limits.idle_timeout` to be let
/// finish (a keep-alive PING exchange is a few dozen).
const PROGRESS_BYTES: u64 = 4096;

pub enum Action {
    /// Drop the connection now (slow request head).
    Close,
    /// Finish the current exchange, then close (idle, or too old).
    Graceful,
    /// Nothing due; look again.
    Recheck,
}

/// Per-connection activity, updated by the I/O wrapper and the service; read by the
/// watchdog in [`drive`]. Times are milliseconds since `epoch`.
pub struct Activity {
    epoch: Instant,
    /// HTTP/1: time the head of the next request is measured from.
    track_heads: bool,
    in_flight: AtomicU32,
    /// 0 = no request head pending; else ms + 1 when its first byte arrived.
    head_started: AtomicU64,
    /// ms when the last request finished (0 = none yet).
    last_done: AtomicU64,
    /// Bytes read from and written to the client so far.
    moved: AtomicU64,
    /// Response bodies holding data the client has not taken (see `outbound`).
    owed: AtomicU32,
    /// ms when `owed` last rose from 0.
    owed_since: AtomicU64,
    /// ms when a response body was last asked for data, or a chunk was written.
    last_taken: AtomicU64,
    /// `limits.response_buffer`, shared by all connections.
    budget: Arc<Budget>,
    /// The [`FloodKind`] of an HTTP/2 control-frame flood (0 = none).
    flood: AtomicU8,
    /// Wakes the watchdog when a flood is found.
    flood_found: tokio::sync::Notify,
    /// Wakes the watchdog when a request begins in the lame-duck phase.
    request_seen: tokio::sync::Notify,
}

impl Activity {
    pub fn new(track_heads: bool, budget: Arc<Budget>) -> Self {
        Activity {
            epoch: Instant::now(),
            track_heads,
            in_flight: AtomicU32::new(0),
            // The first request head is due from the end of the handshake: a client that
            // completes TLS and sends nothing does not hold the connection.
            head_started: AtomicU64::new(if track_heads { 1 } else { 0 }),
            last_done: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            owed: AtomicU32::new(0),
            owed_since: AtomicU64::new(0),
            last_taken: AtomicU64::new(0),
            budget,
            flood: AtomicU8::new(0),
            flood_found: tokio::sync::Notify::new(),
            request_seen: tokio::sync::Notify::new(),
        }
    }

    /// A request began while the gateway is a lame duck: the connection closes after it.
    pub fn request_in_lame_duck(&self) {
        self.request_seen.notify_one();
    }

    /// When the lame-duck phase begins, whether this connection can be asked to close at
    /// once: a request is in flight (HTTP/1.1: its response says `Connection: close`), or
    /// it is HTTP/2 and has served one (GOAWAY is safe then; a client that has sent
    /// nothing yet is left to send its first request). An idle HTTP/1.1 connection waits
    /// for its next request, so no client request races the close.
    fn asks_close_now(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
            || (!self.track_heads && self.last_done.load(Ordering::Relaxed) > 0)
    }

    /// The client flooded control frames of this kind: the connection is dropped soon.
    fn flooded(&self, kind: FloodKind) {
        self.flood.store(kind as u8, Ordering::Relaxed);
        self.flood_found.notify_one();
    }

    /// The kind of control-frame flood that ended this connection, if one did.
    pub fn flood(&self) -> Option<FloodKind> {
        FloodKind::from_u8(self.flood.load(Ordering::Relaxed))
    }

    pub(super) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// A response body, or a chunk of one, holds data the client has not taken yet.
    pub(super) fn owe(&self) {
        if self.owed.fetch_add(1, Ordering::AcqRel) == 0 {
            self.owed_since.store(self.ms(), Ordering::Relaxed);
        }
    }

    /// That data was taken (or is gone).
    pub(super) fn settle(&self) {
        self.owed.fetch_sub(1, Ordering::AcqRel);
    }

    /// A response body was asked for data: the client is taking what it is sent.
    pub(super) fn took(&self) {
        self.last_taken.store(self.ms(), Ordering::Relaxed);
    }

    /// When the connection counts as stalled: data owed and none taken for
    /// `send_timeout` (`None` while nothing is owed).
    pub(super) fn stall_deadline(&self, send_timeout: Duration) -> Option<Instant> {
        if self.owed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = self
            .owed_since
            .load(Ordering::Relaxed)
            .max(self.last_taken.load(Ordering::Relaxed));
        Some(self.at(since) + send_timeout)
    }

    fn moved(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn on_read(&self) {
        if self.track_heads
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.ms() + 1, Ordering::Relaxed);
        }
    }

    fn next_deadline(&self, now: Instant, limits: &ConnLimits) -> (Instant, Action) {
        let age_deadline = limits.max_age.map(|a| self.epoch + a);
        let (deadline, action) = if self.in_flight.load(Ordering::Relaxed) > 0 {
            (now + limits.idle_timeout, Action::Recheck)
        } else {
            match self.head_started.load(Ordering::Relaxed) {
                0 => {
                    let last = self.last_done.load(Ordering::Relaxed);
                    (self.at(last) + limits.idle_timeout, Action::Graceful)
                }
                started => (
                    self.at(started - 1) + limits.header_read_timeout,
                    Action::Close,
                ),
            }
        };
        match age_deadline {
            Some(a) if a < deadline => (a, Action::Graceful),
            _ => (deadline, action),
        }
    }
}

/// Marks a request in flight; dropped (also on cancellation) when it finishes.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.head_started.store(0, Ordering::Relaxed);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_done.store(a.ms().max(1), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TLS stream, noting when bytes arrive (for the header read timeout) and, on HTTP/2,
/// holding the client to `limits.h2_control_frames_per_second` ([`FrameGuard`]).
pub struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
    h2: Option<Box<H2Watch>>,
}

/// A flooding client's GOAWAY, from due to written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GoAway {
    None,
    /// Written at the gateway's next frame boundary; `.0` bytes of it so far.
    Due(usize),
    /// Written; being flushed.
    Flushing,
    /// Sent: the client's bytes are discarded, the gateway's swallowed.
    Sent,
}

struct H2Watch {
    guard: FrameGuard,
    goaway: GoAway,
}

impl<S> ActivityIo<S> {
    /// `inner`, reporting the first byte of each request head to `activity`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        ActivityIo {
            inner,
            activity,
            h2: None,
        }
    }

    /// Also limits the client's HTTP/2 control frames to `per_second` (0 = no limit).
    pub fn with_h2_guard(mut self, per_second: u32) -> Self {
        self.h2 = Some(Box::new(H2Watch {
            guard: FrameGuard::new(per_second),
            goaway: GoAway::None,
        }));
        self
    }
}

impl<S: AsyncWrite + Unpin> ActivityIo<S> {
    /// Writes and flushes the GOAWAY of a flooding client.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(h) = self.h2.as_mut() else {
            return Poll::Ready(());
        };
        loop {
            match h.goaway {
                GoAway::None | GoAway::Sent => return Poll::Ready(()),
                GoAway::Due(written) => {
                    let frame = h.guard.goaway();
                    match Pin::new(&mut self.inner).poll_write(cx, &frame[written..]) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(n)) if n > 0 && written + n < frame.len() => {
                            h.goaway = GoAway::Due(written + n)
                        }
                        Poll::Ready(Ok(n)) if n > 0 => h.goaway = GoAway::Flushing,
                        Poll::Ready(_) => h.goaway = GoAway::Sent,
                    }
                }
                GoAway::Flushing => match Pin::new(&mut self.inner).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => h.goaway = GoAway::Sent,
                },
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(goaway) = this.h2.as_ref().map(|h| h.goaway)
            && goaway != GoAway::None
        {
            if goaway != GoAway::Sent {
                let at_boundary = this
                    .h2
                    .as_ref()
                    .is_some_and(|h| h.guard.gateway_rest() == 0);
                if !at_boundary || this.poll_goaway(cx).is_pending() {
                    // The gateway's writes finish the frame in progress first; the
                    // watchdog drops the connection if they never do.
                    return Poll::Pending;
                }
            }
            // The client's bytes are read and dropped until it closes (so it reads the
            // GOAWAY rather than a reset); the watchdog ends the connection soon anyway.
            let mut scratch = [0u8; 2048];
            for _ in 0..16 {
                let mut sb = ReadBuf::new(&mut scratch);
                match Pin::new(&mut this.inner).poll_read(cx, &mut sb) {
                    Poll::Ready(Ok(())) if sb.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
            this.activity.moved(buf.filled().len() - before);
            if let Some(h) = this.h2.as_mut() {
                let activity = &this.activity;
                if let Verdict::Flood(kind) = h
                    .guard
                    .client_bytes(&buf.filled()[before..], || activity.ms())
                {
                    h.goaway = GoAway::Due(0);
                    activity.flooded(kind);
                }
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let mut buf = buf;
        if let Some(h) = this.h2.as_ref()
            && h.goaway != GoAway::None
        {
            let rest = h.guard.gateway_rest();
            if h.goaway == GoAway::Sent || rest == 0 {
                if this.poll_goaway(cx).is_pending() {
                    return Poll::Pending;
                }
                // Nothing more reaches a flooding client.
                return Poll::Ready(Ok(buf.len()));
            }
            buf = &buf[..rest.min(buf.len())];
        }
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.activity.moved(n);
            if let Some(h) = this.h2.as_mut() {
                h.guard.gateway_bytes(&buf[..n]);
            }
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(h) = this.h2.as_ref()
            && h.goaway != GoAway::None
            && h.guard.gateway_rest() == 0
            && this.poll_goaway(cx).is_pending()
        {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.h2.as_ref().is_some_and(|h| h.goaway != GoAway::None) {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.activity.moved(n);
            if let Some(h) = this.h2.as_mut() {
                let mut left = n;
                for b in bufs {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(b.len());
                    h.guard.gateway_bytes(&b[..take]);
                    left -= take;
                }
            }
        }
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            proxy_protocol: false,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_age: None,
            max_header_bytes: 65536,
            h2_streams: 100,
            send_timeout: Duration::from_secs(30),
            h2_control_frames_per_second: 1000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_head_is_due_within_header_timeout() {
        let a = Activity::new(true, Budget::new(1 << 20));
        let (d, action) = a.next_deadline(Instant::now(), &limits());
        assert!(matches!(action, Action::Close));
        assert_eq!(d, a.epoch + Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_request_uses_idle_timeout_then_head_timer() {
        let a = Arc::new(Activity::new(true, Budget::new(1 << 20)));
        let g = InFlight::begin(&a);
        let (_, action) = a.next_deadline(Instant::now(), &limits());
        assert!(matches!(action, Action::Recheck), "in flight: nothing due");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(g);
        let (d, action) = a.next_deadline(Instant::now(), &limits());
        assert!(matches!(action, Action::Graceful));
        assert_eq!(d, a.epoch + Duration::from_secs(65));
        // Bytes of the next head arrive: it must complete within header_read_timeout.
        tokio::time::advance(Duration::from_secs(20)).await;
        a.on_read();
        let (d, action) = a.next_deadline(Instant::now(), &limits());
        assert!(matches!(action, Action::Close));
        assert_eq!(d, a.epoch + Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn max_age_wins_when_earlier() {
        let a = Activity::new(false, Budget::new(1 << 20));
        let mut l = limits();
        l.max_age = Some(Duration::from_secs(30));
        let (d, action) = a.next_deadline(Instant::now(), &l);
        assert!(matches!(action, Action::Graceful));
        assert_eq!(d, a.epoch + Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn h2_connections_do_not_time_heads() {
        let a = Activity::new(false, Budget::new(1 << 20));
        a.on_read();
        let (d, action) = a.next_deadline(Instant::now(), &limits());
        assert!(matches!(action, Action::Graceful));
        assert_eq!(d, a.epoch + Duration::from_secs(60));
    }
}

/// HTTP/2 connections closed with GOAWAY `ENHANCE_YOUR_CALM` (rapid reset, too many
/// errored streams): an attacker opens as many as it likes, so they are logged at most
/// once per [`ABUSE_LOG_EVERY`], with how many there were since the last line.
pub(crate) struct AbuseLog {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    since: std::sync::atomic::AtomicU64,
    /// Lines written so far.
    lines: std::sync::atomic::AtomicU64,
}

const ABUSE_LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) static ABUSE_LOG: AbuseLog = AbuseLog::new();

impl AbuseLog {
    pub(crate) const fn new() -> Self {
        AbuseLog {
            last: std::sync::Mutex::new(None),
            since: std::sync::atomic::AtomicU64::new(0),
            lines: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn note(&self, error: &str) {
        use std::sync::atomic::Ordering;
        let n = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < ABUSE_LOG_EVERY) {
            return;
        }
        *last = Some(now);
        self.since.store(0, Ordering::Relaxed);
        self.lines.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            connections = n,
            error,
            "HTTP/2 connections closed for abusing the protocol (GOAWAY ENHANCE_YOUR_CALM); \
             logged at most every 10 s"
        );
    }
}

#[cfg(test)]
mod abuse_log_tests {
    use super::*;

    #[test]
    fn a_flood_of_abusive_connections_is_one_line() {
        let log = AbuseLog::new();
        for _ in 0..1279 {
            log.note("connection error: ENHANCE_YOUR_CALM too_many_resets");
        }
        assert_eq!(log.lines.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(log.since.load(std::sync::atomic::Ordering::Relaxed), 1278);
    }
}
