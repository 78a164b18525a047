//! A service's deploy spec: the `[service.NAME]` tables of `halley.toml`, and the form the spec
//! takes on the wire (deploy steps) and on disk (the node keeps the spec of what it runs).
//!
//! ## Guarantees
//! - The same types deserialize from TOML (human-readable: durations as `"30s"`, signals as
//!   `"SIGTERM"`) and from bincode (compact: durations in milliseconds). Values that have rules are
//!   checked while deserializing, so a TOML error carries the line and column of the bad value and
//!   the name of the field.
//! - Unknown fields are refused, so a typo never silently falls back to a default.
//! - Environment values are [`Secret`]s: their `Debug` form is redacted, so they never reach a log.
//!
//! ## What it does not do
//! No file reading: the node crate reads `halley.toml` and `env_file`, then hands text here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::size::ByteSize;
use crate::{Error, NodeName};

/// The whole `halley.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HalleyToml {
    /// `[service.NAME]` tables.
    #[serde(default)]
    pub service: BTreeMap<ServiceName, ServiceSpec>,
}

/// A service's name: the rules of a node name (a DNS label), so it is safe in paths and gossip keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(NodeName);

impl ServiceName {
    /// Parses a service name.
    pub fn parse(name: &str) -> Result<Self, Error> {
        NodeName::parse_as("service name", name).map(Self)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServiceName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).map_err(|e| format!("bad service name: {e}"))
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> String {
        name.as_str().to_owned()
    }
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The argv to run, from the unpacked release's directory. `{port}` is replaced by the slot's
    /// port, which is also in the environment as `PORT`.
    #[serde(deserialize_with = "non_empty_argv")]
    pub command: Vec<String>,
    /// Extra environment for the process. Values are secrets: never logged, never gossiped.
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    /// A file of `KEY=value` lines (mode 0600) merged under `env` when the spec is loaded.
    #[serde(default)]
    pub env_file: Option<String>,
    /// The stable entry point.
    pub listen: Listen,
    /// What the entry point speaks.
    #[serde(default)]
    pub protocol: Protocol,
    /// Which nodes run it.
    #[serde(default)]
    pub hosts: Hosts,
    /// How a slot is judged healthy.
    #[serde(default)]
    pub health: HealthSpec,
    /// How a slot is drained and stopped.
    #[serde(default)]
    pub stop: StopSpec,
    /// How many unpacked releases to keep on disk (the current and previous are never pruned).
    #[serde(default = "default_keep_releases")]
    pub keep_releases: u32,
    /// How long the previous slot keeps running out of rotation after a flip, for an instant
    /// rollback. `0s` stops it as soon as it is drained.
    #[serde(default)]
    pub keep_warm: Millis,
    /// The user to run as when the node runs as root.
    #[serde(default)]
    pub user: Option<String>,
    /// How a deploy walks the cluster.
    #[serde(default)]
    pub rollout: RolloutPolicy,
    /// Which instances an entry point sends work to.
    #[serde(default)]
    pub routing: Routing,
    /// How a host replaces its running release.
    #[serde(default)]
    pub strategy: Strategy,
    /// The service's state: what is snapshotted before a deploy, how it is migrated.
    #[serde(default)]
    pub state: Option<StateSpec>,
    /// Size at which a slot's log is rotated; each release and slot keeps two such files.
    /// Added in disk format 3: records of format 2 end the spec before it. A field added later
    /// goes after it, defaulting below its own format (see `codec::reading_disk_format`).
    #[serde(
        default = "crate::size::default_log_max",
        deserialize_with = "crate::size::log_max"
    )]
    pub log_max: ByteSize,
}

/// `[service.NAME.state]`: the data a deploy must not lose, and its migrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawState")]
pub struct StateSpec {
    /// SQLite databases, relative to the service data directory; copied with SQLite's online
    /// backup API (safe while the service writes).
    pub sqlite: Vec<String>,
    /// Directories, relative to the service data directory; archived.
    pub dirs: Vec<String>,
    /// A command that writes a backup into `$HALLEY_BACKUP_DIR` (pg_dump, mysqldump).
    pub backup: Option<Vec<String>>,
    /// A command that restores from `$HALLEY_BACKUP_DIR` (pg_restore).
    pub restore: Option<Vec<String>>,
    /// A command run against a restored copy (`$HALLEY_RESTORED`) of every snapshot.
    pub verify: Option<Vec<String>>,
    /// The new release's migration, run once, on the first state host, before any traffic moves.
    pub migrate: Option<Vec<String>>,
    /// Run once after the rollout is committed on every host (the contract step).
    pub contract: Option<Vec<String>>,
    /// Which hosts hold the state.
    pub on: Hosts,
    /// Backups kept per service on each state host.
    pub keep_backups: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    sqlite: Vec<String>,
    #[serde(default)]
    dirs: Vec<String>,
    #[serde(default)]
    backup: Option<Vec<String>>,
    #[serde(default)]
    restore: Option<Vec<String>>,
    #[serde(default)]
    verify: Option<Vec<String>>,
    #[serde(default)]
    migrate: Option<Vec<String>>,
    #[serde(default)]
    contract: Option<Vec<String>>,
    #[serde(default)]
    on: Hosts,
    #[serde(default = "default_keep_backups")]
    keep_backups: u32,
}

fn default_keep_backups() -> u32 {
    10
}

impl TryFrom<RawState> for StateSpec {
    type Error = String;

    fn try_from(raw: RawState) -> Result<Self, String> {
        for path in raw.sqlite.iter().chain(&raw.dirs) {
            let p = std::path::Path::new(path);
            let escapes = p
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if path.is_empty() || escapes {
                return Err(format!(
                    "state path {path:?} must be relative to the service data directory, without `..` (e.g. \"app.db\" or \"uploads\")"
                ));
            }
        }
        for (name, argv) in [
            ("backup", &raw.backup),
            ("restore", &raw.restore),
            ("verify", &raw.verify),
            ("migrate", &raw.migrate),
            ("contract", &raw.contract),
        ] {
            if argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || a[0].is_empty())
            {
                return Err(format!(
                    "state {name} must name a program, e.g. {name} = [\"./app\", \"{name}\"]"
                ));
            }
        }
        if raw.backup.is_some() != raw.restore.is_some() {
            return Err(
                "state backup and restore come together: a backup Halley cannot restore is no backup"
                    .into(),
            );
        }
        if raw.keep_backups == 0 {
            return Err("state keep_backups must be at least 1".into());
        }
        Ok(Self {
            sqlite: raw.sqlite,
            dirs: raw.dirs,
            backup: raw.backup,
            restore: raw.restore,
            verify: raw.verify,
            migrate: raw.migrate,
            contract: raw.contract,
            on: raw.on,
            keep_backups: raw.keep_backups,
        })
    }
}

impl StateSpec {
    /// Whether there is anything to snapshot.
    pub fn has_snapshot(&self) -> bool {
        !self.sqlite.is_empty() || !self.dirs.is_empty() || self.backup.is_some()
    }
}

/// Which instances of a service an entry point sends requests and connections to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// This host's instance only.
    Local,
    /// This host's instance while it is healthy and the host is not draining, else peers'.
    #[default]
    LocalFirst,
    /// The healthy instance with the fewest requests in flight, anywhere in the cluster.
    Balanced,
}

/// How a host replaces its running release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Start the new release beside the old one, check it, flip, drain the old one.
    #[default]
    BlueGreen,
    /// Stop the old release first, then start and check the new one (for services that cannot
    /// run two copies at once); peers serve while the host is drained.
    StopStart,
}

fn default_keep_releases() -> u32 {
    5
}

fn non_empty_argv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let argv = Vec::<String>::deserialize(d)?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(de::Error::custom(
            "command must name a program, e.g. command = [\"./app\", \"--port\", \"{port}\"]",
        ));
    }
    Ok(argv)
}

/// An environment value, redacted in `Debug` (and in slot log tails that leave the host).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the entry point listens: a full address, or a port on the node's `--service-address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// `"0.0.0.0:8080"`.
    Addr(SocketAddr),
    /// `":8080"`: the node's service address.
    Port(u16),
}

impl Listen {
    /// Parses `IP:PORT` or `:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "listen = {text:?} is not an address; use \"IP:PORT\" (e.g. \"0.0.0.0:8080\") or \":PORT\" for the node's --service-address"
            )
        };
        if let Some(port) = text.strip_prefix(':') {
            return port.parse().map(Listen::Port).map_err(|_| bad());
        }
        text.parse().map(Listen::Addr).map_err(|_| bad())
    }

    /// The address to bind, given the node's service address.
    pub fn resolve(self, service_address: IpAddr) -> SocketAddr {
        match self {
            Listen::Addr(addr) => addr,
            Listen::Port(port) => SocketAddr::new(service_address, port),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Addr(addr) => write!(f, "{addr}"),
            Listen::Port(port) => write!(f, ":{port}"),
        }
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Listen::parse(&text).map_err(de::Error::custom)
    }
}

/// What an entry point speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1, proxied per request.
    #[default]
    Http,
    /// Raw TCP, proxied per connection.
    Tcp,
}

/// Which nodes run a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Hosts {
    /// `"*"`: every node.
    #[default]
    All,
    /// A list of node names.
    Names(Vec<NodeName>),
}

impl Hosts {
    /// Whether `node` runs the service.
    pub fn includes(&self, node: &NodeName) -> bool {
        match self {
            Hosts::All => true,
            Hosts::Names(names) => names.contains(node),
        }
    }
}

impl Serialize for Hosts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Hosts::All => vec!["*".to_owned()].serialize(s),
            Hosts::Names(names) => names.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let list = if d.is_human_readable() {
            match Raw::deserialize(d)? {
                Raw::One(one) => vec![one],
                Raw::Many(many) => many,
            }
        } else {
            Vec::<String>::deserialize(d)?
        };
        if list.iter().any(|h| h == "*") {
            return Ok(Hosts::All);
        }
        if list.is_empty() {
            return Err(de::Error::custom(
                "hosts is empty; list node names, or use \"*\" for every node",
            ));
        }
        list.iter()
            .map(|h| NodeName::parse(h).map_err(|e| de::Error::custom(format!("hosts: {e}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Hosts::Names)
    }
}

/// How a slot is judged healthy. In TOML the check is exactly one of `http = "/path"` (with
/// optional `statuses`), `tcp = true` or `exec = [argv]`; with none of them the check is `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawHealth", into = "RawHealth")]
pub struct HealthSpec {
    /// The check itself.
    pub check: HealthCheck,
    /// Time between checks.
    pub interval: Millis,
    /// A check that takes longer fails.
    pub timeout: Millis,
    /// Consecutive passes that make a starting or unhealthy slot healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy slot unhealthy.
    pub unhealthy_threshold: u32,
    /// How long a new slot has to become healthy; failures in this time do not count against it.
    pub start_period: Millis,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec::try_from(RawHealth::default()).unwrap_or(HealthSpec {
            check: HealthCheck::Tcp,
            interval: Millis(1000),
            timeout: Millis(2000),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            start_period: Millis(30_000),
        })
    }
}

/// The kind of health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `GET path` on the slot's port; a status in `statuses` passes (empty: 200–399).
    Http {
        /// The path, starting with `/`.
        path: String,
        /// Accepted statuses; empty means 200–399.
        statuses: Vec<u16>,
    },
    /// A TCP connect to the slot's port.
    Tcp,
    /// A command run from the release dir with the service's env and `PORT`; exit 0 passes.
    Exec(Vec<String>),
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    statuses: Vec<u16>,
    #[serde(default)]
    tcp: Option<bool>,
    #[serde(default)]
    exec: Option<Vec<String>>,
    #[serde(default = "default_interval")]
    interval: Millis,
    #[serde(default = "default_timeout")]
    timeout: Millis,
    #[serde(default = "one")]
    healthy_threshold: u32,
    #[serde(default = "three")]
    unhealthy_threshold: u32,
    #[serde(default = "default_start_period")]
    start_period: Millis,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            http: None,
            statuses: Vec::new(),
            tcp: None,
            exec: None,
            interval: default_interval(),
            timeout: default_timeout(),
            healthy_threshold: one(),
            unhealthy_threshold: three(),
            start_period: default_start_period(),
        }
    }
}

fn default_interval() -> Millis {
    Millis(1000)
}
fn default_timeout() -> Millis {
    Millis(2000)
}
fn default_start_period() -> Millis {
    Millis(30_000)
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl TryFrom<RawHealth> for HealthSpec {
    type Error = String;
    fn try_from(raw: RawHealth) -> Result<Self, String> {
        let kinds = usize::from(raw.http.is_some())
            + usize::from(raw.tcp == Some(true))
            + usize::from(raw.exec.is_some());
        if kinds > 1 {
            return Err(
                "health: give only one of http = \"/path\", tcp = true or exec = [\"cmd\", ...]"
                    .into(),
            );
        }
        if !raw.statuses.is_empty() && raw.http.is_none() {
            return Err(
                "health.statuses only applies to an http check; add http = \"/path\"".into(),
            );
        }
        if let Some(bad) = raw.statuses.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(format!(
                "health.statuses: {bad} is not an HTTP status (100-599)"
            ));
        }
        if raw.healthy_threshold == 0 || raw.unhealthy_threshold == 0 {
            return Err(
                "health.healthy_threshold and health.unhealthy_threshold must be at least 1".into(),
            );
        }
        if raw.interval.0 == 0 || raw.timeout.0 == 0 {
            return Err("health.interval and health.timeout must be longer than 0s".into());
        }
        let check = match (raw.http, raw.exec) {
            (Some(path), _) if !path.starts_with('/') => {
                return Err(format!(
                    "health.http = {path:?} must be a path starting with '/', e.g. \"/up\""
                ));
            }
            (Some(path), _) => HealthCheck::Http {
                path,
                statuses: raw.statuses,
            },
            (None, Some(argv)) if argv.is_empty() || argv[0].is_empty() => {
                return Err("health.exec must name a program, e.g. exec = [\"./check\"]".into());
            }
            (None, Some(argv)) => HealthCheck::Exec(argv),
            (None, None) => HealthCheck::Tcp,
        };
        Ok(HealthSpec {
            check,
            interval: raw.interval,
            timeout: raw.timeout,
            healthy_threshold: raw.healthy_threshold,
            unhealthy_threshold: raw.unhealthy_threshold,
            start_period: raw.start_period,
        })
    }
}

impl From<HealthSpec> for RawHealth {
    fn from(h: HealthSpec) -> RawHealth {
        let (http, statuses, tcp, exec) = match h.check {
            HealthCheck::Http { path, statuses } => (Some(path), statuses, None, None),
            HealthCheck::Tcp => (None, Vec::new(), Some(true), None),
            HealthCheck::Exec(argv) => (None, Vec::new(), None, Some(argv)),
        };
        RawHealth {
            http,
            statuses,
            tcp,
            exec,
            interval: h.interval,
            timeout: h.timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
            start_period: h.start_period,
        }
    }
}

/// How a slot is drained and stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    /// The signal that asks the process to stop.
    #[serde(default)]
    pub signal: StopSignal,
    /// How long in-flight requests and open connections on an old slot may run after a flip.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Millis,
    /// How long after the signal the process group is killed.
    #[serde(default = "default_kill_after")]
    pub kill_after: Millis,
}

impl Default for StopSpec {
    fn default() -> Self {
        Self {
            signal: StopSignal::default(),
            drain_timeout: default_drain_timeout(),
            kill_after: default_kill_after(),
        }
    }
}

fn default_drain_timeout() -> Millis {
    Millis(30_000)
}
fn default_kill_after() -> Millis {
    Millis(10_000)
}

/// Signals a process may be asked to stop with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StopSignal {
    /// SIGTERM.
    #[default]
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
    /// SIGHUP.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl StopSignal {
    /// The conventional name, e.g. `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }
}

impl TryFrom<String> for StopSignal {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let upper = s.to_ascii_uppercase();
        let short = upper.strip_prefix("SIG").unwrap_or(&upper);
        Ok(match short {
            "TERM" => StopSignal::Term,
            "INT" => StopSignal::Int,
            "QUIT" => StopSignal::Quit,
            "HUP" => StopSignal::Hup,
            "USR1" => StopSignal::Usr1,
            "USR2" => StopSignal::Usr2,
            _ => {
                return Err(format!(
                    "stop.signal = {s:?} is not allowed; use SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2"
                ));
            }
        })
    }
}

impl From<StopSignal> for String {
    fn from(s: StopSignal) -> String {
        s.name().to_owned()
    }
}

/// A duration in milliseconds. In TOML a string such as `"250ms"`, `"30s"`, `"5m"`, `"1h"`, or an
/// integer number of seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// Parses `250ms`, `30s`, `5m`, `1h`, `2d` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (n, unit) = crate::quantity::number_and_unit(text).ok_or_else(|| {
            format!("{text:?} is not a duration; write e.g. \"500ms\", \"30s\", \"5m\" or \"1h\"")
        })?;
        let factor = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?}; use ms, s, m, h or d"
                ));
            }
        };
        n.checked_mul(factor)
            .map(Millis)
            .ok_or_else(|| format!("{text:?} is too long a duration"))
    }

    /// As a std duration.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ms if ms % 1000 != 0 => write!(f, "{ms}ms"),
            ms => write!(f, "{}s", ms / 1000),
        }
    }
}

crate::quantity::serde_as_quantity!(
    Millis,
    crate::quantity::Forms {
        base: Millis,
        number: |secs| {
            secs.checked_mul(1000)
                .map(Millis)
                .ok_or_else(|| "duration too long".to_owned())
        },
        text: Millis::parse,
        expected: "expected a duration such as \"500ms\", \"30s\", \"5m\" or a number of seconds",
    }
);

/// How a rollout walks the cluster (`[service.NAME.rollout]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutPolicy {
    /// Host order; hosts not listed follow by name. Empty: as listed in `hosts`, else by name.
    pub order: Vec<NodeName>,
    /// Hosts updated at once.
    pub batch: u32,
    /// How long a host is marked draining before its new release starts (for external balancers).
    pub drain_wait: Millis,
    /// How long a host's new release may take to pass its check.
    pub health_deadline: Millis,
    /// Healthy serving required after a batch's flip before the next batch.
    pub bake: Millis,
    /// Wait between batches, after the bake.
    pub pause: Millis,
    /// A 5xx share above this (and above `error_ratio` × the old release's) is a regression.
    pub max_error_rate: Percent,
    /// How many times the old release's 5xx share the new one may reach.
    pub error_ratio: u32,
    /// p99 above this many times the pre-deploy p99 is a regression...
    pub p99_ratio: u32,
    /// ...when it is also above this floor (so microsecond jitter is not a regression).
    pub p99_floor: Millis,
    /// Requests in the signal window below which rates are not judged.
    pub min_requests: u32,
    /// Updated hosts failing at once that make the rollout roll back (a host in its bake
    /// failing always does).
    pub max_failed_hosts: u32,
    /// Roll every touched host back when a threshold is crossed (else pause).
    pub auto_rollback: bool,
    /// Hosts left in an unfinished step with no coordinator for this long revert themselves.
    pub orphan_timeout: Millis,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            order: Vec::new(),
            batch: 1,
            drain_wait: Millis(2_000),
            health_deadline: Millis(60_000),
            bake: Millis(10_000),
            pause: Millis(0),
            max_error_rate: Percent(100),
            error_ratio: 2,
            p99_ratio: 2,
            p99_floor: Millis(50),
            min_requests: 20,
            max_failed_hosts: 1,
            auto_rollback: true,
            orphan_timeout: Millis(600_000),
        }
    }
}

/// A share in basis points (1 % = 100). In TOML `"1%"`, `"0.5%"` or a number of percent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(pub u32);

impl Percent {
    /// Parses `"1%"`, `"0.25%"` or `"2"` (percent).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let t = t.strip_suffix('%').unwrap_or(t).trim();
        let value: f64 = t
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage; write e.g. \"1%\" or \"0.5%\""))?;
        if !(0.0..=100.0).contains(&value) {
            return Err(format!("{text:?} is not between 0% and 100%"));
        }
        Ok(Percent((value * 100.0).round() as u32))
    }

    /// As a fraction (1 % = 0.01).
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", f64::from(self.0) / 100.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return u32::deserialize(d).map(Percent);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Number(n)) => Percent::parse(&n.to_string()).map_err(de::Error::custom),
            Ok(Raw::Text(t)) => Percent::parse(&t).map_err(de::Error::custom),
            Err(_) => Err(de::Error::custom("expected a percentage such as \"1%\"")),
        }
    }
}

/// Parses the text of an `env_file`: `KEY=value` lines; blank lines and `#` comments are skipped;
/// a value may be wrapped in single or double quotes. Errors name the line.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, Secret>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {}: expected KEY=value (the value is not shown: it may be a secret)",
                i + 1
            ));
        };
        let key = key.trim();
        if key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || key.as_bytes()[0].is_ascii_digit()
        {
            return Err(format!(
                "line {}: {key:?} is not a variable name (A-Z, a-z, 0-9, _)",
                i + 1
            ));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        out.insert(key.to_owned(), Secret(value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Millis::parse("250ms"), Ok(Millis(250)));
        assert_eq!(Millis::parse("30s"), Ok(Millis(30_000)));
        assert_eq!(Millis::parse("2m"), Ok(Millis(120_000)));
        assert_eq!(Millis::parse("7"), Ok(Millis(7000)));
        assert!(Millis::parse("3 weeks").is_err());
        assert!(Millis::parse("").is_err());
    }

    #[test]
    fn listen_accepts_port_only() {
        assert_eq!(Listen::parse(":8080"), Ok(Listen::Port(8080)));
        assert!(matches!(Listen::parse("0.0.0.0:80"), Ok(Listen::Addr(_))));
        assert!(Listen::parse("localhost:80").is_err());
    }

    #[test]
    fn env_file_lines() {
        let env = parse_env_file("# c\nA=1\nexport B=\"two words\"\n\nC='x'\n").unwrap();
        assert_eq!(env["A"].0, "1");
        assert_eq!(env["B"].0, "two words");
        assert_eq!(env["C"].0, "x");
        let err = parse_env_file("A=1\nnot a line\n").unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
        assert!(!format!("{:?}", env["A"]).contains('1'));
    }
}
