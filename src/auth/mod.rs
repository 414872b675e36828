//! Who may do what: publish tokens (signed secrets + database rows) for
//! encoders, bearer API keys with scopes for operators, and the cluster
//! credentials one node shows another to relay a feed.

pub mod api_keys;
pub mod cluster;
pub mod jwt;
pub mod publish;
pub mod tokens;
