//! Rule tuning for warden: replay access logs through exactly the code the proxy runs,
//! with the time taken from the log, and report what each rule would have done; and a
//! deterministic traffic simulator (feature `sim`) for the detection report.
//!
//! No pingora, no tokio, no clock: [`Replayer::feed`] takes each request's time from the
//! log, so a week of logs replays in seconds and always gives the same answer.
//!
//! ```
//! use std::sync::Arc;
//! use warden_replay::{format::{FieldMap, Format}, replay_logs, Provenance, Replayer, Setup};
//!
//! let (rules, _) = warden_config::rules::compile_rule_str("r.toml".as_ref(), r#"
//! [[rules]]
//! name = "accounts-per-ip"
//! key = ["ip"]
//! measure = "distinct"
//! distinct = "account"
//! window = "1h"
//! threshold = 2
//! action = "block"
//! "#);
//! let log = "\
//! {\"time\":\"2026-03-01T10:00:00Z\",\"ip\":\"192.0.2.7\",\"method\":\"GET\",\"path\":\"/account/a\",\"account\":\"alice\"}
//! {\"time\":\"2026-03-01T10:00:01Z\",\"ip\":\"192.0.2.7\",\"method\":\"GET\",\"path\":\"/account/a\",\"account\":\"bob\"}
//! not json
//! {\"time\":\"2026-03-01T10:00:02Z\",\"ip\":\"192.0.2.7\",\"method\":\"GET\",\"path\":\"/account/a\",\"account\":\"carol\"}
//! ";
//! let mut r = Replayer::new(Setup {
//!     rules: rules.into_iter().map(|l| l.rule).collect(),
//!     max_state_bytes: 64 << 20,
//!     max_bans: 1000,
//!     routes: None,
//!     provenance: Provenance::Unchecked { account_claim: "sub".into() },
//!     log_has_tokens: false,
//!     records: Arc::new(Vec::new()),
//!     header_names: Vec::new(),
//! });
//! let map = FieldMap::new(Format::JsonLines);
//! let run = replay_logs(vec![("access.log".into(), log.as_bytes())], &map, std::slice::from_mut(&mut r));
//! assert_eq!(run.bad_lines, 1);
//! assert_eq!(run.bad[0].line, 3);
//! let report = r.stats.report(run.meta("unchecked", "r.toml"));
//! assert_eq!(report.rules[0].would_block, 1); // the third account
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod format;
pub mod html;
pub mod replay;
pub mod report;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::BufRead;

pub use replay::{Decided, Outcome, Provenance, Replayer, Setup};
pub use report::{BadLine, Change, Diff, Meta, Report};

use format::FieldMap;

/// Bad lines listed in a report; the count stays exact beyond.
pub const MAX_BAD_LISTED: usize = 20;
/// Changed requests listed in a diff.
pub const MAX_CHANGES_LISTED: usize = 20;

/// What a run over the logs saw, beyond each replayer's statistics.
#[derive(Debug, Default)]
pub struct Run {
    /// Log files, in order.
    pub files: Vec<String>,
    /// Lines read (blank lines included).
    pub lines: u64,
    /// Lines that could not be read.
    pub bad_lines: u64,
    /// The first [`MAX_BAD_LISTED`] of them.
    pub bad: Vec<BadLine>,
    /// With two replayers: requests whose outcome differs.
    pub changed: u64,
    /// `before -> after` counts.
    pub transitions: BTreeMap<String, u64>,
    /// The first [`MAX_CHANGES_LISTED`] changes.
    pub examples: Vec<Change>,
    /// Requests whose logged status was compared with the first replayer's decision.
    pub status_compared: u64,
    /// Of which disagreed (see [`agrees`]).
    pub status_mismatched: u64,
    /// The first [`MAX_CHANGES_LISTED`] disagreements (`before`: logged, `after`: replay).
    pub mismatches: Vec<Change>,
}

/// Whether a logged status agrees with a replayed decision: a refusal must have the
/// refusal's status; a proxied request any status but warden's refusals (400, 401, 403,
/// 429), since the upstream answered it. Replaying a live warden's own log with the rules
/// it ran should agree on every line.
#[must_use]
pub fn agrees(logged: u16, d: &Decided) -> bool {
    if d.outcome.reached_upstream() {
        !matches!(logged, 400 | 401 | 403 | 429)
    } else {
        logged == d.status
    }
}

/// Adds an item to a list kept to its first `max` (the item is made only if it is kept).
fn listed<T>(list: &mut Vec<T>, max: usize, item: impl FnOnce() -> T) {
    if list.len() < max {
        list.push(item());
    }
}

impl Run {
    /// Counts a bad line, and lists it among the first [`MAX_BAD_LISTED`].
    fn bad_line(&mut self, file: &str, line: u64, error: impl FnOnce() -> String) {
        self.bad_lines += 1;
        listed(&mut self.bad, MAX_BAD_LISTED, || BadLine {
            file: file.to_owned(),
            line,
            error: error(),
        });
    }

    /// The report's metadata.
    #[must_use]
    pub fn meta(&self, provenance: &str, rules_file: &str) -> Meta {
        Meta {
            provenance: provenance.to_owned(),
            rules_file: rules_file.to_owned(),
            files: self.files.clone(),
            lines: self.lines,
            bad_lines: self.bad_lines,
            bad: self.bad.clone(),
            status_compared: self.status_compared,
            status_mismatched: self.status_mismatched,
            mismatches: self.mismatches.clone(),
        }
    }
}

/// Reads every line of every input once and feeds each request to every replayer (one
/// for a replay, two for a diff). A bad line is counted and listed, never fatal; a read
/// error ends that input (counted as a bad line) and the run goes on with the next.
pub fn replay_logs<R: BufRead>(
    inputs: Vec<(String, R)>,
    map: &FieldMap,
    replayers: &mut [Replayer],
) -> Run {
    let mut run = Run::default();
    let mut carry = Vec::new();
    let mut decided = Vec::with_capacity(replayers.len());
    for (name, mut input) in inputs {
        let mut n = 0u64;
        let read = for_each_line(&mut input, &mut carry, |line| {
            n += 1;
            run.lines += 1;
            one_line(&mut run, &name, n, line, map, replayers, &mut decided);
        });
        if let Err(e) = read {
            run.bad_line(&name, n + 1, || {
                format!("read error, rest of the file skipped: {e}")
            });
        }
        run.files.push(name);
    }
    run
}

/// Calls `f` with each line of `input` without its `\n` (the last line may have none),
/// as `read_until` would cut them, but in place in the reader's buffer: only a line that
/// straddles two fills of the buffer is copied (into `carry`). Stops at the first read
/// error (an interrupted read is retried), after the lines before it; the partial line
/// it interrupted is dropped.
fn for_each_line<R: BufRead>(
    input: &mut R,
    carry: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    carry.clear();
    loop {
        let avail = match input.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            if !carry.is_empty() {
                f(carry);
                carry.clear();
            }
            return Ok(());
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', avail) {
            if carry.is_empty() {
                f(&avail[start..end]);
            } else {
                carry.extend_from_slice(&avail[start..end]);
                f(carry);
                carry.clear();
            }
            start = end + 1;
        }
        carry.extend_from_slice(&avail[start..]);
        let len = avail.len();
        input.consume(len);
    }
}

/// Line `n` of `file`: parsed and fed to every replayer, or counted as bad.
fn one_line(
    run: &mut Run,
    name: &str,
    n: u64,
    mut line: &[u8],
    map: &FieldMap,
    replayers: &mut [Replayer],
    decided: &mut Vec<Outcome>,
) {
    while let Some((b'\n' | b'\r', rest)) = line.split_last() {
        line = rest;
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let req = match map.parse(line) {
        Ok(r) => r,
        Err(e) => {
            run.bad_line(name, n, || e.to_string());
            return;
        }
    };
    decided.clear();
    for (i, r) in replayers.iter_mut().enumerate() {
        let d = r.feed(&req);
        if let (0, Some(logged)) = (i, req.status) {
            run.status_compared += 1;
            if !agrees(logged, &d) {
                run.status_mismatched += 1;
                listed(&mut run.mismatches, MAX_CHANGES_LISTED, || Change {
                    file: name.to_owned(),
                    line: n,
                    before: logged.to_string(),
                    after: format!("{} ({})", d.outcome.name(), d.status),
                });
            }
        }
        decided.push(d.outcome);
    }
    if let [a, b] = decided[..] {
        if a != b {
            run.changed += 1;
            *run.transitions
                .entry(format!("{} -> {}", a.name(), b.name()))
                .or_default() += 1;
            listed(&mut run.examples, MAX_CHANGES_LISTED, || Change {
                file: name.to_owned(),
                line: n,
                before: a.name(),
                after: b.name(),
            });
        }
    }
}
