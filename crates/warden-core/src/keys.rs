//! The key registry: every key warden accepts, with its algorithm and lifecycle.
//!
//! A key is bound to exactly one algorithm when it is loaded, and a token is verified
//! only if its `alg` equals that algorithm. That is what makes HS/RS confusion
//! impossible: an RSA public key is never handed to HMAC, whatever the token says.
//!
//! Lifecycle:
//! - `active`: tokens verify.
//! - `retired` at T: tokens issued (`iat`) after T are refused; older ones pass until
//!   they expire. A token without `iat` under a retired key is refused.
//! - `revoked`: everything signed by the key is refused.
//!
//! The registry is immutable; a change builds a new one that is swapped in atomically
//! (see [`crate::verify::Verifier::swap_registry`]).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};

use crate::error::KeyError;
use crate::token::{alg_name, parse_alg};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Tokens signed by the key are accepted.
    Active,
    /// Tokens issued after `at` (unix seconds) are refused.
    Retired {
        /// Retirement time, unix seconds.
        at: u64,
    },
    /// Every token signed by the key is refused.
    Revoked,
}

/// The bytes a key is made from, as the operator supplied them.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    /// A PEM public key (RSA, EC or Ed25519, matching the algorithm).
    Pem(Vec<u8>),
    /// An HMAC secret (raw bytes).
    Secret(Vec<u8>),
    /// One key of a JWKS document, as JSON.
    Jwk(Box<jsonwebtoken::jwk::Jwk>),
}

/// A key as configured, before its material is parsed.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// The key id tokens name in their `kid` header.
    pub kid: String,
    /// The one algorithm this key verifies.
    pub alg: Algorithm,
    /// The key material.
    pub material: KeyMaterial,
    /// Its lifecycle state.
    pub state: KeyState,
}

/// A loaded key.
pub struct Key {
    /// The key id.
    pub kid: Arc<str>,
    /// The algorithm the key is bound to.
    pub alg: Algorithm,
    /// Its lifecycle state.
    pub state: KeyState,
    /// A digest of algorithm and material: the verification cache remembers which key
    /// verified a token and re-verifies if the material behind a kid changes.
    pub fingerprint: u64,
    pub(crate) decoding: DecodingKey,
    /// For HS256/384/512: the HMAC key, set up once here instead of by jsonwebtoken on
    /// every verification (its padded key blocks cost as much as the MAC of a token).
    pub(crate) hmac: Option<aws_lc_rs::hmac::Key>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &alg_name(self.alg))
            .field("state", &self.state)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

/// What a lifecycle check of a key says about one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// The key may verify this token.
    Allowed,
    /// The key is revoked.
    Revoked,
    /// The key was retired before the token was issued.
    Retired,
}

impl Key {
    /// Whether this key may vouch for a token issued at `issued_at`.
    #[must_use]
    pub fn check_use(&self, issued_at: Option<u64>) -> KeyUse {
        match self.state {
            KeyState::Active => KeyUse::Allowed,
            KeyState::Revoked => KeyUse::Revoked,
            KeyState::Retired { at } => match issued_at {
                Some(iat) if iat <= at => KeyUse::Allowed,
                _ => KeyUse::Retired,
            },
        }
    }
}

/// An immutable set of keys by kid.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    keys: HashMap<Arc<str>, Arc<Key>>,
}

impl KeyRegistry {
    /// Builds a registry, reporting every bad key at once.
    pub fn build(specs: Vec<KeySpec>) -> Result<Self, Vec<KeyError>> {
        let mut keys = HashMap::with_capacity(specs.len());
        let mut errors = Vec::new();
        for spec in specs {
            if keys.contains_key(spec.kid.as_str()) {
                errors.push(KeyError::DuplicateKid(spec.kid));
                continue;
            }
            match load(&spec) {
                Ok(key) => {
                    keys.insert(Arc::clone(&key.kid), Arc::new(key));
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Self { keys })
        } else {
            Err(errors)
        }
    }

    /// The key a token names.
    #[must_use]
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the registry has no key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.keys.values()
    }
}

fn family_of(alg: Algorithm) -> AlgorithmFamily {
    alg.family()
}

fn load(spec: &KeySpec) -> Result<Key, KeyError> {
    let material_err = |what: &'static str, detail: String| KeyError::Material {
        kid: spec.kid.clone(),
        alg: alg_name(spec.alg).to_owned(),
        what,
        detail,
    };
    let mut fp = Sha256::new();
    fp.update(alg_name(spec.alg));
    let decoding = match (&spec.material, family_of(spec.alg)) {
        (KeyMaterial::Secret(s), AlgorithmFamily::Hmac) => {
            if s.len() < 32 {
                return Err(material_err(
                    "secret",
                    format!("{} bytes, at least 32 required", s.len()),
                ));
            }
            fp.update(s);
            DecodingKey::from_secret(s)
        }
        (KeyMaterial::Secret(_), _) => {
            return Err(material_err(
                "secret",
                "a shared secret is only valid for HS256/384/512".into(),
            ))
        }
        (KeyMaterial::Pem(_), AlgorithmFamily::Hmac) => {
            return Err(material_err(
                "PEM",
                "HMAC keys are secrets, not PEM public keys".into(),
            ))
        }
        (KeyMaterial::Pem(pem), family) => {
            fp.update(pem);
            let r = match family {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
                AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
                AlgorithmFamily::Hmac => unreachable_family(),
            };
            r.map_err(|e| material_err("PEM", e.to_string()))?
        }
        (KeyMaterial::Jwk(jwk), family) => {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| material_err("JWK", e.to_string()))?;
            if key.family() != family {
                return Err(material_err(
                    "JWK",
                    format!(
                        "key type is {:?}, algorithm needs {:?}",
                        key.family(),
                        family
                    ),
                ));
            }
            fp.update(serde_json::to_vec(jwk).unwrap_or_default());
            key
        }
    };
    let digest = fp.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let hmac = hmac_algorithm(spec.alg).and_then(|a| {
        decoding
            .try_get_as_bytes()
            .ok()
            .map(|secret| aws_lc_rs::hmac::Key::new(a, secret))
    });
    Ok(Key {
        kid: Arc::from(spec.kid.as_str()),
        alg: spec.alg,
        state: spec.state,
        fingerprint: u64::from_le_bytes(first),
        decoding,
        hmac,
    })
}

/// The HMAC of an HS algorithm, as jsonwebtoken's aws-lc-rs backend maps it.
fn hmac_algorithm(alg: Algorithm) -> Option<aws_lc_rs::hmac::Algorithm> {
    match alg {
        Algorithm::HS256 => Some(aws_lc_rs::hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(aws_lc_rs::hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(aws_lc_rs::hmac::HMAC_SHA512),
        _ => None,
    }
}

// HMAC PEM was refused in the arm above; this keeps the match exhaustive without a panic.
fn unreachable_family() -> Result<DecodingKey, jsonwebtoken::errors::Error> {
    Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into())
}

/// Reads every key of a JWKS document as active specs. Each key must have a `kid` and an
/// `alg`: a key without `alg` could be used with several algorithms, which is refused.
pub fn specs_from_jwks(json: &str) -> Result<Vec<KeySpec>, KeyError> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| KeyError::Jwks(e.to_string()))?;
    let mut out = Vec::with_capacity(set.keys.len());
    for jwk in set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| KeyError::Jwks("a key has no \"kid\"".into()))?;
        let alg_text = jwk
            .common
            .key_algorithm
            .map(|a| a.to_string())
            .ok_or_else(|| KeyError::Jwks(format!("key {kid:?} has no \"alg\"")))?;
        let alg = parse_alg(&alg_text).ok_or_else(|| KeyError::Alg {
            kid: kid.clone(),
            alg: alg_text.clone(),
        })?;
        out.push(KeySpec {
            kid,
            alg,
            material: KeyMaterial::Jwk(Box::new(jwk)),
            state: KeyState::Active,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures as testkeys;

    #[test]
    fn builds_and_reports_every_bad_key() {
        let specs = vec![
            testkeys::rs256_spec("good", KeyState::Active),
            KeySpec {
                kid: "bad-pem".into(),
                alg: Algorithm::RS256,
                material: KeyMaterial::Pem(b"not a pem".to_vec()),
                state: KeyState::Active,
            },
            KeySpec {
                kid: "short".into(),
                alg: Algorithm::HS256,
                material: KeyMaterial::Secret(b"short".to_vec()),
                state: KeyState::Active,
            },
            testkeys::rs256_spec("good", KeyState::Active),
        ];
        let errs = KeyRegistry::build(specs).expect_err("must fail");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs
            .iter()
            .any(|e| matches!(e, KeyError::DuplicateKid(k) if k == "good")));
    }

    #[test]
    fn pem_for_hmac_is_refused() {
        let mut spec = testkeys::rs256_spec("k", KeyState::Active);
        spec.alg = Algorithm::HS256;
        let errs = KeyRegistry::build(vec![spec]).expect_err("must fail");
        assert!(matches!(errs[0], KeyError::Material { what: "PEM", .. }));
    }

    #[test]
    fn retirement_is_by_issue_time() {
        let reg = KeyRegistry::build(vec![testkeys::rs256_spec(
            "k",
            KeyState::Retired { at: 100 },
        )])
        .expect("builds");
        let k = reg.get("k").expect("present");
        assert_eq!(k.check_use(Some(100)), KeyUse::Allowed);
        assert_eq!(k.check_use(Some(101)), KeyUse::Retired);
        assert_eq!(k.check_use(None), KeyUse::Retired);
    }

    #[test]
    fn jwks_keys_need_kid_and_alg() {
        let no_alg = r#"{"keys":[{"kty":"oct","kid":"a","k":"c2VjcmV0"}]}"#;
        assert!(specs_from_jwks(no_alg).is_err());
        let ok = testkeys::jwks_rs256("j1");
        let specs = specs_from_jwks(&ok).expect("parses");
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].alg, Algorithm::RS256);
        let reg = KeyRegistry::build(specs).expect("builds");
        assert!(reg.get("j1").is_some());
    }
}
