#!/usr/bin/env bash
# Start the SecFPP SuperLink: TLS, SuperNode authentication, state on disk, and Flower's
# telemetry / update check / per-run dependency install switched off.
#
#   deploy/run-superlink.sh --credentials DIR --state-dir DIR [--host 0.0.0.0] [--port 8000]
#
# DIR (credentials) is the folder made by `python -m deploy.credentials`: it must hold ca.crt,
# superlink/server.crt and superlink/server.key. The state folder gets the SuperLink database
# (superlink.db, which keeps registered SuperNodes and runs across restarts), the log file
# (superlink.log) and, because the SuperLink runs there, any relative `output-dir` of a run.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run-superlink.sh: error: $*" >&2; exit 2; }

CREDS="" STATE="" HOST="0.0.0.0" PORT="8000"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --credentials) CREDS="${2:-}"; shift 2 ;;
    --state-dir) STATE="${2:-}"; shift 2 ;;
    --host) HOST="${2:-}"; shift 2 ;;
    --port) PORT="${2:-}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n "$CREDS" ]] || die "--credentials DIR is required (made by: python -m deploy.credentials)"
[[ -n "$STATE" ]] || die "--state-dir DIR is required (SuperLink database, log, outputs)"
[[ -d "$CREDS" ]] || die "credentials folder '$CREDS' does not exist"
for f in ca.crt superlink/server.crt superlink/server.key; do
  [[ -f "$CREDS/$f" ]] || die "missing $CREDS/$f (run: python -m deploy.credentials --out $CREDS ...)"
  [[ -r "$CREDS/$f" ]] || die "$CREDS/$f is not readable by $(id -un)"
done
command -v flower-superlink >/dev/null \
  || die "flower-superlink not found on PATH (activate the virtualenv where flwr is installed)"

CREDS="$(cd "$CREDS" && pwd)"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
cd "$STATE"

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
  FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 RAY_USAGE_STATS_ENABLED=0 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

exec flower-superlink \
  --host "$HOST" --port "$PORT" \
  --ssl-ca-certfile "$CREDS/ca.crt" \
  --ssl-certfile "$CREDS/superlink/server.crt" \
  --ssl-keyfile "$CREDS/superlink/server.key" \
  --enable-supernode-auth \
  --database "$STATE/superlink.db" \
  --disable-runtime-dependency-installation \
  --log-file "$STATE/superlink.log"
