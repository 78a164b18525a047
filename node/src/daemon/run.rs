//! `halley-node run`: the daemon's driver. It wires the layers together (services, the cluster
//! client, admission, the coordinator, the dispatcher, the mesh, gossip, the admin socket),
//! refreshes the membership view every gossip round, and leaves the cluster gracefully on
//! SIGTERM, SIGINT or `halley-node leave`.
//!
//! ## Guarantees
//! - One daemon per data dir (flock on `daemon.lock`).
//! - Each start uses a generation larger than any before it (persisted before use), so peers never
//!   confuse a restarted node with its previous life.
//! - On a graceful stop the node publishes `left` and pushes it to every peer before closing, so
//!   peers show it as left at once instead of waiting for the failure detector.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use halley_proto::disk::{GenerationRecord, NodeRecord, PeersRecord, TokenBook};
use halley_proto::gossip::{
    self, KEY_CA_HOLDER, KEY_DRAINING, KEY_ROLE, KEY_STARTED_MS, KEY_VERSION,
};
use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::clock::wall_ms;
use crate::cluster::admission::Admission;
use crate::cluster::client::ClusterClient;
use crate::daemon::node::Node;
use crate::daemon::upgrade::{self, Inherit, OnServing};
use crate::error::{Error, Result};
use crate::host::handle::HostContext;
use crate::host::services::Services;
use crate::mesh::endpoint::Mesh;
use crate::mesh::endpoint::RequestHandler;
use crate::mesh::gossip_transport::QuicGossipTransport;
use crate::mesh::pki::{CertFacts, ClusterCa, cert_from_pem, key_from_pem};
use crate::mesh::tls::Credentials;
use crate::rollout::context::Coordinator;
use crate::store::datadir::{CA_CERT, CA_KEY, DataDir, GENERATION, NODE_CERT, NODE_KEY, PEERS};
use crate::store::releases::Releases;
use crate::{VERSION, daemon::admin};
use halley_proto::handover::Handover;

/// Default time between gossip rounds. With chitchat's phi threshold of 8 (about 8 mean heartbeat
/// intervals) a killed node is declared dead about 2 s after its last heartbeat.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(250);

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Where a service's `listen = ":PORT"` binds.
    pub service_address: IpAddr,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            service_address: IpAddr::from([0, 0, 0, 0]),
            metrics_listen: None,
        }
    }
}

/// Runs the node until `shutdown` resolves, a `leave` is requested or an `upgrade` replaced
/// it. A daemon started by an upgrade first takes the old one's sockets
/// ([`crate::daemon::takeover`]).
pub async fn run(
    data_dir: DataDir,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Found before anything can replace the file.
    upgrade::own_binary();
    let mut inherit = tokio::task::spawn_blocking(crate::daemon::takeover::from_env)
        .await
        .map_err(|e| Error::Net(format!("the takeover did not finish: {e}")))??
        .unwrap_or_default();
    tokio::pin!(shutdown);
    loop {
        match run_once(&data_dir, &opts, shutdown.as_mut(), inherit).await? {
            Outcome::Done => return Ok(()),
            Outcome::Again(next) => {
                info!("starting again on the same sockets");
                inherit = next;
            }
        }
    }
}

/// How one run of the daemon ended.
enum Outcome {
    /// Stopped, left, or replaced by a new daemon.
    Done,
    /// An upgrade failed after this run had let go: run again on the same sockets.
    Again(Inherit),
}

/// Why the run loop ended.
enum Exit {
    Stop,
    Upgrade(upgrade::NewDaemon, upgrade::Request),
}

async fn run_once<F: Future<Output = ()>>(
    data_dir: &DataDir,
    opts: &RunOptions,
    shutdown: std::pin::Pin<&mut F>,
    mut inherit: Inherit,
) -> Result<Outcome> {
    let lock = data_dir.lock_daemon()?;
    let Opened {
        removed,
        record,
        creds,
        certificate,
        ca,
        tokens,
    } = open(data_dir)?;
    let generation = next_generation(data_dir)?;
    // Nothing copies or unpacks yet: whatever is half done was cut off by the last stop.
    crate::store::sweep::sweep_and_log(data_dir, Duration::ZERO);

    let interval = opts.gossip_interval;
    let suspect_after = (interval * 4).max(Duration::from_secs(1));
    let service = assemble(
        &record,
        data_dir,
        opts,
        Keys {
            ca,
            ca_der: creds.ca.clone(),
            certificate,
        },
        tokens,
        suspect_after,
        std::mem::take(&mut inherit.entry_points),
    );
    let drain = carry_over(&service, data_dir, &mut inherit);
    let (cluster, coordinator) = (service.cluster.clone(), service.coordinator.clone());
    crate::daemon::forget::load(&service);
    let handler: Arc<dyn RequestHandler> = service.clone();
    cluster.set_local(Arc::downgrade(&handler));
    // Bound before the node shows itself to the cluster, so a bad address fails the start cleanly.
    let mut tasks = Vec::new();
    let mut metrics_fd = None;
    if let Some(addr) = opts.metrics_listen {
        let (task, fd) =
            crate::daemon::metrics::serve(addr, inherit.metrics.take(), service.clone()).await?;
        tasks.push(task);
        metrics_fd = Some(fd);
    }
    let socket = match inherit.mesh.take() {
        Some(s) => s,
        None => Mesh::bind(record.listen)?,
    };
    let mesh_socket = socket
        .try_clone()
        .map_err(|e| Error::Net(format!("cannot keep the mesh's socket: {e}")))?;
    let (mesh, gossip_rx) = Mesh::start_on(socket, &creds, handler)?;
    // Refused before any handshake can finish (an accept takes a round trip at least).
    mesh.revoke(&removed);
    let transport = QuicGossipTransport::new(mesh.clone(), gossip_rx);

    let known_peers: PeersRecord = data_dir.read_record_or_default(PEERS).unwrap_or_default();
    cluster.expect(&known_peers.addrs);
    let seeds: BTreeSet<SocketAddr> = record
        .seeds
        .iter()
        .chain(&known_peers.addrs)
        .filter(|a| **a != record.advertise)
        .copied()
        .collect();
    let config = gossip_config(&record, &seeds, generation, interval);
    let started_ms = wall_ms();
    let key_values = vec![
        (KEY_VERSION.to_owned(), VERSION.to_owned()),
        (KEY_ROLE.to_owned(), record.role.as_str().to_owned()),
        (
            KEY_DRAINING.to_owned(),
            gossip::flag(drain.manual).to_owned(),
        ),
        (KEY_STARTED_MS.to_owned(), started_ms.to_string()),
        (
            KEY_CA_HOLDER.to_owned(),
            gossip::flag(service.admission.holds_ca()).to_owned(),
        ),
    ];
    let chitchat = spawn_chitchat(config, key_values, &transport)
        .await
        .map_err(|e| Error::Net(format!("cannot start gossip: {e}")))?;
    cluster.attach(chitchat.chitchat(), mesh.clone());
    crate::daemon::removal::apply(&service, &removed).await;
    crate::rollout::history::republish(&coordinator).await;
    service.services.cluster().attach(mesh.clone());
    tasks.push(admin::serve(data_dir, service.clone())?);
    tasks.push(tokio::spawn(crate::daemon::removal::watch(service.clone())));
    let renewal =
        crate::daemon::renewal::run(service.clone(), mesh.clone(), data_dir.clone(), creds);
    tasks.push(tokio::spawn(renewal));
    info!(
        name = %record.name,
        cluster = %record.cluster_id,
        listen = %record.listen,
        advertise = %record.advertise,
        generation,
        seeds = seeds.len(),
        "halley-node running"
    );
    if let Some(on_serving) = inherit.on_serving.take() {
        on_serving.serving().await;
    }
    crate::daemon::notify::ready();

    let mut last_saved: Vec<SocketAddr> = known_peers.addrs.clone();
    let exit = serve(&service, data_dir, interval, shutdown, &mut last_saved).await;
    save_peers(data_dir, &cluster, &mut last_saved);
    let Exit::Upgrade(new, request) = exit else {
        cluster.announce_leave().await;
        for peer in cluster.peer_addrs() {
            let _ = chitchat.gossip(peer);
        }
        // Long enough for a syn / syn-ack / ack exchange to finish with every peer.
        tokio::time::sleep(
            (interval * 2).clamp(Duration::from_millis(300), Duration::from_secs(2)),
        )
        .await;
        save_peers(data_dir, &cluster, &mut last_saved);
        stop(&tasks, chitchat).await;
        let _ = std::fs::remove_file(data_dir.admin_socket());
        mesh.close().await;
        info!("halley-node stopped");
        return Ok(Outcome::Done);
    };
    // Everything but the entry points stops, and the data dir is let go of.
    stop(&tasks, chitchat).await;
    let frozen = service.services.freeze().await;
    let let_go = mesh.close_and_let_go().await;
    drop(lock);
    let handed = Handed {
        frozen,
        mesh: mesh_socket,
        metrics: metrics_fd,
    };
    if let Err(e) = let_go {
        // Two endpoints must never read one socket: this daemon starts again instead.
        let why = format!("this daemon's mesh could not let go of its socket: {e}");
        return Ok(again(handed, new.give_up(why).await, request));
    }
    Ok(hand_over(handed, new, request).await)
}

/// The daemon's loop: gossip rounds, catching up on rollouts, saving peers, until a stop, a
/// leave or an upgrade that started.
async fn serve<F: Future<Output = ()>>(
    service: &Arc<Node>,
    data_dir: &DataDir,
    interval: Duration,
    mut shutdown: std::pin::Pin<&mut F>,
    last_saved: &mut Vec<SocketAddr>,
) -> Exit {
    let (cluster, coordinator) = (&service.cluster, &service.coordinator);
    let mut ticker = tokio::time::interval(interval);
    // Known peers are saved as seeds for the next start when they change, within a second: a
    // node killed soon after it met its peers must still know, once restarted, whom to wait
    // for before it plans a rollout (see `ClusterClient::settled`).
    let mut save_tick = tokio::time::interval(Duration::from_secs(1));
    // A node that missed a rollout while it was away catches up.
    let mut converge_tick = tokio::time::interval(Duration::from_secs(3));
    let converging = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    loop {
        tokio::select! {
            _ = ticker.tick() => service.refresh().await,
            _ = converge_tick.tick() => {
                if !converging.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let (coordinator, converging) = (coordinator.clone(), converging.clone());
                    tokio::spawn(async move {
                        crate::rollout::converge::converge(&coordinator).await;
                        converging.store(false, std::sync::atomic::Ordering::Release);
                    });
                }
            }
            _ = save_tick.tick() => save_peers(data_dir, cluster, last_saved),
            () = shutdown.as_mut() => { info!("stop signal received; leaving the cluster"); break Exit::Stop; }
            _ = service.leave_requested() => { info!("leave requested; leaving the cluster"); break Exit::Stop; }
            request = service.upgrades.next() => {
                info!(binary = %request.binary.display(), version = %request.version, "upgrade asked; starting the new daemon");
                let started = started_tx.clone();
                tokio::spawn(async move {
                    let new = upgrade::NewDaemon::start(&request.binary).await;
                    let _ = started.send((request, new)).await;
                });
            }
            Some((mut request, new)) = started_rx.recv() => match new.and_then(|new| refuse_if_driving(coordinator, new)) {
                Ok(new) => break Exit::Upgrade(new, request),
                Err(e) => {
                    warn!(error = %e, "the upgrade did not start; serving on");
                    let message = format!("{e}; this daemon ({VERSION}) serves on");
                    service.upgrades.failed(message.clone());
                    upgrade::answer(&mut request.cli, &Handover::Failed { message }).await;
                }
            },
        }
    }
}

/// The new daemon, unless this one drives a rollout: its driver would go on writing the
/// journal beside the new daemon (checked last, right before this daemon lets go).
fn refuse_if_driving(
    coordinator: &Coordinator,
    new: upgrade::NewDaemon,
) -> Result<upgrade::NewDaemon> {
    let driving = coordinator.driving();
    let state_ops = coordinator.services.state_ops();
    let why = if !driving.is_empty() {
        let names: Vec<String> = driving.iter().map(ToString::to_string).collect();
        format!(
            "this node coordinates the rollout of {}; upgrade once it has ended ('halley-node rollout status')",
            names.join(", ")
        )
    } else if state_ops > 0 {
        format!(
            "{state_ops} state operation(s) (snapshot, restore, migration, backup) run on this node; upgrade once they have ended"
        )
    } else {
        return Ok(new);
    };
    new.kill();
    Err(Error::Invalid(why))
}

/// Stops the run's tasks and its gossip.
async fn stop(tasks: &[tokio::task::JoinHandle<()>], chitchat: chitchat::ChitchatHandle) {
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    if let Err(e) = chitchat.shutdown().await {
        warn!(error = %e, "gossip did not stop cleanly");
    }
}

/// What a run reads from the data dir before it starts anything.
struct Opened {
    removed: std::collections::BTreeSet<halley_proto::NodeName>,
    record: NodeRecord,
    creds: Credentials,
    certificate: CertFacts,
    ca: Option<ClusterCa>,
    tokens: TokenBook,
}

fn open(data_dir: &DataDir) -> Result<Opened> {
    crate::daemon::removal::refuse_if_removed(data_dir)?;
    let removed = crate::daemon::removal::load(data_dir)?;
    let record = data_dir.load_node()?;
    crate::daemon::renewal::finish_interrupted(data_dir)?;
    warn_if_loose(data_dir);
    let ca_pem = data_dir.read_file(CA_CERT)?;
    let creds = Credentials {
        ca: cert_from_pem(&ca_pem)?,
        cert: cert_from_pem(&data_dir.read_file(NODE_CERT)?)?,
        key_pkcs8: key_from_pem(&read_text(data_dir, NODE_KEY)?)?.serialize_der(),
    };
    let certificate = CertFacts::of(&creds.cert)?;
    let ca = if data_dir.file(CA_KEY).exists() {
        // The cluster's node validity is the one `init` chose: this node's own lifespan.
        Some(
            ClusterCa::from_pem(&ca_pem, &read_text(data_dir, CA_KEY)?)?
                .with_node_validity(certificate.lifespan()),
        )
    } else {
        None
    };
    let tokens: TokenBook = data_dir.load_tokens()?;
    Ok(Opened {
        removed,
        record,
        creds,
        certificate,
        ca,
        tokens,
    })
}

/// What a start takes over from before it: handed-over entry points no service claimed are
/// closed, the operator's drain is set again, a failed upgrade's reason is kept. Returns the
/// drain.
fn carry_over(
    service: &Node,
    data_dir: &DataDir,
    inherit: &mut Inherit,
) -> halley_proto::disk::DrainRecord {
    service.services.drop_unclaimed();
    // The operator's drain outlives a restart or an upgrade.
    let drain: halley_proto::disk::DrainRecord = data_dir
        .read_record_or_default(crate::store::datadir::DRAIN)
        .unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the operator's drain; this node starts undrained");
            Default::default()
        });
    if drain.manual {
        service.services.drains().set_manual(true);
    }
    if let Some(why) = inherit.failed_upgrade.take() {
        service.upgrades.failed(why);
    }
    drain
}

/// What this daemon hands the new one.
struct Handed {
    frozen: Vec<crate::host::actor::Frozen>,
    mesh: std::net::UdpSocket,
    metrics: Option<std::os::fd::OwnedFd>,
}

/// Offers the sockets to the new daemon; once it serves, finishes this one's connections and
/// answers the CLI. If it does not take over, kills it and runs again on the same sockets.
async fn hand_over(
    handed: Handed,
    mut new: upgrade::NewDaemon,
    mut request: upgrade::Request,
) -> Outcome {
    use std::os::fd::AsFd;
    let entry_points: Vec<_> = handed
        .frozen
        .iter()
        .filter_map(|f| f.listener.as_ref().map(|fd| (f.addr, fd.as_fd())))
        .collect();
    let metrics = handed.metrics.as_ref().map(AsFd::as_fd);
    let taken = new
        .take_over(&entry_points, Some(handed.mesh.as_fd()), metrics)
        .await;
    drop(entry_points);
    match taken {
        Ok(()) => {
            let new_pid = new.pid();
            info!(
                new_pid,
                "the new daemon serves; finishing this one's connections"
            );
            upgrade::finish(handed.frozen).await;
            let done = Handover::Upgraded {
                from_version: VERSION.to_owned(),
                old_pid: std::process::id(),
                to_version: new.version.clone(),
                new_pid,
            };
            upgrade::answer(&mut request.cli, &done).await;
            info!("halley-node replaced by pid {new_pid}");
            Outcome::Done
        }
        Err(why) => again(handed, new.give_up(why).await, request),
    }
}

/// After a failed handover: this daemon's start again, on its own sockets, its frozen entry
/// points serving until it serves.
fn again(handed: Handed, e: Error, request: upgrade::Request) -> Outcome {
    tracing::error!(error = %e, "the upgrade failed; starting this daemon again");
    let message = format!("{e}; this daemon ({VERSION}) serves on");
    Outcome::Again(Inherit {
        entry_points: upgrade::listeners_of(&handed.frozen),
        mesh: Some(handed.mesh),
        metrics: handed.metrics.map(std::net::TcpListener::from),
        failed_upgrade: Some(message.clone()),
        on_serving: Some(OnServing::Finish {
            frozen: handed.frozen,
            cli: request.cli,
            message,
        }),
    })
}

/// The node's PKI: the CA key if it holds it, the CA certificate, its own certificate's facts.
struct Keys {
    ca: Option<ClusterCa>,
    ca_der: CertificateDer<'static>,
    certificate: CertFacts,
}

/// The node's parts, wired: services first (their entry points serve again as soon as possible),
/// then the cluster client, admission and the coordinator around them.
fn assemble(
    record: &NodeRecord,
    data_dir: &DataDir,
    opts: &RunOptions,
    keys: Keys,
    tokens: TokenBook,
    suspect_after: Duration,
    inherited: std::collections::BTreeMap<SocketAddr, std::net::TcpListener>,
) -> Arc<Node> {
    let Keys {
        ca,
        ca_der,
        certificate,
    } = keys;
    let services = Services::load(HostContext {
        node: record.name.clone(),
        data_dir: data_dir.clone(),
        releases: Releases::new(data_dir.root()),
        service_address: opts.service_address,
        drains: Arc::default(),
        cluster: Arc::default(),
        meters: Arc::default(),
        inherited: std::sync::Mutex::new(inherited),
    });
    let services = Arc::new(services);
    let cluster = Arc::new(ClusterClient::new(
        record.name.clone(),
        record.advertise,
        suspect_after.as_millis() as u64,
    ));
    let admission = Admission::new(record.clone(), data_dir.clone(), ca, ca_der, tokens);
    let coordinator = Arc::new(Coordinator::new(
        cluster.clone(),
        services.clone(),
        data_dir.clone(),
    ));
    Arc::new(Node::new(
        record.clone(),
        cluster,
        admission,
        services,
        coordinator,
        certificate,
    ))
}

/// Chitchat's settings: the node's id for this generation, its seeds, and a failure detector
/// tuned to the gossip interval.
fn gossip_config(
    record: &NodeRecord,
    seeds: &BTreeSet<SocketAddr>,
    generation: u64,
    interval: Duration,
) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(record.name.to_string(), generation, record.advertise),
        cluster_id: record.cluster_id.clone(),
        gossip_interval: interval,
        listen_addr: record.listen,
        seed_nodes: seeds.iter().map(ToString::to_string).collect(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 100,
            max_interval: interval * 20,
            initial_interval: interval,
            dead_node_grace_period: Duration::from_secs(3600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}

fn read_text(data_dir: &DataDir, name: &str) -> Result<String> {
    String::from_utf8(data_dir.read_file(name)?)
        .map_err(|_| Error::DataDir(format!("{} is not text", data_dir.file(name).display())))
}

/// The next generation: larger than the last one used and than the wall clock in ms, persisted
/// before use so that it grows even if the clock steps back.
fn next_generation(data_dir: &DataDir) -> Result<u64> {
    let last: GenerationRecord = data_dir.read_record_or_default(GENERATION)?;
    let next = (last.last + 1).max(wall_ms());
    data_dir.write_record(GENERATION, &GenerationRecord { last: next })?;
    Ok(next)
}

fn save_peers(data_dir: &DataDir, cluster: &ClusterClient, last_saved: &mut Vec<SocketAddr>) {
    let mut addrs = cluster.peer_addrs();
    addrs.sort();
    if addrs.is_empty() || addrs == *last_saved {
        return;
    }
    match data_dir.write_record(
        PEERS,
        &PeersRecord {
            addrs: addrs.clone(),
        },
    ) {
        Ok(()) => *last_saved = addrs,
        Err(e) => warn!(error = %e, "cannot save known peers"),
    }
}

/// Warns about a data dir others may enter. It is not tightened here: a service that an
/// earlier version started with `user` may still reach its files through it until its slots
/// restart.
fn warn_if_loose(data_dir: &DataDir) {
    if let Some(mode) = data_dir.loose_mode() {
        warn!(
            dir = %data_dir.root().display(),
            mode = format!("{mode:o}"),
            "the data dir may be entered by others; once every service with `user` has restarted (deploy or 'halley-node rollback' it), run 'chmod 0700' on it"
        );
    }
}
