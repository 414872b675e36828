//! What goes over the wire, shared by the servers (`crate::server`), the
//! outgoing client (`crate::client`) and the relays (`crate::relay`):
//! protocol payloads into the engine's media ([`demux`]) and the engine's
//! player items out as RTMP chunks ([`rtmp`]).

pub mod demux;
pub mod rtmp;
