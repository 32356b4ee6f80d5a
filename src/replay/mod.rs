//! Replay: the classifier run over an access log, with the log's own
//! timestamps as the clock and its recorded statuses fed back as upstream
//! answers, so rate and status signals mean what they mean live. Gives a
//! verdict per request, a summary, and — with a second config — every
//! request whose class or action would change.

pub mod command;
pub mod log;
mod report;

use std::borrow::Cow;
use std::io::{self, BufRead, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;

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
    let mut verdict_line = Vec::new();
    let mut line_no = 0u64;
    let mut progress = Progress::new();
    while let Some(too_long) = read_line(input, &mut buf, MAX_LINE)? {
        line_no += 1;
        progress.tick(line_no);
        if too_long {
            report.malformed(line_no, "line longer than 64 KiB");
            continue;
        }
        let text = line_text(&buf);
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
        let (verdict, shadow) = classify(primary, &request);
        if let Some(out) = out.as_deref_mut() {
            write_verdict(out, &mut verdict_line, line_no, &request, &verdict, &shadow)?;
        }
        let changed = other.map(|o| classify(o, &request).0);
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

/// A line as text: borrowed when it is UTF-8, as nearly every line is;
/// otherwise with replacement characters. `from_utf8` first, because it
/// checks ASCII a word at a time where `from_utf8_lossy` goes byte by
/// byte.
fn line_text(buf: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(buf) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(buf),
    }
}

/// Run one logged request through the pipeline, then record its logged
/// status as the upstream's answer.
fn classify(classifier: &Classifier, r: &LogRequest) -> (Verdict, Vec<Arc<str>>) {
    let mut facts = Facts::new(&r.head, r.ip, r.ip, r.ts);
    facts.recorded = Some(&r.recorded);
    let c = classifier.classify(&facts);
    if let Some(status) = r.status {
        classifier
            .signals()
            .record_status(r.ip, c.verdict.subject.as_deref(), r.ts, status);
    }
    (c.verdict, c.outcome.shadow)
}

/// One line of `--out`, fields in the documented order.
#[derive(serde::Serialize)]
struct VerdictLine<'a> {
    line: u64,
    ts: f64,
    ip: IpAddr,
    method: &'a str,
    path: &'a str,
    class: &'a str,
    score: i32,
    reasons: &'a [Arc<str>],
    action: &'a str,
    /// Shadow rules that matched (evaluated, no effect).
    shadow: &'a [Arc<str>],
}

/// Write one line of `--out`. It is built in `scratch` and written whole:
/// serde_json writes token by token, and through `dyn Write` every token
/// would be a call into the writer.
fn write_verdict(
    out: &mut dyn Write,
    scratch: &mut Vec<u8>,
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
        ip: r.ip,
        method: r.method().as_str(),
        path: r.target(),
        class: v.class.as_str(),
        score: v.score,
        reasons: &v.reasons,
        action: v.action.as_str(),
        shadow,
    };
    scratch.clear();
    serde_json::to_writer(&mut *scratch, &json)?;
    scratch.push(b'\n');
    out.write_all(scratch)
}

/// Read one line into `buf`, keeping at most `max` (> 0) bytes of it.
/// `None` at the end of input; `Some(true)` when the line was longer (the
/// rest is skipped, not kept).
fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<bool>> {
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    if Read::take(&mut *input, limit).read_until(b'\n', buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') || at_end(input)? {
        return Ok(Some(false));
    }
    buf.clear();
    input.skip_until(b'\n')?;
    Ok(Some(true))
}

/// Whether `input` has nothing more to read.
fn at_end(input: &mut dyn BufRead) -> io::Result<bool> {
    loop {
        match input.fill_buf() {
            Ok(available) => return Ok(available.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
