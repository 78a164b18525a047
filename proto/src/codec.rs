//! The one codec: frames for the wire and for the disk.
//!
//! ## Frame
//! ```text
//! magic "HLEY" (4) | version u16 BE (2) | code u16 BE (2) | body length u32 BE (4) | body
//! ```
//! The body is bincode (standard configuration, serde) with a limit equal to the frame kind's
//! [`Limit`]. Wire frames carry [`PROTOCOL_VERSION`]; disk records carry [`DISK_FORMAT_VERSION`].
//!
//! ## Guarantees
//! - A truncated frame, a frame over its limit, an unknown code, another version or trailing bytes
//!   is an [`Error`], never a panic.
//! - The header is checked before any body byte is read, so a reader never buffers more than the
//!   limit, whatever length a peer claims; bincode's own limit bounds every length inside the body.
//!
//! ## Non-goals
//! No streaming of bodies: a frame is read whole (bounded). Large artifacts travel as many frames.

use std::cell::Cell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::message::Message;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HLEY";
/// The wire protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 7;
/// The data-dir record format this build writes (and reads).
pub const DISK_FORMAT_VERSION: u16 = 3;
/// The oldest record format this build still reads. Each format since only appended fields to
/// `ServiceSpec` (3: `log_max`), which take their defaults when a record of an older format is
/// read (see [`reading_disk_format`]).
pub const OLDEST_DISK_FORMAT: u16 = 2;
/// The version of [`Handover`](crate::handover::Handover) frames: fixed for good, so that
/// any two builds can hand a node over (see [`crate::handover`]).
pub const HANDOVER_VERSION: u16 = 0xFF01;
/// The code of a handover frame.
const HANDOVER_CODE: u16 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 12;

/// How large a frame of a given kind may be (body bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Gossip: chitchat packs up to 65,507 bytes; a little room for the wrapper.
    Gossip,
    /// Requests and replies between nodes and from the CLI: 16 MiB.
    Rpc,
    /// Records in the data dir: 16 MiB.
    Disk,
    /// What a client without a certificate may send (a join request): 16 KiB, so a stranger
    /// makes a node buffer little before it has proven anything.
    Join,
}

const GOSSIP_LIMIT: usize = 65_507 + 64;
const RPC_LIMIT: usize = 16 * 1024 * 1024;
const JOIN_LIMIT: usize = 16 * 1024;

impl Limit {
    /// The limit in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Limit::Gossip => GOSSIP_LIMIT,
            Limit::Rpc | Limit::Disk => RPC_LIMIT,
            Limit::Join => JOIN_LIMIT,
        }
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol or disk-format version.
    pub version: u16,
    /// Message or record code.
    pub code: u16,
    /// Body length in bytes (already checked against the limit).
    pub len: u32,
}

impl Header {
    /// Parses and checks a header: magic, version, and the claimed length against `limit`.
    pub fn parse(bytes: &[u8], expected_version: u16, limit: Limit) -> Result<Self, Error> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Truncated {
                need: HEADER_LEN as u64,
                have: bytes.len() as u64,
            })?;
        let magic = [header[0], header[1], header[2], header[3]];
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = u16::from_be_bytes([header[4], header[5]]);
        if version != expected_version {
            return Err(Error::UnsupportedVersion {
                got: version,
                ours: expected_version,
            });
        }
        let code = u16::from_be_bytes([header[6], header[7]]);
        let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        if len as usize > limit.bytes() {
            return Err(Error::TooLarge {
                len: u64::from(len),
                limit: limit.bytes() as u64,
            });
        }
        Ok(Self { version, code, len })
    }
}

/// Encodes a wire message into one frame.
pub fn encode_message(message: &Message, limit: Limit) -> Result<Vec<u8>, Error> {
    let body = match message {
        Message::Gossip(m) => encode_body(m, limit)?,
        Message::ErrorReply(m) => encode_body(m, limit)?,
        Message::JoinRequest(m) => encode_body(m, limit)?,
        Message::JoinResponse(m) => encode_body(m, limit)?,
        Message::AdminRequest(m) => encode_body(m, limit)?,
        Message::AdminResponse(m) => encode_body(m, limit)?,
        Message::Step(m) => encode_body(m, limit)?,
        Message::StepReply(m) => encode_body(m, limit)?,
        Message::Peer(m) => encode_body(m, limit)?,
        Message::PeerReply(m) => encode_body(m, limit)?,
        Message::ProxyOpen(m) => encode_body(m, limit)?,
        Message::ProxyAccept => encode_body(&(), limit)?,
    };
    Ok(frame(PROTOCOL_VERSION, message.code(), body))
}

/// Decodes the body of a wire frame whose header was already parsed.
pub fn decode_message_body(header: &Header, body: &[u8], limit: Limit) -> Result<Message, Error> {
    check_body_len(header, body)?;
    Ok(match header.code {
        1 => Message::Gossip(decode_body(body, limit)?),
        2 => Message::ErrorReply(decode_body(body, limit)?),
        10 => Message::JoinRequest(decode_body(body, limit)?),
        11 => Message::JoinResponse(decode_body(body, limit)?),
        20 => Message::AdminRequest(decode_body(body, limit)?),
        21 => Message::AdminResponse(decode_body(body, limit)?),
        30 => Message::Step(decode_body(body, limit)?),
        31 => Message::StepReply(decode_body(body, limit)?),
        40 => Message::Peer(decode_body(body, limit)?),
        41 => Message::PeerReply(decode_body(body, limit)?),
        50 => Message::ProxyOpen(decode_body(body, limit)?),
        51 => {
            decode_body::<()>(body, limit)?;
            Message::ProxyAccept
        }
        other => return Err(Error::UnknownCode(other)),
    })
}

/// Decodes one whole wire frame (header and body, nothing after).
pub fn decode_message(bytes: &[u8], limit: Limit) -> Result<Message, Error> {
    let header = Header::parse(bytes, PROTOCOL_VERSION, limit)?;
    decode_message_body(&header, &bytes[HEADER_LEN..], limit)
}

/// A value's body encoding, for digests over it: the same value always encodes to the same
/// bytes (bincode's standard configuration has no maps of unordered keys or padding).
pub fn digest_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    encode_body(value, Limit::Disk)
}

/// A spec's bytes for digests (release pins): its codec bytes, but without `log_max` when that
/// is the default, so the pin of a spec with the default is the one a build before `log_max`
/// (disk format 2) computed, and pins journaled then still match after an upgrade.
pub fn spec_digest_bytes(spec: &crate::spec::ServiceSpec) -> Result<Vec<u8>, Error> {
    let mut bytes = encode_body(spec, Limit::Disk)?;
    if spec.log_max == crate::size::DEFAULT_LOG_MAX {
        // `log_max` is the spec's last field, so its encoding is the last bytes.
        let tail = encode_body(&spec.log_max, Limit::Disk)?.len();
        bytes.truncate(bytes.len().saturating_sub(tail));
    }
    Ok(bytes)
}

/// Encodes an upgrade step into one frame (see [`HANDOVER_VERSION`]).
pub fn encode_handover(message: &crate::handover::Handover) -> Result<Vec<u8>, Error> {
    let body = encode_body(message, Limit::Join)?;
    Ok(frame(HANDOVER_VERSION, HANDOVER_CODE, body))
}

/// Decodes the body of a handover frame whose header was already parsed.
pub fn decode_handover_body(
    header: &Header,
    body: &[u8],
) -> Result<crate::handover::Handover, Error> {
    if header.code != HANDOVER_CODE {
        return Err(Error::UnknownCode(header.code));
    }
    check_body_len(header, body)?;
    decode_body(body, Limit::Join)
}

/// Decodes one whole handover frame.
pub fn decode_handover(bytes: &[u8]) -> Result<crate::handover::Handover, Error> {
    let header = Header::parse(bytes, HANDOVER_VERSION, Limit::Join)?;
    decode_handover_body(&header, &bytes[HEADER_LEN..])
}

/// A type stored as a record in the data dir.
pub trait Record: Serialize + DeserializeOwned {
    /// The record's stable code.
    const CODE: u16;
}

/// Encodes a data-dir record.
pub fn encode_record<R: Record>(record: &R) -> Result<Vec<u8>, Error> {
    let body = encode_body(record, Limit::Disk)?;
    Ok(frame(DISK_FORMAT_VERSION, R::CODE, body))
}

/// Decodes a data-dir record, checking that it is of type `R`. A record of an older format
/// (down to [`OLDEST_DISK_FORMAT`]) is read too, fields added since taking their defaults.
pub fn decode_record<R: Record>(bytes: &[u8]) -> Result<R, Error> {
    let header = match Header::parse(bytes, DISK_FORMAT_VERSION, Limit::Disk) {
        Err(Error::UnsupportedVersion { got, .. })
            if (OLDEST_DISK_FORMAT..DISK_FORMAT_VERSION).contains(&got) =>
        {
            Header::parse(bytes, got, Limit::Disk)?
        }
        parsed => parsed?,
    };
    if header.code != R::CODE {
        return Err(Error::WrongRecord {
            got: header.code,
            expected: R::CODE,
        });
    }
    let body = &bytes[HEADER_LEN..];
    check_body_len(&header, body)?;
    let _format = ReadingFormat::set(header.version);
    decode_body(body, Limit::Disk)
}

thread_local! {
    /// The format of the record being decoded on this thread; this build's own otherwise (wire
    /// frames included). Decoding is synchronous, so no other decode runs on the thread in
    /// between.
    static READING: Cell<u16> = const { Cell::new(DISK_FORMAT_VERSION) };
}

/// The disk format of the record being decoded on this thread ([`DISK_FORMAT_VERSION`] when
/// none is): a field appended in format N takes its default below N, without reading a byte.
pub(crate) fn reading_disk_format() -> u16 {
    READING.with(Cell::get)
}

/// Marks this thread as decoding a record of a format until dropped (also on a panic), then
/// puts back what was there.
struct ReadingFormat(u16);

impl ReadingFormat {
    fn set(version: u16) -> Self {
        ReadingFormat(READING.with(|f| f.replace(version)))
    }
}

impl Drop for ReadingFormat {
    fn drop(&mut self) {
        READING.with(|f| f.set(self.0));
    }
}

fn frame(version: u16, code: u16, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    // encode_body already refused bodies over the limit, which is below u32::MAX.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn check_body_len(header: &Header, body: &[u8]) -> Result<(), Error> {
    let need = header.len as usize;
    match body.len() {
        have if have < need => Err(Error::Truncated {
            need: need as u64,
            have: have as u64,
        }),
        have if have > need => Err(Error::TrailingBytes(have - need)),
        _ => Ok(()),
    }
}

fn encode_body<T: Serialize>(value: &T, limit: Limit) -> Result<Vec<u8>, Error> {
    let body = match limit {
        Limit::Gossip => bincode::serde::encode_to_vec(
            value,
            bincode::config::standard().with_limit::<GOSSIP_LIMIT>(),
        ),
        Limit::Rpc | Limit::Disk => bincode::serde::encode_to_vec(
            value,
            bincode::config::standard().with_limit::<RPC_LIMIT>(),
        ),
        Limit::Join => bincode::serde::encode_to_vec(
            value,
            bincode::config::standard().with_limit::<JOIN_LIMIT>(),
        ),
    }
    .map_err(|e| Error::Encode(e.to_string()))?;
    if body.len() > limit.bytes() {
        return Err(Error::TooLarge {
            len: body.len() as u64,
            limit: limit.bytes() as u64,
        });
    }
    Ok(body)
}

fn decode_body<T: DeserializeOwned>(body: &[u8], limit: Limit) -> Result<T, Error> {
    let (value, used) = match limit {
        Limit::Gossip => bincode::serde::decode_from_slice(
            body,
            bincode::config::standard().with_limit::<GOSSIP_LIMIT>(),
        ),
        Limit::Rpc | Limit::Disk => bincode::serde::decode_from_slice(
            body,
            bincode::config::standard().with_limit::<RPC_LIMIT>(),
        ),
        Limit::Join => bincode::serde::decode_from_slice(
            body,
            bincode::config::standard().with_limit::<JOIN_LIMIT>(),
        ),
    }
    .map_err(|e| Error::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(Error::TrailingBytes(body.len() - used));
    }
    Ok(value)
}
