"""Which Host headers a server answers, and the addresses other machines can reach it at.

DNS rebinding: a web page from a name its author controls (evil.example) has that name resolve to 127.0.0.1 (or
the server's LAN address) a moment later; the browser then lets the page's scripts talk to this server, but it
still sends `Host: evil.example`. So a request is answered only when its Host names this server: the address it
listens on, `localhost` or a loopback address, and for a server listening beyond this machine also any IP
address (a page can only be served from a name, so an address in Host is never a rebinding), this machine's host
name, and the names listed in IMAGE_SEARCH_ALLOWED_HOSTS (comma-separated: a DNS name or a reverse proxy's). A
request without Host (HTTP/1.0 tools) comes from no browser and is answered.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from ..config import load_environment
from ..discovery import is_loopback

ALLOWED_HOSTS_VARIABLE = "IMAGE_SEARCH_ALLOWED_HOSTS"
WILDCARDS = ("", "0.0.0.0", "::")


def listens_beyond_this_machine(host: str) -> bool:
    """Whether a server listening on host can be reached from other machines (any address but loopback)."""
    return host.strip().lower() != "localhost" and not is_loopback(host.strip("[]"))


def host_name(header: str) -> str:
    """The name or address in a Host header, without its port, in lower case: '[::1]:5000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostRule:
    """The Host headers a server listening on `bound` answers (see the module's docstring)."""

    def __init__(self, bound: str) -> None:
        load_environment()
        self.beyond = listens_beyond_this_machine(bound)
        names = {"localhost", host_name(bound)} - {""}
        if self.beyond:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        extra = os.environ.get(ALLOWED_HOSTS_VARIABLE, "")
        names |= {host_name(name) for name in extra.replace(" ", ",").split(",") if name.strip()}
        self.names = frozenset(names)

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        name = host_name(header)
        if name in self.names or is_loopback(name):
            return True
        return self.beyond and _is_address(name)


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses that other machines may reach (neither loopback nor link-local), the one
    its default route leaves by first; [] when none is found."""
    found: list[str] = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # a UDP "connect" sends nothing: it only picks the outgoing address
        found.append(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        infos = []
    found += [info[4][0] for info in infos]
    usable = []
    for address in found:
        parsed = ipaddress.ip_address(address)
        if not (parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified) and address not in usable:
            usable.append(address)
    return usable


def reachable_addresses(bound: str) -> list[str]:
    """The addresses other machines (or, for a loopback server, this one) use to reach a server on `bound`: the
    LAN addresses for a wildcard (0.0.0.0, ::), else the address itself."""
    if bound.strip() in WILDCARDS:
        return lan_addresses()
    return [bound]
