use super::*;

fn json(map: &FieldMap, line: &str) -> Result<Request<'static>, LineError> {
    // Leak the line so the borrowed request can outlive it in tests.
    let line: &'static str = Box::leak(line.to_owned().into_boxed_str());
    map.parse(line.as_bytes())
}

const T: u64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z

#[test]
fn json_default_fields_borrow_from_the_line() {
    let map = FieldMap::new(Format::JsonLines);
    let r = json(
        &map,
        r#"{"time":"2026-03-01T10:00:00Z","ip":"192.0.2.7","method":"GET","path":"/account/orders?page=2","token":"Bearer abc.def.ghi","label":"legit","status":200,"other":{"nested":[1,2]}}"#,
    )
    .expect("a good line");
    assert_eq!(r.time_ms, T);
    assert_eq!(r.ip, "192.0.2.7".parse::<IpAddr>().expect("ip"));
    assert_eq!(r.path, "/account/orders");
    assert!(matches!(r.path, Cow::Borrowed(_)));
    assert_eq!(r.token.as_deref(), Some("abc.def.ghi"));
    assert!(matches!(r.token, Some(Cow::Borrowed(_))));
    assert_eq!(r.label.as_deref(), Some("legit"));
    assert_eq!(r.status, Some(200));
    assert_eq!(r.account, None);
    // An escaped string is decoded (and owned).
    let r = json(
        &map,
        r#"{"time":1772359200,"ip":"192.0.2.7","method":"GET","path":"/a\u002fb","account":"a\"b"}"#,
    )
    .expect("escapes");
    assert_eq!(r.path, "/a/b");
    assert_eq!(r.account.as_deref(), Some("a\"b"));
}

#[test]
fn json_field_mapping_and_time_forms() {
    let mut map = FieldMap::new(Format::JsonLines);
    for f in [
        "ip=remote_addr",
        "account=user",
        "time=ts",
        "request=req",
        "header:User-Agent=ua",
    ] {
        map.apply(f).expect("mapping");
    }
    assert_eq!(map.header_names(), &["user-agent".into()]);
    let line = |ts: &str| {
        format!(
            r#"{{"ts":{ts},"remote_addr":"2001:db8::1","req":"POST /login?x=1 HTTP/1.1","user":"alice","ua":"curl/8","ip":"10.0.0.1"}}"#
        )
    };
    for ts in [
        "1772359200",
        "1772359200000",
        "1772359200.000",
        "\"1772359200\"",
        "\"2026-03-01T11:00:00+01:00\"",
        "\"2026-03-01 10:00:00.000Z\"",
        "\"01/Mar/2026:02:00:00 -0800\"",
    ] {
        let r = json(&map, &line(ts)).unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert_eq!(r.time_ms, T, "{ts}");
        assert_eq!(
            r.ip,
            "2001:db8::1".parse::<IpAddr>().expect("ip"),
            "the mapped field wins"
        );
        assert_eq!((&*r.method, &*r.path), ("POST", "/login"));
        assert_eq!(r.account.as_deref(), Some("alice"));
        assert_eq!(r.headers[0].as_deref(), Some("curl/8"));
    }
    let r = json(&map, &line("1772359200.123")).expect("msec");
    assert_eq!(r.time_ms, T + 123);
    // Unmapping: an empty source.
    map.apply("account=").expect("unmap");
    assert_eq!(json(&map, &line("1772359200")).expect("line").account, None);
}

#[test]
fn json_bad_lines_say_what_and_carry_the_value() {
    let map = FieldMap::new(Format::JsonLines);
    let e = |l: &str| json(&map, l).expect_err("bad line");
    assert!(matches!(e("not json"), LineError::Json(_)));
    assert!(matches!(e("[1,2]"), LineError::Json(_)));
    assert!(matches!(e(r#"{"a":1} trailing"#), LineError::Json(_)));
    assert_eq!(
        e(r#"{"time":1,"method":"GET","path":"/"}"#),
        LineError::Missing("ip")
    );
    assert_eq!(
        e(r#"{"time":1,"ip":"-","method":"GET","path":"/"}"#),
        LineError::Missing("ip")
    );
    assert_eq!(
        e(r#"{"time":1,"ip":"300.1.1.1","method":"GET","path":"/"}"#),
        LineError::Ip("300.1.1.1".into())
    );
    assert_eq!(
        e(r#"{"time":"yesterday","ip":"192.0.2.1","method":"GET","path":"/"}"#),
        LineError::Time("yesterday".into())
    );
    assert_eq!(
        e(r#"{"time":"2026-13-01T00:00:00Z","ip":"192.0.2.1","method":"GET","path":"/"}"#),
        LineError::Time("2026-13-01T00:00:00Z".into())
    );
    assert_eq!(
        e(r#"{"time":1,"ip":"192.0.2.1","request":"\u0016\u0003garbage"}"#),
        LineError::RequestLine("\u{16}\u{3}garbage".into())
    );
    assert_eq!(
        e(r#"{"time":1,"ip":"192.0.2.1","method":"GET","path":"/","status":99}"#),
        LineError::Status("99".into())
    );
    let long = "x".repeat(500);
    match e(&format!(
        r#"{{"time":1,"ip":"{long}","method":"GET","path":"/"}}"#
    )) {
        LineError::Ip(v) => assert_eq!(v.len(), 80, "values are truncated"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn combined_format_with_trailing_fields() {
    let mut map = FieldMap::new(Format::Combined);
    map.apply("token=extra1").expect("map");
    map.apply("account=user").expect("map");
    let line = r#"192.0.2.9 - alice [01/Mar/2026:10:00:00 +0000] "GET /account/addresses?x=1 HTTP/1.1" 200 512 "https://example.com/a b" "Mozilla/5.0 (X11; \"quoted\")" "Bearer eyJ.x.y" extra"#;
    let r = map.parse(line.as_bytes()).expect("combined line");
    assert_eq!(r.time_ms, T);
    assert_eq!(r.ip, "192.0.2.9".parse::<IpAddr>().expect("ip"));
    assert_eq!((&*r.method, &*r.path), ("GET", "/account/addresses"));
    assert_eq!(r.status, Some(200));
    assert_eq!(r.account.as_deref(), Some("alice"));
    assert_eq!(r.token.as_deref(), Some("eyJ.x.y"));
    assert_eq!(r.headers[0].as_deref(), Some("https://example.com/a b"));
    assert_eq!(
        r.headers[1].as_deref(),
        Some(r#"Mozilla/5.0 (X11; \"quoted\")"#)
    );
    // `-` is no value; a line without the trailing fields still reads.
    let r = map
        .parse(br#"192.0.2.9 - - [01/Mar/2026:10:00:00 +0000] "GET / HTTP/1.0" 404 -"#)
        .expect("short line");
    assert_eq!((r.account, r.token, r.status), (None, None, Some(404)));
    // Absolute-form request targets.
    let r = map
        .parse(br#"192.0.2.9 - - [01/Mar/2026:10:00:00 +0000] "GET http://h.example/account/x HTTP/1.1" 200 1"#)
        .expect("absolute form");
    assert_eq!(r.path, "/account/x");
}

#[test]
fn combined_bad_lines() {
    let map = FieldMap::new(Format::Combined);
    let e = |l: &str| map.parse(l.as_bytes()).expect_err("bad");
    assert!(matches!(
        e(r#"192.0.2.9 - - 01/Mar/2026:10:00:00 "GET / HTTP/1.1" 200 1"#),
        LineError::Combined(_)
    ));
    assert!(matches!(
        e(r#"192.0.2.9 - - [01/Mar/2026:10:00:00 +0000] GET / 200 1"#),
        LineError::Combined(_)
    ));
    assert!(matches!(
        e(r#"192.0.2.9 - - [01/Mar/2026:10:00:00 +0000] "GET / HTTP/1.1"#),
        LineError::Combined(_)
    ));
    assert!(matches!(e("192.0.2.9 - -"), LineError::Combined(_)));
    assert_eq!(
        e(r#"192.0.2.9 - - [01/Xyz/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#),
        LineError::Time("01/Xyz/2026:10:00:00 +0000".into())
    );
    assert_eq!(
        e(r#"192.0.2.9 - - [01/Mar/2026:10:00:00 +0000] "-" 400 0"#),
        LineError::Missing("method")
    );
    assert_eq!(map.parse(&[0xff, 0xfe]), Err(LineError::Utf8));
}

#[test]
fn field_mappings_are_checked() {
    let mut json = FieldMap::new(Format::JsonLines);
    assert!(matches!(json.apply("ip"), Err(MapError::Shape(_))));
    assert!(matches!(json.apply("client=ip"), Err(MapError::Target(_))));
    assert!(matches!(json.apply("header:=x"), Err(MapError::Target(_))));
    for i in 0..MAX_HEADERS {
        json.apply(&format!("header:h{i}=h{i}")).expect("header");
    }
    assert_eq!(
        json.apply("header:one-more=x"),
        Err(MapError::TooManyHeaders(MAX_HEADERS + 1))
    );
    let mut combined = FieldMap::new(Format::Combined);
    assert!(matches!(
        combined.apply("token=remote_addr"),
        Err(MapError::Source(_))
    ));
    assert!(matches!(
        combined.apply("token=extra9"),
        Err(MapError::Source(_))
    ));
    combined.apply("token=extra8").expect("extra8");
    assert!(combined.has(Target::Token));
}

#[test]
fn times_agree_across_forms() {
    assert_eq!(parse_time("2026-03-01T10:00:00Z"), Some(T));
    assert_eq!(parse_time("2026-03-01T10:00:00.5Z"), Some(T + 500));
    assert_eq!(parse_time("2026-03-01T10:00:00.123456789Z"), Some(T + 123));
    assert_eq!(parse_time("2026-03-01T05:30:00-04:30"), Some(T));
    assert_eq!(parse_time("01/Mar/2026:10:00:00 +0000"), Some(T));
    assert_eq!(parse_time("1772359200"), Some(T));
    assert_eq!(parse_time("1772359200000"), Some(T));
    assert_eq!(parse_time("2000-02-29T00:00:00Z"), Some(951_782_400_000));
    for bad in [
        "2026-03-01T10:00:00",
        "2026-03-01T25:00:00Z",
        "2026-03-01T10:00:00.Z",
        "2026-03-01T10:00:00+0100",
        "01/Mar/2026:10:00:00",
        "",
        "1.2.3",
    ] {
        assert_eq!(parse_time(bad), None, "{bad}");
    }
}

/// The scanner and serde_json read `line` the same way, and the scanner took it (or left
/// it to serde_json) as `fast` says.
fn same_both_ways(map: &FieldMap, line: &str, fast: bool) -> Result<Request<'static>, LineError> {
    let line: &'static str = Box::leak(line.to_owned().into_boxed_str());
    assert_eq!(
        scan_object(map, line.as_bytes(), &mut Partial::default()),
        fast,
        "scanner on {line:?}"
    );
    let got = map.parse(line.as_bytes());
    assert_eq!(got, map.parse_with_serde(line.as_bytes()), "{line:?}");
    got
}

#[test]
fn scanner_reads_plain_lines_and_borrows() {
    let map = FieldMap::new(Format::JsonLines);
    let r = same_both_ways(
        &map,
        " {\t\"time\" : \"2026-03-01T10:00:00Z\" ,\"ip\":\"192.0.2.7\",\"method\":\"GET\",\"path\":\"/a?b\",\"status\":404,\"x\":true,\"y\":false,\"z\":null,\"token\":\"t.u.v\"}\r ",
        true,
    )
    .expect("plain");
    assert_eq!(r.time_ms, T);
    assert_eq!(r.status, Some(404));
    assert_eq!(r.path, "/a");
    assert!(matches!(r.path, Cow::Borrowed(_)));
    assert!(matches!(r.token, Some(Cow::Borrowed("t.u.v"))));
    // Unicode (not escaped) is borrowed as is; a duplicate key: the last one wins, as
    // with serde_json.
    let r = same_both_ways(
        &map,
        r#"{"time":1772359200,"ip":"192.0.2.7","method":"GET","path":"/x","account":"zoë 北京 🦀","label":"a","label":"b"}"#,
        true,
    )
    .expect("unicode");
    assert_eq!(r.account.as_deref(), Some("zoë 北京 🦀"));
    assert_eq!(r.label.as_deref(), Some("b"));
    // Booleans and null on mapped targets: null is absent, `true` is text.
    let r = same_both_ways(
        &map,
        r#"{"time":1772359200,"ip":"192.0.2.7","method":"GET","path":"/x","account":null,"label":true}"#,
        true,
    )
    .expect("literals");
    assert_eq!(r.account, None);
    assert_eq!(r.label.as_deref(), Some("true"));
}

#[test]
fn scanner_leaves_unusual_values_to_serde_json() {
    let map = FieldMap::new(Format::JsonLines);
    let head = r#"{"time":1772359200,"ip":"192.0.2.7","method":"GET","path":"/x""#;
    for (tail, ok) in [
        // Escapes: decoded by serde_json, in mapped and unmapped fields and in keys.
        (r#","account":"a\"b\\c\u00e9\ud83e\udd80"}"#, true),
        (r#","other":"\n"}"#, true),
        (r#","acc\u006funt":"k"}"#, true),
        // Fractions, exponents, negative and big numbers, nested values.
        (r#","status":2.0e2}"#, true),
        (r#","other":-1}"#, true),
        (r#","other":18446744073709551616}"#, true),
        (r#","other":{"a":[1,{"b":null}]}}"#, true),
        (r#","other":[]}"#, true),
        // Not JSON, or not the right types.
        (r#","other":01}"#, false),
        (r#","account":"a"#, false),
        (r#","account":"a	b"}"#, false),
        (r#","account":{"a":1}}"#, false),
        (r#",}"#, false),
        (r#"} x"#, false),
        (r#""#, false),
        (r#","other":nul}"#, false),
        (r#","other":truex}"#, false),
        // A lone surrogate: ignored in an unmapped field, refused in a mapped one.
        (r#","other":"\ud800"}"#, true),
        (r#","account":"\ud800"}"#, false),
        (r#","other":"\x"}"#, false),
    ] {
        let line = format!("{head}{tail}");
        let got = same_both_ways(&map, &line, false);
        assert_eq!(got.is_ok(), ok, "{line:?}: {got:?}");
        if let Err(e) = got {
            assert!(matches!(e, LineError::Json(_)), "{line:?}: {e}");
        }
    }
    // Invalid UTF-8 anywhere: serde_json decides (and refuses it in a mapped string).
    let mut bad = format!("{head},\"account\":\"").into_bytes();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"\"}");
    assert!(!scan_object(&map, &bad, &mut Partial::default()));
    assert_eq!(map.parse(&bad), map.parse_with_serde(&bad));
    assert!(map.parse(&bad).is_err());
}

#[test]
fn scanner_missing_fields_and_malformed_lines() {
    let map = FieldMap::new(Format::JsonLines);
    // Well-formed, fields missing: the same error either way.
    for (line, missing) in [
        (r#"{}"#, "time"),
        (r#"{"ip":"192.0.2.7"}"#, "time"),
        (r#"{"time":1772359200}"#, "ip"),
        (r#"{"time":1772359200,"ip":"192.0.2.7"}"#, "method"),
        (
            r#"{"time":1772359200,"ip":"192.0.2.7","method":"GET"}"#,
            "path",
        ),
        (
            r#"{"time":null,"ip":"192.0.2.7","method":"GET","path":"/"}"#,
            "time",
        ),
    ] {
        let got = same_both_ways(&map, line, true);
        assert_eq!(got, Err(LineError::Missing(missing)), "{line}");
    }
    for line in [
        "[1,2]",
        "\"x\"",
        "{",
        "{\"time\"",
        "{\"time\":}",
        "{\"a\" 1}",
        "nul",
    ] {
        let got = same_both_ways(&map, line, false);
        assert!(matches!(got, Err(LineError::Json(_))), "{line}: {got:?}");
    }
}

#[test]
fn scanner_huge_lines() {
    let map = FieldMap::new(Format::JsonLines);
    // A megabyte of token, and one of an ignored field, at every alignment of the
    // eight-byte scan around the closing quote.
    for pad in 0..9 {
        let big = "a".repeat((1 << 20) + pad);
        let line = format!(
            r#"{{"time":1772359200,"ip":"192.0.2.7","method":"GET","path":"/x","token":"{big}","junk":"{big}"}}"#
        );
        let r = same_both_ways(&map, &line, true).expect("huge");
        assert_eq!(r.token.as_deref().map(str::len), Some((1 << 20) + pad));
        // A control character or a backslash deep inside, near a chunk boundary.
        for (c, ok) in [('\u{1}', false), ('\\', false)] {
            let mut s = big.clone();
            s.insert((1 << 20) - 3 + pad, c);
            let line = format!(
                r#"{{"time":1772359200,"ip":"192.0.2.7","method":"GET","path":"/x","token":"{s}"}}"#
            );
            let got = same_both_ways(&map, &line, false);
            assert_eq!(got.is_ok(), ok);
        }
    }
}

/// SplitMix64, for reproducible sweeps.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn string_end_agrees_with_the_byte_loop_everywhere() {
    // Every start in lines of every length up to 40 (the word loop, the memchr switch
    // after 32 bytes, the shifted last word and the short-line loop), made of the bytes
    // that stop a string and some that must not.
    const POOL: &[u8] = b"\"\\\x00\x1f\t \x7f\x80\xffa";
    let mut state = 7;
    for _ in 0..4000 {
        let len = (next(&mut state) % 41) as usize;
        let b: Vec<u8> = (0..len)
            .map(|_| {
                // Mostly plain letters, so that ends lie at every distance.
                if next(&mut state).is_multiple_of(4) {
                    POOL[(next(&mut state) as usize) % POOL.len()]
                } else {
                    b'a'
                }
            })
            .collect();
        let plain = no_control_bytes(&b);
        for i in 0..=len {
            assert_eq!(
                string_end(&b, i, plain),
                short_string_end(&b, i),
                "{b:?} from {i}"
            );
        }
    }
}

#[test]
fn scanner_keys_are_matched_whole_by_length_and_bytes() {
    let mut map = FieldMap::new(Format::JsonLines);
    // Names sharing their first eight bytes, a name that is another's prefix, a long
    // name, and a name the line can only hold escaped (never matched by the scanner).
    for spec in [
        "account=acct_name_long",
        "label=acct_name_lo",
        "header:x-a=acct_nam",
        "header:x-b=acct_name_longer",
        "header:x-c=q\"uote",
    ] {
        map.apply(spec).expect(spec);
    }
    let head = r#"{"time":1772359200,"ip":"192.0.2.7","method":"GET","path":"/x""#;
    let r = same_both_ways(
        &map,
        &format!(
            r#"{head},"acct_name_longer":"d","acct_nam":"c","acct_name_lo":"b","acct_name_long":"a","acct_name_lon":"z","acct_na":"y","account":"w"}}"#
        ),
        true,
    )
    .expect("keys");
    assert_eq!(r.account.as_deref(), Some("a"));
    assert_eq!(r.label.as_deref(), Some("b"));
    assert_eq!(r.headers[0].as_deref(), Some("c"));
    assert_eq!(r.headers[1].as_deref(), Some("d"));
    assert_eq!(r.headers[2], None);
    // The escaped key is serde_json's, and found there.
    let r = same_both_ways(&map, &format!(r#"{head},"q\"uote":"e"}}"#), false).expect("escaped");
    assert_eq!(r.headers[2].as_deref(), Some("e"));
    // A key within the line's last eight bytes: its word is copied, not read from the line.
    let mut short = FieldMap::new(Format::JsonLines);
    short.apply("time=t").expect("t");
    let r = same_both_ways(
        &short,
        r#"{"ip":"192.0.2.7","method":"GET","path":"/","t":1}"#,
        true,
    )
    .expect("short tail");
    assert_eq!(r.time_ms, 1000);
}

#[test]
fn scanner_agrees_with_serde_json_on_mutated_lines() {
    const POOL: &[u8] = b"{}[],:\"\\u0123456789eE+-.ntfal \t\r\x01\x80\xff\xc3\xa9?#/";
    let mut map = FieldMap::new(Format::JsonLines);
    map.apply("header:x-forwarded-for=xff").expect("xff");
    let seeds = [
        r#"{"time":"2027-01-15T08:00:01.550Z","ip":"127.3.0.4","method":"GET","path":"/account/x?y=1","token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTE4MiJ9.0aSu5l_Z3x_Vg6UcCPZIfPf4ddyHzItTVEJJqprKxiM","label":"legit"}"#,
        r#"{"time":1772359200123,"ip":"2001:db8::1","request":"POST /login HTTP/1.1","status":401,"xff":"10.0.0.1","account":"zoë"}"#,
        r#" { "time" : "2026-03-01 10:00:00+01:00" , "ip" : "[::1]:443" , "method" : "GET" , "path" : "/" , "token" : "Bearer t" } "#,
    ];
    let mut state = 11;
    let mut fast = 0;
    for i in 0..30_000 {
        let mut line = seeds[i % seeds.len()].as_bytes().to_vec();
        for _ in 0..=(next(&mut state) % 3) {
            let pos = (next(&mut state) as usize) % (line.len() + 1);
            let b = POOL[(next(&mut state) as usize) % POOL.len()];
            match next(&mut state) % 4 {
                0 if pos < line.len() => line[pos] = b,
                1 if pos < line.len() => {
                    line.remove(pos);
                }
                2 => {
                    let end = (pos + (next(&mut state) as usize) % 8).min(line.len());
                    let piece = line[pos..end].to_vec();
                    line.splice(pos..pos, piece);
                }
                _ => line.insert(pos, b),
            }
        }
        fast += usize::from(scan_object(&map, &line, &mut Partial::default()));
        assert_eq!(
            map.parse(&line),
            map.parse_with_serde(&line),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
    }
    // Most mutants are still plain lines: the sweep exercised the scanner, not only
    // serde_json.
    assert!(fast > 10_000, "{fast}");
}

#[test]
fn dotted_quad_reads_only_what_the_standard_parser_reads() {
    for (s, want) in [
        ("127.0.0.1", Some([127, 0, 0, 1])),
        ("0.0.0.0", Some([0, 0, 0, 0])),
        ("255.255.255.255", Some([255, 255, 255, 255])),
        ("10.20.30.40", Some([10, 20, 30, 40])),
        ("256.0.0.1", None),
        ("01.2.3.4", None),
        ("1.2.3.00", None),
        ("1.2.3", None),
        ("1.2.3.4.", None),
        ("1..3.4", None),
        (" 1.2.3.4", None),
        ("1.2.3.4 ", None),
        ("1.2.3.4:80", None),
        ("1.2.3.0004", None),
        ("::1", None),
        ("", None),
    ] {
        assert_eq!(dotted_quad(s.as_bytes()), want.map(Ipv4Addr::from), "{s:?}");
    }
    // Whatever it accepts, the standard parser reads the same; and it accepts every
    // canonical address the sweep builds.
    const POOL: &[u8] = b"0123456789..x:";
    let mut state = 3;
    for _ in 0..50_000 {
        let len = (next(&mut state) % 17) as usize;
        let s: String = (0..len)
            .map(|_| char::from(POOL[(next(&mut state) as usize) % POOL.len()]))
            .collect();
        if let Some(ip) = dotted_quad(s.as_bytes()) {
            assert_eq!(s.parse::<Ipv4Addr>().ok(), Some(ip), "{s:?}");
        }
        let ip = Ipv4Addr::from(next(&mut state) as u32);
        assert_eq!(dotted_quad(ip.to_string().as_bytes()), Some(ip));
    }
    // And the address a line yields is unchanged, by either path.
    for s in [
        "127.0.0.1",
        " 127.0.0.1 ",
        "01.2.3.4",
        "[::1]:80",
        "1.2.3.4:80",
        "::ffff:1.2.3.4",
    ] {
        let old = s.trim().parse::<IpAddr>().ok().or_else(|| {
            s.trim()
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip())
        });
        assert_eq!(parse_ip(s), old, "{s:?}");
    }
}

#[test]
fn bearer_and_query_stripping_unchanged() {
    fn old_bearer(t: &str) -> &str {
        let t = t.trim();
        match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => t[7..].trim_start(),
            _ => t,
        }
    }
    for t in [
        "eyJ.a.b",
        "Bearer eyJ.a.b",
        "bearer  eyJ.a.b ",
        "BEARER x",
        "b",
        "bearer",
        " eyJ ",
        "eyJ\u{a0}",
        "\u{a0}eyJ",
        "tok\t",
        "é",
        "",
    ] {
        assert_eq!(strip_bearer(t), old_bearer(t), "{t:?}");
    }
    for (p, want) in [
        ("/a?b#c", "/a"),
        ("/a#c?b", "/a"),
        ("/é?x", "/é"),
        ("/a", "/a"),
        ("?", ""),
    ] {
        assert_eq!(strip_query(Cow::Borrowed(p)), want);
        assert_eq!(strip_query(Cow::Owned(p.to_owned())), want);
    }
}

#[test]
fn the_common_time_shape_reads_as_the_general_path_reads_it() {
    let base = "2027-01-15T08:00:01.550Z";
    assert_eq!(utc_millis(base.as_bytes()), any_time(base));
    assert!(utc_millis(base.as_bytes()).is_some());
    assert_eq!(
        utc_millis(b"2000-02-29T23:59:60.999Z"),
        any_time("2000-02-29T23:59:60.999Z")
    );
    // Mutants of the shape: whatever the fast path reads, the general path reads the
    // same; what it leaves, parse_time still reads as before.
    const POOL: &[u8] = b"0123456789-T:.Zz +t";
    let mut state = 9;
    let mut read = 0;
    for _ in 0..50_000 {
        let mut b = base.as_bytes().to_vec();
        for _ in 0..=(next(&mut state) % 2) {
            let pos = (next(&mut state) as usize) % b.len();
            b[pos] = POOL[(next(&mut state) as usize) % POOL.len()];
        }
        let s = std::str::from_utf8(&b).expect("ascii");
        if let Some(ms) = utc_millis(&b) {
            read += 1;
            assert_eq!(any_time(s), Some(ms), "{s}");
        }
        assert_eq!(parse_time(s), any_time(s), "{s}");
    }
    assert!(read > 10_000, "{read}");
}
