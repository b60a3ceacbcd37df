//! Attacks on warden itself, through a real warden on loopback: hostile tokens, hostile
//! connections (slow clients, oversized headers, request smuggling), the admin plane,
//! and crash safety of the ledger.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;
use warden_core::fixtures::{
    self, jwks_rs256, mint, mint_raw, mint_raw_with_secret, SampleKey, ES256_PUB, RS256_A_PUB,
};
use warden_e2e::{
    kid, now, raw, request, token, wait_for, warden_bin, Conn, Recorder, Upstream, Warden,
    ADMIN_TOKEN,
};

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn reason(w: &Warden, r: &str) -> f64 {
    w.metric(&format!("warden_provenance_total{{reason=\"{r}\"}}"))
}

fn refusals(w: &Warden, r: &str) -> f64 {
    w.metric(&format!("warden_http_refusals_total{{reason=\"{r}\"}}"))
}

/// A loopback listener that counts the connections made to it: `jku`/`x5u` point here.
struct Trap {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Trap {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind trap");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&hits), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, hits, stop }
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// r || s of a P-256 signature, base64url.
fn es_sig(r: &[u8; 32], s: &[u8; 32]) -> String {
    let mut b = r.to_vec();
    b.extend_from_slice(s);
    URL_SAFE_NO_PAD.encode(b)
}

/// The order n of the P-256 group.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

#[test]
fn jwt_attacks_are_refused_with_their_reason_nothing_is_fetched_and_warden_keeps_serving() {
    let up = Upstream::start(kid::ACTIVE);
    let trap = Trap::start();
    // Tokens up to 256 KiB are parsed (so that 10,000-deep JSON reaches the parser) and
    // headers up to 512 KiB read; a 1 MiB token is over both.
    let mut w = Warden::start_to(
        up.addr,
        "max_bytes = 262144",
        "[limits]\nmax_header_bytes = \"512KiB\"\n",
    );
    let t = now();
    let legit = token(SampleKey::RsA, kid::ACTIVE, "alice", t);
    w.record(&legit);

    let claims = format!(
        r#"{{"sub":"mallory","jti":"atk-{t}","iat":{t},"exp":{}}}"#,
        t + 600
    );
    let payload = b64(&claims);
    let sign = |key: SampleKey, header: &str| mint_raw(key, header, &claims).expect("mint");
    let mut cases: Vec<(String, String, &str)> = Vec::new();

    // alg none, every spelling, with and without a signature segment.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, kid::ACTIVE);
        let h = b64(&header);
        cases.push((
            format!("alg {alg}, empty signature"),
            format!("{h}.{payload}."),
            "malformed",
        ));
        cases.push((
            format!("alg {alg}, two segments"),
            format!("{h}.{payload}"),
            "malformed",
        ));
        cases.push((
            format!("alg {alg}, signed"),
            sign(SampleKey::RsA, &header),
            "malformed",
        ));
    }
    // HS/RS (and HS/ES) confusion: the public key PEM as the HMAC secret.
    for (k, pem) in [(kid::ACTIVE, RS256_A_PUB), (kid::ES, ES256_PUB)] {
        let h = b64(&format!(r#"{{"alg":"HS256","kid":"{k}"}}"#));
        cases.push((
            format!("HS256 signed with {k}'s public key"),
            mint_raw_with_secret(&h, &payload, pem.as_bytes()),
            "alg_mismatch",
        ));
    }
    // kid path traversal and SQL text: only exact registry ids are known; nothing is read.
    let hs_secret = fixtures::hs256_secret();
    for k in [
        "../../../../../../dev/null",
        "/dev/null",
        "keys/hs.secret",
        "..%2f..%2fkeys%2fhs.secret",
        "' OR '1'='1",
        "k-hs' --",
        "x'; DROP TABLE keys; --",
        "k-hs\u{0000}",
    ] {
        let h = b64(&serde_json::json!({"alg": "HS256", "kid": k}).to_string());
        // Signed with an empty secret (what /dev/null holds) and with the real one.
        cases.push((
            format!("kid {k:?}, empty secret"),
            mint_raw_with_secret(&h, &payload, b""),
            "unknown_kid",
        ));
        cases.push((
            format!("kid {k:?}, real secret"),
            mint_raw_with_secret(&h, &payload, &hs_secret),
            "unknown_kid",
        ));
    }
    // Key-carrying headers: refused, and nothing fetched from where they point.
    let url = format!("http://{}/jwks.json", trap.addr);
    let jwk: serde_json::Value =
        serde_json::from_str(&jwks_rs256("attacker")).expect("jwks fixture");
    let jwk = &jwk["keys"][0];
    for (name, header) in [
        (
            "jku",
            json!({"alg": "RS256", "kid": kid::ACTIVE, "jku": url}),
        ),
        (
            "x5u",
            json!({"alg": "RS256", "kid": kid::ACTIVE, "x5u": url}),
        ),
        (
            "jwk",
            json!({"alg": "RS256", "kid": kid::ACTIVE, "jwk": jwk}),
        ),
        ("jwk without kid", json!({"alg": "RS256", "jwk": jwk})),
        (
            "x5c",
            json!({"alg": "RS256", "kid": kid::ACTIVE, "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}),
        ),
    ] {
        cases.push((
            format!("{name} header"),
            sign(SampleKey::RsB, &header.to_string()),
            "malformed",
        ));
    }
    // ES256 with r or s equal to 0 or to the curve order (CVE-2022-21449).
    let es = mint(
        SampleKey::Es,
        kid::ES,
        &json!({"sub": "mallory", "jti": format!("es-{t}"), "iat": t, "exp": t + 600}),
    )
    .expect("mint");
    let (es_input, es_good) = es.rsplit_once('.').expect("dots");
    let good = URL_SAFE_NO_PAD.decode(es_good).expect("sig");
    let (r, s): ([u8; 32], [u8; 32]) = (
        good[..32].try_into().expect("r"),
        good[32..].try_into().expect("s"),
    );
    let zero = [0u8; 32];
    for (name, sig) in [
        ("r = s = 0", es_sig(&zero, &zero)),
        ("r = 0", es_sig(&zero, &s)),
        ("s = 0", es_sig(&r, &zero)),
        ("r = s = n", es_sig(&P256_N, &P256_N)),
        ("r = n", es_sig(&P256_N, &s)),
        ("s = n", es_sig(&r, &P256_N)),
    ] {
        cases.push((
            format!("ES256 {name}"),
            format!("{es_input}.{sig}"),
            "bad_signature",
        ));
    }
    // Bad base64 and padding, extra and missing segments.
    let (l_input, l_sig) = legit.rsplit_once('.').expect("dots");
    let (l_head, l_payload) = l_input.split_once('.').expect("dot");
    for (name, tok) in [
        ("padded signature", format!("{l_input}.{l_sig}==")),
        ("padded header", format!("{l_head}=.{l_payload}.{l_sig}")),
        (
            "standard-alphabet +",
            format!("{l_head}.{l_payload}+.{l_sig}"),
        ),
        ("standard-alphabet /", format!("{l_input}.{l_sig}/")),
        (
            "impossible length",
            format!("{l_head}.{l_payload}A.{l_sig}"),
        ),
        ("four segments", format!("{legit}.{l_sig}")),
        (
            "five segments (JWE shape)",
            format!("{l_head}.{l_payload}.{l_sig}.{l_sig}.{l_sig}"),
        ),
        ("one segment", l_head.to_owned()),
        ("empty header", format!(".{l_payload}.{l_sig}")),
        ("empty payload", format!("{l_head}..{l_sig}")),
        ("empty signature", format!("{l_input}.")),
    ] {
        cases.push((name.to_owned(), tok, "malformed"));
    }
    // JSON nested 10,000 deep, in the payload and in the header.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    cases.push((
        "payload nested 10,000 deep".into(),
        format!(
            "{}.{}.{l_sig}",
            b64(&format!(r#"{{"alg":"RS256","kid":"{}"}}"#, kid::ACTIVE)),
            b64(&deep)
        ),
        "malformed",
    ));
    cases.push((
        "header nested 10,000 deep".into(),
        format!(
            "{}.{l_payload}.{l_sig}",
            b64(&format!(
                r#"{{"alg":"RS256","kid":"{}","x":{deep}}}"#,
                kid::ACTIVE
            ))
        ),
        "malformed",
    ));
    // A validly signed token over token.max_bytes (but within the header limit).
    let huge = mint(
        SampleKey::RsA,
        kid::ACTIVE,
        &json!({"sub": "mallory", "exp": t + 600, "pad": "A".repeat(300_000)}),
    )
    .expect("mint");
    cases.push(("300 KB token".into(), huge, "malformed"));

    assert!(cases.len() >= 55, "{} cases", cases.len());
    for (name, tok, want) in &cases {
        let before = reason(&w, want);
        let r = w.get("/account/addresses", tok);
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "invalid_token"}), "{name}");
        assert_eq!(
            reason(&w, want),
            before + 1.0,
            "{name}: reason {want} not counted"
        );
    }

    // A 1 MiB token: cut off while its header is read, counted, never parsed.
    let before = refusals(&w, "header_too_large");
    let mut c = Conn::open(w.proxy, Duration::from_secs(10)).expect("connect");
    let big = format!(
        "GET /account/addresses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}.{}.{}\r\n\r\n",
        l_head,
        "A".repeat(1 << 20),
        l_sig
    );
    let _ = c.send(big.as_bytes()); // warden may close before it is all sent
    if let Ok(Some(r)) = c.response() {
        assert!(
            r.status == 431 || r.status == 400,
            "1 MiB token: {}",
            r.status
        );
    }
    assert!(
        wait_for(Duration::from_secs(10), || {
            (refusals(&w, "header_too_large") == before + 1.0).then_some(())
        })
        .is_some(),
        "the 1 MiB token was not counted as header_too_large"
    );

    // Nothing was fetched from the URLs the tokens named.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        trap.hits.load(Ordering::Relaxed),
        0,
        "warden connected to a jku/x5u URL"
    );
    // Still serving, nothing crashed.
    assert_eq!(w.get("/account/addresses", &legit).status, 200);
    assert!(w.alive(), "warden died; log:\n{}", w.log());
    assert!(!w.log().contains("panicked"), "{}", w.log());
}

/// Reads until the peer closes or resets; the status line of what it sent first, if any.
fn read_until_closed(s: &mut TcpStream) -> (Option<u16>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => return (None, false), // timed out: still open
        }
    }
    let status = std::str::from_utf8(&buf)
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|c| c.parse().ok());
    (status, true)
}

/// Writes `first`, then `drip` one piece every 200 ms until the peer stops taking it or
/// `limit` passes, in a thread.
fn dribble(s: &TcpStream, first: &[u8], drip: &'static [u8], limit: Duration) {
    let mut w = s.try_clone().expect("clone");
    w.write_all(first).expect("first bytes");
    std::thread::spawn(move || {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
            if w.write_all(drip).is_err() {
                return;
            }
        }
    });
}

#[test]
fn slow_clients_time_out_header_limits_hold_and_smuggling_is_never_forwarded() {
    let rec = Recorder::start();
    let w = Warden::start_to(
        rec.addr,
        "",
        "[limits]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\nmax_header_bytes = \"8KiB\"\nmax_headers = 20\n",
    );

    // Slow headers: one header line every 200 ms. pingora alone would wait forever (each
    // read resets its timer); warden closes the connection at 1 s with a 408.
    let mut s = TcpStream::connect(w.proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(12)))
        .expect("timeout");
    let started = Instant::now();
    dribble(
        &s,
        b"GET /open/slow HTTP/1.1\r\nHost: x\r\n",
        b"X-Slow: y\r\n",
        Duration::from_secs(12),
    );
    let (status, closed) = read_until_closed(&mut s);
    let took = started.elapsed();
    assert!(closed, "slow header still open after {took:?}");
    assert!(
        // Wide enough for a loaded 2-core machine; without the deadline the connection
        // stays open as long as the dribbling goes on (12 s).
        (Duration::from_millis(900)..Duration::from_secs(8)).contains(&took),
        "{took:?}"
    );
    assert!(matches!(status, None | Some(408)), "{status:?}");
    assert_eq!(refusals(&w, "header_timeout"), 1.0);

    // An idle kept-alive connection is not a slow header: it may wait between requests.
    let mut c = Conn::open(w.proxy, Duration::from_secs(5)).expect("connect");
    c.send(b"GET /open/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert_eq!(c.response().expect("read").map(|r| r.status), Some(200));
    std::thread::sleep(Duration::from_millis(1500));
    c.send(b"GET /open/b HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert_eq!(c.response().expect("read").map(|r| r.status), Some(200));

    // Slow body: 10 of 100 bytes, then one byte every 200 ms: 408 at about 1 s.
    let mut s = TcpStream::connect(w.proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(12)))
        .expect("timeout");
    let started = Instant::now();
    dribble(
        &s,
        b"POST /open/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        b"x",
        Duration::from_secs(12),
    );
    let (status, closed) = read_until_closed(&mut s);
    let took = started.elapsed();
    assert!(closed, "slow body still open after {took:?}");
    assert_eq!(status, Some(408), "after {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(refusals(&w, "body_timeout"), 1.0);

    // Header count and size.
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw(
        w.proxy,
        format!("GET /open/many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many}\r\n").as_bytes(),
    )
    .expect("response");
    assert_eq!(r.status, 431);
    assert_eq!(refusals(&w, "too_many_headers"), 1.0);
    let mut c = Conn::open(w.proxy, Duration::from_secs(5)).expect("connect");
    let _ = c.send(
        format!(
            "GET /open/big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(9000)
        )
        .as_bytes(),
    );
    if let Ok(Some(r)) = c.response() {
        assert_eq!(r.status, 431);
    }
    assert!(wait_for(Duration::from_secs(2), || (refusals(
        &w,
        "header_too_large"
    ) == 1.0)
        .then_some(()))
    .is_some());

    // Request smuggling: every ambiguous framing is refused with 400 and closes the
    // connection; the request hidden behind it never reaches the upstream.
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        ("CL.TE", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}")),
        ("TE.CL", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len())),
        ("two different Content-Length", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len())),
        ("two equal Content-Length", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n{hidden}")),
        ("Content-Length list", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n{hidden}")),
        ("Content-Length +0", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n{hidden}")),
        ("Transfer-Encoding xchunked", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n{hidden}")),
        ("Transfer-Encoding chunked, identity", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{hidden}")),
        ("Transfer-Encoding identity, chunked", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{hidden}")),
        ("two Transfer-Encoding", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{hidden}")),
        ("space before colon", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n{hidden}")),
        ("obs-fold", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{hidden}")),
        ("obs-fold of Transfer-Encoding", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{hidden}")),
        ("Transfer-Encoding in HTTP/1.0", format!("POST /open/s HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}")),
        ("vertical tab", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{hidden}")),
        ("NUL in a header", format!("POST /open/s HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n{hidden}")),
        ("two Host", format!("GET /open/s HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n{hidden}")),
    ];
    let framing_before = refusals(&w, "ambiguous_framing");
    for (name, bytes) in &cases {
        let mut c = Conn::open(w.proxy, Duration::from_secs(5)).expect("connect");
        c.send(bytes.as_bytes()).expect("send");
        let first = c.response().expect("read");
        assert_eq!(first.as_ref().map(|r| r.status), Some(400), "{name}");
        // Nothing more on this connection: it is closed after the refusal.
        let second = c.response().expect("read");
        assert!(
            second.is_none(),
            "{name}: a second response came: {second:?}"
        );
    }
    // The two that pingora alone would have forwarded (dropping Content-Length) and the
    // duplicates it would have merged are warden's own refusals.
    assert!(refusals(&w, "ambiguous_framing") >= framing_before + 5.0);

    // Well-framed bodies still pass, and arrive framed one way only.
    let r = raw(
        w.proxy,
        b"POST /open/chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .expect("response");
    assert_eq!(r.status, 200);
    let r = request(w.proxy, "POST", "/open/length", &[], b"hello");
    assert_eq!(r.status, 200);

    let got = rec.received();
    let heads: Vec<&str> = got.iter().map(|r| r.head.as_str()).collect();
    assert!(
        !got.iter()
            .any(|r| r.head.contains("/smuggled") || r.head.contains("/open/s ")),
        "an ambiguous request reached the upstream: {heads:#?}"
    );
    assert!(
        !got.iter().any(|r| r.head.starts_with("UNPARSEABLE")),
        "the upstream received something it could not frame: {heads:#?}"
    );
    for path in ["/open/chunked", "/open/length"] {
        let r = got
            .iter()
            .find(|r| r.head.contains(path))
            .unwrap_or_else(|| panic!("{path} did not arrive: {heads:#?}"));
        assert_eq!(r.body, b"hello", "{path}");
        let framing =
            r.header_values("content-length").len() + r.header_values("transfer-encoding").len();
        assert_eq!(framing, 1, "{path}: {}", r.head);
    }
    let _ = w.upstream();
}

#[test]
fn the_admin_plane_slows_and_bounds_failed_logins_and_no_token_is_ever_logged() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Arc::new(Warden::start(&up, ""));
    let t = now();

    // A wrong token waits before its 401 and is counted.
    let started = Instant::now();
    let r = request(
        w.admin,
        "POST",
        "/reload",
        &[("Authorization", "Bearer guess-1")],
        b"",
    );
    assert_eq!(r.status, 401);
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.metric("warden_admin_auth_failures_total"), 1.0);

    // 100 wrong tokens at once: at most 32 wait, the others get 429 at once; none holds
    // a connection for long; the operators' own calls go through meanwhile.
    let flood: Vec<_> = (0..100)
        .map(|i| {
            let admin = w.admin;
            std::thread::spawn(move || {
                let started = Instant::now();
                let auth = format!("Bearer wrong-{i}");
                let r = request(
                    admin,
                    "POST",
                    "/ledger/revoke",
                    &[("Authorization", &auth)],
                    b"{}",
                );
                (r.status, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let ok = w.admin("GET", "/decisions", "");
    let operator_took = started.elapsed();
    let results: Vec<(u16, Duration)> = flood
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(ok.status, 200);
    let delayed = results.iter().filter(|(s, _)| *s == 401).count();
    // Compared with the delayed failures of the same moment (each waits 250 ms on top of
    // whatever the machine's load adds), the right token did not wait for a slot.
    let fastest_delayed = results
        .iter()
        .filter(|(s, _)| *s == 401)
        .map(|(_, d)| *d)
        .min()
        .unwrap_or(Duration::MAX);
    assert!(
        operator_took < fastest_delayed,
        "the right token took {operator_took:?}, a delayed failure {fastest_delayed:?}"
    );
    let shed = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(delayed + shed, 100, "{results:?}");
    assert!(shed > 0, "no failure was shed: {results:?}");
    assert!(
        results.iter().all(|(_, d)| *d < Duration::from_secs(10)),
        "{results:?}"
    );
    assert_eq!(w.metric("warden_admin_auth_failures_total"), 101.0);
    assert_eq!(w.metric("warden_admin_auth_overflow_total"), shed as f64);

    // Now every kind of request that carries a token, then look for the tokens in
    // warden's stdout (events), stderr (log) and event file.
    let recorded = token(SampleKey::RsA, kid::ACTIVE, "alice", t);
    w.record(&recorded);
    let forged = token(SampleKey::Es, kid::ES, "bob", t - 60);
    let retired = token(SampleKey::RsB, kid::RETIRED, "carol", t);
    let garbage = "garbage-token-d0c7f1e2a3b4c5d6e7f8";
    for tok in [&recorded, &forged, &retired, &garbage.to_owned()] {
        w.get("/account/a", tok);
        request(
            w.proxy,
            "GET",
            "/account/a",
            &[("Cookie", &format!("session={tok}"))],
            b"",
        );
        // An invalid request (space in a field name) that pingora refuses with 400.
        let _ = raw(
            w.proxy,
            format!("GET /account/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nBad Name: x\r\n\r\n").as_bytes(),
        );
        // Two different tokens (refused as ambiguous).
        request(
            w.proxy,
            "GET",
            "/account/a",
            &[
                ("Authorization", &format!("Bearer {tok}")),
                ("Cookie", &format!("session={recorded}x")),
            ],
            b"",
        );
    }
    let login = request(w.proxy, "POST", "/login", &[], br#"{"account":"dave"}"#);
    let issued = login.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(w.get("/account/a", &issued).status, 200);
    w.admin(
        "POST",
        "/ledger/revoke",
        &json!({"token": forged}).to_string(),
    );
    w.admin(
        "POST",
        "/ledger/records",
        &json!({"token": retired}).to_string(),
    );
    request(
        w.admin,
        "GET",
        "/decisions",
        &[("Authorization", "Bearer wrong-admin-token-5e5e5e5e")],
        b"",
    );
    std::thread::sleep(Duration::from_millis(300));

    let stdout = std::fs::read_to_string(w.dir.path().join("events.jsonl")).expect("events");
    let stderr = w.log();
    assert!(
        stdout.contains("key_misuse") && stdout.contains("token_rejected"),
        "{stdout}"
    );
    for secret in [
        ADMIN_TOKEN,
        "wrong-admin-token-5e5e5e5e",
        "guess-1",
        garbage,
        &recorded,
        &forged,
        &retired,
        &issued,
    ] {
        // The whole value, and its last 20 characters (part of a signature).
        let tail = &secret[secret.len().saturating_sub(20)..];
        for (where_, text) in [("stdout/events", &stdout), ("stderr/log", &stderr)] {
            assert!(
                !text.contains(secret) && !text.contains(tail),
                "a token value appears in warden's {where_}: {tail}\n{text}"
            );
        }
    }
}

#[test]
fn kill_9_during_heavy_concurrent_ingest_loses_no_acknowledged_record() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start(&up, "");
    let t = now();
    const BATCH: usize = 1000;
    const BATCHES: usize = 100; // 100,000 records
    let admin = w.admin;
    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (next, acked) = (Arc::clone(&next), Arc::clone(&acked));
            std::thread::spawn(move || loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= BATCHES {
                    return;
                }
                let records: Vec<_> = (0..BATCH)
                    .map(|i| {
                        json!({"jti": format!("crash-{b}-{i}"), "account": format!("user{i}"),
                               "issued_at": t, "expires_at": t + 3600, "kid": kid::ACTIVE})
                    })
                    .collect();
                let body = json!({ "records": records }).to_string();
                let req = format!(
                    "POST /ledger/records HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                match raw(admin, req.as_bytes()) {
                    Ok(r) if r.status == 200 && r.json()["recorded"] == BATCH => {
                        acked.lock().expect("lock").push(b);
                    }
                    // Killed under it: not acknowledged, no promise.
                    _ => {}
                }
            })
        })
        .collect();
    // Kill while batches are still in flight.
    let enough = wait_for(Duration::from_secs(60), || {
        (acked.lock().expect("lock").len() >= 10).then_some(())
    });
    assert!(enough.is_some(), "ingest too slow; log:\n{}", w.log());
    w.kill9_and_restart();
    for c in clients {
        c.join().expect("client");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() < BATCHES,
        "every batch finished before the kill: the test did not kill mid-ingest"
    );
    let entries = w.admin("GET", "/ledger/stats", "").json()["entries"]
        .as_u64()
        .expect("entries");
    assert!(
        entries >= (acked.len() * BATCH) as u64,
        "{entries} records after the restart, {} acknowledged",
        acked.len() * BATCH
    );
    // Group commits are all-or-nothing per request: every acknowledged batch is whole.
    for b in &acked {
        for i in [0, BATCH / 2, BATCH - 1] {
            let r = w.admin("GET", &format!("/ledger/lookup?jti=crash-{b}-{i}"), "");
            assert_eq!(
                r.status,
                200,
                "acknowledged record crash-{b}-{i} lost: {}",
                r.text()
            );
        }
    }
    eprintln!(
        "kill -9 after {} of {BATCHES} batches acknowledged; {entries} records after restart",
        acked.len()
    );
}

#[test]
fn a_truncated_store_stops_start_up_with_a_clear_error_and_the_documented_recovery_works() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start(&up, "");
    let t = now();
    let tokens: Vec<String> = (0..3000)
        .map(|i| token(SampleKey::Hs, kid::HS, &format!("u{i}"), t))
        .collect();
    let batch: Vec<_> = tokens.iter().map(|t| json!({ "token": t })).collect();
    let r = w.admin(
        "POST",
        "/ledger/records",
        &json!({ "records": batch }).to_string(),
    );
    assert_eq!(r.json()["recorded"], 3000, "{}", r.text());
    w.stop();
    let store = w.dir.path().join("ledger.redb");
    let len = std::fs::metadata(&store).expect("store").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .expect("open");
    f.set_len(len / 3).expect("truncate");
    drop(f);

    let out = Command::new(warden_bin())
        .args(["run", "--config"])
        .arg(w.config_path())
        .output()
        .expect("run warden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&store.display().to_string()), "{stderr}");
    assert!(stderr.contains("docs/operations.md"), "{stderr}");

    // Recovery, as docs/operations.md says: move the file aside, re-import what the
    // issuance service still has, start.
    std::fs::rename(&store, w.dir.path().join("ledger.redb.broken")).expect("move aside");
    let issued = w.dir.path().join("issued.jsonl");
    let lines: String = tokens[..10]
        .iter()
        .map(|t| format!("{}\n", json!({ "token": t })))
        .collect();
    std::fs::write(&issued, lines).expect("write issued.jsonl");
    let out = Command::new(warden_bin())
        .args(["ledger", "import", "--config"])
        .arg(w.config_path())
        .arg(&issued)
        .output()
        .expect("import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.kill9_and_restart(); // nothing to kill: starts it
    assert_eq!(w.get("/account/a", &tokens[0]).status, 200);
    assert_eq!(
        w.get("/account/a", &tokens[2999]).status,
        401,
        "not re-imported: refused"
    );
}

#[test]
fn a_flood_of_forwarded_addresses_keeps_rule_state_under_its_cap() {
    // The engine test floods a million addresses (crates/warden-detect); this one checks
    // the path a real flood takes: X-Forwarded-For from a trusted proxy, through the proxy,
    // into the rules, against a small cap. 10,000 addresses, 5x what the cap holds.
    const CAP: f64 = 128.0 * 1024.0;
    let rec = Recorder::start();
    let w = Warden::start_with_rules_to(
        rec.addr,
        "[[rules]]\nname = \"per-ip\"\nkey = [\"ip\"]\nwindow = \"1h\"\nthreshold = 1000000\naction = \"log\"\n",
        "max_state_bytes = \"128KiB\"\n[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let started = Instant::now();
    let flooding = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (admin, flooding) = (w.admin, Arc::clone(&flooding));
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while flooding.load(Ordering::Relaxed) {
                let text = request(admin, "GET", "/metrics", &[], b"").text();
                let b = text
                    .lines()
                    .find_map(|l| l.strip_prefix("warden_state_bytes "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0.0);
                peak = peak.max(b);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let senders: Vec<_> = (0..4u32)
        .map(|t| {
            let proxy = w.proxy;
            std::thread::spawn(move || {
                let mut c = Conn::open(proxy, Duration::from_secs(60)).expect("connect");
                for i in 0..2500u32 {
                    let n = t * 2500 + i;
                    let req = format!(
                        "GET /open/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.{}.{}.{}\r\n\r\n",
                        n >> 16,
                        (n >> 8) & 255,
                        n & 255
                    );
                    c.send(req.as_bytes()).expect("send");
                    let r = c.response().expect("read").expect("response");
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    flooding.store(false, Ordering::Relaxed);
    let took = started.elapsed();
    let peak = monitor.join().expect("monitor");
    // The cap is enforced by the engine's sweep (every 100 ms): between two sweeps a flood
    // may overshoot by what arrives meanwhile. After a sweep, the state is under the cap.
    let settled = wait_for(Duration::from_secs(5), || {
        let b = w.metric("warden_state_bytes");
        (b > 0.0 && b <= CAP).then_some(b)
    });
    let keys = w.metric("warden_tracked_keys");
    let evicted = w.metric("warden_state_evictions_total");
    eprintln!(
        "10,000 addresses in {took:?}: peak {peak} bytes while flooding, then {settled:?} bytes, {keys} keys tracked, {evicted} evicted (cap {CAP})"
    );
    assert!(
        settled.is_some(),
        "rule state stayed over the {CAP} byte cap"
    );
    assert!(
        peak <= 2.0 * CAP,
        "rule state reached {peak} bytes, cap {CAP}"
    );
    assert!(keys < 10_000.0, "{keys} keys tracked: nothing was evicted");
    assert!(evicted > 0.0);
    assert_eq!(
        w.metric("warden_rule_hits_total{mode=\"enforce\",rule=\"per-ip\"}"),
        0.0
    );
}
