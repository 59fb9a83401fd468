//! The Lua scripts of the Redis backend: each touches one key, or keys of one slot, so it
//! runs unchanged on Cluster (see the header of `state/redis/mod.rs`).

use redis::Script;

// ---------------------------------------------------------------------------------------
// Scripts. Each touches one key or keys of one slot (see the module header).

/// KEYS: acct. ARGV: now. Sets two_factor, creating the record at generation 1.
pub(super) const ENABLE_TWO_FACTOR: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'generation', 1, 'two_factor', 1, 'created_at', ARGV[1])
else
  redis.call('HSET', KEYS[1], 'two_factor', 1)
end
return redis.call('HGETALL', KEYS[1])
";

/// KEYS: acct, acct tickets set. ARGV: now. Returns {account fields, ticket hashes}.
pub(super) const RESET_ACCOUNT: &str = r"
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
pub(super) const REVOKE: &str = r"
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

/// KEYS: cert. ARGV: account, generation, fingerprint, not_after, issued_at, expire_at,
/// issued_from ('' when unknown). Returns the previous account ('' when none).
pub(super) const RECORD_CERT: &str = r"
local previous = redis.call('HGET', KEYS[1], 'account')
redis.call('HSET', KEYS[1], 'account', ARGV[1], 'generation', ARGV[2], 'fingerprint', ARGV[3],
           'not_after', ARGV[4], 'issued_at', ARGV[5], 'issued_from', ARGV[7])
redis.call('EXPIREAT', KEYS[1], ARGV[6])
if previous then return previous else return '' end
";

/// KEYS: ticket. ARGV: account, generation, expires_at. Returns the previous account.
pub(super) const PUT_TICKET: &str = r"
local previous = redis.call('HGET', KEYS[1], 'account')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'account', ARGV[1], 'generation', ARGV[2], 'expires_at', ARGV[3])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
if previous then return previous else return '' end
";

/// KEYS: ticket. Read and delete in one step: of racing consumers exactly one gets it.
pub(super) const CONSUME_TICKET: &str = r"
local t = redis.call('HGETALL', KEYS[1])
if #t > 0 then
  redis.call('DEL', KEYS[1])
end
return t
";

/// KEYS: meta. ARGV: new id, now, has data ('1'/'0'). Creates `meta` if missing (marked as
/// lost when data exists without it) and returns its fields.
pub(super) const INIT_META: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'store_id', ARGV[1], 'created_at', ARGV[2])
  if ARGV[3] == '1' then
    redis.call('HSET', KEYS[1], 'data_lost_at', ARGV[2])
  end
end
return redis.call('HGETALL', KEYS[1])
";

/// KEYS: meta. ARGV: new id, now. Marks the store as having lost data.
pub(super) const MARK_LOST: &str = r"
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
pub(super) const ACKNOWLEDGE: &str = r"
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
pub(super) const MARKED: &str = r"
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
pub(super) const CLAIM_MARKING: &str = r"
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
pub(super) const SLOTS_MARKED: &str = r"
if redis.call('HGET', KEYS[1], 'store_id') ~= ARGV[1] then
  return 0
end
redis.call('HDEL', KEYS[1], 'slots_marking')
redis.call('HSET', KEYS[1], 'slots_marked_at', ARGV[2])
return 1
";

/// KEYS: session. ARGV: account, serial, bound_at, expires_at, replace ("1"/"0").
/// Without replace, an existing binding is returned (HGETALL) and left as it is; otherwise
/// the binding is written with its expiry and an empty list returned.
pub(super) const BIND_SESSION: &str = r"
if ARGV[5] ~= '1' then
  local b = redis.call('HGETALL', KEYS[1])
  if #b > 0 then return b end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'account', ARGV[1], 'serial', ARGV[2], 'bound_at', ARGV[3], 'expires_at', ARGV[4])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return {}
";

pub(super) struct Scripts {
    pub(super) enable_two_factor: Script,
    pub(super) reset_account: Script,
    pub(super) revoke: Script,
    pub(super) record_cert: Script,
    pub(super) put_ticket: Script,
    pub(super) bind_session: Script,
    pub(super) consume_ticket: Script,
    pub(super) init_meta: Script,
    pub(super) mark_lost: Script,
    pub(super) acknowledge: Script,
    pub(super) marked: Script,
    pub(super) claim_marking: Script,
    pub(super) slots_marked: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            enable_two_factor: Script::new(ENABLE_TWO_FACTOR),
            reset_account: Script::new(RESET_ACCOUNT),
            revoke: Script::new(REVOKE),
            record_cert: Script::new(RECORD_CERT),
            put_ticket: Script::new(PUT_TICKET),
            bind_session: Script::new(BIND_SESSION),
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
