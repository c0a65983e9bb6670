"""How a running server lets the command-line search use it: the discovery file DATA_HOME/server.json.

A command-line search spends about 6 s starting up (importing torch and open_clip, building the model, checking
its CPU precision) before a query that takes 15 ms. A server already has all of that loaded, so when
`python -m server.server` runs on the same data folder, `python -m cli.cli_search` sends its search there instead:
about 0.2 s in all (README, "Search by text or by image").

The server writes the file when it starts serving and removes it when it stops (written atomically; a file left
by a dead process is ignored and replaced). The command-line search uses the server only when everything that
decides the result is the same in both processes: the data folder, the store, this package's version and the
search settings (search_settings). Anything else (no file, a dead pid, another data folder, an address that is
not loopback, no answer within a second) means searching in this process, without a word. The file holds a
random token that the server asks of every command-line request, so that a pid or a port reused by another
program after the server died cannot answer instead.

This module is read on every command-line search before anything heavy is imported: it imports only the standard
library (http.client, not urllib.request: a third of the import time).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import __version__
from .config import Settings

FILE_NAME = "server.json"
ROUTE = "/cli/search"
TOKEN_HEADER = "X-Image-Search-Token"
# A server on this machine accepts a connection and answers the liveness check in milliseconds; one that takes a
# second is wedged or swamped, and the search goes on in this process.
CHECK_TIMEOUT_S = 1.0
# The search itself may wait for the server to load the dataset's model (the warm-up after its start: 5-10 s on
# 2 cores), which is still no slower than loading it here.
ANSWER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Announcement:
    """What a server writes about itself."""
    pid: int
    host: str  # the address it listens on
    port: int
    version: str
    data_home: str
    store: str  # the store's description, e.g. "SQLite database /.../metadata.sqlite3"
    search: dict  # search_settings of the server's process
    token: str

    @property
    def url(self) -> str:
        host = loopback_address(self.host) or self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


class ServerRefusal(Exception):
    """The server searched and answered with a user error (its one sentence): the same error a local search
    would raise, since both run the same core functions."""


def discovery_file(data_home: Path) -> Path:
    return Path(data_home) / FILE_NAME


def search_settings(settings: Settings) -> dict:
    """The settings, besides the data, that decide a search's results, as the server's announcement records them:
    a command-line search with other ones (another --device, IMAGE_SEARCH_NPROBE, ...) does not use the server."""
    from .config import cpu_precision_setting

    return {"device": settings.device, "cpu_precision": cpu_precision_setting(), "nprobe": settings.index.nprobe,
            "ef_search": settings.index.ef_search}


def store_identity(settings: Settings) -> str:
    from .store import open_store

    return open_store(settings.database, settings.data_home).description  # connects to nothing


def loopback_address(host: str) -> str | None:
    """The loopback address that reaches a server listening on host, or None when it listens elsewhere only."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    if host == "localhost":
        return host
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def is_loopback(remote_address: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote_address or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill would terminate the process; the liveness check's pid tells instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def read_announcement(data_home: Path) -> Announcement | None:
    """The announcement in this data folder, or None when there is none that reads as one."""
    try:
        fields = json.loads(discovery_file(data_home).read_text(encoding="utf-8"))
        announcement = Announcement(**fields)
        if not (isinstance(announcement.pid, int) and isinstance(announcement.port, int)
                and isinstance(announcement.search, dict)):
            return None
        return announcement
    except (OSError, ValueError, TypeError):
        return None


# -- the server's side ------------------------------------------------------------------------------------------
def new_token() -> str:
    import secrets

    return secrets.token_hex(16)


def announce(settings: Settings, store_description: str, host: str, port: int, token: str) -> Announcement | None:
    """Write this process's announcement, unless another live server already announced itself in this data
    folder (that one stays: two servers can share a data folder, and the tools need only one). Returns what was
    written, None when nothing was."""
    data_home = Path(settings.data_home)
    current = read_announcement(data_home)
    if current is not None and current.pid != os.getpid() and pid_alive(current.pid) and responds(current):
        return None
    announcement = Announcement(pid=os.getpid(), host=host, port=port, version=__version__,
                                data_home=str(data_home), store=store_description,
                                search=search_settings(settings), token=token)
    data_home.mkdir(parents=True, exist_ok=True)
    target = discovery_file(data_home)
    temporary = target.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(announcement), indent=2), encoding="utf-8")
    os.replace(temporary, target)  # a reader sees the old file or the whole new one, never half of it
    return announcement


def withdraw(announcement: Announcement) -> None:
    """Remove the announcement if it is still this one (never another server's that replaced it)."""
    data_home = Path(announcement.data_home)
    if read_announcement(data_home) == announcement:
        try:
            discovery_file(data_home).unlink()
        except FileNotFoundError:
            pass


# -- the command line's side ------------------------------------------------------------------------------------
def find_server(settings: Settings) -> Announcement | None:
    """The server announced in settings' data folder if it can answer exactly as this process would: alive,
    reachable on loopback, same version, data folder, store and search settings. None otherwise."""
    announcement = read_announcement(settings.data_home)
    if announcement is None or not pid_alive(announcement.pid) or loopback_address(announcement.host) is None:
        return None
    if (announcement.version != __version__
            or Path(announcement.data_home) != Path(settings.data_home)
            or announcement.store != store_identity(settings)
            or announcement.search != search_settings(settings)):
        return None
    return announcement


def responds(announcement: Announcement) -> bool:
    """Whether the announced server answers the liveness check within CHECK_TIMEOUT_S, as the same process."""
    import http.client

    try:
        status, answer = _exchange(announcement, "GET", None, CHECK_TIMEOUT_S)
    except (OSError, ValueError, http.client.HTTPException):
        return False
    return status == 200 and isinstance(answer, dict) and answer.get("pid") == announcement.pid


def search_on_server(announcement: Announcement, request: dict) -> dict | None:
    """The server's answer to a search ({"dataset", "text" or "image_path", "num_results", "model", "filters",
    "collapse_duplicates"}): {"results": the result dicts (SearchResult.to_dict()), "note": why there are none or
    fewer (or None)}, or None when the server could not be used (then search in this process). Raises
    ServerRefusal with the server's sentence when the search itself was refused (a user error)."""
    import http.client

    if not responds(announcement):
        return None
    try:
        status, answer = _exchange(announcement, "POST", json.dumps(request), ANSWER_TIMEOUT_S)
    except (OSError, ValueError, http.client.HTTPException):
        return None
    if status == 400 and isinstance(answer, dict) and isinstance(answer.get("error"), str):
        raise ServerRefusal(answer["error"])
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        return None
    if "note" not in answer and (request.get("filters") or request.get("collapse_duplicates")):
        return None  # a server from before search filters, which would ignore them
    return answer


def _exchange(announcement: Announcement, method: str, body: str | None, timeout: float) -> tuple[int, object]:
    """One request to the announced server's route (connecting within CHECK_TIMEOUT_S, answered within timeout):
    its status and JSON answer."""
    import http.client

    connection = http.client.HTTPConnection(loopback_address(announcement.host), announcement.port,
                                            timeout=CHECK_TIMEOUT_S)
    try:
        connection.connect()
        connection.sock.settimeout(timeout)
        connection.request(method, ROUTE, body=body, headers={TOKEN_HEADER: announcement.token,
                                                              "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read().decode("utf-8"))
    finally:
        connection.close()
