//! Parsing of the publish and play parameters carried in a stream key
//! (`STREAM?token=T&priority=N&sourceId=ID`), shared by RTMP and the SRT
//! free-form stream id.

use crate::domain::{SourceId, StreamName};

/// What a publish or play request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub stream: StreamName,
    pub source: SourceId,
    pub token: Option<String>,
    /// `priority=N`: pins the feed's priority (it may only lower the
    /// token's, unless the token allows raising: `auth::publish`).
    pub priority: Option<i32>,
    /// Play only: `feed=ID` plays that feed itself (a cluster peer's relay),
    /// authorized by `cluster=CREDENTIAL`.
    pub feed: Option<crate::domain::FeedId>,
    pub cluster: Option<String>,
}

/// Messages never repeat a parameter's value (it may be a token) and name
/// a parameter only when the name is a plain word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("invalid stream name: {0}")]
    Stream(String),
    #[error("invalid sourceId: {0}")]
    Source(String),
    #[error("invalid priority: expected an integer")]
    Priority,
    #[error("malformed percent-encoding in {0}")]
    Query(String),
    #[error("invalid feed: expected a feed id")]
    Feed,
    #[error("parameter {0} given twice")]
    Duplicate(&'static str),
}

/// What an error may call the part of a key that `what` names: the
/// stream name, or a parameter whose name is a plain word.
fn part_name(what: Option<&str>) -> String {
    match what {
        None => "the stream name".to_owned(),
        Some(k)
            if !k.is_empty()
                && k.len() <= 32
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            format!("parameter {k}")
        }
        Some(_) => "a parameter".to_owned(),
    }
}

/// Decode `%XX` and `+` of the part `what` names ([`part_name`]); invalid
/// escapes are an error that does not repeat the text.
fn percent_decode(s: &str, what: Option<&str>) -> Result<String, RequestError> {
    crate::percent::decode(s, true).ok_or_else(|| RequestError::Query(part_name(what)))
}

/// Parse `STREAM[?k=v&...]`. Unknown parameters are ignored (encoders add
/// their own); known ones are validated.
pub fn parse_stream_key(key: &str) -> Result<StreamRequest, RequestError> {
    let (name, query) = match key.split_once('?') {
        Some((n, q)) => (n, q),
        None => (key, ""),
    };
    let name = percent_decode(name, None)?;
    let stream: StreamName = name
        .parse()
        .map_err(|e: crate::domain::NameError| RequestError::Stream(e.to_string()))?;
    let mut source: Option<SourceId> = None;
    let mut token: Option<String> = None;
    let mut priority: Option<i32> = None;
    let mut feed = None;
    let mut cluster = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v, Some(k))?;
        match k {
            "token" if token.is_some() => return Err(RequestError::Duplicate("token")),
            "token" => token = Some(v),
            "priority" => {
                let p = v
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| RequestError::Priority)?;
                if priority.replace(p).is_some() {
                    return Err(RequestError::Duplicate("priority"));
                }
            }
            "sourceId" => {
                let s: SourceId = v
                    .parse()
                    .map_err(|e: crate::domain::NameError| RequestError::Source(e.to_string()))?;
                if source.replace(s).is_some() {
                    return Err(RequestError::Duplicate("sourceId"));
                }
            }
            "feed" => {
                let f = v.parse().map_err(|_| RequestError::Feed)?;
                if feed.replace(f).is_some() {
                    return Err(RequestError::Duplicate("feed"));
                }
            }
            "cluster" if cluster.is_some() => return Err(RequestError::Duplicate("cluster")),
            "cluster" => cluster = Some(v),
            _ => {}
        }
    }
    Ok(StreamRequest {
        stream,
        source: source.unwrap_or_default(),
        token,
        priority,
        feed,
        cluster,
    })
}

/// What an SRT caller asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtMode {
    Publish,
    Request,
}

/// Why an SRT stream id was refused (mapped to reject codes by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("missing stream id")]
    Missing,
    #[error("malformed stream id: {0}")]
    Malformed(String),
    /// The mode as given, escaped and cut ([`crate::redact::Untrusted`]).
    #[error("unsupported mode \"{0}\": use m=publish or m=request")]
    BadMode(String),
}

/// Parse an SRT stream id: the Access Control form
/// `#!::r=STREAM,m=publish,s=TOKEN[,user_priority=N][,user_source=ID]` or
/// the free form `STREAM?token=T[&priority=N][&sourceId=ID]` (publish when a
/// token is present, else request).
pub fn parse_srt_stream_id(raw: Option<&str>) -> Result<(SrtMode, StreamRequest), StreamIdError> {
    let raw = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(StreamIdError::Missing)?;
    if raw.len() > 512 {
        return Err(StreamIdError::Malformed("longer than 512 bytes".into()));
    }
    let Some(body) = raw.strip_prefix("#!::") else {
        let req = parse_stream_key(raw).map_err(|e| StreamIdError::Malformed(e.to_string()))?;
        let mode = if req.token.is_some() {
            SrtMode::Publish
        } else {
            SrtMode::Request
        };
        return Ok((mode, req));
    };
    let (mut r, mut m, mut s, mut prio, mut src) = (None, None, None, None, None);
    for kv in body.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| StreamIdError::Malformed("a field is not key=value".into()))?;
        let slot = match k {
            "r" => &mut r,
            "m" => &mut m,
            "s" => &mut s,
            "user_priority" => &mut prio,
            "user_source" => &mut src,
            // Standard keys we do not use (t = type, u = user, h = host).
            _ => continue,
        };
        if slot.replace(v.to_owned()).is_some() {
            return Err(StreamIdError::Malformed(format!("key {k} given twice")));
        }
    }
    let name = r.ok_or_else(|| StreamIdError::Malformed("missing r=STREAM".into()))?;
    let stream: StreamName = name
        .parse()
        .map_err(|e: crate::domain::NameError| StreamIdError::Malformed(e.to_string()))?;
    let mode = match m.as_deref().unwrap_or("request") {
        "publish" => SrtMode::Publish,
        "request" => SrtMode::Request,
        other => {
            return Err(StreamIdError::BadMode(
                crate::redact::Untrusted(other).to_string(),
            ))
        }
    };
    let priority = match prio {
        Some(p) => Some(
            p.trim()
                .parse::<i32>()
                .map_err(|_| StreamIdError::Malformed("user_priority is not an integer".into()))?,
        ),
        None => None,
    };
    let source = match src {
        Some(s) => s
            .parse::<SourceId>()
            .map_err(|e: crate::domain::NameError| StreamIdError::Malformed(e.to_string()))?,
        None => SourceId::default(),
    };
    Ok((
        mode,
        StreamRequest {
            stream,
            source,
            token: s,
            priority,
            feed: None,
            cluster: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_parameters() {
        let r = parse_stream_key("match1?token=abc.def.ghi&priority=-5&sourceId=cam2&x=1").unwrap();
        assert_eq!(r.stream.as_str(), "match1");
        assert_eq!(r.source.as_str(), "cam2");
        assert_eq!(r.token.as_deref(), Some("abc.def.ghi"));
        assert_eq!(r.priority, Some(-5));
        let r = parse_stream_key("ev/cam%2D1").unwrap();
        assert_eq!(r.stream.as_str(), "ev/cam-1");
        assert!(r.token.is_none() && r.source.is_default() && r.priority.is_none());
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(matches!(parse_stream_key(""), Err(RequestError::Stream(_))));
        assert!(matches!(
            parse_stream_key("a b"),
            Err(RequestError::Stream(_))
        ));
        assert!(matches!(
            parse_stream_key("s?priority=high"),
            Err(RequestError::Priority)
        ));
        assert!(matches!(
            parse_stream_key("s?sourceId=a/b"),
            Err(RequestError::Source(_))
        ));
        // A sign is not a hex digit (`u8::from_str_radix` would take `+1`).
        for key in ["s?token=%zz", "s?token=%+1", "s?token=%-1", "s?token=%1"] {
            assert!(
                matches!(parse_stream_key(key), Err(RequestError::Query(_))),
                "{key}"
            );
        }
        assert!(matches!(
            parse_stream_key("s?token=a&token=b"),
            Err(RequestError::Duplicate("token"))
        ));
    }

    #[test]
    fn srt_stream_ids() {
        let (m, r) = parse_srt_stream_id(Some(
            "#!::r=match1,m=publish,s=a.b.c,user_priority=7,user_source=cam2",
        ))
        .unwrap();
        assert_eq!(m, SrtMode::Publish);
        assert_eq!(r.stream.as_str(), "match1");
        assert_eq!(r.token.as_deref(), Some("a.b.c"));
        assert_eq!(r.priority, Some(7));
        assert_eq!(r.source.as_str(), "cam2");
        let (m, r) = parse_srt_stream_id(Some("#!::r=ev/x,m=request")).unwrap();
        assert_eq!(m, SrtMode::Request);
        assert!(r.token.is_none());
        let (m, r) = parse_srt_stream_id(Some("match1?token=t&priority=3")).unwrap();
        assert_eq!(m, SrtMode::Publish);
        assert_eq!(r.priority, Some(3));
        assert_eq!(
            parse_srt_stream_id(Some("match1")).unwrap().0,
            SrtMode::Request
        );
        assert_eq!(parse_srt_stream_id(None), Err(StreamIdError::Missing));
        assert!(matches!(
            parse_srt_stream_id(Some("#!::r=a,m=bidirectional")),
            Err(StreamIdError::BadMode(_))
        ));
        assert!(matches!(
            parse_srt_stream_id(Some("#!::m=publish")),
            Err(StreamIdError::Malformed(_))
        ));
        assert!(matches!(
            parse_srt_stream_id(Some("#!::r=a,r=b")),
            Err(StreamIdError::Malformed(_))
        ));
        assert!(matches!(
            parse_srt_stream_id(Some("#!::r=a,user_priority=x")),
            Err(StreamIdError::Malformed(_))
        ));
        assert!(matches!(
            parse_srt_stream_id(Some("#!::r=a b")),
            Err(StreamIdError::Malformed(_))
        ));
    }

    #[test]
    fn errors_do_not_repeat_values() {
        for key in [
            "s?token=SECRET%zz",
            "s?token=SECRET%C3",
            "s?x=1&SECRET%zz=%zz",
            "s?t%zzoken=SECRET%zz",
            "s?priority=SECRET",
            "SECRET%zz?token=x",
            "s?feed=SECRET",
        ] {
            let e = parse_stream_key(key).unwrap_err().to_string();
            assert!(!e.contains("SECRET"), "{key}: {e}");
        }
        for id in [
            "#!::r=s,SECRET",
            "#!::r=s,user_priority=SECRET",
            "s?token=SECRET%zz",
        ] {
            let e = parse_srt_stream_id(Some(id)).unwrap_err().to_string();
            assert!(!e.contains("SECRET"), "{id}: {e}");
        }
        let e = parse_srt_stream_id(Some("#!::r=s,m=x\ny"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = parse_stream_key(&s);
            let _ = parse_srt_stream_id(Some(&s));
            let _ = parse_srt_stream_id(Some(&format!("#!::{s}")));
        }
    }
}
