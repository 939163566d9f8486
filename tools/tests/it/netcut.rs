//! A real network cut: three node processes on 127.0.0.1, .2 and .3, and
//! iptables DROP rules between .3 and the other two. Everything stays on
//! loopback; the rules carry a comment naming this test run and are removed
//! when the test ends, even when it fails.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quorumkv::config::{Config, Defaults, LogFormat, MemberConfig, RepairConfig, TlsConfig};
use quorumkv_tools::certs::{Ca, default_sans};

use crate::cluster::{header, sibling_values};

struct Nodes(Vec<Child>);
impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// iptables rules that drop traffic between two loopback addresses, both
/// ways; removed on drop.
struct Cut {
    rules: Vec<Vec<String>>,
}

fn iptables(action: &str, rule: &[String]) -> bool {
    let status = Command::new("iptables").arg("-w").arg(action).arg("INPUT").args(rule).status();
    status.is_ok_and(|s| s.success())
}

/// Removes rules an earlier run left behind (killed before its `Drop` ran).
fn remove_stale_rules() {
    let Ok(out) = Command::new("iptables").args(["-w", "-S", "INPUT"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rule) = line.strip_prefix("-A INPUT ") {
            if rule.contains("quorumkv-test-") {
                let args: Vec<String> =
                    rule.split_whitespace().map(|s| s.trim_matches('"').to_string()).collect();
                iptables("-D", &args);
            }
        }
    }
}

impl Cut {
    fn between(pairs: &[(&str, &str)]) -> Cut {
        remove_stale_rules();
        let tag = format!("quorumkv-test-{}", std::process::id());
        let mut cut = Cut { rules: Vec::new() };
        for (a, b) in pairs {
            for (src, dst) in [(a, b), (b, a)] {
                let rule: Vec<String> =
                    ["-s", src, "-d", dst, "-m", "comment", "--comment", &tag, "-j", "DROP"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                assert!(
                    iptables("-I", &rule),
                    "iptables refused {rule:?} (the test needs root and iptables)"
                );
                cut.rules.push(rule);
            }
        }
        cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            iptables("-D", &rule);
        }
    }
}

/// Below the ephemeral range, so no outgoing connection takes it meanwhile.
fn free_port(ip: &str) -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000u16);
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_both_sides_of_a_real_network_cut_become_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let certs = dir.path().join("certs");
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports: Vec<(u16, u16)> = ips.iter().map(|ip| (free_port(ip), free_port(ip))).collect();
    let members: Vec<MemberConfig> = ips
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (ip, (c, p)))| MemberConfig {
            id: format!("node{}", i + 1),
            client_url: format!("https://{ip}:{c}"),
            peer_url: format!("https://{ip}:{p}"),
            weight: 1,
        })
        .collect();
    // Killed on drop, even if a later step panics.
    let mut nodes = Nodes(Vec::new());
    for (i, ip) in ips.iter().enumerate() {
        let id = format!("node{}", i + 1);
        let tls = ca.issue(&certs, &id, &default_sans(&id, &[ip.to_string()])).unwrap();
        let config = Config {
            node_id: id.clone(),
            advertise_client_url: String::new(),
            advertise_peer_url: String::new(),
            weight: 1,
            client_listen: format!("{ip}:{}", ports[i].0).parse().unwrap(),
            peer_listen: format!("{ip}:{}", ports[i].1).parse().unwrap(),
            data_dir: dir.path().join(&id),
            tls: TlsConfig { ca: dir.path().join("ca.pem"), cert: tls.cert, key: tls.key },
            members: members.clone(),
            cluster: "quorumkv".into(),
            seeds: Vec::new(),
            auto_join: true,
            gossip_interval_ms: 1000,
            partitions: 64,
            max_n: 3,
            defaults: Defaults::default(),
            max_value_bytes: 1 << 20,
            request_timeout_ms: 2_000,
            drain_delay_ms: 0,
            block_cache_bytes: 8 << 20,
            log_format: LogFormat::Text,
            read_repair: false,
            read_fanout: Default::default(),
            repair: RepairConfig { anti_entropy_interval_ms: 200, ..RepairConfig::default() },
            limits: Default::default(),
            governor: Default::default(),
        };
        let path = dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, config.to_toml()).unwrap();
        let child = crate::cluster::quorumkv_cmd()
            .args(["serve", "--config"])
            .arg(&path)
            .env("QUORUMKV_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        nodes.0.push(child);
    }
    // The test's own client leaves from 127.0.0.10, which no rule names.
    quorumkv::tls::install_default_provider();
    let tls = quorumkv::tls::public_client_config(&dir.path().join("ca.pem"), None).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .local_address(std::net::IpAddr::from([127, 0, 0, 10]))
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |i: usize, path: &str| format!("{}{path}", members[i].client_url);
    for i in 0..3 {
        let mut ready = false;
        for _ in 0..200 {
            if client.get(url(i, "/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "node{} never became ready", i + 1);
    }
    let put = |i: usize, body: &'static str, w: &'static str, ctx: String| {
        let req = client.put(url(i, "/keys/cut")).header("w", w).body(body);
        let req = if ctx.is_empty() { req } else { req.header("causal-context", ctx) };
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(put(0, "before", "3", String::new()).await, 204);
    let r = client.get(url(0, "/keys/cut")).header("r", "3").send().await.unwrap();
    let context = header(&r, "causal-context");

    {
        let _cut = Cut::between(&[("127.0.0.3", "127.0.0.1"), ("127.0.0.3", "127.0.0.2")]);
        assert_eq!(put(2, "minority", "1", context.clone()).await, 204, "the cut-off node takes W=1");
        assert_eq!(put(0, "majority", "2", context.clone()).await, 204, "the majority takes W=2");
        // The cut-off node cannot reach a second replica.
        let r = client.put(url(2, "/keys/other")).header("w", "2").body("x").send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    // Healed: both acknowledged writes survive, as siblings, on every node.
    let want = {
        use base64::Engine;
        let e = base64::engine::general_purpose::STANDARD;
        let mut v = vec![e.encode("majority"), e.encode("minority")];
        v.sort();
        v
    };
    for i in 0..3 {
        let mut last = serde_json::Value::Null;
        for _ in 0..300 {
            let r = client.get(url(i, "/versions/cut")).header("r", "1").send().await;
            if let Ok(r) = r {
                last = r.json().await.unwrap_or_default();
                if last.get("siblings").is_some() && sibling_values(&last) == want {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(sibling_values(&last), want, "node{} after the cut healed", i + 1);
    }
}
