# Shared by scripts/demo and scripts/test: create .venv and install fogmesh into it.
# torch is installed first, pinned, so pip takes the CPU wheel (never a multi-GB CUDA build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MESH_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.fogmesh-installed"
want="$(sha256sum < "$root/pyproject.toml" | cut -d' ' -f1) $*"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing fogmesh[$*] into $venv (first time: a few minutes)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$*]" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c "import mesh" >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
# Ray 2.60 turns token auth on for new local clusters; the embedded cluster runs without it.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED=0
