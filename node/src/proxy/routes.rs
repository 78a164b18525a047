//! The routing table of each service on this node: its local slot (the [`Router`]), the healthy
//! instances on peers that gossip reports, and this node's passive health of each. The entry
//! point asks it where each new request or connection goes ([`ServiceRoutes::pick`]) and tells
//! it how that went ([`ServiceRoutes::record`]).
//!
//! ## Guarantees
//! - Peers come from gossip only when their node is alive (not suspect, dead or gone), is among
//!   the service's `hosts` in the spec this node runs (an admin's, pinned), and their `svc:`
//!   summary says the active slot is healthy; a draining node's instances are kept, marked
//!   draining, so they serve only when nothing else can. A node that gossips a service it is not
//!   a host of (a hostile worker, or a host a later deploy dropped that still runs the old
//!   release) draws no traffic.
//! - With `routing = "local"`, or no peer instance, the choice is this host's slot without taking
//!   any lock: the one-host path costs what it did before routing existed.
//! - Counts of requests in flight to a peer are this node's own; the local slot's count includes
//!   work that peers forward to it.
//!
//! ## Non-goals
//! The choice rules themselves ([`crate::engine::routing`]) and ejection rules ([`crate::engine::ejection`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use halley_proto::NodeName;
use halley_proto::gossip::ServiceSummary;
use halley_proto::message::{MemberRow, MemberState};
use halley_proto::spec::{Hosts, Protocol, Routing, ServiceName};
use tracing::info;

use crate::engine::ejection::{Outcome, Passive};
use crate::engine::routing::{Candidate, Target, choose};
use crate::mesh::endpoint::Mesh;
use crate::proxy::upstream::{Router, Upstream};

/// A peer's instance of a service, from gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The peer.
    pub node: NodeName,
    /// Its mesh address.
    pub addr: SocketAddr,
    /// Whether it drains.
    pub draining: bool,
    /// The release its active slot runs.
    pub version: String,
}

/// What this node knows of one instance from its own traffic.
#[derive(Debug, Default)]
pub struct TargetState {
    inflight: AtomicU64,
    passive: Mutex<Passive>,
    /// No error since the last good answer: good answers need not take the lock.
    clean: AtomicBool,
}

impl TargetState {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            clean: AtomicBool::new(true),
            ..Self::default()
        })
    }
}

/// Where one request or connection goes.
pub enum Picked {
    /// This host's active slot.
    Local(Arc<Upstream>),
    /// A peer's instance.
    Peer(PeerPick),
}

/// A peer's instance chosen for one request or connection; counted in flight until dropped.
pub struct PeerPick {
    /// The peer.
    pub node: NodeName,
    /// Its mesh address.
    pub addr: SocketAddr,
    /// It drains (nothing better was left): it must be asked to serve anyway.
    pub draining: bool,
    state: Arc<TargetState>,
}

impl Drop for PeerPick {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Picked {
    /// Which instance it is.
    pub fn target(&self) -> Target {
        match self {
            Picked::Local(_) => Target::Local,
            Picked::Peer(p) => Target::Peer(p.node.clone()),
        }
    }
}

/// Counters of the routing decisions of one service, for status and tests.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Requests or connections sent to peers.
    pub forwarded: AtomicU64,
    /// Retries after a failure before anything reached an upstream.
    pub retries: AtomicU64,
    /// Ejections by passive health.
    pub ejections: AtomicU64,
}

/// One service's routing table.
pub struct ServiceRoutes {
    /// The service.
    pub service: ServiceName,
    /// This host's slot.
    pub router: Arc<Router>,
    /// What the entry point speaks.
    pub protocol: Protocol,
    draining: Arc<AtomicBool>,
    local_ok: AtomicBool,
    routing: AtomicU8,
    hosts: RwLock<Hosts>,
    remotes: RwLock<Arc<Vec<Remote>>>,
    local: Arc<TargetState>,
    peers: Mutex<HashMap<NodeName, Arc<TargetState>>>,
    spin: AtomicU64,
    clock: Instant,
    mesh: Arc<OnceLock<Arc<Mesh>>>,
    /// Decision counters.
    pub counters: RouteCounters,
    /// The entry point's open client connections.
    pub connections: Arc<crate::proxy::closing::Connections>,
}

fn routing_code(r: Routing) -> u8 {
    match r {
        Routing::Local => 0,
        Routing::LocalFirst => 1,
        Routing::Balanced => 2,
    }
}

fn routing_of(code: u8) -> Routing {
    match code {
        0 => Routing::Local,
        2 => Routing::Balanced,
        _ => Routing::LocalFirst,
    }
}

impl ServiceRoutes {
    /// The routing policy in force.
    pub fn routing(&self) -> Routing {
        routing_of(self.routing.load(Ordering::Relaxed))
    }

    /// Sets the policy (from the spec of the release that serves).
    pub fn set_routing(&self, routing: Routing) {
        self.routing.store(routing_code(routing), Ordering::Relaxed);
    }

    /// The nodes the spec this host runs names as the service's hosts: only their instances are
    /// routed to.
    pub fn set_hosts(&self, hosts: &Hosts) {
        let mut current = match self.hosts.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if *current != *hosts {
            *current = hosts.clone();
        }
    }

    /// Whether this host's slot may take work (routed and not unhealthy), as its host judges.
    pub fn set_local_ok(&self, ok: bool) {
        self.local_ok.store(ok, Ordering::Relaxed);
    }

    /// Whether the local slot serves (as its host last said).
    pub fn local_ok(&self) -> bool {
        self.local_ok.load(Ordering::Relaxed)
    }

    /// Whether this node drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The mesh, once the node runs it.
    pub fn mesh(&self) -> Option<&Arc<Mesh>> {
        self.mesh.get()
    }

    /// The peers' instances gossip reports now.
    pub fn remotes(&self) -> Arc<Vec<Remote>> {
        match self.remotes.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether a request may go to a peer (so a retry has somewhere to go).
    pub fn has_peers(&self) -> bool {
        self.routing() != Routing::Local && !self.remotes().is_empty()
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Where the next request or connection goes; `pinned` is the instance the client
    /// connection already uses, `exclude` the one that just failed (for the retry).
    pub fn pick(&self, pinned: Option<&Target>, exclude: Option<&Target>) -> Option<Picked> {
        let routing = self.routing();
        let local = self.router.current();
        let remotes = self.remotes();
        let now = self.now();
        let local_ejected = || self.local.passive_ejected(now);
        if exclude != Some(&Target::Local)
            && let Some(up) = &local
            && (routing == Routing::Local
                || remotes.is_empty()
                || (routing == Routing::LocalFirst
                    && !self.draining()
                    && self.local_ok.load(Ordering::Relaxed)
                    && !local_ejected()))
        {
            return Some(Picked::Local(up.clone()));
        }
        let mut candidates = Vec::with_capacity(remotes.len() + 1);
        if let Some(up) = &local {
            candidates.push(Candidate {
                target: Target::Local,
                draining: self.draining() || !self.local_ok.load(Ordering::Relaxed),
                ejected: local_ejected(),
                inflight: up.inflight(),
            });
        }
        let states: Vec<Arc<TargetState>> = {
            let mut peers = match self.peers.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            remotes
                .iter()
                .map(|r| {
                    peers
                        .entry(r.node.clone())
                        .or_insert_with(TargetState::new)
                        .clone()
                })
                .collect()
        };
        for (r, state) in remotes.iter().zip(&states) {
            candidates.push(Candidate {
                target: Target::Peer(r.node.clone()),
                draining: r.draining,
                ejected: state.passive_ejected(now),
                inflight: state.inflight.load(Ordering::Relaxed),
            });
        }
        let spin = self.spin.fetch_add(1, Ordering::Relaxed);
        let i = choose(routing, &candidates, pinned, exclude, spin)?;
        match &candidates[i].target {
            Target::Local => local.map(Picked::Local),
            Target::Peer(_) => {
                let offset = i - usize::from(local.is_some());
                let (r, state) = (&remotes[offset], &states[offset]);
                state.inflight.fetch_add(1, Ordering::AcqRel);
                Some(Picked::Peer(PeerPick {
                    node: r.node.clone(),
                    addr: r.addr,
                    draining: candidates[i].draining,
                    state: state.clone(),
                }))
            }
        }
    }

    /// What `services` shows of the routing.
    pub fn status(&self) -> halley_proto::deploy::RoutingStatus {
        halley_proto::deploy::RoutingStatus {
            policy: match self.routing() {
                Routing::Local => "local",
                Routing::LocalFirst => "local-first",
                Routing::Balanced => "balanced",
            }
            .into(),
            peers: self
                .remotes()
                .iter()
                .map(|r| {
                    if r.draining {
                        format!("{} (draining)", r.node)
                    } else {
                        r.node.to_string()
                    }
                })
                .collect(),
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            ejections: self.counters.ejections.load(Ordering::Relaxed),
        }
    }

    /// Records how a request or connection to `target` went (passive health).
    pub fn record(&self, target: &Target, outcome: Outcome) {
        let state = match target {
            Target::Local => self.local.clone(),
            Target::Peer(node) => {
                let peers = match self.peers.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                match peers.get(node) {
                    Some(s) => s.clone(),
                    None => return,
                }
            }
        };
        if outcome == Outcome::Good && state.clean.load(Ordering::Relaxed) {
            return;
        }
        let mut passive = match state.passive.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let ejected = passive.record(outcome, self.now());
        state
            .clean
            .store(outcome == Outcome::Good, Ordering::Relaxed);
        if let Some(until) = ejected {
            self.counters.ejections.fetch_add(1, Ordering::Relaxed);
            info!(service = %self.service, instance = %target, ?outcome, for_ms = until.saturating_sub(self.now()), "instance ejected by passive health");
        }
    }
}

impl TargetState {
    fn passive_ejected(&self, now: u64) -> bool {
        if self.clean.load(Ordering::Relaxed) {
            return false;
        }
        match self.passive.lock() {
            Ok(p) => p.ejected(now),
            Err(p) => p.into_inner().ejected(now),
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services: Vec<ServiceName> = self
            .tables
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("Cluster")
            .field("services", &services)
            .finish_non_exhaustive()
    }
}

/// Every service's routing table on this node, and the mesh they forward over.
#[derive(Default)]
pub struct Cluster {
    mesh: Arc<OnceLock<Arc<Mesh>>>,
    tables: Mutex<HashMap<ServiceName, Arc<ServiceRoutes>>>,
}

impl Cluster {
    /// Gives the tables the mesh, once it runs.
    pub fn attach(&self, mesh: Arc<Mesh>) {
        let _ = self.mesh.set(mesh);
    }

    /// The table of a service (made on first use).
    pub fn table(
        &self,
        service: &ServiceName,
        draining: &Arc<AtomicBool>,
        routing: Routing,
        protocol: Protocol,
        hosts: &Hosts,
    ) -> Arc<ServiceRoutes> {
        let mut tables = match self.tables.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        tables
            .entry(service.clone())
            .or_insert_with(|| {
                Arc::new(ServiceRoutes {
                    service: service.clone(),
                    router: Arc::new(Router::default()),
                    protocol,
                    draining: draining.clone(),
                    local_ok: AtomicBool::new(true),
                    routing: AtomicU8::new(routing_code(routing)),
                    hosts: RwLock::new(hosts.clone()),
                    remotes: RwLock::default(),
                    local: TargetState::new(),
                    peers: Mutex::default(),
                    spin: AtomicU64::new(0),
                    clock: Instant::now(),
                    mesh: self.mesh.clone(),
                    counters: RouteCounters::default(),
                    connections: Arc::default(),
                })
            })
            .clone()
    }

    /// Drops a service's table (a service that is not kept: its next table starts afresh, with
    /// the protocol its next spec says).
    pub fn remove(&self, service: &ServiceName) {
        if let Ok(mut tables) = self.tables.lock() {
            tables.remove(service);
        }
    }

    /// A service's table, if it has one.
    pub fn get(&self, service: &ServiceName) -> Option<Arc<ServiceRoutes>> {
        self.tables.lock().ok()?.get(service).cloned()
    }

    /// Replaces every table's peer instances with what the membership rows report.
    pub fn update(&self, me: &NodeName, rows: &[MemberRow]) {
        let tables: Vec<Arc<ServiceRoutes>> = match self.tables.lock() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return,
        };
        for table in tables {
            let hosts = match table.hosts.read() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let remotes = Arc::new(remotes_of(me, &table.service, &hosts, rows));
            let mut current = match table.remotes.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if **current != *remotes {
                *current = remotes;
            }
        }
    }
}

/// The healthy instances of `service` in the membership rows of its `hosts` other than `me`.
pub fn remotes_of(
    me: &NodeName,
    service: &ServiceName,
    hosts: &Hosts,
    rows: &[MemberRow],
) -> Vec<Remote> {
    let mut out: Vec<Remote> = rows
        .iter()
        .filter(|r| &r.name != me && hosts.includes(&r.name))
        .filter(|r| matches!(r.state, MemberState::Alive | MemberState::Draining))
        .filter_map(|r| {
            let (key, value) = r.services.iter().find(|(n, _)| n == service.as_str())?;
            let summary = ServiceSummary::parse(key, value).ok()?;
            (summary.health == "healthy" && summary.slot != "-").then(|| Remote {
                node: r.name.clone(),
                addr: r.addr,
                draining: r.state == MemberState::Draining,
                version: summary.version,
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: MemberState, health: &str) -> MemberRow {
        MemberRow {
            name: NodeName::parse(name).unwrap(),
            addr: "127.0.0.1:7946".parse().unwrap(),
            state,
            last_heard_ms: None,
            version: "0.1.0".into(),
            role: "worker".into(),
            uptime_secs: None,
            generation: 1,
            services: vec![(
                "web".into(),
                format!("v=v1;slot=blue;health={health};restarts=0;rate=0;err=0;p99=0"),
            )],
        }
    }

    #[test]
    fn only_the_specs_hosts_that_are_alive_and_healthy_are_routed_to() {
        let name = |n: &str| NodeName::parse(n).unwrap();
        let web = ServiceName::parse("web").unwrap();
        let rows = [
            row("n1", MemberState::Alive, "healthy"),
            row("n2", MemberState::Alive, "healthy"),
            row("n3", MemberState::Alive, "healthy"),
            row("n4", MemberState::Draining, "healthy"),
            row("n5", MemberState::Suspect, "healthy"),
            row("n6", MemberState::Alive, "unhealthy"),
        ];
        let routed = |hosts: &Hosts| -> Vec<String> {
            remotes_of(&name("n1"), &web, hosts, &rows)
                .iter()
                .map(|r| r.node.to_string())
                .collect()
        };
        assert_eq!(routed(&Hosts::All), ["n2", "n3", "n4"]);
        // n3 gossips web but the spec does not name it: it draws nothing.
        let named = Hosts::Names(vec![name("n1"), name("n2"), name("n4")]);
        assert_eq!(routed(&named), ["n2", "n4"]);
        assert!(remotes_of(&name("n1"), &web, &named, &rows)[1].draining);
    }
}
