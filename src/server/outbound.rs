//! Responses on their way to the client.
//!
//! Every response body a connection serves is wrapped in an [`Outbound`], which does two
//! things:
//!
//! - **Send timeout.** It tells the connection's [`Activity`] when it holds data the
//!   client has not taken: from the moment the response head is handed over until the
//!   connection asks for the body's next chunk. A client that stops reading (HTTP/1.1: its
//!   TCP window closes, hyper's write buffer fills and the body is no longer polled;
//!   HTTP/2: it never opens the flow-control window, so the body is never polled at all)
//!   leaves data owed; when nothing owed has been taken for `limits.send_timeout` the
//!   watchdog drops the connection, and with it every stream's upstream response (the
//!   upstream connections are released). A response waiting for the upstream is not
//!   owed: the connection is waiting for us, not the client.
//! - **Response buffer budget.** Each chunk handed to hyper carries its share of
//!   `limits.response_buffer`, the bound on response bytes buffered in all connections
//!   together (HTTP/2 queues a stream's frames until the client's window and the socket
//!   take them), returned when hyper has written and dropped the chunk. A body whose
//!   chunk does not fit waits until enough is returned (one chunk larger than the whole
//!   budget goes through alone). Per connection, HTTP/2 buffers at most
//!   [`H2_STREAM_BUFFER`] per stream and HTTP/1.1 at most its write buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use super::budget::Budget;
use super::watchdog::Activity;
use crate::proxy::Pending;
use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

/// Bytes HTTP/2 may buffer per stream ahead of the client's flow-control window and the
/// socket (hyper's `max_send_buf_size`; its default is 400 KiB).
pub const H2_STREAM_BUFFER: usize = 64 * 1024;

/// A chunk of a response body, holding its share of the [`Budget`] until hyper has
/// written it and drops it; until then it counts as data owed to the client.
pub struct Metered {
    bytes: Bytes,
    /// `None` for the (dataless) frames that carry trailers.
    activity: Option<Arc<Activity>>,
    /// What was taken from the budget (the chunk's size when handed out).
    taken: usize,
}

impl Buf for Metered {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }
    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }
    fn advance(&mut self, cnt: usize) {
        self.bytes.advance(cnt);
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(a) = self.activity.take() {
            a.budget().give(self.taken);
            // Written (or its stream is gone): the client took it.
            a.settle();
            a.took();
        }
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Counts a body among the budget's waiters while it lives (also when dropped unpolled).
struct Waiter(Arc<Budget>);

impl Waiter {
    fn new(budget: Arc<Budget>) -> Self {
        budget.waiting.fetch_add(1, Ordering::AcqRel);
        Waiter(budget)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body on its way to the client; see the module header.
pub struct Outbound<B> {
    inner: B,
    activity: Arc<Activity>,
    /// Counted as owed in `activity`.
    owed: bool,
    /// A chunk that did not fit in the budget yet, and the wait for room.
    held: Option<Bytes>,
    wait: Option<Wait>,
    /// The request's access-log line, written when this body is done; with the bytes
    /// handed out so far and whether the end was reached.
    access: Option<Box<Access>>,
}

struct Access {
    record: Pending,
    bytes: u64,
    complete: bool,
}

impl<B: Body> Outbound<B> {
    pub fn new(inner: B, activity: Arc<Activity>) -> Self {
        // An empty body is never asked for: nothing is owed.
        let owed = !inner.is_end_stream();
        if owed {
            activity.owe();
        }
        Outbound {
            inner,
            activity,
            owed,
            held: None,
            wait: None,
            access: None,
        }
    }

    /// Writes `record` to the access log when the body is done.
    pub fn with_access(mut self, record: Option<Pending>) -> Self {
        self.access = record.map(|record| {
            Box::new(Access {
                record,
                bytes: 0,
                complete: self.inner.is_end_stream(),
            })
        });
        self
    }
}

impl<B> Drop for Outbound<B> {
    fn drop(&mut self) {
        if self.owed {
            self.activity.settle();
        }
        if let Some(a) = self.access.take() {
            a.record.0.finish(a.bytes, a.complete);
        }
    }
}

impl<B> Outbound<B> {
    /// `bytes` with its share of the budget, or `None` (held, waiting for room).
    fn meter(&mut self, bytes: Bytes, cx: &mut Context<'_>) -> Option<Metered> {
        let n = bytes.len();
        loop {
            let budget = self.activity.budget();
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_ready() {
                    // Room was returned: take a fresh turn.
                    self.wait = None;
                } else if !budget.try_take(n) {
                    // Registered for the next release (the attempt after registering
                    // catches one that came in between).
                    self.held = Some(bytes);
                    return None;
                } else {
                    self.wait = None;
                    return Some(self.metered(bytes));
                }
            }
            if budget.try_take(n) {
                return Some(self.metered(bytes));
            }
            let waiter = Waiter::new(budget.clone());
            self.wait = Some(Box::pin(async move {
                let waiter = waiter;
                waiter.0.room.notified().await
            }));
        }
    }

    fn metered(&self, bytes: Bytes) -> Metered {
        let taken = bytes.len();
        self.activity.owe();
        Metered {
            bytes,
            activity: Some(self.activity.clone()),
            taken,
        }
    }
}

impl<B> Body for Outbound<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Metered;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Metered>, B::Error>>> {
        let this = self.get_mut();
        // Asked for more: whatever this body handed out has been taken.
        if this.owed {
            this.owed = false;
            this.activity.settle();
        }
        this.activity.took();
        let bytes = match this.held.take() {
            Some(b) => b,
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(bytes) => bytes,
                    Err(frame) => {
                        // Trailers: no data, so the closure never runs.
                        let frame = frame.map_data(|_| Metered {
                            bytes: Bytes::new(),
                            activity: None,
                            taken: 0,
                        });
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    if let Some(a) = this.access.as_mut() {
                        a.complete = true;
                    }
                    return Poll::Ready(None);
                }
            },
        };
        let Some(m) = this.meter(bytes, cx) else {
            return Poll::Pending;
        };
        if let Some(a) = this.access.as_mut() {
            a.bytes += m.bytes.len() as u64;
            a.complete = this.inner.is_end_stream();
        }
        // Handed out: owed until the connection asks again (unless that was the end).
        if !this.inner.is_end_stream() {
            this.owed = true;
            this.activity.owe();
        }
        Poll::Ready(Some(Ok(Frame::data(m))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::task::{Wake, Waker};

    /// A body of fixed chunks.
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0.is_empty() {
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(Frame::data(self.0.remove(0)))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    struct Wakes(AtomicU32);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn next(
        body: &mut Outbound<Chunks>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Metered>, std::convert::Infallible>>> {
        Pin::new(body).poll_frame(cx)
    }

    fn data(p: Poll<Option<Result<Frame<Metered>, std::convert::Infallible>>>) -> Metered {
        match p {
            Poll::Ready(Some(Ok(f))) => f.into_data().ok().expect("a data frame"),
            _ => panic!("expected a chunk"),
        }
    }

    fn body(chunks: &[usize], budget: &Arc<Budget>) -> (Outbound<Chunks>, Arc<Activity>) {
        let activity = Arc::new(Activity::new(false, budget.clone()));
        let chunks = chunks.iter().map(|n| Bytes::from(vec![7u8; *n])).collect();
        (Outbound::new(Chunks(chunks), activity.clone()), activity)
    }

    #[tokio::test]
    async fn chunks_wait_for_room_in_the_budget_and_go_on_when_it_is_returned() {
        let budget = Budget::new(100);
        let (mut a, _) = body(&[60, 60], &budget);
        let (mut b, _) = body(&[60], &budget);
        let wakes = Arc::new(Wakes(AtomicU32::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);

        let first = data(next(&mut a, &mut cx));
        assert_eq!(budget.used(), 60);
        // 60 more do not fit in 100: both bodies wait, holding their chunk.
        assert!(next(&mut a, &mut cx).is_pending());
        assert!(next(&mut b, &mut cx).is_pending());
        assert_eq!(budget.used(), 60);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // The first chunk is written and dropped: room, and the waiters are woken.
        drop(first);
        assert_eq!(budget.used(), 0);
        assert!(wakes.0.load(Ordering::SeqCst) >= 1, "waiters woken");
        let second = data(next(&mut a, &mut cx));
        assert_eq!(second.remaining(), 60);
        assert!(next(&mut b, &mut cx).is_pending(), "still no room for b");
        drop(second);
        let third = data(next(&mut b, &mut cx));
        assert_eq!(budget.used(), 60);
        drop(third);
        assert!(matches!(next(&mut a, &mut cx), Poll::Ready(None)));
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_whole_budget_goes_through_alone() {
        let budget = Budget::new(10);
        let (mut a, _) = body(&[1000], &budget);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let big = data(next(&mut a, &mut cx));
        assert_eq!(budget.used(), 1000);
        drop(big);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn data_is_owed_from_the_head_until_written() {
        let budget = Budget::new(1 << 20);
        let (mut a, activity) = body(&[10, 10], &budget);
        let t = Duration::from_secs(30);
        assert!(
            activity_owes(&activity, t),
            "owed from the moment the head is handed over"
        );
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let first = data(next(&mut a, &mut cx));
        drop(first);
        // Handed out and asked again: the second chunk is owed until written.
        let second = data(next(&mut a, &mut cx));
        assert!(activity_owes(&activity, t));
        drop(second);
        assert!(matches!(next(&mut a, &mut cx), Poll::Ready(None)));
        drop(a);
        assert!(!activity_owes(&activity, t), "all written: nothing owed");
    }

    fn activity_owes(a: &Activity, t: Duration) -> bool {
        a.stall_deadline(t).is_some()
    }

    use std::time::Duration;
}
