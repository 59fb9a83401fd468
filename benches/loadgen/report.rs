//! Renders the JSON result lines of one `compare.sh` run as the Markdown tables of
//! `benches/RESULTS.md`: the side-by-side table with certgate ÷ peer ratios, the
//! keep-alive matrix (two topologies × two header sets × TLS 1.3 and 1.2), the targets,
//! where the server CPU goes (user and kernel time, system calls, and what the targets
//! leave for user space), the bottleneck check, the state-check cost, and the crypto
//! ceiling.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// JSON lines from `loadgen run` / `loadgen idle`, tagged server=… case=….
    #[arg(long)]
    pub results: PathBuf,
    /// Output of `openssl speed ecdsap256 ecdhp256 ecdhx25519`.
    #[arg(long)]
    pub openssl: Option<PathBuf>,
    /// Output of `loadgen speed`.
    #[arg(long)]
    pub awslc: Option<PathBuf>,
    /// Output of `cargo bench --bench hot_path`.
    #[arg(long)]
    pub criterion: Option<PathBuf>,
    /// Why system calls were not counted (printed under the CPU split).
    #[arg(long)]
    pub syscalls_note: Option<String>,
}

const PEERS: [&str; 2] = ["nginx", "haproxy"];
const SERVERS: [(&str, &str); 3] = [
    ("certgate", "certgate"),
    ("nginx", "nginx"),
    ("haproxy", "HAProxy"),
];

/// Runs by (server, case); a case measured several times keeps its median run.
struct Runs(BTreeMap<(String, String), Vec<Value>>);

impl Runs {
    fn load(text: &str) -> Self {
        let mut m: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let key = (
                v["server"].as_str().unwrap_or("?").to_string(),
                v["case"].as_str().unwrap_or("?").to_string(),
            );
            m.entry(key).or_default().push(v);
        }
        for runs in m.values_mut() {
            let key = |v: &Value| {
                v["rps"]
                    .as_f64()
                    .or_else(|| v["rss_kb"].as_f64())
                    .unwrap_or(0.0)
            };
            runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
        }
        Runs(m)
    }

    fn get(&self, server: &str, case: &str) -> Option<&Value> {
        let runs = self.0.get(&(server.to_string(), case.to_string()))?;
        runs.get(runs.len() / 2)
    }

    fn all(&self, server: &str, case: &str) -> &[Value] {
        self.0
            .get(&(server.to_string(), case.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn num(&self, server: &str, case: &str, field: &str) -> Option<f64> {
        let v = self.get(server, case)?;
        match field {
            "rss_mib" => v["rss_kb"].as_f64().map(|k| k / 1024.0),
            "pss_mib" => v["pss_kb"].as_f64().map(|k| k / 1024.0),
            "resumed_share" => {
                let r = v["handshakes_resumed"].as_f64()?;
                let f = v["handshakes_full"].as_f64()?;
                (r + f > 0.0).then(|| r / (r + f))
            }
            f => v[f].as_f64(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

struct Row {
    label: &'static str,
    case: &'static str,
    field: &'static str,
    better: Better,
    digits: usize,
}

const fn row(
    label: &'static str,
    case: &'static str,
    field: &'static str,
    better: Better,
    digits: usize,
) -> Row {
    Row {
        label,
        case,
        field,
        better,
        digits,
    }
}

use Better::{Higher, Lower};

const ROWS: &[Row] = &[
    row(
        "TLS 1.3 keep-alive c=50: req/s",
        "ka50-1.3",
        "rps",
        Higher,
        0,
    ),
    row(
        "TLS 1.3 keep-alive c=50: p50 ms",
        "ka50-1.3",
        "p50_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.3 keep-alive c=50: p99 ms",
        "ka50-1.3",
        "p99_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.3 keep-alive c=50: server CPU µs/req",
        "ka50-1.3",
        "server_cpu_us_per_req",
        Lower,
        1,
    ),
    row("TLS 1.3 keep-alive c=1: req/s", "ka1-1.3", "rps", Higher, 0),
    row(
        "TLS 1.3 keep-alive c=1: p50 ms",
        "ka1-1.3",
        "p50_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.3 keep-alive c=1: p99 ms",
        "ka1-1.3",
        "p99_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.2 keep-alive c=50: req/s",
        "ka50-1.2",
        "rps",
        Higher,
        0,
    ),
    row(
        "TLS 1.2 keep-alive c=50: p50 ms",
        "ka50-1.2",
        "p50_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.2 keep-alive c=50: p99 ms",
        "ka50-1.2",
        "p99_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.2 keep-alive c=50: server CPU µs/req",
        "ka50-1.2",
        "server_cpu_us_per_req",
        Lower,
        1,
    ),
    row("TLS 1.2 keep-alive c=1: req/s", "ka1-1.2", "rps", Higher, 0),
    row(
        "TLS 1.2 keep-alive c=1: p99 ms",
        "ka1-1.2",
        "p99_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.3 full handshake: handshakes/s",
        "full-1.3",
        "rps",
        Higher,
        0,
    ),
    row(
        "TLS 1.3 full handshake: server CPU µs/handshake",
        "full-1.3",
        "server_cpu_us_per_req",
        Lower,
        1,
    ),
    row(
        "TLS 1.3 full handshake: p99 ms",
        "full-1.3",
        "p99_ms",
        Lower,
        3,
    ),
    row(
        "TLS 1.2 full handshake: handshakes/s",
        "full-1.2",
        "rps",
        Higher,
        0,
    ),
    row(
        "TLS 1.2 full handshake: server CPU µs/handshake",
        "full-1.2",
        "server_cpu_us_per_req",
        Lower,
        1,
    ),
    row(
        "TLS 1.3 full, RSA-2048 client: handshakes/s",
        "full-1.3-rsa",
        "rps",
        Higher,
        0,
    ),
    row(
        "TLS 1.3 full, RSA-2048 client: server CPU µs/handshake",
        "full-1.3-rsa",
        "server_cpu_us_per_req",
        Lower,
        1,
    ),
    row(
        "TLS 1.3 resumed: handshakes/s",
        "resume-1.3",
        "rps",
        Higher,
        0,
    ),
    row(
        "TLS 1.3 resumed: server CPU µs/handshake",
        "resume-1.3",
        "server_cpu_us_per_req",
        Lower,
        1,
    ),
    row(
        "TLS 1.3 resumed: share actually resumed",
        "resume-1.3",
        "resumed_share",
        Higher,
        3,
    ),
    row(
        "TLS 1.2 resumed: handshakes/s",
        "resume-1.2",
        "rps",
        Higher,
        0,
    ),
    row(
        "TLS 1.2 resumed: server CPU µs/handshake",
        "resume-1.2",
        "server_cpu_us_per_req",
        Lower,
        1,
    ),
    row(
        "TLS 1.2 resumed: share actually resumed",
        "resume-1.2",
        "resumed_share",
        Higher,
        3,
    ),
    row(
        "10,000 idle TLS connections: RSS MiB",
        "idle",
        "rss_mib",
        Lower,
        1,
    ),
    row(
        "10,000 idle TLS connections: PSS MiB",
        "idle",
        "pss_mib",
        Lower,
        1,
    ),
];

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        None => "–".into(),
        Some(v) if digits == 0 => {
            let s = format!("{:.0}", v);
            // thousands separators
            let neg = s.starts_with('-');
            let d: Vec<char> = s.trim_start_matches('-').chars().collect();
            let mut out = String::new();
            for (i, c) in d.iter().enumerate() {
                if i > 0 && (d.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(*c);
            }
            if neg { format!("-{out}") } else { out }
        }
        Some(v) => format!("{v:.digits$}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into())
}

fn side_by_side(runs: &Runs, out: &mut String) {
    out.push_str(
        "| measure (TLS, mode, concurrency) | certgate | nginx | HAProxy | certgate ÷ nginx | certgate ÷ HAProxy |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in ROWS {
        let c = runs.num("certgate", r.case, r.field);
        let n = runs.num("nginx", r.case, r.field);
        let h = runs.num("haproxy", r.case, r.field);
        let arrow = match r.better {
            Higher => "↑",
            Lower => "↓",
        };
        let _ = writeln!(
            out,
            "| {} {arrow} | {} | {} | {} | {} | {} |",
            r.label,
            fmt(c, r.digits),
            fmt(n, r.digits),
            fmt(h, r.digits),
            fmt_ratio(ratio(c, n)),
            fmt_ratio(ratio(c, h)),
        );
    }
    out.push_str(
        "\n↑ higher is better, ↓ lower is better; a ratio is certgate's figure divided by the \
         peer's, so above 1 is better for ↑ rows and below 1 is better for ↓ rows.\n",
    );
}

/// The keep-alive c=50 matrix: (case, topology, header set, TLS). "alone": the gateway
/// alone on its core, load generator and upstream on the other; "shared": gateway and
/// upstream on one core, the load generator alone on the other.
const MATRIX: [(&str, &str, &str, &str); 8] = [
    ("ka50-1.3", "alone", "full", "1.3"),
    ("ka50-1.3-small", "alone", "small", "1.3"),
    ("ka50-1.3-shared", "shared", "full", "1.3"),
    ("ka50-1.3-shared-small", "shared", "small", "1.3"),
    ("ka50-1.2", "alone", "full", "1.2"),
    ("ka50-1.2-small", "alone", "small", "1.2"),
    ("ka50-1.2-shared", "shared", "full", "1.2"),
    ("ka50-1.2-shared-small", "shared", "small", "1.2"),
];

fn matrix(runs: &Runs, out: &mut String) {
    out.push_str(
        "Keep-alive c=50. Topology *alone*: the gateway alone on core 0, the load generator \
         and the upstream on core 1. *shared*: the gateway and the upstream on core 0, the \
         load generator alone on core 1. Header set *full*: account, serial, fingerprint, \
         subject, not-after and the RFC 9440 `Client-Cert` (nginx: its PEM form), plus \
         `X-Forwarded-For/Proto/Host`; *small*: account, serial and fingerprint plus the \
         same `X-Forwarded-*` (the others are still removed from client requests). Proxy \
         CPU is the gateway's processes, upstream CPU the upstream's process, both from \
         `/proc/<pid>/stat` over the measured window.\n\n\
         | topology | headers | TLS | server | req/s ↑ | p99 ms ↓ | proxy CPU µs/req ↓ | upstream CPU µs/req | req/s ÷ certgate |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for (case, topo, headers, tls) in MATRIX {
        let c = runs.num("certgate", case, "rps");
        for (server, name) in SERVERS {
            if runs.get(server, case).is_none() {
                continue;
            }
            let rps = runs.num(server, case, "rps");
            let _ = writeln!(
                out,
                "| {topo} | {headers} | {tls} | {name} | {} | {} | {} | {} | {} |",
                fmt(rps, 0),
                fmt(runs.num(server, case, "p99_ms"), 3),
                fmt(runs.num(server, case, "server_cpu_us_per_req"), 1),
                fmt(runs.num(server, case, "upstream_cpu_us_per_req"), 1),
                if server == "certgate" {
                    "1.00×".into()
                } else {
                    fmt_ratio(ratio(rps, c))
                },
            );
        }
    }
}

fn h2(runs: &Runs, out: &mut String) {
    out.push_str(
        "TLS 1.3, HTTP/2 from the client (ALPN h2): 50 concurrent streams, each one request \
         at a time, spread over a few connections; every gateway speaks HTTP/1.1 keep-alive \
         to the upstream. Gateway alone on its core, full header set. HTTP/1.1 keep-alive \
         c=50 of the same run beside it.\n\n\
         | server | connections | ALPN | HTTP/2 req/s ↑ | p50 ms | p99 ms ↓ | proxy CPU µs/req ↓ | upstream CPU µs/req | errors | non-2xx | HTTP/1.1 req/s | HTTP/1.1 p99 ms |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (server, name) in SERVERS {
        let Some(v) = runs.get(server, "h2-1.3") else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v["h2_conns"],
            v["negotiated"]["alpn"].as_str().unwrap_or("–"),
            fmt(v["rps"].as_f64(), 0),
            fmt(v["p50_ms"].as_f64(), 3),
            fmt(v["p99_ms"].as_f64(), 3),
            fmt(v["server_cpu_us_per_req"].as_f64(), 1),
            fmt(v["upstream_cpu_us_per_req"].as_f64(), 1),
            v["errors"],
            v["non_2xx"],
            fmt(runs.num(server, "ka50-1.3", "rps"), 0),
            fmt(runs.num(server, "ka50-1.3", "p99_ms"), 3),
        );
    }
    let c = runs.num("certgate", "h2-1.3", "rps");
    let ratios: Vec<String> = SERVERS[1..]
        .iter()
        .filter_map(|(s, name)| {
            let r = ratio(c, runs.num(s, "h2-1.3", "rps"))?;
            Some(format!("{r:.2}× {name}"))
        })
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(out, "\ncertgate's HTTP/2 req/s: {}.", ratios.join(", "));
    }
}

/// A transfer's resident memory, MiB: (at the start, highest sample during it).
fn transfer_rss(runs: &Runs, server: &str, dir: &str) -> Option<(f64, f64)> {
    let v = runs.get(server, dir)?;
    Some((
        v["rss_before_kb"].as_f64()? / 1024.0,
        v["rss_peak_kb"].as_f64()? / 1024.0,
    ))
}

/// RSS counts as flat when its peak during the transfer stays within this of the start.
const FLAT_MIB: f64 = 16.0;

fn transfers(runs: &Runs, out: &mut String) {
    let size = ["download", "upload"]
        .iter()
        .find_map(|d| runs.num("direct", d, "bytes"))
        .map_or("–".into(), |b| format!("{:.0} MiB", b / 1048576.0));
    let _ = write!(
        out,
        "One {size} download (`GET /stream/<bytes>`) and one upload (`POST /sink`, \
         Content-Length) on one connection, timed from the request to the last byte. *direct* \
         is the baseline: the same transfer in plain HTTP/1.1 straight to the upstream \
         (no TLS, no proxy hop; load generator and upstream on core 1, as in every \
         transfer); through a gateway the client speaks TLS 1.3 to it on core 0 and it \
         speaks HTTP/1.1 to the upstream. The upstream streams from one 256 KiB buffer and \
         discards what it reads. Memory: `VmRSS` of the gateway's processes (for direct, the \
         upstream's) from `/proc/<pid>/status`, sampled every 10 ms during the transfer, and \
         `VmHWM` (the peak since the process started) after it. nginx runs with \
         `proxy_buffering off` and `proxy_request_buffering off` on these two paths.\n\n\
         | path | download MiB/s ↑ | ÷ direct | upload MiB/s ↑ | ÷ direct | RSS during download: start → peak MiB | RSS during upload: start → peak MiB | VmHWM after MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let rss = |server: &str, dir: &str| {
        transfer_rss(runs, server, dir).map_or("–".into(), |(a, b)| format!("{a:.1} → {b:.1}"))
    };
    for (server, name) in [("direct", "direct (plain HTTP/1.1 to the upstream)")]
        .into_iter()
        .chain(SERVERS)
    {
        if runs.get(server, "download").is_none() && runs.get(server, "upload").is_none() {
            continue;
        }
        let down = runs.num(server, "download", "mib_per_s");
        let up = runs.num(server, "upload", "mib_per_s");
        let hwm = runs
            .num(server, "upload", "hwm_after_kb")
            .or_else(|| runs.num(server, "download", "hwm_after_kb"));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(down, 0),
            fmt_ratio(ratio(down, runs.num("direct", "download", "mib_per_s"))),
            fmt(up, 0),
            fmt_ratio(ratio(up, runs.num("direct", "upload", "mib_per_s"))),
            rss(server, "download"),
            rss(server, "upload"),
            fmt(hwm.map(|k| k / 1024.0), 1),
        );
    }
}

fn transfer_targets(runs: &Runs, out: &mut String) {
    for (server, name) in SERVERS {
        for dir in ["download", "upload"] {
            let Some(mibs) = runs.num(server, dir, "mib_per_s") else {
                continue;
            };
            let direct = runs.num("direct", dir, "mib_per_s");
            let r = ratio(Some(mibs), direct);
            let rss = transfer_rss(runs, server, dir);
            let text = format!(
                "{} ({mibs:.0} vs {} MiB/s); RSS {}",
                fmt_ratio(r),
                fmt(direct, 0),
                rss.map_or("–".into(), |(a, b)| format!("{a:.1} → {b:.1} MiB"))
            );
            let ok = r.zip(rss).map(|(r, (a, b))| r >= 0.9 && b - a <= FLAT_MIB);
            let _ = writeln!(
                out,
                "| {dir} through {name} ≥ 0.9× direct, RSS flat (peak ≤ start + {FLAT_MIB:.0} MiB) | {text} | {} |",
                verdict(ok)
            );
        }
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// The better of the two peers for a field.
fn best_peer(runs: &Runs, case: &str, field: &str, better: Better) -> Option<(&'static str, f64)> {
    PEERS
        .iter()
        .filter_map(|p| runs.num(p, case, field).map(|v| (*p, v)))
        .reduce(|a, b| match better {
            Higher if b.1 > a.1 => b,
            Lower if b.1 < a.1 => b,
            _ => a,
        })
}

fn targets(runs: &Runs, decision_ns: Option<f64>, out: &mut String) {
    out.push_str("| target | measured | verdict |\n|---|---|---|\n");
    for (case, topo, headers, tls) in MATRIX {
        let c = runs.num("certgate", case, "rps");
        let cp99 = runs.num("certgate", case, "p99_ms");
        let best = best_peer(runs, case, "rps", Higher);
        let (text, ok) = match (c, cp99, best) {
            (Some(c), Some(cp99), Some((peer, p))) => {
                let pp99 = runs.num(peer, case, "p99_ms").unwrap_or(f64::NAN);
                let r = c / p;
                (
                    format!(
                        "{r:.2}× {peer} ({} vs {} req/s); p99 {cp99:.3} vs {pp99:.3} ms",
                        fmt(Some(c), 0),
                        fmt(Some(p), 0)
                    ),
                    Some(r >= 1.25 && cp99 <= pp99),
                )
            }
            _ => ("–".into(), None),
        };
        let floor = match (ok, keepalive_floor(runs, case)) {
            (Some(false), Some(f)) => format!(
                " (needs ≤ {:.1} µs/req of server CPU; kernel alone {:.1})",
                f.budget, f.kernel
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| keep-alive c=50 (TLS {tls}, {topo}, {headers} headers) req/s ≥ 1.25× the better peer, p99 no worse | {text} | {}{floor} |",
            verdict(ok)
        );
    }
    for case in ["full-1.3", "full-1.2"] {
        let c = runs.num("certgate", case, "server_cpu_us_per_req");
        let best = best_peer(runs, case, "server_cpu_us_per_req", Lower);
        let (text, ok) = match (c, best) {
            (Some(c), Some((peer, p))) => (
                format!("{:.2} of {peer}'s ({c:.0} vs {p:.0} µs)", c / p),
                Some(c <= p / 3.0),
            ),
            _ => ("–".into(), None),
        };
        let _ = writeln!(
            out,
            "| full handshake ({case}) server CPU ≤ 1/3 of the better peer's | {text} | {} |",
            verdict(ok)
        );
    }
    for v in ["1.3", "1.2"] {
        let full = runs.num("certgate", &format!("full-{v}"), "rps");
        let res = runs.num("certgate", &format!("resume-{v}"), "rps");
        let full_cpu = runs.num("certgate", &format!("full-{v}"), "server_cpu_us_per_req");
        let res_cpu = runs.num("certgate", &format!("resume-{v}"), "server_cpu_us_per_req");
        let (text, ok) = match (full, res) {
            (Some(f), Some(r)) => {
                let cpu = match (full_cpu, res_cpu) {
                    (Some(a), Some(b)) if b > 0.0 => format!("; by server CPU {:.2}×", a / b),
                    _ => String::new(),
                };
                (
                    format!(
                        "{:.2}× ({} vs {} /s){cpu}",
                        r / f,
                        fmt(Some(r), 0),
                        fmt(Some(f), 0)
                    ),
                    Some(r >= 3.0 * f),
                )
            }
            _ => ("–".into(), None),
        };
        let floor = match (ok, resumed_floor(runs, v)) {
            (Some(false), Some(f)) => format!(
                " (needs ≤ {:.0} µs of server CPU per resumed connection; kernel alone {:.0})",
                f.budget, f.kernel
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| TLS {v} resumed handshakes/s ≥ 3× certgate's full | {text} | {}{floor} |",
            verdict(ok)
        );
    }
    let _ = writeln!(
        out,
        "| per-request decision, cache hit < 1 µs (criterion `decision_cache_hit`) | {} | {} |",
        decision_ns
            .map(|n| format!("{n:.0} ns"))
            .unwrap_or_else(|| "–".into()),
        verdict(decision_ns.map(|n| n < 1000.0))
    );
    let rss = runs.num("certgate", "idle", "rss_mib");
    let held = runs
        .get("certgate", "idle")
        .and_then(|v| v["held"].as_u64());
    let _ = writeln!(
        out,
        "| 10,000 idle TLS connections < 300 MiB RSS | {} | {} |",
        match (rss, held) {
            (Some(r), Some(h)) => format!("{r:.0} MiB with {h} held"),
            _ => "–".into(),
        },
        verdict(rss.zip(held).map(|(r, h)| r < 300.0 && h >= 10_000))
    );
    // Throughput of a server-bound run is 1 / (server CPU per request); the CPU figure is
    // the one other processes on a shared machine cannot disturb, so the verdict uses it.
    let on = median(runs, "certgate", "state-on", "rps");
    let off = median(runs, "certgate-skip", "state-on", "rps");
    let cpu_on = median(runs, "certgate", "state-on", "server_cpu_us_per_req");
    let cpu_off = median(runs, "certgate-skip", "state-on", "server_cpu_us_per_req");
    let cpu_cost = cpu_on.zip(cpu_off).map(|(a, b)| (a - b) / a);
    let _ = writeln!(
        out,
        "| revocation + reset check < 3% of keep-alive throughput | {}; {} | {} |",
        match cpu_cost {
            Some(c) => format!(
                "server CPU per request {:+.1}% ({:.2} vs {:.2} µs)",
                c * 100.0,
                cpu_on.unwrap_or(0.0),
                cpu_off.unwrap_or(0.0)
            ),
            None => "–".into(),
        },
        match (on, off) {
            (Some(a), Some(b)) => format!(
                "req/s {:+.1}% ({} vs {}, medians)",
                (a - b) / b * 100.0,
                fmt(Some(a), 0),
                fmt(Some(b), 0)
            ),
            _ => "–".into(),
        },
        verdict(cpu_cost.map(|c| c < 0.03))
    );
}

fn feature_targets(runs: &Runs, out: &mut String) {
    for (case, on, label) in FEATURES {
        let cost = feature_cost(runs, case, on);
        let _ = writeln!(
            out,
            "| {label} costs < 3% of keep-alive throughput and < 3% CPU per request | {} | {} |",
            cost.map_or("–".into(), |(r, c)| format!(
                "req/s {:+.1}%, CPU per request {:+.1}% (medians)",
                r * 100.0,
                c * 100.0
            )),
            verdict(cost.map(|(r, c)| -r < 0.03 && c < 0.03)),
        );
    }
}

/// What a CPU target leaves certgate, from figures of the same run: the server CPU per
/// request (or connection) the target allows, and what certgate spends of it in the kernel
/// and in user space today.
struct Floor {
    /// The figure the target is derived from (the better peer's, or certgate's full
    /// handshake), and who it belongs to.
    from: f64,
    from_who: &'static str,
    budget: f64,
    kernel: f64,
    user: f64,
    syscalls: Option<f64>,
}

impl Floor {
    fn certgate(
        runs: &Runs,
        case: &str,
        from: f64,
        from_who: &'static str,
        budget: f64,
    ) -> Option<Self> {
        Some(Floor {
            from,
            from_who,
            budget,
            kernel: runs.num("certgate", case, "server_sys_us_per_req")?,
            user: runs.num("certgate", case, "server_user_us_per_req")?,
            syscalls: runs.num("certgate", case, "server_syscalls_per_req"),
        })
    }

    /// "…, leaving ≤ N µs for user space (now M)".
    fn rest(&self, unit: &str) -> String {
        let left = self.budget - self.kernel;
        let calls = self
            .syscalls
            .map(|c| format!(" ({c:.1} system calls)"))
            .unwrap_or_default();
        if left > 0.0 {
            format!(
                "{calls}, leaving ≤ {left:.1} {unit} for user space (now {:.1})",
                self.user
            )
        } else {
            format!(
                "{calls}, more than the whole budget before any user space (now {:.1})",
                self.user
            )
        }
    }
}

/// Keep-alive req/s ≥ 1.25× the better peer: certgate's server CPU per request must be
/// ≤ the better peer's ÷ 1.25 (a server-bound run's throughput is 1 / CPU per request).
fn keepalive_floor(runs: &Runs, case: &str) -> Option<Floor> {
    let (peer, p) = best_peer(runs, case, "server_cpu_us_per_req", Lower)?;
    let name = SERVERS.iter().find(|s| s.0 == peer).map_or(peer, |s| s.1);
    Floor::certgate(runs, case, p, name, p / 1.25)
}

/// Resumed handshakes/s ≥ 3× certgate's full: a resumed connection must cost ≤ a third of
/// certgate's own full handshake.
fn resumed_floor(runs: &Runs, v: &str) -> Option<Floor> {
    let full = runs.num("certgate", &format!("full-{v}"), "server_cpu_us_per_req")?;
    Floor::certgate(runs, &format!("resume-{v}"), full, "certgate", full / 3.0)
}

const SPLIT_CASES: [(&str, &str); 6] = [
    ("ka50-1.3", "TLS 1.3 keep-alive c=50"),
    ("ka50-1.2", "TLS 1.2 keep-alive c=50"),
    ("resume-1.3", "TLS 1.3 resumed"),
    ("resume-1.2", "TLS 1.2 resumed"),
    ("full-1.3", "TLS 1.3 full handshake"),
    ("full-1.2", "TLS 1.2 full handshake"),
];

fn cpu_split(runs: &Runs, syscalls_note: Option<&str>, out: &mut String) {
    let counted = SPLIT_CASES.iter().any(|(case, _)| {
        SERVERS
            .iter()
            .any(|(s, _)| runs.num(s, case, "server_syscalls_per_req").is_some())
    });
    out.push_str(
        "Server CPU per request in user space and in the kernel (utime and stime of \
         `/proc/<pid>/stat` over the measured window; in the resumed and full-handshake \
         cases every connection carries one request, so per request is per connection)",
    );
    if counted {
        out.push_str(
            ", and the server's system calls per request in the same window \
             (`perf stat -e raw_syscalls:sys_enter`, which adds a few tens of ns of kernel \
             time to each of them)",
        );
    }
    out.push_str(
        ".\n\n| case | server | user µs/req | kernel µs/req | total µs/req | kernel share |",
    );
    if counted {
        out.push_str(" system calls/req |");
    }
    out.push_str("\n|---|---|---:|---:|---:|---:|");
    if counted {
        out.push_str("---:|");
    }
    out.push('\n');
    for (case, label) in SPLIT_CASES {
        for (server, name) in SERVERS {
            let user = runs.num(server, case, "server_user_us_per_req");
            let sys = runs.num(server, case, "server_sys_us_per_req");
            let total = user.zip(sys).map(|(u, k)| u + k);
            let share = ratio(sys, total).map(|r| format!("{:.0}%", r * 100.0));
            let _ = write!(
                out,
                "| {label} | {name} | {} | {} | {} | {} |",
                fmt(user, 1),
                fmt(sys, 1),
                fmt(total, 1),
                share.unwrap_or_else(|| "–".into()),
            );
            if counted {
                let _ = write!(
                    out,
                    " {} |",
                    fmt(runs.num(server, case, "server_syscalls_per_req"), 1)
                );
            }
            out.push('\n');
        }
    }
    if !counted {
        let _ = writeln!(
            out,
            "\nSystem calls were not counted: {}.",
            syscalls_note.unwrap_or("perf (`perf stat -e raw_syscalls:sys_enter`) was not used")
        );
    }
    out.push('\n');
    for (case, tls) in [("ka50-1.3", "1.3"), ("ka50-1.2", "1.2")] {
        let line = match keepalive_floor(runs, case) {
            Some(f) => format!(
                "1.25× the better peer ({}, {:.1} µs/req) needs certgate at ≤ {:.1} µs/req in \
                 total; its kernel share alone is {:.1} µs/req{}.",
                f.from_who,
                f.from,
                f.budget,
                f.kernel,
                f.rest("µs/req")
            ),
            None => "not measured.".into(),
        };
        let _ = writeln!(out, "- Keep-alive c=50, TLS {tls}: {line}");
    }
    for v in ["1.3", "1.2"] {
        let line = match resumed_floor(runs, v) {
            Some(f) => format!(
                "3× certgate's own full handshake ({:.0} µs) needs a resumed connection at \
                 ≤ {:.1} µs; certgate's kernel share of a resumed connection alone is {:.1} µs{}.",
                f.from,
                f.budget,
                f.kernel,
                f.rest("µs")
            ),
            None => "not measured.".into(),
        };
        let _ = writeln!(out, "- Resumed, TLS {v}: {line}");
    }
}

fn bottleneck(runs: &Runs, out: &mut String) {
    out.push_str(
        "| server | case | req/s | server CPU (cores) | load generator CPU | upstream CPU | core 0 busy | core 1 busy | errors | non-2xx | limited by |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for ((server, case), vs) in &runs.0 {
        for v in vs {
            if v["mode"] == "idle" || v["mode"] == "transfer" {
                continue;
            }
            let secs = v["seconds"].as_f64().unwrap_or(1.0);
            let s = v["server_cpu_util"].as_f64().unwrap_or(0.0);
            let c = v["client_cpu_util"].as_f64().unwrap_or(0.0);
            let u = v["upstream_cpu_s"].as_f64().map(|x| x / secs);
            let cores: Vec<f64> = v["core_busy"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let client_side = c + u.unwrap_or(0.0);
            let limit = if s >= 0.9 {
                "server CPU"
            } else if c >= 0.9 || client_side >= 0.95 {
                "load generator CPU"
            } else if v["conns"].as_u64() == Some(1) {
                "latency (c=1)"
            } else {
                "neither at 90%"
            };
            let pct = |x: Option<f64>| {
                x.map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or("–".into())
            };
            let _ = writeln!(
                out,
                "| {server} | {case} | {} | {s:.2} | {c:.2} | {} | {} | {} | {} | {} | {limit} |",
                fmt(v["rps"].as_f64(), 0),
                u.map(|u| format!("{u:.2}")).unwrap_or("–".into()),
                pct(cores.first().copied()),
                pct(cores.get(1).copied()),
                v["errors"],
                v["non_2xx"],
            );
        }
    }
}

/// The median of `field` over every run of (server, case).
fn median(runs: &Runs, server: &str, case: &str, field: &str) -> Option<f64> {
    let mut v: Vec<f64> = runs
        .all(server, case)
        .iter()
        .filter_map(|r| r[field].as_f64())
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The features measured on and off: (case, the instance with the feature on, label).
/// The instance with it off is plain `certgate`, run back to back with it.
const FEATURES: [(&str, &str, &str); 2] = [
    (
        "feat-assertion",
        "certgate-assertion",
        "signed identity assertion (`headers.assertion`)",
    ),
    (
        "feat-access-log",
        "certgate-access-log",
        "access log (`log.access: true`, one line per request to a file)",
    ),
];

/// The relative cost of a feature: (req/s change, CPU per request change), medians.
fn feature_cost(runs: &Runs, case: &str, on: &str) -> Option<(f64, f64)> {
    let rps_off = median(runs, "certgate", case, "rps")?;
    let rps_on = median(runs, on, case, "rps")?;
    let cpu_off = median(runs, "certgate", case, "server_cpu_us_per_req")?;
    let cpu_on = median(runs, on, case, "server_cpu_us_per_req")?;
    Some(((rps_on - rps_off) / rps_off, (cpu_on - cpu_off) / cpu_off))
}

fn features(runs: &Runs, out: &mut String) {
    out.push_str(
        "certgate only, TLS 1.3 keep-alive c=50, gateway alone on its core; the same \
         configuration with the feature off and on, run back to back, the order alternating \
         from round to round; medians of the rounds. Both features have an off switch \
         (the assertion is off without `headers.assertion`, the access log with \
         `log.access: false`, the default).\n\n\
         | feature | off: req/s per run | on: req/s per run | req/s Δ (medians) | off: CPU µs/req per run | on: CPU µs/req per run | CPU/req Δ (medians) |\n\
         |---|---|---|---:|---|---|---:|\n",
    );
    for (case, on, label) in FEATURES {
        let list = |server: &str, field: &str, digits: usize| -> String {
            let v: Vec<String> = runs
                .all(server, case)
                .iter()
                .map(|v| fmt(v[field].as_f64(), digits))
                .collect();
            if v.is_empty() {
                "–".into()
            } else {
                v.join(", ")
            }
        };
        let cost = feature_cost(runs, case, on);
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            list("certgate", "rps", 0),
            list(on, "rps", 0),
            cost.map_or("–".into(), |c| format!("{:+.1}%", c.0 * 100.0)),
            list("certgate", "server_cpu_us_per_req", 2),
            list(on, "server_cpu_us_per_req", 2),
            cost.map_or("–".into(), |c| format!("{:+.1}%", c.1 * 100.0)),
        );
    }
}

fn state_check(runs: &Runs, out: &mut String) {
    out.push_str(
        "| build (TLS 1.3 keep-alive c=50, runs alternating) | req/s per run | median req/s | server CPU µs/req per run | median µs/req |\n\
         |---|---|---:|---|---:|\n",
    );
    for (server, name) in [
        ("certgate", "certgate (check on)"),
        (
            "certgate-skip",
            "`bench-skip-state-check` build (check skipped)",
        ),
    ] {
        let list = |field: &str, digits: usize| -> String {
            runs.all(server, "state-on")
                .iter()
                .map(|v| fmt(v[field].as_f64(), digits))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            list("rps", 0),
            fmt(median(runs, server, "state-on", "rps"), 0),
            list("server_cpu_us_per_req", 2),
            fmt(median(runs, server, "state-on", "server_cpu_us_per_req"), 2),
        );
    }
}

/// (sign/s, verify/s) for P-256 ECDSA and op/s for P-256 and X25519 ECDH.
fn parse_openssl(text: &str) -> (Option<(f64, f64)>, Option<f64>, Option<f64>) {
    let nums = |l: &str| -> Vec<f64> {
        l.split_whitespace()
            .filter(|t| !t.ends_with('s'))
            .filter_map(|t| t.parse().ok())
            .collect()
    };
    let mut ecdsa = None;
    let mut p256 = None;
    let mut x25519 = None;
    for l in text.lines() {
        let n = nums(l);
        if l.contains("ecdsa (nistp256)") && n.len() >= 3 {
            ecdsa = Some((n[n.len() - 2], n[n.len() - 1]));
        } else if l.contains("ecdh (nistp256)") && n.len() >= 2 {
            p256 = n.last().copied();
        } else if l.contains("ecdh (X25519)") && n.len() >= 2 {
            x25519 = n.last().copied();
        }
    }
    (ecdsa, p256, x25519)
}

fn crypto(openssl: Option<&str>, awslc: Option<&Value>, out: &mut String) {
    out.push_str(
        "| library (one core) | ECDSA P-256 sign/s | ECDSA P-256 verify/s | ECDH P-256 op/s | ECDH X25519 op/s | server share of a full mTLS handshake (1 sign + 2 verify + 1 X25519) |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    if let Some(text) = openssl {
        let (ecdsa, p256, x) = parse_openssl(text);
        let hs = match (ecdsa, x) {
            (Some((s, v)), Some(x)) => Some(1e6 / s + 2e6 / v + 1e6 / x),
            _ => None,
        };
        let _ = writeln!(
            out,
            "| OpenSSL (`openssl speed`; nginx, HAProxy) | {} | {} | {} | {} | {} |",
            fmt(ecdsa.map(|e| e.0), 0),
            fmt(ecdsa.map(|e| e.1), 0),
            fmt(p256, 0),
            fmt(x, 0),
            hs.map(|h| format!("{h:.0} µs")).unwrap_or("–".into())
        );
    }
    if let Some(v) = awslc {
        let _ = writeln!(
            out,
            "| aws-lc (`loadgen speed`; certgate via rustls) | {} | {} | {} | {} | {} |",
            fmt(v["ecdsa_p256_sign_per_s"].as_f64(), 0),
            fmt(v["ecdsa_p256_verify_per_s"].as_f64(), 0),
            fmt(v["ecdhe_p256_per_s"].as_f64(), 0),
            fmt(v["ecdhe_x25519_per_s"].as_f64(), 0),
            v["server_full_handshake_us"]
                .as_f64()
                .map(|h| format!("{h:.0} µs"))
                .unwrap_or("–".into())
        );
    }
}

/// The median time of criterion's `decision_cache_hit`, in ns.
fn parse_criterion(text: &str) -> Option<f64> {
    let at = text.find("decision_cache_hit")?;
    let rest = &text[at..];
    let t = rest.find("time:")?;
    let inside = rest[t..].split('[').nth(1)?.split(']').next()?;
    let toks: Vec<&str> = inside.split_whitespace().collect();
    let (v, unit) = (toks.get(2)?.parse::<f64>().ok()?, *toks.get(3)?);
    let scale = match unit {
        "ps" => 1e-3,
        "ns" => 1.0,
        "µs" | "us" => 1e3,
        "ms" => 1e6,
        _ => return None,
    };
    Some(v * scale)
}

pub fn run(a: ReportArgs) -> Result<(), BoxError> {
    let runs = Runs::load(&std::fs::read_to_string(&a.results)?);
    let openssl = a
        .openssl
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let awslc: Option<Value> = a
        .awslc
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str(s.trim()).ok());
    let decision_ns = a
        .criterion
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| parse_criterion(&s));

    let mut out = String::new();
    out.push_str("### Side by side\n\n");
    side_by_side(&runs, &mut out);
    out.push_str("\n### Keep-alive by topology and header set\n\n");
    matrix(&runs, &mut out);
    out.push_str("\n### HTTP/2 from the client\n\n");
    h2(&runs, &mut out);
    out.push_str("\n### Large transfers\n\n");
    transfers(&runs, &mut out);
    out.push_str("\n### Targets\n\n");
    targets(&runs, decision_ns, &mut out);
    feature_targets(&runs, &mut out);
    transfer_targets(&runs, &mut out);
    out.push_str("\n### Where the CPU goes\n\n");
    cpu_split(&runs, a.syscalls_note.as_deref(), &mut out);
    out.push_str("\n### Crypto ceiling per core\n\n");
    crypto(openssl.as_deref(), awslc.as_ref(), &mut out);
    out.push_str("\n### Feature costs, on and off\n\n");
    features(&runs, &mut out);
    out.push_str("\n### Revocation and reset check cost\n\n");
    state_check(&runs, &mut out);
    out.push_str("\n### Was the load generator the limit?\n\n");
    bottleneck(&runs, &mut out);
    print!("{out}");
    Ok(())
}
