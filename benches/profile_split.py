"""Splits `perf script` call-graph samples (stdin) into categories by the
frame that was running (the leaf), so a request's CPU can be read in µs:
which library, and for kernel time which syscall it served. Background
RocksDB threads (flush, compaction) are one category whatever they ran.

Usage: perf script -i FILE | python3 benches/profile_split.py US_PER_OP
"""
import re
import sys
from collections import Counter

KERNEL = "[kernel.kallsyms])"
RULES = [
    ("RocksDB flush/compaction threads (all their CPU)", lambda leaf, stack: stack.startswith("rocksdb:")),
    ("kernel: WAL appends", lambda leaf, stack: leaf.endswith(KERNEL)
        and re.search(r"ksys_write|vfs_write|ext4|generic_perform_write|fdatasync", stack)
        and not re.search(r"sock|tcp", stack)),
    ("kernel: page faults (anonymous memory)", lambda leaf, stack: leaf.endswith(KERNEL) and "exc_page_fault" in stack),
    ("kernel: file reads (pread)", lambda leaf, stack: leaf.endswith(KERNEL) and re.search(r"pread|filemap_read", stack)),
    ("kernel: sockets, wake-ups, scheduling", lambda leaf, stack: leaf.endswith(KERNEL)),
    ("MD5 (value digests, tree entry hashes)", lambda leaf, stack: "md5::" in leaf),
    ("allocator", lambda leaf, stack: re.search(r"mi_|malloc|\bfree\b|_int_free|cfree|unlink_chunk", leaf)),
    ("memcpy/memmove/memset", lambda leaf, stack: re.search(r"__mem(move|cpy|set|cmp)", leaf)),
    ("RocksDB (foreground)", lambda leaf, stack: re.search(r"rocksdb::|rocksdb_|XXH3|crc32c", leaf)),
    ("TLS (rustls, ring)", lambda leaf, stack: re.search(r"rustls::|ring_core|ring::", leaf)),
    ("HTTP/2 (h2, hpack)", lambda leaf, stack: re.search(r"h2::|indexmap", leaf)),
    ("HTTP/1.1, hyper, axum, tower", lambda leaf, stack: re.search(r"hyper|axum|tower|http::|httparse|reqwest", leaf)),
    ("tokio runtime", lambda leaf, stack: re.search(r"tokio::|mio::", leaf)),
    ("serialization (postcard, serde, base64)", lambda leaf, stack: re.search(r"postcard|serde|base64", leaf)),
    ("CRC32 (record checksums)", lambda leaf, stack: "crc32fast" in leaf),
    ("quorumkv's own code", lambda leaf, stack: "quorumkv::" in leaf),
    ("other (futures, bytes, hashing, collections, libc)", lambda leaf, stack: True),
]


def main():
    us_per_op = float(sys.argv[1])
    counts = Counter()
    total = 0
    for block in sys.stdin.read().split("\n\n"):
        lines = [line.strip() for line in block.strip().split("\n") if line.strip()]
        if len(lines) < 2:
            continue
        total += 1
        frames = [line.split(" ", 1)[1] if " " in line else line for line in lines[1:]]
        stack = lines[0].split()[0] + " | " + " | ".join(frames)
        for name, matches in RULES:
            if matches(frames[0], stack):
                counts[name] += 1
                break
    if total == 0:
        sys.exit("no samples")
    print(f"| where ({total} samples) | share | µs/op |")
    print("|---|---:|---:|")
    for name, _ in RULES:
        share = counts[name] / total
        print(f"| {name} | {100 * share:.1f} % | {share * us_per_op:.0f} |")


if __name__ == "__main__":
    main()
