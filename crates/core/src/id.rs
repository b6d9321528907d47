//! Identifiers: `RegionId` (`CC-NAME`), `NodeId`, `SessionId`.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A region id must be `{COUNTRY}-{NAME}`: two upper-case ASCII letters, a dash, then 1-32
    /// upper-case letters, digits or dashes (e.g. `US-EAST`, `DE-FRA-1`).
    #[error("region id {0:?} is not COUNTRY-NAME (e.g. US-EAST): {1}")]
    Region(String, &'static str),
    /// A node id must be 1-64 characters of ASCII letters, digits, `-`, `_` or `.`.
    #[error("node id {0:?} is invalid: {1}")]
    Node(String, &'static str),
}

/// A region, named `{COUNTRY}-{NAME}` with an ISO 3166 alpha-2 country code, e.g. `US-EAST`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(String);

impl RegionId {
    /// Longest accepted NAME part.
    pub const MAX_NAME_LEN: usize = 32;

    /// Validates and wraps `s`.
    pub fn new(s: &str) -> Result<Self, IdError> {
        let err = |why| Err(IdError::Region(s.to_owned(), why));
        let Some((country, name)) = s.split_once('-') else {
            return err("missing '-' between country and name");
        };
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return err("country must be two upper-case letters");
        }
        if name.is_empty() || name.len() > Self::MAX_NAME_LEN {
            return err("name must be 1-32 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("name may hold only upper-case letters, digits and '-'");
        }
        if name.starts_with('-') || name.ends_with('-') {
            return err("name must not start or end with '-'");
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The two-letter country part.
    pub fn country(&self) -> &str {
        &self.0[..2]
    }
}

impl FromStr for RegionId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Proxy or Backend node, named by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps `s`.
    pub fn new(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(IdError::Node(s.to_owned(), "must be 1-64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(IdError::Node(
                s.to_owned(),
                "only letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A session (SIP call or WebRTC peer) on one node; unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_ids() {
        for ok in ["US-EAST", "DE-FRA-1", "GB-L"] {
            let id = RegionId::new(ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.country(), &ok[..2]);
        }
        for bad in [
            "", "US", "us-east", "USA-EAST", "US-", "US-east", "US-EAST-", "US--X", "U1-X",
        ] {
            assert!(RegionId::new(bad).is_err(), "{bad} accepted");
        }
        let long = format!("US-{}", "A".repeat(33));
        assert!(RegionId::new(&long).is_err());
    }

    #[test]
    fn node_ids() {
        assert!(NodeId::new("proxy-1.us_east").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a b").is_err());
        assert!(NodeId::new(&"n".repeat(65)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn region_id_never_panics(s in "\\PC*") {
            let _ = RegionId::new(&s);
            let _ = NodeId::new(&s);
        }
    }
}
