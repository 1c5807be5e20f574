# Shared by scripts/check, scripts/test and scripts/demo: create .venv and install fogmesh into it.
# Usage: source _venv.sh EXTRA,EXTRA,...
# The stamp records pyproject.toml's hash and the extras installed. A call whose extras are
# all installed already does nothing, so check, test and demo run one after the other without
# pip; one that needs more installs the union (and a changed pyproject.toml reinstalls it).
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
hash="$(sha256sum < "$root/pyproject.toml" | cut -d' ' -f1)"
wanted="${1:-}"
stamped_hash="" installed=""
if [ -f "$stamp" ]; then
  read -r stamped_hash installed < "$stamp" || true
fi
missing=""
for extra in ${wanted//,/ }; do
  case ",$installed," in
    *",$extra,"*) ;;
    *) missing="$missing $extra" ;;
  esac
done
if [ "$stamped_hash" != "$hash" ] || [ -n "$missing" ]; then
  extras="$(printf '%s\n' ${installed//,/ } ${wanted//,/ } | sort -u | paste -sd, -)"
  if [ -z "$installed" ]; then
    echo "==> installing fogmesh[$extras] into $venv (first time: a few minutes)"
  elif [ "$stamped_hash" != "$hash" ]; then
    echo "==> pyproject.toml changed: installing fogmesh[$extras] into $venv"
  else
    echo "==> adding${missing} to fogmesh[$installed]: installing fogmesh[$extras] into $venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c "import mesh" >/dev/null
  echo "$hash $extras" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
# Ray 2.60 turns token auth on for new local clusters; the embedded cluster runs without it.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED=0
