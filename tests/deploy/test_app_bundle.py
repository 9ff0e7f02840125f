"""The app bundle (FAB) `flwr run` ships to the SuperLink and the sites holds what the app needs.

In deployment the ServerApp and every ClientApp import the app from the installed FAB, not from
this checkout. Flower 1.41 puts only *.py, *.toml, *.md, *.yaml, *.yml, *.json, *.jsonl and
LICENSE in a FAB (a built-in rule that `fab-include` cannot widen), so a data file of any other
type next to the code is missing on the sites. Fast: builds the FAB in memory.
"""

import io
import subprocess
import zipfile
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP_PACKAGES = ("client_app", "server_app", "strategies", "prompts")


@lru_cache(maxsize=1)
def _fab_names() -> frozenset[str]:
    from flwr.cli.build import build_fab_from_disk

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))) as fab:
        return frozenset(fab.namelist())


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", *APP_PACKAGES],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [line for line in out.splitlines() if line]


def test_the_app_builds_into_a_fab():
    names = _fab_names()
    assert "pyproject.toml" in names
    for component in ("server_app/app.py", "client_app/app.py"):
        assert component in names


def test_every_file_of_the_app_packages_is_in_the_fab():
    names = _fab_names()
    missing = [
        path
        for path in _tracked_files()
        if "/tests/" not in f"/{path}"
        and not Path(path).name.startswith("test_")
        and path not in names
    ]
    assert missing == [], (
        f"not shipped to the SuperLink and sites by `flwr run`: {missing}. Flower 1.41 bundles "
        "only .py/.toml/.md/.yaml/.yml/.json/.jsonl files and LICENSE; store such data as "
        ".json/.yaml or in a .py module."
    )
