//! Wires everything from a validated [`Config`]: opens the state store (the only module
//! that names a concrete backend), builds the [`Runtime`] (TLS material, proxy, limits),
//! binds the listeners, starts the side tasks and the accept loop (`server`), and drains
//! on shutdown. Nothing else lives here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{Config, StateBackend};
use crate::enroll::{EnrollError, Enrollment};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::server::listener::accept_loop;
use crate::server::{ConnLimits, LameDuck, Phase, Runtime, Server};
use crate::state::StateStore;
use crate::state::cache::StateCache;
use crate::state::embedded::EmbeddedStore;
use crate::state::redis::RedisStore;
use crate::tls::{self, TlsMaterial};

/// How often expired tickets and revocations are swept from the store.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} ({what}, {at}): {source}{}", bind_hint(what, *addr, source))]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        /// Where `what` is set: `file:line`, or the file when the default applies.
        at: String,
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
    #[error("{0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// What to do about a listener that cannot bind.
fn bind_hint(what: &str, addr: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "; another program holds the port (`ss -ltnp 'sport = :{port}'` names it): \
             stop it, or set {what} to a free address",
            port = addr.port()
        ),
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "; ports below 1024 need CAP_NET_BIND_SERVICE (the shipped systemd unit grants \
             it) or root; or set {what} to a port from 1024 up"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "; {ip} is not an address of this machine: set {what} to one of its addresses, \
             or 0.0.0.0 for all",
            ip = addr.ip()
        ),
        _ => String::new(),
    }
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
    /// `shutdown.drain_delay` of the configuration it started with.
    pub drain_delay: Duration,
    phase: watch::Sender<Phase>,
    lame: Arc<LameDuck>,
    accept_task: JoinHandle<()>,
    side_tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Begins the lame-duck phase: `/readyz` turns 503 while the listener keeps accepting;
    /// HTTP/2 connections get GOAWAY and HTTP/1.1 responses `Connection: close`. The
    /// caller waits `drain_delay` (or less), then calls [`Gateway::shutdown`].
    pub fn lame_duck(&self) {
        self.lame.begin();
        self.phase.send_if_modified(|p| {
            let begins = *p == Phase::Running;
            if begins {
                *p = Phase::LameDuck;
            }
            begins
        });
    }

    /// A handle that drops every connection still open, for a shutdown that must not wait.
    pub fn forcer(&self) -> Forcer {
        Forcer(self.phase.clone())
    }

    /// Stops accepting, drains in-flight requests (up to `shutdown.timeout`), stops the
    /// admin and metrics listeners, and returns when everything is closed.
    pub async fn shutdown(self) {
        self.lame.begin();
        let _ = self.phase.send(Phase::Draining);
        let _ = self.accept_task.await;
        for t in self.side_tasks {
            t.abort();
            let _ = t.await;
        }
        // The spans of the last requests (a no-op without telemetry.otlp_endpoint).
        let _ = tokio::task::spawn_blocking(crate::telemetry::shutdown).await;
    }

    /// Resolves when a shutdown was requested through [`Gateway::shutdown`]'s channel by
    /// another owner (not used by the CLI, which calls `shutdown` on a signal).
    pub fn is_running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }
}

/// See [`Gateway::forcer`].
pub struct Forcer(watch::Sender<Phase>);

impl Forcer {
    pub fn force(&self) {
        let _ = self.0.send(Phase::Force);
    }
}

/// The store as a log line names it: the file, or the Redis address(es) without any
/// password.
pub fn describe_store(backend: &StateBackend) -> String {
    match backend {
        StateBackend::Embedded { path } => format!("embedded {}", path.display()),
        StateBackend::Redis(r) => {
            let urls: Vec<String> = if r.urls.is_empty() {
                vec![redact(&r.url)]
            } else {
                r.urls.iter().map(|u| redact(u)).collect()
            };
            format!("redis {}", urls.join(", "))
        }
    }
}

/// `url` with its user and password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
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
    for w in config.warnings() {
        tracing::warn!("configuration: {w}");
    }
    let metrics = Metrics::new();
    metrics.config_last_reload_success.set(1);

    let store = open_store(&config)?;
    let cache = Arc::new(StateCache::new(
        store.clone(),
        &config.state,
        metrics.clone(),
    ));
    let live = crate::live::Registry::new(metrics.clone());
    let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
    cache.report_changes(changes_tx);
    let (events, follower) = cache.follow();
    let mut store_tasks = store.clone().start_background(events, metrics.clone());
    store_tasks.push(follower);
    if let Some(every) = store.probe_interval() {
        store_tasks.push(tokio::spawn(prober(cache.clone(), every)));
    }
    if let Err(e) = cache.probe_result().await {
        tracing::error!(
            store = %describe_store(&config.state.backend),
            error = %e,
            "the state store does not answer at start: protected requests get 503 and \
             /readyz says not_ready until it does (certgate keeps trying)"
        );
    }

    let runtime = build_runtime(&config, &cache, &metrics, None)?;
    crate::telemetry::start(&config.telemetry)?;

    let config_file = config.source.as_path();
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind {
                what,
                addr,
                at: crate::config::key_location(config_file, what),
                source,
            })
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
        let _ = rx.wait_for(|p| !p.accepting()).await;
    };
    let lame = Arc::new(LameDuck::default());

    let assertion = Arc::new(arc_swap::ArcSwapOption::new(
        runtime.proxy.assertion_signer().cloned(),
    ));
    let admin_state = Arc::new(
        AdminState::new(
            cache.clone(),
            metrics.clone(),
            config.admin.token_file.clone(),
            config
                .enrollment
                .as_ref()
                .map(admin::EnrollmentInfo::from_config),
        )
        .with_live(live.clone())
        .with_assertion(assertion.clone())
        .with_lame_duck(lame.clone()),
    );
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
            lame.clone(),
            stopping(phase_rx.clone()),
        )),
    ];
    side_tasks.push(tokio::spawn(sweeper(store.clone(), cache.clone())));
    side_tasks.push(tokio::spawn(crate::live::follow(
        live.clone(),
        cache.clone(),
        changes_rx,
    )));
    side_tasks.extend(store_tasks);

    let server = Arc::new(Server {
        current: ArcSwap::from_pointee(runtime),
        metrics: metrics.clone(),
        responses: crate::server::budget::Budget::new(config.limits.response_buffer),
        live: live.clone(),
        lame: lame.clone(),
    });
    let apply = {
        let (server, cache, metrics) = (server.clone(), cache.clone(), metrics.clone());
        move |new: &Config| -> Result<(), crate::reload::BuildError> {
            let previous = server.current.load_full();
            let runtime = build_runtime(new, &cache, &metrics, Some(&previous))?;
            assertion.store(runtime.proxy.assertion_signer().cloned());
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
        config.shutdown.timeout,
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
        drain_delay: config.shutdown.drain_delay,
        phase: phase_tx,
        lame,
        accept_task,
        side_tasks,
    })
}

/// Builds a [`Runtime`] from a validated configuration.
pub(crate) fn build_runtime(
    config: &Config,
    cache: &Arc<StateCache>,
    metrics: &Metrics,
    previous: Option<&Runtime>,
) -> Result<Runtime, AppError> {
    let material = Arc::new(TlsMaterial::from_config(config)?);
    // The Unix time of the earliest nextUpdate (a timestamp stays right between reloads;
    // 0 = no CRL configured).
    metrics
        .crl_next_update
        .set(config.client_auth.crl_deadline().unwrap_or(0));
    let not_after = |certificate| crate::metrics::CertificateLabels { certificate };
    if let Some(t) = config.tls.cert.leaf_not_after() {
        metrics
            .certificate_not_after
            .get_or_create(&not_after("server"))
            .set(t);
    }
    match config
        .enrollment
        .as_ref()
        .and_then(|e| e.ca_cert.leaf_not_after())
    {
        Some(t) => {
            metrics
                .certificate_not_after
                .get_or_create(&not_after("enrollment_ca"))
                .set(t);
        }
        None => {
            metrics
                .certificate_not_after
                .remove(&not_after("enrollment_ca"));
        }
    }
    let own = Arc::new(Enrollment::reloaded(
        config,
        cache.clone(),
        metrics.clone(),
        previous.map(|p| p.enrollment.as_ref()),
    )?);
    let proxy = Arc::new(Proxy::new(
        config,
        cache.clone(),
        material.clone(),
        metrics.clone(),
        own.clone(),
    )?);
    Ok(Runtime {
        proxy,
        enrollment: own,
        material,
        limits: ConnLimits::from_config(config),
    })
}

/// Probes the store every `every` without traffic (see `StateStore::probe_interval`), and
/// every [`PROBE_WHILE_DOWN`] during an outage, so an instance without traffic (one that
/// only takes admin calls, say) notices the store is back within that.
async fn prober(cache: Arc<StateCache>, every: Duration) {
    loop {
        let wait = if cache.degraded() {
            every.min(PROBE_WHILE_DOWN)
        } else {
            every
        };
        tokio::time::sleep(wait).await;
        cache.probe().await;
    }
}

/// How often the store is probed while it does not answer.
const PROBE_WHILE_DOWN: Duration = Duration::from_millis(500);

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

#[cfg(test)]
mod tests {
    #[test]
    fn store_urls_lose_their_credentials() {
        assert_eq!(
            super::redact("redis://:s3cret@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(super::redact("rediss://user:p@ss@a:1"), "rediss://***@a:1");
        assert_eq!(super::redact("redis://b:2/1"), "redis://b:2/1");
    }
}
