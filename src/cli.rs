//! The command line: flags turned into a validated [`Config`] once, then
//! handed to the library. Exit codes: 0 ok, 1 runtime failure, 2 bad usage
//! or invalid configuration.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::classify::Classifier;
use crate::config::{Config, ConfigError, Diagnostics, Upstream};
use crate::reload::Source;
use crate::server::{ServeError, Server};

/// usher: a reverse-proxy sidecar that labels every request with who is
/// knocking.
#[derive(Debug, Parser)]
#[command(
    name = "usher",
    version,
    about = "Reverse-proxy sidecar that labels every request: public_visitor, \
             registered_user, paying_customer, service_client or malicious_bot",
    long_about = "usher stands in front of a web service, classifies every request \
                  and forwards it with x-usher-class, x-usher-score, x-usher-reasons and \
                  x-usher-subject headers. Metrics are served on the admin address.\n\n\
                  Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid configuration.\n\
                  Diagnostics go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of the upstream until SIGTERM or SIGINT;
    /// SIGHUP reloads the configuration.
    Serve(ServeArgs),
    /// Validate a config file with the rule and key files it names: every
    /// error and warning with file:line:column; exit 0 if valid, 2 if not.
    #[command(long_about = CHECK_HELP)]
    Check(CheckArgs),
    /// Work with API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the rules over an access log (nginx/Apache combined or JSON
    /// lines) with the log's timestamps as the clock: a summary table on
    /// stdout, per-request verdicts with --out, and with --compare every
    /// request another config would classify differently. Headers a log
    /// did not record are unknown, not absent.
    Replay(crate::replay::command::ReplayArgs),
    /// Run one request through the pipeline and show its facts, identity,
    /// signals, every rule with matched / not matched and the condition
    /// that decided, and the verdict. Example:
    /// `usher explain -H 'User-Agent: curl/8' GET /wp-login.php`.
    Explain(crate::explain::ExplainArgs),
    /// A first look: usher with the default rules in front of a built-in
    /// upstream, fed synthetic traffic of every kind (people, free and
    /// paying accounts, an API client, a verified and a spoofed crawler, a
    /// scraper, a credential stuffer); prints what usher made of it every
    /// few seconds. Ctrl-C stops it, or --duration.
    Demo(crate::demo::DemoArgs),
    /// Ask a running usher's admin listener whether it is alive (/healthz)
    /// or ready (/readyz, with --ready): exit 0 if it answers 200, 1 if it
    /// does not or the config's `admin` cannot be read (only that key is
    /// read). For container health checks:
    /// `usher health --config /etc/usher/usher.toml`.
    Health(crate::health::HealthArgs),
}

/// `usher keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Read a new API key on standard input and print the `[[key]]` entry
    /// for the keys file: its SHA-256, owner and class (never the key).
    /// Example: `printf %s "$KEY" | usher keys hash --owner acme`.
    Hash(HashArgs),
}

/// Flags of `usher keys hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// Who the key belongs to; becomes x-usher-subject.
    #[arg(long)]
    pub owner: String,
    /// `service_client` or `paying_customer`.
    #[arg(long, default_value = "service_client", value_parser = ["service_client", "paying_customer"])]
    pub class: String,
}

/// Flags of `usher serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML). Without it usher runs on built-in defaults.
    /// It is reloaded, with the files it names, on SIGHUP, on POST /reload
    /// and when any of them changes.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for client traffic, overriding `listen` [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Upstream URL, overriding `upstream` [default: http://127.0.0.1:3000].
    #[arg(long, value_name = "URL")]
    pub upstream: Option<Upstream>,
    /// Address for /metrics, /healthz and /readyz, overriding `admin`
    /// [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Worker threads [default: one per CPU], each serving its share of
    /// the client connections with a runtime and upstream connection pool
    /// of its own; with 1, one thread does everything.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

/// `usher check --help`.
const CHECK_HELP: &str = "Validate a config file together with the rule files and key files it \
    names, without starting. Every broken rule and crawler, in every rule file, is reported, \
    not just the first, together with key-file errors. A rule file that is not valid TOML stops \
    at its first syntax error; usher.toml and each key file stop at their first error, and \
    rules are checked only once usher.toml is valid (it names them).\n\n\
    Errors make usher refuse to start: invalid values, unknown keys, bad regexes or CIDR blocks, \
    duplicate rule names, regexes that match the empty string (they would match everything), \
    unreadable files.\n\n\
    Warnings are valid but probably not meant; `serve` logs them at startup: a rule that can \
    never change a verdict, or whose class or action never takes effect, because an earlier \
    enforced rule without conditions already sets them (the first rule that sets a class, or an \
    action, wins; scores always add up); a rule with the same conditions as an earlier one; CIDR \
    blocks with host bits set (10.0.0.1/8 is read as 10.0.0.0/8) in rules, address lists, \
    crawler ranges and trusted_proxies; `limit` where no quota applies; a crawler condition with \
    no crawler defined; an empty `any` or `not`, which never holds. Shadow rules get no \
    warnings.\n\n\
    Output, on standard output: one line per problem, \
    `file:line:column: error|warning: [rule `name`: ]message`, then `FILE: ok (N warnings)` or \
    `FILE: N errors, M warnings`. With --format json, one JSON document \
    {\"ok\": bool, \"errors\": [...], \"warnings\": [...]}, each problem an object \
    {\"file\", \"line\", \"column\", \"rule\", \"message\"} (line, column and rule are null \
    where they do not apply).\n\n\
    Exit codes: 0 no errors (warnings allowed), 2 errors (unreadable files included) or bad \
    usage.";

/// Flags of `usher check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file to validate.
    #[arg(short, long, value_name = "FILE", default_value = "usher.toml")]
    pub config: PathBuf,
    /// How to report.
    #[arg(long, value_enum, default_value_t = CheckFormat::Human)]
    pub format: CheckFormat,
}

/// How `usher check` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    /// One line per problem, then a summary.
    Human,
    /// One JSON document.
    Json,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is invalid (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server failed to start (exit 1).
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The runtime could not be built (exit 1).
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The input was not usable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Reading input or writing output failed (exit 1).
    #[error("{0}")]
    Io(std::io::Error),
    /// A running usher did not answer its health check (exit 1).
    #[error(transparent)]
    Unhealthy(#[from] crate::health::HealthError),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Serve(_)
            | CliError::Runtime(_)
            | CliError::Io(_)
            | CliError::Unhealthy(_) => 1,
        }
    }
}

/// Run a parsed command line and return the exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => return check(&args),
        Command::Keys(KeysCommand::Hash(args)) => hash_key(&args),
        Command::Replay(args) => crate::replay::command::run(&args),
        Command::Explain(args) => crate::explain::run(&args),
        Command::Demo(args) => crate::demo::run(&args),
        Command::Health(args) => crate::health::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usher: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Validate and report: every error and warning, on standard output.
fn check(args: &CheckArgs) -> ExitCode {
    let found = match Config::load(&args.config) {
        Err(e) => Diagnostics::from(e),
        Ok(config) => match Classifier::from_config(&config) {
            Err(e) => Diagnostics::from(e),
            Ok(classifier) => {
                let mut found = Diagnostics::new();
                found.extend(classifier.warnings().iter().cloned());
                found
            }
        },
    };
    let report = match args.format {
        CheckFormat::Human => human_report(&args.config, &found),
        CheckFormat::Json => json_report(&found),
    };
    println!("{report}");
    if found.has_errors() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn human_report(config: &std::path::Path, found: &Diagnostics) -> String {
    let mut out = String::new();
    for d in found.all() {
        out.push_str(&format!("{d}\n"));
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let warnings = plural(found.warnings().count(), "warning");
    let errors = found.errors().count();
    if errors == 0 {
        out.push_str(&format!("{}: ok ({warnings})", config.display()));
    } else {
        out.push_str(&format!(
            "{}: {}, {warnings}",
            config.display(),
            plural(errors, "error")
        ));
    }
    out
}

fn json_report(found: &Diagnostics) -> String {
    #[derive(serde::Serialize)]
    struct Report<'a> {
        ok: bool,
        errors: Vec<&'a crate::config::Diagnostic>,
        warnings: Vec<&'a crate::config::Diagnostic>,
    }
    let report = Report {
        ok: !found.has_errors(),
        errors: found.errors().collect(),
        warnings: found.warnings().collect(),
    };
    serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"{e}\"}}"))
}

fn hash_key(args: &HashArgs) -> Result<(), CliError> {
    use std::io::Read as _;
    let limit = crate::identity::api_keys::MAX_KEY_LEN;
    let mut input = Vec::new();
    std::io::stdin()
        .take(limit as u64 + 3)
        .read_to_end(&mut input)
        .map_err(|e| CliError::Usage(format!("cannot read the key from standard input: {e}")))?;
    let key = input
        .strip_suffix(b"\r\n")
        .or_else(|| input.strip_suffix(b"\n"))
        .unwrap_or(&input);
    if key.is_empty() {
        return Err(CliError::Usage("no key on standard input".to_owned()));
    }
    if key.len() > limit {
        return Err(CliError::Usage(format!(
            "keys longer than {limit} bytes are refused"
        )));
    }
    if key
        .iter()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(CliError::Usage(
            "the key holds whitespace or control characters; clients could not send it in a header"
                .to_owned(),
        ));
    }
    let class = args
        .class
        .parse()
        .map_err(|e: crate::verdict::UnknownClass| CliError::Usage(e.to_string()))?;
    print!(
        "{}",
        crate::identity::api_keys::entry_for(key, &args.owner, class)
    );
    Ok(())
}

/// The config `serve` runs with: file or defaults, then flag overrides.
pub fn serve_config(args: &ServeArgs) -> Result<Config, ConfigError> {
    let (mut config, source) = match &args.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::default(), "<defaults>".to_owned()),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(upstream) = &args.upstream {
        config.upstream = upstream.clone();
    }
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    config.check_consistency(&format!("{source} with command-line overrides"))?;
    Ok(config)
}

fn serve(args: ServeArgs) -> Result<(), CliError> {
    let config = serve_config(&args)?;
    let classifier = Classifier::from_config(&config)?;
    init_tracing();
    for warning in classifier.warnings() {
        tracing::warn!("{warning}");
    }
    // One worker: everything on this thread, with no cross-thread wake-ups.
    // More: this thread accepts and answers the admin port; each worker
    // thread serves its share of the connections on a runtime of its own.
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let source = Source::new(args.config.clone(), move || serve_config(&args));
    runtime.block_on(async {
        let server = Server::bind(config, classifier).await?;
        let run = server
            .with_reload(source)
            .with_workers(workers)
            .run(shutdown_signal());
        match tokio::spawn(run).await {
            Ok(()) => Ok(()),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop usher with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
