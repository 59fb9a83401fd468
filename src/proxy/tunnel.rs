//! An upgraded connection (WebSocket and the like) after the 101: bytes copied both ways
//! until one side closes, under the same limits as any connection: it keeps its place in
//! `limits.max_connections` and `certgate_connections_active` (the [`Slot`]), is closed
//! after `limits.idle_timeout` without a byte either way, and at
//! `limits.max_connection_age` counted from the upgrade.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::core::phase::Phase;
use crate::live::{LiveConn, PROTO_UPGRADED};

/// What keeps a connection counted (its permit of `limits.max_connections` and its place
/// in `certgate_connections_active`); opaque here, the server fills it.
pub type Slot = Arc<dyn std::any::Any + Send + Sync>;

/// The limits a tunnel lives under.
#[derive(Debug, Clone, Copy)]
pub(super) struct TunnelLimits {
    pub idle: Duration,
    pub max_age: Option<Duration>,
}

/// Copies between the two upgraded ends until either closes or a limit is reached.
pub(super) async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    limits: TunnelLimits,
    slot: Slot,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    live: Option<Arc<LiveConn>>,
) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        tracing::debug!("protocol upgrade abandoned by one side");
        return;
    };
    if let Some(l) = &live {
        l.set_protocol(PROTO_UPGRADED);
    }
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Touch::new(TokioIo::new(client), started, last.clone());
    let mut upstream = TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let deadline = limits
        .max_age
        .map(|a| tokio::time::Instant::from_std(started + a));
    loop {
        if *phase.borrow() >= Phase::Draining {
            break;
        }
        let idle_for = Duration::from_millis(
            (started.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed)),
        );
        if idle_for >= limits.idle {
            tracing::debug!("closing an upgraded connection: limits.idle_timeout");
            break;
        }
        let check = tokio::time::sleep(limits.idle - idle_for);
        tokio::select! {
            _ = &mut copy => break,
            _ = check => {}
            _ = async { tokio::time::sleep_until(deadline.expect("set")).await }, if deadline.is_some() => {
                tracing::debug!("closing an upgraded connection: limits.max_connection_age");
                break;
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() >= Phase::Draining {
                    tracing::debug!("closing an upgraded connection: shutting down");
                    break;
                }
            }
            reason = async { live.as_deref().expect("set").closed().await }, if live.is_some() => {
                tracing::debug!(reason = reason.as_str(), "closing an upgraded connection: its certificate is no longer allowed");
                break;
            }
        }
    }
    drop(slot);
}

/// The client end, noting when a byte last moved either way.
struct Touch<T> {
    inner: T,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Touch<T> {
    fn new(inner: T, started: Instant, last: Arc<AtomicU64>) -> Self {
        Touch {
            inner,
            started,
            last,
        }
    }

    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
