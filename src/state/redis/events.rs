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

    pub(super) async fn listen(&self, mut rx: UnboundedReceiver<PushInfo>) {
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
                }
                PushKind::Subscribe => {
                    self.emit(Invalidation::Resubscribed);
                }
                _ => {}
            }
        }
    }
}
