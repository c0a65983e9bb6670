"""The retrieval-quality benchmark: its edits, its metrics, and the whole tool on a tiny folder."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from evaluation.edits import EDITS, write_edited_copies
from image_search.retrieval_quality import hits_at, mean_reciprocal_rank
from tests.conftest import REPO, run_tool


@pytest.fixture
def tool_env() -> dict:
    """The benchmark keeps its own throwaway SQLite store, so one run covers every backend."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "IMAGE_SEARCH_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return env


def test_rank_metrics():
    ranks = [0, 2, None, 4]  # first, third, not found, fifth
    assert hits_at(ranks, 1) == 0.25 and hits_at(ranks, 3) == 0.5 and hits_at(ranks, 5) == 0.75
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 5) / 4)
    assert hits_at([], 1) == 0.0 and mean_reciprocal_rank([]) == 0.0


def test_every_edit_writes_a_readable_copy(photos, tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    original = tmp_path / "in" / "sub" / "photo.jpg"
    shutil.copy(sorted(photos.iterdir())[0], original)
    (tmp_path / "in" / "notes.jpg").write_text("not a picture")
    width, height = Image.open(original).size
    copies, unusable = write_edited_copies([str(original), str(tmp_path / "in" / "notes.jpg")], str(tmp_path / "in"),
                                           str(tmp_path / "out"))
    assert [(path.endswith("notes.jpg"), reason.startswith("not an image")) for path, reason in unusable] == [
        (True, True)]
    assert [copy.edit for copy in copies] == list(EDITS)
    assert {copy.original for copy in copies} == {str(original)}
    by_edit = {copy.edit: Image.open(copy.path) for copy in copies}
    assert all(copy.path.startswith(str(tmp_path / "out" / copy.edit / "sub" / "photo.")) for copy in copies)
    assert by_edit["downscale"].size == (round(width / 2), round(height / 2))
    assert by_edit["crop"].size == (round(width * 0.85), round(height * 0.85))
    assert by_edit["grayscale"].mode == "L"
    assert by_edit["screenshot"].format == "PNG" and by_edit["screenshot"].width > width
    assert by_edit["rotate"].width > width and by_edit["rotate"].height > height
    assert by_edit["recompress"].size == (width, height)
    assert all(image.format == "JPEG" for edit, image in by_edit.items() if edit != "screenshot")


def test_benchmark_runs_end_to_end_and_writes_json(photos, tmp_path, tool_env):
    pictures = sorted(photos.iterdir())
    originals = tmp_path / "originals"
    originals.mkdir()
    for picture in pictures[:4]:
        shutil.copy(picture, originals / picture.name)
    (originals / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    categories = tmp_path / "categories"
    for folder, names in (("train", ["red_1", "red_2", "blue_1", "blue_2"]), ("val", ["red", "blue"])):
        (categories / folder).mkdir(parents=True)
        for name, picture in zip(names, pictures[4:]):
            shutil.copy(picture, categories / folder / f"{name}.jpg")
    report_path = tmp_path / "quality.json"
    done = run_tool("evaluation.benchmark_quality", "--photos", originals, "--categories", categories,
                    "--device", "cpu", "--json", report_path, env=tool_env)
    assert done.returncode == 0, done.stderr
    assert "overall" in done.stdout and "Precision@1" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["model"] == "efficientnet-lite0" and report["originals"] == 4
    assert [u["path"].endswith("broken.jpg") for u in report["unusable"]] == [True]
    near = report["near_duplicates"]
    assert list(near["per_edit"]) == list(EDITS) and near["overall"]["queries"] == 28
    for metrics in [*near["per_edit"].values(), near["overall"]]:
        assert 0 <= metrics["hits_at_1"] <= metrics["hits_at_5"] <= 1 and 0 <= metrics["mrr"] <= 1
    assert len(near["misses"]) == round((1 - near["overall"]["hits_at_1"]) * 28)
    assert near["per_edit"]["brightness"]["hits_at_1"] == 1.0
    assert report["categories"]["queries"] == 2 and 0 <= report["categories"]["precision_at_1"] <= 1


def test_benchmark_refuses_a_missing_photo_folder(tmp_path, tool_env):
    done = run_tool("evaluation.benchmark_quality", "--photos", tmp_path / "nope", env=tool_env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: The input folder {tmp_path / 'nope'} does not exist; "
                                                "check the path."]
