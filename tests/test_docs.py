"""The user documentation builds with ``mkdocs build --strict``: no broken link, no docstring warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parent.parent


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def project_config(tmp_path: Path, docs: Path, code: Path) -> Path:
    """The project's mkdocs.yml (no nav) for the pages in ``docs``, API docs read from ``code``."""
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        (ROOT / "mkdocs.yml")
        .read_text()
        .replace("docs_dir: docs", f"docs_dir: {docs}")
        .replace("  - docs/hooks/docstrings.py", f"  - {ROOT / 'docs' / 'hooks' / 'docstrings.py'}")
        .split("\nnav:")[0]
        .replace('paths: ["."]', f'paths: ["{code}"]')
    )
    return config


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    out = build(ROOT / "mkdocs.yml", site)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "WARNING" not in out.stderr, out.stderr[-4000:]
    api = (site / "api" / "index.html").read_text()
    # The reference is generated from the docstrings, examples rendered as code.
    assert "start_workers" in api and "push_running_tasks" in api and "RedisServer" in api
    assert 'class="language-pycon"' in api and "doctest: +SKIP" not in api
    assert (site / "img" / "hpo_decentralized.png").is_file()


def test_docs_build_fails_on_a_broken_link(tmp_path):
    """The same build with one page linking to a page that does not exist must fail."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    out = build(project_config(tmp_path, docs, code=ROOT), tmp_path / "site")
    assert out.returncode != 0
    assert "missing.md" in out.stderr


def test_docs_build_fails_on_a_docstring_warning(tmp_path):
    """A docstring that documents a parameter the function does not have breaks the build."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        'def f(x: int) -> int:\n    """Double x.\n\n    :param y: no such parameter\n    """\n    return 2 * x\n'
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# API\n\n::: pkg.f\n")
    out = build(project_config(tmp_path, docs, code=tmp_path), tmp_path / "site")
    assert out.returncode != 0
    assert "WARNING" in out.stderr and "Parameter 'y'" in out.stderr
