//! Node names: what `--name` accepts, and the form certificates and gossip carry.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A node's name: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
///
/// The rules are those of a DNS label because the name goes into the node certificate's DNS
/// subject-alternative name, and so that it is safe in file names, logs and gossip keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Parses a name, saying which rule a bad one breaks.
    pub fn parse(name: &str) -> Result<Self, Error> {
        Self::parse_as("node name", name)
    }

    /// Parses a name by the node naming rules, calling it `kind` in the error.
    pub fn parse_as(kind: &'static str, name: &str) -> Result<Self, Error> {
        let bad = |why| Error::BadName {
            kind,
            name: name.chars().take(80).collect(),
            why,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > 63 {
            return Err(bad("it is longer than 63 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("use only a-z, 0-9 and '-'"));
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(bad("it may not start or end with '-'"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for NodeName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> String {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels_only() {
        assert!(NodeName::parse("pi-1").is_ok());
        assert!(NodeName::parse("a").is_ok());
        for bad in ["", "-a", "a-", "Pi", "a_b", "a.b", "a b", &"x".repeat(64)] {
            assert!(NodeName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
