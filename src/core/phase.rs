//! The gateway's shutdown phases, broadcast (a `watch` channel) to every task that serves
//! connections: the listeners, each connection's watchdog, and upgraded tunnels.

use std::sync::atomic::{AtomicBool, Ordering};

/// Where a shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Lame duck (`shutdown.drain_delay`): `/readyz` says 503 so load balancers move
    /// traffic away, while the listener still accepts and serves; every HTTP/2 connection
    /// gets GOAWAY and every HTTP/1.1 response `Connection: close`, so clients reconnect
    /// (to another instance once the balancer has noticed).
    LameDuck,
    /// Stop accepting; let in-flight requests finish (up to `shutdown.timeout`); close idle
    /// connections and upgraded tunnels (they never finish by themselves).
    Draining,
    /// The drain deadline passed: drop whatever is left.
    Force,
}

impl Phase {
    /// Whether the listener still accepts new connections.
    pub fn accepting(self) -> bool {
        self <= Phase::LameDuck
    }
}

/// Set once the lame-duck phase begins: read where no phase receiver is at hand (each
/// request, `/readyz`).
#[derive(Debug, Default)]
pub struct LameDuck(AtomicBool);

impl LameDuck {
    pub fn begin(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
