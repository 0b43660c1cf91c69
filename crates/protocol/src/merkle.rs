//! A BLAKE3 Merkle tree over a worker's segment-boundary state hashes.
//!
//! A worker commits to the root before anyone reveals anything; an audit
//! later asks for one segment, and the worker proves that the states it
//! hands over are the ones it committed to, with one path per leaf. Leaves
//! and inner nodes are hashed in different domains (and leaves with their
//! index), so no leaf can pose as a node or move to another position.

use serde::{Deserialize, Serialize};

use crate::ids::Digest;

const LEAF_CONTEXT: &str = "crowdtrain 2026-11 merkle leaf v1";
const NODE_CONTEXT: &str = "crowdtrain 2026-11 merkle node v1";
const ROOT_CONTEXT: &str = "crowdtrain 2026-11 merkle root v1";

/// The most leaves a tree may have: a commitment covers at most this many
/// segment boundaries.
pub const LEAVES_MAX: usize = 1 << 16;

fn leaf_hash(index: u64, leaf: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key(LEAF_CONTEXT);
    hasher.update(&index.to_le_bytes());
    hasher.update(&leaf.0);
    Digest(*hasher.finalize().as_bytes())
}

fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key(NODE_CONTEXT);
    hasher.update(&left.0);
    hasher.update(&right.0);
    Digest(*hasher.finalize().as_bytes())
}

/// The levels of the tree, leaves first; an odd node is carried up as is.
fn levels(leaves: &[Digest]) -> Vec<Vec<Digest>> {
    assert!(!leaves.is_empty() && leaves.len() <= LEAVES_MAX, "a tree has 1 to {LEAVES_MAX} leaves");
    let mut levels = vec![
        leaves.iter().enumerate().map(|(index, leaf)| leaf_hash(index as u64, leaf)).collect::<Vec<_>>(),
    ];
    while levels.last().expect("non-empty").len() > 1 {
        let below = levels.last().expect("non-empty");
        let above = below
            .chunks(2)
            .map(|pair| if let [left, right] = pair { node_hash(left, right) } else { pair[0] })
            .collect();
        levels.push(above);
    }
    levels
}

/// The root over `leaves`, in order. It binds the number of leaves too,
/// so a proof cannot claim another tree shape.
pub fn root(leaves: &[Digest]) -> Digest {
    seal(leaves.len() as u64, &levels(leaves).last().expect("non-empty")[0])
}

fn seal(leaves: u64, top: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    hasher.update(&leaves.to_le_bytes());
    hasher.update(&top.0);
    Digest(*hasher.finalize().as_bytes())
}

/// The evidence that a leaf sits at its index under a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub index: u64,
    pub leaves: u64,
    /// Sibling hashes from the leaf level up; `None` where the node had no
    /// sibling and was carried up.
    pub siblings: Vec<Option<Digest>>,
}

/// The proof for leaf `index` of `leaves`.
pub fn prove(leaves: &[Digest], index: usize) -> Proof {
    assert!(index < leaves.len(), "leaf {index} of {}", leaves.len());
    let levels = levels(leaves);
    let mut position = index;
    let mut siblings = Vec::with_capacity(levels.len());
    for level in &levels[..levels.len() - 1] {
        siblings.push(level.get(position ^ 1).copied());
        position /= 2;
    }
    Proof { index: index as u64, leaves: leaves.len() as u64, siblings }
}

/// Whether `leaf` is leaf `proof.index` of a tree of `proof.leaves` leaves
/// with root `root`. Every structural detail of the proof is checked, so a
/// proof for another position or tree shape fails.
pub fn verify(root: &Digest, leaf: &Digest, proof: &Proof) -> bool {
    if proof.leaves == 0 || proof.leaves > LEAVES_MAX as u64 || proof.index >= proof.leaves {
        return false;
    }
    let (mut position, mut width) = (proof.index, proof.leaves);
    let mut hash = leaf_hash(proof.index, leaf);
    let mut siblings = proof.siblings.iter();
    while width > 1 {
        let Some(sibling) = siblings.next() else { return false };
        let has_sibling = (position ^ 1) < width;
        hash = match (sibling, has_sibling) {
            (Some(sibling), true) if position % 2 == 0 => node_hash(&hash, sibling),
            (Some(sibling), true) => node_hash(sibling, &hash),
            (None, false) => hash,
            _ => return false,
        };
        position /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none() && seal(proof.leaves, &hash) == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(count: usize) -> Vec<Digest> {
        (0..count).map(|index| Digest::of(&(index as u64).to_le_bytes())).collect()
    }

    #[test]
    fn every_leaf_proves_against_the_root_for_every_tree_size() {
        for count in 1..=17 {
            let leaves = leaves(count);
            let root = root(&leaves);
            for index in 0..count {
                let proof = prove(&leaves, index);
                assert!(verify(&root, &leaves[index], &proof), "{count} leaves, leaf {index}");
            }
        }
    }

    #[test]
    fn wrong_leaves_positions_roots_and_proofs_fail() {
        let leaves = leaves(5);
        let root = root(&leaves);
        let proof = prove(&leaves, 2);
        assert!(!verify(&root, &leaves[3], &proof), "another leaf");
        assert!(!verify(&Digest::of(b"x"), &leaves[2], &proof), "another root");
        let moved = Proof { index: 3, ..proof.clone() };
        assert!(!verify(&root, &leaves[2], &moved), "another position");
        let mut forged = proof.clone();
        forged.siblings[0] = Some(Digest::of(b"forged"));
        assert!(!verify(&root, &leaves[2], &forged), "a forged sibling");
        let mut short = proof.clone();
        short.siblings.pop();
        assert!(!verify(&root, &leaves[2], &short), "a truncated path");
        let mut long = proof.clone();
        long.siblings.push(None);
        assert!(!verify(&root, &leaves[2], &long), "an extended path");
        let resized = Proof { leaves: 6, ..proof };
        assert!(!verify(&root, &leaves[2], &resized), "another tree size");
        assert_ne!(super::root(&leaves[..4]), super::root(&leaves), "the root sees every leaf");
    }
}
