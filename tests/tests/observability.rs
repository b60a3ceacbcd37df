//! The observability artefacts under `deploy/` against a real warden: its `/metrics` passes
//! `promtool check metrics`, the alert rules pass `promtool check rules` and their unit
//! tests, and every metric name and label value the Grafana dashboard and the alert rules
//! use is one that warden exposes. promtool comes from `scripts/deps`; without it these
//! tests fail rather than skip.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use warden_core::fixtures::SampleKey;
use warden_e2e::{assert_success, kid, now, request, token, wait_for, Upstream, Warden};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/warden-dashboard.json"
);
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/warden-alerts.yml"
);
const ALERT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/warden-alerts.test.yml"
);
const SOC_GUIDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/soc.md");

/// Every alert in `warden-alerts.yml`; each has a runbook at `docs/soc.md#<lowercase name>`.
const ALERT_NAMES: [&str; 7] = [
    "WardenForgedTokenSeen",
    "WardenForgedTokenBurst",
    "WardenLedgerUnavailable",
    "WardenBlockRateSpike",
    "WardenReloadFailed",
    "WardenFleetOutOfSync",
    "WardenFleetNodeNameClash",
];

/// Labels that are not in warden's exposition: added by Prometheus at scrape time (`job`,
/// `instance`), histogram buckets (`le`), or named by each deployment's rule files (`rule`).
const UNCHECKED_LABELS: [&str; 4] = ["job", "instance", "le", "rule"];

/// A rule in shadow mode, so the rule-hit series exist and one of them counts.
const RULES: &str = r#"[[rules]]
name = "requests-per-ip"
classes = ["protected"]
key = ["ip"]
window = "1m"
threshold = 1
action = "block"
mode = "shadow"
"#;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Runs promtool; a missing promtool is a failure that says how to install it.
fn promtool(args: &[&str], stdin: Stdio) -> Output {
    Command::new("promtool")
        .args(args)
        .stdin(stdin)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): run scripts/deps, which installs it \
                 (Debian package `prometheus`)"
            )
        })
}

/// Starts a warden with [`RULES`], sends a little of everything through it, and returns
/// its `/metrics` text once the traffic shows there.
fn scrape_after_traffic() -> String {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(&up, RULES, "");
    let t = now();

    // A legitimate, recorded token: twice, the second time from the verification cache.
    let legit = token(SampleKey::RsA, kid::ACTIVE, "alice", t);
    w.record(&legit);
    for _ in 0..2 {
        let r = w.get("/account/orders", &legit);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Signed with the real key, never recorded: forged (after waiting for its record).
    let forged = token(SampleKey::RsA, kid::ACTIVE, "mallory", t);
    assert_eq!(w.get("/account/orders", &forged).status, 401);
    // A login through warden: recorded inline.
    let r = request(
        w.proxy,
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        br#"{"account":"dave"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // An admin call without the admin token.
    assert_eq!(request(w.admin, "POST", "/reload", &[], b"").status, 401);

    // Gauges are refreshed once a second.
    let text = wait_for(Duration::from_secs(5), || {
        let r = request(w.admin, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        let s = samples(&text);
        let value = |name: &str, label: &str| {
            s.iter()
                .filter(|x| x.name == name && (label.is_empty() || x.labels.contains(label)))
                .map(|x| x.value)
                .sum::<f64>()
        };
        let ready = value("warden_provenance_total", "reason=\"forged\"") >= 1.0
            && value("warden_provenance_total", "reason=\"ok\"") >= 2.0
            && value("warden_ledger_records_total", "source=\"inline\"") >= 1.0
            && value("warden_admin_auth_failures_total", "") >= 1.0
            && value("warden_rule_hits_total", "mode=\"shadow\"") >= 1.0
            && value("warden_ledger_entries", "") >= 2.0;
        ready.then_some(text)
    });
    text.unwrap_or_else(|| {
        panic!(
            "the traffic never showed in /metrics:\n{}",
            request(w.admin, "GET", "/metrics", &[], b"").text()
        )
    })
}

// === exposition parsing ===

struct Sample {
    name: String,
    /// `label="value"` pairs.
    labels: BTreeSet<String>,
    value: f64,
}

/// The samples of a text exposition (label values in warden's sets hold no `,` or `"`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_owned(),
                labels: labels
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// Metric families from the `# TYPE` lines: name -> type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

fn strip_histogram_suffix(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

// === scanning the dashboard and the rules ===

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Every `warden_[a-z0-9_]+` in `text` that does not continue a longer identifier.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("warden_") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i..].chars().take_while(|c| is_name_char(*c)).collect();
        out.insert(name);
    }
    out
}

/// A `label="value"` or `label=~"a|b"` matcher in a `warden_...{...}` selector.
#[derive(Debug)]
struct Matcher {
    metric: String,
    label: String,
    values: Vec<String>,
}

/// The equality and plain-alternation matchers of every `warden_...{...}` selector in
/// `text`. Negative matchers, real regexes and `$variables` are left out.
fn matchers(text: &str) -> Vec<Matcher> {
    let mut out = Vec::new();
    for metric in metric_names(text) {
        let open = format!("{metric}{{");
        for (i, _) in text.match_indices(&open) {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let body = &text[i + open.len()..];
            let Some(end) = body.find('}') else { continue };
            for m in body[..end].split(',') {
                let Some((label, rest)) = m.split_once('=') else {
                    continue;
                };
                let label = label.trim();
                if label.ends_with('!') || UNCHECKED_LABELS.contains(&label) {
                    continue;
                }
                let (regex, rest) = match rest.strip_prefix('~') {
                    Some(r) => (true, r),
                    None => (false, rest),
                };
                let value = rest.trim().trim_matches('"');
                let plain = |v: &str| !v.is_empty() && v.chars().all(is_name_char);
                let values: Vec<String> = if regex {
                    value.split('|').map(str::to_owned).collect()
                } else {
                    vec![value.to_owned()]
                };
                if values.iter().all(|v| plain(v)) {
                    out.push(Matcher {
                        metric: metric.clone(),
                        label: label.to_owned(),
                        values,
                    });
                }
            }
        }
    }
    out
}

/// Every string in a JSON document (expressions, variable queries, descriptions).
fn json_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

// === tests ===

#[test]
fn metrics_after_real_traffic_pass_promtool_check_metrics() {
    let text = scrape_after_traffic();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &text).expect("write metrics");
    let file = std::fs::File::open(&path).expect("open metrics");
    let out = promtool(&["check", "metrics"], Stdio::from(file));
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- /metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every family has its HELP and TYPE, and no label value is request data.
    let fams = families(&text);
    for name in fams.keys() {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    for s in samples(&text) {
        for pair in &s.labels {
            assert!(
                !pair.contains("127.0.0.") && !pair.contains("alice") && !pair.contains("/account"),
                "{} carries request data as a label: {pair}",
                s.name
            );
        }
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    assert_success(
        "promtool check rules",
        &promtool(&["check", "rules", ALERTS], Stdio::null()),
    );
    assert_success(
        "promtool test rules",
        &promtool(&["test", "rules", ALERT_TESTS], Stdio::null()),
    );

    let rules = read(ALERTS);
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert_eq!(alerts, ALERT_NAMES, "the alerts in {ALERTS}");
    for key in ["summary:", "description:", "runbook:", "severity:"] {
        let n = rules.lines().filter(|l| l.trim().starts_with(key)).count();
        assert_eq!(n, ALERT_NAMES.len(), "every alert needs one `{key}`");
    }
    // The runbook anchor is the one GitHub gives the alert's heading in docs/soc.md.
    let guide = read(SOC_GUIDE);
    for name in ALERT_NAMES {
        let runbook = format!("runbook: \"docs/soc.md#{}\"", name.to_lowercase());
        assert!(rules.contains(&runbook), "{name}: no `{runbook}`");
        assert!(
            guide.lines().any(|l| l.trim() == format!("### {name}")),
            "{SOC_GUIDE} has no `### {name}` section for the runbook link"
        );
    }

    // Each alert has a unit test where it fires and one where it must not: in the test
    // file `exp_alerts` follows its `alertname`.
    let tests = read(ALERT_TESTS);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut cases: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.strip_prefix("alertname:") else {
            continue;
        };
        let next = lines.get(i + 1).copied().unwrap_or_default();
        let entry = cases.entry(name.trim()).or_default();
        match next {
            "exp_alerts: []" => entry.1 += 1,
            "exp_alerts:" => entry.0 += 1,
            other => panic!("{ALERT_TESTS}: `{l}` is followed by `{other}`, not exp_alerts"),
        }
    }
    for name in ALERT_NAMES {
        let (fires, quiet) = cases.get(name).copied().unwrap_or_default();
        assert!(
            fires >= 1 && quiet >= 1,
            "{name}: {fires} firing and {quiet} quiet cases in {ALERT_TESTS}"
        );
    }
}

#[test]
fn dashboard_and_alerts_use_only_metrics_and_label_values_warden_exposes() {
    let dash = dashboard();
    let mut strings = Vec::new();
    json_strings(&dash, &mut strings);
    let dash_text = strings.join("\n");

    // The dashboard: a Prometheus data-source variable, and every panel says what it
    // shows and what to do, and queries through that variable.
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus data-source variable"
    );
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(ids.insert(p["id"].to_string()), "{title}: duplicate id");
        let desc = p["description"].as_str().unwrap_or_default();
        assert!(desc.trim().len() > 20, "panel {title:?} has no description");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "panel {title:?}: empty expr");
        }
    }

    let text = scrape_after_traffic();
    let fams = families(&text);
    let sample_names: BTreeSet<String> = samples(&text).into_iter().map(|s| s.name).collect();

    let rules = read(ALERTS);
    let tests = read(ALERT_TESTS);
    let mut missing = Vec::new();
    for (file, body) in [
        (DASHBOARD, &dash_text),
        (ALERTS, &rules),
        (ALERT_TESTS, &tests),
    ] {
        for name in metric_names(body) {
            let base = strip_histogram_suffix(&name);
            let exists = fams.contains_key(&name)
                || sample_names.contains(&name)
                || (base != name && fams.get(base).is_some_and(|t| t == "histogram"));
            if !exists {
                missing.push(format!("{file}: {name}"));
            }
        }
        for m in matchers(body) {
            for v in &m.values {
                let pair = format!("{}=\"{v}\"", m.label);
                let found = samples(&text)
                    .iter()
                    .any(|s| s.name == m.metric && s.labels.contains(&pair));
                if !found {
                    missing.push(format!("{file}: {}{{{pair}}}", m.metric));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "used but not in /metrics:\n{}\n--- /metrics ---\n{text}",
        missing.join("\n")
    );

    // And the other way round: the dashboard shows every metric warden exposes.
    let shown: BTreeSet<String> = metric_names(&dash_text)
        .iter()
        .map(|n| strip_histogram_suffix(n).to_owned())
        .collect();
    let unshown: Vec<&String> = fams
        .keys()
        .filter(|f| !shown.contains(*f) && !shown.contains(strip_histogram_suffix(f)))
        .collect();
    assert!(
        unshown.is_empty(),
        "metrics missing from {DASHBOARD}: {unshown:?}"
    );
}

#[test]
fn the_scanners_find_names_and_label_values() {
    let names = metric_names(
        r#"sum(rate(warden_requests_total{outcome="x"}[5m])) / xwarden_no histogram_quantile(0.5, warden_filter_seconds_bucket)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["warden_filter_seconds_bucket", "warden_requests_total"]
    );
    let m = matchers(
        r#"warden_provenance_total{job=~"$job",reason=~"forged|revoked_key", class="protected",outcome!="ok",x=~"a.*"}"#,
    );
    let got: Vec<(String, Vec<String>)> = m.into_iter().map(|m| (m.label, m.values)).collect();
    assert_eq!(
        got,
        [
            (
                "reason".to_owned(),
                vec!["forged".to_owned(), "revoked_key".to_owned()]
            ),
            ("class".to_owned(), vec!["protected".to_owned()]),
        ]
    );
    assert_eq!(
        strip_histogram_suffix("warden_filter_seconds_bucket"),
        "warden_filter_seconds"
    );
}
