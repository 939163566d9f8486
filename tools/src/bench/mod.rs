//! `quorumkv bench`: a load generator for the public HTTPS API.
//!
//! Closed loop by default (`--concurrency` workers, each sending its next
//! request when the last one answered); `--rate` switches to an open loop
//! where each request has an intended start time and latency is measured
//! from it, so a stalled server cannot hide its stall (coordinated
//! omission). `--ceiling` runs the same client against `/health/live`: the
//! cost of TLS + HTTP + this tool alone, to compare data-path numbers with.

pub mod plot;
pub mod report;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};

pub use report::{Summary, Tally};
pub use workload::{KeyChooser, KeyDistribution, SizeRange, Workload, key_name};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("tls: {0}")]
    Tls(#[from] quorumkv::tls::TlsError),
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cluster file: {0}")]
    Cluster(#[from] Box<crate::dev::DevError>),
    #[error("preload failed: {0}")]
    Preload(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// cluster.json written by `quorumkv dev` (URLs, CA, client certificate).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// A node's public URL; repeat for several. Overrides the cluster file's nodes.
    #[arg(long)]
    pub url: Vec<String>,
    /// The cluster CA (PEM) verifying the nodes.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM), for a node that asks for one.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// put, get, or mixed:<get%> (the rest read-modify-write with the context).
    #[arg(long, default_value = "put")]
    pub workload: Workload,
    /// How long to run (e.g. 20s); the default when --requests is not given is 20s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Run this long first without measuring (connections opening, caches
    /// filling), then `--duration`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Stop after this many requests instead.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Value size in bytes, or a range MIN-MAX.
    #[arg(long, default_value = "1024")]
    pub value_size: SizeRange,
    /// Size of the key space.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// uniform or zipf:<s>.
    #[arg(long, default_value = "uniform")]
    pub distribution: KeyDistribution,
    /// Write every key once before measuring.
    #[arg(long)]
    pub preload: bool,
    /// N header on every request (integer, one, quorum or all).
    #[arg(long)]
    pub n: Option<String>,
    /// R header on every GET.
    #[arg(long)]
    pub r: Option<String>,
    /// W header on every PUT.
    #[arg(long)]
    pub w: Option<String>,
    /// PW header on every PUT.
    #[arg(long)]
    pub pw: Option<String>,
    /// DW header on every PUT.
    #[arg(long)]
    pub dw: Option<String>,
    /// HTTP version to the nodes (HTTP/1.1 over a connection pool, or HTTP/2).
    #[arg(long, value_enum, default_value = "http1")]
    pub protocol: Protocol,
    /// Open loop: total requests per second, latency measured from each
    /// request's intended start.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measure the ceiling: GET /health/live with the same client and nodes.
    #[arg(long)]
    pub ceiling: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Prefix of the generated keys. Default: a fresh `bench-XXXXXXXX` per
    /// run, so blind writes of one run do not pile siblings onto another's.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Errors (no answer, or a 4xx/5xx) a run may have and still pass; past
    /// it the summary says FAILED and the command exits non-zero.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,
    /// Name of this run in the summary.
    #[arg(long)]
    pub name: Option<String>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Also draw this run into DIR: <scenario>.svg (throughput and latency
    /// over time, HDR percentile curve), and redraw DIR/index.html and
    /// DIR/percentiles.svg over every run kept there.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

/// Extra random bytes values are cut from.
const VALUE_POOL: usize = 1 << 20;

/// Where to send requests and with which TLS material.
struct Endpoints {
    urls: Vec<String>,
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
}

/// Everything a worker needs, shared.
struct Run {
    clients: Vec<Client>,
    urls: Vec<String>,
    workload: Workload,
    ceiling: bool,
    chooser: KeyChooser,
    sizes: SizeRange,
    prefix: String,
    headers: Vec<(&'static str, String)>,
    value: Bytes,
    stop: AtomicBool,
    issued: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    limit: Option<u64>,
    rate_per_worker: Option<f64>,
}

impl BenchArgs {
    fn endpoints(&self) -> Result<Endpoints, BenchError> {
        let cluster = match &self.cluster {
            Some(path) => Some(crate::dev::ClusterFile::load(path).map_err(Box::new)?),
            None => None,
        };
        let urls = if !self.url.is_empty() {
            self.url.clone()
        } else {
            cluster
                .as_ref()
                .map(|c| c.nodes.iter().map(|n| n.client_url.clone()).collect())
                .unwrap_or_default()
        };
        if urls.is_empty() {
            return Err(BenchError::Usage("give --cluster or at least one --url".into()));
        }
        let ca = self
            .cacert
            .clone()
            .or_else(|| cluster.as_ref().map(|c| c.ca.clone()))
            .ok_or_else(|| BenchError::Usage("give --cacert (or --cluster)".into()))?;
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => cluster.as_ref().map(|c| (c.client_cert.clone(), c.client_key.clone())),
        };
        Ok(Endpoints {
            urls: urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect(),
            ca,
            identity,
        })
    }

    fn consistency_headers(&self) -> Vec<(&'static str, String)> {
        [("n", &self.n), ("r", &self.r), ("w", &self.w), ("pw", &self.pw), ("dw", &self.dw)]
            .into_iter()
            .filter_map(|(h, v)| v.clone().map(|v| (h, v)))
            .collect()
    }

    fn describe_consistency(&self) -> String {
        let h = self.consistency_headers();
        if h.is_empty() {
            "defaults".into()
        } else {
            h.iter().map(|(k, v)| format!("{}={v}", k.to_uppercase())).collect::<Vec<_>>().join(" ")
        }
    }
}

fn build_clients(
    args: &BenchArgs,
    ca: &Path,
    identity: &Option<(PathBuf, PathBuf)>,
) -> Result<Vec<Client>, BenchError> {
    quorumkv::tls::install_default_provider();
    // HTTP/2 multiplexes every request to a node over one connection; a few
    // clients spread the load over a few connections like real callers would.
    let count = match args.protocol {
        Protocol::Http1 => 1,
        Protocol::Http2 => args.concurrency.div_ceil(16).max(1),
    };
    (0..count)
        .map(|_| {
            let mut tls = quorumkv::tls::public_client_config(
                ca,
                identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )?;
            // Offer only the protocol asked for: the nodes prefer h2 when
            // offered both, and the connection pool follows what ALPN
            // negotiated, whatever `http1_only` says. Offering both made
            // `--protocol http1` run HTTP/2 over one connection per node.
            tls.alpn_protocols = vec![match args.protocol {
                Protocol::Http1 => b"http/1.1".to_vec(),
                Protocol::Http2 => b"h2".to_vec(),
            }];
            let builder = Client::builder()
                .use_preconfigured_tls(tls)
                .no_proxy()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(args.concurrency);
            let builder = match args.protocol {
                Protocol::Http1 => builder.http1_only(),
                Protocol::Http2 => builder.http2_prior_knowledge(),
            };
            Ok(builder.build()?)
        })
        .collect()
}

/// Runs the benchmark described by `args` and returns its summary.
pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    let Endpoints { urls, ca, identity } = args.endpoints()?;
    if args.concurrency == 0 {
        return Err(BenchError::Usage("--concurrency must be at least 1".into()));
    }
    let clients = build_clients(args, &ca, &identity)?;
    let chooser = KeyChooser::new(args.keys, args.distribution).map_err(BenchError::Usage)?;
    // Values are slices at random offsets of a random pool, so no two are
    // alike: a single repeated value compresses unrealistically well in
    // RocksDB and skews every read benchmark.
    let mut value = vec![0u8; args.value_size.max + VALUE_POOL];
    rand::rng().fill(&mut value[..]);
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(20)),
    };
    let prefix = args.key_prefix.clone().unwrap_or_else(|| format!("bench-{:08x}", rand::random::<u32>()));
    let plan = Arc::new(Run {
        clients,
        urls,
        workload: args.workload,
        ceiling: args.ceiling,
        chooser,
        sizes: args.value_size,
        prefix: prefix.clone(),
        headers: args.consistency_headers(),
        value: Bytes::from(value),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        limit: args.requests,
        rate_per_worker: args.rate.map(|r| r / args.concurrency as f64),
    });
    if args.preload && !args.ceiling {
        preload(&plan, args.keys, args.concurrency, args.quiet).await?;
        // The preload is not part of the run: not in the progress line, not
        // in the figures (its tally is dropped).
        plan.done.store(0, Ordering::Relaxed);
        plan.failed.store(0, Ordering::Relaxed);
    }

    let started = Instant::now();
    let warmup = args.warmup.unwrap_or_default();
    let workers: Vec<_> =
        (0..args.concurrency).map(|i| tokio::spawn(worker(plan.clone(), i, started, warmup))).collect();
    let progress = (!args.quiet).then(|| tokio::spawn(progress(plan.clone(), started)));
    if let Some(d) = duration {
        let plan = plan.clone();
        tokio::spawn(async move {
            tokio::time::sleep(warmup + d).await;
            plan.stop.store(true, Ordering::Relaxed);
        });
    }
    let mut total = Tally::starting_at(started, warmup);
    for w in workers {
        if let Ok(t) = w.await {
            total.merge(&t);
        }
    }
    let elapsed = started.elapsed().saturating_sub(warmup).as_secs_f64();
    plan.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let workload =
        if args.ceiling { "ceiling (GET /health/live)".to_string() } else { args.workload.to_string() };
    Ok(Summary {
        scenario: args.name.clone().unwrap_or_else(|| workload.clone()),
        workload,
        nodes: plan.urls.len(),
        concurrency: args.concurrency,
        protocol: format!("{:?}", args.protocol).to_lowercase(),
        value_size: args.value_size.to_string(),
        keys: args.keys,
        distribution: args.distribution.to_string(),
        consistency: args.describe_consistency(),
        open_loop_rate: args.rate,
        key_prefix: prefix,
        elapsed_s: elapsed,
        ops: total.ops(),
        // Answers only: a run against a dead node fails fast, and its
        // errors per second are not throughput.
        ops_per_sec: total.ops().saturating_sub(total.errors()) as f64 / elapsed.max(1e-9),
        latency: Summary::latency_of(&total.latency_us),
        statuses: total.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        http_versions: total.versions.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
        transport_errors: total.transport_errors,
        errors: total.errors(),
        max_errors: args.max_errors,
        passed: total.errors() <= args.max_errors && total.ops() > 0,
        reads_with_siblings: total.reads_with_siblings,
        max_siblings: total.max_siblings,
        bytes_sent: total.bytes_sent,
        bytes_received: total.bytes_received,
        timeline: total.timeline(),
        percentiles: report::percentile_curve(&total.latency_us),
    })
}

/// Writes every key once (not measured).
async fn preload(plan: &Arc<Run>, keys: u64, concurrency: usize, quiet: bool) -> Result<(), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (plan, next, failures) = (plan.clone(), next.clone(), failures.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
                let mut tally = Tally::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= keys {
                        break;
                    }
                    let key = key_name(&plan.prefix, k);
                    let node = (k as usize + i) % plan.urls.len();
                    if !put(&plan, node, &key, None, &mut rng, &mut tally).await {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let failed = failures.load(Ordering::Relaxed);
    if !quiet {
        eprintln!("preloaded {keys} keys ({failed} failed)");
    }
    if failed > 0 {
        return Err(BenchError::Preload(format!("{failed} of {keys} preload writes failed")));
    }
    Ok(())
}

async fn progress(plan: Arc<Run>, started: Instant) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let done = plan.done.load(Ordering::Relaxed);
        eprint!(
            "\r[{:>5.1}s] {done} ops, {} ops/s now, {} errors   ",
            started.elapsed().as_secs_f64(),
            done - last,
            plan.failed.load(Ordering::Relaxed)
        );
        last = done;
    }
}

fn request(plan: &Run, client: &Client, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
    let mut req = client.request(method, url);
    for (h, v) in &plan.headers {
        req = req.header(*h, v.as_str());
    }
    req
}

fn header_u64(r: &reqwest::Response, name: &str) -> u64 {
    r.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The status and HTTP version of an answer; `None`: no answer.
type Answer = Option<(StatusCode, reqwest::Version)>;

fn answer_of(r: &reqwest::Response) -> Answer {
    Some((r.status(), r.version()))
}

/// A version's name as HTTP writes it, without an allocation per answer.
fn version_name(v: reqwest::Version) -> &'static str {
    match v {
        reqwest::Version::HTTP_09 => "HTTP/0.9",
        reqwest::Version::HTTP_10 => "HTTP/1.0",
        reqwest::Version::HTTP_11 => "HTTP/1.1",
        reqwest::Version::HTTP_2 => "HTTP/2.0",
        reqwest::Version::HTTP_3 => "HTTP/3.0",
        _ => "other",
    }
}

fn count(plan: &Run, tally: &mut Tally, answer: Answer) -> bool {
    plan.done.fetch_add(1, Ordering::Relaxed);
    // A warm-up answer is only its verdict: not counted, not an error.
    if !tally.measuring() {
        return answer.is_some_and(|(s, _)| s.is_success());
    }
    match answer {
        Some((s, version)) => {
            *tally.statuses.entry(s.as_u16()).or_default() += 1;
            *tally.versions.entry(version_name(version)).or_default() += 1;
            if s.as_u16() >= 400 {
                plan.failed.fetch_add(1, Ordering::Relaxed);
            }
            s.is_success()
        }
        None => {
            tally.transport_errors += 1;
            plan.failed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// A GET; returns the context it read (for read-modify-write).
async fn get(plan: &Run, node: usize, key: &str, tally: &mut Tally) -> Option<String> {
    let client = &plan.clients[node % plan.clients.len()];
    let url = format!("{}/keys/{key}", plan.urls[node]);
    match request(plan, client, reqwest::Method::GET, url).send().await {
        Ok(r) => {
            let answer = answer_of(&r);
            let siblings = header_u64(&r, "sibling-count");
            if siblings > 1 {
                tally.reads_with_siblings += 1;
            }
            tally.max_siblings = tally.max_siblings.max(siblings);
            let context = r.headers().get("causal-context").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = r.bytes().await.map(|b| b.len() as u64).unwrap_or(0);
            tally.bytes_received += body;
            count(plan, tally, answer);
            context
        }
        Err(_) => {
            count(plan, tally, None);
            None
        }
    }
}

async fn put(
    plan: &Run,
    node: usize,
    key: &str,
    context: Option<String>,
    rng: &mut impl Rng,
    tally: &mut Tally,
) -> bool {
    let client = &plan.clients[node % plan.clients.len()];
    let size = plan.sizes.sample(rng);
    let offset = rng.random_range(0..=VALUE_POOL);
    let body = plan.value.slice(offset..offset + size);
    let mut req =
        request(plan, client, reqwest::Method::PUT, format!("{}/keys/{key}", plan.urls[node])).body(body);
    if let Some(ctx) = context {
        req = req.header("causal-context", ctx);
    }
    tally.bytes_sent += size as u64;
    let answer = match req.send().await {
        Ok(r) => {
            let answer = answer_of(&r);
            // Read to the end (an error carries a JSON body), so an
            // HTTP/1.1 connection goes back to the pool instead of closing.
            tally.bytes_received += r.bytes().await.map(|b| b.len() as u64).unwrap_or(0);
            answer
        }
        Err(_) => None,
    };
    count(plan, tally, answer)
}

async fn ceiling(plan: &Run, node: usize, tally: &mut Tally) {
    let client = &plan.clients[node % plan.clients.len()];
    let answer = match client.get(format!("{}/health/live", plan.urls[node])).send().await {
        Ok(r) => {
            let answer = answer_of(&r);
            tally.bytes_received += r.bytes().await.map(|b| b.len() as u64).unwrap_or(0);
            answer
        }
        Err(_) => None,
    };
    count(plan, tally, answer);
}

async fn worker(plan: Arc<Run>, id: usize, started: Instant, warmup: Duration) -> Tally {
    let mut tally = Tally::starting_at(started, warmup);
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let interval = plan.rate_per_worker.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let mut intended = Instant::now() + Duration::from_micros(rng.random_range(0..1000));
    let mut node = id % plan.urls.len();
    loop {
        if plan.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(limit) = plan.limit {
            if plan.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                break;
            }
        }
        let start = match interval {
            Some(step) => {
                tokio::time::sleep_until(intended.into()).await;
                let s = intended;
                intended += step;
                s
            }
            None => Instant::now(),
        };
        node = (node + 1) % plan.urls.len();
        if plan.ceiling {
            ceiling(&plan, node, &mut tally).await;
            tally.record(start.elapsed());
            continue;
        }
        let key = key_name(&plan.prefix, plan.chooser.next(&mut rng));
        match plan.workload {
            Workload::Put => {
                put(&plan, node, &key, None, &mut rng, &mut tally).await;
                tally.record(start.elapsed());
            }
            Workload::Get => {
                get(&plan, node, &key, &mut tally).await;
                tally.record(start.elapsed());
            }
            Workload::Mixed { get_percent } => {
                if rng.random_range(0..100u8) < get_percent {
                    get(&plan, node, &key, &mut tally).await;
                    tally.record(start.elapsed());
                } else {
                    // Read-modify-write: each request is one measured op.
                    let context = get(&plan, node, &key, &mut tally).await;
                    tally.record(start.elapsed());
                    let write_start = Instant::now();
                    put(&plan, node, &key, context, &mut rng, &mut tally).await;
                    tally.record(write_start.elapsed());
                }
            }
        }
    }
    tally
}
