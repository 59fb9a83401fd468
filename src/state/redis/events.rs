//! The pub/sub listener: `{p}events` pushes turned into [`Invalidation`]s for the cache
//! that follows this store. Continues [`RedisStore`]'s impl.

use super::*;

impl RedisStore {
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

    pub(super) fn emit(&self, event: Invalidation) {
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    pub(super) async fn listen(self: &Arc<Self>, mut rx: UnboundedReceiver<PushInfo>) {
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
                    tracing::debug!("redis connection lost");
                    self.emit(Invalidation::LinkLost);
                    if self.link.is_cluster() {
                        self.resubscribe();
                    }
                }
                PushKind::Subscribe => {
                    self.emit(Invalidation::Resubscribed);
                }
                _ => {}
            }
        }
    }

    /// Cluster: a lost node may have been the one holding the subscription, and the cluster
    /// client moves it only when something makes it read the topology again (a gateway
    /// whose reads all go to other masters may never do so). Subscribes again until it
    /// succeeds: the call routed to a dead node fails, refreshes the slot map and goes to the
    /// new owner; on a node still alive it is a no-op. The confirmation clears the cache
    /// like every resubscription.
    fn resubscribe(self: &Arc<Self>) {
        if self.resubscribing.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let done = match store.link.conn().await {
                    Ok((_, mut conn)) => {
                        match tokio::time::timeout(
                            store.read_timeout.max(Duration::from_secs(1)),
                            conn.subscribe(&store.link.channel),
                        )
                        .await
                        {
                            Ok(Ok(())) => true,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "subscribing again to the cluster");
                                false
                            }
                            Err(_) => false,
                        }
                    }
                    Err(_) => false,
                };
                if done {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            store.resubscribing.store(false, Ordering::Release);
        });
    }
}
