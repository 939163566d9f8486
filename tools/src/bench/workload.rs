//! What the load generator sends: the operation mix, the key chooser and
//! the value sizes. Parsed from the command line, pure and testable.

use rand::Rng;
use rand_distr::{Distribution as _, Zipf};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    Put,
    Get,
    /// `get_percent` of operations are reads; the rest read the key and
    /// write it back with the context they read (what a real client does).
    Mixed {
        get_percent: u8,
    },
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "put" => Ok(Workload::Put),
            "get" => Ok(Workload::Get),
            _ => {
                let pct = s
                    .strip_prefix("mixed:")
                    .and_then(|p| p.parse::<u8>().ok())
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| format!("workload {s:?} is not put, get or mixed:<get%>"))?;
                Ok(Workload::Mixed { get_percent: pct })
            }
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workload::Put => write!(f, "put"),
            Workload::Get => write!(f, "get"),
            Workload::Mixed { get_percent } => write!(f, "mixed:{get_percent}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDistribution {
    Uniform,
    Zipf(f64),
}

impl std::str::FromStr for KeyDistribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "uniform" {
            return Ok(KeyDistribution::Uniform);
        }
        s.strip_prefix("zipf:")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
            .map(KeyDistribution::Zipf)
            .ok_or_else(|| format!("distribution {s:?} is not uniform or zipf:<s> with s > 0"))
    }
}

impl std::fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyDistribution::Uniform => write!(f, "uniform"),
            KeyDistribution::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// A value size or an inclusive range `MIN-MAX` (uniformly drawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for SizeRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("bad size {v:?}"));
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if min > max {
            return Err(format!("size range {s:?} has min > max"));
        }
        Ok(SizeRange { min, max })
    }
}

impl std::fmt::Display for SizeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}-{}", self.min, self.max) }
    }
}

impl SizeRange {
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        if self.min == self.max { self.min } else { rng.random_range(self.min..=self.max) }
    }
}

/// Picks key indexes in `0..keys`.
pub struct KeyChooser {
    keys: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyChooser {
    pub fn new(keys: u64, distribution: KeyDistribution) -> Result<KeyChooser, String> {
        if keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        let zipf = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipf(s) => Some(Zipf::new(keys as f64, s).map_err(|e| format!("zipf: {e}"))?),
        };
        Ok(KeyChooser { keys, zipf })
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match &self.zipf {
            // Rank 1 is the hottest; ranks are spread over the key space by a
            // multiplicative hash so hot keys do not share a partition.
            Some(z) => scatter((z.sample(rng) as u64).saturating_sub(1), self.keys),
            None => rng.random_range(0..self.keys),
        }
    }
}

fn scatter(rank: u64, keys: u64) -> u64 {
    rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys
}

pub fn key_name(prefix: &str, index: u64) -> String {
    format!("{prefix}-{index:010}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workloads_and_ranges() {
        assert_eq!("mixed:90".parse::<Workload>().unwrap(), Workload::Mixed { get_percent: 90 });
        assert!("mixed:101".parse::<Workload>().is_err());
        assert_eq!("512-4096".parse::<SizeRange>().unwrap(), SizeRange { min: 512, max: 4096 });
        assert!("9-1".parse::<SizeRange>().is_err());
        assert_eq!("zipf:0.99".parse::<KeyDistribution>().unwrap(), KeyDistribution::Zipf(0.99));
        assert!("zipf:-1".parse::<KeyDistribution>().is_err());
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let chooser = KeyChooser::new(1000, KeyDistribution::Zipf(1.1)).unwrap();
        let mut rng = rand::rng();
        let mut counts = vec![0u32; 1000];
        for _ in 0..20_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        assert!(top10 > 20_000 / 4, "the 10 hottest keys get over a quarter of the load: {top10}");
        let uniform = KeyChooser::new(1000, KeyDistribution::Uniform).unwrap();
        assert!((0..1000).all(|_| uniform.next(&mut rng) < 1000));
    }
}
