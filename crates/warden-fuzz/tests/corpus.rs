//! The stable, in-tree fuzz run CI does: every target over its committed corpus, then
//! seeded mutations. `WARDEN_FUZZ_ITERS` (default 10000 per target) and
//! `WARDEN_FUZZ_SEED` (default fixed) change the run; a failing input is written under
//! `target/tmp/fuzz-failures/` and named in the message, ready for
//! `scripts/fuzz <target> 0 <file>` or a unit test.

use std::path::PathBuf;
use std::time::Instant;

use warden_fuzz::mutate::{dictionary, load_corpus, run};
use warden_fuzz::TARGETS;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn fuzz(name: &str) {
    let (_, target) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let corpus = load_corpus(&corpus_dir(name))
        .unwrap_or_else(|e| panic!("corpus of {name} ({}): {e}", corpus_dir(name).display()));
    assert!(
        corpus.len() >= 3,
        "the {name} corpus has only {} entries",
        corpus.len()
    );
    let iterations = env_num("WARDEN_FUZZ_ITERS", 10_000) as usize;
    // A different default seed per target, fixed so that CI runs are reproducible.
    let seed = env_num("WARDEN_FUZZ_SEED", 0x5eed) ^ name.len() as u64;
    let started = Instant::now();
    if let Err(f) = run(*target, &corpus, dictionary(name), seed, iterations) {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{name}-seed{seed}-{:?}", f.iteration));
        let _ = std::fs::write(&file, &f.input);
        panic!(
            "fuzz target {name} failed at {} (seed {seed}): {}\ninput ({} bytes) saved to {}\nstart: {:?}",
            f.iteration
                .map_or_else(|| "a corpus entry".to_owned(), |i| format!("mutation {i}")),
            f.message,
            f.input.len(),
            file.display(),
            String::from_utf8_lossy(&f.input[..f.input.len().min(200)]),
        );
    }
    eprintln!(
        "{name}: {} corpus entries + {iterations} mutations in {:.1?}",
        corpus.len(),
        started.elapsed()
    );
}

#[test]
fn token() {
    fuzz("token");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn rules() {
    fuzz("rules");
}

#[test]
fn ingest_line() {
    fuzz("ingest_line");
}

#[test]
fn the_token_corpus_reaches_verification() {
    // Seeds that verify make mutations explore the signature and claims code, not only
    // the parser; regenerate the corpus if this fails (the sample keys changed).
    use warden_core::keys::{KeyRegistry, KeyState};
    use warden_core::verify::{Policy, Verifier};
    let registry = KeyRegistry::build(
        warden_fuzz::KIDS
            .iter()
            .map(|(kid, key)| key.spec(kid, KeyState::Active))
            .collect(),
    )
    .expect("sample keys");
    let v = Verifier::new(registry, Policy::default());
    let dir = corpus_dir("token");
    for kid in ["rs", "es", "ed", "hs"] {
        let t = std::fs::read_to_string(dir.join(format!("valid-{kid}"))).expect("seed");
        assert!(
            v.verify(&t, warden_fuzz::NOW).is_ok(),
            "valid-{kid} does not verify"
        );
    }
}

#[test]
fn log_line() {
    fuzz("log_line");
}

#[test]
fn snapshot() {
    fuzz("snapshot");
}

#[test]
fn the_snapshot_corpus_restores_state() {
    // Seeds that restore make mutations explore the slot and set decoders, not only the
    // header; regenerate the corpus if this fails (the format or the rules changed).
    let dir = corpus_dir("snapshot");
    for seed in ["busy", "bans"] {
        let body = std::fs::read(dir.join(seed)).expect("seed");
        let e = warden_fuzz::snapshot_engine();
        let r = e
            .restore(&warden_detect::snapshot::frame(&body), warden_fuzz::NOW_MS)
            .unwrap_or_else(|err| panic!("{seed}: {err}"));
        assert!(r.slots > 0 || r.bans > 0, "{seed} restores nothing: {r:?}");
    }
}
