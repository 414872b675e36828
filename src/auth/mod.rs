//! Who may do what: publish tokens (signed secrets + database rows) for
//! encoders, and bearer API keys with scopes for operators.

pub mod api_keys;
pub mod jwt;
pub mod publish;
pub mod tokens;
