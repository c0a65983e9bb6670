"""The HTTP server under the app: waitress, with limits that no client can stretch, and JSON for every answer.

waitress reads every request in its one event-loop thread and hands a task to a worker thread only once the
request has arrived whole, so a client that connects and sends nothing, or trickles a byte a second, holds no
worker thread at all (with the werkzeug server it replaced, 8 such connections held all 8 threads for up to 120 s
each, renewed by every byte). What such a client still holds is a connection, and waitress closes a connection
only after channel_timeout seconds without a byte, which a trickle renews for ever; so a request must also arrive
whole within request_timeout seconds of its first byte, or its connection is answered 408 and closed
(DeadlineServer.maintenance). A task itself (a 20-minute ingest) has no time limit.

waitress's own refusals (a body over max_request_body_size, headers over their limit, malformed HTTP) are plain
text; here they are JSON {"error": sentence, "status": ...} as the app's other errors (JsonErrorTask).
"""

from __future__ import annotations

import json
import logging
import time

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

log = logging.getLogger("image_search.server")

# How often the deadlines are checked (waitress's maintenance interval, 30 s by default): a slow client is cut off
# at most this long after its deadline.
CHECK_INTERVAL_S = 1


def error_body(sentence: str, status: int) -> bytes:
    """The JSON body of an error answer, in flask-ml's shape: {"error": sentence, "status": ...}."""
    kind = "VALIDATION_ERROR" if status < 500 else "SERVER_ERROR"
    return json.dumps({"error": sentence, "status": kind}).encode("utf-8")


def body_too_large(limit: int) -> str:
    return (f"The request is larger than this server accepts ({limit // 1024:,} KiB); a task's request holds only "
            "paths, a dataset name and a short text.")


def too_slow(seconds: float) -> str:
    return (f"The request did not arrive whole within {seconds:g} s of its first byte, so the connection was "
            "closed; send it again.")


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it refuses before the app sees it, as JSON with a sentence."""

    def execute(self):
        error = self.request.error
        if error.code == 413:
            sentence = body_too_large(self.channel.server.adj.max_request_body_size - 1)
        elif error.code == 431:
            sentence = "The request's headers are larger than this server accepts."
        else:
            sentence = f"The request is not valid HTTP ({error.reason}: {error.body})."
        body = error_body(sentence, error.code)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class DeadlineChannel(HTTPChannel):
    """A connection that remembers when the request it is receiving began to arrive."""

    error_task_class = JsonErrorTask
    reading_since: float | None = None

    def received(self, data):
        fresh = self.request is None
        result = super().received(data)
        if self.request is None:
            self.reading_since = None  # nothing half-received
        elif fresh:
            self.reading_since = time.monotonic()
        return result

    def cut_off(self, seconds: float) -> None:
        """Answer 408 and close: called from the event loop while no task of this connection runs."""
        body = error_body(too_slow(seconds), 408)
        payload = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        with self.outbuf_lock:
            self.outbufs[-1].append(payload)
            self.current_outbuf_count += len(payload)
            self.total_outbufs_len += len(payload)
        self.request = None
        self.reading_since = None
        self.close_when_flushed = True
        self.last_activity = time.time()  # not idle: the answer goes out before the connection closes


class DeadlineServer(TcpWSGIServer):
    """waitress's TCP server whose connections must deliver each request within request_timeout seconds."""

    channel_class = DeadlineChannel

    def __init__(self, app, *, request_timeout: float, **adjustments) -> None:
        self.request_timeout = request_timeout
        super().__init__(app, adj=Adjustments(**adjustments))

    def maintenance(self, now):
        cutoff = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            since = getattr(channel, "reading_since", None)
            if since is not None and since < cutoff and not channel.requests and not channel.will_close:
                log.warning("Closed a connection from %s that took over %g s to send its request",
                            channel.addr[0] if channel.addr else "?", self.request_timeout)
                channel.cut_off(self.request_timeout)
        super().maintenance(now)  # then connections silent for channel_timeout, between requests: closed


def http_server(app, host: str, port: int, *, threads: int, request_timeout: float,
                max_body: int) -> DeadlineServer:
    """The server, listening (port 0: a free one; its number is .effective_port); .run() serves until Ctrl-C.

    threads: the fixed pool of worker threads (a long ingest takes one while searches go on in the others, and
    the store's per-thread connections are reused). max_body: the largest request body accepted, in bytes."""
    return DeadlineServer(
        app, request_timeout=request_timeout, host=host, port=port, threads=threads,
        channel_timeout=max(1, round(request_timeout)),  # a connection silent that long is closed
        cleanup_interval=CHECK_INTERVAL_S,
        max_request_body_size=max_body + 1,  # waitress refuses from this size on; the app's limit is max_body
        connection_limit=100,  # waitress's default: connections, not threads
        ident="image-search", expose_tracebacks=False)
