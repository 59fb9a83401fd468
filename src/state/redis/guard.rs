//! The data-loss guard: `meta` and its `store_id`, Cluster slot markers, the lost state
//! and its acknowledgement (see the header of `state/redis/mod.rs`). Continues
//! [`RedisStore`]'s impl and shares the parent's imports.

use super::meta::{GuardState, Marked, MetaView};
use super::*;

impl RedisStore {
    pub(super) fn refuse_if_lost(&self) -> Result<(), StoreError> {
        if self.data_lost() {
            return Err(lost_error());
        }
        Ok(())
    }

    /// Checks `meta` as read alongside a lookup; the slow path re-reads it under the lock.
    pub(super) async fn check_meta(&self, view: MetaView) -> Result<(), StoreError> {
        let fine = view.data_lost_at.is_none()
            && view.store_id.is_some()
            && *lock(&self.known_id) == view.store_id;
        if fine {
            return Ok(());
        }
        self.verify_meta().await
    }

    /// The data-loss guard's decision, from a fresh read of `meta` (see the module header).
    pub(super) async fn verify_meta(&self) -> Result<(), StoreError> {
        let mut guard = self.guard.lock().await;
        self.verify_meta_locked(&mut guard).await.map(drop)
    }

    /// [`RedisStore::verify_meta`] under the guard lock; returns `meta` as read when the
    /// store is trusted.
    pub(super) async fn verify_meta_locked(
        &self,
        guard: &mut GuardState,
    ) -> Result<Fields, StoreError> {
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
    pub(super) async fn mark_meta_lost(&self, conn: &mut Conn, id: u64) -> Result<(), StoreError> {
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
    pub(super) async fn claim_marking(
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
    pub(super) async fn check_slot(&self, marker: &str) -> Result<(), StoreError> {
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
    pub(super) async fn any_data(&self, conn: &mut Conn, id: u64) -> Result<bool, StoreError> {
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
    pub(super) async fn check_persistence(&self, conn: &mut Conn) {
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
    pub(super) fn enter_lost(&self, why: &str) -> StoreError {
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

    pub(super) fn leave_lost(&self) {
        if self.lost.swap(false, Ordering::AcqRel) {
            tracing::warn!("redis data loss acknowledged; state lookups resume");
            self.clear_cache();
        }
        if let Some(m) = self.metrics.get() {
            m.state_store_data_lost.set(0);
        }
    }

    pub(super) fn clear_cache(&self) {
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
            // Bounded by the claim, not by the call timeouts.
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
    pub(super) async fn guarded_hash(&self, key: String) -> Result<Fields, StoreError> {
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
    pub(super) async fn marked(&self, op: Marked, key: &str) -> Result<Vec<String>, StoreError> {
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
}

/// Cluster: writes every slot marker with `store_id` (single-key `SET`s, [`MARKER_WRITERS`]
/// in flight, so each node gets its share pipelined), then records in `meta` that they are
/// all written (`slots_marked` script, only if `meta` still carries `store_id`). Returns
/// how long the markers took.
pub(super) async fn write_slot_markers(
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
