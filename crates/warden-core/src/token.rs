//! Strict parsing of compact JWS tokens (`header.payload.signature`).
//!
//! Parsing never verifies anything; it only refuses what no honest issuer sends:
//! anything but three non-empty base64url segments without padding, a header that is
//! not a JSON object, `alg` outside the supported set (so `none` in any spelling is
//! refused here), key-fetching headers (`jku`, `x5u`, `jwk`, `x5c`) and `crit`.
//! Warden never fetches a key named inside a token: the registry is the only source.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::error::Malformed;

/// The JWS header fields warden reads. Everything else in the header is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The signing algorithm, one of the supported set.
    pub alg: Algorithm,
    /// The key id; tokens without one are refused by the verifier.
    pub kid: Option<String>,
}

/// A token split into its parts, header decoded, payload decoded to a JSON object.
#[derive(Debug, Clone)]
pub struct ParsedToken<'a> {
    /// The decoded header.
    pub header: Header,
    /// The payload claims.
    pub claims: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The third segment, still base64url.
    pub signature_b64: &'a str,
}

/// Algorithms warden accepts. `alg` values outside this list (including every spelling
/// of `none`) are refused before any key is looked up.
pub const SUPPORTED_ALGS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// Parses the exact, case-sensitive JOSE name of an algorithm.
#[must_use]
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    SUPPORTED_ALGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
}

/// The JOSE name of an algorithm.
#[must_use]
pub fn alg_name(alg: Algorithm) -> &'static str {
    SUPPORTED_ALGS
        .iter()
        .find(|(_, a)| *a == alg)
        .map(|(n, _)| *n)
        .unwrap_or("unknown")
}

/// Header parameters that name or carry a key. A token carrying one is refused: honouring
/// them lets the token choose its own key, and warden never fetches anything.
const KEY_CARRYING_HEADERS: &[&str] = &["jku", "x5u", "jwk", "x5c"];

fn is_b64url(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_segment(segment: &str, which: &'static str) -> Result<Vec<u8>, Malformed> {
    if segment.is_empty() {
        return Err(Malformed::EmptySegment(which));
    }
    if !is_b64url(segment) {
        return Err(Malformed::Base64(which));
    }
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Malformed::Base64(which))
}

/// Splits and decodes a compact JWS. `max_len` bounds the work done on hostile input.
///
/// ```
/// use warden_core::token::parse;
/// assert!(parse("a.b", 8192).is_err());
/// assert!(parse("eyJhbGciOiJub25lIn0.e30.", 8192).is_err()); // alg none
/// ```
pub fn parse(token: &str, max_len: usize) -> Result<ParsedToken<'_>, Malformed> {
    if token.len() > max_len {
        return Err(Malformed::TooLong {
            len: token.len(),
            max: max_len,
        });
    }
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::Segments(token.matches('.').count() + 1));
    };
    let header_bytes = decode_segment(h, "header")?;
    let payload_bytes = decode_segment(p, "payload")?;
    if s.is_empty() {
        return Err(Malformed::EmptySegment("signature"));
    }
    if !is_b64url(s) {
        return Err(Malformed::Base64("signature"));
    }
    let header_json: Map<String, Value> =
        serde_json::from_slice(&header_bytes).map_err(|_| Malformed::Json("header"))?;
    let header = read_header(&header_json)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload_bytes).map_err(|_| Malformed::Json("payload"))?;
    Ok(ParsedToken {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature_b64: s,
    })
}

fn read_header(json: &Map<String, Value>) -> Result<Header, Malformed> {
    let alg = match json.get("alg") {
        Some(Value::String(name)) => {
            parse_alg(name).ok_or_else(|| Malformed::Alg(truncate(name)))?
        }
        Some(other) => return Err(Malformed::Alg(truncate(&other.to_string()))),
        None => return Err(Malformed::Alg(String::from("<missing>"))),
    };
    for name in KEY_CARRYING_HEADERS {
        if json.contains_key(*name) {
            return Err(Malformed::KeyInHeader(name));
        }
    }
    if json.contains_key("crit") {
        return Err(Malformed::Crit);
    }
    let kid = match json.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Malformed::Kid),
    };
    Ok(Header { alg, kid })
}

/// Bounds a hostile value before it goes into an error message or a log line.
#[must_use]
pub fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reads a NumericDate claim (seconds since the epoch). Fractions are truncated; negative,
/// non-finite or non-numeric values are an error carrying the claim's name.
pub fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, Malformed> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1e15).contains(&f) => Ok(Some(f as u64)),
                    _ => Err(Malformed::Claim(name)),
                }
            }
        }
        Some(_) => Err(Malformed::Claim(name)),
    }
}

/// Reads a string claim; a present claim of another type is an error.
pub fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, Malformed> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Malformed::ClaimNamed(truncate(name))),
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(numeric_date(&p.claims, "exp"), Ok(Some(5)));
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
}
