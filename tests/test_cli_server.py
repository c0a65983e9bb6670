"""cli_search and a running server of the same data folder: real server processes, real HTTP.

A command-line search that a server can answer is sent there (image_search/discovery.py) and prints exactly what
its own search prints; one that it cannot answer (no server, a dead one, another data folder, other settings)
searches in its own process without a word.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_MODEL, _clear_postgres, tool_env
from tests.test_server import copy_photos, start_server, stop_server

NOTE = "answered by the server at {url} (--no-server to search in this process)"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request, tmp_path_factory, photos):
    """(environment, server, folder): a server on a data folder holding dataset 'case', made through the server."""
    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_database")
        _clear_postgres(database)
    env = tool_env(tmp_path_factory.mktemp(f"served-home-{request.param}"), database)
    server = start_server(env, tmp_path_factory.mktemp("served-log") / "server.log")
    try:
        folder = copy_photos(photos, tmp_path_factory.mktemp("served-case") / "case", 6)
        answer = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "case"})
        assert answer.status_code == 200, answer.text
        yield env, server, folder
    finally:
        stop_server(server.process)


def cli_search(*args, env: dict, cwd=None, python_flags=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, "-m", "cli.cli_search", *map(str, args)], env=env,
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=300)


def use_environment(env: dict, monkeypatch) -> None:
    """This process's settings as tool_env gives them to a tool."""
    for key in [key for key in os.environ if key.startswith(("DB_", "IMAGE_SEARCH_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(("DB_", "IMAGE_SEARCH_")):
            monkeypatch.setenv(key, value)


def cli_search_here(env: dict, args, monkeypatch, capsys) -> tuple[str, str, str]:
    """(stdout, stderr, error line) of cli_search's main run in the test's process."""
    from cli import cli_search as tool
    from image_search.errors import ImageSearchError

    use_environment(env, monkeypatch)
    capsys.readouterr()
    try:
        tool.main([str(arg) for arg in args])
        error = ""
    except ImageSearchError as refused:
        error = f"error: {refused}"
    out, err = capsys.readouterr()
    return out, err, error


def test_a_search_the_server_answers_prints_what_a_local_search_prints(served, monkeypatch, capsys):
    env, server, folder = served
    note = NOTE.format(url=server.url)
    searches = [(["-q", "a dog on a beach", "-n", "case", "--json"], None),
                (["-q", "a red circle", "-n", "case", "-k", "3"], None),
                (["-i", "photo_00002.jpg", "-n", "case", "-k", "2", "--json"], folder),  # relative to our folder
                (["-q", "a dog", "-n", "case", "-k", "0"], None),
                (["-q", "a dog", "-n", "nope"], None)]
    for args, cwd in searches:
        answered = cli_search(*args, env=env, cwd=cwd)
        previous = os.getcwd()
        os.chdir(cwd or REPO)
        try:
            local_output, local_notes, local_error = cli_search_here(env, [*args, "--no-server"], monkeypatch, capsys)
        finally:
            os.chdir(previous)
        assert local_notes == ""  # --no-server: searched here, with the server running on the same folder
        lines = answered.stderr.splitlines()
        assert lines and lines[0] == note, answered.stderr
        assert answered.stdout == local_output, args
        if local_error:
            assert answered.returncode == 2 and lines[1:] == [local_error], answered.stderr
        else:
            assert answered.returncode == 0 and len(lines) == 1, answered.stderr
    by_image = json.loads(cli_search("-i", folder / "photo_00002.jpg", "-n", "case", "--json", env=env).stdout)
    assert by_image[0]["path"] == str(folder / "photo_00002.jpg") and by_image[0]["score"] == pytest.approx(1.0)


MODULES_AFTER = """
import runpy, sys
sys.argv = ["cli_search", *sys.argv[1:]]
try:
    runpy.run_module("cli.cli_search", run_name="__main__")
finally:
    print("MODULES " + " ".join(sorted(sys.modules)), file=sys.stderr)
"""


def test_a_search_the_server_answers_loads_no_model_here(served):
    """The point of asking the server: none of torch, open_clip, numpy, FAISS or a database driver is imported
    (read from sys.modules at exit: -X importtime misses modules loaded by importlib.import_module, as the
    package's lazy public names are)."""
    env, server, _ = served
    answered = subprocess.run([sys.executable, "-c", MODULES_AFTER, "-q", "a dog", "-n", "case"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert answered.returncode == 0 and NOTE.format(url=server.url) in answered.stderr, answered.stderr
    imported = set(answered.stderr.split("MODULES ", 1)[1].split())
    assert "image_search.discovery" in imported
    heavy = {name for name in imported if name.split(".")[0] in ("torch", "open_clip", "numpy", "faiss", "psycopg2",
                                                                  "PIL", "flask")}
    assert not heavy, sorted(heavy)


def test_only_a_server_of_the_same_folder_store_and_settings_is_used(served, monkeypatch):
    from image_search.config import load_settings
    from image_search.discovery import find_server

    env, server, _ = served
    use_environment(env, monkeypatch)
    found = find_server(load_settings())
    assert found is not None and found.pid == server.process.pid and server.url.endswith(f":{found.port}")
    monkeypatch.setenv("IMAGE_SEARCH_NPROBE", "7")  # would search an IVF index differently
    assert find_server(load_settings()) is None
    monkeypatch.delenv("IMAGE_SEARCH_NPROBE")
    assert find_server(load_settings(device="cuda")) is None
    monkeypatch.setenv("IMAGE_SEARCH_CPU_PRECISION", "fp32")
    assert find_server(load_settings()) is None
    monkeypatch.delenv("IMAGE_SEARCH_CPU_PRECISION")
    if "DB_HOST" in env:  # the same data folder, but the SQLite store instead of the server's PostgreSQL one
        monkeypatch.delenv("DB_HOST")
    else:
        monkeypatch.setenv("DB_HOST", "localhost")
    assert find_server(load_settings()) is None


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def ingest_here(home: Path, folder: Path) -> None:
    from image_search.config import Settings
    from image_search.service import ImageSearch
    from image_search.ingest import ingest_folder

    engine = ImageSearch(Settings(data_home=home, model_name=TEST_MODEL, device="cpu", database=None))
    try:
        ingest_folder(engine, folder, "case", progress=False)
    finally:
        engine.close()


def test_a_dead_or_foreign_server_leaves_the_search_here_without_a_word(tmp_path, photos, monkeypatch, capsys):
    """The server replaces a file left by a dead server and removes its own when stopped. A data folder holding
    the live server's file copied from elsewhere, and one whose file matches in everything but its dead process,
    are searched in the searching process, which says nothing about it."""
    home = tmp_path / "home"
    home.mkdir()
    discovery_file = home / "server.json"
    left_over = {"pid": dead_pid(), "host": "127.0.0.1", "port": 9, "version": "1.0.0", "data_home": str(home),
                 "store": "", "search": {}, "token": "left by a server killed with kill -9"}
    discovery_file.write_text(json.dumps(left_over))
    server = start_server(tool_env(home, None), tmp_path / "server.log")
    try:
        announced = json.loads(discovery_file.read_text())
        assert announced["pid"] == server.process.pid and server.url == f"http://127.0.0.1:{announced['port']}"
        assert re.fullmatch(r"[0-9a-f]{32}", announced["token"])
        for case in ("stale", "foreign"):
            other_home, folder = tmp_path / case, copy_photos(photos, tmp_path / f"{case}-photos", 3)
            other_home.mkdir()
            ingest_here(other_home, folder)
            if case == "stale":
                resolved = other_home.resolve()
                copied = {**announced, "pid": dead_pid(), "data_home": str(resolved),
                          "store": f"SQLite database {resolved}/metadata.sqlite3"}
                (other_home / "server.json").write_text(json.dumps(copied))
            else:
                shutil.copy(discovery_file, other_home / "server.json")
            out, err, error = cli_search_here(tool_env(other_home, None), ["-q", "a dog", "-n", "case", "--json"],
                                              monkeypatch, capsys)
            assert (err, error) == ("", ""), case
            assert {hit["path"] for hit in json.loads(out)} == {str(path) for path in folder.iterdir()}
    finally:
        stop_server(server.process)  # SIGTERM, as a service manager stops it
    assert not discovery_file.exists()
    assert not [path for path in home.iterdir() if path.name.endswith(".tmp")]


def test_the_route_answers_only_this_machine_and_its_token(sqlite_engine):
    from image_search.discovery import ROUTE, TOKEN_HEADER
    from server.server import CommandLineSearches, create_server

    app = create_server(sqlite_engine).app
    command_line = CommandLineSearches(sqlite_engine)
    command_line.add_route(app)
    client = app.test_client()
    body = {"dataset": "none", "text": "a dog", "num_results": 3, "model": None}
    own = {TOKEN_HEADER: command_line.token}
    remote = client.post(ROUTE, json=body, headers=own, environ_base={"REMOTE_ADDR": "192.168.1.20"})
    assert remote.status_code == 403 and "only from this machine" in remote.get_json()["error"]
    assert client.post(ROUTE, json=body, headers={TOKEN_HEADER: "guess"}).status_code == 403
    assert client.get(ROUTE).status_code == 403
    assert client.get(ROUTE, headers=own).get_json() == {"pid": os.getpid()}
    refused = client.post(ROUTE, json=body, headers=own, environ_base={"REMOTE_ADDR": "::1"})
    assert refused.status_code == 400 and "no datasets yet" in refused.get_json()["error"]
    shapeless = client.post(ROUTE, json={"dataset": "x", "text": "a", "image_path": "b"}, headers=own)
    assert shapeless.status_code == 400 and "takes a JSON body" in shapeless.get_json()["error"]
