"""Duplicates: exact copies (one SHA-256) and edited copies (near in efficientnet-lite0's space) group together,
unrelated pictures do not; on both stores, through the core, the command line and a real server over HTTP.

The near-copies are made by the quality benchmark's own edits (evaluation/edits.py) of the demo scenes, which
efficientnet-lite0 tells apart (unrelated scenes score at most 0.70 against its threshold 0.76).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluation.edits import EDITS, edited
from image_search import Duplicates, InvalidInputError
from image_search.duplicates import default_threshold
from image_search.duplicates.components import component_labels, components
from image_search.store import ImageFacts, ImageRecord, NewDataset
from image_search import vectors
from tests.conftest import run_tool, tool_env

MODEL = "efficientnet-lite0"
EDITED = ("brightness", "recompress", "crop", "downscale")


# -- the grouping itself -------------------------------------------------------------------------------------------
def test_components_join_chains_and_leave_single_nodes_out():
    assert component_labels(6, np.array([0, 4, 3]), np.array([1, 5, 4])).tolist() == [0, 0, 2, 3, 3, 3]
    chain = np.arange(1000)  # a path: joined in one pass by pointer jumping
    assert set(component_labels(1000, chain[:-1], chain[1:]).tolist()) == {0}
    nodes = np.array([10, 20, 30, 40, 50, 60])
    groups = components(nodes, np.array([10, 40, 50]), np.array([20, 50, 60]))
    assert [g.tolist() for g in groups] == [[40, 50, 60], [10, 20]]  # largest first; 30 has no edge
    assert components(nodes, np.zeros(0, np.int64), np.zeros(0, np.int64)) == []


def planted(count: int, dim: int = 64, seed: int = 3):
    """Random unit vectors (unrelated: cosine near 0) with ten planted pairs at cosine 0.95 and one triple."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    pairs = [(i, count - 1 - i) for i in range(10)]
    for base, copy in pairs + [(0, count - 20)]:
        noise = rng.standard_normal(dim).astype(np.float32)
        noise -= (noise @ data[base]) * data[base]
        data[copy] = 0.95 * data[base] + np.sqrt(1 - 0.95 ** 2) * noise / np.linalg.norm(noise)
    expected = sorted([sorted([0, count - 1, count - 20])] + [sorted(p) for p in pairs[1:]])
    return data, expected


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-sq8", "hnsw"])
def test_every_index_kind_finds_the_planted_copies_through_its_neighbour_graph(kind):
    data, expected = planted(3000)
    ids = np.arange(len(data), dtype=np.int64)
    index = vectors.new_index(data.shape[1])
    index.add(data, ids)
    if kind != "flat":
        index = vectors.fit(index, kind)
    first, second = [], []
    for a, b, scores in index.similar_pairs(0.9, 3):
        assert (scores >= 0.9).all() and (a != b).all()
        first.append(a)
        second.append(b)
    first, second = np.concatenate(first), np.concatenate(second)
    found = components(np.unique(np.concatenate([first, second])), first, second)
    assert sorted(sorted(g.tolist()) for g in found) == expected


def test_a_large_exact_index_is_grouped_through_an_ivf_copy(monkeypatch):
    from image_search.vectors import faiss_index

    data, expected = planted(4000)
    index = vectors.new_index(data.shape[1])
    index.add(data, np.arange(len(data), dtype=np.int64))
    monkeypatch.setattr(faiss_index, "FLAT_GROUPING_MAX", 1000)  # 4,000 counts as large here
    built = []
    real_build = faiss_index.FaissIndex.build
    monkeypatch.setattr(faiss_index.FaissIndex, "build",
                        classmethod(lambda cls, kind, *a, **k: built.append(kind) or real_build.__func__(cls, kind,
                                                                                                     *a, **k)))
    edges = [np.concatenate(part) for part in zip(*index.similar_pairs(0.9, 3))]
    found = components(np.unique(np.concatenate(edges[:2])), edges[0], edges[1])
    assert built == ["ivf"] and sorted(sorted(g.tolist()) for g in found) == expected


# -- through the service, on both stores -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    from evaluation.sample_images import write_demo_images

    folder = tmp_path_factory.mktemp("scenes")
    write_demo_images(folder)
    return folder


def copies_folder(scenes: Path, folder: Path) -> dict[str, list[Path]]:
    """Eight scenes; the red circle copied byte for byte twice (one under a sub-folder with an awkward name), the
    yellow sun edited four ways; the other six alone."""
    folder.mkdir(parents=True)
    for scene in sorted(scenes.iterdir()):
        shutil.copy(scene, folder / scene.name)
    circle, sun = folder / "red_circle_on_grass.jpg", folder / "yellow_sun_over_sea.jpg"
    (folder / "copies & 'more'").mkdir()
    exact = [circle, folder / "copies & 'more'" / "circle copy.jpg", folder / "circle (2).jpg"]
    for copy in exact[1:]:
        shutil.copy(circle, copy)
    near = [sun]
    for name in EDITED:
        edit = EDITS[name]
        target = folder / f"sun {name}.jpg"
        edited(sun, edit.apply).save(target, "JPEG", quality=edit.quality)
        near.append(target)
    return {"exact": exact, "near": near}


@pytest.fixture
def settings(backend, data_home):
    from image_search.config import Settings

    return Settings(data_home=data_home, model_name=MODEL, device="cpu", database=backend[1])


def test_exact_and_edited_copies_group_and_unrelated_scenes_do_not(engine, scenes, tmp_path):
    made = copies_folder(scenes, tmp_path / "case")
    engine.ingest(tmp_path / "case", "dupes", progress=False)
    found = engine.find_duplicates("dupes")
    assert isinstance(found, Duplicates) and found.threshold == default_threshold(MODEL) == 0.76
    assert found.model == MODEL and found.images == 14 and found.unhashed == 0
    [exact] = found.exact_groups
    assert exact.kind == "exact" and exact.paths() == sorted(str(p) for p in made["exact"])
    assert exact.sha256 == exact.members[0].facts.sha256 and all(m.score == 1.0 for m in exact.members)
    # the exact copies are one group, listed once: no near group of nothing but them
    [near] = found.near_groups
    assert near.kind == "near" and near.sha256 is None
    assert near.paths() == sorted(str(p) for p in made["near"])
    assert all(0.76 <= m.score < 1.0 for m in near.members)
    data = found.to_dict()
    assert data["kind"] == "duplicates" and data["exact_groups"][0]["size"] == 3
    assert data["near_groups"][0]["members"][0]["sha256"] and data["near_groups"][0]["members"][0]["md5"]
    json.dumps(data)  # the --json and the JSON report


def test_exact_only_and_a_strict_threshold(engine, scenes, tmp_path):
    made = copies_folder(scenes, tmp_path / "case")
    engine.ingest(tmp_path / "case", "dupes-strict", progress=False)
    exact_only = engine.find_duplicates("dupes-strict", exact_only=True)
    assert exact_only.threshold is None and exact_only.near_groups == () and len(exact_only.exact_groups) == 1
    strict = engine.find_duplicates("dupes-strict", threshold=0.99)
    assert strict.threshold == 0.99 and len(strict.exact_groups) == 1
    assert all(set(g.paths()) < {str(p) for p in made["near"]} for g in strict.near_groups)  # closest edits only
    loose = engine.find_duplicates("dupes-strict", threshold="0.5")
    assert max(g.size for g in loose.near_groups) > len(made["near"])  # a low threshold groups unrelated scenes


@pytest.mark.parametrize("threshold", ["abc", 0, -0.5, 1.5, float("nan"), True])
def test_a_threshold_that_is_no_similarity_is_one_sentence(engine, threshold):
    with pytest.raises(InvalidInputError, match="The similarity threshold .* is not valid; use a number above 0"):
        engine.find_duplicates("whatever", threshold)


def test_images_ingested_before_hashes_are_counted_and_still_grouped_by_vector(engine):
    """Rows written by the previous schema (no SHA-256) take part in near groups and are counted as unhashed."""
    data, expected = planted(50)
    data[21] = data[20]  # ids 21 and 22: one file twice, hashed by a later ingest
    uid = "before-hashes"
    index = vectors.new_index(data.shape[1])
    index.add(data, np.arange(1, 51, dtype=np.int64))
    index.save(vectors.layout.index_file(engine.data_home, uid, 1))
    rows = [ImageRecord(i, f"/old/{i:03d}.jpg", 100, 0, facts=ImageFacts(sha256="ab" * 32) if i in (21, 22) else None)
            for i in range(1, 51)]
    engine.store.commit_generation(dataset=NewDataset("old", uid, MODEL, data.shape[1], "/old", "flat"),
                                   base_generation=0, new_generation=1, added=rows, removed_ids=[], image_count=50,
                                   next_vector_id=51)
    found = engine.find_duplicates("old", threshold=0.9)
    assert found.unhashed == 48
    assert [g.paths() for g in found.exact_groups] == [["/old/021.jpg", "/old/022.jpg"]]
    assert sorted(sorted(int(p[5:8]) - 1 for p in g.paths()) for g in found.near_groups) == expected


def test_an_unknown_dataset_and_one_without_copies(engine, scenes, tmp_path):
    from image_search import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError):
        engine.find_duplicates("nothing-here")
    (tmp_path / "distinct").mkdir()
    for scene in sorted(scenes.iterdir())[:3]:
        shutil.copy(scene, tmp_path / "distinct" / scene.name)
    engine.ingest(tmp_path / "distinct", "distinct", progress=False)
    found = engine.find_duplicates("distinct")
    assert found.exact_groups == () and found.near_groups == () and found.images == 3


def test_the_duplicates_report_loads_in_chromium_with_every_thumbnail(engine, scenes, tmp_path):
    from image_search import write_report
    from tests.browser import Browser, open_page, require_chromium

    chromium = require_chromium()
    copies_folder(scenes, tmp_path / "case")
    engine.ingest(tmp_path / "case", "dupes-report", progress=False)
    found = engine.find_duplicates("dupes-report")
    path = write_report(tmp_path / "dupes.html", found.to_dict())
    browser = Browser(chromium, tmp_path / "profile")
    try:
        page = open_page(browser, Path(path).as_uri())
        assert page.errors() == []
        assert page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length") \
            == page.evaluate("document.images.length") == 3 + 5
        text = page.evaluate("document.body.innerText")
        assert "Group 1: 3 exact copies" in text and "Group 2: 5 near-copies" in text
        assert found.exact_groups[0].sha256 in text and "0.76 cosine similarity" in text
    finally:
        browser.close()


# -- the command line --------------------------------------------------------------------------------------------
@pytest.fixture
def dupes_env(backend, data_home) -> dict:
    env = tool_env(data_home, backend[1])
    env["IMAGE_SEARCH_MODEL"] = MODEL
    return env


def test_cli_duplicates_prints_exports_and_writes_json(dupes_env, scenes, tmp_path):
    made = copies_folder(scenes, tmp_path / "case")
    done = run_tool("cli.cli_preprocess", "-i", tmp_path / "case", "-n", "cli-dupes", env=dupes_env)
    assert done.returncode == 0, done.stderr
    done = run_tool("cli.cli_duplicates", "-n", "cli-dupes", "--export", tmp_path / "dupes.csv", env=dupes_env)
    assert done.returncode == 0, done.stderr
    assert "1 groups of exact copies, 1 groups of near-copies" in done.stdout
    assert "near-copies from cosine similarity 0.76" in done.stdout and str(made["exact"][1]) in done.stdout
    assert f"Wrote the report {tmp_path / 'dupes.csv'}" in done.stdout
    with open(tmp_path / "dupes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 + 5 and {row["group_kind"] for row in rows} == {"exact", "near"}
    assert {row["path"] for row in rows if row["group_kind"] == "exact"} == {str(p) for p in made["exact"]}
    done = run_tool("cli.cli_duplicates", "-n", "cli-dupes", "--exact-only", "--json", env=dupes_env)
    found = json.loads(done.stdout)
    assert found["exact_only"] and found["near_groups"] == [] and len(found["exact_groups"]) == 1
    done = run_tool("cli.cli_duplicates", "-n", "cli-dupes", "-t", "0.99", "--json", tmp_path / "d.json",
                    "--export", tmp_path / "d.html", env=dupes_env)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "d.json").read_text())["threshold"] == 0.99
    assert "0.99 cosine similarity" in (tmp_path / "d.html").read_text()


def test_cli_duplicates_mistakes_are_one_line(dupes_env, tmp_path):
    for args, words in ((["-n", "x", "--threshold", "high"], "The similarity threshold 'high' is not valid"),
                        (["-n", "x", "--export", tmp_path / "d.docx"], "name it .csv, .json or .html"),
                        (["-n", "no-such"], "There is no dataset named 'no-such'"),
                        (["--threshold", "0.9"], "the following arguments are required: --name/-n")):
        done = run_tool("cli.cli_duplicates", *args, env=dupes_env)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
    assert not (tmp_path / "d.docx").exists()


# -- the benchmark -----------------------------------------------------------------------------------------------
def test_the_grouping_benchmark_finds_the_planted_copies_in_an_ivf_index(tmp_path):
    from evaluation import benchmark_duplicates

    assert benchmark_duplicates.main(["--no-photos", "--sizes", "25000", "--json", str(tmp_path / "b.json")]) == 0
    [run] = json.loads((tmp_path / "b.json").read_text())["timing"]["25000"]
    assert run["index"] == "ivf" and run["threshold"] == 0.9
    assert run["near_copies_grouped"] >= 0.99 and run["exact_copies_found"] == 1.0
    assert run["largest_near_group"] <= 4  # three copies and their original at most: nothing unrelated joined


# -- the server, over real HTTP ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request, tmp_path_factory, scenes):
    """A real server whose new datasets use efficientnet-lite0, with dataset 'dupes' (copies_folder) ingested
    through it and 'texts' (test-tiny, for text searches) ingested by the command line into the same store."""
    from tests.conftest import _clear_postgres
    from tests.test_server import start_server, stop_server

    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_database")
        _clear_postgres(database)
    env = tool_env(tmp_path_factory.mktemp(f"dupes-server-{request.param}"), database)
    env["IMAGE_SEARCH_MODEL"] = MODEL
    folder = tmp_path_factory.mktemp("served") / "case"
    made = copies_folder(scenes, folder)
    done = run_tool("cli.cli_preprocess", "-i", folder, "-n", "texts", "--model", "test-tiny", env=env)
    assert done.returncode == 0, done.stderr
    server = start_server(env, tmp_path_factory.mktemp("dupes-server-log") / "server.log")
    try:
        answer = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "dupes"})
        assert answer.status_code == 200, answer.text
        yield server, made, env
    finally:
        stop_server(server.process)


def duplicates_parameters(dataset="dupes", threshold=0, groups="all") -> dict:
    return {"dataset_name": dataset, "threshold": threshold, "groups": groups}


def test_the_server_offers_the_new_tasks(served):
    server, _, _ = served
    routes = {route["order"]: route for route in server.get("/api/routes").json()}
    assert sorted(routes) == list(range(9))
    assert [routes[order]["run_task"] for order in (5, 6, 7, 8)] == ["/find_duplicates", "/report_text_search",
                                                                      "/report_image_search", "/report_duplicates"]

    def shape(rule):
        schema = server.get(rule + "/task_schema").json()
        return ([(i["key"], i["input_type"]) for i in schema["inputs"]],
                [(p["key"], p["value"]["parameter_type"]) for p in schema["parameters"]])

    duplicates = [("dataset_name", "enum"), ("threshold", "float"), ("groups", "enum")]
    assert shape("/find_duplicates") == ([], duplicates)
    assert shape("/report_duplicates") == ([("output_dir", "directory")], duplicates)
    # a search report takes the search's filters too (the same fields as the search tasks)
    searched = [("dataset_name", "enum"), ("num_results", "int"), ("folder", "text"), ("taken_from", "text"),
                ("taken_to", "text"), ("camera", "text"), ("format", "text"), ("min_score", "text"),
                ("collapse_duplicates", "enum")]
    assert shape("/report_text_search") == ([("text_query", "text"), ("output_dir", "directory")], searched)
    assert shape("/report_image_search") == ([("image_path", "file"), ("output_dir", "directory")], searched)
    # the text report offers only datasets that read text
    schema = server.get("/report_text_search/task_schema").json()
    assert [v["key"] for v in schema["parameters"][0]["value"]["enum_vals"]] == ["texts"]


def test_the_server_finds_duplicates_as_an_image_grid_subtitled_by_group(served):
    server, made, _ = served
    answer = server.run("/find_duplicates", {}, duplicates_parameters())
    assert answer.status_code == 200, answer.text
    grid = answer.json()
    assert grid["output_type"] == "batchfile"
    files = grid["files"]
    assert [f["path"] for f in files] == sorted(map(str, made["exact"])) + sorted(map(str, made["near"]))
    assert all(f["file_type"] == "img" for f in files) and len({f["title"] for f in files}) == len(files)
    assert files[0]["subtitle"].startswith("group 1 of 2: 3 exact copies, SHA-256 ")
    assert files[-1]["subtitle"].startswith("group 2 of 2: 5 near-copies, similarity 0.")
    exact = server.run("/find_duplicates", {}, duplicates_parameters(groups="exact")).json()["files"]
    assert [f["path"] for f in exact] == sorted(map(str, made["exact"]))
    nothing = server.run("/find_duplicates", {}, duplicates_parameters(dataset="texts", threshold=1.0,
                                                                       groups="exact"))
    assert nothing.status_code == 200
    assert nothing.json()["output_type"] == "batchfile"  # the same files are exact copies in 'texts' too
    for parameters, words in ((duplicates_parameters(threshold=1.5), "The similarity threshold 1.5 is not valid"),
                              (duplicates_parameters(groups="some"), "The groups 'some' are not valid"),
                              (duplicates_parameters(dataset="none"), "There is no dataset named 'none'")):
        refused = server.run("/find_duplicates", {}, parameters)
        assert refused.status_code == 400 and words in refused.json()["error"], refused.text


def report_paths(answer: dict) -> tuple[Path, Path]:
    assert answer["output_type"] == "text" and answer["title"].startswith("Report written: ")
    html, csv_path = (Path(line) for line in answer["value"].splitlines() if line.startswith("/"))
    return html, csv_path


def test_the_server_writes_reports_into_a_chosen_folder(served, tmp_path):
    server, made, _ = served
    folder = {"output_dir": {"path": str(tmp_path)}}
    answer = server.run("/report_duplicates", folder, duplicates_parameters())
    assert answer.status_code == 200, answer.text
    html, csv_path = report_paths(answer.json())
    assert html.parent == csv_path.parent == tmp_path and html.suffix == ".html" and csv_path.suffix == ".csv"
    assert html.name.startswith("duplicates-dupes-") and html.stem == csv_path.stem
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") == 8 and "Duplicates report: dupes" in page
    with open(csv_path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8

    answer = server.run("/report_text_search", {"text_query": {"text": "a red circle"}, **folder},
                        {"dataset_name": "texts", "num_results": 4})
    assert answer.status_code == 200, answer.text
    html, csv_path = report_paths(answer.json())
    page = html.read_text()
    assert "&ldquo;a red circle&rdquo;" in page and "test-tiny" in page and page.count("data:image/jpeg") == 4
    query = made["near"][1]
    answer = server.run("/report_image_search", {"image_path": {"path": str(query)}, **folder},
                        {"dataset_name": "dupes", "num_results": 3})
    assert answer.status_code == 200, answer.text
    html, csv_path = report_paths(answer.json())
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["path"] == str(query) and len(rows) == 3
    assert len(list(tmp_path.iterdir())) == 6  # three reports, none replaced

    refused = server.run("/report_duplicates", {"output_dir": {"path": str(tmp_path / "nowhere")}},
                         duplicates_parameters())
    assert refused.status_code == 400 and "does not exist" in refused.json()["error"]


def test_cli_search_exports_a_report_of_what_the_server_answered(served, tmp_path):
    _, made, env = served
    done = run_tool("cli.cli_search", "-i", made["exact"][0], "-n", "dupes", "-k", "3", "--export",
                    tmp_path / "r.html", env=env)
    assert done.returncode == 0, done.stderr
    assert "answered by the server" in done.stderr
    page = (tmp_path / "r.html").read_text()
    assert MODEL in page and page.count("data:image/jpeg") == 4  # the query and three results
