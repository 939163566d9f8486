//! `quorumkv serve`'s flags, made from the config's own keys. Each key of
//! `config/node.example.toml` (compiled in; a test checks it holds exactly
//! the keys of `quorumkv::config::Config`) becomes a flag named after it,
//! read also from a `QUORUMKV_*` variable, with the comment right above the
//! key as its help. Precedence is flag > variable > file > the key's
//! default. So a new config key is a `Config` field and its commented line
//! in the example, and nothing here.
//!
//! Naming rule: a top-level key `k` is `--k`; a key of `[tls]` is
//! `--tls-k`, of `[defaults]` `--default-k`; `[repair]` and `[limits]` keys
//! keep their own names (they are unique); `[[members]]` is `--member
//! ID,CLIENT_URL,PEER_URL[,WEIGHT]`, repeated. Dashes in flags, underscores
//! and upper case in variables (`--tls-ca`, `QUORUMKV_TLS_CA`).

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Arg, ArgAction, ArgMatches, value_parser};
use quorumkv::config::{Config, ConfigError, MemberConfig, parse_member};

/// The example config: the flags' list and help.
pub const EXAMPLE: &str = include_str!("../../../config/node.example.toml");

/// Flag prefix of each section's keys (a section not listed: `section_`).
const SECTIONS: &[(&str, &str)] =
    &[("tls", "tls_"), ("defaults", "default_"), ("repair", ""), ("limits", "")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Boolean,
    /// An array of tables, one flag value per entry (`[[members]]`).
    Members,
    /// An array of strings (`seeds`): space-separated in the variable.
    List,
}

/// One config key as a flag.
#[derive(Debug)]
pub struct Flag {
    /// The clap id: the variable's name without `QUORUMKV_`, lower case.
    id: String,
    section: Option<String>,
    key: String,
    kind: Kind,
    help: String,
}

impl Flag {
    fn long(&self) -> String {
        match self.kind {
            Kind::Members => "member".into(),
            _ => self.id.replace('_', "-"),
        }
    }

    fn env(&self) -> String {
        format!("QUORUMKV_{}", self.id.to_uppercase())
    }

    fn arg(&self) -> Arg {
        let arg = Arg::new(self.id.clone()).long(self.long()).env(self.env()).help(self.help.clone());
        match self.kind {
            Kind::Text => arg.value_name(self.key.to_uppercase()),
            Kind::Integer => arg.value_name("N").value_parser(value_parser!(i64)),
            Kind::Boolean => arg.value_name("true|false").value_parser(value_parser!(bool)),
            Kind::List => arg.value_name("URL").action(ArgAction::Append).value_delimiter(' '),
            Kind::Members => arg
                .value_name("ID,CLIENT_URL,PEER_URL[,WEIGHT]")
                .action(ArgAction::Append)
                .value_delimiter(' ')
                .value_parser(parse_member),
        }
    }

    /// The value given for this flag, as the config file would hold it.
    fn given(&self, m: &ArgMatches) -> Result<Option<toml::Value>, clap::Error> {
        let bad = |e: clap::parser::MatchesError| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e);
        Ok(match self.kind {
            Kind::Text => {
                m.try_get_one::<String>(&self.id).map_err(bad)?.map(|v| toml::Value::String(v.clone()))
            }
            Kind::Integer => m.try_get_one::<i64>(&self.id).map_err(bad)?.map(|v| toml::Value::Integer(*v)),
            Kind::Boolean => m.try_get_one::<bool>(&self.id).map_err(bad)?.map(|v| toml::Value::Boolean(*v)),
            Kind::List => m
                .try_get_many::<String>(&self.id)
                .map_err(bad)?
                .map(|v| toml::Value::Array(v.map(|s| toml::Value::String(s.clone())).collect())),
            Kind::Members => match m.try_get_many::<MemberConfig>(&self.id).map_err(bad)? {
                None => None,
                Some(members) => Some(toml::Value::Array(
                    members
                        .map(toml::Value::try_from)
                        .collect::<Result<_, _>>()
                        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?,
                )),
            },
        })
    }
}

/// Every flag, in the example file's order.
pub fn flags() -> &'static [Flag] {
    static FLAGS: OnceLock<Vec<Flag>> = OnceLock::new();
    FLAGS.get_or_init(|| flags_of(EXAMPLE))
}

/// The flags of a commented config file: each `key = value` line (outside
/// arrays of tables) is a flag, the `#` lines right above it its help.
fn flags_of(text: &str) -> Vec<Flag> {
    let values: toml::Table = text.parse().unwrap_or_default();
    let mut flags: Vec<Flag> = Vec::new();
    let (mut section, mut in_array, mut comment) = (None::<String>, false, Vec::<&str>::new());
    for line in text.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix('#') {
            comment.push(c.trim());
            continue;
        }
        let help = comment.join(" ");
        comment.clear();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            if !flags.iter().any(|f| f.id == name) {
                let (id, key) = (name.to_string(), name.to_string());
                flags.push(Flag { id, section: None, key, kind: Kind::Members, help });
            }
            (section, in_array) = (None, true);
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            (section, in_array) = (Some(name.to_string()), false);
        } else if let Some((key, _)) = line.split_once('=').filter(|_| !in_array) {
            let key = key.trim().to_string();
            let value = match &section {
                None => values.get(&key),
                Some(s) => values.get(s).and_then(|t| t.get(&key)),
            };
            let kind = match value {
                Some(toml::Value::Integer(_)) => Kind::Integer,
                Some(toml::Value::Boolean(_)) => Kind::Boolean,
                Some(toml::Value::Array(_)) => Kind::List,
                _ => Kind::Text,
            };
            let id = match &section {
                None => key.clone(),
                Some(s) => match SECTIONS.iter().find(|(name, _)| name == s) {
                    Some((_, prefix)) => format!("{prefix}{key}"),
                    None => format!("{s}_{key}"),
                },
            };
            flags.push(Flag { id, section: section.clone(), key, kind, help });
        }
    }
    flags
}

/// `serve`'s arguments: the config file, and the flags and variables given.
#[derive(Debug, Default)]
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    given: Vec<(&'static Flag, toml::Value)>,
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = Arg::new("config")
            .long("config")
            .env("QUORUMKV_CONFIG")
            .value_name("FILE")
            .value_parser(value_parser!(PathBuf))
            .help("TOML config file; flags and QUORUMKV_* variables override its keys.");
        flags().iter().fold(cmd.arg(config), |cmd, flag| cmd.arg(flag.arg()))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let config = m
            .try_get_one::<PathBuf>("config")
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?
            .cloned();
        let mut given = Vec::new();
        for flag in flags() {
            if let Some(value) = flag.given(m)? {
                given.push((flag, value));
            }
        }
        Ok(ServeArgs { config, given })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl ServeArgs {
    /// File (if any), then every flag/variable given, each on its key, then
    /// validation.
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
        for (flag, value) in &self.given {
            let at = match &flag.section {
                Some(section) => sub_table(&mut table, section)?,
                None => &mut table,
            };
            at.insert(flag.key.clone(), value.clone());
        }
        let where_from = self.config.clone().unwrap_or_else(|| PathBuf::from("<flags and environment>"));
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|source| ConfigError::Parse { path: where_from, source })?;
        config.validate()?;
        Ok(config)
    }
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

#[cfg(test)]
mod tests;
