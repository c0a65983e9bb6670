"""Search benchmark: exact and approximate indexes over synthetic collections of 10k to 1M images.

    python -m evaluation.benchmark_search --sizes 10000,100000,1000000 --json results.json

For each size it generates clustered 512-d vectors (evaluation.synthetic_vectors), stores them the way an ingest
does (index file of a new generation, then one commit of the image rows in the metadata store: SQLite in a
temporary data folder), and for each index kind measures:

  build_s           building the index from the vectors (exact: adding them; IVF: training + adding)
  bytes_per_vector  size of the index file per vector (what the index holds in memory, give or take the id map)
  recall_at_10      share of the exact top 10 that the index returns, over text-like queries
  p50_ms / p99_ms   one query vector at a time through the core: index search + the batched path lookup
  index_p50_ms      the index search alone

On the kind the automatic choice picks, filtered searches are measured too (--no-filters skips them): every row
in the store carries synthetic facts (a folder, a camera, a date taken) drawn at random, independently of the
vectors, so that a filter on the folder allows 1% of the images, on the camera 10% and on the date 50%. For each:

  select_ms          the store query that selects the allowed ids (once per filter: the search caches it)
  recall_at_10       share of the exact top 10 among the allowed ids that the filtered search returns
  p50_ms / p99_ms    one query vector at a time through the core, as the unfiltered p50/p99 above

The kind the automatic choice picks for that size is measured last and stays the dataset's index, and then a
text query is timed end to end through the core (real model ViT-B-32 with random weights, warm process: tokenise,
embed, search, look up paths; unfiltered and with each filter) and, when the server is available, through HTTP
(python -m server.server, POST /search_by_text). Sizes run one after another; each keeps at most a few copies of
its vectors in memory (1M x 512 float32 is 2 GB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

from cli.common import ToolParser, add_json_flag, print_result, text_to_stderr_under_json
from evaluation.synthetic_vectors import DIM, SyntheticCollection
from image_search import vectors
from image_search.config import Settings, load_index_settings
from image_search.runtime.threads import BusyMeter, run_in_passing_thread
from image_search.search import SearchFilter
from image_search.service import ImageSearch
from image_search.store import ImageFacts, ImageRecord, NewDataset

REPO = Path(__file__).resolve().parents[1]
TEXT_MODEL = "ViT-B-32:random"  # the default model's shape; random weights, so only its timings mean anything
K = 10
DEFAULT_SIZES = "10000,100000,1000000"
HNSW_MAX_DEFAULT = 100_000  # building a graph of 1M 512-d vectors takes many minutes on two cores

_SUBJECTS = ["a red car", "two dogs", "a child", "an old man", "a kitchen", "a beach", "a bicycle", "a forest",
             "a passport", "a laptop screen", "a birthday cake", "a street sign", "a cat", "a boat", "a bridge",
             "a crowd", "a handwritten note", "a truck", "a wedding", "a mountain"]
_SCENES = ["at night", "in the rain", "on a sunny day", "indoors", "from above", "close up", "in a parking lot",
           "next to a window", "with snow", "at a party"]


# Filters by the share of images they allow, and how the synthetic facts make them so (SyntheticFacts).
FILTERS = {"1%": SearchFilter(folder="f00"), "10%": SearchFilter(camera="canon"),
           "50%": SearchFilter(taken_from=date(2023, 1, 1))}


class SyntheticFacts:
    """Facts for the images 1..size, drawn from a fixed seed independently of the vectors: one in 100 under the
    folder f00 (the others under f01..f99), one in 10 taken by a Canon (the others by an iPhone), and half taken in
    2023 according to EXIF, while the other half have no EXIF date and a modification time in 1970 (the date filter
    then falls back to it, and excludes them)."""

    def __init__(self, size: int) -> None:
        rng = np.random.default_rng(99)
        self.size = size
        self.folder = np.where(rng.random(size) < 0.01, 0, rng.integers(1, 100, size))
        self.canon = rng.random(size) < 0.1
        self.taken_2023 = rng.random(size) < 0.5

    def allowed(self, share: str) -> np.ndarray:
        """The ids (1-based, sorted) that FILTERS[share] allows."""
        mask = {"1%": self.folder == 0, "10%": self.canon, "50%": self.taken_2023}[share]
        return (np.flatnonzero(mask) + 1).astype(np.int64)

    def record(self, vector_id: int) -> ImageRecord:
        i = vector_id - 1
        canon = bool(self.canon[i])
        facts = ImageFacts(sha256=f"{vector_id:064x}", format="JPEG", camera_make="Canon" if canon else "Apple",
                           camera_model="Canon EOS 5D" if canon else "iPhone 12",
                           taken_at="2023-03-15T12:00:00" if self.taken_2023[i] else None)
        path = f"/synthetic/{self.size}/f{int(self.folder[i]):02d}/{vector_id:07d}.jpg"
        return ImageRecord(vector_id, path, 0, 0, facts=facts)


def text_queries(count: int, tag: str) -> list[str]:
    """Distinct queries of 5 to 14 words; the tag keeps each timing's queries apart, so none is a cache hit."""
    queries = []
    for i in range(count):
        subject, scene = _SUBJECTS[i % len(_SUBJECTS)], _SCENES[(i // len(_SUBJECTS)) % len(_SCENES)]
        detail = f" photo {tag} {i}" if i % 3 else f", blurry photo number {i} of {tag} taken with a phone"
        queries.append(f"{subject} {scene}{detail}")
    return queries


def percentiles(seconds: list[float]) -> tuple[float, float]:
    values = np.asarray(seconds) * 1000.0
    return round(float(np.percentile(values, 50)), 3), round(float(np.percentile(values, 99)), 3)


def recall_at_k(found: list[vectors.Neighbours], exact: list[vectors.Neighbours]) -> float:
    hits = [len(set(row.ids.tolist()) & set(truth.ids.tolist())) for row, truth in zip(found, exact)]
    return round(float(np.mean(hits)) / K, 4)


def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


# -- one size ---------------------------------------------------------------------------------------------------
class SizeBenchmark:
    def __init__(self, engine: ImageSearch, size: int, kinds: list[str], queries: int, sweep: bool,
                 model: str = TEXT_MODEL, dim: int = DIM, log=print, filters: bool = True) -> None:
        self.engine, self.size, self.sweep, self.model, self.dim, self.log = engine, size, sweep, model, dim, log
        self.facts = SyntheticFacts(size) if filters else None
        self.filtered_truth: dict[str, list[vectors.Neighbours]] = {}
        self.name = f"synthetic-{size}"
        automatic = vectors.policy.choose_kind(size)
        # the kind auto picks goes last, so it is the dataset's index when the end-to-end timings run
        self.kinds = [k for k in kinds if k != automatic] + [automatic]
        self.collection = SyntheticCollection(dim)
        self.queries = self.collection.queries(queries)
        self.record = None

    def vector_chunks(self):
        first_id = 1
        for vectors in self.collection.vectors(self.size):
            ids = np.arange(first_id, first_id + len(vectors), dtype=np.int64)
            first_id += len(vectors)
            yield ids, vectors

    def run(self) -> dict:
        self.log(f"[{self.size}] generating {self.size} vectors and the exact index")
        started = time.perf_counter()
        exact = vectors.new_index(self.dim)
        generation_s = 0.0
        chunks = self.vector_chunks()
        while True:
            chunk, seconds = timed(next, chunks, None)
            generation_s += seconds
            if chunk is None:
                break
            exact.add(chunk[1], chunk[0])
        exact_build_s = time.perf_counter() - started - generation_s
        truth = exact.search(self.queries, K)
        if self.facts is not None:
            self.filtered_truth = {share: exact.search(self.queries, K, ids=self.facts.allowed(share))
                                   for share in FILTERS}
        results = {}
        for kind in self.kinds:
            if kind == vectors.FLAT:
                built, build_s = exact, exact_build_s
            else:
                self.log(f"[{self.size}] building {kind}")
                built, build_s = timed(vectors.fit, exact, kind)
            results[kind] = self.measure(kind, built, build_s, truth)
            del built
        del exact
        return results

    def commit(self, built, kind: str) -> tuple[int, float]:
        """Store the index as the dataset's next generation, as an ingest would; (file bytes, seconds)."""
        store, home = self.engine.store, self.engine.data_home
        started = time.perf_counter()
        if self.record is None:
            if store.get_dataset(self.name) is not None:  # left by an earlier run with --keep
                self.engine.delete(self.name)
            uid = f"bench{self.size}"
            vectors.layout.remove_dataset_folder(home, uid)
            path = vectors.layout.index_file(home, uid, 1)
            built.save(path)
            target = NewDataset(self.name, uid, self.model, self.dim, f"/synthetic/{self.size}", kind)
            rows = ((self.facts.record(i) if self.facts is not None
                     else ImageRecord(i, f"/synthetic/{self.size}/{i:07d}.jpg", 0, 0)) for i in range(1, self.size + 1))
            self.record = store.commit_generation(dataset=target, base_generation=0, new_generation=1, added=rows,
                                                  removed_ids=[], image_count=self.size,
                                                  next_vector_id=self.size + 1)
        else:
            generation = self.record.generation + 1
            path = vectors.layout.index_file(home, self.record.uid, generation)
            built.save(path)
            self.record = store.commit_generation(dataset=replace(self.record, index_kind=kind),
                                                  base_generation=self.record.generation, new_generation=generation,
                                                  added=[], removed_ids=[], image_count=self.size,
                                                  next_vector_id=self.size + 1)
            vectors.layout.remove_other_generations(home, self.record.uid, generation)
        return path.stat().st_size, time.perf_counter() - started

    def measure(self, kind: str, built: vectors.VectorIndex, build_s: float,
                truth: list[vectors.Neighbours]) -> dict:
        from image_search.search import search_vectors

        file_bytes, commit_s = self.commit(built, kind)
        self.engine.forget_index(self.name)
        loaded, load_s = timed(self.engine.load_index, self.name)
        found = loaded.index.search(self.queries, K)
        index_seconds, core_seconds = [], []
        for query in self.queries[:10]:  # warm caches and the store connection
            search_vectors(self.engine, self.name, query[None], K)
        for query in self.queries:
            index_seconds.append(timed(loaded.index.search, query[None], K)[1])
            core_seconds.append(timed(search_vectors, self.engine, self.name, query[None], K)[1])
        p50, p99 = percentiles(core_seconds)
        result = {
            "index": loaded.index.describe(),
            "recall_at_10": recall_at_k(found, truth),
            "p50_ms": p50, "p99_ms": p99,
            "index_p50_ms": percentiles(index_seconds)[0],
            "build_s": round(build_s, 2),
            "bytes_per_vector": round(file_bytes / self.size, 1),
            "load_s": round(load_s, 3),
            "store_s": round(commit_s, 2),
        }
        if self.sweep and kind != vectors.FLAT:
            result["sweep"] = self.sweep_effort(kind, loaded.index, truth)
        if self.facts is not None and kind == self.kinds[-1]:  # the kind the dataset keeps
            result["filtered"] = {share: self.measure_filter(share, loaded) for share in FILTERS}
        self.log(f"[{self.size}] {kind}: {result}")
        return result

    def measure_filter(self, share: str, loaded) -> dict:
        """A filter's store query, and its searches through the core against the exact top 10 of its ids."""
        from image_search.search import allowed_ids, search_vectors

        filters = FILTERS[share]
        criteria = filters.criteria(self.record)
        selected, select_s = timed(self.engine.store.select_vector_ids, self.record.id, criteria)
        expected = self.facts.allowed(share)
        if not np.array_equal(selected, expected):
            raise RuntimeError(f"the {share} filter selected {len(selected)} ids, not the {len(expected)} expected")
        for query in self.queries[:10]:  # warm: the first selects the ids, later ones find them cached
            search_vectors(self.engine, self.name, query[None], K, filters)
        found = [search_vectors(self.engine, self.name, query[None], K, filters)[0] for query in self.queries]
        if any(len(row) != K for row in found):
            raise RuntimeError(f"a search with the {share} filter returned fewer than {K} results")
        rows = [vectors.Neighbours(np.array([self.facts_id(r.path) for r in row]), np.array([r.score for r in row]))
                for row in found]
        seconds = [timed(search_vectors, self.engine, self.name, query[None], K, filters)[1] for query in self.queries]
        p50, p99 = percentiles(seconds)
        allowed = allowed_ids(self.engine.store, self.record, filters, loaded.selections)  # the cached selection
        index_seconds = [timed(loaded.index.search, query[None], K, allowed)[1] for query in self.queries]
        return {"allowed": len(selected), "select_ms": round(select_s * 1000, 1),
                "recall_at_10": recall_at_k(rows, self.filtered_truth[share]), "p50_ms": p50, "p99_ms": p99,
                "index_p50_ms": percentiles(index_seconds)[0]}

    @staticmethod
    def facts_id(path: str) -> int:
        return int(Path(path).stem)

    def sweep_effort(self, kind: str, index: vectors.VectorIndex, truth: list[vectors.Neighbours]) -> list[dict]:
        """Recall and latency at other search efforts (nprobe for IVF, efSearch for HNSW)."""
        rows = []
        if kind == vectors.HNSW:
            original, values, field = index.ef_search, [32, 64, 128, 256, 512, 1024], "ef_search"
        else:
            original, field = index.nprobe, "nprobe"
            values = sorted({max(1, index.lists // d) for d in (256, 128, 64, 32, 16, 8)} | {index.nprobe})
        setter = lambda value: index.set_search_effort(**{field: value})  # noqa: E731
        try:
            for value in values:
                setter(value)
                found = index.search(self.queries, K)
                seconds = [timed(index.search, q[None], K)[1] for q in self.queries]
                rows.append({field: value, "recall_at_10": recall_at_k(found, truth),
                             "index_p50_ms": percentiles(seconds)[0]})
        finally:
            setter(original)
        return rows

    def end_to_end(self, text_count: int) -> dict:
        """A text (and an image) query through the core on a warm process, with the dataset's automatic index."""
        from image_search.search import search_by_text, search_vectors

        import torch

        embedder = self.engine.model(self.model)  # loaded before timing: the server is warm too
        for text in text_queries(3, f"warm-up {self.size}"):
            search_by_text(self.engine, self.name, text, K)
        # a query takes a second core only when the last second left it idle, and the build just ended
        time.sleep(BusyMeter.WINDOW + BusyMeter.PERIOD)
        texts = text_queries(text_count, f"core {self.size}")
        seconds = [timed(search_by_text, self.engine, self.name, text, K)[1] for text in texts]
        p50, p99 = percentiles(seconds)
        repeated = [timed(search_by_text, self.engine, self.name, texts[0], K)[1] for _ in range(20)]
        pixels = torch.randint(0, 256, (1, 3, embedder.input_size, embedder.input_size), dtype=torch.uint8)

        def image_query():
            return search_vectors(self.engine, self.name, embedder.encode_pixels(pixels), K)

        image_query()
        image_seconds = [timed(image_query)[1] for _ in range(max(5, text_count // 5))]
        result = {"index": self.record.index_kind, "text_p50_ms": p50, "text_p99_ms": p99,
                  "text_repeated_p50_ms": percentiles(repeated)[0],
                  "image_after_decode_p50_ms": percentiles(image_seconds)[0]}
        if self.facts is not None:
            result.update(self.filtered_text(text_count))
        return result


    def filtered_text(self, text_count: int) -> dict:
        """Text queries with each filter, interleaved with unfiltered ones ('none'), so that all meet the same
        machine: on a busy one, timings drift by more than the filters cost."""
        from image_search.search import search_by_text

        filters = {"none": None, **FILTERS}
        for share, condition in filters.items():  # each filter's first search selects its ids
            search_by_text(self.engine, self.name, f"warm-up {share}", K, filters=condition)
        time.sleep(BusyMeter.WINDOW + BusyMeter.PERIOD)
        seconds: dict[str, list[float]] = {share: [] for share in filters}
        for text in text_queries(text_count, f"filtered {self.size}"):
            for share, condition in filters.items():
                seconds[share].append(timed(lambda: search_by_text(self.engine, self.name, f"{text} {share}", K,
                                                                   filters=condition))[1])
        result = {}
        for share, timings in seconds.items():
            result[f"text_{share}_p50_ms"], result[f"text_{share}_p99_ms"] = percentiles(timings)
        return result


# -- through the HTTP server ------------------------------------------------------------------------------------
def server_available() -> str | None:
    """None when server.server can be started, else why not."""
    try:
        if importlib.util.find_spec("server.server") is None:
            return "server.server is not part of this checkout"
    except ModuleNotFoundError:
        return "server.server is not part of this checkout"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_json(url: str, body: dict, timeout: float) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


class ServerProcess:
    def __init__(self, data_home: Path, log=print) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "IMAGE_SEARCH_HOME"))}
        env.update(IMAGE_SEARCH_HOME=str(data_home), IMAGE_SEARCH_DEVICE="cpu", HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
        self.log_file = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-m", "server.server", "--host", "127.0.0.1", "--port",
                                         str(self.port)], cwd=REPO, env=env, stdout=self.log_file,
                                        stderr=subprocess.STDOUT)
        self.log = log

    def search(self, name: str, text: str, timeout: float = 120.0) -> tuple[int, dict | str]:
        body = {"inputs": {"text_query": {"text": text}}, "parameters": {"dataset_name": name, "num_results": K}}
        return post_json(f"{self.url}/search_by_text", body, timeout)

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not start within {timeout:.0f} s: {self.output()}")

    def output(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()


def http_latencies(data_home: Path, names: list[str], count: int, log=print) -> dict:
    server = ServerProcess(data_home, log)
    try:
        server.wait_ready()
        results = {}
        for name in names:
            for text in text_queries(3, f"http warm-up {name}"):  # the first request may load model and index
                status, answer = server.search(name, text, timeout=600)
                if status != 200:
                    raise RuntimeError(f"POST /search_by_text answered {status}: {str(answer)[:300]}")
            if "/synthetic/" not in json.dumps(answer):
                raise RuntimeError(f"POST /search_by_text did not return the dataset's paths: {str(answer)[:300]}")
            time.sleep(BusyMeter.WINDOW + BusyMeter.PERIOD)  # past the loading, as for the core timings
            seconds = []
            for text in text_queries(count, f"http {name}"):
                (status, _), elapsed = timed(server.search, name, text)
                if status != 200:
                    raise RuntimeError(f"POST /search_by_text answered {status}")
                seconds.append(elapsed)
            p50, p99 = percentiles(seconds)
            results[name] = {"http_text_p50_ms": p50, "http_text_p99_ms": p99}
            log(f"[http] {name}: {results[name]}")
        return results
    finally:
        server.stop()


# -- command-line start-up --------------------------------------------------------------------------------------
def cli_search_seconds(data_home: Path, name: str, runs: int) -> dict:
    """Wall time of `python -m cli.cli_search -q TEXT -n NAME`, a fresh process each time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "IMAGE_SEARCH_HOME"))}
    env.update(IMAGE_SEARCH_HOME=str(data_home), IMAGE_SEARCH_DEVICE="cpu", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    seconds = []
    for text in text_queries(runs, "command line"):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cli.cli_search", "-q", text, "-n", name, "-k", str(K),
                               "--no-server"],  # its own start-up, even if a server were running on this folder
                              cwd=REPO, env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"cli_search failed: {done.stderr.strip()[-300:]}")
    return {"dataset": name, "runs": runs, "median_s": round(float(np.median(seconds)), 3),
            "min_s": round(min(seconds), 3)}


# -- report -----------------------------------------------------------------------------------------------------
def table(report: dict) -> str:
    lines = [f"{'size':>9}  {'index':<34} {'build_s':>8} {'B/vector':>9} {'recall@10':>9} {'p50_ms':>7} "
             f"{'p99_ms':>7} {'index_p50':>9}"]
    for size, kinds in report["results"].items():
        for kind, row in kinds.items():
            lines.append(f"{size:>9}  {row['index']:<34} {row['build_s']:>8.2f} {row['bytes_per_vector']:>9.0f} "
                         f"{row['recall_at_10']:>9.3f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} "
                         f"{row['index_p50_ms']:>9.2f}")
    filtered = [(size, kind, share, row) for size, kinds in report["results"].items() for kind, kind_row in
                kinds.items() for share, row in kind_row.get("filtered", {}).items()]
    if filtered:
        lines += ["", f"{'size':>9}  {'index':<34} {'filter':>6} {'allowed':>8} {'select_ms':>9} {'recall@10':>9} "
                      f"{'p50_ms':>7} {'p99_ms':>7} {'index_p50':>9}   (unfiltered: the rows above)"]
        for size, kind, share, row in filtered:
            index = report["results"][size][kind]["index"]
            lines.append(f"{size:>9}  {index:<34} {share:>6} {row['allowed']:>8} {row['select_ms']:>9.1f} "
                         f"{row['recall_at_10']:>9.3f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} "
                         f"{row['index_p50_ms']:>9.2f}")
    if report["end_to_end"]:
        lines += ["", f"{'size':>9}  {'index':<8} {'text p50':>9} {'text p99':>9} {'repeated':>9} "
                      f"{'image p50':>9} {'http p50':>9} {'http p99':>9}   (ms, warm process)"]
        for size, row in report["end_to_end"].items():
            http = row.get("http_text_p50_ms"), row.get("http_text_p99_ms")
            lines.append(f"{size:>9}  {row['index']:<8} {row['text_p50_ms']:>9.2f} {row['text_p99_ms']:>9.2f} "
                         f"{row['text_repeated_p50_ms']:>9.2f} {row['image_after_decode_p50_ms']:>9.2f} "
                         + " ".join(f"{v:>9.2f}" if v is not None else f"{'-':>9}" for v in http))
        for size, row in report["end_to_end"].items():
            shares = [share for share in ("none", *FILTERS) if f"text_{share}_p50_ms" in row]
            if shares:
                lines.append(f"{size:>9}  text p50/p99 ms, filters interleaved: " + ", ".join(
                    f"{share} {row[f'text_{share}_p50_ms']:.2f}/{row[f'text_{share}_p99_ms']:.2f}" for share in shares))
    if report.get("http"):
        lines.append(f"HTTP: {report['http']}")
    if report.get("cli"):
        cli = report["cli"]
        lines.append(f"cli_search start-up on {cli['dataset']}: median {cli['median_s']:.2f} s, best {cli['min_s']:.2f} s "
                     f"over {cli['runs']} runs")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="python -m evaluation.benchmark_search", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--kinds", default=",".join(vectors.KINDS),
                        help="index kinds to compare (default: all; the automatic one is always included)")
    parser.add_argument("--hnsw-max", type=int, default=HNSW_MAX_DEFAULT,
                        help=f"skip HNSW above this size (default {HNSW_MAX_DEFAULT}: its build takes many minutes)")
    parser.add_argument("--model", default=TEXT_MODEL,
                        help=f"model for the end-to-end timings; the vectors take its dimension (default {TEXT_MODEL})")
    parser.add_argument("--queries", type=int, default=200, help="query vectors per size (default 200)")
    parser.add_argument("--text-queries", type=int, default=300,
                        help="text queries per size (default 300: a p99 over 100 is the second-slowest query)")
    parser.add_argument("--sweep", action="store_true", help="also measure recall at other nprobe / efSearch")
    parser.add_argument("--no-text", action="store_true", help="skip the end-to-end timings with the model")
    parser.add_argument("--no-filters", action="store_true", help="skip the filtered searches (1%%, 10%%, 50%%)")
    parser.add_argument("--no-http", action="store_true", help="skip the timings through the HTTP server")
    parser.add_argument("--cli-runs", type=int, default=3, help="cli_search start-up runs (0: skip; default 3)")
    parser.add_argument("--quick", action="store_true", help="few queries, no sweep, no start-up runs (smoke test)")
    add_json_flag(parser)
    parser.add_argument("--keep", help="build in this folder and keep it (default: a temporary folder, removed)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r} is not a list of whole numbers, e.g. 10000,100000")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in vectors.KINDS]
    if not sizes or min(sizes) < 100 or unknown:
        parser.error(f"sizes must be >= 100 and kinds among {', '.join(vectors.KINDS)}")
    with text_to_stderr_under_json(args):
        report = run_benchmark(args, sizes, kinds)
    print_result(args, None, report)
    return 0


def run_benchmark(args, sizes: list[int], kinds: list[str]) -> dict:
    if args.quick:
        args.queries, args.text_queries, args.sweep, args.cli_runs = min(args.queries, 50), min(args.text_queries,
                                                                                             10), False, 0
    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="image-search-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    engine = ImageSearch(Settings(data_home=home.resolve(), model_name=None, device="cpu", database=None,
                                  index=replace(load_index_settings(), kind=vectors.AUTO)))
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "settings": {"k": K, "queries": args.queries, "text_queries": args.text_queries, "model": args.model,
                     "store": "SQLite", "approximate_from": vectors.policy.APPROXIMATE_FROM,
                     "nprobe_override": engine.settings.index.nprobe,
                     "ef_search_override": engine.settings.index.ef_search},
        "results": {}, "end_to_end": {},
    }
    try:
        dim = DIM if args.no_text else engine.model(args.model).dim
        report["settings"]["dim"] = dim
        for size in sizes:
            size_kinds = [k for k in kinds if k != vectors.HNSW or size <= args.hnsw_max]
            bench = SizeBenchmark(engine, size, size_kinds, args.queries, args.sweep, args.model, dim,
                                  filters=not args.no_filters)
            # built on a thread that ends with the build, as a server's ingest is (image_search/runtime/threads.py):
            # FAISS runs on PyTorch's OpenMP runtime, and workers left on this thread would slow the queries
            report["results"][str(size)] = run_in_passing_thread(bench.run)
            if not args.no_text:
                report["end_to_end"][str(size)] = bench.end_to_end(args.text_queries)
                print(f"[{size}] end to end: {report['end_to_end'][str(size)]}", flush=True)
            engine.forget_index(bench.name)
        if not args.no_text and not args.no_http:
            reason = server_available()
            if reason is None:
                try:
                    names = {str(size): f"synthetic-{size}" for size in sizes}
                    latencies = http_latencies(home, list(names.values()), args.text_queries)
                    for size, name in names.items():
                        report["end_to_end"][size].update(latencies[name])
                except RuntimeError as error:
                    report["http"] = f"skipped: {error}"
            else:
                report["http"] = f"skipped: {reason}"
        if args.cli_runs > 0:
            report["cli"] = cli_search_seconds(home, f"synthetic-{max(sizes)}", args.cli_runs)
    finally:
        engine.close()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print()
    print(table(report))
    return report


if __name__ == "__main__":
    sys.exit(main())
