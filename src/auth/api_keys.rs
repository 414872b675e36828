//! Operator API keys: random secrets with a visible prefix, stored only as
//! SHA-256, compared in constant time, never printed.
//!
//! Secret format: `pmy_<8 hex>_<43 base64url>`; the part before the second
//! underscore is the prefix, stored in clear to find the row and shown in
//! listings so operators can tell keys apart.
//!
//! Creating and revoking a key (with its audit record) happens here, for
//! the API and the CLI alike.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::api_keys::{self as q, ApiKeyRow};
use crate::store::audit::{audited, Change};
use crate::store::StoreError;

const PREFIX_TAG: &str = "pmy_";

/// What a key may do. Each scope includes the ones below it:
/// `admin` ⊇ `write` ⊇ `read`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?} (expected read, write or admin)"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `granted` scopes allow an action needing `needed`.
pub fn allows(granted: &[Scope], needed: Scope) -> bool {
    granted.iter().any(|g| *g >= needed)
}

/// A freshly generated key: the secret (shown once) and what is stored.
pub struct NewKey {
    pub secret: ApiSecret,
    pub prefix: String,
    pub hash: [u8; 32],
}

/// A secret string whose `Debug` and `Display` hide it.
#[derive(Clone)]
pub struct ApiSecret(String);

impl ApiSecret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiSecret(<redacted>)")
    }
}

pub fn generate() -> NewKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 4];
    rng.fill_bytes(&mut id);
    let mut body = [0u8; 32];
    rng.fill_bytes(&mut body);
    let prefix = format!("{PREFIX_TAG}{}", hex::encode(id));
    let secret = format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
    );
    let hash = hash(&secret);
    NewKey {
        secret: ApiSecret(secret),
        prefix,
        hash,
    }
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The lookup prefix of a presented secret, if it has the right shape.
pub fn prefix_of(secret: &str) -> Option<&str> {
    if secret.len() > 128 || !secret.starts_with(PREFIX_TAG) {
        return None;
    }
    let end = PREFIX_TAG.len() + 8;
    if secret.len() <= end + 1 || secret.as_bytes()[end] != b'_' {
        return None;
    }
    let prefix = &secret[..end];
    prefix[PREFIX_TAG.len()..]
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some(prefix)
}

/// Constant-time comparison of a presented secret with a stored hash.
pub fn matches(secret: &str, stored_hash: &[u8]) -> bool {
    let h = hash(secret);
    stored_hash.len() == 32 && bool::from(h.ct_eq(stored_hash))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    #[schema(example = "ops laptop")]
    pub name: String,
    /// The visible start of the secret, to tell keys apart.
    #[schema(example = "pmy_1a2b3c4d")]
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn from_row(row: &ApiKeyRow) -> Self {
        Self {
            id: row.id,
            name: row.name.clone(),
            prefix: row.prefix.clone(),
            scopes: row
                .scopes
                .iter()
                .flatten()
                .filter_map(|s| s.parse().ok())
                .collect(),
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// Validate, insert and audit a new key; returns the row and its secret.
/// Shared by the API and the CLI.
pub fn create_key(
    conn: &mut diesel::PgConnection,
    name: &str,
    scopes: &[Scope],
    actor: &str,
) -> Result<(ApiKeyRow, ApiSecret), CreateKeyError> {
    let n = name.chars().count();
    if n == 0 || n > 128 || name.chars().any(char::is_control) {
        return Err(CreateKeyError::Invalid(
            "name: must be 1–128 characters without control characters".into(),
        ));
    }
    if scopes.is_empty() {
        return Err(CreateKeyError::Invalid(
            "scopes: at least one of read, write, admin".into(),
        ));
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let generated = generate();
    let row = ApiKeyRow {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        prefix: generated.prefix.clone(),
        secret_hash: generated.hash.to_vec(),
        scopes: scopes.iter().map(|s| Some(s.as_str().to_owned())).collect(),
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
    };
    let target = format!("api_key:{}", row.id);
    let row = audited(conn, actor, &target, |c| {
        let row = q::insert(c, &row)?;
        let after = serde_json::to_value(ApiKey::from_row(&row)).ok();
        Ok::<_, StoreError>((row, Change::new("api_key.create", None, after)))
    })?;
    Ok((row, generated.secret))
}

/// Revoke a key and audit it. Shared by the API and the CLI.
pub fn revoke_key(
    conn: &mut diesel::PgConnection,
    id: Uuid,
    actor: &str,
) -> Result<ApiKeyRow, StoreError> {
    audited(conn, actor, &format!("api_key:{id}"), |c| {
        let before = q::find(c, id)?;
        let row = q::revoke(c, id)?;
        let change = Change::new(
            "api_key.revoke",
            serde_json::to_value(ApiKey::from_row(&before)).ok(),
            serde_json::to_value(ApiKey::from_row(&row)).ok(),
        );
        Ok((row, change))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_and_match() {
        let k = generate();
        assert_eq!(prefix_of(k.secret.expose()), Some(k.prefix.as_str()));
        assert!(matches(k.secret.expose(), &k.hash));
        assert!(!matches(&format!("{}x", k.secret.expose()), &k.hash));
        assert!(!format!("{:?}", k.secret).contains(&k.secret.expose()[12..]));
        assert_eq!(prefix_of("Bearer x"), None);
        assert_eq!(prefix_of("pmy_zzzzzzzz_abc"), None);
    }

    #[test]
    fn scope_order() {
        assert!(allows(&[Scope::Admin], Scope::Read));
        assert!(allows(&[Scope::Write], Scope::Write));
        assert!(!allows(&[Scope::Read], Scope::Write));
        assert!(!allows(&[], Scope::Read));
    }
}
