"""Splits `perf script` call-graph samples (stdin) into categories, so a
request's CPU can be read in µs: which library was running, and for
kernel time which syscall it served. RocksDB's background threads (flush,
compaction) are one category whatever they ran; the peer calls' HTTP/2
stack (client and server) is told apart from the public HTTP/1.1 one by
what is beneath it.

A sample goes to the first of its innermost frames that names a library:
inlined C++ and Rust standard-library frames (`std::`, `core::`,
`alloc::`) are skipped, so a string copy inside RocksDB counts as RocksDB.

Usage: perf script -i FILE | python3 benches/profile_split.py US_PER_OP
"""
import re
import sys
from collections import Counter

KERNEL = "[kernel.kallsyms])"
PEER_HTTP = re.compile(r"h2::|hyper::proto::h2|reqwest|rpc::server|rpc::client|rpc::batch")


def kernel(frame):
    return frame.endswith(KERNEL)


# (name, test on one frame, test on the whole stack or None)
RULES = [
    ("kernel: file reads (pread)", lambda f: kernel(f), lambda s: re.search(r"pread|filemap_read", s)),
    ("kernel: WAL appends", lambda f: kernel(f), lambda s: re.search(r"WritableFile", s)),
    ("kernel: page faults (anonymous memory)", lambda f: kernel(f), lambda s: "exc_page_fault" in s),
    ("kernel: sockets, wake-ups, scheduling", lambda f: kernel(f), None),
    ("MD5 (value digests, tree entry hashes)", lambda f: "md5::" in f, None),
    # With mimalloc's `override`, perf may name its functions by their C++
    # aliases (`operator delete[]` is `mi_free`).
    ("allocator", lambda f: re.search(r"mi_|malloc|\bfree\b|_int_free|cfree|unlink_chunk|operator (new|delete)", f), None),
    ("memcpy/memmove/memset", lambda f: re.search(r"__mem(move|cpy|set)", f), None),
    ("memcmp (key comparisons)", lambda f: "__memcmp" in f, None),
    ("RocksDB (foreground)", lambda f: re.search(r"rocksdb::|rocksdb_|XXH3|crc32c", f), None),
    ("TLS (rustls, ring)", lambda f: re.search(r"rustls::|ring_core|ring::", f), None),
    ("peer HTTP/2 (h2, hyper, reqwest)", lambda f: re.search(r"h2::|indexmap|hyper|reqwest|http::|tower|axum", f),
     lambda s: PEER_HTTP.search(s)),
    ("public HTTP/1.1 (hyper, axum, tower)", lambda f: re.search(r"hyper|axum|tower|http::|httparse", f), None),
    ("tokio runtime", lambda f: re.search(r"tokio::|mio::", f), None),
    ("serialization (postcard, serde, base64)", lambda f: re.search(r"postcard|serde|base64", f), None),
    ("CRC32 (record checksums)", lambda f: "crc32fast" in f, None),
    ("URL parsing (url, idna)", lambda f: re.search(r"\burl::|idna::", f), None),
    ("quorumkv's own code", lambda f: "quorumkv::" in f, None),
]
OTHER = "other (futures, bytes, hashing, collections, libc)"
GENERIC = re.compile(r"^(std::|core::|alloc::|__gnu_cxx|__tls_init|gf_multiply)|\(inlined\)$")


def classify(frames, stack):
    for frame in frames[:6]:
        for name, on_frame, on_stack in RULES:
            if on_frame(frame) and (on_stack is None or on_stack(stack)):
                return name
        if not GENERIC.search(frame):
            break
    return OTHER


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
        stack = " | ".join(frames)
        if lines[0].startswith("rocksdb:"):
            counts["RocksDB flush/compaction threads (all their CPU)"] += 1
        else:
            counts[classify(frames, stack)] += 1
    if total == 0:
        sys.exit("no samples")
    print(f"| where ({total} samples) | share | µs/op |")
    print("|---|---:|---:|")
    names = ["RocksDB flush/compaction threads (all their CPU)"] + [r[0] for r in RULES] + [OTHER]
    for name in names:
        share = counts[name] / total
        if counts[name]:
            print(f"| {name} | {100 * share:.1f} % | {share * us_per_op:.0f} |")


if __name__ == "__main__":
    main()
