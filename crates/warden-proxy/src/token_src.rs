//! Finding the token in a request.
//!
//! Every place the configuration names is read (the bearer header, the cookie), and every
//! copy counts: a request carrying two different tokens (two `Authorization` headers, a
//! cookie twice, a header and a cookie that differ) is refused as malformed, because
//! warden would check one and the upstream might honour the other.

use http::HeaderMap;
use warden_config::model::TokenSource;

/// What the request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// No token anywhere.
    None,
    /// Exactly one distinct token.
    One(&'a str),
    /// Several different tokens, or a header that is not `Bearer <token>`.
    Ambiguous,
}

/// Reads the token from the configured places.
#[must_use]
pub fn find<'a>(headers: &'a HeaderMap, src: &TokenSource) -> Found<'a> {
    let mut found: Option<&'a str> = None;
    let mut add = |t: &'a str| -> bool {
        match found {
            Some(prev) if prev != t => false,
            _ => {
                found = Some(t);
                true
            }
        }
    };
    if let Some(name) = &src.header {
        for v in headers.get_all(name.as_str()) {
            let Ok(s) = v.to_str() else {
                return Found::Ambiguous;
            };
            let s = s.trim();
            let Some((scheme, token)) = s.split_once(' ') else {
                return Found::Ambiguous;
            };
            if !scheme.eq_ignore_ascii_case("bearer") {
                // Another scheme (Basic...) is not ours to judge; leave it to the upstream.
                continue;
            }
            let token = token.trim();
            if token.is_empty() || !add(token) {
                return Found::Ambiguous;
            }
        }
    }
    if let Some(cookie) = &src.cookie {
        // Read as bytes: only our cookie's value must be text. Another application's
        // cookie with a byte past ASCII does not make the request malformed, and the
        // whole header (a session token makes it most of a kilobyte) is not checked
        // byte by byte on every request.
        for v in headers.get_all(http::header::COOKIE) {
            let v = v.as_bytes();
            let mut start = 0;
            for end in memchr::memchr_iter(b';', v).chain(std::iter::once(v.len())) {
                let pair = v[start..end].trim_ascii();
                start = end + 1;
                let Some(eq) = memchr::memchr(b'=', pair) else {
                    continue;
                };
                if pair[..eq].trim_ascii() != cookie.as_bytes() {
                    continue;
                }
                let Ok(val) = std::str::from_utf8(pair[eq + 1..].trim_ascii()) else {
                    return Found::Ambiguous;
                };
                let val = val.trim_matches('"');
                if val.is_empty() || !add(val) {
                    return Found::Ambiguous;
                }
            }
        }
    }
    match found {
        Some(t) => Found::One(t),
        None => Found::None,
    }
}

/// Finds a cookie's value in `Set-Cookie` header values.
#[must_use]
pub fn set_cookie_value<'a>(values: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    values
        .filter_map(|v| {
            let first = v.split(';').next()?;
            let (k, val) = first.split_once('=')?;
            (k.trim() == name).then(|| val.trim().trim_matches('"'))
        })
        .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> TokenSource {
        TokenSource {
            header: Some("authorization".into()),
            cookie: Some("session".into()),
        }
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().expect("value"));
        }
        m
    }

    #[test]
    fn finds_bearer_or_cookie() {
        assert_eq!(
            find(&h(&[("authorization", "Bearer abc")]), &src()),
            Found::One("abc")
        );
        assert_eq!(
            find(&h(&[("authorization", "bearer  abc ")]), &src()),
            Found::One("abc")
        );
        assert_eq!(
            find(&h(&[("cookie", "a=1; session=xyz; b=2")]), &src()),
            Found::One("xyz")
        );
        assert_eq!(
            find(&h(&[("authorization", "Basic Zm9v")]), &src()),
            Found::None
        );
        assert_eq!(find(&HeaderMap::new(), &src()), Found::None);
        // The same token in both places is fine.
        assert_eq!(
            find(
                &h(&[("authorization", "Bearer t"), ("cookie", "session=t")]),
                &src()
            ),
            Found::One("t")
        );
    }

    #[test]
    fn two_different_tokens_are_ambiguous() {
        assert_eq!(
            find(
                &h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                &src()
            ),
            Found::Ambiguous
        );
        assert_eq!(
            find(&h(&[("cookie", "session=a; session=b")]), &src()),
            Found::Ambiguous
        );
        assert_eq!(
            find(
                &h(&[("authorization", "Bearer a"), ("cookie", "session=b")]),
                &src()
            ),
            Found::Ambiguous
        );
        assert_eq!(
            find(&h(&[("authorization", "Bearer")]), &src()),
            Found::Ambiguous
        );
    }

    #[test]
    fn cookies_are_read_as_they_were_as_text() {
        // Each case against the reading of the header as text that came before.
        let text = |header: &str| -> Found<'static> {
            let mut found = Found::None;
            for pair in header.split(';') {
                let Some((k, val)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim() == "session" {
                    let val = val.trim().trim_matches('"');
                    found = match found {
                        _ if val.is_empty() => return Found::Ambiguous,
                        Found::One(prev) if prev != val => return Found::Ambiguous,
                        _ => Found::One(Box::leak(val.to_owned().into_boxed_str())),
                    };
                }
            }
            found
        };
        for header in [
            "session=abc",
            " session = abc ; a=1",
            "a=1;session=\"abc\";b",
            "session=\"\"",
            "session=",
            "session=a; session=a",
            "session=a; session=b",
            "sessions=a; xsession=b",
            ";;=;session=x=y;",
            "session=\"\"abc\"",
            "\tsession\t=\tabc\t",
        ] {
            assert_eq!(
                find(&h(&[("cookie", header)]), &src()),
                text(header),
                "{header:?}"
            );
        }
    }

    #[test]
    fn another_cookie_past_ascii_does_not_make_the_request_malformed() {
        let mut m = HeaderMap::new();
        let v = http::HeaderValue::from_bytes(b"pref=caf\xc3\xa9; session=tok").expect("value");
        m.append("cookie", v);
        assert_eq!(find(&m, &src()), Found::One("tok"));
        // Our own cookie must still be text.
        let mut m = HeaderMap::new();
        let v = http::HeaderValue::from_bytes(b"session=t\xffk").expect("value");
        m.append("cookie", v);
        assert_eq!(find(&m, &src()), Found::Ambiguous);
    }

    #[test]
    fn set_cookie() {
        let v = ["other=1; Path=/", "session=tok; HttpOnly; Secure"];
        assert_eq!(set_cookie_value(v.iter().copied(), "session"), Some("tok"));
        assert_eq!(set_cookie_value(v.iter().copied(), "nope"), None);
    }
}
