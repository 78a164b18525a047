//! Secure random bytes for secrets, token ids and serial numbers (ring's system RNG).

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// Fills `buf` from the OS random source.
pub fn fill(buf: &mut [u8]) -> Result<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| Error::Pki("the OS random source failed".into()))
}

/// Returns `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}
