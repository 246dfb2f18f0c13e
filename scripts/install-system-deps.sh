#!/usr/bin/env bash
# Installs what rowcast's dev stack needs from Debian's packages, when it is missing:
# PostgreSQL 15 server binaries, a JDK 17 and Maven (to fetch and run Apache Kafka), openssl, Chromium
# (the dashboard's browser test), Prometheus and promtool (the alerting rules' tests).
# Runs as root (CI, fresh machines) or through sudo; does nothing when all is present.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql-15)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
# the test broker's mutual-TLS listener: a client key made with openssl
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# the dashboard test loads the page in a real headless browser
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# deploy/prometheus/alerts.yml: `promtool check/test rules` and a real Prometheus in the tests.
# Without its recommends (a node exporter the tests do not use).
bare=()
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || bare+=(prometheus)
# the benchmark's in-database baseline scores rows in a PL/Python trigger
if [ "${1:-}" = "--bench" ]; then
  ls /usr/lib/postgresql/*/lib/plpython3.so >/dev/null 2>&1 || need+=(postgresql-plpython3-15)
fi

if [ ${#need[@]} -eq 0 ] && [ ${#bare[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${need[*]} ${bare[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if [ ${#bare[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${bare[@]}"
fi
# Debian starts a cluster (and a Prometheus on :9090) of its own on install; rowcast's tests run
# private ones instead.
$SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
