//! The local rate check of the limit stage: hash the key, lock its shard, GCRA decide and
//! record, over tables of 1 to 1,000,000 live keys (target: <= 200 ns, flat).
//! Also the quota check on a known key.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::internals::config::units::RateUnit;
use gatehouse::internals::store::counts::QuotaTable;
use gatehouse::internals::store::gcra::{Gcra, RateTable};
use gatehouse::internals::store::window::window_at;
use gatehouse::internals::store::DEFAULT_MAX_KEYS;

const S: u64 = 1_000_000_000;

fn bench_rate_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_check");
    for n in [1usize, 1_000, 100_000, 1_000_000] {
        // 1/min with a huge burst: every key stays live and every check admits, so the
        // table really holds n keys while it is measured.
        let table = RateTable::new(Gcra::new(1, 60 * S, 1 << 40), DEFAULT_MAX_KEYS, false);
        let keys: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("consumer-{i:07}").into_bytes())
            .collect();
        let now = 2_000_000_000 * S;
        for k in &keys {
            table.check(table.hash(k), k, now);
        }
        assert_eq!(table.len(), n);
        // Visit the keys in a scattered order (an LCG over the table), as traffic would.
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407))
                    % n;
                let k = &keys[i];
                black_box(table.check(table.hash(black_box(k)), k, now))
            })
        });
    }
    g.finish();
}

fn bench_quota_check(c: &mut Criterion) {
    let table = QuotaTable::new(u64::MAX, RateUnit::Day, DEFAULT_MAX_KEYS);
    let now = 2_000_000_000 * S;
    let k = b"consumer-1";
    let h = table.hash(k);
    table.insert(h, k, window_at(RateUnit::Day, now).id, 0, now);
    c.bench_function("quota_check", |b| {
        b.iter(|| black_box(table.check(table.hash(black_box(k)), now)))
    });
}

criterion_group!(benches, bench_rate_check, bench_quota_check);
criterion_main!(benches);
