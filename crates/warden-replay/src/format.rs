//! Access-log formats: JSON lines with mapped field names, and the nginx/Apache combined
//! format with optional trailing fields.
//!
//! A line becomes a [`Request`] whose strings borrow from the line (a JSON string with
//! escapes is the only case that allocates), so reading a log costs no allocation per
//! line on the common path.
//!
//! ## Fields
//! What warden needs of a request is a set of *targets*: `time`, `ip`, `method`, `path`
//! (or `request`, the `"GET /path HTTP/1.1"` line), `token`, `account`, `label`,
//! `status` and `header:NAME`. A [`FieldMap`] says where each is found: the key of a
//! JSON object, or one of the combined format's fields (`host`, `ident`, `user`, `time`,
//! `request`, `status`, `bytes`, `referer`, `agent`, then `extra1`.. for fields logged
//! after the user agent, quoted or not).
//!
//! Times: RFC 3339 (`2026-01-02T03:04:05.123Z`, `+01:00` offsets, a space for the `T`),
//! the combined format's `10/Oct/2026:13:55:36 -0700`, or unix seconds or milliseconds
//! (a number, or a string of digits; values above 10^11 are milliseconds; fractions of
//! seconds as nginx's `$msec` writes them are kept).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use thiserror::Error;
use warden_core::json::BorrowedStr;

/// Most `header:NAME` targets one map can hold.
pub const MAX_HEADERS: usize = 4;
/// Most fields after the user agent that the combined format reads (`extra1`..).
pub const MAX_EXTRA: usize = 8;
/// Unix milliseconds above which a number is milliseconds rather than seconds
/// (10^11 seconds is the year 5138; 10^11 milliseconds is 1973).
const MS_THRESHOLD: f64 = 1e11;

/// Why a line was not read. Values are truncated to 80 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LineError {
    /// Not a JSON object (the parser's message).
    #[error("not a JSON object: {0}")]
    Json(String),
    /// A required target is absent (or `-`, empty, null).
    #[error("no {0} (map it with --field {0}=NAME)")]
    Missing(&'static str),
    /// The time is in no known form.
    #[error("time {0:?} is not RFC 3339, a combined-log time or unix seconds/milliseconds")]
    Time(String),
    /// The client address is not an IP address.
    #[error("client address {0:?} is not an IP address")]
    Ip(String),
    /// The request line is not `METHOD /path[?query] [PROTOCOL]`.
    #[error("request {0:?} is not `METHOD /path HTTP/x`")]
    RequestLine(String),
    /// The status is not a number from 100 to 999.
    #[error("status {0:?} is not an HTTP status")]
    Status(String),
    /// The line does not have the combined format's shape.
    #[error("not in the combined format: {0}")]
    Combined(String),
    /// The line is not UTF-8.
    #[error("the line is not UTF-8")]
    Utf8,
}

/// Why a field mapping was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MapError {
    /// Not `TARGET=SOURCE`.
    #[error("field mapping {0:?} is not TARGET=SOURCE (e.g. ip=remote_addr)")]
    Shape(String),
    /// An unknown target.
    #[error("unknown target {0:?}: expected time, ip, method, path, request, token, account, label, status or header:NAME")]
    Target(String),
    /// An unknown combined-format field.
    #[error("unknown combined-format field {0:?}: expected host, ident, user, time, request, status, bytes, referer, agent or extra1..extra8")]
    Source(String),
    /// More `header:` targets than [`MAX_HEADERS`].
    #[error("at most {MAX_HEADERS} header targets, got {0}")]
    TooManyHeaders(usize),
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// One JSON object per line.
    JsonLines,
    /// `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"` and optional fields after.
    Combined,
}

impl Format {
    /// `json` or `combined`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" | "jsonl" | "json-lines" => Some(Self::JsonLines),
            "combined" | "nginx" | "apache" => Some(Self::Combined),
            _ => None,
        }
    }
}

/// What a log field feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Request time.
    Time,
    /// Client address.
    Ip,
    /// Method.
    Method,
    /// Path, with or without the query.
    Path,
    /// `METHOD /path PROTOCOL`.
    Request,
    /// The session token (`Bearer ` prefix removed).
    Token,
    /// The account, when the token is not logged.
    Account,
    /// A label carried into the report (the simulator's `actor`: legit, forged...).
    Label,
    /// Response status the log recorded.
    Status,
    /// The n-th `header:NAME` target.
    Header(usize),
}

/// Where each target is found in a line.
#[derive(Debug, Clone)]
pub struct FieldMap {
    format: Format,
    /// (source name, target); later entries for a target replace earlier ones.
    entries: Vec<(Box<str>, Target)>,
    headers: Vec<Box<str>>,
    /// `entries` as the JSON scanner looks them up, in the same order.
    keys: Vec<JsonKey>,
    /// For the combined format: the target of each positional field.
    positions: [Option<Target>; 9 + MAX_EXTRA],
}

const COMBINED_FIELDS: [&str; 9] = [
    "host", "ident", "user", "time", "request", "status", "bytes", "referer", "agent",
];

impl FieldMap {
    /// The default map of a format: JSON keys named like the targets (`time`, `ip`,
    /// `method`, `path`, `token`, `account`, `label`, `status`); for the combined format,
    /// `ip=host time=time request=request status=status header:referer=referer
    /// header:user-agent=agent`.
    #[must_use]
    pub fn new(format: Format) -> Self {
        let mut m = Self {
            format,
            entries: Vec::new(),
            headers: Vec::new(),
            keys: Vec::new(),
            positions: [None; 9 + MAX_EXTRA],
        };
        let defaults: &[(&str, &str)] = match format {
            Format::JsonLines => &[
                ("time", "time"),
                ("ip", "ip"),
                ("method", "method"),
                ("path", "path"),
                ("request", "request"),
                ("token", "token"),
                ("account", "account"),
                ("label", "label"),
                ("status", "status"),
            ],
            Format::Combined => &[
                ("ip", "host"),
                ("time", "time"),
                ("request", "request"),
                ("status", "status"),
                ("header:referer", "referer"),
                ("header:user-agent", "agent"),
            ],
        };
        for (t, s) in defaults {
            // The defaults are valid by construction.
            let _ = m.set(t, s);
        }
        m
    }

    /// The format.
    #[must_use]
    pub fn format(&self) -> Format {
        self.format
    }

    /// Applies `TARGET=SOURCE` (`ip=remote_addr`, `token=extra1`, `header:x-device=dev`).
    /// An empty source unmaps the target.
    pub fn apply(&mut self, spec: &str) -> Result<(), MapError> {
        let (t, s) = spec
            .split_once('=')
            .ok_or_else(|| MapError::Shape(cut(spec)))?;
        self.set(t.trim(), s.trim())
    }

    fn set(&mut self, target: &str, source: &str) -> Result<(), MapError> {
        let t = match target {
            "time" => Target::Time,
            "ip" => Target::Ip,
            "method" => Target::Method,
            "path" => Target::Path,
            "request" => Target::Request,
            "token" => Target::Token,
            "account" => Target::Account,
            "label" => Target::Label,
            "status" => Target::Status,
            h => match h.strip_prefix("header:") {
                Some(name) if !name.is_empty() => {
                    let name = name.to_ascii_lowercase();
                    match self.headers.iter().position(|n| **n == *name) {
                        Some(i) => Target::Header(i),
                        None => {
                            if self.headers.len() == MAX_HEADERS {
                                return Err(MapError::TooManyHeaders(MAX_HEADERS + 1));
                            }
                            self.headers.push(name.into());
                            Target::Header(self.headers.len() - 1)
                        }
                    }
                }
                _ => return Err(MapError::Target(cut(target))),
            },
        };
        if self.format == Format::Combined && !source.is_empty() {
            combined_position(source).ok_or_else(|| MapError::Source(cut(source)))?;
        }
        self.entries.retain(|(_, e)| *e != t);
        if !source.is_empty() {
            self.entries.push((source.into(), t));
        }
        self.keys = self
            .entries
            .iter()
            .map(|(s, t)| JsonKey {
                word: prefix_word(s.as_bytes()),
                name: s.clone(),
                target: *t,
            })
            .collect();
        self.positions = [None; 9 + MAX_EXTRA];
        if self.format == Format::Combined {
            for (s, t) in &self.entries {
                if let Some(p) = combined_position(s) {
                    self.positions[p] = Some(*t);
                }
            }
        }
        Ok(())
    }

    /// Names of the `header:` targets, lower-case, by index.
    #[must_use]
    pub fn header_names(&self) -> &[Box<str>] {
        &self.headers
    }

    /// Whether the token target is mapped.
    #[must_use]
    pub fn has(&self, target: Target) -> bool {
        self.entries.iter().any(|(_, t)| *t == target)
    }

    /// The target a JSON key feeds (the first entry of that name).
    fn json_target(&self, key: &[u8]) -> Option<Target> {
        self.json_target_word(key, prefix_word(key))
    }

    /// [`FieldMap::json_target`] with the key's [`prefix_word`] already at hand: one
    /// integer comparison per entry rules out nearly every name.
    fn json_target_word(&self, key: &[u8], word: u64) -> Option<Target> {
        self.keys
            .iter()
            .find(|k| {
                k.word == word
                    && k.name.len() == key.len()
                    && (key.len() <= 8 || k.name.as_bytes()[8..] == key[8..])
            })
            .map(|k| k.target)
    }

    /// Reads one line (without its newline).
    ///
    /// A JSON line is read by a scanner over its bytes (`scan_object`) when it is a
    /// flat object of strings without escapes, integers, `true`, `false` and `null`, the
    /// shape of nearly every access log; any other line (escapes, fractions, nested
    /// values, bad syntax, invalid UTF-8) goes to serde_json, which decides it and words
    /// its errors. Both read an accepted line the same way (the `log_line` fuzz target
    /// checks it).
    pub fn parse<'a>(&self, line: &'a [u8]) -> Result<Request<'a>, LineError> {
        let mut p = Partial::default();
        match self.format {
            Format::JsonLines => {
                if !scan_object(self, line, &mut p) {
                    p = self.serde_partial(line)?;
                }
            }
            Format::Combined => {
                let text = std::str::from_utf8(line).map_err(|_| LineError::Utf8)?;
                self.combined(text, &mut p)?;
            }
        }
        p.finish()
    }

    /// Reads a JSON line with serde_json only: the reference [`FieldMap::parse`] is
    /// checked against (fuzz target `log_line`). Same result, slower.
    #[doc(hidden)]
    pub fn parse_with_serde<'a>(&self, line: &'a [u8]) -> Result<Request<'a>, LineError> {
        match self.format {
            Format::JsonLines => self.serde_partial(line)?.finish(),
            Format::Combined => self.parse(line),
        }
    }

    fn serde_partial<'a>(&self, line: &'a [u8]) -> Result<Partial<'a>, LineError> {
        let mut de = serde_json::Deserializer::from_slice(line);
        let p = LineSeed { map: self }
            .deserialize(&mut de)
            .map_err(|e| LineError::Json(cut(&e.to_string())))?;
        de.end().map_err(|e| LineError::Json(cut(&e.to_string())))?;
        Ok(p)
    }

    fn combined<'a>(&self, line: &'a str, p: &mut Partial<'a>) -> Result<(), LineError> {
        let b = line.as_bytes();
        let mut i = 0;
        let mut pos = 0;
        let bad = |what: &str| LineError::Combined(what.to_owned());
        while i < b.len() && pos < 9 + MAX_EXTRA {
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let (value, next) = match (pos, b[i]) {
                (3, b'[') => {
                    let end = line[i..]
                        .find(']')
                        .ok_or_else(|| bad("no ] after the time"))?;
                    (&line[i + 1..i + end], i + end + 1)
                }
                (3, _) => return Err(bad("the time is not in [brackets]")),
                (_, b'"') => {
                    let mut j = i + 1;
                    while j < b.len() && b[j] != b'"' {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                    if j >= b.len() {
                        return Err(bad("unterminated quoted field"));
                    }
                    (&line[i + 1..j], j + 1)
                }
                (4, _) => return Err(bad("the request is not quoted")),
                _ => {
                    let end = line[i..].find(' ').map_or(b.len(), |e| i + e);
                    (&line[i..end], end)
                }
            };
            if let Some(t) = self.positions[pos] {
                p.put(t, Scalar::Str(Cow::Borrowed(value)));
            }
            i = next;
            pos += 1;
        }
        if pos < 6 {
            return Err(bad(
                "fewer than six fields (host ident user [time] \"request\" status)",
            ));
        }
        Ok(())
    }
}

/// A JSON source name as the scanner compares it.
#[derive(Debug, Clone)]
struct JsonKey {
    /// [`prefix_word`] of the name.
    word: u64,
    name: Box<str>,
    target: Target,
}

/// The first eight bytes of a name (fewer: zero-padded) as one little-endian integer.
fn prefix_word(name: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = name.len().min(8);
    w[..n].copy_from_slice(&name[..n]);
    u64::from_le_bytes(w)
}

fn combined_position(source: &str) -> Option<usize> {
    if let Some(p) = COMBINED_FIELDS.iter().position(|f| *f == source) {
        return Some(p);
    }
    let n: usize = source.strip_prefix("extra")?.parse().ok()?;
    (1..=MAX_EXTRA).contains(&n).then_some(8 + n)
}

/// A request read from a log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Client address.
    pub ip: IpAddr,
    /// Method, as logged.
    pub method: Cow<'a, str>,
    /// Path as logged, without the query (not yet normalized).
    pub path: Cow<'a, str>,
    /// The token, `Bearer ` removed.
    pub token: Option<Cow<'a, str>>,
    /// The account.
    pub account: Option<Cow<'a, str>>,
    /// The label.
    pub label: Option<Cow<'a, str>>,
    /// The logged status.
    pub status: Option<u16>,
    /// Values of the map's `header:` targets, by index.
    pub headers: [Option<Cow<'a, str>>; MAX_HEADERS],
}

/// A JSON value warden reads: strings borrow from the line.
#[derive(Debug)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(u64),
    Float(f64),
    Null,
}

impl<'a> Scalar<'a> {
    /// The value as text; `None` for null, empty and `-` (nginx's "no value").
    #[inline(always)]
    fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) if s.is_empty() || s == "-" => None,
            Scalar::Str(s) => Some(s),
            Scalar::Int(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Float(f) => Some(Cow::Owned(f.to_string())),
            Scalar::Null => None,
        }
    }
}

#[derive(Default)]
struct Partial<'a> {
    time: Option<Scalar<'a>>,
    ip: Option<Scalar<'a>>,
    method: Option<Scalar<'a>>,
    path: Option<Scalar<'a>>,
    request: Option<Scalar<'a>>,
    token: Option<Scalar<'a>>,
    account: Option<Scalar<'a>>,
    label: Option<Scalar<'a>>,
    status: Option<Scalar<'a>>,
    headers: [Option<Scalar<'a>>; MAX_HEADERS],
}

impl<'a> Partial<'a> {
    #[inline(always)]
    fn put(&mut self, t: Target, v: Scalar<'a>) {
        let slot = match t {
            Target::Time => &mut self.time,
            Target::Ip => &mut self.ip,
            Target::Method => &mut self.method,
            Target::Path => &mut self.path,
            Target::Request => &mut self.request,
            Target::Token => &mut self.token,
            Target::Account => &mut self.account,
            Target::Label => &mut self.label,
            Target::Status => &mut self.status,
            Target::Header(i) => match self.headers.get_mut(i) {
                Some(s) => s,
                None => return,
            },
        };
        *slot = Some(v);
    }

    fn finish(self) -> Result<Request<'a>, LineError> {
        let text = |s: Option<Scalar<'a>>| s.and_then(Scalar::text);
        let time_ms = match self.time {
            None => return Err(LineError::Missing("time")),
            Some(Scalar::Int(n)) => unix_number(n as f64),
            Some(Scalar::Float(f)) => unix_number(f),
            Some(Scalar::Null) => return Err(LineError::Missing("time")),
            Some(Scalar::Str(s)) => parse_time(&s).ok_or_else(|| LineError::Time(cut(&s)))?,
        };
        let ip_text = text(self.ip).ok_or(LineError::Missing("ip"))?;
        let ip = parse_ip(&ip_text).ok_or_else(|| LineError::Ip(cut(&ip_text)))?;
        let (method, path) = match (text(self.method), text(self.path)) {
            (Some(m), Some(p)) => (m, p),
            (m, p) => match text(self.request) {
                Some(r) => split_request(r)?,
                None if m.is_none() => return Err(LineError::Missing("method")),
                None => {
                    let _ = p;
                    return Err(LineError::Missing("path"));
                }
            },
        };
        let path = strip_query(path);
        let status = match self.status {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Int(n)) => Some(
                u16::try_from(n)
                    .ok()
                    .filter(|s| (100..1000).contains(s))
                    .ok_or_else(|| LineError::Status(n.to_string()))?,
            ),
            Some(other) => match other.text() {
                None => None,
                Some(s) => Some(
                    s.parse::<u16>()
                        .ok()
                        .filter(|s| (100..1000).contains(s))
                        .ok_or_else(|| LineError::Status(cut(&s)))?,
                ),
            },
        };
        let token = text(self.token).map(|t| match t {
            Cow::Borrowed(b) => Cow::Borrowed(strip_bearer(b)),
            Cow::Owned(o) => Cow::Owned(strip_bearer(&o).to_owned()),
        });
        let [h0, h1, h2, h3] = self.headers;
        Ok(Request {
            time_ms,
            ip,
            method,
            path,
            token,
            account: text(self.account),
            label: text(self.label),
            status,
            headers: [text(h0), text(h1), text(h2), text(h3)],
        })
    }
}

fn strip_bearer(t: &str) -> &str {
    // A bare token (the common case): nothing to trim at either end, no `Bearer `.
    if let (Some(f), Some(l)) = (t.as_bytes().first(), t.as_bytes().last()) {
        if f.is_ascii_graphic() && l.is_ascii_graphic() && !matches!(f, b'b' | b'B') {
            return t;
        }
    }
    let t = t.trim();
    match t.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => t[7..].trim_start(),
        _ => t,
    }
}

fn strip_query(p: Cow<'_, str>) -> Cow<'_, str> {
    // Bytes, not chars: an ASCII byte in UTF-8 is always that character.
    match memchr::memchr2(b'?', b'#', p.as_bytes()) {
        None => p,
        Some(i) => match p {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..i]),
            Cow::Owned(mut o) => {
                o.truncate(i);
                Cow::Owned(o)
            }
        },
    }
}

/// `GET /path?q HTTP/1.1` (or absolute-form `GET http://host/path HTTP/1.1`).
fn split_request(r: Cow<'_, str>) -> Result<(Cow<'_, str>, Cow<'_, str>), LineError> {
    fn split(r: &str) -> Option<(&str, &str)> {
        let mut it = r.split(' ').filter(|s| !s.is_empty());
        let method = it.next()?;
        let target = it.next()?;
        if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let path = if target.starts_with('/') {
            target
        } else {
            let rest = target
                .strip_prefix("http://")
                .or_else(|| target.strip_prefix("https://"))?;
            rest.find('/').map_or("/", |i| &rest[i..])
        };
        Some((method, path))
    }
    match r {
        Cow::Borrowed(b) => {
            let (m, p) = split(b).ok_or_else(|| LineError::RequestLine(cut(b)))?;
            Ok((Cow::Borrowed(m), Cow::Borrowed(p)))
        }
        Cow::Owned(o) => {
            let (m, p) = split(&o).ok_or_else(|| LineError::RequestLine(cut(&o)))?;
            Ok((Cow::Owned(m.to_owned()), Cow::Owned(p.to_owned())))
        }
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Some(ip) = dotted_quad(s.as_bytes()) {
        return Some(IpAddr::V4(ip));
    }
    let s = s.trim();
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The common case of [`parse_ip`] without the standard parser's generality: exactly
/// `a.b.c.d`, each 0..=255 in one to three digits without a leading zero; `None` for
/// anything else (which the standard parser then decides). Accepts only what
/// `Ipv4Addr::from_str` accepts, with the same value.
fn dotted_quad(b: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, o) in octets.iter_mut().enumerate() {
        if k > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v: u32 = 0;
        while let Some(d @ b'0'..=b'9') = b.get(i) {
            v = v * 10 + u32::from(d - b'0');
            i += 1;
            if i - start > 3 {
                return None;
            }
        }
        if i == start || (b[start] == b'0' && i - start > 1) {
            return None;
        }
        *o = u8::try_from(v).ok()?;
    }
    (i == b.len()).then(|| Ipv4Addr::from(octets))
}

fn unix_number(v: f64) -> u64 {
    if !v.is_finite() || v < 0.0 {
        return 0;
    }
    if v >= MS_THRESHOLD {
        v as u64
    } else {
        (v * 1000.0).round() as u64
    }
}

/// Parses a log time to unix milliseconds: RFC 3339, the combined format's
/// `10/Oct/2026:13:55:36 -0700`, or unix seconds or milliseconds as digits.
#[must_use]
pub fn parse_time(s: &str) -> Option<u64> {
    utc_millis(s.as_bytes()).or_else(|| any_time(s))
}

/// `YYYY-MM-DDTHH:MM:SS.sssZ` exactly, the time most JSON loggers (and warden) write,
/// without the general path's trimming and scanning; `None` for anything else, which
/// [`any_time`] then decides. Reads what [`rfc3339`] reads, the same way.
fn utc_millis(b: &[u8]) -> Option<u64> {
    let b: &[u8; 24] = b.try_into().ok()?;
    if b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let d = |i: usize| {
        let c = b[i].wrapping_sub(b'0');
        (c < 10).then_some(i64::from(c))
    };
    let two = |i: usize| Some(d(i)? * 10 + d(i + 1)?);
    let (y, mo, day) = (two(0)? * 100 + two(2)?, two(5)?, two(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let frac_ms = two(20)? * 10 + d(22)?;
    to_ms(
        days_from_civil(y, mo, day),
        two(11)?,
        two(14)?,
        two(17)?,
        frac_ms,
        0,
    )
}

/// [`parse_time`] in every form it reads.
fn any_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.first().is_some_and(u8::is_ascii_digit)
        && b.iter().all(|c| c.is_ascii_digit() || *c == b'.')
    {
        return s.parse::<f64>().ok().map(unix_number);
    }
    if b.len() >= 19 && b[4] == b'-' {
        return rfc3339(b);
    }
    if b.len() >= 20 && b[2] == b'/' {
        return combined_time(b);
    }
    None
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn to_ms(days: i64, h: i64, mi: i64, sec: i64, frac_ms: i64, offset_s: i64) -> Option<u64> {
    if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&sec) {
        return None;
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1000 + frac_ms).ok()
}

fn rfc3339(b: &[u8]) -> Option<u64> {
    let y = digits(&b[0..4])?;
    let mo = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    if b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let h = digits(&b[11..13])?;
    let mi = digits(&b[14..16])?;
    let sec = digits(&b[17..19])?;
    let mut i = 19;
    let mut frac_ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let f = &b[start..i.min(start + 3)];
        frac_ms = digits(f)? * [100, 10, 1][f.len() - 1];
    }
    let offset = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [s @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let v = digits(&[*h1, *h2])? * 3600 + digits(&[*m1, *m2])? * 60;
            if *s == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    to_ms(days_from_civil(y, mo, d), h, mi, sec, frac_ms, offset)
}

fn combined_time(b: &[u8]) -> Option<u64> {
    // 10/Oct/2026:13:55:36 -0700
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    if b.len() != 26
        || b[2] != b'/'
        || b[6] != b'/'
        || b[11] != b':'
        || b[14] != b':'
        || b[17] != b':'
    {
        return None;
    }
    let d = digits(&b[0..2])?;
    let mo = MONTHS.iter().position(|m| m[..] == b[3..6])? as i64 + 1;
    let y = digits(&b[7..11])?;
    let h = digits(&b[12..14])?;
    let mi = digits(&b[15..17])?;
    let sec = digits(&b[18..20])?;
    if b[20] != b' ' || !(1..=31).contains(&d) {
        return None;
    }
    let off = digits(&b[22..24])? * 3600 + digits(&b[24..26])? * 60;
    let off = match b[21] {
        b'+' => off,
        b'-' => -off,
        _ => return None,
    };
    to_ms(days_from_civil(y, mo, d), h, mi, sec, 0, off)
}

// === JSON reading: the scanner ===

/// JSON whitespace (RFC 8259), as serde_json skips it.
/// (Nearly every byte it meets is not whitespace: one comparison rules that out.)
#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if c > b' ' || !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Eight bytes of `b` from `i`, little-endian; `None` past the end.
fn word_at(b: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// The high bit of the first byte of `x` (little-endian) that is a quote, a backslash
/// or below 0x20 is set; bits above it may be set too (borrows), bits below never are.
fn stop_bits(x: u64) -> u64 {
    let quote = x ^ (LO * u64::from(b'"'));
    let backslash = x ^ (LO * u64::from(b'\\'));
    ((quote.wrapping_sub(LO) & !quote)
        | (backslash.wrapping_sub(LO) & !backslash)
        | (x.wrapping_sub(LO * 0x20) & !x))
        & HI
}

/// The index of the quote closing a string whose content starts at `i`; `None` at a
/// backslash, a control character or the end of the line (left to serde_json).
///
/// Eight bytes at a time, so that the short strings of a log line (keys, methods,
/// addresses, times) cost a few instructions each; past 32 bytes (a session token), a
/// line without control bytes (`plain`) goes on with `memchr2`, faster over long runs.
/// The last bytes of the line are read as one word ending at the line's end, shifted:
/// the zeros shifted in stop the scan as a control byte would, at or past the end.
#[inline(always)]
fn string_end(b: &[u8], i: usize, plain: bool) -> Option<usize> {
    let mut at = i;
    while let Some(x) = word_at(b, at) {
        let found = stop_bits(x);
        if found != 0 {
            let end = at + (found.trailing_zeros() / 8) as usize;
            return (b.get(end) == Some(&b'"')).then_some(end);
        }
        at += 8;
        if plain && at - i >= 32 {
            let end = at + memchr::memchr2(b'"', b'\\', b.get(at..)?)?;
            return (b.get(end) == Some(&b'"')).then_some(end);
        }
    }
    // Fewer than eight bytes left (`at > b.len() - 8`).
    let Some(base) = b.len().checked_sub(8) else {
        return short_string_end(b, at);
    };
    let shift = at.checked_sub(base)?;
    if shift >= 8 {
        return None;
    }
    let found = stop_bits(word_at(b, base)? >> (8 * shift));
    let end = at + (found.trailing_zeros() / 8) as usize;
    (b.get(end) == Some(&b'"')).then_some(end)
}

/// [`string_end`] byte by byte, for lines shorter than eight bytes.
fn short_string_end(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => return Some(i),
            b'\\' | 0..=0x1f => return None,
            _ => i += 1,
        }
    }
    None
}

/// Whether the line has no byte below 0x20 (no control character, no tab): then a
/// string ends at the first quote or backslash, which `memchr2` finds 16 or 32 bytes at a
/// time. (Written without an early exit so that it compiles to vector instructions.)
fn no_control_bytes(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, &c| acc | u8::from(c < 0x20)) == 0
}

/// A JSON line that is a flat object of plain values, read into `p` without serde_json:
/// strings without escapes (borrowed from the line), integers that fit in a `u64`,
/// `true`, `false`, `null`. `false` for anything else, valid or not (`p` is then to be
/// thrown away): serde_json reads the line, so the scanner never has to word an error or
/// decide an unusual case. (Filling the caller's `p` rather than returning one saves
/// copying it, a few hundred bytes, per line.)
fn scan_object<'a>(map: &FieldMap, line: &'a [u8], p: &mut Partial<'a>) -> bool {
    scan_into(map, line, p).is_some()
}

fn scan_into<'a>(map: &FieldMap, line: &'a [u8], p: &mut Partial<'a>) -> Option<()> {
    // Strings are cut at ASCII quotes, so slices of a valid line are valid `str`s.
    let text = std::str::from_utf8(line).ok()?;
    let b = line;
    let plain = no_control_bytes(b);
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let end = string_end(b, i + 1, plain)?;
            let key = &b[i + 1..end];
            // The key's first bytes as one word: read from the line when eight bytes
            // are there, masked to the key's length.
            let word = match (word_at(b, i + 1), key.len()) {
                (Some(w), n @ 0..=7) => w & ((1u64 << (8 * n)) - 1),
                (Some(w), _) => w,
                (None, _) => prefix_word(key),
            };
            let target = map.json_target_word(key, word);
            i = skip_ws(b, end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            let (value, next) = match *b.get(i)? {
                b'"' => {
                    let end = string_end(b, i + 1, plain)?;
                    (Scalar::Str(Cow::Borrowed(text.get(i + 1..end)?)), end + 1)
                }
                b'0'..=b'9' => {
                    let mut n: u64 = 0;
                    let mut j = i;
                    while let Some(d @ b'0'..=b'9') = b.get(j) {
                        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                        j += 1;
                    }
                    // Leading zeros are not JSON; fractions and exponents go to serde_json.
                    if (b[i] == b'0' && j > i + 1) || matches!(b.get(j), Some(b'.' | b'e' | b'E')) {
                        return None;
                    }
                    (Scalar::Int(n), j)
                }
                b'n' if b.get(i..i + 4) == Some(b"null") => (Scalar::Null, i + 4),
                b't' if b.get(i..i + 4) == Some(b"true") => {
                    (Scalar::Str(Cow::Borrowed("true")), i + 4)
                }
                b'f' if b.get(i..i + 5) == Some(b"false") => {
                    (Scalar::Str(Cow::Borrowed("false")), i + 5)
                }
                _ => return None,
            };
            if let Some(t) = target {
                p.put(t, value);
            }
            i = skip_ws(b, next);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(())
}

// === JSON reading: serde_json ===

struct LineSeed<'m> {
    map: &'m FieldMap,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = Partial<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = Partial<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut p = Partial::default();
        while let Some(key) = a.next_key::<BorrowedStr<'de>>()? {
            match self.map.json_target(key.0.as_bytes()) {
                Some(t) => p.put(t, a.next_value::<ScalarDe<'de>>()?.0),
                None => {
                    let _ = a.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }
}

struct ScalarDe<'a>(Scalar<'a>);

impl<'de> de::Deserialize<'de> for ScalarDe<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ScalarDe<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ScalarDe(Scalar::Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ScalarDe(Scalar::Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ScalarDe(Scalar::Int(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ScalarDe(u64::try_from(v).map_or(Scalar::Null, Scalar::Int)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ScalarDe(Scalar::Float(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ScalarDe(Scalar::Str(Cow::Borrowed(if v {
                    "true"
                } else {
                    "false"
                }))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ScalarDe(Scalar::Null))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
