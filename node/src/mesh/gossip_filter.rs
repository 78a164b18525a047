//! What a member may say in gossip, enforced on every chitchat message before chitchat reads it.
//!
//! chitchat relays every node's state through every other, unsigned: any member could otherwise
//! tell the cluster that another node left or drains, give it key-values at a version so high
//! that the real node's updates are ignored from then on, or announce members that do not exist
//! (or a newer generation of a real one). The rule is [`gossip_trust::may_speak_for`]: an admin
//! relays anyone's state (it holds the CA key, so it could mint any member's certificate anyway);
//! any other sender speaks only for itself.
//!
//! ## Guarantees
//! - From a sender that may not relay, a delta keeps only the sender's own node entries, and a
//!   digest keeps the sender's own entries plus, for nodes this filter already admitted, the
//!   versions it says it holds (so nobody resends what it has) with the heartbeat zeroed (which
//!   chitchat never counts). A node this node has not heard of from itself or an admin is never
//!   created from another worker's word.
//! - The delta stream is inflated under a bound ([`MAX_DELTA_BYTES`] in all, one 64 KiB block at
//!   a time) before anything is kept, so a small compressed message cannot make a node allocate
//!   hundreds of megabytes; a message over it, or malformed, is dropped whole.
//! - What is kept is handed to chitchat byte-for-byte as the sender wrote it (in uncompressed
//!   blocks when anything was dropped), so chitchat's own checks still apply.
//!
//! ## Non-goals
//! A worker may still say anything about itself, and an admin about anyone; the layers that read
//! gossip decide what a node's own word counts for (see `engine::gossip_trust`). Outgoing
//! messages are not filtered: an honest worker's relays are dropped by the receiver, and the
//! admins (which every node gossips with) carry the state instead.

use std::collections::HashSet;

use chitchat::{ChitchatId, ChitchatMessage, Deserializable, Serializable};
use halley_proto::{NodeName, Role};

use crate::engine::gossip_trust;
use crate::error::{Error, Result};

/// The most a delta stream may inflate to. chitchat packs a message into 65,507 bytes in blocks
/// of 16 KiB before compression; a small cluster's whole state is a few tens of KiB.
pub const MAX_DELTA_BYTES: usize = 1 << 20;

/// The most node ids remembered as admitted (far above any cluster Halley is for; when full,
/// another worker's digest entries about unknown ids are dropped, which is always safe).
const MAX_KNOWN: usize = 4096;

const MAGIC: u16 = 45_139;
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
const OP_NODE: u8 = 0;
const OP_KEY_VALUE: u8 = 1;
const OP_SET_MAX_VERSION: u8 = 2;
const BLOCK_END: u8 = 0;
const BLOCK_COMPRESSED: u8 = 1;
const BLOCK_PLAIN: u8 = 2;

/// The per-socket filter: it remembers which node ids came from a trusted word.
#[derive(Default)]
pub struct GossipFilter {
    known: HashSet<ChitchatId>,
}

/// Who sent a message, from its mesh certificate.
pub struct Sender<'a> {
    /// The certificate's node name.
    pub name: &'a NodeName,
    /// The certificate's role.
    pub role: Role,
}

impl Sender<'_> {
    fn speaks_for(&self, id: &ChitchatId) -> bool {
        gossip_trust::may_speak_for(self.name, self.role, &id.node_id)
    }
}

impl GossipFilter {
    /// The message `payload` as chitchat may take it from `sender`.
    pub fn admit(&mut self, payload: &[u8], sender: &Sender<'_>) -> Result<ChitchatMessage> {
        let bad = |what: &str| Error::Protocol(format!("gossip message: {what}"));
        if payload.len() < 4 || u16::from_le_bytes([payload[0], payload[1]]) != MAGIC {
            return Err(bad("not a chitchat message"));
        }
        let (head, mut rest) = payload.split_at(4);
        let mut out = head.to_vec();
        match head[3] {
            SYN => {
                self.digest(&mut rest, sender, &mut out)?;
                out.extend_from_slice(rest); // the cluster id
            }
            SYN_ACK => {
                self.digest(&mut rest, sender, &mut out)?;
                self.delta(&mut rest, sender, &mut out)?;
            }
            ACK => self.delta(&mut rest, sender, &mut out)?,
            _ => out.extend_from_slice(rest),
        }
        ChitchatMessage::deserialize(&mut out.as_slice()).map_err(|e| bad(&e.to_string()))
    }

    fn remember(&mut self, id: &ChitchatId) {
        if self.known.len() < MAX_KNOWN || self.known.contains(id) {
            self.known.insert(id.clone());
        }
    }

    /// Copies the digest at the front of `buf` into `out`, keeping what `sender` may say.
    fn digest(&mut self, buf: &mut &[u8], sender: &Sender<'_>, out: &mut Vec<u8>) -> Result<()> {
        let count = read::<u16>(buf)?;
        let mut kept = Vec::new();
        let mut entries = 0u16;
        for _ in 0..count {
            let id = read::<ChitchatId>(buf)?;
            let heartbeat = read::<u64>(buf)?;
            let (gc, max) = (read::<u64>(buf)?, read::<u64>(buf)?);
            let heartbeat = if sender.speaks_for(&id) {
                self.remember(&id);
                heartbeat
            } else if self.known.contains(&id) {
                0
            } else {
                continue;
            };
            entries += 1;
            id.serialize(&mut kept);
            for n in [heartbeat, gc, max] {
                n.serialize(&mut kept);
            }
        }
        entries.serialize(out);
        out.extend_from_slice(&kept);
        Ok(())
    }

    /// Copies the delta at the front of `buf` into `out`, keeping the node entries `sender` may
    /// speak for.
    fn delta(&mut self, buf: &mut &[u8], sender: &Sender<'_>, out: &mut Vec<u8>) -> Result<()> {
        let start = *buf;
        let stream = inflate(buf)?;
        let raw = &start[..start.len() - buf.len()];
        let mut ops = stream.as_slice();
        let mut kept = Vec::with_capacity(stream.len());
        let mut keep = false;
        while !ops.is_empty() {
            let op = ops;
            let tag = read::<u8>(&mut ops)?;
            match tag {
                OP_NODE => {
                    let id = read::<ChitchatId>(&mut ops)?;
                    read::<u64>(&mut ops)?;
                    read::<u64>(&mut ops)?;
                    keep = sender.speaks_for(&id);
                    if keep {
                        self.remember(&id);
                    }
                }
                OP_KEY_VALUE => {
                    read::<String>(&mut ops)?;
                    read::<String>(&mut ops)?;
                    read::<u64>(&mut ops)?;
                    read::<u8>(&mut ops)?;
                }
                OP_SET_MAX_VERSION => {
                    read::<u64>(&mut ops)?;
                }
                other => return Err(Error::Protocol(format!("gossip delta: op tag {other}"))),
            }
            if keep {
                kept.extend_from_slice(&op[..op.len() - ops.len()]);
            }
        }
        if kept.len() == stream.len() {
            out.extend_from_slice(raw);
        } else {
            for block in kept.chunks(usize::from(u16::MAX)) {
                out.push(BLOCK_PLAIN);
                (block.len() as u16).serialize(out);
                out.extend_from_slice(block);
            }
            out.push(BLOCK_END);
        }
        Ok(())
    }
}

fn read<T: Deserializable>(buf: &mut &[u8]) -> Result<T> {
    T::deserialize(buf).map_err(|e| Error::Protocol(format!("gossip message: {e}")))
}

/// Inflates chitchat's block stream at the front of `buf` (consuming it), within
/// [`MAX_DELTA_BYTES`].
fn inflate(buf: &mut &[u8]) -> Result<Vec<u8>> {
    let too_big = || {
        Error::Protocol(format!(
            "gossip delta inflates past {MAX_DELTA_BYTES} bytes; dropped"
        ))
    };
    let mut stream = Vec::new();
    let mut block = vec![0u8; usize::from(u16::MAX)];
    loop {
        let tag = read::<u8>(buf)?;
        if tag == BLOCK_END {
            return Ok(stream);
        }
        let len = usize::from(read::<u16>(buf)?);
        let Some(bytes) = buf.get(..len) else {
            return Err(Error::Protocol("gossip delta: block cut short".into()));
        };
        *buf = &buf[len..];
        let inflated = match tag {
            BLOCK_COMPRESSED => {
                let n = zstd::bulk::decompress_to_buffer(bytes, &mut block[..])
                    .map_err(|e| Error::Protocol(format!("gossip delta: bad block: {e}")))?;
                &block[..n]
            }
            BLOCK_PLAIN => bytes,
            other => return Err(Error::Protocol(format!("gossip delta: block tag {other}"))),
        };
        if stream.len() + inflated.len() > MAX_DELTA_BYTES {
            return Err(too_big());
        }
        stream.extend_from_slice(inflated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ChitchatId {
        ChitchatId::new(name, 1, "127.0.0.1:7946".parse().unwrap())
    }

    fn header(kind: u8) -> Vec<u8> {
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend([0, kind]);
        bytes
    }

    /// A SynAck whose digest and delta name each of `ids` (heartbeat 42, one key `k` each), in
    /// chitchat 0.11's layout; the delta in one compressed block, as chitchat writes it.
    fn syn_ack(ids: &[&ChitchatId]) -> Vec<u8> {
        let mut bytes = header(SYN_ACK);
        (ids.len() as u16).serialize(&mut bytes);
        let mut ops = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            id.serialize(&mut bytes);
            [42u64, 0, 9].iter().for_each(|n| n.serialize(&mut bytes));
            ops.push(OP_NODE);
            id.serialize(&mut ops);
            [0u64, 0].iter().for_each(|n| n.serialize(&mut ops));
            ops.push(OP_KEY_VALUE);
            "k".serialize(&mut ops);
            format!("value-{i}").serialize(&mut ops);
            5u64.serialize(&mut ops);
            ops.push(0);
        }
        let block = zstd::bulk::compress(&ops, 0).unwrap();
        bytes.push(BLOCK_COMPRESSED);
        (block.len() as u16).serialize(&mut bytes);
        bytes.extend(block);
        bytes.push(BLOCK_END);
        bytes
    }

    /// The digest and delta of a SynAck as chitchat reads them back (its Debug output names each
    /// id `name:generation:addr` and shows each value).
    fn shown(message: &ChitchatMessage) -> (String, String) {
        match message {
            ChitchatMessage::SynAck { digest, delta } => {
                (format!("{digest:?}"), format!("{delta:?}"))
            }
            other => panic!("not a SynAck: {other:?}"),
        }
    }

    #[test]
    fn a_worker_speaks_only_for_itself_and_an_admin_for_anyone() {
        let (n1, n2, n3) = (id("n1"), id("n2"), id("n3"));
        let name = |n: &str| NodeName::parse(n).unwrap();
        let (w, a) = (name("n3"), name("n1"));
        let worker = Sender {
            name: &w,
            role: Role::Worker,
        };
        let admin = Sender {
            name: &a,
            role: Role::Admin,
        };
        let mut filter = GossipFilter::default();
        let (digest, delta) = shown(&filter.admit(&syn_ack(&[&n2, &n3]), &worker).unwrap());
        assert!(
            !digest.contains("n2:1:") && digest.contains("n3:1:"),
            "{digest}"
        );
        assert!(
            !delta.contains("value-0") && delta.contains("value-1"),
            "{delta}"
        );

        // An admin relays n2 (the message passes unchanged); from then on a worker's digest may
        // say which versions of n2 it holds, but its heartbeat for n2 never counts.
        let (digest, delta) = shown(&filter.admit(&syn_ack(&[&n1, &n2]), &admin).unwrap());
        assert!(
            digest.contains("n2:1:") && delta.contains("value-1"),
            "{delta}"
        );
        let (digest, delta) = shown(&filter.admit(&syn_ack(&[&n2, &n3]), &worker).unwrap());
        let n2_entry = digest.split("n2:1:").nth(1).unwrap_or_default();
        let n2_entry = n2_entry.split("n3:1:").next().unwrap_or_default();
        assert!(n2_entry.contains("Heartbeat(0)"), "{digest}");
        assert!(
            !delta.contains("value-0") && delta.contains("value-1"),
            "{delta}"
        );
    }

    #[test]
    fn a_delta_that_inflates_past_the_bound_is_dropped_whole() {
        let mut bytes = header(ACK);
        let zeros = vec![0u8; 60_000];
        let block = zstd::bulk::compress(&zeros, 19).unwrap();
        for _ in 0..=(MAX_DELTA_BYTES / zeros.len()) {
            bytes.push(BLOCK_COMPRESSED);
            (block.len() as u16).serialize(&mut bytes);
            bytes.extend_from_slice(&block);
        }
        bytes.push(BLOCK_END);
        let name = NodeName::parse("n1").unwrap();
        let sender = Sender {
            name: &name,
            role: Role::Admin,
        };
        let err = GossipFilter::default().admit(&bytes, &sender).unwrap_err();
        assert!(err.to_string().contains("inflates past"), "{err}");
    }
}
