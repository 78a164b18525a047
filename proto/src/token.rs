//! Join tokens: the one string an operator copies from `init` (or `token create`) to `join`.
//!
//! Text form: `HLY1.<sha256 of the CA certificate, 64 hex>.<token id, 16 hex>.<secret, 32 hex>@<ip:port>`.
//! The CA hash lets the joiner pin the cluster CA before it sends the secret (as k3s does); the id
//! names the token on the issuing node, which stores only a hash of the secret; the address is where
//! to join. A token is a credential: it is never logged and never gossiped.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::{Error, hex};

/// The version prefix of the current token format.
pub const TOKEN_PREFIX: &str = "HLY1";

/// A token id: names a token on the issuing node.
pub type TokenIdBytes = [u8; 8];
/// A token secret: proves the holder was given the token.
pub type TokenSecretBytes = [u8; 16];

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_hash: [u8; 32],
    /// Which token this is, on the node that issued it.
    pub id: TokenIdBytes,
    /// The secret; only its hash is stored on the issuing node.
    pub secret: TokenSecretBytes,
    /// Where the issuing node listens for joins.
    pub addr: SocketAddr,
}

impl fmt::Debug for JoinToken {
    // The secret stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &hex::encode(&self.ca_hash))
            .field("id", &hex::encode(&self.id))
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}@{}",
            hex::encode(&self.ca_hash),
            hex::encode(&self.id),
            hex::encode(&self.secret),
            self.addr
        )
    }
}

impl FromStr for JoinToken {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadToken(why.to_owned());
        let text = text.trim();
        let (body, addr) = text
            .rsplit_once('@')
            .ok_or_else(|| bad("it has no '@<address>' part; copy the whole line printed by 'halley-node init' or 'token create'"))?;
        let mut parts = body.split('.');
        let prefix = parts.next().unwrap_or_default();
        if prefix != TOKEN_PREFIX {
            return Err(if prefix.starts_with("HLY") {
                bad(&format!(
                    "it is a {prefix:?} token and this halley-node understands {TOKEN_PREFIX:?}; use the same release on both nodes"
                ))
            } else {
                bad(&format!("it does not start with {TOKEN_PREFIX:?}"))
            });
        }
        let fields: Vec<&str> = parts.collect();
        let [ca_hash, id, secret] = fields.as_slice() else {
            return Err(bad(
                "it should have 4 '.'-separated parts before '@'; was it cut off when copied?",
            ));
        };
        let ca_hash = hex::decode_array::<32>(ca_hash)
            .ok_or_else(|| bad("the CA hash is not 64 hex digits"))?;
        let id =
            hex::decode_array::<8>(id).ok_or_else(|| bad("the token id is not 16 hex digits"))?;
        let secret = hex::decode_array::<16>(secret)
            .ok_or_else(|| bad("the secret is not 32 hex digits"))?;
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|_| bad(&format!("the address {addr:?} is not an ip:port")))?;
        Ok(Self {
            ca_hash,
            id,
            secret,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinToken {
        JoinToken {
            ca_hash: [7; 32],
            id: [1, 2, 3, 4, 5, 6, 7, 8],
            secret: [9; 16],
            addr: "127.0.0.1:7946".parse().unwrap(),
        }
    }

    #[test]
    fn round_trips_through_text() {
        let token = sample();
        let text = token.to_string();
        assert!(text.starts_with("HLY1."));
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert_eq!(format!("  {text}\n").parse::<JoinToken>().unwrap(), token);
    }

    #[test]
    fn debug_hides_the_secret() {
        let debug = format!("{:?}", sample());
        assert!(!debug.contains(&hex::encode(&[9; 16])));
    }

    #[test]
    fn malformed_tokens_name_the_problem() {
        let good = sample().to_string();
        let cases = [
            ("", "no '@"),
            (&good[..good.len() - 20], "address"),
            (&good.replacen("HLY1", "HLY2", 1), "HLY2"),
            (&good.replacen("HLY1", "XYZ", 1), "does not start"),
            (&good.replacen(".0102", ".zz02", 1), "token id"),
            (&good.replacen(&hex::encode(&[7; 32]), "77", 1), "CA hash"),
            (&good.replacen(&hex::encode(&[9; 16]), "99", 1), "secret"),
            (
                &good.replacen(".0102030405060708", "", 1),
                "4 '.'-separated",
            ),
        ];
        for (text, expect) in cases {
            let err = text.parse::<JoinToken>().unwrap_err().to_string();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }
}
