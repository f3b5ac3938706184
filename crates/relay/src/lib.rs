//! capi-relay: a self-hosted relay for Meta's Conversions API for Business Messaging.
//!
//! - [`delivery`]: the Graph API client and the classification of Meta's answers.
//! - [`simulator`]: a Graph API simulator for tests, benchmarks and sandbox runs.
//! - [`cli`]: the `capi-relay` command line.
//!
//! The domain rules (events, validation, hashing) live in the `relay-core` crate.

pub mod cli;
pub mod delivery;
pub mod events_file;
pub mod simulator;
pub mod telemetry;
