//! The `paymongo-gateway` binary: everything lives in the library; see `cli`.

use std::process::ExitCode;

// mimalloc: lower fragmentation under many small per-request allocations,
// which keeps RSS close to the configured cache bounds.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    paymongo_gateway::cli::main()
}
