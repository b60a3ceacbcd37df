//! Sample keys and token minting for the demo, tests and benches.
//!
//! These keys are public (they are in the repository): they exist so that `warden demo`,
//! the test suites and the benchmarks can sign tokens. Never configure them in production.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::keys::{KeyMaterial, KeySpec, KeyState};

/// The demo issuer's RSA key (the "real" login service key).
pub const RS256_A_KEY: &str = include_str!("../fixtures/rs256-a.key");
/// Public half of [`RS256_A_KEY`].
pub const RS256_A_PUB: &str = include_str!("../fixtures/rs256-a.pub");
/// A second RSA key (for example the departed engineer's key, or a stranger's).
pub const RS256_B_KEY: &str = include_str!("../fixtures/rs256-b.key");
/// Public half of [`RS256_B_KEY`].
pub const RS256_B_PUB: &str = include_str!("../fixtures/rs256-b.pub");
/// A P-256 key.
pub const ES256_KEY: &str = include_str!("../fixtures/es256.key");
/// Public half of [`ES256_KEY`].
pub const ES256_PUB: &str = include_str!("../fixtures/es256.pub");
/// An Ed25519 key.
pub const ED25519_KEY: &str = include_str!("../fixtures/ed25519.key");
/// Public half of [`ED25519_KEY`].
pub const ED25519_PUB: &str = include_str!("../fixtures/ed25519.pub");
/// A 48-byte HMAC secret, base64.
pub const HS256_SECRET_B64: &str = include_str!("../fixtures/hs256.secret.b64");
const RS256_B_JWKS: &str = include_str!("../fixtures/rs256-b.jwks.json");

/// The raw HMAC secret.
#[must_use]
pub fn hs256_secret() -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(HS256_SECRET_B64.trim())
        .unwrap_or_default()
}

/// A spec for the RS256 "A" public key.
#[must_use]
pub fn rs256_spec(kid: &str, state: KeyState) -> KeySpec {
    KeySpec {
        kid: kid.into(),
        alg: Algorithm::RS256,
        material: KeyMaterial::Pem(RS256_A_PUB.as_bytes().to_vec()),
        state,
    }
}

/// A JWKS document holding the RS256 "B" public key under `kid`.
#[must_use]
pub fn jwks_rs256(kid: &str) -> String {
    RS256_B_JWKS.replace("placeholder-kid", kid)
}

/// Which sample private key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKey {
    /// [`RS256_A_KEY`].
    RsA,
    /// [`RS256_B_KEY`].
    RsB,
    /// [`ES256_KEY`].
    Es,
    /// [`ED25519_KEY`].
    Ed,
    /// The HMAC secret.
    Hs,
}

impl SampleKey {
    /// The algorithm this key signs with.
    #[must_use]
    pub fn alg(self) -> Algorithm {
        match self {
            Self::RsA | Self::RsB => Algorithm::RS256,
            Self::Es => Algorithm::ES256,
            Self::Ed => Algorithm::EdDSA,
            Self::Hs => Algorithm::HS256,
        }
    }

    /// The verifying spec for this key.
    #[must_use]
    pub fn spec(self, kid: &str, state: KeyState) -> KeySpec {
        let material = match self {
            Self::RsA => KeyMaterial::Pem(RS256_A_PUB.into()),
            Self::RsB => KeyMaterial::Pem(RS256_B_PUB.into()),
            Self::Es => KeyMaterial::Pem(ES256_PUB.into()),
            Self::Ed => KeyMaterial::Pem(ED25519_PUB.into()),
            Self::Hs => KeyMaterial::Secret(hs256_secret()),
        };
        KeySpec {
            kid: kid.into(),
            alg: self.alg(),
            material,
            state,
        }
    }

    fn encoding(self) -> Result<EncodingKey, jsonwebtoken::errors::Error> {
        match self {
            Self::RsA => EncodingKey::from_rsa_pem(RS256_A_KEY.as_bytes()),
            Self::RsB => EncodingKey::from_rsa_pem(RS256_B_KEY.as_bytes()),
            Self::Es => EncodingKey::from_ec_pem(ES256_KEY.as_bytes()),
            Self::Ed => EncodingKey::from_ed_pem(ED25519_KEY.as_bytes()),
            Self::Hs => Ok(EncodingKey::from_secret(&hs256_secret())),
        }
    }
}

/// Signs `claims` with a sample key under `kid`.
pub fn mint(
    key: SampleKey,
    kid: &str,
    claims: &Value,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg());
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key.encoding()?)
}

/// Signs an arbitrary header JSON and payload JSON with a sample key, for hostile-token
/// tests (`alg` spellings, extra header fields).
pub fn mint_raw(
    key: SampleKey,
    header_json: &str,
    payload_json: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding()?, key.alg())?;
    Ok(format!("{input}.{sig}"))
}

/// Signs `header_b64.payload_b64` with HS256 under an arbitrary secret, for algorithm
/// confusion tests (an RSA public key PEM used as the HMAC secret).
#[must_use]
pub fn mint_raw_with_secret(header_b64: &str, payload_b64: &str, secret: &[u8]) -> String {
    let input = format!("{header_b64}.{payload_b64}");
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap_or_default();
    format!("{input}.{sig}")
}
