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

use crate::claims::RawHeader;
pub use crate::claims::{Claim, Claims};
use crate::error::Malformed;

/// The JWS header fields warden reads. Everything else in the header is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The signing algorithm, one of the supported set.
    pub alg: Algorithm,
    /// The key id; tokens without one are refused by the verifier.
    pub kid: Option<String>,
}

/// A token split into its parts, header decoded, payload read as a JSON object.
#[derive(Debug, Clone)]
pub struct ParsedToken<'a> {
    /// The decoded header.
    pub header: Header,
    /// The payload claims.
    pub claims: Claims,
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

/// Header parameters a token is refused for merely having: first those that name or carry
/// a key (honouring them lets the token choose its own key, and warden never fetches
/// anything), then `crit` (no extension is understood). The fast header parse marks
/// exactly these ([`crate::claims`]).
pub(crate) const REFUSED_HEADERS: [&str; 5] = ["jku", "x5u", "jwk", "x5c", "crit"];

/// The key-carrying part of [`REFUSED_HEADERS`].
const KEY_CARRYING_HEADERS: &[&str] = REFUSED_HEADERS.split_at(4).0;

/// The base64url alphabet, by byte.
const B64URL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    t
};

fn is_b64url(segment: &str) -> bool {
    segment.bytes().all(|b| B64URL[usize::from(b)])
}

fn decode_segment(segment: &str, which: &'static str) -> Result<Vec<u8>, Malformed> {
    if segment.is_empty() {
        return Err(Malformed::EmptySegment(which));
    }
    // The decoder refuses every byte outside the alphabet and padding itself (the unit
    // test `the_decoder_refuses_what_is_b64url_refuses`), with the same error here.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Malformed::Base64(which))
}

/// A token's segments: header and payload decoded, the signing input, the signature.
struct Segments<'a> {
    header: Vec<u8>,
    payload: Vec<u8>,
    signing_input: &'a str,
    signature_b64: &'a str,
}

/// The three segments of a token, the header and payload decoded from base64url, with
/// the checks every parse makes before reading any JSON, in their order.
fn split(token: &str, max_len: usize) -> Result<Segments<'_>, Malformed> {
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
    Ok(Segments {
        header: header_bytes,
        payload: payload_bytes,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature_b64: s,
    })
}

/// Splits and decodes a compact JWS. `max_len` bounds the work done on hostile input.
///
/// The header and payload are read by [`Claims`]' own deserializers: they accept and
/// refuse exactly what reading them as `serde_json::Map`s does ([`parse_with_serde`], the
/// reference the fuzz target `token` and the unit tests compare with), at a fraction of
/// the cost.
///
/// ```
/// use warden_core::token::parse;
/// assert!(parse("a.b", 8192).is_err());
/// assert!(parse("eyJhbGciOiJub25lIn0.e30.", 8192).is_err()); // alg none
/// ```
pub fn parse(token: &str, max_len: usize) -> Result<ParsedToken<'_>, Malformed> {
    let s = split(token, max_len)?;
    let RawHeader { alg, kid, present } = RawHeader::parse(&s.header)?;
    let header = header_from(alg.as_ref(), |n| RawHeader::has(present, n), kid)?;
    let claims = Claims::parse(s.payload)?;
    Ok(ParsedToken {
        header,
        claims,
        signing_input: s.signing_input,
        signature_b64: s.signature_b64,
    })
}

/// [`parse`] as it was before [`Claims`]: header and payload decoded into
/// `serde_json::Map`s. The reference the faster parse is compared with (fuzz target
/// `token`, unit tests): the same tokens must parse, to the same header and claims, and
/// the same must fail with the same error.
pub fn parse_with_serde(
    token: &str,
    max_len: usize,
) -> Result<(Header, Map<String, Value>), Malformed> {
    let s = split(token, max_len)?;
    let header_json: Map<String, Value> =
        serde_json::from_slice(&s.header).map_err(|_| Malformed::Json("header"))?;
    let header = header_from(
        header_json.get("alg"),
        |n| header_json.contains_key(n),
        header_json.get("kid").cloned(),
    )?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&s.payload).map_err(|_| Malformed::Json("payload"))?;
    Ok((header, claims))
}

/// Parses `token` with [`parse`] and with [`parse_with_serde`] and describes the first
/// difference: a different error, one accepting what the other refuses, another header,
/// or a claim read differently by any of [`Claims`]' accessors (every claim the `Map`
/// holds, the registered ones, absent ones, `aud` against each of its strings). For the
/// fuzz target `token` and the unit tests.
pub fn check_against_serde(token: &str, max_len: usize) -> Result<(), String> {
    let new = parse(token, max_len);
    let old = parse_with_serde(token, max_len);
    let (p, (header, map)) = match (new, old) {
        (Err(a), Err(b)) if a == b => return Ok(()),
        (Ok(p), Ok(old)) => (p, old),
        (a, b) => return Err(format!("parse gave {a:?}, the Map parse {b:?}")),
    };
    if p.header != header {
        return Err(format!("header {:?}, the Map parse {header:?}", p.header));
    }
    let view = |v: &'_ Value| -> String {
        match v {
            Value::String(s) => format!("{:?}", Claim::String(s)),
            Value::Number(n) => format!("{:?}", Claim::Number(n)),
            Value::Bool(b) => format!("{:?}", Claim::Bool(*b)),
            _ => format!("{:?}", Claim::Other),
        }
    };
    let want: Vec<(&str, String)> = map.iter().map(|(k, v)| (k.as_str(), view(v))).collect();
    let got: Vec<(&str, String)> = p
        .claims
        .sorted()
        .into_iter()
        .map(|(k, v)| (k, format!("{v:?}")))
        .collect();
    if got != want {
        return Err(format!("claims {got:?}, the Map parse {want:?}"));
    }
    let extra = ["sub", "jti", "iss", "aud", "exp", "iat", "nbf", "", "zz"];
    for name in map.keys().map(String::as_str).chain(extra) {
        let got = p.claims.get(name).map(|v| format!("{v:?}"));
        if got != map.get(name).map(view) {
            return Err(format!("claim {name:?}: {got:?}"));
        }
        if p.claims.string(name) != string_claim(&map, name) {
            return Err(format!(
                "string claim {name:?}: {:?}",
                p.claims.string(name)
            ));
        }
    }
    for name in ["exp", "iat", "nbf", "sub", "aud", "zz"] {
        if p.claims.numeric_date(name) != numeric_date(&map, name) {
            return Err(format!("date {name:?}: {:?}", p.claims.numeric_date(name)));
        }
    }
    let mut auds: Vec<&str> = vec!["", "api", "zz"];
    match map.get("aud") {
        Some(Value::String(s)) => auds.push(s),
        Some(Value::Array(a)) => auds.extend(a.iter().filter_map(Value::as_str)),
        _ => {}
    }
    for aud in auds {
        let old = match map.get("aud") {
            Some(Value::String(s)) => s == aud,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(aud)),
            _ => false,
        };
        if p.claims.has_audience(aud) != old {
            return Err(format!("audience {aud:?}: {}", !old));
        }
    }
    Ok(())
}

/// The header from its `alg` and `kid` values and a test of which parameters it has.
fn header_from(
    alg: Option<&Value>,
    has: impl Fn(&str) -> bool,
    kid: Option<Value>,
) -> Result<Header, Malformed> {
    let alg = match alg {
        Some(Value::String(name)) => {
            parse_alg(name).ok_or_else(|| Malformed::Alg(truncate(name)))?
        }
        Some(other) => return Err(Malformed::Alg(truncate(&other.to_string()))),
        None => return Err(Malformed::Alg(String::from("<missing>"))),
    };
    for name in KEY_CARRYING_HEADERS {
        if has(name) {
            return Err(Malformed::KeyInHeader(name));
        }
    }
    if has("crit") {
        return Err(Malformed::Crit);
    }
    let kid = match kid {
        None => None,
        Some(Value::String(k)) => Some(k),
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

/// Reads a NumericDate claim of a `serde_json::Map` (seconds since the epoch), as
/// [`Claims::numeric_date`] does. Fractions are truncated; negative,
/// non-finite or non-numeric values are an error carrying the claim's name.
pub fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, Malformed> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => crate::claims::number_date(n, name).map(Some),
        Some(_) => Err(Malformed::Claim(name)),
    }
}

/// Reads a string claim of a `serde_json::Map`, as [`Claims::string`] does; a present
/// claim of another type is an error.
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
#[path = "token_tests.rs"]
mod tests;
