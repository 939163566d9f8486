//! Micro-benchmarks of the pure code on every request's path:
//! `cargo bench --bench hot_paths`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use quorumkv::ring::{Member, Ring};
use quorumkv::storage::{Object, StoredValue, record};
use quorumkv::version::VersionVector;

fn ring(c: &mut Criterion) {
    let members = (0..5).map(|i| Member { id: format!("node{i}"), weight: 1 }).collect();
    let ring = Ring::new(members, 1024, 3).expect("ring");
    let keys: Vec<String> = (0..1024).map(|i| format!("bench-{i:010}")).collect();
    let mut i = 0;
    c.bench_function("ring/replicas_for", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(ring.replicas_for(black_box(keys[i].as_bytes()), 3));
        })
    });
    c.bench_function("ring/build_5_nodes_q1024", |b| {
        b.iter(|| {
            let members = (0..5).map(|i| Member { id: format!("node{i}"), weight: 1 }).collect();
            black_box(Ring::new(members, 1024, 3).expect("ring"))
        })
    });
}

fn value(size: usize) -> StoredValue {
    StoredValue::new(Bytes::from(vec![7u8; size]), "application/octet-stream".into(), 1, false)
}

/// An object as three replicas would see it after two concurrent writes.
fn object_with_siblings(siblings: usize) -> Object {
    let mut o = Object::new();
    for s in 0..siblings {
        o.update(&VersionVector::new(), &format!("node{s}.0000abcd"), value(1024));
    }
    o
}

fn versions(c: &mut Criterion) {
    let a = object_with_siblings(1);
    let mut b = a.clone();
    b.update(a.clock(), "node2.0000abcd", value(1024));
    c.bench_function("version/merge_descendant", |bench| bench.iter(|| black_box(a.clone().merged(&b))));
    let concurrent = object_with_siblings(3);
    c.bench_function("version/merge_3_siblings", |bench| {
        bench.iter(|| black_box(concurrent.clone().merged(&a)))
    });
    let token = concurrent.clock().to_token();
    c.bench_function("version/context_encode", |bench| {
        bench.iter(|| black_box(concurrent.clock().to_token()))
    });
    c.bench_function("version/context_decode", |bench| {
        bench.iter(|| black_box(VersionVector::from_token(black_box(&token)).expect("token")))
    });
}

fn records(c: &mut Criterion) {
    let o = object_with_siblings(1);
    let bytes = record::encode(&o);
    c.bench_function("record/encode_1KiB", |b| b.iter(|| black_box(record::encode(black_box(&o)))));
    c.bench_function("record/decode_verify_1KiB", |b| {
        b.iter(|| black_box(record::decode(black_box(&bytes)).expect("record")))
    });
}

criterion_group!(benches, ring, versions, records);
criterion_main!(benches);
