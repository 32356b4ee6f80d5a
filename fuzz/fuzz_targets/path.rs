//! Path normalisation: any path gives a path that starts with `/`, holds
//! no dot or empty segments and no `;` parameters, and (once no escape
//! is left) normalises to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usher::rules::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let once = normalize(path);
    let p = once.path.as_ref();
    assert!(p.starts_with('/'), "{path:?} → {p:?}");
    assert!(!p.contains("//") && !p.contains(';'), "{path:?} → {p:?}");
    assert!(
        p.split('/').all(|s| s != "." && s != ".."),
        "{path:?} → {p:?}"
    );
    // Decoding is done once, as an upstream decodes once: `%6%66` gives
    // `%6f`, which a second pass would decode again. Without escapes left,
    // a second pass changes nothing.
    if !p.contains('%') {
        assert_eq!(normalize(p).path, p, "{path:?}");
    }
});
