"""The documentation as a user meets it: every Python example runs, and the site builds.

Every ```python block of README.md and docs/**/*.md runs on its own in a fresh interpreter (in a
scratch folder, so files it writes land there), except blocks whose first line starts with
`# not run:` (a GPU, torchrun or a user's file), which say why they are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARK = "# not run:"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.DOTALL | re.MULTILINE)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python fence, dedented to its fence's indentation."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("lang").strip().split(" ")[0] not in ("python", "py"):
            continue
        indent = len(match.group("indent"))
        code = "\n".join(line[indent:] for line in match.group("body").splitlines())
        blocks.append((text.count("\n", 0, match.start()) + 1, code))
    return blocks


def collect() -> list:
    params = []
    for path in markdown_files():
        for line, code in python_blocks(path.read_text()):
            name = f"{path.relative_to(ROOT)}:{line}"
            marks = ([pytest.mark.skip(reason=code.strip().splitlines()[0])]
                     if code.lstrip().startswith(SKIP_MARK) else [])
            params.append(pytest.param(code, id=name, marks=marks))
    return params


def test_extractor_finds_blocks_and_skip_marks():
    text = ("intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n  ```python\n  # not run: GPU\n"
            "  y = 2\n  ```\n")
    assert python_blocks(text) == [(2, "x = 1"), (9, "# not run: GPU\ny = 2")]


@pytest.mark.parametrize("code", collect())
def test_example_runs(code, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"


def test_documentation_site_builds_without_warnings(tmp_path):
    """`mkdocs build --strict`, as `make docs` runs it: a broken link, a missing page in the nav
    or an API reference that no longer resolves fails here."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "site" / "api" / "probe" / "index.html").is_file()


def test_readme_is_a_landing_page_whose_links_resolve():
    """At most 250 lines (the details live in docs/), and every relative link points at a file."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
