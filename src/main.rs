//! The `usher` binary: parse the command line, hand it to the library.

use std::process::ExitCode;

use clap::Parser;

// mimalloc's thread-local free lists suit a proxy that allocates and frees
// small buffers on every request (benches/README.md has the figures). It is
// built without transparent huge pages: with them, a sidecar at rest held
// 35 MiB instead of 15.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    usher::cli::run(usher::cli::Cli::parse())
}
