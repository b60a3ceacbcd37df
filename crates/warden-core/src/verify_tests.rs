use serde_json::json;

use super::*;
use crate::fixtures::{mint, mint_raw, SampleKey};
use crate::keys::{KeyRegistry, KeyState};
use crate::ledger::{MemIndex, Query, Revocation};

const NOW: u64 = 1_800_000_000;

fn registry() -> KeyRegistry {
    KeyRegistry::build(vec![
        SampleKey::RsA.spec("rs", KeyState::Active),
        SampleKey::Es.spec("es", KeyState::Active),
        SampleKey::Ed.spec("ed", KeyState::Active),
        SampleKey::Hs.spec("hs", KeyState::Active),
        SampleKey::RsB.spec("old", KeyState::Retired { at: NOW - 100 }),
        SampleKey::RsB.spec("gone", KeyState::Revoked),
    ])
    .expect("registry builds")
}

fn verifier() -> Verifier {
    Verifier::new(registry(), Policy::default())
}

fn claims(jti: &str) -> serde_json::Value {
    json!({"sub": "alice", "jti": jti, "iat": NOW - 10, "exp": NOW + 600})
}

#[test]
fn every_algorithm_verifies() {
    let v = verifier();
    for (key, kid) in [
        (SampleKey::RsA, "rs"),
        (SampleKey::Es, "es"),
        (SampleKey::Ed, "ed"),
        (SampleKey::Hs, "hs"),
    ] {
        let t = mint(key, kid, &claims(kid)).expect("mint");
        let c = v.verify(&t, NOW).unwrap_or_else(|r| panic!("{kid}: {r}"));
        assert_eq!(&*c.verified.account, "alice");
        assert_eq!(c.verified.id, TokenId::from_jti(kid));
        assert!(!c.cached);
    }
}

#[test]
fn cache_skips_signature_but_not_lifecycle_or_time() {
    let v = verifier();
    let t = mint(SampleKey::RsA, "rs", &claims("c1")).expect("mint");
    let c = v.verify(&t, NOW).expect("verifies");
    v.remember(&c);
    let again = v.verify(&t, NOW).expect("verifies");
    assert!(again.cached);
    // Expiry is still checked on a cache hit.
    assert_eq!(v.verify(&t, NOW + 600 + 31).err(), Some(Reason::Expired));
    // A registry change that revokes the key applies to cached tokens.
    v.swap_registry(
        KeyRegistry::build(vec![SampleKey::RsA.spec("rs", KeyState::Revoked)]).expect("builds"),
    );
    assert_eq!(v.verify(&t, NOW).err(), Some(Reason::RevokedKey));
    // A kid that disappears is unknown, cached or not.
    v.swap_registry(KeyRegistry::build(vec![]).expect("builds"));
    assert_eq!(v.verify(&t, NOW).err(), Some(Reason::UnknownKid));
}

#[test]
fn changed_material_under_same_kid_is_verified_again() {
    let v = verifier();
    let t = mint(SampleKey::RsA, "rs", &claims("m1")).expect("mint");
    let c = v.verify(&t, NOW).expect("verifies");
    v.remember(&c);
    v.swap_registry(
        KeyRegistry::build(vec![SampleKey::RsB.spec("rs", KeyState::Active)]).expect("builds"),
    );
    assert_eq!(v.verify(&t, NOW).err(), Some(Reason::BadSignature));
}

#[test]
fn refusals_carry_the_right_reason() {
    let v = verifier();
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "other key, known kid",
            mint(SampleKey::RsB, "rs", &claims("x")).expect("mint"),
            Reason::BadSignature,
        ),
        (
            "unknown kid",
            mint(SampleKey::RsA, "nope", &claims("x")).expect("mint"),
            Reason::UnknownKid,
        ),
        (
            "revoked key",
            mint(SampleKey::RsB, "gone", &claims("x")).expect("mint"),
            Reason::RevokedKey,
        ),
        (
            "retired key, issued after retirement",
            mint(SampleKey::RsB, "old", &claims("x")).expect("mint"),
            Reason::RetiredKey,
        ),
        (
            "expired",
            mint(SampleKey::RsA, "rs", &json!({"sub":"a","exp": NOW - 31})).expect("mint"),
            Reason::Expired,
        ),
        (
            "not yet valid",
            mint(
                SampleKey::RsA,
                "rs",
                &json!({"sub":"a","exp": NOW + 900, "nbf": NOW + 300}),
            )
            .expect("mint"),
            Reason::NotYetValid,
        ),
        (
            "no exp",
            mint(SampleKey::RsA, "rs", &json!({"sub":"a"})).expect("mint"),
            Reason::BadClaims,
        ),
        (
            "no account",
            mint(SampleKey::RsA, "rs", &json!({"exp": NOW + 60})).expect("mint"),
            Reason::BadClaims,
        ),
        (
            "alg none",
            mint_raw(
                SampleKey::RsA,
                r#"{"alg":"none","kid":"rs"}"#,
                r#"{"sub":"a"}"#,
            )
            .expect("mint"),
            Reason::Malformed,
        ),
        (
            "jku header",
            mint_raw(
                SampleKey::RsA,
                r#"{"alg":"RS256","kid":"rs","jku":"http://127.0.0.1:1/k"}"#,
                r#"{"sub":"a","exp":1900000000}"#,
            )
            .expect("mint"),
            Reason::Malformed,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(v.verify(&token, NOW).err(), Some(want), "{name}");
    }
}

#[test]
fn retired_key_still_passes_tokens_issued_before_retirement() {
    let v = verifier();
    let t = mint(
        SampleKey::RsB,
        "old",
        &json!({"sub":"a","iat": NOW - 100,"exp": NOW + 60}),
    )
    .expect("mint");
    assert!(v.verify(&t, NOW).is_ok());
}

#[test]
fn hs_rs_confusion_is_refused() {
    // The attacker signs HS256 with the RSA public key PEM as the HMAC secret.
    let v = verifier();
    let header = r#"{"alg":"HS256","kid":"rs"}"#;
    let payload = format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60);
    let input = format!(
        "{}.{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header),
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &payload)
    );
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(crate::fixtures::RS256_A_PUB.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("sign");
    let token = format!("{input}.{sig}");
    assert_eq!(v.verify(&token, NOW).err(), Some(Reason::AlgMismatch));
}

#[test]
fn tampered_payload_fails_the_signature() {
    let v = verifier();
    let t = mint(SampleKey::RsA, "rs", &claims("tp")).expect("mint");
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    let forged_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        format!(
            r#"{{"sub":"mallory","jti":"tp","iat":{},"exp":{}}}"#,
            NOW - 10,
            NOW + 600
        ),
    );
    parts[1] = forged_payload;
    assert_eq!(
        v.verify(&parts.join("."), NOW).err(),
        Some(Reason::BadSignature)
    );
}

#[test]
fn ecdsa_zero_signature_is_refused() {
    // CVE-2022-21449 ("psychic signatures"): r = s = 0 must never verify.
    let v = verifier();
    let t = mint(SampleKey::Es, "es", &claims("z")).expect("mint");
    let input = t.rsplit_once('.').map(|(i, _)| i).expect("dots");
    let zero = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [0u8; 64]);
    assert_eq!(
        v.verify(&format!("{input}.{zero}"), NOW).err(),
        Some(Reason::BadSignature)
    );
}

#[test]
fn only_confirmed_tokens_enter_the_cache() {
    let v = verifier();
    let t = mint(SampleKey::RsA, "rs", &claims("only")).expect("mint");
    let c = v.verify(&t, NOW).expect("verifies");
    assert_eq!(v.cache_len(), 0);
    v.remember(&c);
    assert_eq!(v.cache_len(), 1);
    assert_eq!(v.sweep_cache(NOW + 10_000), 1);
}

#[test]
fn forged_then_recorded() {
    let v = verifier();
    let idx = MemIndex::new();
    let t = mint(SampleKey::RsA, "rs", &claims("f1")).expect("mint");
    let c = v.verify(&t, NOW).expect("verifies");
    let q = Query {
        id: c.verified.id,
        account: &c.verified.account,
        kid: &c.verified.kid,
        issued_at: c.verified.issued_at,
    };
    assert_eq!(reason_for(idx.answer(&q)), Reason::Forged);
    idx.insert(&v.record_for_issued(&t, NOW).expect("record"));
    assert_eq!(reason_for(idx.answer(&q)), Reason::Ok);
}

#[test]
fn record_for_issued_refuses_retired_key_use() {
    let v = verifier();
    let t = mint(SampleKey::RsB, "old", &claims("late")).expect("mint");
    assert_eq!(v.record_for_issued(&t, NOW).err(), Some(Reason::RetiredKey));
}

#[test]
fn token_without_jti_is_identified_by_digest() {
    let v = verifier();
    let t = mint(SampleKey::RsA, "rs", &json!({"sub":"a","exp": NOW + 60})).expect("mint");
    let c = v.verify(&t, NOW).expect("verifies");
    assert_eq!(c.verified.id, TokenId::from_token(&t));
}

#[test]
fn only_the_claims_rules_use_are_kept_and_a_change_empties_the_cache() {
    let v = verifier();
    let claims = json!({"sub": "a", "jti": "kc", "exp": NOW + 60, "tenant": "acme", "role": "admin", "n": 7});
    let t = mint(SampleKey::RsA, "rs", &claims).expect("mint");
    let c = v.verify(&t, NOW).expect("verifies");
    assert!(c.verified.claims.is_empty());
    v.remember(&c);
    assert_eq!(v.cache_len(), 1);
    v.keep_claims(vec!["tenant".into(), "n".into()]);
    assert_eq!(v.cache_len(), 0, "a new claim set empties the cache");
    let c = v.verify(&t, NOW).expect("verifies");
    assert_eq!(c.verified.claim("tenant"), Some("acme"));
    assert_eq!(c.verified.claim("n"), Some("7"));
    assert_eq!(c.verified.claim("role"), None);
    v.remember(&c);
    v.keep_claims(vec!["tenant".into(), "n".into()]);
    assert_eq!(v.cache_len(), 1, "the same set keeps the cache");
}

#[test]
fn a_full_cache_loses_about_half_not_everything() {
    let v = Verifier::new(
        registry(),
        Policy {
            cache_capacity: 100,
            ..Policy::default()
        },
    );
    for i in 0..100 {
        let t = mint(
            SampleKey::Hs,
            "hs",
            &json!({"sub": "a", "jti": format!("f{i}"), "exp": NOW + 600}),
        )
        .expect("mint");
        let c = v.verify(&t, NOW).expect("verifies");
        v.remember(&c);
    }
    assert_eq!(v.cache_len(), 100);
    let dropped = v.sweep_cache(NOW);
    assert!((20..=80).contains(&dropped), "{dropped}");
    assert_eq!(v.cache_len(), 100 - dropped);
}

/// A validly signed token the ledger refused skips the signature on its next use, but the
/// ledger is asked every time: when its record arrives it passes and moves to the main
/// cache.
#[test]
fn refused_but_validly_signed_tokens_skip_the_signature_not_the_ledger() {
    let v = verifier();
    let index = MemIndex::new();
    let t = mint(SampleKey::RsA, "rs", &claims("forged-1")).expect("mint");
    let ask = |c: &Checked| v.conclude(c, index.answer(&Query::of(&c.verified)));
    let first = v.verify(&t, NOW).expect("signature is fine");
    assert!(!first.cached);
    assert_eq!(ask(&first), Reason::Forged);
    assert_eq!(v.unconfirmed_len(), 1);
    assert_eq!(v.cache_len(), 0, "not in the cache of confirmed tokens");
    let second = v.verify(&t, NOW).expect("from the unconfirmed cache");
    assert!(second.cached && !second.confirmed);
    assert_eq!(ask(&second), Reason::Forged);
    // Expiry still applies to it.
    assert_eq!(v.verify(&t, NOW + 600 + 31).err(), Some(Reason::Expired));
    // Its record arrives: the ledger says yes, and it moves over.
    let record = v.record_for_issued(&t, NOW).expect("record");
    index.insert(&record);
    let third = v.verify(&t, NOW).expect("verifies");
    assert_eq!(ask(&third), Reason::Ok);
    assert_eq!(v.unconfirmed_len(), 0);
    assert_eq!(v.cache_len(), 1);
    assert!(v.verify(&t, NOW).expect("verifies").confirmed);
}

/// Minted tokens fill only their own cache, bounded at a tenth of the main one, and
/// never push out confirmed tokens.
#[test]
fn minted_tokens_cannot_crowd_out_confirmed_ones() {
    let v = Verifier::new(
        registry(),
        Policy {
            cache_capacity: 100,
            ..Policy::default()
        },
    );
    let index = MemIndex::new();
    let good = mint(SampleKey::Hs, "hs", &claims("good")).expect("mint");
    let record = v.record_for_issued(&good, NOW).expect("record");
    index.insert(&record);
    let c = v.verify(&good, NOW).expect("verifies");
    assert_eq!(
        v.conclude(&c, index.answer(&Query::of(&c.verified))),
        Reason::Ok
    );
    for i in 0..50 {
        let t = mint(SampleKey::Hs, "hs", &claims(&format!("minted-{i}"))).expect("mint");
        let c = v.verify(&t, NOW).expect("verifies");
        assert_eq!(
            v.conclude(&c, index.answer(&Query::of(&c.verified))),
            Reason::Forged
        );
    }
    assert_eq!(v.unconfirmed_len(), 10);
    assert_eq!(v.cache_len(), 1);
    assert!(v.verify(&good, NOW).expect("verifies").confirmed);
}

/// A confirmed token carries the ledger revision it was confirmed at, read before the
/// ledger was asked; a later confirmation at a new revision stamps it again, and a
/// refusal leaves the stamp alone (the shortcut then fails on the ledger's side).
#[test]
fn confirmed_tokens_carry_the_revision_they_were_confirmed_at() {
    let v = verifier();
    let index = MemIndex::new();
    let t = mint(SampleKey::Hs, "hs", &claims("rev-1")).expect("mint");
    index.insert(&v.record_for_issued(&t, NOW).expect("record"));
    // As the proxy does it: revision first, then the ledger unless the shortcut holds.
    let request = || {
        let c = v.verify(&t, NOW).expect("verifies");
        let revision = Some(index.revision());
        let skipped = c
            .confirmed_revision()
            .is_some_and(|r| index.still_issued(r, &c.verified.id));
        let answer = if skipped {
            Answer::Issued
        } else {
            index.answer(&Query::of(&c.verified))
        };
        (v.conclude_at(&c, answer, revision), skipped)
    };
    assert_eq!(request(), (Reason::Ok, false), "first use: asked");
    let c = v.verify(&t, NOW).expect("verifies");
    assert_eq!(c.confirmed_revision(), Some(index.revision()));
    assert_eq!(request(), (Reason::Ok, true), "same revision: not asked");
    // An unrelated change of revision: asked once, stamped again, then skipped.
    let _ = index.revoke(
        &Revocation::Account {
            account: "somebody-else".into(),
            at: NOW,
        },
        NOW,
    );
    assert_eq!(request(), (Reason::Ok, false));
    assert_eq!(request(), (Reason::Ok, true));
    // Its own revocation: asked, and refused from then on.
    let _ = index.revoke(&Revocation::Token(c.verified.id), NOW);
    assert_eq!(request(), (Reason::RevokedToken, false));
    assert_eq!(request(), (Reason::RevokedToken, false));
    // Without revisions (`conclude`), nothing is stamped: a new verifier asks each time.
    let plain = verifier();
    let other = mint(SampleKey::Hs, "hs", &claims("rev-2")).expect("mint");
    let c = plain.verify(&other, NOW).expect("verifies");
    assert_eq!(plain.conclude(&c, Answer::Issued), Reason::Ok);
    let again = plain.verify(&other, NOW).expect("verifies");
    assert!(again.confirmed);
    assert_eq!(again.confirmed_revision(), None);
}

#[test]
fn forget_revoked_drops_only_covered_tokens_from_the_caches() {
    let v = verifier();
    let t1 = mint(SampleKey::Hs, "hs", &claims("f-1")).expect("mint");
    let t2 = mint(SampleKey::Hs, "hs", &claims("f-2")).expect("mint");
    for t in [&t1, &t2] {
        let c = v.verify(t, NOW).expect("verifies");
        assert_eq!(v.conclude(&c, Answer::Issued), Reason::Ok);
    }
    assert_eq!(v.cache_len(), 2);
    let gone = v.forget_revoked(&[Revocation::Token(crate::ledger::TokenId::from_jti("f-1"))]);
    assert_eq!(gone, 1);
    assert_eq!(v.cache_len(), 1);
    assert!(!v.verify(&t1, NOW).expect("verifies").cached);
    assert!(v.verify(&t2, NOW).expect("verifies").cached);
    // By account, with a cut-off before the tokens' iat: nothing goes.
    let none = v.forget_revoked(&[Revocation::Account {
        account: "alice".into(),
        at: NOW - 20,
    }]);
    assert_eq!(none, 0);
    assert_eq!(v.forget_revoked(&[Revocation::Kid("hs".into())]), 1);
    assert_eq!(v.cache_len(), 0);
}

/// HS256/384/512 keys from secrets and from a JWK, and tokens signed with them.
fn hmac_cases() -> (KeyRegistry, Vec<(String, String)>) {
    use crate::keys::{KeyMaterial, KeySpec};
    use jsonwebtoken::{encode, EncodingKey, Header};
    let secret = |n: u8| vec![n; 48];
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
        "kty": "oct", "kid": "hj", "alg": "HS256",
        "k": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret(9)),
    }))
    .expect("jwk");
    let spec = |kid: &str, alg, material| KeySpec {
        kid: kid.into(),
        alg,
        material,
        state: KeyState::Active,
    };
    let registry = KeyRegistry::build(vec![
        spec("h2", Algorithm::HS256, KeyMaterial::Secret(secret(1))),
        spec("h3", Algorithm::HS384, KeyMaterial::Secret(secret(2))),
        spec("h5", Algorithm::HS512, KeyMaterial::Secret(secret(3))),
        spec("hj", Algorithm::HS256, KeyMaterial::Jwk(Box::new(jwk))),
    ])
    .expect("registry builds");
    let sign = |kid: &str, alg, n: u8| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        encode(&h, &claims(kid), &EncodingKey::from_secret(&secret(n))).expect("sign")
    };
    let mut tokens = Vec::new();
    for (kid, alg, n) in [
        ("h2", Algorithm::HS256, 1),
        ("h3", Algorithm::HS384, 2),
        ("h5", Algorithm::HS512, 3),
        ("hj", Algorithm::HS256, 9),
    ] {
        tokens.push(("valid".to_owned(), sign(kid, alg, n)));
        tokens.push(("wrong key".to_owned(), sign(kid, alg, n + 100)));
    }
    (registry, tokens)
}

#[test]
fn hmac_keys_built_once_give_the_same_results_as_jsonwebtoken() {
    let (registry, tokens) = hmac_cases();
    for key in registry.iter() {
        assert!(key.hmac.is_some(), "{} has its HMAC key", key.kid);
    }
    let v = Verifier::new(registry, Policy::default());
    let mut checked = 0;
    for (what, t) in &tokens {
        let expect = if what == "valid" {
            Ok(())
        } else {
            Err(Reason::BadSignature)
        };
        assert_eq!(v.verify(t, NOW).map(|_| ()), expect, "{what}: {t}");
        let (rest, sig) = t.rsplit_once('.').expect("three segments");
        // Tampered signatures: every character changed in turn, cut, lengthened, padded,
        // emptied of its last bits, doubled, and one of 200 characters.
        let mut sigs: Vec<String> = Vec::new();
        for i in 0..sig.len() {
            let mut b = sig.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            sigs.push(String::from_utf8(b).expect("ascii"));
        }
        sigs.extend([
            sig[..sig.len() - 1].to_owned(),
            sig[..sig.len() - 4].to_owned(),
            format!("{sig}A"),
            format!("{sig}AAAA"),
            format!("{sig}{sig}"),
            "A".repeat(200),
            "A".repeat(128),
            "A".repeat(129),
            "A".to_owned(),
        ]);
        let registry = v.registry();
        for s in std::iter::once(sig.to_owned()).chain(sigs) {
            let forged = format!("{rest}.{s}");
            let Ok(p) = token::parse(&forged, 8192) else {
                continue;
            };
            let key = registry
                .get(p.header.kid.as_deref().expect("kid"))
                .expect("key");
            assert_eq!(signature_ok(&p, key), backend_ok(&p, key), "{forged}");
            if s != sig {
                assert!(
                    !signature_ok(&p, key),
                    "tampered signature passed: {forged}"
                );
            }
            checked += 1;
        }
        // A tampered payload under the original signature.
        let (h, _) = rest.split_once('.').expect("header");
        let other = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            r#"{"sub":"mallory","jti":"x","exp":1800000600}"#,
        );
        assert_eq!(
            v.verify(&format!("{h}.{other}.{sig}"), NOW).err(),
            Some(Reason::BadSignature)
        );
    }
    assert!(checked > 400, "{checked}");
}

#[test]
fn hmac_tokens_under_another_alg_are_refused_before_the_signature() {
    let (hmac_registry, _) = hmac_cases();
    let v = Verifier::new(hmac_registry, Policy::default());
    // h3 is HS384: a token saying HS256 (validly signed with h3's secret) is refused for
    // its alg, and so is one saying HS512.
    for alg in [Algorithm::HS256, Algorithm::HS512] {
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = Some("h3".into());
        let t = jsonwebtoken::encode(
            &h,
            &claims("x"),
            &jsonwebtoken::EncodingKey::from_secret(&[2; 48]),
        )
        .expect("sign");
        assert_eq!(v.verify(&t, NOW).err(), Some(Reason::AlgMismatch));
    }
    // Keys of other families carry no HMAC key.
    for key in registry().iter() {
        assert_eq!(
            key.hmac.is_some(),
            key.alg == Algorithm::HS256,
            "{}",
            key.kid
        );
    }
}
