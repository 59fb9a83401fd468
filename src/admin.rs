//! (pending) admin API.
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::cache::StateCache;

pub struct AdminState;

impl AdminState {
    pub fn new(_cfg: &Config, _cache: Arc<StateCache>, _metrics: Metrics) -> Self {
        AdminState
    }
}

pub async fn serve_admin(_l: TcpListener, _s: Arc<AdminState>, shutdown: impl Future<Output = ()>) {
    shutdown.await
}

pub async fn serve_metrics(
    _l: TcpListener,
    _m: Metrics,
    _c: Arc<StateCache>,
    shutdown: impl Future<Output = ()>,
) {
    shutdown.await
}
