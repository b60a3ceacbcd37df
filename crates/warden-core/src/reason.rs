//! Why a request's token was accepted or refused. A small fixed set: these values are
//! metric labels and event fields, so they never carry request data.

/// Provenance outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// Verified and found in the ledger.
    Ok,
    /// No token on a protected route.
    Missing,
    /// Not a well-formed compact JWS, `alg: none`, a key-carrying header, too long.
    Malformed,
    /// No `kid`, or a `kid` the registry does not know.
    UnknownKid,
    /// The token's `alg` differs from the algorithm its key is bound to (HS/RS confusion).
    AlgMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    NotYetValid,
    /// Missing `exp` or account claim, wrong `iss`/`aud`, claims of the wrong type.
    BadClaims,
    /// Signed by a revoked key (in the registry or revoked through the ledger).
    RevokedKey,
    /// Signed by a key retired before the token was issued.
    RetiredKey,
    /// Validly signed but never issued: no ledger record.
    Forged,
    /// A ledger record exists for the token id but for another account.
    AccountMismatch,
    /// Revoked in the ledger, by token or by account.
    RevokedToken,
    /// The ledger could not answer in time; the route's fail mode decided.
    BackendUnavailable,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 15] = [
        Reason::Ok,
        Reason::Missing,
        Reason::Malformed,
        Reason::UnknownKid,
        Reason::AlgMismatch,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::BadClaims,
        Reason::RevokedKey,
        Reason::RetiredKey,
        Reason::Forged,
        Reason::AccountMismatch,
        Reason::RevokedToken,
        Reason::BackendUnavailable,
    ];

    /// The label value (`snake_case`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::UnknownKid => "unknown_kid",
            Reason::AlgMismatch => "alg_mismatch",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadClaims => "bad_claims",
            Reason::RevokedKey => "revoked_key",
            Reason::RetiredKey => "retired_key",
            Reason::Forged => "forged",
            Reason::AccountMismatch => "account_mismatch",
            Reason::RevokedToken => "revoked_token",
            Reason::BackendUnavailable => "backend_unavailable",
        }
    }

    /// Position in [`Reason::ALL`], for arrays of pre-fetched counters.
    #[must_use]
    pub fn index(self) -> usize {
        // The variants are declared in the order of `ALL` (a test checks it).
        self as usize
    }

    /// Whether this reason means "validly signed by a known key but not legitimately
    /// issued": the key-compromise signal (the incident warden exists for).
    #[must_use]
    pub fn is_key_misuse(self) -> bool {
        matches!(
            self,
            Reason::Forged | Reason::AccountMismatch | Reason::RevokedKey | Reason::RetiredKey
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all_and_labels_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(seen.insert(r.as_str()));
        }
    }
}
