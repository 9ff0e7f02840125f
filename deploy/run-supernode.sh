#!/usr/bin/env bash
# Start one site's SuperNode from its site YAML.
#
#   deploy/run-supernode.sh --site-config /abs/site.yaml --superlink HOST:8000 \
#       [--ca-cert ca.crt] [--auth-key auth.key] [--port 9094] [--no-worker] [--no-prefork]
#
# By default the TLS root certificate is ../ca.crt and the authentication key is auth.key, both
# next to the site's `identity-key` (the layout `python -m deploy.credentials` writes:
# <creds>/ca.crt, <creds>/<site>/{auth.key,identity.key}). The SuperNode runs in the site's
# `state-dir`. Give each SuperNode on one machine its own --port.
# Beside it runs the site's worker (python -m client_app.worker), which keeps torch, the backbone
# and the site's features loaded between messages; it is restarted if it dies and exits with the
# SuperNode. --no-worker leaves it out (every message then loads them itself: slower).
# The SuperNode runs with --isolation process and the site's prefork SuperExec
# (python -m deploy.prefork_superexec) beside it, which forks each message's ClientApp from a
# process that has Flower's runtime imported (restarted if it dies, exits with the SuperNode).
# --no-prefork uses Flower's own SuperExec instead (a new process per message: slower).
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run-supernode.sh: error: $*" >&2; exit 2; }

SITE="" SUPERLINK="" CA="" KEY="" PORT="9094" WORKER=1 PREFORK=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --site-config) SITE="${2:-}"; shift 2 ;;
    --superlink) SUPERLINK="${2:-}"; shift 2 ;;
    --ca-cert) CA="${2:-}"; shift 2 ;;
    --auth-key) KEY="${2:-}"; shift 2 ;;
    --port) PORT="${2:-}"; shift 2 ;;
    --no-worker) WORKER=0; shift ;;
    --no-prefork) PREFORK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n "$SITE" ]] || die "--site-config /abs/path/site.yaml is required"
[[ -n "$SUPERLINK" ]] || die "--superlink HOST:PORT is required (the SuperLink's address)"
[[ -f "$SITE" ]] || die "site file '$SITE' does not exist"
command -v flower-supernode >/dev/null \
  || die "flower-supernode not found on PATH (activate the virtualenv where flwr is installed)"
command -v python >/dev/null || die "python not found on PATH"
SITE="$(cd "$(dirname "$SITE")" && pwd)/$(basename "$SITE")"

# Read site-id, state-dir and identity-key (relative paths are relative to the YAML's folder);
# validate the whole file with the app's schema when the app is importable here.
IFS=$'\t' read -r SITE_ID STATE_DIR IDENTITY < <(python - "$SITE" <<'PY'
import sys
from pathlib import Path

import yaml

path = Path(sys.argv[1])
try:
    from client_app.site_config import SiteConfigError, load_site_config
except ImportError:
    load_site_config = None
if load_site_config is not None:
    try:
        cfg = load_site_config(path)
    except SiteConfigError as exc:
        sys.exit(f"run-supernode.sh: error: {exc}")
    site_id, state, identity = cfg.site_id, cfg.state_dir, cfg.identity_key
else:
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict) or "site-id" not in doc or "state-dir" not in doc:
        sys.exit(f"run-supernode.sh: error: {path}: needs keys 'site-id' and 'state-dir'")
    def resolve(value):
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else (path.parent / p).resolve()) if value else ""
    site_id, state, identity = doc["site-id"], resolve(doc["state-dir"]), resolve(doc.get("identity-key", ""))
print(site_id, state, identity or "-", sep="\t")
PY
) || die "could not read $SITE"

if [[ "$IDENTITY" != "-" ]]; then
  KEYDIR="$(dirname "$IDENTITY")"
  [[ -f "$IDENTITY" ]] || die "identity-key '$IDENTITY' of $SITE does not exist"
  CA="${CA:-$(dirname "$KEYDIR")/ca.crt}"
  KEY="${KEY:-$KEYDIR/auth.key}"
fi
[[ -n "$CA" ]] || die "no --ca-cert given and $SITE has no identity-key to find it from"
[[ -n "$KEY" ]] || die "no --auth-key given and $SITE has no identity-key to find it from"
[[ -f "$CA" ]] || die "TLS root certificate '$CA' does not exist (copy ca.crt from the operator)"
[[ -f "$KEY" ]] || die "SuperNode auth key '$KEY' does not exist (python -m deploy.credentials)"
[[ -r "$KEY" ]] || die "SuperNode auth key '$KEY' is not readable by $(id -un)"
if [[ "$(stat -c %a "$KEY")" != "600" && "$(stat -c %a "$KEY")" != "400" ]]; then
  die "SuperNode auth key '$KEY' must be private to its owner (chmod 600 '$KEY')"
fi

mkdir -p "$STATE_DIR"
cd "$STATE_DIR"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
  FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 RAY_USAGE_STATS_ENABLED=0 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
echo "run-supernode.sh: site $SITE_ID, state $STATE_DIR, SuperLink $SUPERLINK" >&2
if [[ "$WORKER" == 1 ]] && ! python -c "import client_app.worker" 2>/dev/null; then
  echo "run-supernode.sh: warning: client_app.worker is not importable here (pip install the" \
    "project into this virtualenv); running without the site worker (slower)" >&2
  WORKER=0
fi
# $$ stays this script's PID across `exec`: it becomes the SuperNode's.
SUPERNODE_PID=$$
# supervise WHAT COMMAND...: run COMMAND beside the SuperNode, restart it 5 s after it exits, stop
# with the SuperNode.
supervise() {
  local what="$1"; shift
  (
    while kill -0 "$SUPERNODE_PID" 2>/dev/null; do
      "$@" || true
      kill -0 "$SUPERNODE_PID" 2>/dev/null || break
      echo "run-supernode.sh: the $what of $SITE_ID exited; restarting it in 5 s" >&2
      sleep 5
    done
  ) </dev/null &
}
if [[ "$WORKER" == 1 ]]; then
  supervise worker python -m client_app.worker --site-config "$SITE" --parent-pid "$SUPERNODE_PID"
fi
if [[ "$PREFORK" == 1 ]] && ! python -c "import deploy.prefork_superexec" 2>/dev/null; then
  echo "run-supernode.sh: warning: deploy.prefork_superexec is not importable here (pip install" \
    "the project into this virtualenv); using Flower's SuperExec (slower)" >&2
  PREFORK=0
fi
ISOLATION=()
if [[ "$PREFORK" == 1 ]]; then
  ISOLATION=(--isolation process)
  # The SuperNode's Runtime API listens on 127.0.0.1:$PORT (Flower's default host).
  supervise "prefork SuperExec" python -m deploy.prefork_superexec \
    --runtime-api-address "127.0.0.1:$PORT" --insecure --parent-pid "$SUPERNODE_PID"
fi
exec flower-supernode \
  ${ISOLATION[@]+"${ISOLATION[@]}"} \
  --superlink "$SUPERLINK" \
  --root-certificates "$CA" \
  --auth-supernode-private-key "$KEY" \
  --port "$PORT" \
  --node-config "site-config=\"$SITE\""
