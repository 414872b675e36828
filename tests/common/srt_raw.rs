//! Raw SRT packets for attack tests: control packets and HSv5 handshakes
//! written byte by byte (the layout of the SRT draft, section 3.2), a
//! caller that completes a handshake from a plain UDP socket, and a probe
//! that tells whether a listener still answers.

// Each test crate compiles these helpers and uses a different part of
// them: an `expect` would be unfulfilled in the crates that use it all.
#![allow(
    dead_code,
    reason = "each test crate uses a part of the shared helpers"
)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A control packet: type (15 bits), subtype, type-specific information,
/// timestamp 0, destination socket id, then `body`.
pub fn control(ty: u16, subtype: u16, info: u32, dest: u32, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + body.len());
    p.extend_from_slice(&(0x8000 | ty).to_be_bytes());
    p.extend_from_slice(&subtype.to_be_bytes());
    p.extend_from_slice(&info.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&dest.to_be_bytes());
    p.extend_from_slice(body);
    p
}

pub const INDUCTION: i32 = 1;
pub const CONCLUSION: i32 = -1;

/// The initial sequence number of every handshake written here.
pub const INITIAL_SEQ: u32 = 0x1234_5678;

/// The 48-byte handshake body (peer address 127.0.0.1).
pub fn handshake_cif(
    version: u32,
    enc: u16,
    ext: u16,
    ty: i32,
    socket_id: u32,
    cookie: i32,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(48);
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&enc.to_be_bytes());
    b.extend_from_slice(&ext.to_be_bytes());
    b.extend_from_slice(&INITIAL_SEQ.to_be_bytes());
    b.extend_from_slice(&1500u32.to_be_bytes());
    b.extend_from_slice(&8192u32.to_be_bytes());
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&socket_id.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&[1, 0, 0, 127]); // 127.0.0.1, as libsrt writes it
    b.extend_from_slice(&[0u8; 12]);
    b
}

/// An induction request from `socket_id`.
pub fn induction(socket_id: u32) -> Vec<u8> {
    control(0, 0, 0, 0, &handshake_cif(4, 0, 2, INDUCTION, socket_id, 0))
}

/// A string as SRT's little-endian words (each group of 4 bytes reversed,
/// the last one zero-padded).
pub fn le_words(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        w.reverse();
        out.extend_from_slice(&w);
    }
    out
}

/// A handshake extension: type, length in 32-bit words, content.
pub fn extension(ty: u16, content: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(4 + content.len());
    e.extend_from_slice(&ty.to_be_bytes());
    e.extend_from_slice(&((content.len() / 4) as u16).to_be_bytes());
    e.extend_from_slice(content);
    e
}

/// HSREQ content: SRT 1.4.0, the usual live-mode flags, 120 ms latency.
pub fn hsreq() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&0x0001_0400u32.to_be_bytes());
    c.extend_from_slice(&0xBFu32.to_be_bytes());
    c.extend_from_slice(&120u16.to_be_bytes());
    c.extend_from_slice(&120u16.to_be_bytes());
    c
}

/// A conclusion request with HSREQ and the stream id, plus `extra`
/// extensions appended as they are.
pub fn conclusion(socket_id: u32, cookie: i32, stream_id: &str, extra: &[u8]) -> Vec<u8> {
    let mut body = handshake_cif(5, 0, 0x1 | 0x4, CONCLUSION, socket_id, cookie);
    body.extend(extension(1, &hsreq()));
    body.extend(extension(5, &le_words(stream_id)));
    body.extend_from_slice(extra);
    control(0, 0, 0, 0, &body)
}

/// A UDP socket on 127.0.0.1 with a short read timeout.
pub fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// The next datagram from `server` within `timeout`.
pub fn recv_from(s: &UdpSocket, server: SocketAddr, timeout: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if from == server {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A handshake packet's (type, socket id, cookie), if `p` is one.
pub fn parse_handshake(p: &[u8]) -> Option<(i32, u32, i32)> {
    if p.len() < 16 + 48 || p[0] & 0x80 == 0 || u16::from_be_bytes([p[0], p[1]]) & 0x7FFF != 0 {
        return None;
    }
    let cif = &p[16..];
    Some((be32(cif, 20) as i32, be32(cif, 24), be32(cif, 28) as i32))
}

/// Whether the listener at `server` still answers an induction request
/// (from a fresh socket) within `timeout`.
pub fn listener_answers(server: SocketAddr, timeout: Duration) -> bool {
    let s = udp();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let _ = s.send_to(&induction(0x0101_0101), server);
        if let Some(p) = recv_from(&s, server, Duration::from_millis(300)) {
            if parse_handshake(&p).is_some_and(|(ty, _, _)| ty == INDUCTION) {
                return true;
            }
        }
    }
    false
}

/// An SRT connection made by hand: the socket, the listener's socket id.
pub struct RawCaller {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub peer_id: u32,
}

/// Induction and conclusion for `stream_id`; the listener's answer to the
/// conclusion: Ok when it accepted (with its socket id), Err(handshake
/// type) when it rejected (a rejection carries the reason code there).
pub fn call(server: SocketAddr, stream_id: &str, extra: &[u8]) -> Result<RawCaller, i32> {
    let sock = udp();
    let our_id = 0x0202_0202;
    let end = Instant::now() + Duration::from_secs(10);
    let cookie = loop {
        assert!(Instant::now() < end, "no induction response from {server}");
        sock.send_to(&induction(our_id), server).unwrap();
        if let Some((INDUCTION, _, cookie)) =
            recv_from(&sock, server, Duration::from_millis(300)).and_then(|p| parse_handshake(&p))
        {
            break cookie;
        }
    };
    let request = conclusion(our_id, cookie, stream_id, extra);
    loop {
        assert!(Instant::now() < end, "no conclusion response from {server}");
        sock.send_to(&request, server).unwrap();
        let Some(p) = recv_from(&sock, server, Duration::from_millis(500)) else {
            continue;
        };
        match parse_handshake(&p) {
            Some((CONCLUSION, peer_id, _)) => {
                return Ok(RawCaller {
                    sock,
                    server,
                    peer_id,
                })
            }
            Some((ty, _, _)) if ty >= 1000 => return Err(ty),
            _ => {}
        }
    }
}

impl RawCaller {
    /// Send a control packet to the listener's side of this connection.
    pub fn send_control(&self, ty: u16, subtype: u16, info: u32, body: &[u8]) {
        let p = control(ty, subtype, info, self.peer_id, body);
        self.sock.send_to(&p, self.server).unwrap();
    }
}
