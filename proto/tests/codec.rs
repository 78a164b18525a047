//! Round trips of every message and record, and decoder robustness against random and mutated bytes.

use halley_proto::codec::{
    self, HEADER_LEN, Header, PROTOCOL_VERSION, decode_message, decode_record, encode_message,
    encode_record,
};
use halley_proto::disk::{
    GenerationRecord, LegacyTokenBook, LegacyTokenRecord, NodeRecord, PeersRecord, TokenBook,
    TokenRecord,
};
use halley_proto::message::*;
use halley_proto::{Error, Limit, Message, NodeName, Role};
use proptest::prelude::*;

fn name(n: &str) -> NodeName {
    NodeName::parse(n).unwrap()
}

fn samples() -> Vec<Message> {
    let addr = "127.0.0.1:7946".parse().unwrap();
    vec![
        Message::Gossip(GossipPacket(vec![1, 2, 3, 255])),
        Message::ProxyOpen(halley_proto::message::ProxyOpen {
            service: halley_proto::spec::ServiceName::parse("web").unwrap(),
            client: "192.0.2.7:51000".parse().unwrap(),
            even_if_draining: true,
        }),
        Message::ProxyAccept,
        Message::ErrorReply(ErrorReply {
            kind: ErrorKind::TokenExpired,
            message: "token expired".into(),
        }),
        Message::JoinRequest(JoinRequest {
            token_id: [1; 8],
            secret: [2; 16],
            name: name("pi-2"),
            advertise: addr,
            csr_der: vec![0x30, 0x82, 1, 2],
        }),
        Message::JoinResponse(JoinResponse {
            cluster_id: "c1".into(),
            cert_der: vec![1; 300],
            ca_der: vec![2; 300],
            seeds: vec![addr, "[::1]:1".parse().unwrap()],
            ca_key_pem: Some("-----BEGIN PRIVATE KEY-----".into()),
        }),
        Message::AdminRequest(AdminRequest::Status),
        Message::AdminRequest(AdminRequest::CreateToken {
            ttl_secs: 60,
            uses: Some(1),
            role: Role::Worker,
        }),
        Message::AdminRequest(AdminRequest::SetDraining {
            node: Some(name("b")),
            draining: true,
        }),
        Message::AdminRequest(AdminRequest::Leave),
        Message::AdminResponse(AdminResponse::Done),
        Message::AdminResponse(AdminResponse::Token {
            token: "HLY1...".into(),
            expires_at_ms: 5,
        }),
        Message::AdminResponse(AdminResponse::Status(StatusReport {
            cluster_id: "c".into(),
            self_name: name("a"),
            members: vec![MemberRow {
                name: name("a"),
                addr,
                state: MemberState::Suspect,
                last_heard_ms: Some(12),
                version: "0.1.0".into(),
                role: "admin".into(),
                uptime_secs: None,
                generation: 9,
                services: vec![("web".into(), "v=1;slot=blue".into())],
            }],
            mesh: MeshStats {
                udp_tx_bytes: 1,
                udp_rx_bytes: 2,
                connections: 3,
                streams_opened: 4,
                streams_accepted: 5,
            },
            certificate: halley_proto::message::CertificateStatus {
                expires_ms: 7,
                renews_ms: 6,
            },
            data_dir_bytes: 8,
        })),
    ]
}

#[test]
fn every_message_round_trips() {
    for message in samples() {
        let bytes = encode_message(&message, Limit::Rpc).unwrap();
        assert_eq!(&bytes[..4], b"HLEY");
        assert_eq!(decode_message(&bytes, Limit::Rpc).unwrap(), message);
    }
}

#[test]
fn every_record_round_trips_and_is_typed() {
    let node = NodeRecord {
        cluster_id: "c".into(),
        name: name("n1"),
        role: Role::Admin,
        listen: "0.0.0.0:7946".parse().unwrap(),
        advertise: "10.0.0.1:7946".parse().unwrap(),
        seeds: vec![],
        created_ms: 1,
    };
    let bytes = encode_record(&node).unwrap();
    assert_eq!(decode_record::<NodeRecord>(&bytes).unwrap(), node);
    let drain = halley_proto::disk::DrainRecord { manual: true };
    let drain_bytes = encode_record(&drain).unwrap();
    assert_eq!(
        decode_record::<halley_proto::disk::DrainRecord>(&drain_bytes).unwrap(),
        drain
    );
    assert!(matches!(
        decode_record::<NodeRecord>(&drain_bytes),
        Err(Error::WrongRecord { .. })
    ));
    assert!(matches!(
        decode_record::<TokenBook>(&bytes),
        Err(Error::WrongRecord { .. })
    ));
    let book = TokenBook {
        tokens: vec![TokenRecord {
            id: [3; 8],
            secret_sha256: [4; 32],
            created_ms: 1,
            expires_ms: 2,
            uses_left: None,
            role: Role::Admin,
        }],
    };
    assert_eq!(
        decode_record::<TokenBook>(&encode_record(&book).unwrap()).unwrap(),
        book
    );
    // A book written before tokens had a role is not misread as one; converted, its tokens
    // admit workers.
    let legacy = LegacyTokenBook {
        tokens: vec![LegacyTokenRecord {
            id: [3; 8],
            secret_sha256: [4; 32],
            created_ms: 1,
            expires_ms: 2,
            uses_left: Some(2),
        }],
    };
    let legacy_bytes = encode_record(&legacy).unwrap();
    assert!(matches!(
        decode_record::<TokenBook>(&legacy_bytes),
        Err(Error::WrongRecord { .. })
    ));
    let converted = TokenBook::from(decode_record::<LegacyTokenBook>(&legacy_bytes).unwrap());
    assert_eq!(
        (converted.tokens[0].role, converted.tokens[0].uses_left),
        (Role::Worker, Some(2))
    );
    let generation = GenerationRecord { last: 77 };
    assert_eq!(
        decode_record::<GenerationRecord>(&encode_record(&generation).unwrap()).unwrap(),
        generation
    );
    let peers = PeersRecord {
        addrs: vec!["1.2.3.4:5".parse().unwrap()],
    };
    assert_eq!(
        decode_record::<PeersRecord>(&encode_record(&peers).unwrap()).unwrap(),
        peers
    );
}

#[test]
fn header_errors_are_specific() {
    let good = encode_message(&Message::AdminRequest(AdminRequest::Status), Limit::Rpc).unwrap();
    assert!(matches!(
        decode_message(&good[..5], Limit::Rpc),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        decode_message(&good[..good.len() - 1], Limit::Rpc),
        Err(Error::Truncated { .. })
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        decode_message(&trailing, Limit::Rpc),
        Err(Error::TrailingBytes(1))
    ));
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(matches!(
        decode_message(&magic, Limit::Rpc),
        Err(Error::BadMagic { .. })
    ));
    let mut version = good.clone();
    version[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let err = decode_message(&version, Limit::Rpc).unwrap_err();
    assert!(matches!(
        err,
        Error::UnsupportedVersion { got, ours } if got == PROTOCOL_VERSION + 1 && ours == PROTOCOL_VERSION
    ));
    assert!(err.to_string().contains("same halley-node release"));
    let mut code = good.clone();
    code[6..8].copy_from_slice(&999u16.to_be_bytes());
    assert!(matches!(
        decode_message(&code, Limit::Rpc),
        Err(Error::UnknownCode(999))
    ));
    // A header that claims 4 GiB is refused before anything is allocated or read.
    let mut huge = good[..HEADER_LEN].to_vec();
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Header::parse(&huge, PROTOCOL_VERSION, Limit::Rpc),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn gossip_limit_is_enforced_on_encode_and_decode() {
    let big = Message::Gossip(GossipPacket(vec![0; Limit::Gossip.bytes()]));
    assert!(matches!(
        encode_message(&big, Limit::Gossip),
        Err(Error::TooLarge { .. })
    ));
    let bytes = encode_message(&big, Limit::Rpc).unwrap();
    assert!(matches!(
        decode_message(&bytes, Limit::Gossip),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn body_claiming_a_huge_vector_is_refused_without_allocating_it() {
    // A JoinResponse whose cluster_id length prefix claims u64::MAX bytes.
    let mut body = vec![253u8];
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut frame = b"HLEY".to_vec();
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    frame.extend_from_slice(&11u16.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    assert!(decode_message(&frame, Limit::Rpc).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message(&bytes, Limit::Rpc);
        let _ = decode_message(&bytes, Limit::Gossip);
        let _ = decode_record::<NodeRecord>(&bytes);
    }

    #[test]
    fn random_body_behind_a_valid_header_never_panics(
        code in prop::sample::select(vec![1u16, 2, 10, 11, 20, 21]),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut frame = b"HLEY".to_vec();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        frame.extend_from_slice(&code.to_be_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let _ = decode_message(&frame, Limit::Rpc);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..11,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = encode_message(&samples()[which], Limit::Rpc).unwrap();
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] ^= value;
        }
        let keep = cut % (bytes.len() + 1);
        let _ = decode_message(&bytes[..keep], Limit::Rpc);
        let _ = decode_message(&bytes, Limit::Rpc);
    }

    #[test]
    fn gossip_packets_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let message = Message::Gossip(GossipPacket(payload));
        let bytes = codec::encode_message(&message, Limit::Gossip).unwrap();
        prop_assert_eq!(decode_message(&bytes, Limit::Gossip).unwrap(), message);
    }
}

const FULL_SPEC: &str = r#"
[service.web]
command = ["./app", "--port", "{port}"]
env = { DATABASE_URL = "postgres://secret" }
listen = ":8080"
protocol = "http"
hosts = ["pi-1", "pi-2"]
keep_releases = 3
keep_warm = "5m"
user = "www"
routing = "balanced"
strategy = "stop-start"
[service.web.state]
sqlite = ["app.db"]
dirs = ["uploads"]
backup = ["pg_dump", "-Fc", "-f", "db.dump"]
restore = ["pg_restore", "db.dump"]
verify = ["./check"]
migrate = ["./app", "migrate"]
contract = ["./app", "contract"]
on = ["pi-1"]
keep_backups = 3
[service.web.health]
http = "/up"
statuses = [200, 204]
interval = "500ms"
timeout = "2s"
healthy_threshold = 2
unhealthy_threshold = 3
start_period = "20s"
[service.web.stop]
signal = "SIGINT"
drain_timeout = "15s"
kill_after = "5s"

[service.db]
command = ["./db"]
listen = "127.0.0.1:5433"
protocol = "tcp"
hosts = "*"
health = { exec = ["./check", "--quick"] }
"#;

#[test]
fn deploy_steps_and_records_round_trip_through_bincode() {
    use halley_proto::deploy::{ArtifactSource, ReleaseVersion, Step, StepRequest};
    use halley_proto::disk::{ReleaseEntry, ServiceRecord, SlotRecord};
    use halley_proto::spec::HalleyToml;

    let doc: HalleyToml = toml::from_str(FULL_SPEC).unwrap();
    let web = &doc.service[&"web".parse().unwrap()];
    let state = web.state.as_ref().expect("a state table");
    assert_eq!(
        (state.sqlite.as_slice(), state.keep_backups),
        (&["app.db".to_owned()][..], 3)
    );
    let manifest = halley_proto::disk::BackupManifest {
        id: "20261127T101010000Z".into(),
        service: "web".parse().unwrap(),
        node: halley_proto::NodeName::parse("pi-1").unwrap(),
        release: Some(ReleaseVersion::parse("1").unwrap()),
        reason: "before deploy of 2".into(),
        for_release: Some(ReleaseVersion::parse("2").unwrap()),
        created_ms: 1,
        sqlite: state.sqlite.clone(),
        dirs: state.dirs.clone(),
        hook: true,
        files: vec![halley_proto::disk::BackupFile {
            name: "sqlite/0.db".into(),
            size: 4096,
            sha256: [7; 32],
        }],
    };
    let bytes = halley_proto::codec::encode_record(&manifest).unwrap();
    assert_eq!(
        halley_proto::codec::decode_record::<halley_proto::disk::BackupManifest>(&bytes).unwrap(),
        manifest
    );
    for (name, spec) in &doc.service {
        let message = Message::Step(StepRequest {
            on_behalf_of: None,
            service: name.clone(),
            epoch: 7,
            step: Step::Prepare {
                spec: Box::new(spec.clone()),
                version: ReleaseVersion::parse("1.2.3").unwrap(),
                artifact: ArtifactSource::LocalPath {
                    path: "/tmp/app.tar.gz".into(),
                    sha256: Some([9; 32]),
                },
            },
        });
        let bytes = encode_message(&message, halley_proto::Limit::Rpc).unwrap();
        assert_eq!(
            decode_message(&bytes, halley_proto::Limit::Rpc).unwrap(),
            message
        );
        let record = ServiceRecord {
            name: name.clone(),
            spec: spec.clone(),
            committed: Some(ReleaseVersion::parse("1").unwrap()),
            previous: None,
            active: Some(halley_proto::deploy::Color::Green),
            slots: [
                SlotRecord::default(),
                SlotRecord {
                    version: Some(ReleaseVersion::parse("1").unwrap()),
                    port: 4000,
                    pid: Some(42),
                    start_ticks: 99,
                    spec: Some(spec.clone()),
                },
            ],
            releases: vec![ReleaseEntry {
                version: ReleaseVersion::parse("1").unwrap(),
                sha256: [1; 32],
                file_name: "app.tar.gz".into(),
                created_ms: 5,
                spec: spec.clone(),
            }],
            epoch: 3,
        };
        let bytes = encode_record(&record).unwrap();
        assert_eq!(decode_record::<ServiceRecord>(&bytes).unwrap(), record);
    }
    let web = &doc.service[&"web".parse().unwrap()];
    assert_eq!(web.keep_warm.0, 300_000);
    assert_eq!(web.health.start_period.0, 20_000);
    assert!(!format!("{web:?}").contains("postgres://secret"));
}

fn handover_samples() -> Vec<halley_proto::handover::Handover> {
    use halley_proto::handover::Handover;
    vec![
        Handover::Upgrade { binary: None },
        Handover::Upgrade {
            binary: Some("/usr/local/bin/halley-node".into()),
        },
        Handover::Upgraded {
            from_version: "0.1.0".into(),
            old_pid: 10,
            to_version: "0.2.0".into(),
            new_pid: 11,
        },
        Handover::Failed {
            message: "no".into(),
        },
        Handover::Hello {
            version: "0.2.0".into(),
            pid: 11,
        },
        Handover::Offer {
            entry_points: vec!["127.0.0.1:8080".parse().unwrap()],
            mesh: true,
            metrics: false,
        },
        Handover::Serving,
        Handover::UpgradeAll { binary: None },
        Handover::Progress {
            line: "n2 runs 0.2.0".into(),
        },
    ]
}

#[test]
fn every_handover_step_round_trips_and_other_frames_are_refused() {
    for m in handover_samples() {
        let bytes = codec::encode_handover(&m).unwrap();
        assert_eq!(codec::decode_handover(&bytes).unwrap(), m);
        // A wire frame reader refuses it by version, whatever this build's protocol is.
        assert!(matches!(
            decode_message(&bytes, Limit::Rpc),
            Err(Error::UnsupportedVersion { .. })
        ));
    }
    let wire = encode_message(&samples()[0], Limit::Rpc).unwrap();
    assert!(codec::decode_handover(&wire).is_err());
}

/// Two builds of any versions must understand each other's upgrade steps: these bytes are the
/// format, and a change here breaks upgrading from every release before it.
#[test]
fn handover_frames_keep_their_bytes() {
    use halley_proto::handover::Handover;
    let bytes = codec::encode_handover(&Handover::Hello {
        version: "1.2".into(),
        pid: 300,
    })
    .unwrap();
    assert_eq!(
        bytes,
        [
            b'H', b'L', b'E', b'Y', 0xFF, 0x01, 0, 1, 0, 0, 0, 8, 3, 3, b'1', b'.', b'2', 251, 44,
            1
        ]
    );
    let bytes = codec::encode_handover(&Handover::Serving).unwrap();
    assert_eq!(
        bytes,
        [b'H', b'L', b'E', b'Y', 0xFF, 0x01, 0, 1, 0, 0, 0, 1, 5]
    );
}

/// `service-format-2.rec` was written by the build before specs had `log_max` (disk format 2),
/// from the same `FULL_SPEC`: a node upgraded onto this build reads its records as they are.
#[test]
fn a_service_record_of_disk_format_2_reads_with_the_log_max_default() {
    use halley_proto::deploy::ReleaseVersion;
    use halley_proto::disk::ServiceRecord;
    use halley_proto::size::{ByteSize, DEFAULT_LOG_MAX};
    use halley_proto::spec::HalleyToml;

    let old = include_bytes!("fixtures/service-format-2.rec");
    assert_eq!(
        &old[4..6],
        &2u16.to_be_bytes(),
        "the fixture is of format 2"
    );
    let record: ServiceRecord = decode_record(old).unwrap();
    let doc: HalleyToml = toml::from_str(FULL_SPEC).unwrap();
    let spec = &doc.service[&"web".parse().unwrap()];
    assert_eq!(spec.log_max, DEFAULT_LOG_MAX);
    assert_eq!(&record.spec, spec);
    assert_eq!(record.slots[1].spec.as_ref(), Some(spec));
    assert_eq!(record.releases[0].spec, *spec);
    // Read whole: the fields after each spec are where they were.
    assert_eq!(record.releases[0].created_ms, 5);
    assert_eq!(record.slots[1].start_ticks, 99);
    assert_eq!(
        record.releases[0].version,
        ReleaseVersion::parse("1").unwrap()
    );
    assert_eq!(record.epoch, 3);

    // Written again, it is of this build's format, and keeps a log_max that is not the default.
    let mut newer = record.clone();
    newer.spec.log_max = ByteSize(1 << 20);
    let bytes = encode_record(&newer).unwrap();
    assert_eq!(
        &bytes[4..6],
        &halley_proto::codec::DISK_FORMAT_VERSION.to_be_bytes()
    );
    assert_eq!(decode_record::<ServiceRecord>(&bytes).unwrap(), newer);
    // Release pins digest a default-`log_max` spec as the build before did: its spec bytes
    // follow the service name in the old record.
    let digest = halley_proto::codec::spec_digest_bytes(spec).unwrap();
    let name_len = encode_body_len(&record.name);
    assert!(old[12 + name_len..].starts_with(&digest));
    assert_ne!(
        halley_proto::codec::spec_digest_bytes(&newer.spec).unwrap(),
        digest
    );
    // A format-2 decode leaves nothing behind: the next one reads a format-3 spec whole.
    let _: ServiceRecord = decode_record(old).unwrap();
    assert_eq!(decode_record::<ServiceRecord>(&bytes).unwrap(), newer);
}

fn encode_body_len<T: serde::Serialize>(value: &T) -> usize {
    halley_proto::codec::digest_bytes(value).unwrap().len()
}

#[test]
fn log_max_is_a_size_of_at_least_64_kib() {
    use halley_proto::spec::HalleyToml;
    let with = |value: &str| {
        toml::from_str::<HalleyToml>(&format!(
            "[service.web]\ncommand = [\"./web\"]\nlisten = \":8080\"\nlog_max = {value}\n"
        ))
    };
    let doc = with("\"1MiB\"").unwrap();
    assert_eq!(doc.service[&"web".parse().unwrap()].log_max.0, 1 << 20);
    let doc = with("131072").unwrap();
    assert_eq!(doc.service[&"web".parse().unwrap()].log_max.0, 128 << 10);
    let small = with("\"4KiB\"").unwrap_err().to_string();
    assert!(
        small.contains("log_max 4KiB is below the least, 64KiB"),
        "{small}"
    );
    let unit = with("\"8MB\"").unwrap_err().to_string();
    assert!(unit.contains("unknown unit \"MB\""), "{unit}");
}
