//! `attach --metrics ADDR:PORT`: serves `/metrics`. Each scrape reads the pinned maps anew and
//! judges the resets with the code behind `flagtrace stats` and `resets`, then renders them in
//! the Prometheus text format ([`crate::output::metrics`]) through metric families the endpoint
//! builds once.

use std::{
    net::{SocketAddr, TcpListener},
    thread,
};

use anyhow::{anyhow, Context as _};
use prometheus::{Encoder as _, TextEncoder};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::{
    analysis::{
        oui::Vendors,
        report::{self, Origin, Scope},
    },
    output::metrics::{Metrics, ResetFlow, Snapshot},
    source::live,
    sys::{maps::PinnedMaps, pins::Attachment},
};

/// The listening socket of the metrics endpoint.
pub struct Endpoint {
    server: Server,
    addr: SocketAddr,
}

impl Endpoint {
    /// Listens on `addr`. A socket stays in the network namespace it was created in: `attach`
    /// binds before it enters the attachment's namespace, so that the endpoint lives in the
    /// namespace flagtrace was started from.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Endpoint> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("reading the address of the metrics endpoint {addr}"))?;
        let server = Server::from_listener(listener, None)
            .map_err(|error| anyhow!("serving metrics on {addr}: {error}"))?;
        Ok(Endpoint { server, addr })
    }

    /// The address it listens on (the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests on a thread of its own until the process exits, one at a time.
    pub fn serve(self, source: Source) -> anyhow::Result<()> {
        let mut metrics = Metrics::new(&source.attachment)?;
        thread::Builder::new()
            .name("metrics".to_owned())
            .spawn(move || {
                for request in self.server.incoming_requests() {
                    respond(request, &source, &mut metrics);
                }
            })
            .with_context(|| format!("starting the metrics endpoint on {}", self.addr))?;
        Ok(())
    }
}

fn respond(request: Request, source: &Source, metrics: &mut Metrics) {
    let path = request.url().split('?').next().unwrap_or_default();
    let response = match (request.method(), path) {
        (Method::Get | Method::Head, "/metrics") => match source.scrape(metrics) {
            Ok(text) => text_response(200, text, &format!("{}; charset=utf-8", source.format)),
            Err(error) => {
                log::warn!("metrics for {}: {error:#}", source.attachment);
                text_response(500, format!("{error:#}\n"), PLAIN_TEXT)
            }
        },
        (_, "/metrics") => text_response(405, "only GET and HEAD\n".to_owned(), PLAIN_TEXT)
            .with_header(header("Allow", "GET, HEAD")),
        _ => text_response(
            404,
            "flagtrace serves /metrics only\n".to_owned(),
            PLAIN_TEXT,
        ),
    };
    // An error here means the client went away; the next scrape starts afresh.
    let _ = request.respond(response);
}

const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

fn text_response(
    status: u16,
    body: String,
    content_type: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("header names and values are ASCII")
}

/// Where the metrics of one attachment come from.
pub struct Source {
    attachment: Attachment,
    maps: PinnedMaps,
    vendors: Vendors,
    format: String,
}

impl Source {
    pub fn new(attachment: Attachment, maps: PinnedMaps, vendors: Vendors) -> Source {
        Source {
            attachment,
            maps,
            vendors,
            format: TextEncoder::new().format_type().to_owned(),
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
        let flow_count = flows.len();
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
