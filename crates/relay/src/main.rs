//! The `capi-relay` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// Requests are parsed on one thread and their buffers freed on another; glibc's allocator
/// spent a fifth of the ingest path's CPU on that pattern (see `capi-relay bench relay`).
/// Built without transparent huge pages (`no_thp`): zeroing a 2 MiB page on each first touch
/// after mimalloc returned memory cost ~5% of ingest CPU and ~20 MiB of RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    capi_relay::cli::main()
}
