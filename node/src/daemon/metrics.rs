//! `run --metrics-listen ADDR`: an HTTP listener that answers `GET /metrics` with a fresh
//! [`Sample`] of the node, in the text format the scraper asks for.
//!
//! ## Guarantees
//! - Off unless `--metrics-listen` is given; a listener that cannot bind stops the daemon's
//!   start with an error naming the address (a typo must not go unnoticed).
//! - OpenMetrics when the request's `Accept` names `application/openmetrics-text` (Prometheus
//!   asks for it), Prometheus text 0.0.4 otherwise (curl, `promtool check metrics`).
//! - A scrape reads counters and states and takes no lock a deploy holds for long; like
//!   `status`, it first pulls gossip into the membership view (which also publishes this node's
//!   own summaries). The data dir's size is measured again every few seconds at most (every
//!   minute where the walk is slow), off the async workers.
//!
//! ## Non-goals
//! No TLS and no authentication: bind it to loopback or a private network, as node exporters are.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, info};

use crate::daemon::exposition::{self, Sample};
use crate::daemon::node::Node;
use crate::error::{Error, Result};

/// The only path served.
pub const PATH: &str = "/metrics";

/// Binds `addr` (or takes `handed`, the listener an upgrade handed over) and serves metrics of
/// `node` until the task is aborted. Returns the task and a second descriptor of the listener
/// (for the next upgrade).
pub async fn serve(
    addr: SocketAddr,
    handed: Option<std::net::TcpListener>,
    node: Arc<Node>,
) -> Result<(tokio::task::JoinHandle<()>, std::os::fd::OwnedFd)> {
    let cannot = |e: std::io::Error| {
        Error::Net(format!(
            "cannot listen for metrics on {addr}: {e}; pick another address with --metrics-listen"
        ))
    };
    let listener = match handed.filter(|l| l.local_addr().is_ok_and(|a| a == addr)) {
        Some(l) => {
            l.set_nonblocking(true).map_err(cannot)?;
            tokio::net::TcpListener::from_std(l).map_err(cannot)?
        }
        None => tokio::net::TcpListener::bind(addr).await.map_err(cannot)?,
    };
    let fd = std::os::fd::AsFd::as_fd(&listener)
        .try_clone_to_owned()
        .map_err(cannot)?;
    info!(%addr, "serving metrics at http://{addr}{PATH}");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, remote)) = listener.accept().await else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let node = node.clone();
                    async move { Ok::<_, Infallible>(answer(&node, &req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    debug!(error = %e, %remote, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok((task, fd))
}

async fn answer(node: &Node, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            format!("not found: metrics are served at {PATH}\n"),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} answers GET only\n"),
        );
    }
    let sample = gather(node).await;
    let wants_openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if wants_openmetrics {
        (exposition::openmetrics(&sample), exposition::OPENMETRICS)
    } else {
        (
            exposition::prometheus_text(&sample),
            exposition::PROMETHEUS_TEXT,
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Reads everything a scrape reports.
async fn gather(node: &Node) -> Sample {
    // As `status` does: the membership as of now, not as of the last gossip round.
    node.refresh().await;
    let services = node.services.statuses().await;
    let backups = crate::host::backups::Backups::new(node.data_dir().root());
    let backups = services
        .iter()
        .map(|s| {
            let list = backups.list(&s.name);
            let newest = list.iter().map(|b| b.created_ms).max();
            (s.name.clone(), list.len(), newest)
        })
        .collect();
    let (used, free) = node.disk_use().await;
    Sample {
        version: crate::VERSION.to_owned(),
        now_ms: crate::clock::wall_ms(),
        meters: node.services.meters().read(),
        rollouts: crate::rollout::status::rollouts(&node.coordinator, None).await,
        members: node.cluster.members(),
        mesh: node.cluster.mesh().map(|m| m.stats()).unwrap_or_default(),
        certificate: node.certificate_status(),
        backups,
        data_dir_bytes: used,
        data_dir_free_bytes: free,
        services,
    }
}
