//! MPEG-TS (as carried over SRT): [`demux`] turns a TS byte stream into
//! [`Frame`](crate::media::Frame)s and codec configurations, [`mux`] does the
//! reverse. Codec conversions (Annex-B ↔ AVCC, ADTS ↔ raw AAC) live in
//! [`crate::media::codec`].

pub mod demux;
pub mod mux;
