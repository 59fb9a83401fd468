//! The Redis backend: the shared truth when several gateway instances run side by side.
//!
//! This module owns the Redis key layout, the connection (standalone, Sentinel, Cluster),
//! the pub/sub listener that keeps every instance's cache honest, and the data-loss guard.
//! The contract it keeps is the [`StateStore`] trait in `state/mod.rs` (the embedded backend
//! in `state/embedded/` is the reference semantics); the cache it invalidates is
//! `state/cache.rs`, which follows the events this store emits; only `app` names this type.
//!
//! Keys (the prefix `state.redis.key_prefix`, default `certgate:`, is literal):
//! - `{p}acct:<account>` hash: `generation`, `two_factor` (0/1), `created_at`, `reset_at`
//! - `{p}cert:<serial>` hash: `account`, `generation`, `fingerprint`, `not_after`,
//!   `issued_at`; expires [`REVOCATION_RETENTION_AFTER_EXPIRY`] after `not_after`
//! - `{p}revoked:<serial>` hash: `reason`, `revoked_at`, `not_after` (when known); expires
//!   [`REVOCATION_RETENTION_AFTER_EXPIRY`] after `not_after` when known
//! - `{p}ticket:<sha256hex>` hash: `account`, `generation`, `expires_at`; `EXPIREAT
//!   expires_at`
//! - `{p}session:<sha256hex>` hash: `account`, `serial`, `bound_at`, `expires_at`;
//!   `EXPIREAT expires_at` (Redis drops it; no index)
//! - channel `{p}events`: `revoke <serial>` / `account <id>`
//!
//! Extra keys:
//! - `{{p}acct:<account>}:tickets` and `{{p}acct:<account>}:certs`: sets of the account's
//!   ticket hashes and certificate serials. Their hash tag is the account key itself, so
//!   they live in the account's cluster slot and one script can touch both.
//! - `{p}index:revoked`: sorted set of revoked serials, scored by the time the record may be
//!   dropped (`not_after` + retention, `+inf` when unknown). Read by `revocations()` (the CRL)
//!   and `sweep`.
//! - `{p}index:tickets`: sorted set of `"<hash> <account>"`, scored by `expires_at`, for
//!   `sweep`.
//! - `{p}crl_number`: the CRL number counter (`INCR`).
//! - `{p}meta` hash: `store_id`, `created_at`, and `data_lost_at` / `acknowledged_at` (the
//!   data-loss guard below); in Cluster also `slots_marking` (when an instance claimed the
//!   writing of the slot markers) and `slots_marked_at` (when they were all written).
//! - `{p}slot:{<tag>}` (Cluster only): one marker per cluster slot, 16384 in all, holding
//!   the `store_id`. `<tag>` is the shortest decimal string whose hash is that slot, so
//!   the marker lives in the slot it guards (see `slot_tags`).
//!
//! Atomicity and Cluster. Every script touches one key or one slot, so the same code runs
//! on a standalone server, behind Sentinel and on a Cluster. A write that spans slots is a
//! sequence of steps, each idempotent, ordered so that a crash between two steps never
//! leaves a revoked certificate or an old generation usable:
//! - `revoke`: the `revoked:` record first (`HSET` only if absent: the first record wins),
//!   then the index, then the event. A crash after step one leaves the certificate refused
//!   everywhere; only the CRL misses it until the revocation is repeated (idempotent).
//! - `reset_account`: one script bumps the generation and reads the account's ticket set
//!   (one slot); then the tickets are deleted, then removed from the set. A crash in between
//!   leaves tickets of the old generation, which enrollment refuses by generation; the set
//!   still lists them, so the next reset or `sweep` removes them.
//! - `put_ticket`: the ticket joins the account's set before the ticket exists, so a reset
//!   can never miss it.
//! - `record_certificate`: record first, then the new account's set, then the old one's;
//!   `certificates_of` only lists records whose `account` matches.
//! - `consume_ticket`: `HGETALL` + `DEL` in one script on the ticket key: of two racing
//!   uses, exactly one gets the ticket.
//!
//! Events are published after the write's reply (Redis acknowledged it), never before. A
//! write also waits for one replica (`WAIT 1`, [`REPLICA_WAIT`]) after the step that must
//! survive a failover (the `revoked:` record, the account, the certificate record, the
//! ticket, the CRL number): a write only the old master saw is lost in a failover, so it is
//! reported as failed instead. Sentinel mode: on the master, which must still be the one
//! the sentinels name. Cluster mode: on the master serving the written key's slot (routed
//! to it explicitly), after asking that master how many replicas it has (`INFO
//! replication`); a master without replicas has nothing to wait for and the write is
//! accepted (losing that master is the data-loss guard's case). Standalone: no wait. The
//! later steps of a multi-step write (indexes, sets) are not waited for.
//!
//! Connections. Standalone: a RESP3 [`ConnectionManager`] (reconnects by itself). Sentinel:
//! the master is resolved through the sentinels and a connection manager built for it; a
//! connection manager does not follow a failover, so on I/O errors, `READONLY` replies, a
//! disconnect, or a probe that finds the node is no longer a master, the link is dropped and
//! the next call resolves the master again. Cluster: the cluster client's async connection.
//! Every call is bounded: the per-request reads (`revocation`, `account`) and the probe by
//! `state.redis.timeout` (default 500 ms), everything else by that or [`WRITE_TIMEOUT`],
//! whichever is longer. A dead or hung Redis fails with [`StoreError::Unavailable`] and the
//! cache's `state.on_error` policy decides.
//!
//! Invalidation. The same RESP3 connection subscribes to `{p}events`; pushes go to
//! [`RedisStore::spawn_listener`]'s task, which reports each as an [`Invalidation`] (a
//! serial, an account) to the cache that follows this store, and reports a lost link and
//! every (re)subscription too (events may have been lost while away); the cache keeps its
//! entries while the link is away and starts afresh once it is back.
//!
//! Data-loss guard. On first contact the store writes `{p}meta` with a random `store_id`
//! (or, when `meta` is missing but data exists, marks the store as having lost data). If
//! `meta` disappears, changes its id without an operator's acknowledgement, or carries
//! `data_lost_at`, this instance refuses every call with [`StoreError::Unavailable`]
//! (protected traffic gets 503: a Redis that restarted empty would otherwise forget every
//! revocation) and marks `meta` so the other instances stop too, until
//! [`RedisStore::acknowledge_data_loss`] is called. `meta` is checked on first contact, by
//! every probe ([`PROBE_INTERVAL`]), and with lookups:
//! - Standalone and Sentinel: the account and revocation lookups read `meta` in the same
//!   pipeline (one round trip).
//! - Cluster: `meta` lives in one slot, so it only tells about the master serving that
//!   slot; any other master restarting empty without a replica would bring its
//!   revocations back silently. So each slot has its own marker (`{p}slot:{<tag>}`), and
//!   every lookup (account, revocation, ticket peek and consume, the CRL's reads, the CRL
//!   number) runs as one script on its key and the marker of the key's slot (`MARKED`):
//!   one round trip, and a master that lost its data cannot answer without the marker
//!   being missing. The script does its work only when the marker is the known id;
//!   otherwise the slow path (`check_slot`) runs under the guard lock: `meta`
//!   first (adopts an acknowledged id, or trips), then the marker again. Missing: the
//!   slot lost its data, so `meta` is marked and the guard trips. Another id, while
//!   `meta` is fine: the slot kept its data (an acknowledgement is being rolled out), so
//!   the marker is rewritten to the known id. The lookup then runs again.
//! - The key prefix never holds a brace (the configuration and [`RedisStore::open`] refuse
//!   one), so no prefix can turn into a hash tag that moves keys or markers.
//!
//! The markers are written when `meta` has none for its id (first initialisation, a store
//! from before the markers, after an acknowledgement): one instance claims the writing in
//! `meta` ([`MARKING_LEASE`]) and writes them in the background as single-key `SET`s over
//! the cluster connection, then sets `slots_marked_at`; about 0.3 s for all 16384 on a
//! three-master loopback test cluster. Until then a missing marker is written (`SET NX`)
//! rather than reported, so a master that restarts empty during those moments goes
//! unnoticed. [`RedisStore::acknowledge_data_loss`] rewrites every marker with the new id
//! itself, before it returns.
//!
//! Cluster limits: another instance learns of a trip through `meta` on its next probe, or
//! by itself when a lookup reaches the emptied master (lookups on intact masters are
//! answered correctly meanwhile). A master that fails over to its replica keeps its markers
//! (they are replicated like any key), so a failover does not trip the guard; a write is
//! only reported done once a replica of its master confirmed it (see above), so a failover
//! right after it does not lose it. What remains is Redis's own window: with several
//! replicas per master, the one promoted may not be the one that confirmed; the index and
//! set steps are not waited for (a repeated revocation restores the CRL's index); and a
//! write to a master without a replica is accepted unconfirmed. Run Cluster masters with
//! replicas and `appendonly yes`.

mod codec;
mod events;
mod guard;
mod keys;
mod link;
mod meta;
mod ops;
mod replicate;
mod scripts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError, Script, Value,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::JoinHandle;

use super::{
    AccountState, BoxFut, CertRecord, Events, Invalidation, Revocation, SessionBinding, StateStore,
    StoreError, TicketRecord, UnixTime,
};
use crate::config::{RedisConfig, RedisMode};
use crate::metrics::Metrics;
use codec::*;
use keys::*;
use link::*;
use meta::GuardState;
use scripts::*;

/// The least bound on one write, connection included (`state.redis.timeout` when that is
/// longer): a write may also wait [`REPLICA_WAIT`] for a replica, and an operator's call
/// can wait longer than a request.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(2500);

/// Sentinel and Cluster mode: how long a write waits for a replica to confirm it.
pub const REPLICA_WAIT: Duration = Duration::from_millis(500);

/// How often the Redis backend probes the server in the background: the bound on how long
/// `certgate_state_store_up` and a Sentinel failover go unnoticed without traffic.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Cluster: how long one instance's claim on writing the slot markers holds (and the bound
/// on the writing itself); an expired claim is taken over by another instance.
pub const MARKING_LEASE: Duration = Duration::from_secs(60);

/// Cluster: how many marker writes are in flight at once on the (multiplexed) connection.
const MARKER_WRITERS: usize = 64;

/// Cluster: how often a lookup runs again after the slow path repaired its slot marker
/// before it gives up (the marker changing under it means an acknowledgement is racing).
const MARKED_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------------
// The store.

/// The Redis-backed [`StateStore`]. Cheap to share behind an `Arc`.
pub struct RedisStore {
    keys: Keys,
    description: String,
    link: Link,
    scripts: Scripts,
    push: PushSlot,
    guard: tokio::sync::Mutex<GuardState>,
    /// The known `store_id`, for the per-read comparison without the async lock.
    known_id: Mutex<Option<String>>,
    lost: AtomicBool,
    /// Cluster: a task is subscribing to the events channel again after a node was lost.
    resubscribing: AtomicBool,
    metrics: OnceLock<Metrics>,
    events: OnceLock<Events>,
    /// `state.redis.timeout`: the bound on a per-request read and the probe.
    read_timeout: Duration,
    write_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.description)
            .field("keys", &self.keys)
            .finish()
    }
}

impl RedisStore {
    /// Prepares the store for `cfg` without connecting: the connection is made on the first
    /// call (and again after failures), so the gateway starts, unready, while Redis is down.
    ///
    /// Fails only when the configuration cannot describe a connection (validation has
    /// already checked it, so this is a bug or a hand-built config).
    pub fn open(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let bad = |e: RedisError| StoreError::Unavailable(format!("redis configuration: {e}"));
        let password = cfg.password.as_ref().map(|p| p.expose().to_string());
        // `state.redis.tls_ca_file`: these CAs instead of the system roots. Certificates are
        // always verified (no `#insecure`).
        let certs = cfg.tls_ca.as_ref().map(|ca| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem_certificates(&ca.certs)),
        });
        let push: PushSlot = Arc::new(Mutex::new(None));
        let target = match cfg.mode {
            RedisMode::Standalone => {
                let info = cfg.url.as_str().into_connection_info().map_err(bad)?;
                let mut settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                if let Some(p) = &password {
                    settings = settings.set_password(p);
                }
                let info = info.set_redis_settings(settings);
                let client = match &certs {
                    Some(c) => redis::Client::build_with_tls(info, c.clone()),
                    None => redis::Client::open(info),
                };
                Target::Standalone(client.map_err(bad)?)
            }
            RedisMode::Sentinel => {
                let infos = cfg
                    .urls
                    .iter()
                    .map(|u| u.as_str().into_connection_info())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let first = infos.first().cloned().ok_or_else(|| {
                    StoreError::Unavailable("redis configuration: no sentinel address".into())
                })?;
                let tls = matches!(first.addr(), redis::ConnectionAddr::TcpTls { .. });
                let addrs = infos.iter().map(|i| i.addr().clone());
                let mut b = SentinelClientBuilder::new(
                    addrs,
                    &cfg.sentinel_master,
                    SentinelServerType::Master,
                )
                .map_err(bad)?;
                let mut node =
                    redis::RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3);
                if let Some(p) = &password {
                    node = node.set_password(p);
                }
                // Sentinels may have their own password, written in their URLs.
                if let Some(p) = first.redis_settings().password() {
                    b = b.set_client_to_sentinel_password(p);
                }
                if let Some(u) = first.redis_settings().username() {
                    b = b.set_client_to_sentinel_username(u);
                }
                if let (Some(c), true) = (&certs, tls) {
                    b = b.set_client_to_sentinel_certificates(c.clone());
                }
                Target::Sentinel {
                    sentinels: tokio::sync::Mutex::new(b.build().map_err(bad)?),
                    master_name: cfg.sentinel_master.clone(),
                    node,
                    tls,
                    certs: certs.clone(),
                }
            }
            RedisMode::Cluster => {
                let slot = push.clone();
                let mut b = ClusterClient::builder(cfg.urls.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(move |info: PushInfo| -> Result<(), ()> {
                        if let Some(tx) = lock(&slot).as_ref() {
                            let _ = tx.send(info);
                        }
                        Ok(())
                    })
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(1);
                if let Some(p) = &password {
                    b = b.password(p);
                }
                if let Some(c) = &certs {
                    b = b.certs(c.clone());
                }
                Target::Cluster(b.build().map_err(bad)?)
            }
        };
        check_prefix(&cfg.key_prefix)?;
        let keys = Keys::new(&cfg.key_prefix);
        Ok(RedisStore {
            link: Link {
                target,
                channel: keys.events(),
                push: push.clone(),
                current: Mutex::new(None),
                master: Mutex::new(None),
                next_id: AtomicU64::new(0),
                building: tokio::sync::Mutex::new(()),
            },
            keys,
            description: cfg.describe(),
            scripts: Scripts::new(),
            push,
            guard: tokio::sync::Mutex::new(GuardState::default()),
            known_id: Mutex::new(None),
            lost: AtomicBool::new(false),
            resubscribing: AtomicBool::new(false),
            metrics: OnceLock::new(),
            events: OnceLock::new(),
            read_timeout: cfg.timeout,
            write_timeout: cfg.timeout.max(WRITE_TIMEOUT),
        })
    }

    /// The key names this store uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// True while the data-loss guard refuses every call.
    pub fn data_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Cluster: the data-loss guard reads a per-slot marker with each lookup (see the
    /// module header) instead of `meta`.
    fn per_slot(&self) -> bool {
        self.link.is_cluster()
    }

    /// Runs a read within `state.redis.timeout`.
    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within(self.read_timeout, "state.redis.timeout", fut).await
    }

    /// Runs a write within `state.redis.timeout`, at least [`WRITE_TIMEOUT`].
    async fn timed_write<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within(self.write_timeout, "the write timeout", fut).await
    }

    /// Maps a command's error, dropping a Sentinel link that points at a lost master.
    fn check<T>(
        &self,
        link_id: u64,
        r: redis::RedisResult<T>,
        what: &str,
    ) -> Result<T, StoreError> {
        r.map_err(|e| {
            if calls_for_new_master(&e) {
                self.link.reset(link_id);
            }
            unavailable(what, &e)
        })
    }

    /// Refuses while data loss is suspected; on first contact, initialises `meta`.
    async fn admitted(&self) -> Result<(), StoreError> {
        self.refuse_if_lost()?;
        if lock(&self.known_id).is_none() {
            self.verify_meta().await?;
        }
        Ok(())
    }

    /// For writes that restore state (revoke, reset, enable two-factor, record a
    /// certificate, put a ticket) and registry reads: allowed while data loss is suspected, so an operator can
    /// re-apply revocations and resets before acknowledging the loss (no window in which a
    /// revoked certificate passes). Lookups stay refused.
    async fn admitted_write(&self) -> Result<(), StoreError> {
        if self.data_lost() {
            return Ok(());
        }
        match self.admitted().await {
            Err(_) if self.data_lost() => Ok(()),
            other => other,
        }
    }

    /// Runs single-key commands; one pipeline outside Cluster, one by one in Cluster.
    /// `HGETALL` of `key(id)` for every id, in order (one key per call, so it works on
    /// Cluster whatever slots the keys hash to).
    async fn hashes(
        &self,
        ids: &[String],
        key: impl Fn(&str) -> String,
        what: &str,
    ) -> Result<Vec<Fields>, StoreError> {
        let reads = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("HGETALL");
                c.arg(key(id));
                c
            })
            .collect();
        self.each(reads, what).await
    }

    async fn each<T: redis::FromRedisValue>(
        &self,
        cmds: Vec<Cmd>,
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let (id, mut conn) = self.link.conn().await?;
        if self.link.is_cluster() {
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                let r = c.query_async::<T>(&mut conn).await;
                out.push(self.check(id, r, what)?);
            }
            Ok(out)
        } else {
            let mut p = redis::pipe();
            for c in cmds {
                p.add_command(c);
            }
            let r = p.query_async::<Vec<T>>(&mut conn).await;
            self.check(id, r, what)
        }
    }

    async fn publish(&self, event: String) {
        let r = async {
            let (id, mut conn) = self.link.conn().await?;
            let r = redis::cmd("PUBLISH")
                .arg(self.keys.events())
                .arg(&event)
                .query_async::<i64>(&mut conn)
                .await;
            self.check(id, r, "publish")
        }
        .await;
        if let Err(e) = r {
            // The write itself is durable; other instances see it within state.cache.ttl.
            tracing::warn!(event, error = %e, "could not publish a state event");
        }
    }

    async fn ping_inner(&self) -> Result<(), StoreError> {
        let (id, mut conn) = self.link.conn().await?;
        if self.link.is_sentinel() {
            let r = redis::cmd("ROLE").query_async::<Value>(&mut conn).await;
            let role = self.check(id, r, "role")?;
            let is_master = match &role {
                Value::Array(items) => matches!(items.first(),
                    Some(Value::BulkString(b)) if b.as_slice() == b"master"),
                _ => false,
            };
            if !is_master {
                self.link.reset(id);
                return Err(StoreError::Unavailable(
                    "redis: the node is no longer the master (failover); resolving again".into(),
                ));
            }
        } else {
            let r = redis::cmd("PING").query_async::<String>(&mut conn).await;
            self.check(id, r, "ping")?;
        }
        self.verify_meta().await
    }
}

async fn within<T>(
    limit: Duration,
    name: &str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis did not answer within {limit:?} ({name})"
        ))),
    }
}

impl StateStore for RedisStore {
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.timed(self.ping_inner()))
    }

    fn account(&self, account: &str) -> BoxFut<'_, Result<Option<AccountState>, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move { self.timed(self.account_inner(&account)).await })
    }

    fn enable_two_factor(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move {
            self.timed_write(self.enable_two_factor_inner(&account, now))
                .await
        })
    }

    fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move {
            self.timed_write(self.reset_account_inner(&account, now))
                .await
        })
    }

    fn revocation(&self, serial: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(async move { self.timed(self.revocation_inner(&serial)).await })
    }

    fn revoke(&self, revocation: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>> {
        Box::pin(self.timed_write(self.revoke_inner(revocation)))
    }

    fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>> {
        Box::pin(self.timed_write(self.revocations_inner()))
    }

    fn record_certificate(&self, cert: CertRecord) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.timed_write(self.record_certificate_inner(cert)))
    }

    fn certificate(&self, serial: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(async move { self.timed_write(self.certificate_inner(&serial)).await })
    }

    fn certificates_of(&self, account: &str) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move { self.timed_write(self.certificates_of_inner(&account)).await })
    }

    fn put_ticket(&self, ticket: TicketRecord) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.timed_write(self.put_ticket_inner(ticket)))
    }

    fn bind_session(
        &self,
        binding: SessionBinding,
        replace: bool,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>> {
        Box::pin(self.timed_write(self.bind_session_inner(binding, replace)))
    }

    fn session(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move { self.timed(self.session_inner(&hash, now)).await })
    }

    fn peek_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move { self.timed_write(self.peek_ticket_inner(&hash, now)).await })
    }

    fn consume_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move {
            self.timed_write(self.consume_ticket_inner(&hash, now))
                .await
        })
    }

    fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.timed_write(self.next_crl_number_inner()))
    }

    fn sweep(&self, now: UnixTime) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.timed_write(self.sweep_inner(now)))
    }

    fn trusted(&self) -> bool {
        !self.data_lost()
    }

    fn start_background(self: Arc<Self>, events: Events, metrics: Metrics) -> Vec<JoinHandle<()>> {
        vec![self.spawn_listener(events, metrics)]
    }

    fn probe_interval(&self) -> Option<Duration> {
        // Keeps certgate_state_store_up current, drives reconnects, and notices a Sentinel
        // failover and an acknowledged data loss without traffic.
        Some(PROBE_INTERVAL)
    }
}

#[cfg(test)]
mod tests;
