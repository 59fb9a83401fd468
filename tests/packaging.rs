//! The deployment files, checked with the tools operators use on them: `promtool` (the
//! alert rules, their unit tests, the Prometheus config, every dashboard query),
//! `systemd-analyze` (the unit), `certgate check-config` (every gateway configuration
//! under `deploy/` and the image's, on a folder made by `certgate init`), and the
//! consistency of the Dockerfile, the Compose file, the Kubernetes manifests and the
//! Grafana dashboard with each other and with the metrics `src/metrics.rs` exports.
//!
//! Needs `promtool` (Debian `prometheus`) and `systemd-analyze` (Debian `systemd`): without
//! them those checks are skipped with a loud message, except under `CI=true`, where they
//! fail.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::enroll::tools;

const PROMTOOL_HINT: &str = "apt-get install prometheus (for promtool)";
const SYSTEMD_HINT: &str = "apt-get install systemd (for systemd-analyze)";

/// The unit's, the image's and the manifests' config path.
const CONFIG_PATH: &str = "/etc/certgate/config/certgate.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    yaml_text(rel, &read(rel))
}

fn yaml_text(what: &str, text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

/// Runs `program` in the repository root and returns its output.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .current_dir(root())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", text(out));
}

/// A duration as certgate, compose and systemd write it (`500ms`, `2s`, `5m`, `1h`), in
/// seconds.
fn seconds(value: &str) -> f64 {
    let v = value.trim();
    let (number, unit) = match v.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => (&v[..at], &v[at..]),
        None => (v, "s"),
    };
    let n: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration {value:?}"));
    match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => panic!("duration {value:?}: unknown unit {other:?}"),
    }
}

/// `shutdown.drain_delay + shutdown.timeout` of a config (defaults from the documented
/// example `config/certgate.yaml` for keys the config leaves out).
fn drain_seconds(config: &Value) -> f64 {
    let defaults = yaml("config/certgate.yaml");
    let key = |name: &str| {
        config["shutdown"][name]
            .as_str()
            .or_else(|| defaults["shutdown"][name].as_str())
            .unwrap_or_else(|| panic!("shutdown.{name} missing from config/certgate.yaml"))
            .to_string()
    };
    seconds(&key("drain_delay")) + seconds(&key("timeout"))
}

fn port_of(listen: &str) -> u16 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("listen address {listen:?} has no port"))
}

// ---------------------------------------------------------------------------------------
// Metric names

/// Every metric name `src/metrics.rs` and `src/process.rs` export (string literals that
/// start with `certgate_` or `process_`), without the suffixes the exposition adds.
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in ["src/metrics.rs", "src/process.rs"] {
        let source = read(file);
        for prefix in ["\"certgate_", "\"process_"] {
            let mut rest = source.as_str();
            while let Some(at) = rest.find(prefix) {
                let tail = &rest[at + 1..];
                let len = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                if tail[len..].starts_with('"') {
                    names.insert(tail[..len].to_string());
                }
                rest = &tail[len..];
            }
        }
    }
    // The scan itself must work, or every later check passes vacuously.
    for known in [
        "certgate_requests",
        "certgate_state_store_up",
        "certgate_build_info",
        "process_resident_memory_bytes",
    ] {
        assert!(names.contains(known), "{known} not found in src: {names:?}");
    }
    names
}

/// Whether `series` is an exported metric: its name, or its name with the suffix of a
/// counter (`_total`) or of a histogram's series (`_bucket`, `_sum`, `_count`).
fn is_exported(series: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(series)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                series
                    .strip_suffix(*suffix)
                    .is_some_and(|base| exported.contains(base))
            })
}

/// The certgate and process metric names a PromQL expression mentions (outside quoted
/// label values).
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    let mut quoted = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
            token.clear();
        } else if quoted {
            continue;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
        } else {
            if token.starts_with("certgate_") || token.starts_with("process_") {
                out.push(token.clone());
            }
            token.clear();
        }
    }
    out
}

/// Every name in `exprs` must be exported; returns the names seen.
fn assert_exported(what: &str, exprs: &[String]) -> BTreeSet<String> {
    let exported = exported_metrics();
    let mut seen = BTreeSet::new();
    for expr in exprs {
        for name in metric_names_in(expr) {
            assert!(
                is_exported(&name, &exported),
                "{what}: {name} is not a metric certgate exports (src/metrics.rs, \
                 src/process.rs), in: {expr}\nexported: {exported:?}"
            );
            seen.insert(name);
        }
    }
    seen
}

#[test]
fn metric_name_scanner_finds_names_and_ignores_label_values() {
    let names = metric_names_in(
        "sum by (le) (rate(certgate_request_duration_seconds_bucket{job=\"certgate_x\",\
         instance=~\"$instance\"}[$__rate_interval])) / process_max_fds",
    );
    assert_eq!(
        names,
        [
            "certgate_request_duration_seconds_bucket",
            "process_max_fds"
        ]
    );
    let exported = exported_metrics();
    assert!(is_exported("certgate_requests_total", &exported));
    assert!(is_exported(
        "certgate_request_duration_seconds_bucket",
        &exported
    ));
    assert!(!is_exported("certgate_requests_per_second", &exported));
    assert!(!is_exported("certgate_no_such_metric_total", &exported));
}

// ---------------------------------------------------------------------------------------
// Prometheus

fn alert_rules() -> Vec<(String, String)> {
    let rules = yaml("deploy/prometheus/alerts.yaml");
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("expr");
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = alert_rules();
    let exprs: Vec<String> = rules.iter().map(|(_, e)| e.clone()).collect();
    let seen = assert_exported("deploy/prometheus/alerts.yaml", &exprs);
    for needed in [
        "certgate_state_store_up",
        "certgate_state_store_data_lost",
        "certgate_config_last_reload_success",
        "certgate_http_requests_total",
        "certgate_upstream_errors_total",
        "certgate_crl_next_update_seconds",
        "certgate_certificate_not_after_seconds",
        "certgate_client_cert_not_after_seconds_bucket",
    ] {
        assert!(seen.contains(needed), "no alert uses {needed}");
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("up{job=\"certgate\"} == 0")),
        "no alert for a gateway that cannot be scraped"
    );
    // Every alert has a unit test that expects it to fire.
    let tests = read("deploy/prometheus/alerts_test.yaml");
    for (name, _) in &rules {
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "deploy/prometheus/alerts_test.yaml has no test in which {name} fires"
        );
    }

    if !tools(&["promtool"], PROMTOOL_HINT) {
        return;
    }
    let out = run(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yaml"],
    );
    assert_success(&out, "promtool check rules");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} rules found", rules.len())),
        "{}",
        text(&out)
    );
    let out = run(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts_test.yaml"],
    );
    assert_success(&out, "promtool test rules");
}

#[test]
fn prometheus_config_loads_the_rules_and_scrapes_both_compose_gateways() {
    let config = yaml("deploy/prometheus/prometheus.yml");
    let rule_files: Vec<&str> = config["rule_files"]
        .as_array()
        .expect("rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(rule_files, ["alerts.yaml"]);
    let certgate = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "certgate")
        .expect("a scrape job named certgate (alerts and dashboard select job=\"certgate\")");
    let targets: BTreeSet<&str> = certgate["static_configs"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let gateway = yaml("deploy/compose/gateway.yaml");
    let port = port_of(
        gateway["metrics"]["listen"]
            .as_str()
            .expect("metrics.listen"),
    );
    let compose = yaml("deploy/compose.yaml");
    let expected: BTreeSet<String> = ["gateway-a", "gateway-b"]
        .iter()
        .inspect(|s| assert!(compose["services"][**s].is_object(), "no service {s}"))
        .map(|s| format!("{s}:{port}"))
        .collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(targets, expected);

    if !tools(&["promtool"], PROMTOOL_HINT) {
        return;
    }
    let out = run(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    assert_success(&out, "promtool check config");
}

// ---------------------------------------------------------------------------------------
// Grafana

/// Every panel of a dashboard (rows' nested panels included).
fn panels(list: &Value, out: &mut Vec<Value>) {
    for panel in list.as_array().into_iter().flatten() {
        out.push(panel.clone());
        panels(&panel["panels"], out);
    }
}

#[test]
fn grafana_dashboard_queries_exported_metrics_through_the_provisioned_datasource() {
    let rel = "deploy/grafana/dashboards/certgate.json";
    let raw = read(rel);
    assert!(
        !raw.contains("${DS_"),
        "{rel}: an import-time datasource input cannot be provisioned"
    );
    let dashboard: Value =
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{rel}: not JSON: {e}"));
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let uid = datasources["datasources"][0]["uid"]
        .as_str()
        .expect("the provisioned datasource has a uid");
    assert_eq!(datasources["datasources"][0]["type"], "prometheus");

    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in &all {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} twice ({title})");
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], uid, "{title}: datasource");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], uid, "{title}: datasource");
            let expr = target["expr"].as_str().expect("expr");
            exprs.push(expr.to_string());
        }
    }
    // The variables' queries are Grafana's label_values(), not PromQL: their metric names
    // are checked, their syntax is not.
    let mut variable_queries = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        assert_eq!(variable["datasource"]["uid"], uid, "variable datasource");
        if let Some(q) = variable["query"]["query"].as_str() {
            variable_queries.push(q.to_string());
        }
    }
    assert!(!variable_queries.is_empty(), "an instance variable");
    assert_exported(rel, &variable_queries);
    let seen = assert_exported(rel, &exprs);
    for needed in [
        "certgate_requests_total",
        "certgate_http_requests_total",
        "certgate_request_duration_seconds_bucket",
        "certgate_upstream_duration_seconds_bucket",
        "certgate_http_request_duration_seconds_bucket",
        "certgate_tls_handshakes_total",
        "certgate_connections_active",
        "certgate_connections_closed_total",
        "certgate_state_store_up",
        "certgate_state_store_errors_total",
        "certgate_state_cache_total",
        "certgate_enrollments_total",
        "certgate_config_reloads_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(seen.contains(needed), "{rel}: no panel shows {needed}");
    }

    // The provider loads the folder compose.yaml mounts the dashboards at.
    let provider = yaml("deploy/grafana/provisioning/dashboards/certgate.yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("dashboard provider path");
    let compose = yaml("deploy/compose.yaml");
    let mounts: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_array()
        .expect("grafana volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mounts.contains(&format!("./grafana/dashboards:{path}:ro").as_str()),
        "grafana mounts {mounts:?}, the provider reads {path}"
    );

    // Every query is valid PromQL: promtool parses them as recording rules, with
    // Grafana's variables replaced by what Grafana would put there.
    if !tools(&["promtool"], PROMTOOL_HINT) {
        return;
    }
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$instance", ".*");
            assert!(!e.contains('$'), "an unknown Grafana variable in {e}");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": e })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yaml");
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(&path, file.to_string()).unwrap();
    let out = run(
        "promtool",
        &["check", "rules", path.to_str().expect("a UTF-8 temp path")],
    );
    assert_success(&out, "promtool check rules (the dashboard's queries)");
}

// ---------------------------------------------------------------------------------------
// systemd

/// The unit's `Key=value` lines (comments and sections left out).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values_of<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The value of a setting the unit must write exactly once.
fn one_value_of(settings: &[(String, String)], key: &str) -> String {
    let values = values_of(settings, key);
    assert_eq!(
        values.len(),
        1,
        "deploy/systemd/certgate.service: {key}= should be set once: {values:?}"
    );
    values[0].to_string()
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let rel = "deploy/systemd/certgate.service";
    let unit = read(rel);
    let settings = unit_settings(&unit);
    let get = |key: &str| values_of(&settings, key);
    let one = |key: &str| one_value_of(&settings, key);
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(
        one("ExecStart"),
        format!("/usr/local/bin/certgate run --config {CONFIG_PATH}")
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillMode"), "mixed");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("StateDirectory"), "certgate");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
    assert!(get("SystemCallFilter").contains(&"@system-service"));
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    // The stop timeout covers the lame duck and the drain of the default configuration,
    // with room to spare.
    let stop = seconds(&one("TimeoutStopSec"));
    let drain = drain_seconds(&Value::Null);
    assert!(
        stop >= drain + 10.0,
        "TimeoutStopSec={stop}s, the default drain takes up to {drain}s"
    );

    if !tools(&["systemd-analyze"], SYSTEMD_HINT) {
        return;
    }
    // verify refuses an ExecStart binary that does not exist: point it at the one this
    // test suite built. verify exits 0 even for unknown keys or bad values and only
    // prints them, so its output must not mention the unit at all.
    let dir = tempfile::tempdir().unwrap();
    let installed = "ExecStart=/usr/local/bin/certgate ";
    assert!(unit.contains(installed));
    let local = unit.replacen(
        installed,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_certgate")),
        1,
    );
    let path = dir.path().join("certgate.service");
    std::fs::write(&path, local).unwrap();
    let path = path.to_str().expect("a UTF-8 temp path");
    let out = run("systemd-analyze", &["verify", path]);
    assert_success(&out, "systemd-analyze verify");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("certgate.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains about the unit:\n{}",
        complaints.join("\n")
    );
    // The exposure score systemd computes from the sandboxing settings (0 to 10, lower is
    // tighter): --threshold=20 fails above 2.0.
    let out = run(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=20", path],
    );
    assert_success(&out, "systemd-analyze security (exposure above 2.0)");
}

// ---------------------------------------------------------------------------------------
// Gateway configurations

/// Runs `certgate check-config` on `config` placed where `certgate init --dir D` puts its
/// own (D/config/certgate.yaml), in a fresh folder D made by `certgate init`, with `extra`
/// files written too. Returns check-config's output line.
fn check_config(what: &str, config: &str, extra: &[(&str, &str)]) -> String {
    let bin = env!("CARGO_BIN_EXE_certgate");
    let dir = tempfile::tempdir().unwrap();
    let clean = |c: &mut Command| {
        c.env_remove("CERTGATE_CONFIG")
            .env_remove("CERTGATE_UPSTREAM_URL")
            .env_remove("CERTGATE_PUBLIC_URL");
    };
    let mut init = Command::new(bin);
    init.arg("init").arg("--dir").arg(dir.path());
    clean(&mut init);
    let out = init.output().expect("run certgate init");
    assert_success(&out, "certgate init");
    for (rel, content) in extra {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let path: &Path = &dir.path().join("config/certgate.yaml");
    std::fs::write(path, config).unwrap();
    let mut check = Command::new(bin);
    check.arg("--config").arg(path).arg("check-config");
    clean(&mut check);
    let out = check.output().expect("run certgate check-config");
    assert!(
        out.status.success(),
        "{what} fails certgate check-config:\n{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains(": ok ("), "{}", text(&out));
    stdout
}

#[test]
fn image_config_passes_check_config_in_the_init_layout() {
    let out = check_config("config/docker.yaml", &read("config/docker.yaml"), &[]);
    assert!(
        out.contains("state embedded /var/lib/certgate/certgate.db"),
        "{out}"
    );
    let config = yaml("config/docker.yaml");
    assert_eq!(
        config["metrics"]["listen"], "0.0.0.0:9090",
        "probes and scrapes"
    );
    assert!(
        config["admin"]["listen"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "the admin API stays on loopback"
    );
}

#[test]
fn compose_gateway_config_passes_check_config_in_the_init_layout() {
    let out = check_config(
        "deploy/compose/gateway.yaml",
        &read("deploy/compose/gateway.yaml"),
        &[],
    );
    assert!(out.contains("state redis redis://redis:6379"), "{out}");
}

fn kubernetes_config() -> String {
    let docs = yaml_docs("deploy/kubernetes/configmap.yaml");
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["certgate.yaml"].as_str())
        .expect("a ConfigMap with certgate.yaml")
        .to_string()
}

#[test]
fn kubernetes_config_passes_check_config_in_the_init_layout() {
    let out = check_config(
        "deploy/kubernetes/configmap.yaml (certgate.yaml)",
        &kubernetes_config(),
        &[("secrets/redis-password", "a test password\n")],
    );
    assert!(out.contains("state redis "), "{out}");
}

// ---------------------------------------------------------------------------------------
// Docker and Compose

#[test]
fn dockerfile_copies_what_the_build_reads_and_uses_the_init_layout() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    // What the build stage copies (COPY lines without --from, before the runtime stage).
    let runtime_at = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let mut copied = BTreeSet::new();
    for l in &lines[..runtime_at] {
        if let Some(args) = l.strip_prefix("COPY ") {
            let mut words: Vec<&str> = args.split_whitespace().collect();
            let _destination = words.pop();
            copied.extend(
                words
                    .into_iter()
                    .map(|w| w.trim_end_matches('/').to_string()),
            );
        }
    }
    let covered = |path: &str| {
        copied
            .iter()
            .any(|c| path == c.as_str() || path.starts_with(&format!("{c}/")))
    };
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src/main.rs".to_string(),
    ];
    if root().join("build.rs").exists() {
        needed.push("build.rs".into());
    }
    // Target paths in the manifest, and benches inferred from [[bench]] names.
    let manifest = read("Cargo.toml");
    let mut section = String::new();
    for l in manifest.lines().map(str::trim) {
        if l.starts_with('[') {
            section = l.to_string();
        } else if let Some(v) = l.strip_prefix("path = \"")
            && section != "[dependencies]"
            && section != "[dev-dependencies]"
        {
            let v = v.trim_end_matches('"');
            if v != "." {
                needed.push(v.to_string());
            }
        } else if let Some(name) = l.strip_prefix("name = \"")
            && section == "[[bench]]"
        {
            let name = name.trim_end_matches('"');
            let single = format!("benches/{name}.rs");
            if root().join(&single).exists() {
                needed.push(single);
            }
        }
    }
    // Files the sources embed (test modules are not part of the release build).
    for file in rust_files(&root().join("src")) {
        if file.file_name().is_some_and(|n| n == "tests.rs")
            || file.components().any(|c| c.as_os_str() == "tests")
        {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in source.match_indices(macro_name) {
                let rest = &source[at + macro_name.len()..];
                let target = &rest[..rest.find('"').unwrap()];
                let resolved = file.parent().unwrap().join(target);
                let resolved = std::fs::canonicalize(&resolved).unwrap_or(resolved);
                if let Ok(rel) = resolved.strip_prefix(std::fs::canonicalize(root()).unwrap()) {
                    needed.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    assert!(
        needed.iter().any(|n| n == "config/certgate.yaml"),
        "the include_str! scan missed src/demo.rs's template: {needed:?}"
    );
    for n in &needed {
        assert!(
            covered(n.as_str()),
            "the Dockerfile's build stage does not copy {n} (copies {copied:?})"
        );
    }

    // .dockerignore keeps secrets and build output out, and none of what is copied.
    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for must in [
        ".git", "target", "fuzz", "demo", "data", "secrets", "*.key", "deploy",
    ] {
        assert!(
            ignored.contains(must),
            ".dockerignore does not exclude {must}"
        );
    }
    for c in &copied {
        assert!(!ignored.contains(c.as_str()), ".dockerignore excludes {c}");
    }
    assert!(!ignored.contains("config/docker.yaml"));

    // The runtime stage: the config where `init` puts it, the env default pointing there,
    // the health check, the ports of the built-in config.
    let runtime = lines[runtime_at..].join("\n");
    assert!(runtime.contains(&format!("COPY config/docker.yaml {CONFIG_PATH}")));
    assert!(runtime.contains(&format!("ENV CERTGATE_CONFIG={CONFIG_PATH}")));
    assert!(runtime.contains("CMD [\"/usr/local/bin/certgate\", \"health\"]"));
    assert!(runtime.contains("USER certgate:certgate"));
    assert!(runtime.contains("--uid 10001"));
    assert!(runtime.contains("VOLUME [\"/var/lib/certgate\"]"));
    let config = yaml("config/docker.yaml");
    let expose = format!(
        "EXPOSE {} {}",
        port_of(config["listen"].as_str().expect("listen")),
        port_of(
            config["metrics"]["listen"]
                .as_str()
                .expect("metrics.listen")
        )
    );
    assert!(runtime.contains(&expose), "Dockerfile lacks {expose}");
    assert_eq!(
        config["state"]["path"], "/var/lib/certgate/certgate.db",
        "the store lives on the volume"
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn compose_file_wires_two_gateways_redis_app_prometheus_and_grafana() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    for name in [
        "redis",
        "app",
        "gateway-a",
        "gateway-b",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let gateway = yaml("deploy/compose/gateway.yaml");
    assert_eq!(gateway["state"]["backend"], "redis");
    let upstream = gateway["upstream"]["url"].as_str().expect("upstream.url");
    assert!(upstream.starts_with("http://app:"), "{upstream}");
    let redis = gateway["state"]["redis"]["url"]
        .as_str()
        .expect("redis url");
    assert!(redis.starts_with("redis://redis:"), "{redis}");
    let drain = drain_seconds(&gateway);
    let tls_port = port_of(gateway["listen"].as_str().expect("listen"));

    let mut host_ports = BTreeSet::new();
    for name in ["gateway-a", "gateway-b"] {
        let service = &compose["services"][name];
        let volumes: Vec<&str> = service["volumes"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: volumes (the x-gateway anchor merged in)"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for mount in [
            format!("./compose/gateway.yaml:{CONFIG_PATH}:ro"),
            "./certgate/certs:/etc/certgate/certs:ro".to_string(),
            "./certgate/secrets:/etc/certgate/secrets:ro".to_string(),
        ] {
            assert!(volumes.contains(&mount.as_str()), "{name} lacks {mount}");
        }
        assert_eq!(service["build"]["context"], "..", "{name}");
        assert!(
            service["environment"]["CERTGATE_PUBLIC_URL"].is_string(),
            "{name}: CERTGATE_PUBLIC_URL"
        );
        let grace = seconds(
            service["stop_grace_period"]
                .as_str()
                .expect("stop_grace_period"),
        );
        assert!(
            grace > drain,
            "{name}: stop_grace_period {grace}s <= drain {drain}s"
        );
        for port in service["ports"].as_array().expect("ports") {
            let port = port.as_str().expect("ports as strings");
            let (host, container) = port.rsplit_once(':').expect("HOST:CONTAINER");
            assert_eq!(container, tls_port.to_string(), "{name}: {port}");
            assert!(
                host_ports.insert(host.to_string()),
                "host port {host} twice"
            );
        }
    }
    // Every file the stack mounts exists, except the PKI `certgate init` makes, which git
    // ignores.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if let Some(rel) = source.strip_prefix("./") {
                if rel.starts_with("certgate/") {
                    continue;
                }
                assert!(
                    root().join("deploy").join(rel).exists(),
                    "{name} mounts deploy/{rel}, which does not exist"
                );
            }
        }
    }
    assert!(
        read("deploy/.gitignore").lines().any(|l| l == "/certgate/"),
        "deploy/.gitignore must keep the generated PKI out of git"
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn kubernetes_manifests_are_consistent_and_locked_down() {
    let dir = "deploy/kubernetes";
    let kustomization = yaml(&format!("{dir}/kustomization.yaml"));
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource file").to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        resources, on_disk,
        "kustomization.yaml lists every manifest"
    );

    let mut docs = Vec::new();
    for file in &resources {
        docs.extend(yaml_docs(&format!("{dir}/{file}")));
    }
    let deployment = of_kind(&docs, "Deployment");
    assert_eq!(deployment.len(), 1);
    let deployment = deployment[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], *labels);
    let pod = &deployment["spec"]["template"]["spec"];

    let config_text = kubernetes_config();
    let config = yaml_text("the ConfigMap's certgate.yaml", &config_text);
    assert_eq!(config["state"]["backend"], "redis");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    let drain = drain_seconds(&config);
    assert!(
        grace >= drain + 5.0,
        "terminationGracePeriodSeconds {grace} does not cover the drain ({drain}s)"
    );

    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 10001);
    assert_eq!(security["fsGroup"], 10001);
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let csec = &container["securityContext"];
    assert_eq!(csec["readOnlyRootFilesystem"], true);
    assert_eq!(csec["allowPrivilegeEscalation"], false);
    assert_eq!(csec["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // Probes on the metrics listener's port.
    let metrics_port = port_of(
        config["metrics"]["listen"]
            .as_str()
            .expect("metrics.listen"),
    );
    let ports = container["ports"].as_array().expect("ports");
    let port_named = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}"))
    };
    assert_eq!(port_named("metrics"), u64::from(metrics_port));
    assert_eq!(
        port_named("https"),
        u64::from(port_of(config["listen"].as_str().expect("listen")))
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "metrics", "{probe}");
    }

    // The mounts give the config the files it names: ../certs/X and ../secrets/X from
    // /etc/certgate/config are the items of the volumes at /etc/certgate/certs and
    // /etc/certgate/secrets.
    let mut files_at = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mut secret_volumes = 0;
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        assert_eq!(mount["readOnly"], true, "{mount}");
        assert!(
            mount["subPath"].is_null(),
            "subPath mounts never update: {mount}"
        );
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        let mut items = BTreeSet::new();
        if volume["configMap"].is_object() {
            assert_eq!(mount["mountPath"], "/etc/certgate/config");
            let name = volume["configMap"]["name"].as_str().unwrap();
            assert!(
                of_kind(&docs, "ConfigMap")
                    .iter()
                    .any(|c| c["metadata"]["name"] == name),
                "no ConfigMap {name}"
            );
            items.insert("certgate.yaml".to_string());
        }
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for item in source["secret"]["items"].as_array().expect("secret items") {
                items.insert(item["path"].as_str().unwrap().to_string());
            }
        }
        if volume["projected"].is_object() || volume["secret"].is_object() {
            secret_volumes += 1;
        }
        files_at.insert(mount["mountPath"].as_str().unwrap().to_string(), items);
    }
    assert_eq!(
        files_at.get("/etc/certgate/config"),
        Some(&BTreeSet::from(["certgate.yaml".to_string()]))
    );
    assert_eq!(
        container["env"][0],
        serde_json::json!({ "name": "CERTGATE_CONFIG", "value": CONFIG_PATH })
    );
    let named = [
        &config["tls"]["cert"],
        &config["tls"]["key"],
        &config["enrollment"]["ca_cert"],
        &config["enrollment"]["ca_key"],
        &config["admin"]["token_file"],
        &config["state"]["redis"]["password_file"],
    ];
    for file in named {
        let file = file.as_str().expect("the config names its files");
        let (folder, name) = file
            .strip_prefix("../")
            .and_then(|f| f.split_once('/'))
            .unwrap_or_else(|| panic!("{file} is not ../FOLDER/NAME"));
        let mounted = files_at
            .get(&format!("/etc/certgate/{folder}"))
            .unwrap_or_else(|| panic!("nothing mounted at /etc/certgate/{folder}"));
        assert!(
            mounted.contains(name),
            "{file}: not in the mounted {mounted:?}"
        );
    }
    // Secret files are 0400 (0440 with the fsGroup). Kubernetes reads 0400 as octal; the
    // YAML 1.2 parser here would not, so the text is checked.
    let deployment_text = read(&format!("{dir}/deployment.yaml"));
    assert_eq!(
        deployment_text.matches("defaultMode: 0400\n").count(),
        secret_volumes,
        "every Secret volume has defaultMode: 0400"
    );
    assert!(secret_volumes >= 2);

    // PodDisruptionBudget and Services select the pods.
    let pdb = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb.len(), 1);
    assert_eq!(pdb[0]["spec"]["minAvailable"], 1);
    assert_eq!(pdb[0]["spec"]["selector"]["matchLabels"], *labels);
    let services = of_kind(&docs, "Service");
    assert!(!services.is_empty());
    let port_names: BTreeSet<&str> = ports.iter().filter_map(|p| p["name"].as_str()).collect();
    for service in services {
        assert_eq!(
            service["spec"]["selector"], *labels,
            "{}",
            service["metadata"]
        );
        for port in service["spec"]["ports"].as_array().expect("service ports") {
            let target = port["targetPort"].as_str().expect("named targetPort");
            assert!(port_names.contains(target), "targetPort {target}");
        }
    }
}
