//! The client's request body on its way upstream, counting its bytes (for the access log)
//! and remembering whether reading it failed:
//! a malformed chunked body (or a client that stopped sending) makes the upstream request
//! fail, and that is the client's fault (400), not the upstream's (502).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::core::outcome::Page;
use crate::proxy::access::BodyStats;

/// What a client whose body could not be read is told.
pub(super) const BAD_BODY: Page = Page {
    status: http::StatusCode::BAD_REQUEST,
    token: "bad_request",
    title: "Bad request",
    message: "The request body could not be read: its chunked encoding is malformed, or it ended early.",
    steps: &["Send the request again."],
};

pub(super) struct ClientBody {
    inner: Incoming,
    stats: Arc<BodyStats>,
}

impl ClientBody {
    /// The body, and what reading it shows: whether it failed, how many bytes were read.
    pub(super) fn new(inner: Incoming) -> (Self, Arc<BodyStats>) {
        let stats = Arc::new(BodyStats::default());
        let body = ClientBody {
            inner,
            stats: stats.clone(),
        };
        (body, stats)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => this.stats.failed.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.stats
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
