"""The access token that a server listening beyond this machine asks of every request.

It is IMAGE_SEARCH_TOKEN when that is set (the environment or .env); otherwise it is kept in the data folder's
server-token file (mode 0600: readable by the server's user only), made at the first start that needs one, whose
announcement prints it once. A request carries it as `Authorization: Bearer TOKEN` or in the X-Image-Search-Token
header; it is compared in constant time, so that the time an answer takes tells nothing about how much of a
guess was right.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..config import load_environment
from ..discovery import TOKEN_HEADER  # the one header name: the command-line search sends its token in it too
from ..errors import InvalidInputError

TOKEN_VARIABLE = "IMAGE_SEARCH_TOKEN"
TOKEN_FILE = "server-token"
MIN_TOKEN_CHARACTERS = 16
# What travels in an HTTP header unchanged: visible ASCII, no spaces.
_TOKEN_PATTERN = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class AccessToken:
    value: str
    source: str  # where it is kept, in words: the variable or the file's path
    created: bool  # made by this start: the server prints it


def token_file(data_home) -> Path:
    return Path(data_home) / TOKEN_FILE


def _checked(value: str, source: str) -> str:
    if len(value) < MIN_TOKEN_CHARACTERS or not _TOKEN_PATTERN.fullmatch(value):
        raise InvalidInputError(f"The access token in {source} is not valid; use at least {MIN_TOKEN_CHARACTERS} "
                                "visible ASCII characters without spaces (or remove it to have one made).")
    return value


def access_token(data_home) -> AccessToken:
    """The server's access token: IMAGE_SEARCH_TOKEN, else the data folder's file, made now if there is none."""
    load_environment()
    value = os.environ.get(TOKEN_VARIABLE, "").strip()
    if value:
        return AccessToken(_checked(value, TOKEN_VARIABLE), TOKEN_VARIABLE, created=False)
    path = token_file(data_home)
    created = False
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # written whole under another name, then linked in place: a second server starting at the same moment
            # reads this token or its own, never half of one
            draft = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(draft, path)
                created = True
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        if os.name == "posix" and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # copied or restored with looser permissions: the user's only again
        value = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as error:  # e.g. a read-only data folder
        raise InvalidInputError(f"The access token file {path} cannot be read or made ({error.strerror or error}); "
                                f"set {TOKEN_VARIABLE} in the environment or .env, or make the data folder "
                                "writable.") from None
    return AccessToken(_checked(value, str(path)), str(path), created=created)


def token_in(headers: Mapping[str, str]) -> str:
    """The token a request carries ('' for none): `Authorization: Bearer TOKEN` or X-Image-Search-Token."""
    scheme, _, credentials = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get(TOKEN_HEADER, "").strip()


def same_token(given: str, token: str) -> bool:
    """Whether given is token, in time that does not depend on where they differ (any text, even non-ASCII)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))
