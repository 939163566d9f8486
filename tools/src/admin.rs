//! The admin and convenience commands: `quorumkv cluster status` and
//! `quorumkv get|put|delete`. They speak the public HTTPS API like any
//! client (curl-free), with the consistency knobs as flags.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("tls: {0}")]
    Tls(#[from] quorumkv::tls::TlsError),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("reading the value: {0}")]
    Input(#[from] std::io::Error),
    #[error("the server's answer is not JSON: {0}")]
    BadAnswer(#[from] serde_json::Error),
    /// The server answered with an error status; its JSON body is shown.
    #[error("{status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("{0}")]
    Timeout(String),
}

/// Where and how to reach a node.
#[derive(Debug, Args, Clone)]
pub struct NodeAddress {
    /// A node's public URL.
    #[arg(long, env = "QUORUMKV_URL", default_value = "https://127.0.0.1:8443")]
    pub url: String,
    /// The cluster CA (PEM).
    #[arg(long, env = "QUORUMKV_CACERT")]
    pub cacert: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, reachability (as the answering node sees it), partition shares.
    Status {
        #[command(flatten)]
        target: NodeAddress,
        /// Print the raw JSON of `GET /cluster`.
        #[arg(long)]
        json: bool,
    },
    /// Make a member hand its partitions to their new owners and drop out.
    Leave {
        /// The member's id.
        id: String,
        #[command(flatten)]
        target: NodeAddress,
        /// Return only once the member holds nothing the cluster needs (its
        /// process may then be stopped and its directory deleted).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Take a dead member out; its partitions are rebuilt from the other copies.
    Remove {
        /// The member's id.
        id: String,
        #[command(flatten)]
        target: NodeAddress,
    },
    /// Change a member's weight online; its share of partitions follows.
    Weight {
        /// The member's id.
        id: String,
        /// The new weight (relative capacity, at least 1).
        weight: u32,
        #[command(flatten)]
        target: NodeAddress,
    },
    /// Add a node started with `auto_join = false` (`--url` must be that node's).
    Join {
        /// The joining node's id.
        id: String,
        #[command(flatten)]
        target: NodeAddress,
    },
}

/// The consistency knobs, sent as headers when given.
#[derive(Debug, Args, Clone, Default)]
pub struct Knobs {
    /// N for this request: an integer, one, quorum or all.
    #[arg(long)]
    pub n: Option<String>,
    /// R for this request: an integer, one, quorum or all.
    #[arg(long)]
    pub r: Option<String>,
    /// W for this request: an integer, one, quorum or all.
    #[arg(long)]
    pub w: Option<String>,
    /// PR for this request: an integer, one, quorum or all.
    #[arg(long)]
    pub pr: Option<String>,
    /// PW for this request: an integer, one, quorum or all.
    #[arg(long)]
    pub pw: Option<String>,
    /// DW for this request: an integer, one, quorum or all.
    #[arg(long)]
    pub dw: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key (any text; sent percent-encoded).
    pub key: String,
    #[command(flatten)]
    pub target: NodeAddress,
    #[command(flatten)]
    pub knobs: Knobs,
    /// Print the JSON view (every sibling, base64 values, the context).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key (any text; sent percent-encoded).
    pub key: String,
    /// The value; read from standard input when absent.
    pub value: Option<String>,
    #[command(flatten)]
    pub target: NodeAddress,
    #[command(flatten)]
    pub knobs: Knobs,
    /// The causal context from the read this write supersedes.
    #[arg(long)]
    pub context: Option<String>,
    /// The value's media type, stored and returned by reads.
    #[arg(long, default_value = "application/octet-stream")]
    pub content_type: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key (any text; sent percent-encoded).
    pub key: String,
    #[command(flatten)]
    pub target: NodeAddress,
    #[command(flatten)]
    pub knobs: Knobs,
    /// The causal context from the read this delete supersedes (without
    /// one the node deletes what a quorum read sees).
    #[arg(long)]
    pub context: Option<String>,
}

fn client(target: &NodeAddress) -> Result<reqwest::Client, AdminError> {
    quorumkv::tls::install_default_provider();
    let tls = quorumkv::tls::public_client_config(&target.cacert, None)?;
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(30)).build()?)
}

fn key_url(target: &NodeAddress, key: &str) -> String {
    route_url(target, "keys", key)
}

/// `route` is `keys` (raw values) or `versions` (the JSON view).
fn route_url(target: &NodeAddress, route: &str, key: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
    format!("{}/{route}/{encoded}", target.url.trim_end_matches('/'))
}

fn with_knobs(
    mut req: reqwest::RequestBuilder,
    knobs: &Knobs,
    context: Option<&String>,
) -> reqwest::RequestBuilder {
    let pairs = [
        ("n", &knobs.n),
        ("r", &knobs.r),
        ("w", &knobs.w),
        ("pr", &knobs.pr),
        ("pw", &knobs.pw),
        ("dw", &knobs.dw),
    ];
    for (name, value) in pairs {
        if let Some(v) = value {
            req = req.header(name, v);
        }
    }
    if let Some(c) = context {
        req = req.header("causal-context", c);
    }
    req
}

async fn refuse_errors(response: reqwest::Response) -> Result<reqwest::Response, AdminError> {
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let body = response.text().await.unwrap_or_default();
        return Err(AdminError::Refused { status, body });
    }
    Ok(response)
}

/// `cluster status`: a table, or the raw JSON.
pub async fn cluster_status(target: &NodeAddress, json: bool) -> Result<String, AdminError> {
    let url = format!("{}/cluster", target.url.trim_end_matches('/'));
    let response = refuse_errors(client(target)?.get(url).send().await?).await?;
    let view: Value = serde_json::from_slice(&response.bytes().await?)?;
    if json {
        return Ok(serde_json::to_string_pretty(&view).unwrap_or_default());
    }
    let partitions = view["partitions"].as_u64().unwrap_or(0).max(1);
    let mut out = format!("seen from {} ({} partitions)\n", view["node"].as_str().unwrap_or("?"), partitions);
    let layout = &view["layout"];
    out.push_str(&format!(
        "layout version {} (reads from {}; versions in force {})\n",
        layout["version"], layout["read_version"], layout["versions"]
    ));
    out.push_str(&format!(
        "{:<16} {:<8} {:<10} {:>6} {:>10} {:>7}  {}\n",
        "MEMBER", "STATE", "REACHABLE", "WEIGHT", "PARTITIONS", "SHARE", "CLIENT URL"
    ));
    for m in view["members"].as_array().into_iter().flatten() {
        let held = m["partitions"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:<16} {:<8} {:<10} {:>6} {:>10} {:>6.1}%  {}\n",
            m["id"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            if m["reachable"].as_bool().unwrap_or(false) { "yes" } else { "NO" },
            m["weight"].as_u64().unwrap_or(0),
            held,
            100.0 * held as f64 / partitions as f64,
            m["client_url"].as_str().unwrap_or(""),
        ));
    }
    let stats = &view["stats"];
    out.push_str(&format!(
        "read repairs {}, corrupt reads {}, hints queued {}\n",
        stats["read_repairs"], stats["corrupt_reads"], stats["hints"]["queued"]
    ));
    let ae = &stats["anti_entropy"];
    let eta = match ae["transfer_eta_secs"].as_u64() {
        Some(secs) => format!(", about {secs} s left"),
        None => String::new(),
    };
    out.push_str(&format!(
        "transfers to this node: {} partitions pending{eta}, {} done; anti-entropy bytes {}\n",
        ae["transfer_pending"], ae["transfer_done"], ae["bytes"]
    ));
    Ok(out)
}

async fn cluster_view(client: &reqwest::Client, url: &str) -> Result<Value, AdminError> {
    let response =
        refuse_errors(client.get(format!("{}/cluster", url.trim_end_matches('/'))).send().await?).await?;
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}

/// `cluster leave|remove`: posts the change to `target`; with `wait`, polls
/// the leaving member itself until it says it is drained.
pub async fn change_member(
    target: &NodeAddress,
    id: &str,
    action: &str,
    body: Option<Value>,
    wait: Option<Duration>,
) -> Result<String, AdminError> {
    let client = client(target)?;
    let before = cluster_view(&client, &target.url).await?;
    let leaving_url = before["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"].as_str() == Some(id))
        .and_then(|m| m["client_url"].as_str())
        .map(str::to_string);
    let encoded = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("{}/cluster/members/{encoded}/{action}", target.url.trim_end_matches('/'));
    let mut request = client.post(url);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = refuse_errors(request.send().await?).await?;
    let answer: Value = serde_json::from_slice(&response.bytes().await?)?;
    let version = answer["layout_version"].as_u64().unwrap_or(0);
    let mut out = format!("{id}: {action} committed in layout version {version}\n");
    let (Some(patience), Some(leaving_url)) = (wait, leaving_url) else { return Ok(out) };
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Ok(view) = cluster_view(&client, &leaving_url).await {
            if view["drained"].as_bool() == Some(true) {
                out.push_str(&format!("{id} holds nothing the cluster needs: it may be stopped now\n"));
                return Ok(out);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AdminError::Timeout(format!("{id} still holds data after {} s", patience.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `health`: the node at `target` answers `/health/live` (the container
/// image's HEALTHCHECK; no curl needed in the image).
pub async fn health(target: &NodeAddress) -> Result<String, AdminError> {
    let url = format!("{}/health/live", target.url.trim_end_matches('/'));
    let response = refuse_errors(client(target)?.get(url).send().await?).await?;
    Ok(response.status().to_string())
}

/// What `get` prints: the value (one version), or the JSON view. With
/// siblings it also says how many there are and how to resolve them.
pub enum GetOutput {
    Value(Vec<u8>),
    Json(String),
    Siblings { json: String, hint: String },
    NotFound,
}

pub async fn get(args: &GetArgs) -> Result<GetOutput, AdminError> {
    let req = client(&args.target)?.request(Method::GET, route_url(&args.target, "versions", &args.key));
    let req = with_knobs(req, &args.knobs, None);
    let response = req.send().await?;
    if response.status() == StatusCode::NOT_FOUND {
        // Only a missing key is "not found"; a node without the route
        // (`no_route`: older than this CLI, or a wrong URL) is an error.
        let body = response.text().await.unwrap_or_default();
        let code =
            serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"].as_str().map(str::to_owned));
        if code.as_deref() == Some("not_found") {
            return Ok(GetOutput::NotFound);
        }
        return Err(AdminError::Refused { status: StatusCode::NOT_FOUND, body });
    }
    let view: Value = serde_json::from_slice(&refuse_errors(response).await?.bytes().await?)?;
    let siblings = view["siblings"].as_array().cloned().unwrap_or_default();
    if !args.json && siblings.len() == 1 {
        use base64::Engine;
        let b64 = siblings[0]["value_base64"].as_str().unwrap_or("");
        let value = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
        return Ok(GetOutput::Value(value));
    }
    let json = serde_json::to_string_pretty(&view).unwrap_or_default();
    if siblings.len() > 1 {
        let context = view["context"].as_str().unwrap_or("");
        let hint = format!(
            "{} siblings remain; resolve them with: quorumkv put {} <value> --context {context}",
            siblings.len(),
            args.key
        );
        return Ok(GetOutput::Siblings { json, hint });
    }
    Ok(GetOutput::Json(json))
}

/// `put`: returns the `Quorum-Report` and the new context, if one.
pub async fn put(args: &PutArgs) -> Result<String, AdminError> {
    let value = match &args.value {
        Some(v) => v.clone().into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
    };
    let req = client(&args.target)?.request(Method::PUT, key_url(&args.target, &args.key));
    let req = with_knobs(req, &args.knobs, args.context.as_ref()).header("content-type", &args.content_type);
    let response = refuse_errors(req.body(value).send().await?).await?;
    Ok(summary(&response))
}

pub async fn delete(args: &DeleteArgs) -> Result<String, AdminError> {
    let req = client(&args.target)?.request(Method::DELETE, key_url(&args.target, &args.key));
    let req = with_knobs(req, &args.knobs, args.context.as_ref());
    let response = refuse_errors(req.send().await?).await?;
    Ok(summary(&response))
}

fn summary(response: &reqwest::Response) -> String {
    let h = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut out = format!("{} ({})", response.status(), h("quorum-report"));
    let context = h("causal-context");
    if !context.is_empty() {
        out.push_str(&format!("\ncontext: {context}"));
    }
    out
}
