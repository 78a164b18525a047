//! What `/metrics` says: a [`Sample`] of the node (gathered by [`crate::daemon::metrics`]) turned
//! into metric families, encoded by prometheus-client as OpenMetrics text, or as Prometheus text
//! 0.0.4 for scrapers and tools that do not ask for OpenMetrics.
//!
//! ## Guarantees
//! - Names follow Prometheus conventions: `halley_` prefix, base units in the name (`_seconds`,
//!   `_bytes`), counters end in `_total`. Every family has help text.
//! - Latency is a histogram with fixed buckets ([`crate::proxy::meters::BUCKETS_US`]), so the
//!   same series of several hosts add up; no summaries.
//! - A family without a sample is left out, and a family's name and labels do not depend on
//!   what is deployed, only its series do.
//!
//! ## Non-goals
//! No IO and no clock here: `now` comes in with the sample.

use std::fmt::Write as _;

use halley_proto::deploy::{Color, Health, ServiceStatus, SlotRole};
use halley_proto::message::{CertificateStatus, MemberRow, MemberState, MeshStats};
use halley_proto::rollout::{HostStep, Phase, RolloutState};
use halley_proto::spec::ServiceName;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::proxy::meters::{BUCKETS_US, MeterReading};

/// Content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of Prometheus text 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything `/metrics` reports, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// This build's version.
    pub version: String,
    /// Wall clock when the sample was taken (unix ms).
    pub now_ms: u64,
    /// This node's services.
    pub services: Vec<ServiceStatus>,
    /// Cumulative request meters per service and slot.
    pub meters: Vec<(ServiceName, Color, MeterReading)>,
    /// The newest rollout of each service known here.
    pub rollouts: Vec<RolloutState>,
    /// The membership as this node sees it.
    pub members: Vec<MemberRow>,
    /// This node's mesh traffic.
    pub mesh: MeshStats,
    /// This node's certificate.
    pub certificate: CertificateStatus,
    /// Per service: backups kept and the newest one's creation (unix ms).
    pub backups: Vec<(ServiceName, usize, Option<u64>)>,
    /// Bytes the data dir takes.
    pub data_dir_bytes: u64,
    /// Bytes free for unprivileged users on the data dir's file system, if known.
    pub data_dir_free_bytes: Option<u64>,
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(i64),
    /// Sum in seconds, non-cumulative counts per bucket (the last one +Inf).
    Histogram(f64, Vec<u64>),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, kind: MetricType) -> Self {
        Self {
            name,
            help,
            unit,
            kind,
            series: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, value: Value) {
        self.series.push((labels, value));
    }
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for family in self.0.iter().filter(|f| !f.series.is_empty()) {
            let mut metric = encoder.encode_descriptor(
                family.name,
                family.help,
                family.unit.as_ref(),
                family.kind,
            )?;
            for (labels, value) in &family.series {
                // One unlabelled series is written as `name value`, not `name{} value`.
                if labels.is_empty() {
                    write_value(&mut metric, value)?;
                } else {
                    write_value(&mut metric.encode_family(labels)?, value)?;
                }
            }
        }
        Ok(())
    }
}

fn write_value(m: &mut MetricEncoder, value: &Value) -> std::fmt::Result {
    match value {
        Value::Counter(v) => m.encode_counter::<NoLabelSet, _, u64>(v, None),
        Value::Gauge(v) => m.encode_gauge(v),
        Value::Histogram(sum, counts) => {
            let buckets: Vec<(f64, u64)> = counts
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let le = BUCKETS_US.get(i).map_or(f64::MAX, |us| *us as f64 / 1e6);
                    (le, *c)
                })
                .collect();
            let count = counts.iter().sum();
            m.encode_histogram::<NoLabelSet>(*sum, count, &buckets, None)
        }
    }
}

/// The sample as OpenMetrics text (ends with `# EOF`).
pub fn openmetrics(sample: &Sample) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families(sample))));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a family above.
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}

/// The sample as Prometheus text 0.0.4: OpenMetrics without `# UNIT` and `# EOF`, with counter
/// families named by their `_total` samples, as that format (and `promtool check metrics`) wants.
pub fn prometheus_text(sample: &Sample) -> String {
    to_prometheus_text(&openmetrics(sample))
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        let _ = writeln!(out, "{}", renamed.as_deref().unwrap_or(line));
    }
    out
}

fn slot_labels(service: &ServiceName, slot: Color) -> Labels {
    vec![
        ("service", service.to_string()),
        ("slot", slot.as_str().to_owned()),
    ]
}

fn families(s: &Sample) -> Vec<Family> {
    [
        node_families(s),
        request_families(s),
        slot_families(s),
        rollout_families(s),
        mesh_families(s),
        backup_families(s),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn node_families(s: &Sample) -> Vec<Family> {
    use MetricType::Gauge as G;
    let mut info = Family::new("halley_build_info", "This halley-node's version", None, G);
    info.push(vec![("version", s.version.clone())], Value::Gauge(1));
    let mut expiry = Family::new(
        "halley_certificate_expiry_timestamp",
        "When this node's mesh certificate expires (unix time)",
        Some(Unit::Seconds),
        G,
    );
    let mut renewal = Family::new(
        "halley_certificate_renewal_timestamp",
        "When this node starts renewing its mesh certificate (unix time)",
        Some(Unit::Seconds),
        G,
    );
    if s.certificate.expires_ms > 0 {
        expiry.push(vec![], Value::Gauge(secs(s.certificate.expires_ms)));
        renewal.push(vec![], Value::Gauge(secs(s.certificate.renews_ms)));
    }
    let mut used = Family::new(
        "halley_data_dir_used",
        "Disk the data dir takes: releases, artifacts, logs, backups, state",
        Some(Unit::Bytes),
        G,
    );
    used.push(vec![], Value::Gauge(to_i64(s.data_dir_bytes)));
    let mut free = Family::new(
        "halley_data_dir_free",
        "Disk free on the data dir's file system",
        Some(Unit::Bytes),
        G,
    );
    if let Some(f) = s.data_dir_free_bytes {
        free.push(vec![], Value::Gauge(to_i64(f)));
    }
    let mut members = Family::new(
        "halley_members",
        "Cluster members by state, as this node sees them",
        None,
        G,
    );
    for state in [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
        MemberState::Draining,
        MemberState::Removed,
    ] {
        let n = s.members.iter().filter(|m| m.state == state).count();
        members.push(
            vec![("state", state.as_str().to_owned())],
            Value::Gauge(n as i64),
        );
    }
    vec![info, expiry, renewal, used, free, members]
}

fn request_families(s: &Sample) -> Vec<Family> {
    let mut requests = Family::new(
        "halley_slot_requests",
        "Responses and proxied connections a slot served since the daemon started",
        None,
        MetricType::Counter,
    );
    let mut errors = Family::new(
        "halley_slot_server_errors",
        "Of those, 5xx responses and failed connections",
        None,
        MetricType::Counter,
    );
    let mut latency = Family::new(
        "halley_slot_request_duration",
        "Time from a request's arrival to its response head (a connection's whole life for TCP)",
        Some(Unit::Seconds),
        MetricType::Histogram,
    );
    for (service, slot, m) in &s.meters {
        let labels = slot_labels(service, *slot);
        requests.push(labels.clone(), Value::Counter(m.requests));
        errors.push(labels.clone(), Value::Counter(m.errors));
        latency.push(
            labels,
            Value::Histogram(m.sum_us as f64 / 1e6, m.buckets.to_vec()),
        );
    }
    let counter = |name, help| Family::new(name, help, None, MetricType::Counter);
    let mut forwarded = counter(
        "halley_proxy_forwarded",
        "Requests and connections this node's entry point handed to peers over the mesh",
    );
    let mut retries = counter(
        "halley_proxy_retries",
        "Requests sent again elsewhere after a failure before any byte reached an upstream",
    );
    let mut ejections = counter(
        "halley_proxy_ejections",
        "Instances taken out of rotation by passive health",
    );
    for svc in &s.services {
        let labels = vec![("service", svc.name.to_string())];
        forwarded.push(labels.clone(), Value::Counter(svc.routing.forwarded));
        retries.push(labels.clone(), Value::Counter(svc.routing.retries));
        ejections.push(labels, Value::Counter(svc.routing.ejections));
    }
    vec![requests, errors, latency, forwarded, retries, ejections]
}

fn slot_families(s: &Sample) -> Vec<Family> {
    use MetricType::Gauge as G;
    let mut info = Family::new(
        "halley_slot_info",
        "The release in each slot and what the slot does (role active: receives new requests)",
        None,
        G,
    );
    let mut up = Family::new("halley_slot_up", "1 while the slot's process runs", None, G);
    let mut healthy = Family::new(
        "halley_slot_healthy",
        "1 while the slot passes its health checks",
        None,
        G,
    );
    let mut crash_loop = Family::new(
        "halley_slot_crash_loop",
        "1 while the slot crashes too often to be restarted at once",
        None,
        G,
    );
    let mut restarts = Family::new(
        "halley_slot_restarts",
        "Restarts after crashes since a deploy last started the slot",
        None,
        G,
    );
    let mut committed = Family::new(
        "halley_service_committed_info",
        "The release a service is committed to on this node",
        None,
        G,
    );
    for svc in &s.services {
        if let Some(v) = &svc.committed {
            let labels = vec![
                ("service", svc.name.to_string()),
                ("release", v.to_string()),
            ];
            committed.push(labels, Value::Gauge(1));
        }
        for slot in svc.slots.iter().filter(|sl| sl.role != SlotRole::Idle) {
            let labels = slot_labels(&svc.name, slot.color);
            let mut described = labels.clone();
            described.push(("role", slot.role.as_str().to_owned()));
            let release = slot.version.as_ref().map(ToString::to_string);
            described.push(("release", release.unwrap_or_default()));
            info.push(described, Value::Gauge(1));
            up.push(labels.clone(), Value::Gauge(slot.pid.is_some().into()));
            let is_healthy = slot.health == Health::Healthy;
            healthy.push(labels.clone(), Value::Gauge(is_healthy.into()));
            crash_loop.push(labels.clone(), Value::Gauge(slot.crash_loop.into()));
            restarts.push(labels, Value::Gauge(slot.restarts.into()));
        }
    }
    vec![info, up, healthy, crash_loop, restarts, committed]
}

fn rollout_families(s: &Sample) -> Vec<Family> {
    use MetricType::Gauge as G;
    let mut phase = Family::new(
        "halley_rollout_phase",
        "1 for the phase the service's newest rollout is in, 0 for the others",
        None,
        G,
    );
    let mut hosts = Family::new(
        "halley_rollout_hosts",
        "Hosts of the service's newest rollout by step",
        None,
        G,
    );
    let mut started = Family::new(
        "halley_rollout_started_timestamp",
        "When the service's newest rollout started (unix time)",
        Some(Unit::Seconds),
        G,
    );
    for r in &s.rollouts {
        let service = r.service.to_string();
        for p in Phase::ALL {
            let labels = vec![
                ("service", service.clone()),
                ("mode", r.mode.as_str().to_owned()),
                ("phase", p.as_str().to_owned()),
            ];
            phase.push(labels, Value::Gauge((r.phase == p).into()));
        }
        for step in HostStep::ALL {
            let n = r.hosts.iter().filter(|h| h.step == step).count();
            let labels = vec![
                ("service", service.clone()),
                ("step", step.as_str().to_owned()),
            ];
            hosts.push(labels, Value::Gauge(n as i64));
        }
        started.push(vec![("service", service)], Value::Gauge(secs(r.started_ms)));
    }
    vec![phase, hosts, started]
}

fn mesh_families(s: &Sample) -> Vec<Family> {
    let counter = |name, help, unit| Family::new(name, help, unit, MetricType::Counter);
    let mut sent = counter(
        "halley_mesh_sent",
        "UDP bytes this node's mesh endpoint sent",
        Some(Unit::Bytes),
    );
    sent.push(vec![], Value::Counter(s.mesh.udp_tx_bytes));
    let mut received = counter(
        "halley_mesh_received",
        "UDP bytes this node's mesh endpoint received",
        Some(Unit::Bytes),
    );
    received.push(vec![], Value::Counter(s.mesh.udp_rx_bytes));
    let mut streams = counter(
        "halley_mesh_streams",
        "QUIC streams by direction: opened by this node, or accepted from peers",
        None,
    );
    streams.push(
        vec![("direction", "opened".to_owned())],
        Value::Counter(s.mesh.streams_opened),
    );
    streams.push(
        vec![("direction", "accepted".to_owned())],
        Value::Counter(s.mesh.streams_accepted),
    );
    let mut connections = Family::new(
        "halley_mesh_connections",
        "Mesh connections open now",
        None,
        MetricType::Gauge,
    );
    connections.push(vec![], Value::Gauge(to_i64(s.mesh.connections)));
    vec![sent, received, streams, connections]
}

fn backup_families(s: &Sample) -> Vec<Family> {
    use MetricType::Gauge as G;
    let mut kept = Family::new("halley_backups", "Backups kept per service", None, G);
    let mut newest = Family::new(
        "halley_backup_newest_timestamp",
        "When the service's newest backup was made (unix time)",
        Some(Unit::Seconds),
        G,
    );
    let mut age = Family::new(
        "halley_backup_age",
        "Age of the service's newest backup",
        Some(Unit::Seconds),
        G,
    );
    for (service, count, created) in &s.backups {
        let labels = vec![("service", service.to_string())];
        kept.push(labels.clone(), Value::Gauge(*count as i64));
        if let Some(ms) = created {
            newest.push(labels.clone(), Value::Gauge(secs(*ms)));
            age.push(labels, Value::Gauge(secs(s.now_ms.saturating_sub(*ms))));
        }
    }
    vec![kept, newest, age]
}

fn secs(ms: u64) -> i64 {
    to_i64(ms / 1000)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_families_are_renamed_for_prometheus_text() {
        let mut sample = Sample {
            version: "0.1.0".into(),
            ..Sample::default()
        };
        let name = ServiceName::parse("web").unwrap();
        let mut reading = MeterReading {
            requests: 3,
            errors: 1,
            sum_us: 1_500,
            ..MeterReading::default()
        };
        reading.buckets[0] = 2;
        reading.buckets[BUCKETS_US.len()] = 1;
        sample.meters.push((name, Color::Blue, reading));
        let om = openmetrics(&sample);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE halley_slot_requests counter"), "{om}");
        let text = prometheus_text(&sample);
        for want in [
            "# TYPE halley_slot_requests_total counter",
            "# HELP halley_slot_requests_total Responses",
            "halley_slot_requests_total{service=\"web\",slot=\"blue\"} 3",
            "halley_slot_request_duration_seconds_bucket{le=\"0.001\",service=\"web\",slot=\"blue\"} 2",
            "halley_slot_request_duration_seconds_bucket{le=\"+Inf\",service=\"web\",slot=\"blue\"} 3",
            "halley_slot_request_duration_seconds_count{service=\"web\",slot=\"blue\"} 3",
            "# TYPE halley_mesh_sent_bytes_total counter",
            "halley_build_info{version=\"0.1.0\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
