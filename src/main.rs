//! The `usher` binary: parse the command line, hand it to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    usher::cli::run(usher::cli::Cli::parse())
}
