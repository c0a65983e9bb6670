"""Who may ask the server, over real HTTP to real server processes: the token of a server listening beyond this
machine, the Host header (DNS rebinding), IMAGE_SEARCH_ALLOWED_ROOTS, and query paths naming a FIFO or a device.

One server listens on 0.0.0.0 (every network) with allowed roots, and is reached through 127.0.0.1 with and
without its token; one listens on loopback only, as by default.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, tool_env
from tests.test_server import Server, copy_photos, start_server, stop_server

TASK_BODY = {"/list_datasets": {"inputs": {}, "parameters": {}}}


@dataclass
class Open:
    """The server listening on every network: its process, data folder, token and the folders it may read."""
    server: Server
    env: dict
    home: Path
    token: str
    inside: Path  # the allowed root, holding dataset 'inside' (6 photos)
    outside: Path  # a folder of photos outside it

    def post(self, rule: str, body: dict, token: str | None = None, headers: dict | None = None):
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return requests.post(self.server.url + rule, json=body, headers=sent, timeout=120)

    def run(self, rule: str, inputs: dict, parameters: dict, **kwargs):
        return self.post(rule, {"inputs": inputs, "parameters": parameters}, self.token, **kwargs)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, photos) -> Open:
    base = tmp_path_factory.mktemp("open")
    inside, outside = copy_photos(photos, base / "allowed" / "case", 6), copy_photos(photos, base / "elsewhere", 3)
    home = base / "home"
    env = {**tool_env(home, None), "IMAGE_SEARCH_ALLOWED_ROOTS": str(base / "allowed")}
    server = start_server(env, base / "server.log", "--host", "0.0.0.0")
    try:
        token = (home / "server-token").read_text().strip()
        running = Open(server, env, home, token, inside, outside)
        answer = running.run("/dataset_processing", {"input_dir": {"path": str(inside)}}, {"dataset_name": "inside"})
        assert answer.status_code == 200, answer.text
        yield running
    finally:
        stop_server(server.process)


@pytest.fixture(scope="module")
def loopback_server(tmp_path_factory, photos):
    base = tmp_path_factory.mktemp("loopback")
    server = start_server(tool_env(base / "home", None), base / "server.log")
    try:
        folder = copy_photos(photos, base / "case", 4)
        answer = server.run("/dataset_processing", {"input_dir": {"path": str(folder)}}, {"dataset_name": "case"})
        assert answer.status_code == 200, answer.text
        yield server, folder
    finally:
        stop_server(server.process)


def assert_sentence(response: requests.Response, status: int, fragment: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert fragment in message and "\n" not in message and "Traceback" not in message, message
    return message


# -- the token ------------------------------------------------------------------------------------------------
def test_a_server_on_every_network_makes_a_private_token_and_names_an_address_others_can_use(open_server):
    log = open_server.server.log()
    token_file = open_server.home / "server-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(open_server.token) >= 32 and f"Bearer {open_server.token}" in log  # printed at its first start
    start = next(line for line in log.splitlines() if "serving RescueBox at" in line)
    assert "0.0.0.0" not in start and "register IP " in start, start
    registered = re.search(r"register IP (\S+) and port", start)
    if registered is None:  # a machine on no network: said so, never 0.0.0.0
        assert "register this machine's network address (none was found here)" in start, start
    else:
        assert registered.group(1) != "127.0.0.1" and re.fullmatch(r"[\d.]+", registered.group(1)), start
    assert f"limited to {open_server.inside.parent}" in log  # the start names the folders it may read


def test_every_request_but_registration_needs_the_token(open_server):
    url = open_server.server.url
    for path in ("/api/app_metadata", "/api/routes"):  # what RescueBox reads to register: no token
        assert requests.get(url + path, timeout=60).status_code == 200
    listing = TASK_BODY["/list_datasets"]
    for token in (None, "", "wrong-token-of-the-right-length-000000000000", open_server.token[:-1], "é" * 40):
        assert_sentence(open_server.post("/list_datasets", listing, token), 401, "access token")
    assert_sentence(requests.get(url + "/search_by_text/task_schema", timeout=60), 401, "access token")
    assert_sentence(open_server.post("/delete_dataset", {"inputs": {}, "parameters": {"dataset_name": "inside"}}),
                    401, "access token")
    assert_sentence(requests.post(url + "/dataset_processing", timeout=60,
                                  json={"inputs": {"input_dir": {"path": "/root"}},
                                        "parameters": {"dataset_name": "root"}}), 401, "access token")

    allowed = open_server.post("/list_datasets", listing, open_server.token)
    assert allowed.status_code == 200 and "| inside | 6 |" in allowed.json()["value"]
    header = requests.post(url + "/list_datasets", json=listing, headers={"X-Image-Search-Token": open_server.token},
                           timeout=60)
    assert header.status_code == 200
    schema = requests.get(url + "/search_by_text/task_schema", headers={"Authorization": f"Bearer {open_server.token}"},
                          timeout=60)
    assert schema.status_code == 200 and schema.json()["parameters"][0]["value"]["enum_vals"]


def test_a_token_set_in_the_environment_is_used_and_a_weak_one_is_refused(open_server, tmp_path):
    chosen = "a-token-the-operator-chose-0123456789"
    env = {**open_server.env, "IMAGE_SEARCH_TOKEN": chosen}
    server = start_server(env, tmp_path / "server.log", "--host", "0.0.0.0")
    try:
        assert chosen not in server.log() and "IMAGE_SEARCH_TOKEN" in server.log()
        listing = TASK_BODY["/list_datasets"]
        refused = requests.post(server.url + "/list_datasets", json=listing, timeout=60,
                                headers={"Authorization": f"Bearer {open_server.token}"})  # the file's token
        assert refused.status_code == 401
        assert requests.post(server.url + "/list_datasets", json=listing, timeout=60,
                             headers={"Authorization": f"Bearer {chosen}"}).status_code == 200
    finally:
        stop_server(server.process)
    weak = subprocess.run([sys.executable, "-m", "server.server", "--host", "0.0.0.0", "--port", "0"],
                          env={**open_server.env, "IMAGE_SEARCH_TOKEN": "short"}, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert weak.returncode == 2 and "Traceback" not in weak.stderr, weak.stderr
    assert weak.stderr.strip().splitlines()[-1].startswith("error: The access token in IMAGE_SEARCH_TOKEN is not")


def test_the_command_line_search_still_uses_a_server_on_every_network(open_server):
    discovery = open_server.home / "server.json"
    assert stat.S_IMODE(discovery.stat().st_mode) == 0o600  # its token is this user's only
    answered = subprocess.run([sys.executable, "-m", "cli.cli_search", "-q", "a dog", "-n", "inside", "-k", "3",
                               "--json"], env=open_server.env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert answered.returncode == 0, answered.stderr
    assert answered.stderr.startswith(f"answered by the server at {open_server.server.url}"), answered.stderr
    assert len(json.loads(answered.stdout)) == 3


# -- the Host header --------------------------------------------------------------------------------------------
def test_a_forged_host_header_is_refused(open_server, loopback_server):
    """A page of evil.example whose name was rebound to this machine reaches the server with its own name in Host."""
    server, _ = loopback_server
    port = server.url.rsplit(":", 1)[1]
    listing = TASK_BODY["/list_datasets"]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
        for path in ("/api/routes", "/api/app_metadata"):
            assert_sentence(requests.get(server.url + path, headers={"Host": host}, timeout=60), 403,
                            "does not answer requests addressed to")
        assert_sentence(requests.post(server.url + "/list_datasets", json=listing, headers={"Host": host},
                                      timeout=60), 403, "does not answer requests addressed to")
        assert_sentence(open_server.post("/list_datasets", listing, open_server.token, headers={"Host": host}),
                        403, "does not answer requests addressed to")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert requests.get(server.url + "/api/routes", headers={"Host": host}, timeout=60).status_code == 200
    # a loopback server is not named by another machine's address either
    assert requests.get(server.url + "/api/routes", headers={"Host": "192.168.1.20"}, timeout=60).status_code == 403
    open_port = open_server.server.url.rsplit(":", 1)[1]
    for host in (f"192.168.1.20:{open_port}", f"127.0.0.1:{open_port}"):  # a server on every network: its addresses
        assert open_server.post("/list_datasets", listing, open_server.token, headers={"Host": host}).status_code == 200


# -- allowed roots ----------------------------------------------------------------------------------------------
def test_paths_outside_the_allowed_roots_are_refused_alike_whether_they_exist_or_not(open_server, tmp_path):
    outside, inside = open_server.outside, open_server.inside
    link = inside / "link-out"
    link.symlink_to(outside, target_is_directory=True)  # inside by name, outside once resolved
    try:
        def refusal(rule, inputs, parameters, path) -> str:
            message = assert_sentence(open_server.run(rule, inputs, parameters), 400, "not inside the folders")
            assert str(path) in message and "IMAGE_SEARCH_ALLOWED_ROOTS" in message and "--" not in message
            return message.replace(str(path), "PATH")

        ingest = "/dataset_processing"
        ingests = {refusal(ingest, {"input_dir": {"path": str(path)}}, {"dataset_name": "probe"}, path)
                   for path in (outside, tmp_path / "missing", Path("/root"), Path("/etc/passwd"), link,
                                outside / "photo_00000.jpg")}
        assert len(ingests) == 1, ingests  # one sentence: nothing tells what is there
        search = {"dataset_name": "inside", "num_results": 3}
        query = "/search_by_image"
        queries = {refusal(query, {"image_path": {"path": str(path)}}, search, path)
                   for path in (outside / "photo_00000.jpg", outside / "missing.jpg", outside, Path("/etc/shadow"),
                                Path("/dev/zero"), link / "photo_00000.jpg")}
        assert len(queries) == 1, queries
        # inside: searched and said as usual
        found = open_server.run(query, {"image_path": {"path": str(inside / "photo_00001.jpg")}}, search)
        assert found.status_code == 200
        assert found.json()["files"][0]["path"] == os.path.realpath(inside / "photo_00001.jpg")
        assert_sentence(open_server.run(query, {"image_path": {"path": str(inside / "gone.jpg")}}, search), 400,
                        "does not exist")
    finally:
        link.unlink()
    listing = open_server.post("/list_datasets", TASK_BODY["/list_datasets"], open_server.token).json()["value"]
    assert "probe" not in listing


# -- FIFOs and devices ------------------------------------------------------------------------------------------
def test_query_paths_naming_a_fifo_or_a_device_never_hold_a_server_thread(loopback_server, tmp_path):
    server, folder = loopback_server
    fifos = []
    for number in range(8):
        fifo = tmp_path / f"pipe{number}.jpg"
        os.mkfifo(fifo)
        fifos.append(fifo)
    search = {"dataset_name": "case", "num_results": 2}
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # as many at once as the server has threads
        answers = list(pool.map(lambda fifo: requests.post(
            server.url + "/search_by_image", json={"inputs": {"image_path": {"path": str(fifo)}}, "parameters": search},
            timeout=30), fifos))
    for answer in answers:
        assert_sentence(answer, 400, "it is a FIFO (named pipe), not a regular file")
    assert time.monotonic() - started < 20
    assert_sentence(server.run("/search_by_image", {"image_path": {"path": "/dev/zero"}}, search), 400,
                    "it is a character device, not a regular file")
    # and the server goes on answering
    answer = server.run("/search_by_image", {"image_path": {"path": str(folder / "photo_00000.jpg")}}, search,
                        timeout=30)
    assert answer.status_code == 200
    assert answer.json()["files"][0]["path"] == os.path.realpath(folder / "photo_00000.jpg")
    assert "Traceback" not in server.log()
