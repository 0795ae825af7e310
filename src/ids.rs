//! The ids of a study's parts: which encoder, which of its layers, which shard, which pair.
//!
//! Each is a position in the study's plan (the same in every worker of every process, since all
//! resolve the same plan), carried as its own type so that an encoder can never be passed where
//! a pair is meant. They are small (`u32`) because they travel between workers with the data.

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub u32);

        impl $name {
            /// The id of position `index`.
            pub fn new(index: usize) -> Self {
                Self(u32::try_from(index).expect("fewer than 2^32 of them"))
            }

            /// The position, to index the plan's lists.
            pub fn index(self) -> usize {
                self.0 as usize
            }

            /// The ids of `count` positions, in order.
            pub fn all(count: usize) -> impl Iterator<Item = Self> + Clone {
                (0..count).map(Self::new)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// An encoder of the study, as listed in the plan (the ceiling's second SAEs included).
    EncoderId
);
id!(
    /// A layer of an encoder: its position among the layers the study chose for it.
    LayerId
);
id!(
    /// A shard of the study's dataset: its position in the dataset's list of shards.
    ShardId
);
id!(
    /// A compared (source, target) pair of the study.
    PairId
);

/// One layer of one encoder: what an SAE is fitted on, and what a codes file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EncoderLayer {
    pub encoder: EncoderId,
    pub layer: LayerId,
}

impl EncoderLayer {
    /// A number that spreads the layers of a study over workers: timely's exchange takes it
    /// modulo the number of workers. A prime stride between encoders, so that the layers of
    /// the encoders do not pile up on the first workers.
    pub fn route(self) -> u64 {
        u64::from(self.encoder.0) * 7919 + u64::from(self.layer.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_spread_over_workers() {
        // 4 encoders x 3 layers over 4 workers: three SAEs each.
        let mut load = [0usize; 4];
        for e in 0..4 {
            for l in 0..3 {
                let at = EncoderLayer {
                    encoder: EncoderId(e),
                    layer: LayerId(l),
                };
                load[(at.route() % 4) as usize] += 1;
            }
        }
        assert_eq!(load, [3; 4]);
    }
}
