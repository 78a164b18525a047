//! Rendering the status report for people (a table) and scripts (`--json`).

use halley_proto::gossip::ServiceSummary;
use halley_proto::message::{MemberRow, StatusReport};
use serde_json::json;

/// The report as a table, one row per node.
pub fn table(report: &StatusReport) -> String {
    let headers = [
        "NAME",
        "ADDRESS",
        "ROLE",
        "STATE",
        "LAST HEARD",
        "VERSION",
        "UPTIME",
    ];
    let rows: Vec<[String; 7]> = report
        .members
        .iter()
        .map(|m| {
            let name = if m.name == report.self_name {
                format!("{} (self)", m.name)
            } else {
                m.name.to_string()
            };
            [
                name,
                m.addr.to_string(),
                m.role.clone(),
                m.state.as_str().to_owned(),
                m.last_heard_ms.map_or("-".into(), human_ms),
                m.version.clone(),
                m.uptime_secs.map_or("-".into(), |s| human_ms(s * 1000)),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = format!(
        "cluster {}; this node's certificate expires {} (renewed from {})\n",
        report.cluster_id,
        utc(report.certificate.expires_ms),
        utc(report.certificate.renews_ms)
    );
    out.push_str(&format!(
        "this node's data dir takes {} on disk\n",
        human_bytes(report.data_dir_bytes)
    ));
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&headers);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// The report as JSON for scripts.
pub fn json(report: &StatusReport) -> serde_json::Value {
    json!({
        "cluster_id": report.cluster_id,
        "self": report.self_name.as_str(),
        "mesh": {
            "udp_tx_bytes": report.mesh.udp_tx_bytes,
            "udp_rx_bytes": report.mesh.udp_rx_bytes,
            "connections": report.mesh.connections,
            "streams_opened": report.mesh.streams_opened,
            "streams_accepted": report.mesh.streams_accepted,
        },
        "data_dir_bytes": report.data_dir_bytes,
        "certificate": {
            "expires_ms": report.certificate.expires_ms,
            "renews_ms": report.certificate.renews_ms,
        },
        "members": report.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

/// Unix milliseconds as `2027-12-02T04:12:00Z`.
fn utc(ms: u64) -> String {
    i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms after 1970"))
}

fn member_json(m: &MemberRow) -> serde_json::Value {
    json!({
        "name": m.name.as_str(),
        "address": m.addr.to_string(),
        "role": m.role,
        "state": m.state.as_str(),
        "last_heard_ms": m.last_heard_ms,
        "version": m.version,
        "uptime_secs": m.uptime_secs,
        "generation": m.generation,
        "services": m.services.iter().map(|(name, value)| {
            match ServiceSummary::parse(name, value) {
                Ok(s) => json!({
                    "name": name,
                    "version": s.version,
                    "slot": s.slot,
                    "health": s.health,
                    "restarts": s.restarts,
                    "requests_per_sec": s.rate_milli as f64 / 1000.0,
                    "error_rate": s.errors_bp as f64 / 10_000.0,
                    "p99_ms": s.p99_us as f64 / 1000.0,
                }),
                Err(_) => json!({ "name": name, "unparsed": value }),
            }
        }).collect::<Vec<_>>(),
    })
}

/// Bytes in binary units, one decimal: `41.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halley_proto::NodeName;
    use halley_proto::message::{CertificateStatus, MemberState, MeshStats};

    #[test]
    fn table_and_json_show_every_member() {
        let report = StatusReport {
            cluster_id: "abc".into(),
            self_name: NodeName::parse("n1").unwrap(),
            members: vec![MemberRow {
                name: NodeName::parse("n2").unwrap(),
                addr: "127.0.0.1:1".parse().unwrap(),
                state: MemberState::Dead,
                last_heard_ms: Some(2500),
                version: "0.1.0".into(),
                role: "worker".into(),
                uptime_secs: Some(3700),
                generation: 5,
                services: vec![(
                    "web".into(),
                    "v=2;slot=green;health=healthy;restarts=0;rate=1500;err=100;p99=2500".into(),
                )],
            }],
            mesh: MeshStats::default(),
            certificate: CertificateStatus {
                expires_ms: 1_827_720_000_000,
                renews_ms: 1_817_000_000_000,
            },
            data_dir_bytes: 43_200_000,
        };
        let text = table(&report);
        assert!(
            text.starts_with(
                "cluster abc; this node's certificate expires 2027-12-02T04:00:00Z (renewed from 2027-07-31T"
            ),
            "{text}"
        );
        assert!(
            text.contains("n2")
                && text.contains("dead")
                && text.contains("2.5s")
                && text.contains("1h1m")
                && text.contains("worker"),
            "{text}"
        );
        assert!(
            text.contains("this node's data dir takes 41.2 MiB on disk"),
            "{text}"
        );
        assert_eq!(human_bytes(1023), "1023 B");
        let value = json(&report);
        assert_eq!(value["data_dir_bytes"], 43_200_000u64);
        assert_eq!(value["certificate"]["expires_ms"], 1_827_720_000_000u64);
        assert_eq!(value["members"][0]["state"], "dead");
        assert_eq!(value["members"][0]["role"], "worker");
        assert_eq!(value["members"][0]["last_heard_ms"], 2500);
        let web = &value["members"][0]["services"][0];
        assert_eq!(
            (web["version"].as_str(), web["error_rate"].as_f64()),
            (Some("2"), Some(0.01))
        );
    }
}
