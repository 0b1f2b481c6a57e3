# Sourced by scripts/run and scripts/test: installs what the project needs, idempotently.
#  - PostgreSQL server + contrib (pgcrypto) from the system packages, when missing
#  - a virtualenv in .venv with the exact versions of uv.lock (uv itself lives in .tools)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV_VERSION="0.13.9"

have_postgres() {
    command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null 2>&1
}

have_pgcrypto() {
    compgen -G "/usr/share/postgresql/*/extension/pgcrypto.control" >/dev/null 2>&1 && return 0
    local share
    share="$(pg_config --sharedir 2>/dev/null || true)"
    [ -n "$share" ] && [ -f "$share/extension/pgcrypto.control" ]
}

if ! have_postgres || ! have_pgcrypto; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing PostgreSQL (server and contrib) with apt-get..." >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
    else
        echo "PostgreSQL server binaries with pgcrypto are needed." >&2
        echo "Install them (Debian/Ubuntu: sudo apt-get install postgresql postgresql-contrib;" >&2
        echo "macOS: brew install postgresql) or set PREFECT_INTEGRATIONS_DATABASE_URL." >&2
        exit 1
    fi
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python >= 3.11 is needed (found: $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
    exit 1
fi

if [ ! -x "$ROOT/.tools/bin/uv" ] || ! "$ROOT/.tools/bin/uv" --version | grep -q "$UV_VERSION"; then
    "$PYTHON" -m venv "$ROOT/.tools"
    "$ROOT/.tools/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi

export UV_PYTHON_DOWNLOADS=never
"$ROOT/.tools/bin/uv" sync --quiet --frozen --extra dev --python "$PYTHON" --project "$ROOT"
