//! The `capi-relay` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// Requests are parsed on one thread and their buffers freed on another; glibc's allocator
/// spent a fifth of the ingest path's CPU on that pattern (see `capi-relay bench relay`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    capi_relay::cli::main()
}
