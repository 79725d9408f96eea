#!/usr/bin/env bash
# Validates the deployment files under deploy/ (`make test` runs it): Kubernetes manifests,
# docker-compose.yml, the Dockerfile, Prometheus rules, the Grafana dashboard, crmflow config
# files, and that every metric the rules and the dashboard query is one crmflow exports.
# See deploy/scripts/validate_deploy.py for the checks.
#
# Installs what it needs itself, once: a Python venv with the validators pinned in
# validate-deploy.requirements.txt, under ~/.cache/crmflow (reused while that file is unchanged;
# then nothing is downloaded), and deploy/scripts/dockerfile-check (Go, BuildKit's parser and
# linter) under ~/.cache/crmflow/bin. Uses `docker compose` and `promtool` too where installed.
#
# Environment (optional; none starts with CRMFLOW_, which crmflow reads as its configuration):
#   PYTHON                  the Python that makes the venv (default python3; 3.9 or later)
#   VALIDATE_DEPLOY_VENV    the venv's directory (default ~/.cache/crmflow/validate-deploy-venv)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requirements=$here/validate-deploy.requirements.txt
venv=${VALIDATE_DEPLOY_VENV:-$HOME/.cache/crmflow/validate-deploy-venv}
python=${PYTHON:-python3}

log() { echo "validate-deploy: $*" >&2; }

command -v "$python" >/dev/null 2>&1 || { log "error: $python not found (set PYTHON)"; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
  { log "error: $("$python" --version 2>&1) is too old; 3.9 or later is needed (set PYTHON)"; exit 1; }

# What the venv was made from: the requirements and the Python that runs them.
wanted=$( { sha256sum "$requirements" | cut -d ' ' -f 1; "$python" -c 'import sys; print(sys.version)'; } )
installed() { [[ -f $venv/.installed && "$(<"$venv/.installed")" == "$wanted" ]]; }

install() {
  log "installing the validators into $venv (once; reused while $(basename "$requirements") is unchanged)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's own python3 has venv in a package of its own.
    log "installing python3-venv (apt-get)"
    local sudo_cmd=()
    [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq >&2 </dev/null
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends python3-venv >&2 </dev/null
    rm -rf "$venv"
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements" </dev/null >&2
  echo "$wanted" >"$venv/.installed" # written last: a stamp means a complete install
}

if ! installed; then
  mkdir -p "$(dirname "$venv")"
  # Parallel runs on a fresh machine install once.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
  fi
  installed || install
fi

# BuildKit's Dockerfile parser and linter, and its .dockerignore matcher (dockerfile-check/, Go):
# built once per version of its sources into ~/.cache/crmflow/bin. Without Go, the Python checks
# of the Dockerfile still run.
dockerfile_check=''
if command -v go >/dev/null 2>&1; then
  src=$here/dockerfile-check
  key=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" <(go version) | sha256sum | cut -c 1-16)
  dockerfile_check=$HOME/.cache/crmflow/bin/dockerfile-check-$key
  if [[ ! -x $dockerfile_check ]]; then
    log "building deploy/scripts/dockerfile-check (once per version of it)"
    mkdir -p "$(dirname "$dockerfile_check")"
    (cd "$src" && GOTOOLCHAIN=local GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"       go build -trimpath -o "$dockerfile_check.tmp.$$" . </dev/null >&2)
    mv "$dockerfile_check.tmp.$$" "$dockerfile_check"
  fi
fi

DOCKERFILE_CHECK=$dockerfile_check PYTHONDONTWRITEBYTECODE=1 exec "$venv/bin/python" "$here/validate_deploy.py" </dev/null
