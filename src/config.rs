//! Node configuration: one serde struct read from a TOML file, overlaid by
//! command-line flags and `QUORUMKV_*` environment variables (see
//! the binary's `serve` flags). Validation happens once, here, so the rest of
//! the node can trust every value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration was refused; each message is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// One member of the cluster as every node is told about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: String,
    /// Public HTTPS API of the member (shown by `GET /cluster`).
    pub client_url: String,
    /// Internal mutual-TLS endpoint the other nodes call.
    pub peer_url: String,
    /// Relative capacity: weight 2 holds about twice the data of weight 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// TLS material. The CA both signs this node's certificates and is the only
/// issuer the peer port accepts client certificates from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Default consistency knobs, used when a request does not send the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub n: usize,
    pub r: usize,
    pub w: usize,
    pub pr: usize,
    pub pw: usize,
    pub dw: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { n: 3, r: 2, w: 2, pr: 0, pw: 0, dw: 0 }
    }
}

/// How many of a key's replicas a GET asks.
///
/// `Quorum` (the default, Cassandra's choice since 4.0) asks R of them,
/// this node's own copy first, and another only when one fails, answers
/// that it cannot stand for the key (a wiped or damaged replica), or is
/// slower than 99 % of recent replica reads (speculative retry). R + W > N
/// holds as before: any R replicas meet every acknowledged write's W. Read
/// repair then mends the replicas that were asked; anti-entropy the rest.
/// `All` (Dynamo's and Riak's) asks all N and waits for R: every read
/// costs N replica reads, and read repair sees every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFanout {
    #[default]
    Quorum,
    All,
}

/// Output format of the node's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The names the config file uses, for flags that take a format.
impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format (text or json)")),
        }
    }
}

/// Everything a node needs to run. Field docs double as the reference for
/// the example config in `config/node.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id: one of `members`, or, for a node joining with
    /// `seeds`, its own (e.g. a Kubernetes pod's name).
    pub node_id: String,
    /// This node's public URL as clients and the other nodes reach it, when
    /// it is not in `members` (a node joining with `seeds`); when it is,
    /// empty or the same as its entry there.
    #[serde(default)]
    pub advertise_client_url: String,
    /// This node's peer URL, likewise.
    #[serde(default)]
    pub advertise_peer_url: String,
    /// This node's weight when it is not in `members` (its entry's there).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The cluster's name: nodes of another cluster refuse this one's
    /// gossip (and it theirs), so two clusters sharing a CA never merge.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Address the public HTTPS API listens on.
    pub client_listen: SocketAddr,
    /// Address the internal mutual-TLS API listens on.
    pub peer_listen: SocketAddr,
    /// RocksDB directory (one database per node).
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    /// The cluster's first layout when it is created (no `seeds`); a node
    /// that joins lists only itself here (its URLs and weight). Once a node
    /// has stored a layout, the stored one is used.
    pub members: Vec<MemberConfig>,
    /// Peer URLs of existing members: a node started with seeds and no
    /// stored layout fetches the cluster's layout from them (and joins).
    #[serde(default)]
    pub seeds: Vec<String>,
    /// A node absent from the layout it fetched asks to join by itself;
    /// with `false` it waits for `quorumkv cluster join ID`.
    #[serde(default = "default_true")]
    pub auto_join: bool,
    /// Pause between gossip rounds (each round: a few random peers).
    #[serde(default = "default_gossip_interval_ms")]
    pub gossip_interval_ms: u64,
    /// Number of ring partitions Q: a power of two, fixed when the cluster is created.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Largest N a request may ask for (and the replica count the ring balances for).
    #[serde(default = "default_max_n")]
    pub max_n: usize,
    #[serde(default)]
    pub defaults: Defaults,
    /// Largest accepted value; a larger PUT answers 413.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// Deadline of a whole client request (quorum wait included), in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// On SIGTERM, how long the node keeps serving while `/health/ready`
    /// answers 503, before it stops accepting: one readiness-probe period,
    /// so load balancers stop routing to it before connections are refused.
    #[serde(default = "default_drain_delay_ms")]
    pub drain_delay_ms: u64,
    /// RocksDB block cache size for the objects' data blocks. Their index
    /// and filters are held apart, ~5-8 MiB per GB stored (see the
    /// `rocksdb_table_readers_bytes` gauge), so a node's memory grows a
    /// little with its data beyond this.
    #[serde(default = "default_block_cache_bytes")]
    pub block_cache_bytes: usize,
    #[serde(default)]
    pub log_format: LogFormat,
    /// After answering a GET, bring replicas that missed part of the merged
    /// answer up to date (asynchronously).
    #[serde(default = "default_true")]
    pub read_repair: bool,
    /// How many replicas a GET asks (see [`ReadFanout`]).
    #[serde(default)]
    pub read_fanout: ReadFanout,
    /// Hinted handoff, anti-entropy and tombstone GC.
    #[serde(default)]
    pub repair: RepairConfig,
    /// Bounds on one key's object (siblings and bytes).
    #[serde(default)]
    pub limits: ObjectLimits,
    /// Background work yields to foreground latency.
    #[serde(default)]
    pub governor: GovernorConfig,
}

/// How large one key's object may grow through client writes. A write that
/// would pass a limit is refused with a 4xx and stores nothing; merges
/// between replicas are never refused (they must not lose a version), so an
/// object can exceed the limits only through truly concurrent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectLimits {
    /// Most siblings a key may hold after a write (Riak's `max_siblings`
    /// default: 100).
    pub max_siblings: usize,
    /// Most bytes of all siblings' values together (Riak refuses objects
    /// over 50 MB by default; here 64 MiB, four values of the largest
    /// size `max_value_bytes` allows by default).
    pub max_object_bytes: usize,
}

impl Default for ObjectLimits {
    fn default() -> Self {
        ObjectLimits { max_siblings: 100, max_object_bytes: 64 << 20 }
    }
}

/// The background work that makes replicas converge after failures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairConfig {
    /// A hint whose home stays unreachable longer than this is dropped once
    /// another home holds a version including it (anti-entropy covers it).
    pub hint_window_secs: u64,
    /// Rate of hint delivery per node at governor share 1.
    pub handoff_bytes_per_sec: u64,
    /// Run Merkle-tree anti-entropy exchanges.
    pub anti_entropy: bool,
    /// Pause between two anti-entropy rounds (a round compares every
    /// partition this node shares with one peer).
    pub anti_entropy_interval_ms: u64,
    /// Rate of anti-entropy, transfers and GC per node at governor share 1.
    pub anti_entropy_bytes_per_sec: u64,
    /// Each partition's tree is rebuilt from its data this often, catching
    /// records damaged on disk without any write (0: never).
    pub tree_rebuild_secs: u64,
    /// A tombstone is reaped once every home replica holds it, no member
    /// holds a hint for the key, and it is this old. Must be at least
    /// `hint_window_secs`.
    pub tombstone_grace_secs: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            hint_window_secs: 3 * 3600,
            handoff_bytes_per_sec: 8 << 20,
            anti_entropy: true,
            anti_entropy_interval_ms: 10_000,
            anti_entropy_bytes_per_sec: 8 << 20,
            tree_rebuild_secs: 7 * 24 * 3600,
            tombstone_grace_secs: 24 * 3600,
        }
    }
}

/// `[governor]`: how background work yields to foreground requests
/// (the `governor` module).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernorConfig {
    /// Watch foreground latency and scale background work to it; off, the
    /// background runs at the configured rates whatever the load.
    pub enabled: bool,
    /// Foreground p99 (ms) above which background work is slowed down.
    pub target_p99_ms: u64,
    /// How far above the configured rates background work may run while
    /// the node answers (almost) no foreground requests.
    pub idle_boost: u64,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        // No boost by default: an idle node that pulls (a joiner, a refill)
        // made its busy peers answer 8x faster and their p99 during a join
        // rose from 9 to 15 ms (benches/resize.sh), measured before nodes
        // paced their answers too; not measured again since.
        GovernorConfig { enabled: true, target_p99_ms: 10, idle_boost: 1 }
    }
}

fn default_true() -> bool {
    true
}
fn default_weight() -> u32 {
    1
}
impl MemberConfig {
    /// The rules every member entry must meet, whether it comes from this
    /// node's config or from a node asking to join.
    pub fn check(&self) -> Result<(), String> {
        // A node proves who it is on the peer port by a certificate
        // naming its id as a DNS subject alternative name.
        if rustls_pki_types::DnsName::try_from(self.id.as_str()).is_err()
            || self.id.parse::<std::net::IpAddr>().is_ok()
        {
            return Err(format!(
                "member id {:?} is not a DNS name (letters, digits, '-' and '.'): node certificates name their node by it",
                self.id
            ));
        }
        // Not a name the default node certificates all carry, which would
        // make every node's certificate look like that member's.
        if self.id.eq_ignore_ascii_case("localhost") {
            return Err(format!(
                "member id {:?} is a name every node certificate carries: pick another",
                self.id
            ));
        }
        if self.weight == 0 {
            return Err(format!("member {} has weight 0", self.id));
        }
        for url in [&self.client_url, &self.peer_url] {
            if !url.starts_with("https://") {
                return Err(format!("member {} url {url:?} is not https://", self.id));
            }
        }
        Ok(())
    }
}

fn default_cluster() -> String {
    "quorumkv".into()
}

fn default_gossip_interval_ms() -> u64 {
    1000
}

fn default_partitions() -> u32 {
    1024
}
fn default_max_n() -> usize {
    3
}
fn default_max_value_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_drain_delay_ms() -> u64 {
    5_000
}
fn default_request_timeout_ms() -> u64 {
    5_000
}
/// The smallest block cache a node accepts: RocksDB's clock cache needs a
/// table of at least a few slots (a 0-byte one crashes it at open).
pub const MIN_BLOCK_CACHE_BYTES: usize = 1 << 20;

fn default_block_cache_bytes() -> usize {
    128 * 1024 * 1024
}

impl Config {
    /// This node's own entry: its one in `members`, else (a node joining
    /// with `seeds`) one made of `node_id`, the advertised URLs and
    /// `weight`.
    pub fn self_member(&self) -> Result<MemberConfig, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let advertised = (self.advertise_client_url.as_str(), self.advertise_peer_url.as_str());
        if let Some(m) = self.members.iter().find(|m| m.id == self.node_id) {
            let agrees = |given: &str, listed: &str| given.is_empty() || given == listed;
            if !agrees(advertised.0, &m.client_url) || !agrees(advertised.1, &m.peer_url) {
                return bad(format!(
                    "advertise_client_url/advertise_peer_url of {:?} differ from its entry in members",
                    self.node_id
                ));
            }
            return Ok(m.clone());
        }
        if self.seeds.is_empty() || advertised.0.is_empty() || advertised.1.is_empty() {
            return bad(format!(
                "node_id {:?} is not one of members (a node that joins an existing cluster sets seeds, advertise_client_url and advertise_peer_url)",
                self.node_id
            ));
        }
        Ok(MemberConfig {
            id: self.node_id.clone(),
            client_url: advertised.0.to_string(),
            peer_url: advertised.1.to_string(),
            weight: self.weight,
        })
    }

    /// Whether this node starts by joining an existing cluster through its
    /// seeds (it is not in `members`, or lists only itself there) rather
    /// than creating the cluster of `members`.
    pub fn joins(&self) -> bool {
        let listed = self.members.iter().any(|m| m.id == self.node_id);
        let others = self.members.iter().any(|m| m.id != self.node_id);
        !self.seeds.is_empty() && (!listed || !others)
    }

    /// Reads a TOML file without validating it (flags may still complete it).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn to_toml(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every rule the rest of the node relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id.is_empty() {
            return bad("node_id is empty".into());
        }
        if self.members.is_empty() && self.seeds.is_empty() {
            return bad("members is empty (and no seeds to join through)".into());
        }
        let me = self.self_member()?;
        me.check().map_err(ConfigError::Invalid)?;
        let mut ids: Vec<&str> = self.members.iter().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("members contains a duplicate id".into());
        }
        for m in &self.members {
            m.check().map_err(ConfigError::Invalid)?;
        }
        if !self.partitions.is_power_of_two() || self.partitions > 65_536 {
            return bad(format!("partitions {} is not a power of two <= 65536", self.partitions));
        }
        if self.max_n == 0 {
            return bad("max_n must be at least 1".into());
        }
        let d = self.defaults;
        // A joining node lists only itself: the cluster it joins is bigger.
        let known = if self.seeds.is_empty() { self.members.len() } else { self.max_n };
        let n_limit = self.max_n.min(known);
        if d.n == 0 || d.n > n_limit {
            return bad(format!("defaults.n {} is not in 1..={n_limit} (max_n, cluster size)", d.n));
        }
        if d.r == 0 || d.r > d.n || d.w == 0 || d.w > d.n {
            return bad("defaults.r and defaults.w must be in 1..=defaults.n".into());
        }
        if d.pr > d.r || d.pw > d.w || d.dw > d.w {
            return bad("defaults: pr <= r, pw <= w and dw <= w are required".into());
        }
        if self.max_value_bytes == 0 {
            return bad("max_value_bytes must be positive".into());
        }
        if self.cluster.is_empty() {
            return bad("cluster is empty".into());
        }
        if let Some(seed) = self.seeds.iter().find(|s| !s.starts_with("https://")) {
            return bad(format!("seed {seed:?} is not https://"));
        }
        if self.gossip_interval_ms == 0 {
            return bad("gossip_interval_ms must be positive".into());
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be positive".into());
        }
        if self.block_cache_bytes < MIN_BLOCK_CACHE_BYTES {
            return bad(format!(
                "block_cache_bytes {} is below the minimum {MIN_BLOCK_CACHE_BYTES} (1 MiB)",
                self.block_cache_bytes
            ));
        }
        let r = self.repair;
        if r.handoff_bytes_per_sec == 0 || r.anti_entropy_bytes_per_sec == 0 {
            return bad("repair.*_bytes_per_sec must be positive".into());
        }
        if r.hint_window_secs == 0 {
            return bad("repair.hint_window_secs must be positive".into());
        }
        if r.anti_entropy_interval_ms == 0 {
            return bad("repair.anti_entropy_interval_ms must be positive".into());
        }
        if self.governor.target_p99_ms == 0 || !(1..=64).contains(&self.governor.idle_boost) {
            return bad(
                "governor.target_p99_ms must be positive and governor.idle_boost between 1 and 64".into()
            );
        }
        if self.limits.max_siblings == 0 {
            return bad("limits.max_siblings must be positive".into());
        }
        if self.limits.max_object_bytes < self.max_value_bytes {
            return bad(format!(
                "limits.max_object_bytes ({}) must be at least max_value_bytes ({}): no value could be stored",
                self.limits.max_object_bytes, self.max_value_bytes
            ));
        }
        if r.tombstone_grace_secs < r.hint_window_secs {
            return bad(format!(
                "repair.tombstone_grace_secs ({}) must be at least repair.hint_window_secs ({}): an older hint could bring deleted data back",
                r.tombstone_grace_secs, r.hint_window_secs
            ));
        }
        Ok(())
    }
}

/// Parses the flag/env form of a member: `ID,CLIENT_URL,PEER_URL[,WEIGHT]`.
pub fn parse_member(text: &str) -> Result<MemberConfig, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let (id, client_url, peer_url, weight) = match parts.as_slice() {
        [id, c, p] => (id, c, p, 1),
        [id, c, p, w] => (id, c, p, w.parse().map_err(|_| format!("bad weight {w:?}"))?),
        _ => return Err(format!("member {text:?} is not ID,CLIENT_URL,PEER_URL[,WEIGHT]")),
    };
    Ok(MemberConfig {
        id: id.to_string(),
        client_url: client_url.to_string(),
        peer_url: peer_url.to_string(),
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commented example in the repository must stay a valid config.
    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../config/node.example.toml");
        let config = Config::from_toml(text).expect("example parses");
        config.validate().expect("example validates");
        assert_eq!(config.node_id, "node1");
        assert_eq!(config.members.len(), 3);
        assert_eq!(config.defaults, Defaults::default());
    }

    #[test]
    fn rejects_a_block_cache_under_a_mebibyte() {
        let mut config = Config::from_toml(include_str!("../config/node.example.toml")).unwrap();
        config.block_cache_bytes = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("block_cache_bytes 0 is below the minimum"), "{err}");
        config.block_cache_bytes = MIN_BLOCK_CACHE_BYTES;
        config.validate().expect("1 MiB is enough");
    }

    #[test]
    fn rejects_node_outside_members() {
        let mut config = Config::from_toml(include_str!("../config/node.example.toml")).unwrap();
        config.node_id = "ghost".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("not one of members"), "{err}");
    }

    #[test]
    fn a_node_outside_members_joins_with_seeds_and_advertised_urls() {
        let mut config = Config::from_toml(include_str!("../config/node.example.toml")).unwrap();
        assert!(!config.joins(), "a first member creates the cluster");
        config.node_id = "quorumkv-3".into();
        config.seeds = vec!["https://quorumkv-peers:9443".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("advertise_client_url"), "without its own URLs it cannot join: {err}");
        config.advertise_client_url = "https://quorumkv-3.quorumkv-peers:8443".into();
        config.advertise_peer_url = "https://quorumkv-3.quorumkv-peers:9443".into();
        config.weight = 2;
        config.validate().expect("a pod beyond the first members");
        assert!(config.joins());
        let me = config.self_member().unwrap();
        assert_eq!(
            (me.id.as_str(), me.peer_url.as_str(), me.weight),
            ("quorumkv-3", "https://quorumkv-3.quorumkv-peers:9443", 2)
        );
        // A first member whose advertised URLs disagree with its entry.
        config.node_id = "node1".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("differ"), "{err}");
        config.advertise_client_url = config.members[0].client_url.clone();
        config.advertise_peer_url = config.members[0].peer_url.clone();
        config.validate().expect("the same URLs as its entry");
        assert!(!config.joins(), "listed among others: it creates the cluster even with seeds");
    }

    #[test]
    fn rejects_a_member_named_like_every_certificate() {
        let mut config = Config::from_toml(include_str!("../config/node.example.toml")).unwrap();
        config.members[1].id = "localhost".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("localhost"), "{err}");
        config.members[1].id = "node2".into();
        config.seeds = vec!["http://plain:9443".into()];
        assert!(config.validate().unwrap_err().to_string().contains("seed"));
    }

    #[test]
    fn rejects_bad_defaults() {
        let mut config = Config::from_toml(include_str!("../config/node.example.toml")).unwrap();
        config.defaults.dw = 3;
        assert!(config.validate().is_err());
        config.defaults = Defaults { n: 4, ..Defaults::default() };
        assert!(config.validate().is_err(), "n above cluster size");
    }

    #[test]
    fn member_flag_form() {
        let m = parse_member("a,https://h:1,https://h:2,3").unwrap();
        assert_eq!((m.id.as_str(), m.weight), ("a", 3));
        assert!(parse_member("a,https://h:1").is_err());
        assert!(parse_member("a,b,c,x").is_err());
    }

    #[test]
    fn toml_round_trip() {
        let config = Config::from_toml(include_str!("../config/node.example.toml")).unwrap();
        assert_eq!(Config::from_toml(&config.to_toml()).unwrap(), config);
    }
}
