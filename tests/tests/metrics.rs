//! `run --metrics-listen`: a real node's `/metrics`, checked by Prometheus's own `promtool`, with
//! counters that move with the traffic sent through the entry point.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use halley_tests::{Node, assert_ok, free_tcp_port, runtime, scrape_metrics as scrape, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

/// The sum of every sample of `name` whose labels contain each of `labels`.
fn value(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|want| rest.contains(want))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

fn promtool_accepts(body: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!(
            "skipped the promtool check: promtool is not installed (Debian package prometheus; .ci/run installs it)"
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "promtool check metrics");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.trim().is_empty(),
        "promtool found problems:\n{said}\n{body}"
    );
}

#[test]
fn metrics_pass_promtool_and_move_with_traffic() {
    let root = tempfile::tempdir().unwrap();
    let mut node = Node::new(root.path(), "n1");
    node.init();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let metrics_arg = metrics.to_string();
    node.start_with(&[
        "--service-address",
        "127.0.0.1",
        "--metrics-listen",
        &metrics_arg,
    ]);

    let port = free_tcp_port();
    let config = halley_tests::web_config(root.path(), port, "env = { TS_ERROR_RATE = \"0.25\" }");
    let out = node.deploy(&config, "web", "1", SERVICE_BIN.as_ref());
    assert_ok(&out, "deploy web 1");

    let web = ["service=\"web\""];
    let (_, before) = scrape(metrics, "*/*");
    let entry: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let statuses: Vec<u16> = runtime().block_on(async {
        let mut got = Vec::new();
        for _ in 0..20 {
            let answer = halley_tests::http::get(entry, "/").await.expect("GET /");
            got.push(answer.status);
        }
        got
    });
    let sent_errors = statuses.iter().filter(|s| **s == 500).count() as f64;
    assert!(
        sent_errors > 0.0,
        "TS_ERROR_RATE answers some 500s: {statuses:?}"
    );
    let (content_type, after) = scrape(metrics, "text/plain");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );

    let moved = |name: &str| value(&after, name, &web) - value(&before, name, &web);
    assert_eq!(moved("halley_slot_requests_total"), 20.0, "{after}");
    assert_eq!(
        moved("halley_slot_server_errors_total"),
        sent_errors,
        "{after}"
    );
    assert_eq!(moved("halley_slot_request_duration_seconds_count"), 20.0);
    assert_eq!(
        value(
            &after,
            "halley_slot_request_duration_seconds_bucket",
            &["le=\"+Inf\"", "service=\"web\""]
        ),
        value(&after, "halley_slot_request_duration_seconds_count", &web),
    );
    assert_eq!(
        value(
            &after,
            "halley_slot_info",
            &["service=\"web\"", "role=\"active\"", "release=\"1\""]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(value(&after, "halley_slot_healthy", &web), 1.0, "{after}");
    assert_eq!(
        value(&after, "halley_service_committed_info", &["release=\"1\""]),
        1.0
    );
    assert_eq!(
        value(&after, "halley_members", &["state=\"alive\""]),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "halley_rollout_phase", &["phase=\"completed\""]),
        1.0,
        "{after}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(value(&after, "halley_certificate_expiry_timestamp_seconds", &[]) > now);
    // Measured afresh a few seconds after the last measure (the start's status), not per scrape.
    assert!(
        wait_until(Duration::from_secs(10), || {
            value(&scrape(metrics, "*/*").1, "halley_data_dir_used_bytes", &[]) > 100_000.0
        }),
        "the release is on disk: {} bytes counted",
        value(&scrape(metrics, "*/*").1, "halley_data_dir_used_bytes", &[])
    );
    promtool_accepts(&after);

    let (content_type, om) = scrape(
        metrics,
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    );
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        om.ends_with("# EOF\n") && om.contains("# TYPE halley_slot_requests counter"),
        "{om}"
    );

    let status = node.status().expect("status --json");
    assert!(
        status["data_dir_bytes"].as_u64().unwrap_or(0) > 100_000,
        "{status}"
    );
    assert!(status["mesh"]["streams_opened"].is_u64(), "{status}");
    node.kill_services();
}

#[test]
fn a_metrics_address_in_use_stops_the_start_with_its_name() {
    let root = tempfile::tempdir().unwrap();
    let mut node = Node::new(root.path(), "n1");
    node.init();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    node.spawn(&["--metrics-listen", &addr], None);
    assert!(
        wait_until(Duration::from_secs(10), || node.has_exited()),
        "the node kept running without its metrics listener"
    );
    let log = node.log();
    assert!(
        log.contains(&format!("cannot listen for metrics on {addr}"))
            && log.contains("--metrics-listen"),
        "{log}"
    );
}
