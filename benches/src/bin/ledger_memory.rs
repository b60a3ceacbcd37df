//! Memory of the in-memory ledger index (`MemIndex`) as it grows, measured with a
//! counting global allocator, next to the process RSS.
//!
//! ```text
//! cargo run --release -j1 -p warden-benches --bin ledger_memory [N] [--baselines]
//! ```
//!
//! `N` (default 10 000 000) records are inserted into
//! `MemIndex::with_capacity_and_key(0, (1, 2))`, i.e. growing from empty as the embedded
//! ledger does when it loads its store. Every 500 000 records (and at `N`) it prints the
//! live heap bytes the index holds, bytes per entry, the heap high-water mark (a table
//! that doubles holds its old and new slots for a moment), and the RSS growth.
//!
//! `--baselines` also measures, at 1 M entries and each in a fresh child process
//! (`--store <name>`), the naive stores the benchmarks compare against and the verifier's
//! token cache (filled through `Verifier::remember`).
//!
//! Target (the issue): at most 64 bytes per ledger entry at 10 M entries.
#![deny(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use warden_benches::{
    account_pool, fill_index_range, sample_verified, synthetic_id, synthetic_record,
};
use warden_core::fixtures::SampleKey;
use warden_core::keys::{KeyRegistry, KeyState};
use warden_core::ledger::{MemIndex, Record, TokenId};
use warden_core::verify::{Checked, Policy, Verifier};

/// Counts the bytes handed out by the system allocator that are still live, and their
/// high-water mark. It counts requested sizes: malloc's own headers and page rounding
/// are not included (they are in the RSS column).
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// `unsafe` is needed here and only here: `GlobalAlloc` is an unsafe trait (the allocator
// promises to return valid memory), and its methods are unsafe to call. Every method
// forwards to `System` with the caller's own arguments, unchanged, and only adds counting.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator (so by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was returned by this allocator (so by `System`) with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Restarts the high-water mark from the current live bytes.
fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// `VmRSS` from /proc/self/status, in bytes (0 where /proc is not available).
fn rss() -> usize {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn per(bytes: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        bytes as f64 / n as f64
    }
}

struct Args {
    n: usize,
    baselines: bool,
    /// Measure one store of the baselines table (in a child process).
    store: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 10_000_000,
        baselines: false,
        store: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--baselines" {
            args.baselines = true;
        } else if a == "--store" {
            args.store = Some(it.next().ok_or("--store needs a name")?);
        } else {
            let digits: String = a.chars().filter(|c| *c != '_').collect();
            args.n = digits
                .parse()
                .map_err(|_| format!("expected a record count or --baselines, got {a:?}"))?;
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ledger_memory: {e}");
            std::process::exit(2);
        }
    };
    let accounts = account_pool();
    if let Some(store) = &args.store {
        if let Err(e) = measure_store(store, &accounts) {
            eprintln!("ledger_memory: {e}");
            std::process::exit(2);
        }
        return;
    }
    let shards =
        (std::thread::available_parallelism().map_or(1, usize::from) * 4).next_power_of_two();
    println!(
        "MemIndex::with_capacity_and_key(0, (1, 2)), {} records; dashmap default shards here: {shards}",
        args.n
    );
    println!(
        "size_of::<(TokenId, Packed)>() = {} bytes",
        std::mem::size_of::<(TokenId, warden_core::ledger::Packed)>()
    );
    println!();
    println!(
        "| entries | live heap (MB) | bytes/entry | heap high-water (MB) | RSS growth (MB) | RSS bytes/entry | insert time (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");

    let rss0 = rss();
    let heap0 = live();
    reset_peak();
    let index = MemIndex::with_capacity_and_key(0, (1, 2));
    let step = 500_000;
    let mut done = 0;
    let started = Instant::now();
    while done < args.n {
        let next = (done + step).min(args.n);
        fill_index_range(&index, done..next, &accounts);
        done = next;
        let heap = live() - heap0;
        let rss_growth = rss().saturating_sub(rss0);
        println!(
            "| {done} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            mb(heap),
            per(heap, done),
            mb(peak() - heap0),
            mb(rss_growth),
            per(rss_growth, done),
            started.elapsed().as_secs_f64(),
        );
    }
    let entries = index.stats().entries;
    let heap = live() - heap0;
    println!();
    println!(
        "entries {entries}, live heap {heap} bytes, {:.1} bytes per entry (target <= 64), process VmRSS {:.1} MB",
        per(heap, args.n),
        mb(rss())
    );
    drop(index);

    if args.baselines {
        baselines();
    }
}

/// Entries of each store in the baselines table.
const BASELINE_ENTRIES: usize = 1_000_000;

/// The stores of the baselines table, each measured in a fresh child process so that its
/// RSS growth is its own (malloc keeps freed small chunks, which would blur the figures).
const STORES: [&str; 4] = [
    "memindex",
    "mutex-hashmap",
    "dashmap-string",
    "verifier-cache",
];

/// Memory of the naive stores and of the verifier's token cache at 1 M entries.
fn baselines() {
    println!();
    println!(
        "| store, {BASELINE_ENTRIES} entries | live heap (MB) | bytes/entry | heap high-water (MB) | RSS growth (MB) | RSS bytes/entry |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("ledger_memory: cannot find my own executable: {e}");
            std::process::exit(1);
        }
    };
    for store in STORES {
        match std::process::Command::new(&exe)
            .args(["--store", store])
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("ledger_memory: measuring {store} failed: {s}"),
            Err(e) => eprintln!("ledger_memory: cannot run {}: {e}", exe.display()),
        }
    }
}

/// Fills one store with `BASELINE_ENTRIES` entries and prints its table row.
fn measure_store(store: &str, accounts: &[String]) -> Result<(), String> {
    const N: usize = BASELINE_ENTRIES;
    // The verifier's template is built before measuring: it is not part of the cache.
    let registry = KeyRegistry::build(vec![SampleKey::Hs.spec("hs-1", KeyState::Active)])
        .map_err(|e| format!("sample key must load: {e:?}"))?;
    let verifier = Verifier::new(registry, Policy::default());
    let template = sample_verified(&verifier, SampleKey::Hs, "hs-1");
    let rss0 = rss();
    let heap0 = live();
    reset_peak();
    let name = match store {
        "memindex" => {
            let index = MemIndex::with_capacity_and_key(0, (1, 2));
            fill_index_range(&index, 0..N, accounts);
            std::mem::forget(index);
            "MemIndex (growing from empty)"
        }
        "mutex-hashmap" => {
            let mut m = HashMap::new();
            for i in 0..N {
                let r = synthetic_record(i, accounts);
                m.insert(r.id, r);
            }
            std::mem::forget(Mutex::new(m));
            "Mutex<HashMap<TokenId, Record>>"
        }
        "dashmap-string" => {
            let map: DashMap<String, Record> = DashMap::new();
            for i in 0..N {
                let r = synthetic_record(i, accounts);
                map.insert(r.id.to_hex(), r);
            }
            std::mem::forget(map);
            "DashMap<String (hex id), Record>"
        }
        "verifier-cache" => {
            // The verifier's cache of known-good tokens (default capacity 1 M), filled the
            // way `remember` fills it: one Arc<Verified> per token, each a clone of what
            // the verifier keeps of a typical session token (`sample_claims`).
            for i in 0..N {
                let id = synthetic_id(i);
                let mut verified = template.clone();
                verified.id = id;
                verified.account = format!("bench-user-{i}@example.com").into_boxed_str();
                verifier.remember(&Checked {
                    verified: Arc::new(verified),
                    cache_key: u128::from_le_bytes(id.0),
                    cached: false,
                    confirmed: false,
                    ledger_revision: None,
                });
            }
            if verifier.cache_len() != N {
                return Err(format!("the cache kept {} tokens", verifier.cache_len()));
            }
            "Verifier token cache (via remember)"
        }
        other => {
            return Err(format!(
                "unknown store {other:?}, expected one of {STORES:?}"
            ))
        }
    };
    // The store is leaked on purpose, so that its bytes are still live here; the
    // process ends right after.
    let heap = live() - heap0;
    let rss_growth = rss().saturating_sub(rss0);
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        mb(heap),
        per(heap, N),
        mb(peak() - heap0),
        mb(rss_growth),
        per(rss_growth, N)
    );
    Ok(())
}
