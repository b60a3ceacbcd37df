//! Typed errors. Each carries the offending value (bounded in length) so that an
//! operator reading a log line knows what was wrong without reproducing it.

use thiserror::Error;

/// Why a token could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Malformed {
    /// Longer than the configured `max_token_bytes`.
    #[error("token is {len} bytes, over the limit of {max}")]
    TooLong {
        /// The token's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// Not exactly three dot-separated segments.
    #[error("token has {0} segments, expected 3 (header.payload.signature)")]
    Segments(usize),
    /// A segment is empty.
    #[error("token {0} segment is empty")]
    EmptySegment(&'static str),
    /// A segment is not unpadded base64url.
    #[error("token {0} segment is not unpadded base64url")]
    Base64(&'static str),
    /// A segment does not decode to a JSON object.
    #[error("token {0} is not a JSON object")]
    Json(&'static str),
    /// `alg` is missing, `none`, or not a supported algorithm.
    #[error("token alg {0:?} is not accepted (expected one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)")]
    Alg(String),
    /// The header carries or names a key (`jku`, `x5u`, `jwk`, `x5c`).
    #[error("token header carries {0:?}; warden never takes keys from tokens")]
    KeyInHeader(&'static str),
    /// The header has `crit`, which warden does not implement.
    #[error("token header has crit parameters, which warden does not support")]
    Crit,
    /// `kid` is not a string.
    #[error("token kid is not a string")]
    Kid,
    /// A registered claim has the wrong type or range.
    #[error("token claim {0:?} has the wrong type or range")]
    Claim(&'static str),
    /// A configured claim (for example the account claim) has the wrong type.
    #[error("token claim {0:?} has the wrong type")]
    ClaimNamed(String),
    /// The account claim is absent.
    #[error("token has no account claim {0:?}")]
    NoAccount(String),
}

/// Errors of a ledger backend. Remote backends fail; the proxy maps these to the route
/// class's fail mode and never to a crash.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The backend cannot be reached or did not answer in time.
    #[error("ledger backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered but failed to store or read.
    #[error("ledger storage error: {0}")]
    Storage(String),
    /// A record or request was refused as invalid.
    #[error("invalid ledger record: {0}")]
    Invalid(String),
    /// A token revocation of an id with no record could not be kept: as many already
    /// wait for their record as `ledger.max_pending_revocations` allows.
    #[error("{waiting} token revocations already wait for their record (ledger.max_pending_revocations = {cap}); this one is not kept: raise the limit, or revoke the token once its record is in the ledger")]
    Full {
        /// How many wait.
        waiting: usize,
        /// The limit.
        cap: usize,
    },
}

/// Errors building a key registry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Key material could not be parsed for the declared algorithm.
    #[error("key {kid:?}: cannot read {what} for {alg}: {detail}")]
    Material {
        /// The key id.
        kid: String,
        /// The declared algorithm.
        alg: String,
        /// What was being read (PEM, JWK, secret).
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The same kid appears twice.
    #[error("key id {0:?} is declared more than once")]
    DuplicateKid(String),
    /// A JWKS document is not valid.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// Unsupported or missing algorithm for a key.
    #[error("key {kid:?}: algorithm {alg:?} is not supported")]
    Alg {
        /// The key id.
        kid: String,
        /// The algorithm as written.
        alg: String,
    },
}
