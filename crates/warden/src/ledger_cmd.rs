//! `warden ledger ...`: offline work on the embedded ledger of a stopped warden.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use warden_core::ingest::record_from_line;
use warden_core::ledger::{Ledger, Revocation, TokenId};

use crate::run::{load_config, open_ledger, verifier};

/// Records written per durable commit during an import.
const IMPORT_BATCH: usize = 10_000;

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Import issued-token records from JSON-lines files (backfill).
    Import {
        /// Configuration file (for the ledger path and the keys).
        #[arg(short, long)]
        config: PathBuf,
        /// JSON-lines files: one record per line, `{"token": "..."}` or the facts
        /// (`jti`, `account`, `issued_at`, `expires_at`, `kid`). `-` reads standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Revoke by jti, account or key id.
    Revoke {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// A token's jti.
        #[arg(long, group = "what")]
        jti: Option<String>,
        /// Every token of an account issued until now.
        #[arg(long, group = "what")]
        account: Option<String>,
        /// Every token signed by a key id.
        #[arg(long, group = "what")]
        kid: Option<String>,
    },
    /// Print ledger counters.
    Stats {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

pub fn main(cmd: LedgerCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warden ledger: {e}");
            return ExitCode::from(2);
        }
    };
    let config_path = match &cmd {
        LedgerCommand::Import { config, .. }
        | LedgerCommand::Revoke { config, .. }
        | LedgerCommand::Stats { config } => config,
    };
    let Some(config) = load_config(config_path) else {
        return ExitCode::from(2);
    };
    let ledger = match open_ledger(&config, None) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("warden ledger: {e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        LedgerCommand::Stats { .. } => {
            let s = ledger.stats();
            println!("entries {}", s.entries);
            println!("pending_revocations {}", s.pending_revocations);
            ExitCode::SUCCESS
        }
        LedgerCommand::Revoke {
            jti, account, kid, ..
        } => {
            let now = warden_proxy::unix_now();
            let r = match (jti, account, kid) {
                (Some(j), None, None) => Revocation::Token(TokenId::from_jti(&j)),
                (None, Some(a), None) => Revocation::Account {
                    account: a,
                    at: now,
                },
                (None, None, Some(k)) => Revocation::Kid(k),
                _ => {
                    eprintln!("warden ledger revoke: give exactly one of --jti, --account, --kid");
                    return ExitCode::from(2);
                }
            };
            let token = matches!(r, Revocation::Token(_));
            match rt.block_on(ledger.revoke(r, now)) {
                Ok(0) if token => {
                    println!("revoked (no record of this token yet: the revocation waits for it, up to ledger.pending_revocation_ttl)");
                    ExitCode::SUCCESS
                }
                Ok(n) => {
                    println!("revoked ({n} records marked)");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("warden ledger revoke: {e}");
                    ExitCode::from(1)
                }
            }
        }
        LedgerCommand::Import { files, .. } => {
            let v = match verifier(&config) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("warden ledger import: keys: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = warden_proxy::unix_now();
            let (mut imported, mut bad) = (0u64, 0u64);
            for file in files {
                let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                    Box::new(std::io::stdin().lock())
                } else {
                    match std::fs::File::open(&file) {
                        Ok(f) => Box::new(std::io::BufReader::new(f)),
                        Err(e) => {
                            eprintln!("{}: {e}", file.display());
                            bad += 1;
                            continue;
                        }
                    }
                };
                let mut batch = Vec::with_capacity(IMPORT_BATCH);
                for (n, line) in reader.lines().enumerate() {
                    let line = match line {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("{}:{}: {e}", file.display(), n + 1);
                            bad += 1;
                            continue;
                        }
                    };
                    match record_from_line(&line, &v, now) {
                        None => {}
                        Some(Ok(r)) => batch.push(r),
                        Some(Err(e)) => {
                            eprintln!("{}:{}: {e}", file.display(), n + 1);
                            bad += 1;
                        }
                    }
                    if batch.len() >= IMPORT_BATCH {
                        let n = batch.len() as u64;
                        if let Err(e) = rt.block_on(ledger.record(std::mem::take(&mut batch))) {
                            eprintln!("warden ledger import: {e}");
                            return ExitCode::from(1);
                        }
                        imported += n;
                    }
                }
                let n = batch.len() as u64;
                if let Err(e) = rt.block_on(ledger.record(batch)) {
                    eprintln!("warden ledger import: {e}");
                    return ExitCode::from(1);
                }
                imported += n;
            }
            println!("imported {imported} records, {bad} lines refused");
            if bad > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
