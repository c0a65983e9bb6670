"""The first-run demo (python -m cli.cli_demo) as a new user runs it, and the README's Quick start that runs it."""

from __future__ import annotations

import json
import re
import time

from evaluation.sample_images import DEMO_SCENES
import pytest

from tests.conftest import REPO, empty_cache_env, run_tool, tool_env

DEMO_COMMAND = "pip install pipenv && PIPENV_VENV_IN_PROJECT=1 pipenv sync && pipenv run python -m cli.cli_demo"
TEST_COMMAND = ('pip install pipenv && PIPENV_VENV_IN_PROJECT=1 pipenv sync --categories="packages dev-packages ray" '
                "&& pipenv run pytest")


def _demo_env(tmp_path, model: str | None) -> dict:
    env = tool_env(tmp_path / "home", None)  # the user's data folder, here a temporary one; HF_HUB_OFFLINE=1
    del env["IMAGE_SEARCH_MODEL"]  # the default CLIP model, whose weights this machine does not have
    if model:
        env["IMAGE_SEARCH_MODEL"] = model
    return env


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "no network"])
def test_demo_without_clip_weights_shows_offline_image_search(tmp_path, offline):
    """As on a fresh machine with no internet: with downloads switched off, and with the machine's real network
    (nothing cached, the hub unreachable), the demo ends green."""
    work = tmp_path / "work"
    work.mkdir()
    env = _demo_env(tmp_path, None) if offline == "HF_HUB_OFFLINE" else empty_cache_env(tmp_path / "home",
                                                                                           tmp_path / "caches")
    started = time.monotonic()
    done = run_tool("cli.cli_demo", env=env, cwd=work, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert seconds < 60, seconds
    lines = done.stdout.splitlines()
    notices = [line for line in lines if line.startswith("No text search here:")]
    assert len(notices) == 1, done.stdout
    assert "ViT-B-32:laion2b_s34b_b79k" in notices[0] and "copy the checkpoint" in notices[0]
    assert notices[0].endswith("Showing image search with efficientnet-lite0 instead, which works offline.")
    assert "The top hit is the original: samples/red_circle_on_grass.jpg (score " in done.stdout
    assert sorted(p.name for p in (work / "samples").iterdir()) == sorted(f"{scene}.jpg" for scene in DEMO_SCENES)
    assert "python -m cli.cli_search -i samples/purple_flower.jpg -n samples-offline" in done.stdout
    listing = run_tool("cli.cli_datasets", "list", "--json", env=_demo_env(tmp_path, None))
    assert [(d["name"], d["images"], d["model"]) for d in json.loads(listing.stdout)] == [
        ("samples-offline", 8, "efficientnet-lite0")]


def test_demo_with_a_text_model_searches_by_text_and_a_rerun_embeds_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = _demo_env(tmp_path, "test-tiny")  # stands in for CLIP weights that are present
    first = run_tool("cli.cli_demo", env=env, cwd=work)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "No text search" not in first.stdout
    assert 'Searching samples for "a red circle":' in first.stdout
    table = first.stdout.split('"a red circle":\n')[1].splitlines()
    assert table[0].split() == ["#", "score", "date", "camera", "path"]
    assert len(table[1].split()) == 6  # rank, score, date and time (the file's: the samples have no EXIF), -, path
    assert 'python -m cli.cli_search -q "a yellow sun over the sea" -n samples' in first.stdout
    again = run_tool("cli.cli_demo", env=env, cwd=work)
    assert again.returncode == 0, again.stderr
    assert "Indexed 0 images in " in again.stdout and "reused 8 unchanged" in again.stdout


def test_readme_quick_start_is_the_demo_and_the_tests():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, flags=re.S)
    assert commands == [DEMO_COMMAND, TEST_COMMAND]
    assert "5.7 GB" in quick_start and "3.2 GB" in quick_start and "about 30 minutes on 2 cores" in quick_start
