//! Token provenance through a real warden in front of a real upstream, on loopback.

use std::time::Duration;

use serde_json::json;
use warden_core::fixtures::{mint, mint_raw, SampleKey};
use warden_e2e::{kid, now, request, token, wait_for, Upstream, Warden, ADMIN_TOKEN};

fn reason(w: &Warden, r: &str) -> f64 {
    w.metric(&format!("warden_provenance_total{{reason=\"{r}\"}}"))
}

#[test]
fn legit_tokens_pass_and_every_kind_of_bad_token_is_refused_with_its_reason() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    let t = now();

    // Issued tokens, one per algorithm, pass once recorded.
    for (key, k) in [
        (SampleKey::RsA, kid::ACTIVE),
        (SampleKey::Es, kid::ES),
        (SampleKey::Ed, kid::ED),
        (SampleKey::Hs, kid::HS),
    ] {
        let tok = token(key, k, "alice", t);
        w.record(&tok);
        let r = w.get("/account/addresses", &tok);
        assert_eq!(r.status, 200, "{k}: {}", r.text());
        assert_eq!(r.json()["account"], "alice");
        // And again, from the verification cache.
        assert_eq!(w.get("/account/addresses", &tok).status, 200);
    }
    assert_eq!(reason(&w, "ok"), 8.0);

    // A token issued under the retired key before its retirement still passes.
    let old = mint(
        SampleKey::RsB,
        kid::RETIRED,
        &json!({"sub":"old-timer","jti":"old-1","iat": w.retired_at - 60,"exp": t + 600}),
    )
    .expect("mint");
    w.record(&old);
    assert_eq!(w.get("/account/orders", &old).status, 200);

    let b64 =
        |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    let legit = token(SampleKey::RsA, kid::ACTIVE, "alice", t);
    w.record(&legit);
    let mut tampered: Vec<String> = legit.split('.').map(str::to_owned).collect();
    tampered[1] = b64(&format!(
        r#"{{"sub":"mallory","jti":"x","iat":{t},"exp":{}}}"#,
        t + 600
    ));
    let tampered = tampered.join(".");
    let hs_confusion = {
        let input = format!(
            "{}.{}",
            b64(&format!(r#"{{"alg":"HS256","kid":"{}"}}"#, kid::ACTIVE)),
            b64(&format!(r#"{{"sub":"a","exp":{}}}"#, t + 600))
        );
        let sig = jsonwebtoken_sign_hs256(
            input.as_bytes(),
            warden_core::fixtures::RS256_A_PUB.as_bytes(),
        );
        format!("{input}.{sig}")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "forged: real key, never issued",
            token(SampleKey::RsA, kid::ACTIVE, "bob", t),
            "forged",
        ),
        (
            "revoked key",
            token(SampleKey::RsB, kid::REVOKED, "bob", t),
            "revoked_key",
        ),
        (
            "retired key, minted after retirement",
            token(SampleKey::RsB, kid::RETIRED, "bob", t),
            "retired_key",
        ),
        (
            "expired",
            mint(
                SampleKey::RsA,
                kid::ACTIVE,
                &json!({"sub":"bob","jti":"e","iat":t-900,"exp":t-60}),
            )
            .expect("mint"),
            "expired",
        ),
        (
            "not yet valid",
            mint(
                SampleKey::RsA,
                kid::ACTIVE,
                &json!({"sub":"bob","jti":"n","nbf":t+300,"exp":t+900}),
            )
            .expect("mint"),
            "not_yet_valid",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","kid":"k-active"}"#),
                b64(r#"{"sub":"bob"}"#)
            ),
            "malformed",
        ),
        (
            "alg NoNe with signature",
            mint_raw(
                SampleKey::RsA,
                r#"{"alg":"NoNe","kid":"k-active"}"#,
                r#"{"sub":"bob"}"#,
            )
            .expect("mint"),
            "malformed",
        ),
        (
            "HS256 signed with the RSA public key",
            hs_confusion,
            "alg_mismatch",
        ),
        ("tampered payload", tampered, "bad_signature"),
        (
            "unknown kid",
            token(SampleKey::RsA, "k-nobody", "bob", t),
            "unknown_kid",
        ),
        (
            "signed by a stranger's key under a real kid",
            token(SampleKey::RsB, kid::ACTIVE, "bob", t),
            "bad_signature",
        ),
        (
            "jku header",
            mint_raw(
                SampleKey::RsA,
                r#"{"alg":"RS256","kid":"k-active","jku":"http://127.0.0.1:1/jwks"}"#,
                &format!(r#"{{"sub":"b","exp":{}}}"#, t + 60),
            )
            .expect("mint"),
            "malformed",
        ),
        ("garbage", "not-a-token".into(), "malformed"),
    ];
    for (name, tok, want) in &cases {
        let before = reason(&w, want);
        let r = w.get("/account/addresses", tok);
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{name}"
        );
        // The client learns nothing about why.
        assert_eq!(r.json(), json!({"error": "invalid_token"}), "{name}");
        assert_eq!(
            reason(&w, want),
            before + 1.0,
            "{name}: reason {want} not counted"
        );
    }

    // The forged token produced a key_misuse event carrying a hash of the token id, never the token.
    let forged = &cases[0].1;
    let events = wait_for(Duration::from_secs(3), || {
        let e = w.events();
        e.iter()
            .any(|e| e["type"] == "key_misuse" && e["reason"] == "forged")
            .then_some(e)
    })
    .expect("forged-token event");
    let ev = events
        .iter()
        .find(|e| e["reason"] == "forged")
        .expect("event");
    assert_eq!(ev["account"], "bob");
    assert_eq!(ev["route"], "account");
    assert_eq!(ev["client_ip"], "127.0.0.1");
    assert_eq!(ev["token_hash"].as_str().map(str::len), Some(16));
    let all = std::fs::read_to_string(w.dir.path().join("events.jsonl")).expect("events");
    assert!(
        !all.contains(forged.as_str()),
        "an event contains a raw token"
    );
}

fn jsonwebtoken_sign_hs256(input: &[u8], secret: &[u8]) -> String {
    // The attacker's trick: the RSA public key PEM used as an HMAC secret.
    let header_payload = std::str::from_utf8(input).expect("utf8");
    let (h, p) = header_payload.split_once('.').expect("dot");
    let token = warden_core::fixtures::mint_raw_with_secret(h, p, secret);
    token.rsplit('.').next().expect("sig").to_owned()
}

#[test]
fn a_login_observed_inline_makes_its_token_valid_at_once() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    // JSON body.
    let r = request(
        w.proxy,
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        br#"{"account":"dave"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let tok = r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let r = w.get("/account/orders", &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["account"], "dave");
    // Set-Cookie, used as a cookie.
    let r = request(w.proxy, "POST", "/login-cookie?account=erin", &[], b"");
    assert_eq!(r.status, 200);
    let cookie = r
        .header("set-cookie")
        .expect("set-cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let r = request(
        w.proxy,
        "GET",
        "/account/addresses",
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["account"], "erin");
    assert_eq!(
        w.metric("warden_ledger_records_total{source=\"inline\"}"),
        2.0
    );
    // A login that did not pass through warden was never observed: its token is refused.
    let direct = request(up.addr, "POST", "/login", &[], br#"{"account":"frank"}"#);
    let tok = direct.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(w.get("/account/orders", &tok).status, 401);
}

#[test]
fn an_acknowledged_record_survives_kill_9() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start(&up, "");
    let t = now();
    let tokens: Vec<String> = (0..300)
        .map(|i| token(SampleKey::Hs, kid::HS, &format!("user{i}"), t))
        .collect();
    let batch: Vec<_> = tokens.iter().map(|t| json!({"token": t})).collect();
    let r = w.admin(
        "POST",
        "/ledger/records",
        &json!({"records": batch}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["recorded"], 300);
    // And one more, alone, the very last thing before the kill.
    let last = token(SampleKey::RsA, kid::ACTIVE, "last", t);
    w.record(&last);
    w.kill9_and_restart();
    for tok in tokens.iter().step_by(37).chain(std::iter::once(&last)) {
        assert_eq!(
            w.get("/account/addresses", tok).status,
            200,
            "record lost after kill -9"
        );
    }
    let stats = w.admin("GET", "/ledger/stats", "").json();
    assert_eq!(stats["entries"], 301);
}

#[test]
fn a_just_issued_token_waits_briefly_for_its_record() {
    let up = Upstream::start(kid::ACTIVE);
    let w = std::sync::Arc::new(Warden::start(&up, ""));
    let fresh = token(SampleKey::RsA, kid::ACTIVE, "gina", now());
    let (w2, f2) = (std::sync::Arc::clone(&w), fresh.clone());
    let pending = std::thread::spawn(move || w2.get("/account/addresses", &f2).status);
    std::thread::sleep(Duration::from_millis(100));
    w.record(&fresh);
    assert_eq!(pending.join().expect("request thread"), 200);
    assert_eq!(
        w.metric("warden_issuance_wait_total{outcome=\"found\"}"),
        1.0
    );
    // A fresh token whose record never comes is refused after the wait.
    let forged = token(SampleKey::RsA, kid::ACTIVE, "henry", now());
    assert_eq!(w.get("/account/addresses", &forged).status, 401);
    assert_eq!(
        w.metric("warden_issuance_wait_total{outcome=\"timeout\"}"),
        1.0
    );
    // An old unknown token does not wait at all.
    let old = token(SampleKey::RsA, kid::ACTIVE, "ivan", now() - 120);
    assert_eq!(w.get("/account/addresses", &old).status, 401);
    assert_eq!(
        w.metric("warden_issuance_wait_total{outcome=\"timeout\"}"),
        1.0
    );
}

#[test]
fn revocation_by_token_account_and_key_id() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    let t = now() - 30;
    let a1 = token(SampleKey::RsA, kid::ACTIVE, "alice", t);
    let a2 = token(SampleKey::Es, kid::ES, "alice", t);
    let b1 = token(SampleKey::RsA, kid::ACTIVE, "bob", t);
    let c1 = token(SampleKey::Ed, kid::ED, "carol", t);
    for tok in [&a1, &a2, &b1, &c1] {
        w.record(tok);
        assert_eq!(w.get("/account/x", tok).status, 200);
    }
    let r = w.admin("POST", "/ledger/revoke", &json!({"token": b1}).to_string());
    assert_eq!(r.json()["revoked"], 1, "{}", r.text());
    assert_eq!(r.json()["scope"], "token", "{}", r.text());
    let id = r.json()["token_id"].as_str().unwrap_or_default().to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        r.text()
    );
    assert_eq!(w.get("/account/x", &b1).status, 401);
    // An account revocation marks no record, and says what it covers instead.
    let before = now();
    let r = w.admin("POST", "/ledger/revoke", r#"{"account":"alice"}"#);
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["scope"], "account", "{}", r.text());
    assert_eq!(body["account"], "alice", "{}", r.text());
    assert_eq!(body["revoked"], 0, "{}", r.text());
    let up_to = body["issued_up_to"].as_u64().unwrap_or(0);
    assert!((before..=now()).contains(&up_to), "{}", r.text());
    assert_eq!(w.get("/account/x", &a1).status, 401);
    assert_eq!(w.get("/account/x", &a2).status, 401);
    let r = w.admin(
        "POST",
        "/ledger/revoke",
        &format!(r#"{{"kid":"{}"}}"#, kid::ED),
    );
    assert_eq!(r.json()["scope"], "kid", "{}", r.text());
    assert_eq!(r.json()["kid"], kid::ED, "{}", r.text());
    assert_eq!(w.get("/account/x", &c1).status, 401);
    assert_eq!(reason(&w, "revoked_token"), 3.0);
    assert_eq!(reason(&w, "revoked_key"), 1.0);
    // A token alice gets after the revocation works.
    let fresh = token(SampleKey::RsA, kid::ACTIVE, "alice", now() + 1);
    w.record(&fresh);
    assert_eq!(w.get("/account/x", &fresh).status, 200);
    // The record shows as revoked.
    let r = w.admin("GET", &format!("/ledger/lookup?jti={}", jti_of(&b1)), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], true);
    assert_eq!(r.json()["account"], "bob");
}

/// A stolen token revoked by the operator before its record reached warden (a batch
/// import, a capture still on its way) is refused once the record arrives, after a
/// restart too; the revocations waiting are counted, capped and refused clearly when full.
#[test]
fn a_token_revoked_before_its_record_is_refused_when_the_record_arrives() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start_with_rules_and_ledger_to(
        up.addr,
        "",
        "max_pending_revocations = 2\npending_revocation_ttl = \"1h\"",
        "",
    );
    let revoke = |body: serde_json::Value| w.admin("POST", "/ledger/revoke", &body.to_string());
    let t = now() - 30;
    let stolen = token(SampleKey::RsA, kid::ACTIVE, "dave", t);
    let other = token(SampleKey::Es, kid::ES, "erin", t);
    let r = revoke(json!({"token": stolen}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], 0, "{}", r.text());
    assert_eq!(r.json()["waiting_for_record"], true, "{}", r.text());
    let r = revoke(json!({"jti": jti_of(&other)}));
    assert_eq!(r.json()["waiting_for_record"], true, "{}", r.text());
    let stats = w.admin("GET", "/ledger/stats", "").json();
    assert_eq!(stats["pending_revocations"], 2, "{stats}");
    let gauge = wait_for(Duration::from_secs(3), || {
        (w.metric("warden_ledger_pending_revocations") == 2.0).then_some(())
    });
    assert!(gauge.is_some(), "gauge never showed 2 waiting revocations");
    // Full: a third is refused, with the setting named; one already waiting is taken.
    let third = token(SampleKey::RsA, kid::ACTIVE, "frank", t);
    let r = revoke(json!({"token": third}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("ledger.max_pending_revocations = 2"),
        "{}",
        r.text()
    );
    let r = revoke(json!({"token": stolen}));
    assert_eq!(r.status, 200, "{}", r.text());

    w.restart();
    // The record arrives (the issuer's batch): the token is refused as revoked.
    w.record(&stolen);
    assert_eq!(w.get("/account/x", &stolen).status, 401);
    assert_eq!(reason(&w, "revoked_token"), 1.0);
    let r = w.admin(
        "GET",
        &format!("/ledger/lookup?jti={}", jti_of(&stolen)),
        "",
    );
    assert_eq!(r.json()["revoked"], true, "{}", r.text());
    // The refused one was not kept: its token passes once recorded.
    w.record(&third);
    assert_eq!(w.get("/account/x", &third).status, 200);
    w.record(&other);
    assert_eq!(w.get("/account/x", &other).status, 401);
    assert_eq!(
        w.admin("GET", "/ledger/stats", "").json()["pending_revocations"],
        0
    );
}

fn jti_of(tok: &str) -> String {
    let p = tok.split('.').nth(1).expect("payload");
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).expect("b64");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    v["jti"].as_str().expect("jti").to_owned()
}

#[test]
fn the_key_registry_reloads_without_a_restart() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    w.record(&tok);
    assert_eq!(w.get("/account/a", &tok).status, 200);

    // A broken file is refused; the old registry stays.
    std::fs::write(w.config_path(), "[upstream\n").expect("write");
    w.sighup();
    let refused = wait_for(Duration::from_secs(2), || {
        (w.metric("warden_reloads_total{outcome=\"error\"}") == 1.0).then_some(())
    });
    assert!(refused.is_some(), "bad reload not counted");
    assert_eq!(w.get("/account/a", &tok).status, 200);

    // The login key is revoked: within a second, its tokens are refused.
    let keys = r#"
[[keys]]
kid = "k-active"
alg = "RS256"
pem_file = "keys/a.pub"
status = "revoked"
"#;
    w.write_config(up.addr, keys);
    w.sighup();
    let applied = wait_for(Duration::from_secs(1), || {
        (w.get("/account/a", &tok).status == 401).then_some(())
    });
    assert!(applied.is_some(), "revocation did not apply within 1 s");
    assert_eq!(
        w.admin("GET", "/config/generation", "").json()["generation"],
        2
    );
    // The same through the admin API.
    w.write_config(up.addr, "");
    let r = w.admin("POST", "/reload", "");
    assert_eq!(r.json()["generation"], 3, "{}", r.text());
    assert_eq!(w.get("/account/a", &tok).status, 200);
}

#[test]
fn a_forged_token_in_a_flood_writes_one_event_per_address_and_minute() {
    // Every refusal is counted; the event is written once per client address, token and
    // reason per events.repeat_interval (60 s by default), the repeats counted apart.
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    let forged = token(SampleKey::RsA, kid::ACTIVE, "mallory", now());
    let forged_count = |w: &Warden| w.metric("warden_provenance_total{reason=\"forged\"}");
    let before = forged_count(&w);
    for _ in 0..20 {
        assert_eq!(w.get_from("127.0.0.7", "/account/a", &forged).status, 401);
    }
    for _ in 0..5 {
        assert_eq!(w.get_from("127.0.0.8", "/account/a", &forged).status, 401);
    }
    assert_eq!(forged_count(&w), before + 25.0);
    assert_eq!(w.metric("warden_events_suppressed_total"), 23.0);
    let _written = wait_for(Duration::from_secs(3), || {
        let e: Vec<_> = w
            .events()
            .into_iter()
            .filter(|e| e["type"] == "key_misuse")
            .collect();
        (e.len() >= 2).then_some(e)
    })
    .expect("two key_misuse events");
    std::thread::sleep(Duration::from_millis(300));
    let events: Vec<_> = w
        .events()
        .into_iter()
        .filter(|e| e["type"] == "key_misuse")
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    let mut ips: Vec<_> = events.iter().map(|e| e["client_ip"].clone()).collect();
    ips.sort_by_key(ToString::to_string);
    assert_eq!(ips, [json!("127.0.0.7"), json!("127.0.0.8")]);
}

#[test]
fn a_replaced_key_file_reloads_without_a_signal() {
    // The key behind kid k-active is replaced on disk (the old one leaked): from then on
    // tokens signed with the old key are refused and tokens signed with the new one are
    // accepted, with no SIGHUP, no admin call and no change to warden.toml.
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    let old = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    let new = token(SampleKey::RsB, kid::ACTIVE, "alice", now());
    w.record(&old);
    assert_eq!(w.get("/account/a", &old).status, 200);
    // Signed by a key warden does not know yet: not even recordable.
    let refused = w.admin(
        "POST",
        "/ledger/records",
        &json!({ "token": new }).to_string(),
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    let config_before = std::fs::read(w.config_path()).expect("read config");
    let key_file = w.config_path().with_file_name("keys").join("a.pub");
    // Written aside and renamed over, as a deploy tool would: the watch compares
    // modification times, which a same-second rewrite in place could leave equal.
    let aside = key_file.with_extension("new");
    std::fs::write(&aside, warden_core::fixtures::RS256_B_PUB).expect("write key");
    std::fs::rename(&aside, &key_file).expect("rename key");
    let applied = wait_for(Duration::from_secs(3), || {
        (w.get("/account/a", &old).status == 401).then_some(())
    });
    assert!(
        applied.is_some(),
        "a token signed by the replaced key still passes 3 s later"
    );
    w.record(&new);
    assert_eq!(w.get("/account/a", &new).status, 200);
    assert_eq!(
        std::fs::read(w.config_path()).expect("read config"),
        config_before
    );
    assert_eq!(w.metric("warden_reloads_total{outcome=\"ok\"}"), 1.0);
}

#[test]
fn bad_input_gets_a_clear_refusal_and_warden_keeps_serving() {
    let up = Upstream::start(kid::ACTIVE);
    let mut w = Warden::start(&up, "");
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    w.record(&tok);
    let p = w.proxy;
    // No token; two different tokens; a non-bearer scheme.
    assert_eq!(request(p, "GET", "/account/a", &[], b"").status, 401);
    let other = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    w.record(&other);
    let r = request(
        p,
        "GET",
        "/account/a",
        &[
            ("Authorization", &format!("Bearer {tok}")),
            ("Cookie", &format!("session={other}")),
        ],
        b"",
    );
    assert_eq!(r.status, 401, "two different tokens must be refused");
    // Ambiguous paths are refused, lenient spellings are still protected.
    assert_eq!(
        request(p, "GET", "/account%2faddresses", &[], b"").status,
        400
    );
    for path in [
        "//account/addresses",
        "/x/../account/addresses",
        "/%61ccount/addresses",
        "/account;a=b/addresses",
    ] {
        assert_eq!(
            request(p, "GET", path, &[], b"").status,
            401,
            "{path} bypassed protection"
        );
    }
    // Hostile tokens of every shape.
    let deep = format!(
        "{}.{}.c2ln",
        "eyJhbGciOiJSUzI1NiJ9",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            "[".repeat(10_000)
        )
    );
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "....",
        "eyJ.eyJ.eyJ",
        &"x".repeat(9000),
        &deep,
        "é.é.é",
    ] {
        let r = request(
            p,
            "GET",
            "/account/a",
            &[("Authorization", &format!("Bearer {bad}"))],
            b"",
        );
        assert!(
            matches!(r.status, 400 | 401),
            "{} -> {}",
            &bad[..bad.len().min(20)],
            r.status
        );
    }
    // An oversized header is refused by the HTTP layer, not a crash.
    let huge = format!(
        "GET /account/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    if let Ok(r) = warden_e2e::raw(p, huge.as_bytes()) {
        assert!(r.status >= 400, "oversized header accepted: {}", r.status);
    }
    // Admin: no token, wrong token, bad JSON, bad records.
    let r = request(w.admin, "POST", "/ledger/records", &[], br#"{"token":"x"}"#);
    assert_eq!(r.status, 401);
    let r = request(
        w.admin,
        "POST",
        "/ledger/records",
        &[("Authorization", "Bearer wrong")],
        b"{}",
    );
    assert_eq!(r.status, 401);
    assert_eq!(w.metric("warden_admin_auth_failures_total"), 2.0);
    let r = w.admin("POST", "/ledger/records", "{not json");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("not JSON")));
    let r = w.admin(
        "POST",
        "/ledger/records",
        r#"[{"jti":"x"},{"token":"a.b.c"}]"#,
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["rejected"].as_array().map(Vec::len), Some(2));
    let r = w.admin("POST", "/ledger/revoke", r#"{"colour":"red"}"#);
    assert_eq!(r.status, 400);
    let r = w.admin("GET", "/ledger/records/zz", "");
    assert_eq!(r.status, 400);
    assert!(
        request(
            w.admin,
            "GET",
            "/nope",
            &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            b""
        )
        .status
            == 404
    );
    // Still serving.
    assert!(w.alive(), "warden died; log:\n{}", w.log());
    assert_eq!(w.get("/account/a", &tok).status, 200);
    assert!(!w.log().contains("panicked"), "{}", w.log());
}
