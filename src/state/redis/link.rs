//! Connections to Redis in every mode (standalone, Sentinel, Cluster): one shared
//! connection, re-resolved after a failover, with its push channel for pub/sub.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{Cmd, IntoConnectionInfo, PushInfo, RedisError, RedisFuture, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::state::StoreError;

/// One connection attempt.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One reply on an established connection.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Connections.

/// One connection of any mode; clones share it.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    pub(super) async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.subscribe(channel).await,
        }
    }
}

/// Where pushes (pub/sub messages, disconnects) go. Empty until the invalidation task
/// starts, so a store nobody listens to does not queue them forever.
pub(super) type PushSlot = Arc<Mutex<Option<UnboundedSender<PushInfo>>>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) enum Target {
    Standalone(redis::Client),
    Sentinel {
        sentinels: tokio::sync::Mutex<SentinelClient>,
        master_name: String,
        /// How to talk to the master once found (password, RESP3, database).
        node: redis::RedisConnectionInfo,
        tls: bool,
        /// `state.redis.tls_ca_file` for the master connection.
        certs: Option<redis::TlsCertificates>,
    },
    Cluster(ClusterClient),
}

/// The current connection, built on first use and rebuilt when a Sentinel failover (or a
/// failed first connection) calls for it.
pub(super) struct Link {
    pub(super) target: Target,
    pub(super) channel: String,
    pub(super) push: PushSlot,
    /// (link id, connection); `None` = build on the next call.
    pub(super) current: Mutex<Option<(u64, Conn)>>,
    /// Sentinel: the master address link `id` was built for.
    pub(super) master: Mutex<Option<(u64, redis::ConnectionAddr)>>,
    pub(super) next_id: AtomicU64,
    pub(super) building: tokio::sync::Mutex<()>,
}

impl Link {
    pub(super) fn manager_config(&self) -> ConnectionManagerConfig {
        let push = self.push.clone();
        ConnectionManagerConfig::new()
            .set_push_sender(move |info: PushInfo| -> Result<(), ()> {
                if let Some(tx) = lock(&push).as_ref() {
                    let _ = tx.send(info);
                }
                Ok(())
            })
            .set_automatic_resubscription()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // A reconnect is retried once, quickly: callers wait for it, and a caller that
            // waits longer than a Redis round trip should hear "unavailable", not hang.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500))
    }

    pub(super) async fn conn(&self) -> Result<(u64, Conn), StoreError> {
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        let _building = self.building.lock().await;
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        let (mut conn, master) = self.build().await?;
        // Subscribed before the link is used, so no write this instance can see was
        // published before it listened (and the Subscribe confirmation clears the cache).
        conn.subscribe(&self.channel)
            .await
            .map_err(|e| unavailable("subscribe", &e))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *lock(&self.master) = master.map(|m| (id, m));
        *lock(&self.current) = Some((id, conn.clone()));
        Ok((id, conn))
    }

    pub(super) async fn build(&self) -> Result<(Conn, Option<redis::ConnectionAddr>), StoreError> {
        match &self.target {
            Target::Standalone(client) => {
                ConnectionManager::new_with_config(client.clone(), self.manager_config())
                    .await
                    .map(|c| (Conn::Single(c), None))
                    .map_err(|e| unavailable("connect", &e))
            }
            Target::Sentinel { .. } => {
                let client = self.resolve_master().await?;
                let addr = client.get_connection_info().addr().clone();
                tracing::info!(master = ?addr, "redis master resolved through sentinel");
                ConnectionManager::new_with_config(client, self.manager_config())
                    .await
                    .map(|c| (Conn::Single(c), Some(addr)))
                    .map_err(|e| unavailable("connect to the master", &e))
            }
            Target::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| (Conn::Cluster(c), None))
                .map_err(|e| unavailable("connect to the cluster", &e)),
        }
    }

    /// Sentinel: a client for the master the sentinels name now. Asks
    /// `SENTINEL get-master-addr-by-name`, which switches to the promoted replica as soon as
    /// the promotion is done (`SENTINEL MASTERS` lags until the failover ends, while the old
    /// master still answers as a master).
    pub(super) async fn resolve_master(&self) -> Result<redis::Client, StoreError> {
        let Target::Sentinel {
            sentinels,
            master_name,
            node,
            tls,
            certs,
        } = &self.target
        else {
            return Err(StoreError::Unavailable("not in sentinel mode".into()));
        };
        let sentinel = sentinels
            .lock()
            .await
            .async_get_sentinel_client()
            .await
            .map_err(|e| unavailable("reach a sentinel", &e))?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut c = sentinel
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| unavailable("reach a sentinel", &e))?;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master_name)
            .query_async(&mut c)
            .await
            .map_err(|e| unavailable("ask the sentinel for the master", &e))?;
        let Some((host, port)) = addr else {
            return Err(StoreError::Unavailable(format!(
                "redis: the sentinels know no master named {master_name:?}"
            )));
        };
        let port: u16 = port.parse().map_err(|_| {
            StoreError::Unavailable(format!("redis: the sentinel named master port {port:?}"))
        })?;
        let addr = if *tls {
            redis::ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(host.clone(), port)
        };
        let info = (host.as_str(), port)
            .into_connection_info()
            .map_err(|e| unavailable("master address", &e))?
            .set_addr(addr)
            .set_redis_settings(node.clone());
        match certs {
            Some(c) if *tls => redis::Client::build_with_tls(info, c.clone()),
            _ => redis::Client::open(info),
        }
        .map_err(|e| unavailable("master address", &e))
    }

    /// Sentinel: whether link `id` still points at the master the sentinels name.
    pub(super) async fn still_master(&self, id: u64) -> Result<bool, StoreError> {
        let now = self.resolve_master().await?;
        let ours = lock(&self.master).clone();
        Ok(
            ours.is_some_and(|(link, addr)| {
                link == id && &addr == now.get_connection_info().addr()
            }),
        )
    }

    /// Forgets link `id` so the next call builds a new one (Sentinel: resolves the master
    /// again). Standalone and Cluster connections reconnect by themselves.
    pub(super) fn reset(&self, id: u64) {
        if !matches!(self.target, Target::Sentinel { .. }) {
            return;
        }
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|(cur, _)| *cur == id) {
            *current = None;
            tracing::info!("redis link dropped; the master is resolved again on the next call");
        }
    }

    pub(super) fn reset_current(&self) {
        let id = lock(&self.current).as_ref().map(|(id, _)| *id);
        if let Some(id) = id {
            self.reset(id);
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }
}

/// `connected_slaves:<n>` of an `INFO replication` reply.
pub(super) fn connected_replicas(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
}

/// What every call gets while the data-loss guard refuses.
pub(super) fn lost_error() -> StoreError {
    StoreError::Unavailable(
        "redis appears to have lost its data (certgate's meta record or a cluster slot \
         marker is missing, or meta was replaced); refusing until an operator acknowledges it"
            .into(),
    )
}

pub(super) fn unavailable(what: &str, e: &RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {what}: {e}"))
}

/// An error after which a Sentinel link must be rebuilt: the node went away, or it is no
/// longer the master.
pub(super) fn calls_for_new_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || e.to_string().contains("READONLY")
}
