//! Publish-token definitions: validation of what operators write, and the
//! compiled form that admission evaluates.
//!
//! Invariant: a [`TokenRules`] holds only valid entries (1..=64 streams,
//! regexes compiled anchored and size-limited, CIDRs parsed).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::domain::StreamName;

pub const MAX_STREAMS: usize = 64;
pub const MAX_IPS: usize = 256;
pub const LABEL_MAX: usize = 128;
/// Compiled-program limit for one stream regex.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// One entry of a token's allowed streams.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRule {
    /// A stream name, or a regular expression (anchored at both ends) when
    /// `is_regex` is true. 1–128 characters.
    #[schema(example = "match1")]
    pub name: String,
    #[serde(default)]
    pub is_regex: bool,
}

/// A validation failure with the field at fault; shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A stream rule ready to match.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Regex(Regex),
}

/// The compiled stream and IP rules of one token.
#[derive(Debug, Clone)]
pub struct TokenRules {
    streams: Vec<Matcher>,
    ips: Vec<IpNet>,
}

impl TokenRules {
    /// Compile and validate. `field` prefixes error locations.
    pub fn compile(streams: &[StreamRule], ips: &[String]) -> Result<Self, Invalid> {
        if streams.is_empty() {
            return Err(invalid("streams", "at least one stream is required"));
        }
        if streams.len() > MAX_STREAMS {
            return Err(invalid("streams", format!("at most {MAX_STREAMS} entries")));
        }
        let mut out = Vec::with_capacity(streams.len());
        for (i, s) in streams.iter().enumerate() {
            out.push(compile_rule(s).map_err(|m| invalid(format!("streams[{i}].name"), m))?);
        }
        if ips.len() > MAX_IPS {
            return Err(invalid("allowed_ips", format!("at most {MAX_IPS} entries")));
        }
        let mut nets = Vec::with_capacity(ips.len());
        for (i, s) in ips.iter().enumerate() {
            nets.push(parse_cidr(s).map_err(|m| invalid(format!("allowed_ips[{i}]"), m))?);
        }
        Ok(Self {
            streams: out,
            ips: nets,
        })
    }

    pub fn allows_stream(&self, stream: &StreamName) -> bool {
        self.streams.iter().any(|m| match m {
            Matcher::Exact(n) => n == stream.as_str(),
            Matcher::Regex(r) => r.is_match(stream.as_str()),
        })
    }

    /// An empty allow-list admits any address.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.ips.is_empty() || self.ips.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn compile_rule(s: &StreamRule) -> Result<Matcher, String> {
    if s.name.is_empty() || s.name.chars().count() > StreamName::MAX_LEN {
        return Err(format!("must be 1–{} characters", StreamName::MAX_LEN));
    }
    if !s.is_regex {
        let n: StreamName = s
            .name
            .parse()
            .map_err(|e: crate::domain::NameError| e.to_string())?;
        return Ok(Matcher::Exact(n.into()));
    }
    RegexBuilder::new(&format!("^(?:{})$", s.name))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(Matcher::Regex)
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "regular expression is too large".to_owned(),
            other => format!(
                "invalid regular expression: {}",
                one_line(&other.to_string())
            ),
        })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// Validate a label: 1–128 characters, no control characters.
pub fn check_label(label: &str) -> Result<(), Invalid> {
    let n = label.chars().count();
    if n == 0 || n > LABEL_MAX {
        return Err(invalid(
            "label",
            format!("must be 1–{LABEL_MAX} characters"),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(invalid("label", "must not contain control characters"));
    }
    Ok(())
}

/// Normalize CIDR strings to their canonical text.
pub fn normalize_ips(ips: &[String]) -> Result<Vec<String>, Invalid> {
    if ips.len() > MAX_IPS {
        return Err(invalid("allowed_ips", format!("at most {MAX_IPS} entries")));
    }
    ips.iter()
        .enumerate()
        .map(|(i, s)| {
            parse_cidr(s)
                .map(|n| n.to_string())
                .map_err(|m| invalid(format!("allowed_ips[{i}]"), m))
        })
        .collect()
}

/// Everything admission needs from a token row, compiled.
#[derive(Debug, Clone)]
pub struct CompiledToken {
    pub id: uuid::Uuid,
    pub label: String,
    pub priority: Option<i32>,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret_id: uuid::Uuid,
    pub rules: TokenRules,
}

impl CompiledToken {
    /// Compile a stored row. A row that fails validation (edited by hand,
    /// say) yields an error rather than a permissive token.
    pub fn from_row(row: &crate::store::tokens::TokenRow) -> Result<Self, Invalid> {
        let streams: Vec<StreamRule> = serde_json::from_value(row.streams.clone())
            .map_err(|e| invalid("streams", format!("stored value is malformed: {e}")))?;
        let ips: Vec<String> = row.allowed_ips.iter().flatten().cloned().collect();
        Ok(Self {
            id: row.id,
            label: row.label.clone(),
            priority: row.priority,
            enabled: row.enabled,
            expires_at: row.expires_at,
            secret_id: row.secret_id,
            rules: TokenRules::compile(&streams, &ips)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, is_regex: bool) -> StreamRule {
        StreamRule {
            name: name.into(),
            is_regex,
        }
    }

    #[test]
    fn exact_and_regex_rules() {
        let r = TokenRules::compile(&[rule("match1", false), rule("event/.*", true)], &[]).unwrap();
        assert!(r.allows_stream(&"match1".parse().unwrap()));
        assert!(!r.allows_stream(&"match10".parse().unwrap()));
        assert!(r.allows_stream(&"event/cam1".parse().unwrap()));
        // Anchored: a regex must match the whole name.
        assert!(!r.allows_stream(&"x/event/cam1".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_rules() {
        assert_eq!(TokenRules::compile(&[], &[]).unwrap_err().field, "streams");
        let e = TokenRules::compile(&[rule("ok", false), rule("(", true)], &[]).unwrap_err();
        assert_eq!(e.field, "streams[1].name");
        assert!(
            e.message.contains("invalid regular expression"),
            "{}",
            e.message
        );
        let e = TokenRules::compile(&[rule("a b", false)], &[]).unwrap_err();
        assert_eq!(e.field, "streams[0].name");
        let big = rule("(a{1,100}){1,100}", true);
        let e = TokenRules::compile(&[big], &[]).unwrap_err();
        assert!(e.message.contains("too large"), "{}", e.message);
        let many: Vec<_> = (0..65).map(|i| rule(&format!("s{i}"), false)).collect();
        assert!(TokenRules::compile(&many, &[]).is_err());
        let e = TokenRules::compile(&[rule("a", false)], &["10.0.0.0/33".into()]).unwrap_err();
        assert_eq!(e.field, "allowed_ips[0]");
    }

    #[test]
    fn ip_rules() {
        let r = TokenRules::compile(&[rule("a", false)], &["10.1.0.0/16".into(), "::1".into()])
            .unwrap();
        assert!(r.allows_ip("10.1.2.3".parse().unwrap()));
        assert!(r.allows_ip("::ffff:10.1.2.3".parse().unwrap()));
        assert!(r.allows_ip("::1".parse().unwrap()));
        assert!(!r.allows_ip("10.2.0.1".parse().unwrap()));
        let any = TokenRules::compile(&[rule("a", false)], &[]).unwrap();
        assert!(any.allows_ip("192.0.2.1".parse().unwrap()));
        assert_eq!(
            normalize_ips(&["10.1.2.3/8".into()]).unwrap(),
            vec!["10.0.0.0/8"]
        );
    }
}
