//! Replays the fuzz corpora (`fuzz/corpus/<target>/`, which is where inputs that once
//! crashed go too) through the fuzz targets in every test run, each seed also with a fixed
//! series of mutations, so a regression shows without running libFuzzer. `scripts/fuzz`
//! runs the coverage-guided fuzzer itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rkube_apiserver::fuzzing::TARGETS;

/// Mutations of one input: byte flips, inserted structure characters, cuts and repeats.
fn mutations(seed: &[u8], count: usize, mut state: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    const SPECIAL: &[&[u8]] = &[
        b"", b"\"", b"{", b"}", b"[", b"]", b":", b",", b"\\", b"null", b"-1", b"1e999", b"\xff", b"\0", b"%", b"&",
        b"=", b"!", b"(", b")", b" in ", b"\n", b"- ", b"~", b"/",
    ];
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as usize
    };
    (0..count).map(move |_| {
        let mut bytes = seed.to_vec();
        for _ in 0..=next() % 4 {
            let at = next() % (bytes.len() + 1);
            match next() % 5 {
                0 => bytes
                    .splice(at..at, SPECIAL[next() % SPECIAL.len()].iter().copied())
                    .for_each(drop),
                1 => bytes.truncate(at.max(1)),
                2 if at < bytes.len() => bytes[at] ^= 1 << (next() % 8),
                3 => {
                    let end = (at + next() % 8).min(bytes.len());
                    bytes.drain(at..end);
                }
                _ => {
                    let copy = bytes[at..].to_vec();
                    bytes.extend(copy);
                }
            }
        }
        bytes
    })
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = corpus.join(name);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 3, "{name}: a corpus of at least three seeds");
        for (i, path) in seeds.iter().enumerate() {
            let seed = std::fs::read(path).unwrap();
            target(&seed);
            for input in mutations(&seed, 400, 0x5eed_0000 + i as u64) {
                target(&input);
            }
        }
    }
}
