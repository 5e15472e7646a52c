//! Envelope decode + encode for 256 B and 16 KiB payloads. A decoded payload stays text
//! until read, so "decode" is what a hop that never reads it pays, "decode+read payload"
//! what one that does pays, and "encode, payload built" the encoding of a payload a handler
//! produced.

#![allow(missing_docs)] // criterion_group! generates undocumented items

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use troupe::{DecodeLimits, Envelope};
use troupe_bench::envelope_of;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let limits = DecodeLimits::default();
    for (label, size) in [("256B", 256), ("16KiB", 16 * 1024)] {
        let body = envelope_of(size).to_vec();
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("decode", label), &body, |b, body| {
            b.iter(|| Envelope::from_slice(std::hint::black_box(body), &limits))
        });
        g.bench_with_input(
            BenchmarkId::new("decode+read payload", label),
            &body,
            |b, body| {
                b.iter(|| {
                    Envelope::from_slice(std::hint::black_box(body), &limits).map(|e| e.payload.is_object())
                })
            },
        );
        let env = Envelope::from_slice(&body, &limits).expect("fixture decodes");
        g.bench_with_input(BenchmarkId::new("encode", label), &env, |b, env| {
            b.iter(|| std::hint::black_box(env).to_vec())
        });
        let built = envelope_of(size);
        g.bench_with_input(
            BenchmarkId::new("encode, payload built", label),
            &built,
            |b, env| b.iter(|| std::hint::black_box(env).to_vec()),
        );
        g.bench_with_input(BenchmarkId::new("decode+encode", label), &body, |b, body| {
            b.iter(|| Envelope::from_slice(std::hint::black_box(body), &limits).map(|e| e.to_vec()))
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
