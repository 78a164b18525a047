//! TLS for the mesh: rustls (ring provider, TLS 1.3 only) configurations wrapped for quinn.
//!
//! ## Guarantees
//! - Servers present `[node cert, CA cert]` and verify any client certificate against the cluster
//!   CA; a certificate from another CA fails the handshake. A client without a certificate completes
//!   the handshake but the mesh lets it send nothing but a join request (see `mesh`).
//! - Every connection starts with a 64 KiB connection receive window; the mesh lifts it with
//!   [`grant_member_limits`] only after checking the peer's certificate, so a stranger makes a
//!   node buffer at most that window per connection.
//! - Mesh clients verify the server against the cluster CA and the peer's IP (the IP SAN).
//! - Joining clients have no CA yet: they accept a server chain only if it contains a certificate
//!   whose SHA-256 is the token's pin, and then verify the chain against that certificate. On a
//!   mismatch nothing (in particular not the token secret) is sent.
//! - ALPN is fixed to `halley/1`; a peer of another protocol generation fails the handshake.
//! - This node's certificate and key live in one [`Identity`] that both directions resolve at
//!   each handshake, so a renewed certificate is used by the next handshake without rebinding
//!   the endpoint; connections already up keep theirs.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};
use crate::mesh::pki::cert_hash;

/// The one ALPN protocol id.
pub const ALPN: &[u8] = b"halley/1";

/// This node's credentials.
pub struct Credentials {
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
    /// This node's certificate.
    pub cert: CertificateDer<'static>,
    /// This node's private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

impl Credentials {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls)?;
        Ok(Arc::new(roots))
    }
}

/// This node's certificate chain and key as both TLS directions present them, replaceable while
/// the endpoint runs (a renewal).
#[derive(Debug)]
pub struct Identity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Identity {
    /// The identity of `creds`; fails if the key is not the certificate's.
    pub fn new(creds: &Credentials) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified(creds)?)),
        }))
    }

    /// Presents `creds` from the next handshake on; fails (changing nothing) if the key is not
    /// the certificate's.
    pub fn replace(&self, creds: &Credentials) -> Result<()> {
        let next = Arc::new(certified(creds)?);
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

fn certified(creds: &Credentials) -> Result<CertifiedKey> {
    CertifiedKey::from_der(creds.chain(), creds.key(), &provider()).map_err(tls)
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connection-wide receive window a connection gets before its peer has proven it is a
/// member: small enough that a stranger cannot make this node buffer more than this per
/// connection, whatever it sends on however many streams (the mesh reads one stream of a
/// stranger's, the join request, and never the others). Stream counts are not lowered before
/// authentication: quinn 0.11 did not reliably deliver a later raise of them (gossip and
/// requests between members stalled in the tests), while a raised window arrives at once.
const PRE_AUTH_WINDOW: u32 = 64 * 1024;
/// A member's streams: requests, and one stream per client connection a peer's entry point
/// forwards here; gossip goes on uni streams.
const MEMBER_BIDI: u32 = 4096;
const MEMBER_UNI: u32 = 256;
/// Bytes a not yet accepted connection may buffer (0-RTT), per connection and in all.
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;
/// Connections the endpoint holds in the handshake queue before it refuses new ones.
const MAX_INCOMING: usize = 256;

/// Transport settings shared by both directions: keep-alives so a dead peer's connection is
/// noticed and replaced within a few seconds, and the pre-authentication window: every
/// connection starts with it, and [`grant_member_limits`] lifts it once the peer's certificate
/// has been checked.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    // Milliseconds: a peer silent for 5 s (5 missed keep-alives) is gone.
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        5_000,
    ))));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(MEMBER_UNI));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MEMBER_BIDI));
    transport.receive_window(quinn::VarInt::from_u32(PRE_AUTH_WINDOW));
    Arc::new(transport)
}

/// Lifts a connection's pre-authentication limit: called only once the peer presented a
/// certificate of this cluster with a usable identity.
pub fn grant_member_limits(conn: &quinn::Connection) {
    conn.set_receive_window(quinn::VarInt::MAX);
}

/// Checks that `cert` is a valid member certificate of the cluster whose CA `creds` hold, as a
/// peer's verifier would judge it now (chain, validity, usage).
pub fn verify_member_cert(creds: &Credentials, cert: &CertificateDer<'static>) -> Result<()> {
    let verifier = WebPkiClientVerifier::builder_with_provider(creds.roots()?, provider())
        .build()
        .map_err(tls)?;
    verifier
        .verify_client_cert(cert, &[], UnixTime::now())
        .map(|_| ())
        .map_err(tls)
}

/// The mesh server configuration: presents `identity`, verifies clients against the CA.
pub fn server_config(creds: &Credentials, identity: &Arc<Identity>) -> Result<quinn::ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(creds.roots()?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.clone());
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(config).map_err(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server
        .transport_config(transport())
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(server)
}

/// The mesh client configuration: verifies servers against the CA, presents `identity`.
pub fn mesh_client_config(
    creds: &Credentials,
    identity: &Arc<Identity>,
) -> Result<quinn::ClientConfig> {
    let verifier = WebPkiServerVerifier::builder_with_provider(creds.roots()?, provider())
        .build()
        .map_err(tls)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_webpki_verifier(verifier)
        .with_client_cert_resolver(identity.clone());
    config.alpn_protocols = vec![ALPN.to_vec()];
    finish_client(config)
}

/// The joining client configuration, pinned to the CA hash from a token. The returned flag is set
/// when a server's chain did not contain the pinned CA.
pub fn join_client_config(ca_pin: [u8; 32]) -> Result<(quinn::ClientConfig, PinOutcome)> {
    let outcome = PinOutcome::default();
    let verifier = Arc::new(PinnedCaVerifier {
        pin: ca_pin,
        outcome: outcome.clone(),
        provider: provider(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok((finish_client(config)?, outcome))
}

fn finish_client(config: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let quic = QuicClientConfig::try_from(config).map_err(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport());
    Ok(client)
}

/// Whether the pinned-CA check failed during a join handshake.
#[derive(Debug, Clone, Default)]
pub struct PinOutcome(Arc<Mutex<bool>>);

impl PinOutcome {
    /// True when a server presented a chain without the pinned CA.
    pub fn mismatched(&self) -> bool {
        self.0.lock().map(|g| *g).unwrap_or(true)
    }

    fn set_mismatch(&self) {
        if let Ok(mut g) = self.0.lock() {
            *g = true;
        }
    }
}

#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    outcome: PinOutcome,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| cert_hash(c) == self.pin) else {
            self.outcome.set_mismatch();
            return Err(rustls::Error::General(
                "server chain does not contain the CA pinned by the join token".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls(e: impl std::fmt::Display) -> Error {
    Error::Pki(format!("TLS configuration: {e}"))
}
