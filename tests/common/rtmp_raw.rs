//! Raw RTMP for attack tests: a plain handshake over a blocking socket
//! (optionally from a chosen loopback address), hand-made chunks and AMF0
//! bodies, and a publish attempt driven by rml_rtmp's client session.

// Each test crate compiles these helpers and uses a different part of
// them: an `expect` would be unfulfilled in the crates that use it all.
#![allow(
    dead_code,
    reason = "each test crate uses a part of the shared helpers"
)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};

/// A TCP connection to `addr` from `local` (any port).
pub fn connect_from(local: IpAddr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(local, 0).into())
        .expect("bind the local address");
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    s.into()
}

/// Plain (non-digest) RTMP handshake as a client on `s`.
pub fn handshake_on(mut s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 8]);
    c0c1.extend((0..1528).map(|i| (i * 7 % 251) as u8));
    s.write_all(&c0c1).unwrap();
    let mut s0s1s2 = vec![0u8; 1 + 1536 * 2];
    s.read_exact(&mut s0s1s2).expect("server handshake");
    s.write_all(&s0s1s2[1..1537]).unwrap();
    s
}

/// Connect to `addr` and complete a plain handshake.
pub fn handshake(addr: SocketAddr) -> TcpStream {
    handshake_on(TcpStream::connect(addr).expect("connect"))
}

/// Whether the server closes the connection within `timeout` (reading and
/// discarding whatever it sends meanwhile).
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// One RTMP message as chunks of `chunk_size` on chunk stream 3: a type-0
/// header, then type-3 continuation headers.
pub fn chunks(type_id: u8, stream_id: u32, payload: &[u8], chunk_size: usize) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![0x03, 0, 0, 0];
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, piece) in payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            out.push(0xC3);
        }
        out.extend_from_slice(piece);
    }
    out
}

pub fn amf0_string(out: &mut Vec<u8>, s: &str) {
    out.push(0x02);
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn amf0_number(out: &mut Vec<u8>, n: f64) {
    out.push(0x00);
    out.extend_from_slice(&n.to_be_bytes());
}

/// A `connect` command whose command object nests `depth` objects
/// (`{"a": {"a": {…}}}`), each level 4 bytes, closed properly.
pub fn nested_connect(depth: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(depth * 7 + 32);
    amf0_string(&mut body, "connect");
    amf0_number(&mut body, 1.0);
    for _ in 0..depth {
        body.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
    }
    body.push(0x05); // null at the bottom
    for _ in 0..depth {
        body.extend_from_slice(&[0x00, 0x00, 0x09]);
    }
    chunks(0x14, 0, &body, 128)
}

/// What the server answered to a publish attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    Accepted,
    /// Refused: `code: description`.
    Refused(String),
    /// The server closed the connection without answering.
    Closed,
}

/// Connect from `local`, handshake, `connect` to `live`, `publish` `key`,
/// and return the server's answer (within `timeout`). The socket is
/// returned too so that an accepted publisher can be kept open.
pub fn publish_attempt(
    local: IpAddr,
    addr: SocketAddr,
    key: &str,
    timeout: Duration,
) -> (PublishOutcome, TcpStream) {
    request(local, addr, "live", key, false, timeout)
}

/// Like [`publish_attempt`] from 127.0.0.1, but `connect` to `app`.
pub fn publish_attempt_app(
    addr: SocketAddr,
    app: &str,
    key: &str,
    timeout: Duration,
) -> (PublishOutcome, TcpStream) {
    request(IpAddr::from([127, 0, 0, 1]), addr, app, key, false, timeout)
}

/// Like [`publish_attempt`], but `play` `key`. The session's outbound
/// chunk size is 4096 from then on.
pub fn play_attempt(
    local: IpAddr,
    addr: SocketAddr,
    key: &str,
    timeout: Duration,
) -> (PublishOutcome, TcpStream) {
    request(local, addr, "live", key, true, timeout)
}

fn request(
    local: IpAddr,
    addr: SocketAddr,
    app: &str,
    key: &str,
    play: bool,
    timeout: Duration,
) -> (PublishOutcome, TcpStream) {
    let mut s = connect_from(local, addr);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + timeout;
    let mut hs = Handshake::new(PeerType::Client);
    s.write_all(&hs.generate_outbound_p0_and_p1().unwrap())
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let read = |s: &mut TcpStream, buf: &mut [u8]| -> Option<usize> {
        loop {
            assert!(
                Instant::now() < end,
                "no answer to the publish within {timeout:?}"
            );
            match s.read(buf) {
                Ok(0) => return None,
                Ok(n) => return Some(n),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return None,
            }
        }
    };
    let remaining = loop {
        let Some(n) = read(&mut s, &mut buf) else {
            return (PublishOutcome::Closed, s);
        };
        match hs.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                s.write_all(&response_bytes).unwrap()
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                s.write_all(&response_bytes).unwrap();
                break remaining_bytes;
            }
        }
    };
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(format!("rtmp://{addr}/{app}"));
    let (mut session, _) = ClientSession::new(config).unwrap();
    let send = |s: &mut TcpStream, r: ClientSessionResult| {
        if let ClientSessionResult::OutboundResponse(p) = r {
            let _ = s.write_all(&p.bytes);
        }
    };
    send(&mut s, session.request_connection(app.into()).unwrap());
    let mut input = remaining;
    loop {
        if input.is_empty() {
            match read(&mut s, &mut buf) {
                Some(n) => input = buf[..n].to_vec(),
                None => return (PublishOutcome::Closed, s),
            }
        }
        let results = match session.handle_input(&input) {
            Ok(r) => r,
            Err(_) => return (PublishOutcome::Closed, s),
        };
        input.clear();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    let _ = s.write_all(&p.bytes);
                }
                ClientSessionResult::RaisedEvent(e) => match e {
                    ClientSessionEvent::ConnectionRequestAccepted => {
                        let r = if play {
                            session.request_playback(key.to_owned()).unwrap()
                        } else {
                            session
                                .request_publishing(key.to_owned(), PublishRequestType::Live)
                                .unwrap()
                        };
                        send(&mut s, r);
                    }
                    ClientSessionEvent::ConnectionRequestRejected { description } => {
                        return (PublishOutcome::Refused(description), s)
                    }
                    ClientSessionEvent::PublishRequestAccepted
                    | ClientSessionEvent::PlaybackRequestAccepted => {
                        return (PublishOutcome::Accepted, s)
                    }
                    // `NetStream.Play.Reset` and the like come before the
                    // acceptance; only refusals end the attempt.
                    ClientSessionEvent::UnhandleableOnStatusCode { code }
                        if ["Failed", "Rejected", "BadName", "BadConnection"]
                            .iter()
                            .any(|w| code.contains(w)) =>
                    {
                        return (PublishOutcome::Refused(code), s)
                    }
                    // rml_rtmp servers refuse with an `_error` whose
                    // transaction id (0) the client session does not track.
                    ClientSessionEvent::UnknownTransactionResultReceived {
                        additional_values,
                        ..
                    } => {
                        let field = |name: &str| {
                            additional_values.iter().find_map(|v| match v {
                                Amf0Value::Object(o) => match o.get(name) {
                                    Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
                                    _ => None,
                                },
                                _ => None,
                            })
                        };
                        let code = field("code").unwrap_or_default();
                        let description = field("description").unwrap_or_default();
                        return (PublishOutcome::Refused(format!("{code}: {description}")), s);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
}
