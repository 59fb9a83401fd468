//! The app behind the gateway: a hyper server on `127.0.0.1:0` (h1, and h2 with prior
//! knowledge) that records every request it gets.
//!
//! - any path: echoes a JSON body `{method, uri, version, headers: [[name, value], …],
//!   body_len}` with every header exactly as received, duplicates included;
//! - `/stream?bytes=N`: a chunked body of `N` bytes of [`stream_byte`];
//! - `/slow…`: answers after a minute (longer than any `upstream.response_timeout` used);
//! - `/ws…`: answers a WebSocket-style upgrade with 101, then echoes every byte back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What one request looked like when it reached the upstream.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Byte `i` of a `/stream` body.
pub fn stream_byte(i: usize) -> u8 {
    (i % 251) as u8
}

type RespBody = BoxBody<Bytes, Infallible>;

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let open: Arc<AtomicUsize> = Arc::default();
        let open2 = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                let open = open2.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, seen.clone()));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            seen,
            open,
            task,
        }
    }

    /// Connections from the gateway open right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Requests received whose path starts with `prefix`.
    pub fn seen_with_prefix(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.uri.starts_with(prefix))
            .collect()
    }
}

async fn handle(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<RespBody>, Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    seen.lock().expect("seen lock").push(Seen {
        method: req.method().to_string(),
        uri: uri.clone(),
        headers: headers.clone(),
    });
    let path = req.uri().path().to_string();

    if path.starts_with("/ws") {
        let account = req
            .headers()
            .get("x-client-account")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = io.flush().await;
                        }
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-upstream-saw-account", account)
            .body(empty())
            .expect("101 response");
        return Ok(resp);
    }

    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return Ok(Response::new(full("too late")));
    }

    if path.starts_with("/stream") {
        let n: usize = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1 << 20);
        let body = Counting { sent: 0, total: n };
        return Ok(Response::new(BoxBody::new(body)));
    }

    let version = format!("{:?}", req.version());
    let method = req.method().to_string();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let echo: Value = json!({
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "body_len": body_len,
    });
    let mut resp = Response::builder().header("content-type", "application/json");
    // `?set-sid=V` answers like an application's sign-in: it sets the session cookie `sid`.
    if let Some(v) = uri
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("set-sid=")))
    {
        resp = resp.header(
            "set-cookie",
            format!("sid={v}; Path=/; Secure; HttpOnly; Max-Age=3600"),
        );
    }
    Ok(resp.body(full(echo.to_string())).expect("echo response"))
}

fn full(s: impl Into<Bytes>) -> RespBody {
    BoxBody::new(Full::new(s.into()))
}

fn empty() -> RespBody {
    full(Bytes::new())
}

/// A body produced chunk by chunk (no length up front, so h1 sends it chunked).
struct Counting {
    sent: usize,
    total: usize,
}

impl Body for Counting {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.total {
            return Poll::Ready(None);
        }
        let n = (self.total - self.sent).min(64 * 1024);
        let start = self.sent;
        let chunk: Vec<u8> = (start..start + n).map(stream_byte).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.total
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The JSON echo of one request, as received by the upstream through the gateway.
#[derive(Debug, Clone)]
pub struct Echo {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Echo {
    pub fn parse(body: &[u8]) -> Echo {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "upstream echo is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        let headers = v["headers"]
            .as_array()
            .expect("headers array")
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().expect("name").to_string(),
                    pair[1].as_str().expect("value").to_string(),
                )
            })
            .collect();
        Echo {
            method: v["method"].as_str().unwrap_or_default().to_string(),
            uri: v["uri"].as_str().unwrap_or_default().to_string(),
            version: v["version"].as_str().unwrap_or_default().to_string(),
            headers,
            body_len: v["body_len"].as_u64().unwrap_or_default(),
        }
    }

    /// Every value received for `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The single value of `name`; panics when it is missing or repeated.
    pub fn one(&self, name: &str) -> String {
        let all = self.all(name);
        assert_eq!(
            all.len(),
            1,
            "upstream should see exactly one {name} header, saw {all:?}; all headers: {:?}",
            self.headers
        );
        all[0].clone()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// Header names starting with `prefix` (case-insensitive).
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let p = prefix.to_ascii_lowercase();
        self.headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| k.starts_with(&p))
            .collect()
    }
}
