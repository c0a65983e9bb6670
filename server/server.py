"""Flask-ML server for the RescueBox desktop app (python -m server.server [--host H] [--port P]).

A thin layer over image_search: every task reads its inputs, calls the same core functions as the command-line
tools and turns the answer into flask-ml's response models. One ImageSearch serves every request, so each model
is loaded once and each dataset's index stays in memory until that dataset changes (in this process or another).

Errors: an ImageSearchError is the user's to fix and becomes HTTP 400 with its one-sentence message (with the app's
spelling of its fix, APP_FIXES), which the app shows as the job's failure; anything else is a bug and becomes a 500
whose message still reads as a sentence. Every other answer is JSON too: unknown pages, wrong methods, oversize
or malformed bodies (create_server's error handlers; waitress's own refusals in server/http_server.py).

Who may ask (AccessGate): every request must name this server in its Host header (no DNS rebinding); a server
listening beyond this machine (--host other than loopback) also asks its access token of every request but the
ones RescueBox reads to register. IMAGE_SEARCH_ALLOWED_ROOTS limits what ingests and query images may read (the
core applies it: image_search/access/roots.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import signal
import threading
from datetime import datetime
from typing import Callable, TypedDict

from flask import Response, request
from flask_ml.flask_ml_server import MLServer
from flask_ml.flask_ml_server.errors import BadRequestError
from flask_ml.flask_ml_server.models import (BatchFileResponse, DirectoryInput, EnumParameterDescriptor, EnumVal,
                                             FileInput, FileResponse, FileType, FloatParameterDescriptor,
                                             InputSchema, InputType, IntParameterDescriptor, MarkdownResponse,
                                             ParameterSchema, ResponseBody, TaskSchema, TextInput,
                                             TextParameterDescriptor, TextResponse)
from werkzeug.exceptions import HTTPException

from image_search import (DEFAULT_NUM_RESULTS, DatasetRecord, Duplicates, Fix, HostRule, ImageSearch,
                          ImageSearchError, InvalidInputError, SearchFilter, SearchResult, SearchResults, ToolParser,
                          __version__, access_token, add_common_flags, check_num_results, cli_message, discovery,
                          listens_beyond_this_machine, open_from_flags, printable, reachable_addresses, run_tool,
                          same_token, search_report, token_in, write_report_files)
from server.http_server import body_too_large, error_body, http_server

log = logging.getLogger("image_search.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
REQUEST_THREADS = 8
# The largest request body accepted: a task's body holds a path or two, a dataset name and a text of at most
# 20,000 characters (image_search/search/query.py); 1 MiB leaves room for any path and any encoding of the text.
MAX_REQUEST_BYTES = 1 << 20
# How long a client may take to send one request, from its first byte (server/http_server.py); the app sends
# each request at once.
DEFAULT_REQUEST_TIMEOUT_S = 30
# What RescueBox reads to register a server (GET, no token: it sends none): the app's name and its task list.
REGISTRATION_ROUTES = frozenset({"/api/app_metadata", "/api/routes"})

INGEST_TITLE = "Ingest Dataset into the model"
TEXT_SEARCH_TITLE = "Search Images by Text Query"
IMAGE_SEARCH_TITLE = "Search Images by Image File"
LIST_TITLE = "List Datasets"
DELETE_TITLE = "Delete a Dataset"
DUPLICATES_TITLE = "Find Duplicates"
TEXT_REPORT_TITLE = "Write a Report of a Text Search"
IMAGE_REPORT_TITLE = "Write a Report of an Image Search"
DUPLICATES_REPORT_TITLE = "Write a Duplicates Report"

# The duplicates grid shows at most this many images (the app draws every one); the report tasks list them all.
MAX_DUPLICATE_IMAGES = 1000

NO_DATASETS = f"No datasets yet: run '{INGEST_TITLE}' on a folder of images first."
NO_TEXT_DATASETS = ("No dataset can be searched by text: every dataset was built with an image-only model "
                    f"(efficientnet-lite0); use '{IMAGE_SEARCH_TITLE}' instead.")

INFO = f"""# Image Search

Find images in large folders by describing them in words or by showing an example image. A folder is ingested
once into a named dataset; searching it then takes well under a second, best matches first.

## Tasks

**{INGEST_TITLE}**: choose a folder of images and a dataset name (letters, digits, `_`, `-` or `.`).
Every image under the folder, subfolders included, is embedded with a CLIP model. Files that cannot be read are
skipped and listed in the summary; the images themselves are never changed, moved or copied. Ingesting the same
folder under the same name again updates the dataset: only new and changed images are embedded, removed ones
disappear from results. A name already used for another folder is refused: delete that dataset first.

**{TEXT_SEARCH_TITLE}**: describe what you are looking for (for example *a red car parked at night*), pick a
dataset and how many results you want. Each result shows the image, its path inside the dataset's folder and its
similarity score.

**{IMAGE_SEARCH_TITLE}**: choose an example image; the most similar images of the dataset come first.

Both searches can be narrowed, and still show as many results as asked for when that many pass: *Folder* (a
folder inside the dataset's folder, e.g. `DCIM`), *Taken from* and *Taken to* (dates like `2023-03-01`: the date
the camera recorded, or the file's modification time for images without one), *Camera* (part of the make or
model, e.g. `canon`), *Format* (e.g. `JPEG`, `PNG`) and *Minimum score*. Leave a field empty not to filter by it.
*Exact copies* can show each file with the same content once.

**{LIST_TITLE}**: every dataset with its number of images, model, folder and creation time.

**{DELETE_TITLE}**: removes a dataset's index and records so that its name can be used again. The image files
are not touched.

**{DUPLICATES_TITLE}**: the groups of exact copies (the same SHA-256) and of near-copies (edited, resized,
recompressed) in a dataset, largest first; each image's subtitle names its group. A threshold of 0 uses the value
measured for the dataset's model; a higher one (up to 1) finds fewer, closer copies. The grid shows the first
{MAX_DUPLICATE_IMAGES} images; the duplicates report lists every group.

**{TEXT_REPORT_TITLE}**, **{IMAGE_REPORT_TITLE}**, **{DUPLICATES_REPORT_TITLE}**: run the search (or find the
duplicates) and write a report into the folder you choose: one HTML page to open in a web browser (thumbnails,
hashes, EXIF and paths of every hit, with the query, dataset, model and time at the top; it needs no network) and
a CSV table beside it. Earlier reports in the folder are never replaced.
"""


# -- what the tasks receive (flask-ml checks these against the task schemas) ------------------------------------
class IngestInputs(TypedDict):
    input_dir: DirectoryInput


class IngestParameters(TypedDict):
    dataset_name: str


class TextSearchInputs(TypedDict):
    text_query: TextInput


class ImageSearchInputs(TypedDict):
    image_path: FileInput


class SearchParameters(TypedDict):
    dataset_name: str
    num_results: int
    folder: str
    taken_from: str
    taken_to: str
    camera: str
    format: str
    min_score: str
    collapse_duplicates: str


class NoInputs(TypedDict):
    pass


class NoParameters(TypedDict):
    pass


class DatasetParameters(TypedDict):
    dataset_name: str


class DuplicatesParameters(TypedDict):
    dataset_name: str
    threshold: float
    groups: str


class ReportFolderInputs(TypedDict):
    output_dir: DirectoryInput


class TextReportInputs(TypedDict):
    text_query: TextInput
    output_dir: DirectoryInput


class ImageReportInputs(TypedDict):
    image_path: FileInput
    output_dir: DirectoryInput


# -- errors -----------------------------------------------------------------------------------------------------
# How someone in the app fixes what an ImageSearchError's `fix` names: no command-line flags, they may not run it.
APP_FIXES = {
    Fix.WEIGHTS_MISSING: "connect this server's machine to the internet once, or ask whoever runs the server to "
                         "restart it with the checkpoint file copied to its machine, or with the offline image model "
                         "efficientnet-lite0 (image search only, no text search).",
    Fix.WEIGHTS_FILE_MISSING: "ask whoever runs the server to copy the checkpoint there, or to restart it with the "
                              "right path.",
    Fix.USE_CPU: "ask whoever runs the server to restart it on the CPU.",
    Fix.REBUILD_WITH_FOLDER: "delete that dataset first to use its name for this folder, or choose another name.",
    Fix.REBUILD_WITH_MODEL: "delete the dataset and ingest its folder again to embed it with the new model.",
    Fix.USE_DATASET_MODEL: "search it with its own model, {model}.",
    Fix.REPAIR_INDEX: "repair it by deleting the dataset and ingesting its folder ({root}) again.",
    Fix.KEEP_EVALUATION_DATASET: "choose another name.",
    Fix.FOLLOW_SYMLINKS: "the app does not follow links; copy the files they point to into the folder to include "
                         "them",
    Fix.FILTER_FOLDER: "fill 'Folder' with a folder inside {root}, relative to it (e.g. DCIM) or in full, or leave it "
                       "empty.",
    Fix.FILTER_DATE: "fill 'Taken from' and 'Taken to' with dates like 2023-03-01 (or 2023-03-01T14:30:00), or "
                     "leave them empty.",
    Fix.FILTER_SCORE: "fill 'Minimum score' with a number from -1 to 1, e.g. 0.25, or leave it empty.",
    Fix.ALLOWED_ROOTS: "choose one inside them, or ask whoever runs the server to add its folder to "
                       "IMAGE_SEARCH_ALLOWED_ROOTS.",
}


def app_message(error: ImageSearchError) -> str:
    """An ImageSearchError as the app shows it: its message and, when it has one, the fix in the app's words."""
    return error.with_fix(APP_FIXES)


class UnexpectedError(Exception):
    """A bug or environment failure. flask-ml answers it with 500 and repr(error) as the message the app shows,
    so the repr is made the readable sentence itself."""

    def __repr__(self) -> str:
        return str(self)


def task(action: str) -> Callable:
    """Turn what a task raises into the answers flask-ml sends: ImageSearchError -> 400, anything else -> 500."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run_task(inputs, parameters):
            try:
                return handler(inputs, parameters)
            except ImageSearchError as error:
                raise BadRequestError(app_message(error)) from None
            except Exception as error:  # noqa: BLE001 - logged with its traceback by flask-ml
                raise UnexpectedError(
                    f"The server failed unexpectedly while {action} ({type(error).__name__}: {error}); the "
                    "server's log has the details.") from error

        return run_task

    return decorate


def number_of_results(value) -> int:
    # flask-ml passes parameter values through untyped: 5, 5.0 and "5" are five, anything else is refused
    return check_num_results(value)


# -- task schemas -----------------------------------------------------------------------------------------------
def dataset_parameter(engine: ImageSearch, *, text_queries: bool = False,
                      preselect: bool = True) -> ParameterSchema:
    """The dataset drop-down, read from the store each time the app asks, so new datasets show up at once.

    text_queries: offer only datasets whose model embeds text. preselect: start on the newest dataset (not for a
    delete, which one click must never do to a dataset nobody chose).
    """
    try:
        datasets = engine.datasets()
        when_empty = NO_DATASETS
    except ImageSearchError as error:  # the form still loads, and says why it cannot offer any dataset
        datasets, when_empty = [], app_message(error)
    if text_queries and datasets:
        datasets = [d for d in datasets if engine.answers_text(d)]
        when_empty = NO_TEXT_DATASETS
    newest = max(datasets, key=lambda d: (d.created_at, d.name), default=None)
    return ParameterSchema(
        key="dataset_name", label="Dataset",
        value=EnumParameterDescriptor(
            enum_vals=[EnumVal(key=d.name, label=f"{d.name} ({d.image_count} images)") for d in datasets],
            default=newest.name if newest and preselect else "", message_when_empty=when_empty))


def num_results_parameter() -> ParameterSchema:
    return ParameterSchema(key="num_results", label="Number of results",
                           value=IntParameterDescriptor(default=DEFAULT_NUM_RESULTS))


def duplicates_parameters(engine: ImageSearch) -> list[ParameterSchema]:
    return [dataset_parameter(engine),
            ParameterSchema(key="threshold", label="Similarity threshold for near-copies",
                            subtitle="0 uses the value measured for the dataset's model; up to 1 for closer copies",
                            value=FloatParameterDescriptor(default=0.0)),
            ParameterSchema(key="groups", label="Groups",
                            value=EnumParameterDescriptor(enum_vals=[
                                EnumVal(key="all", label="Exact copies and near-copies"),
                                EnumVal(key="exact", label="Exact copies only (the same SHA-256)")], default="all"))]


def report_folder_input() -> InputSchema:
    return InputSchema(key="output_dir", label="Folder to write the report to", input_type=InputType.DIRECTORY)


# The search tasks' filters: SearchFilter's conditions as text fields (empty: no filter) and the choice to collapse
# exact copies. A request may leave them out (as clients from before them do): they then take these defaults.
FILTER_FIELDS = {
    "folder": ("Folder", "only images under this folder of the dataset, e.g. DCIM; empty for all"),
    "taken_from": ("Taken from", "YYYY-MM-DD: the date the camera recorded, else the file's modification time"),
    "taken_to": ("Taken to", "YYYY-MM-DD, the whole day included"),
    "camera": ("Camera", "part of the camera's make or model, e.g. canon"),
    "format": ("Format", "e.g. JPEG, PNG or WEBP"),
    "min_score": ("Minimum score", "from -1 to 1, e.g. 0.25"),
}
COLLAPSE = "collapse_duplicates"
COLLAPSE_CHOICES = {"no": "Show each copy", "yes": "Show once, with the paths of the others"}
OPTIONAL_PARAMETERS = {**{key: "" for key in FILTER_FIELDS}, COLLAPSE: "no"}


def filter_parameters() -> list[ParameterSchema]:
    fields = [ParameterSchema(key=key, label=label, subtitle=subtitle, value=TextParameterDescriptor(default=""))
              for key, (label, subtitle) in FILTER_FIELDS.items()]
    return fields + [ParameterSchema(
        key=COLLAPSE, label="Exact copies", subtitle="files with the same content (SHA-256)",
        value=EnumParameterDescriptor(enum_vals=[EnumVal(key=k, label=v) for k, v in COLLAPSE_CHOICES.items()],
                                      default=OPTIONAL_PARAMETERS[COLLAPSE]))]


def search_filter(parameters: dict) -> SearchFilter:
    """The filter the form's fields describe (SearchFilter reads the text and refuses bad values)."""
    return SearchFilter(**{key: parameters[key] for key in FILTER_FIELDS})


def collapse_choice(value) -> bool:
    if value in COLLAPSE_CHOICES or isinstance(value, bool):
        return value is True or value == "yes"
    raise InvalidInputError(f"The choice {value!r} for 'Exact copies' is not one of: {', '.join(COLLAPSE_CHOICES)}.")


def ingest_schema() -> TaskSchema:
    return TaskSchema(
        inputs=[InputSchema(key="input_dir", label="Folder of images to ingest", input_type=InputType.DIRECTORY)],
        parameters=[ParameterSchema(key="dataset_name", label="Dataset name",
                                    subtitle="new, or an existing one to update it from the same folder",
                                    value=TextParameterDescriptor(default=""))])


# -- answers ----------------------------------------------------------------------------------------------------
def unique_titles(titles: list[str]) -> list[str]:
    """The app keys its image grid by title; two files can still print alike (undecodable bytes in names)."""
    used: set[str] = set()
    unique = []
    for title in titles:
        candidate, copy = title, 2
        while candidate in used:
            candidate, copy = f"{title} ({copy})", copy + 1
        used.add(candidate)
        unique.append(candidate)
    return unique


def search_answer(results: SearchResults) -> ResponseBody:
    """The image grid, or when there are no results the sentence that says why (the app shows an empty grid as
    nothing at all)."""
    if not results:
        return ResponseBody(root=TextResponse(value=results.note or "No results.", title="No results"))
    return image_grid(results)


def image_grid(results: list[SearchResult]) -> ResponseBody:
    titles = unique_titles([printable(result.title) for result in results])
    return ResponseBody(root=BatchFileResponse(files=[
        FileResponse(file_type=FileType.IMG, path=printable(result.path), title=title, subtitle=subtitle(result))
        for result, title in zip(results, titles)]))


def subtitle(result: SearchResult) -> str:
    """'score 0.3127 · taken 2023-03-14 15:09 · Canon EOS 5D': the score, the date to the minute (the file's
    'modified' date when the picture has no EXIF date), the camera when known and, for collapsed copies, how many
    other copies there are."""
    parts = [f"score {result.score:.4f}"]
    if result.date_taken:
        word = "taken" if result.date_source == "exif" else "modified"
        parts.append(f"{word} {result.date_taken[:16].replace('T', ' ')}")
    if result.camera:
        parts.append(result.camera)
    if result.duplicates:  # collapsed exact copies: the grid has no other place to say so
        parts.append(f"{len(result.duplicates)} other {'copy' if len(result.duplicates) == 1 else 'copies'}")
    return " · ".join(parts)


def threshold_of(value) -> float | None:
    """The threshold parameter: 0 (the form's default) means the dataset model's own; the core checks the rest."""
    if value is None or value == "" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                        and value == 0):
        return None
    return value


def exact_only_of(value) -> bool:
    if value not in ("all", "exact"):
        raise InvalidInputError(f"The groups {value!r} are not valid; choose exact copies and near-copies, or exact "
                                "copies only.")
    return value == "exact"


def duplicates_grid(found: Duplicates) -> ResponseBody:
    """The groups' images, largest group first, each subtitled with its group (at most MAX_DUPLICATE_IMAGES)."""
    shown: list[tuple[SearchResult, str]] = []
    groups = [*found.exact_groups, *found.near_groups]
    for number, group in enumerate(groups, 1):
        for member in group.members:
            if group.kind == "exact":
                subtitle = f"group {number} of {len(groups)}: {group.size} exact copies, SHA-256 {group.sha256[:12]}"
            else:
                subtitle = f"group {number} of {len(groups)}: {group.size} near-copies, similarity {member.score:.3f}"
            shown.append((member, subtitle))
    shown = shown[:MAX_DUPLICATE_IMAGES]
    titles = unique_titles([printable(member.title) for member, _ in shown])
    return ResponseBody(root=BatchFileResponse(files=[
        FileResponse(file_type=FileType.IMG, path=printable(member.path), title=title, subtitle=subtitle)
        for (member, subtitle), title in zip(shown, titles)]))


def report_written(html_path: str, csv_path: str, what: str) -> ResponseBody:
    """The report tasks' answer. The app's file types have no HTML, so the page's path is given in words."""
    return ResponseBody(root=TextResponse(
        title=f"Report written: {os.path.basename(html_path)}",
        value=f"{what}\n\nOpen the report in a web browser (it needs no network):\n{html_path}\n\nThe same as a "
              f"table (CSV), beside it:\n{csv_path}"))


def markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def dataset_table(datasets: list[DatasetRecord]) -> str:
    if not datasets:
        return NO_DATASETS
    rows = ["| Dataset | Images | Model | Folder | Created |", "|---|---:|---|---|---|"]
    rows += [f"| {d.name} | {d.image_count} | {markdown_cell(d.model)} | {markdown_cell(printable(d.root))} | "
             f"{d.created_at.replace('T', ' ')} |" for d in datasets]
    return "\n".join(rows)


# -- the server -------------------------------------------------------------------------------------------------
INPUT_FIELD = {InputType.DIRECTORY: "path", InputType.FILE: "path", InputType.TEXT: "text"}


def body_problem(body, inputs: dict[str, str], parameters: list[str],
                 optional: frozenset = frozenset()) -> str | None:
    """What is wrong with a run_task body, as a sentence; None when it has the right shape. The `optional`
    parameters may be left out.

    flask-ml itself answers these mistakes with a Python repr (500) or a list of pydantic records.
    """
    shape = ('{"inputs": {' + ", ".join(f'"{key}": {{"{field}": ...}}' for key, field in inputs.items())
             + '}, "parameters": {' + ", ".join(f'"{key}": ...' for key in parameters) + "}}")
    if (not isinstance(body, dict) or set(body) != {"inputs", "parameters"}
            or not isinstance(body["inputs"], dict) or not isinstance(body["parameters"], dict)
            or set(body["inputs"]) != set(inputs)
            or not set(parameters) - optional <= set(body["parameters"]) <= set(parameters)):
        return f"This task takes a JSON body of the form {shape}."
    for key, field in inputs.items():
        value = body["inputs"][key]
        if not isinstance(value, dict) or not isinstance(value.get(field), str):
            return f'The input "{key}" must be {{"{field}": "..."}} with a text value.'
    return None


def json_error(sentence: str, status: int, headers: dict | None = None) -> Response:
    """An error answer as the app reads one: {"error": sentence, "status": ...}."""
    return Response(error_body(sentence, status), status=status, mimetype="application/json", headers=headers)


def json_body():
    """(the request's JSON body or None, what is wrong with it or None). Flask's parser answers JSON nested a
    hundred thousand deep with a RecursionError, which would end as an HTML 500 page."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        return None, "The request's JSON is nested too deeply to be a task's body."
    if body is None and request.is_json and request.get_data(cache=True).strip():
        try:  # only to say where it breaks
            json.loads(request.get_data(cache=True))
        except ValueError as error:
            return None, f"The request body is not valid JSON ({error})."
    return body, None


class AccessGate:
    """Who may ask this server, checked before anything else of a request.

    Every request must name this server in its Host header (HostRule: no DNS rebinding). When a token is set (a
    server listening beyond this machine), every request must also carry it, except the GETs RescueBox reads to
    register (REGISTRATION_ROUTES) and the command-line search's route, which asks its own token
    (CommandLineSearches).
    """

    def __init__(self, hosts: HostRule, token: str | None) -> None:
        self.hosts = hosts
        self.token = token

    def refusal(self) -> Response | None:
        """The answer refusing the current request, or None to serve it."""
        host = request.environ.get("HTTP_HOST")
        if not self.hosts.allows(host):
            log.warning("403: refused a request for Host %r from %s", host, request.remote_addr)
            return json_error(f"This server does not answer requests addressed to {printable(host)!r}; use its "
                              "own address (or localhost on its machine).", 403)
        if self.token is None or request.path == discovery.ROUTE:
            return None
        if request.method in ("GET", "HEAD") and request.path in REGISTRATION_ROUTES:
            return None
        if same_token(token_in(request.headers), self.token):
            return None
        log.warning("401: refused a request for %s without this server's token from %s", request.path,
                    request.remote_addr)
        return json_error("This server answers only requests that carry its access token (printed when it first "
                          "started, kept in its data folder or set as IMAGE_SEARCH_TOKEN): send it as the header "
                          "'Authorization: Bearer TOKEN'.", 401, {"WWW-Authenticate": "Bearer"})


def http_error_sentence(error: HTTPException) -> str:
    """What a refusal of Flask's routing or limits (404, 405, 413, ...) means, in a sentence."""
    if error.code == 404:
        return f"There is nothing at {printable(request.path)} on this server; its tasks are listed at /api/routes."
    if error.code == 405:
        allowed = sorted(set(getattr(error, "valid_methods", None) or []) - {"HEAD", "OPTIONS"})
        return (f"{printable(request.path)} does not take {request.method} requests"
                + (f" (only {', '.join(allowed)})." if allowed else "."))
    if error.code == 413:
        return body_too_large(MAX_REQUEST_BYTES)
    return f"{error.name}: {error.description}"


def create_server(engine: ImageSearch, gate: AccessGate | None = None) -> MLServer:
    """The app, answering every request with JSON. gate: who may ask (main builds it from --host); None: every
    request is served, as in the tests that drive the app in-process."""
    server = MLServer(__name__)
    server.add_app_metadata(name="Image Search", author="image-search", version=__version__, info=INFO)
    server.app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES  # past it Flask raises 413 (http_error)
    if gate is not None:
        server.app.before_request(gate.refusal)  # first: before any body is read

    @server.app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        headers = {"Allow": ", ".join(error.valid_methods)} if getattr(error, "valid_methods", None) else None
        return json_error(http_error_sentence(error), error.code or 500, headers)

    @server.app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.error("500: %s", error, exc_info=error)
        return json_error(f"The server failed unexpectedly ({type(error).__name__}: {error}); the server's log "
                          "has the details.", 500)

    expected_bodies: dict[str, tuple[dict[str, str], list[str]]] = {}

    def add_task(rule: str, order: int, short_title: str, schema: Callable[[], TaskSchema], handler) -> None:
        server.route(rule, task_schema_func=schema, short_title=short_title, order=order)(handler)
        sample = schema()
        expected_bodies[rule] = ({item.key: INPUT_FIELD[item.input_type] for item in sample.inputs},
                                 [item.key for item in sample.parameters])

    def search_schema(query: InputSchema) -> Callable[[], TaskSchema]:
        text_queries = query.input_type == InputType.TEXT
        return lambda: TaskSchema(inputs=[query], parameters=[dataset_parameter(engine, text_queries=text_queries),
                                                              num_results_parameter(), *filter_parameters()])

    @task("ingesting the folder")
    def ingest_dataset(inputs: IngestInputs, parameters: IngestParameters) -> ResponseBody:
        folder, name = inputs["input_dir"].path, parameters["dataset_name"]
        log.info("Ingesting %s as dataset %r", folder, name)
        # on a thread of its own: the model's OpenMP workers then end with the ingest (image_search/cpu_threads.py)
        report = engine.ingest(folder, name, progress=False, own_thread=True)
        summary = printable("\n".join(report.lines(fixes=APP_FIXES)))
        log.info("%s", summary)
        return ResponseBody(root=TextResponse(
            value=summary, title=f"Dataset '{report.dataset}': {report.total} images ready to search"))

    @task("searching by text")
    def search_text(inputs: TextSearchInputs, parameters: SearchParameters) -> ResponseBody:
        return search_answer(engine.search_text(
            parameters["dataset_name"], inputs["text_query"].text, number_of_results(parameters["num_results"]),
            filters=search_filter(parameters), collapse_duplicates=collapse_choice(parameters[COLLAPSE])))

    @task("searching by image")
    def search_image(inputs: ImageSearchInputs, parameters: SearchParameters) -> ResponseBody:
        return search_answer(engine.search_image(
            parameters["dataset_name"], inputs["image_path"].path, number_of_results(parameters["num_results"]),
            filters=search_filter(parameters), collapse_duplicates=collapse_choice(parameters[COLLAPSE])))

    @task("listing the datasets")
    def list_datasets(inputs: NoInputs, parameters: NoParameters) -> ResponseBody:
        return ResponseBody(root=MarkdownResponse(value=dataset_table(engine.datasets()), title="Datasets"))

    @task("deleting the dataset")
    def delete_dataset(inputs: NoInputs, parameters: DatasetParameters) -> ResponseBody:
        if parameters["dataset_name"] == "":  # the form starts with none chosen (dataset_parameter)
            raise InvalidInputError("No dataset was chosen; pick the dataset to delete from the list.")
        record = engine.delete(parameters["dataset_name"])
        log.info("Deleted dataset %r", record.name)
        return ResponseBody(root=TextResponse(
            value=f"Deleted dataset '{record.name}' ({record.image_count} images); the image files were not "
                  "touched.", title=f"Deleted '{record.name}'"))

    @task("finding duplicates")
    def find_duplicates(inputs: NoInputs, parameters: DuplicatesParameters) -> ResponseBody:
        found = engine.find_duplicates(parameters["dataset_name"], threshold_of(parameters["threshold"]),
                                       exact_only=exact_only_of(parameters["groups"]), own_thread=True)
        if not found.exact_groups and not found.near_groups:
            return ResponseBody(root=TextResponse(value=f"No duplicates in dataset '{found.dataset}'.",
                                                  title="No duplicates"))
        return duplicates_grid(found)

    def write_search_report(search: Callable, parameters, query_key: str, query: str, folder: str) -> ResponseBody:
        name = parameters["dataset_name"]
        searched_at = datetime.now().astimezone().isoformat(timespec="seconds")
        results = search(name, query, number_of_results(parameters["num_results"]), filters=search_filter(parameters),
                         collapse_duplicates=collapse_choice(parameters[COLLAPSE]))
        report = search_report([result.to_dict() for result in results], dataset=name,
                               model=engine.dataset(name).model, searched_at=searched_at, **{query_key: query})
        html_path, csv_path = write_report_files(folder, report)
        log.info("Wrote the report %s and %s", html_path, csv_path)
        return report_written(html_path, csv_path, f"{len(results)} results from dataset '{name}'.")

    @task("writing the report")
    def write_text_report(inputs: TextReportInputs, parameters: SearchParameters) -> ResponseBody:
        return write_search_report(engine.search_text, parameters, "text", inputs["text_query"].text,
                                   inputs["output_dir"].path)

    @task("writing the report")
    def write_image_report(inputs: ImageReportInputs, parameters: SearchParameters) -> ResponseBody:
        return write_search_report(engine.search_image, parameters, "image", inputs["image_path"].path,
                                   inputs["output_dir"].path)

    @task("writing the duplicates report")
    def write_duplicates_report(inputs: ReportFolderInputs, parameters: DuplicatesParameters) -> ResponseBody:
        found = engine.find_duplicates(parameters["dataset_name"], threshold_of(parameters["threshold"]),
                                       exact_only=exact_only_of(parameters["groups"]), own_thread=True)
        html_path, csv_path = write_report_files(inputs["output_dir"].path, found.to_dict())
        log.info("Wrote the report %s and %s", html_path, csv_path)
        return report_written(html_path, csv_path, f"{len(found.exact_groups)} groups of exact copies and "
                                                   f"{len(found.near_groups)} groups of near-copies in dataset "
                                                   f"'{found.dataset}'.")

    def report_schema(query: InputSchema) -> Callable[[], TaskSchema]:
        text_queries = query.input_type == InputType.TEXT
        return lambda: TaskSchema(inputs=[query, report_folder_input()],
                                  parameters=[dataset_parameter(engine, text_queries=text_queries),
                                              num_results_parameter(), *filter_parameters()])

    # the query inputs, the same for a search and for its report
    text_query = InputSchema(key="text_query", label="Describe the image", input_type=InputType.TEXT)
    example_image = InputSchema(key="image_path", label="Example image", input_type=InputType.FILE)
    add_task("/dataset_processing", 0, INGEST_TITLE, ingest_schema, ingest_dataset)
    add_task("/search_by_text", 1, TEXT_SEARCH_TITLE,
             search_schema(text_query),
             search_text)
    add_task("/search_by_image", 2, IMAGE_SEARCH_TITLE,
             search_schema(example_image),
             search_image)
    add_task("/list_datasets", 3, LIST_TITLE, lambda: TaskSchema(inputs=[], parameters=[]), list_datasets)
    add_task("/delete_dataset", 4, DELETE_TITLE,
             lambda: TaskSchema(inputs=[], parameters=[dataset_parameter(engine, preselect=False)]), delete_dataset)
    add_task("/find_duplicates", 5, DUPLICATES_TITLE,
             lambda: TaskSchema(inputs=[], parameters=duplicates_parameters(engine)), find_duplicates)
    add_task("/report_text_search", 6, TEXT_REPORT_TITLE,
             report_schema(text_query),
             write_text_report)
    add_task("/report_image_search", 7, IMAGE_REPORT_TITLE,
             report_schema(example_image),
             write_image_report)
    add_task("/report_duplicates", 8, DUPLICATES_REPORT_TITLE,
             lambda: TaskSchema(inputs=[report_folder_input()], parameters=duplicates_parameters(engine)),
             write_duplicates_report)

    @server.app.before_request
    def refuse_malformed_bodies():
        expected = expected_bodies.get(request.path)
        if request.method != "POST" or expected is None:
            return None
        body, problem = json_body()
        optional = frozenset(OPTIONAL_PARAMETERS) & set(expected[1])
        problem = problem or body_problem(body, *expected, optional)
        if problem is None:
            # flask-ml insists on every parameter of the schema; it reads this same parsed body (Flask keeps it),
            # so the ones a client left out take their defaults here
            for key in optional:
                body["parameters"].setdefault(key, OPTIONAL_PARAMETERS[key])
            return None
        log.warning("400: %s", problem)
        return json_error(problem, 400)

    return server


# -- searches sent by the command line (python -m cli.cli_search; image_search/discovery.py) ---------------------
class CommandLineSearches:
    """Lets cli_search send its searches here: the route it calls, and the discovery file that tells it where.

    POST /cli/search takes {"dataset", "text" or "image_path", "num_results", "model", "filters" (SearchFilter's
    conditions as text), "collapse_duplicates"} and answers {"results": [SearchResult.to_dict(), ...], "note": why
    there are none or fewer, or null}, from the same core functions as the tasks, so the command line prints what
    its own search would; a user error is a 400 {"error": sentence}. GET is cli_search's liveness
    check. Both answer only this machine (loopback) and only requests carrying the token of this server's
    discovery file.
    """

    def __init__(self, engine: ImageSearch) -> None:
        self.engine = engine
        self.token = discovery.new_token()

    def add_route(self, app) -> None:
        app.add_url_rule(discovery.ROUTE, "command_line_search", self._answer, methods=["GET", "POST"])

    def _answer(self) -> Response:
        if not discovery.is_loopback(request.remote_addr):
            return _json_answer({"error": "Command-line searches are answered only from this machine."}, 403)
        if not same_token(request.headers.get(discovery.TOKEN_HEADER, ""), self.token):
            return _json_answer({"error": "This request does not carry this server's token (see "
                                          f"{discovery.FILE_NAME} in its data folder)."}, 403)
        if request.method == "GET":
            return _json_answer({"pid": os.getpid()}, 200)
        body, _ = json_body()
        filters = body.get("filters") or {} if isinstance(body, dict) else None
        if (not isinstance(body, dict) or not isinstance(body.get("dataset"), str)
                or sum(isinstance(body.get(key), str) for key in ("text", "image_path")) != 1
                or not isinstance(filters, dict) or not set(filters) <= set(FILTER_FIELDS)
                or not isinstance(body.get("collapse_duplicates", False), bool)):
            return _json_answer({"error": 'This route takes a JSON body {"dataset": ..., "text" or "image_path": '
                                          '..., "num_results": ..., "model": ..., "filters": {...}, '
                                          '"collapse_duplicates": ...}.'}, 400)
        search, query = ((self.engine.search_text, body["text"]) if isinstance(body.get("text"), str)
                         else (self.engine.search_image, body["image_path"]))
        try:
            results = search(body["dataset"], query, body.get("num_results", DEFAULT_NUM_RESULTS),
                             model=body.get("model"), filters=SearchFilter(**filters) if filters else None,
                             collapse_duplicates=body.get("collapse_duplicates", False))
        except ImageSearchError as error:  # printed by the command line: in its words
            return _json_answer({"error": cli_message(error)}, 400)
        except Exception as error:  # noqa: BLE001 - the command line then searches by itself
            log.exception("A command-line search failed")
            return _json_answer({"error": f"The server failed unexpectedly ({type(error).__name__}: {error})."}, 500)
        return _json_answer({"results": [result.to_dict() for result in results], "note": results.note}, 200)

    @contextlib.contextmanager
    def announced(self, host: str, port: int):
        """Keep this server's discovery file in its data folder while the block runs (serving): removed when it
        ends, on Ctrl-C, and on SIGTERM (which then ends the process as it always did)."""
        settings = self.engine.settings
        try:
            announcement = discovery.announce(settings, self.engine.store.description, host, port, self.token)
        except OSError as error:  # serving matters more than the command line's shortcut
            log.warning("Cannot write %s (%s); command-line searches will not use this server.",
                        discovery.discovery_file(settings.data_home), error)
            yield
            return
        if announcement is None:
            log.info("Another server is already announced in %s; command-line searches go there.",
                     discovery.discovery_file(settings.data_home))
            yield
            return
        log.info("Command-line searches on this data folder are sent here (%s).",
                 discovery.discovery_file(settings.data_home))

        def withdraw_and_terminate(signal_number, _frame):
            discovery.withdraw(announcement)
            signal.signal(signal_number, signal.SIG_DFL)
            os.kill(os.getpid(), signal_number)

        previous = signal.signal(signal.SIGTERM, withdraw_and_terminate)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
            discovery.withdraw(announcement)


def _json_answer(value: dict, status: int) -> Response:
    return Response(json.dumps(value), status=status, mimetype="application/json")


def warm_up(engine: ImageSearch, datasets: list[DatasetRecord]) -> None:
    """Load the existing datasets' models in the background, so that the first search is fast too.

    Not the default model for new datasets: while a model loads, every other model lookup waits, and a first
    download of pretrained weights can take minutes; an ingest is long enough to absorb its own model's load.
    """
    for model in sorted({d.model for d in datasets}):
        try:
            engine.prepare_model(model)
        except ImageSearchError as error:  # a search with this model will report it to the user
            log.warning("Searches of the datasets built with %s will fail: %s", model, cli_message(error))


def warn_if_default_model_lacks_weights(engine: ImageSearch) -> None:
    """Say once, at start-up, that new datasets cannot be ingested until the default model's weights are here
    (in the operator's words: the server's own flags). The check takes about a second
    (image_search/models/weights.py)."""
    try:
        engine.check_default_model_weights()
    except ImageSearchError as error:
        log.warning("Ingests of new datasets will fail: %s", cli_message(error))


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks a free one)")
    return port


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (more than 0)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="python -m server.server",
        description="Serve image search to the RescueBox desktop app: register this server's address in the app.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; any other, such as "
                             "0.0.0.0 for every network, makes every request carry the access token)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free port)")
    parser.add_argument("--request-timeout", type=seconds, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="seconds a client may take to send one request, and a connection may stay silent "
                             f"(default {DEFAULT_REQUEST_TIMEOUT_S}); a task itself has no time limit")
    add_common_flags(parser)
    return parser


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce_start(engine: ImageSearch, host: str, port: int, datasets: list[DatasetRecord], token) -> None:
    """Say where to register this server in RescueBox: an address other machines can use (never 0.0.0.0), and
    for a server listening beyond this machine the token its requests need (printed whole only when made now)."""
    where = f"({len(datasets)} datasets; {engine.store_description})"
    if token is None:
        print(f"image-search {__version__} serving RescueBox at {url(host, port)} {where}. In RescueBox, register "
              f"IP {host} and port {port}. Stop with Ctrl-C.", flush=True)
    else:
        addresses = reachable_addresses(host)
        local = discovery.loopback_address(host)
        urls = ", ".join(url(address, port) for address in addresses) or "this machine's network address"
        on_this_machine = f" (and {url(local, port)} on this machine)" if local else ""
        register = (f"register IP {addresses[0]}" if addresses
                    else "register this machine's network address (none was found here)")
        print(f"image-search {__version__} serving RescueBox at {urls}{on_this_machine} {where}. In RescueBox, "
              f"{register} and port {port}. Stop with Ctrl-C.", flush=True)
        if token.created:
            print(f"Every request must carry this server's access token, made now and kept in {token.source}: "
                  f"{token.value} (send it as the header 'Authorization: Bearer {token.value}').", flush=True)
        else:
            print(f"Every request must carry this server's access token, kept in {token.source} (send it as the "
                  "header 'Authorization: Bearer TOKEN').", flush=True)
    roots = engine.settings.allowed_roots
    if roots:
        print(f"Ingests and query images are limited to {', '.join(printable(root) for root in roots)} "
              "(IMAGE_SEARCH_ALLOWED_ROOTS).", flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = open_from_flags(args)
    datasets = engine.datasets()  # an unreachable store stops the start with one readable line
    token = access_token(engine.settings.data_home) if listens_beyond_this_machine(args.host) else None
    app = create_server(engine, AccessGate(HostRule(args.host), token.value if token else None)).app
    command_line = CommandLineSearches(engine)
    command_line.add_route(app)
    try:
        http = http_server(app, args.host, args.port, threads=REQUEST_THREADS, request_timeout=args.request_timeout,
                           max_body=MAX_REQUEST_BYTES)
    except OSError as error:
        raise InvalidInputError(f"Cannot listen on {args.host} port {args.port} ({error.strerror or error}); "
                                "choose another --port or --host.") from None
    threading.Thread(target=warn_if_default_model_lacks_weights, args=(engine,), name="weights-check",
                     daemon=True).start()
    threading.Thread(target=warm_up, args=(engine, datasets), name="warm-up", daemon=True).start()
    port = int(http.effective_port)  # waitress gives it as text
    announce_start(engine, args.host, port, datasets, token)
    with command_line.announced(args.host, port):
        http.run()
    print("Server stopped.", flush=True)
    return 0


if __name__ == "__main__":
    run_tool(main)
