//! A deterministic traffic generator: legitimate users and four kinds of scraper, as a
//! time-ordered list of requests plus the issuance records of every genuinely issued
//! token. The same seed gives the same traffic, byte for byte.
//!
//! Every address is in 127.0.0.0/8, so the same traffic can be written as a log for
//! `warden replay` or sent to a live warden over loopback (each client binding its own
//! source address). Tokens are HS256, signed with the repository's public sample secret
//! under [`Scenario::kid`]: that key plays the login service's key, which the forging
//! scraper also holds (the leaked key).
//!
//! ## Actors (the request's `label`)
//! - `legit`: people. Sessions go to accounts drawn from a Zipf distribution (exponent
//!   [`Scenario::zipf_s`]) but an account holds at most one session per 20 minutes, as one
//!   person would; each account uses its own address. A session gets a fresh token at its
//!   start, then reads 3 to 30 pages with 3 s plus an exponential think time (mean 12 s)
//!   between them; one page in five is a static asset (open route, no token).
//! - `forged`: the 2025 incident. Addresses reading one victim account after another, each
//!   account 4 times, with tokens validly signed by the leaked key but never issued.
//! - `stolen`: genuinely issued tokens of victims (an infostealer's harvest), cycled in
//!   turn at a steady rate, each request from one of thousands of addresses spread over
//!   100 /16 networks. The scraper does not stop when refused.
//! - `low_slow`: a few addresses, each reading one new account (with that account's
//!   genuinely issued, stolen token) every few minutes, under the hourly per-address rules.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::json;
use warden_core::fixtures::{mint, SampleKey};

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A person.
    Legit,
    /// Forged tokens (leaked signing key).
    Forged,
    /// Stolen, genuinely issued tokens, many addresses.
    Stolen,
    /// Low and slow, issued tokens, few addresses.
    LowSlow,
}

impl Actor {
    /// The label written in the log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Legit => "legit",
            Actor::Forged => "forged",
            Actor::Stolen => "stolen",
            Actor::LowSlow => "low_slow",
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Source address.
    pub ip: Ipv4Addr,
    /// Path.
    pub path: &'static str,
    /// Bearer token, if any.
    pub token: Option<Arc<str>>,
    /// Who sent it.
    pub actor: Actor,
}

/// An issued token's record, in the form `warden ledger import` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// `jti`.
    pub jti: String,
    /// Account.
    pub account: String,
    /// Issue time, unix seconds.
    pub issued_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: u64,
}

/// What to generate. Times are relative to `start_s` unless named `_at`.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// PRNG seed.
    pub seed: u64,
    /// Unix seconds of the first request.
    pub start_s: u64,
    /// Seconds of traffic.
    pub duration_s: u64,
    /// Key id of the HS256 sample key.
    pub kid: String,
    /// Token lifetime, seconds.
    pub token_ttl_s: u64,
    /// Accounts of the legitimate population.
    pub accounts: usize,
    /// Sessions over the whole duration (before the per-account cap).
    pub sessions: usize,
    /// Zipf exponent of account activity.
    pub zipf_s: f64,
    /// Forging scraper: addresses (0: none).
    pub forged_addresses: usize,
    /// Requests per second of each forging address.
    pub forged_rate: f64,
    /// Start and length of the forging campaign, seconds.
    pub forged_window: (u64, u64),
    /// Stolen-token scraper: tokens (0: none).
    pub stolen_tokens: usize,
    /// Its addresses.
    pub stolen_addresses: usize,
    /// Its requests per second, all addresses together.
    pub stolen_rate: f64,
    /// Start and length of its campaign, seconds.
    pub stolen_window: (u64, u64),
    /// Low-and-slow addresses (0: none).
    pub low_slow_addresses: usize,
    /// Milliseconds between two accounts read by one low-and-slow address.
    pub low_slow_interval_ms: u64,
    /// Put before every token id (`jti`), so that the logs and records of several
    /// scenarios (other seeds, other days) can be joined without two tokens sharing an id.
    pub id_prefix: String,
}

impl Scenario {
    /// The scenario of the detection report (docs/detection.md): six hours, 20 000
    /// accounts, and every attack.
    #[must_use]
    pub fn report() -> Self {
        Self {
            seed: 5,
            start_s: 1_800_000_000,
            duration_s: 6 * 3600,
            kid: "sim-hs".into(),
            token_ttl_s: 12 * 3600,
            accounts: 20_000,
            sessions: 30_000,
            zipf_s: 1.0,
            forged_addresses: 50,
            forged_rate: 2.0,
            forged_window: (1800, 600),
            stolen_tokens: 300,
            stolen_addresses: 2_500,
            stolen_rate: 100.0,
            stolen_window: (3 * 3600, 900),
            low_slow_addresses: 4,
            low_slow_interval_ms: 200_000,
            id_prefix: String::new(),
        }
    }

    /// A scenario of two seconds, for tests that drive a live warden.
    #[must_use]
    pub fn small(start_s: u64, kid: &str) -> Self {
        Self {
            seed: 7,
            start_s,
            duration_s: 2,
            kid: kid.into(),
            token_ttl_s: 3600,
            accounts: 40,
            sessions: 40,
            zipf_s: 1.0,
            forged_addresses: 2,
            forged_rate: 6.0,
            forged_window: (0, 2),
            stolen_tokens: 3,
            stolen_addresses: 40,
            stolen_rate: 20.0,
            stolen_window: (0, 2),
            // Fast, in a test: one address walking through accounts with issued tokens,
            // banned by the per-address rule after 20 (403s on valid tokens).
            low_slow_addresses: 1,
            low_slow_interval_ms: 70,
            id_prefix: String::new(),
        }
    }
}

/// SplitMix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Exponential with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }
}

/// The address of legitimate account `k`: its own, in 127.1-127.60, at most 250 per /24.
#[must_use]
pub fn legit_ip(k: usize) -> Ipv4Addr {
    let net = 1 + (k % 60) as u32;
    let rest = (k / 60) as u32;
    Ipv4Addr::from(0x7f00_0000 | net << 16 | (rest / 250 % 256) << 8 | (1 + rest % 250))
}

fn stolen_ip(i: usize) -> Ipv4Addr {
    let net = 100 + (i % 100) as u32;
    let rest = (i / 100) as u32;
    Ipv4Addr::from(0x7f00_0000 | net << 16 | (rest / 250 % 256) << 8 | (1 + rest % 250))
}

const PAGES: [&str; 5] = [
    "/account/profile",
    "/account/orders",
    "/account/addresses",
    "/account/settings",
    "/account/entrance-codes",
];
const SENSITIVE: [&str; 3] = [
    "/account/addresses",
    "/account/entrance-codes",
    "/account/orders",
];
const STATIC: [&str; 2] = ["/static/app.js", "/static/style.css"];

/// The generated traffic.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests in time order.
    pub events: Vec<Event>,
    /// Records of the genuinely issued tokens (legit, stolen, low-and-slow).
    pub issued: Vec<Issued>,
}

/// Mints the scenario's tokens (its key id, id prefix and token lifetime), numbering them.
struct Minter<'a> {
    s: &'a Scenario,
    n: u64,
}

impl Minter<'_> {
    fn token(&mut self, account: &str, iat: u64, tag: &str) -> Result<(Arc<str>, Issued), String> {
        self.n += 1;
        let (s, ttl) = (self.s, self.s.token_ttl_s);
        let jti = format!("{}{tag}-{}", s.id_prefix, self.n);
        let claims = json!({"sub": account, "jti": jti, "iat": iat, "exp": iat + ttl});
        let t = mint(SampleKey::Hs, &s.kid, &claims).map_err(|e| e.to_string())?;
        Ok((
            Arc::from(t),
            Issued {
                jti,
                account: account.to_owned(),
                issued_at: iat,
                expires_at: iat + ttl,
            },
        ))
    }
}

/// Generates the traffic of a scenario.
pub fn generate(s: &Scenario) -> Result<Traffic, String> {
    let mut rng = Rng::new(s.seed);
    let mut out = Traffic::default();
    let mut m = Minter { s, n: 0 };
    let t0 = s.start_s * 1000;
    let end = t0 + s.duration_s * 1000;
    let account = |k: usize| format!("user-{k}");

    // --- legitimate users ---
    if s.accounts > 0 {
        let mut cdf = Vec::with_capacity(s.accounts);
        let mut acc = 0.0;
        for k in 0..s.accounts {
            acc += 1.0 / ((k + 1) as f64).powf(s.zipf_s);
            cdf.push(acc);
        }
        let cap = (s.duration_s / 1200).max(1) as usize;
        let mut per_account = vec![0usize; s.accounts];
        for _ in 0..s.sessions {
            let u = rng.unit() * acc;
            let k = cdf.partition_point(|c| *c < u).min(s.accounts - 1);
            if per_account[k] < cap {
                per_account[k] += 1;
            }
        }
        for (k, &n) in per_account.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let slot = s.duration_s * 1000 / n as u64;
            let name = account(k);
            for j in 0..n as u64 {
                let mut t = t0 + j * slot + rng.below(slot / 2 + 1);
                let (tok, rec) = m.token(&name, t / 1000, "l")?;
                out.issued.push(rec);
                let pages = 3 + rng.below(28);
                for _ in 0..pages {
                    if t >= end {
                        break;
                    }
                    let (path, token) = if rng.below(5) == 0 {
                        (STATIC[rng.below(2) as usize], None)
                    } else {
                        (PAGES[rng.below(5) as usize], Some(Arc::clone(&tok)))
                    };
                    out.events.push(Event {
                        time_ms: t,
                        ip: legit_ip(k),
                        path,
                        token,
                        actor: Actor::Legit,
                    });
                    t += 3000 + (rng.exp(12.0) * 1000.0) as u64;
                }
            }
        }
    }

    // --- forged tokens, the incident ---
    let mut victim = 100_000usize;
    if s.forged_addresses > 0 && s.forged_rate > 0.0 {
        let gap = (1000.0 / s.forged_rate) as u64;
        let (from, len) = s.forged_window;
        for a in 0..s.forged_addresses {
            let ip = Ipv4Addr::from(0x7fc8_0000 | (a as u32 / 250) << 8 | (1 + a as u32 % 250));
            let mut t = t0 + from * 1000 + rng.below(gap.max(1));
            let stop = (t0 + (from + len) * 1000).min(end);
            let mut reads = 0;
            let mut tok: Option<Arc<str>> = None;
            while t < stop {
                if reads % 4 == 0 {
                    victim += 1;
                    // Signed by the leaked key, never issued: no record.
                    let (f, _) = m.token(&account(victim), t / 1000, "f")?;
                    tok = Some(f);
                }
                reads += 1;
                out.events.push(Event {
                    time_ms: t,
                    ip,
                    path: SENSITIVE[reads % 3],
                    token: tok.clone(),
                    actor: Actor::Forged,
                });
                t += gap;
            }
        }
    }

    // --- stolen, genuinely issued tokens over thousands of addresses ---
    if s.stolen_tokens > 0 && s.stolen_rate > 0.0 {
        let (from, len) = s.stolen_window;
        let start = t0 + from * 1000;
        let mut stolen = Vec::with_capacity(s.stolen_tokens);
        for _ in 0..s.stolen_tokens {
            victim += 1;
            // Issued to the victim some time before the campaign.
            let iat = (start / 1000).saturating_sub(60 + rng.below(3600));
            let (tok, rec) = m.token(&account(victim), iat, "s")?;
            out.issued.push(rec);
            stolen.push(tok);
        }
        let gap = 1000.0 / s.stolen_rate;
        let n = (len as f64 * s.stolen_rate) as usize;
        for i in 0..n {
            let t = start + (i as f64 * gap) as u64;
            if t >= end {
                break;
            }
            out.events.push(Event {
                time_ms: t,
                ip: stolen_ip(rng.below(s.stolen_addresses.max(1) as u64) as usize),
                path: SENSITIVE[i % 3],
                token: Some(Arc::clone(&stolen[i % stolen.len()])),
                actor: Actor::Stolen,
            });
        }
    }

    // --- low and slow ---
    for a in 0..s.low_slow_addresses {
        let ip = Ipv4Addr::from(0x7fd2_0000 | (1 + a as u32));
        let mut t = t0 + rng.below(s.low_slow_interval_ms);
        while t < end {
            victim += 1;
            let (tok, rec) = m.token(&account(victim), (t / 1000).saturating_sub(600), "w")?;
            out.issued.push(rec);
            out.events.push(Event {
                time_ms: t,
                ip,
                path: SENSITIVE[victim % 3],
                token: Some(tok),
                actor: Actor::LowSlow,
            });
            t += s.low_slow_interval_ms.max(1);
        }
    }

    out.events.sort_by_key(|e| e.time_ms);
    Ok(out)
}

/// One request as a JSON log line (`time`, `ip`, `method`, `path`, `token`, `label`), the
/// default field names of `warden replay`.
pub fn json_line(e: &Event, out: &mut String) {
    out.clear();
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"ip\":\"{}\",\"method\":\"GET\",\"path\":\"{}\"",
        crate::report::rfc3339(e.time_ms),
        e.ip,
        e.path
    );
    if let Some(t) = &e.token {
        let _ = write!(out, ",\"token\":\"{t}\"");
    }
    let _ = write!(out, ",\"label\":\"{}\"}}", e.actor.as_str());
}

/// One request in the combined format, the token and the label as two quoted fields after
/// the user agent (`--field token=extra1 --field label=extra2`).
pub fn combined_line(e: &Event, out: &mut String) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    out.clear();
    let iso = crate::report::rfc3339(e.time_ms);
    // 2027-01-15T08:00:00.000Z -> 15/Jan/2027:08:00:00 +0000
    let month = iso[5..7].parse::<usize>().unwrap_or(1);
    let _ = write!(
        out,
        "{} - - [{}/{}/{}:{} +0000] \"GET {} HTTP/1.1\" 200 512 \"-\" \"sim/1.0\" \"{}\" \"{}\"",
        e.ip,
        &iso[8..10],
        MONTHS[(month + 11) % 12],
        &iso[0..4],
        &iso[11..19],
        e.path,
        e.token.as_deref().unwrap_or("-"),
        e.actor.as_str()
    );
}

/// A record as a JSON line of `warden ledger import`.
pub fn record_line(r: &Issued, kid: &str) -> String {
    json!({
        "jti": r.jti,
        "account": r.account,
        "issued_at": r.issued_at,
        "expires_at": r.expires_at,
        "kid": kid,
    })
    .to_string()
}

/// A warden configuration for the generated traffic: the HS256 sample key under the
/// scenario's kid (its secret in `keys/sim-hs.secret` next to the file), the account pages
/// protected, static assets open.
#[must_use]
pub fn config_text(kid: &str, upstream: &str) -> String {
    format!(
        r#"# Written by `warden simulate`: the configuration the simulated traffic assumes.
[upstream]
peers = ["{upstream}"]

[token]
header = "authorization"

[[keys]]
kid = "{kid}"
alg = "HS256"
secret_file = "keys/sim-hs.secret"

[ledger]
path = "ledger.redb"

[[routes]]
name = "account"
class = "protected"
paths = ["/account/*"]

[[routes]]
name = "static"
class = "open"
paths = ["/static/*"]
"#
    )
}

/// The HS256 sample secret (the bytes of `keys/sim-hs.secret`).
#[must_use]
pub fn secret() -> Vec<u8> {
    warden_core::fixtures::hs256_secret()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn lines(t: &Traffic) -> Vec<String> {
        let mut l = String::new();
        t.events
            .iter()
            .map(|e| {
                json_line(e, &mut l);
                l.clone()
            })
            .collect()
    }

    #[test]
    fn same_seed_same_traffic() {
        let s = Scenario::small(1_800_000_000, "k");
        let a = generate(&s).expect("generate");
        let b = generate(&s).expect("generate");
        assert_eq!(lines(&a), lines(&b));
        assert_eq!(a.issued, b.issued);
        let c = generate(&Scenario { seed: 8, ..s }).expect("generate");
        assert_ne!(lines(&a), lines(&c));
        assert!(a.events.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    }

    /// An id prefix changes the token ids and nothing else: the same requests at the
    /// same times from the same addresses, every issued id prefixed.
    #[test]
    fn an_id_prefix_keeps_the_traffic_and_prefixes_every_id() {
        let s = Scenario::small(1_800_000_000, "k");
        let a = generate(&s).expect("generate");
        let b = generate(&Scenario {
            id_prefix: "d1-".into(),
            ..s
        })
        .expect("generate");
        assert_eq!(a.issued.len(), b.issued.len());
        for (x, y) in a.issued.iter().zip(&b.issued) {
            assert_eq!(format!("d1-{}", x.jti), y.jti);
            assert_eq!((&x.account, x.issued_at), (&y.account, y.issued_at));
        }
        let shape = |t: &Traffic| -> Vec<(u64, Ipv4Addr, &str, bool)> {
            t.events
                .iter()
                .map(|e| (e.time_ms, e.ip, e.path, e.token.is_some()))
                .collect()
        };
        assert_eq!(shape(&a), shape(&b));
        let forged: Vec<Option<String>> = b
            .events
            .iter()
            .filter(|e| e.actor == Actor::Forged)
            .filter_map(|e| e.token.as_deref())
            .map(|tok| {
                let p = warden_core::token::parse(tok, 8192).expect("token");
                p.claims.string("jti").ok().flatten().map(str::to_owned)
            })
            .collect();
        assert!(forged
            .iter()
            .all(|j| j.as_deref().is_some_and(|j| j.starts_with("d1-f-"))));
        assert!(!forged.is_empty());
    }

    #[test]
    fn actors_have_the_shape_the_report_assumes() {
        let s = Scenario {
            duration_s: 3600,
            sessions: 3000,
            forged_window: (0, 60),
            stolen_window: (60, 300),
            ..Scenario::report()
        };
        let t = generate(&s).expect("generate");
        let issued: HashSet<&str> = t.issued.iter().map(|r| r.jti.as_str()).collect();
        let jti = |tok: &str| -> String {
            let p = warden_core::token::parse(tok, 8192).expect("token parses");
            p.claims
                .string("jti")
                .ok()
                .flatten()
                .expect("jti")
                .to_owned()
        };
        let mut stolen_ips = HashSet::new();
        let mut legit_ip_of: HashMap<String, Ipv4Addr> = HashMap::new();
        for e in &t.events {
            let Some(tok) = &e.token else {
                assert_eq!(e.actor, Actor::Legit);
                continue;
            };
            let known = issued.contains(jti(tok).as_str());
            match e.actor {
                Actor::Forged => assert!(!known, "forged tokens are never issued"),
                Actor::Stolen => {
                    assert!(known);
                    stolen_ips.insert(e.ip);
                }
                Actor::Legit => {
                    assert!(known);
                    let p = warden_core::token::parse(tok, 8192).expect("token");
                    let account = p
                        .claims
                        .string("sub")
                        .ok()
                        .flatten()
                        .expect("sub")
                        .to_owned();
                    let ip = *legit_ip_of.entry(account).or_insert(e.ip);
                    assert_eq!(ip, e.ip, "each account on its own address");
                }
                Actor::LowSlow => assert!(known),
            }
        }
        assert!(stolen_ips.len() >= 2000, "{} addresses", stolen_ips.len());
        let nets: HashSet<u32> = stolen_ips.iter().map(|ip| u32::from(*ip) >> 16).collect();
        assert_eq!(nets.len(), 100);
        // Distinct legitimate accounts have distinct addresses.
        let ips: HashSet<Ipv4Addr> = legit_ip_of.values().copied().collect();
        assert_eq!(ips.len(), legit_ip_of.len());
        assert!(legit_ip_of.len() > 500);
    }
}
