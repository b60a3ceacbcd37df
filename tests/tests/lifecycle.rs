//! Lifecycle: a graceful upgrade under load loses no request, counters and bans survive
//! a restart and an upgrade, a graceful stop drains requests in flight.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warden_core::fixtures::SampleKey;
use warden_e2e::{kid, now, raw, raw_from, request, token, wait_for, Conn, Upstream, Warden};

/// A GET with `Connection: close` as raw bytes.
fn get_bytes(path: &str, bearer: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn login_bytes(account: &str) -> Vec<u8> {
    let body = format!("{{\"account\":\"{account}\"}}");
    format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sum of the samples of a metric whose line starts with `prefix`.
fn metric_sum(w: &Warden, prefix: &str) -> f64 {
    request(w.admin, "GET", "/metrics", &[], b"")
        .text()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One request over a kept-alive connection, as an HTTP client sends it: a new
/// connection when there is none (or the last response said `Connection: close`), and
/// one retry on a fresh connection when the server closed the connection without
/// answering (RFC 9112, 9.3.1), counted in `retried`.
fn keep_alive_get(
    proxy: SocketAddr,
    conn: &mut Option<Conn>,
    req: &[u8],
    retried: &AtomicU64,
) -> Result<warden_e2e::Response, String> {
    for attempt in 0..2 {
        let mut c = match conn.take() {
            Some(c) => c,
            None => Conn::open(proxy, Duration::from_secs(15))
                .map_err(|e| format!("keep-alive connect: {e}"))?,
        };
        match c.send(req).and_then(|()| c.response()) {
            Ok(Some(r)) => {
                let close = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if !close {
                    *conn = Some(c);
                }
                return Ok(r);
            }
            Ok(None) if attempt == 0 => {
                retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(e)
                if attempt == 0
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) =>
            {
                retried.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => return Err("keep-alive: closed twice without an answer".into()),
            Err(e) => return Err(format!("keep-alive: {e}")),
        }
    }
    Err("keep-alive: no answer".into())
}

/// Load: `readers` threads GET a protected page with a recorded token over fresh
/// connections; two more do the same over kept-alive connections, as an HTTP client
/// does: a new connection after a response with `Connection: close`, and one retry of a
/// request the server closed the connection on without answering (RFC 9112, 9.3.1:
/// an idle connection closed by the server; counted in `retried`); one more logs in
/// through the proxy (the record is taken inline) and at once uses the new token. Every
/// failure is kept with what it was.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    issued: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr, tok: &str, readers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let retried = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let fail = |errors: &Mutex<Vec<String>>, e: String| {
            if let Ok(mut v) = errors.lock() {
                v.push(e);
            }
        };
        for _ in 0..readers {
            let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
            let req = get_bytes("/account/orders", tok);
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match raw(proxy, &req) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => fail(&errors, format!("GET: {} {}", r.status, r.text())),
                        Err(e) => fail(&errors, format!("GET: {e}")),
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (stop, ok, retried, errors) =
                (stop.clone(), ok.clone(), retried.clone(), errors.clone());
            let req = format!(
                "GET /account/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n"
            )
            .into_bytes();
            threads.push(std::thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::Relaxed) {
                    match keep_alive_get(proxy, &mut conn, &req, &retried) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => fail(
                            &errors,
                            format!("keep-alive GET: {} {}", r.status, r.text()),
                        ),
                        Err(e) => fail(&errors, e),
                    }
                }
            }));
        }
        let (stop2, ok2, errors2, issued2) =
            (stop.clone(), ok.clone(), errors.clone(), issued.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                let account = format!("user-{n}");
                let tok = match raw(proxy, &login_bytes(&account)) {
                    Ok(r) if r.status == 200 => match r.json()["access_token"].as_str() {
                        Some(t) => t.to_owned(),
                        None => {
                            fail(&errors2, format!("login: no token in {}", r.text()));
                            continue;
                        }
                    },
                    Ok(r) => {
                        fail(&errors2, format!("login: {} {}", r.status, r.text()));
                        continue;
                    }
                    Err(e) => {
                        fail(&errors2, format!("login: {e}"));
                        continue;
                    }
                };
                ok2.fetch_add(1, Ordering::Relaxed);
                match raw(proxy, &get_bytes("/account/addresses", &tok)) {
                    Ok(r) if r.status == 200 => {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => fail(
                        &errors2,
                        format!("GET after login {account}: {} {}", r.status, r.text()),
                    ),
                    Err(e) => fail(&errors2, format!("GET after login {account}: {e}")),
                }
                if let Ok(mut v) = issued2.lock() {
                    v.push(tok);
                }
            }
        }));
        Self {
            stop,
            ok,
            retried,
            errors,
            issued,
            threads,
        }
    }

    /// Stops the load; (requests answered 200, failures, tokens issued).
    fn finish(self) -> (u64, Vec<String>, Vec<String>) {
        let retried = self.retried.load(Ordering::Relaxed);
        eprintln!("keep-alive requests retried on a fresh connection: {retried}");
        // Once the old process stops listening it keeps connections idle between
        // requests for most of its grace period (`Guarded::idle_linger`): each kept-alive
        // client's next request is answered, with `Connection: close`, so no client ever
        // needs the retry HTTP would allow (wrk would count one as an error).
        assert_eq!(retried, 0, "kept-alive requests closed unanswered");
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let errors = self.errors.lock().map(|v| v.clone()).unwrap_or_default();
        let issued = self.issued.lock().map(|v| v.clone()).unwrap_or_default();
        (self.ok.load(Ordering::Relaxed), errors, issued)
    }
}

#[test]
fn a_graceful_upgrade_under_load_loses_no_request() {
    let up = Upstream::start(kid::ACTIVE);
    // A second of grace: the old process's requests in flight when it stops accepting
    // finish within it.
    let mut w = Warden::start_lifecycle(up.addr, "", "", "1s", "5s");
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    w.record(&tok);
    let load = Load::start(w.proxy, &tok, 6);
    std::thread::sleep(Duration::from_millis(1500));
    let served_before = load.ok.load(Ordering::Relaxed);
    assert!(served_before > 0, "no request served before the upgrade");

    let mut old = w.upgrade();
    // The old process keeps accepting for pingora's 5 s, drains for the grace period,
    // then exits, cleanly.
    let status = old.wait(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "old process: {status:?}; log:\n{}",
        w.log()
    );
    let drained_in = old.since.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, errors, issued) = load.finish();

    assert!(
        errors.is_empty(),
        "{} failed requests of {}, first ones: {:#?}\nlog:\n{}",
        errors.len(),
        ok + errors.len() as u64,
        &errors[..errors.len().min(10)],
        w.log()
    );
    // Both processes served: the new one counted some of the requests, not all.
    let by_new = metric_sum(&w, "warden_requests_total{class=\"protected\"")
        + metric_sum(&w, "warden_requests_total{class=\"issuance\"");
    assert!(
        by_new > 0.0 && by_new < ok as f64,
        "the new process served {by_new} of {ok} requests"
    );
    eprintln!(
        "upgrade under load: {ok} requests answered 200, {by_new} by the new process, none failed; the old process exited {drained_in:?} after SIGQUIT"
    );
    // Every token issued during the upgrade, through either process, is in the new
    // process's ledger (those the old one took after handing over came through the
    // hand-off journal), and the journal is gone once imported.
    assert!(!issued.is_empty());
    for t in &issued {
        let r = w.get("/account/orders", t);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let journal = w.dir.path().join("ledger.redb.handoff.jsonl");
    assert!(
        wait_for(Duration::from_secs(3), || (!journal.exists()).then_some(())).is_some(),
        "hand-off journal left behind"
    );
    let log = w.log();
    assert!(log.contains("ledger handed over"), "{log}");
    // Logins the old process took after handing over went through the journal.
    assert!(
        log.contains("ledger hand-off journal") && log.contains("records"),
        "{log}"
    );
    // (pingora's "No incoming socket transfer" while the new process waits for the
    // sockets is logged as an error by pingora itself; warden's own must be none.)
    assert!(!log.lines().any(|l| l.contains(" ERROR warden")), "{log}");
}

const RULES: &str = r#"[[rules]]
name = "requests-per-ip"
classes = ["protected"]
key = ["ip"]
window = "10m"
threshold = 3
action = "ban"
ban_for = "10m"
"#;

fn get_from(w: &Warden, src: &str, tok: &str) -> u16 {
    let ip = src.parse().expect("ip");
    raw_from(Some(ip), w.proxy, &get_bytes("/account/orders", tok))
        .expect("request")
        .status
}

/// Builds state that must survive: an address with 3 requests counted (at the
/// threshold, not over it), an address banned by the rule, an account banned by hand.
fn build_state(w: &Warden, tok: &str, mallory: &str) {
    for _ in 0..3 {
        assert_eq!(get_from(w, "127.0.0.11", tok), 200);
    }
    for _ in 0..3 {
        assert_eq!(get_from(w, "127.0.0.12", tok), 200);
    }
    assert_eq!(get_from(w, "127.0.0.12", tok), 403, "the fourth is banned");
    let r = w.admin(
        "POST",
        "/decisions",
        r#"{"field": "account", "value": "mallory", "ttl": "1h"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_from(w, "127.0.0.13", mallory), 403);
}

/// The same state, seen by the process now serving.
fn state_holds(w: &Warden, tok: &str, mallory: &str) {
    let bans = w.admin("GET", "/decisions", "").json();
    let mut listed: Vec<String> = bans["bans"]
        .as_array()
        .expect("bans")
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b["rule"].as_str().unwrap_or(""),
                b["key"].as_str().unwrap_or("")
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["manual account=mallory", "requests-per-ip ip=127.0.0.12"]
    );
    assert_eq!(get_from(w, "127.0.0.12", tok), 403, "the rule's ban holds");
    assert_eq!(
        get_from(w, "127.0.0.13", mallory),
        403,
        "the manual ban holds"
    );
    // The counter kept its 3: the next request is over the threshold (with an empty
    // state it would be the first of three allowed).
    assert_eq!(get_from(w, "127.0.0.11", tok), 403, "the count held");
    assert_eq!(
        get_from(w, "127.0.0.14", tok),
        200,
        "other addresses start clean"
    );
}

#[test]
fn counters_and_bans_survive_a_restart_and_a_damaged_snapshot_is_only_logged() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start_lifecycle(up.addr, RULES, "", "0s", "2s");
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    let mallory = token(SampleKey::RsA, kid::ACTIVE, "mallory", now());
    w.record(&tok);
    w.record(&mallory);
    build_state(&w, &tok, &mallory);
    w.restart();
    let log = w.log();
    assert!(log.contains("state snapshot (stop) written"), "{log}");
    assert!(log.contains("restored"), "{log}");
    state_holds(&w, &tok, &mallory);

    // A damaged snapshot: warden starts all the same, says why, with empty state.
    w.stop();
    let snap = w.dir.path().join("warden.state");
    let mut bytes = std::fs::read(&snap).expect("snapshot written at stop");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&snap, &bytes).expect("damage");
    w.restart();
    let log = w.log();
    assert!(
        log.contains(
            "not restored, starting with empty counters and bans: snapshot checksum mismatch"
        ),
        "{log}"
    );
    assert_eq!(get_from(&w, "127.0.0.12", &tok), 200, "empty state: no ban");
}

#[test]
fn periodic_snapshots_keep_state_through_a_crash() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start_lifecycle(
        up.addr,
        RULES,
        "[state]\nsnapshot_interval = \"1s\"\n",
        "0s",
        "2s",
    );
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    let mallory = token(SampleKey::RsA, kid::ACTIVE, "mallory", now());
    w.record(&tok);
    w.record(&mallory);
    build_state(&w, &tok, &mallory);
    // Two periodic snapshots later, kill -9: no snapshot at stop this time.
    std::thread::sleep(Duration::from_millis(2500));
    w.kill9_and_restart();
    assert!(!w.log().contains("state snapshot (stop)"));
    state_holds(&w, &tok, &mallory);
}

#[test]
fn counters_and_bans_survive_a_graceful_upgrade() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start_lifecycle(up.addr, RULES, "", "0s", "2s");
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    let mallory = token(SampleKey::RsA, kid::ACTIVE, "mallory", now());
    w.record(&tok);
    w.record(&mallory);
    build_state(&w, &tok, &mallory);
    let mut old = w.upgrade();
    // Until the old process exits, either may answer: wait, so that only the new one
    // can.
    assert!(old
        .wait(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let log = w.log();
    assert!(
        log.contains("state snapshot (graceful upgrade) written"),
        "{log}"
    );
    assert!(log.contains("restored"), "{log}");
    state_holds(&w, &tok, &mallory);
}

/// An upstream that answers each request after `delay`, and reports each request it
/// has started to handle.
fn slow_upstream(delay: Duration) -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return, // health checks connect and leave
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(());
                std::thread::sleep(delay);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nslow done",
                );
            });
        }
    });
    (addr, rx)
}

#[test]
fn a_graceful_stop_drains_requests_in_flight() {
    let (upstream, started) = slow_upstream(Duration::from_millis(1500));
    let (grace, timeout) = (3, 2);
    let mut w = Warden::start_lifecycle(
        upstream,
        "",
        "",
        &format!("{grace}s"),
        &format!("{timeout}s"),
    );
    let proxy = w.proxy;
    let client = std::thread::spawn(move || {
        raw(
            proxy,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    });
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the upstream");
    w.signal("TERM");
    let mut process = w.detach();
    // The listeners close at once: new connections are refused while the request in
    // flight still runs.
    let refused = wait_for(Duration::from_secs(2), || {
        TcpStream::connect_timeout(&proxy, Duration::from_millis(200))
            .err()
            .filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(refused.is_some(), "the proxy still accepts connections");
    assert!(
        process.since.elapsed() < Duration::from_millis(1500),
        "refused only after {:?}",
        process.since.elapsed()
    );
    let r = client
        .join()
        .expect("client")
        .expect("the request in flight");
    assert_eq!((r.status, r.text().as_str()), (200, "slow done"));
    // The process exits once the grace period is over, within the shutdown timeout.
    let status = process.wait(Duration::from_secs(grace + timeout + 3));
    let took = process.since.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        w.log()
    );
    assert!(
        took < Duration::from_secs(grace + timeout + 1),
        "exited after {took:?}"
    );
    assert!(w.log().contains("state snapshot (stop) written"));
}

/// Whether a process (not ours to wait for) has ended: gone, or a zombie.
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn warden_upgrade_hands_over_and_tells_systemd_the_new_main_pid() {
    let up = Upstream::start(kid::ACTIVE);
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let socket_env = notify_path.display().to_string();
    let mut w = Warden::start_lifecycle_env(
        up.addr,
        RULES,
        "",
        "0s",
        "2s",
        &[("NOTIFY_SOCKET", &socket_env)],
    );
    let mut buf = [0u8; 256];
    let logs = w.dir.path().to_owned();
    let mut next = || match notify.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no notification ({e}); logs:\n{}\n--- upgrade-cmd.log\n{}",
            std::fs::read_to_string(logs.join("warden.log")).unwrap_or_default(),
            std::fs::read_to_string(logs.join("upgrade-cmd.log")).unwrap_or_default()
        ),
    };
    let old = w.pid();
    assert_eq!(next(), format!("READY=1\nMAINPID={old}"));
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    w.record(&tok);
    for _ in 0..3 {
        assert_eq!(get_from(&w, "127.0.0.21", &tok), 200);
    }

    // As systemd's ExecReload would run it: the pid from server.pid_file.
    let out = std::fs::File::create(w.dir.path().join("upgrade-cmd.log")).expect("log");
    let status = std::process::Command::new(warden_e2e::warden_bin())
        .args(["upgrade", "--config"])
        .arg(w.config_path())
        .env("NOTIFY_SOCKET", &socket_env)
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .status()
        .expect("run warden upgrade");
    let said = std::fs::read_to_string(w.dir.path().join("upgrade-cmd.log")).unwrap_or_default();
    assert!(status.success(), "{said}");
    assert!(said.contains(&format!("took over from {old}")), "{said}");
    let new: u32 = std::fs::read_to_string(w.dir.path().join("warden.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_ne!(new, old);
    // Not our child: make sure it goes even if an assertion below fails.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if !ended(self.0) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &self.0.to_string()])
                    .status();
            }
        }
    }
    let _guard = KillOnDrop(new);
    assert_eq!(next(), format!("READY=1\nMAINPID={new}"));
    // The old process drains and exits; the new one serves, with the state.
    let mut draining = w.detach();
    assert!(draining
        .wait(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    assert_eq!(
        get_from(&w, "127.0.0.21", &tok),
        403,
        "the count came along"
    );
    // SIGTERM: systemd hears that the main process is stopping.
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status()
        .expect("kill")
        .success());
    assert_eq!(next(), "STOPPING=1");
    assert!(
        wait_for(Duration::from_secs(10), || ended(new).then_some(())).is_some(),
        "the new process did not stop"
    );
}

#[test]
fn upstream_peers_may_be_host_names_resolved_at_start() {
    // The same upstream named `localhost`: after a restart warden resolves the name and
    // proxies to it. (If `localhost` also resolves to ::1, where nothing listens, the
    // health check takes that peer out within a second: hence the wait for a run of 200s.)
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start(&up, "");
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    w.record(&tok);
    let config = std::fs::read_to_string(w.config_path()).expect("read config");
    let by_address = format!("peers = [\"{}\"]", up.addr);
    let by_name = format!("peers = [\"localhost:{}\"]", up.addr.port());
    assert!(config.contains(&by_address), "{config}");
    std::fs::write(w.config_path(), config.replace(&by_address, &by_name)).expect("write");
    w.restart();
    let served = wait_for(Duration::from_secs(5), || {
        (0..5)
            .all(|_| w.get("/account/a", &tok).status == 200)
            .then_some(())
    });
    assert!(served.is_some(), "{}", w.log());
    assert!(
        w.log().contains(&format!(
            "upstreams [\"localhost:{}\"] ([127.0.0.1:{}",
            up.addr.port(),
            up.addr.port()
        )),
        "{}",
        w.log()
    );
}

#[test]
fn a_web_tier_that_starts_after_warden_is_served_at_once_not_after_the_next_health_check() {
    // Nothing listens on the upstream address yet: the first health check marks the only
    // peer down, and requests get 502 (the peer is tried and refuses), not a 500.
    let addr: SocketAddr = format!("127.0.0.1:{}", warden_e2e::free_port())
        .parse()
        .expect("addr");
    let w = Warden::start_with_rules_and_ledger_to(addr, "", "", "");
    let marked = wait_for(Duration::from_secs(5), || {
        w.log().contains("becomes unhealthy").then_some(())
    });
    assert!(
        marked.is_some(),
        "no health check marked the peer down:\n{}",
        w.log()
    );
    let r = request(w.proxy, "GET", "/health", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    // The web tier comes up: served at once, while the health check still says down
    // (it runs once a second; before, every request got 500 until it ran).
    let _up = Upstream::start_on(kid::ACTIVE, addr);
    let r = request(w.proxy, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log());
}
