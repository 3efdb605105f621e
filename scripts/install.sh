#!/usr/bin/env bash
# Install gradtrace and everything it needs on a fresh Debian/Ubuntu machine:
# the Graphviz `dot` binary (apt; Chromium too with --test), then the package pinned by
# constraints/ci.txt.
#   scripts/install.sh          the tool
#   scripts/install.sh --test   the tool and its test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
case "${1:-}" in
  "") ;;
  --test) extras="[test]" ;;
  *) echo "usage: scripts/install.sh [--test]" >&2; exit 2 ;;
esac

apt_install() {
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need=()
command -v dot >/dev/null || need+=(graphviz)
# The HTML replay's tests drive Debian's Chromium through Playwright (never Playwright's own download).
[[ -n $extras ]] && ! command -v chromium >/dev/null && need+=(chromium)
[[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}"

python3 -m pip install -q --disable-pip-version-check -c constraints/ci.txt -e ".${extras}"
