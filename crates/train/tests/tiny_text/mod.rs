//! What the tests of DiLoCo's round options on text share: a tiny GPT's
//! recipe and a token stream with some structure to learn.

use crowdtrain_train::{GptConfig, TrainingRecipe};

pub const INNER_STEPS: u64 = 8;
pub const ROUNDS: u64 = 4;

/// 1 block of width 8 over 16 tokens, context 8, 3 sequences a step:
/// `INNER_STEPS` steps a round, `ROUNDS` rounds.
pub fn recipe() -> TrainingRecipe {
    let gpt = GptConfig { layers: 1, heads: 2, width: 8, context: 8, vocab: 16 };
    TrainingRecipe { batch_size: 3, ..TrainingRecipe::language_model(3, gpt, 1e-2, INNER_STEPS, ROUNDS) }
}

/// 600 u16 tokens, as a token file holds them.
pub fn tokens() -> Vec<u8> {
    (0..600u32).flat_map(|i| (((i * 7) % 13 + i / 50) as u16 % 16).to_le_bytes()).collect()
}
