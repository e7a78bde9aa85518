//! The fuzz targets' seed corpora (fuzz/corpus/<target>/seed-*), each seed and
//! a fixed set of mutations of it, run through the same entry points the
//! cargo-fuzz targets call. A longer, coverage-guided run: `cargo +nightly
//! fuzz run <target>` (README, "Fuzzing"). Inputs that once crashed a target
//! go in as seeds, so they are replayed in every test run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::path::PathBuf;

use xmppfed_gateway::fuzz;

/// Mutations per seed: enough to reach the error paths of every parser,
/// small enough for a debug build on two cores.
const MUTATIONS: usize = 2_000;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// xorshift64*: the same mutations on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What libFuzzer's default mutators do, in miniature: flip, insert, delete,
/// repeat a slice, splice in another seed, truncate, and insert the tokens
/// the parsers care about.
fn mutate(rng: &mut Rng, input: &[u8], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"<",
        b">",
        b"</",
        b"/>",
        b"&",
        b"&amp;",
        b"&#0;",
        b"&#x110000;",
        b"'",
        b"\"",
        b"=",
        b"xmlns='",
        b"xmlns:a='",
        b"<!DOCTYPE",
        b"<![CDATA[",
        b"]]>",
        b"<?",
        b"?>",
        b"\xff",
        b"\xc3",
        b"\0",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\\u0000",
        b"\\ud800",
        b"1e999",
        b"-",
        b"\"value\":",
        b"null",
        b"<br>",
        b"&nbsp;",
        b"<a href=",
        b"\r\n",
        b"\r\n\r\n",
        b"Content-Length: ",
        b"l: 99999",
        b" SIP/2.0",
        b";tag=",
    ];
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let byte = rng.next() as u8;
                out.insert(at, byte);
            }
            2 if !out.is_empty() => {
                let len = rng.below(16).min(out.len() - at.min(out.len()));
                out.drain(at..at + len);
            }
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let len = 1 + rng.below((out.len() - start).min(64));
                let piece = out[start..start + len].to_vec();
                for _ in 0..1 + rng.below(50) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let other = &others[rng.below(others.len())].1;
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let len = rng.below(other.len() - start + 1);
                    out.splice(at..at, other[start..start + len].iter().copied());
                }
            }
            5 => out.truncate(at),
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
        }
    }
    out
}

fn replay(target: &str, run: fn(&[u8])) {
    let seeds = seeds(target);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    let mut runs = 0;
    for (name, seed) in &seeds {
        let mut inputs = vec![seed.clone()];
        inputs.extend((0..MUTATIONS).map(|_| mutate(&mut rng, seed, &seeds)));
        for (i, input) in inputs.iter().enumerate() {
            if std::panic::catch_unwind(|| run(input)).is_err() {
                let keep = std::env::temp_dir().join(format!("{target}-{name}-{i}"));
                let _ = std::fs::write(&keep, input);
                panic!(
                    "{target} panicked on mutation {i} of {name}; input kept in {}",
                    keep.display()
                );
            }
            runs += 1;
        }
    }
    eprintln!("{target}: {runs} inputs from {} seeds", seeds.len());
}

#[test]
fn sip_stream_corpus() {
    replay("sip_stream", fuzz::sip_stream);
}

#[test]
fn s2s_stream_corpus() {
    replay("s2s_stream", fuzz::s2s_stream);
}

#[test]
fn s2s_element_corpus() {
    replay("s2s_element", fuzz::s2s_element);
}

#[test]
fn webhook_body_corpus() {
    replay("webhook_body", fuzz::webhook_body);
}

#[test]
fn message_text_corpus() {
    replay("message_text", fuzz::message_text);
}

#[test]
fn config_corpus() {
    replay("config", fuzz::config);
}

/// The bounds hold through the harness too: a stream nested far past the
/// limit ends (within the harness's 10 s) instead of overflowing the stack.
#[test]
fn a_hostile_stream_ends_within_the_harness() {
    let mut input = vec![0u8];
    input.extend_from_slice(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
          xmlns:stream='http://etherx.jabber.org/streams' to='teams.fuzz.test' version='1.0'>",
    );
    input.extend(std::iter::repeat_n(&b"<a>"[..], 100_000).flatten());
    // 1 MiB: what one level of the harness needs in a debug build with room
    // to spare, far less than a recursion 100,000 deep would.
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || fuzz::s2s_stream(&input))
        .unwrap()
        .join()
        .expect("no panic, no overflow");
}
