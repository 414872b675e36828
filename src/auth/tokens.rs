//! Publish-token definitions: validation of what operators write, and the
//! compiled form that admission evaluates.
//!
//! Invariants: a [`TokenRules`] holds only valid entries (1..=64 streams,
//! CIDRs parsed, IPv4-mapped IPv6 entries held as the IPv4 networks they
//! map). A regex rule is parsed **on its own** into a syntax tree and
//! anchored structurally (`\A rule \z`), never by pasting text around it,
//! so no rule can close the anchoring and open an alternation of its own
//! (`a)|(.*`); its compiled program is size-limited. Nothing here accepts
//! control characters.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use ipnet::{IpNet, Ipv4Net};
use regex_automata::meta::{self, Regex};
use regex_syntax::hir::{Hir, Look};
use serde::{Deserialize, Serialize};

use crate::domain::StreamName;

pub const MAX_STREAMS: usize = 64;
pub const MAX_IPS: usize = 256;
pub const LABEL_MAX: usize = 128;
/// Compiled-program limit for one stream regex.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Lazy-DFA cache of one stream regex (names are at most 128 bytes).
const REGEX_DFA_CACHE: usize = 64 * 1024;
/// Nesting depth a regex rule may reach.
const REGEX_NEST_LIMIT: u32 = 32;

/// One entry of a token's allowed streams.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRule {
    /// A stream name, or a regular expression when `is_regex` is true.
    /// 1–128 characters, no control characters. A regex must be complete
    /// on its own and matches the whole stream name (it is anchored at
    /// both ends as a unit: `a|b` allows `a` and `b`, nothing else); one
    /// that does not parse on its own, such as `a)|(.*`, is refused.
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

/// Refuse control characters (NUL, newline, escape, DEL, C1) in a string
/// an operator or a client wrote.
pub fn check_no_control(field: impl Into<String>, value: &str) -> Result<(), Invalid> {
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A stream rule ready to match.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Regex(Arc<Regex>),
}

/// The compiled stream and IP rules of one token.
#[derive(Debug, Clone)]
pub struct TokenRules {
    streams: Vec<Matcher>,
    ips: Vec<IpNet>,
}

impl TokenRules {
    /// Compile and validate (no cache: what an API write is checked with).
    pub fn compile(streams: &[StreamRule], ips: &[String]) -> Result<Self, Invalid> {
        Self::compile_with(streams, ips, None)
    }

    /// Compile and validate, taking compiled regexes from `cache` when it
    /// has them. Errors name the entry at fault.
    pub fn compile_with(
        streams: &[StreamRule],
        ips: &[String],
        cache: Option<&RuleCache>,
    ) -> Result<Self, Invalid> {
        if streams.is_empty() {
            return Err(invalid("streams", "at least one stream is required"));
        }
        if streams.len() > MAX_STREAMS {
            return Err(invalid("streams", format!("at most {MAX_STREAMS} entries")));
        }
        let mut out = Vec::with_capacity(streams.len());
        for (i, s) in streams.iter().enumerate() {
            out.push(compile_rule(s, cache).map_err(|m| invalid(format!("streams[{i}].name"), m))?);
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

    /// An empty allow-list admits any address. An address matches an
    /// entry holding its IPv4 form or its IPv4-mapped IPv6 form, so
    /// `10.0.0.1`, `::ffff:10.0.0.1` and `::ffff:10.0.0.0/104` all admit
    /// an encoder at 10.0.0.1, however the socket reports it.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        if self.ips.is_empty() {
            return true;
        }
        let v4 = canonical_ip(ip);
        let v6 = match v4 {
            IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
            other => other,
        };
        self.ips.iter().any(|n| n.contains(&v4) || n.contains(&v6))
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// An IPv6 network inside `::ffff:0:0/96` is the IPv4 network it maps.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if n.prefix_len() >= 96 {
            if let Some(a) = n.network().to_ipv4_mapped() {
                if let Ok(v4) = Ipv4Net::new(a, n.prefix_len() - 96) {
                    return IpNet::V4(v4);
                }
            }
        }
    }
    net
}

fn compile_rule(s: &StreamRule, cache: Option<&RuleCache>) -> Result<Matcher, String> {
    if s.name.is_empty() || s.name.chars().count() > StreamName::MAX_LEN {
        return Err(format!("must be 1–{} characters", StreamName::MAX_LEN));
    }
    if s.name.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    if !s.is_regex {
        let n: StreamName = s
            .name
            .parse()
            .map_err(|e: crate::domain::NameError| e.to_string())?;
        return Ok(Matcher::Exact(n.into()));
    }
    match cache {
        Some(c) => c.regex(&s.name),
        None => compile_regex(&s.name),
    }
    .map(Matcher::Regex)
}

/// Parse `rule` on its own, anchor its syntax tree at both ends, compile.
fn compile_regex(rule: &str) -> Result<Arc<Regex>, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .nest_limit(REGEX_NEST_LIMIT)
        .utf8(true)
        .build()
        .parse(rule)
        .map_err(|e| {
            format!(
                "invalid regular expression (it must be complete on its own): {}",
                one_line(&e.to_string())
            )
        })?;
    let anchored = Hir::concat(vec![Hir::look(Look::Start), hir, Hir::look(Look::End)]);
    let config = meta::Config::new()
        .match_kind(regex_automata::MatchKind::LeftmostFirst)
        .utf8_empty(true)
        .which_captures(regex_automata::nfa::thompson::WhichCaptures::None)
        .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
        .hybrid_cache_capacity(REGEX_DFA_CACHE);
    meta::Builder::new()
        .configure(config)
        .build_from_hir(&anchored)
        .map(Arc::new)
        .map_err(|e| {
            if e.size_limit().is_some() {
                "regular expression is too large".to_owned()
            } else {
                format!("invalid regular expression: {}", one_line(&e.to_string()))
            }
        })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compiled regex rules by their text, shared by admission and the token
/// listing, so a rule is compiled once rather than once per request.
/// Bounded by entries and by the compiled programs' memory; the oldest
/// entries go first. Failures are remembered too (a bad stored rule is not
/// re-parsed on every listing).
pub struct RuleCache {
    inner: Mutex<RuleCacheInner>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct RuleCacheInner {
    map: HashMap<String, (Result<Arc<Regex>, String>, usize)>,
    order: VecDeque<String>,
    bytes: usize,
}

impl std::fmt::Debug for RuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map(|i| i.map.len()).unwrap_or(0);
        f.debug_struct("RuleCache").field("entries", &n).finish()
    }
}

impl Default for RuleCache {
    fn default() -> Self {
        Self::new(16_384, 64 * 1024 * 1024)
    }
}

impl RuleCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    /// The compiled regex of `rule` (validated the same way as at write
    /// time); compiled outside the lock on a miss.
    pub fn regex(&self, rule: &str) -> Result<Arc<Regex>, String> {
        if let Some((r, _)) = self.lock().map.get(rule) {
            return r.clone();
        }
        let compiled = compile_regex(rule);
        let cost = rule.len() + compiled.as_ref().map_or(64, |r| r.memory_usage());
        let mut inner = self.lock();
        if !inner.map.contains_key(rule) {
            inner.map.insert(rule.to_owned(), (compiled.clone(), cost));
            inner.order.push_back(rule.to_owned());
            inner.bytes += cost;
            while inner.map.len() > self.max_entries || inner.bytes > self.max_bytes {
                let Some(old) = inner.order.pop_front() else {
                    break;
                };
                if let Some((_, c)) = inner.map.remove(&old) {
                    inner.bytes -= c;
                }
            }
        }
        compiled
    }

    /// Whether one of the regex entries of `rules` matches `stream`. An
    /// entry that does not compile matches nothing.
    pub fn regex_rules_allow(&self, rules: &[StreamRule], stream: &StreamName) -> bool {
        rules.iter().filter(|r| r.is_regex).any(|r| {
            self.regex(&r.name)
                .is_ok_and(|re| re.is_match(stream.as_str()))
        })
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RuleCacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or
/// /128); IPv4-mapped IPv6 networks become the IPv4 networks they map.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(canonical_net(n.trunc()));
    }
    s.parse::<IpAddr>()
        .map(|a| canonical_net(IpNet::from(a)))
        .map_err(|_| {
            let shown: String = s.chars().take(64).collect();
            format!("{shown:?} is not an IP address or CIDR")
        })
}

/// Validate one stream rule on its own; errors name `field`.
pub fn check_rule(field: impl Into<String>, rule: &StreamRule) -> Result<(), Invalid> {
    compile_rule(rule, None)
        .map(|_| ())
        .map_err(|m| invalid(field, m))
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
    /// `priority=` may raise a feed above `priority`.
    pub may_raise: bool,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret_id: uuid::Uuid,
    /// The row revision this was compiled from.
    pub revision: i64,
    pub rules: TokenRules,
}

impl CompiledToken {
    /// Compile a stored row. A row that fails validation (edited by hand,
    /// or a regex stored before rules were parsed on their own) yields an
    /// error rather than a permissive token.
    pub fn from_row(
        row: &crate::store::tokens::TokenRow,
        cache: Option<&RuleCache>,
    ) -> Result<Self, Invalid> {
        let streams: Vec<StreamRule> = serde_json::from_value(row.streams.clone())
            .map_err(|e| invalid("streams", format!("stored value is malformed: {e}")))?;
        let ips: Vec<String> = row.allowed_ips.iter().flatten().cloned().collect();
        Ok(Self {
            id: row.id,
            label: row.label.clone(),
            priority: row.priority,
            may_raise: row.allow_priority_override,
            enabled: row.enabled,
            expires_at: row.expires_at,
            secret_id: row.secret_id,
            revision: row.revision,
            rules: TokenRules::compile_with(&streams, &ips, cache)?,
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

    #[test]
    fn regex_rules_cannot_escape_the_anchoring() {
        for escaping in ["teamA/[a-z0-9]+)|(.*", ".*)|(", "a)|(?:.*", "abc\\", "a\nb"] {
            let e = TokenRules::compile(&[rule(escaping, true)], &[]);
            assert!(e.is_err(), "{escaping:?} compiled");
        }
        let r = TokenRules::compile(&[rule("teamA/[a-z0-9]+", true)], &[]).unwrap();
        assert!(r.allows_stream(&"teamA/x1".parse().unwrap()));
        assert!(!r.allows_stream(&"teamB/x1".parse().unwrap()));
        // An alternation is anchored as a whole.
        let alt = TokenRules::compile(&[rule("a|b", true)], &[]).unwrap();
        for (s, ok) in [
            ("a", true),
            ("b", true),
            ("ab", false),
            ("xb", false),
            ("ax", false),
        ] {
            assert_eq!(alt.allows_stream(&s.parse().unwrap()), ok, "{s}");
        }
        // Inline flags stay inside the rule; a comment cannot eat the
        // anchoring (it is not text around the rule).
        for commented in ["(?x) a b  # spaced", "(?x)ab#", "(?x)ab#)|(.*"] {
            let x = TokenRules::compile(&[rule(commented, true)], &[]).unwrap();
            assert!(x.allows_stream(&"ab".parse().unwrap()), "{commented}");
            assert!(!x.allows_stream(&"abc".parse().unwrap()), "{commented}");
        }
        // Empty-matching rules match only what they say.
        let opt = TokenRules::compile(&[rule("x?", true)], &[]).unwrap();
        assert!(opt.allows_stream(&"x".parse().unwrap()));
        assert!(!opt.allows_stream(&"y".parse().unwrap()));
    }

    #[test]
    fn control_characters_are_refused_in_every_rule() {
        for bad in ["a\u{0}b", "a\nb", "\u{7f}", "\u{1b}[1m"] {
            for is_regex in [false, true] {
                let e = TokenRules::compile(&[rule(bad, is_regex)], &[]).unwrap_err();
                assert_eq!(e.field, "streams[0].name");
                assert!(e.message.contains("control characters"), "{}", e.message);
            }
            assert!(check_label(bad).is_err());
            assert!(normalize_ips(&[bad.to_owned()]).is_err());
        }
    }

    #[test]
    fn ipv4_mapped_entries_are_their_ipv4_networks() {
        assert_eq!(
            normalize_ips(&["::ffff:10.0.0.1".into(), "::ffff:10.0.0.0/104".into()]).unwrap(),
            vec!["10.0.0.1/32", "10.0.0.0/8"]
        );
        for entry in ["::ffff:10.0.0.1", "::ffff:10.0.0.1/128", "10.0.0.1"] {
            let r = TokenRules::compile(&[rule("a", false)], &[entry.into()]).unwrap();
            assert!(r.allows_ip("10.0.0.1".parse().unwrap()), "{entry}");
            assert!(r.allows_ip("::ffff:10.0.0.1".parse().unwrap()), "{entry}");
            assert!(!r.allows_ip("10.0.0.2".parse().unwrap()), "{entry}");
            assert!(!r.allows_ip("::1".parse().unwrap()), "{entry}");
        }
        // A wide IPv6 entry still covers mapped addresses, as it always did.
        let wide = TokenRules::compile(&[rule("a", false)], &["::/0".into()]).unwrap();
        assert!(wide.allows_ip("::ffff:192.0.2.1".parse().unwrap()));
        assert!(wide.allows_ip("192.0.2.1".parse().unwrap()));
        assert!(wide.allows_ip("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn rule_cache_compiles_once_and_stays_bounded() {
        let c = RuleCache::new(3, usize::MAX);
        let a = c.regex("a+").unwrap();
        let again = c.regex("a+").unwrap();
        assert!(Arc::ptr_eq(&a, &again), "a hit returns the compiled regex");
        assert!(c.regex("a)|(.*").is_err());
        assert!(
            c.regex("a)|(.*").is_err(),
            "failures are remembered, still failures"
        );
        c.regex("b").unwrap();
        c.regex("c").unwrap();
        assert_eq!(c.len(), 3);
        let small = RuleCache::new(100, 1);
        small.regex("a").unwrap();
        assert!(small.len() <= 1);
        let rules = [rule("x", false), rule("ev/[a-z]+", true)];
        assert!(c.regex_rules_allow(&rules, &"ev/abc".parse().unwrap()));
        assert!(
            !c.regex_rules_allow(&rules, &"x".parse().unwrap()),
            "exact entries are not regexes"
        );
        assert!(!c.regex_rules_allow(&[rule("a)|(.*", true)], &"zzz".parse().unwrap()));
    }
}
