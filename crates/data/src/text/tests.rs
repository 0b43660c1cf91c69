//! Tests of the text module's internals: chunk boundaries, and the fast
//! paths against the library they stand in for. The public API's tests are
//! in `tests/text.rs`.

use std::path::Path;

use super::source::{CHUNK_MAX, CHUNK_TARGET};
use super::*;

fn bundled_text() -> String {
    let mut text = String::new();
    let mut chunks = TextSource::Bundled.chunks().unwrap();
    while let Some(chunk) = chunks.next_chunk().unwrap() {
        text.push_str(chunk);
    }
    text
}

fn chunks_of(source: &TextSource, target: usize, max: usize) -> Vec<String> {
    let mut chunks = source.chunks_sized(target, max).unwrap();
    let mut all = Vec::new();
    while let Some(chunk) = chunks.next_chunk().unwrap() {
        all.push(chunk.to_owned());
    }
    all
}

/// Text that exercises the byte-level pre-tokenizer: contractions, digits,
/// runs of spaces before words and line ends, tabs, CRLF, non-breaking and
/// other Unicode spaces, accents, CJK, emoji, combining marks, a BOM.
const AWKWARD: &str = "It's 'll 'S we've 12,345.67 ½ Ⅻ  two  spaces\tand\ttabs  \n\n\nnaïve café — 日本語 🎭\r\n\
                       x\u{a0}y\u{2028}z\u{85}w\u{3000}v क्षि\u{feff}end   ";

#[test]
fn chunks_cut_at_safe_boundaries_and_rejoin_to_the_text() {
    let dir = tempfile::tempdir().unwrap();
    // Three files, larger than a read block together, one without a final
    // newline, one without any safe boundary (a long run of "é").
    let words: String = (0..40_000).map(|index| format!("word{index} ")).collect();
    std::fs::write(dir.path().join("a.txt"), &words).unwrap();
    std::fs::write(dir.path().join("b.txt"), "é".repeat(30_000)).unwrap();
    std::fs::write(dir.path().join("c.txt"), "last line\n").unwrap();
    let whole = format!("{words}\n{}\nlast line\n", "é".repeat(30_000));
    let (target, max) = (10_000, 40_000);
    let chunks = chunks_of(&TextSource::Path(dir.path().to_owned()), target, max);
    assert_eq!(chunks.concat(), whole);
    let mut at = 0;
    for chunk in &chunks[..chunks.len() - 1] {
        at += chunk.len();
        let (before, after) = (whole.as_bytes()[at - 1], whole.as_bytes()[at]);
        let safe = matches!(after, b' ' | b'\n') && before.is_ascii_graphic();
        assert!(
            (safe && chunk.len() >= target && chunk.len() <= max) || (!safe && chunk.len() > max - 4),
            "a chunk of {} bytes ending at {at} ({before:?} then {after:?})",
            chunk.len()
        );
    }
    // The default sizes give the same text in chunks of about a megabyte.
    assert_eq!(chunks_of(&TextSource::Path(dir.path().to_owned()), CHUNK_TARGET, CHUNK_MAX).concat(), whole);
}

#[test]
fn chunk_boundaries_depend_on_the_text_only() {
    // The same text as one file and as many: the same chunks.
    let dir = tempfile::tempdir().unwrap();
    let text = bundled_text();
    std::fs::write(dir.path().join("whole.txt"), &text).unwrap();
    let parts = tempfile::tempdir().unwrap();
    let mut rest = text.as_str();
    let mut index = 0;
    while !rest.is_empty() {
        // Cut after a newline so that no separator is added between files.
        let cut = rest[..rest.len().min(70_001)].rfind('\n').map_or(rest.len(), |at| at + 1);
        std::fs::write(parts.path().join(format!("{index:04}.txt")), &rest[..cut]).unwrap();
        rest = &rest[cut..];
        index += 1;
    }
    assert!(index > 10);
    let one = chunks_of(&TextSource::Path(dir.path().join("whole.txt")), 50_000, 200_000);
    assert_eq!(one, chunks_of(&TextSource::Path(parts.path().to_owned()), 50_000, 200_000));
    assert_eq!(one, chunks_of(&TextSource::Bundled, 50_000, 200_000));
}

#[test]
fn char_tokenizer_agrees_with_the_library() {
    let text = format!("{}{AWKWARD}", &bundled_text()[..50_000]);
    let tokenizer = Tokenizer::char_level_of(&text).unwrap();
    assert_eq!(tokenizer.kind(), TokenizerKind::Char);
    let fast = tokenizer.encode(&text).unwrap();
    let mut library = Vec::new();
    tokenizer.encode_with_library(&text, &mut library).unwrap();
    assert_eq!(fast, library);
    assert_eq!(fast.len(), text.chars().count());
    assert_eq!(tokenizer.inner().decode(&fast, false).unwrap(), text, "the library decodes it back too");
    // The library refuses a character outside the vocabulary, as we do.
    assert!(tokenizer.inner().encode("日本語 and Ω", false).is_err());
}

#[test]
fn byte_level_bpe_agrees_with_the_library_whole_and_in_chunks() {
    let tokenizer = Tokenizer::train_bpe(&TextSource::Bundled, 700, &|_| {}).unwrap();
    assert_eq!(tokenizer.kind(), TokenizerKind::Bpe);
    let text = bundled_text();
    let mut library = Vec::new();
    tokenizer.encode_with_library(&text, &mut library).unwrap();
    assert_eq!(tokenizer.encode(&text).unwrap(), library);
    // Small chunks, tokenised one by one, give the whole text's tokens.
    let mut chunked = Vec::new();
    for chunk in chunks_of(&TextSource::Bundled, 4096, 65_536) {
        tokenizer.encode_into(&chunk, &mut chunked).unwrap();
    }
    assert_eq!(chunked, library);
    for text in [AWKWARD, "", " ", "\n\n", "a", "  leading", "trailing  "] {
        let mut library = Vec::new();
        tokenizer.encode_with_library(text, &mut library).unwrap();
        assert_eq!(tokenizer.encode(text).unwrap(), library, "{text:?}");
        assert_eq!(tokenizer.decode(&library).unwrap(), text);
    }
}

#[test]
fn bpe_training_agrees_with_the_library_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.txt");
    std::fs::write(&path, format!("{}{AWKWARD}", &bundled_text()[..300_000])).unwrap();
    let source = TextSource::Path(path);
    let trained = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| Tokenizer::train_bpe(&source, 800, &|_| {})).unwrap()
    };
    let one = trained(1);
    assert_eq!(one.vocab_size(), 800);
    assert_eq!(one.to_json(), trained(2).to_json(), "1 and 2 threads");
    assert_eq!(one.to_json(), trained(2).to_json(), "twice");
    assert_eq!(one.to_json(), Tokenizer::train_bpe_with_library(&source, 800).unwrap().to_json());
}

#[test]
fn reading_a_file_reports_progress_in_input_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.txt");
    std::fs::write(&path, "x ".repeat(100_000)).unwrap();
    let mut chunks = TextSource::Path(path.clone()).chunks_sized(1000, 4000).unwrap();
    assert_eq!(chunks.total_input_bytes(), 200_000);
    while chunks.next_chunk().unwrap().is_some() {
        assert!(chunks.input_bytes_read() <= 200_000);
    }
    assert_eq!((chunks.input_bytes_read(), chunks.text_bytes()), (200_000, 200_000));
    assert!(Path::new(&path).exists());
}
