//! Storage as its users see it: writes, reads, reopen, integrity and the
//! indexes kept with the data.

use super::*;
use crate::version::VersionVector;
use bytes::Bytes;

fn value(s: &'static str) -> StoredValue {
    StoredValue::new(Bytes::from_static(s.as_bytes()), "text/plain".into(), 1, false)
}

#[test]
fn modify_then_get_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let epoch;
    {
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        epoch = s.meta().epoch();
        s.objects()
            .modify(7, b"k", false, |cur| {
                assert!(matches!(cur, Found::Nothing));
                let mut o = Object::new();
                o.update(&VersionVector::new(), "a", value("v1"));
                Some(o)
            })
            .unwrap();
    }
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.meta().epoch(), epoch, "epoch is stable across restarts");
    let o = s.objects().get(7, b"k").unwrap().unwrap();
    assert_eq!(o.siblings()[0].value.bytes, Bytes::from_static(b"v1"));
    assert!(s.objects().get(8, b"k").unwrap().is_none(), "partitions are separate");
}

#[test]
fn a_batch_writes_every_key_and_sees_its_own_earlier_items() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    let items: Vec<(u32, &[u8])> = vec![(1, b"a"), (2, b"b"), (1, b"a")];
    let out = s
        .objects()
        .modify_batch(&items, true, |i, cur| {
            let mut o = cur.unwrap_or_default();
            o.update(&VersionVector::new(), &format!("actor{i}"), value("x"));
            o
        })
        .unwrap();
    assert_eq!(out[2].as_ref().unwrap().siblings().len(), 2, "the repeated key saw the first write");
    assert_eq!(s.objects().get(1, b"a").unwrap().unwrap().siblings().len(), 2);
    assert_eq!(s.objects().get(2, b"b").unwrap().unwrap().siblings().len(), 1);
    // A second batch reads what the first stored.
    let items: Vec<(u32, &[u8])> = vec![(2, b"b"), (3, b"c"), (1, b"a")];
    let out = s
        .objects()
        .modify_batch(&items, false, |i, cur| {
            let mut o = cur.unwrap_or_default();
            o.update(&VersionVector::new(), &format!("again{i}"), value("y"));
            o
        })
        .unwrap();
    let siblings: Vec<usize> = out.iter().flatten().map(|o| o.siblings().len()).collect();
    assert_eq!(siblings, vec![2, 1, 3]);
}

/// A value damaged on its way in is refused on its own: the batch's other
/// items are written, and a later item of the same key still sees the
/// earlier item's write.
#[test]
fn a_batch_refuses_only_the_item_whose_value_does_not_match_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    let items: Vec<(u32, &[u8])> = vec![(1, b"a"), (1, b"a"), (2, b"b"), (1, b"a")];
    let out = s
        .objects()
        .modify_batch(&items, false, |i, cur| {
            let mut o = cur.unwrap_or_default();
            let mut v = value(["first", "damaged", "fine", "third"][i]);
            if i == 1 {
                v.bytes = Bytes::from_static(b"DAMAGED");
            }
            o.update(&VersionVector::new(), &format!("actor{i}"), v);
            o
        })
        .unwrap();
    let written: Vec<Option<usize>> = out.iter().map(|o| o.as_ref().map(|o| o.siblings().len())).collect();
    assert_eq!(written, vec![Some(1), None, Some(1), Some(2)]);
    let values = |p, k: &[u8]| -> Vec<Bytes> {
        s.objects().get(p, k).unwrap().unwrap().siblings().iter().map(|s| s.value.bytes.clone()).collect()
    };
    assert_eq!(values(1, b"a"), vec![Bytes::from_static(b"first"), Bytes::from_static(b"third")]);
    assert_eq!(values(2, b"b"), vec![Bytes::from_static(b"fine")]);
    assert_eq!(s.corrupt_reads(), 1, "counted");
    // A single write refuses it too, and stores nothing.
    let refused = s.objects().modify(2, b"b", false, |found| {
        let Found::Object(mut o) = found else { panic!("b is stored") };
        let mut v = value("new");
        v.bytes = Bytes::from_static(b"NEW");
        o.update(&VersionVector::new(), "x", v);
        Some(o)
    });
    assert!(matches!(refused, Err(StorageError::ValueDigest)));
    assert_eq!(values(2, b"b"), vec![Bytes::from_static(b"fine")]);
}

#[test]
fn scan_returns_only_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    for (p, k) in [(1u32, "a"), (2, "b"), (2, "c"), (3, "d")] {
        s.objects()
            .modify(p, k.as_bytes(), false, |_| {
                let mut o = Object::new();
                o.update(&VersionVector::new(), "a", value("x"));
                Some(o)
            })
            .unwrap();
    }
    let keys: Vec<Vec<u8>> = s.objects().scan_partition(2).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
}

#[test]
fn corrupt_record_is_treated_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    s.objects()
        .modify(1, b"k", true, |_| {
            let mut o = Object::new();
            o.update(&VersionVector::new(), "a", value("precious"));
            Some(o)
        })
        .unwrap();
    assert!(s.objects().corrupt_for_test(1, b"k").unwrap());
    assert!(s.objects().get(1, b"k").unwrap().is_none());
    assert_eq!(s.corrupt_reads(), 1);
    // A writer is told, and may decline to write.
    let written = s.objects().modify(1, b"k", false, |found| {
        assert!(matches!(found, Found::Corrupt));
        None
    });
    assert!(written.unwrap().is_none());
    // Replacing it with what a peer sent renews the epoch (new actor id).
    let before = s.meta().epoch();
    s.objects()
        .modify_batch(&[(1, b"k")], false, |_, cur| {
            assert!(cur.is_none());
            let mut o = Object::new();
            o.update(&VersionVector::new(), "peer", value("from a peer"));
            o
        })
        .unwrap();
    assert_ne!(s.meta().epoch(), before);
    let reopened_epoch = s.meta().epoch();
    drop(s);
    assert_eq!(Storage::open(dir.path(), 1 << 20).unwrap().meta().epoch(), reopened_epoch, "persisted");
}

#[test]
fn only_an_unchanged_tombstone_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    let put = |v: StoredValue| {
        s.objects()
            .modify(1, b"k", false, |cur| {
                let mut o = match cur {
                    Found::Object(o) => o,
                    _ => Object::new(),
                };
                let ctx = o.clock().clone();
                o.update(&ctx, "a", v);
                Some(o)
            })
            .unwrap()
            .unwrap()
    };
    let live = put(value("alive"));
    let live_hash = tree::entry_hash(b"k", &live);
    assert!(!s.objects().remove_if_unchanged(1, b"k", &live_hash).unwrap(), "a live value is never reaped");
    let gone = put(StoredValue::new(Bytes::new(), "x/y".into(), 2, true));
    assert_eq!(s.gc_queue().due(1, u64::MAX, None, 10).unwrap().len(), 1, "indexed as a tombstone");
    assert!(!s.objects().remove_if_unchanged(1, b"k", &live_hash).unwrap(), "a stale hash keeps it");
    let root_before = s.trees().root(1, 1).unwrap();
    assert!(s.objects().remove_if_unchanged(1, b"k", &tree::entry_hash(b"k", &gone)).unwrap());
    assert!(s.objects().get(1, b"k").unwrap().is_none());
    assert!(s.gc_queue().due(1, u64::MAX, None, 10).unwrap().is_empty(), "and out of the index");
    assert_ne!(s.trees().root(1, 1).unwrap(), root_before);
    assert_eq!(s.trees().leaves(1, 1).unwrap(), vec![tree::ZERO; tree::LEAVES], "the tree is empty again");
}

#[test]
fn incremental_leaves_equal_a_rebuild_from_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    // Keys of every replica count, some widened later (their hash
    // moves from one count's leaf to another's).
    for i in 0..200u32 {
        let k = i as usize % 50;
        let key = format!("k{k}");
        s.objects()
            .modify_batch(&[(3, key.as_bytes())], false, |_, cur| {
                let mut o = cur.unwrap_or_default();
                o.widen(if i >= 150 && k % 5 == 0 { 3 } else { 1 + k % 3 });
                o.update(&VersionVector::new(), &format!("actor{}", i % 3), value("x"));
                o
            })
            .unwrap();
    }
    let incremental: Vec<_> = (1..=3).map(|n| s.trees().leaves(3, n).unwrap()).collect();
    assert_ne!(incremental[2], vec![tree::ZERO; tree::LEAVES]);
    assert_ne!(incremental[0], incremental[2], "the N=3 tree leaves the narrower keys out");
    s.trees().rebuild(3).unwrap();
    let rebuilt: Vec<_> = (1..=3).map(|n| s.trees().leaves(3, n).unwrap()).collect();
    assert_eq!(rebuilt, incremental);
}

#[test]
fn a_tree_from_n_holds_exactly_the_keys_of_count_n_or_more() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    let write = |key: &'static str, n: usize| {
        s.objects()
            .modify_batch(&[(5, key.as_bytes())], false, |_, cur| {
                let mut o = cur.unwrap_or_default();
                o.widen(n);
                o.update(&VersionVector::new(), "a", value(key));
                o
            })
            .unwrap();
    };
    write("two", 2);
    write("three", 3);
    let keys = |from_n| {
        let all: Vec<u8> = (0..=255).collect();
        let mut k: Vec<String> = s
            .objects()
            .keys_in_buckets(5, &all, from_n)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(2), vec!["three", "two"]);
    assert_eq!(keys(3), vec!["three"], "homes 1 and 3 of a partition share only the N=3 keys");
    let before = s.trees().root(5, 3).unwrap();
    write("two", 3);
    assert_eq!(keys(3), vec!["three", "two"], "widened to N=3, it joins that tree");
    assert_ne!(s.trees().root(5, 3).unwrap(), before);
}

#[test]
fn second_open_of_a_locked_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Storage::open(dir.path(), 1 << 20).unwrap();
    assert!(Storage::open(dir.path(), 1 << 20).is_err());
}

/// Writes a tombstone of delete time `ms` over whatever `key` holds.
fn delete(s: &Storage, partition: u32, key: &str, ms: u64) -> Object {
    s.objects()
        .modify(partition, key.as_bytes(), false, |cur| {
            let mut o = match cur {
                Found::Object(o) => o,
                _ => Object::new(),
            };
            let ctx = o.clock().clone();
            o.update(&ctx, "a", StoredValue::new(Bytes::new(), "x/y".into(), ms, true));
            Some(o)
        })
        .unwrap()
        .unwrap()
}

#[test]
fn the_gc_queue_hands_out_tombstones_oldest_first_and_only_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    for (key, ms) in [("c", 30), ("a", 50), ("b", 10), ("d", 40)] {
        delete(&s, 2, key, ms);
    }
    delete(&s, 3, "other partition", 5);
    let q = s.gc_queue();
    let all: Vec<(Vec<u8>, u64)> = q.due(2, u64::MAX, None, 10).unwrap();
    let order: Vec<(&str, u64)> = all.iter().map(|(k, ms)| (std::str::from_utf8(k).unwrap(), *ms)).collect();
    assert_eq!(order, vec![("b", 10), ("c", 30), ("d", 40), ("a", 50)]);
    assert_eq!(q.due(2, 35, None, 10).unwrap().len(), 2, "younger than the cut-off: not yet");
    let page = q.due(2, u64::MAX, Some((30, b"c")), 10).unwrap();
    assert_eq!(page.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(), vec![40, 50], "a cursor resumes after");
    // A later delete moves the key back in the queue; a write makes it live.
    delete(&s, 2, "b", 60);
    s.objects()
        .modify(2, b"c", false, |_| {
            let mut o = Object::new();
            o.update(&VersionVector::new(), "a", value("alive again"));
            Some(o)
        })
        .unwrap();
    let ms: Vec<u64> = q.due(2, u64::MAX, None, 10).unwrap().into_iter().map(|(_, ms)| ms).collect();
    assert_eq!(ms, vec![40, 50, 60], "one entry per tombstone, at its newest delete time");
}

#[test]
fn a_queue_entry_left_stale_by_a_corrupt_record_is_dropped_not_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    delete(&s, 1, "k", 10);
    assert!(s.objects().corrupt_for_test(1, b"k").unwrap());
    // Replaced by a live value: the old delete time is unknown to the write.
    s.objects()
        .modify_batch(&[(1, b"k")], false, |_, _| {
            let mut o = Object::new();
            o.update(&VersionVector::new(), "peer", value("live"));
            o
        })
        .unwrap();
    let stale = s.gc_queue().due(1, u64::MAX, None, 10).unwrap();
    assert_eq!(stale.len(), 1, "the entry outlived its tombstone");
    assert_eq!(s.objects().drop_stale_tombstones(1, &stale).unwrap(), 1);
    assert!(s.gc_queue().due(1, u64::MAX, None, 10).unwrap().is_empty());
    assert_eq!(
        s.objects().get(1, b"k").unwrap().unwrap().siblings()[0].value.bytes,
        Bytes::from_static(b"live")
    );
}

#[test]
fn a_directory_with_the_old_tombstone_index_is_migrated_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    drop(Storage::open(dir.path(), 1 << 20).unwrap());
    // Rewrite the directory as a pre-queue node left it: the tombstone in
    // `objects`, its index entry `[partition][key]` → time in `tombstones`.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let mut cfs: Vec<&str> = db::FAMILIES.to_vec();
        cfs.push(db::CF_TOMBSTONES_V1);
        let raw = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let tombstone = {
            let mut o = Object::new();
            o.update(&VersionVector::new(), "a", StoredValue::new(Bytes::new(), "x/y".into(), 77, true));
            o
        };
        raw.put_cf(
            raw.cf_handle(db::CF_OBJECTS).unwrap(),
            db::db_key(4, b"gone"),
            record::encode(&tombstone),
        )
        .unwrap();
        raw.put_cf(raw.cf_handle(db::CF_TOMBSTONES_V1).unwrap(), db::db_key(4, b"gone"), 77u64.to_be_bytes())
            .unwrap();
        // More than one migration batch, and a first batch already moved by
        // an open that crashed before it finished: its entry is in the queue.
        let mut batch = rocksdb::WriteBatch::default();
        for i in 0..5000u64 {
            let key = db::db_key(5, format!("k{i:05}").as_bytes());
            batch.put_cf(raw.cf_handle(db::CF_TOMBSTONES_V1).unwrap(), key, (1000 + i).to_be_bytes());
        }
        raw.write(batch).unwrap();
        // A time that is not 8 bytes (never written, but read as 0 before).
        raw.put_cf(raw.cf_handle(db::CF_TOMBSTONES_V1).unwrap(), db::db_key(6, b"odd"), [1, 2, 3]).unwrap();
        let mut moved = 5u32.to_be_bytes().to_vec();
        moved.extend_from_slice(&999u64.to_be_bytes());
        moved.extend_from_slice(b"already moved");
        raw.put_cf(raw.cf_handle(db::CF_GC_QUEUE).unwrap(), moved, []).unwrap();
    }
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.gc_queue().due(4, u64::MAX, None, 10).unwrap(), vec![(b"gone".to_vec(), 77)]);
    let p5 = s.gc_queue().due(5, u64::MAX, None, 10_000).unwrap();
    assert_eq!(p5.len(), 5001, "every entry of both halves, once");
    assert_eq!(p5[0], (b"already moved".to_vec(), 999), "oldest first");
    assert_eq!(p5[5000], (b"k04999".to_vec(), 5999));
    assert_eq!(s.gc_queue().due(6, 0, None, 10).unwrap(), vec![(b"odd".to_vec(), 0)], "kept, as due at once");
    drop(s);
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
    assert!(!families.iter().any(|f| f == db::CF_TOMBSTONES_V1), "the old index is dropped: {families:?}");
}

/// Writes `v` as the first version of `key` (whatever was stored before).
fn put_new(s: &Storage, partition: u32, key: &[u8], v: &'static str) {
    s.objects()
        .modify(partition, key, false, |_| {
            let mut o = Object::new();
            o.update(&VersionVector::new(), "a", value(v));
            Some(o)
        })
        .unwrap();
}

/// The governor may hold compactions off, but level 0 never grows past
/// the bound: a deferral is refused there, and compactions run again.
#[test]
fn deferred_compactions_resume_before_level_zero_grows_long() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    assert!(s.defer_compactions(true).unwrap(), "held off while level 0 is short");
    let objects = s.db.cf(db::CF_OBJECTS).unwrap();
    let level0 =
        || s.db.rocks.property_int_value_cf(objects, "rocksdb.num-files-at-level0").unwrap().unwrap();
    let mut i = 0u32;
    while level0() < 8 {
        // Each flush makes one more level-0 file while compactions are off.
        put_new(&s, 1, &i.to_be_bytes(), "v");
        s.db.rocks.flush_cf(objects).unwrap();
        i += 1;
        assert!(i < 20, "level 0 did not grow while compactions were held off");
    }
    assert!(!s.defer_compactions(true).unwrap(), "past the bound the deferral is refused");
    // Compactions run again and bring level 0 back under RocksDB's trigger.
    let mut waited = 0;
    while level0() >= 4 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
        assert!(waited < 400, "compactions did not resume: {} level-0 files", level0());
    }
    assert!(!s.defer_compactions(false).unwrap());
}

/// The index and filter memory an operator sizes a node by (the
/// `rocksdb_table_readers_bytes` gauge) is reported once data reaches the
/// table files, and grows with them: it is held outside the block cache.
#[test]
fn index_and_filter_memory_is_reported_and_grows_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), 1 << 20).unwrap();
    // Only the small metadata family has a table file at open.
    let at_open = s.disk_usage().table_readers;
    let objects = s.db.cf(db::CF_OBJECTS).unwrap();
    let write_and_flush = |from: u32| {
        for i in from..from + 2000 {
            put_new(&s, i % 8, format!("key-{i:06}").as_bytes(), "some value");
        }
        s.db.rocks.flush_cf(objects).unwrap();
        s.disk_usage().table_readers
    };
    let one_file = write_and_flush(0);
    assert!(
        one_file > at_open,
        "an open table file's index and filter are counted: {at_open} then {one_file}"
    );
    let more = write_and_flush(2000);
    assert!(more > one_file, "more table files hold more: {one_file} then {more}");
}
