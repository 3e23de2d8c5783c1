//! deploy/prometheus and deploy/grafana against the real thing:
//! - `promtool check rules` and `promtool test rules` on the alert rules, `promtool check
//!   config` on the example configuration (skipped with a printed reason when promtool is not
//!   installed: Debian's `prometheus` package, which .ci/run installs);
//! - every metric that a dashboard query or an alert names is in the live `/metrics` of each
//!   region of a running two-region cluster after a few payments.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const PROMETHEUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/walletd.json");

/// Series Prometheus makes itself for each target (not in any `/metrics`): alerts may use them.
const SYNTHETIC: [&str; 1] = ["up"];

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn alerts_yml() -> String {
    read(&format!("{PROMETHEUS_DIR}/alerts.yml"))
}

/// True when promtool runs; otherwise prints why the checks are skipped.
fn promtool_present() -> bool {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            println!(
                "SKIPPED: promtool is not installed (Debian package `prometheus`; .ci/run \
                 installs it): {other:?}"
            );
            false
        }
    }
}

/// Runs promtool in deploy/prometheus; panics with its output unless it succeeded.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(PROMETHEUS_DIR))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    println!("promtool {}: {}", args.join(" "), text.trim());
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !promtool_present() {
        return;
    }
    let rules = alert_names(&alerts_yml()).len();
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {rules} rules found")),
        "{out}"
    );
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(
        out.contains("is valid prometheus config file syntax"),
        "{out}"
    );
}

/// The `- alert:` names of a rule file.
fn alert_names(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn the_alerts_cover_what_operators_must_hear_of_and_each_is_unit_tested() {
    let yaml = alerts_yml();
    let names = alert_names(&yaml);
    for want in [
        "WalletdSettlementBlocked",
        "WalletdWatermarkLagging",
        "WalletdMemberUnreachable",
        "WalletdPolicyMismatch",
        "WalletdPolicyFileIgnored",
        "WalletdPolicyDiverged",
        "WalletdStorageFailed",
        "WalletdHttp5xxRate",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // Every alert is shown firing in the unit tests (an `exp_alerts` list that is not empty
    // after an `alertname:` line).
    let tests = read(&format!("{PROMETHEUS_DIR}/alerts_test.yml"));
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let fired: BTreeSet<&str> = lines
        .windows(3)
        .filter(|w| w[1] == "exp_alerts:" && w[2].starts_with("- exp_labels:"))
        .filter_map(|w| w[0].strip_prefix("alertname:"))
        .map(str::trim)
        .collect();
    for n in &names {
        assert!(fired.contains(n.as_str()), "no unit test fires {n}");
    }
}

/// The `expr:` of every rule in a Prometheus rule file: inline values and block scalars
/// (`|`, `>`). Checked against the number of rules so that an expression it cannot read
/// fails the test instead of being skipped.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        i += 1;
        let Some(v) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let v = v.trim();
        if v.starts_with('|') || v.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(l)) {
                block.push(lines[i].trim());
                i += 1;
            }
            out.push(block.join("\n"));
        } else if let Some(q) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            out.push(q.replace("''", "'"));
        } else {
            assert!(
                !v.starts_with('"'),
                "double-quoted expr: use a block scalar: {l}"
            );
            out.push(v.to_string());
        }
    }
    let rules = yaml
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    assert_eq!(out.len(), rules, "one expr per rule: {out:#?}");
    out
}

/// Every `expr` in a Grafana dashboard (panels, rows, targets at any depth), and the metric
/// of each `label_values(metric, label)` template query, as a query of that metric.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        ("query" | "definition", Value::String(s)) => {
                            if let Some(args) = s
                                .trim()
                                .strip_prefix("label_values(")
                                .and_then(|a| a.strip_suffix(')'))
                            {
                                let metric = args.split(',').next().unwrap_or("").trim();
                                out.push(metric.to_string());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, &mut out);
    out
}

/// The metric names a PromQL expression selects: identifiers outside label matchers,
/// ranges and strings that are not functions, keywords, label lists (`by (...)`, `on
/// (...)`, ...), numbers, durations or Grafana variables.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
    let b: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Index after the string starting at `i`.
    let skip_string = |i: usize| -> usize {
        let q = b[i];
        let mut j = i + 1;
        while j < b.len() && b[j] != q {
            j += if b[j] == '\\' && q != '`' { 2 } else { 1 };
        }
        j + 1
    };
    // Index after the `close` matching the opener at `i` (strings inside skipped).
    let skip_group = |i: usize, close: char| -> usize {
        let open = b[i];
        let (mut depth, mut j) = (0usize, i);
        while j < b.len() {
            match b[j] {
                '"' | '\'' | '`' => {
                    j = skip_string(j);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        j
    };
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i),
            '{' => i = skip_group(i, '}'),
            '[' => i = skip_group(i, ']'),
            '#' => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < b.len() && (ident(b[i]) || b[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word: String = b[start..i].iter().collect();
                let mut j = i;
                while j < b.len() && b[j].is_whitespace() {
                    j += 1;
                }
                let before_paren = b.get(j) == Some(&'(');
                // `sum by (l) (...)`: an aggregation whose modifier comes first.
                let rest: String = b[j..].iter().take(8).collect();
                let before_modifier = ["by", "without"].iter().any(|m| {
                    rest.strip_prefix(m)
                        .is_some_and(|r| r.trim_start().starts_with('('))
                });
                if LABEL_LISTS.contains(&word.as_str()) {
                    if before_paren {
                        i = skip_group(j, ')');
                    }
                } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                    || before_paren
                    || before_modifier
                {
                    // A keyword, or a function or aggregation called here.
                } else {
                    out.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn promql_metric_names_finds_selectors_only() {
    let names = |e: &str| -> Vec<String> { promql_metric_names(e).into_iter().collect() };
    assert_eq!(names("up{job=\"walletd\"} == 0"), ["up"]);
    assert_eq!(
        names("count by (job) (count by (job, hash) (walletd_policy_info)) > 1"),
        ["walletd_policy_info"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x=\"{y}\", z='}'}[5m])))"),
        ["a_bucket"]
    );
    assert_eq!(
        names("(sum(rate(a_total{status=~\"5..\"}[$__rate_interval])) / sum(rate(a_total[1m]))) > 0.05\n  unless on (job, instance) b == 1"),
        ["a_total", "b"]
    );
    assert_eq!(
        names("time() - process_start_time_seconds{instance=~\"$instance\"}"),
        ["process_start_time_seconds"]
    );
    assert_eq!(
        names("x offset 5m > bool 1e3 or sum(y) without (le) and z * on () group_left (q) w"),
        ["w", "x", "y", "z"]
    );
    assert_eq!(names("a:b:rate5m # a comment naming c\n"), ["a:b:rate5m"]);
    assert_eq!(
        names("sum without(le) (rate(a[1m])) + topk by (x) (3, b) + by_c"),
        ["a", "b", "by_c"]
    );
}

#[test]
fn rule_exprs_reads_inline_and_block_expressions() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: a == 1\n        for: 1m\n      - alert: B\n        expr: |\n          sum(b)\n            > 2\n        labels:\n          x: y\n      - record: c:sum\n        expr: 'sum(c{l=''v''})'\n";
    assert_eq!(rule_exprs(yaml), ["a == 1", "sum(b)\n> 2", "sum(c{l='v'})"]);
}

/// The sample names (`name` of `name{...} value`) in a scrape.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_queries_name_metrics_a_live_region_serves() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let dash_exprs = dashboard_exprs(&dashboard);
    let alert_exprs = rule_exprs(&alerts_yml());
    assert!(dash_exprs.len() >= 20, "{dash_exprs:#?}");
    let mut wanted: Vec<(String, &str, String)> = Vec::new();
    for (exprs, from) in [(&dash_exprs, "dashboard"), (&alert_exprs, "alerts.yml")] {
        for e in exprs {
            let names = promql_metric_names(e);
            assert!(!names.is_empty(), "{from}: no metric in {e:?}");
            wanted.extend(names.into_iter().map(|n| (n, from, e.clone())));
        }
    }

    let mut c = cluster(&["eu", "us"]);
    c.start_all().await.expect("start");
    eventually(&c, "eu and us connected", WAIT, || async {
        wallet::cluster::all_members_up(&status(&c, 0).await)
            && wallet::cluster::all_members_up(&status(&c, 1).await)
    })
    .await;
    let (eu, us) = (region_api(&c, 0), region_api(&c, 1));
    assert_eq!(eu.tx("mia", "deposit", "100", Some("m1")).await.status, 201);
    assert_eq!(us.tx("mia", "deposit", "5", None).await.status, 201);
    // A retry, and a refusal.
    assert_eq!(eu.tx("mia", "deposit", "100", Some("m1")).await.status, 201);
    assert_eq!(us.tx("noa", "purchase", "1", None).await.status, 422);
    eventually(&c, "both deposits held by both regions", WAIT, || async {
        eu.balance("mia", "USD").await.map(|b| b.0) == Some("105.00".into())
            && us.balance("mia", "USD").await.map(|b| b.0) == Some("105.00".into())
    })
    .await;

    for (i, api) in [(0, &eu), (1, &us)] {
        let r = api
            .http()
            .get(format!("{}/metrics", api.url()))
            .send()
            .await
            .expect("scrape");
        assert_eq!(r.status().as_u16(), 200);
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let text = r.text().await.expect("body");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let present = sample_names(&text);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(n, from, _)| {
                let synthetic = *from == "alerts.yml" && SYNTHETIC.contains(&n.as_str());
                !present.contains(n) && !synthetic
            })
            .map(|(n, from, e)| format!("{n} ({from}: {e})"))
            .collect();
        assert!(
            missing.is_empty(),
            "region {i}: names queried but not in /metrics:\n{}\n--- /metrics ---\n{text}",
            missing.join("\n")
        );
        // The transport's figures move: both regions sent and received a deposit.
        let total = |prefix: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        for (name, at_least) in [
            (
                "walletd_p2p_requests_total{direction=\"outbound\",outcome=\"acknowledged\"}",
                1,
            ),
            (
                "walletd_p2p_requests_total{direction=\"inbound\",outcome=\"received\"}",
                1,
            ),
            ("walletd_p2p_batch_duration_seconds_count", 1),
            ("libp2p_swarm_connections_established_total{", 1),
            ("libp2p_bandwidth_bytes_total{", 1_000),
            (
                "walletd_transactions_refused_total{reason=\"insufficient_funds\"}",
                i,
            ),
            ("process_resident_memory_bytes", 1_000_000),
        ] {
            let n = total(name);
            assert!(
                n >= at_least as u64,
                "region {i}: {name} = {n}, want >= {at_least}"
            );
        }
        assert!(
            text.contains(&format!(
                "walletd_build_info{{version=\"{}\",commit=\"",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        println!(
            "region {i}: {} metric names queried by the dashboard and the alerts, all among the {} in /metrics",
            wanted.iter().map(|w| &w.0).collect::<BTreeSet<_>>().len(),
            present.len()
        );
    }
}
