//! Identifiers of grids, households and meters. They appear in MQTT topics,
//! so they are restricted to a safe alphabet: ASCII letters, digits, `-` and
//! `_`, 1 to 64 characters.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier is longer than 64 characters")]
    TooLong,
    #[error("identifier contains {0:?}; only ASCII letters, digits, '-' and '_' are allowed")]
    BadChar(char),
}

/// Checks the identifier alphabet.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > 64 {
        return Err(IdError::TooLong);
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadChar(c));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Shared text behind one thin pointer: a clone is a reference-count
        /// increment, not a copy (an auction's trades repeat their
        /// households' ids, and a trade stays small).
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<String>);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_id(&s)?;
                Ok(Self(Arc::new(s)))
            }
            /// How many values share this identifier's text (a plain load of
            /// its reference count; touching it first lets a batch of clones
            /// overlap their cache misses).
            #[inline]
            pub fn shares(&self) -> usize {
                Arc::strong_count(&self.0)
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A microgrid (one feeder, one clearing engine), e.g. `elmstreet`.
    GridId
);
id_type!(
    /// A household enrolled in a grid, e.g. `h007`.
    HouseholdId
);
id_type!(
    /// A meter (one Modbus device role), e.g. `h007-grid`.
    MeterId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_topic_metacharacters() {
        assert_eq!(HouseholdId::new("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(HouseholdId::new("+"), Err(IdError::BadChar('+')));
        assert_eq!(HouseholdId::new(""), Err(IdError::Empty));
        assert!(HouseholdId::new("h-01_x").is_ok());
        assert!(serde_json::from_str::<MeterId>("\"a#\"").is_err());
    }
}
