//! End-to-end tests of the capi-relay crate: the simulator and the Graph client over real
//! sockets, and the binary as a user runs it.

mod app;
mod cli;
mod crash;
mod graph_client;
mod helpers;
mod payload_acceptance;
mod service;
mod simulator;
