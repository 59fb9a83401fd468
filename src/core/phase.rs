//! The gateway's shutdown phases, broadcast (a `watch` channel) to every task that serves
//! connections: the listeners, each connection's watchdog, and upgraded tunnels.

/// Where a shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop accepting; let in-flight requests finish; close idle connections
    /// and upgraded tunnels (they never finish by themselves).
    Draining,
    /// The drain deadline passed: drop whatever is left.
    Force,
}
