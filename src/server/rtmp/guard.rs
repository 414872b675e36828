//! What an RTMP connection may feed to rml_rtmp's session, sans-IO: its
//! panics contained, partial messages capped (per message while
//! publishing, by `rtmp.max_request_bytes` otherwise) and the bytes a
//! connection may send before a publish or play is accepted capped.
//!
//! The connection task owns one [`InputGuard`] beside its session; the
//! fuzz targets drive the same guard without a socket.

use std::panic::AssertUnwindSafe;

use rml_rtmp::sessions::{ServerSession, ServerSessionResult};

use crate::config::RtmpConfig;

/// Where the connection is, as far as its input budget is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not publishing or playing: unauthenticated.
    Idle,
    Publishing,
    Playing,
}

/// Why input was refused; the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRefused {
    /// rml_rtmp panicked on the input (message of the panic).
    Panic(String),
    /// rml_rtmp refused the input.
    Protocol(String),
    /// A partial message grew past this limit.
    TooLarge(usize),
    /// More than this was sent before a publish or play was accepted.
    RequestTooLarge(usize),
}

/// Byte counters of one connection's input.
#[derive(Debug, Default)]
pub struct InputGuard {
    /// Bytes fed to the session since it last completed a message.
    pending_bytes: usize,
    /// Bytes received since the connection last became idle.
    idle_bytes: usize,
}

impl InputGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// The connection is idle again (after unpublishing or stopping
    /// playback): its request budget starts over.
    pub fn idle_again(&mut self) {
        self.idle_bytes = 0;
    }

    /// Bytes of partial messages that count against the budget shared by
    /// connections that are not publishing (publishers, authenticated,
    /// count none, so unauthenticated peers cannot use it up against them).
    pub fn held(&self, phase: Phase) -> usize {
        if phase == Phase::Publishing {
            0
        } else {
            self.pending_bytes
        }
    }

    /// Feed `bytes` to `session` within the limits of `phase`.
    pub fn input(
        &mut self,
        session: &mut ServerSession,
        phase: Phase,
        limits: &RtmpConfig,
        bytes: &[u8],
    ) -> Result<Vec<ServerSessionResult>, InputRefused> {
        if phase == Phase::Idle {
            self.idle_bytes = self.idle_bytes.saturating_add(bytes.len());
            if self.idle_bytes > limits.max_request_bytes {
                return Err(InputRefused::RequestTooLarge(limits.max_request_bytes));
            }
        }
        let results = std::panic::catch_unwind(AssertUnwindSafe(|| session.handle_input(bytes)))
            .map_err(|p| InputRefused::Panic(crate::supervise::panic_message(p.as_ref())))?
            .map_err(|e| InputRefused::Protocol(format!("{e:?}")))?;
        let completed = results
            .iter()
            .any(|r| !matches!(r, ServerSessionResult::OutboundResponse(_)));
        if completed {
            self.pending_bytes = 0;
        } else {
            self.pending_bytes = self.pending_bytes.saturating_add(bytes.len());
            let limit = if phase == Phase::Publishing {
                limits.max_message_bytes
            } else {
                limits.max_request_bytes
            };
            if self.pending_bytes > limit {
                return Err(InputRefused::TooLarge(limit));
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use rml_rtmp::sessions::ServerSessionConfig;

    use super::*;

    fn session() -> ServerSession {
        ServerSession::new(ServerSessionConfig::new())
            .expect("a server session")
            .0
    }

    /// Found by the `rtmp_session` fuzz target: a chunk header announcing a
    /// message shorter than the part of it already received made rml_rtmp's
    /// chunk deserializer panic (capacity overflow) on one unauthenticated
    /// connection's input. Now a protocol error (vendor/rml_rtmp).
    #[test]
    fn a_message_length_shorter_than_received_is_a_protocol_error() {
        // Type 0 on chunk stream 3: an audio message of 300 bytes, the
        // first 128 of them; then type 1 on the same stream: 10 bytes.
        let mut bytes = vec![0x03, 0, 0, 0, 0, 0x01, 0x2c, 8, 1, 0, 0, 0];
        bytes.extend_from_slice(&[0u8; 128]);
        bytes.extend_from_slice(&[0x43, 0, 0, 0, 0, 0, 10, 8]);
        bytes.extend_from_slice(&[0u8; 10]);
        let mut guard = InputGuard::new();
        let r = guard.input(&mut session(), Phase::Idle, &RtmpConfig::default(), &bytes);
        match r {
            Err(InputRefused::Protocol(m)) => assert!(m.contains("MessageShorterThanReceived")),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    /// Found by the `rtmp_session` fuzz target: an AMF0 command message of
    /// fewer than three values (one string) made rml_rtmp panic while
    /// reading it, before any request. Now a protocol error
    /// (vendor/rml_rtmp).
    #[test]
    fn a_short_amf0_command_is_a_protocol_error() {
        // AMF0 string "connect", alone.
        let body = [0x02, 0x00, 0x07, b'c', b'o', b'n', b'n', b'e', b'c', b't'];
        // Type 0 chunk on stream 3: message type 20 (AMF0 command), stream 0.
        let mut bytes = vec![0x03, 0, 0, 0, 0, 0, body.len() as u8, 20, 0, 0, 0, 0];
        bytes.extend_from_slice(&body);
        let mut guard = InputGuard::new();
        let r = guard.input(&mut session(), Phase::Idle, &RtmpConfig::default(), &bytes);
        assert!(
            matches!(r, Err(InputRefused::Protocol(_))),
            "expected a protocol error, got {r:?}"
        );
    }

    #[test]
    fn input_before_a_request_is_capped() {
        let limits = RtmpConfig::default();
        let mut guard = InputGuard::new();
        let mut s = session();
        // Partial chunk headers: nothing completes, everything is held.
        let chunk = vec![0x03; 1024];
        let mut fed = 0;
        let err = loop {
            match guard.input(&mut s, Phase::Idle, &limits, &chunk[..1]) {
                Ok(_) => fed += 1,
                Err(e) => break e,
            }
            assert!(fed <= limits.max_request_bytes, "never refused");
        };
        assert!(matches!(
            err,
            InputRefused::RequestTooLarge(_)
                | InputRefused::TooLarge(_)
                | InputRefused::Protocol(_)
        ));
        assert!(guard.held(Phase::Idle) <= limits.max_request_bytes);
        assert_eq!(guard.held(Phase::Publishing), 0);
    }
}
