//! Access-log lines, combined and JSON: any line is a request or an error
//! naming what is wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usher::replay::log::{parse_combined, parse_jsonl};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = parse_combined(&line);
    let _ = parse_jsonl(&line);
});
