//! Clients that are not reqwest: the admin API client, and a raw rustls client that shows
//! what reqwest hides (resumed handshakes, alerts, bytes on the wire).
//!
//! `RawClient` keeps one `Arc<ClientConfig>`, so every connection it makes shares the
//! TLS session store: a second connection resumes the first one's TLS 1.3 session.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, ClientConfig, HandshakeKind, RootCertStore};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pki::Leaf;
use super::{STEP, within};

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}), status {}: {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub async fn from_reqwest(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = within("reading a response body", r.bytes())
            .await
            .expect("response body");
        Resp {
            status,
            headers,
            body,
        }
    }
}

/// Why a TLS connection produced no HTTP response.
#[derive(Debug)]
pub struct TlsFailure {
    /// The alert the gateway sent, when one arrived.
    pub alert: Option<AlertDescription>,
    pub error: String,
}

fn alert_of(e: &io::Error) -> Option<AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

fn failure(e: io::Error) -> TlsFailure {
    TlsFailure {
        alert: alert_of(&e),
        error: e.to_string(),
    }
}

pub struct RawClient {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl RawClient {
    pub fn new(
        addr: SocketAddr,
        server_ca: &CertificateDer<'static>,
        identity: Option<&Leaf>,
    ) -> Self {
        Self::build(addr, server_ca, identity, vec![b"http/1.1".to_vec()])
    }

    /// Same, offering `alpn` instead of `http/1.1`.
    pub fn build(
        addr: SocketAddr,
        server_ca: &CertificateDer<'static>,
        identity: Option<&Leaf>,
        alpn: Vec<Vec<u8>>,
    ) -> Self {
        let mut roots = RootCertStore::empty();
        roots.add(server_ca.clone()).expect("server CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.cert_der()], leaf.key())
                .expect("client auth cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        RawClient {
            addr,
            config: Arc::new(config),
            server_name: ServerName::try_from("localhost").expect("server name"),
        }
    }

    /// Uses `name` as SNI (and for checking the server certificate).
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = ServerName::try_from(name.to_string()).expect("server name");
        self
    }

    /// TCP connect plus TLS handshake (client side). In TLS 1.3 the server checks the client
    /// certificate after the client finished, so a refused certificate usually shows up on
    /// the first read, not here; see [`RawClient::get_or_refused`].
    pub async fn connect(&self) -> Result<TlsConn, TlsFailure> {
        self.connect_after(&[]).await
    }

    /// Like [`RawClient::connect`], writing `prefix` (e.g. a PROXY protocol header) on the
    /// TCP connection before the TLS handshake.
    pub async fn connect_after(&self, prefix: &[u8]) -> Result<TlsConn, TlsFailure> {
        let mut tcp = within("TCP connect", TcpStream::connect(self.addr))
            .await
            .map_err(failure)?;
        if !prefix.is_empty() {
            within("write prefix", tcp.write_all(prefix))
                .await
                .map_err(failure)?;
        }
        let connector = TlsConnector::from(self.config.clone());
        let stream = within(
            "TLS handshake",
            connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(failure)?;
        Ok(TlsConn { stream })
    }

    /// Connects and sends `GET path` with `Connection: close`. `Ok` = an HTTP response came
    /// back; `Err` = the connection ended without one (handshake refused).
    pub async fn get_or_refused(&self, path: &str) -> Result<RawResponse, TlsFailure> {
        let mut conn = self.connect().await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        if let Err(e) = conn.stream.write_all(req.as_bytes()).await {
            return Err(failure(e));
        }
        let read = conn.read_until_close(STEP).await;
        match (read.bytes.is_empty(), read.end) {
            (false, _) => Ok(RawResponse::parse(&read.bytes)),
            (true, End::Error(e)) => Err(TlsFailure {
                alert: read.alert,
                error: e,
            }),
            (true, End::Eof) => Err(TlsFailure {
                alert: None,
                error: "closed".into(),
            }),
            (true, End::Timeout) => panic!("no answer and no close within {STEP:?}"),
        }
    }

    /// Asserts the gateway refuses this client during the handshake and returns the alert.
    pub async fn expect_refused(&self, what: &str) -> TlsFailure {
        match self.get_or_refused("/").await {
            Ok(resp) => panic!(
                "{what}: expected the handshake to be refused, got HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ),
            Err(f) => f,
        }
    }
}

/// How reading a connection ended.
#[derive(Debug)]
pub enum End {
    Eof,
    Error(String),
    Timeout,
}

#[derive(Debug)]
pub struct ReadOutcome {
    pub bytes: Vec<u8>,
    pub end: End,
    pub alert: Option<AlertDescription>,
}

/// One established TLS connection.
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
}

impl TlsConn {
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.stream.get_ref().1.handshake_kind()
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads until the peer closes, an error, or `limit` passes.
    pub async fn read_until_close(&mut self, limit: Duration) -> ReadOutcome {
        let mut bytes = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => {
                    return ReadOutcome {
                        bytes,
                        end: End::Timeout,
                        alert: None,
                    };
                }
                Ok(Ok(0)) => {
                    return ReadOutcome {
                        bytes,
                        end: End::Eof,
                        alert: None,
                    };
                }
                Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
                // A peer that closes TCP without close_notify is still a close.
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return ReadOutcome {
                        bytes,
                        end: End::Eof,
                        alert: None,
                    };
                }
                Ok(Err(e)) => {
                    let alert = alert_of(&e);
                    return ReadOutcome {
                        bytes,
                        end: End::Error(e.to_string()),
                        alert,
                    };
                }
            }
        }
    }

    /// Reads until the end of a response head (`\r\n\r\n`), a close, or `limit`.
    pub async fn read_head(&mut self, limit: Duration) -> ReadOutcome {
        let mut bytes = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        let mut byte = [0u8; 1];
        loop {
            if bytes.ends_with(b"\r\n\r\n") {
                return ReadOutcome {
                    bytes,
                    end: End::Eof,
                    alert: None,
                };
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut byte)).await {
                Err(_) => {
                    return ReadOutcome {
                        bytes,
                        end: End::Timeout,
                        alert: None,
                    };
                }
                Ok(Ok(0)) => {
                    return ReadOutcome {
                        bytes,
                        end: End::Eof,
                        alert: None,
                    };
                }
                Ok(Ok(_)) => bytes.push(byte[0]),
                Ok(Err(e)) => {
                    let alert = alert_of(&e);
                    return ReadOutcome {
                        bytes,
                        end: End::Error(e.to_string()),
                        alert,
                    };
                }
            }
        }
    }

    /// Hands the connection to a hyper HTTP/1.1 client (keep-alive: every request goes over
    /// this one connection).
    pub async fn into_http1(self) -> H1 {
        let (sender, conn) = within(
            "h1 client handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(self.stream)),
        )
        .await
        .expect("h1 client handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        H1 {
            sender,
            task,
            ended: false,
        }
    }
}

/// A response parsed from raw bytes (status and head only; the body is kept as is).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn parse(bytes: &[u8]) -> RawResponse {
        let text = String::from_utf8_lossy(bytes);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| text.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1 response: {text:?}"));
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4);
        let (head, body) = match split {
            Some(p) => (
                String::from_utf8_lossy(&bytes[..p]).into_owned(),
                bytes[p..].to_vec(),
            ),
            None => (text.into_owned(), Vec::new()),
        };
        RawResponse { status, head, body }
    }
}

/// hyper HTTP/1.1 client over one connection.
pub struct H1 {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
    /// The connection's task has been awaited to its end.
    ended: bool,
}

impl Drop for H1 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H1 {
    /// Sends `method path` with `Host: localhost` unless `headers` sets one. `Err` when the
    /// connection failed or was closed.
    ///
    /// The response is awaited together with the connection's task: hyper's client can
    /// leave a request sent just as the server closes the connection pending forever, so
    /// the connection ending is an answer too.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let mut b = http::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "localhost");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).expect("request");
        if self.ended {
            return Err("connection closed".into());
        }
        within("h1 connection ready", self.sender.ready())
            .await
            .map_err(|e| e.to_string())?;
        let sent = self.sender.send_request(req);
        let resp = within("h1 response", async {
            tokio::select! {
                r = sent => r.map_err(|e| e.to_string()),
                _ = &mut self.task => {
                    self.ended = true;
                    Err("connection closed before the response".to_string())
                }
            }
        })
        .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = within("h1 body", resp.into_body().collect())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// Waits up to `limit` for the server to close the connection; true when it did.
    pub async fn wait_closed(&mut self, limit: Duration) -> bool {
        if self.ended || self.task.is_finished() {
            return true;
        }
        let closed = tokio::time::timeout(limit, &mut self.task).await.is_ok();
        self.ended |= closed;
        closed
    }

    /// `GET path` on a connection whose certificate may just have been revoked or reset:
    /// `None` when the gateway closed the connection instead of answering (open
    /// connections follow the decision), else the answer.
    pub async fn get_or_closed(&mut self, path: &str) -> Option<Resp> {
        self.send("GET", path, &[]).await.ok()
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, &[])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// The admin API over plain HTTP.
pub struct Admin {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(addr: SocketAddr, token: &str) -> Admin {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .build()
            .expect("admin client");
        Admin {
            base: format!("http://{addr}"),
            token: token.to_string(),
            http,
        }
    }

    /// Sends a request with `token` (`None` = no `Authorization` header).
    pub async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = within("admin request", req.send())
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
        Resp::from_reqwest(resp).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send_with(reqwest::Method::GET, path, Some(&self.token.clone()), None)
            .await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Resp {
        self.send_with(reqwest::Method::POST, path, Some(&self.token.clone()), body)
            .await
    }

    /// `POST /v1/certificates/{serial}/revoke`, asserting success.
    pub async fn revoke(&self, serial: &str) {
        let r = self
            .post(
                &format!("/v1/certificates/{serial}/revoke"),
                Some(serde_json::json!({"reason": "keyCompromise"})),
            )
            .await;
        assert!(
            (200..300).contains(&r.status),
            "revoke {serial}: HTTP {} {}",
            r.status,
            r.text()
        );
    }

    /// `POST /v1/accounts/{id}/reset`, asserting success; returns the JSON answer.
    pub async fn reset(&self, account: &str) -> Value {
        let r = self
            .post(&format!("/v1/accounts/{account}/reset"), None)
            .await;
        assert!(
            (200..300).contains(&r.status),
            "reset {account}: HTTP {} {}",
            r.status,
            r.text()
        );
        r.json()
    }

    /// `GET /v1/accounts/{id}` → the account's generation, asserting success.
    pub async fn generation(&self, account: &str) -> u64 {
        let r = self.get(&format!("/v1/accounts/{account}")).await;
        assert_eq!(r.status, 200, "GET account {account}: {}", r.text());
        let v = r.json();
        v["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("account {account} has no numeric generation: {v}"))
    }
}
