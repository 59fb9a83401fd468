//! The client's request body on its way upstream, remembering whether reading it failed:
//! a malformed chunked body (or a client that stopped sending) makes the upstream request
//! fail, and that is the client's fault (400), not the upstream's (502).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::core::outcome::Page;

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
    failed: Arc<AtomicBool>,
}

impl ClientBody {
    /// The body, and the flag that is set once reading it failed.
    pub(super) fn new(inner: Incoming) -> (Self, Arc<AtomicBool>) {
        let failed = Arc::new(AtomicBool::new(false));
        let body = ClientBody {
            inner,
            failed: failed.clone(),
        };
        (body, failed)
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
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.failed.store(true, Ordering::Release);
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
