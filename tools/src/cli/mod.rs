//! Command-line interface (clap). `serve`'s flags are not written here: they
//! are made from the config's keys ([`serve`]), so a new config key is a
//! `Config` field and its line in `config/node.example.toml`, nothing more.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use quorumkv::config::LogFormat;

pub mod serve;
pub use serve::ServeArgs;

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
    /// Simulate gossip and layout changes of large clusters (no sockets; deterministic).
    Sim(crate::sim::SimArgs),
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
    /// Log lines as text or json.
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Output folder (an existing CA there is reused).
    #[arg(long)]
    pub out: PathBuf,
    /// Sign with the CA in this folder (ca.pem, ca-key.pem; never created)
    /// and write only the node certificates to --out: how a Kubernetes pod
    /// makes its own certificate at start from a Secret holding the CA.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
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
}
