//! Wires everything from a validated [`Config`]: opens the state store (the only module
//! that names a concrete backend), builds the TLS material and the proxy, binds the
//! listeners, serves connections and drains them on shutdown.
//!
//! One connection: accept → limit (`limits.max_connections`) → TLS handshake with timeout
//! (`tls`) → HTTP/1.1 or HTTP/2 chosen from the negotiated ALPN (never by sniffing bytes,
//! which would wait forever on a silent client) → every request through `proxy`. A
//! per-connection watchdog enforces the header read timeout, the idle timeout and the
//! maximum connection age without a timer per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::{self, AdminState};
use crate::config::{Config, StateBackend};
use crate::enroll::{EnrollError, Enrollment};
use crate::metrics::Metrics;
use crate::proxy::{ConnInfo, Proxy};
use crate::reload::Reloader;
use crate::state::StateStore;
use crate::state::cache::StateCache;
use crate::state::embedded::EmbeddedStore;
use crate::state::redis::RedisStore;
use crate::tls::{self, TlsMaterial};

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// How often expired tickets and revocations are swept from the store.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    Store(#[from] crate::state::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("enrollment: {0}")]
    Enroll(#[from] EnrollError),
    #[error("upstream: {0}")]
    Proxy(#[from] crate::proxy::ProxyError),
}

/// Shutdown phases broadcast to every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Stop accepting; let in-flight requests finish; close idle connections.
    Draining,
    /// The drain deadline passed: drop whatever is left.
    Force,
}

/// A running gateway. Drop without `shutdown` leaves the tasks running until the runtime
/// ends.
pub struct Gateway {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub cache: Arc<StateCache>,
    /// Applies configuration reloads (SIGHUP, changed files).
    pub reloader: Arc<Reloader>,
    phase: watch::Sender<Phase>,
    accept_task: JoinHandle<()>,
    side_tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Stops accepting, drains in-flight requests (up to [`DRAIN_DEADLINE`]), stops the
    /// admin and metrics listeners, and returns when everything is closed.
    pub async fn shutdown(self) {
        let _ = self.phase.send(Phase::Draining);
        let _ = self.accept_task.await;
        for t in self.side_tasks {
            t.abort();
            let _ = t.await;
        }
    }

    /// Resolves when a shutdown was requested through [`Gateway::shutdown`]'s channel by
    /// another owner (not used by the CLI, which calls `shutdown` on a signal).
    pub fn is_running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }
}

/// Opens the configured state backend.
pub fn open_store(cfg: &Config) -> Result<Arc<dyn StateStore>, AppError> {
    match &cfg.state.backend {
        StateBackend::Embedded { path } => {
            let s: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(path)?);
            Ok(s)
        }
        StateBackend::Redis(redis) => {
            let s: Arc<dyn StateStore> = Arc::new(RedisStore::open(redis)?);
            Ok(s)
        }
    }
}

/// Creates the embedded store file when it is missing (`certgate run --create-store`,
/// `certgate init`, the demo). Returns `Ok(false)` for the Redis backend, which has no file.
/// An existing store is left as it is; an empty (0-byte) file is refused.
pub fn create_store_if_missing(cfg: &Config) -> Result<bool, AppError> {
    match &cfg.state.backend {
        StateBackend::Embedded { path } => {
            EmbeddedStore::open_or_create(path)?;
            Ok(true)
        }
        StateBackend::Redis(_) => Ok(false),
    }
}

/// Builds everything from `config`, binds the three listeners (port 0 allowed: the real
/// ports are in the returned [`Gateway`]) and starts serving.
pub async fn start(config: Config) -> Result<Gateway, AppError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let metrics = Metrics::new();
    metrics.config_last_reload_success.set(1);

    let store = open_store(&config)?;
    let cache = Arc::new(StateCache::new(
        store.clone(),
        &config.state,
        metrics.clone(),
    ));
    let (events, follower) = cache.follow();
    let mut store_tasks = store.clone().start_background(events, metrics.clone());
    store_tasks.push(follower);
    if let Some(every) = store.probe_interval() {
        store_tasks.push(tokio::spawn(prober(cache.clone(), every)));
    }
    cache.probe().await;

    let runtime = build_runtime(&config, &cache, &metrics, None)?;

    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { what, addr, source })
    };
    let listener = bind("listen", config.listen).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let metrics_listener = bind("metrics.listen", config.metrics.listen).await?;
    let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let listen = local(&listener, config.listen);
    let admin_addr = local(&admin_listener, config.admin.listen);
    let metrics_addr = local(&metrics_listener, config.metrics.listen);

    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let stopping = |mut rx: watch::Receiver<Phase>| async move {
        let _ = rx.wait_for(|p| *p != Phase::Running).await;
    };

    let admin_state = Arc::new(AdminState::new(
        cache.clone(),
        metrics.clone(),
        config.admin.token_file.clone(),
        config
            .enrollment
            .as_ref()
            .map(admin::EnrollmentInfo::from_config),
    ));
    let mut side_tasks = vec![
        tokio::spawn(admin::serve_admin(
            admin_listener,
            admin_state,
            stopping(phase_rx.clone()),
        )),
        tokio::spawn(admin::serve_metrics(
            metrics_listener,
            metrics.clone(),
            cache.clone(),
            stopping(phase_rx.clone()),
        )),
    ];
    side_tasks.push(tokio::spawn(sweeper(store.clone(), cache.clone())));
    side_tasks.extend(store_tasks);

    let server = Arc::new(Server {
        current: ArcSwap::from_pointee(runtime),
        metrics: metrics.clone(),
    });
    let apply = {
        let (server, cache, metrics) = (server.clone(), cache.clone(), metrics.clone());
        move |new: &Config| -> Result<(), crate::reload::BuildError> {
            let previous = server.current.load_full();
            let runtime = build_runtime(new, &cache, &metrics, Some(&previous))?;
            server.current.store(Arc::new(runtime));
            Ok(())
        }
    };
    let reloader = Arc::new(Reloader::new(&config, metrics.clone(), apply));
    side_tasks.push(tokio::spawn(crate::reload::watch_files(
        reloader.clone(),
        stopping(phase_rx.clone()),
    )));
    let accept_task = tokio::spawn(accept_loop(
        listener,
        server,
        config.limits.max_connections,
        phase_tx.clone(),
        phase_rx,
    ));
    tracing::info!(%listen, admin = %admin_addr, metrics = %metrics_addr, "certgate listening");
    Ok(Gateway {
        listen,
        admin: admin_addr,
        metrics: metrics_addr,
        cache,
        reloader,
        phase: phase_tx,
        accept_task,
        side_tasks,
    })
}

/// Everything a configuration determines that can change without a restart: the TLS
/// material (certificates, CAs, CRLs, a new session-ticket key), the proxy (upstream,
/// routes, headers, enrollment endpoints) and the per-connection limits. Swapped whole.
pub(crate) struct Runtime {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) material: Arc<TlsMaterial>,
    limits: ConnLimits,
}

/// Builds a [`Runtime`] from a validated configuration.
pub(crate) fn build_runtime(
    config: &Config,
    cache: &Arc<StateCache>,
    metrics: &Metrics,
    previous: Option<&Runtime>,
) -> Result<Runtime, AppError> {
    let material = Arc::new(TlsMaterial::from_config(config)?);
    if let Some(next) = config
        .client_auth
        .crls
        .iter()
        .filter_map(|c| c.next_update)
        .min()
    {
        metrics
            .crl_next_update
            .set(next - crate::core::clock::now());
    }
    let own = Arc::new(Enrollment::reloaded(
        config,
        cache.clone(),
        metrics.clone(),
        previous.map(|p| p.proxy.own().as_ref()),
    )?);
    let proxy = Arc::new(Proxy::new(
        config,
        cache.clone(),
        material.clone(),
        metrics.clone(),
        own,
    )?);
    Ok(Runtime {
        proxy,
        material,
        limits: ConnLimits::from_config(config),
    })
}

/// Probes the store every `every` without traffic (see `StateStore::probe_interval`).
async fn prober(cache: Arc<StateCache>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        cache.probe().await;
    }
}

async fn sweeper(store: Arc<dyn StateStore>, cache: Arc<StateCache>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        match store.sweep(crate::core::clock::now()).await {
            Ok(n) if n > 0 => tracing::info!(removed = n, "swept expired state records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "state sweep failed"),
        }
        // Keep readiness and certgate_state_store_up current even without traffic.
        cache.probe().await;
    }
}

#[derive(Clone, Copy)]
struct ConnLimits {
    /// `listen_proxy_protocol`: read a PROXY header before the TLS handshake.
    proxy_protocol: bool,
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_age: Option<Duration>,
    max_header_bytes: usize,
    h2_streams: u32,
}

impl ConnLimits {
    fn from_config(cfg: &Config) -> Self {
        ConnLimits {
            proxy_protocol: cfg.listen_proxy_protocol,
            handshake_timeout: cfg.limits.handshake_timeout,
            header_read_timeout: cfg.limits.header_read_timeout,
            idle_timeout: cfg.limits.idle_timeout,
            max_age: cfg.limits.max_connection_age,
            max_header_bytes: cfg.limits.max_header_bytes,
            h2_streams: cfg.limits.h2_max_concurrent_streams,
        }
    }
}

pub(crate) struct Server {
    /// Swapped whole by a reload; read once per connection (TLS, limits) and once per
    /// request (proxy).
    current: ArcSwap<Runtime>,
    metrics: Metrics,
}

async fn accept_loop(
    listener: TcpListener,
    server: Arc<Server>,
    max_connections: usize,
    phase_tx: watch::Sender<Phase>,
    mut phase: watch::Receiver<Phase>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let conn_phase = phase.clone();
    loop {
        tokio::select! {
            _ = async { let _ = phase.wait_for(|p| *p != Phase::Running).await; } => break,
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
                tokio::spawn(async move {
                    serve_connection(tcp, peer, server, phase).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    // Drain: wait until every connection returned its permit, or force after the deadline.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, permits.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed; closing the remaining connections");
        let _ = phase_tx.send(Phase::Force);
        let _ = tokio::time::timeout(Duration::from_secs(2), permits.acquire_many(all)).await;
    }
}

struct ActiveGuard(Metrics);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

async fn serve_connection(
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    server: Arc<Server>,
    phase: watch::Receiver<Phase>,
) {
    server.metrics.connections_active.inc();
    let _active = ActiveGuard(server.metrics.clone());
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
    let accepted = match Box::pin(tls::accept(tcp, &runtime.material, &server.metrics)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let limits = runtime.limits;
    drop(runtime);
    let h2 = accepted.h2;
    let conn = Arc::new(ConnInfo::new(accepted.identity, peer, accepted.sni));
    let activity = Arc::new(Activity::new(!h2));
    let io = TokioIo::new(ActivityIo {
        inner: accepted.stream,
        activity: activity.clone(),
    });
    let server = server.clone();
    let act = activity.clone();
    let svc = service_fn(move |req| {
        // The proxy of the current configuration: a reload applies to the next request of
        // an open connection too.
        let proxy = server.current.load().proxy.clone();
        let conn = conn.clone();
        let guard = InFlight::begin(&act);
        async move {
            let resp = proxy.handle(&conn, req).await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = b.serve_connection(io, svc);
        Box::pin(drive(conn, &activity, limits, phase)).await;
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
        drive(conn, &activity, limits, phase).await;
    }
}

/// A served connection that can be asked to finish gracefully.
trait Graceful: Future {
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
async fn drive<C>(
    conn: C,
    activity: &Activity,
    limits: ConnLimits,
    mut phase: watch::Receiver<Phase>,
) where
    C: Graceful,
    C::Output: Into<Result<(), hyper::Error>>,
{
    let conn = std::pin::pin!(conn);
    let mut conn = conn;
    let mut draining = false;
    let sleep = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
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
        let wake = deadline
            .max(now + Duration::from_millis(10))
            .min(now + limits.header_read_timeout / 2);
        sleep.as_mut().reset(wake);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res.into() {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed() => {
                let p = *phase.borrow();
                if changed.is_err() || p == Phase::Force {
                    return;
                }
                if p == Phase::Draining && !draining {
                    conn.as_mut().graceful();
                    draining = true;
                }
            }
            _ = &mut sleep => {}
        }
    }
}

enum Action {
    /// Drop the connection now (slow request head).
    Close,
    /// Finish the current exchange, then close (idle, or too old).
    Graceful,
    /// Nothing due; look again.
    Recheck,
}

/// Per-connection activity, updated by the I/O wrapper and the service; read by the
/// watchdog in [`drive`]. Times are milliseconds since `epoch`.
struct Activity {
    epoch: Instant,
    /// HTTP/1: time the head of the next request is measured from.
    track_heads: bool,
    in_flight: AtomicU32,
    /// 0 = no request head pending; else ms + 1 when its first byte arrived.
    head_started: AtomicU64,
    /// ms when the last request finished (0 = none yet).
    last_done: AtomicU64,
}

impl Activity {
    fn new(track_heads: bool) -> Self {
        Activity {
            epoch: Instant::now(),
            track_heads,
            in_flight: AtomicU32::new(0),
            // The first request head is due from the end of the handshake: a client that
            // completes TLS and sends nothing does not hold the connection.
            head_started: AtomicU64::new(if track_heads { 1 } else { 0 }),
            last_done: AtomicU64::new(0),
        }
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
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.head_started.store(0, Ordering::Relaxed);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_done.store(a.ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TLS stream, noting when bytes arrive (for the header read timeout).
struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_head_is_due_within_header_timeout() {
        let a = Activity::new(true);
        let (d, action) = a.next_deadline(Instant::now(), &limits());
        assert!(matches!(action, Action::Close));
        assert_eq!(d, a.epoch + Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_request_uses_idle_timeout_then_head_timer() {
        let a = Arc::new(Activity::new(true));
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
        let a = Activity::new(false);
        let mut l = limits();
        l.max_age = Some(Duration::from_secs(30));
        let (d, action) = a.next_deadline(Instant::now(), &l);
        assert!(matches!(action, Action::Graceful));
        assert_eq!(d, a.epoch + Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn h2_connections_do_not_time_heads() {
        let a = Activity::new(false);
        a.on_read();
        let (d, action) = a.next_deadline(Instant::now(), &limits());
        assert!(matches!(action, Action::Graceful));
        assert_eq!(d, a.epoch + Duration::from_secs(60));
    }
}
