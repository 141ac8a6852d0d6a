#!/usr/bin/env bash
# Installs the Debian packages radloop's tools and tests need (DCMTK, ...), only those missing.
# Runs as root on CI and on the project's machines; elsewhere it says what to install and goes on.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "radloop setup: please install these Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "radloop setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
