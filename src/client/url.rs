//! Client URLs: `rtmp://HOST[:PORT]/APP/KEY[?QUERY]` and
//! `srt://HOST:PORT?streamid=ID[&latency=MS][&passphrase=P]`.
//!
//! Invariants: a parsed [`ClientUrl`] has a non-empty host, a port, and for
//! RTMP a non-empty application and stream key. The RTMP query belongs to
//! the stream key (`KEY?token=…` is what servers, this gateway included,
//! expect). In SRT URLs `#` is an ordinary character (stream ids in the
//! Access Control form start with `#!::`), and `latency` is in milliseconds
//! as in srt-live-transmit (not microseconds as in ffmpeg).
//!
//! [`ClientUrl::redacted`] is the only form that goes to logs, metrics,
//! the audit log and API answers: it goes through [`crate::redact::url`],
//! which masks the stream key, plain stream ids, the passphrase and every
//! query value or stream-id field that may hold a secret.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default RTMP port.
pub const RTMP_PORT: u16 = 1935;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A parsed `rtmp://` or `srt://` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientUrl {
    Rtmp(RtmpUrl),
    Srt(SrtUrl),
}

#[derive(Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    /// The application (`live`): the first path segment.
    pub app: String,
    /// Everything after the application, query included (`stream1?token=T`).
    pub key: String,
}

#[derive(Clone, PartialEq, Eq)]
pub struct SrtUrl {
    pub host: String,
    pub port: u16,
    pub stream_id: Option<String>,
    /// Receiver/sender latency (`latency=MS`); `None` = the library default.
    pub latency: Option<Duration>,
    /// Encryption passphrase (`passphrase=`, 10–79 characters).
    pub passphrase: Option<String>,
}

/// Why a URL was refused. Messages never repeat a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("unsupported scheme: use rtmp:// or srt://")]
    Scheme,
    #[error("missing host")]
    Host,
    #[error("invalid port")]
    Port,
    #[error("an SRT URL needs an explicit port")]
    SrtPort,
    #[error("an RTMP URL needs /APP/STREAM after the host")]
    RtmpPath,
    /// The parameter's name when it is a plain word (it may be a bare
    /// secret otherwise).
    #[error("invalid SRT parameter {0}")]
    SrtParam(String),
    #[error("credentials in the URL (user:password@) are not supported; use a token parameter")]
    Userinfo,
    #[error("malformed percent-encoding")]
    Escape,
}

impl ClientUrl {
    pub fn scheme(&self) -> &'static str {
        match self {
            ClientUrl::Rtmp(_) => "rtmp",
            ClientUrl::Srt(_) => "srt",
        }
    }

    /// `host:port`, for connecting (names are resolved at connect time).
    pub fn authority(&self) -> String {
        let (h, p) = match self {
            ClientUrl::Rtmp(u) => (&u.host, u.port),
            ClientUrl::Srt(u) => (&u.host, u.port),
        };
        if h.contains(':') {
            format!("[{h}]:{p}")
        } else {
            format!("{h}:{p}")
        }
    }

    /// The URL with secrets masked ([`crate::redact::url`]): safe for
    /// logs, metrics and API answers.
    pub fn redacted(&self) -> String {
        crate::redact::url(&self.in_clear())
    }

    /// The URL with its secrets in clear: for [`Self::redacted`] only.
    fn in_clear(&self) -> String {
        match self {
            ClientUrl::Rtmp(u) => format!("rtmp://{}/{}/{}", self.authority(), u.app, u.key),
            ClientUrl::Srt(u) => {
                let mut params = Vec::new();
                if let Some(id) = &u.stream_id {
                    params.push(format!("streamid={}", percent_encode(id)));
                }
                if let Some(l) = u.latency {
                    params.push(format!("latency={}", l.as_millis()));
                }
                if let Some(p) = &u.passphrase {
                    params.push(format!("passphrase={}", percent_encode(p)));
                }
                let mut s = format!("srt://{}", self.authority());
                if !params.is_empty() {
                    s.push('?');
                    s.push_str(&params.join("&"));
                }
                s
            }
        }
    }
}

impl ClientUrl {
    /// `text` (from the server this URL names) with every secret of this
    /// URL replaced by [`crate::redact::MASK`]: the stream key, its query
    /// values, the stream id and its fields, the passphrase.
    pub fn mask_in(&self, text: &str) -> String {
        fn fields<'a>(list: &'a str, sep: char, secrets: &mut Vec<&'a str>) {
            for f in list.split(sep) {
                secrets.push(f.split_once('=').map_or(f, |(_, v)| v));
            }
        }
        let mut secrets: Vec<&str> = Vec::new();
        match self {
            ClientUrl::Rtmp(u) => {
                secrets.push(&u.key);
                let (path, query) = u.key.split_once('?').unwrap_or((&u.key, ""));
                secrets.push(path);
                fields(query, '&', &mut secrets);
            }
            ClientUrl::Srt(u) => {
                if let Some(id) = &u.stream_id {
                    secrets.push(id);
                    let body = id.strip_prefix("#!::").unwrap_or(id);
                    fields(body, ',', &mut secrets);
                    if let Some((_, q)) = body.split_once('?') {
                        fields(q, '&', &mut secrets);
                    }
                }
                if let Some(p) = &u.passphrase {
                    secrets.push(p);
                }
            }
        }
        // Longest first, so that a part of a longer secret is not left.
        secrets.retain(|s| s.len() >= 3);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_owned();
        for s in secrets {
            out = out.replace(s, crate::redact::MASK);
        }
        out
    }
}

/// Escape what would end a query value (`&`, `%`, and anything not
/// printable ASCII); the stream-id punctuation (`#!:,=/?`) stays readable.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'&' | b'%' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for ClientUrl {
    /// The redacted form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ClientUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientUrl({})", self.redacted())
    }
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    crate::percent::decode(s, false).ok_or(UrlError::Escape)
}

/// A parameter's name as an error may show it: a bare value (`?SECRET`)
/// or an odd name is not repeated.
fn param_name(k: &str) -> String {
    if !k.is_empty() && k.len() <= 32 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("{k:?}")
    } else {
        "(a value without a name, or an unusual name)".to_owned()
    }
}

/// Split `host[:port]` (IPv6 in brackets).
fn host_port(auth: &str) -> Result<(String, Option<u16>), UrlError> {
    if auth.contains('@') {
        return Err(UrlError::Userinfo);
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or(UrlError::Host)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(UrlError::Host),
        }
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(UrlError::Host);
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(UrlError::Port)?,
        ),
        None => None,
    };
    Ok((host.to_owned(), port))
}

impl FromStr for ClientUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        if s.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::Host);
        }
        if let Some(rest) = s.strip_prefix("rtmp://") {
            let (auth, path) = rest.split_once('/').ok_or(UrlError::RtmpPath)?;
            let (host, port) = host_port(auth)?;
            let (app, key) = path.split_once('/').ok_or(UrlError::RtmpPath)?;
            if app.is_empty() || key.is_empty() || key.starts_with('?') {
                return Err(UrlError::RtmpPath);
            }
            return Ok(ClientUrl::Rtmp(RtmpUrl {
                host,
                port: port.unwrap_or(RTMP_PORT),
                app: app.to_owned(),
                key: key.to_owned(),
            }));
        }
        let rest = s.strip_prefix("srt://").ok_or(UrlError::Scheme)?;
        let (auth, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q),
            None => (rest, ""),
        };
        let auth = auth.strip_suffix('/').unwrap_or(auth);
        let (host, port) = host_port(auth)?;
        let port = port.ok_or(UrlError::SrtPort)?;
        let mut url = SrtUrl {
            host,
            port,
            stream_id: None,
            latency: None,
            passphrase: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match k {
                "streamid" if v.len() <= 512 => url.stream_id = Some(v),
                "latency" => {
                    let ms = v
                        .parse::<u64>()
                        .ok()
                        .filter(|ms| *ms <= 60_000)
                        .ok_or_else(|| UrlError::SrtParam("latency (0..=60000 ms)".into()))?;
                    url.latency = Some(Duration::from_millis(ms));
                }
                "passphrase" if (10..=79).contains(&v.len()) => url.passphrase = Some(v),
                "mode" if v == "caller" => {}
                other => return Err(UrlError::SrtParam(param_name(other))),
            }
        }
        Ok(ClientUrl::Srt(url))
    }
}

impl serde::Serialize for ClientUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rtmp() {
        let u: ClientUrl = "rtmp://127.0.0.1:1936/live/ev/cam1?token=a.b.c&sourceId=x"
            .parse()
            .unwrap();
        let ClientUrl::Rtmp(r) = &u else { panic!() };
        assert_eq!(r.host, "127.0.0.1");
        assert_eq!(r.port, 1936);
        assert_eq!(r.app, "live");
        assert_eq!(r.key, "ev/cam1?token=a.b.c&sourceId=x");
        assert_eq!(
            u.redacted(),
            "rtmp://127.0.0.1:1936/live/***?token=***&sourceId=x"
        );
        let u: ClientUrl = "rtmp://example.org/app/k".parse().unwrap();
        assert_eq!(u.authority(), "example.org:1935");
        for bad in [
            "rtmp://h",
            "rtmp://h/",
            "rtmp://h/app",
            "rtmp://h/app/",
            "rtmp://:1/a/b",
            "rtmp://h:0/a/b",
            "rtmp://h:x/a/b",
            "http://h/a/b",
            "rtmp://h/a/b c",
            "rtmp://user:pw@h/a/b",
        ] {
            assert!(bad.parse::<ClientUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_srt() {
        let u: ClientUrl = "srt://127.0.0.1:9000?streamid=#!::r=s1,m=request,s=SECRET&latency=200"
            .parse()
            .unwrap();
        let ClientUrl::Srt(s) = &u else { panic!() };
        assert_eq!(s.stream_id.as_deref(), Some("#!::r=s1,m=request,s=SECRET"));
        assert_eq!(s.latency, Some(Duration::from_millis(200)));
        let red = u.redacted();
        assert!(!red.contains("SECRET"), "{red}");
        assert_eq!(
            red,
            "srt://127.0.0.1:9000?streamid=#!::r=s1,m=request,s=***&latency=200"
        );
        let u: ClientUrl = "srt://[::1]:9000?streamid=s1%3Ftoken%3DT".parse().unwrap();
        assert_eq!(u.authority(), "[::1]:9000");
        assert_eq!(u.redacted(), "srt://[::1]:9000?streamid=***");
        for bad in [
            "srt://h",
            "srt://h:9000?latency=x",
            "srt://h:9000?foo=1",
            "srt://h:9000?passphrase=short",
            "srt://h:9000?mode=listener",
            "srt://h:9000?streamid=%zz",
        ] {
            assert!(bad.parse::<ClientUrl>().is_err(), "{bad}");
        }
        // A bare value is not repeated in the error.
        let e = "srt://h:9000?SECRET-KEY".parse::<ClientUrl>().unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        // What the redaction shows of a parsed URL is what it shows of
        // the URL as written.
        let raw = "srt://h:9000?streamid=%23%21%3A%3Ar%3Ds1%2Cs%3DT%26x&passphrase=0123456789ab";
        let u: ClientUrl = raw.parse().unwrap();
        assert_eq!(u.redacted(), crate::redact::url(raw));
        assert_eq!(
            u.redacted(),
            "srt://h:9000?streamid=#!::r=s1,s=***&passphrase=***"
        );
    }

    #[test]
    fn masks_own_secrets_in_server_text() {
        let u: ClientUrl = "rtmp://h/live/KEY-123?token=TOK-456&priority=5"
            .parse()
            .unwrap();
        let said = u.mask_in("bad stream key KEY-123?token=TOK-456&priority=5; token TOK-456");
        assert!(
            !said.contains("KEY-123") && !said.contains("TOK-456"),
            "{said}"
        );
        let u: ClientUrl = "srt://h:9000?streamid=#!::r=s1,s=TOK-789&passphrase=0123456789"
            .parse()
            .unwrap();
        let said = u.mask_in("refused TOK-789 with 0123456789");
        assert!(
            !said.contains("TOK-789") && !said.contains("0123456789"),
            "{said}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = format!("rtmp://{s}").parse::<ClientUrl>().map(|u| u.redacted());
            let _ = format!("srt://{s}").parse::<ClientUrl>().map(|u| u.redacted());
        }
    }
}
