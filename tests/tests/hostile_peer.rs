//! A member's certificate in hostile hands (a stolen Pi, a compromised VPS): crafted requests
//! sent with that real certificate over the real mesh must not make another node hand over a
//! file or wedge a service.

use std::path::Path;
use std::time::Duration;

use halley_proto::Message;
use halley_proto::deploy::{ArtifactSource, ReleaseVersion, Step, StepRequest};
use halley_proto::message::{ErrorKind, PeerRequest};
use halley_proto::spec::ServiceName;
use halley_tests::cluster::Cluster;
use halley_tests::thief::stolen_identity;
use halley_tests::{assert_ok, runtime};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");
const ASK: Duration = Duration::from_secs(5);

fn refusal(reply: halley_node::Result<Message>) -> (ErrorKind, String) {
    match reply {
        Err(halley_node::Error::Remote(reply)) => (reply.kind, reply.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn step(service: &ServiceName, epoch: u64, step: Step) -> Message {
    Message::Step(StepRequest {
        service: service.clone(),
        epoch,
        on_behalf_of: None,
        step,
    })
}

#[test]
fn a_stolen_member_certificate_cannot_fetch_a_peers_files_or_push_an_epoch_to_overflow() {
    let cluster = Cluster::start();
    let config = cluster.config("web", &[], "");
    let artifact = Path::new(SERVICE_BIN);
    assert_ok(
        &cluster.nodes[0].deploy(&config, "web", "v1", artifact),
        "deploy v1",
    );
    let rt = runtime();
    let web = ServiceName::parse("web").unwrap();
    let victim = &cluster.nodes[0];
    let victim_name = halley_proto::NodeName::parse(&victim.name).unwrap();
    let ca_key = std::fs::read(victim.dir.join("ca.key")).expect("n1 holds the CA key");
    let ca_key_sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &ca_key)
        .as_ref()
        .try_into()
        .unwrap();
    let spec = halley_node::cli::config::load_service(&config, &web).unwrap();

    rt.block_on(async {
        let thief = stolen_identity(&cluster.nodes[2]);
        // (a) Prepare the victim's CA key as an artifact, then fetch it back.
        let prepare = step(
            &web,
            0,
            Step::Prepare {
                spec: Box::new(spec),
                version: ReleaseVersion::parse("evil").unwrap(),
                artifact: ArtifactSource::LocalPath {
                    path: victim.dir.join("ca.key").display().to_string(),
                    sha256: None,
                },
            },
        );
        let (kind, message) = refusal(
            thief
                .request(victim.addr, &victim_name, &prepare, ASK)
                .await,
        );
        assert_eq!(kind, ErrorKind::Unauthorised, "{message}");
        assert!(message.contains("admin socket"), "{message}");
        let fetch = Message::Peer(PeerRequest::GetArtifact {
            sha256: ca_key_sha,
            offset: 0,
        });
        let (kind, message) = refusal(thief.request(victim.addr, &victim_name, &fetch, ASK).await);
        assert_eq!(kind, ErrorKind::NotFound, "{message}");

        // (d) One step at the top epoch, so that the next coordinator's epoch + 1 overflows.
        let (kind, message) = refusal(
            thief
                .request(
                    victim.addr,
                    &victim_name,
                    &step(&web, u64::MAX, Step::Check),
                    ASK,
                )
                .await,
        );
        assert_eq!(kind, ErrorKind::BadRequest, "{message}");
        assert!(message.contains("broken or hostile"), "{message}");
        thief.close().await;
    });

    // The service still deploys everywhere, the victim included.
    assert_ok(
        &cluster.nodes[0].deploy(&config, "web", "v2", artifact),
        "deploy v2 after the attack",
    );
    assert_eq!(
        cluster.versions(&rt),
        vec![Some("v2".to_owned()); 3],
        "every host serves v2"
    );
}
