//! Command-line interface (clap). `serve` has one flag per config key, each
//! also read from a `QUORUMKV_*` environment variable; precedence is
//! flag > env > file. The flags are laid onto the file's tables by one
//! naming rule ([`ServeArgs::to_config`]), and tests check that every key
//! has its flag, its variable and its line in `config/node.example.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use serde::Serialize;

use crate::config::{
    Config, ConfigError, Defaults, LogFormat, MemberConfig, ObjectLimits, RepairConfig, TlsConfig,
    parse_member,
};

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
    Health(crate::admin::NodeAddress),
    /// Print a shell completion script (e.g. `quorumkv completions bash > /etc/bash_completion.d/quorumkv`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `quorumkv man > quorumkv.1 && man ./quorumkv.1`.
    Man,
}

/// `serve`'s flags: one per config key (see [`ServeArgs::to_config`]).
#[derive(Debug, Args, Default, Serialize)]
pub struct ServeArgs {
    /// TOML config file; flags and QUORUMKV_* variables override its keys.
    #[arg(long, env = "QUORUMKV_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id, as listed among the members.
    #[arg(long, env = "QUORUMKV_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Address of the public HTTPS API (e.g. 0.0.0.0:8443).
    #[arg(long, env = "QUORUMKV_CLIENT_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_listen: Option<SocketAddr>,
    /// Address of the node-to-node port (mutual TLS).
    #[arg(long, env = "QUORUMKV_PEER_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_listen: Option<SocketAddr>,
    /// RocksDB data directory.
    #[arg(long, env = "QUORUMKV_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Cluster CA certificate (PEM): verifies peers and admin clients.
    #[arg(long, env = "QUORUMKV_TLS_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "QUORUMKV_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "QUORUMKV_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// A member as ID,CLIENT_URL,PEER_URL[,WEIGHT]; repeat the flag, or
    /// separate members by spaces in QUORUMKV_MEMBERS. Replaces the file's list.
    #[arg(long = "member", env = "QUORUMKV_MEMBERS", value_delimiter = ' ', value_parser = parse_member)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberConfig>,
    /// Ring partitions (fixed for the cluster's life; every node the same).
    #[arg(long, env = "QUORUMKV_PARTITIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Largest N a request may ask for.
    #[arg(long, env = "QUORUMKV_MAX_N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_n: Option<usize>,
    /// N when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_n: Option<usize>,
    /// R when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_R")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_r: Option<usize>,
    /// W when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_W")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_w: Option<usize>,
    /// PR when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_PR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pr: Option<usize>,
    /// PW when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_PW")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pw: Option<usize>,
    /// DW when a request sends none.
    #[arg(long, env = "QUORUMKV_DEFAULT_DW")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_dw: Option<usize>,
    /// Largest value a PUT may store (413 above).
    #[arg(long, env = "QUORUMKV_MAX_VALUE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<usize>,
    /// How long the coordinator waits for replicas before answering 503.
    #[arg(long, env = "QUORUMKV_REQUEST_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// On SIGTERM, serve this long while readiness says draining, then stop.
    #[arg(long, env = "QUORUMKV_DRAIN_DELAY_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_delay_ms: Option<u64>,
    /// RocksDB block cache size.
    #[arg(long, env = "QUORUMKV_BLOCK_CACHE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_cache_bytes: Option<usize>,
    /// Log lines as text or JSON.
    #[arg(long, env = "QUORUMKV_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Repair stale replicas seen by reads.
    #[arg(long, env = "QUORUMKV_READ_REPAIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_repair: Option<bool>,
    /// How long hints for an unreachable node are kept.
    #[arg(long, env = "QUORUMKV_HINT_WINDOW_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint_window_secs: Option<u64>,
    /// Rate limit of hint delivery.
    #[arg(long, env = "QUORUMKV_HANDOFF_BYTES_PER_SEC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff_bytes_per_sec: Option<u64>,
    /// Run Merkle-tree anti-entropy.
    #[arg(long, env = "QUORUMKV_ANTI_ENTROPY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_entropy: Option<bool>,
    /// Pause between anti-entropy rounds.
    #[arg(long, env = "QUORUMKV_ANTI_ENTROPY_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Rate limit of anti-entropy traffic.
    #[arg(long, env = "QUORUMKV_ANTI_ENTROPY_BYTES_PER_SEC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_entropy_bytes_per_sec: Option<u64>,
    /// How often a partition's Merkle tree is rebuilt from the data.
    #[arg(long, env = "QUORUMKV_TREE_REBUILD_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_rebuild_secs: Option<u64>,
    /// Age a tombstone must reach before GC may remove it.
    #[arg(long, env = "QUORUMKV_TOMBSTONE_GRACE_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tombstone_grace_secs: Option<u64>,
    /// Most siblings a key may hold (409 above).
    #[arg(long, env = "QUORUMKV_MAX_SIBLINGS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_siblings: Option<usize>,
    /// Most bytes a key's siblings may hold together (413 above).
    #[arg(long, env = "QUORUMKV_MAX_OBJECT_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_object_bytes: Option<usize>,
}

impl ServeArgs {
    /// File (if any), then every flag/env value given, then validation.
    ///
    /// The overlay is generic: the flags given are serialised (unset ones
    /// skipped) and each lands on the config key it names, by one rule —
    /// `tls_*` and `default_*` flags fill `[tls]` and `[defaults]`, the keys
    /// of `[repair]` and `[limits]` keep their own names, the rest are
    /// top-level keys. A new config key is a `Config` field plus a flag
    /// here; the tests below fail if either (or the example file) is missing.
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
        let given = toml::Table::try_from(self)
            .map_err(|e| ConfigError::Invalid(format!("a `serve` flag or QUORUMKV_* variable: {e}")))?;
        let sections = sections();
        for (flag, value) in given {
            match section_of(&sections, &flag) {
                Some((section, key)) => {
                    sub_table(&mut table, section)?.insert(key, value);
                }
                None => {
                    table.insert(flag, value);
                }
            }
        }
        let where_from = self.config.clone().unwrap_or_else(|| PathBuf::from("<flags and environment>"));
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|source| ConfigError::Parse { path: where_from, source })?;
        config.validate()?;
        Ok(config)
    }
}

/// The config file's sections that `serve` flags fill: (table, flag
/// prefix, its keys). The keys come from the section types themselves.
fn sections() -> Vec<(&'static str, &'static str, toml::Table)> {
    let keys = |v: Result<toml::Table, toml::ser::Error>| v.unwrap_or_default();
    vec![
        ("tls", "tls_", keys(toml::Table::try_from(TlsConfig::default()))),
        ("defaults", "default_", keys(toml::Table::try_from(Defaults::default()))),
        ("repair", "", keys(toml::Table::try_from(RepairConfig::default()))),
        ("limits", "", keys(toml::Table::try_from(ObjectLimits::default()))),
    ]
}

/// The section and key a flag's value belongs to; `None` for a top-level key.
fn section_of(
    sections: &[(&'static str, &'static str, toml::Table)],
    flag: &str,
) -> Option<(&'static str, String)> {
    sections.iter().find_map(|(section, prefix, keys)| {
        let key = flag.strip_prefix(prefix)?;
        keys.contains_key(key).then(|| (*section, key.to_string()))
    })
}

/// The file's `[key]` table (made if absent); a file whose `key` is not a
/// table is refused rather than overwritten.
fn sub_table<'a>(table: &'a mut toml::Table, key: &str) -> Result<&'a mut toml::Table, ConfigError> {
    let entry = table.entry(key.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => Ok(t),
        _ => Err(ConfigError::Invalid(format!("`{key}` in the config file is not a table"))),
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

    const EXAMPLE: &str = include_str!("../config/node.example.toml");

    /// Every key of `Config`, as dotted paths (`defaults.r`), from a config
    /// serialised whole.
    fn key_paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            match v {
                toml::Value::Table(t) => key_paths(t, &format!("{prefix}{k}."), out),
                _ => out.push(format!("{prefix}{k}")),
            }
        }
    }

    fn config_keys() -> Vec<String> {
        let config = Config::from_toml(EXAMPLE).unwrap();
        let mut keys = Vec::new();
        key_paths(&toml::Table::try_from(&config).unwrap(), "", &mut keys);
        keys.sort();
        keys
    }

    /// The four places a key lives (the struct, its flag, its variable, the
    /// example file) cannot drift: a key without a flag, a flag or variable
    /// not named after its key, or a flag with no key fails here.
    #[test]
    fn every_config_key_has_a_serve_flag_and_variable_named_after_it() {
        let cli = <Cli as clap::CommandFactory>::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let sections = sections();
        let mut expected = Vec::new();
        for path in config_keys() {
            let id = match path.split_once('.') {
                Some((section, key)) => {
                    let (_, prefix, _) =
                        sections.iter().find(|(s, _, _)| *s == section).expect("a known section");
                    format!("{prefix}{key}")
                }
                None => path.clone(),
            };
            let arg = serve.get_arguments().find(|a| a.get_id().as_str() == id);
            let arg = arg.unwrap_or_else(|| panic!("config key {path} has no `serve` flag (field `{id}`)"));
            let long = if id == "members" { "member".to_string() } else { id.replace('_', "-") };
            assert_eq!(arg.get_long(), Some(long.as_str()), "flag of {path}");
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(env, format!("QUORUMKV_{}", id.to_uppercase()), "variable of {path}");
            expected.push(id);
        }
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if !["config", "help"].contains(&id) {
                assert!(expected.iter().any(|e| e == id), "flag --{id} sets no config key");
            }
        }
    }

    #[test]
    fn the_example_file_shows_every_key() {
        let mut shown = Vec::new();
        key_paths(&EXAMPLE.parse::<toml::Table>().unwrap(), "", &mut shown);
        shown.sort();
        assert_eq!(shown, config_keys(), "config/node.example.toml and Config differ");
    }

    #[test]
    fn every_kind_of_flag_lands_on_its_key() {
        let cli = Cli::try_parse_from([
            "quorumkv",
            "serve",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/node.example.toml"),
            "--tls-ca",
            "/x/ca.pem",
            "--hint-window-secs",
            "60",
            "--max-siblings",
            "7",
            "--read-repair",
            "false",
            "--log-format",
            "json",
            "--peer-listen",
            "127.0.0.1:9999",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let config = args.to_config().unwrap();
        assert_eq!(config.tls.ca, PathBuf::from("/x/ca.pem"));
        assert_eq!(config.tls.cert, PathBuf::from("certs/node1.pem"), "the file's other tls keys stay");
        assert_eq!(config.repair.hint_window_secs, 60);
        assert_eq!(config.limits.max_siblings, 7);
        assert!(!config.read_repair);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.peer_listen, "127.0.0.1:9999".parse().unwrap());
    }

    #[test]
    fn missing_required_key_is_one_clear_line() {
        let args = ServeArgs { node_id: Some("a".into()), ..Default::default() };
        let err = args.to_config().unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
        assert!(!err.contains('\n') || err.lines().count() <= 3, "{err}");
    }
}
