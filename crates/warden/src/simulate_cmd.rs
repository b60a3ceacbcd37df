//! `warden simulate`: deterministic legitimate and attack traffic, written as a log (with
//! the issuance records and a configuration) for `warden replay`, or sent to a live warden
//! over loopback.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_replay::sim::{self, Event, Scenario, Traffic};

#[derive(Args)]
pub struct SimulateArgs {
    /// Write the traffic into this directory: `access.jsonl` (or `access.log` with
    /// `--format combined`), `records.jsonl` (the issued tokens, for `--records` or
    /// `warden ledger import`), `warden.toml` and the key it names.
    #[arg(long, value_name = "DIR", conflicts_with = "live")]
    out: Option<PathBuf>,
    /// Log format of `--out`: `json` or `combined` (token and label as two quoted
    /// fields after the user agent).
    #[arg(long, default_value = "json")]
    format: String,
    /// `report` (six hours, every attack: docs/detection.md) or `small` (two seconds).
    #[arg(long, default_value = "report")]
    scenario: String,
    /// PRNG seed (default: the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Unix seconds of the first request (default: the scenario's fixed start; now with --live).
    #[arg(long)]
    start: Option<u64>,
    /// Length of the traffic, seconds.
    #[arg(long)]
    duration_seconds: Option<u64>,
    /// Legitimate accounts.
    #[arg(long)]
    accounts: Option<usize>,
    /// Legitimate sessions.
    #[arg(long)]
    sessions: Option<usize>,
    /// Addresses of the forging scraper (0: none).
    #[arg(long)]
    forged_addresses: Option<usize>,
    /// Tokens of the stolen-token scraper (0: none).
    #[arg(long)]
    stolen_tokens: Option<usize>,
    /// Addresses of the stolen-token scraper.
    #[arg(long)]
    stolen_addresses: Option<usize>,
    /// Addresses of the low-and-slow scraper (0: none).
    #[arg(long)]
    low_slow_addresses: Option<usize>,
    /// Key id the tokens carry (HS256, the repository's sample secret).
    #[arg(long, default_value = "sim-hs")]
    kid: String,
    /// Put before every token id (`jti`), so that the logs and records of several runs
    /// (other seeds, other days: `--start`) can be joined without two tokens sharing an id.
    #[arg(long, default_value = "")]
    id_prefix: String,
    /// Send the traffic to a live warden at this loopback address, in real time.
    #[arg(long, value_name = "ADDR")]
    live: Option<SocketAddr>,
    /// With --live: its admin address, to record the issued tokens in its ledger.
    #[arg(long, value_name = "ADDR", requires = "live")]
    admin: Option<SocketAddr>,
    /// With --live: the file holding the admin bearer token.
    #[arg(long, requires = "admin")]
    admin_token_file: Option<PathBuf>,
    /// With --live: requests in flight at most (1: one after the other, in order).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// With --live: write what was sent, with the time sent and the status warden
    /// answered, as a JSON log (`warden replay` compares those statuses).
    #[arg(long, requires = "live")]
    log_out: Option<PathBuf>,
    /// With --live: write the issued tokens' records (for `warden replay --records`).
    #[arg(long, requires = "live")]
    records_out: Option<PathBuf>,
}

fn scenario(a: &SimulateArgs, start_default: Option<u64>) -> Result<Scenario, String> {
    let mut s = match a.scenario.as_str() {
        "report" => Scenario::report(),
        "small" => Scenario::small(0, &a.kid),
        other => return Err(format!("unknown scenario {other:?} (report or small)")),
    };
    s.kid.clone_from(&a.kid);
    s.id_prefix.clone_from(&a.id_prefix);
    if let Some(v) = start_default {
        s.start_s = v;
    }
    let set = |dst: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    if let Some(v) = a.start {
        s.start_s = v;
    }
    if let Some(v) = a.seed {
        s.seed = v;
    }
    if let Some(v) = a.duration_seconds {
        s.duration_s = v;
    }
    set(&mut s.accounts, a.accounts);
    set(&mut s.sessions, a.sessions);
    set(&mut s.forged_addresses, a.forged_addresses);
    set(&mut s.stolen_tokens, a.stolen_tokens);
    set(&mut s.stolen_addresses, a.stolen_addresses);
    set(&mut s.low_slow_addresses, a.low_slow_addresses);
    if s.start_s == 0 {
        s.start_s = Scenario::report().start_s;
    }
    Ok(s)
}

pub fn main(a: &SimulateArgs) -> ExitCode {
    let r = match (&a.out, a.live) {
        (Some(dir), None) => write_files(a, dir),
        (None, Some(addr)) => live(a, addr),
        _ => Err("give --out DIR (write a log) or --live ADDR (drive a warden)".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden simulate: {e}");
            ExitCode::from(2)
        }
    }
}

fn summary(t: &Traffic) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &t.events {
        *by.entry(e.actor.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "{} requests ({}), {} issued tokens",
        t.events.len(),
        parts.join(", "),
        t.issued.len()
    )
}

fn write_files(a: &SimulateArgs, dir: &Path) -> Result<(), String> {
    let combined = match a.format.as_str() {
        "json" => false,
        "combined" => true,
        f => return Err(format!("unknown format {f:?} (json or combined)")),
    };
    let s = scenario(a, None)?;
    let t = sim::generate(&s)?;
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(dir.join("keys")).map_err(|e| io(dir, e))?;
    let log_name = if combined {
        "access.log"
    } else {
        "access.jsonl"
    };
    let log_path = dir.join(log_name);
    let mut w = BufWriter::new(std::fs::File::create(&log_path).map_err(|e| io(&log_path, e))?);
    let mut line = String::new();
    for e in &t.events {
        if combined {
            sim::combined_line(e, &mut line);
        } else {
            sim::json_line(e, &mut line);
        }
        writeln!(w, "{line}").map_err(|e| io(&log_path, e))?;
    }
    w.flush().map_err(|e| io(&log_path, e))?;
    let rec_path = dir.join("records.jsonl");
    let mut w = BufWriter::new(std::fs::File::create(&rec_path).map_err(|e| io(&rec_path, e))?);
    for r in &t.issued {
        writeln!(w, "{}", sim::record_line(r, &s.kid)).map_err(|e| io(&rec_path, e))?;
    }
    w.flush().map_err(|e| io(&rec_path, e))?;
    let key = dir.join("keys/sim-hs.secret");
    std::fs::write(&key, sim::secret()).map_err(|e| io(&key, e))?;
    let conf = dir.join("warden.toml");
    std::fs::write(&conf, sim::config_text(&s.kid, "127.0.0.1:8081")).map_err(|e| io(&conf, e))?;
    println!("{}", summary(&t));
    let fields = if combined {
        " --format combined --field token=extra1 --field label=extra2"
    } else {
        ""
    };
    println!(
        "replay with: warden replay --rules deploy/rules/default.toml --config {} --records {} --log {}{fields}",
        conf.display(),
        rec_path.display(),
        log_path.display()
    );
    Ok(())
}

fn loopback(addr: SocketAddr, what: &str) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{what} {addr} is not a loopback address: the simulator only drives a local warden"
        ))
    }
}

/// One HTTP/1.1 exchange with `Connection: close`, from a chosen source address; the status.
async fn exchange(src: Option<IpAddr>, to: SocketAddr, request: &[u8]) -> Result<u16, String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let mut s = sock
        .connect(to)
        .await
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("unparseable response {head:?}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn live(a: &SimulateArgs, proxy: SocketAddr) -> Result<(), String> {
    loopback(proxy, "--live")?;
    if let Some(admin) = a.admin {
        loopback(admin, "--admin")?;
    }
    // Tokens are valid from now: the traffic starts a second ahead (or when the records
    // are in, if that takes longer; the schedule then shifts).
    let s = scenario(a, Some(now_ms() / 1000 + 1))?;
    let t = sim::generate(&s)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Duration::from_secs(s.duration_s + 60);
    let results = rt.block_on(async {
        tokio::time::timeout(deadline, drive(a, proxy, &s, &t))
            .await
            .map_err(|_| format!("stopped after {deadline:?}"))?
    })?;
    let mut by: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for (e, (_, status)) in t.events.iter().zip(&results) {
        *by.entry((e.actor.as_str(), *status)).or_default() += 1;
    }
    println!("{}", summary(&t));
    for ((actor, status), n) in by {
        println!("{actor} {status}: {n}");
    }
    if let Some(p) = &a.records_out {
        let text: String = t
            .issued
            .iter()
            .map(|r| sim::record_line(r, &s.kid) + "\n")
            .collect();
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &a.log_out {
        let mut w =
            BufWriter::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?);
        let mut line = String::new();
        for (e, (sent, status)) in t.events.iter().zip(&results) {
            let sent_event = Event {
                time_ms: *sent,
                ..e.clone()
            };
            sim::json_line(&sent_event, &mut line);
            line.pop();
            writeln!(w, "{line},\"status\":{status}}}").map_err(|e| e.to_string())?;
        }
        w.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Records the issued tokens, then sends every request at its time; (sent at, status) per
/// request, status 0 when the exchange failed.
async fn drive(
    a: &SimulateArgs,
    proxy: SocketAddr,
    s: &Scenario,
    t: &Traffic,
) -> Result<Vec<(u64, u16)>, String> {
    if let Some(admin) = a.admin {
        let token = match &a.admin_token_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .trim()
                .to_owned(),
            None => String::new(),
        };
        for chunk in t.issued.chunks(500) {
            let records: Vec<serde_json::Value> = chunk
                .iter()
                .map(|r| {
                    serde_json::from_str(&sim::record_line(r, &s.kid))
                        .unwrap_or(serde_json::Value::Null)
                })
                .collect();
            let body = serde_json::json!({ "records": records }).to_string();
            let req = format!(
                "POST /ledger/records HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let status = exchange(None, admin, req.as_bytes()).await?;
            if status != 200 {
                return Err(format!("the admin API refused the records: {status}"));
            }
        }
    } else if !t.issued.is_empty() {
        eprintln!(
            "warden simulate: no --admin: the {} issued tokens are not recorded, warden will see them as forged",
            t.issued.len()
        );
    }
    let first = t.events.first().map_or(0, |e| e.time_ms);
    let lag = now_ms().saturating_sub(first);
    let results = Arc::new(Mutex::new(vec![(0u64, 0u16); t.events.len()]));
    let permits = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, e) in t.events.iter().enumerate() {
        let at = e.time_ms + lag;
        let wait = at.saturating_sub(now_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let auth = e
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {proxy}\r\nUser-Agent: warden-simulate\r\n{auth}Connection: close\r\n\r\n",
            e.path
        );
        let ip = IpAddr::V4(e.ip);
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let results = Arc::clone(&results);
        let one = async move {
            let sent = now_ms();
            let status = tokio::time::timeout(
                Duration::from_secs(10),
                exchange(Some(ip), proxy, req.as_bytes()),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
            if let Ok(mut r) = results.lock() {
                r[i] = (sent, status);
            }
            drop(permit);
        };
        if a.concurrency <= 1 {
            one.await;
        } else {
            tasks.spawn(one);
        }
    }
    while tasks.join_next().await.is_some() {}
    let r = results
        .lock()
        .map_err(|_| "a request task panicked".to_owned())?;
    Ok(r.clone())
}
