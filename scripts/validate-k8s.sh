#!/usr/bin/env bash
# Validates deploy/k8s offline: every manifest against the Kubernetes
# $K8S_VERSION schemas with kubernetes-validate --strict (unknown fields are
# errors), the kustomization's resource list against the files, and a lint
# with checkov (findings fail the run unless waived in the manifest with a
# reason). Tools live in a venv at ${QKV_K8S_VENV:-.venv-k8s}. checkov runs
# in a network namespace of its own with --skip-download, so it cannot
# reach out to its vendor's API.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${QKV_K8S_VENV:-.venv-k8s}"
version="${K8S_VERSION:-1.37.0}"
dir=deploy/k8s

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check kubernetes-validate checkov

manifests=()
for f in "$dir"/*.yaml; do
  [[ "$(basename "$f")" == kustomization.yaml ]] || manifests+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"

# Every manifest is in the kustomization, and every listed file exists.
"$venv/bin/python" - "$dir" <<'PY'
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
listed = set(k["resources"])
present = {f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != present:
    sys.exit(f"kustomization resources {sorted(listed)} != manifests {sorted(present)}")
print(f"kustomization lists all {len(present)} manifests")
# The images: override must name an image the manifests use, or it
# silently changes nothing.
used = set()
for f in present:
    for doc in yaml.safe_load_all(open(os.path.join(d, f))):
        pod = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            used.add(c["image"].split("@")[0].rsplit(":", 1)[0])
for image in k.get("images", []):
    if image["name"] not in used:
        sys.exit(f"kustomization images: {image['name']} is not an image of {sorted(used)}")
print(f"kustomization images: override {[i['name'] for i in k.get('images', [])]} matches the manifests")
PY

net=()
if unshare -n true 2>/dev/null; then net=(unshare -n); fi
"${net[@]}" "$venv/bin/checkov" -d "$dir" --framework kubernetes --compact --quiet --skip-download
echo "deploy/k8s: valid for Kubernetes $version, checkov clean"
