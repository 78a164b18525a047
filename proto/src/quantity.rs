//! Quantities with a unit (durations, sizes) as serde sees them: in human-readable formats
//! (`halley.toml`, JSON) text with a unit (`"30s"`, `"8MiB"`) or a bare number in a default
//! unit; in bincode one u64 in the base unit (milliseconds, bytes).
//!
//! ## Guarantees
//! - A number that overflows the base unit, or text that does not parse, is an error that says
//!   what was expected; never a panic.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serializer};

/// Splits `"30s"` into `(30, "s")` (the unit trimmed; `""` for a bare number); `None` when it
/// does not start with a number that fits a u64.
pub(crate) fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// Serializes a quantity: its text form when human-readable, else `base` (its base-unit count).
pub(crate) fn serialize<S: Serializer>(
    s: S,
    text: &dyn fmt::Display,
    base: u64,
) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.collect_str(text)
    } else {
        s.serialize_u64(base)
    }
}

/// How a quantity is read from each form.
pub(crate) struct Forms<T> {
    /// From bincode: the base-unit count.
    pub(crate) base: fn(u64) -> T,
    /// From a bare number in a human-readable format (its default unit).
    pub(crate) number: fn(u64) -> Result<T, String>,
    /// From text with a unit.
    pub(crate) text: fn(&str) -> Result<T, String>,
    /// What to say when it is neither.
    pub(crate) expected: &'static str,
}

/// Deserializes a quantity read in `forms`.
pub(crate) fn deserialize<'de, D: Deserializer<'de>, T>(
    d: D,
    forms: Forms<T>,
) -> Result<T, D::Error> {
    if !d.is_human_readable() {
        return u64::deserialize(d).map(forms.base);
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d) {
        Ok(Raw::Number(n)) => (forms.number)(n).map_err(de::Error::custom),
        Ok(Raw::Text(t)) => (forms.text)(&t).map_err(de::Error::custom),
        Err(_) => Err(de::Error::custom(forms.expected)),
    }
}

/// `Serialize` and `Deserialize` for a newtype over its base-unit count, read in `forms`.
macro_rules! serde_as_quantity {
    ($ty:ident, $forms:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::quantity::serialize(s, self, self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::quantity::deserialize(d, $forms)
            }
        }
    };
}

pub(crate) use serde_as_quantity;
