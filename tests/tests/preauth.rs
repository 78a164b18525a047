//! What a stranger costs a node: clients that complete the QUIC handshake without a certificate
//! and push as much as they can, as anyone who can reach UDP 7946 may.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use halley_proto::codec::{MAGIC, PROTOCOL_VERSION};
use halley_tests::{Node, assert_ok, runtime, start_cluster, wait_until};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

const STRANGERS: usize = 16;
const PUSH_BYTES: u64 = 100 * 1024 * 1024;
const STREAMS: usize = 100;
const FLOOD_FOR: Duration = Duration::from_secs(20);
const RSS_BUDGET_KB: u64 = 32 * 1024;

/// A stranger trusts any server: it wants to cost the node, not to join it.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn stranger_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"halley/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(quic))
}

/// What the strangers managed, summed.
#[derive(Default)]
struct Pushed {
    handshakes: AtomicU64,
    bytes: AtomicU64,
}

/// One stranger: connects again and again from 127.0.0.9 until it has pushed `PUSH_BYTES` or
/// the flood is over, each time into up to `STREAMS` streams, each opened with a frame header
/// that claims the largest request a member may send (16 MiB) and then junk.
async fn stranger(target: SocketAddr, until: Instant, pushed: Arc<Pushed>) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.9:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(stranger_config());
    let mut sent = 0u64;
    while Instant::now() < until && sent < PUSH_BYTES {
        let Ok(connecting) = endpoint.connect(target, "127.0.0.1") else {
            return;
        };
        let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(3), connecting).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        pushed.handshakes.fetch_add(1, Ordering::Relaxed);
        let streams: Vec<_> = (0..STREAMS)
            .map(|_| tokio::spawn(push_one_stream(conn.clone(), until)))
            .collect();
        for stream in streams {
            let n = stream.await.unwrap_or(0);
            sent += n;
            pushed.bytes.fetch_add(n, Ordering::Relaxed);
        }
        conn.close(0u32.into(), b"");
    }
}

async fn push_one_stream(conn: quinn::Connection, until: Instant) -> u64 {
    let per_stream = PUSH_BYTES / STREAMS as u64;
    let Ok(Ok((mut send, _recv))) =
        tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await
    else {
        return 0;
    };
    let mut header = Vec::with_capacity(12);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    header.extend_from_slice(&10u16.to_be_bytes());
    header.extend_from_slice(&(16u32 * 1024 * 1024).to_be_bytes());
    let junk = vec![0x5a; 64 * 1024];
    let mut sent = 0u64;
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), send.write_all(&header)).await
    {
        while sent < per_stream && Instant::now() < until {
            match tokio::time::timeout(Duration::from_secs(2), send.write_all(&junk)).await {
                Ok(Ok(())) => sent += junk.len() as u64,
                _ => break,
            }
        }
    }
    sent
}

fn rss_kb(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn sixteen_strangers_pushing_100_mb_each_cost_a_node_at_most_32_mb_and_the_cluster_stays_converged()
{
    let root = tempfile::tempdir().unwrap();
    let (nodes, token) = start_cluster(root.path(), &["n1", "n2"]);
    halley_tests::wait_converged(&nodes);
    // Let start-up allocations settle before the baseline.
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kb(&nodes[0]);

    let rt = runtime();
    let pushed = Arc::new(Pushed::default());
    let until = Instant::now() + FLOOD_FOR;
    let flood: Vec<_> = (0..STRANGERS)
        .map(|_| rt.spawn(stranger(nodes[0].addr, until, pushed.clone())))
        .collect();
    let mut peak = before;
    let mut unconverged = Vec::new();
    while Instant::now() < until {
        peak = peak.max(rss_kb(&nodes[0]));
        std::thread::sleep(Duration::from_millis(100));
        if until.saturating_duration_since(Instant::now()) < Duration::from_secs(5) {
            let alive: Vec<usize> = nodes.iter().map(|n| n.count("alive")).collect();
            if alive.iter().any(|a| *a != nodes.len()) {
                unconverged.push(alive);
            }
        }
    }
    rt.block_on(async {
        for f in flood {
            let _ = f.await;
        }
    });
    peak = peak.max(rss_kb(&nodes[0]));
    let grown = peak.saturating_sub(before);
    eprintln!(
        "RSS {before} kB before, {peak} kB at the peak (+{grown} kB); {} handshakes, {} bytes pushed",
        pushed.handshakes.load(Ordering::Relaxed),
        pushed.bytes.load(Ordering::Relaxed)
    );
    assert!(
        pushed.handshakes.load(Ordering::Relaxed) >= STRANGERS as u64,
        "the strangers did not even complete their handshakes, so this measured nothing"
    );
    assert!(
        grown <= RSS_BUDGET_KB,
        "{STRANGERS} strangers grew the node's RSS by {grown} kB (budget {RSS_BUDGET_KB} kB)"
    );
    assert!(
        unconverged.is_empty(),
        "the members stopped seeing each other alive during the flood (members alive per node: {unconverged:?}); n1's log:\n{}",
        nodes[0].log()
    );
    // The gate and the caps are given back: a real join right after the flood succeeds.
    let mut third = Node::new(root.path(), "n3");
    assert_ok(&third.join(&token), "join after the flood");
    third.start();
    assert!(
        wait_until(Duration::from_secs(15), || third.count("alive") == 3),
        "the node that joined after the flood did not see the cluster"
    );
}
