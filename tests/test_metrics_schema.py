"""The metrics.json schema (emnist_jax.report.schema) is the one source: docs/metrics.md is made
from it, and a written metrics.json holds exactly its keys (the smoke report's own check is in
tests/test_report.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from emnist_jax.cnn import TrainConfig
from emnist_jax.report import schema
from emnist_jax.report.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = json.loads((ROOT / "reports" / "sample-default-byclass-quick" / "metrics.json").read_text())
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def check(metrics: dict) -> list[str]:
    return schema.problems(metrics, stages=STAGES, train_config_fields=FIELDS)


def test_the_docs_page_is_made_from_the_schema():
    assert (ROOT / "docs" / "metrics.md").read_text() == schema.render()


def test_the_committed_sample_holds_exactly_the_schemas_keys():
    assert check(SAMPLE) == []


def added(metrics):
    metrics["cnn"]["epochs"][0]["epoch"] = 1


def dropped(metrics):
    del metrics["pca"]["rf"]


def renamed_config_field(metrics):
    metrics["cnn"]["config"]["lr"] = metrics["cnn"]["config"].pop("learning_rate")


def unknown_stage(metrics):
    metrics["seconds"]["extra"] = 1.0


def stage_without_result(metrics):
    del metrics["rf_topk"]


@pytest.mark.parametrize("change, problem", [
    (added, "written but not in the schema: cnn.epochs[].epoch"),
    (dropped, "in the schema but not written: pca.rf"),
    (renamed_config_field, "cnn.config keys"),
    (unknown_stage, "seconds names unknown stages: ['extra']"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_a_key_added_or_dropped_is_found(change, problem):
    metrics = copy.deepcopy(SAMPLE)
    change(metrics)
    found = check(metrics)
    assert len(found) == 1 and found[0].startswith(problem), found


def test_a_stage_without_a_result_has_none_of_its_keys():
    metrics = copy.deepcopy(SAMPLE)
    stage_without_result(metrics)
    assert check(metrics) == []
    metrics["rf_topk"] = {"k": [1]}
    assert check(metrics)[0].startswith("in the schema but not written: rf_topk.accuracy")
