#!/usr/bin/env bash
# System packages the tests need: Debian's chromium + chromium-driver (the report browser test) and
# PostgreSQL 15 (the distributed-search test). Installs only what is missing.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
[ ${#need[@]} -eq 0 ] && exit 0
sudo_=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo_=sudo; else
    echo "fusebench: the tests need ${need[*]} (Debian packages); install them as root" >&2; exit 1
  fi
fi
echo "fusebench: installing ${need[*]}" >&2
$sudo_ apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
