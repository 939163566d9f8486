//! Conditional writes: `If-None-Match`, `If-Match` and `If-Unmodified-Since`
//! on PUT and DELETE (RFC 9110 §13), checked against what a quorum read sees.
//!
//! They are checked at the coordinator, not under a lock: two conditional
//! writes racing each other can both pass their read and both be stored
//! (as siblings, since neither saw the other). They turn "I meant to create
//! this key" or "I meant to replace *that* value" into a `412` when the
//! cluster already shows otherwise, as Riak's conditional requests do; they
//! are not compare-and-swap.

use axum::http::HeaderMap;
use md5::{Digest, Md5};

use super::error::ApiError;
use crate::storage::StoredValue;
use crate::storage::record::to_hex;

/// The preconditions a request carries; `None` everywhere means none.
#[derive(Debug, Default)]
pub struct Preconditions {
    if_match: Option<Tags>,
    if_none_match: Option<Tags>,
    /// Seconds since the epoch (HTTP dates have second precision).
    if_unmodified_since: Option<u64>,
}

#[derive(Debug, PartialEq)]
enum Tags {
    Any,
    List(Vec<Tag>),
}

impl Tags {
    /// Whether the key's current tag (`None`: no live value) is among
    /// these; `strong` refuses weak tags (RFC 9110 §8.8.3.2).
    fn match_current(&self, current: &Option<String>, strong: bool) -> bool {
        match (self, current) {
            (_, None) => false,
            (Tags::Any, Some(_)) => true,
            (Tags::List(list), Some(tag)) => list.iter().any(|t| !(strong && t.weak) && &t.opaque == tag),
        }
    }
}

/// An entity tag as sent: its quoted opaque part, and whether it was weak.
#[derive(Debug, PartialEq)]
struct Tag {
    weak: bool,
    opaque: String,
}

impl Preconditions {
    /// Reads the three headers. A malformed one is a `400`, not ignored: a
    /// typo must not turn a conditional write into a blind one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Preconditions, ApiError> {
        // A list header may be split over several field lines (RFC 9110
        // §5.3): they are one comma-separated list.
        let text = |name: &str| -> Result<Option<String>, ApiError> {
            let mut lines = Vec::new();
            for v in headers.get_all(name) {
                let v =
                    v.to_str().map_err(|_| ApiError::InvalidPrecondition(format!("{name} must be ASCII")))?;
                lines.push(v.trim());
            }
            Ok((!lines.is_empty()).then(|| lines.join(", ")))
        };
        if headers.get_all("if-unmodified-since").iter().count() > 1 {
            return Err(ApiError::InvalidPrecondition("If-Unmodified-Since given more than once".into()));
        }
        let if_unmodified_since = match text("if-unmodified-since")?.as_deref() {
            None => None,
            Some(date) => Some(
                httpdate::parse_http_date(date)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .ok_or_else(|| {
                        ApiError::InvalidPrecondition(format!(
                            "If-Unmodified-Since must be an HTTP date such as \
                             'Tue, 25 Nov 2025 14:20:00 GMT'; got '{date}'"
                        ))
                    })?,
            ),
        };
        Ok(Preconditions {
            if_match: text("if-match")?.map(|v| parse_tags("If-Match", &v)).transpose()?,
            if_none_match: text("if-none-match")?.map(|v| parse_tags("If-None-Match", &v)).transpose()?,
            if_unmodified_since,
        })
    }

    /// True when the condition names what a write without a context
    /// replaces: `If-Match` with tags (those values), or `If-None-Match: *`
    /// (only tombstones, since it passes only when no value is live).
    pub fn names_what_it_replaces(&self) -> bool {
        matches!(self.if_match, Some(Tags::List(_))) || self.if_none_match == Some(Tags::Any)
    }

    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none() && self.if_unmodified_since.is_none()
    }

    /// Evaluates the conditions, in RFC 9110 §13.2.2's order, against the
    /// versions a read shows (add-wins: live values only).
    pub fn check(&self, visible: &[&StoredValue]) -> Result<(), ApiError> {
        let current = entity_tag(visible);
        if let Some(tags) = &self.if_match {
            // Strong comparison: a weak tag never matches.
            if !tags.match_current(&current, true) {
                return Err(failed("If-Match", &current));
            }
        } else if let Some(since) = self.if_unmodified_since {
            let newest = visible.iter().map(|v| v.modified_ms / 1000).max();
            if newest.is_some_and(|s| s > since) {
                return Err(failed("If-Unmodified-Since", &current));
            }
        }
        if let Some(tags) = &self.if_none_match {
            // Weak comparison (RFC 9110 §13.1.2): `W/"x"` matches `"x"`.
            if tags.match_current(&current, false) {
                return Err(failed("If-None-Match", &current));
            }
        }
        Ok(())
    }
}

fn failed(header: &'static str, current: &Option<String>) -> ApiError {
    ApiError::PreconditionFailed { header, current: current.clone() }
}

/// `*` or a comma-separated list of entity tags (`"…"` or weak `W/"…"`).
/// The server's own tags never hold a comma or a quote, so splitting on
/// commas is exact for every tag that can match.
fn parse_tags(name: &str, value: &str) -> Result<Tags, ApiError> {
    if value == "*" {
        return Ok(Tags::Any);
    }
    let parse = |t: &str| -> Option<Tag> {
        let (weak, quoted) = match t.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
        (!inner.contains('"')).then(|| Tag { weak, opaque: quoted.to_string() })
    };
    let tags: Option<Vec<Tag>> =
        value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(parse).collect();
    match tags {
        Some(tags) if !tags.is_empty() => Ok(Tags::List(tags)),
        _ => Err(ApiError::InvalidPrecondition(format!(
            "{name} must be * or quoted entity tags such as \"5d41402abc4b2a76b9719d911017c592\"; got '{value}'"
        ))),
    }
}

/// The key's entity tag as a read shows it: the value's MD5 for one value;
/// for siblings, a tag over the sorted sibling tags (so it changes when any
/// sibling does); `None` when there is no live value.
pub fn entity_tag(visible: &[&StoredValue]) -> Option<String> {
    match visible {
        [] => None,
        [one] => Some(one.etag()),
        many => {
            let mut tags: Vec<String> = many.iter().map(|v| v.etag()).collect();
            tags.sort();
            let digest = Md5::digest(tags.concat().as_bytes());
            Some(format!("\"siblings-{}-{}\"", many.len(), to_hex(&digest)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use bytes::Bytes;

    fn value(bytes: &'static str, modified_ms: u64) -> StoredValue {
        StoredValue::new(Bytes::from_static(bytes.as_bytes()), "text/plain".into(), modified_ms, false)
    }

    fn with(pairs: &[(&'static str, &str)]) -> Result<Preconditions, ApiError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Preconditions::from_headers(&h)
    }

    fn code(r: Result<(), ApiError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn if_none_match_star_is_create_only() {
        let p = with(&[("if-none-match", "*")]).unwrap();
        assert_eq!(code(p.check(&[])), "ok", "nothing live: the create goes ahead");
        let v = value("x", 1_000);
        assert_eq!(code(p.check(&[&v])), "precondition_failed");
    }

    #[test]
    fn if_match_compares_the_shown_entity_tag() {
        let (a, b) = (value("a", 1_000), value("b", 1_000));
        let p = with(&[("if-match", &a.etag())]).unwrap();
        assert_eq!(code(p.check(&[&a])), "ok");
        assert_eq!(code(p.check(&[&b])), "precondition_failed");
        assert_eq!(code(p.check(&[])), "precondition_failed", "If-Match needs a current value");
        assert_eq!(code(p.check(&[&a, &b])), "precondition_failed", "siblings have their own tag");
        let both = entity_tag(&[&b, &a]).unwrap();
        assert_eq!(Some(both.clone()), entity_tag(&[&a, &b]), "order does not matter");
        let p = with(&[("if-match", &format!("\"other\", {both}"))]).unwrap();
        assert_eq!(code(p.check(&[&a, &b])), "ok");
        assert_eq!(code(with(&[("if-match", "*")]).unwrap().check(&[])), "precondition_failed");
    }

    #[test]
    fn if_unmodified_since_has_second_precision_and_yields_to_if_match() {
        let v = value("a", 1_700_000_000_900);
        let at =
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        let before =
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_699_999_999));
        assert_eq!(code(with(&[("if-unmodified-since", &at)]).unwrap().check(&[&v])), "ok");
        assert_eq!(
            code(with(&[("if-unmodified-since", &before)]).unwrap().check(&[&v])),
            "precondition_failed"
        );
        let p = with(&[("if-unmodified-since", &before), ("if-match", &v.etag())]).unwrap();
        assert_eq!(code(p.check(&[&v])), "ok", "RFC 9110: If-Match present, If-Unmodified-Since ignored");
    }

    #[test]
    fn weak_tags_match_if_none_match_only_and_split_headers_are_one_list() {
        let v = value("a", 1_000);
        let weak = format!("W/{}", v.etag());
        assert_eq!(code(with(&[("if-none-match", &weak)]).unwrap().check(&[&v])), "precondition_failed");
        assert_eq!(code(with(&[("if-match", &weak)]).unwrap().check(&[&v])), "precondition_failed");
        let mut h = HeaderMap::new();
        h.append("if-none-match", HeaderValue::from_static("\"other\""));
        h.append("if-none-match", HeaderValue::from_str(&v.etag()).unwrap());
        let p = Preconditions::from_headers(&h).unwrap();
        assert_eq!(code(p.check(&[&v])), "precondition_failed", "the second line counts too");
        assert!(!p.names_what_it_replaces());
        assert!(with(&[("if-none-match", "*")]).unwrap().names_what_it_replaces());
        assert!(!with(&[("if-match", "*")]).unwrap().names_what_it_replaces());
    }

    #[test]
    fn malformed_conditions_are_refused_not_ignored() {
        for (h, v) in [("if-match", "abc"), ("if-none-match", "W/x"), ("if-unmodified-since", "yesterday")] {
            assert_eq!(
                with(&[(h, v)]).map(|_| ()).map_err(|e| e.code()),
                Err("invalid_precondition"),
                "{h}: {v}"
            );
        }
        assert!(with(&[]).unwrap().is_empty());
    }
}
