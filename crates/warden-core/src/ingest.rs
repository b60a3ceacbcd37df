//! The JSON form of ledger records, shared by the admin API and `warden ledger import`.
//!
//! A record is one JSON object, in one of two shapes:
//! * `{"token": "eyJ..."}`: the issued token itself. Warden verifies it (the key must be
//!   allowed to sign it now) and reads id, account, times and kid from it.
//! * `{"jti": "...", "account": "...", "issued_at": 1767225600, "expires_at": 1767229200,
//!   "kid": "login-2026"}`: the facts, for issuers that do not want to send tokens.
//!   `token_id` (32 hex digits, as shown by the admin API) may replace `jti` for tokens
//!   without one.

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::ledger::{Record, TokenId};
use crate::reason::Reason;
use crate::token::truncate;
use crate::verify::{CheckedAt, Verifier};

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Not JSON, or not an object of the expected shape.
    #[error("not a ledger record: {0}")]
    Shape(String),
    /// The token did not verify.
    #[error("token refused: {0}")]
    Token(Reason),
    /// The facts are inconsistent.
    #[error("invalid record: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Facts {
    token: Option<String>,
    jti: Option<String>,
    token_id: Option<String>,
    account: Option<String>,
    issued_at: Option<u64>,
    expires_at: Option<u64>,
    kid: Option<String>,
}

/// One record as written, read but not yet checked: its shape is right (an object of the
/// known fields with the right types), nothing more. [`RecordFacts::into_record`] checks
/// the rest and makes the record.
pub struct RecordFacts(Facts);

impl RecordFacts {
    /// Reads one JSON value.
    pub fn from_json(v: Value) -> Result<Self, IngestError> {
        serde_json::from_value(v)
            .map(Self)
            .map_err(|e| IngestError::Shape(e.to_string()))
    }

    /// Reads one line of a JSON-lines file, straight into the record's fields (no
    /// intermediate JSON tree: a `warden ledger import` of millions of lines, or a
    /// replay's `--records`, reads each line once). Blank lines give `None`.
    pub fn parse_line(line: &str) -> Option<Result<Self, IngestError>> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        Some(
            serde_json::from_str(line)
                .map(Self)
                .map_err(|e| IngestError::Shape(format!("{e} in {:?}", truncate(line)))),
        )
    }

    /// The record: the token verified (the key must be allowed to sign it, and the token
    /// be live, at `at`), or the facts checked.
    pub fn into_record(self, verifier: &Verifier, at: CheckedAt) -> Result<Record, IngestError> {
        let f = self.0;
        if let Some(token) = f.token {
            if f.jti.is_some() || f.token_id.is_some() || f.account.is_some() {
                return Err(IngestError::Shape(
                    "give either \"token\" alone or the facts (jti, account, issued_at, expires_at, kid)".into(),
                ));
            }
            return verifier
                .record_for_issued_at(&token, at)
                .map_err(IngestError::Token);
        }
        let id = match (f.jti, f.token_id) {
            (Some(j), None) if !j.is_empty() => TokenId::from_jti(&j),
            (None, Some(h)) => {
                TokenId::from_hex(&h).map_err(|e| IngestError::Invalid(e.to_string()))?
            }
            _ => {
                return Err(IngestError::Shape(
                    "exactly one of \"jti\" or \"token_id\" (or \"token\") is required".into(),
                ))
            }
        };
        let missing = |name: &str| IngestError::Shape(format!("missing field \"{name}\""));
        let record = Record {
            id,
            account: f.account.ok_or_else(|| missing("account"))?,
            issued_at: f.issued_at.ok_or_else(|| missing("issued_at"))?,
            expires_at: f.expires_at.ok_or_else(|| missing("expires_at"))?,
            kid: f.kid.ok_or_else(|| missing("kid"))?,
        };
        record
            .validate()
            .map_err(|e| IngestError::Invalid(e.to_string()))?;
        Ok(record)
    }
}

/// Turns one JSON value into a record.
pub fn record_from_json(v: Value, verifier: &Verifier, now: u64) -> Result<Record, IngestError> {
    RecordFacts::from_json(v)?.into_record(verifier, CheckedAt::Time(now))
}

/// Parses one line of a JSON-lines file. Blank lines give `None`.
pub fn record_from_line(
    line: &str,
    verifier: &Verifier,
    now: u64,
) -> Option<Result<Record, IngestError>> {
    RecordFacts::parse_line(line).map(|f| f?.into_record(verifier, CheckedAt::Time(now)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{mint, SampleKey};
    use crate::keys::{KeyRegistry, KeyState};
    use crate::verify::Policy;

    const NOW: u64 = 1_800_000_000;

    fn verifier() -> Verifier {
        Verifier::new(
            KeyRegistry::build(vec![SampleKey::RsA.spec("k", KeyState::Active)]).expect("keys"),
            Policy::default(),
        )
    }

    /// Alice's token, id `j1`, signed with key `k` at `NOW`, for a minute.
    fn alice_token() -> String {
        mint(
            SampleKey::RsA,
            "k",
            &json!({"sub":"alice","jti":"j1","iat":NOW,"exp":NOW+60}),
        )
        .expect("mint")
    }

    #[test]
    fn from_token_and_from_facts_agree() {
        let v = verifier();
        let t = alice_token();
        let a = record_from_json(json!({"token": t}), &v, NOW).expect("token record");
        let b = record_from_json(
            json!({"jti":"j1","account":"alice","issued_at":NOW,"expires_at":NOW+60,"kid":"k"}),
            &v,
            NOW,
        )
        .expect("facts record");
        assert_eq!(a, b);
        let c = record_from_json(
            json!({"token_id": a.id.to_hex(),"account":"alice","issued_at":NOW,"expires_at":NOW+60,"kid":"k"}),
            &v,
            NOW,
        )
        .expect("id record");
        assert_eq!(a, c);
    }

    /// A line is read straight into the record's fields, an admin API body through a JSON
    /// value: the same record, or a refusal of the same kind, either way.
    #[test]
    fn a_line_and_a_json_value_read_alike() {
        let v = verifier();
        let t = alice_token();
        let lines = [
            json!({"token": t}).to_string(),
            r#"{"jti":"j1","account":"alice","issued_at":1800000000,"expires_at":1800000060,"kid":"k"}"#.into(),
            r#"{"jti":"j1","account":"alice","issued_at":1800000000,"expires_at":1800000060,"kid":"k","extra":1}"#.into(),
            r#"{"jti":"j1","account":7,"issued_at":1800000000,"expires_at":1800000060,"kid":"k"}"#.into(),
            r#"{"jti":"j1","account":"alice","issued_at":5,"expires_at":4,"kid":"k"}"#.into(),
            r#"{"jti":"j1"}"#.into(),
            json!({"token": t, "jti": "j1"}).to_string(),
            "[1]".into(),
        ];
        let kind = |r: &Result<Record, IngestError>| match r {
            Ok(rec) => format!("ok {rec:?}"),
            Err(IngestError::Shape(_)) => "shape".into(),
            Err(IngestError::Token(reason)) => format!("token {reason:?}"),
            Err(IngestError::Invalid(_)) => "invalid".into(),
        };
        for line in &lines {
            let by_line = record_from_line(line, &v, NOW).expect("not blank");
            let value: Value = serde_json::from_str(line).expect("json");
            let by_value = record_from_json(value, &v, NOW);
            assert_eq!(kind(&by_line), kind(&by_value), "{line}");
        }
        assert!(record_from_line(&lines[0], &v, NOW).is_some_and(|r| r.is_ok()));
        assert!(record_from_line(&lines[2], &v, NOW)
            .is_some_and(|r| r.is_err_and(|e| e.to_string().contains("unknown field"))));
    }

    /// A token-form record checked at its own issue time: accepted long after its token
    /// expired (a replay's `--records`), where the same record checked at that later time
    /// is refused, and so is one checked before the token's `nbf` (the issue time it is
    /// checked at is the token's, not zero or the clock's).
    #[test]
    fn a_token_record_checked_at_its_issue_time() {
        let v = verifier();
        let token = mint(
            SampleKey::RsA,
            "k",
            &json!({"sub":"alice","jti":"j1","iat":NOW,"nbf":NOW,"exp":NOW+60}),
        )
        .expect("mint");
        let line = json!({ "token": token }).to_string();
        let later = NOW + 30 * 86_400;
        let facts = || {
            RecordFacts::parse_line(&line)
                .expect("not blank")
                .expect("shape")
        };
        let then = facts()
            .into_record(&v, CheckedAt::Issued)
            .expect("live when issued");
        assert_eq!(then.issued_at, NOW);
        assert!(matches!(
            facts().into_record(&v, CheckedAt::Time(later)),
            Err(IngestError::Token(Reason::Expired))
        ));
        assert!(matches!(
            facts().into_record(&v, CheckedAt::Time(NOW - 3600)),
            Err(IngestError::Token(Reason::NotYetValid))
        ));
        assert_eq!(
            facts()
                .into_record(&v, CheckedAt::Time(NOW))
                .expect("live now"),
            then
        );
    }

    #[test]
    fn bad_records_say_why() {
        let v = verifier();
        let e = |j: Value| {
            record_from_json(j, &v, NOW)
                .expect_err("refused")
                .to_string()
        };
        assert!(e(json!({"jti":"x"})).contains("missing field \"account\""));
        assert!(e(json!([1])).contains("not a ledger record"));
        assert!(
            e(json!({"jti":"x","account":"a","issued_at":5,"expires_at":4,"kid":"k"}))
                .contains("not after")
        );
        assert!(e(json!({"token":"a.b.c"})).contains("malformed"));
        assert!(e(json!({"jti":"x","extra":1})).contains("unknown field"));
        assert!(record_from_line("  ", &v, NOW).is_none());
        assert!(record_from_line("{nope", &v, NOW).is_some_and(|r| r.is_err()));
    }
}
