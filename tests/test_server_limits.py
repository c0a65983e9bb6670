"""Limits no client can stretch and a sentence for every failure, over real HTTP to real server processes (SQLite):
slow and half-open connections, oversize bodies and texts, JSON errors for everything, the forms num_results
takes, a SQLite write lock held by another process, a damaged SQLite page and a read-only data folder.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, TEST_MODEL, tool_env
from tests.test_server import Server, copy_photos, start_server, stop_server

REQUEST_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory, photos):
    """(server, env, home, folder): a loopback server cutting slow requests after 3 s, holding dataset 'case'."""
    base = tmp_path_factory.mktemp("limits")
    home = base / "home"
    env = tool_env(home, None)
    server = start_server(env, base / "server.log", "--request-timeout", str(REQUEST_TIMEOUT_S))
    try:
        folder = copy_photos(photos, base / "case", 6)
        answer = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "case"})
        assert answer.status_code == 200, answer.text
        yield server, env, home, folder
    finally:
        stop_server(server.process)


def assert_json_error(response: requests.Response, status: int, fragment: str) -> str:
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["status"] == ("VALIDATION_ERROR" if status < 500 else "SERVER_ERROR")
    message = body["error"]
    assert isinstance(message, str) and fragment in message, message
    assert "\n" not in message and "Traceback" not in message and "<" not in message, message
    return message


def search(text: str = "a dog", **parameters) -> dict:
    return {"inputs": {"text_query": {"text": text}}, "parameters": {"dataset_name": "case", "num_results": 3,
                                                                      **parameters}}


def address(server: Server) -> tuple[str, int]:
    return "127.0.0.1", int(server.url.rsplit(":", 1)[1])


def read_until_closed(connection: socket.socket, seconds: float) -> bytes:
    connection.settimeout(seconds)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return received


# -- slow clients -----------------------------------------------------------------------------------------------
def test_slow_and_half_open_connections_neither_block_requests_nor_stay_for_ever(limited):
    server, *_ = limited
    silent = [socket.create_connection(address(server)) for _ in range(4)]  # connect, say nothing
    stalled = [socket.create_connection(address(server)) for _ in range(4)]  # half a request, then nothing
    for connection in stalled:
        connection.sendall(b"POST /search_by_text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n")
    trickling = [socket.create_connection(address(server)) for _ in range(4)]  # a byte every 0.3 s, for ever
    request = b"POST /search_by_text HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 500
    stop = threading.Event()

    def trickle(connection: socket.socket) -> None:
        for byte in request:
            if stop.is_set():
                return
            try:
                connection.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.3)

    threads = [threading.Thread(target=trickle, args=(connection,), daemon=True) for connection in trickling]
    for thread in threads:
        thread.start()
    opened = time.monotonic()
    try:
        time.sleep(0.5)
        # 12 slow connections, more than the server's 8 threads: other requests are answered at once
        for _ in range(3):
            started = time.monotonic()
            answer = requests.post(server.url + "/search_by_text", json=search(), timeout=10)
            assert answer.status_code == 200 and len(answer.json()["files"]) == 3
            assert time.monotonic() - started < 5
        # and none of them is kept past its deadline, however it trickles
        for connection in stalled:
            answer = read_until_closed(connection, 20)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"did not arrive whole within 3 s" in answer and b"application/json" in answer
        for connection in trickling:  # closed (a byte sent after the close resets it, losing the 408 in transit)
            answer = read_until_closed(connection, 20)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
        for connection in silent:
            assert read_until_closed(connection, 20) == b""
        assert time.monotonic() - opened < REQUEST_TIMEOUT_S + 8
    finally:
        stop.set()
        for connection in silent + stalled + trickling:
            connection.close()
    assert requests.post(server.url + "/search_by_text", json=search(), timeout=10).status_code == 200


# -- sizes ------------------------------------------------------------------------------------------------------
def test_oversize_bodies_and_texts_are_refused_with_a_sentence(limited):
    server, *_ = limited
    # a 50 MB body announced: refused from its headers, before a byte of it is read
    with socket.create_connection(address(server)) as connection:
        connection.sendall(b"POST /search_by_text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 50000000\r\n\r\n")
        answer = read_until_closed(connection, 20)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b'"error": "The request is larger than this server accepts (1,024 KiB)' in answer
    # a chunked one that never says its size: cut off where it passes the limit
    with socket.create_connection(address(server)) as connection:
        connection.sendall(b"POST /search_by_text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        try:
            for _ in range(20):  # 1.25 MiB
                connection.sendall(chunk)
        except OSError:  # the server answered and closed before the rest arrived
            pass
        answer = read_until_closed(connection, 20)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"larger than this server accepts" in answer, answer[:300]
    # under the body limit, a text no model reads whole
    started = time.monotonic()
    assert_json_error(requests.post(server.url + "/search_by_text", json=search(" a red car" * 20_000), timeout=30),
                      400, "The text query is 199,999 characters long")
    assert time.monotonic() - started < 5
    assert requests.post(server.url + "/search_by_text", json=search("a red car " * 50), timeout=30).status_code == 200


# -- JSON for every answer --------------------------------------------------------------------------------------
def test_every_error_is_json_with_a_sentence(limited):
    server, *_ = limited
    url = server.url
    assert_json_error(requests.get(url + "/no/such/page", timeout=30), 404, "There is nothing at /no/such/page")
    assert_json_error(requests.get(url + "/search_by_text", timeout=30), 405, "does not take GET requests")
    assert_json_error(requests.put(url + "/api/routes", timeout=30), 405, "does not take PUT requests")
    deep = "[" * 100_000 + "]" * 100_000
    for rule in ("/search_by_text", "/dataset_processing"):
        assert_json_error(requests.post(url + rule, data=deep, headers={"Content-Type": "application/json"},
                                        timeout=30), 400, "nested too deeply")
        assert_json_error(requests.post(url + rule, data='{"inputs": ', timeout=30,
                                        headers={"Content-Type": "application/json"}), 400, "not valid JSON")
    assert_json_error(requests.post(url + "/search_by_text", data=b"\xff\xfe{", timeout=30,
                                    headers={"Content-Type": "application/json"}), 400, "not valid JSON")
    with socket.create_connection(address(server)) as connection:  # not HTTP at all
        connection.sendall(b"GARBAGE\r\n\r\n")
        answer = read_until_closed(connection, 20)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer) and b'"error": "The request is not valid HTTP' in answer, answer
    assert requests.post(url + "/search_by_text", json=search(), timeout=30).status_code == 200
    assert "Traceback" not in server.log()


def test_num_results_takes_whole_numbers_in_any_form(limited):
    server, *_ = limited
    for number in (5, 5.0, "5", " 5 "):
        answer = server.run("/search_by_text", search()["inputs"], {"dataset_name": "case", "num_results": number})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["files"]) == 5
    for number in (5.5, -1, 0, "x", "5.5", True, None, [5]):
        assert_json_error(server.run("/search_by_text", search()["inputs"],
                                     {"dataset_name": "case", "num_results": number}), 400,
                          f"The number of results {number!r} is not valid")


# -- store failures ---------------------------------------------------------------------------------------------
HOLD_WRITE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")  # the write lock, until this process is told to let go
print("HOLDING", flush=True)
sys.stdin.read()
connection.execute("ROLLBACK")
"""


def test_a_write_lock_held_by_another_process_is_a_sentence(limited, photos, tmp_path):
    server, _env, home, _folder = limited
    folder = copy_photos(photos, tmp_path / "while-locked", 3)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(home / "metadata.sqlite3")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    answers: dict = {}
    try:
        assert holder.stdout.readline().strip() == "HOLDING"

        def ask(key, rule, inputs, parameters):
            answers[key] = server.run(rule, inputs, parameters, timeout=240)

        workers = [threading.Thread(target=ask, args=("ingest", "/dataset_processing",
                                                      {"input_dir": {"path": str(folder)}},
                                                      {"dataset_name": "locked"})),
                   threading.Thread(target=ask, args=("delete", "/delete_dataset", {}, {"dataset_name": "case"}))]
        for worker in workers:
            worker.start()
        time.sleep(2)
        searched = requests.post(server.url + "/search_by_text", json=search(), timeout=30)  # readers go on
        assert searched.status_code == 200, searched.text
        for worker in workers:
            worker.join(240)
    finally:
        holder.communicate("", timeout=30)  # lets go
    for key in ("ingest", "delete"):
        message = assert_json_error(answers[key], 400, "is locked by another process, which kept it for more than 60 s")
        assert "metadata.sqlite3" in message and "try again" in message
    assert "locked" not in server.choices("/search_by_text") and "case" in server.choices("/search_by_text")
    again = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "locked"})
    assert again.status_code == 200, again.text
    assert "locked" in server.choices("/search_by_text")
    assert "Traceback" not in server.log()


def damage_image_pages(database: Path) -> None:
    """Overwrite the pages of the images table and its indexes (one page each, for a few rows) with garbage."""
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    pages = [row[0] for row in connection.execute(
        "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'images' AND rootpage > 0")]
    connection.close()
    with open(database, "r+b") as handle:
        for page in pages:
            handle.seek((page - 1) * page_size)
            handle.write(b"\xa5" * page_size)


def test_a_damaged_sqlite_page_is_a_sentence(tmp_path, photos):
    from image_search.config import Settings
    from image_search.service import ImageSearch

    home = tmp_path / "home"
    folder = copy_photos(photos, tmp_path / "case", 4)
    engine = ImageSearch(Settings(data_home=home, model_name=TEST_MODEL, device="cpu", database=None))
    try:
        engine.ingest(folder, "case", progress=False)
    finally:
        engine.close()
    damage_image_pages(home / "metadata.sqlite3")
    server = start_server(tool_env(home, None), tmp_path / "server.log")  # listing datasets reads no image row
    try:
        for answer in (requests.post(server.url + "/search_by_text", json=search(), timeout=60),
                       server.run("/search_by_image", {"image_path": {"path": str(folder / "photo_00001.jpg")}},
                                  {"dataset_name": "case", "num_results": 2}),
                       server.run("/dataset_processing", {"input_dir": {"path": str(folder)}},
                                  {"dataset_name": "case"})):
            message = assert_json_error(answer, 400, "metadata.sqlite3 is damaged")
            assert "restore it from a backup" in message and "the images themselves are not touched" in message
        assert "Traceback" not in server.log()
    finally:
        stop_server(server.process)


# -- a read-only data folder ------------------------------------------------------------------------------------
@pytest.fixture
def read_only_home(tmp_path):
    """mount(home, read_only): a small tmpfs at tmp_path/home, remounted read-only or writable; needs root."""
    home = tmp_path / "home"
    home.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(home)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only folder needs root (a root user cannot be kept out by permissions)")

    def remount(read_only: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(home)], check=True)

    yield home, remount
    subprocess.run(["umount", "-l", str(home)], capture_output=True)


def test_an_ingest_into_a_read_only_data_folder_is_a_sentence(read_only_home, postgres_database, photos, tmp_path):
    from tests.conftest import _clear_postgres

    home, remount = read_only_home
    _clear_postgres(postgres_database)
    folder = copy_photos(photos, tmp_path / "case", 3)
    remount(True)
    # PostgreSQL holds the metadata: the server starts; the data folder holds the indexes and locks
    server = start_server(tool_env(home, postgres_database), tmp_path / "server.log")
    try:
        answer = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "ro"})
        message = assert_json_error(answer, 400, "cannot be written (read-only file system)")
        assert str(home) in message and "make it writable" in message
        assert "--" not in message and "Traceback" not in server.log()
        remount(False)
        answer = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "ro"})
        assert answer.status_code == 200, answer.text
    finally:
        stop_server(server.process)


def test_a_sqlite_store_in_a_read_only_data_folder_is_a_sentence(read_only_home, photos, tmp_path):
    from image_search.config import Settings
    from image_search.service import ImageSearch

    home, remount = read_only_home
    folder = copy_photos(photos, tmp_path / "case", 3)
    engine = ImageSearch(Settings(data_home=home, model_name=TEST_MODEL, device="cpu", database=None))
    try:
        engine.ingest(folder, "case", progress=False)
    finally:
        engine.close()
    remount(True)
    # SQLite cannot open its database in a read-only folder (it must write beside it): the start says so
    started = subprocess.run([sys.executable, "-m", "server.server", "--port", "0"], env=tool_env(home, None),
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert started.returncode == 2 and "Traceback" not in started.stderr, started.stderr
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "metadata.sqlite3" in last and "writable" in last, last
    cli = subprocess.run([sys.executable, "-m", "cli.cli_preprocess", "-i", folder, "-n", "more", "--no-progress"],
                         env=tool_env(home, None), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert "writable" in cli.stderr and "IMAGE_SEARCH_HOME" in cli.stderr, cli.stderr
