//! What may be shown of a string that can hold a secret: the one place
//! that masks URLs, stream keys and untrusted text before they reach a
//! log line, an API answer, an audit record or the CLI.
//!
//! Invariants:
//! - [`url`] and [`key`] keep only parts known not to be secret, each made
//!   of "plain" characters (`A-Z a-z 0-9 . _ ~ -`, and `/` in stream names):
//!   the scheme, the host and port, the first path segment (an RTMP
//!   application, a database name), the user name in front of a password,
//!   the values of a short list of harmless parameters (`sourceId`,
//!   `priority`, `latency`, …), and in an SRT Access Control stream id
//!   (`#!::r=…,m=…`) its resource, mode and type. Everything else becomes
//!   [`MASK`]: passwords, stream keys in a path, plain SRT stream ids,
//!   `token=`/`s=`/`passphrase=` and every other value, parameters without
//!   `=`, anything behind a malformed `%` escape, fragments.
//! - The output of [`url`] and [`key`] holds no control character, quote or
//!   backslash, so it cannot forge or break a log line.
//! - [`Untrusted`] shows text a peer chose (a user agent, a mode) escaped
//!   and cut at [`MAX_UNTRUSTED`] characters. It does not mask: never use it
//!   for a string that may carry a token.
//!
//! This module depends on nothing else in the crate, so every layer can
//! use it.

use std::fmt;

/// What a masked part is replaced with.
pub const MASK: &str = "***";

/// Characters of [`Untrusted`] text shown before it is cut.
pub const MAX_UNTRUSTED: usize = 128;

/// Longest plain part shown; a longer one is masked.
const MAX_PLAIN: usize = 128;

/// Longest redacted URL or key shown; the rest is cut (`…`).
pub const MAX_SHOWN: usize = 512;

/// Query and stream-id parameters whose values are never secret.
const SAFE_PARAMS: &[&str] = &[
    "sourceId",
    "priority",
    "latency",
    "mode",
    "sslmode",
    "connect_timeout",
    "user_source",
    "user_priority",
];

/// Query parameters of the REST API (filters and paging): never secret.
const API_PARAMS: &[&str] = &[
    "stream",
    "page",
    "per_page",
    "limit",
    "target",
    "action",
    "since",
    "state",
    "node",
    "region",
    "disconnect",
];

/// Keys of an SRT Access Control stream id (`#!::k=v,…`) whose values are
/// never secret: resource (the stream), mode, type, host.
const SAFE_STREAM_ID_KEYS: &[&str] = &["r", "m", "t", "h", "user_source", "user_priority"];

/// `url` with every part that may be secret masked (see the module doc),
/// at most [`MAX_SHOWN`] characters. Works on any `scheme://…` string,
/// parsed or not, valid or not; a string without a plain scheme is masked
/// whole.
pub fn url(raw: &str) -> String {
    cap(url_uncapped(raw))
}

fn url_uncapped(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return MASK.to_owned();
    };
    let scheme_ok = scheme.len() <= 16
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
    if !scheme_ok {
        return MASK.to_owned();
    }
    let mut out = format!("{scheme}://");
    // Userinfo ends at the last `@`: a password may hold `@`. One that
    // seems to hold `/`, `?` or `#` cannot be told from an `@` in a path
    // or query: such a URL is masked whole.
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, after) = (&rest[..at], &rest[at + 1..]);
            if userinfo.contains(['/', '?', '#']) {
                out.push_str(MASK);
                return out;
            }
            match userinfo.split_once(':') {
                Some((user, _)) if is_plain(user, false) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                // A lone user name may be the secret (`KEY@host`).
                _ => out.push_str(MASK),
            }
            out.push('@');
            after
        }
        None => rest,
    };
    // Host and port end at the path, the query or a fragment.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    if is_authority(authority) {
        out.push_str(authority);
    } else {
        out.push_str(MASK);
    }
    // The path: its first segment stays (an application, a database), the
    // rest (a stream key) is masked.
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (path, rest) = rest.split_at(end);
    if let Some(path) = path.strip_prefix('/') {
        out.push('/');
        let (first, more) = match path.split_once('/') {
            Some((f, m)) => (f, Some(m)),
            None => (path, None),
        };
        push_plain_or_mask(&mut out, first, false);
        if more.is_some_and(|m| !m.is_empty()) {
            out.push('/');
            out.push_str(MASK);
        } else if more.is_some() {
            out.push('/');
        }
    }
    if let Some(query) = rest.strip_prefix('?') {
        // The query runs to the end: in SRT URLs `#` is part of a stream id.
        out.push('?');
        out.push_str(&mask_query(query, '&', SAFE_PARAMS));
    } else if rest.starts_with('#') {
        out.push('#');
        out.push_str(MASK);
    }
    out
}

/// An RTMP stream key or application (`NAME[?QUERY]`) with its query
/// masked like a URL's; a name that is not plain is masked too. At most
/// [`MAX_SHOWN`] characters.
pub fn key(raw: &str) -> String {
    path_and_query(raw, SAFE_PARAMS)
}

/// The target of an HTTP request (`/api/v1/tokens?stream=x&page=2`) for
/// the access log: the path when plain, the values of the API's own
/// filter and paging parameters, every other value masked.
pub fn request_target(raw: &str) -> String {
    path_and_query(raw, API_PARAMS)
}

fn path_and_query(raw: &str, safe: &[&str]) -> String {
    let (name, query) = match raw.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (raw, None),
    };
    let mut out = String::new();
    push_plain_or_mask(&mut out, name, true);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&mask_query(q, '&', safe));
    }
    cap(out)
}

/// Cut a shown string (ASCII only) at [`MAX_SHOWN`] characters.
fn cap(mut s: String) -> String {
    if s.len() > MAX_SHOWN {
        s.truncate(MAX_SHOWN);
        s.push('…');
    }
    s
}

/// An SRT stream id as it may be shown: the Access Control form with its
/// safe fields kept, any other form masked whole (a plain stream id may be
/// the key itself).
pub fn stream_id(id: &str) -> String {
    match id.strip_prefix("#!::") {
        Some(body) => format!("#!::{}", mask_fields(body, ',', SAFE_STREAM_ID_KEYS)),
        None => MASK.to_owned(),
    }
}

/// Text a peer chose, for a log line: shown escaped (`\n`, `\u{0}`, `\"`)
/// and cut at [`MAX_UNTRUSTED`] characters.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(MAX_UNTRUSTED) {
            if c.is_control() || matches!(c, '"' | '\\') || is_invisible(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        if let Some((i, _)) = chars.next() {
            write!(f, "…(+{} bytes)", self.0.len() - i)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Line and paragraph separators and bidirectional controls: not
/// `is_control`, but they move or hide text on a terminal.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Mask the values of a `k=v` list joined by `sep`, keeping those of
/// `safe`; an SRT `streamid` is shown through [`stream_id`].
fn mask_query(query: &str, sep: char, safe: &[&str]) -> String {
    query
        .split(sep)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if decode(k).as_deref() == Some("streamid") => match decode(v) {
                Some(id) => format!("{k}={}", stream_id(&id)),
                None => format!("{k}={MASK}"),
            },
            _ => mask_field(p, safe),
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// Mask the values of a `k=v` list joined by `sep`, keeping those of `safe`.
fn mask_fields(list: &str, sep: char, safe: &[&str]) -> String {
    list.split(sep)
        .filter(|p| !p.is_empty())
        .map(|p| mask_field(p, safe))
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// One `k=v`: the value shown when the (decoded) key is in `safe` and the
/// (decoded) value is plain; the key shown when it is plain; a field
/// without `=` (a bare value) masked whole, and so is one whose value is
/// empty or holds another `=`: `?SECRET=`, `?SECRET==` and `?SEC=RET=x`
/// are how a bare secret with base64 padding reads, and its part before
/// the first `=` is no name to show.
fn mask_field(field: &str, safe: &[&str]) -> String {
    let Some((k, v)) = field.split_once('=') else {
        return MASK.to_owned();
    };
    if v.is_empty() || v.contains('=') {
        return MASK.to_owned();
    }
    let key = decode(k);
    let shown_key = match &key {
        Some(key) if is_plain(key, false) && key.len() <= 32 => key.as_str(),
        _ => return MASK.to_owned(),
    };
    let safe_key = safe.contains(&shown_key);
    match decode(v) {
        Some(v) if safe_key && is_plain(&v, true) => format!("{shown_key}={v}"),
        _ => format!("{shown_key}={MASK}"),
    }
}

/// Append `s` when it is plain, else the mask.
fn push_plain_or_mask(out: &mut String, s: &str, slash: bool) {
    match decode(s) {
        Some(d) if is_plain(&d, slash) => out.push_str(&d),
        _ if s.is_empty() => {}
        _ => out.push_str(MASK),
    }
}

/// `A-Z a-z 0-9 . _ ~ -` (and `/` when `slash`), at most [`MAX_PLAIN`]
/// bytes; empty counts as plain.
fn is_plain(s: &str, slash: bool) -> bool {
    s.len() <= MAX_PLAIN
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-') || (slash && c == '/')
        })
}

/// `host[:port]` or `[v6][:port]`: a plain host, a numeric port.
fn is_authority(s: &str) -> bool {
    let (host_ok, port) = match s.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.')),
                p,
            ),
            None => return false,
        },
        None => {
            let (h, p) = s.split_at(s.find(':').unwrap_or(s.len()));
            (!h.is_empty() && is_plain(h, false), p)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Percent-decode (`+` stays); `None` for a malformed escape or bytes that
/// are not UTF-8.
fn decode(s: &str) -> Option<String> {
    crate::percent::decode(s, false)
}

#[cfg(test)]
mod tests;
