#!/usr/bin/env bash
# Shared set-up for scripts/demo and scripts/test: a virtualenv in .venv with coldwatch
# installed, and (when running as root on Debian) the system packages that are missing.
# Usage: source scripts/bootstrap.sh EXTRAS REQUIRE_SERVICES(0|1)
# With REQUIRE_SERVICES=1 (the tests) the real services the tests start must be
# installable: Mosquitto, Prometheus (with promtool), Prometheus Alertmanager and PostgreSQL. Missing ones are installed when
# running as root; otherwise the script stops with a clear message (never a silent skip).
set -euo pipefail

cw_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cw_extras="${1:-}"
cw_need_mosquitto="${2:-0}"
cw_python="${PYTHON:-python3}"

cw_die() { echo "coldwatch set-up: $*" >&2; exit 1; }

cw_apt_install() {
  # Install Debian packages when missing; only possible as root.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  echo "coldwatch set-up: installing ${missing[*]}" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

command -v "$cw_python" >/dev/null || cw_apt_install python3 || cw_die "python3 (3.11 or newer) is required"
"$cw_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || cw_die "Python 3.11 or newer is required, found $("$cw_python" -V 2>&1)"
"$cw_python" -c 'import venv, ensurepip' 2>/dev/null \
  || cw_apt_install python3-venv || cw_die "the Python venv module is missing (apt-get install python3-venv)"

cw_have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
if ! cw_have mosquitto; then
  cw_apt_install mosquitto mosquitto-clients || true
  if ! cw_have mosquitto && [ "$cw_need_mosquitto" = 1 ]; then
    cw_die "Mosquitto is required by the tests and could not be installed (run as root, or apt-get install mosquitto)"
  fi
fi
if [ "$cw_need_mosquitto" = 1 ] && { ! cw_have prometheus || ! cw_have promtool; }; then
  cw_apt_install prometheus || true
  # The Debian package starts a system service we do not use; the tests start their own.
  (systemctl disable --now prometheus || service prometheus stop) >/dev/null 2>&1 || true
  { cw_have prometheus && cw_have promtool; } \
    || cw_die "Prometheus (and promtool) are required by the tests and could not be installed (apt-get install prometheus)"
fi
if [ "$cw_need_mosquitto" = 1 ] && ! cw_have prometheus-alertmanager; then
  cw_apt_install prometheus-alertmanager || true
  # The Debian package starts a system service we do not use; the tests start their own.
  (systemctl disable --now prometheus-alertmanager || service prometheus-alertmanager stop) >/dev/null 2>&1 || true
  cw_have prometheus-alertmanager \
    || cw_die "Prometheus Alertmanager is required by the tests and could not be installed (apt-get install prometheus-alertmanager)"
fi

if [ "$cw_need_mosquitto" = 1 ] && ! command -v openssl >/dev/null; then
  # The TLS tests make a certificate authority and a broker certificate with it.
  cw_apt_install openssl || true
  command -v openssl >/dev/null \
    || cw_die "openssl is required by the TLS tests and could not be installed (apt-get install openssl)"
fi

if [ "$cw_need_mosquitto" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  # The console's browser tests drive Debian's Chromium through Playwright (no browser download).
  cw_apt_install chromium || true
  [ -x /usr/bin/chromium ] \
    || cw_die "Chromium is required by the console's browser tests and could not be installed (run as root, or apt-get install chromium)"
fi

# Reports are PDF made by WeasyPrint, which lays text out with Pango and needs a font.
cw_have_pango() { ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0.so.0' && fc-list 2>/dev/null | grep -q .; }
if ! cw_have_pango; then
  cw_apt_install libpango-1.0-0 libpangoft2-1.0-0 fontconfig fonts-dejavu-core || true
  if ! cw_have_pango; then
    [ "$cw_need_mosquitto" = 1 ] \
      && cw_die "Pango and a font are required for PDF reports and could not be installed (run as root, or apt-get install libpangoft2-1.0-0 fonts-dejavu-core)"
    echo "coldwatch set-up: Pango or a font is missing: PDF reports will be refused until libpangoft2-1.0-0 and fonts-dejavu-core are installed" >&2
  fi
fi

cw_have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; }
if [ "$cw_need_mosquitto" = 1 ] && ! cw_have_pg; then
  # The tests start PostgreSQL clusters of their own (initdb, postgres): only the binaries are needed.
  cw_apt_install postgresql || true
  cw_have_pg \
    || cw_die "PostgreSQL server binaries are required by the tests and could not be installed (apt-get install postgresql)"
fi

cw_venv="$cw_root/.venv"
if [ ! -x "$cw_venv/bin/python" ]; then
  "$cw_python" -m venv "$cw_venv"
fi
# Reinstall only when the project's dependencies changed.
cw_stamp="$cw_venv/.coldwatch-installed"
cw_want="$(sha256sum "$cw_root/pyproject.toml" | cut -c1-16):$cw_extras"
if [ "$(cat "$cw_stamp" 2>/dev/null)" != "$cw_want" ]; then
  "$cw_venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  spec="$cw_root"
  [ -n "$cw_extras" ] && spec="$cw_root[$cw_extras]"
  "$cw_venv/bin/python" -m pip install -q -e "$spec"
  echo "$cw_want" > "$cw_stamp"
fi
export PATH="$cw_venv/bin:$PATH"
