//! Three real nodes on one machine, each serving service entry points on its own address
//! (127.0.0.1, .2, .3, same port), with a `halley.toml` writer and load helpers: the setting of
//! the multi-host tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::http;
use crate::load::Load;
use crate::{Node, assert_ok, free_tcp_port};

/// A running three-node cluster and its service port.
pub struct Cluster {
    /// `n1` (ran `init`), `n2`, `n3`.
    pub nodes: Vec<Node>,
    /// The entry point port of service `web` on every node.
    pub port: u16,
    /// Where configs are written.
    pub dir: PathBuf,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// `n1` inits, `n2` and `n3` join; node `i` serves on 127.0.0.`i`.
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| Node::new(root.path(), n))
            .collect();
        let token = nodes[0].init();
        for (i, node) in nodes.iter_mut().enumerate() {
            if i > 0 {
                assert_ok(&node.join(&token), "join");
            }
            node.start_with(&["--service-address", &format!("127.0.0.{}", i + 1)]);
        }
        crate::wait_converged(&nodes);
        Self {
            nodes,
            port: free_tcp_port(),
            dir: root.path().to_path_buf(),
            _root: root,
        }
    }

    /// SIGKILLs node `i`'s daemon (its slot processes live on) and starts it again as before.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill9();
        self.nodes[i].start_with(&["--service-address", &format!("127.0.0.{}", i + 1)]);
    }

    /// Node `i`'s entry point of service `web`.
    pub fn entry(&self, i: usize) -> SocketAddr {
        format!("127.0.0.{}:{}", i + 1, self.port).parse().unwrap()
    }

    /// A `halley.toml` for service `web` on every node, with env knobs and rollout settings.
    pub fn config(&self, name: &str, env: &[(&str, &str)], rollout: &str) -> PathBuf {
        self.config_with(name, env, "", rollout)
    }

    /// Like [`Cluster::config`], with extra lines in `[service.web]` (`routing`, `strategy`).
    pub fn config_with(
        &self,
        name: &str,
        env: &[(&str, &str)],
        service: &str,
        rollout: &str,
    ) -> PathBuf {
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
        let text = format!(
            r#"[service.web]
command = ["./halley-test-service"]
listen = ":{port}"
keep_warm = "1m"
env = {{ {env} }}
{service}
[service.web.health]
http = "/health"
interval = "100ms"
start_period = "10s"
[service.web.stop]
drain_timeout = "2s"
[service.web.rollout]
order = ["n1", "n2", "n3"]
{drain_wait}
{rollout}
"#,
            port = self.port,
            env = env.join(", "),
            drain_wait = if rollout.contains("drain_wait") {
                ""
            } else {
                "drain_wait = \"200ms\""
            },
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The gossip generation of member `name` as node `viewer` sees it (it grows when that
    /// node restarts).
    pub fn generation(&self, viewer: usize, name: &str) -> Option<u64> {
        self.nodes[viewer].status().and_then(|s| {
            s["members"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == name)?["generation"]
                .as_u64()
        })
    }

    /// The version each entry point answers with (`None` when it does not answer).
    pub fn versions(&self, rt: &tokio::runtime::Runtime) -> Vec<Option<String>> {
        (0..3)
            .map(|i| {
                rt.block_on(http::get(self.entry(i), "/"))
                    .ok()
                    .and_then(|a| a.version().map(str::to_owned))
            })
            .collect()
    }

    /// Steady load through every entry point: 2 keep-alive clients and 1 fresh-connection client.
    pub fn load(&self, rt: &tokio::runtime::Runtime) -> Vec<Load> {
        (0..3)
            .map(|i| {
                let entry = self.entry(i);
                rt.block_on(async move { Load::start(entry, 2, 1, "/", Duration::ZERO) })
            })
            .collect()
    }
}

/// Totals over several loads: ok, failed, connection errors, and a summary.
pub fn stop_all(rt: &tokio::runtime::Runtime, loads: Vec<Load>) -> (u64, u64, u64, String) {
    let mut totals = (0, 0, 0, String::new());
    for load in loads {
        let stats = rt.block_on(load.stop());
        let (ok, failed, errors) = stats.totals();
        totals.0 += ok;
        totals.1 += failed;
        totals.2 += errors;
        totals.3.push_str(&stats.summary());
        totals.3.push('\n');
    }
    totals
}
