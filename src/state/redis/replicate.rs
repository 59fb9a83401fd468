//! Replica acknowledgement of writes (`WAIT` on Sentinel and Cluster masters). Continues
//! [`RedisStore`]'s impl.

use super::*;

impl RedisStore {
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
    pub(super) async fn replicated(
        &self,
        id: u64,
        conn: &mut Conn,
        key: &str,
    ) -> Result<(), StoreError> {
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
    pub(super) async fn cluster_replicated(
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
}
