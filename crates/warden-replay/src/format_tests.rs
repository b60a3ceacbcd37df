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
