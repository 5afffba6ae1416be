//! Property tests of the signed envelope and the Merkle tree: the guarantees
//! every other crate relies on.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use protocol::{Domain, MerkleTree, SignedEnvelope};

fn key(seed: [u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&seed)
}

fn domain() -> impl Strategy<Value = Domain> {
    prop::sample::select(Domain::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A signed envelope survives encoding and verifies; flipping any single
    /// bit of the payload, the signature or the key id makes it fail.
    #[test]
    fn any_flipped_bit_fails(seed in any::<[u8; 32]>(), d in domain(),
                             payload in prop::collection::vec(any::<u8>(), 0..512),
                             pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let k = key(seed);
        let env = SignedEnvelope::sign(d, &k, payload).expect("payload within limit");
        let wire = env.encode();
        let decoded = SignedEnvelope::decode(&wire).expect("decodes");
        prop_assert!(decoded.verify(d, &k.verifying_key()).is_ok());

        // Flip one bit anywhere after the version and length bytes: key id,
        // signature or payload.
        let mut bad = wire.clone();
        let i = 2 + pos.index(bad.len() - 2);
        bad[i] ^= 1 << bit;
        match SignedEnvelope::decode(&bad) {
            Err(_) => {} // a key id byte outside the alphabet: refused at decoding
            Ok(e) => prop_assert!(e.verify(d, &k.verifying_key()).is_err(), "flipped byte {} verified", i),
        }
    }

    /// A signature made under one domain tag never verifies under another.
    #[test]
    fn domains_are_separated(seed in any::<[u8; 32]>(), a in domain(), b in domain(),
                             payload in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assume!(a != b);
        let k = key(seed);
        let env = SignedEnvelope::sign(a, &k, payload).expect("payload within limit");
        prop_assert!(env.verify(b, &k.verifying_key()).is_err());
    }

    /// Decoding arbitrary bytes never panics.
    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = SignedEnvelope::decode(&bytes);
    }

    /// Every leaf's proof verifies against the root; a proof for one leaf
    /// does not verify another leaf's data, nor a tampered root.
    #[test]
    fn merkle_proofs(leaves in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..70),
                     other in any::<prop::sample::Index>()) {
        let tree = MerkleTree::new(&leaves);
        let root = tree.root();
        for (i, leaf) in leaves.iter().enumerate() {
            let proof = tree.proof(i).expect("index in range");
            prop_assert!(proof.verify(&root, leaf));
            let j = other.index(leaves.len());
            if leaves[j] != *leaf {
                prop_assert!(!proof.verify(&root, &leaves[j]));
            }
            let mut bad_root = root;
            bad_root.0[0] ^= 1;
            prop_assert!(!proof.verify(&bad_root, leaf));
        }
        prop_assert!(tree.proof(leaves.len()).is_none());
    }

    /// A proof moved to another index does not verify.
    #[test]
    fn merkle_proof_bound_to_index(n in 2usize..40, i in any::<prop::sample::Index>()) {
        let leaves: Vec<Vec<u8>> = (0..n).map(|k| vec![u8::try_from(k % 256).unwrap_or(0); 3]).collect();
        let tree = MerkleTree::new(&leaves);
        let i = i.index(n);
        let mut proof = tree.proof(i).expect("in range");
        proof.index = (i + 1) % n;
        prop_assert!(!proof.verify(&tree.root(), &leaves[i]));
    }
}
