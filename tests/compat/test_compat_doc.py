"""``docs/determined-compat.md`` stays true: every Python name it lists as available imports,
every config key validates as it says, and every CLI verb exists."""

from __future__ import annotations

import importlib
import re
from typing import Any

import click
import pytest
import yaml

from determined_sdk.cli import cli
from master_server.config import ConfigError, validate_experiment_config
from tests.support import REPO

DOC = REPO / "docs" / "determined-compat.md"
AVAILABLE = {"same", "renamed", "accepted", "deprecated"}
STATUSES = AVAILABLE | {"not supported"}


def _rows(section: str) -> list[list[str]]:
    text = DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]  # past the header


def _code(cell: str) -> str:
    m = re.match(r"`([^`]+)`", cell)
    assert m, f"expected a `name` in {cell!r}"
    return m.group(1)


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _python_rows() -> list[list[str]]:
    return _rows("Core API") + _rows("SDK")


@pytest.mark.parametrize("row", _python_rows(), ids=lambda r: r[0])
def test_python_names(row: list[str]) -> None:
    _, here, status, _ = row
    assert status in STATUSES, row
    if status in AVAILABLE:
        assert _resolve(_code(here)) is not None
    else:
        assert here == "—", row


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        merge = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if merge else v
    return out


BASE = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 1},
}


@pytest.mark.parametrize("row", _rows("Experiment config keys"), ids=lambda r: r[0])
def test_config_keys(row: list[str]) -> None:
    key, example, status, _ = row
    assert status in STATUSES, row
    config = _deep_merge(BASE, yaml.safe_load(_code(example)))
    if status in AVAILABLE:
        validate_experiment_config(config)
    else:
        first = _code(key).split(":")[0].split(".")[0]
        with pytest.raises(ConfigError, match=re.escape(first)):
            validate_experiment_config(config)


@pytest.mark.parametrize("row", _rows("CLI"), ids=lambda r: r[0])
def test_cli_verbs(row: list[str]) -> None:
    _, here, status, _ = row
    assert status in STATUSES, row
    if status not in AVAILABLE:
        assert here == "—", row
        return
    words = _code(here).split()
    assert words[0] == "detsdk"
    node: click.Command = cli
    for word in words[1:]:
        assert isinstance(node, click.Group), words
        assert word in node.commands, f"{' '.join(words)}: no such command"
        node = node.commands[word]
