//! Join-token bookkeeping: issuing, checking and spending tokens. Pure: the caller passes `now`, the
//! random id and secret, and persists the [`TokenBook`] afterwards.
//!
//! The book stores only SHA-256 of each secret, compared in constant time, so a stolen `tokens.rec`
//! does not let anyone join.

use core::net::SocketAddr;

use halley_proto::disk::{TokenBook, TokenRecord};
use halley_proto::message::{ErrorKind, ErrorReply};
use halley_proto::token::{TokenIdBytes, TokenSecretBytes};
use halley_proto::{JoinToken, Role};

/// SHA-256 of `bytes`: how a token names its CA and how the book keeps its secret.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What a token grants: for how long, how many joins, and the role of the nodes it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Lifetime in seconds.
    pub ttl_secs: u64,
    /// Joins it allows; `None` for unlimited until expiry.
    pub uses: Option<u32>,
    /// The role of the nodes it admits.
    pub role: Role,
}

/// Adds a token to the book and returns its text form. Expired and spent tokens are pruned.
pub fn issue(
    book: &mut TokenBook,
    ca_der: &[u8],
    addr: SocketAddr,
    grant: Grant,
    now_ms: u64,
    id: TokenIdBytes,
    secret: TokenSecretBytes,
) -> JoinToken {
    prune(book, now_ms);
    book.tokens.push(TokenRecord {
        id,
        secret_sha256: sha256(&secret),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(grant.ttl_secs.saturating_mul(1000)),
        uses_left: grant.uses,
        role: grant.role,
    });
    JoinToken {
        ca_hash: sha256(ca_der),
        id,
        secret,
        addr,
    }
}

/// Checks a presented token without spending it; returns its index in the book.
pub fn check(
    book: &TokenBook,
    id: &TokenIdBytes,
    secret: &TokenSecretBytes,
    now_ms: u64,
) -> Result<usize, ErrorReply> {
    let reply = |kind, message: &str| ErrorReply {
        kind,
        message: message.to_owned(),
    };
    let index = book
        .tokens
        .iter()
        .position(|t| &t.id == id)
        .ok_or_else(|| reply(ErrorKind::TokenUnknown, "this node never issued that token (or it was pruned after expiry); ask for a new one with 'halley-node token create' on a cluster node"))?;
    let record = &book.tokens[index];
    if !constant_time_eq(&record.secret_sha256, &sha256(secret)) {
        return Err(reply(
            ErrorKind::TokenSecretWrong,
            "the token's secret is wrong; copy the whole token again",
        ));
    }
    if now_ms >= record.expires_ms {
        return Err(reply(
            ErrorKind::TokenExpired,
            "the token has expired; ask for a new one with 'halley-node token create'",
        ));
    }
    if record.uses_left == Some(0) {
        return Err(reply(
            ErrorKind::TokenUsedUp,
            "the token has been used as many times as it allows; ask for a new one with 'halley-node token create'",
        ));
    }
    Ok(index)
}

/// Spends one use of the token at `index` (as returned by [`check`]).
pub fn spend(book: &mut TokenBook, index: usize) {
    if let Some(uses) = book
        .tokens
        .get_mut(index)
        .and_then(|t| t.uses_left.as_mut())
    {
        *uses = uses.saturating_sub(1);
    }
}

/// Removes expired and spent tokens.
pub fn prune(book: &mut TokenBook, now_ms: u64) {
    book.tokens
        .retain(|t| now_ms < t.expires_ms && t.uses_left != Some(0));
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "127.0.0.1:7946";

    fn book_with(uses: Option<u32>) -> (TokenBook, JoinToken) {
        let mut book = TokenBook::default();
        let token = issue(
            &mut book,
            b"ca",
            ADDR.parse().unwrap(),
            Grant {
                ttl_secs: 60,
                uses,
                role: Role::Worker,
            },
            1_000,
            [1; 8],
            [2; 16],
        );
        (book, token)
    }

    #[test]
    fn token_pins_ca_and_book_keeps_only_a_hash() {
        let (book, token) = book_with(None);
        assert_eq!(token.ca_hash, sha256(b"ca"));
        assert_ne!(book.tokens[0].secret_sha256[..16], token.secret[..]);
        assert_eq!(book.tokens[0].expires_ms, 61_000);
        assert_eq!(book.tokens[0].role, Role::Worker);
    }

    #[test]
    fn expired_wrong_unknown_and_spent_tokens_are_refused() {
        let (mut book, token) = book_with(Some(1));
        let kind = |r: Result<usize, ErrorReply>| r.unwrap_err().kind;
        assert_eq!(
            kind(check(&book, &[9; 8], &token.secret, 2_000)),
            ErrorKind::TokenUnknown
        );
        assert_eq!(
            kind(check(&book, &token.id, &[0; 16], 2_000)),
            ErrorKind::TokenSecretWrong
        );
        assert_eq!(
            kind(check(&book, &token.id, &token.secret, 61_000)),
            ErrorKind::TokenExpired
        );
        let index = check(&book, &token.id, &token.secret, 2_000).unwrap();
        spend(&mut book, index);
        assert_eq!(
            kind(check(&book, &token.id, &token.secret, 2_000)),
            ErrorKind::TokenUsedUp
        );
    }

    #[test]
    fn unlimited_tokens_work_until_expiry_and_prune_drops_dead_ones() {
        let (mut book, token) = book_with(None);
        for _ in 0..5 {
            let index = check(&book, &token.id, &token.secret, 2_000).unwrap();
            spend(&mut book, index);
        }
        prune(&mut book, 60_999);
        assert_eq!(book.tokens.len(), 1);
        prune(&mut book, 61_000);
        assert!(book.tokens.is_empty());
    }
}
