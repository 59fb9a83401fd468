//! Request bodies read whole, within a size limit (refused early when the declared length
//! already exceeds it) and optionally a time limit: the admin API's JSON and enrollment's
//! forms and CSRs. The proxy never reads bodies; it streams them.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body too large")]
    TooLarge,
    #[error("request body not received in time")]
    TimedOut,
    #[error("could not read the request body")]
    Unreadable,
}

/// Reads `body` (whose request carried `headers`) whole: at most `max` bytes, within
/// `timeout` when one is given.
pub async fn read_limited<B>(
    headers: &HeaderMap,
    body: B,
    max: usize,
    timeout: Option<Duration>,
) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let collect = Limited::new(body, max).collect();
    let collected = match timeout {
        Some(t) => tokio::time::timeout(t, collect)
            .await
            .map_err(|_| BodyError::TimedOut)?,
        None => collect.await,
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Unreadable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn limits_by_declared_and_by_actual_length() {
        let mut h = HeaderMap::new();
        let body = || Full::new(Bytes::from_static(b"0123456789"));
        assert_eq!(
            read_limited(&h, body(), 10, None).await.unwrap(),
            Bytes::from_static(b"0123456789")
        );
        assert_eq!(
            read_limited(&h, body(), 9, None).await,
            Err(BodyError::TooLarge)
        );
        h.insert(CONTENT_LENGTH, "100".parse().unwrap());
        assert_eq!(
            read_limited(&h, Full::new(Bytes::new()), 10, None).await,
            Err(BodyError::TooLarge)
        );
    }
}
