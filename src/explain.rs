//! `usher explain`: one hand-written request through the very pipeline
//! `serve` runs, with every rule's result and the condition that decided
//! it — to see why a request gets its verdict before shipping a rule.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use serde_json::{Value, json};

use crate::classify::{Classification, Classifier};
use crate::cli::CliError;
use crate::config::Config;
use crate::facts::Facts;
use crate::identity::Identity;
use crate::rules::{Mode, Trace};
use crate::signals::Signals;

/// Output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Flags of `usher explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Config file whose rules and credentials are used.
    #[arg(short, long, value_name = "FILE", default_value = "usher.toml")]
    pub config: PathBuf,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The client address [default: 127.0.0.1]. Crawler claims are checked
    /// against it (reverse DNS included).
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<IpAddr>,
    /// A request body (its size is reported; rules do not read bodies).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
    /// The method, e.g. GET.
    pub method: String,
    /// The URL: `/path?query` or `http://host/path?query`.
    pub url: String,
}

/// Run `usher explain`.
pub fn run(args: &ExplainArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config)?;
    let classifier = Classifier::from_config(&config)?;
    let method = Method::from_bytes(args.method.as_bytes())
        .map_err(|_| CliError::Usage(format!("`{}` is not a method", args.method)))?;
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| CliError::Usage(format!("`{}` is not a URL: {e}", args.url)))?;
    let mut builder = Request::builder().method(method).uri(uri.clone());
    let host_given = args.headers.iter().any(|h| {
        h.split(':')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("host"))
    });
    if let (Some(authority), false) = (uri.authority(), host_given) {
        builder = builder.header(http::header::HOST, authority.as_str());
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| CliError::Usage(format!("`{header}` is not `Name: value`")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| CliError::Usage(format!("`{name}` is not a header name")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| CliError::Usage(format!("the value of `{name}` is not valid")))?;
        builder = builder.header(name, value);
    }
    let body_len = match &args.body_file {
        Some(path) => Some(
            std::fs::metadata(path)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?
                .len(),
        ),
        None => None,
    };
    let (mut parts, ()) = builder
        .body(())
        .map_err(|e| CliError::Usage(format!("not a request: {e}")))?
        .into_parts();
    // As serve does before classifying: usher's own labels and hop-by-hop
    // headers never reach the rules.
    crate::proxy::headers::strip_labels(&mut parts.headers, &config.labels);
    crate::proxy::headers::strip_hop_by_hop(&mut parts.headers, false);
    let ip = args.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let user_agent = parts
        .headers
        .get(http::header::USER_AGENT)
        .map(|v| v.as_bytes());
    // The crawler check may ask DNS, as it would live.
    let crawler = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?
        .block_on(classifier.crawlers().verify(user_agent, ip));
    let mut facts = Facts::new(&parts, ip, ip, SystemTime::now());
    facts.crawler = Some(crawler);
    let classification = classifier.classify(&facts);
    let traces =
        classifier
            .rules()
            .trace(&facts, &classification.identity, &classification.signals);
    let explained = Explained {
        facts: &facts,
        body_len,
        crawler: classifier.crawlers().name(crawler),
        classification: &classification,
        traces: &traces,
    };
    match args.format {
        OutputFormat::Text => print!("{}", explained.text()),
        OutputFormat::Json => println!("{}", explained.json()),
    }
    Ok(())
}

/// What explain shows about one request.
pub struct Explained<'a> {
    /// The request's facts.
    pub facts: &'a Facts<'a>,
    /// The body's size, when one was given.
    pub body_len: Option<u64>,
    /// The crawler the user agent claims, if any.
    pub crawler: Option<&'a str>,
    /// The pipeline's result.
    pub classification: &'a Classification,
    /// Every rule's result.
    pub traces: &'a [Trace],
}

impl Explained<'_> {
    /// The explanation for people.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let f = self.facts;
        let c = self.classification;
        let mut out = String::new();
        let _ = writeln!(out, "request     {} {}", f.method, target(f));
        let _ = writeln!(out, "client      {}", f.client_ip);
        let _ = writeln!(out, "host        {}", f.host.unwrap_or("-"));
        let ua = f.user_agent.map(String::from_utf8_lossy);
        let _ = writeln!(out, "user agent  {}", ua.as_deref().unwrap_or("(none)"));
        for (name, value) in f.headers {
            if name != http::header::USER_AGENT && name != http::header::HOST {
                let _ = writeln!(out, "header      {name}: {}", shown(name, value));
            }
        }
        if let Some(len) = self.body_len {
            let _ = writeln!(out, "body        {len} bytes (rules do not read bodies)");
        }
        let _ = writeln!(out, "identity    {}", identity_text(&c.identity));
        let _ = writeln!(
            out,
            "crawler     {}",
            crawler_text(&c.signals, self.crawler)
        );
        let _ = writeln!(out, "signals     {}", signals_text(&c.signals));
        let _ = writeln!(out, "\nrules");
        let width = self.traces.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in self.traces {
            let mark = match t.matched {
                Some(true) => "match  ",
                Some(false) => "-      ",
                None => "unknown",
            };
            let shadow = if t.mode == Mode::Shadow {
                " (shadow)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {mark} {:<width$}  {}{shadow}", t.name, t.because);
        }
        let v = &c.verdict;
        let reasons: Vec<&str> = v.reasons.iter().map(|r| &**r).collect();
        let _ = writeln!(
            out,
            "\nverdict     class {}, score {}, action {}, reasons [{}]",
            v.class,
            v.score,
            v.action,
            reasons.join(", ")
        );
        if let Some(subject) = &v.subject {
            let _ = writeln!(out, "subject     {subject}");
        }
        out
    }

    /// The explanation as one JSON document.
    pub fn json(&self) -> Value {
        let f = self.facts;
        let c = self.classification;
        let mut headers = serde_json::Map::new();
        for (n, v) in f.headers {
            let values = headers
                .entry(n.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = values {
                list.push(Value::from(shown(n, v)));
            }
        }
        let s = &c.signals;
        let rules: Vec<Value> = self
            .traces
            .iter()
            .map(|t| {
                json!({
                    "name": &*t.name,
                    "mode": if t.mode == Mode::Shadow { "shadow" } else { "enforce" },
                    "matched": t.matched,
                    "because": t.because,
                    "score": t.effect.score,
                    "class": t.effect.class.map(|c| c.as_str()),
                    "action": t.effect.action.map(|a| a.as_str()),
                })
            })
            .collect();
        let v = &c.verdict;
        json!({
            "request": {
                "method": f.method.as_str(),
                "path": f.path,
                "query": f.query,
                "host": f.host,
                "client_ip": f.client_ip.to_string(),
                "headers": headers,
                "body_bytes": self.body_len,
            },
            "identity": identity_text(&c.identity),
            "crawler": { "status": s.crawler.status().as_str(), "name": self.crawler },
            "signals": {
                "rate_1s": s.rates[0], "rate_10s": s.rates[1], "rate_60s": s.rates[2], "rate_5m": s.rates[3],
                "auth_failures_5m": s.auth_failures_5m,
                "status_4xx_60s": s.status_4xx_60s, "status_404_60s": s.status_404_60s,
                "status_401_403_60s": s.status_401_403_60s,
                "distinct_paths_60s": s.distinct_paths_60s,
                "interarrival_cv": s.interarrival_cv,
                "user_agent_missing": s.user_agent_missing,
            },
            "rules": rules,
            "verdict": {
                "class": v.class.as_str(),
                "score": v.score,
                "action": v.action.as_str(),
                "reasons": v.reasons.iter().map(|r| &**r).collect::<Vec<_>>(),
                "subject": v.subject.as_deref(),
            },
        })
    }
}

/// A header value as printed: credentials are masked, since explain output
/// lands in terminals, tickets and CI logs.
fn shown(name: &HeaderName, value: &HeaderValue) -> String {
    const SECRET: [&str; 4] = [
        "authorization",
        "cookie",
        "x-api-key",
        "proxy-authorization",
    ];
    if SECRET.contains(&name.as_str()) {
        format!("<{} bytes, not shown>", value.len())
    } else {
        String::from_utf8_lossy(value.as_bytes()).into_owned()
    }
}

fn target(f: &Facts<'_>) -> String {
    match f.query {
        Some(q) => format!("{}?{q}", f.path),
        None => f.path.to_owned(),
    }
}

fn identity_text(identity: &Identity) -> String {
    match identity {
        Identity::Anonymous => "anonymous (no credential)".to_owned(),
        Identity::User {
            source,
            subject,
            tier,
            ..
        } => format!("user {subject} ({tier:?}, from {})", source.as_str()),
        Identity::Service {
            source, client_id, ..
        } => format!("service {client_id} (from {})", source.as_str()),
        Identity::Invalid { source, reason } => {
            format!("invalid {} credential ({reason:?})", source.as_str())
        }
        Identity::Unverified { source, reason } => {
            format!("unverified {} credential ({reason:?})", source.as_str())
        }
    }
}

fn crawler_text(s: &Signals, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("claims {name}: {}", s.crawler.status().as_str()),
        None => "none claimed".to_owned(),
    }
}

fn signals_text(s: &Signals) -> String {
    let cv = s
        .interarrival_cv
        .map_or_else(|| "unknown".to_owned(), |v| format!("{v:.2}"));
    format!(
        "rate_1s={} rate_10s={} rate_60s={} rate_5m={} auth_failures_5m={} distinct_paths_60s={} interarrival_cv={cv} (a fresh process: this request alone)",
        s.rates[0], s.rates[1], s.rates[2], s.rates[3], s.auth_failures_5m, s.distinct_paths_60s
    )
}
