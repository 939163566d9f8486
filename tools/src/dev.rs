//! `quorumkv dev`: a local cluster on 127.0.0.1 for trying the store out.
//!
//! First run writes a CA, node and admin certificates, one config per node
//! and `cluster.json` under `--dir`; later runs reuse them (and the data).
//! All nodes run in this process and stop together on Ctrl-C.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::certs::{Ca, CertError, default_sans};
use quorumkv::config::{Config, ConfigError, Defaults, LogFormat, MemberConfig, TlsConfig};
use quorumkv::node::{Node, NodeError};

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("node {id}: {source}")]
    Node { id: String, source: Box<NodeError> },
}

/// `cluster.json`: the machine-readable map of a cluster, for tools and tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub nodes: Vec<ClusterNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: String,
    pub client_url: String,
    pub peer_url: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, DevError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| DevError::Io { path: path.into(), source })?;
        serde_json::from_str(&text).map_err(|source| DevError::Json { path: path.into(), source })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io { path: path.to_owned(), source }
}

/// Writes whatever is missing under `dir` and returns the cluster map.
/// Existing files win: a second run reuses certificates, configs and data.
pub fn init(
    dir: &Path,
    nodes: usize,
    first_port: u16,
    log_format: LogFormat,
) -> Result<ClusterFile, DevError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let cluster_path = dir.join("cluster.json");
    if cluster_path.exists() {
        let existing = ClusterFile::load(&cluster_path)?;
        if existing.nodes.len() > nodes {
            tracing::warn!(
                existing = existing.nodes.len(),
                requested = nodes,
                "reusing the existing cluster in {} (shrink it with `quorumkv cluster leave`)",
                dir.display()
            );
        }
        if existing.nodes.len() >= nodes {
            return Ok(existing);
        }
        return grow(&dir, existing, nodes, first_port);
    }
    let certs_dir = dir.join("certs");
    let ca = Ca::load_or_create(&dir)?;
    let admin = ca.issue(&certs_dir, "admin", &["localhost".to_string(), "127.0.0.1".to_string()])?;
    let ids: Vec<String> = (1..=nodes).map(|i| format!("node{i}")).collect();
    let port = |i: usize, offset: u16| first_port.saturating_add(offset).saturating_add(i as u16);
    let members: Vec<MemberConfig> =
        ids.iter().enumerate().map(|(i, id)| local_member(id, port(i, 0), port(i, 1000))).collect();
    let base = dev_config(members.clone(), nodes, log_format);
    let mut cluster_nodes = Vec::new();
    for (i, member) in members.iter().enumerate() {
        cluster_nodes.push(write_node(&dir, &ca, base.clone(), member, port(i, 0), port(i, 1000))?);
    }
    let file = ClusterFile {
        ca: dir.join("ca.pem"),
        client_cert: admin.cert,
        client_key: admin.key,
        nodes: cluster_nodes,
    };
    let json = serde_json::to_string_pretty(&file)
        .map_err(|source| DevError::Json { path: cluster_path.clone(), source })?;
    std::fs::write(&cluster_path, json).map_err(io(&cluster_path))?;
    Ok(file)
}

/// A member on 127.0.0.1 with these client and peer ports.
fn local_member(id: &str, client: u16, peer: u16) -> MemberConfig {
    MemberConfig {
        id: id.to_string(),
        client_url: format!("https://127.0.0.1:{client}"),
        peer_url: format!("https://127.0.0.1:{peer}"),
        weight: 1,
    }
}

/// Adds nodes `existing + 1 ..= nodes` to the cluster of `existing`: their
/// certificates, and configs that list only themselves and the existing
/// nodes as seeds, so starting them (`quorumkv serve --config`) is the
/// whole scale-up: they join by themselves.
fn grow(
    dir: &Path,
    mut existing: ClusterFile,
    nodes: usize,
    first_port: u16,
) -> Result<ClusterFile, DevError> {
    let template = match existing.nodes.first() {
        Some(first) => Config::from_file(&first.config)?,
        None => return Ok(existing),
    };
    let ca = Ca::load_or_create(dir)?;
    let seeds: Vec<String> = existing.nodes.iter().map(|n| n.peer_url.clone()).collect();
    let port = |i: usize, offset: u16| first_port.saturating_add(offset).saturating_add(i as u16);
    for i in existing.nodes.len()..nodes {
        let me = local_member(&format!("node{}", i + 1), port(i, 0), port(i, 1000));
        let base = Config { members: vec![me.clone()], seeds: seeds.clone(), ..template.clone() };
        existing.nodes.push(write_node(dir, &ca, base, &me, port(i, 0), port(i, 1000))?);
    }
    let cluster_path = dir.join("cluster.json");
    let json = serde_json::to_string_pretty(&existing)
        .map_err(|source| DevError::Json { path: cluster_path.clone(), source })?;
    std::fs::write(&cluster_path, json).map_err(io(&cluster_path))?;
    Ok(existing)
}

/// A dev cluster's settings for `members`; each node's own fields are
/// filled in by [`write_node`].
fn dev_config(members: Vec<MemberConfig>, nodes: usize, log_format: LogFormat) -> Config {
    Config {
        node_id: String::new(),
        advertise_client_url: String::new(),
        advertise_peer_url: String::new(),
        weight: 1,
        client_listen: ([127, 0, 0, 1], 0).into(),
        peer_listen: ([127, 0, 0, 1], 0).into(),
        data_dir: PathBuf::new(),
        tls: TlsConfig::default(),
        members,
        cluster: "quorumkv".into(),
        seeds: Vec::new(),
        auto_join: true,
        gossip_interval_ms: 1000,
        partitions: 1024,
        max_n: 3.min(nodes),
        defaults: dev_defaults(nodes),
        max_value_bytes: 16 * 1024 * 1024,
        request_timeout_ms: 5_000,
        // A laptop has no load balancer to wait for; a second shows the phase.
        drain_delay_ms: 1_000,
        block_cache_bytes: 128 * 1024 * 1024,
        log_format,
        read_repair: true,
        read_fanout: Default::default(),
        repair: Default::default(),
        limits: Default::default(),
        governor: Default::default(),
    }
}

/// Writes one node's certificate, data directory and config (`base` with
/// the node's own id, ports, directory and certificate) under `dir`.
fn write_node(
    dir: &Path,
    ca: &Ca,
    base: Config,
    me: &MemberConfig,
    client: u16,
    peer: u16,
) -> Result<ClusterNode, DevError> {
    let id = &me.id;
    let node_certs = ca.issue(&dir.join("certs"), id, &default_sans(id, &[]))?;
    let data_dir = dir.join(id).join("data");
    std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
    let config = Config {
        node_id: id.clone(),
        client_listen: ([127, 0, 0, 1], client).into(),
        peer_listen: ([127, 0, 0, 1], peer).into(),
        data_dir: data_dir.clone(),
        tls: TlsConfig { ca: dir.join("ca.pem"), cert: node_certs.cert, key: node_certs.key },
        ..base
    };
    config.validate()?;
    let config_path = dir.join(format!("{id}.toml"));
    std::fs::write(&config_path, config.to_toml()).map_err(io(&config_path))?;
    Ok(ClusterNode {
        id: id.clone(),
        client_url: me.client_url.clone(),
        peer_url: me.peer_url.clone(),
        config: config_path,
        data_dir,
    })
}

/// Defaults that work on a cluster smaller than three nodes too.
fn dev_defaults(nodes: usize) -> Defaults {
    let n = 3.min(nodes);
    Defaults { n, r: (n / 2 + 1).min(2), w: (n / 2 + 1).min(2), ..Defaults::default() }
}

/// Starts every node of `cluster` in this process.
pub async fn start(cluster: &ClusterFile) -> Result<Vec<Node>, DevError> {
    let mut nodes = Vec::new();
    for n in &cluster.nodes {
        let config = Config::from_file(&n.config)?;
        let node = Node::start(config)
            .await
            .map_err(|source| DevError::Node { id: n.id.clone(), source: Box::new(source) })?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Ready-to-paste commands for the running cluster.
pub fn banner(cluster: &ClusterFile) -> String {
    let ca = cluster.ca.display();
    let first = cluster.nodes.first().map_or("https://127.0.0.1:8443", |n| n.client_url.as_str());
    let second = cluster.nodes.get(1).map_or(first, |n| n.client_url.as_str());
    format!(
        "quorumkv dev cluster: {} nodes ({})\n\n  curl --cacert {ca} -X PUT -H 'W: 2' -H 'Content-Type: text/plain' --data-binary 'hello' {first}/keys/greeting\n  curl --cacert {ca} -i -H 'R: 2' {second}/keys/greeting\n  curl --cacert {ca} {first}/cluster\n\nPress Ctrl-C to stop.\n",
        cluster.nodes.len(),
        cluster.nodes.iter().map(|n| n.client_url.as_str()).collect::<Vec<_>>().join(", "),
    )
}
