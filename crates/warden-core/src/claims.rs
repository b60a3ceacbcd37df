//! A token's header and claims read straight from their JSON, without building a
//! `serde_json::Map` of owned strings and values for every token.
//!
//! What is accepted and refused is exactly what `serde_json` accepts as a
//! `Map<String, Value>` (the reference, [`crate::token::parse_with_serde`]): the same
//! deserializer reads every byte through `deserialize_any` or `deserialize_map`, with
//! its syntax, escape, surrogate, number range and nesting limit checks; only what is
//! kept differs. Values no check reads (nested objects, `null`, the non-string elements
//! of arrays) are walked and dropped. A name given twice keeps its last value, as a
//! `Map` does. Strings without escapes are kept as positions in the payload's text, so
//! a typical token's claims cost one allocation for the list, none per claim.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use crate::error::Malformed;
use crate::json::BorrowedStr;
use crate::token::REFUSED_HEADERS;

/// A string of the payload: where it lies in the payload's text, or its own copy when
/// it had escapes.
#[derive(Debug, Clone)]
enum Text {
    At(u32, u32),
    Owned(Box<str>),
}

#[derive(Debug, Clone)]
enum Val {
    Str(Text),
    Num(Number),
    Bool(bool),
    /// An array: its string elements (the only ones `aud` compares).
    Strs(Vec<Text>),
    /// `null` or an object.
    Other,
}

/// A claim's value as the verifier's checks and kept claims see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Claim<'a> {
    /// A string.
    String(&'a str),
    /// A number.
    Number(&'a Number),
    /// `true` or `false`.
    Bool(bool),
    /// `null`, an array or an object.
    Other,
}

/// The payload of a token: its claims, in the order they came.
#[derive(Debug, Clone)]
pub struct Claims {
    json: String,
    entries: Vec<(Text, Val)>,
}

impl Claims {
    /// Reads a decoded payload; an error for anything that is not one JSON object.
    pub(crate) fn parse(payload: Vec<u8>) -> Result<Self, Malformed> {
        let bad = Malformed::Json("payload");
        // serde_json refuses invalid UTF-8 inside strings and any byte over 0x7f outside
        // them, so checking the whole payload first refuses exactly the same inputs.
        let json = String::from_utf8(payload).map_err(|_| bad.clone())?;
        let raw = serde_json::from_str::<Entries<'_>>(&json).map_err(|_| bad)?;
        let entries = raw
            .0
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    RawVal::Str(s) => Val::Str(text(&json, s)),
                    RawVal::Num(n) => Val::Num(n),
                    RawVal::Bool(b) => Val::Bool(b),
                    RawVal::Strs(a) => Val::Strs(a.into_iter().map(|s| text(&json, s)).collect()),
                    RawVal::Other => Val::Other,
                };
                (text(&json, k), v)
            })
            .collect();
        Ok(Self { json, entries })
    }

    fn str_of<'s>(&'s self, t: &'s Text) -> &'s str {
        match t {
            Text::At(s, e) => self.json.get(*s as usize..*e as usize).unwrap_or(""),
            Text::Owned(b) => b,
        }
    }

    fn find(&self, name: &str) -> Option<&Val> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| self.str_of(k) == name)
            .map(|(_, v)| v)
    }

    fn view<'s>(&'s self, v: &'s Val) -> Claim<'s> {
        match v {
            Val::Str(t) => Claim::String(self.str_of(t)),
            Val::Num(n) => Claim::Number(n),
            Val::Bool(b) => Claim::Bool(*b),
            Val::Strs(_) | Val::Other => Claim::Other,
        }
    }

    /// A claim's value, if present (the last one, if named twice).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Claim<'_>> {
        self.find(name).map(|v| self.view(v))
    }

    /// Reads a NumericDate claim (seconds since the epoch). Fractions are truncated;
    /// negative, non-finite or non-numeric values are an error carrying the claim's name.
    pub fn numeric_date(&self, name: &'static str) -> Result<Option<u64>, Malformed> {
        match self.find(name) {
            None => Ok(None),
            Some(Val::Num(n)) => number_date(n, name).map(Some),
            Some(_) => Err(Malformed::Claim(name)),
        }
    }

    /// Reads a string claim; a present claim of another type is an error.
    pub fn string(&self, name: &str) -> Result<Option<&str>, Malformed> {
        match self.find(name) {
            None => Ok(None),
            Some(Val::Str(t)) => Ok(Some(self.str_of(t))),
            Some(_) => Err(Malformed::ClaimNamed(crate::token::truncate(name))),
        }
    }

    /// Whether `aud` is `audience`, or an array with `audience` among its elements.
    #[must_use]
    pub fn has_audience(&self, audience: &str) -> bool {
        match self.find("aud") {
            Some(Val::Str(t)) => self.str_of(t) == audience,
            Some(Val::Strs(a)) => a.iter().any(|t| self.str_of(t) == audience),
            _ => false,
        }
    }

    /// Every claim once (its last value), in the order of their names, as a
    /// `serde_json::Map` would list them.
    #[must_use]
    pub fn sorted(&self) -> Vec<(&str, Claim<'_>)> {
        let mut all: Vec<(&str, usize)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (self.str_of(k), i))
            .collect();
        // Stable: for equal names the last entry ends up last, and is the one kept.
        all.sort_by(|a, b| a.0.cmp(b.0));
        let mut out: Vec<(&str, Claim<'_>)> = Vec::with_capacity(all.len());
        for (name, i) in all {
            let v = self.view(&self.entries[i].1);
            match out.last_mut() {
                Some(last) if last.0 == name => last.1 = v,
                _ => out.push((name, v)),
            }
        }
        out
    }
}

/// A NumericDate from a JSON number: whole seconds, fractions truncated, negative,
/// non-finite or from 1e15 on refused.
pub(crate) fn number_date(n: &Number, name: &'static str) -> Result<u64, Malformed> {
    if let Some(v) = n.as_u64() {
        Ok(v)
    } else {
        match n.as_f64() {
            Some(f) if (0.0..1e15).contains(&f) => Ok(f as u64),
            _ => Err(Malformed::Claim(name)),
        }
    }
}

/// Where a string borrowed from `json` lies in it (an owned copy otherwise).
fn text(json: &str, s: Cow<'_, str>) -> Text {
    match s {
        Cow::Borrowed(b) => {
            let start = b.as_ptr().addr().wrapping_sub(json.as_ptr().addr());
            let end = start.wrapping_add(b.len());
            let inside = json
                .get(start..end)
                .is_some_and(|x| x.as_ptr() == b.as_ptr());
            match (u32::try_from(start), u32::try_from(end)) {
                (Ok(s0), Ok(e0)) if inside => Text::At(s0, e0),
                _ => Text::Owned(b.into()),
            }
        }
        Cow::Owned(o) => Text::Owned(o.into_boxed_str()),
    }
}

/// The header fields [`crate::token::parse`] reads: `alg` and `kid` as JSON values (the
/// last of each), and which of the refused parameters are present.
#[derive(Debug, Default)]
pub(crate) struct RawHeader {
    pub alg: Option<Value>,
    pub kid: Option<Value>,
    /// Bit `i` set: `REFUSED_HEADERS[i]` is a member.
    pub present: u8,
}

impl RawHeader {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let bad = Malformed::Json("header");
        let json = std::str::from_utf8(bytes).map_err(|_| bad.clone())?;
        serde_json::from_str::<RawHeader>(json).map_err(|_| bad)
    }

    /// Whether `name` is among the parameters `present` (a [`RawHeader::present`]) marks.
    pub(crate) fn has(present: u8, name: &str) -> bool {
        REFUSED_HEADERS
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| present & (1 << i) != 0)
    }
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut h = RawHeader::default();
                while let Some(BorrowedStr(k)) = map.next_key::<BorrowedStr<'de>>()? {
                    match &*k {
                        "alg" => h.alg = Some(map.next_value::<Value>()?),
                        "kid" => h.kid = Some(map.next_value::<Value>()?),
                        other => {
                            if let Some(i) = REFUSED_HEADERS.iter().position(|n| *n == other) {
                                h.present |= 1 << i;
                            }
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

/// Any JSON value, read through (every check applies) and dropped. Not serde's
/// `IgnoredAny`: serde_json skips an ignored string without checking its `\u` escapes
/// for lone surrogates, which the `Map` parse refuses.
struct Skip;

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

/// A claim's value as read, strings still borrowed.
enum RawVal<'de> {
    Str(Cow<'de, str>),
    Num(Number),
    Bool(bool),
    Strs(Vec<Cow<'de, str>>),
    Other,
}

impl<'de> Deserialize<'de> for RawVal<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawVal<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawVal<'de>, E> {
                Ok(RawVal::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawVal<'de>, E> {
                Ok(RawVal::Num(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawVal<'de>, E> {
                Ok(RawVal::Num(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawVal<'de>, E> {
                // As `serde_json::Value` does: a non-finite float (never parsed from JSON
                // text) would become null.
                Ok(Number::from_f64(v).map_or(RawVal::Other, RawVal::Num))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<RawVal<'de>, E> {
                Ok(RawVal::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawVal<'de>, E> {
                Ok(RawVal::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawVal<'de>, E> {
                Ok(RawVal::Str(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawVal<'de>, E> {
                Ok(RawVal::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawVal<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(Elem(e)) = seq.next_element::<Elem<'de>>()? {
                    if let Some(s) = e {
                        out.push(s);
                    }
                }
                Ok(RawVal::Strs(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawVal<'de>, A::Error> {
                SkipVisitor.visit_map(map).map(|_| RawVal::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// An array element: a string kept, anything else read through and dropped.
struct Elem<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for Elem<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match RawVal::deserialize(d)? {
            RawVal::Str(s) => Elem(Some(s)),
            _ => Elem(None),
        })
    }
}

/// The members of the payload object, in order.
struct Entries<'de>(Vec<(Cow<'de, str>, RawVal<'de>)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut out = Vec::with_capacity(8);
                while let Some(BorrowedStr(k)) = map.next_key::<BorrowedStr<'de>>()? {
                    let v = map.next_value::<RawVal<'de>>()?;
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}
