//! The crate's one error type.

/// Everything that can go wrong while decoding or encoding Halley data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes do not start with Halley's magic: not a Halley peer, or garbage on the port.
    #[error(
        "not a Halley frame (bad magic {found:02x?}); is something other than halley-node talking to this port?"
    )]
    BadMagic {
        /// The four bytes found where the magic should be.
        found: [u8; 4],
    },
    /// The frame was written by another protocol or format version.
    #[error(
        "peer or file speaks version {got}, this halley-node speaks version {ours}; run the same halley-node release on both sides"
    )]
    UnsupportedVersion {
        /// The version in the frame.
        got: u16,
        /// The version this build speaks.
        ours: u16,
    },
    /// The message code is not one this build knows.
    #[error("unknown message code {0}; the sender is probably a newer halley-node")]
    UnknownCode(u16),
    /// The frame claims (or would need) more bytes than its kind allows.
    #[error("frame of {len} bytes is over the {limit}-byte limit for this kind of message")]
    TooLarge {
        /// The claimed or needed length.
        len: u64,
        /// The limit for this kind of frame.
        limit: u64,
    },
    /// Fewer bytes arrived than the frame needs.
    #[error("frame truncated: needed {need} bytes, got {have}")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The body decoded but bytes were left over.
    #[error("frame body has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The body is not a valid encoding of the message its code names.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// A record read from disk has another type than the one asked for.
    #[error("record has code {got}, expected {expected}: the file is not what its name says")]
    WrongRecord {
        /// Code found.
        got: u16,
        /// Code expected.
        expected: u16,
    },
    /// A value could not be encoded (should not happen for well-formed values).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// A join token could not be parsed.
    #[error("invalid join token: {0}")]
    BadToken(String),
    /// A node name, service name or release version breaks its naming rules.
    #[error("invalid {kind} {name:?}: {why}")]
    BadName {
        /// What kind of name: "node name", "service name", "release version".
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A gossip value could not be parsed.
    #[error("malformed gossip value for key {key:?}: {value:?}")]
    BadGossipValue {
        /// The key.
        key: String,
        /// The value (gossip values never carry secrets).
        value: String,
    },
}
