//! Headless Chromium driven over the DevTools protocol, for tests that must see what a user
//! sees: the enrollment page, the download, the certificate the browser presents.
//!
//! The protocol runs over `--remote-debugging-pipe` (JSON messages ending in a NUL byte,
//! read from fd 3 and written to fd 4), so no WebSocket client and no port are needed: a
//! tiny `sh` wrapper maps the child's stdin/stdout pipes onto fds 3 and 4.
//!
//! The browser's certificate store is the NSS database under `$HOME/.pki/nssdb`; [`Nss`]
//! makes one in a temporary home and trusts the test server CA in it. Which client
//! certificate to present is a managed policy (`AutoSelectCertificateForUrls`) in a
//! uniquely named file under `/etc/chromium/policies/managed/`, removed on drop
//! ([`AutoSelectPolicy`]). Every wait is bounded: when a matching certificate exists and
//! no rule picks it, headless Chromium waits for a chooser that never appears.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::enroll::run_ok;

/// The bound on one protocol command or one awaited event.
pub const WAIT: Duration = Duration::from_secs(30);

/// The folder managed policies are read from (compiled into Debian's chromium).
pub const POLICY_DIR: &str = "/etc/chromium/policies/managed";

/// An NSS database in a temporary home (`$HOME/.pki/nssdb`).
pub struct Nss {
    pub home: PathBuf,
}

impl Nss {
    /// Creates the database (no password) under `home` and trusts `server_ca_pem` for TLS
    /// servers.
    pub fn new(home: &Path, server_ca_pem: &str) -> Nss {
        let nss = Nss {
            home: home.to_path_buf(),
        };
        std::fs::create_dir_all(nss.dir()).expect("nssdb folder");
        run_ok(
            "certutil",
            &["-N", "-d", &nss.db(), "--empty-password"],
            None,
        );
        let ca = home.join("server-ca.pem");
        std::fs::write(&ca, server_ca_pem).expect("server CA");
        run_ok(
            "certutil",
            &[
                "-A",
                "-d",
                &nss.db(),
                "-n",
                "certgate test server CA",
                "-t",
                "C,,",
                "-i",
                &ca.display().to_string(),
            ],
            None,
        );
        nss
    }

    pub fn dir(&self) -> PathBuf {
        self.home.join(".pki/nssdb")
    }

    /// `sql:<dir>` for the NSS tools.
    pub fn db(&self) -> String {
        format!("sql:{}", self.dir().display())
    }

    /// Imports a PKCS#12 file with `pk12util`; returns its output.
    pub fn import_p12(&self, p12: &Path, passphrase: &str) -> String {
        run_ok(
            "pk12util",
            &[
                "-i",
                &p12.display().to_string(),
                "-d",
                &self.db(),
                "-W",
                passphrase,
                "-K",
                "",
            ],
            None,
        )
    }
}

/// A managed `AutoSelectCertificateForUrls` policy for one origin, in its own file; the
/// file is removed on drop.
///
/// Chromium does not merge one policy set in several files (one of them wins), so tests
/// running at the same time in other processes would replace each other's rule and leave
/// a browser waiting for a chooser. An exclusive `flock` on a lock file in the temporary
/// folder is held for the policy's life: such tests take turns.
pub struct AutoSelectPolicy {
    path: PathBuf,
    _lock: std::fs::File,
}

impl AutoSelectPolicy {
    /// Writes the policy. Fails (with the reason) when the folder cannot be written.
    pub fn install(origin: &str) -> Result<AutoSelectPolicy, String> {
        let dir = Path::new(POLICY_DIR);
        std::fs::create_dir_all(dir).map_err(|e| format!("{POLICY_DIR}: {e}"))?;
        // Outside the policy folder: Chromium reads every file there.
        let lock_path = std::env::temp_dir().join("certgate-test-chromium-policy.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: flock(2) on a descriptor this function owns; blocks until it is free.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "{}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let mut rnd = [0u8; 8];
        aws_lc_rs::rand::fill(&mut rnd).expect("random");
        let name = format!(
            "certgate-test-{}-{}.json",
            std::process::id(),
            super::pki::hex(&rnd)
        );
        let path = dir.join(name);
        let rule = json!({ "pattern": origin, "filter": {} }).to_string();
        let policy = json!({ "AutoSelectCertificateForUrls": [rule] });
        std::fs::write(&path, policy.to_string())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(AutoSelectPolicy { path, _lock: lock })
    }
}

impl Drop for AutoSelectPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One headless Chromium process.
pub struct Browser {
    child: Child,
    input: ChildStdin,
    messages: mpsc::UnboundedReceiver<Value>,
    /// Events read while waiting for something else.
    backlog: VecDeque<Value>,
    next_id: u64,
    pub log: PathBuf,
}

/// A tab, attached with a flat session.
#[derive(Debug, Clone)]
pub struct Tab {
    pub session: String,
}

impl Browser {
    /// Starts Chromium with `HOME` = `home` (its NSS database) and a fresh profile in
    /// `profile`. Its stderr goes to `profile/chromium.log`.
    pub async fn launch(home: &Path, profile: &Path) -> Browser {
        std::fs::create_dir_all(profile).expect("profile folder");
        let log = profile.join("chromium.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--no-proxy-server",
            "--password-store=basic",
            "--window-size=1200,900",
            "--host-resolver-rules=MAP localhost 127.0.0.1",
            "--remote-debugging-pipe",
        ];
        let mut cmd = Command::new("sh");
        // fd 3 = our writes (the child's stdin), fd 4 = our reads (the child's stdout).
        cmd.arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 </dev/null >/dev/null")
            .arg("chromium")
            .args(args)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().expect("start chromium");
        let input = child.stdin.take().expect("stdin");
        let output = child.stdout.take().expect("stdout");
        let (tx, messages) = mpsc::unbounded_channel();
        // A plain thread reads the pipe (std I/O; it ends when Chromium closes it).
        std::thread::spawn(move || {
            let mut reader = BufReader::new(output);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            input,
            messages,
            backlog: VecDeque::new(),
            next_id: 1,
            log,
        };
        // The first answer proves the pipe works.
        let v = b.call("Browser.getVersion", json!({}), None).await;
        eprintln!("browser: {}", v["product"]);
        b
    }

    async fn recv(&mut self, deadline: Instant, what: &str) -> Value {
        match tokio::time::timeout_at(deadline, self.messages.recv()).await {
            Ok(Some(v)) => v,
            Ok(None) => panic!(
                "chromium closed the DevTools pipe while waiting for {what}; log:\n{}",
                self.log_tail()
            ),
            Err(_) => panic!(
                "timed out after {WAIT:?} waiting for {what} (a certificate chooser waiting \
                 for an answer looks like this); chromium log:\n{}",
                self.log_tail()
            ),
        }
    }

    /// The last lines of Chromium's stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Sends one command and returns its result; panics on a protocol error.
    pub async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        // Messages are small and Chromium reads them at once: this write does not block.
        self.input
            .write_all(&bytes)
            .and_then(|()| self.input.flush())
            .unwrap_or_else(|e| panic!("{method}: writing to chromium: {e}"));
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.recv(deadline, method).await;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.backlog.push_back(v);
        }
    }

    /// Waits for an event `method` (on `session`, if given) that satisfies `pred`.
    pub async fn event(
        &mut self,
        method: &str,
        session: Option<&str>,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let matches = |v: &Value| {
            v["method"] == method
                && session.is_none_or(|s| v["sessionId"] == s)
                && pred(&v["params"])
        };
        if let Some(i) = self.backlog.iter().position(matches) {
            return self.backlog.remove(i).expect("index")["params"].clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let v = self.recv(deadline, method).await;
            if matches(&v) {
                return v["params"].clone();
            }
            self.backlog.push_back(v);
        }
    }

    /// Every event `method` received so far (on any session), in order, taken out of the
    /// backlog. A round trip first, so the events sent before it are all read.
    pub async fn take_events(&mut self, method: &str) -> Vec<Value> {
        self.call("Browser.getVersion", json!({}), None).await;
        let (taken, kept) = std::mem::take(&mut self.backlog)
            .into_iter()
            .partition::<VecDeque<Value>, _>(|v| v["method"] == method);
        self.backlog = kept;
        taken.into_iter().map(|v| v["params"].clone()).collect()
    }

    /// Downloads go to `dir` under their suggested names, with progress events.
    pub async fn allow_downloads(&mut self, dir: &Path) {
        self.call(
            "Browser.setDownloadBehavior",
            json!({ "behavior": "allow", "downloadPath": dir.display().to_string(), "eventsEnabled": true }),
            None,
        )
        .await;
    }

    /// Opens a new tab on `about:blank`.
    pub async fn tab(&mut self) -> Tab {
        let t = self
            .call("Target.createTarget", json!({ "url": "about:blank" }), None)
            .await;
        let target = t["targetId"].as_str().expect("targetId").to_string();
        let a = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
                None,
            )
            .await;
        let tab = Tab {
            session: a["sessionId"].as_str().expect("sessionId").to_string(),
        };
        self.call("Page.enable", json!({}), Some(&tab.session))
            .await;
        tab
    }

    /// Navigates and waits for the load event; panics on a network error.
    pub async fn navigate(&mut self, tab: &Tab, url: &str) {
        self.backlog
            .retain(|v| !(v["method"] == "Page.loadEventFired" && v["sessionId"] == tab.session));
        let r = self
            .call("Page.navigate", json!({ "url": url }), Some(&tab.session))
            .await;
        if let Some(e) = r["errorText"].as_str() {
            panic!(
                "navigating to {url}: {e}\nchromium log:\n{}",
                self.log_tail()
            );
        }
        self.event("Page.loadEventFired", Some(&tab.session), WAIT, |_| true)
            .await;
    }

    /// The document's HTML as the browser holds it (no page script involved).
    pub async fn html(&mut self, tab: &Tab) -> String {
        let doc = self
            .call("DOM.getDocument", json!({ "depth": 0 }), Some(&tab.session))
            .await;
        let root = doc["root"]["nodeId"].clone();
        let h = self
            .call(
                "DOM.getOuterHTML",
                json!({ "nodeId": root }),
                Some(&tab.session),
            )
            .await;
        h["outerHTML"].as_str().unwrap_or_default().to_string()
    }

    /// `document.body.innerText`.
    pub async fn text(&mut self, tab: &Tab) -> String {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": "document.body ? document.body.innerText : ''", "returnByValue": true }),
                Some(&tab.session),
            )
            .await;
        r["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn node(&mut self, tab: &Tab, selector: &str) -> Value {
        let doc = self
            .call("DOM.getDocument", json!({ "depth": 0 }), Some(&tab.session))
            .await;
        let n = self
            .call(
                "DOM.querySelector",
                json!({ "nodeId": doc["root"]["nodeId"], "selector": selector }),
                Some(&tab.session),
            )
            .await;
        assert_ne!(n["nodeId"], json!(0), "no element matches {selector}");
        n["nodeId"].clone()
    }

    /// Focuses the element and types `text`, as a user would (no page script).
    pub async fn type_into(&mut self, tab: &Tab, selector: &str, text: &str) {
        let node = self.node(tab, selector).await;
        self.call("DOM.focus", json!({ "nodeId": node }), Some(&tab.session))
            .await;
        self.call(
            "Input.insertText",
            json!({ "text": text }),
            Some(&tab.session),
        )
        .await;
    }

    /// Clicks the middle of the element with the mouse.
    pub async fn click(&mut self, tab: &Tab, selector: &str) {
        let node = self.node(tab, selector).await;
        let bm = self
            .call(
                "DOM.getBoxModel",
                json!({ "nodeId": node }),
                Some(&tab.session),
            )
            .await;
        let q: Vec<f64> = bm["model"]["content"]
            .as_array()
            .expect("box")
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let x = (q[0] + q[2] + q[4] + q[6]) / 4.0;
        let y = (q[1] + q[3] + q[5] + q[7]) / 4.0;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
                Some(&tab.session),
            )
            .await;
        }
    }

    /// Saves a PNG of the tab to `path`.
    pub async fn screenshot(&mut self, tab: &Tab, path: &Path) {
        use base64::Engine as _;
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png" }),
                Some(&tab.session),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .expect("PNG base64");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Closes the browser (asks first, then kills).
    pub async fn close(mut self) {
        let id = self.next_id;
        let msg = format!(
            "{}\0",
            json!({ "id": id, "method": "Browser.close", "params": {} })
        );
        let _ = self.input.write_all(msg.as_bytes());
        let _ = self.input.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    /// A test that fails half-way leaves no browser behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
