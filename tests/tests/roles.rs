//! Roles on real processes: `init` makes an admin, `token create --role` admits a worker (the
//! default) or an admin, a token admits one node unless told otherwise, a worker runs services
//! but coordinates nothing and orders nobody (from its CLI or with its stolen certificate), reads
//! no secrets of a service it does not host, and an admin that joined holds the CA key, so joins
//! go on after the `init` node is gone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use halley_proto::deploy::{ReleaseVersion, Step, StepRequest};
use halley_proto::message::{ErrorKind, PeerReply, PeerRequest, StateRequest};
use halley_proto::spec::ServiceName;
use halley_proto::{Message, NodeName};
use halley_tests::thief::stolen_identity;
use halley_tests::{Node, assert_ok, free_tcp_port, runtime, stderr, wait_converged, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");
const ASK: Duration = Duration::from_secs(5);

fn refused(reply: halley_node::Result<Message>) -> String {
    match reply {
        Err(halley_node::Error::Remote(reply)) => {
            assert_eq!(reply.kind, ErrorKind::Unauthorised, "{}", reply.message);
            reply.message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn token_from(out: &std::process::Output) -> String {
    assert_ok(out, "token create");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn role_of(viewer: &Node, name: &str) -> Option<String> {
    viewer.status()?["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["role"].as_str().map(str::to_owned))
}

/// A config of service `name` on `hosts`, with one env value (a secret).
fn config(dir: &Path, name: &str, hosts: &str, secret: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[service.{name}]\ncommand = [\"./halley-test-service\"]\nlisten = \":{port}\"\nhosts = {hosts}\nenv = {{ API_KEY = \"{secret}\" }}\n[service.{name}.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.{name}.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n{extra}",
        port = free_tcp_port(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn deploy(node: &Node, config: &Path, service: &str, version: &str) -> std::process::Output {
    node.deploy(config, service, version, Path::new(SERVICE_BIN))
}

#[test]
fn a_worker_runs_services_but_coordinates_nothing_orders_nobody_and_reads_no_other_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(tmp.path(), "n1");
    let admin_token = n1.init_with(&["--token-role", "admin"]);
    n1.start_with(&["--service-address", "127.0.0.1"]);
    let worker_token = token_from(&n1.cli(&["token", "create"]));
    let mut n2 = Node::new(tmp.path(), "n2");
    assert_ok(&n2.join(&worker_token), "join n2 as a worker");
    let mut n3 = Node::new(tmp.path(), "n3");
    assert_ok(&n3.join(&admin_token), "join n3 as an admin");
    // Each token admitted one node: both are spent now.
    let n4 = Node::new(tmp.path(), "n4");
    for spent in [&worker_token, &admin_token] {
        let out = n4.join(spent);
        assert!(
            !out.status.success() && stderr(&out).contains("used as many times"),
            "{}",
            stderr(&out)
        );
    }
    n2.start_with(&["--service-address", "127.0.0.2"]);
    n3.start_with(&["--service-address", "127.0.0.3"]);
    let mut nodes = vec![n1, n2, n3];
    wait_converged(&nodes);
    assert!(
        wait_until(Duration::from_secs(10), || {
            ["admin", "worker", "admin"]
                .iter()
                .zip(["n1", "n2", "n3"])
                .all(|(role, name)| role_of(&nodes[0], name).as_deref() == Some(*role))
        }),
        "status shows each node's role: {:?}",
        nodes[0].status()
    );
    // The worker never got the CA key; the admin that joined did, readable by its owner only.
    assert!(!nodes[1].dir.join("ca.key").exists());
    let mode = std::fs::metadata(nodes[2].dir.join("ca.key"))
        .expect("n3 holds the CA key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A worker runs services: web goes everywhere, db only to the admins, with a secret.
    let web = config(tmp.path(), "web", "\"*\"", "web-key-0123456789", "");
    let db = config(
        tmp.path(),
        "db",
        "[\"n1\", \"n3\"]",
        "db-secret-0123456789",
        "",
    );
    assert_ok(&deploy(&nodes[0], &web, "web", "v1"), "deploy web v1");
    assert_ok(&deploy(&nodes[0], &db, "db", "v1"), "deploy db v1");

    // From its own CLI a worker coordinates nothing and orders nobody, and is told where to go.
    let out = deploy(&nodes[1], &web, "web", "v2");
    let said = stderr(&out);
    assert!(
        !out.status.success()
            && said.contains("n2")
            && said.contains("worker")
            && said.contains("only an admin coordinates rollouts"),
        "{said}"
    );
    let dry = nodes[1].cli(&[
        "deploy",
        "web",
        "-c",
        web.to_str().unwrap(),
        "--version",
        "v2",
        "--artifact",
        SERVICE_BIN,
        "--dry-run",
    ]);
    assert!(
        !dry.status.success() && stderr(&dry).contains("only an admin"),
        "a worker's dry run passed: {}",
        stderr(&dry)
    );
    for args in [
        vec!["rollback", "web", "--restore-data", "--yes"],
        vec!["rollout", "abort", "web"],
    ] {
        let out = nodes[1].cli(&args);
        assert!(
            !out.status.success() && stderr(&out).contains("only an admin"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = nodes[1].cli(&["drain", "n1"]);
    assert!(
        !out.status.success() && stderr(&out).contains("only an admin may drain another node"),
        "{}",
        stderr(&out)
    );
    let out = nodes[1].cli(&["token", "create"]);
    assert!(
        !out.status.success() && stderr(&out).contains("only an admin node issues join tokens"),
        "{}",
        stderr(&out)
    );
    // Its own drain is its operator's to set.
    assert_ok(&nodes[1].cli(&["drain"]), "a worker drains itself");
    assert_ok(&nodes[1].cli(&["undrain"]), "and undrains");

    let rt = runtime();
    let web_name = ServiceName::parse("web").unwrap();
    let db_name = ServiceName::parse("db").unwrap();
    let n1_name = NodeName::parse("n1").unwrap();
    let n1_addr = nodes[0].addr;
    // A state request whose spec carries a command of the caller's choosing.
    let evil = config(
        tmp.path(),
        "evil",
        "\"*\"",
        "x",
        &format!(
            "[service.evil.state]\nbackup = [\"sh\", \"-c\", \"touch {}\"]\nrestore = [\"true\"]\n",
            tmp.path().join("pwned").display()
        ),
    );
    let evil_spec =
        halley_node::cli::config::load_service(&evil, &ServiceName::parse("evil").unwrap())
            .unwrap();
    rt.block_on(async {
        let thief = stolen_identity(&nodes[1]);
        let ask = |m: Message| {
            let thief = thief.clone();
            let to = n1_name.clone();
            async move { thief.request(n1_addr, &to, &m, ASK).await }
        };
        let orders = [
            Message::Step(StepRequest {
                service: web_name.clone(),
                epoch: 1_000,
                on_behalf_of: None,
                step: Step::Revert,
            }),
            Message::Peer(PeerRequest::SetDraining(true)),
            Message::Peer(PeerRequest::HoldDrain {
                service: web_name.clone(),
                epoch: 1_000,
                ttl_ms: 600_000,
            }),
            Message::Peer(PeerRequest::State(StateRequest::Snapshot {
                service: web_name.clone(),
                spec: Some(Box::new(evil_spec)),
                for_release: None,
            })),
            Message::Peer(PeerRequest::Services),
        ];
        for order in orders {
            let message = refused(ask(order).await);
            assert!(
                message.contains("needs the admin role") && message.contains("n2 is a worker"),
                "{message}"
            );
        }
        // A release of a service it hosts, yes (it needs it to converge); db's, with its
        // secret, no.
        match ask(Message::Peer(PeerRequest::GetRelease {
            service: web_name.clone(),
            version: ReleaseVersion::parse("v1").unwrap(),
        }))
        .await
        {
            Ok(Message::PeerReply(PeerReply::Release { spec, .. })) => {
                assert_eq!(
                    spec.env.get("API_KEY").map(|s| s.0.as_str()),
                    Some("web-key-0123456789")
                )
            }
            other => panic!("a host of web may fetch web's release: {other:?}"),
        }
        let message = refused(
            ask(Message::Peer(PeerRequest::GetRelease {
                service: db_name.clone(),
                version: ReleaseVersion::parse("v1").unwrap(),
            }))
            .await,
        );
        assert!(message.contains("may fetch only a release"), "{message}");
        assert!(!message.contains("db-secret"), "{message}");
        thief.close().await;
    });
    assert!(
        !tmp.path().join("pwned").exists(),
        "the worker's command ran on n1"
    );
    assert_ne!(
        nodes[0].state_of("n1").as_deref(),
        Some("draining"),
        "the worker drained n1"
    );
    // The admins still deploy, the worker included.
    assert_ok(
        &deploy(&nodes[2], &web, "web", "v2"),
        "deploy web v2 from n3",
    );

    // The init node is gone for good: the admin that joined admits the next node.
    nodes[0].kill9();
    let token = token_from(&nodes[2].cli(&["token", "create", "--role", "worker"]));
    let mut n4 = Node::new(tmp.path(), "n4");
    assert_ok(&n4.join(&token), "join n4 through n3");
    n4.start_with(&["--service-address", "127.0.0.4"]);
    nodes.push(n4);
    assert!(
        wait_until(Duration::from_secs(15), || {
            nodes[2].state_of("n4").as_deref() == Some("alive")
                && role_of(&nodes[2], "n4").as_deref() == Some("worker")
        }),
        "n4 joined through n3: {:?}",
        nodes[2].status()
    );
}

#[test]
fn token_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(tmp.path(), "n1");
    n1.init();
    n1.start();
    for (args, said) in [
        (vec!["token", "create", "--uses", "0"], "admits nobody"),
        (vec!["token", "create", "--uses", "many"], "not a number"),
        (
            vec!["token", "create", "--role", "root"],
            "give worker or admin",
        ),
        (
            vec!["token", "create", "--role", "observer"],
            "give worker or admin",
        ),
    ] {
        let out = n1.cli(&args);
        assert!(
            !out.status.success() && stderr(&out).contains(said),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let unlimited = token_from(&n1.cli(&["token", "create", "--uses", "unlimited"]));
    for name in ["a", "b"] {
        assert_ok(&Node::new(tmp.path(), name).join(&unlimited), "join");
    }
}
