"""The Flask-ML server over real HTTP, used as RescueBox-Desktop and flask-ml's MLClient use it, on both stores.

One server process per backend serves the module (each start imports torch); every test uses its own dataset
names, so each can also run alone. A few checks that need to break the core on purpose run the same server code
in-process through Flask's test client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from flask_ml.flask_ml_client import MLClient

from tests.conftest import REPO, _clear_postgres, empty_cache_env, run_tool, tool_env

ORIGINAL_TASKS = {0: "/dataset_processing", 1: "/search_by_text", 2: "/search_by_image"}


# -- a real server process ---------------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=60)

    def run(self, rule: str, inputs: dict, parameters: dict, timeout: float = 180) -> requests.Response:
        """POST run_task exactly as RescueBox-Desktop does."""
        return requests.post(self.url + rule, json={"inputs": inputs, "parameters": parameters}, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dataset_field(self, rule: str) -> dict:
        """The dataset drop-down of a task's form: enum_vals, default, message_when_empty."""
        schema = self.get(rule + "/task_schema").json()
        return next(p for p in schema["parameters"] if p["key"] == "dataset_name")["value"]

    def choices(self, rule: str) -> list[str]:
        return [value["key"] for value in self.dataset_field(rule)["enum_vals"]]


def wait_until(condition, seconds: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if server.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen; server log:\n{server.log()[-4000:]}")
        time.sleep(0.1)


def start_server(env: dict, log_path: Path, *args: str) -> Server:
    """A server process on a free port (args: more flags, e.g. --host 0.0.0.0), reached through 127.0.0.1."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "server.server", "--port", "0", *args], env=env, cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT)
    server = Server("", process, log_path)
    try:
        wait_until(lambda: re.search(r"http://127\.0\.0\.1:(\d+)", server.log()), 120, "server start", server)
        server.url = re.search(r"http://127\.0\.0\.1:\d+", server.log()).group(0)
        wait_until(lambda: answers(server), 60, "first answer", server)
    except BaseException:
        stop_server(process)
        raise
    return server


def answers(server: Server) -> bool:
    try:
        return server.get("/api/app_metadata").status_code == 200
    except requests.ConnectionError:
        return False


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store_env(request, tmp_path_factory) -> dict:
    """Environment for servers and tools sharing one data folder and one empty store, for this module."""
    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_database")
        _clear_postgres(database)
    return tool_env(tmp_path_factory.mktemp(f"server-home-{request.param}"), database)


@pytest.fixture(scope="module")
def server(store_env, tmp_path_factory):
    running = start_server(store_env, tmp_path_factory.mktemp("server-log") / "server.log")
    yield running
    stop_server(running.process)


@pytest.fixture(scope="module")
def case_folder(photos, tmp_path_factory) -> Path:
    """8 photos (one in a subfolder), 2 more whose names are not UTF-8 and print alike, 2 broken files, a note."""
    folder = tmp_path_factory.mktemp("case")
    (folder / "sub dir").mkdir()
    originals = sorted(photos.iterdir())
    for i, photo in enumerate(originals[:8]):
        shutil.copy(photo, folder / ("sub dir" if i == 0 else "") / photo.name)
    for raw_name, photo in zip([b"caf\xe9.jpg", b"caf\xe8.jpg"], originals[8:10]):
        shutil.copy(photo, os.path.join(os.fsencode(folder), raw_name))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    (folder / "notes.txt").write_text("case notes")
    return folder


@pytest.fixture(scope="module")
def case(server, case_folder) -> dict:
    """The answer to ingesting case_folder as dataset 'case' through the server."""
    response = server.run("/dataset_processing", {"input_dir": {"path": str(case_folder)}}, {"dataset_name": "case"})
    assert response.status_code == 200, response.text
    return response.json()


def copy_photos(photos: Path, folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(photos.iterdir())[:count]:
        shutil.copy(photo, folder / photo.name)
    return folder


def text_query(text: str) -> dict:
    return {"text_query": {"text": text}}


def image_query(path) -> dict:
    return {"image_path": {"path": str(path)}}


def check_image_grid(answer: dict, folder: Path, count: int) -> list[dict]:
    """The shape the app's image grid needs: absolute paths, unique titles, scores in subtitles, best first."""
    assert answer["output_type"] == "batchfile"
    files = answer["files"]
    assert len(files) == count
    root = os.path.realpath(folder)
    for item in files:
        assert item["output_type"] == "file" and item["file_type"] == "img"
        assert os.path.isabs(item["path"]) and item["path"].startswith(root + os.sep)
        if "\ufffd" not in item["path"]:  # undecodable names cannot travel in JSON as they are
            assert os.path.isfile(item["path"])
            assert item["title"] == os.path.relpath(item["path"], root)
        # the score, the date (the sample photos have no EXIF: the file's), and a camera when known
        assert re.fullmatch(r"score -?\d\.\d{4} · modified \d{4}-\d\d-\d\d \d\d:\d\d( · .+)?", item["subtitle"])
    titles = [item["title"] for item in files]
    assert len(set(titles)) == len(titles)
    scores = [float(item["subtitle"].split()[1]) for item in files]
    assert scores == sorted(scores, reverse=True)
    return files


# -- registration ------------------------------------------------------------------------------------------------
def test_registers_like_rescuebox_desktop(server):
    metadata = server.get("/api/app_metadata").json()
    assert set(metadata) == {"name", "author", "version", "info"} and all(metadata.values())
    routes = server.get("/api/routes").json()
    orders = [route["order"] for route in routes]
    assert sorted(orders) == list(range(9))  # the app's task id is String(order): unique
    by_order = {route["order"]: route for route in routes}
    assert {order: by_order[order]["run_task"] for order in ORIGINAL_TASKS} == ORIGINAL_TASKS
    for route in routes:
        assert route["task_schema"] == route["run_task"] + "/task_schema" and route["short_title"]
        assert route["short_title"] in metadata["info"]  # the info page explains every task

    def shape(schema):
        return ([(item["key"], item["input_type"]) for item in schema["inputs"]],
                [(item["key"], item["value"]["parameter_type"]) for item in schema["parameters"]])

    schemas = {order: server.get(route["task_schema"]).json() for order, route in by_order.items()}
    assert shape(schemas[0]) == ([("input_dir", "directory")], [("dataset_name", "text")])
    search_parameters = [("dataset_name", "enum"), ("num_results", "int"), ("folder", "text"), ("taken_from", "text"),
                         ("taken_to", "text"), ("camera", "text"), ("format", "text"), ("min_score", "text"),
                         ("collapse_duplicates", "enum")]
    assert shape(schemas[1]) == ([("text_query", "text")], search_parameters)
    assert shape(schemas[2]) == ([("image_path", "file")], search_parameters)
    assert shape(schemas[3]) == ([], [])
    assert shape(schemas[4]) == ([], [("dataset_name", "enum")])
    assert schemas[1]["parameters"][1]["value"]["default"] == 5
    for order in (1, 2, 4):
        assert schemas[order]["parameters"][0]["value"]["message_when_empty"]


# -- ingest and search -------------------------------------------------------------------------------------------
def test_ingest_answer_summarises_the_work(case):
    assert case["output_type"] == "text" and "'case'" in case["title"]
    summary = case["value"]
    assert "Indexed 10 images in " in summary and "images/s" in summary
    assert "Skipped 2 files" in summary and "empty.jpg" in summary and "text.jpg" in summary
    assert "Ignored 1 files that are not images" in summary


def test_ingesting_the_same_folder_again_updates_the_dataset(server, case, case_folder):
    again = server.run("/dataset_processing", {"input_dir": {"path": str(case_folder)}}, {"dataset_name": "case"})
    assert again.status_code == 200, again.text
    assert "Indexed 0 images" in again.json()["value"] and "reused 10 unchanged" in again.json()["value"]


def test_search_by_text_with_plain_http_and_with_mlclient(server, case, case_folder):
    response = server.run("/search_by_text", text_query("a red car at night"), {"dataset_name": "case",
                                                                                 "num_results": 4})
    assert response.status_code == 200, response.text
    check_image_grid(response.json(), case_folder, 4)
    client = MLClient(server.url + "/search_by_text")
    assert client.request(text_query("a red car at night"), {"dataset_name": "case", "num_results": 4}) == \
        response.json()


def test_search_by_image_finds_the_image_itself_first(server, case, case_folder):
    query = case_folder / "sub dir" / "photo_00000.jpg"
    answer = MLClient(server.url + "/search_by_image").request(image_query(query),
                                                               {"dataset_name": "case", "num_results": 3})
    best = check_image_grid(answer, case_folder, 3)[0]
    assert best["path"] == str(query) and best["title"] == os.path.join("sub dir", "photo_00000.jpg")
    assert float(best["subtitle"].split()[1]) == pytest.approx(1.0, abs=1e-3)


def test_titles_stay_unique_when_file_names_print_alike(server, case, case_folder):
    answer = server.run("/search_by_text", text_query("coffee"), {"dataset_name": "case", "num_results": 100}).json()
    titles = [item["title"] for item in check_image_grid(answer, case_folder, 10)]
    assert sorted(title for title in titles if title.startswith("caf")) == ["caf\ufffd.jpg", "caf\ufffd.jpg (2)"]


def test_dataset_choices_are_fresh_after_an_ingest(server, case, photos, tmp_path):
    assert "case" in server.choices("/search_by_text")
    assert "fresh" not in server.choices("/search_by_text")
    folder = copy_photos(photos, tmp_path / "fresh", 3)
    response = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "fresh"})
    assert response.status_code == 200, response.text
    for rule in ("/search_by_text", "/search_by_image", "/delete_dataset"):
        assert "fresh" in server.choices(rule)
    answer = server.run("/search_by_image", image_query(folder / "photo_00001.jpg"),
                        {"dataset_name": "fresh", "num_results": 5}).json()
    assert [item["title"] for item in check_image_grid(answer, folder, 3)][0] == "photo_00001.jpg"


def test_warm_text_search_reads_no_index_from_disk(server, case, store_env):
    first = server.run("/search_by_text", text_query("a dog"), {"dataset_name": "case", "num_results": 5})
    assert first.status_code == 200, first.text
    indexes = Path(store_env["IMAGE_SEARCH_HOME"]) / "indexes"
    hidden = indexes.with_name("indexes-hidden")
    indexes.rename(hidden)  # a server that went back to the index file would now fail
    try:
        again = server.run("/search_by_text", text_query("a dog"), {"dataset_name": "case", "num_results": 5})
    finally:
        hidden.rename(indexes)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


def test_datasets_are_shared_with_the_command_line(server, case, store_env, photos, tmp_path):
    folder = copy_photos(photos, tmp_path / "from_cli", 6)
    # Two independent tool runs side by side: each spends most of its time importing torch.
    cli_search = subprocess.Popen([sys.executable, "-m", "cli.cli_search", "-q", "a dog on a beach", "-n", "case",
                                   "-k", "5", "--json"], env=store_env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    try:
        result = run_tool("cli.cli_preprocess", "-i", folder, "-n", "from_cli", "--no-progress", env=store_env)
        found, problems = cli_search.communicate(timeout=300)
    finally:
        if cli_search.poll() is None:
            cli_search.kill()
            cli_search.wait()
    assert result.returncode == 0, result.stderr
    assert cli_search.returncode == 0, problems
    answer = server.run("/search_by_text", text_query("a dog on a beach"), {"dataset_name": "case",
                                                                            "num_results": 5}).json()
    assert [hit["path"] for hit in json.loads(found)] == [item["path"] for item in answer["files"]]

    assert "from_cli" in server.choices("/search_by_image")
    query = folder / "photo_00002.jpg"
    answer = server.run("/search_by_image", image_query(query), {"dataset_name": "from_cli", "num_results": 2})
    assert check_image_grid(answer.json(), folder, 2)[0]["path"] == os.path.realpath(query)

    # The server now holds from_cli's index in memory; an update made by the command line must reach it.
    added = folder / "added.jpg"
    shutil.copy(sorted(photos.iterdir())[11], added)
    result = run_tool("cli.cli_preprocess", "-i", folder, "-n", "from_cli", "--no-progress", env=store_env)
    assert result.returncode == 0 and "Indexed 1 images" in result.stdout, result.stdout + result.stderr
    answer = server.run("/search_by_image", image_query(added), {"dataset_name": "from_cli", "num_results": 50})
    files = check_image_grid(answer.json(), folder, 7)
    assert files[0]["path"] == os.path.realpath(added)


def test_text_search_on_an_image_only_dataset_says_why(server, store_env, photos, tmp_path):
    """A dataset built (from the command line) with efficientnet-lite0 has no text side: a readable 400."""
    folder = copy_photos(photos, tmp_path / "offline", 2)
    result = run_tool("cli.cli_preprocess", "-i", folder, "-n", "offline", "--model", "efficientnet-lite0",
                      "--no-progress", env=store_env)
    assert result.returncode == 0, result.stderr
    response = server.run("/search_by_text", text_query("a cat"), {"dataset_name": "offline", "num_results": 2})
    assert_readable_400(response, "image-only model, so it cannot be searched by text")
    assert "offline" not in server.choices("/search_by_text")  # the text form offers only datasets it can search
    assert "offline" in server.choices("/search_by_image") and "offline" in server.choices("/delete_dataset")
    by_image = server.run("/search_by_image", image_query(folder / "photo_00000.jpg"),
                          {"dataset_name": "offline", "num_results": 1})
    assert by_image.status_code == 200 and by_image.json()["files"][0]["path"] == str(folder / "photo_00000.jpg")


def test_list_and_delete_tasks(server, photos, tmp_path):
    folder = copy_photos(photos, tmp_path / "doomed", 2)
    response = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "doomed"})
    assert response.status_code == 200, response.text
    listing = server.run("/list_datasets", {}, {}).json()
    assert listing["output_type"] == "markdown"
    row = next(line for line in listing["value"].splitlines() if line.startswith("| doomed |"))
    assert "| 2 |" in row and "test-tiny" in row and os.path.realpath(folder) in row
    assert re.search(r"\| \d{4}-\d\d-\d\d \d\d:\d\d", row)  # creation time

    deleted = server.run("/delete_dataset", {}, {"dataset_name": "doomed"})
    assert deleted.status_code == 200, deleted.text
    assert "Deleted dataset 'doomed' (2 images)" in deleted.json()["value"]
    assert len(list(folder.iterdir())) == 2  # the images themselves stay
    assert "doomed" not in server.choices("/delete_dataset")
    assert "| doomed |" not in server.run("/list_datasets", {}, {}).json()["value"]
    again = server.run("/delete_dataset", {}, {"dataset_name": "doomed"})
    assert again.status_code == 400 and "no dataset named 'doomed'" in again.json()["error"]


def test_the_delete_form_starts_with_no_dataset_chosen(server, case):
    delete = server.dataset_field("/delete_dataset")
    assert "case" in [value["key"] for value in delete["enum_vals"]] and delete["default"] == ""
    assert server.dataset_field("/search_by_image")["default"] != ""  # searches start on the newest dataset
    assert_readable_400(server.run("/delete_dataset", {}, {"dataset_name": delete["default"]}),
                        "No dataset was chosen; pick the dataset to delete")
    assert "case" in server.choices("/delete_dataset")


# -- bad input ---------------------------------------------------------------------------------------------------
def assert_readable_400(response: requests.Response, fragment: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "VALIDATION_ERROR"
    message = body["error"]
    assert isinstance(message, str) and fragment in message, message
    assert "\n" not in message and "Traceback" not in message and "Error(" not in message


def test_bad_input_gets_400_with_one_readable_sentence(server, case, case_folder, tmp_path):
    def search(**changes):
        return {"dataset_name": "case", "num_results": 3, **changes}

    photo = case_folder / "sub dir" / "photo_00000.jpg"
    ingest = "/dataset_processing"
    cases = [
        (ingest, {"input_dir": {"path": str(tmp_path / "missing")}}, {"dataset_name": "x1"}, "does not exist"),
        (ingest, {"input_dir": {"path": str(case_folder / "notes.txt")}}, {"dataset_name": "x1"}, "not a folder"),
        (ingest, {"input_dir": {"path": ""}}, {"dataset_name": "x1"}, "No input folder"),
        (ingest, {"input_dir": {"path": str(case_folder)}}, {"dataset_name": "bad name!"}, "is not valid"),
        (ingest, {"input_dir": {"path": str(case_folder)}}, {"dataset_name": ""}, "is not valid"),
        (ingest, {"input_dir": {"path": str(case_folder)}}, {"dataset_name": 7}, "is not valid"),
        (ingest, {"input_dir": {"path": str(case_folder / "sub dir")}}, {"dataset_name": "case"}, "was built from"),
        ("/search_by_text", text_query("a cat"), search(dataset_name="nope"), "no dataset named 'nope'"),
        ("/search_by_image", image_query(photo), search(dataset_name="nope"), "no dataset named 'nope'"),
        ("/search_by_text", text_query("   "), search(), "text query is empty"),
        ("/search_by_image", image_query(tmp_path / "missing.jpg"), search(), "does not exist"),
        ("/search_by_image", image_query(""), search(), "No query image"),
        ("/search_by_image", image_query(case_folder / "notes.txt"), search(), "is not an image"),
        ("/search_by_image", image_query(case_folder / "text.jpg"), search(), "cannot be used"),
        ("/search_by_image", image_query(case_folder / "empty.jpg"), search(), "cannot be used"),
        ("/search_by_image", image_query(case_folder), search(), "is a folder"),
        ("/delete_dataset", {}, {"dataset_name": "nope"}, "no dataset named 'nope'"),
    ]
    for bad in (0, -2, 2.5, "many", True, None, [3]):
        cases.append(("/search_by_text", text_query("a cat"), search(num_results=bad), "number of results"))
        cases.append(("/search_by_image", image_query(photo), search(num_results=bad), "number of results"))
    for rule, inputs, parameters, fragment in cases:
        assert_readable_400(server.run(rule, inputs, parameters), fragment)

    # Bodies no app would send still get a sentence, not a Python repr or a list of validation records.
    url = server.url + "/search_by_text"
    for body in ({"inputs": {"text_query": "a cat"}, "parameters": search()},
                 {"inputs": {"text_query": {"path": "/x"}}, "parameters": search()},
                 {"inputs": {"text_query": {"text": 5}}, "parameters": search()}):
        assert_readable_400(requests.post(url, json=body, timeout=60), '"text_query" must be')
    for body in ({"inputs": {}, "parameters": search()}, {"inputs": text_query("a cat")}, [1, 2]):
        assert_readable_400(requests.post(url, json=body, timeout=60), "takes a JSON body")
    assert_readable_400(requests.post(url, data="inputs=cat", timeout=60), "takes a JSON body")

    answer = MLClient(url).request(text_query("a cat"), search(num_results=-1))
    assert answer["status"] == "VALIDATION_ERROR" and "number of results" in answer["error"]
    # none of it changed the store
    assert server.choices("/search_by_text").count("case") == 1 and "x1" not in server.choices("/search_by_text")
    assert "| case | 10 |" in server.run("/list_datasets", {}, {}).json()["value"]


# -- concurrency and crashes -------------------------------------------------------------------------------------
def test_search_keeps_working_while_an_ingest_runs(server, case, store_env, tmp_path_factory):
    from evaluation.sample_images import write_photos

    folder = tmp_path_factory.mktemp("slow")
    write_photos(folder, 40, megapixels=0.02, seed=11)  # more than one batch: reader processes fork in the server
    # A second server on the same store whose ingests stop just before they commit (the core's test hook).
    paused = start_server({**store_env, "IMAGE_SEARCH_TEST_PAUSE_AT": "before-commit"},
                          tmp_path_factory.mktemp("paused-log") / "server.log")
    outcome: dict = {}

    def ingest() -> None:
        try:
            outcome["response"] = paused.run("/dataset_processing", {"input_dir": {"path": str(folder)}},
                                             {"dataset_name": "slow"}, timeout=600)
        except requests.ConnectionError:
            outcome["cut off"] = True

    worker = threading.Thread(target=ingest, daemon=True)
    try:
        worker.start()
        wait_until(lambda: "PAUSED AT before-commit" in paused.log(), 180, "ingest reaching its commit", paused)
        search = paused.run("/search_by_text", text_query("a boat"), {"dataset_name": "case", "num_results": 3},
                            timeout=60)
        assert search.status_code == 200 and len(search.json()["files"]) == 3
        assert "case" in paused.choices("/search_by_text") and "slow" not in paused.choices("/search_by_text")
        assert_readable_400(paused.run("/dataset_processing", {"input_dir": {"path": str(folder)}},
                                       {"dataset_name": "slow"}), "is busy")
        assert_readable_400(paused.run("/delete_dataset", {}, {"dataset_name": "slow"}), "is busy")
        assert worker.is_alive()
    finally:
        stop_server(paused.process)  # killed in the middle of the ingest
    worker.join(60)
    assert outcome == {"cut off": True}

    # Nothing half-written: the dataset does not exist, and the next ingest of the name rolls the rest back.
    assert "slow" not in server.choices("/search_by_text")
    response = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "slow"})
    assert response.status_code == 200, response.text
    summary = response.json()["value"]
    assert "interrupted before it committed" in summary and "40 images in the dataset" in summary


# -- in-process: states that are hard to reach from outside ------------------------------------------------------
def test_choices_say_clearly_when_there_are_no_datasets(engine):
    from server.server import create_server

    client = create_server(engine).app.test_client()
    for rule in ("/search_by_text", "/search_by_image", "/delete_dataset"):
        dataset = client.get(rule + "/task_schema").get_json()["parameters"][0]["value"]
        assert dataset["enum_vals"] == [] and dataset["default"] == ""
        assert "No datasets yet" in dataset["message_when_empty"]
        assert "Ingest Dataset into the model" in dataset["message_when_empty"]
    response = client.post("/search_by_text", json={"inputs": text_query("a cat"),
                                                    "parameters": {"dataset_name": "any", "num_results": 3}})
    assert response.status_code == 400 and "no datasets yet" in response.get_json()["error"]


def test_unreachable_store_is_explained_in_the_form(engine, monkeypatch):
    from image_search.errors import StoreUnavailableError
    from server.server import create_server

    message = "Cannot reach the PostgreSQL database at db:5432 (connection refused); start PostgreSQL."

    def unreachable():
        raise StoreUnavailableError(message)

    monkeypatch.setattr(engine, "datasets", unreachable)
    client = create_server(engine).app.test_client()
    dataset = client.get("/search_by_text/task_schema").get_json()["parameters"][0]["value"]
    assert dataset["enum_vals"] == [] and dataset["message_when_empty"] == message


def test_unexpected_failure_is_a_readable_500_that_leaves_nothing_half_written(engine, photos, tmp_path,
                                                                              monkeypatch):
    from image_search.vectors import FaissIndex
    from server.server import create_server

    def disk_full(*_args, **_kwargs):  # a full disk is a sentence now (data_folder.py): a failure nobody foresaw
        raise RuntimeError("injected failure while writing the index")

    folder = copy_photos(photos, tmp_path / "photos", 3)
    body = {"inputs": {"input_dir": {"path": str(folder)}}, "parameters": {"dataset_name": "full"}}
    client = create_server(engine).app.test_client()
    with monkeypatch.context() as patch:
        patch.setattr(FaissIndex, "save", disk_full)
        response = client.post("/dataset_processing", json=body)
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error.startswith("The server failed unexpectedly while ingesting the folder (RuntimeError:"), error
    assert "injected failure" in error and "server's log" in error
    assert engine.datasets() == []
    response = client.post("/dataset_processing", json=body)
    assert response.status_code == 200, response.get_json()
    assert "interrupted before it committed" in response.get_json()["value"]


def test_an_ingest_runs_on_a_thread_that_ends_with_it(sqlite_engine, photos, tmp_path, monkeypatch):
    """OpenMP keeps a pool of workers for every thread that ran parallel work, for as long as it lives; extra
    pools make each operator of later queries wait for a sleeping worker (image_search/runtime/threads.py). The
    server's request threads live for ever, so an ingest runs its model on a thread that ends with it."""
    import image_search.ingest
    import server.server as server_module

    ingest_threads = []
    real_ingest = image_search.ingest.ingest_folder

    def recording_ingest(*args, **kwargs):
        ingest_threads.append(threading.current_thread())
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(image_search.ingest, "ingest_folder", recording_ingest)  # what ImageSearch.ingest runs
    client = server_module.create_server(sqlite_engine).app.test_client()
    folder = copy_photos(photos, tmp_path / "photos", 3)
    response = client.post("/dataset_processing", json={"inputs": {"input_dir": {"path": str(folder)}},
                                                        "parameters": {"dataset_name": "passing"}})
    assert response.status_code == 200, response.get_json()
    assert "3 images" in response.get_json()["value"]
    assert len(ingest_threads) == 1
    assert ingest_threads[0] is not threading.current_thread() and not ingest_threads[0].is_alive()


# -- a server whose default model has no weights on this machine --------------------------------------------
WEIGHTS_WARNING = "Ingests of new datasets will fail: "


@pytest.fixture(scope="module")
def weightless_server(photos, tmp_path_factory):
    """The default model (ViT-B-32:laion2b_s34b_b79k) with empty download caches and this machine's real network
    (no internet), on a store holding one dataset built with the image-only efficientnet-lite0."""
    from image_search.config import Settings
    from image_search.service import ImageSearch
    from image_search.ingest import ingest_folder

    home = tmp_path_factory.mktemp("weightless-home")
    env = empty_cache_env(home, tmp_path_factory.mktemp("weightless-caches"))
    engine = ImageSearch(Settings(data_home=home, model_name=None, device="cpu", database=None))
    try:
        ingest_folder(engine, copy_photos(photos, tmp_path_factory.mktemp("pictures"), 2), "pictures",
                      model_name="efficientnet-lite0", progress=False)
    finally:
        engine.close()
    running = start_server(env, tmp_path_factory.mktemp("weightless-log") / "server.log")
    yield running
    stop_server(running.process)


def test_missing_default_weights_are_said_once_at_start_and_on_every_ingest_at_once(weightless_server, photos,
                                                                                    tmp_path):
    server = weightless_server
    wait_until(lambda: WEIGHTS_WARNING in server.log(), 30, "the start-up warning", server)
    warning = next(line for line in server.log().splitlines() if WEIGHTS_WARNING in line)
    assert "--model ViT-B-32:/path/to/checkpoint.bin" in warning and "--model efficientnet-lite0" in warning

    folder = copy_photos(photos, tmp_path / "new case", 2)
    for _attempt in range(2):
        started = time.monotonic()
        response = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}},
                              {"dataset_name": "newcase"}, timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"the ingest answered after {elapsed:.1f} s"  # was ~50 s of download retries
        assert_readable_400(response, "pretrained weights 'laion2b_s34b_b79k'")
        message = response.json()["error"]
        assert "huggingface.co cannot be reached" in message and "--" not in message  # no flags in the app
        assert "ask whoever runs the server" in message and "efficientnet-lite0" in message
        assert "checkpoint file" in message and "no text search" in message
    assert server.log().count(WEIGHTS_WARNING) == 1


def test_text_form_says_why_when_no_dataset_can_answer_text(weightless_server):
    text = weightless_server.dataset_field("/search_by_text")
    assert text["enum_vals"] == [] and text["default"] == ""
    assert "No dataset can be searched by text" in text["message_when_empty"]
    assert "Search Images by Image File" in text["message_when_empty"]
    assert weightless_server.choices("/search_by_image") == ["pictures"]


def test_every_fix_is_spelled_by_both_faces():
    from cli.common import CLI_FIXES
    from image_search.errors import API_FIXES, Fix
    from server.server import APP_FIXES

    assert set(CLI_FIXES) == set(Fix) == set(APP_FIXES) == set(API_FIXES)
    assert all("--" not in spelling and "python -m" not in spelling
               for spelling in (*APP_FIXES.values(), *API_FIXES.values()))
