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
