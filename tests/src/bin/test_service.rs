//! `halley-test-service`: a small service whose misbehaviour is set by environment variables, so
//! tests can deploy good, slow, failing, crashing, erroring and slow-answering releases.
//!
//! | variable             | effect                                                          |
//! |----------------------|-----------------------------------------------------------------|
//! | `PORT`               | port to listen on (127.0.0.1); set by halley-node               |
//! | `TS_MODE`            | `http` (default) or `tcp` (greets with `version=V\n`, then echoes)|
//! | `TS_START_DELAY_MS`  | wait this long before listening (a slow start)                  |
//! | `TS_HEALTH`          | `fail`: `/health` answers 503                                   |
//! | `TS_CRASH_AFTER_MS`  | exit with status 3 this long after start                        |
//! | `TS_ERROR_RATE`      | fraction (0–1) of `/` requests answered 500                     |
//! | `TS_LATENCY_MS`      | added latency of `/`                                            |
//! | `TS_ERRORS_AFTER_MS` | only answer errors (`TS_ERROR_RATE`) after this long            |
//! | `TS_HEALTH_FAIL_AFTER_MS` | `/health` answers 503 from this long after start           |
//! | `TS_PRINT_ENV`       | name of an env variable to print (with its value) at start      |
//! | `TS_NOISE_BYTES`     | print this many bytes of numbered lines to stdout, 4 MiB a second |
//!
//! HTTP endpoints: `/health`; `/` answers `version=V slot=S pid=P node=N`; `/sleep?ms=N`; `/echo` streams
//! the request body back; `/headers` lists the request headers; `/env?name=X` shows a variable;
//! `/read?path=P` answers the file at P (403 with the error if it cannot be read);
//! `/visit` counts calls in `$HALLEY_SERVICE_DATA/visits`; `/ws` upgrades (WebSocket handshake)
//! and then echoes raw bytes; `/stop-listening` closes the listener (new connections are refused,
//! open ones still served); `/crash` reads the request, counts it in
//! `$HALLEY_SERVICE_DATA/crashes` and exits without answering; `/committed` reports the SQLite
//! writer's highest committed row id (`TS_SQLITE_WRITER=1` commits a row to
//! `$HALLEY_SERVICE_DATA/app.db` every 20 ms). Commands: `migrate`, `check-restored`,
//! `count DB` (see `test_service_db.rs`).

#[path = "test_service/db.rs"]
mod db;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Knobs {
    version: String,
    slot: String,
    node: String,
    health_fails: bool,
    health_fails_after: Option<Duration>,
    error_every: Option<u64>,
    errors_after: Duration,
    latency: Duration,
    started: Instant,
    count: AtomicU64,
    committed: Option<Arc<AtomicU64>>,
    stop_listening: tokio::sync::Notify,
}

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    db::command(&args);
    let committed = std::env::var("TS_SQLITE_WRITER")
        .is_ok_and(|v| v == "1")
        .then(db::start_writer);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    // A careless release that prints a secret of its env where the log tail picks it up.
    if let Ok(name) = std::env::var("TS_PRINT_ENV") {
        eprintln!(
            "test-service: {name}={}",
            std::env::var(&name).unwrap_or_default()
        );
    }
    if let Some(total) = std::env::var("TS_NOISE_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::spawn(noise(total));
    }
    if let Some(d) = env_ms("TS_CRASH_AFTER_MS") {
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            eprintln!(
                "test-service: crashing on purpose after {} ms",
                d.as_millis()
            );
            std::process::exit(3);
        });
    }
    if let Some(d) = env_ms("TS_START_DELAY_MS") {
        tokio::time::sleep(d).await;
    }
    let rate: f64 = std::env::var("TS_ERROR_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let knobs = Arc::new(Knobs {
        version: std::env::var("HALLEY_RELEASE").unwrap_or_else(|_| "dev".into()),
        slot: std::env::var("HALLEY_SLOT").unwrap_or_else(|_| "-".into()),
        node: std::env::var("HALLEY_NODE").unwrap_or_else(|_| "-".into()),
        health_fails: std::env::var("TS_HEALTH").is_ok_and(|v| v == "fail"),
        health_fails_after: env_ms("TS_HEALTH_FAIL_AFTER_MS"),
        error_every: (rate > 0.0).then(|| (1.0 / rate).round().max(1.0) as u64),
        errors_after: env_ms("TS_ERRORS_AFTER_MS").unwrap_or_default(),
        latency: env_ms("TS_LATENCY_MS").unwrap_or_default(),
        started: Instant::now(),
        count: AtomicU64::new(0),
        committed,
        stop_listening: tokio::sync::Notify::new(),
    });
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("test-service: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("test-service {} listening on {port}", knobs.version);
    let tcp = std::env::var("TS_MODE").is_ok_and(|m| m == "tcp");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = knobs.stop_listening.notified() => {
                // Connections already open keep being served; new ones are refused.
                drop(listener);
                std::future::pending::<()>().await;
                return;
            }
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let knobs = knobs.clone();
        if tcp {
            tokio::spawn(async move {
                let greeting = format!("version={}\n", knobs.version);
                if stream.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                echo(&mut stream).await;
            });
            continue;
        }
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let knobs = knobs.clone();
                async move { Ok::<_, Infallible>(handle(req, &knobs).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Writes back whatever arrives until the peer closes.
async fn echo(io: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) {
    let mut buf = [0u8; 4096];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// `TS_NOISE_BYTES`: numbered 100-byte lines, 64 KiB every 16 ms (about 4 MiB a second).
async fn noise(total: u64) {
    use std::io::Write;
    let mut written = 0u64;
    let mut n = 0u64;
    while written < total {
        let mut burst = String::with_capacity(64 << 10);
        while burst.len() < (64 << 10) && written + (burst.len() as u64) < total {
            n += 1;
            burst.push_str(&format!("noise {n:>12} {}\n", "x".repeat(80)));
        }
        written += burst.len() as u64;
        let _ = std::io::stdout().write_all(burst.as_bytes());
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    eprintln!("test-service: noise done, {n} lines");
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(mut req: Request<Incoming>, k: &Knobs) -> Response<Body> {
    match req.uri().path() {
        "/health"
            if k.health_fails
                || k.health_fails_after
                    .is_some_and(|d| k.started.elapsed() >= d) =>
        {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "failing on purpose\n".into(),
            )
        }
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/sleep" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(
                StatusCode::OK,
                format!("slept {ms} version={}\n", k.version),
            )
        }
        "/echo" => Response::new(req.into_body().boxed()),
        "/env" => {
            let name = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("name="))
                .unwrap_or("");
            text(StatusCode::OK, std::env::var(name).unwrap_or_default())
        }
        "/read" => {
            // What this process can read at a path: a confined service's view is tested so.
            let path = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("path="))
                .unwrap_or("");
            match std::fs::read_to_string(path) {
                Ok(body) => text(StatusCode::OK, body),
                Err(e) => text(StatusCode::FORBIDDEN, format!("{e}\n")),
            }
        }
        "/visit" => {
            // Counts visits in a file under HALLEY_SERVICE_DATA, which outlives releases.
            let dir = std::env::var("HALLEY_SERVICE_DATA").unwrap_or_else(|_| ".".into());
            let path = std::path::Path::new(&dir).join("visits");
            let mut line = std::fs::read_to_string(&path).unwrap_or_default();
            line.push('x');
            match std::fs::write(&path, &line) {
                Ok(()) => text(StatusCode::OK, format!("{}\n", line.len())),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/committed" => text(
            StatusCode::OK,
            format!(
                "committed={}\n",
                k.committed.as_ref().map_or(0, |c| c.load(Ordering::SeqCst))
            ),
        ),
        "/stop-listening" => {
            k.stop_listening.notify_one();
            text(StatusCode::OK, "no longer accepting connections\n".into())
        }
        "/crash" => {
            // Reads the whole request, notes it, and exits without answering.
            let _ = req.into_body().collect().await;
            let dir = std::env::var("HALLEY_SERVICE_DATA").unwrap_or_else(|_| ".".into());
            let path = std::path::Path::new(&dir).join("crashes");
            let mut line = std::fs::read_to_string(&path).unwrap_or_default();
            line.push('x');
            let _ = std::fs::write(&path, &line);
            std::process::exit(4);
        }
        "/headers" => {
            let mut out = String::new();
            for (name, value) in req.headers() {
                out.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            text(StatusCode::OK, out)
        }
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return text(StatusCode::BAD_REQUEST, "not a websocket request\n".into());
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                echo(&mut TokioIo::new(upgraded)).await;
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
            let h = r.headers_mut();
            h.insert("upgrade", "websocket".parse().unwrap());
            h.insert("connection", "Upgrade".parse().unwrap());
            h.insert(
                "sec-websocket-accept",
                accept_key(key.as_bytes()).parse().unwrap(),
            );
            r
        }
        _ => {
            if !k.latency.is_zero() {
                tokio::time::sleep(k.latency).await;
            }
            let n = k.count.fetch_add(1, Ordering::Relaxed) + 1;
            let erroring = k.started.elapsed() >= k.errors_after;
            if erroring && k.error_every.is_some_and(|every| n.is_multiple_of(every)) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("error on purpose version={}\n", k.version),
                );
            }
            text(
                StatusCode::OK,
                format!(
                    "version={} slot={} pid={} node={}\n",
                    k.version,
                    k.slot,
                    std::process::id(),
                    k.node
                ),
            )
        }
    }
}

/// `Sec-WebSocket-Accept` (RFC 6455 §4.2.2): base64(SHA-1(key + GUID)).
fn accept_key(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64(digest.as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_accept_matches_rfc_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
