#!/usr/bin/env python3
"""Nemesis suite: a Jepsen-style fault run against 5 real `quorumkv serve`
processes, with its own checker.

The cluster: 5 nodes on 127.0.0.11-15 (N=3, R=W=2), each its own process
and data directory, and a sixth (127.0.0.16) that joins and leaves. The clients (threads, leaving from 127.0.0.20 so no
fault rule ever names them) run two workloads against random nodes:

- set-adds: read a set key (all siblings, as JSON), take the union of the
  siblings, add one unique element, write it back with the read's causal
  context. Concurrent adds become siblings; the next read-modify-write
  merges them, so no add is ever overwritten on purpose.
- unique-key writes: one blind PUT of a fresh key.

Every operation is recorded as acknowledged (2xx), failed (a definite
refusal: 4xx, or the read before an add failed, so the add was never
sent) or unknown (503, timeout, connection error: it may have been
stored). Meanwhile the nemesis cycles faults, each followed by a heal:
kill -9 and restart, SIGSTOP/SIGCONT, a network partition (iptables DROP
rules between 127.0.0.x addresses, tagged and always removed), a wiped
data directory, a restart from an older copy of a data directory, and a
membership change: node6 joins through seeds (and is killed -9 in the middle
of receiving its partitions, then restarted), or node6 leaves with `cluster
leave --wait` (and is killed -9 in the middle of handing them over, then
restarted), after which it is stopped and its directory deleted. The other
faults pick their victim among the members of the moment, node6 included.

After the last heal it measures the time until the three home replicas of
every key hold identical copies, then checks:
- lost: acknowledged elements/keys missing from the final state (must be 0);
- phantoms: elements in the final state that no client ever sent (must be 0);
and reports availability per fault and the largest sibling count seen.

`--self-test` proves the checker is not blind: after a fault-free run it
deliberately drops one acknowledged element (a write that supersedes it
with the read's context) and expects the checker to report exactly one
lost element.

Standard library only. Needs root (iptables) and a built binary.
"""

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

NODES = 5
# node6 (index 5) is not a first member: it joins and leaves.
SLOTS = 6
JOINER = 5
IPS = [f"127.0.0.{11 + i}" for i in range(SLOTS)]
CLIENT_IP = "127.0.0.20"
SET_KEYS = 8
TAG = f"quorumkv-nemesis-{os.getpid()}"


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def free_port(ip):
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind((ip, port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port on {ip}")


def iptables(action, rule):
    return subprocess.run(["iptables", "-w", action, "INPUT", *rule], capture_output=True).returncode == 0


def remove_stale_rules():
    out = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("-A INPUT ") and "quorumkv-nemesis-" in line:
            rule = [w.strip('"') for w in line[len("-A INPUT "):].split()]
            iptables("-D", rule)


class Cluster:
    def __init__(self, binary, workdir, anti_entropy_ms):
        self.binary = binary
        self.dir = workdir
        self.procs = [None] * SLOTS
        self.rules = []
        self.ids = [f"node{i + 1}" for i in range(SLOTS)]
        # The slots that are members now (clients and faults pick among them).
        self.active = list(range(NODES))
        ports = [(free_port(ip), free_port(ip)) for ip in IPS]
        self.client_urls = [(ip, c) for ip, (c, _) in zip(IPS, ports)]
        certs = os.path.join(workdir, "certs")
        sans = sum((["--san", ip] for ip in IPS), [])
        subprocess.run([binary, "certs", "--out", certs, "--nodes", ",".join(self.ids), *sans],
                       check=True, capture_output=True)
        self.ca = os.path.join(certs, "ca.pem")
        self.admin = (os.path.join(certs, "admin.pem"), os.path.join(certs, "admin-key.pem"))
        entry = lambda nid, ip, c, p: (  # noqa: E731
            f'[[members]]\nid = "{nid}"\nclient_url = "https://{ip}:{c}"\npeer_url = "https://{ip}:{p}"\n\n')
        first = "".join(entry(*args[:2], *args[2]) for args in list(zip(self.ids, IPS, ports))[:NODES])
        seeds = ", ".join(f'"https://{ip}:{p}"' for ip, (_, p) in list(zip(IPS, ports))[:NODES])
        self.peer_ports = [p for _, p in ports]
        self.configs = []
        for i, (nid, ip, (c, p)) in enumerate(zip(self.ids, IPS, ports)):
            # The joiner lists only itself, with the first members as seeds.
            members = first if i < NODES else entry(nid, ip, c, p)
            joining = f"seeds = [{seeds}]\n" if i >= NODES else ""
            path = os.path.join(workdir, f"{nid}.toml")
            with open(path, "w") as f:
                f.write(f'''node_id = "{nid}"
{joining}client_listen = "{ip}:{c}"
peer_listen = "{ip}:{p}"
data_dir = "{os.path.join(workdir, nid)}"
partitions = 64
max_n = 3
request_timeout_ms = 2000
block_cache_bytes = 8388608

[tls]
ca = "{self.ca}"
cert = "{os.path.join(certs, nid + '.pem')}"
key = "{os.path.join(certs, nid + '-key.pem')}"

[defaults]
n = 3
r = 2
w = 2

[repair]
anti_entropy_interval_ms = {anti_entropy_ms}
hint_window_secs = 600
tombstone_grace_secs = 3600

{members}''')
            self.configs.append(path)
        self.ctx = ssl.create_default_context(cafile=self.ca)
        self.admin_ctx = ssl.create_default_context(cafile=self.ca)
        self.admin_ctx.load_cert_chain(*self.admin)

    def data_dir(self, i):
        return os.path.join(self.dir, self.ids[i])

    def start(self, i):
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUORUMKV_")}
        env["QUORUMKV_LOG"] = "warn"
        logf = open(os.path.join(self.dir, f"{self.ids[i]}.log"), "ab")
        self.procs[i] = subprocess.Popen([self.binary, "serve", "--config", self.configs[i]],
                                         stdout=logf, stderr=logf, env=env)

    def wait_ready(self, i, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                status, _, _ = self.request(i, "GET", "/health/ready", timeout=1)
                if status == 200:
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.ids[i]} never became ready")

    def kill(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        if p and p.poll() is None:
            p.send_signal(sig)
            if sig == signal.SIGKILL:
                p.wait()

    def signal(self, i, sig):
        p = self.procs[i]
        if p and p.poll() is None:
            p.send_signal(sig)

    def request(self, i, method, path, body=None, headers=None, timeout=3, admin=False, peer_port=None):
        ip, port = self.client_urls[i]
        if peer_port:
            port = peer_port
        conn = http.client.HTTPSConnection(ip, port, timeout=timeout, source_address=(CLIENT_IP, 0),
                                           context=self.admin_ctx if admin else self.ctx)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def partition(self, side_a, side_b):
        for a in side_a:
            for b in side_b:
                for src, dst in ((IPS[a], IPS[b]), (IPS[b], IPS[a])):
                    rule = ["-s", src, "-d", dst, "-m", "comment", "--comment", TAG, "-j", "DROP"]
                    if not iptables("-I", rule):
                        raise RuntimeError("iptables refused a rule (root and iptables are needed)")
                    self.rules.append(rule)

    def heal_network(self):
        while self.rules:
            iptables("-D", self.rules.pop())

    def client_url(self, i):
        ip, port = self.client_urls[i]
        return f"https://{ip}:{port}"

    def stop_all(self):
        self.heal_network()
        for i in range(SLOTS):
            self.signal(i, signal.SIGCONT)
            self.kill(i)


class History:
    """What clients did, and what the checker needs of it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []  # (start, end, kind, outcome)
        self.sets = {f"set-{k}": {"acked": set(), "unknown": set(), "failed": set()} for k in range(SET_KEYS)}
        self.uniques = {"acked": {}, "unknown": {}, "failed": {}}
        self.max_siblings = 0

    def record(self, start, kind, outcome):
        with self.lock:
            self.ops.append((start, time.time(), kind, outcome))


def outcome_of(status):
    if status is None or status == 503:
        return "unknown"
    if 200 <= status < 300:
        return "acked"
    return "failed"


def values_of(body):
    """The union of the JSON-list values of every live sibling."""
    view = json.loads(body)
    out = set()
    for s in view.get("siblings", []):
        if s.get("deleted"):
            continue
        out.update(json.loads(base64.b64decode(s["value_base64"]) or b"[]"))
    return out, view.get("context", "")


def client(cluster, history, stop, cid):
    n = 0
    while not stop.is_set():
        n += 1
        node = random.choice(cluster.active)
        start = time.time()
        if random.random() < 0.7:
            key = f"set-{random.randrange(SET_KEYS)}"
            element = f"{cid}-{n}"
            try:
                status, headers, body = cluster.request(node, "GET", f"/versions/{key}")
            except Exception:
                status, headers, body = None, {}, b""
            if status == 200:
                current, context = values_of(body)
                with history.lock:
                    history.max_siblings = max(history.max_siblings, int(headers.get("sibling-count", "0")))
            elif status == 404:
                current, context = set(), headers.get("causal-context", "")
            else:
                history.record(start, "set", "failed")  # the add was never sent
                continue
            current.add(element)
            put_headers = {"Content-Type": "application/json"}
            if context:
                put_headers["Causal-Context"] = context
            try:
                status, _, _ = cluster.request(node, "PUT", f"/keys/{key}",
                                               body=json.dumps(sorted(current)), headers=put_headers)
            except Exception:
                status = None
            outcome = outcome_of(status)
            with history.lock:
                history.sets[key][outcome].add(element)
            history.record(start, "set", outcome)
        else:
            key = f"u-{cid}-{n}"
            try:
                status, _, _ = cluster.request(node, "PUT", f"/keys/{key}", body=key)
            except Exception:
                status = None
            outcome = outcome_of(status)
            with history.lock:
                history.uniques[outcome][key] = key
            history.record(start, "unique", outcome)
        time.sleep(0.002)


def snapshot_dir(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def join_or_leave(cluster, secs):
    """node6 joins (killed -9 midway through receiving its partitions, then
    restarted) if it is not a member, else leaves (killed -9 midway through
    handing them over, restarted, then stopped once drained, its directory
    deleted). Returns what happened."""
    i = JOINER
    if i not in cluster.active:
        shutil.rmtree(cluster.data_dir(i), ignore_errors=True)
        cluster.start(i)
        cluster.wait_ready(i, timeout=60)
        cluster.active.append(i)
        time.sleep(random.uniform(0, secs))
        cluster.kill(i)
        cluster.start(i)
        cluster.wait_ready(i, timeout=60)
        time.sleep(secs)
        return "join"
    leave = subprocess.Popen([cluster.binary, "cluster", "leave", cluster.ids[i], "--wait",
                              "--url", cluster.client_url(0), "--cacert", cluster.ca],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(random.uniform(1, secs))
    cluster.kill(i)
    cluster.start(i)
    cluster.wait_ready(i, timeout=60)
    try:
        _, err = leave.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        leave.kill()
        raise RuntimeError("node6 did not drain in 240 s")
    if leave.returncode != 0:
        raise RuntimeError(f"cluster leave failed: {err.decode(errors='replace')}")
    cluster.active.remove(i)
    cluster.kill(i)
    shutil.rmtree(cluster.data_dir(i), ignore_errors=True)
    return "leave"


def run_fault(cluster, name, secs):
    """Applies one fault for about `secs`, then heals it."""
    victim = random.choice(cluster.active)
    if name == "membership":
        return f"node6 ({join_or_leave(cluster, secs)})"
    if name == "kill9":
        cluster.kill(victim)
        time.sleep(secs)
        cluster.start(victim)
        cluster.wait_ready(victim)
    elif name == "pause":
        cluster.signal(victim, signal.SIGSTOP)
        time.sleep(secs)
        cluster.signal(victim, signal.SIGCONT)
    elif name == "partition":
        nodes = list(cluster.active)
        random.shuffle(nodes)
        cluster.partition(nodes[:2], nodes[2:])
        time.sleep(secs)
        cluster.heal_network()
    elif name == "wipe":
        cluster.kill(victim)
        shutil.rmtree(cluster.data_dir(victim), ignore_errors=True)
        time.sleep(secs / 2)
        cluster.start(victim)
        cluster.wait_ready(victim)
        time.sleep(secs / 2)
    elif name == "older-copy":
        # A crash-consistent copy: the process is frozen while it is taken.
        snap = cluster.data_dir(victim) + ".snap"
        cluster.signal(victim, signal.SIGSTOP)
        snapshot_dir(cluster.data_dir(victim), snap)
        cluster.signal(victim, signal.SIGCONT)
        time.sleep(secs / 2)
        cluster.kill(victim)
        shutil.rmtree(cluster.data_dir(victim))
        os.rename(snap, cluster.data_dir(victim))
        cluster.start(victim)
        cluster.wait_ready(victim)
        time.sleep(secs / 2)
    else:
        raise ValueError(name)
    return cluster.ids[victim]


def homes(cluster, key):
    status, _, body = cluster.request(0, "GET", f"/cluster/preference-list/{key}")
    assert status == 200, status
    return [int(n.removeprefix("node")) - 1 for n in json.loads(body)["nodes"]]


def local_copy(cluster, i, key, peer_ports):
    status, _, body = cluster.request(i, "GET", f"/local/keys/{key}", admin=True, peer_port=peer_ports[i])
    if status == 404:
        return None
    assert status == 200, (status, body)
    view = json.loads(body)
    return sorted(s["value_base64"] for s in view["siblings"])


def wait_one_layout(cluster, timeout):
    """Waits until every member reports one layout version in force, the
    same on all."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = set()
        try:
            for i in cluster.active:
                status, _, body = cluster.request(i, "GET", "/cluster")
                layout = json.loads(body)["layout"] if status == 200 else None
                seen.add(tuple(layout["versions"]) if layout else None)
        except Exception:
            seen.add(None)
        if len(seen) == 1 and None not in seen and len(next(iter(seen))) == 1:
            return
        time.sleep(0.5)
    raise RuntimeError("the members never settled on one layout version")


def converge(cluster, keys, timeout):
    """Seconds until the homes of every key hold identical copies."""
    peer_ports = cluster.peer_ports
    placement = {k: homes(cluster, k) for k in keys}
    start = time.time()
    pending = set(keys)
    while pending and time.time() - start < timeout:
        for key in list(pending):
            try:
                copies = [local_copy(cluster, i, key, peer_ports) for i in placement[key]]
            except Exception:
                continue
            if all(c == copies[0] for c in copies):
                pending.discard(key)
        if pending:
            time.sleep(0.5)
    return time.time() - start, pending


def final_state(cluster, history):
    """Reads every key with R=3 (every home), retrying while a quorum is missing."""
    sets = {}
    for key in history.sets:
        for _ in range(50):
            status, _, body = cluster.request(random.choice(cluster.active), "GET", f"/versions/{key}",
                                              headers={"R": "3"})
            if status in (200, 404):
                sets[key] = values_of(body)[0] if status == 200 else set()
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"final read of {key} failed")
    uniques = {}
    for key in list(history.uniques["acked"]) + list(history.uniques["unknown"]):
        for _ in range(50):
            status, _, body = cluster.request(random.choice(cluster.active), "GET", f"/keys/{key}",
                                              headers={"R": "3"})
            if status in (200, 404):
                uniques[key] = body.decode() if status == 200 else None
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"final read of {key} failed")
    return sets, uniques


def check(history, sets, uniques):
    lost, phantoms = [], []
    for key, rec in history.sets.items():
        final = sets.get(key, set())
        lost += [(key, e) for e in rec["acked"] if e not in final]
        phantoms += [(key, e) for e in final if e not in rec["acked"] and e not in rec["unknown"]]
    for key, value in history.uniques["acked"].items():
        if uniques.get(key) != value:
            lost.append((key, value))
    for key, value in history.uniques["unknown"].items():
        if uniques.get(key) not in (None, value):
            phantoms.append((key, uniques.get(key)))
    return lost, phantoms


def drop_one_acked(cluster, history):
    """Self-test: supersede one acknowledged element on purpose."""
    for key, rec in history.sets.items():
        if rec["acked"]:
            victim = sorted(rec["acked"])[0]
            status, _, body = cluster.request(0, "GET", f"/versions/{key}",
                                              headers={"R": "3"})
            assert status == 200, status
            current, context = values_of(body)
            current.discard(victim)
            status, _, _ = cluster.request(0, "PUT", f"/keys/{key}", body=json.dumps(sorted(current)),
                                           headers={"Causal-Context": context, "W": "3",
                                                    "Content-Type": "application/json"})
            assert status == 204, status
            return key, victim
    raise RuntimeError("no acknowledged element to drop")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/quorumkv")
    ap.add_argument("--duration", type=float, default=150, help="seconds of faults (the run is longer)")
    ap.add_argument("--fault-secs", type=float, default=10)
    ap.add_argument("--calm-secs", type=float, default=3)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--json", help="write the report here too")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    log(f"seed {seed}")

    remove_stale_rules()
    workdir = tempfile.mkdtemp(prefix="quorumkv-nemesis-")
    cluster = Cluster(os.path.abspath(args.binary), workdir, anti_entropy_ms=500)
    stop = threading.Event()
    threads = []
    report = {"seed": seed, "faults": []}
    try:
        for i in range(NODES):
            cluster.start(i)
        for i in range(NODES):
            cluster.wait_ready(i)
        history = History()
        threads = [threading.Thread(target=client, args=(cluster, history, stop, c), daemon=True)
                   for c in range(args.clients)]
        for t in threads:
            t.start()
        faults = [] if args.self_test else ["kill9", "membership", "pause", "partition", "wipe", "older-copy",
                                            "membership"]
        began = time.time()
        k = 0
        if not faults:
            time.sleep(min(args.duration, 10))
        while faults and time.time() - began < args.duration:
            name = faults[k % len(faults)]
            k += 1
            start = time.time()
            victim = run_fault(cluster, name, args.fault_secs)
            end = time.time()
            log(f"fault {name} on {victim}: {end - start:.1f} s")
            report["faults"].append({"fault": name, "victim": victim, "start": start, "end": end})
            time.sleep(args.calm_secs)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        cluster.heal_network()
        for i in cluster.active:
            cluster.signal(i, signal.SIGCONT)
            if cluster.procs[i].poll() is not None:
                cluster.start(i)
        for i in cluster.active:
            cluster.wait_ready(i)
        # Every node agrees on one layout (no partition still moving) before
        # the homes are compared.
        wait_one_layout(cluster, timeout=180)

        keys = list(history.sets) + random.sample(sorted(history.uniques["acked"]),
                                                   min(200, len(history.uniques["acked"])))
        secs, pending = converge(cluster, keys, timeout=180)
        report["convergence_secs"] = round(secs, 1)
        report["unconverged_keys"] = sorted(pending)

        dropped = drop_one_acked(cluster, history) if args.self_test else None
        sets, uniques = final_state(cluster, history)
        lost, phantoms = check(history, sets, uniques)

        ops = history.ops
        count = lambda pred: sum(1 for o in ops if pred(o))  # noqa: E731
        report.update({
            "attempted": len(ops),
            "acknowledged": count(lambda o: o[3] == "acked"),
            "unknown": count(lambda o: o[3] == "unknown"),
            "failed": count(lambda o: o[3] == "failed"),
            "set_elements_acked": sum(len(r["acked"]) for r in history.sets.values()),
            "unique_keys_acked": len(history.uniques["acked"]),
            "lost": len(lost),
            "phantoms": len(phantoms),
            "lost_examples": lost[:10],
            "phantom_examples": phantoms[:10],
            "max_siblings_seen": history.max_siblings,
        })
        for f in report["faults"]:
            during = [o for o in ops if f["start"] <= o[0] < f["end"]]
            ok = sum(1 for o in during if o[3] == "acked")
            f["ops"] = len(during)
            f["availability"] = round(ok / len(during), 3) if during else None
            f["unknown"] = sum(1 for o in during if o[3] == "unknown")
            took = sorted(o[1] - o[0] for o in during)
            f["p50_ms"] = round(1000 * took[len(took) // 2]) if took else None
            f["p99_ms"] = round(1000 * took[int(len(took) * 0.99)]) if took else None
        print(json.dumps(report, indent=2, default=str))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2, default=str)
        if args.self_test:
            if len(lost) == 1 and tuple(lost[0]) == dropped and not phantoms:
                log(f"self-test: the checker found the dropped write {dropped}")
                return 0
            log(f"self-test FAILED: dropped {dropped}, checker saw lost={lost} phantoms={phantoms}")
            return 1
        if lost or phantoms or pending:
            log(f"FAILED: lost={len(lost)} phantoms={len(phantoms)} unconverged={len(pending)}")
            return 1
        log("nemesis: no acknowledged write lost, no phantom")
        return 0
    finally:
        stop.set()
        cluster.stop_all()
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
