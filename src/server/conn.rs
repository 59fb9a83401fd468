//! One connection: PROXY header (when configured), TLS handshake, then HTTP/1.1 or HTTP/2
//! from the negotiated ALPN, served under the [`super::watchdog`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::outbound::{H2_STREAM_BUFFER, Outbound};
use super::watchdog::{ABUSE_LOG, Activity, ActivityIo, InFlight, drive};
use super::{Phase, Server};
use crate::live::{PROTO_H1, PROTO_H2};
use crate::metrics::Metrics;
use crate::proxy::{ConnInfo, Pending, Slot};
use crate::tls;

struct ActiveGuard(Metrics);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

/// Serves one accepted TCP connection to its end.
pub async fn serve_connection(
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    server: Arc<Server>,
    phase: watch::Receiver<Phase>,
    permit: OwnedSemaphorePermit,
) {
    server.metrics.connections_active.inc();
    // The connection's place in the limits; an upgraded tunnel keeps a clone of it.
    let slot: Slot = Arc::new((permit, ActiveGuard(server.metrics.clone())));
    let runtime = server.current.load_full();
    if runtime.limits.proxy_protocol {
        let header = tokio::time::timeout(
            runtime.limits.handshake_timeout,
            crate::server::proxy_protocol::read_header(&mut tcp),
        )
        .await;
        match header {
            Ok(Ok(Some(client))) => peer = client,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "PROXY protocol header refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no PROXY protocol header within the handshake timeout");
                return;
            }
        }
    }
    // Boxed: the handshake future is large and short-lived; keeping it out of the
    // connection task's own state saves memory on every idle connection.
    let handshake_start = crate::telemetry::get().map(|_| std::time::SystemTime::now());
    let accepted = match Box::pin(tls::accept(tcp, &runtime.material, &server.metrics)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let handshake = handshake_start.map(|start| crate::telemetry::Handshake {
        start,
        end: std::time::SystemTime::now(),
    });
    let limits = runtime.limits;
    drop(runtime);
    let h2 = accepted.h2;
    // An expired certificate (the enrollment CA's are let through to see the "expired"
    // page) is refused on every request: nothing to close later.
    let now = crate::core::clock::now();
    let live = accepted
        .identity
        .as_ref()
        .filter(|id| id.not_after >= now)
        .map(|id| {
            let proto = if h2 { PROTO_H2 } else { PROTO_H1 };
            server.live.open(id.clone(), peer, proto)
        });
    let conn = Arc::new(
        ConnInfo::new(slot, phase.clone(), accepted.identity, peer, accepted.sni)
            .with_live(live.clone())
            .with_tls_version(accepted.tls_version)
            .with_handshake(handshake),
    );
    let activity = Arc::new(Activity::new(!h2, server.responses.clone()));
    let io = ActivityIo::new(accepted.stream, activity.clone());
    let io = TokioIo::new(if h2 {
        io.with_h2_guard(limits.h2_control_frames_per_second)
    } else {
        io
    });
    let metrics = server.metrics.clone();
    let server = server.clone();
    let act = activity.clone();
    let svc = service_fn(move |req| {
        // The proxy of the current configuration: a reload applies to the next request of
        // an open connection too.
        let proxy = server.current.load().proxy.clone();
        let conn = conn.clone();
        let guard = InFlight::begin(&act);
        if server.lame.is_on() {
            act.request_in_lame_duck();
        }
        if let Some(l) = &conn.live {
            l.request();
        }
        let act = act.clone();
        async move {
            let mut resp = proxy.handle(&conn, req).await;
            drop(guard);
            let access = resp.extensions_mut().remove::<Pending>();
            Ok::<_, Infallible>(resp.map(|b| Outbound::new(b, act).with_access(access)))
        }
    });
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_streams)
            .max_send_buf_size(H2_STREAM_BUFFER)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = b.serve_connection(io, svc);
        Box::pin(drive(conn, &activity, limits, phase, live.as_deref())).await;
        if let Some(kind) = activity.flood() {
            metrics.count_h2_abuse(kind);
            ABUSE_LOG.note(&format!(
                "HTTP/2 {} flood over limits.h2_control_frames_per_second: GOAWAY \
                 ENHANCE_YOUR_CALM",
                kind.as_str()
            ));
        }
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            // The watchdog below enforces header_read_timeout from the first byte of each
            // request head; hyper's own timer would also cut idle keep-alive connections.
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes)
            // Bounds a head that never completes; larger than the header limit so a
            // complete oversized head is answered with 431 rather than cut off.
            .max_buf_size((limits.max_header_bytes * 2).max(64 * 1024))
            .keep_alive(true);
        let conn = b.serve_connection(io, svc).with_upgrades();
        drive(conn, &activity, limits, phase, live.as_deref()).await;
    }
}
