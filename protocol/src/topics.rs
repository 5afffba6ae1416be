//! MQTT topic names: builders and a parser.
//!
//! | topic | QoS |
//! |---|---|
//! | `voltshare/{grid}/readings/{meter}` | 1 |
//! | `voltshare/{grid}/live/{meter}` | 0 |
//! | `voltshare/{grid}/orders/{household}` | 1 |
//! | `voltshare/{grid}/acks/{household}` | 1 |
//! | `voltshare/{grid}/results/{interval}` | 1, retained |
//! | `voltshare/{grid}/status/{node}` | 1, retained |

use crate::ids::{GridId, HouseholdId, IdError, MeterId};
use crate::units::IntervalId;
use std::fmt;

const ROOT: &str = "voltshare";

/// A parsed topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Readings {
        grid: GridId,
        meter: MeterId,
    },
    Live {
        grid: GridId,
        meter: MeterId,
    },
    Orders {
        grid: GridId,
        household: HouseholdId,
    },
    Acks {
        grid: GridId,
        household: HouseholdId,
    },
    Results {
        grid: GridId,
        interval: IntervalId,
    },
    Status {
        grid: GridId,
        node: String,
    },
}

/// Why a topic could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not a voltshare topic")]
    Foreign(String),
    #[error("topic {topic:?} has a bad identifier: {err}")]
    BadId { topic: String, err: IdError },
    #[error("topic {0:?} has a bad interval")]
    BadInterval(String),
}

impl Topic {
    /// The MQTT quality of service for this topic.
    pub fn qos(&self) -> u8 {
        match self {
            Topic::Live { .. } => 0,
            _ => 1,
        }
    }

    /// Whether messages on this topic are retained.
    pub fn retained(&self) -> bool {
        matches!(self, Topic::Results { .. } | Topic::Status { .. })
    }

    /// The subscription filter for one kind of topic in a grid, e.g.
    /// `voltshare/g/readings/+`.
    pub fn filter(grid: &GridId, kind: &str) -> String {
        format!("{ROOT}/{grid}/{kind}/+")
    }

    /// Parses a topic name.
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        let parts: Vec<&str> = s.split('/').collect();
        let [root, grid, kind, last] = parts.as_slice() else {
            return Err(TopicError::Foreign(s.to_owned()));
        };
        if *root != ROOT {
            return Err(TopicError::Foreign(s.to_owned()));
        }
        let bad = |err| TopicError::BadId {
            topic: s.to_owned(),
            err,
        };
        let grid = GridId::new(*grid).map_err(bad)?;
        Ok(match *kind {
            "readings" => Topic::Readings {
                grid,
                meter: MeterId::new(*last).map_err(bad)?,
            },
            "live" => Topic::Live {
                grid,
                meter: MeterId::new(*last).map_err(bad)?,
            },
            "orders" => Topic::Orders {
                grid,
                household: HouseholdId::new(*last).map_err(bad)?,
            },
            "acks" => Topic::Acks {
                grid,
                household: HouseholdId::new(*last).map_err(bad)?,
            },
            "results" => Topic::Results {
                grid,
                interval: IntervalId(
                    last.parse()
                        .map_err(|_| TopicError::BadInterval(s.to_owned()))?,
                ),
            },
            "status" => {
                crate::ids::validate_id(last).map_err(bad)?;
                Topic::Status {
                    grid,
                    node: (*last).to_owned(),
                }
            }
            _ => return Err(TopicError::Foreign(s.to_owned())),
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Readings { grid, meter } => write!(f, "{ROOT}/{grid}/readings/{meter}"),
            Topic::Live { grid, meter } => write!(f, "{ROOT}/{grid}/live/{meter}"),
            Topic::Orders { grid, household } => write!(f, "{ROOT}/{grid}/orders/{household}"),
            Topic::Acks { grid, household } => write!(f, "{ROOT}/{grid}/acks/{household}"),
            Topic::Results { grid, interval } => write!(f, "{ROOT}/{grid}/results/{}", interval.0),
            Topic::Status { grid, node } => write!(f, "{ROOT}/{grid}/status/{node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_kind() {
        let g = GridId::new("elm").expect("id");
        let all = [
            Topic::Readings {
                grid: g.clone(),
                meter: MeterId::new("m1").expect("id"),
            },
            Topic::Live {
                grid: g.clone(),
                meter: MeterId::new("m1").expect("id"),
            },
            Topic::Orders {
                grid: g.clone(),
                household: HouseholdId::new("h1").expect("id"),
            },
            Topic::Acks {
                grid: g.clone(),
                household: HouseholdId::new("h1").expect("id"),
            },
            Topic::Results {
                grid: g.clone(),
                interval: IntervalId(900_000),
            },
            Topic::Status {
                grid: g,
                node: "engine".into(),
            },
        ];
        for t in all {
            assert_eq!(Topic::parse(&t.to_string()), Ok(t));
        }
        assert_eq!(
            Topic::Readings {
                grid: GridId::new("g").expect("id"),
                meter: MeterId::new("m").expect("id")
            }
            .to_string(),
            "voltshare/g/readings/m"
        );
    }

    #[test]
    fn rejects_bad_topics() {
        assert!(Topic::parse("other/g/readings/m").is_err());
        assert!(Topic::parse("voltshare/g/readings").is_err());
        assert!(Topic::parse("voltshare/g/readings/m/x").is_err());
        assert!(Topic::parse("voltshare/g/bogus/m").is_err());
        assert!(Topic::parse("voltshare/g/results/abc").is_err());
        assert!(Topic::parse("voltshare/g/readings/m+").is_err());
    }
}
