//! Access log: one JSON line per request on standard output. Requests hand a
//! record to a writer thread through a bounded queue, so a slow stdout never
//! stalls the proxy; lines that do not fit are counted, not buffered.

use std::fmt;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use prometheus::IntCounter;
use serde::Serialize;

use crate::verdict::{Action, Class};

/// How many records may wait for the writer.
const QUEUE: usize = 16 * 1024;

/// One finished request.
#[derive(Debug)]
pub struct Record {
    /// When the request arrived.
    pub ts: SystemTime,
    /// The client address as classified.
    pub client_ip: IpAddr,
    /// The request method.
    pub method: Method,
    /// The request path, without the query (queries may hold secrets).
    pub path: String,
    /// The status sent to the client.
    pub status: u16,
    /// The verdict's class.
    pub class: Class,
    /// The verdict's score.
    pub score: i32,
    /// The verdict's reasons.
    pub reasons: Vec<Arc<str>>,
    /// The verdict's action.
    pub action: Action,
    /// The verified subject, if any.
    pub subject: Option<Arc<str>>,
    /// Time to the upstream's response head, when it was asked.
    pub upstream: Option<Duration>,
    /// Time from request head to the end of the response.
    pub total: Duration,
    /// What went wrong, if anything (an upstream error kind).
    pub error: Option<&'static str>,
}

// Records travel unboxed: the bounded queue is allocated once, so a boxed
// record would be the only per-request allocation here.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(Record),
    Flush(mpsc::Sender<()>),
}

/// The sending side of the access log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Message>>,
    dropped: IntCounter,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl AccessLog {
    /// An access log that writes nothing.
    pub fn off(dropped: IntCounter) -> Self {
        AccessLog { tx: None, dropped }
    }

    /// Start the writer thread on standard output.
    pub fn stdout(dropped: IntCounter) -> std::io::Result<Self> {
        Self::to_writer(std::io::stdout(), dropped)
    }

    /// Start the writer thread on any writer.
    pub fn to_writer<W: Write + Send + 'static>(
        out: W,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("usher-access-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped,
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue one record; never blocks.
    pub fn log(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Wait (up to `timeout`) until everything queued so far is written.
    /// Gives up at the deadline even if standard output is stuck.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let deadline = std::time::Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut message = Message::Flush(ack_tx);
        loop {
            match tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return;
                    }
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = ack_rx.recv_timeout(left);
    }
}

fn write_loop<W: Write>(rx: Receiver<Message>, out: W) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(mut message) = rx.recv() {
        loop {
            match message {
                Message::Record(record) => {
                    // A line that fails to serialise is a bug, not a reason
                    // to stop logging; a closed stdout ends the thread.
                    let _ = serde_json::to_writer(&mut out, &Line::from(&record));
                    if out.write_all(b"\n").is_err() {
                        return;
                    }
                }
                Message::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            match rx.try_recv() {
                Ok(next) => message = next,
                Err(_) => break,
            }
        }
        if out.flush().is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// The JSON shape of one line.
#[derive(Serialize)]
struct Line<'a> {
    ts: Rfc3339,
    client_ip: IpAddr,
    method: &'a str,
    path: &'a str,
    status: u16,
    class: Class,
    score: i32,
    reasons: &'a [Arc<str>],
    action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_seconds: Option<f64>,
    duration_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

impl<'a> From<&'a Record> for Line<'a> {
    fn from(r: &'a Record) -> Self {
        Line {
            ts: Rfc3339(r.ts),
            client_ip: r.client_ip,
            method: r.method.as_str(),
            path: &r.path,
            status: r.status,
            class: r.class,
            score: r.score,
            reasons: &r.reasons,
            action: r.action,
            subject: r.subject.as_deref(),
            upstream_seconds: r.upstream.map(|d| d.as_secs_f64()),
            duration_seconds: r.total.as_secs_f64(),
            error: r.error,
        }
    }
}

/// A UTC timestamp formatted as RFC 3339 with milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year,
    // then split into 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> String {
        Rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)).to_string()
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(at(1_795_651_200, 0), "2026-11-26T00:00:00.000Z");
    }

    #[test]
    fn writes_one_json_line_per_record_and_counts_drops() {
        #[derive(Clone, Default)]
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::to_writer(out.clone(), dropped.clone()).unwrap();
        log.log(Record {
            ts: UNIX_EPOCH,
            client_ip: "192.0.2.1".parse().unwrap(),
            method: Method::GET,
            path: "/p\"ath".to_owned(),
            status: 200,
            class: Class::PublicVisitor,
            score: 3,
            reasons: vec![Arc::from("a"), Arc::from("b")],
            action: Action::Forward,
            subject: None,
            upstream: Some(Duration::from_millis(2)),
            total: Duration::from_millis(3),
            error: None,
        });
        log.flush(Duration::from_secs(5));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["client_ip"], "192.0.2.1");
        assert_eq!(v["class"], "public_visitor");
        assert_eq!(v["reasons"], serde_json::json!(["a", "b"]));
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["path"], "/p\"ath");
        assert!(v.get("subject").is_none());
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn flush_gives_up_when_stdout_is_stuck() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::to_writer(Stuck, dropped.clone()).unwrap();
        for _ in 0..2 * QUEUE {
            log.log(Record {
                ts: UNIX_EPOCH,
                client_ip: "192.0.2.1".parse().unwrap(),
                method: Method::GET,
                path: "/".to_owned(),
                status: 200,
                class: Class::PublicVisitor,
                score: 0,
                reasons: Vec::new(),
                action: Action::Forward,
                subject: None,
                upstream: None,
                total: Duration::ZERO,
                error: None,
            });
        }
        assert!(dropped.get() > 0, "a full queue drops instead of blocking");
        let started = std::time::Instant::now();
        log.flush(Duration::from_millis(200));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "flush blocked on a stuck stdout"
        );
    }
}
