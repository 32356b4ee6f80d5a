//! Reading the files an operator names (rule files, address lists, keys,
//! CA certificates) with a size limit: a wrong path (a log, a device, a
//! pipe) makes an error, never an unbounded read.

use std::io::{self, Read};
use std::path::Path;

/// The whole file, if it holds at most `max` bytes; `what` names the kind
/// of file in the error (`"key files may be at most 1 MiB"`).
pub fn read(path: &Path, max: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} may be at most {}", size(max)),
        ));
    }
    Ok(bytes)
}

/// The same, as UTF-8 text.
pub fn read_text(path: &Path, max: u64, what: &str) -> io::Result<String> {
    String::from_utf8(read(path, max, what)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_past_the_limit_or_endless_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, "abc").unwrap();
        assert_eq!(read_text(&small, 3, "x files").unwrap(), "abc");
        let e = read(&small, 2, "x files").unwrap_err().to_string();
        assert_eq!(e, "x files may be at most 0 KiB");
        // A device that never ends.
        let e = read(Path::new("/dev/zero"), 1 << 20, "key files").unwrap_err();
        assert_eq!(e.to_string(), "key files may be at most 1 MiB");
        std::fs::write(&small, [0xff, 0xfe]).unwrap();
        assert!(read_text(&small, 10, "x").is_err());
    }
}
