use super::*;

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn tok(header: &str, payload: &str) -> String {
    format!("{}.{}.c2ln", b64(header), b64(payload))
}

#[test]
fn parses_a_well_formed_token() {
    let t = tok(r#"{"alg":"RS256","kid":"k1"}"#, r#"{"sub":"a","exp":5}"#);
    let p = parse(&t, 8192).expect("parses");
    assert_eq!(p.header.alg, Algorithm::RS256);
    assert_eq!(p.header.kid.as_deref(), Some("k1"));
    assert_eq!(p.claims.numeric_date("exp"), Ok(Some(5)));
    assert_eq!(p.signature_b64, "c2ln");
    assert!(t.starts_with(p.signing_input));
}

#[test]
fn refuses_none_in_every_spelling() {
    for alg in ["none", "None", "NONE", "nOnE", " none", "none ", ""] {
        let t = tok(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
        assert!(
            matches!(parse(&t, 8192), Err(Malformed::Alg(_))),
            "alg {alg:?} accepted"
        );
    }
    let t = tok(r#"{"alg":null}"#, "{}");
    assert!(matches!(parse(&t, 8192), Err(Malformed::Alg(_))));
}

#[test]
fn refuses_key_carrying_headers_and_crit() {
    for h in ["jku", "x5u", "jwk", "x5c"] {
        let t = tok(
            &format!(r#"{{"alg":"RS256","{h}":"http://127.0.0.1/x"}}"#),
            "{}",
        );
        assert_eq!(parse(&t, 8192).err(), Some(Malformed::KeyInHeader(h)));
    }
    let t = tok(r#"{"alg":"RS256","crit":["exp"]}"#, "{}");
    assert_eq!(parse(&t, 8192).err(), Some(Malformed::Crit));
}

#[test]
fn refuses_bad_shapes() {
    assert_eq!(parse("a.b", 100).err(), Some(Malformed::Segments(2)));
    assert_eq!(parse("a.b.c.d", 100).err(), Some(Malformed::Segments(4)));
    assert_eq!(
        parse(".b.c", 100).err(),
        Some(Malformed::EmptySegment("header"))
    );
    let padded = format!("{}=.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64("{}"));
    assert_eq!(parse(&padded, 100).err(), Some(Malformed::Base64("header")));
    let long = "a".repeat(101);
    assert!(matches!(parse(&long, 100), Err(Malformed::TooLong { .. })));
    let t = tok("[1]", "{}");
    assert_eq!(parse(&t, 8192).err(), Some(Malformed::Json("header")));
}

#[test]
fn deep_json_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let t = tok(r#"{"alg":"RS256"}"#, &deep);
    assert_eq!(parse(&t, 1 << 20).err(), Some(Malformed::Json("payload")));
}

#[test]
fn numeric_dates_are_strict() {
    let m: Map<String, Value> =
        serde_json::from_str(r#"{"a":1.9,"b":-1,"c":"5","d":1e300}"#).expect("json");
    assert_eq!(numeric_date(&m, "a"), Ok(Some(1)));
    assert!(numeric_date(&m, "b").is_err());
    assert!(numeric_date(&m, "c").is_err());
    assert!(numeric_date(&m, "d").is_err());
    assert_eq!(numeric_date(&m, "zz"), Ok(None));
}

#[test]
fn numeric_dates_of_claims_are_as_strict() {
    let t = tok(
        r#"{"alg":"RS256"}"#,
        r#"{"a":1.9,"b":-1,"c":"5","d":1e300,"e":18446744073709551616,"f":0.0}"#,
    );
    let c = parse(&t, 8192).expect("parses").claims;
    assert_eq!(c.numeric_date("a"), Ok(Some(1)));
    assert_eq!(c.numeric_date("b"), Err(Malformed::Claim("b")));
    assert_eq!(c.numeric_date("c"), Err(Malformed::Claim("c")));
    assert_eq!(c.numeric_date("d"), Err(Malformed::Claim("d")));
    assert_eq!(c.numeric_date("e"), Err(Malformed::Claim("e")));
    assert_eq!(c.numeric_date("f"), Ok(Some(0)));
    assert_eq!(c.numeric_date("zz"), Ok(None));
}

#[test]
fn claims_keep_the_last_of_a_repeated_name_and_decode_escapes() {
    let t = tok(
        r#"{"alg":"HS256","kid":"a","k\u0069d":"b"}"#,
        r#"{"sub":"x","s\u0075b":"\u00e9\n\"","jti":"j","aud":["q",1,null,["api"],{"a":"api"},"api"]}"#,
    );
    let p = parse(&t, 8192).expect("parses");
    assert_eq!(p.header.kid.as_deref(), Some("b"));
    assert_eq!(p.claims.string("sub"), Ok(Some("\u{e9}\n\"")));
    assert_eq!(p.claims.string("jti"), Ok(Some("j")));
    assert!(p.claims.has_audience("api"));
    assert!(p.claims.has_audience("q"));
    assert!(!p.claims.has_audience("a"));
    assert_eq!(
        p.claims.string("aud"),
        Err(Malformed::ClaimNamed("aud".into()))
    );
    let names: Vec<&str> = p.claims.sorted().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["aud", "jti", "sub"]);
    check_against_serde(&t, 8192).expect("same as the Map parse");
}

/// Header and payload texts on the edges of what serde_json accepts.
const HEADERS: &[&str] = &[
    r#"{"alg":"HS256","typ":"JWT","kid":"hs"}"#,
    r#"{"alg":"HS256","alg":"none"}"#,
    r#"{"alg":"none","alg":"RS256","kid":"k"}"#,
    r#"{"alg":"RS256","jku":null}"#,
    r#"{"alg":"RS256","x5c":[1],"crit":2}"#,
    r#"{"alg":1}"#,
    r#"{"alg":{"a":[1,"\u0041"]}}"#,
    r#"{"kid":5,"alg":"HS256"}"#,
    r#"{"alg":"HS256","x":"\udc00"}"#,
    r#"{"alg":"HS\u0032\u00356"}"#,
    r#"{"alg":"ES256","kid":"a\"b","cty":{"x":[[[]]]}}"#,
    r#" {"alg":"EdDSA"} "#,
    r#"{"alg":"PS512"}x"#,
];

const PAYLOADS: &[&str] = &[
    r#"{"sub":"alice","jti":"t-1","iat":1799999990,"exp":1800000600}"#,
    r#"{"sub":"a","sub":"b","exp":1,"exp":"x"}"#,
    r#"{"s\u0075b":"\u00e9\n","jti":"a\"b","\u0000":"\t"}"#,
    r#"{"x":"\ud800","sub":"a"}"#,
    r#"{"\udbff\udfff":1,"exp":2}"#,
    r#"{"exp":1.5,"iat":-1,"nbf":1e400}"#,
    r#"{"exp":18446744073709551616,"iat":-0,"nbf":1E2,"n":0.0,"m":-9223372036854775809}"#,
    r#"{"aud":["x",1,null,["y"],{"a":"b"},"z"],"exp":3}"#,
    r#"{"aud":"api","iss":null,"t":true,"f":false,"o":{"a":[1,{"b":"\u0041"}]}}"#,
    r#"{}"#,
    r#"[]"#,
    r#"null"#,
    r#""s""#,
    r#"{"a":1,}"#,
    r#"{"a":1} "#,
    r#"{"a":01}"#,
    r#"{"a":"x
y"}"#,
];

/// SplitMix64, for reproducible mutations.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mutate(bytes: &mut Vec<u8>, state: &mut u64) {
    const POOL: &[u8] = b"{}[],:\"\\u0123456789eE+-.ntfal \t\n\x80\xff\xc3\xa9";
    for _ in 0..=(next(state) % 3) {
        let pos = (next(state) as usize) % (bytes.len() + 1);
        let b = POOL[(next(state) as usize) % POOL.len()];
        match next(state) % 4 {
            0 if pos < bytes.len() => bytes[pos] = b,
            1 if pos < bytes.len() => {
                bytes.remove(pos);
            }
            2 => {
                let end = (pos + (next(state) as usize) % 8).min(bytes.len());
                let piece = bytes[pos..end].to_vec();
                bytes.splice(pos..pos, piece);
            }
            _ => bytes.insert(pos, b),
        }
    }
}

#[test]
fn parse_agrees_with_the_map_parse_on_mutated_tokens() {
    let mut deep = String::from(r#"{"sub":"a","x":"#);
    deep.push_str(&"[".repeat(126));
    deep.push_str(&"]".repeat(126));
    deep.push('}');
    let mut too_deep = String::from(r#"{"x":"#);
    too_deep.push_str(&"[".repeat(127));
    too_deep.push_str(&"]".repeat(127));
    too_deep.push('}');
    assert!(check_against_serde(&tok(HEADERS[0], &deep), 1 << 16).is_ok());
    assert_eq!(
        parse(&tok(HEADERS[0], &too_deep), 1 << 16).err(),
        Some(Malformed::Json("payload")),
        "the nesting limit applies inside claims"
    );
    let mut payloads: Vec<String> = PAYLOADS.iter().map(|p| (*p).to_owned()).collect();
    payloads.push(deep);
    payloads.push(too_deep);
    let mut state = 7;
    let mut accepted = 0;
    for h in HEADERS {
        for p in &payloads {
            let t = tok(h, p);
            check_against_serde(&t, 1 << 16).unwrap_or_else(|e| panic!("{h} {p}: {e}"));
            accepted += usize::from(parse(&t, 1 << 16).is_ok());
        }
    }
    assert!(accepted > 20, "the seeds reach the claims: {accepted}");
    for i in 0..20_000 {
        let mut h = HEADERS[(next(&mut state) as usize) % HEADERS.len()]
            .as_bytes()
            .to_vec();
        let mut p = payloads[(next(&mut state) as usize) % payloads.len()]
            .as_bytes()
            .to_vec();
        match i % 3 {
            0 => mutate(&mut h, &mut state),
            1 => mutate(&mut p, &mut state),
            _ => {}
        }
        let mut t = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(&h),
            URL_SAFE_NO_PAD.encode(&p)
        );
        if i % 3 == 2 {
            let mut b = t.into_bytes();
            mutate(&mut b, &mut state);
            t = String::from_utf8_lossy(&b).into_owned();
        }
        check_against_serde(&t, 1 << 16).unwrap_or_else(|e| {
            panic!(
                "case {i}: {t}\nheader {:?}\npayload {:?}\n{e}",
                String::from_utf8_lossy(&h),
                String::from_utf8_lossy(&p)
            )
        });
    }
}

#[test]
fn the_decoder_refuses_what_is_b64url_refuses() {
    // decode_segment relies on the decoder alone for header and payload.
    for b in 0..=255u8 {
        for at in 0..8 {
            let mut s = b"eyJhbGci".to_vec();
            s[at] = b;
            let decodes = URL_SAFE_NO_PAD.decode(&s).is_ok();
            let text = String::from_utf8_lossy(&s).into_owned();
            if !B64URL[usize::from(b)] {
                assert!(!decodes, "byte {b:#x} at {at} decoded");
                assert_eq!(
                    decode_segment(&text, "header").err(),
                    Some(Malformed::Base64("header"))
                );
            }
        }
    }
    assert!(is_b64url("Az09-_"));
    assert!(!is_b64url("ab=") && !is_b64url("a+b") && !is_b64url("a/b") && !is_b64url("a b"));
}
