//! What the cluster envelope costs on the Raft path (issue #9: "move to a compact
//! binary encoding if measurement shows JSON costs on the Raft path"; it did, in
//! bench/profiling.md's two-node profile, and wire version 4 is binary).
//!
//! A Raft call travels as a postcard envelope in a frame (src/cluster/wire.rs). This
//! times, per payload size, one frame's whole trip through our code: encode + seal on
//! the sender, decode on the receiver; and, as the floor, postcard encode + decode of
//! the bare `RaftCall`.
//!
//!   cargo bench --bench wire_encoding
//!
//! No harness: plain `std::time::Instant` over enough iterations that each row takes
//! about half a second; the median of five such rounds is printed.
//!
//! Run as a test (`cargo test --all-targets`, `cargo nextest run --all-targets`, which
//! call it without `--bench`), it times nothing: it answers libtest's `--list` with
//! one test, `round_trip`, which checks that every payload size survives both
//! encodings unchanged.
use hubbub::cluster::wire::{self, Body, Bytes, Envelope, RaftCall, RpcKind};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn call(payload: usize) -> RaftCall {
    RaftCall {
        shard: 7,
        from: 1,
        target: 2,
        corr: 123_456,
        kind: RpcKind::AppendEntries,
        // Entries are postcard: arbitrary bytes, so base64 gets no help from the content.
        payload: Bytes((0..payload).map(|i| (i * 31 % 251) as u8).collect()),
    }
}

/// Median ns per iteration of `f` over five rounds of about `budget` each.
fn time<F: FnMut()>(mut f: F, budget: Duration) -> f64 {
    let start = Instant::now();
    let mut calibrate = 0u64;
    while start.elapsed() < budget / 10 {
        f();
        calibrate += 1;
    }
    let iterations = (calibrate * 10).max(1);
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iterations {
                f();
            }
            t.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        if args.iter().any(|a| a == "--list") {
            // libtest's terse list, which nextest reads; no benchmarks outside `--bench`.
            if !args.iter().any(|a| a == "--ignored") {
                println!("round_trip: test");
            }
            return;
        }
        round_trip();
        return;
    }
    bench();
}

/// Each payload size through the envelope and through bare postcard, back unchanged.
fn round_trip() {
    for size in [0usize, 256, 4 << 10, 64 << 10, 1 << 20] {
        let envelope = Envelope {
            from: "node-a".into(),
            inc: 42,
            body: Body::RaftCall(call(size)),
        };
        let key = "0123456789abcdef0123456789abcdef";
        let frame = wire::seal(key, &[&wire::encode(&envelope)]);
        let back = wire::decode(&frame).expect("a sealed frame decodes");
        assert_eq!(back.envelopes, vec![envelope], "envelope, {size} bytes");
        let raw = call(size);
        let bytes = postcard::to_stdvec(&raw).expect("postcard encodes");
        let again: RaftCall = postcard::from_bytes(&bytes).expect("postcard decodes");
        assert_eq!(again, raw, "postcard, {size} bytes");
    }
    println!("round_trip: ok");
}

fn bench() {
    let budget = Duration::from_millis(500);
    println!(
        "{:>10} {:>12} {:>14} {:>12} {:>14} {:>8}",
        "payload", "frame bytes", "frame ns", "bare bytes", "bare ns", "ratio"
    );
    for size in [256usize, 4 << 10, 64 << 10, 1 << 20] {
        let envelope = Envelope {
            from: "node-a".into(),
            inc: 42,
            body: Body::RaftCall(call(size)),
        };
        let frame = wire::seal(
            "0123456789abcdef0123456789abcdef",
            &[&wire::encode(&envelope)],
        );
        let sealed = time(
            || {
                let bytes = wire::seal(
                    "0123456789abcdef0123456789abcdef",
                    &[&wire::encode(black_box(&envelope))],
                );
                black_box(wire::decode(&bytes).ok());
            },
            budget,
        );
        let raw = call(size);
        let binary_len = postcard::to_stdvec(&raw).map(|b| b.len()).unwrap_or(0);
        let binary = time(
            || {
                let bytes = postcard::to_stdvec(black_box(&raw)).unwrap_or_default();
                black_box(postcard::from_bytes::<RaftCall>(&bytes).ok());
            },
            budget,
        );
        println!(
            "{:>10} {:>12} {:>14.0} {:>12} {:>14.0} {:>8.1}",
            size,
            frame.len(),
            sealed,
            binary_len,
            binary,
            sealed / binary
        );
    }
}
