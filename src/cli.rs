//! Command-line interface (clap). `serve` flags mirror every config key and
//! each can also come from a `QUORUMKV_*` environment variable; precedence
//! is flag > env > file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, MemberConfig, parse_member};

#[derive(Debug, Parser)]
#[command(name = "quorumkv", version, about = "A Dynamo-style distributed key-value store")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Serve(ServeArgs),
    /// Run a local cluster on 127.0.0.1 (certificates and configs made on first run).
    Dev(DevArgs),
    /// Generate a cluster CA and node certificates for a real deployment.
    Certs(CertsArgs),
    /// Load-test a cluster through its public API.
    Bench(crate::bench::BenchArgs),
    /// Inspect a running cluster.
    #[command(subcommand)]
    Cluster(crate::admin::ClusterCommand),
    /// Read a key through the public API (prints the value, or every sibling as JSON).
    Get(crate::admin::GetArgs),
    /// Write a key through the public API (value as argument or on stdin).
    Put(crate::admin::PutArgs),
    /// Delete a key through the public API.
    Delete(crate::admin::DeleteArgs),
    /// Exit 0 if the node answers /health/live (for container health checks).
    Health(crate::admin::Target),
    /// Print a shell completion script (e.g. `quorumkv completions bash > /etc/bash_completion.d/quorumkv`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `quorumkv man > quorumkv.1 && man ./quorumkv.1`.
    Man,
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML config file; flags and QUORUMKV_* variables override its keys.
    #[arg(long, env = "QUORUMKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id, as listed among the members.
    #[arg(long, env = "QUORUMKV_NODE_ID")]
    pub node_id: Option<String>,
    /// Address of the public HTTPS API (e.g. 0.0.0.0:8443).
    #[arg(long, env = "QUORUMKV_CLIENT_LISTEN")]
    pub client_listen: Option<SocketAddr>,
    /// Address of the node-to-node port (mutual TLS).
    #[arg(long, env = "QUORUMKV_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// RocksDB data directory.
    #[arg(long, env = "QUORUMKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cluster CA certificate (PEM): verifies peers and admin clients.
    #[arg(long, env = "QUORUMKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "QUORUMKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "QUORUMKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A member as ID,CLIENT_URL,PEER_URL[,WEIGHT]; repeat the flag, or
    /// separate members by spaces in QUORUMKV_MEMBERS. Replaces the file's list.
    #[arg(long = "member", env = "QUORUMKV_MEMBERS", value_delimiter = ' ', value_parser = parse_member)]
    pub members: Vec<MemberConfig>,
    /// Ring partitions (fixed for the cluster's life; every node the same).
    #[arg(long, env = "QUORUMKV_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Largest N a request may ask for.
    #[arg(long, env = "QUORUMKV_MAX_N")]
    pub max_n: Option<usize>,
    /// N when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_N")]
    pub default_n: Option<usize>,
    /// R when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_R")]
    pub default_r: Option<usize>,
    /// W when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_W")]
    pub default_w: Option<usize>,
    /// PR when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_PR")]
    pub default_pr: Option<usize>,
    /// PW when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_PW")]
    pub default_pw: Option<usize>,
    /// DW when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_DW")]
    pub default_dw: Option<usize>,
    /// Largest value a PUT may store (413 above).
    #[arg(long, env = "QUORUMKV_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// How long the coordinator waits for replicas before answering 503.
    #[arg(long, env = "QUORUMKV_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// On SIGTERM, serve this long while readiness says draining, then stop.
    #[arg(long, env = "QUORUMKV_DRAIN_DELAY_MS")]
    pub drain_delay_ms: Option<u64>,
    /// RocksDB block cache size.
    #[arg(long, env = "QUORUMKV_BLOCK_CACHE_BYTES")]
    pub block_cache_bytes: Option<usize>,
    /// Log lines as text or JSON.
    #[arg(long, env = "QUORUMKV_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Repair stale replicas seen by reads.
    #[arg(long, env = "QUORUMKV_READ_REPAIR")]
    pub read_repair: Option<bool>,
    /// How long hints for an unreachable node are kept.
    #[arg(long, env = "QUORUMKV_HINT_WINDOW_SECS")]
    pub hint_window_secs: Option<u64>,
    /// Rate limit of hint delivery.
    #[arg(long, env = "QUORUMKV_HANDOFF_BYTES_PER_SEC")]
    pub handoff_bytes_per_sec: Option<u64>,
    /// Run Merkle-tree anti-entropy.
    #[arg(long, env = "QUORUMKV_ANTI_ENTROPY")]
    pub anti_entropy: Option<bool>,
    /// Pause between anti-entropy rounds.
    #[arg(long, env = "QUORUMKV_ANTI_ENTROPY_INTERVAL_MS")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Rate limit of anti-entropy traffic.
    #[arg(long, env = "QUORUMKV_ANTI_ENTROPY_BYTES_PER_SEC")]
    pub anti_entropy_bytes_per_sec: Option<u64>,
    /// How often a partition's Merkle tree is rebuilt from the data.
    #[arg(long, env = "QUORUMKV_TREE_REBUILD_SECS")]
    pub tree_rebuild_secs: Option<u64>,
    /// Age a tombstone must reach before GC may remove it.
    #[arg(long, env = "QUORUMKV_TOMBSTONE_GRACE_SECS")]
    pub tombstone_grace_secs: Option<u64>,
    /// Most siblings a key may hold (409 above).
    #[arg(long, env = "QUORUMKV_MAX_SIBLINGS")]
    pub max_siblings: Option<usize>,
    /// Most bytes a key's siblings may hold together (413 above).
    #[arg(long, env = "QUORUMKV_MAX_OBJECT_BYTES")]
    pub max_object_bytes: Option<usize>,
}

impl ServeArgs {
    /// File (if any), then every flag/env value given, then validation.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut table = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => toml::Table::new(),
        };
        fn set(t: &mut toml::Table, key: &str, v: Option<impl Into<toml::Value>>) {
            if let Some(v) = v {
                t.insert(key.to_string(), v.into());
            }
        }
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let int = |v: Option<usize>| v.map(|v| v as i64);
        set(&mut table, "node_id", self.node_id.clone());
        set(&mut table, "client_listen", self.client_listen.map(|a| a.to_string()));
        set(&mut table, "peer_listen", self.peer_listen.map(|a| a.to_string()));
        set(&mut table, "data_dir", path(&self.data_dir));
        set(&mut table, "partitions", self.partitions.map(i64::from));
        set(&mut table, "max_n", int(self.max_n));
        set(&mut table, "max_value_bytes", int(self.max_value_bytes));
        set(&mut table, "request_timeout_ms", self.request_timeout_ms.map(|v| v as i64));
        set(&mut table, "drain_delay_ms", self.drain_delay_ms.map(|v| v as i64));
        set(&mut table, "block_cache_bytes", int(self.block_cache_bytes));
        set(
            &mut table,
            "log_format",
            self.log_format.map(|f| if f == LogFormat::Json { "json" } else { "text" }),
        );
        set(&mut table, "read_repair", self.read_repair);
        let tls = sub_table(&mut table, "tls");
        set(tls, "ca", path(&self.tls_ca));
        set(tls, "cert", path(&self.tls_cert));
        set(tls, "key", path(&self.tls_key));
        let defaults = sub_table(&mut table, "defaults");
        set(defaults, "n", int(self.default_n));
        set(defaults, "r", int(self.default_r));
        set(defaults, "w", int(self.default_w));
        set(defaults, "pr", int(self.default_pr));
        set(defaults, "pw", int(self.default_pw));
        set(defaults, "dw", int(self.default_dw));
        let repair = sub_table(&mut table, "repair");
        let long = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
        set(repair, "hint_window_secs", long(self.hint_window_secs));
        set(repair, "handoff_bytes_per_sec", long(self.handoff_bytes_per_sec));
        set(repair, "anti_entropy", self.anti_entropy);
        set(repair, "anti_entropy_interval_ms", long(self.anti_entropy_interval_ms));
        set(repair, "anti_entropy_bytes_per_sec", long(self.anti_entropy_bytes_per_sec));
        set(repair, "tree_rebuild_secs", long(self.tree_rebuild_secs));
        set(repair, "tombstone_grace_secs", long(self.tombstone_grace_secs));
        let limits = sub_table(&mut table, "limits");
        set(limits, "max_siblings", int(self.max_siblings));
        set(limits, "max_object_bytes", int(self.max_object_bytes));
        if !self.members.is_empty() {
            let members = toml::Value::try_from(&self.members)
                .map_err(|e| ConfigError::Invalid(format!("members: {e}")))?;
            table.insert("members".into(), members);
        }
        let where_from = self.config.clone().unwrap_or_else(|| PathBuf::from("<flags and environment>"));
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|source| ConfigError::Parse { path: where_from, source })?;
        config.validate()?;
        Ok(config)
    }
}

fn sub_table<'a>(table: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let entry = table.entry(key.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    match entry {
        toml::Value::Table(t) => t,
        _ => unreachable!("just made a table"),
    }
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Folder for certificates, configs, data and cluster.json.
    #[arg(long, default_value = "quorumkv-dev")]
    pub dir: PathBuf,
    /// Client port of the first node (the others follow; peer ports are +1000).
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
    /// Write the files and exit without starting anything.
    #[arg(long)]
    pub init_only: bool,
    /// Log lines as text or JSON.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Output folder (an existing CA there is reused).
    #[arg(long)]
    pub out: PathBuf,
    /// Comma-separated node ids.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Extra subject alternative names for every node certificate (DNS names
    /// or IP addresses); repeat. `{node}` is replaced by the node id.
    #[arg(long)]
    pub san: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&<Cli as clap::CommandFactory>::command(), "quorumkv", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/node.example.toml");
        let cli = Cli::try_parse_from([
            "quorumkv",
            "serve",
            "--config",
            file,
            "--node-id",
            "node2",
            "--default-r",
            "1",
            "--default-n",
            "2",
            "--member",
            "node1,https://a:1,https://a:2",
            "--member",
            "node2,https://b:1,https://b:2,2",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let config = args.to_config().unwrap();
        assert_eq!(config.node_id, "node2");
        assert_eq!(config.defaults.r, 1);
        assert_eq!(config.defaults.w, 2, "untouched keys keep the file's value");
        assert_eq!(config.members.len(), 2);
        assert_eq!(config.members[1].weight, 2);
        assert_eq!(config.defaults.n, 2);
    }

    #[test]
    fn missing_required_key_is_one_clear_line() {
        let args = ServeArgs { node_id: Some("a".into()), ..Default::default() };
        let err = args.to_config().unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
        assert!(!err.contains('\n') || err.lines().count() <= 3, "{err}");
    }
}
