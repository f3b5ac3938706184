//! End-to-end tests of the capi-relay crate: the simulator and the Graph client over real
//! sockets, and the binary as a user runs it.

/// Runs a test body once per backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

mod app;
mod capture;
mod cli;
mod crash;
mod crm;
mod dashboard;
mod delivery;
mod errors;
mod graph;
mod graph_client;
mod hardening;
mod helpers;
mod openapi;
mod payload_acceptance;
mod sdk;
mod service;
mod simulator;
mod tenancy;
