#!/usr/bin/env bash
# Packaging check, run by `make test` (and so by CI): build the wheel and the sdist, install the
# wheel into a fresh virtual environment in a temporary folder outside the repository, and use it
# there as a new user would: `landscape --help`, the smallest demo, and the README's five-line
# example. A module or data file left out of the wheel fails here, not in a user's project.
#
# Environment: PYTHON (base interpreter for the fresh venv), BUILD_PY (interpreter with `build`),
# TORCH_PIN (installed first, so that pip takes the local CPU build rather than a CUDA one).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUILD_PY="${BUILD_PY:-$repo/.venv/bin/python}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
work="$(mktemp -d "${TMPDIR:-/tmp}/landscape-install-XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "== build wheel and sdist into $work/dist"
"$BUILD_PY" -m build --outdir "$work/dist" "$repo" > "$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/*.whl)"
ls "$work"/dist/*.tar.gz > /dev/null
"$BUILD_PY" - "$wheel" "$work"/dist/*.tar.gz <<'PY'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
for needed in ("landscape/py.typed", "landscape/cli.py", "landscape/data/digits.py",
               "landscape/curvature/lanczos.py"):
    assert needed in names, f"{needed} missing from the wheel"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE missing"
members = tarfile.open(sdist).getnames()
for needed in ("LICENSE", "README.md", "pyproject.toml", "landscape/py.typed"):
    assert any(m.endswith("/" + needed) for m in members), f"{needed} missing from the sdist"
print(f"wheel: {len(names)} files; sdist: {len(members)} files")
PY

echo "== fresh venv outside the repository: $work/venv"
"$PYTHON" -m venv "$work/venv"
venv_py="$work/venv/bin/python"
quiet_pip() {  # this machine's pip configuration warns about absent local indexes: not news
    "$venv_py" -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
quiet_pip "$TORCH_PIN"
quiet_pip "$wheel"

cd "$work"  # away from the repository, so `import landscape` can only find the installed wheel
echo "== landscape --help"
"$work/venv/bin/landscape" --help
echo "== landscape demo --budget smoke"
"$work/venv/bin/landscape" demo --budget smoke --out "$work/demo" --no-progress 2> "$work/demo.log" \
    || { tail -30 "$work/demo.log"; exit 1; }
test -s "$work/demo/comparison.json"
echo "== the README's five-line example"
"$venv_py" - "$repo/README.md" <<'PY'
import re, sys
readme = open(sys.argv[1]).read()
code = re.findall(r"^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)[0]
import landscape
assert "site-packages" in landscape.__file__, f"not the installed wheel: {landscape.__file__}"
print(code, end="")
exec(compile(code, "README.md", "exec"), {})
PY
echo "package check passed: wheel installed outside the repository and used"
