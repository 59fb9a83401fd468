//! The Redis backend: the shared truth when several gateway instances run side by side.
//!
//! This module owns the Redis key layout, the connection (standalone, Sentinel, Cluster),
//! the pub/sub listener that keeps every instance's cache honest, and the data-loss guard.
//! The contract it keeps is the [`StateStore`] trait in `state/mod.rs` (the embedded backend
//! in `state/embedded.rs` is the reference semantics); the cache it invalidates is
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
//! Every call is bounded by [`CALL_TIMEOUT`], so a dead Redis fails fast with
//! [`StoreError::Unavailable`] and the cache's `state.on_error` policy decides.
//!
//! Invalidation. The same RESP3 connection subscribes to `{p}events`; pushes go to
//! [`RedisStore::spawn_listener`]'s task, which reports each as an [`Invalidation`] (a
//! serial, an account) to the cache that follows this store, and reports a lost link and
//! every (re)subscription too (events may have been lost); the cache decides what to drop.
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

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError, RedisFuture, Script,
    Value,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

use super::{
    AccountState, BoxFut, CertRecord, Events, Invalidation, REVOCATION_RETENTION_AFTER_EXPIRY,
    Revocation, RevocationReason, StateStore, StoreError, TicketRecord, UnixTime,
};
use crate::config::{RedisConfig, RedisMode};
use crate::metrics::Metrics;

/// The bound on one store call, connection included. Longer than one connection attempt
/// (`CONNECT_TIMEOUT`), shorter than a client's patience.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(2500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

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

type Fields = HashMap<String, String>;

// ---------------------------------------------------------------------------------------
// Scripts. Each touches one key or keys of one slot (see the module header).

/// KEYS: acct. ARGV: now. Sets two_factor, creating the record at generation 1.
const ENABLE_TWO_FACTOR: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'generation', 1, 'two_factor', 1, 'created_at', ARGV[1])
else
  redis.call('HSET', KEYS[1], 'two_factor', 1)
end
return redis.call('HGETALL', KEYS[1])
";

/// KEYS: acct, acct tickets set. ARGV: now. Returns {account fields, ticket hashes}.
const RESET_ACCOUNT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'generation', 2, 'two_factor', 0, 'created_at', ARGV[1],
             'reset_at', ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], 'generation', 1)
  redis.call('HSET', KEYS[1], 'reset_at', ARGV[1])
end
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
";

/// KEYS: revoked. ARGV: reason, revoked_at, not_after ('' = unknown), expire_at ('' =
/// never). Returns {1, {}} when written, {0, existing fields} when already revoked.
const REVOKE: &str = r"
local existing = redis.call('HGETALL', KEYS[1])
if #existing > 0 then
  return {0, existing}
end
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'revoked_at', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'not_after', ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('EXPIREAT', KEYS[1], ARGV[4])
end
return {1, {}}
";

/// KEYS: cert. ARGV: account, generation, fingerprint, not_after, issued_at, expire_at.
/// Returns the previous account ('' when none).
const RECORD_CERT: &str = r"
local previous = redis.call('HGET', KEYS[1], 'account')
redis.call('HSET', KEYS[1], 'account', ARGV[1], 'generation', ARGV[2], 'fingerprint', ARGV[3],
           'not_after', ARGV[4], 'issued_at', ARGV[5])
redis.call('EXPIREAT', KEYS[1], ARGV[6])
if previous then return previous else return '' end
";

/// KEYS: ticket. ARGV: account, generation, expires_at. Returns the previous account.
const PUT_TICKET: &str = r"
local previous = redis.call('HGET', KEYS[1], 'account')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'account', ARGV[1], 'generation', ARGV[2], 'expires_at', ARGV[3])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
if previous then return previous else return '' end
";

/// KEYS: ticket. Read and delete in one step: of racing consumers exactly one gets it.
const CONSUME_TICKET: &str = r"
local t = redis.call('HGETALL', KEYS[1])
if #t > 0 then
  redis.call('DEL', KEYS[1])
end
return t
";

/// KEYS: meta. ARGV: new id, now, has data ('1'/'0'). Creates `meta` if missing (marked as
/// lost when data exists without it) and returns its fields.
const INIT_META: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'store_id', ARGV[1], 'created_at', ARGV[2])
  if ARGV[3] == '1' then
    redis.call('HSET', KEYS[1], 'data_lost_at', ARGV[2])
  end
end
return redis.call('HGETALL', KEYS[1])
";

/// KEYS: meta. ARGV: new id, now. Marks the store as having lost data.
const MARK_LOST: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'store_id', ARGV[1], 'created_at', ARGV[2])
end
redis.call('HSETNX', KEYS[1], 'data_lost_at', ARGV[2])
return redis.call('HGETALL', KEYS[1])
";

/// KEYS: meta. ARGV: new id, now, '1' when the caller rewrites the slot markers itself
/// (Cluster). The operator's acknowledgement: a fresh `meta` (the caller then moves the CRL
/// number past any number issued before the loss). With '1' the marker rewrite is claimed
/// in the same step, so no other instance starts a second one.
const ACKNOWLEDGE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'store_id', ARGV[1], 'created_at', ARGV[2], 'acknowledged_at', ARGV[2])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'slots_marking', ARGV[2])
end
return 1
";

/// Cluster lookups. KEYS: the slot marker of the key, the key (one slot). ARGV: the known
/// store id, the operation: 'read' (HGETALL), 'list' (ZRANGE 0 -1), 'consume' (HGETALL then
/// DEL) or 'incr' (INCR). Returns {marker ('' when missing), result}; the operation runs only
/// when the marker is the known id, otherwise the result is empty and nothing changes.
const MARKED: &str = r"
local marker = redis.call('GET', KEYS[1]) or ''
if marker ~= ARGV[1] then
  return {marker, {}}
end
local op = ARGV[2]
if op == 'read' then
  return {marker, redis.call('HGETALL', KEYS[2])}
elseif op == 'list' then
  return {marker, redis.call('ZRANGE', KEYS[2], 0, -1)}
elseif op == 'consume' then
  local t = redis.call('HGETALL', KEYS[2])
  if #t > 0 then
    redis.call('DEL', KEYS[2])
  end
  return {marker, t}
elseif op == 'incr' then
  return {marker, {tostring(redis.call('INCR', KEYS[2]))}}
end
return redis.error_reply('certgate: unknown marked operation ' .. op)
";

/// KEYS: meta. ARGV: store id, now, lease seconds. Claims the writing of every slot marker
/// for `store_id`: 'claimed', or 'done' (already written), 'busy' (another instance claimed
/// it less than a lease ago), 'other' (`meta` carries another id now).
const CLAIM_MARKING: &str = r"
if redis.call('HGET', KEYS[1], 'store_id') ~= ARGV[1] then
  return 'other'
end
if redis.call('HEXISTS', KEYS[1], 'slots_marked_at') == 1 then
  return 'done'
end
local since = tonumber(redis.call('HGET', KEYS[1], 'slots_marking') or '')
if since and tonumber(ARGV[2]) - since < tonumber(ARGV[3]) then
  return 'busy'
end
redis.call('HSET', KEYS[1], 'slots_marking', ARGV[2])
return 'claimed'
";

/// KEYS: meta. ARGV: store id, now. Records that every slot marker carries `store_id`
/// (only if `meta` still carries that id). Returns 1 when recorded.
const SLOTS_MARKED: &str = r"
if redis.call('HGET', KEYS[1], 'store_id') ~= ARGV[1] then
  return 0
end
redis.call('HDEL', KEYS[1], 'slots_marking')
redis.call('HSET', KEYS[1], 'slots_marked_at', ARGV[2])
return 1
";

struct Scripts {
    enable_two_factor: Script,
    reset_account: Script,
    revoke: Script,
    record_cert: Script,
    put_ticket: Script,
    consume_ticket: Script,
    init_meta: Script,
    mark_lost: Script,
    acknowledge: Script,
    marked: Script,
    claim_marking: Script,
    slots_marked: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            enable_two_factor: Script::new(ENABLE_TWO_FACTOR),
            reset_account: Script::new(RESET_ACCOUNT),
            revoke: Script::new(REVOKE),
            record_cert: Script::new(RECORD_CERT),
            put_ticket: Script::new(PUT_TICKET),
            consume_ticket: Script::new(CONSUME_TICKET),
            init_meta: Script::new(INIT_META),
            mark_lost: Script::new(MARK_LOST),
            acknowledge: Script::new(ACKNOWLEDGE),
            marked: Script::new(MARKED),
            claim_marking: Script::new(CLAIM_MARKING),
            slots_marked: Script::new(SLOTS_MARKED),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Keys.

/// The key names, in one place (see the module header).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The data-loss marker of Cluster slot `slot` (`0..SLOTS`): `{p}slot:{<tag>}`, whose
    /// hash tag hashes to that slot (the prefix has no braces: [`check_prefix`]).
    pub fn slot_marker(&self, slot: usize) -> String {
        let tag = slot_tags().get(slot).map(String::as_str).unwrap_or("");
        format!("{}slot:{{{tag}}}", self.prefix)
    }

    /// The marker of the slot that `key` lives in.
    pub fn marker_for(&self, key: &str) -> String {
        self.slot_marker(usize::from(key_slot(key.as_bytes())))
    }

    pub fn account(&self, account: &str) -> String {
        format!("{}acct:{account}", self.prefix)
    }

    /// Same slot as [`Keys::account`]: the hash tag is the account key itself.
    pub fn account_tickets(&self, account: &str) -> String {
        format!("{{{}acct:{account}}}:tickets", self.prefix)
    }

    /// Same slot as [`Keys::account`].
    pub fn account_certs(&self, account: &str) -> String {
        format!("{{{}acct:{account}}}:certs", self.prefix)
    }

    pub fn cert(&self, serial: &str) -> String {
        format!("{}cert:{serial}", self.prefix)
    }

    pub fn revoked(&self, serial: &str) -> String {
        format!("{}revoked:{serial}", self.prefix)
    }

    pub fn ticket(&self, hash: &str) -> String {
        format!("{}ticket:{hash}", self.prefix)
    }

    pub fn revoked_index(&self) -> String {
        format!("{}index:revoked", self.prefix)
    }

    pub fn tickets_index(&self) -> String {
        format!("{}index:tickets", self.prefix)
    }

    pub fn crl_number(&self) -> String {
        format!("{}crl_number", self.prefix)
    }

    pub fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }

    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every key under the prefix (glob characters escaped).
    fn all_pattern(&self) -> String {
        let mut p = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push('*');
        p
    }
}

// ---------------------------------------------------------------------------------------
// Cluster slots.

/// The number of Redis Cluster slots.
pub const SLOTS: usize = 16384;

/// The key prefix is literal: a brace in it would be a Redis Cluster hash tag, putting
/// every key (slot markers included) in one slot or the markers outside the slots they
/// guard. The configuration refuses braces too; this keeps hand-built configurations out.
fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.contains(['{', '}']) {
        return Err(StoreError::Unavailable(format!(
            "redis configuration: key prefix {prefix:?} must not contain '{{' or '}}' \
             (it would be a cluster hash tag)"
        )));
    }
    Ok(())
}

/// The hash tag Redis hashes for `key`: the bytes between the first `{` and the first `}`
/// after it, when not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Cluster slot of `key`, as Redis computes it.
fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS as u16
}

/// For every slot, the shortest decimal string (the first found counting up from "0") that
/// hashes to it: the hash tags of the slot markers. Built once; about 110,000 tries cover
/// all 16384 slots (the unit tests check that every slot is covered).
fn slot_tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut missing = SLOTS;
        let mut n: u64 = 0;
        while missing > 0 {
            let tag = n.to_string();
            let slot = usize::from(key_slot(tag.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    })
}

// ---------------------------------------------------------------------------------------
// Connections.

/// One connection of any mode; clones share it.
#[derive(Clone)]
enum Conn {
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
    async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.subscribe(channel).await,
        }
    }
}

/// Where pushes (pub/sub messages, disconnects) go. Empty until the invalidation task
/// starts, so a store nobody listens to does not queue them forever.
type PushSlot = Arc<Mutex<Option<UnboundedSender<PushInfo>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Target {
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
struct Link {
    target: Target,
    channel: String,
    push: PushSlot,
    /// (link id, connection); `None` = build on the next call.
    current: Mutex<Option<(u64, Conn)>>,
    /// Sentinel: the master address link `id` was built for.
    master: Mutex<Option<(u64, redis::ConnectionAddr)>>,
    next_id: AtomicU64,
    building: tokio::sync::Mutex<()>,
}

impl Link {
    fn manager_config(&self) -> ConnectionManagerConfig {
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

    async fn conn(&self) -> Result<(u64, Conn), StoreError> {
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

    async fn build(&self) -> Result<(Conn, Option<redis::ConnectionAddr>), StoreError> {
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
    async fn resolve_master(&self) -> Result<redis::Client, StoreError> {
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
    async fn still_master(&self, id: u64) -> Result<bool, StoreError> {
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
    fn reset(&self, id: u64) {
        if !matches!(self.target, Target::Sentinel { .. }) {
            return;
        }
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|(cur, _)| *cur == id) {
            *current = None;
            tracing::info!("redis link dropped; the master is resolved again on the next call");
        }
    }

    fn reset_current(&self) {
        let id = lock(&self.current).as_ref().map(|(id, _)| *id);
        if let Some(id) = id {
            self.reset(id);
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }
}

/// `connected_slaves:<n>` of an `INFO replication` reply.
fn connected_replicas(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
}

/// What every call gets while the data-loss guard refuses.
fn lost_error() -> StoreError {
    StoreError::Unavailable(
        "redis appears to have lost its data (certgate's meta record or a cluster slot \
         marker is missing, or meta was replaced); refusing until an operator acknowledges it"
            .into(),
    )
}

fn unavailable(what: &str, e: &RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {what}: {e}"))
}

/// An error after which a Sentinel link must be rebuilt: the node went away, or it is no
/// longer the master.
fn calls_for_new_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || e.to_string().contains("READONLY")
}

// ---------------------------------------------------------------------------------------
// The data-loss guard's state.

#[derive(Default)]
struct GuardState {
    /// The `store_id` this instance trusts; `None` until the first contact.
    known_id: Option<String>,
    /// Set once the persistence settings were checked.
    persistence_checked: bool,
}

/// A Cluster lookup's operation, run beside its slot marker (the `MARKED` script).
#[derive(Clone, Copy)]
enum Marked {
    /// `HGETALL`.
    Read,
    /// `ZRANGE 0 -1`.
    List,
    /// `HGETALL`, then `DEL`.
    Consume,
    /// `INCR`.
    Incr,
}

impl Marked {
    fn name(self) -> &'static str {
        match self {
            Marked::Read => "read",
            Marked::List => "list",
            Marked::Consume => "consume",
            Marked::Incr => "incr",
        }
    }
}

/// `meta` as read with each lookup.
struct MetaView {
    store_id: Option<String>,
    data_lost_at: Option<String>,
}

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
    metrics: OnceLock<Metrics>,
    events: OnceLock<Events>,
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
            metrics: OnceLock::new(),
            events: OnceLock::new(),
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

    /// Starts the listener that turns `{p}events` into [`Invalidation`]s on `events`, and
    /// reports a lost link and every (re)subscription. Ends when the store's push channel
    /// closes or the task is aborted.
    pub fn spawn_listener(self: &Arc<Self>, events: Events, metrics: Metrics) -> JoinHandle<()> {
        let (tx, rx) = unbounded_channel();
        *lock(&self.push) = Some(tx);
        let _ = self.events.set(events);
        let _ = self.metrics.set(metrics);
        let store = Arc::clone(self);
        tokio::spawn(async move { store.listen(rx).await })
    }

    fn emit(&self, event: Invalidation) {
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    async fn listen(&self, mut rx: UnboundedReceiver<PushInfo>) {
        while let Some(push) = rx.recv().await {
            match push.kind {
                PushKind::Message => {
                    let Some(msg) = redis::Msg::from_push_info(push) else {
                        continue;
                    };
                    if msg.get_channel_name() != self.link.channel {
                        continue;
                    }
                    let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    match payload.split_once(' ') {
                        Some(("revoke", serial)) => self.emit(Invalidation::Serial(serial.into())),
                        Some(("account", account)) => {
                            self.emit(Invalidation::Account(account.into()))
                        }
                        _ => {
                            tracing::debug!(payload, "ignoring an unknown state event");
                        }
                    }
                }
                PushKind::Disconnection => {
                    self.link.reset_current();
                    tracing::warn!("redis connection lost");
                    self.emit(Invalidation::LinkLost);
                }
                PushKind::Subscribe => {
                    self.emit(Invalidation::Resubscribed);
                }
                _ => {}
            }
        }
    }

    /// Runs `fut` within [`CALL_TIMEOUT`].
    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {CALL_TIMEOUT:?}"
            ))),
        }
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

    fn refuse_if_lost(&self) -> Result<(), StoreError> {
        if self.data_lost() {
            return Err(lost_error());
        }
        Ok(())
    }

    /// Checks `meta` as read alongside a lookup; the slow path re-reads it under the lock.
    async fn check_meta(&self, view: MetaView) -> Result<(), StoreError> {
        let fine = view.data_lost_at.is_none()
            && view.store_id.is_some()
            && *lock(&self.known_id) == view.store_id;
        if fine {
            return Ok(());
        }
        self.verify_meta().await
    }

    /// The data-loss guard's decision, from a fresh read of `meta` (see the module header).
    async fn verify_meta(&self) -> Result<(), StoreError> {
        let mut guard = self.guard.lock().await;
        self.verify_meta_locked(&mut guard).await.map(drop)
    }

    /// [`RedisStore::verify_meta`] under the guard lock; returns `meta` as read when the
    /// store is trusted.
    async fn verify_meta_locked(&self, guard: &mut GuardState) -> Result<Fields, StoreError> {
        let (id, mut conn) = self.link.conn().await?;
        let meta_key = self.keys.meta();
        let r = redis::cmd("HGETALL")
            .arg(&meta_key)
            .query_async::<Fields>(&mut conn)
            .await;
        let mut meta = self.check(id, r, "read meta")?;
        let now = crate::core::clock::now().to_string();
        if meta.is_empty() {
            let script = if guard.known_id.is_none() {
                let has_data = self.any_data(&mut conn, id).await?;
                let r = self
                    .scripts
                    .init_meta
                    .key(&meta_key)
                    .arg(new_store_id())
                    .arg(&now)
                    .arg(if has_data { "1" } else { "0" })
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await;
                self.check(id, r, "initialise meta")?
            } else {
                let r = self
                    .scripts
                    .mark_lost
                    .key(&meta_key)
                    .arg(new_store_id())
                    .arg(&now)
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await;
                self.check(id, r, "mark meta")?
            };
            meta = pairs(script);
        }
        let store_id = meta.get("store_id").cloned();
        if meta.contains_key("data_lost_at") {
            return Err(self.enter_lost("certgate's meta record says the data was lost"));
        }
        let Some(store_id) = store_id else {
            return Err(StoreError::Corrupt("meta has no store_id".into()));
        };
        match guard.known_id.clone() {
            None => {
                tracing::info!(store = %self.description, store_id, "redis state store in use");
                guard.known_id = Some(store_id.clone());
            }
            Some(known) if known == store_id => {}
            Some(known) => {
                if meta.contains_key("acknowledged_at") {
                    tracing::warn!(
                        previous = known,
                        store_id,
                        "an operator acknowledged a loss of redis data; using the store as it is now"
                    );
                    guard.known_id = Some(store_id.clone());
                    self.clear_cache();
                } else {
                    self.mark_meta_lost(&mut conn, id).await?;
                    return Err(self.enter_lost(
                        "certgate's meta record was replaced (redis restarted empty and another \
                         instance initialised it)",
                    ));
                }
            }
        }
        *lock(&self.known_id) = Some(store_id.clone());
        if !guard.persistence_checked {
            guard.persistence_checked = true;
            self.check_persistence(&mut conn).await;
        }
        if self.per_slot() && !meta.contains_key("slots_marked_at") {
            self.claim_marking(&mut conn, id, &store_id, &now).await?;
        }
        self.leave_lost();
        Ok(meta)
    }

    /// Sets `data_lost_at` in `meta` (creating it if missing), so every instance refuses.
    async fn mark_meta_lost(&self, conn: &mut Conn, id: u64) -> Result<(), StoreError> {
        let r = self
            .scripts
            .mark_lost
            .key(self.keys.meta())
            .arg(new_store_id())
            .arg(crate::core::clock::now())
            .invoke_async::<Vec<String>>(conn)
            .await;
        self.check(id, r, "mark meta").map(drop)
    }

    /// Cluster: the slot markers of `store_id` are not all written yet (a new `meta`, an
    /// acknowledgement, or a store from before the markers). Claims the writing in `meta`
    /// and, when this instance got it, writes them in the background: the first lookups
    /// need not wait, and a writer that dies leaves a claim that expires after
    /// [`MARKING_LEASE`], when another instance (its probe, at the latest) takes over.
    async fn claim_marking(
        &self,
        conn: &mut Conn,
        id: u64,
        store_id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .scripts
            .claim_marking
            .key(self.keys.meta())
            .arg(store_id)
            .arg(now)
            .arg(MARKING_LEASE.as_secs())
            .invoke_async::<String>(conn)
            .await;
        if self.check(id, r, "claim the slot markers")? != "claimed" {
            return Ok(());
        }
        let (conn, keys, script) = (
            conn.clone(),
            self.keys.clone(),
            self.scripts.slots_marked.clone(),
        );
        let (store_id, description) = (store_id.to_string(), self.description.clone());
        tokio::spawn(async move {
            let written = tokio::time::timeout(
                MARKING_LEASE,
                write_slot_markers(&conn, &keys, &script, &store_id),
            )
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "not done within {MARKING_LEASE:?}"
                )))
            });
            match written {
                Ok(took) => tracing::info!(
                    store = %description,
                    took_ms = took.as_millis() as u64,
                    "redis cluster slot markers written"
                ),
                Err(e) => tracing::warn!(
                    store = %description,
                    error = %e,
                    "writing the redis cluster slot markers failed; another attempt follows \
                     once the claim expires"
                ),
            }
        });
        Ok(())
    }

    /// Cluster: the slow path of a lookup whose slot marker `marker` was not the known
    /// store id. Under the guard lock, `meta` first (adopts an acknowledged id, or trips on
    /// a replaced or lost `meta`), then the marker again:
    /// - the known id: fine (another instance repaired it, or this one adopted a new id);
    /// - another id: the slot kept its data (an acknowledgement is being rolled out), so
    ///   the marker is rewritten to the known id;
    /// - missing, while the markers of this id are not all written yet: written now;
    /// - missing otherwise: the master serving the slot lost its data. `meta` is marked
    ///   and every call is refused until an operator acknowledges.
    async fn check_slot(&self, marker: &str) -> Result<(), StoreError> {
        let mut guard = self.guard.lock().await;
        let meta = self.verify_meta_locked(&mut guard).await?;
        let Some(known) = guard.known_id.clone() else {
            return Err(StoreError::Unavailable("redis: no store id yet".into()));
        };
        let (id, mut conn) = self.link.conn().await?;
        let r = redis::cmd("GET")
            .arg(marker)
            .query_async::<Option<String>>(&mut conn)
            .await;
        match self.check(id, r, "read a slot marker")? {
            Some(seen) if seen == known => Ok(()),
            Some(seen) => {
                tracing::debug!(
                    marker,
                    previous = seen,
                    "slot marker rewritten to the store id"
                );
                let r = redis::cmd("SET")
                    .arg(marker)
                    .arg(&known)
                    .query_async::<()>(&mut conn)
                    .await;
                self.check(id, r, "rewrite a slot marker")
            }
            None if !meta.contains_key("slots_marked_at") => {
                let r = redis::cmd("SET")
                    .arg(marker)
                    .arg(&known)
                    .arg("NX")
                    .query_async::<Option<String>>(&mut conn)
                    .await;
                self.check(id, r, "write a slot marker").map(drop)
            }
            None => {
                self.mark_meta_lost(&mut conn, id).await?;
                Err(self.enter_lost(&format!(
                    "redis cluster slot {} lost its data (its marker {marker} is missing: the \
                     master serving it restarted empty)",
                    key_slot(marker.as_bytes())
                )))
            }
        }
    }

    /// Whether any certgate data exists (used only when `meta` is missing). Cluster: the
    /// fixed keys and the markers of 16 slots spread over the range (a full scan would have
    /// to visit every node; markers exist only once `meta` did).
    async fn any_data(&self, conn: &mut Conn, id: u64) -> Result<bool, StoreError> {
        let mut probes = vec![
            self.keys.revoked_index(),
            self.keys.tickets_index(),
            self.keys.crl_number(),
        ];
        if self.per_slot() {
            probes.extend(
                (0..SLOTS)
                    .step_by(SLOTS / 16)
                    .map(|s| self.keys.slot_marker(s)),
            );
        }
        for key in probes {
            let r = redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<i64>(conn)
                .await;
            if self.check(id, r, "check for data")? > 0 {
                return Ok(true);
            }
        }
        if self.link.is_cluster() {
            return Ok(false);
        }
        let pattern = self.keys.all_pattern();
        let mut cursor: u64 = 0;
        loop {
            let r = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async::<(u64, Vec<String>)>(conn)
                .await;
            let (next, keys) = self.check(id, r, "scan for data")?;
            if !keys.is_empty() {
                return Ok(true);
            }
            if next == 0 {
                return Ok(false);
            }
            cursor = next;
        }
    }

    /// Logs a warning when the server's persistence settings could lose revocations. Where
    /// `CONFIG` is disabled (managed services), says nothing.
    async fn check_persistence(&self, conn: &mut Conn) {
        let r = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async::<Fields>(conn)
            .await;
        let Ok(aof) = r else {
            tracing::debug!("CONFIG GET is not allowed; redis persistence not checked");
            return;
        };
        if aof.get("appendonly").is_some_and(|v| v == "yes") {
            return;
        }
        let save = redis::cmd("CONFIG")
            .arg("GET")
            .arg("save")
            .query_async::<Fields>(conn)
            .await
            .ok()
            .and_then(|m| m.get("save").cloned())
            .unwrap_or_default();
        if save.trim().is_empty() {
            tracing::warn!(
                "redis runs without persistence (appendonly no, no save points): a restart \
                 loses every revocation; set appendonly yes (see README, Redis)"
            );
        } else {
            tracing::warn!(
                save,
                "redis persists only by snapshots (appendonly no): a crash loses the \
                 revocations since the last snapshot; set appendonly yes (see README, Redis)"
            );
        }
    }

    /// Trips the guard (once: log, metrics) and returns the error every call gets now.
    fn enter_lost(&self, why: &str) -> StoreError {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::error!(
                store = %self.description,
                "{why}. Every state lookup now fails (protected requests get 503) so that no \
                 revoked or reset certificate is let through. Restore the data (revocations, \
                 resets) and then acknowledge the loss (see README, Redis: data loss)."
            );
            if let Some(m) = self.metrics.get() {
                m.state_store_data_lost.set(1);
                m.state_store_data_loss_events.inc();
            }
        }
        lost_error()
    }

    fn leave_lost(&self) {
        if self.lost.swap(false, Ordering::AcqRel) {
            tracing::warn!("redis data loss acknowledged; state lookups resume");
            self.clear_cache();
        }
        if let Some(m) = self.metrics.get() {
            m.state_store_data_lost.set(0);
        }
    }

    fn clear_cache(&self) {
        self.emit(Invalidation::All);
    }

    /// The operator's answer to a suspected data loss: accept the store as it is now.
    /// Writes a fresh `{p}meta` (new `store_id`, `acknowledged_at`), moves the CRL number past
    /// any issued before, in Cluster rewrites every slot marker with the new id, and lets
    /// every instance (they adopt an acknowledged `meta` on their next lookup or probe)
    /// serve again. Re-apply revocations and resets made before the loss first: this call
    /// cannot know them.
    pub async fn acknowledge_data_loss(&self) -> Result<(), StoreError> {
        let store_id = new_store_id();
        self.timed(async {
            let (id, mut conn) = self.link.conn().await?;
            let now = crate::core::clock::now();
            let r = self
                .scripts
                .acknowledge
                .key(self.keys.meta())
                .arg(&store_id)
                .arg(now)
                .arg(if self.per_slot() { "1" } else { "0" })
                .invoke_async::<i64>(&mut conn)
                .await;
            self.check(id, r, "acknowledge")?;
            // CRL numbers must keep growing: jump past any number issued before the loss
            // (those were small counters; unix time is larger).
            let r = redis::cmd("SET")
                .arg(self.keys.crl_number())
                .arg(now)
                .arg("NX")
                .query_async::<Option<String>>(&mut conn)
                .await;
            self.check(id, r, "crl number")?;
            let current: u64 = {
                let r = redis::cmd("GET")
                    .arg(self.keys.crl_number())
                    .query_async::<Option<u64>>(&mut conn)
                    .await;
                self.check(id, r, "crl number")?.unwrap_or(0)
            };
            let floor = u64::try_from(now).unwrap_or(0);
            if current < floor {
                let r = redis::cmd("SET")
                    .arg(self.keys.crl_number())
                    .arg(floor)
                    .query_async::<()>(&mut conn)
                    .await;
                self.check(id, r, "crl number")?;
            }
            tracing::warn!(store = %self.description, "redis data loss acknowledged by the operator");
            Ok(())
        })
        .await?;
        if self.per_slot() {
            // Claimed by the acknowledgement itself; written here, not in the background,
            // so that `certgate admin acknowledge-data-loss` finishes it before it exits.
            // Bounded by the claim, not by CALL_TIMEOUT.
            let (_, conn) = self.timed(self.link.conn()).await?;
            let script = &self.scripts.slots_marked;
            let took = tokio::time::timeout(
                MARKING_LEASE,
                write_slot_markers(&conn, &self.keys, script, &store_id),
            )
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "not done within {MARKING_LEASE:?}"
                )))
            })
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "the loss is acknowledged, but the cluster slot markers were not all \
                     rewritten ({e}); the gateways finish them within {MARKING_LEASE:?}, or run \
                     the acknowledgement again"
                ))
            })?;
            tracing::info!(
                store = %self.description,
                took_ms = took.as_millis() as u64,
                "redis cluster slot markers rewritten"
            );
        }
        self.timed(self.verify_meta()).await
    }

    /// Reads the hash at `key` under the data-loss guard, in one round trip: with `meta`
    /// (one pipeline; standalone, Sentinel, and a Cluster whose keys share one slot), or,
    /// in Cluster, with the marker of `key`'s slot in one script.
    async fn guarded_hash(&self, key: String) -> Result<Fields, StoreError> {
        self.admitted().await?;
        if self.per_slot() {
            return self.marked(Marked::Read, &key).await.map(pairs);
        }
        let (id, mut conn) = self.link.conn().await?;
        let mut meta_cmd = redis::cmd("HMGET");
        meta_cmd
            .arg(self.keys.meta())
            .arg("store_id")
            .arg("data_lost_at");
        let mut read = redis::cmd("HGETALL");
        read.arg(&key);
        let r = redis::pipe()
            .add_command(meta_cmd)
            .add_command(read)
            .query_async(&mut conn)
            .await;
        let (meta, fields): (Vec<Option<String>>, Fields) = self.check(id, r, "read")?;
        let mut meta = meta.into_iter();
        self.check_meta(MetaView {
            store_id: meta.next().flatten(),
            data_lost_at: meta.next().flatten(),
        })
        .await?;
        Ok(fields)
    }

    /// Cluster: runs `op` on `key` in one script with the marker of `key`'s slot (the
    /// `MARKED` script: the operation runs only beside the known store id). A marker that
    /// is not the known id takes the slow path (`check_slot`), which trips
    /// the guard or repairs the marker, and the operation runs again.
    async fn marked(&self, op: Marked, key: &str) -> Result<Vec<String>, StoreError> {
        let marker = self.keys.marker_for(key);
        for _ in 0..MARKED_ATTEMPTS {
            self.refuse_if_lost()?;
            let Some(known) = lock(&self.known_id).clone() else {
                // No store id yet (never the case after `admitted`): learn it first.
                self.verify_meta().await?;
                continue;
            };
            let (id, mut conn) = self.link.conn().await?;
            let r = self
                .scripts
                .marked
                .key(&marker)
                .key(key)
                .arg(&known)
                .arg(op.name())
                .invoke_async::<(String, Vec<String>)>(&mut conn)
                .await;
            let (seen, out) = self.check(id, r, op.name())?;
            if seen == known {
                return Ok(out);
            }
            self.check_slot(&marker).await?;
        }
        Err(StoreError::Unavailable(format!(
            "redis: the slot marker {marker} kept changing (an acknowledgement in progress?); \
             try again"
        )))
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

    /// After a write whose critical step touched `key`: the write counts only once a
    /// replica has it too.
    ///
    /// Sentinel mode: `WAIT 1` on the master, and the sentinels must still name the node the
    /// write went to as the master. A write only the old master saw is lost when that master
    /// is demoted and resynchronised, and during a failover the old master (and replicas
    /// still following it) accept and confirm writes for a few seconds. Otherwise the write
    /// is reported as failed (the caller retries; every write here is idempotent) and the
    /// master is resolved again. What remains is Redis's own window: a write confirmed by a
    /// replica other than the one being promoted, in the instant before the sentinels switch
    /// (see README, Redis).
    ///
    /// Cluster mode: see [`RedisStore::cluster_replicated`]. Standalone: nothing to wait for.
    async fn replicated(&self, id: u64, conn: &mut Conn, key: &str) -> Result<(), StoreError> {
        if let Conn::Cluster(c) = conn {
            return self.cluster_replicated(id, c, key).await;
        }
        if !self.link.is_sentinel() {
            return Ok(());
        }
        let r = redis::cmd("WAIT")
            .arg(1)
            .arg(REPLICA_WAIT.as_millis() as u64)
            .query_async::<i64>(conn)
            .await;
        if self.check(id, r, "wait for a replica")? < 1 {
            self.link.reset(id);
            return Err(StoreError::Unavailable(format!(
                "redis: no replica confirmed the write within {REPLICA_WAIT:?} (failover in \
                 progress, or a master without replicas); not counted as done"
            )));
        }
        // A replica that is about to follow a newly promoted master confirms too; only
        // the sentinels know the node was demoted.
        if !self.link.still_master(id).await? {
            self.link.reset(id);
            return Err(StoreError::Unavailable(
                "redis: the sentinels name another master now (failover); the write is not \
                 counted as done"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Cluster mode: the master serving `key`'s slot is asked how many replicas it has
    /// (`INFO replication`, routed to it explicitly). None: there is nothing to wait for and
    /// the write is accepted (a master without a replica that restarts empty is the
    /// data-loss guard's case). One or more: `WAIT 1` on that master (routed the same way;
    /// the cluster connection holds one connection per node, so the `WAIT` follows the
    /// write on the connection that carried it), and a write no replica confirmed within
    /// [`REPLICA_WAIT`] is reported as failed, as in Sentinel mode, since a failover to
    /// that replica would lose it. The replicas are counted first because `WAIT` on a
    /// master without any blocks for the whole timeout, and with it the node's connection,
    /// which every call to that node shares.
    async fn cluster_replicated(
        &self,
        id: u64,
        conn: &mut ClusterConnection,
        key: &str,
    ) -> Result<(), StoreError> {
        let slot = key_slot(key.as_bytes());
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slot,
            SlotAddr::Master,
        )));
        let mut info = redis::cmd("INFO");
        info.arg("replication");
        let r = conn
            .route_command(info, route.clone())
            .await
            .and_then(|v| Ok(redis::from_redis_value::<String>(v)?));
        let info = self.check(id, r, "ask the master about its replicas")?;
        let replicas = match connected_replicas(&info) {
            Some(0) => return Ok(()),
            Some(n) => n,
            None => {
                return Err(StoreError::Unavailable(format!(
                    "redis: the master serving slot {slot} did not say how many replicas it \
                     has (INFO replication); the write is not counted as done"
                )));
            }
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(REPLICA_WAIT.as_millis() as u64);
        let r = conn
            .route_command(wait, route)
            .await
            .and_then(|v| Ok(redis::from_redis_value::<i64>(v)?));
        if self.check(id, r, "wait for a replica")? < 1 {
            return Err(StoreError::Unavailable(format!(
                "redis: no replica confirmed the write within {REPLICA_WAIT:?} (the master \
                 serving slot {slot} has {replicas} replica(s)); not counted as done"
            )));
        }
        Ok(())
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

    async fn account_inner(&self, account: &str) -> Result<Option<AccountState>, StoreError> {
        let fields = self.guarded_hash(self.keys.account(account)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_account(account, &fields).map(Some)
    }

    async fn enable_two_factor_inner(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = self
            .scripts
            .enable_two_factor
            .key(self.keys.account(account))
            .arg(now)
            .invoke_async::<Vec<String>>(&mut conn)
            .await;
        let fields = pairs(self.check(id, r, "enable two-factor")?);
        self.replicated(id, &mut conn, &self.keys.account(account))
            .await?;
        let state = decode_account(account, &fields)?;
        self.publish(format!("account {account}")).await;
        Ok(state)
    }

    async fn reset_account_inner(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = self
            .scripts
            .reset_account
            .key(self.keys.account(account))
            .key(self.keys.account_tickets(account))
            .arg(now)
            .invoke_async::<(Vec<String>, Vec<String>)>(&mut conn)
            .await;
        let (fields, tickets) = self.check(id, r, "reset")?;
        self.replicated(id, &mut conn, &self.keys.account(account))
            .await?;
        let state = decode_account(account, &pairs(fields))?;
        // The generation is bumped: old certificates are refused from here on. Tell every
        // instance before the (slower, cross-slot) ticket cleanup.
        self.publish(format!("account {account}")).await;
        if !tickets.is_empty() {
            let dels = tickets
                .iter()
                .map(|h| {
                    let mut c = redis::cmd("DEL");
                    c.arg(self.keys.ticket(h));
                    c
                })
                .collect();
            self.each::<i64>(dels, "void tickets").await?;
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.account_tickets(account)).arg(&tickets);
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(self.keys.tickets_index()).arg(
                tickets
                    .iter()
                    .map(|h| format!("{h} {account}"))
                    .collect::<Vec<_>>(),
            );
            self.each::<i64>(vec![srem, zrem], "void tickets").await?;
        }
        Ok(state)
    }

    async fn revocation_inner(&self, serial: &str) -> Result<Option<Revocation>, StoreError> {
        let fields = self.guarded_hash(self.keys.revoked(serial)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_revocation(serial, &fields).map(Some)
    }

    async fn revoke_inner(&self, revocation: Revocation) -> Result<Revocation, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let serial = revocation.serial.clone();
        let drop_at = revocation
            .not_after
            .map(|na| na.saturating_add(REVOCATION_RETENTION_AFTER_EXPIRY));
        let r = self
            .scripts
            .revoke
            .key(self.keys.revoked(&serial))
            .arg(revocation.reason.as_str())
            .arg(revocation.revoked_at)
            .arg(
                revocation
                    .not_after
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .arg(drop_at.map(|v| v.to_string()).unwrap_or_default())
            .invoke_async::<(i64, Vec<String>)>(&mut conn)
            .await;
        let (written, existing) = self.check(id, r, "revoke")?;
        self.replicated(id, &mut conn, &self.keys.revoked(&serial))
            .await?;
        let stored = if written == 1 {
            revocation
        } else {
            decode_revocation(&serial, &pairs(existing))?
        };
        // Index and event: repeated on a repeated revoke, so a crash after the record
        // leaves nothing a retry does not finish.
        let score = stored
            .not_after
            .map(|na| {
                na.saturating_add(REVOCATION_RETENTION_AFTER_EXPIRY)
                    .to_string()
            })
            .unwrap_or_else(|| "+inf".into());
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.revoked_index()).arg(score).arg(&serial);
        self.each::<i64>(vec![zadd], "index revocation").await?;
        self.publish(format!("revoke {serial}")).await;
        Ok(stored)
    }

    async fn revocations_inner(&self) -> Result<Vec<Revocation>, StoreError> {
        self.admitted().await?;
        let (serials, records) = if self.per_slot() {
            // The CRL reads revocations too: each read beside its slot marker.
            let serials = self
                .marked(Marked::List, &self.keys.revoked_index())
                .await?;
            let mut records = Vec::with_capacity(serials.len());
            for serial in &serials {
                let fields = self
                    .marked(Marked::Read, &self.keys.revoked(serial))
                    .await?;
                records.push(pairs(fields));
            }
            (serials, records)
        } else {
            let (id, mut conn) = self.link.conn().await?;
            let r = redis::cmd("ZRANGE")
                .arg(self.keys.revoked_index())
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut conn)
                .await;
            let serials = self.check(id, r, "list revocations")?;
            let records = self
                .hashes(&serials, |s| self.keys.revoked(s), "list revocations")
                .await?;
            (serials, records)
        };
        let mut out = Vec::new();
        for (serial, fields) in serials.iter().zip(records) {
            // Gone by EXPIREAT, not yet swept from the index.
            if !fields.is_empty() {
                out.push(decode_revocation(serial, &fields)?);
            }
        }
        Ok(out)
    }

    async fn record_certificate_inner(&self, cert: CertRecord) -> Result<(), StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let drop_at = cert
            .not_after
            .saturating_add(REVOCATION_RETENTION_AFTER_EXPIRY);
        let r = self
            .scripts
            .record_cert
            .key(self.keys.cert(&cert.serial))
            .arg(&cert.account)
            .arg(cert.generation)
            .arg(&cert.fingerprint)
            .arg(cert.not_after)
            .arg(cert.issued_at)
            .arg(drop_at)
            .invoke_async::<String>(&mut conn)
            .await;
        let previous = self.check(id, r, "record certificate")?;
        self.replicated(id, &mut conn, &self.keys.cert(&cert.serial))
            .await?;
        let mut cmds = Vec::new();
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.account_certs(&cert.account))
            .arg(&cert.serial);
        cmds.push(sadd);
        if !previous.is_empty() && previous != cert.account {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.account_certs(&previous))
                .arg(&cert.serial);
            cmds.push(srem);
        }
        self.each::<i64>(cmds, "index certificate").await?;
        Ok(())
    }

    /// The registry is not a decision input (lookups read revocations and accounts), so it
    /// stays readable while data loss is suspected: the admin API needs it to re-apply
    /// revocations.
    async fn certificate_inner(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = redis::cmd("HGETALL")
            .arg(self.keys.cert(serial))
            .query_async::<Fields>(&mut conn)
            .await;
        let fields = self.check(id, r, "read certificate")?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_cert(serial, &fields).map(Some)
    }

    async fn certificates_of_inner(&self, account: &str) -> Result<Vec<CertRecord>, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = redis::cmd("SMEMBERS")
            .arg(self.keys.account_certs(account))
            .query_async::<Vec<String>>(&mut conn)
            .await;
        let serials = self.check(id, r, "list certificates")?;
        let records = self
            .hashes(&serials, |s| self.keys.cert(s), "list certificates")
            .await?;
        let mut out = Vec::new();
        for (serial, fields) in serials.iter().zip(records) {
            if fields.is_empty() {
                continue; // expired record; the set entry is harmless
            }
            let c = decode_cert(serial, &fields)?;
            // A set entry left by a moved record (see the module header).
            if c.account == account {
                out.push(c);
            }
        }
        out.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
        Ok(out)
    }

    async fn put_ticket_inner(&self, ticket: TicketRecord) -> Result<(), StoreError> {
        self.admitted_write().await?;
        // The account's set first, so a reset racing this put cannot miss the ticket.
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.account_tickets(&ticket.account))
            .arg(&ticket.hash);
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.tickets_index())
            .arg(ticket.expires_at)
            .arg(format!("{} {}", ticket.hash, ticket.account));
        self.each::<i64>(vec![sadd, zadd], "index ticket").await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = self
            .scripts
            .put_ticket
            .key(self.keys.ticket(&ticket.hash))
            .arg(&ticket.account)
            .arg(ticket.generation)
            .arg(ticket.expires_at)
            .invoke_async::<String>(&mut conn)
            .await;
        let previous = self.check(id, r, "put ticket")?;
        self.replicated(id, &mut conn, &self.keys.ticket(&ticket.hash))
            .await?;
        if !previous.is_empty() && previous != ticket.account {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.account_tickets(&previous))
                .arg(&ticket.hash);
            self.each::<i64>(vec![srem], "index ticket").await?;
        }
        Ok(())
    }

    async fn peek_ticket_inner(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> Result<Option<TicketRecord>, StoreError> {
        self.admitted().await?;
        let fields = if self.per_slot() {
            pairs(self.marked(Marked::Read, &self.keys.ticket(hash)).await?)
        } else {
            let (id, mut conn) = self.link.conn().await?;
            let r = redis::cmd("HGETALL")
                .arg(self.keys.ticket(hash))
                .query_async::<Fields>(&mut conn)
                .await;
            self.check(id, r, "read ticket")?
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let ticket = decode_ticket(hash, &fields)?;
        Ok((now < ticket.expires_at).then_some(ticket))
    }

    async fn consume_ticket_inner(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> Result<Option<TicketRecord>, StoreError> {
        self.admitted().await?;
        let fields = if self.per_slot() {
            let fields = pairs(
                self.marked(Marked::Consume, &self.keys.ticket(hash))
                    .await?,
            );
            let (id, mut conn) = self.link.conn().await?;
            self.replicated(id, &mut conn, &self.keys.ticket(hash))
                .await?;
            fields
        } else {
            let (id, mut conn) = self.link.conn().await?;
            let r = self
                .scripts
                .consume_ticket
                .key(self.keys.ticket(hash))
                .invoke_async::<Vec<String>>(&mut conn)
                .await;
            let fields = pairs(self.check(id, r, "consume ticket")?);
            self.replicated(id, &mut conn, &self.keys.ticket(hash))
                .await?;
            fields
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let ticket = decode_ticket(hash, &fields)?;
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys.account_tickets(&ticket.account))
            .arg(hash);
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.keys.tickets_index())
            .arg(format!("{hash} {}", ticket.account));
        // Index cleanup only; `sweep` repeats it if this fails.
        if let Err(e) = self.each::<i64>(vec![srem, zrem], "unindex ticket").await {
            tracing::debug!(error = %e, "ticket index cleanup deferred to the sweep");
        }
        // A ticket is usable strictly before `expires_at`; an expired one is gone either way.
        if now >= ticket.expires_at {
            return Ok(None);
        }
        Ok(Some(ticket))
    }

    async fn next_crl_number_inner(&self) -> Result<u64, StoreError> {
        self.admitted().await?;
        if self.per_slot() {
            let out = self.marked(Marked::Incr, &self.keys.crl_number()).await?;
            let (id, mut conn) = self.link.conn().await?;
            self.replicated(id, &mut conn, &self.keys.crl_number())
                .await?;
            return out
                .first()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("crl number: INCR said {out:?}")));
        }
        let (id, mut conn) = self.link.conn().await?;
        let r = redis::cmd("INCR")
            .arg(self.keys.crl_number())
            .query_async::<u64>(&mut conn)
            .await;
        let n = self.check(id, r, "crl number")?;
        self.replicated(id, &mut conn, &self.keys.crl_number())
            .await?;
        Ok(n)
    }

    async fn sweep_inner(&self, now: UnixTime) -> Result<u64, StoreError> {
        self.admitted().await?;
        let (id, mut conn) = self.link.conn().await?;
        let mut removed = 0u64;

        // Tickets: usable strictly before expires_at, so a score <= now is expired.
        let r = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.tickets_index())
            .arg("-inf")
            .arg(now)
            .query_async::<Vec<String>>(&mut conn)
            .await;
        let members = self.check(id, r, "sweep tickets")?;
        for member in &members {
            let Some((hash, account)) = member.split_once(' ') else {
                continue;
            };
            let key = self.keys.ticket(hash);
            let r = redis::cmd("HGET")
                .arg(&key)
                .arg("expires_at")
                .query_async::<Option<i64>>(&mut conn)
                .await;
            // A ticket put again under the same hash with a later expiry stays.
            let expires_at = self.check(id, r, "sweep tickets")?;
            if expires_at.is_none_or(|e| e <= now) {
                let r = redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<i64>(&mut conn)
                    .await;
                removed += u64::try_from(self.check(id, r, "sweep tickets")?).unwrap_or(0);
                let mut srem = redis::cmd("SREM");
                srem.arg(self.keys.account_tickets(account)).arg(hash);
                self.each::<i64>(vec![srem], "sweep tickets").await?;
            }
            let r = redis::cmd("ZREM")
                .arg(self.keys.tickets_index())
                .arg(member)
                .query_async::<i64>(&mut conn)
                .await;
            self.check(id, r, "sweep tickets")?;
        }

        // Revocations: scored by not_after + retention; drop those strictly before now.
        let r = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.revoked_index())
            .arg("-inf")
            .arg(format!("({now}"))
            .query_async::<Vec<String>>(&mut conn)
            .await;
        let serials = self.check(id, r, "sweep revocations")?;
        for serial in &serials {
            let r = redis::cmd("DEL")
                .arg(self.keys.revoked(serial))
                .query_async::<i64>(&mut conn)
                .await;
            removed += u64::try_from(self.check(id, r, "sweep revocations")?).unwrap_or(0);
            let r = redis::cmd("ZREM")
                .arg(self.keys.revoked_index())
                .arg(serial)
                .query_async::<i64>(&mut conn)
                .await;
            self.check(id, r, "sweep revocations")?;
        }
        Ok(removed)
    }
}

/// Cluster: writes every slot marker with `store_id` (single-key `SET`s, [`MARKER_WRITERS`]
/// in flight, so each node gets its share pipelined), then records in `meta` that they are
/// all written (`slots_marked` script, only if `meta` still carries `store_id`). Returns
/// how long the markers took.
async fn write_slot_markers(
    conn: &Conn,
    keys: &Keys,
    slots_marked: &Script,
    store_id: &str,
) -> Result<Duration, StoreError> {
    let started = std::time::Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::<Result<(), StoreError>>::new();
    for _ in 0..MARKER_WRITERS {
        let (mut conn, keys, next) = (conn.clone(), keys.clone(), next.clone());
        let store_id = store_id.to_string();
        writers.spawn(async move {
            loop {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                if slot >= SLOTS {
                    return Ok(());
                }
                redis::cmd("SET")
                    .arg(keys.slot_marker(slot))
                    .arg(&store_id)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| unavailable("write a slot marker", &e))?;
            }
        });
    }
    // The first failure ends the writing (dropping the set aborts the other writers).
    while let Some(done) = writers.join_next().await {
        done.map_err(|e| StoreError::Unavailable(format!("slot marker writer: {e}")))??;
    }
    let took = started.elapsed();
    let mut conn = conn.clone();
    slots_marked
        .key(keys.meta())
        .arg(store_id)
        .arg(crate::core::clock::now())
        .invoke_async::<i64>(&mut conn)
        .await
        .map_err(|e| unavailable("record the slot markers", &e))?;
    Ok(took)
}

/// DER certificates as the PEM text the Redis client reads.
fn pem_certificates(certs: &[rustls_pki_types::CertificateDer<'static>]) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

fn new_store_id() -> String {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG does not fail on supported platforms; a zero id would still be unique
    // enough to detect a replaced meta record.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A flat `[field, value, …]` reply as a map.
fn pairs(flat: Vec<String>) -> Fields {
    let mut out = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(k, v);
    }
    out
}

fn field<T: FromStr>(fields: &Fields, what: &str, key: &str, name: &str) -> Result<T, StoreError> {
    let raw = fields
        .get(name)
        .ok_or_else(|| StoreError::Corrupt(format!("{what} {key:?} has no {name}")))?;
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} {key:?}: {name} {raw:?} does not parse")))
}

fn optional<T: FromStr>(
    fields: &Fields,
    what: &str,
    key: &str,
    name: &str,
) -> Result<Option<T>, StoreError> {
    match fields.get(name) {
        None => Ok(None),
        Some(_) => field(fields, what, key, name).map(Some),
    }
}

fn decode_account(account: &str, f: &Fields) -> Result<AccountState, StoreError> {
    let two_factor: u8 = field(f, "account", account, "two_factor")?;
    Ok(AccountState {
        account: account.to_string(),
        generation: field(f, "account", account, "generation")?,
        two_factor: two_factor != 0,
        created_at: field(f, "account", account, "created_at")?,
        reset_at: optional(f, "account", account, "reset_at")?,
    })
}

fn decode_revocation(serial: &str, f: &Fields) -> Result<Revocation, StoreError> {
    let reason_text: String = field(f, "revocation", serial, "reason")?;
    let reason = RevocationReason::parse(&reason_text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "revocation {serial:?}: unknown reason {reason_text:?}"
        ))
    })?;
    Ok(Revocation {
        serial: serial.to_string(),
        reason,
        revoked_at: field(f, "revocation", serial, "revoked_at")?,
        not_after: optional(f, "revocation", serial, "not_after")?,
    })
}

fn decode_cert(serial: &str, f: &Fields) -> Result<CertRecord, StoreError> {
    Ok(CertRecord {
        serial: serial.to_string(),
        account: field(f, "certificate", serial, "account")?,
        generation: field(f, "certificate", serial, "generation")?,
        fingerprint: field(f, "certificate", serial, "fingerprint")?,
        not_after: field(f, "certificate", serial, "not_after")?,
        issued_at: field(f, "certificate", serial, "issued_at")?,
    })
}

fn decode_ticket(hash: &str, f: &Fields) -> Result<TicketRecord, StoreError> {
    Ok(TicketRecord {
        hash: hash.to_string(),
        account: field(f, "ticket", hash, "account")?,
        generation: field(f, "ticket", hash, "generation")?,
        expires_at: field(f, "ticket", hash, "expires_at")?,
    })
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
            self.timed(self.enable_two_factor_inner(&account, now))
                .await
        })
    }

    fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move { self.timed(self.reset_account_inner(&account, now)).await })
    }

    fn revocation(&self, serial: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(async move { self.timed(self.revocation_inner(&serial)).await })
    }

    fn revoke(&self, revocation: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>> {
        Box::pin(self.timed(self.revoke_inner(revocation)))
    }

    fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>> {
        Box::pin(self.timed(self.revocations_inner()))
    }

    fn record_certificate(&self, cert: CertRecord) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.timed(self.record_certificate_inner(cert)))
    }

    fn certificate(&self, serial: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(async move { self.timed(self.certificate_inner(&serial)).await })
    }

    fn certificates_of(&self, account: &str) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move { self.timed(self.certificates_of_inner(&account)).await })
    }

    fn put_ticket(&self, ticket: TicketRecord) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.timed(self.put_ticket_inner(ticket)))
    }

    fn peek_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move { self.timed(self.peek_ticket_inner(&hash, now)).await })
    }

    fn consume_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move { self.timed(self.consume_ticket_inner(&hash, now)).await })
    }

    fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.timed(self.next_crl_number_inner()))
    }

    fn sweep(&self, now: UnixTime) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.timed(self.sweep_inner(now)))
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
mod tests {
    use super::*;

    #[test]
    fn side_keys_share_the_account_slot() {
        let k = Keys::new("certgate:");
        assert_eq!(k.account("alice"), "certgate:acct:alice");
        assert_eq!(k.account_tickets("alice"), "{certgate:acct:alice}:tickets");
        // Redis hashes only the part inside the first `{…}` when there is one.
        let hashed = |key: &str| -> String {
            match key
                .find('{')
                .and_then(|o| key[o + 1..].find('}').map(|c| (o, c)))
            {
                Some((o, c)) if c > 0 => key[o + 1..o + 1 + c].to_string(),
                _ => key.to_string(),
            }
        };
        assert_eq!(hashed(&k.account("alice")), "certgate:acct:alice");
        assert_eq!(hashed(&k.account_tickets("alice")), "certgate:acct:alice");
        assert_eq!(hashed(&k.account_certs("alice")), "certgate:acct:alice");
        assert_eq!(k.revoked("0a"), "certgate:revoked:0a");
        assert_eq!(k.ticket("ff"), "certgate:ticket:ff");
        assert_eq!(k.events(), "certgate:events");
    }

    #[test]
    fn slots_are_computed_as_redis_does() {
        // The reference value from the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        for key in [
            "certgate:meta",
            "certgate:revoked:0a",
            "{certgate:acct:alice}:tickets",
            "a{}b",
            "a{b}c{d}",
            "{",
            "}{x}",
            "",
        ] {
            assert_eq!(
                Some(redis::cluster_routing::Slot::for_key(key)),
                redis::cluster_routing::Slot::new(key_slot(key.as_bytes())),
                "{key:?}"
            );
        }
    }

    #[test]
    fn every_slot_has_a_marker_in_that_slot() {
        let k = Keys::new("certgate:");
        assert_eq!(slot_tags().len(), SLOTS);
        let mut seen = std::collections::HashSet::new();
        for slot in 0..SLOTS {
            let marker = k.slot_marker(slot);
            assert_eq!(usize::from(key_slot(marker.as_bytes())), slot, "{marker}");
            assert!(marker.starts_with("certgate:slot:{"), "{marker}");
            assert!(seen.insert(marker));
        }
        assert_eq!(k.slot_marker(0), "certgate:slot:{3560}");
        // A key's marker shares its slot, so one script may read both.
        for key in [
            k.revoked("0a"),
            k.account("alice"),
            k.ticket("ff"),
            k.meta(),
        ] {
            assert_eq!(
                key_slot(k.marker_for(&key).as_bytes()),
                key_slot(key.as_bytes()),
                "{key}"
            );
        }
    }

    #[test]
    fn hash_tags_are_found_as_redis_finds_them() {
        assert_eq!(hash_tag(b"{gw}:"), Some(&b"gw"[..]));
        assert_eq!(hash_tag(b"x{gw}y:"), Some(&b"gw"[..]));
        // Empty or unclosed braces are no hash tag.
        assert_eq!(hash_tag(b"a{}b:"), None);
        assert_eq!(hash_tag(b"a{b:"), None);
    }

    #[test]
    fn a_prefix_with_braces_is_refused() {
        for prefix in ["{gw}:", "x{gw}y:", "a{}b:", "a{b:", "a}b:"] {
            let e = check_prefix(prefix).expect_err(prefix);
            assert!(e.to_string().contains("must not contain"), "{e}");
        }
        check_prefix("certgate:").unwrap();
        check_prefix("gw1:").unwrap();
    }

    #[test]
    fn scan_pattern_escapes_glob_characters() {
        assert_eq!(Keys::new("a*b[").all_pattern(), "a\\*b\\[*");
    }

    #[test]
    fn flat_replies_pair_up() {
        let m = pairs(vec!["a".into(), "1".into(), "b".into(), "2".into()]);
        assert_eq!(m.get("a").map(String::as_str), Some("1"));
        assert_eq!(m.get("b").map(String::as_str), Some("2"));
    }

    #[test]
    fn undecodable_records_are_corrupt_not_panics() {
        let mut f = Fields::new();
        f.insert("generation".into(), "x".into());
        f.insert("two_factor".into(), "1".into());
        f.insert("created_at".into(), "1".into());
        assert!(matches!(
            decode_account("a", &f),
            Err(StoreError::Corrupt(_))
        ));
        let mut r = Fields::new();
        r.insert("reason".into(), "nonsense".into());
        r.insert("revoked_at".into(), "1".into());
        assert!(matches!(
            decode_revocation("0a", &r),
            Err(StoreError::Corrupt(_))
        ));
    }
}
