//! Rule files: any text compiles or gives diagnostics, never a panic (and
//! never a regex that takes the process down).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::env::temp_dir();
    let _ = usher::rules::file::load_text(text, "fuzz.toml", &base);
});
