#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test quorumkv:
# libclang for librocksdb-sys' bindgen, Python's venv for the spec checks,
# iptables for the network-cut test (it adds DROP rules on loopback), and
# debootstrap + docker-compose for the container test, strace for the DW test,
# curl for the client test and Java for openapi-generator (the SDK test).
set -euo pipefail
need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
# The container test: a base image made with debootstrap, the compose file run by docker-compose.
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# The DW test counts the replicas' fsync/fdatasync calls under strace.
command -v strace >/dev/null 2>&1 || need+=(strace)
# The client test drives real curl over HTTP/2 and HTTP/1.1.
command -v curl >/dev/null 2>&1 || need+=(curl)
# The second SDK generator (openapi-generator, from PyPI as a jar) runs on Java.
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
