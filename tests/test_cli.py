"""The command-line tools as a person runs them: real processes, real stores."""

from __future__ import annotations

import json
import os
import re

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
    assert len(results) == 5 and list(results[0]) == [
        "path", "title", "score", "sha256", "md5", "size", "width", "height", "format", "date_taken", "date_source",
        "camera", "lens", "gps", "orientation", "duplicates", "duplicate_count"]
    assert results[0]["path"] == str(query) and results[0]["score"] == pytest.approx(1.0, abs=1e-3)

    by_text = run_tool("cli.cli_search", "-q", "finger licking dessert", "-n", "case1", "-k", "3", env=cli_env)
    assert by_text.returncode == 0, by_text.stderr
    table = by_text.stdout.strip().splitlines()
    assert table[0].split() == ["#", "score", "date", "camera", "path"] and len(table) == 5  # and the * note
    assert all(os.path.isabs(line.split(None, 5)[5]) for line in table[1:4])  # sample photos: no EXIF camera
    assert table[4] == "* no date in the picture's EXIF: the file's modification time"

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


# -- parsers: one rule for mistakes, help that shows what applies ----------------------------------------------
EVERY_TOOL = [*TOOLS, "cli.cli_demo", "evaluation.benchmark_ingest", "evaluation.benchmark_search",
              "evaluation.benchmark_quality", "evaluation.sample_images", "server.server"]


def _plain_env() -> dict:
    from tests.conftest import REPO

    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("module", EVERY_TOOL)
def test_a_parser_mistake_is_one_error_line_and_exit_2(module):
    args = ("list", "--no-such-flag") if module == "cli.cli_datasets" else ("--no-such-flag",)
    result = run_tool(module, *args, env=_plain_env())
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr  # no usage block before it
    assert re.fullmatch(rf"error: \S.* \(see python -m {re.escape(module)}( list)? --help\)\n", result.stderr)


def test_missing_arguments_and_subcommands_are_one_error_line():
    env = _plain_env()
    line = _one_error_line(run_tool("cli.cli_search", "-q", "cat", env=env))
    assert line == "error: the following arguments are required: --name/-n (see python -m cli.cli_search --help)"
    line = _one_error_line(run_tool("cli.cli_datasets", "delete", env=env))
    assert line == ("error: the following arguments are required: name "
                    "(see python -m cli.cli_datasets delete --help)")
    line = _one_error_line(run_tool("cli.cli_datasets", env=env))
    assert line.startswith("error: the following arguments are required: {list,delete}")
    result = run_tool("evaluation.benchmark_search", "--sizes", "ten", env=env)
    assert result.returncode == 2 and _one_error_line(result).startswith("error: --sizes 'ten' is not a list")


def _usage(help_text: str) -> str:
    return " ".join(help_text.split("\n\n")[0].split())


def test_search_usage_shows_name_as_required():
    usage = _usage(run_tool("cli.cli_search", "--help", env=_plain_env()).stdout)
    assert "--name NAME" in usage and "[--name NAME]" not in usage
    assert "(--query QUERY | --image IMAGE)" in usage and "[--json [FILE]]" in usage


@pytest.mark.parametrize("command", ["list", "delete"])
def test_datasets_subcommand_help_shows_only_what_applies(command):
    result = run_tool("cli.cli_datasets", command, "--help", env=_plain_env())
    assert result.returncode == 0
    assert "--data-dir" in result.stdout
    assert "--model" not in result.stdout and "--device" not in result.stdout
    assert ("--json" in result.stdout) == (command == "list")


# -- --json [FILE]: the same meaning in every tool --------------------------------------------------------------
def _only_file(folder, name):
    assert sorted(p.name for p in folder.iterdir()) == [name]  # written through a temp file, renamed: none left
    return json.loads((folder / name).read_text())


def test_json_prints_json_alone_and_json_file_keeps_the_text(tmp_path, photos):
    from tests.conftest import tool_env

    env = tool_env(tmp_path / "home", None)
    out = tmp_path / "out"
    out.mkdir()
    ingest = run_tool("cli.cli_preprocess", "-i", photos, "-n", "case1", "--no-progress", "--json",
                      out / "ingest.json", env=env)
    assert ingest.returncode == 0, ingest.stderr
    assert ingest.stdout.startswith("Created dataset 'case1'")
    assert ingest.stdout.rstrip().endswith(f"Wrote {out / 'ingest.json'}")
    assert _only_file(out, "ingest.json")["indexed"] == 12

    query = sorted(photos.iterdir())[3]
    as_json = run_tool("cli.cli_search", "-i", query, "-n", "case1", "-k", "2", "--json", env=env)
    to_file = run_tool("cli.cli_search", "-i", query, "-n", "case1", "-k", "2", "--json", out / "search.json",
                       env=env)
    assert as_json.returncode == to_file.returncode == 0, to_file.stderr
    results = json.loads(as_json.stdout)  # the whole of stdout is the JSON
    assert [r["path"] for r in results][0] == str(query)
    table = to_file.stdout.splitlines()
    assert table[0].split() == ["#", "score", "date", "camera", "path"] and table[1].endswith(str(query))
    assert table[3:] == ["* no date in the picture's EXIF: the file's modification time", f"Wrote {out / 'search.json'}"]
    (out / "ingest.json").unlink()
    assert _only_file(out, "search.json") == results

    listing = run_tool("cli.cli_datasets", "list", "--json", env=env)
    assert [d["name"] for d in json.loads(listing.stdout)] == ["case1"]


def test_json_file_in_a_missing_folder_is_refused_before_any_work(tmp_path):
    from tests.conftest import tool_env

    result = run_tool("cli.cli_datasets", "list", "--json", tmp_path / "nope" / "x.json",
                      env=tool_env(tmp_path / "home", None))
    line = _one_error_line(result)
    assert result.returncode == 2
    assert line.startswith(f"error: argument --json: the folder {tmp_path / 'nope'} for the JSON file does not exist")
    assert not (tmp_path / "home").exists()  # refused before the store was even opened


def test_benchmark_json_alone_puts_only_the_json_on_stdout(tmp_path):
    env = {**_plain_env(), "IMAGE_SEARCH_HOME": str(tmp_path / "home")}
    done = run_tool("evaluation.benchmark_search", "--sizes", "2000", "--kinds", "flat", "--quick", "--no-text",
                    "--json", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["results"]["2000"]["flat"]["recall_at_10"] == 1.0
    assert "recall@10" in done.stderr  # the table still shows, beside the JSON instead of in it


# -- what the tools print ---------------------------------------------------------------------------------------
def test_dataset_list_is_a_table_with_a_header_row(cli_env, photos, mixed_folder):
    assert run_tool("cli.cli_preprocess", "-i", photos, "-n", "a", "--no-progress", env=cli_env).returncode == 0
    assert run_tool("cli.cli_preprocess", "-i", mixed_folder, "-n", "longer-name", "--no-progress",
                    env=cli_env).returncode == 0
    listing = run_tool("cli.cli_datasets", "list", env=cli_env)
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.rstrip("\n").split("\n")
    assert header.split() == ["name", "images", "model", "folder", "created"]
    assert [row.split()[:3] for row in rows] == [["a", "12", "test-tiny"], ["longer-name", "8", "test-tiny"]]
    for column in ("model", "folder", "created"):  # every column starts where its heading does
        start = header.index(column)
        assert all(row[start - 2:start] == "  " and row[start] != " " for row in rows), (column, listing.stdout)
    images_end = header.index("images") + len("images")  # numbers are right-aligned under their heading
    assert all(row[images_end - 1].isdigit() and row[images_end] == " " for row in rows)


def test_ingest_summary_separates_model_loading_and_a_no_op_shows_no_rate(cli_env, photos, tmp_path):
    first = run_tool("cli.cli_preprocess", "-i", photos, "-n", "case1", "--no-progress", env=cli_env)
    assert first.returncode == 0, first.stderr
    timing = next(line for line in first.stdout.splitlines() if line.startswith("Indexed 12 images in "))
    assert re.search(r"\(model loading \d+\.\d s, embedding \d+\.\d s at \d+\.\d images/s\)", timing), timing

    summary_file = tmp_path / "summary.json"
    again = run_tool("cli.cli_preprocess", "-i", photos, "-n", "case1", "--no-progress", "--json", summary_file,
                     env=cli_env)
    timing = next(line for line in again.stdout.splitlines() if line.startswith("Indexed 0 images in "))
    assert "images/s" not in again.stdout and "embedding" not in timing
    assert "nothing new or changed to embed" in timing and "reused 12 unchanged" in timing
    summary = json.loads(summary_file.read_text())
    assert summary["to_embed"] == 0 and summary["images_per_second"] is None and summary["model_seconds"] > 0


def test_a_non_image_query_is_refused_before_the_model_loads(tmp_path, mixed_folder):
    """The dataset's model is made unloadable (a weights file that does not exist): a real image query fails
    loading it, so the not-an-image answers prove that they came before any model load."""
    import sqlite3

    from tests.conftest import tool_env

    env = tool_env(tmp_path / "home", None)
    assert run_tool("cli.cli_preprocess", "-i", mixed_folder, "-n", "case1", "--no-progress",
                    env=env).returncode == 0
    with sqlite3.connect(tmp_path / "home" / "metadata.sqlite3") as database:
        database.execute("UPDATE datasets SET model = ? WHERE name = 'case1'",
                         (f"ViT-B-32:{tmp_path / 'gone' / 'weights.pt'}",))
    photo = mixed_folder / "photo_00003.jpg"
    assert "weights file" in _one_error_line(run_tool("cli.cli_search", "-i", photo, "-n", "case1", env=env))

    line = _one_error_line(run_tool("cli.cli_search", "-i", mixed_folder / "notes.txt", "-n", "case1", env=env))
    assert line == (f"error: The query file {mixed_folder / 'notes.txt'} is not an image (JPEG, PNG, WebP, BMP, GIF "
                    "or TIFF); give an image file.")
    line = _one_error_line(run_tool("cli.cli_search", "-i", mixed_folder / "text.jpg", "-n", "case1", env=env))
    assert line.endswith("cannot be used: not an image: its content is not JPEG, PNG, WebP, BMP, GIF or TIFF.")


# -- category evaluation: a generated set, and no dataset left behind -------------------------------------------
@pytest.fixture(scope="module")
def category_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("categories") / "set"
    done = run_tool("evaluation.sample_images", "--categories", folder, env=_plain_env())
    assert done.returncode == 0, done.stderr
    return folder


def test_generated_category_set(category_set):
    from evaluation.sample_images import DEMO_SCENES

    train, val = sorted(p.name for p in (category_set / "train").iterdir()), sorted(
        p.name for p in (category_set / "val").iterdir())
    assert train == sorted(f"{scene}_{n}.jpg" for scene in DEMO_SCENES for n in range(1, 6))
    assert val == sorted(f"{scene}_{n}.jpg" for scene in DEMO_SCENES for n in (6, 7))


def test_evaluate_on_a_generated_set_retrieves_by_category_and_leaves_no_dataset(tmp_path, category_set):
    from tests.conftest import tool_env

    env = tool_env(tmp_path / "home", None)
    result = run_tool("evaluation.evaluate", "--dataset", category_set, "--model", "efficientnet-lite0",
                      "--json", env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["queries"] == 16 and metrics["precision_at_1"] == 1.0
    assert json.loads(run_tool("cli.cli_datasets", "list", "--json", env=env).stdout) == []
    assert not any((tmp_path / "home" / "indexes").iterdir())


def test_evaluate_keeps_its_dataset_only_when_asked(cli_env, category_set, photos):
    assert run_tool("cli.cli_preprocess", "-i", photos, "-n", "mine", "--no-progress", env=cli_env).returncode == 0
    kept = run_tool("evaluation.evaluate", "--dataset", category_set, "--keep", env=cli_env)
    assert kept.returncode == 0, kept.stderr
    assert "Kept dataset 'evaluation-train'" in kept.stdout and "Precision@1:" in kept.stdout
    # a throwaway evaluation never replaces a dataset that exists: the user's one stays as it was
    line = _one_error_line(run_tool("evaluation.evaluate", "--dataset", category_set, "-n", "mine", env=cli_env))
    assert "Dataset 'mine' already exists" in line and "or keep the dataset (--keep) to rebuild it." in line
    listing = json.loads(run_tool("cli.cli_datasets", "list", "--json", env=cli_env).stdout)
    assert sorted((d["name"], d["images"]) for d in listing) == [("evaluation-train", 40), ("mine", 12)]
