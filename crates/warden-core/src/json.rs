//! Small serde building blocks for reading JSON without building owned values.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A JSON string, borrowed from the input when it has no escapes (an owned copy when it
/// has). serde's own `Cow<str>` always copies.
///
/// ```
/// use warden_core::json::BorrowedStr;
/// let s: BorrowedStr<'_> = serde_json::from_str(r#""plain""#).unwrap();
/// assert!(matches!(s.0, std::borrow::Cow::Borrowed("plain")));
/// let s: BorrowedStr<'_> = serde_json::from_str(r#""a\"b""#).unwrap();
/// assert_eq!(s.0, "a\"b");
/// ```
pub struct BorrowedStr<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}
