//! The `certgate` binary as an operator runs it: `check-config` and `init`, with their exit
//! codes (0 ok, 1 runtime failure, 2 usage or config error) and messages.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Options, Prepared, STEP};

/// Runs the real binary with `args` (and `env`), failing the test if it runs past [`STEP`].
fn certgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certgate"));
    cmd.args(args)
        .env_remove("CERTGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn certgate");
    let deadline = Instant::now() + STEP;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "certgate {args:?} still running after {STEP:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check_config(path: &Path) -> Output {
    certgate(
        &[
            "--config",
            path.to_str().expect("utf-8 path"),
            "check-config",
        ],
        &[],
    )
}

#[tokio::test]
async fn check_config_accepts_a_good_file() {
    let p = Prepared::new(Options::default()).await;
    let out = check_config(&p.config_path);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // The same through CERTGATE_CONFIG.
    let path = p.config_path.to_str().expect("utf-8 path");
    let out = certgate(&["check-config"], &[("CERTGATE_CONFIG", path)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "via CERTGATE_CONFIG: {}",
        describe(&out)
    );
}

/// Valid but almost certainly a mistake: everything public. check-config says so loudly
/// and still exits 0; a normal config has no warning.
#[tokio::test]
async fn check_config_warns_when_every_path_is_public() {
    let p = Prepared::new(Options {
        public: vec!["/".into()],
        ..Options::default()
    })
    .await;
    let out = check_config(&p.config_path);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: routes.public contains \"/\": every path is public"),
        "{}",
        describe(&out)
    );
    let normal = Prepared::new(Options::default()).await;
    let out = check_config(&normal.config_path);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn check_config_does_not_bind() {
    let p = Prepared::new(Options::default()).await;
    // The listen address is taken: validation must still pass, because it binds nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let yaml = p
        .yaml()
        .replacen("listen: \"127.0.0.1:0\"", &format!("listen: \"{addr}\""), 1);
    assert!(yaml.contains(&addr.to_string()));
    std::fs::write(&p.config_path, yaml).expect("write config");
    let out = check_config(&p.config_path);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    drop(taken);
}

/// 1-based line of the first line of `yaml` that starts with `prefix`.
fn line_of(yaml: &str, prefix: &str) -> usize {
    yaml.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{prefix:?} not in\n{yaml}"))
        + 1
}

/// Asserts exit 2 and a message naming the file, `line` and `key`.
fn assert_config_error(out: &Output, file: &Path, line: usize, key: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file_name = file
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name");
    assert!(
        stderr.contains(file_name),
        "stderr does not name the file {file_name}: {stderr}"
    );
    assert!(
        stderr.contains(&format!(":{line}")) || stderr.contains(&format!("line {line}")),
        "stderr does not name line {line}: {stderr}"
    );
    assert!(
        stderr.contains(key),
        "stderr does not name the key {key}: {stderr}"
    );
}

#[tokio::test]
async fn check_config_names_file_line_and_key() {
    let p = Prepared::new(Options::default()).await;
    let good = p.yaml();
    let broken = p.dir.path().join("broken.yaml");

    // Unknown top-level key.
    let yaml = format!("{good}bogus_key: 1\n");
    std::fs::write(&broken, &yaml).expect("write");
    assert_config_error(
        &check_config(&broken),
        &broken,
        line_of(&yaml, "bogus_key"),
        "bogus_key",
    );

    // Unknown nested key.
    let yaml = good.replacen("upstream:\n", "upstream:\n  bogus_nested: 1\n", 1);
    std::fs::write(&broken, &yaml).expect("write");
    assert_config_error(
        &check_config(&broken),
        &broken,
        line_of(&yaml, "  bogus_nested"),
        "bogus_nested",
    );

    // A value that does not parse.
    let yaml = good.replacen("  connect_timeout: 2s", "  connect_timeout: banana", 1);
    std::fs::write(&broken, &yaml).expect("write");
    assert_config_error(
        &check_config(&broken),
        &broken,
        line_of(&yaml, "  connect_timeout"),
        "upstream.connect_timeout",
    );

    // A file that does not exist.
    let yaml = good.replacen(
        "  trusted_cas: [pki/client-ca.pem]",
        "  trusted_cas: [pki/missing.pem]",
        1,
    );
    std::fs::write(&broken, &yaml).expect("write");
    let out = check_config(&broken);
    assert_config_error(
        &out,
        &broken,
        line_of(&yaml, "  trusted_cas"),
        "client_auth.trusted_cas",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.pem"),
        "stderr does not name the missing file: {stderr}"
    );
}

#[tokio::test]
async fn check_config_on_a_missing_file_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.yaml");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.yaml"),
        "{}",
        describe(&out)
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

#[tokio::test]
async fn init_writes_a_dev_setup_that_check_config_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("dev");
    let d_str = d.to_str().expect("utf-8 path");

    let out = certgate(&["init", "--dir", d_str], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let files = files_under(&d);
    let keys: Vec<&PathBuf> = files
        .iter()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("PRIVATE KEY")))
        .collect();
    assert!(!keys.is_empty(), "init wrote no private key: {files:?}");
    for key in &keys {
        let mode = std::fs::metadata(key)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
    }
    let certs = files
        .iter()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("BEGIN CERTIFICATE")))
        .count();
    assert!(
        certs >= 2,
        "init should write at least a server and a CA certificate: {files:?}"
    );

    let configs: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    assert!(!configs.is_empty(), "init wrote no config: {files:?}");
    for config in &configs {
        let out = check_config(config);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            config.display(),
            describe(&out)
        );
    }

    // A second init refuses to overwrite, and leaves everything as it was.
    let before = snapshot(&d);
    let out = certgate(&["init", "--dir", d_str], &[]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "init overwrote without --force: {}",
        describe(&out)
    );
    assert!(
        !out.stderr.is_empty(),
        "refusal without a message: {}",
        describe(&out)
    );
    assert!(before == snapshot(&d), "a refused init changed files");

    // --force overwrites, and the result is still valid.
    let out = certgate(&["init", "--dir", d_str, "--force"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "init --force: {}",
        describe(&out)
    );
    for config in &configs {
        let out = check_config(config);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after --force: {}",
            describe(&out)
        );
    }
}

#[test]
fn unknown_command_is_a_usage_error() {
    let out = certgate(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// Spawns `certgate --config <path> run [extra]` and waits until it logs that it listens
/// (returns the child, still running) or exits (returns its output).
fn run_until_listening(path: &Path, extra: &[&str]) -> Result<std::process::Child, Output> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certgate"));
    cmd.arg("--config")
        .arg(path)
        .arg("run")
        .args(extra)
        .env_remove("CERTGATE_CONFIG")
        .env("CERTGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn certgate run");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("certgate listening") {
                let _ = tx.send(Ok(()));
                return;
            }
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(STEP) {
        Ok(Ok(())) => Ok(child),
        Ok(Err(stderr)) => {
            let status = child.wait().expect("wait");
            Err(Output {
                status,
                stdout: Vec::new(),
                stderr: stderr.into_bytes(),
            })
        }
        Err(_) => {
            let _ = child.kill();
            panic!("certgate run neither listened nor exited within {STEP:?}");
        }
    }
}

#[tokio::test]
async fn run_refuses_a_missing_or_empty_store_and_creates_one_only_when_asked() {
    let p = Prepared::new(Options::default()).await;
    let store = p.dir.path().join("data/certgate.db");
    std::fs::remove_file(&store).expect("remove the harness's store");

    // Missing: refused (exit 1), nothing created, and the message says how to proceed.
    let out = run_until_listening(&p.config_path, &[]).expect_err("started without a store");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&store.display().to_string())
            && err.contains("does not exist")
            && err.contains("--create-store"),
        "{}",
        describe(&out)
    );
    assert!(!store.exists(), "a refused start created the store");

    // Asked: created, private, and served.
    let mut child = run_until_listening(&p.config_path, &["--create-store"])
        .unwrap_or_else(|out| panic!("--create-store did not start: {}", describe(&out)));
    child.kill().expect("kill");
    child.wait().expect("wait");
    let meta = std::fs::metadata(&store).expect("store created");
    assert!(meta.len() > 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // From then on a plain run opens it.
    let mut child = run_until_listening(&p.config_path, &[])
        .unwrap_or_else(|out| panic!("run on the created store: {}", describe(&out)));
    child.kill().expect("kill");
    child.wait().expect("wait");

    // Truncated to 0 bytes: refused, with or without --create-store, and left alone.
    std::fs::File::create(&store).expect("truncate");
    for extra in [&[][..], &["--create-store"][..]] {
        let out = run_until_listening(&p.config_path, extra).expect_err("started on 0 bytes");
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("empty (0 bytes)"),
            "{extra:?}: {}",
            describe(&out)
        );
    }
    assert_eq!(std::fs::metadata(&store).expect("store").len(), 0);
}

#[tokio::test]
async fn create_store_is_a_usage_error_for_redis() {
    let p = Prepared::new(Options {
        redis_url: Some("redis://127.0.0.1:1/0".into()),
        ..Options::default()
    })
    .await;
    let out = run_until_listening(&p.config_path, &["--create-store"]).expect_err("started");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("redis"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn a_lost_store_file_never_lets_a_revoked_certificate_back_in() {
    let mut h = support::Harness::start().await;
    let alice = h.pki.client("alice");
    let client = h.client(Some(&alice));
    h.admin().revoke(&alice.serial).await;
    let r = support::get(&client, &h.url("/app"), &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    h.stop().await;

    let store = h.dir.path().join("data/certgate.db");
    std::fs::File::create(&store).expect("truncate");
    let err = certgate::app::start(h.load_config())
        .await
        .err()
        .expect("started on a 0-byte store");
    assert!(err.to_string().contains("empty (0 bytes)"), "{err}");

    std::fs::remove_file(&store).expect("remove");
    let err = certgate::app::start(h.load_config())
        .await
        .err()
        .expect("started without its store");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// `--version` names the commit it was built from; `-V` stays the bare version.
#[test]
fn version_names_the_commit() {
    let out = certgate(&["--version"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("certgate {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&want), "{text}");
    let rest = text[want.len()..].trim_end().trim_end_matches(')');
    let (commit, built) = rest.split_once(", built ").expect("a build date");
    assert!(
        built.len() == 10
            && built.as_bytes()[4] == b'-'
            && built.as_bytes()[7] == b'-'
            && built.starts_with("20"),
        "build date {built:?}"
    );
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
    let short = certgate(&["-V"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&short.stdout).trim(),
        format!("certgate {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `CERTGATE_UPSTREAM_URL` and `CERTGATE_PUBLIC_URL` replace the file's values and are
/// validated like them.
#[tokio::test]
async fn environment_overrides_upstream_and_public_url() {
    let p = Prepared::new(Options::default()).await;
    let path = p.config_path.to_str().expect("utf-8 path");
    let args = ["--config", path, "check-config"];
    let ok = certgate(
        &args,
        &[
            ("CERTGATE_UPSTREAM_URL", "http://app.internal:8080"),
            ("CERTGATE_PUBLIC_URL", "https://gateway.example.com"),
        ],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    let bad = certgate(&args, &[("CERTGATE_UPSTREAM_URL", "ftp://nope")]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("upstream.url"),
        "{}",
        describe(&bad)
    );
    let bad = certgate(&args, &[("CERTGATE_PUBLIC_URL", "not a url")]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("public_url"),
        "{}",
        describe(&bad)
    );
}

/// A minimal config next to the one `certgate init` wrote finds the enrollment CA and the
/// admin token where init put them (`../certs/`, `../secrets/`), and a missing default
/// names both places it looked.
#[tokio::test]
async fn default_paths_agree_with_the_init_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("dev");
    let out = certgate(&["init", "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let minimal = d.join("config/minimal.yaml");
    std::fs::write(
        &minimal,
        "listen: \"127.0.0.1:0\"\n\
         tls:\n  cert: ../certs/server.pem\n  key: ../certs/server.key\n\
         upstream:\n  url: \"http://127.0.0.1:9\"\n\
         state:\n  backend: embedded\n  path: ../data/minimal.db\n\
         enrollment:\n  enabled: true\n  public_url: \"https://localhost:8443\"\n",
    )
    .unwrap();
    let out = check_config(&minimal);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    std::fs::remove_file(d.join("secrets/admin-token")).unwrap();
    let out = check_config(&minimal);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let here = d.join("config/secrets/admin-token");
    let init = d.join("config/../secrets/admin-token");
    assert!(
        err.contains("admin.token_file")
            && err.contains(&here.display().to_string())
            && (err.contains(&init.display().to_string())
                || err.contains(&d.join("secrets/admin-token").display().to_string())),
        "{}",
        describe(&out)
    );
}

/// Redis unreachable at start is an ERROR naming the store (without its password) and
/// the failure, not a quiet warning.
#[tokio::test]
async fn an_unreachable_redis_at_start_is_an_error_naming_it() {
    let port = support::closed_port().await.port();
    let p = Prepared::new(Options {
        redis_url: Some(format!("redis://:hunter2@127.0.0.1:{port}/0")),
        ..Options::default()
    })
    .await;
    let gw = support::process::start(&p);
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("does not answer at start"))
        .unwrap_or_else(|| panic!("no start error in:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("redis://***@127.0.0.1:{port}/0")),
        "{line}"
    );
    assert!(!log.contains("hunter2"), "password logged:\n{log}");
}

/// A port that is taken names the key, the file and line it is set at, and how to find
/// the program that holds it.
#[tokio::test]
async fn a_port_in_use_names_the_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("dev");
    let out = certgate(&["init", "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port();
    let yaml = format!(
        "tls:\n  cert: ../certs/server.pem\n  key: ../certs/server.key\n\
         upstream:\n  url: \"http://127.0.0.1:9\"\n\
         state:\n  backend: embedded\n  path: ../data/ports.db\n\
         listen: \"127.0.0.1:{port}\"\n\
         enrollment:\n  public_url: \"https://localhost:{port}\"\n"
    );
    let path = d.join("config/ports.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = match run_until_listening(&path, &["--create-store"]) {
        Ok(mut child) => {
            let _ = child.kill();
            panic!("certgate listened on a port that is taken");
        }
        Err(out) => out,
    };
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let at = format!("(listen, {}:{})", path.display(), line_of(&yaml, "listen:"));
    assert!(err.contains(&at), "{at} missing: {}", describe(&out));
    assert!(
        err.contains(&format!("ss -ltnp 'sport = :{port}'"))
            && err.contains("set listen to a free address"),
        "{}",
        describe(&out)
    );
    drop(taken);
}

/// `log.level` changes on a reload, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_level_changes_on_reload() {
    let p = Prepared::new(Options::default()).await;
    let text = std::fs::read_to_string(&p.config_path).unwrap();
    assert!(text.contains("  level: warn\n"), "{text}");
    std::fs::write(
        &p.config_path,
        text.replacen("  level: warn\n", "  level: info\n", 1),
    )
    .unwrap();
    let gw = support::process::start_with_log(&p, None);
    let poke = |addr: std::net::SocketAddr| {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        let _ = tcp.write_all(b"this is not TLS\r\n\r\n");
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    };
    poke(gw.listen);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !gw.log().contains("DEBUG"),
        "debug lines at info:\n{}",
        gw.log()
    );

    let text = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(
        &p.config_path,
        text.replacen("  level: info\n", "  level: debug\n", 1),
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    let deadline = Instant::now() + STEP;
    while !gw.log().contains("log level changed") {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !gw.log().contains("only take effect after a restart"),
        "{}",
        gw.log()
    );
    poke(gw.listen);
    while !gw.log().contains("DEBUG") {
        assert!(
            Instant::now() < deadline,
            "no debug line after the reload:\n{}",
            gw.log()
        );
        poke(gw.listen);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.signal(libc::SIGKILL);
}

/// The admin client's flags work after the subcommand too, and what the operator typed
/// wrong exits 2 while a gateway that does not answer exits 1.
#[test]
fn admin_flags_anywhere_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let t = token.to_str().unwrap();
    // Flags after the subcommand: parsed (the failure is the connection: exit 1).
    let out = certgate(
        &[
            "admin",
            "status",
            "alice",
            "--json",
            "--url",
            &url,
            "--token-file",
            t,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to the admin API"),
        "{}",
        describe(&out)
    );
    // A malformed URL is a usage error.
    let out = certgate(
        &[
            "admin",
            "status",
            "alice",
            "--url",
            "ftp://x",
            "--token-file",
            t,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // So is an unknown flag, and a missing argument.
    let out = certgate(&["admin", "revoke"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = certgate(&["check-config", "--bogus"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    for (shell, marker) in [
        ("bash", "_certgate()"),
        ("zsh", "#compdef certgate"),
        ("fish", "complete -c certgate"),
    ] {
        let out = certgate(&["completions", shell], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {marker} missing");
        for sub in [
            "check-config",
            "rotate-assertion-key",
            "acknowledge-data-loss",
        ] {
            assert!(text.contains(sub), "{shell}: {sub} missing");
        }
    }
    if Command::new("bash").arg("--version").output().is_ok() {
        let out = certgate(&["completions", "bash"], &[]);
        let script = dir_file("certgate.bash", &out.stdout);
        let check = Command::new("bash")
            .arg("-n")
            .arg(&script.1)
            .output()
            .unwrap();
        assert!(check.status.success(), "bash -n: {}", describe(&check));
    }
    let out = certgate(&["man"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH certgate 1"), "{page}");
    for sub in ["check\\-config", "demo", "admin", "health"] {
        assert!(page.contains(sub), "{sub} missing from the man page");
    }
    let out = certgate(&["completions", "tcsh"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// Writes `bytes` to a new temporary file named `name`; the folder lives as long as the
/// returned guard.
fn dir_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn online(path: &Path) -> Output {
    certgate(
        &[
            "--config",
            path.to_str().expect("utf-8 path"),
            "check-config",
            "--online",
        ],
        &[],
    )
}

/// The line `check-config --online` printed for `what`.
fn online_line(out: &Output, what: &str) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(what))
        .unwrap_or_else(|| panic!("no {what} line: {}", describe(out)))
        .to_string()
}

/// `check-config --online` against a real Redis, killed and hung, a real upstream and a
/// closed port, and a key file made readable by others.
#[tokio::test(flavor = "multi_thread")]
async fn the_online_check_reports_each_part() {
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    let p = Prepared::new(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let path = p.config_path.clone();
    let out = tokio::task::spawn_blocking(move || online(&path))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for what in [
        "state",
        "upstream.url",
        "tls.cert",
        "enrollment.ca_cert",
        "tls.key",
        "admin.token_file",
    ] {
        let line = online_line(&out, what);
        assert!(line.contains(" ok "), "{line}");
    }
    assert!(online_line(&out, "state").contains("answered in"));
    assert!(online_line(&out, "upstream.url").contains("answered HTTP"));

    // Hung Redis: reported, within the check's bound.
    redis.pause();
    let path = p.config_path.clone();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || online(&path))
        .await
        .unwrap();
    redis.resume();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        online_line(&out, "state").contains("FAILED"),
        "{}",
        describe(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // The upstream on a closed port, and a key others can read.
    let closed = support::closed_port().await;
    let text = std::fs::read_to_string(&p.config_path).unwrap();
    let upstream_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("url: \"http://"))
        .expect("upstream url line")
        .to_string();
    let broken = text.replacen(&upstream_line, &format!("  url: \"http://{closed}\""), 1);
    let broken_path = p.dir.path().join("broken.yaml");
    std::fs::write(&broken_path, broken).unwrap();
    let key = p.dir.path().join("pki/server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tokio::task::spawn_blocking(move || online(&broken_path))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let up = online_line(&out, "upstream.url");
    assert!(
        up.contains("FAILED") && up.contains("cannot connect"),
        "{up}"
    );
    let k = online_line(&out, "tls.key");
    assert!(
        k.contains("FAILED") && k.contains("0644") && k.contains("chmod 600"),
        "{k}"
    );
    assert!(online_line(&out, "state").contains(" ok "), "Redis is back");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 of"),
        "{}",
        describe(&out)
    );
}
