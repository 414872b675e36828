//! Primacy: a live-video ingest gateway for redundant publishing.
//!
//! Encoders publish with tokens that carry a priority; per source the
//! gateway elects the highest-priority live feed. This crate holds the
//! library; `src/main.rs` is the CLI. See DESIGN in the docs for the parts.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod election;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod lifecycle;
pub mod live_tokens;
pub mod media;
pub mod metrics;
pub mod percent;
pub mod readiness;
pub mod redact;
pub mod relay;
pub mod server;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod wire;
