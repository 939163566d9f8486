//! Small helpers every layer may use and that belong to no Dynamo concept.

/// Wall-clock milliseconds since the Unix epoch: hint ages, tombstone ages,
/// the time a tree was rebuilt, a value's `Last-Modified`. A clock before
/// 1970 reads as 0 rather than failing: these ages only ever delay work.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall-clock microseconds since the Unix epoch: the hybrid clock that
/// version counters start from (`replica::stamp`).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs `f`, which blocks (an fsync), without stalling the async runtime:
/// on a multi-threaded runtime the worker hands its other tasks to a new
/// one first (`block_in_place`), elsewhere (a current-thread runtime, no
/// runtime) it runs as is. For blocking steps that must finish before the
/// caller goes on and borrow what the caller holds, so `spawn_blocking`
/// cannot take them. A node has two workers on two cores: two fsyncs on
/// them at once stopped every request of the node for ~70 ms.
pub fn block_on_disk<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
