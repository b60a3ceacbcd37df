//! `benches/load/pool`, which pools the rounds of load-benchmark runs into one estimate of
//! a ratio (the 5/4 among them): checked on runs whose per-round ratios are known,
//! and on input it must refuse.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pool(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/load/pool");
    Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()))
}

/// A results.tsv as `benches/load/run` writes it: one row per configuration and round.
fn results(dir: &Path, name: &str, rounds: &[(f64, f64)]) -> PathBuf {
    let mut text = String::from(
        "config\tround\trequests\trps\tp50_us\tp99_us\tproxy_cpu_us_per_req\t\
         upstream_cpu_us_per_req\tstatus\tsteal_pct\n",
    );
    for (i, (bare, full)) in rounds.iter().enumerate() {
        for (config, rps) in [("warden-bare", bare), ("warden-full", full)] {
            text.push_str(&format!(
                "{config}\tr{}\t{}\t{rps}\t1000\t2000\t20.0\t8.0\t200:1\t0.0\n",
                i + 1,
                (rps * 20.0) as u64
            ));
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "pool failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pools_rounds_across_runs_with_an_interval_and_the_rounds_under_target() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Run a: ratios 0.80, 0.85, 0.95; run b: 0.92, 0.94. Pooled median 0.92, mean 0.892.
    let a = results(
        dir.path(),
        "a.tsv",
        &[(10000.0, 8000.0), (10000.0, 8500.0), (20000.0, 19000.0)],
    );
    let b = results(dir.path(), "b.tsv", &[(5000.0, 4600.0), (5000.0, 4700.0)]);
    let out = stdout(&pool(&[a.to_str().unwrap(), b.to_str().unwrap()]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("rounds   3  median 0.850"), "{out}");
    assert!(lines[0].contains("under 0.9: 2"), "{out}");
    assert!(lines[1].contains("rounds   2  median 0.930"), "{out}");
    assert!(lines[1].contains("under 0.9: 0"), "{out}");
    let pooled = lines[2];
    assert!(pooled.starts_with("pooled"), "{out}");
    assert!(pooled.contains("rounds   5  median 0.920"), "{out}");
    assert!(pooled.contains("mean 0.892"), "{out}");
    assert!(pooled.contains("under 0.9: 2"), "{out}");
    // The interval holds the median and lies within the rounds' range.
    let interval = pooled
        .split("interval ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("an interval");
    let (lo, hi) = interval.split_once('-').expect("lo-hi");
    let (lo, hi): (f64, f64) = (lo.parse().expect("lo"), hi.parse().expect("hi"));
    assert!(
        (0.80..=0.92).contains(&lo) && (0.92..=0.95).contains(&hi),
        "{out}"
    );
    // Reproducible (a fixed seed), and the pooled figures do not depend on the order the
    // runs are given in.
    assert_eq!(
        out,
        stdout(&pool(&[a.to_str().unwrap(), b.to_str().unwrap()]))
    );
    let swapped = stdout(&pool(&[b.to_str().unwrap(), a.to_str().unwrap()]));
    assert_eq!(swapped.lines().last(), Some(pooled), "{swapped}");

    // Another ratio and target: full / bare inverted, against 1.1.
    let out = stdout(&pool(&[
        "--ratio",
        "warden-bare/warden-full",
        "--target",
        "1.1",
        b.to_str().unwrap(),
    ]));
    assert!(out.contains("median 1.075"), "{out}");
    assert!(out.contains("under 1.1: 2"), "{out}");
}

#[test]
fn refuses_what_it_cannot_pool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = results(dir.path(), "good.tsv", &[(10.0, 9.0)]);
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "# a report, not a results.tsv\n").expect("write");
    let empty = dir.path().join("empty.tsv");
    std::fs::write(&empty, "").expect("write");
    for (args, says) in [
        (vec![], "give one or more results.tsv files"),
        (vec![bad.to_str().unwrap()], "is not a results.tsv"),
        (
            vec!["--ratio", "full", good.to_str().unwrap()],
            "--ratio must be A/B",
        ),
        (
            vec!["--target", "high", good.to_str().unwrap()],
            "--target must be a number",
        ),
        (vec!["/nonexistent/results.tsv"], "cannot read"),
        (vec![empty.to_str().unwrap()], "is empty"),
    ] {
        let out = pool(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A ratio naming a configuration the run does not have: said, not a crash.
    let out = stdout(&pool(&[
        "--ratio",
        "nginx/warden-bare",
        good.to_str().unwrap(),
    ]));
    assert!(
        out.contains("no round has both nginx and warden-bare"),
        "{out}"
    );
}
