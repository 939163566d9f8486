//! Sloppy quorum: which nodes a request goes to. The key's first N nodes in
//! its preference list are its home replicas; a home this node sees as
//! unreachable is stood in for by the next reachable node beyond the first
//! N (a fallback), which holds the write as a hint for that home. Reachable
//! homes also get a spare fallback, used if their call fails.

/// Where one copy of a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node the call is sent to.
    pub node: String,
    /// `Some(home)` when `node` is a fallback standing in for `home`.
    pub hint_for: Option<String>,
    /// Another fallback to try, with a hint for `node`, if `node` fails.
    pub spare: Option<String>,
}

impl Target {
    pub fn is_home(&self) -> bool {
        self.hint_for.is_none()
    }
}

/// The plan for one request coordinated on `self_id`.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// `Some(home)` when this node coordinates a write while none of the
    /// key's homes: it stands in for `home` (every home was out of reach of
    /// the forwarder), so its own write becomes a hint.
    pub local_hint: Option<String>,
    /// The other copies.
    pub targets: Vec<Target>,
}

/// Plans a request over `preference` (the key's whole preference list,
/// homes first) for `n` replicas. `writing`: this node stores a copy itself
/// (it coordinates a write); a read only asks others besides its own copy.
pub fn plan(
    preference: &[String],
    n: usize,
    self_id: &str,
    writing: bool,
    reachable: impl Fn(&str) -> bool,
) -> Plan {
    let n = n.min(preference.len());
    let homes = &preference[..n];
    let mut spares = preference[n..].iter().filter(|f| *f != self_id && reachable(f)).cloned();
    let local_hint = match homes.first() {
        Some(first) if writing && !homes.iter().any(|h| h == self_id) => {
            // This node is itself a fallback: it takes the first home out
            // of reach (or the first home, if it looks reachable from here).
            Some(homes.iter().find(|h| !reachable(h)).unwrap_or(first).clone())
        }
        _ => None,
    };
    let taken = local_hint.as_deref();
    let others: Vec<&String> = homes.iter().filter(|h| *h != self_id && Some(h.as_str()) != taken).collect();
    let mut targets = Vec::with_capacity(others.len());
    // Homes out of reach take the spares first, in preference order.
    for h in others.iter().filter(|h| !reachable(h)) {
        targets.push(match spares.next() {
            Some(f) => Target { node: f, hint_for: Some((*h).clone()), spare: None },
            // No fallback left: try the home anyway (the view may be stale).
            None => Target { node: (*h).clone(), hint_for: None, spare: None },
        });
    }
    for h in others.iter().filter(|h| reachable(h)) {
        targets.push(Target { node: (*h).clone(), hint_for: None, spare: spares.next() });
    }
    Plan { local_hint, targets }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pref() -> Vec<String> {
        ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect()
    }

    fn nodes(p: &Plan) -> Vec<(&str, Option<&str>, Option<&str>)> {
        p.targets.iter().map(|t| (t.node.as_str(), t.hint_for.as_deref(), t.spare.as_deref())).collect()
    }

    #[test]
    fn all_up_goes_to_the_homes_with_spares() {
        let p = plan(&pref(), 3, "a", true, |_| true);
        assert_eq!(p.local_hint, None);
        assert_eq!(nodes(&p), vec![("b", None, Some("d")), ("c", None, Some("e"))]);
    }

    #[test]
    fn down_homes_are_replaced_by_the_next_reachable_nodes() {
        let p = plan(&pref(), 3, "a", true, |n| n != "b" && n != "d");
        assert_eq!(nodes(&p), vec![("e", Some("b"), None), ("c", None, None)]);
        let p = plan(&pref(), 3, "a", true, |n| n != "b" && n != "c");
        assert_eq!(nodes(&p), vec![("d", Some("b"), None), ("e", Some("c"), None)]);
    }

    #[test]
    fn a_non_home_coordinator_stands_in_for_an_unreachable_home() {
        let p = plan(&pref(), 3, "d", true, |n| n == "d" || n == "e");
        assert_eq!(p.local_hint, Some("a".to_string()));
        assert_eq!(nodes(&p), vec![("e", Some("b"), None), ("c", None, None)]);
    }

    #[test]
    fn the_coordinator_is_never_its_own_fallback_or_target() {
        for me in pref() {
            let p = plan(&pref(), 3, &me, true, |n| n != "a");
            assert!(p.targets.iter().all(|t| t.node != me && t.spare.as_deref() != Some(me.as_str())));
            let copies = p.targets.len() + 1;
            assert_eq!(copies, 3, "{me}: N copies in all");
        }
    }

    #[test]
    fn a_read_from_outside_asks_every_home() {
        let p = plan(&pref(), 3, "e", false, |_| true);
        assert_eq!(p.local_hint, None);
        let asked: Vec<&str> = p.targets.iter().map(|t| t.node.as_str()).collect();
        assert_eq!(asked, vec!["a", "b", "c"]);
    }
}
