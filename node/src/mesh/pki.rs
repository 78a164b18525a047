//! The cluster PKI: the CA, node certificates, signing requests, and reading identities back out of
//! peer certificates.
//!
//! ## Guarantees
//! - The CA is ECDSA P-256, valid 10 years. Node certificates are ECDSA P-256, valid for the
//!   cluster's node validity (`init --cert-validity`, 1 year by default; every admin issues with
//!   the lifespan of its own certificate, so the cluster keeps the one `init` chose), with the node
//!   name as DNS SAN and the advertise IP as IP SAN, both server and client EKU, and the role in
//!   the subject (`OU=halley-role:<role>`). NotBefore is an hour before issue, so a host whose
//!   clock is a little behind (a Pi before NTP) still accepts it.
//! - When signing a join or renewal request, only the public key is taken from the CSR; name,
//!   addresses, role and validity are set by the CA side, so a CSR cannot ask for another role.
//!
//! ## Non-goals
//! Revocation is by name, in the mesh's verifiers, not in the certificates.

use std::net::IpAddr;

use halley_proto::{NodeName, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// How long the cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a node certificate is valid unless `init --cert-validity` says otherwise.
pub const NODE_CERT_VALIDITY: Duration = Duration::days(365);
/// How far before its issue a certificate's NotBefore lies.
pub const BACKDATE: Duration = Duration::hours(1);
/// Prefix of the subject OU that carries the role.
const ROLE_OU_PREFIX: &str = "halley-role:";

/// The cluster CA: its certificate and signing key.
pub struct ClusterCa {
    /// The CA certificate (DER).
    pub cert_der: CertificateDer<'static>,
    /// The CA private key.
    pub key: KeyPair,
    /// How long the node certificates it issues are valid.
    pub node_validity: Duration,
}

impl ClusterCa {
    /// Makes a new CA for a cluster.
    pub fn generate(cluster_id: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(pki)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("halley cluster CA {cluster_id}"),
        );
        dn.push(DnType::OrganizationName, "halley");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        stamp(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key).map_err(pki)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            key,
            node_validity: NODE_CERT_VALIDITY,
        })
    }

    /// The same CA, issuing node certificates valid for `validity`.
    pub fn with_node_validity(self, validity: Duration) -> Self {
        Self {
            node_validity: validity,
            ..self
        }
    }

    /// Loads a CA from its PEM certificate and key, refusing a key that is not the
    /// certificate's (a CA key received at join, say, that would sign what nobody trusts).
    pub fn from_pem(cert_pem: &[u8], key_pem: &str) -> Result<Self> {
        let cert_der = cert_from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(pki)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| Error::Pki(format!("cannot parse the CA certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::Pki(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        Ok(Self {
            cert_der,
            key,
            node_validity: NODE_CERT_VALIDITY,
        })
    }

    /// Issues a node certificate for `public_key`.
    fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        name: &NodeName,
        advertise: IpAddr,
        role: Role,
    ) -> Result<CertificateDer<'static>> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::DnsName(name.as_str().try_into().map_err(pki)?),
            SanType::IpAddress(advertise),
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        dn.push(
            DnType::OrganizationalUnitName,
            format!("{ROLE_OU_PREFIX}{}", role.as_str()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        stamp(&mut params, self.node_validity)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(pki)?;
        let cert = params.signed_by(public_key, &issuer).map_err(pki)?;
        Ok(cert.der().clone())
    }

    /// Issues a certificate for this CA's own host (the `init` node), with a fresh key.
    pub fn issue_with_new_key(
        &self,
        name: &NodeName,
        advertise: IpAddr,
        role: Role,
    ) -> Result<(CertificateDer<'static>, KeyPair)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(pki)?;
        let cert = self.issue(&key, name, advertise, role)?;
        Ok((cert, key))
    }

    /// Signs a joining node's CSR. The CSR's signature is checked; only its public key is used.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        name: &NodeName,
        advertise: IpAddr,
        role: Role,
    ) -> Result<CertificateDer<'static>> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| {
                    Error::Pki(format!("the certificate signing request is invalid: {e}"))
                })?;
        self.issue(&csr.public_key, name, advertise, role)
    }
}

/// Makes a fresh key pair and a CSR for it (the joining side).
pub fn make_csr(name: &NodeName) -> Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(pki)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(pki)?;
    Ok((key, csr.der().to_vec()))
}

/// SHA-256 of a certificate's DER: what a join token pins.
pub fn cert_hash(cert_der: &[u8]) -> [u8; 32] {
    crate::engine::tokens::sha256(cert_der)
}

/// When a certificate was issued (its NotBefore plus [`BACKDATE`]) and when it expires, unix
/// milliseconds, with the IP it names (its IP SAN) and its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Issue time.
    pub issued_ms: u64,
    /// NotAfter.
    pub expires_ms: u64,
    /// The IP SAN, if any.
    pub ip: Option<IpAddr>,
    /// The subject public key (raw).
    pub public_key: Vec<u8>,
}

impl CertFacts {
    /// Reads a certificate.
    pub fn of(cert_der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| Error::Pki(format!("cannot parse the certificate: {e}")))?;
        let ms = |t: x509_parser::time::ASN1Time| {
            u64::try_from(t.timestamp())
                .unwrap_or(0)
                .saturating_mul(1000)
        };
        let backdate = u64::try_from(BACKDATE.whole_milliseconds()).unwrap_or(0);
        let ip = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    },
                    _ => None,
                })
            });
        Ok(Self {
            issued_ms: ms(cert.validity().not_before) + backdate,
            expires_ms: ms(cert.validity().not_after),
            ip,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// The lifespan it was issued with.
    pub fn lifespan(&self) -> Duration {
        Duration::milliseconds(
            i64::try_from(self.expires_ms.saturating_sub(self.issued_ms)).unwrap_or(i64::MAX),
        )
    }
}

/// Who a peer certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node name (subject CN).
    pub name: NodeName,
    /// The role (subject OU).
    pub role: Role,
    /// The address it was issued for (IP SAN), if it names one.
    pub ip: Option<IpAddr>,
}

impl PeerIdentity {
    /// Reads name and role from a certificate that already passed chain verification.
    pub fn from_cert(cert_der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| Error::Pki(format!("cannot parse peer certificate: {e}")))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| Error::Pki("peer certificate has no common name".into()))?;
        let role = subject
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .find_map(|ou| ou.strip_prefix(ROLE_OU_PREFIX))
            .ok_or_else(|| Error::Pki("peer certificate carries no halley role".into()))?;
        Ok(Self {
            name: NodeName::parse(name)?,
            role: Role::parse(role)?,
            ip: CertFacts::of(cert_der)?.ip,
        })
    }
}

/// Parses the first certificate of a PEM file.
pub fn cert_from_pem(pem: &[u8]) -> Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem)
        .map_err(|e| Error::Pki(format!("cannot read certificate PEM: {e}")))
}

/// Encodes a DER certificate as PEM.
pub fn cert_to_pem(der: &[u8]) -> String {
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    let b64 = base64_encode(der);
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Loads a key pair from PEM.
pub fn key_from_pem(pem: &str) -> Result<KeyPair> {
    KeyPair::from_pem(pem).map_err(pki)
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sets validity (from [`BACKDATE`] ago, to tolerate clock skew between hosts) and a random serial.
fn stamp(params: &mut CertificateParams, validity: Duration) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.serial_number = Some(random_serial()?);
    Ok(())
}

fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    crate::random::fill(&mut bytes)?;
    // Positive, non-zero leading byte keeps the DER integer 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn pki(e: impl std::fmt::Display) -> Error {
    Error::Pki(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificate_carries_name_role_and_address() {
        let ca = ClusterCa::generate("c1").unwrap();
        let name = NodeName::parse("pi-1").unwrap();
        let (cert, _key) = ca
            .issue_with_new_key(&name, "10.1.2.3".parse().unwrap(), Role::Worker)
            .unwrap();
        let id = PeerIdentity::from_cert(&cert).unwrap();
        assert_eq!(
            id,
            PeerIdentity {
                name: name.clone(),
                role: Role::Worker,
                ip: Some("10.1.2.3".parse().unwrap()),
            }
        );
        let facts = CertFacts::of(&cert).unwrap();
        assert_eq!(facts.lifespan(), NODE_CERT_VALIDITY);
        let short = ClusterCa::generate("c2")
            .unwrap()
            .with_node_validity(Duration::minutes(1));
        let (cert, key) = short
            .issue_with_new_key(&name, "10.1.2.3".parse().unwrap(), Role::Worker)
            .unwrap();
        let facts = CertFacts::of(&cert).unwrap();
        assert_eq!(facts.lifespan(), Duration::minutes(1));
        assert_eq!(facts.public_key, key.public_key_raw());
        let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap() * 1000;
        assert!(
            facts.issued_ms.abs_diff(now) < 5_000,
            "issued now, backdated by an hour"
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", san.value.general_names);
        assert!(text.contains("pi-1"), "{text}");
        assert!(
            text.contains("10.1.2.3") || text.contains("[10, 1, 2, 3]"),
            "{text}"
        );
    }

    #[test]
    fn csr_cannot_choose_its_role_and_bad_csr_is_refused() {
        let ca = ClusterCa::generate("c1").unwrap();
        let name = NodeName::parse("pi-2").unwrap();
        let (_key, csr) = make_csr(&name).unwrap();
        let cert = ca
            .sign_csr(&csr, &name, "127.0.0.1".parse().unwrap(), Role::Worker)
            .unwrap();
        assert_eq!(PeerIdentity::from_cert(&cert).unwrap().role, Role::Worker);
        let mut broken = csr.clone();
        let last = broken.len() - 1;
        broken[last] ^= 0xff;
        let err = ca
            .sign_csr(&broken, &name, "127.0.0.1".parse().unwrap(), Role::Worker)
            .unwrap_err();
        assert!(
            err.to_string().contains("signing request is invalid"),
            "{err}"
        );
        assert!(
            ca.sign_csr(
                b"garbage",
                &name,
                "127.0.0.1".parse().unwrap(),
                Role::Worker
            )
            .is_err()
        );
    }

    #[test]
    fn pem_round_trip() {
        let ca = ClusterCa::generate("c1").unwrap();
        let pem = cert_to_pem(&ca.cert_der);
        assert_eq!(cert_from_pem(pem.as_bytes()).unwrap(), ca.cert_der);
        let again = ClusterCa::from_pem(pem.as_bytes(), &ca.key.serialize_pem()).unwrap();
        assert_eq!(again.cert_der, ca.cert_der);
        // Another CA's key is not this certificate's.
        let other = ClusterCa::generate("c2").unwrap();
        let err = ClusterCa::from_pem(pem.as_bytes(), &other.key.serialize_pem())
            .err()
            .expect("another CA's key is refused");
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
