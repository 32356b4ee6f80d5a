//! Replay throughput: lines per second through the shipped rules, for
//! combined and JSON-lines logs. Criterion reports elements (lines) per
//! second; compare runs on the same machine, not absolute figures.
//!
//! Each run starts from a fresh classifier, so client state starts empty;
//! building it (compiling the rules, once per `usher replay`) is not
//! timed.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use usher::classify::Classifier;
use usher::config::Config;
use usher::replay::{self, Format};

const LINES: usize = 20_000;

fn classifier() -> Classifier {
    let mut config = Config::parse("rules = [\"rules/*.toml\"]", "bench").expect("config");
    config.origin.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Classifier::from_config(&config)
        .expect("rules")
        .repeatable()
}

/// A log with people, a scraper and odd agents, spread over an hour.
fn log(format: Format) -> String {
    let agents = [
        "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
        "python-requests/2.32.3",
        "Mozilla/5.0 (compatible; ExampleBot/1.0; +https://example.com/bot)",
        "-",
    ];
    let mut out = String::new();
    for i in 0..LINES {
        let ip = if i % 3 == 0 {
            "203.0.113.66".to_owned()
        } else {
            format!("198.51.{}.{}", i % 200, i % 250)
        };
        let ts = 1_764_000_000 + i / 6;
        let ua = agents[i % agents.len()];
        let path = format!("/products/{}?page={}", i % 977, i % 7);
        let line = match format {
            Format::Combined => {
                let secs = ts % 86_400;
                format!(
                    "{ip} - - [26/Nov/2025:{:02}:{:02}:{:02} +0000] \"GET {path} HTTP/1.1\" 200 512 \"-\" \"{ua}\"\n",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60
                )
            }
            Format::Jsonl => format!(
                "{{\"ts\": {ts}, \"ip\": \"{ip}\", \"method\": \"GET\", \"path\": \"{path}\", \"status\": 200, \"headers\": {{\"user-agent\": \"{ua}\"}}}}\n"
            ),
        };
        out.push_str(&line);
    }
    out
}

fn replay_lines_per_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(LINES as u64));
    group.sample_size(10);
    for (name, format) in [("combined", Format::Combined), ("jsonl", Format::Jsonl)] {
        let text = log(format);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                classifier,
                |classifier| {
                    let report =
                        replay::run(classifier, None, &mut text.as_bytes(), Some(format), None)
                            .expect("replay");
                    black_box(report.requests)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, replay_lines_per_second);
criterion_main!(benches);
