//! `warden`: parse arguments, load configuration, wire the services.
#![deny(unsafe_code)]

#[cfg(feature = "mimalloc")]
mod alloc;
mod demo;
mod ledger_cmd;
mod lifecycle;
mod replay_cmd;
mod run;
mod simulate_cmd;
mod upgrade_cmd;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The allocator (see the `mimalloc` feature in Cargo.toml for the measurement, and
/// `alloc.rs` for how it is called).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Stops account scraping with forged or stolen session tokens."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "/etc/warden/warden.toml")]
        config: PathBuf,
        /// Take over the listeners of a running warden (graceful upgrade, after it got SIGQUIT).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Graceful upgrade: start `warden run --upgrade` with this binary, hand it the running
    /// warden's sockets, ledger and state (SIGQUIT), and check it took over.
    Upgrade {
        /// Configuration file (the running warden's).
        #[arg(short, long, default_value = "/etc/warden/warden.toml")]
        config: PathBuf,
        /// The running warden's pid (default: read from `server.pid_file`).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Check configuration and rule files; print every problem with file:line:column.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Work on the token ledger of a stopped warden (a running one is driven through the admin API).
    Ledger {
        #[command(subcommand)]
        command: ledger_cmd::LedgerCommand,
    },
    /// Start warden in front of a demo account service, with sample keys, and print tokens to try.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Demo upstream listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        upstream: String,
        /// Directory for the demo's files (configuration, keys, ledger); a fresh temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Replay access logs through a rule file, as the proxy would decide (time from the log); report per rule.
    Replay(replay_cmd::ReplayArgs),
    /// Generate legitimate and attack traffic: a log for `replay`, or requests to a live warden on loopback.
    Simulate(Box<simulate_cmd::SimulateArgs>),
    /// Run only the demo upstream (an account service with a login endpoint that signs with the sample key).
    Upstream {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Key id put in the tokens it issues.
        #[arg(long, default_value = "login-2026")]
        kid: String,
        /// Lifetime of the tokens it issues, seconds.
        #[arg(long, default_value_t = 900)]
        ttl: u64,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => run::run(&config, upgrade),
        Command::Upgrade { config, pid } => upgrade_cmd::main(&config, pid),
        Command::Check { files } => check(&files),
        Command::Ledger { command } => ledger_cmd::main(command),
        Command::Demo {
            listen,
            admin,
            upstream,
            dir,
        } => demo::main(&listen, &admin, &upstream, dir),
        Command::Upstream { listen, kid, ttl } => upstream::main(&listen, &kid, ttl),
        Command::Replay(args) => replay_cmd::main(&args),
        Command::Simulate(args) => simulate_cmd::main(&args),
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        match warden_config::check_file(f) {
            Ok(warnings) => {
                for w in &warnings {
                    eprintln!("{w}");
                }
                println!("{}: ok ({} warnings)", f.display(), warnings.len());
            }
            Err(diags) => {
                failed = true;
                for d in &diags {
                    eprintln!("{d}");
                }
                let n = diags
                    .iter()
                    .filter(|d| d.severity == warden_config::Severity::Error)
                    .count();
                println!("{}: {n} errors", f.display());
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
