//! `attach --metrics ADDR:PORT`: serves `/metrics` on `attach`'s tokio runtime, through hyper's
//! HTTP/1.1 server: one task per connection, not a thread. A scrape reads the pinned maps anew
//! and judges the resets with the code behind `flagtrace stats` and `resets`, then renders them
//! in the Prometheus text format ([`crate::output::metrics`]); it runs on the blocking pool, one
//! at a time, and its body serves every request for [`BODY_MAX_AGE`]. What a client can take:
//! - a connection of [`MAX_CONNECTIONS`]: beyond them, new connections are closed at once (the
//!   scraper retries at its next interval) rather than left waiting behind idle ones;
//! - [`HEADER_READ_TIMEOUT`] to send a request's headers, also between the requests of a
//!   kept-alive connection: an idle or slow connection is closed after it;
//! - [`MAX_REQUEST_HEAD`] bytes of request head: a larger one gets 431 and the connection ends;
//! - pipelined requests are answered in order on their connection, from the cached body, and
//!   hold no other connection up.

use std::{
    convert::Infallible,
    io,
    net::{SocketAddr, TcpListener as StdListener},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    analysis::{
        oui::Vendors,
        report::{self, Origin, Scope},
    },
    output::metrics::{Metrics, ResetFlow, Snapshot},
    source::live,
    sys::{maps::PinnedMaps, pins::Attachment},
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to send a request's headers, and to start the next one on a kept-alive
/// connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a request's line and headers, at most (hyper's smallest read buffer).
pub const MAX_REQUEST_HEAD: usize = 8192;
/// How long a rendered body answers scrapes: Prometheus scrapes every 15 s or more, and two
/// hundred scrapers at once cost one reading of the maps.
pub const BODY_MAX_AGE: Duration = Duration::from_secs(1);
/// Pause after an accept error that a moment may cure (out of file descriptors, a connection
/// reset before it was accepted).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The listening socket of the metrics endpoint.
pub struct Endpoint {
    listener: StdListener,
    addr: SocketAddr,
}

impl Endpoint {
    /// Listens on `addr`. A socket stays in the network namespace it was created in: `attach`
    /// binds before it enters the attachment's namespace, so that the endpoint lives in the
    /// namespace flagtrace was started from.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Endpoint> {
        let context = || format!("binding the metrics endpoint to {addr}");
        raise_open_files(MAX_CONNECTIONS as u64 + FILES_BESIDE_CONNECTIONS);
        let listener = StdListener::bind(addr).with_context(context)?;
        listener.set_nonblocking(true).with_context(context)?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("reading the address of the metrics endpoint {addr}"))?;
        Ok(Endpoint { listener, addr })
    }

    /// The address it listens on (the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests until the listening socket fails, and returns that failure. Runs on a
    /// tokio runtime.
    pub async fn serve(self, source: Source) -> anyhow::Error {
        let addr = self.addr;
        match self.accept_loop(source).await {
            Err(error) => error.context(format!("the metrics endpoint on {addr} failed")),
            Ok(never) => match never {},
        }
    }

    async fn accept_loop(self, source: Source) -> anyhow::Result<Infallible> {
        let listener = TcpListener::from_std(self.listener)
            .with_context(|| format!("serving metrics on {}", self.addr))?;
        let scrapes = Arc::new(Scrapes::new(source)?);
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) if is_transient(&error) => {
                    log::warn!("metrics endpoint {}: {error}; going on", self.addr);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(error) => return Err(error).context("accepting a connection"),
            };
            // Full: this connection is closed as it is dropped.
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                continue;
            };
            let scrapes = scrapes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| respond(request, scrapes.clone()));
                // An error here is the client's (it left, timed out, sent too much): the
                // connection ends, nothing else does.
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_REQUEST_HEAD)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(permit);
            });
        }
    }
}

/// Files `attach` keeps open besides the endpoint's connections: maps, programs, links.
const FILES_BESIDE_CONNECTIONS: u64 = 256;

/// Raises the soft limit of open files towards `wanted`, as far as the hard limit allows: the
/// usual soft limit of 1,024 would end the connections before [`MAX_CONNECTIONS`] does. Below
/// it, running out of files only delays the next accept ([`is_transient`]).
fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Accept errors that concern one connection or a passing shortage, not the socket.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPERM
                | libc::EINTR
        )
    )
}

async fn respond(
    request: Request<Incoming>,
    scrapes: Arc<Scrapes>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => match scrapes.body().await {
            Ok(body) => text(StatusCode::OK, body, TEXT_FORMAT),
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from(format!("{error}\n")),
                PLAIN_TEXT,
            ),
        },
        (_, "/metrics") => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from_static(b"only GET and HEAD\n"),
                PLAIN_TEXT,
            );
            response
                .headers_mut()
                .insert(ALLOW, "GET, HEAD".parse().expect("a valid header value"));
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"flagtrace serves /metrics only\n"),
            PLAIN_TEXT,
        ),
    };
    Ok(response)
}

const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

fn text(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().expect("a valid header value"),
    );
    response
}

/// The scrapes of one endpoint: one at a time on the blocking pool, the latest body kept for
/// [`BODY_MAX_AGE`].
struct Scrapes {
    /// The source and the metric families it renders into, for the blocking pool.
    work: Arc<Mutex<(Source, Metrics)>>,
    /// The latest body and when it was rendered. Held while a scrape runs, so that the
    /// requests that come meanwhile wait for its body instead of starting their own.
    latest: tokio::sync::Mutex<Option<(Instant, Result<Bytes, String>)>>,
}

impl Scrapes {
    fn new(source: Source) -> anyhow::Result<Scrapes> {
        let metrics = Metrics::new(&source.attachment)?;
        Ok(Scrapes {
            work: Arc::new(Mutex::new((source, metrics))),
            latest: tokio::sync::Mutex::new(None),
        })
    }

    /// The body of a recent scrape, or of a new one.
    async fn body(&self) -> Result<Bytes, String> {
        let mut latest = self.latest.lock().await;
        if let Some((at, body)) = latest.as_ref() {
            if at.elapsed() < BODY_MAX_AGE {
                return body.clone();
            }
        }
        let work = self.work.clone();
        let scraped = tokio::task::spawn_blocking(move || {
            let mut work = work.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (source, metrics) = &mut *work;
            source.scrape(metrics).map_err(|error| {
                log::warn!("metrics for {}: {error:#}", source.attachment);
                format!("{error:#}")
            })
        })
        .await
        .unwrap_or_else(|panic| Err(format!("the scrape failed: {panic}")))
        .map(Bytes::from);
        *latest = Some((Instant::now(), scraped.clone()));
        scraped
    }
}

/// The content type of the Prometheus text format, 0.0.4 (`TextEncoder::format_type`), with
/// its charset.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the metrics of one attachment come from.
pub struct Source {
    attachment: Attachment,
    maps: PinnedMaps,
    vendors: Vendors,
}

impl Source {
    pub fn new(attachment: Attachment, maps: PinnedMaps, vendors: Vendors) -> Source {
        Source {
            attachment,
            maps,
            vendors,
        }
    }

    fn scrape(&self, metrics: &mut Metrics) -> anyhow::Result<String> {
        metrics.render(&self.snapshot()?)
    }

    /// Reads the maps and judges the resets, as `flagtrace stats` and `resets` do. Gateway IP
    /// addresses are not exposed, so the neighbour table is not read.
    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let counters = self.maps.counters()?;
        let flows = live::flow_records(&self.attachment, &self.maps)?;
        let flow_count = flows.iter().filter(|flow| !flow.flow_evicted).count();
        let reports = report::analyse(
            &Origin::Live(self.attachment.clone()),
            flows,
            &self.vendors,
            || None,
            Scope::ResetFlows,
        )?;
        Ok(Snapshot {
            counters,
            flows: flow_count,
            flow_capacity: self.maps.capacity(),
            resets: reports
                .into_iter()
                .filter_map(|report| {
                    let verdict = report.verdict?;
                    Some(ResetFlow {
                        reset_by: verdict.reset_by,
                        role: verdict.middlebox_role,
                        gateway: report.gateway.map(|gateway| (gateway.mac, gateway.vendor)),
                    })
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, TextEncoder};

    use super::*;

    #[test]
    fn the_content_type_is_the_encoders_with_a_charset() {
        let encoder = TextEncoder::new();
        assert_eq!(
            TEXT_FORMAT,
            format!("{}; charset=utf-8", encoder.format_type())
        );
    }
}
