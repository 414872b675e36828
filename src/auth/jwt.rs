//! Signing and verifying publish-token secrets (compact JWTs).
//!
//! A secret's header names its key (`kid`); its claims name the token row
//! (`sub`) and the row's current secret id (`jti`). Verification is one
//! function, [`KeySet::verify`], that lists the algorithm, the required
//! claims and the leeway; it touches no database, so garbage is rejected
//! cheaply. Expiry is the row's business (it can change after issue).

use std::collections::HashMap;
use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{AuthConfig, ConfigError, KeyAlgorithm};

/// Upper bound on a secret's length; longer input is malformed.
pub const MAX_SECRET_LEN: usize = 2048;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Token row id.
    pub sub: String,
    /// Secret id; must equal the row's `secret_id`.
    pub jti: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
}

/// The verified identity inside a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedSecret {
    pub token_id: Uuid,
    pub secret_id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
}

struct Key {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
}

/// The configured keys. `Debug` shows only the kids.
pub struct KeySet {
    keys: HashMap<String, Key>,
    active: Option<String>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn validation(algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    // Expiry lives in the row (operators change it after issue).
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v.set_required_spec_claims(&["sub", "jti"]);
    v
}

impl KeySet {
    /// Load from configuration (reads EdDSA PEM files). Errors name the key.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, ConfigError> {
        let mut keys = HashMap::new();
        for (i, k) in auth.signing_keys.iter().enumerate() {
            let field = |f: &str| format!("auth.signing_keys[{i}].{f}");
            let bad = |f: &str, m: String| ConfigError::Invalid {
                key: field(f),
                message: m,
            };
            let key =
                match k.algorithm {
                    KeyAlgorithm::HS256 => {
                        let s = k
                            .secret
                            .as_ref()
                            .ok_or_else(|| bad("secret", "required for HS256".into()))?;
                        Key {
                            algorithm: Algorithm::HS256,
                            encoding: Some(EncodingKey::from_secret(s.expose().as_bytes())),
                            decoding: DecodingKey::from_secret(s.expose().as_bytes()),
                            validation: validation(Algorithm::HS256),
                        }
                    }
                    KeyAlgorithm::EdDSA => {
                        let read = |f: &str, p: &std::path::Path| {
                            std::fs::read(p)
                                .map_err(|e| bad(f, format!("cannot read {}: {e}", p.display())))
                        };
                        let pub_path = k.public_key_pem_file.as_ref().ok_or_else(|| {
                            bad("public_key_pem_file", "required for EdDSA".into())
                        })?;
                        let decoding =
                            DecodingKey::from_ed_pem(&read("public_key_pem_file", pub_path)?)
                                .map_err(|e| {
                                    bad(
                                        "public_key_pem_file",
                                        format!("not an Ed25519 public key PEM: {e}"),
                                    )
                                })?;
                        let encoding = match &k.private_key_pem_file {
                            Some(p) => Some(
                                EncodingKey::from_ed_pem(&read("private_key_pem_file", p)?)
                                    .map_err(|e| {
                                        bad(
                                            "private_key_pem_file",
                                            format!("not an Ed25519 PKCS#8 private key PEM: {e}"),
                                        )
                                    })?,
                            ),
                            None => None,
                        };
                        Key {
                            algorithm: Algorithm::EdDSA,
                            encoding,
                            decoding,
                            validation: validation(Algorithm::EdDSA),
                        }
                    }
                };
            keys.insert(k.kid.clone(), key);
        }
        let active = auth
            .active_kid
            .clone()
            .or_else(|| auth.signing_keys.first().map(|k| k.kid.clone()));
        if let Some(a) = &active {
            if keys.get(a).is_some_and(|k| k.encoding.is_none()) {
                return Err(ConfigError::Invalid {
                    key: "auth.active_kid".into(),
                    message: format!("key {a:?} has no private key, so it cannot sign"),
                });
            }
        }
        Ok(Self { keys, active })
    }

    /// Build a set with one HS256 key (tests and benchmarks).
    pub fn hs256(kid: &str, secret: &[u8]) -> Self {
        let mut keys = HashMap::new();
        keys.insert(
            kid.to_owned(),
            Key {
                algorithm: Algorithm::HS256,
                encoding: Some(EncodingKey::from_secret(secret)),
                decoding: DecodingKey::from_secret(secret),
                validation: validation(Algorithm::HS256),
            },
        );
        Self {
            keys,
            active: Some(kid.to_owned()),
        }
    }

    pub fn can_sign(&self) -> bool {
        self.active.is_some()
    }

    /// Issue a secret for a token row with the active key.
    pub fn sign(&self, token_id: Uuid, secret_id: Uuid, now: i64) -> Result<String, SignError> {
        let kid = self.active.as_ref().ok_or(SignError::NoKey)?;
        let key = self.keys.get(kid).ok_or(SignError::NoKey)?;
        let encoding = key.encoding.as_ref().ok_or(SignError::NoKey)?;
        let mut header = Header::new(key.algorithm);
        header.kid = Some(kid.clone());
        let claims = Claims {
            sub: token_id.to_string(),
            jti: secret_id.to_string(),
            iat: now,
        };
        jsonwebtoken::encode(&header, &claims, encoding)
            .map_err(|e| SignError::Encode(e.to_string()))
    }

    /// Check a presented secret: shape, key, algorithm, signature, claims.
    pub fn verify(&self, secret: &str) -> Result<VerifiedSecret, VerifyError> {
        if secret.is_empty()
            || secret.len() > MAX_SECRET_LEN
            || secret.bytes().filter(|b| *b == b'.').count() != 2
        {
            return Err(VerifyError::Malformed);
        }
        let header = jsonwebtoken::decode_header(secret).map_err(|_| VerifyError::Malformed)?;
        let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
        let key = self.keys.get(&kid).ok_or(VerifyError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(VerifyError::BadSignature);
        }
        let data = jsonwebtoken::decode::<Claims>(secret, &key.decoding, &key.validation).map_err(
            |e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidKeyFormat => VerifyError::BadSignature,
                    _ => VerifyError::Malformed,
                }
            },
        )?;
        let token_id = Uuid::parse_str(&data.claims.sub).map_err(|_| VerifyError::Malformed)?;
        let secret_id = Uuid::parse_str(&data.claims.jti).map_err(|_| VerifyError::Malformed)?;
        Ok(VerifiedSecret {
            token_id,
            secret_id,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no signing key is configured")]
    NoKey,
    #[error("cannot sign: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip() {
        let ks = KeySet::hs256("k1", K);
        let (t, s) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = ks.sign(t, s, 1).unwrap();
        assert_eq!(
            ks.verify(&secret).unwrap(),
            VerifiedSecret {
                token_id: t,
                secret_id: s
            }
        );
    }

    #[test]
    fn refusals() {
        let ks = KeySet::hs256("k1", K);
        let secret = ks.sign(Uuid::new_v4(), Uuid::new_v4(), 1).unwrap();
        assert_eq!(ks.verify("garbage"), Err(VerifyError::Malformed));
        assert_eq!(ks.verify("a.b.c"), Err(VerifyError::Malformed));
        // Tampered payload: flip a character of the claims segment.
        let mut parts: Vec<String> = secret.split('.').map(str::to_owned).collect();
        let mut p = parts[1].clone().into_bytes();
        p[5] = if p[5] == b'A' { b'B' } else { b'A' };
        parts[1] = String::from_utf8(p).unwrap();
        let tampered = parts.join(".");
        assert!(matches!(
            ks.verify(&tampered),
            Err(VerifyError::BadSignature) | Err(VerifyError::Malformed)
        ));
        let other = KeySet::hs256("k1", b"another-secret-another-secret-xx");
        assert_eq!(other.verify(&secret), Err(VerifyError::BadSignature));
        let other_kid = KeySet::hs256("k2", K);
        assert_eq!(other_kid.verify(&secret), Err(VerifyError::UnknownKey));
    }
}
