//! `usher health`: ask a running usher's admin listener whether it is alive
//! (or ready), for health checks in images that have no curl or shell.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::CliError;
use crate::config::Config;

/// Flags of `usher health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Config file whose `admin` address to ask.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Admin address to ask, overriding the config's [default: 127.0.0.1:9090].
    /// An unspecified address (`0.0.0.0`, `[::]`) is asked on loopback.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Ask /readyz (ready for traffic, not draining) instead of /healthz.
    #[arg(long)]
    pub ready: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout: u64,
}

/// Why the admin listener did not say yes.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The config file could not be read for its `admin` address.
    #[error("{file}: {message}")]
    Config {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// No connection, or no complete answer in time.
    #[error("{url}: {source}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An answer other than 200.
    #[error("{url}: answered {status}")]
    Unhealthy {
        /// What was asked.
        url: String,
        /// The status line's code, or what came instead of one.
        status: String,
    },
}

/// Run `usher health`: exit 0 on 200, 1 on anything else (orchestrators
/// read other codes as errors of the check itself).
pub fn run(args: &HealthArgs) -> Result<(), CliError> {
    let admin = match (args.admin, &args.config) {
        (Some(admin), _) => admin,
        (None, Some(path)) => admin_of(path)?,
        (None, None) => Config::default().admin,
    };
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let url = probe(admin, path, Duration::from_secs(args.timeout))?;
    println!("{url}: ok");
    Ok(())
}

/// The `admin` address of a config file, read leniently: a running usher
/// keeps serving on its old config while the file is being edited, and its
/// health does not depend on the rest of the file being valid.
fn admin_of(path: &Path) -> Result<SocketAddr, HealthError> {
    #[derive(serde::Deserialize)]
    struct AdminOnly {
        admin: Option<SocketAddr>,
    }
    let error = |message: String| HealthError::Config {
        file: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    match toml::from_str::<AdminOnly>(&text) {
        Ok(found) => Ok(found.admin.unwrap_or(Config::default().admin)),
        // A syntax error elsewhere (a file half-edited): the top-level
        // `admin = "…"` line, if there is one, still says where to ask.
        Err(e) => admin_line(&text).ok_or_else(|| error(e.message().to_owned())),
    }
}

/// The value of a top-level `admin = "ADDR"` line.
fn admin_line(text: &str) -> Option<SocketAddr> {
    text.lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with('['))
        .find_map(|line| {
            let value = line.strip_prefix("admin")?.trim_start().strip_prefix('=')?;
            let value = value.trim().strip_prefix('"')?;
            value[..value.find('"')?].parse().ok()
        })
}

/// GET `path` on `admin` and succeed on 200; returns the URL asked.
pub fn probe(admin: SocketAddr, path: &str, timeout: Duration) -> Result<String, HealthError> {
    let target = reachable(admin);
    let url = format!("http://{target}{path}");
    let unreachable = |source| HealthError::Unreachable {
        url: url.clone(),
        source,
    };
    // One deadline for the whole exchange, however the time is spent.
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(unreachable)?;
    stream
        .set_write_timeout(Some(left().map_err(unreachable)?))
        .map_err(unreachable)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    // The status line is all that matters; a few hundred bytes hold it.
    let mut head = [0u8; 256];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        stream
            .set_read_timeout(Some(left().map_err(unreachable)?))
            .map_err(unreachable)?;
        match stream.read(&mut head[len..]).map_err(unreachable)? {
            0 => break,
            n => len += n,
        }
    }
    let status = status_code(&head[..len]);
    if status == Some(200) {
        Ok(url)
    } else {
        let status = match status {
            Some(code) => code.to_string(),
            None if len == 0 => "nothing".to_owned(),
            None => "something that is not HTTP".to_owned(),
        };
        Err(HealthError::Unhealthy { url, status })
    }
}

/// Where to reach a listener bound to `addr`: loopback if it is bound to
/// every address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The code of an `HTTP/1.x NNN ...` status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|b| *b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_a_status_line_and_nothing_else() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"HTTP/1.1 200"), Some(200));
        for junk in [
            &b""[..],
            b"HTTP/1.1 ",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 2x0 OK",
            b"SSH-2.0-OpenSSH\r\n",
            b"\xff\xfe\x00",
        ] {
            assert_eq!(status_code(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn finds_the_admin_line_of_a_half_edited_file() {
        let addr = |s: &str| s.parse::<SocketAddr>().ok();
        assert_eq!(
            admin_line("listen = [\n admin = \"0.0.0.0:9191\" # here\n"),
            addr("0.0.0.0:9191")
        );
        assert_eq!(admin_line("admin=\"[::1]:9\""), addr("[::1]:9"));
        for no in [
            "",
            "[state]\nadmin = \"0.0.0.0:9191\"\n",
            "administrator = \"x\"\n",
            "admin = 9090\n",
            "admin = \"0.0.0.0:9191\n",
            "admin = \"not an address\"\n",
        ] {
            assert_eq!(admin_line(no), None, "{no:?}");
        }
    }

    #[test]
    fn asks_a_wildcard_listener_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        let v6: SocketAddr = "[::]:9090".parse().unwrap();
        let set: SocketAddr = "10.1.2.3:9090".parse().unwrap();
        assert_eq!(reachable(v4), "127.0.0.1:9090".parse().unwrap());
        assert_eq!(reachable(v6), "[::1]:9090".parse().unwrap());
        assert_eq!(reachable(set), set);
    }
}
