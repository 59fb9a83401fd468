//! The load itself: HTTP/1.1 over TLS with a client certificate, in three modes —
//! keep-alive, a new full handshake per request, a new connection that resumes the TLS
//! session — plus idle connections held open for a memory reading.
//!
//! One thread (a `current_thread` runtime), so `taskset` can give the whole client one core
//! and its CPU use shows whether it, rather than the server, was the limit. Loopback only;
//! every run ends by itself after its duration (or request count), and every network step
//! has a timeout.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::hist::Hist;
use crate::procfs;
use crate::syscalls;

/// Longest a single run may last (warm-up included).
const MAX_RUN: Duration = Duration::from_secs(600);
/// Bound on every connect, handshake and request/response exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Reuse each connection for many requests.
    Keepalive,
    /// A new connection with a full TLS handshake for every request.
    Full,
    /// A new connection for every request that resumes an earlier TLS session.
    Resume,
    /// HTTP/2 (ALPN h2): `--conns` concurrent streams spread over `--h2-conns`
    /// connections, each stream one request at a time.
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kx {
    X25519,
    P256,
}

#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,
    /// Server name sent in SNI and Host.
    #[arg(long, default_value = "localhost")]
    pub sni: String,
    /// The server's leaf certificate (PEM): pinned, so the client spends no time on chain
    /// validation and the measurement is the server's.
    #[arg(long)]
    pub server_cert: PathBuf,
    /// Client certificate chain (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Client private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, value_enum, default_value = "1.3")]
    pub tls: TlsVersion,
    /// The preferred key-exchange group (x25519 also offers P-256 second).
    #[arg(long, value_enum, default_value = "x25519")]
    pub kx: Kx,
    /// `key=value` pairs copied into the JSON result (e.g. server=nginx).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    #[arg(long, value_enum, default_value = "keepalive")]
    pub mode: Mode,
    /// Concurrent connections (each runs one request at a time); in h2 mode, concurrent
    /// streams.
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    /// h2 mode: the connections the streams are spread over.
    #[arg(long, default_value_t = 5)]
    pub h2_conns: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds before the measurement (connections, caches, session tickets).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Stop after this many measured requests.
    #[arg(long)]
    pub requests: Option<u64>,
    #[arg(long, default_value = "/bench")]
    pub path: String,
    /// Server processes whose CPU time is read over the measured window (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// The upstream's process, read the same way.
    #[arg(long)]
    pub upstream_pid: Option<u32>,
    /// Also count the server processes' system calls over the measured window with this
    /// perf binary (`perf stat -e raw_syscalls:sys_enter`).
    #[arg(long)]
    pub perf: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Handshakes in flight while opening.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// Seconds to hold the connections after the last one opened.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    #[arg(long, default_value = "/bench")]
    pub path: String,
    /// Server processes whose memory is read (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
}

/// Accepts exactly the pinned server certificate; handshake signatures are still verified.
#[derive(Debug)]
struct Pinned {
    leaf: Vec<u8>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client configuration: X25519 (or P-256) key exchange, AES-128-GCM only (the same suite
/// whichever server answers), ALPN http/1.1 (or h2), the pinned server certificate.
fn client_config(a: &TlsArgs, resume: bool, h2: bool) -> Result<Arc<ClientConfig>, BoxError> {
    use rustls::CipherSuite as C;
    let mut provider: CryptoProvider = aws_lc_rs::default_provider();
    // P-256 is listed after X25519 because OpenSSL refuses a TLS 1.2 ECDSA P-256 server
    // certificate to a client whose supported groups lack P-256; X25519 is still chosen.
    provider.kx_groups = match a.kx {
        Kx::X25519 => vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1],
        Kx::P256 => vec![aws_lc_rs::kx_group::SECP256R1],
    };
    provider.cipher_suites.retain(|s| {
        matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    let algs = provider.signature_verification_algorithms;
    let leaf = CertificateDer::pem_file_iter(&a.server_cert)?
        .next()
        .ok_or("no certificate in --server-cert")??;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&a.cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&a.key)?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match a.tls {
        TlsVersion::V12 => &[&rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            leaf: leaf.as_ref().to_vec(),
            algs,
        }))
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    cfg.resumption = if resume {
        Resumption::in_memory_sessions(4096)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

/// What one connection is opened with.
pub(crate) struct Target {
    addr: SocketAddr,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    connector: TlsConnector,
}

impl Target {
    pub(crate) fn new(a: &TlsArgs, resume: bool) -> Result<Self, BoxError> {
        Self::with_alpn(a, resume, false)
    }

    fn with_alpn(a: &TlsArgs, resume: bool, h2: bool) -> Result<Self, BoxError> {
        if !a.addr.ip().is_loopback() {
            return Err(format!("{} is not a loopback address", a.addr).into());
        }
        let config = client_config(a, resume, h2)?;
        Ok(Target {
            addr: a.addr,
            name: ServerName::try_from(a.sni.clone())?,
            connector: TlsConnector::from(config.clone()),
            config,
        })
    }

    /// A target with its own session store, like a separate browser: each simulated client
    /// resumes its own sessions (one shared store would hand 50 racing connections the
    /// same few tickets; rustls keeps 8 per server name).
    fn own_sessions(&self) -> Self {
        let mut config = (*self.config).clone();
        config.resumption = Resumption::in_memory_sessions(32);
        let config = Arc::new(config);
        Target {
            addr: self.addr,
            name: self.name.clone(),
            connector: TlsConnector::from(config.clone()),
            config,
        }
    }

    pub(crate) async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        tcp.set_nodelay(true)?;
        tokio::time::timeout(STEP_TIMEOUT, self.connector.connect(self.name.clone(), tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
    }
}

fn request(path: &str, host: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certgate-loadgen\r\nAccept: */*\r\n{conn}\r\n")
        .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How the body of a parsed response head ends.
pub(crate) enum BodyEnd {
    Length(usize),
    Chunked,
    Close,
}

/// Parses a response head: (status, head length, body framing).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, BodyEnd)>, std::io::Error> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| std::io::Error::other("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let mut framing = BodyEnd::Close;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            framing = BodyEnd::Length(
                v.parse()
                    .map_err(|_| std::io::Error::other("bad content-length"))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding")
            && v.to_ascii_lowercase().contains("chunked")
        {
            framing = BodyEnd::Chunked;
        }
    }
    Ok(Some((status, end + 4, framing)))
}

/// Sends `req` and reads one whole response; returns its status. `buf` is reused.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    s.write_all(req).await?;
    s.flush().await?;
    buf.clear();
    let mut head = None;
    loop {
        if head.is_none() {
            head = parse_head(buf)?;
        }
        if let Some((status, hlen, framing)) = &head {
            let done = match framing {
                BodyEnd::Length(n) => buf.len() >= hlen + n,
                BodyEnd::Chunked => buf[*hlen..].ends_with(b"0\r\n\r\n"),
                BodyEnd::Close => false,
            };
            if done {
                return Ok(*status);
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match s.read_buf(buf).await {
            Ok(0) => {
                return match head {
                    Some((status, _, BodyEnd::Close)) => Ok(status),
                    _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
                };
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Counts of one worker, merged at the end.
#[derive(Default)]
struct Stats {
    hist: Hist,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    resumed: u64,
    full: u64,
    retried: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
}

impl Stats {
    fn merge(&mut self, o: &Stats) {
        self.hist.merge(&o.hist);
        self.ok += o.ok;
        self.non_2xx += o.non_2xx;
        self.errors += o.errors;
        self.resumed += o.resumed;
        self.full += o.full;
        self.retried += o.retried;
        for (k, v) in &o.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
    }
}

/// Shared by the workers of one run (single thread: `Rc` and `Cell`).
struct Ctx {
    target: Target,
    mode: Mode,
    req: Vec<u8>,
    host: String,
    path: String,
    measure_from: Instant,
    stop_at: Instant,
    limit: u64,
    measured: Cell<u64>,
    errors_shown: Cell<u32>,
    negotiated: RefCell<Option<Value>>,
}

impl Ctx {
    fn done(&self) -> bool {
        Instant::now() >= self.stop_at || self.measured.get() >= self.limit
    }

    fn error(&self, st: &mut Stats, when: Instant, e: &dyn std::fmt::Display) {
        if when >= self.measure_from {
            st.errors += 1;
        }
        if self.errors_shown.get() < 5 {
            self.errors_shown.set(self.errors_shown.get() + 1);
            eprintln!("loadgen: {e}");
        }
    }

    /// Records a finished request if it finished inside the measured window.
    fn record(&self, st: &mut Stats, started: Instant, status: u16) {
        let now = Instant::now();
        if now < self.measure_from || now >= self.stop_at {
            return;
        }
        self.measured.set(self.measured.get() + 1);
        st.hist
            .record(now.duration_since(started).as_nanos() as u64);
        if (200..300).contains(&status) {
            st.ok += 1;
        } else {
            st.non_2xx += 1;
            *st.statuses.entry(status).or_default() += 1;
        }
    }

    fn note_session(&self, st: &mut Stats, s: &TlsStream<TcpStream>, measured: bool) {
        let conn = s.get_ref().1;
        if measured {
            match conn.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => st.resumed += 1,
                Some(rustls::HandshakeKind::FullWithHelloRetryRequest) => {
                    st.full += 1;
                    st.retried += 1;
                }
                _ => st.full += 1,
            }
        }
        if self.negotiated.borrow().is_none() {
            *self.negotiated.borrow_mut() = Some(json!({
                "version": conn.protocol_version().map(|v| format!("{v:?}")),
                "cipher": conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())),
                "kx": conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
                "alpn": conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
            }));
        }
    }
}

async fn keepalive_worker(ctx: Rc<Ctx>) -> Stats {
    let mut st = Stats::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    'connect: while !ctx.done() {
        let mut s = match ctx.target.connect().await {
            Ok(s) => s,
            Err(e) => {
                ctx.error(&mut st, Instant::now(), &e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        ctx.note_session(&mut st, &s, false);
        while !ctx.done() {
            let t0 = Instant::now();
            match tokio::time::timeout(STEP_TIMEOUT, exchange(&mut s, &ctx.req, &mut buf)).await {
                Ok(Ok(status)) => ctx.record(&mut st, t0, status),
                Ok(Err(e)) => {
                    ctx.error(&mut st, t0, &e);
                    continue 'connect;
                }
                Err(_) => {
                    ctx.error(&mut st, t0, &"request timed out");
                    continue 'connect;
                }
            }
        }
    }
    st
}

async fn connection_worker(ctx: Rc<Ctx>) -> Stats {
    let mut st = Stats::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    let own;
    let target = if ctx.mode == Mode::Resume {
        own = ctx.target.own_sessions();
        &own
    } else {
        &ctx.target
    };
    while !ctx.done() {
        let t0 = Instant::now();
        let mut s = match target.connect().await {
            Ok(s) => s,
            Err(e) => {
                ctx.error(&mut st, t0, &e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match tokio::time::timeout(STEP_TIMEOUT, exchange(&mut s, &ctx.req, &mut buf)).await {
            Ok(Ok(status)) => {
                let now = Instant::now();
                ctx.note_session(&mut st, &s, now >= ctx.measure_from && now < ctx.stop_at);
                ctx.record(&mut st, t0, status);
            }
            Ok(Err(e)) => ctx.error(&mut st, t0, &e),
            Err(_) => ctx.error(&mut st, t0, &"request timed out"),
        }
    }
    st
}

/// One HTTP/2 connection carrying `streams` concurrent streams; reconnects while the run
/// lasts if the connection fails.
async fn h2_connection_worker(ctx: Rc<Ctx>, streams: usize) -> Stats {
    let mut st = Stats::default();
    while !ctx.done() {
        let t0 = Instant::now();
        let tls = match ctx.target.connect().await {
            Ok(s) => s,
            Err(e) => {
                ctx.error(&mut st, t0, &e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            ctx.error(&mut st, t0, &"the server did not choose h2 (ALPN)");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        ctx.note_session(&mut st, &tls, false);
        let (send, conn) =
            match tokio::time::timeout(STEP_TIMEOUT, h2::client::handshake(tls)).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    ctx.error(&mut st, t0, &e);
                    continue;
                }
                Err(_) => {
                    ctx.error(&mut st, t0, &"HTTP/2 handshake timed out");
                    continue;
                }
            };
        let driver = tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                eprintln!("loadgen: HTTP/2 connection: {e}");
            }
        });
        let mut tasks = Vec::with_capacity(streams);
        for _ in 0..streams {
            let (c, send) = (ctx.clone(), send.clone());
            tasks.push(tokio::task::spawn_local(h2_stream_worker(c, send)));
        }
        drop(send);
        for t in tasks {
            match t.await {
                Ok(s) => st.merge(&s),
                Err(_) => st.errors += 1,
            }
        }
        driver.abort();
    }
    st
}

/// One stream at a time on a shared HTTP/2 connection; returns at the end of the run or
/// at the first error (its connection worker then reconnects).
async fn h2_stream_worker(ctx: Rc<Ctx>, mut send: h2::client::SendRequest<bytes::Bytes>) -> Stats {
    let mut st = Stats::default();
    let uri = format!("https://{}{}", ctx.host, ctx.path);
    while !ctx.done() {
        let t0 = Instant::now();
        let one = async {
            send = send.clone().ready().await?;
            let req = http::Request::get(uri.as_str())
                .header("user-agent", "certgate-loadgen")
                .header("accept", "*/*")
                .body(())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let (resp, _) = send.send_request(req, true)?;
            let resp = resp.await?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Ok::<u16, BoxError>(status)
        };
        match tokio::time::timeout(STEP_TIMEOUT, one).await {
            Ok(Ok(status)) => ctx.record(&mut st, t0, status),
            Ok(Err(e)) => {
                ctx.error(&mut st, t0, &e);
                return st;
            }
            Err(_) => {
                ctx.error(&mut st, t0, &"request timed out");
                return st;
            }
        }
    }
    st
}

fn tags(a: &TlsArgs) -> serde_json::Map<String, Value> {
    a.tags
        .iter()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

pub fn run(a: RunArgs) -> Result<Value, BoxError> {
    let total = Duration::from_secs_f64(a.warmup.max(0.0) + a.duration.max(0.1));
    if total > MAX_RUN {
        return Err(format!("warmup + duration must stay under {MAX_RUN:?}").into());
    }
    if a.conns == 0 || a.conns > 20_000 {
        return Err("--conns must be between 1 and 20000".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(a.warmup.max(0.0));
        let stop_at = start + total;
        let close = a.mode != Mode::Keepalive;
        let ctx = Rc::new(Ctx {
            target: Target::with_alpn(&a.tls, a.mode == Mode::Resume, a.mode == Mode::H2)?,
            mode: a.mode,
            req: request(&a.path, &a.tls.sni, close),
            host: a.tls.sni.clone(),
            path: a.path.clone(),
            measure_from,
            stop_at,
            limit: a.requests.unwrap_or(u64::MAX),
            measured: Cell::new(0),
            errors_shown: Cell::new(0),
            negotiated: RefCell::new(None),
        });
        // perf attaches during the warm-up, counting nothing until the window opens.
        let mut counter = a.perf.as_ref().and_then(|perf| {
            let limit = total + Duration::from_secs(2);
            syscalls::Counter::start(perf, &a.server_pid, limit)
                .inspect_err(|e| eprintln!("loadgen: system calls not counted: {e}"))
                .ok()
        });
        let mut workers = Vec::with_capacity(a.conns);
        if a.mode == Mode::H2 {
            // The streams spread evenly over the connections.
            let n = a.h2_conns.clamp(1, a.conns);
            for i in 0..n {
                let streams = a.conns / n + usize::from(i < a.conns % n);
                workers.push(tokio::task::spawn_local(h2_connection_worker(
                    ctx.clone(),
                    streams,
                )));
            }
        } else {
            for _ in 0..a.conns {
                let c = ctx.clone();
                workers.push(tokio::task::spawn_local(async move {
                    match c.mode {
                        Mode::Keepalive => keepalive_worker(c).await,
                        Mode::Full | Mode::Resume => connection_worker(c).await,
                        Mode::H2 => unreachable!("h2 runs its own workers"),
                    }
                }));
            }
        }

        tokio::time::sleep_until(measure_from.into()).await;
        // A perf that has not attached by now counts nothing (its count is not used).
        if let Some(c) = counter.as_mut()
            && c.ready(Duration::ZERO)
        {
            c.enable();
        }
        let t0 = Instant::now();
        let cores0 = procfs::core_ticks();
        let server0 = procfs::cpu_all(&a.server_pid);
        let up0 = a.upstream_pid.and_then(procfs::cpu);
        let self0 = procfs::self_cpu_seconds();
        tokio::time::sleep_until(stop_at.into()).await;
        let t1 = Instant::now();
        let cores1 = procfs::core_ticks();
        let server1 = procfs::cpu_all(&a.server_pid);
        let up1 = a.upstream_pid.and_then(procfs::cpu);
        let self1 = procfs::self_cpu_seconds();
        if let Some(c) = counter.as_mut() {
            c.disable();
        }

        let mut st = Stats::default();
        let grace = tokio::time::Instant::now() + STEP_TIMEOUT + Duration::from_secs(2);
        for w in workers {
            match tokio::time::timeout_at(grace, w).await {
                Ok(Ok(s)) => st.merge(&s),
                _ => st.errors += 1,
            }
        }
        // After the workers: perf takes a moment to print and exit.
        let syscalls = counter.map(|c| {
            c.finish()
                .inspect_err(|e| eprintln!("loadgen: system calls not counted: {e}"))
                .ok()
        });
        let wall = t1.duration_since(t0).as_secs_f64();
        let n = st.hist.count();
        let server = server1.since(server0);
        let server_cpu = server.total();
        let upstream = up0.zip(up1).map(|(a, b)| b.since(a));
        let syscalls = syscalls.flatten();
        let per_req = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
        let per_req_us = |cpu: f64| {
            if n == 0 {
                Value::Null
            } else {
                json!(cpu * 1e6 / n as f64)
            }
        };
        let mut out = tags(&a.tls);
        eprintln!(
            "    {:<14} {:<13} {:>9.0} /s  p50 {:>7.3} ms  p99 {:>7.3} ms  server CPU {:>6.1} µs/req = {:.1} user + {:.1} kernel ({:.2} cores){}  client {:.2} cores  errors {}  non-2xx {}",
            a.tls.tags.iter().find_map(|t| t.strip_prefix("server=")).unwrap_or("-"),
            a.tls.tags.iter().find_map(|t| t.strip_prefix("case=")).unwrap_or("-"),
            n as f64 / wall,
            ms(st.hist.quantile(0.5)),
            ms(st.hist.quantile(0.99)),
            per_req(server_cpu * 1e6),
            per_req(server.user * 1e6),
            per_req(server.sys * 1e6),
            server_cpu / wall,
            syscalls
                .map(|c| format!("  {:.1} syscalls/req", per_req(c as f64)))
                .unwrap_or_default(),
            (self1 - self0) / wall,
            st.errors,
            st.non_2xx,
        );
        let extra = json!({
            "mode": format!("{:?}", a.mode).to_lowercase(),
            "tls": match a.tls.tls { TlsVersion::V12 => "1.2", TlsVersion::V13 => "1.3" },
            "conns": a.conns,
            "h2_conns": (a.mode == Mode::H2).then(|| a.h2_conns.clamp(1, a.conns)),
            "seconds": wall,
            "requests": n,
            "ok": st.ok,
            "non_2xx": st.non_2xx,
            "statuses": st.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "errors": st.errors,
            "rps": n as f64 / wall,
            "p50_ms": ms(st.hist.quantile(0.50)),
            "p90_ms": ms(st.hist.quantile(0.90)),
            "p99_ms": ms(st.hist.quantile(0.99)),
            "max_ms": ms(st.hist.max()),
            "handshakes_full": st.full,
            "handshakes_resumed": st.resumed,
            "handshakes_hello_retry": st.retried,
            "server_cpu_s": server_cpu,
            "server_cpu_util": server_cpu / wall,
            "server_cpu_us_per_req": per_req_us(server_cpu),
            "server_user_s": server.user,
            "server_sys_s": server.sys,
            "server_user_us_per_req": per_req_us(server.user),
            "server_sys_us_per_req": per_req_us(server.sys),
            "server_syscalls": syscalls,
            "server_syscalls_per_req": match syscalls { Some(c) if n > 0 => json!(c as f64 / n as f64), _ => Value::Null },
            "upstream_cpu_s": upstream.map(procfs::Cpu::total),
            "upstream_cpu_us_per_req": upstream.map_or(Value::Null, |u| per_req_us(u.total())),
            "upstream_user_us_per_req": upstream.map_or(Value::Null, |u| per_req_us(u.user)),
            "upstream_sys_us_per_req": upstream.map_or(Value::Null, |u| per_req_us(u.sys)),
            "client_cpu_s": self1 - self0,
            "client_cpu_util": (self1 - self0) / wall,
            "core_busy": procfs::core_busy(&cores0, &cores1),
            "negotiated": ctx.negotiated.borrow().clone(),
        });
        if let Value::Object(m) = extra {
            out.extend(m);
        }
        Ok(Value::Object(out))
    })
}

pub fn idle(a: IdleArgs) -> Result<Value, BoxError> {
    if a.conns == 0 || a.conns > 50_000 {
        return Err("--conns must be between 1 and 50000".into());
    }
    if !(0.0..=120.0).contains(&a.hold) {
        return Err("--hold must be between 0 and 120 seconds".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let target = Rc::new(Target::new(&a.tls, false)?);
        let req = Rc::new(request(&a.path, &a.tls.sni, false));
        let sum = |f: fn(u32) -> Option<u64>| -> u64 {
            a.server_pid.iter().filter_map(|p| f(*p)).sum()
        };
        let rss_before = sum(procfs::rss_kb);
        let pss_before = sum(procfs::pss_kb);
        let opened: Rc<RefCell<Vec<TlsStream<TcpStream>>>> =
            Rc::new(RefCell::new(Vec::with_capacity(a.conns)));
        let failed = Rc::new(Cell::new(0u64));
        let sem = Rc::new(tokio::sync::Semaphore::new(a.parallel.max(1)));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let mut tasks = Vec::with_capacity(a.conns);
        for _ in 0..a.conns {
            let (target, req, opened, failed, sem) = (
                target.clone(),
                req.clone(),
                opened.clone(),
                failed.clone(),
                sem.clone(),
            );
            tasks.push(tokio::task::spawn_local(async move {
                let Ok(_permit) = sem.acquire().await else {
                    return;
                };
                if Instant::now() >= deadline {
                    failed.set(failed.get() + 1);
                    return;
                }
                let mut buf = Vec::new();
                let r = async {
                    let mut s = target.connect().await?;
                    let status =
                        tokio::time::timeout(STEP_TIMEOUT, exchange(&mut s, &req, &mut buf))
                            .await
                            .map_err(|_| std::io::Error::other("request timed out"))??;
                    if !(200..300).contains(&status) {
                        return Err(std::io::Error::other(format!("status {status}")));
                    }
                    Ok::<_, std::io::Error>(s)
                }
                .await;
                match r {
                    Ok(s) => opened.borrow_mut().push(s),
                    Err(e) => {
                        if failed.get() < 5 {
                            eprintln!("loadgen: {e}");
                        }
                        failed.set(failed.get() + 1);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let open_secs = started.elapsed().as_secs_f64();
        // Let the server settle (buffers shrink after the first request), then read.
        tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
        let rss = sum(procfs::rss_kb);
        let pss = sum(procfs::pss_kb);
        // Every task has finished: the streams can leave the shared cell.
        let mut streams = std::mem::take(&mut *opened.borrow_mut());
        let held = streams.len();
        // Every connection still open? A read would block; a closed one returns at once.
        let mut closed = 0;
        let mut probe = [0u8; 1];
        for s in streams.iter_mut() {
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_micros(1), s.read(&mut probe)).await
            {
                closed += 1;
            }
        }
        drop(streams);
        let per_conn = |after: u64, before: u64| {
            if held == 0 {
                Value::Null
            } else {
                json!(after.saturating_sub(before) as f64 / held as f64)
            }
        };
        let mut out = tags(&a.tls);
        eprintln!(
            "    {:<14} idle          {held} held ({} failed, {closed} closed by the server) in {open_secs:.1} s; server RSS {:.0} → {:.0} MiB, PSS {:.0} → {:.0} MiB",
            a.tls.tags.iter().find_map(|t| t.strip_prefix("server=")).unwrap_or("-"),
            failed.get(),
            rss_before as f64 / 1024.0,
            rss as f64 / 1024.0,
            pss_before as f64 / 1024.0,
            pss as f64 / 1024.0,
        );
        let extra = json!({
            "mode": "idle",
            "tls": match a.tls.tls { TlsVersion::V12 => "1.2", TlsVersion::V13 => "1.3" },
            "conns": a.conns,
            "held": held,
            "closed_by_server": closed,
            "failed": failed.get(),
            "open_seconds": open_secs,
            "rss_before_kb": rss_before,
            "rss_kb": rss,
            "pss_before_kb": pss_before,
            "pss_kb": pss,
            "rss_per_conn_kb": per_conn(rss, rss_before),
            "pss_per_conn_kb": per_conn(pss, pss_before),
        });
        if let Value::Object(m) = extra {
            out.extend(m);
        }
        Ok(Value::Object(out))
    })
}

/// One request, its response head and body printed (to see what a server forwards).
pub fn probe(a: TlsArgs, path: String) -> Result<String, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let target = Target::new(&a, false)?;
        let mut s = target.connect().await?;
        let mut buf = Vec::new();
        let req = request(&path, &a.sni, true);
        tokio::time::timeout(STEP_TIMEOUT, exchange(&mut s, &req, &mut buf))
            .await
            .map_err(|_| "request timed out")??;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })
}
