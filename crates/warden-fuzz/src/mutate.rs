//! A small seeded mutator and the corpus runner for the stable, in-tree fuzz run.
//!
//! No coverage guidance: each iteration takes a corpus entry and applies one to four
//! mutations (bit flips, byte sets, deletions, duplications, splices with another entry,
//! insertions from a per-target dictionary of tokens that matter to the parsers).
//! It finds shallow bugs cheaply and on every CI run; deep ones are libFuzzer's job
//! (`scripts/fuzz`). The same seed always gives the same inputs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// xorshift64*: fast, deterministic, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced: xorshift needs a non-zero state).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Tokens worth inserting, per target.
#[must_use]
pub fn dictionary(target: &str) -> &'static [&'static [u8]] {
    const COMMON: &[&[u8]] = &[
        b"\"",
        b"\\",
        b"\\u0000",
        b"\\ud800",
        b"\xc3\xa9",
        b"\xf4\x8f\xbf\xbf",
        b"\0",
        b"\n",
        b"\r\n",
        b"-1",
        b"0",
        b"1e999",
        b"18446744073709551616",
        b"null",
        b"true",
        b"[",
        b"]",
        b"{",
        b"}",
        b",",
        b":",
        b"=",
        b".",
        b"..",
        b"*",
        b"%",
        b"%2F",
    ];
    const TOKEN: &[&[u8]] = &[
        b".",
        b"=",
        b"==",
        b"+",
        b"/",
        b"-",
        b"_",
        b"eyJ",
        b"e30",
        b"eyJhbGciOiJub25lIn0",
        b"eyJhbGciOiJIUzI1NiIsImtpZCI6InJzIn0",
        b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImhzIn0",
        b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImVzIn0",
        b"AAAA",
        b"____",
        b"\xc3\xa9",
    ];
    const TOML: &[&[u8]] = &[
        b"[server]\n",
        b"[admin]\n",
        b"[upstream]\n",
        b"[token]\n",
        b"[ledger]\n",
        b"[limits]\n",
        b"[[keys]]\n",
        b"[[routes]]\n",
        b"[[rules]]\n",
        b"[rules]\n",
        b"[events]\n",
        b"[routing]\n",
        b"[client_ip]\n",
        b"\"250ms\"",
        b"\"1h\"",
        b"\"0s\"",
        b"\"99999999999999999999d\"",
        b"\"256MiB\"",
        b"\"18446744073709551615GiB\"",
        b"9223372036854775807",
        b"-9223372036854775808",
        b"\"127.0.0.1:0\"",
        b"\"[::1]:80\"",
        b"\"/a/*\"",
        b"\"/**\"",
        b"\"*\"",
        b"\"ip\"",
        b"\"account\"",
        b"\"token\"",
        b"\"header:x\"",
        b"\"claim:sub\"",
        b"\"ban\"",
        b"\"distinct\"",
        b"'''",
        b"\"\"\"",
        b"1979-05-27T07:32:00Z",
        b"inf",
        b"nan",
        b"threshold = ",
        b"window = ",
        b"key = [\"ip\"]\n",
        b"action = ",
        b"paths = [",
        b"alg = \"RS256\"",
        b"\xc3\xa9",
    ];
    const JSON: &[&[u8]] = &[
        b"\"token\":",
        b"\"jti\":",
        b"\"token_id\":",
        b"\"account\":",
        b"\"issued_at\":",
        b"\"expires_at\":",
        b"\"kid\":",
        b"1800000000",
        b"1800000600",
        b"\"rs\"",
        b"\"00000000000000000000000000000000\"",
        b"\"zz\"",
        b"1.5",
        b"-0",
        b"[]",
        b"{}",
    ];
    match target {
        "token" => TOKEN,
        "config" | "rules" => TOML,
        "ingest_line" | "log_line" => JSON,
        _ => COMMON,
    }
}

/// One mutated input derived from `corpus`.
#[must_use]
pub fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut data = corpus
        .get(rng.below(corpus.len()))
        .cloned()
        .unwrap_or_default();
    let common = dictionary("");
    for _ in 0..=rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                data.drain(at..at + n);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let chunk = data[at..at + n].to_vec();
                let to = rng.below(data.len() + 1);
                data.splice(to..to, chunk);
            }
            4 => {
                let other = corpus
                    .get(rng.below(corpus.len()))
                    .cloned()
                    .unwrap_or_default();
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            5 | 6 if !dict.is_empty() => {
                let word = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, word.iter().copied());
            }
            7 => {
                let word = common[rng.below(common.len())];
                let at = rng.below(len + 1);
                // Replace a few bytes rather than insert, to break structure in place.
                let end = (at + rng.below(4)).min(len);
                data.splice(at..end, word.iter().copied());
            }
            _ if len > 0 => {
                // Repeat a byte many times: deep nesting, long runs.
                let i = rng.below(len);
                let n = 1 + rng.below(2048);
                let b = data[i];
                data.splice(i..i, std::iter::repeat_n(b, n));
            }
            _ => data.push(rng.next_u64() as u8),
        }
    }
    data.truncate(1 << 20);
    data
}

/// The corpus of a target: every file of `dir`, sorted by name.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    names.iter().map(std::fs::read).collect()
}

/// A target's failure: the input and the panic message.
#[derive(Debug)]
pub struct Failure {
    /// The input that panicked.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
    /// Which iteration (`None`: a corpus entry as is).
    pub iteration: Option<usize>,
}

/// Runs `target` over every corpus entry, then over `iterations` mutations seeded with
/// `seed`. Stops at the first panic.
pub fn run(
    target: fn(&[u8]),
    corpus: &[Vec<u8>],
    dict: &[&[u8]],
    seed: u64,
    iterations: usize,
) -> Result<(), Failure> {
    let call = |input: &[u8]| {
        catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned())
        })
    };
    for input in corpus {
        call(input).map_err(|message| Failure {
            input: input.clone(),
            message,
            iteration: None,
        })?;
    }
    let mut rng = Rng::new(seed);
    for i in 0..iterations {
        let input = mutate(&mut rng, corpus, dict);
        call(&input).map_err(|message| Failure {
            input,
            message,
            iteration: Some(i),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let corpus = vec![b"hello.world.x".to_vec(), b"{}".to_vec()];
        let a: Vec<Vec<u8>> = {
            let mut r = Rng::new(7);
            (0..50)
                .map(|_| mutate(&mut r, &corpus, dictionary("token")))
                .collect()
        };
        let mut r = Rng::new(7);
        let b: Vec<Vec<u8>> = (0..50)
            .map(|_| mutate(&mut r, &corpus, dictionary("token")))
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|x| !corpus.contains(x)), "nothing mutated");
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input() {
        fn picky(d: &[u8]) {
            assert!(!d.contains(&b'!'), "found a bang");
        }
        let corpus = vec![b"abc".to_vec()];
        let f = run(picky, &corpus, &[b"!"], 1, 10_000).expect_err("the bang is found");
        assert!(f.input.contains(&b'!'));
        assert!(f.message.contains("found a bang"));
        assert!(f.iteration.is_some());
    }
}
