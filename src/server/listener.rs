//! The accept loop: `limits.max_connections`, then one task per connection; on shutdown it
//! stops accepting and waits for the connections to drain.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::conn::serve_connection;
use super::{Phase, Server};

/// Accepts while the phase is `Running` or `LameDuck`, then drains (up to `drain`,
/// `shutdown.timeout`).
pub async fn accept_loop(
    listener: TcpListener,
    server: Arc<Server>,
    max_connections: usize,
    drain: Duration,
    phase_tx: watch::Sender<Phase>,
    mut phase: watch::Receiver<Phase>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let conn_phase = phase.clone();
    loop {
        tokio::select! {
            _ = async { let _ = phase.wait_for(|p| !p.accepting()).await; } => break,
            res = listener.accept() => {
                let (tcp, peer) = match res {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    server.metrics.connections_refused.inc();
                    tracing::debug!(%peer, "limits.max_connections reached; closing connection");
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let server = server.clone();
                let phase = conn_phase.clone();
                tokio::spawn(serve_connection(tcp, peer, server, phase, permit));
            }
        }
    }
    drop(listener);
    // Drain: wait until every connection returned its permit, or force after the deadline.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(drain, permits.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!(
            timeout_ms = drain.as_millis() as u64,
            "shutdown.timeout passed; closing the connections still open"
        );
        let _ = phase_tx.send(Phase::Force);
        let _ = tokio::time::timeout(Duration::from_secs(2), permits.acquire_many(all)).await;
    }
}
