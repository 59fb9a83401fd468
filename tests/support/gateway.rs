//! A gateway under test: a temporary folder with the PKI, the token and `certgate.yaml`,
//! the library's `Config::load` + `app::start`, and the clients that talk to it.
//!
//! Everything binds `127.0.0.1:0`; the real ports come back from `app::start`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use certgate::app::Gateway;
use certgate::config::Config;
use tempfile::TempDir;

use super::client::{Admin, RawClient};
use super::pki::{Leaf, Pki, random_token};
use super::upstream::Upstream;
use super::{STEP, within};

/// What the generated `certgate.yaml` says. The defaults are a gateway with optional client
/// auth, the client CA trusted, enrollment on, `/public` public, 1 s header read timeout.
#[derive(Clone, Debug)]
pub struct Options {
    /// `client_auth.mode`.
    pub mode: &'static str,
    /// PEM CRL written to `pki/client-ca.crl.pem` and listed in `client_auth.crls`.
    pub crl: Option<Vec<u8>>,
    pub server_names: Vec<String>,
    pub public: Vec<String>,
    /// `routes.public_upgrades`.
    pub public_upgrades: bool,
    pub xfcc: bool,
    /// `headers.underscores`; `None` leaves the default.
    pub underscores: Option<&'static str>,
    /// Extra YAML lines appended to the `headers:` section (each indented by two spaces).
    pub extra_headers: Vec<String>,
    /// `upstream.url`; `None` = the test upstream.
    pub upstream_url: Option<String>,
    pub connect_timeout: &'static str,
    pub response_timeout: &'static str,
    pub header_read_timeout: &'static str,
    pub max_header_bytes: Option<&'static str>,
    pub enrollment: bool,
    /// Extra YAML lines appended to the `limits:` section (each indented by two spaces).
    pub extra_limits: Vec<String>,
    /// Extra top-level YAML appended verbatim.
    pub extra: String,
    /// `None`: the embedded store. `Some(url)`: `state.backend: redis` on that standalone
    /// server (see `support::redis` for test servers).
    pub redis_url: Option<String>,
    /// Extra YAML lines appended to the `state:` section (each indented by two spaces),
    /// e.g. `cache:` settings or a whole `redis:` block for sentinel mode.
    pub extra_state: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: "optional",
            crl: None,
            server_names: Vec::new(),
            public: vec!["/public".into()],
            public_upgrades: false,
            xfcc: false,
            underscores: None,
            extra_headers: Vec::new(),
            upstream_url: None,
            connect_timeout: "2s",
            response_timeout: "10s",
            header_read_timeout: "1s",
            max_header_bytes: None,
            enrollment: true,
            extra_limits: Vec::new(),
            extra: String::new(),
            redis_url: None,
            extra_state: Vec::new(),
        }
    }
}

/// The files of one test setup, written but not started (the CLI tests stop here).
pub struct Prepared {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub token: String,
    pub pki: Pki,
    pub upstream: Upstream,
    pub options: Options,
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create folder");
    }
    std::fs::write(path, contents).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Prepared {
    /// Generates the PKI, starts the upstream and writes every file.
    pub async fn new(options: Options) -> Prepared {
        let dir = tempfile::Builder::new()
            .prefix("certgate-test-")
            .tempdir()
            .expect("tempdir");
        let pki = Pki::new();
        let upstream = Upstream::start().await;
        let token = random_token();
        let root = dir.path();

        write(
            &root.join("pki/server.pem"),
            format!("{}{}", pki.server.cert_pem, pki.server_ca.cert_pem),
            0o644,
        );
        write(&root.join("pki/server.key"), &pki.server.key_pem, 0o600);
        write(
            &root.join("pki/client-ca.pem"),
            &pki.client_ca.cert_pem,
            0o644,
        );
        write(
            &root.join("pki/enroll-ca.pem"),
            &pki.enroll_ca.cert_pem,
            0o644,
        );
        write(
            &root.join("pki/enroll-ca.key"),
            pki.enroll_ca.key_pem(),
            0o600,
        );
        write(&root.join("secrets/admin-token"), &token, 0o600);
        std::fs::create_dir_all(root.join("data")).expect("data folder");
        if options.redis_url.is_none() {
            // As `certgate init` does: the gateway never creates its store by itself.
            certgate::state::embedded::EmbeddedStore::open_or_create(
                &root.join("data/certgate.db"),
            )
            .expect("create the embedded store");
        }
        if let Some(crl) = &options.crl {
            write(&root.join("pki/client-ca.crl.pem"), crl, 0o644);
        }

        let config_path = root.join("certgate.yaml");
        let prepared = Prepared {
            dir,
            config_path,
            token,
            pki,
            upstream,
            options,
        };
        write(&prepared.config_path, prepared.yaml(), 0o644);
        prepared
    }

    /// The YAML written to `certgate.yaml`.
    pub fn yaml(&self) -> String {
        let o = &self.options;
        let upstream_url = o
            .upstream_url
            .clone()
            .unwrap_or_else(|| self.upstream.url());
        let mut y = String::new();
        let _ = writeln!(y, "# written by the certgate integration tests");
        let _ = writeln!(y, "listen: \"127.0.0.1:0\"");
        if !o.server_names.is_empty() {
            let _ = writeln!(y, "server_names: {}", yaml_list(&o.server_names));
        }
        let _ = writeln!(y, "tls:");
        let _ = writeln!(y, "  cert: pki/server.pem");
        let _ = writeln!(y, "  key: pki/server.key");
        let _ = writeln!(y, "client_auth:");
        let _ = writeln!(y, "  mode: {}", o.mode);
        let _ = writeln!(y, "  trusted_cas: [pki/client-ca.pem]");
        if o.crl.is_some() {
            let _ = writeln!(y, "  crls: [pki/client-ca.crl.pem]");
        }
        let _ = writeln!(y, "upstream:");
        let _ = writeln!(y, "  url: {upstream_url:?}");
        let _ = writeln!(y, "  connect_timeout: {}", o.connect_timeout);
        let _ = writeln!(y, "  response_timeout: {}", o.response_timeout);
        let _ = writeln!(y, "routes:");
        let _ = writeln!(y, "  public: {}", yaml_list(&o.public));
        if o.public_upgrades {
            let _ = writeln!(y, "  public_upgrades: true");
        }
        let _ = writeln!(y, "headers:");
        let _ = writeln!(y, "  xfcc: {}", o.xfcc);
        if let Some(u) = o.underscores {
            let _ = writeln!(y, "  underscores: {u}");
        }
        for line in &o.extra_headers {
            let _ = writeln!(y, "  {line}");
        }
        let _ = writeln!(y, "state:");
        match &o.redis_url {
            None => {
                let _ = writeln!(y, "  backend: embedded");
                let _ = writeln!(y, "  path: data/certgate.db");
            }
            Some(url) => {
                let _ = writeln!(y, "  backend: redis");
                let _ = writeln!(y, "  redis:");
                let _ = writeln!(y, "    url: {url:?}");
            }
        }
        for line in &o.extra_state {
            let _ = writeln!(y, "  {line}");
        }
        let _ = writeln!(y, "enrollment:");
        if o.enrollment {
            let _ = writeln!(y, "  enabled: true");
            let _ = writeln!(y, "  ca_cert: pki/enroll-ca.pem");
            let _ = writeln!(y, "  ca_key: pki/enroll-ca.key");
            let _ = writeln!(y, "  public_url: \"https://localhost:8443\"");
        } else {
            let _ = writeln!(y, "  enabled: false");
        }
        let _ = writeln!(y, "admin:");
        let _ = writeln!(y, "  listen: \"127.0.0.1:0\"");
        let _ = writeln!(y, "  token_file: secrets/admin-token");
        let _ = writeln!(y, "metrics:");
        let _ = writeln!(y, "  listen: \"127.0.0.1:0\"");
        let _ = writeln!(y, "limits:");
        let _ = writeln!(y, "  header_read_timeout: {}", o.header_read_timeout);
        if let Some(max) = o.max_header_bytes {
            let _ = writeln!(y, "  max_header_bytes: {max}");
        }
        for line in &o.extra_limits {
            let _ = writeln!(y, "  {line}");
        }
        let _ = writeln!(y, "log:");
        let _ = writeln!(y, "  level: warn");
        y.push_str(&o.extra);
        y
    }

    /// Writes the CRL (after the leaves it lists exist) and adds it to the config.
    pub fn set_crl(&mut self, crl: Vec<u8>) {
        write(&self.dir.path().join("pki/client-ca.crl.pem"), &crl, 0o644);
        self.options.crl = Some(crl);
        write(&self.config_path, self.yaml(), 0o644);
    }

    pub fn load_config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|e| {
            panic!(
                "Config::load refused the test config: {e}\n--- certgate.yaml ---\n{}",
                self.yaml()
            )
        })
    }

    /// Loads the config and starts the gateway.
    pub async fn start(self) -> Harness {
        let gateway = start_gateway(self.load_config()).await;
        Harness {
            prepared: self,
            gateway: Some(gateway),
        }
    }
}

async fn start_gateway(config: Config) -> Gateway {
    within("app::start", certgate::app::start(config))
        .await
        .unwrap_or_else(|e| panic!("app::start failed: {e:#}"))
}

/// A running gateway with its files, PKI and upstream.
pub struct Harness {
    pub prepared: Prepared,
    gateway: Option<Gateway>,
}

impl std::ops::Deref for Harness {
    type Target = Prepared;
    fn deref(&self) -> &Prepared {
        &self.prepared
    }
}

impl Harness {
    /// The default gateway.
    pub async fn start() -> Harness {
        Harness::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Harness {
        super::test_log();
        Prepared::new(options).await.start().await
    }

    fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    pub fn listen(&self) -> SocketAddr {
        self.gateway().listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.gateway().admin
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.gateway().metrics
    }

    /// The running gateway's state cache (its store is `cache().store()`), for tests that
    /// must put records the admin API cannot make (an expired or stale ticket).
    pub fn cache(&self) -> std::sync::Arc<certgate::state::cache::StateCache> {
        self.gateway().cache.clone()
    }

    /// `https://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.listen().port())
    }

    fn client_builder(&self, identity: Option<&Leaf>) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(self.pki.server_ca.cert_pem.as_bytes())
            .expect("server CA");
        let mut b = reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve("localhost", self.listen())
            .no_proxy()
            .timeout(STEP)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(leaf) = identity {
            b = b.identity(leaf.reqwest_identity());
        }
        b
    }

    /// A reqwest client that negotiates h2 by ALPN.
    pub fn client(&self, identity: Option<&Leaf>) -> reqwest::Client {
        self.client_builder(identity)
            .build()
            .expect("reqwest client")
    }

    /// A reqwest client limited to HTTP/1.1.
    pub fn client_h1(&self, identity: Option<&Leaf>) -> reqwest::Client {
        self.client_builder(identity)
            .http1_only()
            .build()
            .expect("reqwest client")
    }

    /// The admin API with the right token.
    pub fn admin(&self) -> Admin {
        Admin::new(self.admin_addr(), &self.token)
    }

    /// A raw TLS client (HTTP/1.1 ALPN, SNI `localhost`), with its own resumption store.
    pub fn raw(&self, identity: Option<&Leaf>) -> RawClient {
        RawClient::new(self.listen(), &self.pki.server_ca.der, identity)
    }

    /// Changes the options and rewrites `certgate.yaml` (the running gateway notices the
    /// change through its file watcher, or on [`Harness::reload`]).
    pub fn rewrite_config(&mut self, change: impl FnOnce(&mut Options)) {
        change(&mut self.prepared.options);
        write(&self.prepared.config_path, self.prepared.yaml(), 0o644);
    }

    /// Writes `text` as `certgate.yaml` verbatim.
    pub fn write_config_text(&self, text: &str) {
        write(&self.prepared.config_path, text, 0o644);
    }

    /// Replaces a file of the test folder (e.g. `pki/server.pem`).
    pub fn write_file(&self, rel: &str, contents: impl AsRef<[u8]>, mode: u32) {
        write(&self.prepared.dir.path().join(rel), contents, mode);
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr());
        let r = within("GET /metrics", reqwest::Client::new().get(url).send())
            .await
            .expect("metrics");
        within("metrics body", r.text())
            .await
            .expect("metrics body")
    }

    /// Reloads the configuration now (what SIGHUP does).
    pub async fn reload(&self) -> Result<(), certgate::reload::ReloadError> {
        within("reload", self.gateway().reloader.reload()).await
    }

    /// Stops the gateway, keeping its files (the store file among them).
    pub async fn stop(&mut self) {
        if let Some(gw) = self.gateway.take() {
            within("Gateway::shutdown", gw.shutdown()).await;
        }
    }

    /// Stops the gateway and starts a new one from the same files (same store file).
    pub async fn restart(&mut self) {
        self.stop().await;
        let config = self.prepared.load_config();
        self.gateway = Some(start_gateway(config).await);
    }

    pub async fn shutdown(mut self) {
        if let Some(gw) = self.gateway.take() {
            within("Gateway::shutdown", gw.shutdown()).await;
        }
    }
}

/// An address nothing listens on (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}
