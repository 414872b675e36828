//! Egress: sessions that deliver a source's output to players.

pub mod push;
pub mod rtmp;
