//! The metrics endpoint from a test or the soak: `attach --metrics` on loopback, and a plain
//! HTTP/1.0 GET of it.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
};

use crate::lab::{Loader, Netns, TIMEOUT};

/// `flagtrace --netns NS --pin-root ROOT attach IFACE --metrics 127.0.0.1:0`, and the address
/// of its endpoint, which it prints before its ready line.
pub fn attach_with_metrics(netns: &Netns, pin_root: &Path, iface: &str) -> (Loader, SocketAddr) {
    let loader = Loader::attach_with(netns, pin_root, iface, &["--metrics", "127.0.0.1:0"]);
    let log = loader.log();
    let addr = log
        .lines()
        .filter(|line| line.contains("flagtrace: metrics of "))
        .find_map(|line| line.split("http://").nth(1)?.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no metrics address before the ready line:\n{log}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    (loader, addr)
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET target` over HTTP/1.0 (no chunked bodies, the server closes when done).
pub fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let malformed = || std::io::Error::other(format!("malformed HTTP response: {raw:?}"));
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Raises this process's soft limit of open files to `wanted` (or the hard limit, if lower).
pub fn raise_open_files(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct for the calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.max(wanted.min(limit.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// The endpoint's abusers, one after the other: a thousand connections that never send a byte
/// (each holds a task, not a thread, until the header timeout), a client that pipelines 2,000
/// requests and leaves without reading the answers, and one that sends a 1 MiB request head.
/// `after(what)` runs after each, while the idle connections are still open: another client's
/// scrape. Returns what the server answered the huge head (431, or nothing if it closed first).
pub fn abuse(addr: SocketAddr, mut after: impl FnMut(&str)) -> String {
    let limit = raise_open_files(4096);
    assert!(limit >= 1100, "open files limit {limit}");
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect_timeout(&addr, TIMEOUT).expect("an idle connection"))
        .collect();
    after("beside 1,000 idle connections");

    let mut pipeline = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    pipeline
        .write_all(request.repeat(2000).as_bytes())
        .expect("sending 2,000 requests");
    drop(pipeline);
    after("after 2,000 pipelined requests");

    let mut huge = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting");
    huge.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    // The server may close while the head is still being sent.
    let _ = huge.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let _ = huge.read_to_end(&mut answer);
    after("after a 1 MiB request head");
    drop(idle);
    String::from_utf8_lossy(&answer).into_owned()
}
