//! A SHA-256 Merkle tree with inclusion proofs.
//!
//! Leaves are hashed as `SHA-256(0x00 ‖ data)` and inner nodes as
//! `SHA-256(0x01 ‖ left ‖ right)`, so a leaf can never pass for an inner node.
//! An odd node at the end of a level is promoted unchanged (not duplicated),
//! which avoids the duplicate-leaf ambiguity of Bitcoin's tree. The root of an
//! empty tree is 32 zero bytes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

/// A 32-byte hash, shown and serialized as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The all-zero hash (root of an empty tree, predecessor of the first batch).
    pub const ZERO: Hash32 = Hash32([0; 32]);

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Hash32, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Hash32(out))
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}
impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl Serialize for Hash32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash32::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

fn leaf_hash(data: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash32(h.finalize().into())
}

fn node_hash(l: &Hash32, r: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l.0);
    h.update(r.0);
    Hash32(h.finalize().into())
}

/// A Merkle tree kept level by level, so that proofs are cheap.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash32>>,
}

/// One step of a proof: the sibling and whether it sits on the left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    pub sibling: Hash32,
    pub left: bool,
}

/// An inclusion proof of one leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    pub index: usize,
    pub leaves: usize,
    pub steps: Vec<ProofStep>,
}

impl MerkleTree {
    /// Builds the tree over the leaves' data, in the given order.
    pub fn new<I, D>(leaves: I) -> MerkleTree
    where
        I: IntoIterator<Item = D>,
        D: AsRef<[u8]>,
    {
        let first: Vec<Hash32> = leaves.into_iter().map(|d| leaf_hash(d.as_ref())).collect();
        let mut levels = vec![first];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let prev = levels.last().map(Vec::as_slice).unwrap_or_default();
            let next: Vec<Hash32> = prev
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [one] => *one,
                    _ => Hash32::ZERO,
                })
                .collect();
            levels.push(next);
        }
        MerkleTree { levels }
    }

    /// The root; 32 zero bytes for an empty tree.
    pub fn root(&self) -> Hash32 {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or(Hash32::ZERO)
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inclusion proof of leaf `index`, or `None` if out of range.
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        if index >= self.len() {
            return None;
        }
        let mut steps = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sib = i ^ 1;
            if let Some(h) = level.get(sib) {
                steps.push(ProofStep {
                    sibling: *h,
                    left: sib < i,
                });
            }
            i /= 2;
        }
        Some(MerkleProof {
            index,
            leaves: self.len(),
            steps,
        })
    }
}

impl MerkleProof {
    /// Whether `data` is the leaf at `self.index` of a tree with `root`.
    pub fn verify(&self, root: &Hash32, data: &[u8]) -> bool {
        if self.index >= self.leaves {
            return false;
        }
        // Recompute which levels have a sibling, so that a proof cannot claim
        // a different position than its index.
        let mut expected = 0usize;
        let (mut i, mut n) = (self.index, self.leaves);
        while n > 1 {
            if (i ^ 1) < n {
                expected += 1;
            }
            i /= 2;
            n = n.div_ceil(2);
        }
        if expected != self.steps.len() {
            return false;
        }
        let mut acc = leaf_hash(data);
        let (mut i, mut n) = (self.index, self.leaves);
        let mut steps = self.steps.iter();
        while n > 1 {
            if (i ^ 1) < n {
                let Some(step) = steps.next() else {
                    return false;
                };
                if step.left != ((i ^ 1) < i) {
                    return false;
                }
                acc = if step.left {
                    node_hash(&step.sibling, &acc)
                } else {
                    node_hash(&acc, &step.sibling)
                };
            }
            i /= 2;
            n = n.div_ceil(2);
        }
        acc == *root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_single() {
        let e = MerkleTree::new(Vec::<Vec<u8>>::new());
        assert_eq!(e.root(), Hash32::ZERO);
        assert!(e.proof(0).is_none());
        let one = MerkleTree::new([b"a"]);
        assert_eq!(one.root(), leaf_hash(b"a"));
        assert!(one.proof(0).is_some_and(|p| p.verify(&one.root(), b"a")));
    }

    #[test]
    fn hex_roundtrip() {
        let h = leaf_hash(b"x");
        assert_eq!(Hash32::from_hex(&h.to_hex()), Ok(h));
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(serde_json::from_str::<Hash32>(&json).expect("parse"), h);
    }
}
