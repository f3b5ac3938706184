//! capi-relay: a self-hosted relay for Meta's Conversions API for Business Messaging.
//!
//! - [`app`]: the relay service (`serve`): HTTP API, delivery workers, retention.
//! - [`http`]: the HTTP API; [`ingest`]: validating, routing and storing submitted events.
//! - [`capture`]: Meta webhooks, the attribution store, conversions by contact.
//! - [`crm`]: CRM stage rules, the generic stage-change hook, Kommo.
//! - [`delivery`]: the Graph API client, Meta's answer classes, retries and outbox workers.
//! - [`config`]: layered configuration; [`observability`]: Prometheus metrics; [`clock`]: time.
//! - [`tenancy`]: tenants, onboarding, API keys, audit; [`vault`]: tokens sealed at rest.
//! - [`dashboard`]: the verification dashboard under `/ui`.
//! - [`simulator`]: a Graph API simulator for tests, benchmarks and sandbox runs.
//! - [`cli`]: the `capi-relay` command line.
//!
//! The domain rules (events, validation, hashing) live in the `relay-core` crate.

pub mod app;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crm;
pub mod dashboard;
pub mod delivery;
pub mod events_file;
pub mod http;
pub mod ingest;
pub mod observability;
pub mod simulator;
pub mod telemetry;
pub mod tenancy;
pub mod vault;
