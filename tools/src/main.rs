//! The `quorumkv` binary: parses the command line, sets up logging, and
//! hands over to the library. `anyhow` lives only here.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use quorumkv::config::LogFormat;
use quorumkv::node::Node;
use quorumkv_tools::admin::{self, ClusterCommand, GetOutput};
use quorumkv_tools::cli::{Cli, Command};
use quorumkv_tools::{certs, dev};

/// glibc's allocator spent ~20 % of a node's CPU in malloc/free (arena
/// locks, consolidation) under load; mimalloc's thread-local heaps avoid it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUORUMKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes and Docker send).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The error and its causes on one line, each cause once (most of our
/// errors already quote their source).
fn one_line(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        // Some messages (TOML's) span lines; an operator's log wants one.
        let text = cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line, no backtrace: this is what an operator (or a
            // container log) sees when a node refuses to start.
            let _ = writeln!(std::io::stderr(), "quorumkv: {}", one_line(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.to_config()?;
            init_logging(config.log_format);
            let node = Node::start(config).await?;
            shutdown_signal().await;
            tracing::info!("shutting down: draining in-flight requests");
            node.shutdown().await;
        }
        Command::Dev(args) => {
            init_logging(args.log_format);
            let cluster = dev::init(&args.dir, args.nodes, args.port, args.log_format)?;
            if args.init_only {
                println!("wrote {}", args.dir.join("cluster.json").display());
                return Ok(());
            }
            let nodes = dev::start(&cluster).await?;
            println!("{}", dev::banner(&cluster));
            shutdown_signal().await;
            futures::future::join_all(nodes.into_iter().map(Node::shutdown)).await;
        }
        Command::Certs(args) => {
            let ca = match &args.ca_dir {
                Some(dir) => certs::Ca::load(dir).context("loading the CA")?,
                None => certs::Ca::load_or_create(&args.out).context("creating the CA")?,
            };
            for node in &args.nodes {
                let extra: Vec<String> = args.san.iter().map(|s| s.replace("{node}", node)).collect();
                let paths = ca.issue(&args.out, node, &certs::default_sans(node, &extra))?;
                println!("{node}: {} {}", paths.cert.display(), paths.key.display());
            }
            if args.ca_dir.is_none() {
                let admin = ca.issue(&args.out, "admin", &["localhost".to_string()])?;
                println!("admin client: {} {}", admin.cert.display(), admin.key.display());
                println!("CA: {}", args.out.join("ca.pem").display());
            }
        }
        Command::Sim(args) => {
            let results = quorumkv_tools::sim::run(&args)?;
            let text = if args.json {
                serde_json::to_string_pretty(&results)?
            } else {
                quorumkv_tools::sim::table(&results, &args)
            };
            let _ = writeln!(std::io::stdout(), "{text}");
        }
        Command::Bench(args) => {
            let summary = quorumkv_tools::bench::run(&args).await?;
            if let Some(dir) = &args.report {
                quorumkv_tools::bench::plot::write_report(dir, &summary)?;
            }
            let text = if args.json { serde_json::to_string_pretty(&summary)? } else { summary.text() };
            // A closed pipe (`| head`) is not worth a panic.
            let _ = writeln!(std::io::stdout(), "{text}");
            if !summary.passed {
                anyhow::bail!(
                    "bench failed: {} errors of {} requests (allowed: --max-errors {})",
                    summary.errors,
                    summary.ops,
                    summary.max_errors
                );
            }
        }
        Command::Cluster(ClusterCommand::Status { target, json }) => {
            let _ = write!(std::io::stdout(), "{}", admin::cluster_status(&target, json).await?);
        }
        Command::Cluster(ClusterCommand::Leave { id, target, wait, timeout_secs }) => {
            let wait = wait.then(|| std::time::Duration::from_secs(timeout_secs));
            let _ = write!(
                std::io::stdout(),
                "{}",
                admin::change_member(&target, &id, "leave", None, wait).await?
            );
        }
        Command::Cluster(ClusterCommand::Remove { id, target }) => {
            let out = admin::change_member(&target, &id, "remove", None, None).await?;
            let _ = write!(std::io::stdout(), "{out}");
        }
        Command::Cluster(ClusterCommand::Weight { id, weight, target }) => {
            let body = serde_json::json!({ "weight": weight });
            let out = admin::change_member(&target, &id, "weight", Some(body), None).await?;
            let _ = write!(std::io::stdout(), "{out}");
        }
        Command::Cluster(ClusterCommand::Join { id, target }) => {
            let out = admin::change_member(&target, &id, "join", None, None).await?;
            let _ = write!(std::io::stdout(), "{out}");
        }
        Command::Get(args) => match admin::get(&args).await? {
            GetOutput::Value(bytes) => {
                let _ = std::io::stdout().write_all(&bytes);
            }
            GetOutput::Json(text) => {
                let _ = writeln!(std::io::stdout(), "{text}");
            }
            GetOutput::Siblings { json, hint } => {
                let _ = writeln!(std::io::stdout(), "{json}");
                let _ = writeln!(std::io::stderr(), "{hint}");
            }
            GetOutput::NotFound => anyhow::bail!("{}: not found", args.key),
        },
        Command::Put(args) => {
            let _ = writeln!(std::io::stderr(), "{}", admin::put(&args).await?);
        }
        Command::Health(target) => {
            let _ = writeln!(std::io::stdout(), "{}", admin::health(&target).await?);
        }
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "quorumkv", &mut std::io::stdout());
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
        }
        Command::Delete(args) => {
            let _ = writeln!(std::io::stderr(), "{}", admin::delete(&args).await?);
        }
    }
    Ok(())
}
