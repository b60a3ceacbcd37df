//! `warden replay`: logged requests through the proxy's decision code, per-rule report.

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use warden_config::model::{Config, Routes};
use warden_core::ingest::RecordFacts;
use warden_core::ledger::Record;
use warden_core::verify::{CheckedAt, Verifier};
use warden_replay::format::{FieldMap, Format, Target};
use warden_replay::{replay_logs, Diff, Provenance, Replayer, Setup};
use warden_rules::Rule;

/// The configuration's defaults for `rules.max_state_bytes` and `rules.max_bans`.
const DEFAULT_MAX_STATE_BYTES: usize = 256 << 20;
const DEFAULT_MAX_BANS: usize = 1_000_000;
/// Buffer of each log reader.
const READ_BUFFER: usize = 1 << 20;

#[derive(Args)]
pub struct ReplayArgs {
    /// The rule file to try.
    #[arg(long)]
    rules: PathBuf,
    /// Log files, read in order (`-` reads standard input).
    #[arg(long = "log", required = true, num_args = 1..)]
    logs: Vec<PathBuf>,
    /// `json` (one object per line) or `combined` (nginx/Apache).
    #[arg(long, default_value = "json")]
    format: String,
    /// Where a value is: TARGET=SOURCE, repeatable. Targets: time, ip, method, path,
    /// request, token, account, label, status, header:NAME. Sources: a JSON key, or in the
    /// combined format host, ident, user, time, request, status, bytes, referer, agent,
    /// extra1..extra8 (fields after the user agent). E.g. `--field ip=remote_addr`,
    /// `--field token=extra1`, `--field account=user`.
    #[arg(long = "field", value_name = "TARGET=SOURCE")]
    fields: Vec<String>,
    /// A warden configuration: routes, keys and token policy (tokens in the log are then
    /// verified and checked against --records, as live), rule state bounds.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Issued-token records for the ledger (JSON lines, as `warden ledger import` reads);
    /// needs --config.
    #[arg(long = "records")]
    records: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report with charts.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Compare with another rule file on the same logs.
    #[arg(long, value_name = "OTHER_RULES")]
    diff: Option<PathBuf>,
}

fn load_rules(path: &Path) -> Result<Vec<Rule>, ()> {
    let (located, diags) = warden_config::rules::load_rule_file(path);
    let mut failed = false;
    for d in &diags {
        eprintln!("{d}");
        failed |= d.severity == warden_config::Severity::Error;
    }
    if failed {
        return Err(());
    }
    Ok(located.into_iter().map(|l| l.rule).collect())
}

/// Records from JSON lines. Token-form records are verified at their own `iat` (a replay
/// runs long after the tokens expired); every bad line is reported with its number.
fn load_records(files: &[PathBuf], verifier: &Verifier) -> Result<Vec<Record>, ()> {
    let mut out = Vec::new();
    let mut bad = 0usize;
    for f in files {
        let file = File::open(f).map_err(|e| eprintln!("{}: {e}", f.display()))?;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| eprintln!("{}:{}: {e}", f.display(), i + 1))?;
            let Some(parsed) = RecordFacts::parse_line(&line) else {
                continue;
            };
            let parsed = parsed
                .and_then(|facts| facts.into_record(verifier, CheckedAt::Issued))
                .map_err(|e| e.to_string());
            match parsed {
                Ok(r) => out.push(r),
                Err(e) => {
                    bad += 1;
                    if bad <= 20 {
                        eprintln!("{}:{}: {e}", f.display(), i + 1);
                    }
                }
            }
        }
    }
    if bad > 0 {
        eprintln!("warden replay: {bad} record lines refused; the others are loaded");
    }
    Ok(out)
}

/// A log: its name and its lines.
type Input = (String, Box<dyn BufRead>);

fn open_logs(paths: &[PathBuf]) -> Result<Vec<Input>, ()> {
    paths
        .iter()
        .map(|p| {
            let name = p.display().to_string();
            if p.as_os_str() == "-" {
                let r: Box<dyn BufRead> =
                    Box::new(BufReader::with_capacity(READ_BUFFER, std::io::stdin()));
                return Ok((name, r));
            }
            let f = File::open(p).map_err(|e| eprintln!("{name}: {e}"))?;
            let r: Box<dyn BufRead> = Box::new(BufReader::with_capacity(READ_BUFFER, f));
            Ok((name, r))
        })
        .collect()
}

struct Base {
    config: Option<Config>,
    routes: Option<Routes>,
    verifier: Option<Arc<Verifier>>,
    account_claim: String,
    max_state_bytes: usize,
    max_bans: usize,
    records: Arc<Vec<Record>>,
}

fn base(args: &ReplayArgs) -> Result<Base, ()> {
    let config: Option<Config> = match &args.config {
        None => None,
        Some(p) => Some(crate::run::load_config(p).ok_or(())?),
    };
    if config.is_none() && !args.records.is_empty() {
        eprintln!("warden replay: --records needs --config (the keys that verify the tokens)");
        return Err(());
    }
    let verifier = match &config {
        Some(c) => Some(Arc::new(crate::run::verifier(c).map_err(|e| {
            eprintln!("warden replay: {e}");
        })?)),
        None => None,
    };
    let records = match &verifier {
        Some(v) => load_records(&args.records, v)?,
        None => Vec::new(),
    };
    Ok(Base {
        routes: config.as_ref().map(|c| c.routes.clone()),
        account_claim: config
            .as_ref()
            .map_or_else(|| "sub".into(), |c| c.policy.account_claim.clone()),
        max_state_bytes: config
            .as_ref()
            .map_or(DEFAULT_MAX_STATE_BYTES, |c| c.rules.max_state_bytes),
        max_bans: config
            .as_ref()
            .map_or(DEFAULT_MAX_BANS, |c| c.rules.max_bans),
        verifier,
        records: Arc::new(records),
        config,
    })
}

fn replayer(b: &Base, rules: Vec<Rule>, map: &FieldMap) -> Result<Replayer, ()> {
    // Each replayer gets its own verifier (its own cache), as each live warden has.
    let provenance = match &b.config {
        Some(c) => Provenance::Checked {
            verifier: Arc::new(
                crate::run::verifier(c).map_err(|e| eprintln!("warden replay: {e}"))?,
            ),
        },
        None => Provenance::Unchecked {
            account_claim: b.account_claim.clone(),
        },
    };
    Ok(Replayer::new(Setup {
        rules,
        max_state_bytes: b.max_state_bytes,
        max_bans: b.max_bans,
        routes: b.routes.clone(),
        provenance,
        log_has_tokens: map.has(Target::Token),
        records: Arc::clone(&b.records),
        header_names: map.header_names().to_vec(),
    }))
}

pub fn main(args: &ReplayArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(()) => ExitCode::from(2),
    }
}

fn run(args: &ReplayArgs) -> Result<ExitCode, ()> {
    let format = Format::parse(&args.format).ok_or_else(|| {
        eprintln!(
            "warden replay: unknown format {:?} (json or combined)",
            args.format
        );
    })?;
    let mut map = FieldMap::new(format);
    for f in &args.fields {
        map.apply(f)
            .map_err(|e| eprintln!("warden replay: --field {f}: {e}"))?;
    }
    let rules = load_rules(&args.rules)?;
    let other = match &args.diff {
        Some(p) => Some(load_rules(p)?),
        None => None,
    };
    let b = base(args)?;
    let provenance = match (&b.verifier, map.has(Target::Token)) {
        (Some(_), true) => "checked (tokens verified, ledger from --records)",
        (Some(_), false) => "not judged (the log has no token field)",
        (None, true) => "unchecked (tokens parsed, not verified: no --config)",
        (None, false) => "not judged (no token field, no --config)",
    };
    if b.verifier.is_some() && map.has(Target::Token) && b.records.is_empty() {
        eprintln!(
            "warden replay: warning: no ledger records (--records): every validly signed token counts as forged, as with an empty ledger"
        );
    }
    let mut replayers = vec![replayer(&b, rules, &map)?];
    if let Some(o) = other {
        replayers.push(replayer(&b, o, &map)?);
    }
    // The records are in the replayers' ledgers now: their list (megabytes for a large
    // ledger) goes back to the allocator before the replay, which then reuses it.
    drop(b);
    let inputs = open_logs(&args.logs)?;
    let run = replay_logs(inputs, &map, &mut replayers);
    let report = replayers[0]
        .stats
        .report(run.meta(provenance, &args.rules.display().to_string()));
    if let Some(path) = &args.html {
        std::fs::write(path, warden_replay::html::render(&report))
            .map_err(|e| eprintln!("{}: {e}", path.display()))?;
    }
    let text = if let (Some(second), Some(p)) = (replayers.get(1), &args.diff) {
        let d = Diff {
            after: second
                .stats
                .report(run.meta(provenance, &p.display().to_string())),
            before: report,
            changed: run.changed,
            transitions: run.transitions.clone(),
            examples: run.examples.clone(),
        };
        if args.json {
            serde_json::to_string_pretty(&d).unwrap_or_default()
        } else {
            d.text()
        }
    } else if args.json {
        serde_json::to_string_pretty(&report).unwrap_or_default()
    } else {
        report.text()
    };
    // A closed pipe (`warden replay ... | head`) ends the output, not the process in a panic.
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("warden replay: writing the report: {e}");
            Err(())
        }
    }
}
