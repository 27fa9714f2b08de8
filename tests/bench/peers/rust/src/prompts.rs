//! The shared peer workload (tests/bench/peers/README.md, "Workload"),
//! written out for the Rust harnesses; the golden checksums are the ones
//! prompts.h and prompts.go check.

pub const BATCH: usize = 64;
pub const FAMILIES: usize = 16;
pub const WARM_ROUNDS: usize = 8;

/// Prompt of `size` bytes: byte i is 'a' + (i*7 + family*3) % 26; at size/2
/// the nine bytes "u" and `unique` as eight decimal digits.
pub fn prompt(size: usize, family: usize, unique: usize) -> String {
    let mut p: Vec<u8> = (0..size)
        .map(|i| b'a' + ((i * 7 + family * 3) % 26) as u8)
        .collect();
    if size > 16 {
        let mark = format!("u{:08}", unique % 100_000_000);
        p[size / 2..size / 2 + 9].copy_from_slice(mark.as_bytes());
    }
    String::from_utf8(p).expect("ascii")
}

/// Warm-up round r uses (1000 + r) * 64 + j; the measured batch (None) 64 + j.
pub fn unique(round: Option<usize>, j: usize) -> usize {
    match round {
        Some(r) => (1000 + r) * BATCH + j,
        None => BATCH + j,
    }
}

/// The batch of a round, prompt j of family j % 16.
pub fn batch(size: usize, round: Option<usize>) -> Vec<String> {
    (0..BATCH)
        .map(|j| prompt(size, j % FAMILIES, unique(round, j)))
        .collect()
}

fn fnv(mut h: u64, p: &[u8]) -> u64 {
    for &b in p {
        h ^= b as u64;
        h = h.wrapping_mul(1_099_511_628_211);
    }
    h
}

/// FNV-1a 64 over the eight warm batches and then the measured one.
pub fn checksum(size: usize) -> u64 {
    let mut h = 14_695_981_039_346_656_037u64;
    for round in 0..=WARM_ROUNDS {
        let r = if round == WARM_ROUNDS {
            None
        } else {
            Some(round)
        };
        for p in batch(size, r) {
            h = fnv(h, p.as_bytes());
        }
    }
    h
}

pub fn golden(size: usize) -> Option<u64> {
    match size {
        1024 => Some(0xb52f_a1fd_2f36_ba71),
        8192 => Some(0xbd57_6dd9_bf24_0d89),
        65536 => Some(0xd741_8da2_5f3f_424d),
        _ => None,
    }
}

/// Replica i: running i % 7, waiting i % 3.
pub fn running(i: usize) -> usize {
    i % 7
}
pub fn waiting(i: usize) -> usize {
    i % 3
}
