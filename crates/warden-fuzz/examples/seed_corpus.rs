//! Writes the seed corpus of every target under `fuzz/corpus/`:
//! `cargo run -p warden-fuzz --example seed_corpus`. The corpus is committed; run this
//! again only to regenerate it (the tokens are signed with the sample keys, valid at
//! `warden_fuzz::NOW`).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;
use warden_core::fixtures::{mint, mint_raw, mint_raw_with_secret, SampleKey, RS256_A_PUB};
use warden_fuzz::{KIDS, NOW};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(name), bytes).expect("write");
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = root.join("fuzz/corpus");
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);

    // snapshot: bodies (the target frames them) of engines with the target's rules.
    {
        use warden_detect::{Facts, Nothing};
        let dir = corpus.join("snapshot");
        let now = warden_fuzz::NOW_MS;
        let body =
            |e: &warden_detect::Engine| e.snapshot(now)[warden_detect::snapshot::HEADER..].to_vec();
        let eval = |e: &warden_detect::Engine, ip: &str, account: &str, at: u64| {
            let _ = e.evaluate(&Facts {
                now_ms: at,
                class: warden_rules::RouteClass::Protected,
                route: None,
                method: "GET",
                path: "/account/x",
                ip: ip.parse().expect("ip"),
                account: Some(account),
                token: None,
                headers: &Nothing,
                claims: &Nothing,
            });
        };
        let e = warden_fuzz::snapshot_engine();
        write(&dir, "empty", &body(&e));
        // Every slot kind: counters, inline, small and large distinct sets.
        for i in 0..3 {
            eval(&e, "192.0.2.1", &format!("a{i}"), now - 1000 + i);
        }
        for i in 0..70 {
            eval(&e, "192.0.2.2", &format!("b{i}"), now - 900 + i);
        }
        for i in 0..10 {
            eval(&e, &format!("198.51.100.{i}"), "roamer", now - 500 + i);
        }
        write(&dir, "busy", &body(&e));
        let e = warden_fuzz::snapshot_engine();
        for i in 0..7 {
            eval(&e, "203.0.113.9", &format!("c{i}"), now - 100 + i);
        }
        e.ban_manual(
            &warden_rules::Field::Account,
            "mallory",
            now - 10,
            now + 3_600_000,
        )
        .expect("manual ban");
        write(&dir, "bans", &body(&e));
    }

    // token
    let dir = corpus.join("token");
    let claims = |jti: &str| json!({"sub": "alice", "jti": jti, "iat": NOW - 10, "exp": NOW + 600});
    for (kid, key) in KIDS {
        let t = mint(key, kid, &claims(kid)).expect("mint");
        write(&dir, &format!("valid-{kid}"), t.as_bytes());
    }
    let t = mint(
        SampleKey::RsA,
        "rs",
        &json!({"sub": "a", "exp": NOW + 60, "aud": ["x", "y"], "nbf": NOW - 5, "n": 1.5}),
    )
    .expect("mint");
    write(&dir, "valid-no-jti", t.as_bytes());
    let t = mint(
        SampleKey::RsB,
        "old",
        &json!({"sub": "a", "iat": NOW - 200, "exp": NOW + 60}),
    )
    .expect("mint");
    write(&dir, "retired-before", t.as_bytes());
    let payload = b64(&format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60));
    write(
        &dir,
        "alg-none",
        format!("{}.{payload}.", b64(r#"{"alg":"none","kid":"rs"}"#)).as_bytes(),
    );
    let hs = mint_raw_with_secret(
        &b64(r#"{"alg":"HS256","kid":"rs"}"#),
        &payload,
        RS256_A_PUB.as_bytes(),
    );
    write(&dir, "hs-rs-confusion", hs.as_bytes());
    for (name, header) in [
        (
            "jku",
            r#"{"alg":"RS256","kid":"rs","jku":"http://127.0.0.1:1/k"}"#,
        ),
        (
            "jwk",
            r#"{"alg":"RS256","kid":"rs","jwk":{"kty":"oct","k":"AAAA"}}"#,
        ),
        (
            "kid-traversal",
            r#"{"alg":"HS256","kid":"../../../../dev/null"}"#,
        ),
        ("kid-sql", r#"{"alg":"HS256","kid":"x' UNION SELECT 'key"}"#),
        ("crit", r#"{"alg":"RS256","kid":"rs","crit":["exp"]}"#),
    ] {
        let t = mint_raw(
            SampleKey::RsA,
            header,
            &format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60),
        )
        .expect("mint");
        write(&dir, name, t.as_bytes());
    }
    let es = mint(SampleKey::Es, "es", &claims("z")).expect("mint");
    let input = es.rsplit_once('.').map(|(i, _)| i).expect("dots");
    write(
        &dir,
        "es256-zero-sig",
        format!("{input}.{}", URL_SAFE_NO_PAD.encode([0u8; 64])).as_bytes(),
    );
    write(
        &dir,
        "deep-json",
        format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","kid":"rs"}"#),
            b64(&"[".repeat(200))
        )
        .as_bytes(),
    );
    write(
        &dir,
        "padded",
        format!("{}=.{payload}.c2ln", b64(r#"{"alg":"RS256"}"#)).as_bytes(),
    );
    write(&dir, "four-segments", b"a.b.c.d");

    // config
    let dir = corpus.join("config");
    let reference = std::fs::read(root.join("deploy/warden.toml")).expect("reference config");
    write(&dir, "reference.toml", &reference);
    write(&dir, "minimal.toml", b"[upstream]\npeers = [\"127.0.0.1:8081\"]\n[[routes]]\nname = \"account\"\nclass = \"protected\"\npaths = [\"/account/*\"]\n");
    write(&dir, "limits.toml", b"[upstream]\npeers = [\"127.0.0.1:8081\"]\n[limits]\nheader_timeout = \"10s\"\nbody_timeout = \"30s\"\nmax_header_bytes = \"32KiB\"\nmax_headers = 100\n[token]\nmax_bytes = 8192\n[ledger]\ntimeout = \"50ms\"\nissuance_wait = \"250ms\"\n");
    write(&dir, "keys.toml", b"[upstream]\npeers = [\"127.0.0.1:1\"]\n[[keys]]\nkid = \"k\"\nalg = \"RS256\"\npem = \"-----BEGIN PUBLIC KEY-----\\nMIIB\\n-----END PUBLIC KEY-----\"\nstatus = \"retired\"\nretired_at = \"2026-01-01T00:00:00Z\"\n[[routes]]\nname = \"login\"\nclass = \"issuance\"\npaths = [\"/login\"]\nmethods = [\"POST\"]\ntoken_json_field = \"data.access_token\"\n");

    // rules
    let dir = corpus.join("rules");
    let pack = std::fs::read(root.join("deploy/rules/default.toml")).expect("default rule pack");
    write(&dir, "default.toml", &pack);
    write(&dir, "distinct.toml", b"[[rules]]\nname = \"accounts-per-ip\"\nkey = [\"ip\"]\nip_prefix_v4 = 24\nmeasure = \"distinct\"\ndistinct = \"account\"\nwindow = \"10m\"\nthreshold = 20\naction = \"ban\"\nban_for = \"1h\"\n");
    write(&dir, "when.toml", b"[[rules]]\nname = \"ua\"\nclasses = [\"protected\"]\nmethods = [\"GET\"]\npaths = [\"/account/*\"]\nwhen = [{ field = \"header:user-agent\", prefix = \"curl\" }, { field = \"claim:tenant\", present = true }]\nkey = [\"token\"]\nwindow = \"1m\"\nthreshold = 100\naction = \"rate_limit\"\nmode = \"shadow\"\npriority = 5\n");

    // ingest_line
    let dir = corpus.join("ingest_line");
    let t = mint(SampleKey::RsA, "rs", &claims("ingest-1")).expect("mint");
    write(
        &dir,
        "token.json",
        json!({"token": t}).to_string().as_bytes(),
    );
    write(&dir, "facts.json", json!({"jti": "j1", "account": "alice", "issued_at": NOW, "expires_at": NOW + 600, "kid": "rs"}).to_string().as_bytes());
    write(&dir, "token-id.json", json!({"token_id": "0123456789abcdef0123456789abcdef", "account": "bob", "issued_at": NOW, "expires_at": NOW + 60, "kid": "hs"}).to_string().as_bytes());
    write(&dir, "bad.json", br#"{"jti":"x","account":"a","issued_at":5,"expires_at":4,"kid":"k","extra":[1,{"a":null}]}"#);
    eprintln!("corpus written under {}", corpus.display());
}
