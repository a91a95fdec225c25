"""Every value a paper states is what its experiment runs with: tests/paper_values.yaml (experiment,
key, value, the paper's sentence) against the config the CLI resolves from experiments/<exp>.yaml
(its own parser, defaults and class paths; nothing instantiated, nothing trained). A drift fails
naming the file, the key, both values and the paper's sentence."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).with_name("paper_values.yaml")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
MISSING = object()


@dataclass(frozen=True)
class Row:
    experiment: str
    key: str
    value: Any
    paper: str
    sentence: str
    note: str | None = None


def paper_rows() -> list[Row]:
    """The settings table, one row per (experiment, key)."""
    groups = yaml.safe_load(TABLE.read_text())["settings"]
    return [Row(exp, key, value, str(g["paper"]), " ".join(g["sentence"].split()), g.get("note"))
            for g in groups for exp in g["experiments"] for key, value in g["values"].items()]


@functools.cache
def cli_parser():
    """BoneAgeCLI's parser (the arguments, defaults and subclass modes `boneage fit` resolves with), built once."""
    from boneage.cli import BoneAgeCLI

    class ParseOnly(BoneAgeCLI):
        def before_instantiate_classes(self) -> None:  # no run directory
            pass

        def instantiate_classes(self) -> None:  # no model, data or trainer
            pass

    with warnings.catch_warnings():  # "args and sys.argv both given": pytest's argv is not ours
        warnings.simplefilter("ignore")
        return ParseOnly(args=["--config", str(ROOT / "experiments" / f"{EXPERIMENTS[0]}.yaml")], run=False).parser


def resolved_config(experiment: str, *overrides: str) -> dict:
    """experiments/<experiment>.yaml as `boneage fit --config ...` resolves it, without building anything."""
    args = ["--config", str(ROOT / "experiments" / f"{experiment}.yaml"), *overrides]
    return cli_parser().parse_args(args).as_dict()


def lookup(config: Any, dotted: str) -> Any:
    """A dotted key; a list item by index or by class name (``callbacks.PGGANMetrics``)."""
    node = config
    for part in dotted.split("."):
        if isinstance(node, dict):
            node = node.get(part, node.get(int(part), MISSING) if part.isdigit() else MISSING)
        elif isinstance(node, list):
            if part.isdigit():
                node = node[int(part)] if int(part) < len(node) else MISSING
            else:
                named = [n for n in node if isinstance(n, dict) and str(n.get("class_path", "")).endswith(f".{part}")]
                node = named[0] if len(named) == 1 else MISSING
        else:
            node = MISSING
        if node is MISSING:
            return MISSING
    return node


def plain(value: Any) -> Any:
    """Tuples as lists (the parser gives tuples where a signature says tuple), recursively."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def drifts(config: dict, rows: list[Row]) -> list[str]:
    """One line per row whose value the resolved config does not have."""
    out = []
    for row in rows:
        found = lookup(config, row.key)
        if found is MISSING or not same(found, row.value):
            have = "has no such key" if found is MISSING else f"is {plain(found)!r}"
            out.append(f"experiments/{row.experiment}.yaml: {row.key} {have}, the paper's value is {row.value!r} "
                       f"(paper {row.paper}: \"{row.sentence}\"" + (f"; {row.note}" if row.note else "") + ")")
    return out


def test_every_experiment_has_paper_values_and_every_row_an_experiment():
    covered = {r.experiment for r in paper_rows()}
    uncovered, stale = sorted(set(EXPERIMENTS) - covered), sorted(covered - set(EXPERIMENTS))
    assert not uncovered, f"experiments without a row in {TABLE.name}: {uncovered}: add the values their paper states"
    assert not stale, f"rows of {TABLE.name} name no experiment file: {stale}"
    values: dict[tuple[str, str], set[str]] = {}
    for r in paper_rows():
        values.setdefault((r.experiment, r.key), set()).add(repr(plain(r.value)))
    twice = sorted(k for k, v in values.items() if len(v) > 1)
    assert not twice, f"rows giving one key two values: {twice}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_with_the_papers_values(experiment):
    rows = [r for r in paper_rows() if r.experiment == experiment]
    problems = drifts(resolved_config(experiment), rows)
    assert not problems, "\n".join(problems)


def test_a_drifted_value_fails_naming_key_values_and_sentence():
    """A YAML (here: a command-line override) that leaves the paper is caught with the paper's words."""
    rows = [r for r in paper_rows() if r.experiment == "tjnet_rsna"]
    config = resolved_config("tjnet_rsna", "--data.init_args.batch_size", "8",
                             "--model.init_args.network.init_args.use_cbam", "false")
    problems = drifts(config, rows)
    assert len(problems) == 2, problems
    batch = next(p for p in problems if "batch_size" in p)
    assert batch.startswith("experiments/tjnet_rsna.yaml: data.init_args.batch_size is 8, the paper's value is 16")
    assert "with the batch size 16" in batch and "paper 003" in batch
    assert any("use_cbam is False, the paper's value is True" in p for p in problems)
    # a key the config lost is named as missing, not compared
    lost = drifts(config, [Row("tjnet_rsna", "model.init_args.no_such_key", 1, "003", "s")])
    assert lost == ["experiments/tjnet_rsna.yaml: model.init_args.no_such_key has no such key, "
                    "the paper's value is 1 (paper 003: \"s\")"]
