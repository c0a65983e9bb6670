"""The command-line tools as a person runs them: real processes, real stores."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_tool

TOOLS = ["cli.cli_preprocess", "cli.cli_search", "cli.cli_evaluation", "cli.cli_datasets", "evaluation.evaluate"]


@pytest.mark.parametrize("module", TOOLS)
def test_help_explains_itself(module):
    result = run_tool(module, "--help", env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0
    assert "usage:" in result.stdout and len(result.stdout) > 200


def _one_error_line(result):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_ingest_search_evaluate_round_trip(cli_env, mixed_folder):
    ingest = run_tool("cli.cli_preprocess", "-i", mixed_folder, "-n", "case1", "--no-progress", env=cli_env)
    assert ingest.returncode == 0, ingest.stderr
    assert "Created dataset 'case1'" in ingest.stdout and "Skipped 3 files" in ingest.stdout
    assert "truncated.jpg" in ingest.stdout and "images/s" in ingest.stdout

    query = mixed_folder / "photo_00003.jpg"
    by_image = run_tool("cli.cli_search", "--image", query, "--name", "case1", "--json", env=cli_env)
    assert by_image.returncode == 0, by_image.stderr
    results = json.loads(by_image.stdout)
    assert len(results) == 5 and set(results[0]) == {"path", "score", "title"}
    assert results[0]["path"] == str(query) and results[0]["score"] == pytest.approx(1.0, abs=1e-3)

    by_text = run_tool("cli.cli_search", "-q", "finger licking dessert", "-n", "case1", "-k", "3", env=cli_env)
    assert by_text.returncode == 0, by_text.stderr
    table = by_text.stdout.strip().splitlines()
    assert table[0].split() == ["#", "score", "path"] and len(table) == 4
    assert all(os.path.isabs(line.split(None, 2)[2]) for line in table[1:])

    evaluation = run_tool("cli.cli_evaluation", "-i", mixed_folder, "-n", "case1", env=cli_env)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Hits@1:    1.0000" in evaluation.stdout and "(8 queries)" in evaluation.stdout
    assert "Recall@10: 1.0000" in evaluation.stdout

    listing = run_tool("cli.cli_datasets", "list", "--json", env=cli_env)
    assert [d["name"] for d in json.loads(listing.stdout)] == ["case1"]
    again = run_tool("cli.cli_preprocess", "-i", mixed_folder, "-n", "case1", "--no-progress", env=cli_env)
    assert again.returncode == 0 and "reused 8 unchanged" in again.stdout
    deleted = run_tool("cli.cli_datasets", "delete", "case1", env=cli_env)
    assert deleted.returncode == 0 and "Deleted dataset 'case1'" in deleted.stdout


def test_evaluation_ingests_when_the_dataset_is_missing(cli_env, photos):
    result = run_tool("cli.cli_evaluation", "-i", photos, "-n", "fresh", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["queries"] == 12 and metrics["hits_at_1"] == 1.0 and metrics["recall_at_10"] == 1.0


def test_user_mistakes_get_one_readable_line(cli_env, tmp_path, mixed_folder):
    line = _one_error_line(run_tool("cli.cli_search", "-q", "cat", "-n", "nope", env=cli_env))
    assert "no dataset named 'nope'" in line
    line = _one_error_line(run_tool("cli.cli_preprocess", "-i", tmp_path / "missing", "-n", "x", env=cli_env))
    assert "does not exist" in line
    line = _one_error_line(run_tool("cli.cli_preprocess", "-i", mixed_folder, "-n", "a/b", env=cli_env))
    assert "not valid" in line
    run_tool("cli.cli_preprocess", "-i", mixed_folder, "-n", "case1", "--no-progress", env=cli_env)
    line = _one_error_line(run_tool("cli.cli_search", "-q", "cat", "-n", "case1", "-k", "0", env=cli_env))
    assert "number of results" in line
    line = _one_error_line(run_tool("cli.cli_search", "-i", tmp_path / "nope.jpg", "-n", "case1", env=cli_env))
    assert "does not exist" in line
    line = _one_error_line(run_tool("cli.cli_search", "-q", "cat", "-n", "case1", "--model", "ViT-B-32:random",
                                    env=cli_env))
    assert "built with model test-tiny" in line


def test_category_evaluation_on_the_original_set(cli_env):
    from tests.conftest import SEED_EVAL

    if not SEED_EVAL.is_dir():
        pytest.skip("the seed-eval set lives in ../shared/datasets")
    result = run_tool("evaluation.evaluate", "--dataset", SEED_EVAL, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "Category retrieval (10 queries)" in result.stdout
    for metric in ("Precision@1:", "Precision@5:", "mAP:"):
        assert metric in result.stdout
