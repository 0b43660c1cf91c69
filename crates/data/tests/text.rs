//! The text data API as the model, the workers and the coordinator use it:
//! corpora, tokenizers, token files and their cache, splits, shards and
//! batches.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crowdtrain_data::RngKey;
use crowdtrain_data::text::*;

fn no_progress(_: Progress) {}

fn load(
    source: &TextSource,
    tokenizer: &TokenizerSpec,
    cache: Option<&Path>,
) -> Result<TextDataset, TextError> {
    TextDataset::load(source, tokenizer, cache, &no_progress)
}

fn bundled_text() -> String {
    let data = load(&TextSource::Bundled, &TokenizerSpec::Char, None).unwrap();
    data.tokenizer().decode(&data.tokens().to_vec()).unwrap()
}

/// A token view of `0, 1, 2, ...`: each token is its own position.
fn positions(count: u32) -> Vec<u8> {
    (0..count).flat_map(u32::to_le_bytes).collect()
}

#[test]
fn the_bundled_corpus_loads_with_its_documented_size_and_split() {
    let data = load(&TextSource::Bundled, &TokenizerSpec::Char, None).unwrap();
    let info = &data.info;
    assert_eq!((info.name.as_str(), info.source.as_str()), ("shakespeare-subset", "bundled"));
    assert_eq!((info.text_bytes, info.text_chars, info.vocab_size), (1_189_010, 1_189_010, 64));
    assert_eq!((info.tokens, info.train_tokens, info.validation_tokens), (1_189_010, 1_070_109, 118_901));
    assert_eq!(info.train_tokens, split_point(info.tokens));
    assert_eq!(data.tokens().width(), TokenWidth::U16);
    assert_eq!(info.cache, CacheStatus::Unused);
    let text = bundled_text();
    assert!(text.starts_with("First Citizen:\nBefore we proceed any further, hear me speak.\n"));
    assert!(text.ends_with("Let your indulgence set me free.\n"));
    // Validation is the end of the text: most of The Tempest.
    let validation = data.tokenizer().decode(&data.validation().to_vec()).unwrap();
    assert!(text.ends_with(&validation) && validation.contains("PROSPERO:"));
    let shown = info.to_string();
    assert!(shown.contains("shakespeare-subset") && shown.contains("1070109 training"), "{shown}");
}

#[test]
fn the_installed_corpus_is_every_play() {
    // scripts/install-shakespeare.sh (which CI runs) puts it there.
    let path = Path::new(INSTALLED_SHAKESPEARE);
    if !path.is_file() {
        eprintln!("skipped: {} is not installed (scripts/install-shakespeare.sh)", path.display());
        return;
    }
    assert_eq!(TextSource::resolve(None), TextSource::Path(path.to_owned()));
    let data = load(&TextSource::resolve(None), &TokenizerSpec::Char, None).unwrap();
    assert_eq!(data.info.name, "shakespeare");
    assert_eq!(
        (data.info.text_bytes, data.info.text_chars, data.info.vocab_size),
        (4_784_773, 4_784_645, 76)
    );
}

#[test]
fn tokenizers_round_trip_and_survive_saving() {
    let dir = tempfile::tempdir().unwrap();
    let text = "Wherefore art thou Romeo?\n\tNaïve — 日本語 🎭\r\n";
    let chars = Tokenizer::char_level_of(text).unwrap();
    let bpe = Tokenizer::train_bpe(&TextSource::Bundled, 512, &no_progress).unwrap();
    for tokenizer in [&chars, &bpe] {
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text, "{tokenizer}");
        let path = dir.path().join(format!("{}.json", tokenizer.kind()));
        tokenizer.save(&path).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        assert_eq!(
            (loaded.kind(), loaded.hash(), loaded.vocab_size()),
            (tokenizer.kind(), tokenizer.hash(), tokenizer.vocab_size())
        );
        assert_eq!(loaded.encode(text).unwrap(), ids);
        assert_eq!(Tokenizer::from_json(loaded.to_json()).unwrap().to_json(), tokenizer.to_json());
    }
    // Characters are ids in code point order; byte-level BPE holds every byte.
    let order = Tokenizer::char_level("cab".chars()).unwrap();
    assert_eq!(order.encode("abc").unwrap(), [0, 1, 2]);
    assert_eq!(bpe.vocab_size(), 512);
    let common = "And the king said that he would";
    assert!(
        bpe.encode(common).unwrap().len() * 2 < common.len(),
        "merges learned from the corpus shorten common words"
    );
    assert_ne!(chars.hash(), bpe.hash());
}

#[test]
fn bad_text_and_tokenizers_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        TextSource::Path(path)
    };
    let error = |source: &TextSource| load(source, &TokenizerSpec::Char, None).unwrap_err().to_string();

    let message = error(&write("latin1.txt", b"caf\xe9 au lait"));
    assert!(message.contains("latin1.txt is not UTF-8 text: invalid byte at offset 3"), "{message}");
    let message = error(&write("cut.txt", "abc日".as_bytes().split_last().unwrap().1));
    assert!(message.contains("cut.txt is not UTF-8 text: it ends inside a character"), "{message}");
    let message = error(&write("empty.txt", b""));
    assert!(message.contains("empty.txt holds no text"), "{message}");
    let message = error(&TextSource::Path(dir.path().join("nowhere")));
    assert!(message.contains("nowhere does not exist"), "{message}");
    std::fs::create_dir(dir.path().join("hollow")).unwrap();
    std::fs::write(dir.path().join("hollow/.hidden"), "skipped").unwrap();
    let message = error(&TextSource::Path(dir.path().join("hollow")));
    assert!(message.contains("holds no files"), "{message}");

    let chars = Tokenizer::char_level_of("abc").unwrap();
    let message = chars.encode("abz").unwrap_err().to_string();
    assert!(message.contains("'z' (U+007A) at byte 2 is not in the tokenizer's vocabulary"), "{message}");
    let message = chars.decode(&[0, 3]).unwrap_err().to_string();
    assert!(message.contains("token id 3 is not below the vocabulary size 3"), "{message}");

    let message = Tokenizer::train_bpe(&TextSource::Bundled, 255, &no_progress).unwrap_err().to_string();
    assert!(message.contains("must hold 256 to 1048576 tokens"), "{message}");
    let many = (0..=VOCAB_MAX as u32 + 4096).filter_map(char::from_u32);
    assert!(matches!(Tokenizer::char_level(many), Err(TextError::VocabularyTooLarge { .. })));
    assert_eq!(TokenWidth::for_vocab(1 << 16).unwrap(), TokenWidth::U16);
    assert_eq!(TokenWidth::for_vocab((1 << 16) + 1).unwrap(), TokenWidth::U32);
    assert!(TokenWidth::for_vocab((1 << 32) + 1).is_err());

    let message = Tokenizer::load(&dir.path().join("absent.json")).unwrap_err().to_string();
    assert!(message.contains("absent.json does not exist"), "{message}");
    std::fs::write(dir.path().join("garbage.json"), "{not json").unwrap();
    let message = Tokenizer::load(&dir.path().join("garbage.json")).unwrap_err().to_string();
    assert!(message.starts_with("tokenizer file") && message.contains("garbage.json"), "{message}");
    let mut json: serde_json::Value = serde_json::from_str(chars.to_json()).unwrap();
    json["model"]["vocab"]["c"] = 7.into();
    let message = Tokenizer::from_json(&json.to_string()).unwrap_err().to_string();
    assert!(message.contains("ids must be 0..3 with no gaps"), "{message}");
    let bpe = Tokenizer::train_bpe(&write("small.txt", b"low lower lowest"), 260, &no_progress).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(bpe.to_json()).unwrap();
    json["model"]["dropout"] = 0.1.into();
    let message = Tokenizer::from_json(&json.to_string()).unwrap_err().to_string();
    assert!(message.contains("dropout makes tokenisation random"), "{message}");
}

#[test]
fn directories_and_gzip_files_read_as_their_text() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("a.txt"), "first file, no newline").unwrap();
    std::fs::write(root.join("b/c.md"), "second\n").unwrap();
    std::fs::write(root.join("b/d.txt"), "third").unwrap();
    std::fs::write(root.join(".DS_Store"), b"\xff\xfe binary").unwrap();
    let from_dir = load(&TextSource::Path(root.clone()), &TokenizerSpec::Char, None).unwrap();
    let text = from_dir.tokenizer().decode(&from_dir.tokens().to_vec()).unwrap();
    assert_eq!(text, "first file, no newline\nsecond\nthird");
    assert_eq!(from_dir.info.name, "text");

    let gzipped = dir.path().join("text.gz");
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(&gzipped).unwrap(), Default::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap();
    let from_gzip = load(&TextSource::Path(gzipped), &TokenizerSpec::Char, None).unwrap();
    assert_eq!(from_gzip.fingerprint(), from_dir.fingerprint());
    assert_eq!(from_gzip.info.text_hash, from_dir.info.text_hash);

    // The bundled asset given as a file is recognised by its text.
    let asset = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/shakespeare/shakespeare-subset.txt.gz");
    let named = load(&TextSource::Path(asset), &TokenizerSpec::Char, None).unwrap();
    assert_eq!(named.info.name, "shakespeare-subset");
    assert_eq!(
        named.fingerprint(),
        load(&TextSource::Bundled, &TokenizerSpec::Char, None).unwrap().fingerprint()
    );
}

#[test]
fn token_files_are_cached_reused_and_rebuilt_when_stale_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let text_path = dir.path().join("play.txt");
    std::fs::write(&text_path, bundled_text().split_at(200_000).0).unwrap();
    let source = TextSource::Path(text_path.clone());
    let phases = Mutex::new(Vec::new());
    let record = |progress: Progress| phases.lock().unwrap().push(progress.phase);
    let open = || {
        phases.lock().unwrap().clear();
        TextDataset::load(&source, &TokenizerSpec::Char, Some(&cache), &record).unwrap()
    };

    let built = open();
    assert_eq!(built.info.cache, CacheStatus::Built);
    assert!(phases.lock().unwrap().contains(&Phase::Tokenizing));
    let in_memory = load(&source, &TokenizerSpec::Char, None).unwrap();
    assert_eq!(built.tokens().to_vec(), in_memory.tokens().to_vec());
    assert_eq!(built.fingerprint(), in_memory.fingerprint(), "cached or not, the same data");
    let token_file = built.token_file().unwrap().to_owned();
    assert_eq!(std::fs::read(&token_file).unwrap(), in_memory.tokens().as_bytes(), "raw little-endian u16");
    let meta_path = token_file.with_extension("json");
    let meta: TokenFileMeta = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    assert_eq!((meta.tokens, meta.width, meta.vocab_size), (200_000, TokenWidth::U16, built.info.vocab_size));

    let reused = open();
    assert_eq!(reused.info.cache, CacheStatus::Reused);
    assert!(!phases.lock().unwrap().contains(&Phase::Tokenizing), "nothing tokenised the second time");
    assert_eq!(reused.fingerprint(), built.fingerprint());
    drop((built, reused));

    // One flipped bit in the tokens: found, and the entry rebuilt.
    let mut bytes = std::fs::read(&token_file).unwrap();
    bytes[1234] ^= 1;
    std::fs::write(&token_file, &bytes).unwrap();
    let rebuilt = open();
    assert!(
        matches!(&rebuilt.info.cache, CacheStatus::Rebuilt { reason } if reason.contains("does not hash")),
        "{:?}",
        rebuilt.info.cache
    );
    assert_eq!(rebuilt.fingerprint(), in_memory.fingerprint());
    drop(rebuilt);
    // A truncated token file, and metadata that lies about the text.
    std::fs::write(&token_file, &bytes[..1000]).unwrap();
    assert!(matches!(open().info.cache, CacheStatus::Rebuilt { .. }));
    let mut lying = meta.clone();
    lying.text_hash = "00".repeat(32);
    std::fs::write(&meta_path, serde_json::to_vec(&lying).unwrap()).unwrap();
    assert!(
        matches!(open().info.cache, CacheStatus::Rebuilt { reason } if reason.contains("does not describe"))
    );
    std::fs::write(&meta_path, "not json").unwrap();
    assert!(
        matches!(open().info.cache, CacheStatus::Rebuilt { reason } if reason.contains("not token metadata"))
    );
    assert_eq!(open().info.cache, CacheStatus::Reused);

    // A changed text is a new entry; the old one stays valid.
    std::fs::write(&text_path, "a different play\n").unwrap();
    let changed = open();
    assert_eq!(changed.info.cache, CacheStatus::Built);
    assert_ne!(changed.token_file(), Some(token_file.as_path()));
    assert_ne!(changed.fingerprint(), in_memory.fingerprint());
    // A different tokenizer over the same text is a new entry too.
    let tokenizer_path = dir.path().join("bpe.json");
    Tokenizer::train_bpe(&TextSource::Bundled, 300, &no_progress).unwrap().save(&tokenizer_path).unwrap();
    let bpe =
        TextDataset::load(&source, &TokenizerSpec::File(tokenizer_path), Some(&cache), &no_progress).unwrap();
    assert_eq!((bpe.info.cache.clone(), bpe.info.tokenizer), (CacheStatus::Built, TokenizerKind::Bpe));
    assert_ne!(bpe.fingerprint(), changed.fingerprint());
}

#[test]
fn builders_of_the_same_entry_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = dir.path().join("play.txt");
    std::fs::write(&path, bundled_text().split_at(300_000).0).unwrap();
    let source = TextSource::Path(path);
    let fingerprints: Vec<[u8; 32]> = std::thread::scope(|scope| {
        let builders: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| load(&source, &TokenizerSpec::Char, Some(&cache)).unwrap().fingerprint()))
            .collect();
        builders.into_iter().map(|builder| builder.join().unwrap()).collect()
    });
    assert!(fingerprints.windows(2).all(|pair| pair[0] == pair[1]));
    let after = load(&source, &TokenizerSpec::Char, Some(&cache)).unwrap();
    assert_eq!((after.info.cache.clone(), after.fingerprint()), (CacheStatus::Reused, fingerprints[0]));
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn tokenizer_specs_read_and_write_as_strings() {
    assert_eq!("char".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::Char);
    assert_eq!("./char".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::File("./char".into()));
    let spec = TokenizerSpec::File("tok/tokenizer.json".into());
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(json, "\"tok/tokenizer.json\"");
    assert_eq!(serde_json::from_str::<TokenizerSpec>(&json).unwrap(), spec);
    assert_eq!(serde_json::from_str::<TokenizerSpec>("\"char\"").unwrap(), TokenizerSpec::Char);
}

#[test]
fn a_vocabulary_beyond_u16_is_stored_as_u32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.txt");
    let text: String = (0x4e00..0x4e00 + 70_000).filter_map(char::from_u32).collect();
    std::fs::write(&path, &text).unwrap();
    let data = load(&TextSource::Path(path), &TokenizerSpec::Char, Some(&dir.path().join("cache"))).unwrap();
    assert_eq!(data.tokens().width(), TokenWidth::U32);
    assert!(data.info.vocab_size > 1 << 16);
    assert_eq!(data.tokenizer().decode(&data.tokens().to_vec()).unwrap(), text);
    assert_eq!(std::fs::metadata(data.token_file().unwrap()).unwrap().len(), 4 * data.info.tokens as u64);
}

#[test]
fn the_fingerprint_covers_every_token_and_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let text = bundled_text();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        TextSource::Path(path)
    };
    let original = load(&write("a.txt", &text), &TokenizerSpec::Char, None).unwrap();
    // One character changed, far from the start.
    let mut changed = text.clone().into_bytes();
    changed[900_000] = if changed[900_000] == b'e' { b'a' } else { b'e' };
    let edited =
        load(&write("b.txt", std::str::from_utf8(&changed).unwrap()), &TokenizerSpec::Char, None).unwrap();
    assert_eq!(edited.tokenizer().hash(), original.tokenizer().hash());
    assert_ne!(edited.fingerprint(), original.fingerprint());
    let tokenizer_path = dir.path().join("bpe.json");
    Tokenizer::train_bpe(&TextSource::Bundled, 300, &no_progress).unwrap().save(&tokenizer_path).unwrap();
    let retokenized = load(&write("c.txt", &text), &TokenizerSpec::File(tokenizer_path), None).unwrap();
    assert_ne!(retokenized.fingerprint(), original.fingerprint());
    assert_eq!(
        load(&write("d.txt", &text), &TokenizerSpec::Char, None).unwrap().fingerprint(),
        original.fingerprint()
    );
}

#[test]
fn participants_supported_is_the_most_workers_every_shard_can_serve() {
    let (batch, context) = (12, 64);
    assert_eq!(shard_tokens_min(batch, context), 76);
    assert_eq!(participants_supported(1000, batch, context), 13);
    assert_eq!(participants_supported(75, batch, context), 0);
    assert_eq!(participants_supported(1_070_109, batch, context), 14_080);
    for train in [76, 1000, 1063, 1064, 5000, 77_777] {
        let supported = participants_supported(train, batch, context);
        let shards = text_shards(train, supported, batch, context, 0).unwrap();
        assert!(shards.iter().all(|shard| shard.len() >= 76), "{train}: {shards:?}");
        let error = text_shards(train, supported + 1, batch, context, 0).unwrap_err();
        assert!(matches!(error, TextError::TooManyWorkers { supported: s, .. } if s == supported), "{error}");
    }
    let message = text_shards(1000, 14, batch, context, 0).unwrap_err().to_string();
    assert!(
        message.contains("1000 training tokens support 13 workers with batch 12 and context 64"),
        "{message}"
    );
    assert!(text_shards(1000, 0, batch, context, 0).is_err());
}

/// Every stripe of every shard, in order of position.
fn stripes_in_order(shards: &[TokenShard]) -> Vec<std::ops::Range<usize>> {
    let mut stripes: Vec<_> = shards.iter().flat_map(|shard| shard.stripes.iter().cloned()).collect();
    stripes.sort_by_key(|stripe| stripe.start);
    stripes
}

#[test]
fn a_small_text_is_cut_into_one_contiguous_range_per_worker() {
    let shards = text_shards(100_003, 7, 12, 64, 5).unwrap();
    assert!(shards.iter().all(|shard| shard.stripes.len() == 1), "below 2 x 7 x {STRIPE_TOKENS} tokens");
    let stripes = stripes_in_order(&shards);
    assert_eq!((stripes.first().unwrap().start, stripes.last().unwrap().end), (0, 100_003));
    assert!(stripes.windows(2).all(|pair| pair[0].end == pair[1].start));
    assert!(shards.iter().all(|shard| shard.len() == 100_003 / 7 || shard.len() == 100_003 / 7 + 1));
    assert_eq!(shards, text_shards(100_003, 7, 12, 64, 5).unwrap(), "a function of the seed");
    let seeds: std::collections::BTreeSet<Vec<usize>> = (0..8)
        .map(|seed| {
            text_shards(100_003, 7, 12, 64, seed)
                .unwrap()
                .iter()
                .map(|shard| shard.stripes[0].start)
                .collect()
        })
        .collect();
    assert!(seeds.len() > 4, "the seed decides which slot trains on which range");
    for (slot, shard) in shards.iter().enumerate() {
        assert_eq!(&text_shard(100_003, slot, 7, 12, 64, 5).unwrap(), shard);
    }
}

#[test]
fn a_large_text_is_dealt_out_in_stripes_so_that_every_shard_spans_all_of_it() {
    // Goal: no worker trains a round on one corner of the corpus (a few
    // plays), yet every shard is contiguous ranges a token file serves in
    // place. Method: 3.9M tokens (the installed Shakespeare's training
    // split) among 8 workers: stripes of at least STRIPE_TOKENS tokens that
    // partition the split, every eighth one a shard's.
    let (train, workers) = (3_900_000, 8);
    let shards = text_shards(train, workers, 96, 64, 3).unwrap();
    let per_shard = train / workers / STRIPE_TOKENS;
    assert_eq!(per_shard, 29);
    let stripes = stripes_in_order(&shards);
    assert_eq!(stripes.len(), workers * per_shard);
    assert_eq!((stripes.first().unwrap().start, stripes.last().unwrap().end), (0, train));
    assert!(stripes.windows(2).all(|pair| pair[0].end == pair[1].start), "they partition the split");
    let piece = train / (workers * per_shard);
    assert!(stripes.iter().all(|stripe| stripe.len() == piece || stripe.len() == piece + 1));
    assert!(piece >= STRIPE_TOKENS);
    for shard in &shards {
        assert_eq!(shard.stripes.len(), per_shard);
        assert!(shard.stripes.windows(2).all(|pair| pair[0].end <= pair[1].start), "ascending");
        // Spread evenly: its k-th stripe is one of the k-th run of 8 pieces.
        for (turn, stripe) in shard.stripes.iter().enumerate() {
            let index = stripes.iter().position(|other| other == stripe).unwrap();
            assert_eq!(index / workers, turn, "{shard:?}");
        }
        assert!(shard.len().abs_diff(train / workers) <= per_shard);
    }
    let firsts: std::collections::BTreeSet<usize> =
        shards.iter().map(|shard| shard.stripes[0].start).collect();
    assert_eq!(firsts.len(), workers, "each shard starts in its own piece of the first run");
    assert_ne!(shards, text_shards(train, workers, 96, 64, 4).unwrap(), "the seed deals them");
    // Stripes never go below what a batch needs.
    let wide = text_shards(train, workers, 96, 40_000, 3).unwrap();
    assert!(wide.iter().flat_map(|shard| &shard.stripes).all(|stripe| stripe.len() >= 40_096));
}

#[test]
fn a_batch_from_stripes_draws_every_window_inside_them_and_none_across() {
    let bytes = positions(10_000);
    let tokens = Tokens::new(&bytes, TokenWidth::U32);
    let (batch, context) = (16, 32);
    let key = RngKey::new(9, 4, 2, 0);
    // One stripe draws exactly what its slice alone draws: a run whose
    // shards are one range each keeps its bits.
    let mut whole = TokenBatch::default();
    let mut sliced = TokenBatch::default();
    sample_shard_batch(tokens, &TokenShard::contiguous(3000..3500), batch, context, key, &mut whole).unwrap();
    sample_batch(tokens.slice(3000..3500), batch, context, key, &mut sliced).unwrap();
    assert_eq!(whole, sliced);
    // Two stripes: windows inside one or the other, all of them in time.
    let shard = TokenShard { stripes: vec![1000..1100, 7000..7050] };
    let mut starts = std::collections::BTreeMap::<u32, u32>::new();
    let mut drawn = TokenBatch::default();
    for step in 0..600 {
        sample_shard_batch(tokens, &shard, batch, context, key.at_step(step), &mut drawn).unwrap();
        for row in drawn.inputs.chunks(context) {
            *starts.entry(row[0]).or_default() += 1;
        }
    }
    let expected: Vec<u32> = (1000..1100 - 32).chain(7000..7050 - 32).collect();
    assert_eq!(
        starts.keys().copied().collect::<Vec<_>>(),
        expected,
        "every window, none across a stripe end"
    );
    // Uniform over windows, not over stripes: the 68-window stripe is
    // drawn about 68/18 times as often as the 18-window one.
    let first: u32 = starts.range(..7000).map(|(_, count)| count).sum();
    let ratio = f64::from(first) / f64::from(600 * 16 - first);
    assert!((ratio - 68.0 / 18.0).abs() < 0.6, "{ratio}");
    let short = TokenShard { stripes: vec![1000..1100, 7000..7032] };
    let error = sample_shard_batch(tokens, &short, 1, 32, key, &mut drawn).unwrap_err().to_string();
    assert!(error.contains("32 tokens hold no sequence of context 32"), "{error}");
}

#[test]
fn batches_are_next_token_windows_inside_the_shard_keyed_by_step() {
    let bytes = positions(10_000);
    let tokens = Tokens::new(&bytes, TokenWidth::U32);
    let shard = 3000..3500;
    let (batch, context) = (16, 32);
    let key = RngKey::new(9, 4, 2, 0);
    let mut tokens_batch = TokenBatch::default();
    sample_batch(tokens.slice(shard.clone()), batch, context, key, &mut tokens_batch).unwrap();
    assert_eq!((tokens_batch.sequences, tokens_batch.context), (batch, context));
    assert_eq!((tokens_batch.inputs.len(), tokens_batch.targets.len()), (batch * context, batch * context));
    for row in 0..batch {
        let inputs = &tokens_batch.inputs[row * context..(row + 1) * context];
        let targets = &tokens_batch.targets[row * context..(row + 1) * context];
        for column in 0..context {
            // Each token is its position: consecutive, next-token, in the shard.
            assert_eq!(inputs[column], inputs[0] + column as u32);
            assert_eq!(targets[column], inputs[column] + 1);
        }
        assert!(shard.contains(&(inputs[0] as usize)) && shard.contains(&(targets[context - 1] as usize)));
    }
    let mut again = TokenBatch::default();
    sample_batch(tokens.slice(shard.clone()), batch, context, key, &mut again).unwrap();
    assert_eq!(again, tokens_batch);
    sample_batch(tokens.slice(shard.clone()), batch, context, key.at_step(1), &mut again).unwrap();
    assert_ne!(again, tokens_batch);
    // Over many steps every window of the shard is drawn, and no other.
    let mut starts = std::collections::BTreeSet::new();
    for step in 0..400 {
        sample_batch(tokens.slice(shard.clone()), batch, context, key.at_step(step), &mut again).unwrap();
        starts.extend(again.inputs.chunks(context).map(|row| row[0]));
    }
    assert_eq!((*starts.first().unwrap(), *starts.last().unwrap()), (3000, 3500 - 33));
    assert_eq!(starts.len(), 500 - 32);

    let short = tokens.slice(0..32);
    let error = sample_batch(short, 1, 32, key, &mut again).unwrap_err().to_string();
    assert!(error.contains("32 tokens hold no sequence of context 32 (that takes 33 tokens)"), "{error}");
    assert!(sample_batch(tokens.slice(0..33), 1, 32, key, &mut again).is_ok());
}

#[test]
fn evaluation_and_validation_batches_cover_the_validation_split() {
    let bytes = positions(1000);
    let tokens = Tokens::new(&bytes, TokenWidth::U32);
    let validation = tokens.slice(900..1000);
    let key = RngKey::new(77, 3, 0, 0);
    let eval = evaluation_batch(validation, 8, 10, key).unwrap();
    assert_eq!(eval, evaluation_batch(validation, 8, 10, key).unwrap());
    assert_ne!(
        eval,
        evaluation_batch(validation, 8, 10, RngKey::new(78, 3, 0, 0)).unwrap(),
        "the beacon decides"
    );
    assert!(eval.inputs.iter().chain(&eval.targets).all(|&token| (900..1000).contains(&token)));
    // A training batch with the same key draws other windows.
    let mut train = TokenBatch::default();
    sample_batch(validation, 8, 10, key, &mut train).unwrap();
    assert_ne!(train, eval);

    // Whole split: windows every `context` tokens, the last partial one dropped.
    assert_eq!(validation_sequences(100, 10), 9);
    let batches: Vec<TokenBatch> = validation_batches(validation, 4, 10).unwrap().collect();
    assert_eq!(batches.iter().map(|batch| batch.sequences).collect::<Vec<_>>(), [4, 4, 1]);
    let targets: Vec<u32> = batches.iter().flat_map(|batch| batch.targets.clone()).collect();
    assert_eq!(targets, (901..991).collect::<Vec<u32>>(), "every token after the first is a target once");
    assert!(validation_batches(tokens.slice(0..10), 4, 10).is_err());
}

#[test]
fn the_cache_directory_follows_the_environment() {
    // Only reads the environment; the default is under the user's cache.
    let dir = default_cache_dir();
    assert!(
        dir.ends_with("crowdtrain/tokens") || std::env::var_os("CROWDTRAIN_CACHE_DIR").is_some(),
        "{dir:?}"
    );
}

#[test]
fn round_evaluation_batches_are_fresh_windows_of_the_validation_split() {
    let bytes = positions(1000);
    let tokens = Tokens::new(&bytes, TokenWidth::U32);
    let validation = tokens.slice(900..1000);
    // 9 windows of 10 (every 10 tokens, the last partial one dropped), 4 a
    // round: 2 rounds an epoch with 1 window left over.
    let round = |run, round| round_evaluation_batch(validation, 4, 10, run, round).unwrap();
    let starts =
        |batch: &TokenBatch| -> Vec<u32> { batch.inputs.chunks(10).map(|window| window[0]).collect() };
    for epoch in 0..4 {
        let mut seen: Vec<u32> =
            [round(5, 2 * epoch), round(5, 2 * epoch + 1)].iter().flat_map(starts).collect();
        assert!(seen.iter().all(|start| (start - 900) % 10 == 0 && *start < 990), "{seen:?}");
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 8, "no window twice within epoch {epoch}");
    }
    assert_eq!(round(5, 3), round(5, 3), "the same run and round, the same batch");
    assert_ne!(round(5, 3), round(6, 3));
    let batch = round(5, 0);
    assert_eq!(batch.targets[..9], batch.inputs[1..10], "targets are the next tokens");
    assert_eq!(
        round_evaluation_batch(validation, 50, 10, 5, 0).unwrap().sequences,
        9,
        "at most every window"
    );
    assert!(round_evaluation_batch(tokens.slice(0..10), 1, 10, 5, 0).is_err());
}
