//! The per-request consistency knobs (`N`, `R`, `W`, `PR`, `PW`, `DW`) and
//! the rules that tie them together, independent of HTTP.

use crate::config::Defaults;

/// One knob as a client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    Count(usize),
    One,
    Quorum,
    All,
}

impl Knob {
    pub fn parse(text: &str) -> Option<Knob> {
        match text.trim().to_ascii_lowercase().as_str() {
            "one" => Some(Knob::One),
            "quorum" => Some(Knob::Quorum),
            "all" => Some(Knob::All),
            t if !t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit()) => {
                t.parse().ok().map(Knob::Count)
            }
            _ => None,
        }
    }

    fn resolve(self, n: usize) -> usize {
        match self {
            Knob::Count(c) => c,
            Knob::One => 1,
            Knob::Quorum => n / 2 + 1,
            Knob::All => n,
        }
    }
}

/// The knobs a request sent; `None` means "use the configured default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KnobRequest {
    pub n: Option<Knob>,
    pub r: Option<Knob>,
    pub w: Option<Knob>,
    pub pr: Option<Knob>,
    pub pw: Option<Knob>,
    pub dw: Option<Knob>,
}

/// Resolved, validated knobs for one request (travels with a forwarded PUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Consistency {
    pub n: usize,
    pub r: usize,
    pub w: usize,
    pub pr: usize,
    pub pw: usize,
    pub dw: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConsistencyError(pub String);

impl KnobRequest {
    /// Applies the rules `1 <= R, W <= N <= limit_n`, `PR <= R`, `PW <= W`,
    /// `DW <= W`. `limit_n` is `min(max_n, cluster size)`.
    ///
    /// Defaults the client did not override are clamped to the requested N
    /// (asking for `N: 1` alone must not fail because the default `R` is 2);
    /// values the client did send are never adjusted, only checked.
    pub fn resolve(&self, defaults: &Defaults, limit_n: usize) -> Result<Consistency, ConsistencyError> {
        let err = |m: String| Err(ConsistencyError(m));
        let n = match self.n {
            Some(k) => k.resolve(limit_n),
            None => defaults.n.min(limit_n),
        };
        if n == 0 || n > limit_n {
            return err(format!(
                "N must be between 1 and {limit_n} (min of max_n and cluster size), got {n}"
            ));
        }
        let pick = |k: Option<Knob>, default: usize| k.map_or(default.min(n), |k| k.resolve(n));
        let c = Consistency {
            n,
            r: pick(self.r, defaults.r),
            w: pick(self.w, defaults.w),
            pr: pick(self.pr, defaults.pr),
            pw: pick(self.pw, defaults.pw),
            dw: pick(self.dw, defaults.dw),
        };
        if c.r == 0 || c.r > n {
            return err(format!("R must be between 1 and N={n}, got {}", c.r));
        }
        if c.w == 0 || c.w > n {
            return err(format!("W must be between 1 and N={n}, got {}", c.w));
        }
        if c.pr > c.r {
            return err(format!("PR must not exceed R={}, got {}", c.r, c.pr));
        }
        if c.pw > c.w {
            return err(format!("PW must not exceed W={}, got {}", c.w, c.pw));
        }
        if c.dw > c.w {
            return err(format!("DW must not exceed W={}, got {}", c.w, c.dw));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> KnobRequest {
        let mut k = KnobRequest::default();
        for (name, v) in pairs {
            let v = Knob::parse(v);
            match *name {
                "n" => k.n = v,
                "r" => k.r = v,
                "w" => k.w = v,
                "pr" => k.pr = v,
                "pw" => k.pw = v,
                "dw" => k.dw = v,
                _ => unreachable!(),
            }
        }
        k
    }

    #[test]
    fn defaults_and_symbolic_values() {
        let d = Defaults::default();
        assert_eq!(req(&[]).resolve(&d, 3).unwrap(), Consistency { n: 3, r: 2, w: 2, pr: 0, pw: 0, dw: 0 });
        let c = req(&[("n", "3"), ("r", "one"), ("w", "all"), ("dw", "quorum")]).resolve(&d, 5).unwrap();
        assert_eq!((c.r, c.w, c.dw), (1, 3, 2));
    }

    #[test]
    fn unsent_defaults_clamp_to_a_smaller_n() {
        let c = req(&[("n", "1")]).resolve(&Defaults::default(), 3).unwrap();
        assert_eq!((c.n, c.r, c.w), (1, 1, 1));
    }

    #[test]
    fn each_rule_is_named() {
        let d = Defaults::default();
        let cases = [
            (req(&[("n", "4")]), "N must be"),
            (req(&[("n", "0")]), "N must be"),
            (req(&[("r", "4")]), "R must be"),
            (req(&[("w", "0")]), "W must be"),
            (req(&[("r", "1"), ("pr", "2")]), "PR must not exceed"),
            (req(&[("w", "1"), ("pw", "2")]), "PW must not exceed"),
            (req(&[("w", "2"), ("dw", "3")]), "DW must not exceed"),
        ];
        for (k, want) in cases {
            let e = k.resolve(&d, 3).unwrap_err().0;
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in ["", "-1", "two", "1.5", "99999999999"] {
            assert_eq!(Knob::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Knob::parse("QUORUM"), Some(Knob::Quorum));
    }
}
