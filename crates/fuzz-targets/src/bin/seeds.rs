//! Writes every target's seeds (valid inputs from the real encoders) into
//! `DIR/<target>/`, named by their hash: `scripts/fuzz.sh` starts each
//! campaign from them and the committed corpus.

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: crowdtrain-fuzz-seeds DIR");
        std::process::exit(2);
    };
    for target in crowdtrain_fuzz_targets::TARGETS {
        let target_dir = dir.join(target.name);
        std::fs::create_dir_all(&target_dir).expect("the seed directory can be created");
        for seed in (target.seeds)() {
            let name = format!("seed-{}", &blake3_hex(&seed)[..16]);
            std::fs::write(target_dir.join(name), seed).expect("seeds can be written");
        }
    }
}

fn blake3_hex(bytes: &[u8]) -> String {
    crowdtrain_protocol::Digest::of(bytes).to_hex()
}
