//! `certgate demo` as a new user runs it: it comes up when its default ports are taken,
//! prints the addresses it chose and commands that work as pasted, keeps an edited config,
//! and runs a config named with --config as it is.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STEP: Duration = Duration::from_secs(60);

struct Demo {
    child: Child,
    /// Everything printed on stdout up to "Press Ctrl-C".
    out: String,
}

impl Demo {
    fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Demo, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_certgate"));
        cmd.current_dir(cwd)
            .arg("demo")
            .args(args)
            .env_remove("CERTGATE_CONFIG")
            .env("CERTGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn certgate demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                seen.push_str(&line);
                seen.push('\n');
                if line.starts_with("Press Ctrl-C") {
                    let _ = tx.send(Ok(seen));
                    return;
                }
            }
            let _ = tx.send(Err(seen));
        });
        match rx.recv_timeout(STEP) {
            Ok(Ok(out)) => Ok(Demo { child, out }),
            Ok(Err(out)) => {
                let status = child.wait().expect("wait");
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                Err(format!(
                    "exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
                    status.code()
                ))
            }
            Err(_) => {
                let _ = child.kill();
                panic!("certgate demo did not come up within {STEP:?}");
            }
        }
    }

    /// The address printed after `label` (`gateway`, `admin`, `metrics`).
    fn addr(&self, label: &str) -> SocketAddr {
        let line = self
            .out
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in:\n{}", self.out));
        let url = line.split_whitespace().nth(1).expect("url");
        let hostport = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("host:port");
        let port: u16 = hostport.rsplit(':').next().unwrap().parse().unwrap();
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The command printed on the line after the comment that contains `marker`.
    fn command_after(&self, marker: &str) -> String {
        let mut lines = self.out.lines();
        lines
            .by_ref()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{}", self.out));
        lines
            .find(|l| !l.trim_start().starts_with('#'))
            .expect("a command")
            .trim()
            .to_string()
    }

    fn stop(mut self) {
        for _ in 0..2 {
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGINT);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = std::time::Instant::now() + STEP;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(std::time::Instant::now() < deadline, "demo did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Holds `addr` for the test when it is free; when something else has it, it is taken
/// anyway, which is what the test needs.
fn occupy(addr: &str) -> Option<TcpListener> {
    TcpListener::bind(addr).ok()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = tcp.read_to_string(&mut buf);
    let status = buf.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, buf)
}

/// Runs a printed command line (whitespace-separated, no quoting needed for these).
fn run_printed(cwd: &Path, line: &str) -> std::process::Output {
    let mut words = line.split_whitespace();
    let program = words.next().expect("program");
    Command::new(program)
        .current_dir(cwd)
        .args(words)
        .env_remove("CERTGATE_CONFIG")
        .output()
        .expect("run the printed command")
}

#[test]
fn the_demo_comes_up_on_busy_ports_and_keeps_an_edited_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let _held: Vec<_> = ["127.0.0.1:8443", "127.0.0.1:9444", "127.0.0.1:9090"]
        .iter()
        .filter_map(|a| occupy(a))
        .collect();

    let demo = Demo::start(cwd, &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    for default in ["127.0.0.1:8443", "127.0.0.1:9444", "127.0.0.1:9090"] {
        assert!(
            demo.out
                .contains(&format!("{default} is taken, so the demo uses")),
            "no note about {default}:\n{}",
            demo.out
        );
    }
    let gateway = demo.addr("gateway");
    let admin = demo.addr("admin");
    let metrics = demo.addr("metrics");
    for (a, default) in [(gateway, 8443), (admin, 9444), (metrics, 9090)] {
        assert_ne!(a.port(), default, "{}", demo.out);
    }
    assert_eq!(
        get(metrics, "/readyz").0,
        200,
        "metrics on the printed address"
    );
    // The printed admin command works as pasted, against the address the demo chose.
    let status = demo.command_after("# 6.");
    let out = run_printed(cwd, &status);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("alice"),
        "{status}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The enrollment link is on the chosen port.
    assert!(
        demo.out.contains(&format!(
            "https://localhost:{}/.certgate/enroll?ticket=",
            gateway.port()
        )),
        "{}",
        demo.out
    );
    demo.stop();

    // Unedited: the next start keeps the ports it wrote (no notes, same addresses).
    let config = cwd.join("demo/config/certgate.yaml");
    let written = std::fs::read_to_string(&config).unwrap();
    let demo = Demo::start(cwd, &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(demo.addr("gateway"), gateway, "{}", demo.out);
    assert!(!demo.out.contains("is taken"), "{}", demo.out);
    assert!(!demo.out.contains("was edited"), "{}", demo.out);
    demo.stop();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);

    // Edited: used as it is, never rewritten; a taken address moves in memory only.
    let edited = written.replacen("level: info", "level: warn", 1);
    assert_ne!(edited, written);
    std::fs::write(&config, &edited).unwrap();
    let hold_gateway = occupy(&gateway.to_string()).expect("the gateway's port is free again");
    let demo = Demo::start(cwd, &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        demo.out
            .contains("was edited, so the demo uses it as it is"),
        "{}",
        demo.out
    );
    assert!(
        demo.out.contains(&format!("{gateway} is taken")),
        "{}",
        demo.out
    );
    assert_ne!(demo.addr("gateway"), gateway);
    assert_eq!(get(demo.addr("metrics"), "/readyz").0, 200);
    demo.stop();
    drop(hold_gateway);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        edited,
        "edited config rewritten"
    );

    // Asked-for addresses are used, or the demo says why not (exit 2).
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let err = Demo::start(cwd, &["--listen", &busy_addr], &[])
        .err()
        .expect("a taken --listen is refused");
    assert!(err.starts_with("exit Some(2)"), "{err}");
    assert!(err.contains(&format!("--listen {busy_addr}")), "{err}");
}

#[test]
fn the_demo_runs_a_config_named_with_config_as_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["init", "--dir", "site"])
        .current_dir(cwd)
        .env_remove("CERTGATE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = cwd.join("site/config/certgate.yaml");
    let free = |_: ()| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (listen, admin, metrics) = (free(()), free(()), free(()));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "listen: \"0.0.0.0:8443\"",
            &format!("listen: \"{listen}\""),
            1,
        )
        .replacen(
            "  listen: \"127.0.0.1:9444\"",
            &format!("  listen: \"{admin}\""),
            1,
        )
        .replacen(
            "  listen: \"127.0.0.1:9090\"",
            &format!("  listen: \"{metrics}\""),
            1,
        );
    std::fs::write(&config, &text).unwrap();
    for how in ["flag", "env"] {
        let path = config.to_str().unwrap();
        let demo = match how {
            "flag" => Demo::start(cwd, &["--config", path], &[]),
            _ => Demo::start(cwd, &[], &[("CERTGATE_CONFIG", path)]),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            demo.out.contains(&format!("running {path} as it is")),
            "{how}: {}",
            demo.out
        );
        assert_eq!(demo.addr("gateway"), listen, "{how}: {}", demo.out);
        assert_eq!(demo.addr("metrics"), metrics, "{how}: {}", demo.out);
        assert_eq!(get(metrics, "/readyz").0, 200);
        demo.stop();
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            text,
            "{how}: rewritten"
        );
        assert!(
            !cwd.join("demo/config/certgate.yaml").exists(),
            "{how}: the demo wrote its own config"
        );
    }
}

/// Whether `program` runs here; without it the test is skipped loudly, and fails under CI.
fn have(program: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is missing (CI=true: install it)"
        );
        eprintln!("SKIPPED: {program} is not installed");
    }
    ok
}

/// The enrollment page's command-line snippet, pasted into a shell as it is, enrolls.
#[test]
fn the_enrollment_pages_command_works_as_pasted() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let demo = Demo::start(
        cwd,
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let link = demo
        .out
        .lines()
        .map(str::trim)
        .find(|l| l.contains("/.certgate/enroll?ticket="))
        .expect("the browser link")
        .to_string();
    let ca = cwd.join("demo/certs/server-ca.pem");
    let page = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&ca)
        .arg(&link)
        .output()
        .unwrap();
    assert!(
        page.status.success(),
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );
    let html = String::from_utf8_lossy(&page.stdout);
    let snippet = html
        .split("<pre id=\"cli\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("no command on the page:\n{html}"))
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    assert!(
        !snippet.contains("$TICKET"),
        "the ticket is filled in: {snippet}"
    );
    assert!(snippet.contains("--cacert server-ca.pem"), "{snippet}");
    // A user's folder: the server CA the page names, and nothing else.
    let user = cwd.join("user");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::copy(&ca, user.join("server-ca.pem")).unwrap();
    let out = Command::new("sh")
        .arg("-ec")
        .arg(&snippet)
        .current_dir(&user)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(user.join("alice.pem")).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in", "alice.pem"])
        .current_dir(&user)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&subject.stdout).contains("alice"),
        "{}",
        String::from_utf8_lossy(&subject.stdout)
    );
    demo.stop();
}
