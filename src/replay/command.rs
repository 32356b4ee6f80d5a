//! `usher replay`: flags turned into a replay run, its summary on stdout.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use clap::Args;

use super::Format;
use crate::classify::Classifier;
use crate::cli::CliError;
use crate::config::Config;

/// Flags of `usher replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Config file whose rules are replayed.
    #[arg(short, long, value_name = "FILE", default_value = "usher.toml")]
    pub config: PathBuf,
    /// Log format [default: guessed from the first line: JSON lines if it
    /// starts with `{`, else combined].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write one JSON verdict per request here, in input order:
    /// {"line","ts","ip","method","path","class","score","reasons","action"}.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// A second config: report every request whose class or action it
    /// changes, grouped by transition and by the rules responsible.
    #[arg(long, value_name = "OTHER_CONFIG")]
    pub compare: Option<PathBuf>,
    /// The access log (`-` for standard input).
    #[arg(value_name = "FILE|-")]
    pub input: String,
}

/// Run `usher replay`.
pub fn run(args: &ReplayArgs) -> Result<(), CliError> {
    let primary = Classifier::from_config(&Config::load(&args.config)?)?.repeatable();
    let other = match &args.compare {
        Some(path) => Some(Classifier::from_config(&Config::load(path)?)?.repeatable()),
        None => None,
    };
    let mut input: Box<dyn BufRead> = if args.input == "-" {
        Box::new(BufReader::new(std::io::stdin().lock()))
    } else {
        let file = File::open(&args.input)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", args.input)))?;
        Box::new(BufReader::new(file))
    };
    let mut out = match &args.out {
        Some(path) => Some(BufWriter::new(File::create(path).map_err(|e| {
            CliError::Usage(format!("cannot write {}: {e}", path.display()))
        })?)),
        None => None,
    };
    let report = super::run(
        &primary,
        other.as_ref(),
        &mut input,
        args.format,
        out.as_mut().map(|w| w as &mut dyn Write),
    )
    .map_err(CliError::Io)?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{report}").map_err(CliError::Io)?;
    Ok(())
}
