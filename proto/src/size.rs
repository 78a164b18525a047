//! Sizes in bytes as `halley.toml` writes them (`"8MiB"`), and the one field of a spec that is
//! one: `log_max`.
//!
//! ## Guarantees
//! - TOML takes `"512KiB"`, `"8MiB"`, `"1GiB"`, `"4096B"` or a bare number of bytes; bincode
//!   takes a u64. A size that overflows or has an unknown unit is refused with the units to use.
//! - `log_max` (added in disk format 3) read from a record of format 2, written before the
//!   field existed, takes its default without reading a byte: see [`crate::codec`].
//!
//! ## What it does not do
//! No decimal units: `MB` would be ambiguous next to `MiB`, and an ambiguous size is refused.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

impl ByteSize {
    /// Parses `"8MiB"`, `"512KiB"`, `"1GiB"`, `"4096B"` or a bare number of bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (n, unit) = crate::quantity::number_and_unit(text).ok_or_else(|| {
            format!("{text:?} is not a size; write e.g. \"512KiB\", \"8MiB\" or \"1GiB\"")
        })?;
        let factor = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!("{text:?} has an unknown unit {unit:?}; use B, KiB, MiB or GiB")
                })?
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large a size"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The largest unit that writes it exactly, so the text parses back to the same size.
        let (name, factor) = UNITS
            .iter()
            .find(|(_, factor)| self.0 != 0 && self.0.is_multiple_of(*factor))
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{name}", self.0 / factor)
    }
}

crate::quantity::serde_as_quantity!(
    ByteSize,
    crate::quantity::Forms {
        base: ByteSize,
        number: |n| Ok(ByteSize(n)),
        text: ByteSize::parse,
        expected: "expected a size such as \"512KiB\", \"8MiB\" or a number of bytes",
    }
);

/// The default `log_max`: 8 MiB.
pub const DEFAULT_LOG_MAX: ByteSize = ByteSize(8 << 20);
/// The least `log_max`: the log is checked once a second, so a smaller size would rotate about
/// as often as a service writes.
pub const MIN_LOG_MAX: ByteSize = ByteSize(64 << 10);

pub(crate) fn default_log_max() -> ByteSize {
    DEFAULT_LOG_MAX
}

/// `log_max`: at least [`MIN_LOG_MAX`] in `halley.toml`; its default when read from a record
/// written before the field existed.
pub(crate) fn log_max<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    if !d.is_human_readable() {
        if crate::codec::reading_disk_format() < 3 {
            // It is the spec's last field: the next bytes belong to whatever follows the spec.
            return Ok(DEFAULT_LOG_MAX);
        }
        // Checked where it was written: a record is never made unreadable by a later limit.
        return ByteSize::deserialize(d);
    }
    let size = ByteSize::deserialize(d)?;
    if size < MIN_LOG_MAX {
        return Err(de::Error::custom(format!(
            "log_max {size} is below the least, {MIN_LOG_MAX}: a log is checked once a second"
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_back() {
        for (text, bytes) in [
            ("8MiB", 8 << 20),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("4096", 4096),
            ("100B", 100),
            (" 3 MiB ", 3 << 20),
        ] {
            let size = ByteSize::parse(text).unwrap();
            assert_eq!(size.0, bytes, "{text}");
            assert_eq!(ByteSize::parse(&size.to_string()), Ok(size), "{text}");
        }
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536KiB");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }

    #[test]
    fn bad_sizes_name_the_problem() {
        assert!(
            ByteSize::parse("8MB")
                .unwrap_err()
                .contains("unknown unit \"MB\"")
        );
        assert!(ByteSize::parse("big").unwrap_err().contains("not a size"));
        assert!(
            ByteSize::parse("99999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
