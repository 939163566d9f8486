use std::path::PathBuf;

use clap::Parser;
use quorumkv::config::{Config, LogFormat};

use super::{EXAMPLE, ServeArgs, flags};
use crate::cli::{Cli, Command};

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/node.example.toml");

fn serve(args: &[&str]) -> ServeArgs {
    let cli = Cli::try_parse_from(["quorumkv", "serve"].iter().chain(args)).unwrap();
    let Command::Serve(args) = cli.command else { panic!("serve") };
    args
}

/// Every key of a config table, as dotted paths (`defaults.r`).
fn key_paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        match v {
            toml::Value::Table(t) => key_paths(t, &format!("{prefix}{k}."), out),
            _ => out.push(format!("{prefix}{k}")),
        }
    }
}

/// Every key of `Config`, from a config serialised whole.
fn config_keys() -> Vec<String> {
    let config = Config::from_toml(EXAMPLE).unwrap();
    let mut keys = Vec::new();
    key_paths(&toml::Table::try_from(&config).unwrap(), "", &mut keys);
    keys.sort();
    keys
}

#[test]
fn the_example_file_shows_every_key_of_config() {
    let mut shown = Vec::new();
    key_paths(&EXAMPLE.parse::<toml::Table>().unwrap(), "", &mut shown);
    shown.sort();
    assert_eq!(shown, config_keys(), "config/node.example.toml and Config differ");
}

/// The flags are the example's keys, and the example's keys are Config's:
/// so every key has exactly one flag and one variable, named by the rule.
#[test]
fn every_config_key_is_one_flag_and_variable_named_after_it() {
    let cli = <Cli as clap::CommandFactory>::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let mut covered = Vec::new();
    for flag in flags() {
        let path = match &flag.section {
            Some(s) => format!("{s}.{}", flag.key),
            None => flag.key.clone(),
        };
        let arg = serve.get_arguments().find(|a| a.get_id().as_str() == flag.id).unwrap();
        let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default().to_string();
        covered.push((path, arg.get_long().unwrap_or_default().to_string(), env));
    }
    let paths: Vec<&str> = covered.iter().map(|(p, _, _)| p.as_str()).collect();
    for key in config_keys() {
        // `members` is one array of tables: its entries' keys are one flag.
        let owner = if key.starts_with("members") { "members" } else { key.as_str() };
        assert!(paths.contains(&owner), "config key {key} has no flag");
    }
    let named =
        |p: &str| covered.iter().find(|(path, _, _)| path == p).map(|(_, l, e)| (l.clone(), e.clone()));
    assert_eq!(named("node_id"), Some(("node-id".into(), "QUORUMKV_NODE_ID".into())));
    assert_eq!(named("tls.ca"), Some(("tls-ca".into(), "QUORUMKV_TLS_CA".into())));
    assert_eq!(named("defaults.dw"), Some(("default-dw".into(), "QUORUMKV_DEFAULT_DW".into())));
    assert_eq!(
        named("repair.hint_window_secs"),
        Some(("hint-window-secs".into(), "QUORUMKV_HINT_WINDOW_SECS".into()))
    );
    assert_eq!(named("limits.max_siblings"), Some(("max-siblings".into(), "QUORUMKV_MAX_SIBLINGS".into())));
    assert_eq!(named("members"), Some(("member".into(), "QUORUMKV_MEMBERS".into())));
    let mut ids: Vec<&str> = flags().iter().map(|f| f.id.as_str()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "two keys would share a flag");
}

#[test]
fn each_flag_takes_its_help_from_the_comment_above_its_key() {
    let help = |id: &str| flags().iter().find(|f| f.id == id).map(|f| f.help.clone()).unwrap();
    assert!(help("tls_cert").contains("This node's certificate"), "{}", help("tls_cert"));
    assert!(help("default_w").contains("(W)"), "{}", help("default_w"));
    assert!(help("members").contains("ID,CLIENT_URL,PEER_URL"), "{}", help("members"));
    for flag in flags() {
        assert!(!flag.help.is_empty(), "key {} has no comment above it in the example", flag.id);
    }
}

#[test]
fn flags_override_the_file() {
    let args = serve(&[
        "--config",
        EXAMPLE_PATH,
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
    ]);
    let config = args.to_config().unwrap();
    assert_eq!(config.node_id, "node2");
    assert_eq!(config.defaults.r, 1);
    assert_eq!(config.defaults.w, 2, "untouched keys keep the file's value");
    assert_eq!(config.members.len(), 2, "the flags replace the file's list");
    assert_eq!(config.members[1].weight, 2);
    assert_eq!(config.defaults.n, 2);
}

#[test]
fn every_kind_of_flag_lands_on_its_key() {
    let args = serve(&[
        "--config",
        EXAMPLE_PATH,
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
        "--seeds",
        "https://a:9443",
        "--seeds",
        "https://b:9443",
        "--auto-join",
        "false",
    ]);
    let config = args.to_config().unwrap();
    assert_eq!(config.seeds, ["https://a:9443", "https://b:9443"], "a list flag repeats");
    assert!(!config.auto_join);
    assert_eq!(config.tls.ca, PathBuf::from("/x/ca.pem"));
    assert_eq!(config.tls.cert, PathBuf::from("certs/node1.pem"), "the file's other tls keys stay");
    assert_eq!(config.repair.hint_window_secs, 60);
    assert_eq!(config.limits.max_siblings, 7);
    assert!(!config.read_repair);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.peer_listen, "127.0.0.1:9999".parse().unwrap());
}

#[test]
fn a_bad_value_is_refused_naming_its_key() {
    let err = Cli::try_parse_from(["quorumkv", "serve", "--max-n", "three"]).unwrap_err().to_string();
    assert!(err.contains("--max-n"), "{err}");
    let err =
        serve(&["--config", EXAMPLE_PATH, "--peer-listen", "nowhere"]).to_config().unwrap_err().to_string();
    assert!(err.contains("peer_listen"), "{err}");
    let err = Cli::try_parse_from(["quorumkv", "serve", "--member", "just-an-id"]).unwrap_err().to_string();
    assert!(err.contains("ID,CLIENT_URL,PEER_URL"), "{err}");
}

#[test]
fn missing_required_key_is_one_clear_line() {
    let err = serve(&["--node-id", "a"]).to_config().unwrap_err().to_string();
    assert!(err.contains("missing field"), "{err}");
    assert!(!err.contains('\n') || err.lines().count() <= 3, "{err}");
}
