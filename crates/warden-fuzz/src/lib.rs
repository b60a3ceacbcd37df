//! Fuzz targets for the parsers that read hostile or operator-written input, a small
//! seeded mutator, and the runner the stable test suite uses.
//!
//! | target | input | what must hold |
//! |---|---|---|
//! | [`token`] | a compact JWS as sent by a client | parsing and verification never panic; a token that verifies parsed, names a registry key and carries that key's `alg`; the parse reads every token as the `serde_json::Map` parse does (same header and claims, or the same error) |
//! | [`config`] | a `warden.toml` | compiling never panics; every diagnostic points inside the file |
//! | [`rules`] | a rule file | the same |
//! | [`ingest_line`] | one line of a ledger JSON-lines import (`warden ledger import`, the admin batch endpoint's objects) | never panics; an accepted record is valid |
//! | [`log_line`] | one access-log line as `warden replay` reads it, as JSON lines and as the combined format | never panics; a line accepted once is read the same way again; the JSON scanner reads every line as serde_json alone does (same request or same error) |
//! | [`snapshot`] | the body of a rule-engine state snapshot (framed here with a valid checksum), and the bytes as a whole file | restoring never panics; a state restored is written and restored again the same; sweeping and evicting restored state never panics |
//!
//! Two ways to run them:
//! * `cargo test -p warden-fuzz` (stable, what CI runs): every file of `fuzz/corpus/<target>`
//!   plus a fixed number of seeded mutations of them ([`mutate::run`]). Deterministic for a seed;
//!   a failing input is written to `target/fuzz-failures/` and named in the failure.
//! * `scripts/fuzz <target> <seconds>`: coverage-guided libFuzzer through the cargo-fuzz
//!   project in `/fuzz`, built on stable with sanitizer-coverage flags (no nightly, no
//!   cargo-fuzz needed; `cargo +nightly fuzz run <target>` works too, with ASan).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::Path;
use std::sync::OnceLock;

use warden_core::fixtures::SampleKey;
use warden_core::keys::{KeyRegistry, KeyState};
use warden_core::verify::{Policy, Verifier};

pub mod mutate;

/// The time every target runs at (unix seconds): the corpus's tokens are valid then.
pub const NOW: u64 = 1_800_000_000;

/// Key ids of the fuzzing registry, one per sample key.
pub const KIDS: [(&str, SampleKey); 4] = [
    ("rs", SampleKey::RsA),
    ("es", SampleKey::Es),
    ("ed", SampleKey::Ed),
    ("hs", SampleKey::Hs),
];

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let specs = KIDS
            .iter()
            .map(|(kid, key)| key.spec(kid, KeyState::Active))
            .chain(std::iter::once(
                SampleKey::RsB.spec("old", KeyState::Retired { at: NOW - 100 }),
            ))
            .collect();
        // The sample keys are constants of the crate: a failure is a broken build.
        let registry = KeyRegistry::build(specs).unwrap_or_else(|e| panic!("sample keys: {e:?}"));
        Verifier::new(
            registry,
            Policy {
                max_token_bytes: 64 * 1024,
                ..Policy::default()
            },
        )
    })
}

/// Token parsing and verification.
pub fn token(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let v = verifier();
    let parsed = warden_core::token::parse(s, v.policy().max_token_bytes);
    if let Err(e) = warden_core::token::check_against_serde(s, v.policy().max_token_bytes) {
        panic!("the token parse and the Map parse disagree: {e}");
    }
    if let Ok(checked) = v.verify(s, NOW) {
        let p = parsed.unwrap_or_else(|e| panic!("verified a token that does not parse: {e}"));
        let kid = p
            .header
            .kid
            .as_deref()
            .unwrap_or_else(|| panic!("verified without kid"));
        let registry = v.registry();
        let key = registry
            .get(kid)
            .unwrap_or_else(|| panic!("verified under unknown kid {kid:?}"));
        assert_eq!(key.alg, p.header.alg, "verified with a mismatched alg");
        assert_eq!(&*checked.verified.kid, kid);
        // Recording it is the same verification: it must agree.
        assert!(
            v.record_for_issued(s, NOW).is_ok(),
            "verify and record disagree"
        );
    }
}

fn check_diagnostics(src: &str, diags: &[warden_config::Diagnostic]) {
    let lines = src.split('\n').count();
    for d in diags {
        let text = d.to_string();
        assert!(
            d.line >= 1 && d.line <= lines.max(1),
            "diagnostic outside the file (line {} of {lines}): {text}",
            d.line
        );
        assert!(d.column >= 1, "column 0: {text}");
    }
}

/// Configuration parsing and compilation. Key files are read relative to a directory
/// that does not exist, so only the text is exercised.
pub fn config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if mentions_special_files(src) {
        return;
    }
    let path = Path::new("/nonexistent-warden-fuzz/warden.toml");
    match warden_config::compile_str(path, src) {
        Ok(loaded) => check_diagnostics(src, &loaded.warnings),
        Err(diags) => {
            assert!(
                diags
                    .iter()
                    .any(|d| d.severity == warden_config::Severity::Error),
                "refused without an error"
            );
            check_diagnostics(src, &diags);
        }
    }
}

/// Rule-file parsing, compilation and the cross-rule checks.
pub fn rules(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent-warden-fuzz/rules.toml");
    let (located, diags) = warden_config::rules::compile_rule_str(path, src);
    check_diagnostics(src, &diags);
    let cross = warden_config::rules::cross_check(&located);
    check_diagnostics(src, &cross);
}

/// One line of a ledger JSON-lines file (`warden ledger import`; the admin API's batch
/// endpoint takes the same objects).
pub fn ingest_line(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Ok(record)) = warden_core::ingest::record_from_line(line, verifier(), NOW) {
        assert!(record.validate().is_ok(), "accepted an invalid record");
    }
}

/// One access-log line as `warden replay` reads it: as a JSON line (default field names
/// and a header) and as the combined format (token and label in trailing fields).
pub fn log_line(data: &[u8]) {
    use warden_replay::format::{FieldMap, Format};
    static MAPS: OnceLock<Vec<FieldMap>> = OnceLock::new();
    let maps = MAPS.get_or_init(|| {
        let mut json = FieldMap::new(Format::JsonLines);
        let mut combined = FieldMap::new(Format::Combined);
        // Valid specs of the replay CLI's `--field`: a failure is a broken build.
        let apply = |map: &mut FieldMap, spec: &str| {
            map.apply(spec)
                .unwrap_or_else(|e| panic!("field map {spec}: {e}"));
        };
        apply(&mut json, "header:x-forwarded-for=xff");
        apply(&mut combined, "token=extra1");
        apply(&mut combined, "label=extra2");
        vec![json, combined]
    });
    for map in maps {
        let first = map.parse(data);
        if let Ok(first) = &first {
            let again = map.parse(data);
            assert!(again.as_ref() == Ok(first), "read differently twice");
        }
        // The JSON scanner against serde_json alone, on the same bytes: the same request
        // or the same error.
        assert!(
            first == map.parse_with_serde(data),
            "the scanner and serde_json disagree"
        );
    }
}

/// The rules of the [`snapshot`] target's engine (its corpus was written by an engine
/// with these rules, so that restored slots find their rule).
#[must_use]
pub fn snapshot_rules() -> Vec<warden_rules::Rule> {
    use std::time::Duration;
    use warden_rules::{Action, Field, Match, Measure, Mode, Rule};
    let rule = |name: &str, key: Field, measure: Measure, threshold: u64, action: Action| Rule {
        name: name.into(),
        description: String::new(),
        matcher: Match::default(),
        key: vec![key],
        measure,
        window: Duration::from_secs(600),
        threshold,
        action,
        mode: Mode::Enforce,
        priority: 0,
        scope: warden_rules::Scope::Local,
    };
    vec![
        rule("count-ip", Field::Ip, Measure::Count, 50, Action::Block),
        rule(
            "accounts-per-ip",
            Field::Ip,
            Measure::Distinct(Field::Account),
            5,
            Action::Ban(Duration::from_secs(600)),
        ),
        rule(
            "ips-per-account",
            Field::Account,
            Measure::Distinct(Field::Ip),
            100,
            Action::Log,
        ),
    ]
}

/// An engine with [`snapshot_rules`] and a small state cap (so that a sweep evicts).
#[must_use]
pub fn snapshot_engine() -> warden_detect::Engine {
    let e = warden_detect::Engine::new(256 << 10, 1000);
    e.set_rules(snapshot_rules(), 256 << 10);
    e
}

/// The time of the [`snapshot`] target, unix milliseconds.
pub const NOW_MS: u64 = NOW * 1000;

/// A rule-engine state snapshot, as restored at start. `data` is tried as a whole file
/// (header checks), then as a body framed with a valid header and checksum (so that
/// mutations reach the parser).
pub fn snapshot(data: &[u8]) {
    let _ = snapshot_engine().restore(data, NOW_MS);
    let a = snapshot_engine();
    if a.restore(&warden_detect::snapshot::frame(data), NOW_MS)
        .is_err()
    {
        return;
    }
    let b = snapshot_engine();
    if let Err(e) = b.restore(&a.snapshot(NOW_MS), NOW_MS) {
        panic!("a restored state does not restore again: {e}");
    }
    assert_eq!(
        a.tracked_keys(),
        b.tracked_keys(),
        "keys differ after a round trip"
    );
    assert_eq!(
        a.bans(NOW_MS).len(),
        b.bans(NOW_MS).len(),
        "bans differ after a round trip"
    );
    // Restored slots are estimated, aged and evicted like any.
    let _ = a.sweep(NOW_MS + 1);
    let _ = a.sweep(NOW_MS + 3_600_000);
    let _ = a.rules_info(NOW_MS);
}

/// Absolute paths to device files would make the configuration target read forever
/// (`pem_file = "/dev/zero"`): operator input, outside what the target checks.
fn mentions_special_files(src: &str) -> bool {
    src.contains("/dev/") || src.contains("/proc/") || src.contains("/sys/")
}

/// A fuzz target: the name of its corpus directory and the function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by corpus directory name.
pub const TARGETS: [Target; 6] = [
    ("token", token),
    ("config", config),
    ("rules", rules),
    ("ingest_line", ingest_line),
    ("log_line", log_line),
    ("snapshot", snapshot),
];
