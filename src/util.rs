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
