//! Request path normalization for route matching.
//!
//! Warden classifies a request by its path, and the upstream routes it by its own reading
//! of the same path. If the two readings differ, a protected page can be reached under a
//! path warden thinks is open (`//account/addresses`, `/account/./addresses`,
//! `/x/../account/addresses`, `/%61ccount/addresses`, `/account;x=1/addresses` for
//! servlet containers). So warden matches on a normalized path, built the way the most
//! lenient upstream would read it:
//! percent-escapes decoded, empty segments dropped, `.` and `..` resolved (never above the
//! root), `;params` stripped from each segment, and optionally lower-cased.
//! A path whose meaning depends on the reader (an encoded `/`, `\`, a NUL or other control
//! byte, or a bad escape) is refused with 400. The request is forwarded with its path
//! unchanged.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// An encoded `/` or `\`, a backslash, or a control byte.
    Ambiguous,
}

/// Whether `raw` is already normal: printable ASCII with no `%`, `;` or `\\`, no `//`
/// or `/.`, and (when folding case) no upper case. Every request asks it, so it is
/// written as two folds over the bytes without an early exit, which the compiler turns
/// into vector compares; a path of up to [`PADDED`] bytes (nearly all) is first copied
/// into a buffer of that size padded with a plain byte, so that the folds run a fixed
/// number of vector steps and no byte-at-a-time tail. (A byte-at-a-time loop that
/// returned at the first bad byte cost about 380 instructions a request in a log replay,
/// three passes and two substring searches before it 3 % of the replay's instructions.)
fn is_plain(raw: &[u8], lowercase: bool) -> bool {
    match raw.len() {
        n if n <= PADDED => {
            // `a` is plain in every respect and makes no pair with a slash before it;
            // one byte more than `PADDED`, so that there are `PADDED` pairs too (a
            // multiple of the vector width, like the bytes).
            let mut padded = [b'a'; PADDED + 1];
            padded[..n].copy_from_slice(raw);
            plain_bytes(&padded[..PADDED], &padded[1..], lowercase)
        }
        _ => plain_bytes(raw, raw.get(1..).unwrap_or_default(), lowercase),
    }
}

/// Paths up to this long are tested in a padded copy (see [`is_plain`]).
const PADDED: usize = 64;

/// [`is_plain`] of `raw`, whose bytes shifted by one are `next` (the pairs are those of
/// the shorter of the two).
#[inline(always)]
fn plain_bytes(raw: &[u8], next: &[u8], lowercase: bool) -> bool {
    let fold_upper = u8::from(lowercase);
    let bad_byte = raw.iter().fold(0u8, |acc, &b| {
        acc | u8::from(!b.is_ascii_graphic())
            | u8::from(b == b'%')
            | u8::from(b == b';')
            | u8::from(b == b'\\')
            | (u8::from(b.is_ascii_uppercase()) & fold_upper)
    });
    // A slash followed by a slash or a dot.
    let bad_pair = raw.iter().zip(next).fold(0u8, |acc, (&a, &b)| {
        acc | (u8::from(a == b'/') & (u8::from(b == b'/') | u8::from(b == b'.')))
    });
    (bad_byte | bad_pair) == 0
}

/// Normalizes `raw` (the path part, without the query) for matching.
pub fn normalize(raw: &str, lowercase: bool) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Most paths are already normal: nothing to decode, no empty or dot segments, no
    // parameters. They are borrowed as they are, without an allocation.
    if is_plain(raw.as_bytes(), lowercase) {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = (h * 16 + l) as u8;
            if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                return Err(PathError::Ambiguous);
            }
            decoded.push(v);
            i += 3;
        } else {
            if b == b'\\' || b < 0x20 || b == 0x7f {
                return Err(PathError::Ambiguous);
            }
            decoded.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8_lossy(&decoded);
    let trailing = text.ends_with('/') && text.len() > 1;
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(text.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    if lowercase {
        path.make_ascii_lowercase();
    }
    Ok(Cow::Owned(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_readings_all_normalize_to_the_protected_path() {
        for raw in [
            "/account/addresses",
            "//account/addresses",
            "/account//addresses",
            "/account/./addresses",
            "/x/../account/addresses",
            "/../account/addresses",
            "/%61ccount/addresses",
            "/account;jsessionid=1/addresses",
            "/account/addresses;x",
        ] {
            assert_eq!(
                normalize(raw, false).as_deref(),
                Ok("/account/addresses"),
                "{raw}"
            );
        }
        assert_eq!(
            normalize("/Account/Addresses", true).as_deref(),
            Ok("/account/addresses")
        );
        assert_eq!(normalize("/account/", false).as_deref(), Ok("/account/"));
        assert_eq!(normalize("/", false).as_deref(), Ok("/"));
        assert_eq!(normalize("/..", false).as_deref(), Ok("/"));
        // The common case borrows.
        assert!(matches!(
            normalize("/account/addresses", false),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/Account", true), Ok(Cow::Owned(_))));
        assert_eq!(normalize("/a/b/", false).as_deref(), Ok("/a/b/"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(
            normalize("/account%2faddresses", false),
            Err(PathError::Ambiguous)
        );
        assert_eq!(
            normalize("/account%5caddresses", false),
            Err(PathError::Ambiguous)
        );
        assert_eq!(
            normalize("/account\\addresses", false),
            Err(PathError::Ambiguous)
        );
        assert_eq!(normalize("/a%00b", false), Err(PathError::Ambiguous));
        assert_eq!(normalize("/a%zz", false), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4", false), Err(PathError::BadEscape));
        assert_eq!(normalize("*", false), Err(PathError::NotAbsolute));
    }

    /// The test `is_plain` replaced: three passes and two substring searches.
    fn plain_by_passes(raw: &str, lowercase: bool) -> bool {
        let clean_bytes = raw
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b'\\'));
        let needs_folding = lowercase && raw.bytes().any(|b| b.is_ascii_uppercase());
        clean_bytes && !raw.contains("//") && !raw.contains("/.") && !needs_folding
    }

    #[test]
    fn the_one_pass_plain_test_agrees_with_the_three_passes() {
        // Every path of up to five characters after the leading slash over an alphabet
        // holding each case the test tells apart.
        let alphabet = ["/", ".", "a", "A", "%", ";", "\\", " ", "\u{7f}", "é", "-"];
        let mut paths = vec![String::from("/")];
        let mut start = 0;
        for _ in 0..5 {
            let end = paths.len();
            for i in start..end {
                for c in alphabet {
                    let p = format!("{}{c}", paths[i]);
                    paths.push(p);
                }
            }
            start = end;
        }
        let mut plain = 0;
        for p in &paths {
            for lowercase in [false, true] {
                let want = plain_by_passes(p, lowercase);
                assert_eq!(is_plain(p.as_bytes(), lowercase), want, "{p:?} {lowercase}");
                plain += usize::from(want);
            }
        }
        // Both answers occur (the alphabet is not all bad).
        assert!(
            plain > 1000 && plain < paths.len(),
            "{plain} of {}",
            paths.len()
        );
        // Longer paths, where the vector steps run (the short ones above are all tail):
        // plain ones with one bad byte or pair at every position, and random ones.
        // (The first base is padded, the second is not: see `PADDED`.)
        for base in [
            "/account/entrance-codes/0123456789-abcdef/",
            "/account/entrance-codes/x-y-z/0123456789/abcdefghijklmnopqrstuvwxyz/",
        ] {
            assert!(is_plain(base.as_bytes(), true));
            for at in 1..=base.len() {
                for bad in ["/", ".", "A", "%", ";", "\\", " ", "\u{7f}", "é"] {
                    let p = format!("{}{bad}{}", &base[..at], &base[at..]);
                    for lowercase in [false, true] {
                        assert_eq!(
                            is_plain(p.as_bytes(), lowercase),
                            plain_by_passes(&p, lowercase),
                            "{p:?} {lowercase}"
                        );
                    }
                }
            }
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 16 + (x % 100) as usize;
            let mut p = String::from("/");
            let mut y = x;
            while p.len() < len {
                y = y.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                // Mostly good characters, so that plain paths occur too.
                let c = match y % 64 {
                    0 => alphabet[(y >> 8) as usize % alphabet.len()],
                    1..=8 => "/",
                    _ => "b",
                };
                p.push_str(c);
            }
            for lowercase in [false, true] {
                assert_eq!(
                    is_plain(p.as_bytes(), lowercase),
                    plain_by_passes(&p, lowercase),
                    "{p:?} {lowercase}"
                );
            }
        }
    }
}
