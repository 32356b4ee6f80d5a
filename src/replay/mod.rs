//! Replay: the classifier run over an access log, with the log's own
//! timestamps as the clock and its recorded statuses fed back as upstream
//! answers, so rate and status signals mean what they mean live. Gives a
//! verdict per request, a summary, and — with a second config — every
//! request whose class or action would change.

pub mod command;
pub mod log;
mod report;

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use http::Request;

use crate::classify::Classifier;
use crate::facts::Facts;
use crate::verdict::Verdict;
pub use log::{Format, LogRequest};
pub use report::{Comparison, Report};

/// Lines longer than this are malformed (and not kept in memory).
pub const MAX_LINE: usize = 64 * 1024;

/// Replay `input` through `primary` (and `other`, to compare), writing one
/// JSON verdict per request to `out`. Malformed lines are counted and
/// listed, never fatal; only reading the input or writing the output can
/// fail.
pub fn run(
    primary: &Classifier,
    other: Option<&Classifier>,
    input: &mut dyn BufRead,
    format: Option<Format>,
    mut out: Option<&mut dyn Write>,
) -> io::Result<Report> {
    let mut report = Report::new(other.is_some());
    let mut format = format;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut progress = Progress::new();
    while let Some(too_long) = read_line(input, &mut buf, MAX_LINE)? {
        line_no += 1;
        progress.tick(line_no);
        if too_long {
            report.malformed(line_no, "line longer than 64 KiB");
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim_end_matches(['\n', '\r']);
        // A byte-order mark may open the file.
        let text = if line_no == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        if text.trim().is_empty() {
            continue;
        }
        let format = *format.get_or_insert(if text.trim_start().starts_with('{') {
            Format::Jsonl
        } else {
            Format::Combined
        });
        let request = match log::parse(text, format) {
            Ok(r) => r,
            Err(e) => {
                report.malformed(line_no, &e.0);
                continue;
            }
        };
        let Some(parts) = head(&request) else {
            report.malformed(line_no, "not a request usher can read");
            continue;
        };
        let (verdict, shadow) = classify(primary, &request, &parts);
        if let Some(out) = out.as_deref_mut() {
            write_verdict(out, line_no, &request, &verdict, &shadow)?;
        }
        let changed = other.map(|o| classify(o, &request, &parts).0);
        report.count(line_no, &request, &verdict, &shadow, changed.as_ref());
    }
    progress.done(line_no);
    if let Some(out) = out {
        out.flush()?;
    }
    Ok(report)
}

/// A progress line on stderr once a second, for long inputs.
struct Progress {
    started: std::time::Instant,
    last: std::time::Instant,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        let now = std::time::Instant::now();
        Progress {
            started: now,
            last: now,
            shown: false,
        }
    }

    fn tick(&mut self, lines: u64) {
        if !lines.is_multiple_of(4096) || self.last.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        self.last = std::time::Instant::now();
        self.shown = true;
        let rate = lines as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        eprintln!("usher replay: {lines} lines, {rate:.0} lines/s");
    }

    fn done(&self, lines: u64) {
        if self.shown {
            let rate = lines as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!("usher replay: {lines} lines done, {rate:.0} lines/s");
        }
    }
}

/// Run one logged request through the pipeline, then record its logged
/// status as the upstream's answer.
fn classify(
    classifier: &Classifier,
    r: &LogRequest,
    parts: &http::request::Parts,
) -> (Verdict, Vec<Arc<str>>) {
    let mut facts = Facts::new(parts, r.ip, r.ip, r.ts);
    facts.recorded = Some(&r.recorded);
    let c = classifier.classify(&facts);
    if let Some(status) = r.status {
        classifier
            .signals()
            .record_status(r.ip, c.verdict.subject.as_deref(), r.ts, status);
    }
    (c.verdict, c.outcome.shadow)
}

/// The request head a logged request stands for (built once, read by every
/// config a replay compares).
fn head(r: &LogRequest) -> Option<http::request::Parts> {
    let mut request = Request::builder()
        .method(r.method.clone())
        .uri(r.target.as_str())
        .body(())
        .ok()?;
    *request.headers_mut() = r.headers.clone();
    Some(request.into_parts().0)
}

/// One line of `--out`, fields in the documented order.
#[derive(serde::Serialize)]
struct VerdictLine<'a> {
    line: u64,
    ts: f64,
    ip: String,
    method: &'a str,
    path: &'a str,
    class: &'a str,
    score: i32,
    reasons: Vec<&'a str>,
    action: &'a str,
    /// Shadow rules that matched (evaluated, no effect).
    shadow: Vec<&'a str>,
}

fn write_verdict(
    out: &mut dyn Write,
    line: u64,
    r: &LogRequest,
    v: &Verdict,
    shadow: &[Arc<str>],
) -> io::Result<()> {
    let json = VerdictLine {
        line,
        ts: r
            .ts
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        ip: r.ip.to_string(),
        method: r.method.as_str(),
        path: &r.target,
        class: v.class.as_str(),
        score: v.score,
        reasons: v.reasons.iter().map(|r| &**r).collect(),
        action: v.action.as_str(),
        shadow: shadow.iter().map(|r| &**r).collect(),
    };
    serde_json::to_writer(&mut *out, &json)?;
    out.write_all(b"\n")
}

/// Read one line into `buf`, keeping at most `max` bytes of it. `None` at
/// the end of input; `Some(true)` when the line was longer (the rest is
/// skipped, not kept).
fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(read_any.then_some(too_long));
        }
        read_any = true;
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let len = chunk.len();
        if !too_long {
            if buf.len() + len > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        input.consume(len);
        if done {
            return Ok(Some(too_long));
        }
    }
}

#[cfg(test)]
mod tests;
