//! `halley-node demo-service` (hidden): the service the demo deploys, so the demo needs nothing
//! but this binary. It answers `GET /` with its release and node, `GET /health` with 200, and,
//! from `DEMO_ERRORS_AFTER_MS` after its start, every second request with 500 (a release that
//! regresses once it is serving).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct Demo {
    release: String,
    node: String,
    errors_after: Option<Duration>,
    started: Instant,
    served: AtomicU64,
}

/// Serves on `$PORT` (127.0.0.1) until killed.
pub async fn run() -> Result<()> {
    let port: u16 = std::env::var("PORT")
        .context("PORT is not set: this command is run by halley-node as a service")?
        .parse()
        .context("PORT is not a port number")?;
    let demo = Arc::new(Demo {
        release: std::env::var("HALLEY_RELEASE").unwrap_or_else(|_| "dev".into()),
        node: std::env::var("HALLEY_NODE").unwrap_or_else(|_| "-".into()),
        errors_after: std::env::var("DEMO_ERRORS_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
        started: Instant::now(),
        served: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let demo = demo.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let demo = demo.clone();
                async move { Ok::<_, Infallible>(answer(&demo, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(demo: &Demo, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, text) = match req.uri().path() {
        "/health" => (StatusCode::OK, "ok\n".to_owned()),
        _ => {
            let n = demo.served.fetch_add(1, Ordering::Relaxed);
            let failing = demo
                .errors_after
                .is_some_and(|after| demo.started.elapsed() >= after);
            if failing && n.is_multiple_of(2) {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("release {} on {} is failing\n", demo.release, demo.node),
                )
            } else {
                (
                    StatusCode::OK,
                    format!("hello from release {} on {}\n", demo.release, demo.node),
                )
            }
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp
}
