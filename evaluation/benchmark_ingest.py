"""Ingest speed benchmark: python -m evaluation.benchmark_ingest [--sizes 0.3,2,12] [--count N] [--json [FILE]]

For each size of photo-like JPEGs (generated once and cached, or your own folders with --images), measures in one
run on this machine, with the same model and settings:
  (a) model   the image tower alone on preprocessed pixels (encoder bound)
  (b) decode  decoding + preprocessing alone, with the ingest's own reader on all cores (decode bound)
  (c) naive   like the original: one process, full-size decode, open_clip's preprocess, one image at a time
  (d) ingest  the real ingest_folder into a new dataset (SQLite in a temporary data folder)
and prints images/s for each, d / min(a, b) and d / c. On CUDA it also measures (b) and (d) with JPEGs decoded on
the GPU, once per device decoder that works there (nvImageCodec, nvJPEG), with each decoder's raw rate on files
already in memory, the ingest's steady rate (from 10% to 90% of the files) beside its whole-run rate, and the time
per stage of the threaded reader (the profile). --memory instead measures the peak memory of ingests of different
sizes (default 1,000 and 5,000 images).
--checkpoint-cost instead measures (d) with and without checkpoints (image_search/ingest/checkpoint.py), each
right after the other, and what writing them took (--checkpoint-images N: one every N images, to see the cost of
many on a small run; default: the ingest's own setting).
--capture-cost instead measures what recording each file's hashes and EXIF costs: the same files ingested with
capture on and off (IMAGE_SEARCH_CAPTURE_FACTS), alternately, best of --repeat each, and the facts of one file
computed alone from its bytes in memory.
Files are read from the page cache after the first pass: this measures computation, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DEFAULT_MODEL = "ViT-B-32:random"
DEFAULT_SIZES = "0.3,2,12"
DEFAULT_COUNT = 200
DEFAULT_NAIVE_COUNT = 24
DEFAULT_MEMORY_COUNTS = "1000,5000"
CPU_MODE = "cpu"  # (b) and (d) with worker processes decoding on the CPU
MEMORY_DISTINCT_PHOTOS = 200  # the memory check links its thousands of files to this many distinct photos
_DEFAULT = object()  # timed_ingest's checkpoints when not given: the ingest's own setting


# -- corpus -----------------------------------------------------------------------------------------------------
def default_corpus_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "image-search" / "benchmark-photos"


def size_label(megapixels: float) -> str:
    return f"{megapixels:g} MP"


def generated_photos(corpus: Path, megapixels: float, count: int, processes: int) -> list[Path]:
    """The first `count` photos of this size in the cache, generating the missing ones."""
    from evaluation.sample_images import write_photos

    folder = corpus / f"photos-{megapixels:g}mp"
    missing = [i for i in range(count) if not (folder / f"photo_{i:05d}.jpg").exists()]
    if missing:
        print(f"Generating {len(missing)} photo-like JPEGs of {size_label(megapixels)} in {folder} "
              "(once; later runs reuse them)...", file=sys.stderr, flush=True)
    return write_photos(folder, count, megapixels=megapixels, seed=int(megapixels * 1000), processes=processes)


def link_folder(files: list[Path], folder: Path, count: int | None = None) -> Path:
    """A folder of `count` entries (default: one per file) that are hard links to `files`, cycling through them."""
    folder.mkdir(parents=True, exist_ok=True)
    count = len(files) if count is None else count
    for i in range(count):
        source = files[i % len(files)]
        target = folder / f"{i:06d}{source.suffix}"
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copyfile(source, target)
    return folder


def image_files(folder: Path) -> list[str]:
    from image_search.pipeline.scan import scan_folder
    from image_search.pipeline.decode import IMAGE_EXTENSIONS

    return [entry.path for entry in scan_folder(str(folder)).files
            if os.path.splitext(entry.path)[1].lower() in IMAGE_EXTENSIONS]


def describe_files(paths: list[str]) -> tuple[float, float]:
    """(mean megapixels, mean file size in KB) from the headers."""
    from PIL import Image

    pixels, sizes = [], []
    for path in paths:
        sizes.append(os.path.getsize(path))
        try:
            with Image.open(path) as image:
                pixels.append(image.width * image.height)
        except Exception:  # noqa: BLE001 - a broken file in a user's folder is counted by the ingest, not here
            pass
    megapixels = sum(pixels) / len(pixels) / 1e6 if pixels else 0.0
    return megapixels, (sum(sizes) / len(sizes) / 1024 if sizes else 0.0)


# -- machine and settings ---------------------------------------------------------------------------------------
def machine_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gb = None
    try:
        with open("/proc/meminfo") as handle:
            memory_gb = round(int(next(l for l in handle if l.startswith("MemTotal")).split()[1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "memory_gb": memory_gb, "gpus": gpus,
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "load_average_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "torch": torch.__version__, "versions": _versions(),
    }


def _versions() -> dict:
    versions = {}
    for module in ("torchvision", "open_clip", "PIL", "numpy", "faiss"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            versions[module] = None
    try:
        from PIL import features

        versions["libjpeg_turbo"] = features.version("libjpeg_turbo")
    except Exception:  # noqa: BLE001
        pass
    return versions


# -- measurements -----------------------------------------------------------------------------------------------
@dataclass
class Row:
    label: str  # e.g. "2 MP" or a folder name
    decode: str  # "cpu" (worker processes) or the device decoder ("nvimgcodec", "nvjpeg") used in (b) and (d)
    images: int
    megapixels: float
    file_kb: float
    model: float = 0.0  # (a) images/s
    decode_only: float = 0.0  # (b)
    naive: float = 0.0  # (c)
    ingest: float = 0.0  # (d)
    ingest_seconds: float = 0.0
    skipped: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def bound(self) -> float:
        return min(self.model, self.decode_only)

    @property
    def ingest_vs_bound(self) -> float:
        return self.ingest / self.bound if self.bound else 0.0

    @property
    def ingest_vs_naive(self) -> float:
        return self.ingest / self.naive if self.naive else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(bound=round(self.bound, 2), ingest_vs_bound=round(self.ingest_vs_bound, 3),
                    ingest_vs_naive=round(self.ingest_vs_naive, 3))
        for key in ("model", "decode_only", "naive", "ingest", "megapixels", "file_kb", "ingest_seconds"):
            data[key] = round(data[key], 3)
        return data


def measure_model(embedder, batch_size: int, min_seconds: float) -> float:
    """(a): the image tower on uint8 pixels shaped like the reader's batches (normalisation included)."""
    import torch

    side = embedder.input_size
    pixels = torch.randint(0, 256, (batch_size, 3, side, side), dtype=torch.uint8)
    if embedder.device.startswith("cuda"):
        pixels = pixels.pin_memory()
    for _ in range(2):  # warm-up: lazy initialisation, first-touch memory, cuDNN/oneDNN kernel choice
        embedder.encode_pixels(pixels)
    done, started = 0, time.perf_counter()
    while done < 3 * batch_size or time.perf_counter() - started < min_seconds:
        embedder.encode_pixels(pixels)
        done += batch_size
    return done / (time.perf_counter() - started)


def measure_decode(embedder, paths: list[str], batch_size: int, workers: int, mode: str) -> float:
    """(b): the ingest's reader alone: worker processes decoding on the CPU ("cpu"), or the threaded reader with
    that device decoder (JPEGs decoded, turned and resized on the GPU as ingest does then)."""
    import torch

    on_cuda = embedder.device.startswith("cuda")
    done, started = 0, time.perf_counter()
    if mode == CPU_MODE:
        from image_search.pipeline.batches import reader_batch_size
        from image_search.pipeline.cpu_reader import iter_batches

        for batch in iter_batches(paths, geometry=embedder.geometry, min_side=embedder.input_size,
                                  batch_size=reader_batch_size(embedder, batch_size), workers=workers,
                                  pin_memory=on_cuda):
            done += len(batch.positions)
            if batch.pixels is not None and on_cuda:
                batch.pixels.to(embedder.device, non_blocking=True)
    else:
        from image_search.config import capture_requested
        from image_search.pipeline.thread_reader import ThreadReader

        for chunk in ThreadReader(paths, geometry=embedder.geometry, min_side=embedder.input_size,
                                  device=embedder.device, decoder=mode, threads=workers, capture=capture_requested()):
            done += len(chunk.positions)
    if on_cuda:
        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def measure_raw_decode(embedder, paths: list[str], mode: str, batch: int, seconds: float) -> dict:
    """The decoder alone on files already in memory, in batches of `batch` (the device decoders) or on every core
    (Pillow with DCT scaling, "cpu"): images/s decoded, and decoded + turned + resized to the model's input."""
    import torch
    from concurrent.futures import ThreadPoolExecutor

    from image_search.pipeline.decode import pixels_from_bytes
    from image_search.pipeline.device_decoders import make_decoder
    from image_search.pipeline.device_resize import model_pixels_on_device
    from image_search.pipeline.jpeg_header import parse_jpeg_header

    files = [Path(path).read_bytes() for path in paths[:batch]]
    files = (files * (batch // len(files) + 1))[:batch]
    result = {"batch": batch}
    if mode == CPU_MODE:
        cores = os.cpu_count() or 1
        with ThreadPoolExecutor(cores) as pool:
            def once():
                list(pool.map(lambda d: pixels_from_bytes(d, "JPEG", embedder.geometry, embedder.input_size),
                              files))
            result["decode_resize"] = round(_rate(once, len(files), seconds), 1)
            result["threads"] = cores
        return result
    decoder = make_decoder(mode, embedder.device)
    orientations = [(parse_jpeg_header(d) or _UPRIGHT).orientation for d in files]
    on_cuda = embedder.device.startswith("cuda")
    stream = torch.cuda.Stream(torch.device(embedder.device)) if on_cuda else None

    def decode():
        with torch.cuda.stream(stream) if on_cuda else nullcontext():
            images = decoder.decode(files)
        if on_cuda:
            stream.synchronize()
        return images

    def decode_resize():
        with torch.cuda.stream(stream) if on_cuda else nullcontext():
            model_pixels_on_device(decoder.decode(files), orientations, embedder.geometry)
        if on_cuda:
            stream.synchronize()

    result["refused"] = sum(image is None for image in decode())
    result["decode"] = round(_rate(decode, len(files), seconds), 1)
    result["decode_resize"] = round(_rate(decode_resize, len(files), seconds), 1)
    return result


class _UPRIGHT:
    orientation = 1


def _rate(work, items: int, seconds: float) -> float:
    work()  # warm-up: handles, kernels, buffers
    done, started = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - started < seconds:
        work()
        done += items
    return done / (time.perf_counter() - started)


def measure_naive(embedder, paths: list[str]) -> float:
    """(c): what the original did: decode each full-size file, open_clip's preprocess, the model on one image,
    in the model's default precision (fp32 on the CPU, as the original; fp16 on CUDA as ours)."""
    import torch
    from PIL import Image

    from image_search.models import build_reference_model

    preprocess = embedder.reference_preprocess
    dtype = torch.float16 if embedder.device.startswith("cuda") else torch.float32
    # open_clip builds the CUDA model in fp16 already (keeping its LayerNorms in fp32 by design, so a blanket
    # .to(fp16) would break them); on the CPU the original ran open_clip's fp32 model.
    tower = (embedder.model.visual if embedder.device.startswith("cuda")
             else build_reference_model(embedder.name, "cpu").model.visual)

    def embed(path: str):
        with Image.open(path) as image:
            tensor = preprocess(image.convert("RGB")).unsqueeze(0).to(embedder.device, dtype=dtype)
        with torch.inference_mode():
            return torch.nn.functional.normalize(tower(tensor).float(), dim=-1).cpu().numpy()

    for path in paths[:3]:  # warm-up: first-touch memory, kernel choice for batch-of-one shapes
        embed(path)
    started = time.perf_counter()
    for path in paths:
        embed(path)
    return len(paths) / (time.perf_counter() - started)


@contextmanager
def environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def measure_ingest(folder: Path, data_home: Path, name: str, args, mode, capture: bool = True
                   ) -> tuple[float, float, int, int, dict]:
    """(d): the real ingest into a new dataset (capture: recording each file's hashes and EXIF, as ingests always
    do; off only to measure its cost). mode: see timed_ingest. Returns (images/s, seconds, indexed, skipped,
    extra): extra has the steady rate, the seconds of embedding and of the rest, and (device decoding) the profile
    of the reader."""
    from image_search.pipeline.batches import embed_files
    from image_search.pipeline.thread_reader import ReaderStats

    stats, timeline = ReaderStats(), []

    def embed(embedder, paths, *, batch_size=None, workers=None, progress=True, **options):
        for batch in embed_files(embedder, paths, batch_size=batch_size, workers=workers, progress=progress,
                                 stats=stats):
            yield batch
            timeline.append((time.perf_counter(), len(batch.positions) + len(batch.skipped) + len(batch.ignored)))

    seconds, report = timed_ingest(folder, data_home, name, args, mode, embed=embed, capture=capture)
    extra = {"steady": round(steady_rate(timeline), 1), "embed_seconds": round(report.embed_seconds, 3),
             "other_seconds": round(seconds - report.embed_seconds, 3)}
    if _decoder_of(mode) != CPU_MODE:
        extra["profile"] = stats.as_dict()
    return report.indexed / seconds, seconds, report.indexed, len(report.skipped), extra


def steady_rate(timeline: list[tuple[float, int]]) -> float:
    """Files per second between the batches that reach 10% and 90% of the files: the rate without start-up (model
    warm-up, threads starting) and the last batches' drain."""
    total = sum(count for _, count in timeline)
    done, marks = 0, []
    for moment, count in timeline:
        done += count
        marks.append((moment, done))
    low = next(((t, d) for t, d in marks if d >= 0.1 * total), None)
    high = next(((t, d) for t, d in marks if d >= 0.9 * total), None)
    if not low or not high or high[0] <= low[0]:
        return 0.0
    return (high[1] - low[1]) / (high[0] - low[0])


def _decoder_of(mode) -> str:
    """A row's mode: CPU_MODE (worker processes), a device decoder's name, or True (GPU decoding, the best
    decoder) / False (CPU_MODE)."""
    return ("auto" if mode else CPU_MODE) if isinstance(mode, bool) else mode


def timed_ingest(folder: Path, data_home: Path, name: str, args, mode, *, checkpoints=_DEFAULT, embed=None,
                 capture: bool = True):
    """The real ingest into a new dataset: (seconds, IngestReport). mode: see _decoder_of. checkpoints:
    CheckpointSettings, or None for none (default: the ingest's own). embed: the embedding step (default: the
    ingest's own). capture: record facts (off only to measure what capturing costs)."""
    from image_search.config import Settings
    from image_search.ingest import ingest_folder
    from image_search.models import shared_models
    from image_search.service import ImageSearch

    settings = Settings(data_home=data_home, model_name=args.model, device=args.device, database=None)
    if checkpoints is not _DEFAULT:
        settings = replace(settings, checkpoints=checkpoints)
    # the model measured in (a) stays loaded: (d) times the ingest, not a second model load
    engine = ImageSearch(settings, models=shared_models)
    decoder = _decoder_of(mode)
    on_device = decoder != CPU_MODE
    options = {"embed": embed} if embed is not None else {}
    try:
        with environment(IMAGE_SEARCH_GPU_DECODE="1" if on_device else "0",
                         IMAGE_SEARCH_GPU_DECODER=decoder if on_device else "auto",
                         IMAGE_SEARCH_CAPTURE_FACTS="1" if capture else "0"):
            started = time.perf_counter()
            report = ingest_folder(engine, folder, name, model_name=args.model, batch_size=args.batch_size,
                                   workers=args.workers, progress=False, **options)
            seconds = time.perf_counter() - started
    finally:
        engine.close()
    return seconds, report


# -- checkpoint cost --------------------------------------------------------------------------------------------
def run_checkpoint_cost(args) -> dict:
    """(d) without and with checkpoints, best of --repeat each. The two alternate, and swap places each round (off
    then on, on then off), so that a machine that warms up or slows down over the run favours neither."""
    from image_search.config import CheckpointSettings
    from image_search.models import load_model

    embedder = load_model(args.model, args.device)
    embedder.prepare_image_tower()
    args.device = embedder.device
    every = CheckpointSettings(images=args.checkpoint_images) if args.checkpoint_images else CheckpointSettings()
    print(_machine_line(machine_info()))
    print(f"Settings: model {embedder.name} on {embedder.device}, a checkpoint every {every.images} images or "
          f"{every.seconds:g} s; best of {args.repeat}.", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="image-search-bench-") as scratch:
        scratch = Path(scratch)
        corpus = list(corpus_folders(args, scratch))
        if corpus:  # one-time costs (creating the store, first imports, the reader's start) are in no row
            warm_up = link_folder([Path(p) for p in image_files(corpus[0][1])[:64]], scratch / "warm-up")
            timed_ingest(warm_up, scratch / "home", "warmup", args, True)
        for label, folder in corpus:
            runs = {"off": [], "on": []}
            for attempt in range(args.repeat):
                order = (("off", None), ("on", every))
                for mode, checkpoints in (order if attempt % 2 == 0 else order[::-1]):
                    # the device's own reader (on a GPU, the threaded one): the fastest ingest shows the most cost
                    seconds, report = timed_ingest(folder, scratch / "home", f"cp-{mode}-{len(results)}-{attempt}",
                                                   args, True, checkpoints=checkpoints)
                    runs[mode].append((seconds, report))
            (off_seconds, off), (on_seconds, on) = (min(runs[mode], key=lambda run: run[0]) for mode in ("off", "on"))
            row = {"label": label, "images": on.indexed, "off_images_per_second": round(off.indexed / off_seconds, 2),
                   "on_images_per_second": round(on.indexed / on_seconds, 2),
                   "cost": round(on_seconds / off_seconds - 1, 4), "checkpoints_written": on.checkpoints_written,
                   "checkpoint_seconds": round(on.checkpoint_seconds, 3),
                   "checkpoint_share": round(on.checkpoint_seconds / on_seconds, 4),
                   "off_seconds": [round(seconds, 3) for seconds, _ in runs["off"]],
                   "on_seconds": [round(seconds, 3) for seconds, _ in runs["on"]]}
            results.append(row)
            print(f"{label}: {row['off_images_per_second']:.1f} images/s without checkpoints, "
                  f"{row['on_images_per_second']:.1f} with ({row['checkpoints_written']} written, "
                  f"{row['checkpoint_seconds']:.2f} s on their thread, {100 * row['checkpoint_share']:.1f}% of the "
                  f"ingest): {100 * row['cost']:+.1f}% time; every run's seconds: off {row['off_seconds']}, "
                  f"on {row['on_seconds']}", flush=True)
    return {"benchmark": "ingest-checkpoint-cost", "machine": machine_info(),
            "settings": {"model": embedder.name, "device": embedder.device, "batch_size": args.batch_size,
                         "workers": args.workers, "checkpoint_images": every.images,
                         "checkpoint_seconds": every.seconds, "repeat": args.repeat},
            "results": results}


def _best_ingest(folder: Path, scratch: Path, name: str, args, embed):
    """(seconds, report, dataset name) of the fastest of --repeat ingests of the folder, each into a new
    dataset."""
    best = None
    for attempt in range(args.repeat):
        dataset = f"{name}-{attempt}".replace(" ", "-")
        seconds, report = timed_ingest(folder, scratch / "home", dataset, args, True, embed=embed)
        if best is None or seconds < best[0]:
            best = (seconds, report, dataset)
    return best


def _vectors_by_path(data_home: Path, name: str, args) -> dict:
    from image_search.config import Settings
    from image_search.models import shared_models
    from image_search.service import ImageSearch

    engine = ImageSearch(Settings(data_home=data_home, model_name=args.model, device=args.device, database=None),
                         models=shared_models)
    try:
        loaded = engine.load_index(name)
        vectors = {int(i): vector for ids, chunk in loaded.index.export() for i, vector in zip(ids, chunk)}
        records, _ = engine.store.lookup_images(loaded.record.id, sorted(vectors))
        return {record.path: vectors[vector_id] for vector_id, record in records.items()}
    finally:
        engine.close()


def _least_cosine(data_home: Path, name: str, reference: dict, args) -> float | None:
    """The smallest cosine between a file's vector in dataset `name` and in the reference (None: other paths)."""
    import numpy as np

    vectors = _vectors_by_path(data_home, name, args)
    if sorted(vectors) != sorted(reference):
        return None
    return float(min(np.dot(vectors[path], reference[path]) for path in reference))


# -- Ray's overhead on one machine -------------------------------------------------------------------------------
def run_ray_overhead(args) -> dict:
    """The same files ingested locally and through `--ray` (a Ray started on this machine), one after the other,
    best of --repeat each: how much of the local ingest's speed a distributed ingest keeps on one machine."""
    from image_search.ingest.ray_embed import RayEmbedding
    from image_search.models import load_model

    embedder = load_model(args.model, args.device)
    embedder.prepare_image_tower()
    args.device = embedder.device
    print(_machine_line(machine_info()))
    print(f"Settings: model {embedder.name} on {embedder.device}; local ingest vs --ray; best of {args.repeat}.",
          flush=True)
    results = []
    ray_embed = RayEmbedding(None, device=args.device)  # started once: a cluster is up before an ingest joins it
    try:
        with tempfile.TemporaryDirectory(prefix="image-search-bench-") as scratch:
            scratch = Path(scratch)
            corpus = list(corpus_folders(args, scratch))
            if corpus:  # one-time costs (store, first imports, Ray's actors' first model load) are in no row
                warm_up = link_folder([Path(p) for p in image_files(corpus[0][1])[:64]], scratch / "warm-up")
                timed_ingest(warm_up, scratch / "home", "warmup", args, True)
                timed_ingest(warm_up, scratch / "home", "warmup-ray", args, True, embed=ray_embed)
                # what each ingest through Ray pays before its first vector (the actors start and load the model)
                start_seconds, _ = timed_ingest(warm_up, scratch / "home", "start-ray", args, True, embed=ray_embed)
                print(f"An ingest of {len(image_files(warm_up))} files through Ray takes {start_seconds:.1f} s.",
                      flush=True)
            for label, folder in corpus:
                local_seconds, local, local_name = _best_ingest(folder, scratch, f"ray-local-{label}", args, None)
                local_rate = local.indexed / local_seconds
                reference = _vectors_by_path(scratch / "home", local_name, args)
                print(f"{label}: {local_rate:.1f} images/s local", flush=True)
                variants = [(files, at_once) for files in args.ray_block_files or [None]
                            for at_once in args.ray_blocks_at_once or [None]]
                for block_files, at_once in variants:
                    ray_embed.block_files, ray_embed.blocks_at_once = block_files, at_once
                    ray_seconds, on_ray, ray_name = _best_ingest(folder, scratch, f"ray-{label}-{block_files}-{at_once}",
                                                                 args, ray_embed)
                    row = {"label": label, "images": on_ray.indexed, "block_files": block_files or "auto",
                           "blocks_at_once": at_once or "auto",
                           "small_ingest_seconds": round(start_seconds, 2),
                           "local_images_per_second": round(local_rate, 2),
                           "ray_images_per_second": round(on_ray.indexed / ray_seconds, 2),
                           "ray_share": round((on_ray.indexed / ray_seconds) / local_rate, 4),
                           "same_count": on_ray.indexed == local.indexed,
                           # the same files and vectors as the local ingest's (each file's cosine to its own)
                           "least_cosine_to_local": _least_cosine(scratch / "home", ray_name, reference, args)}
                    results.append(row)
                    print(f"{label}, blocks of {row['block_files']} files, {row['blocks_at_once']} at once: "
                          f"{row['ray_images_per_second']:.1f} "
                          f"images/s through Ray ({100 * row['ray_share']:.1f}% of local; least cosine to the local "
                          f"vectors {row['least_cosine_to_local']})", flush=True)
    finally:
        ray_embed.close()
    return {"benchmark": "ingest-ray-overhead", "machine": machine_info(),
            "settings": {"model": embedder.name, "device": embedder.device, "batch_size": args.batch_size,
                         "workers": args.workers, "repeat": args.repeat, "ray": ray_version()},
            "results": results}


def ray_version() -> str:
    import ray

    return ray.__version__


# -- the run ----------------------------------------------------------------------------------------------------
def run_speed(args) -> dict:
    from image_search.config import cpu_precision_setting
    from image_search.models import load_model
    from image_search.models.cpu.tower_forms import cpu_has_native_bf16
    from image_search.pipeline.batches import default_batch_size
    from image_search.pipeline.cpu_reader import default_workers
    from image_search.pipeline.device_decoders import available_decoders

    embedder = load_model(args.model, args.device)
    embedder.prepare_image_tower()  # its form is part of the settings reported, and not of any timing
    args.device = embedder.device
    on_gpu = embedder.device.startswith("cuda")
    cores = os.cpu_count() or 1
    batch_size = args.batch_size or default_batch_size(embedder)
    ingest_workers = default_workers(embedder.device) if args.workers is None else args.workers
    # without CUDA, device decoding (torchvision's CPU decoder then) is measured only when asked for
    decoders = available_decoders(embedder.device)
    modes = {"off": [CPU_MODE], "on": decoders, "both": [CPU_MODE, *decoders]}[
        args.gpu_decode or ("both" if on_gpu else "off")]

    machine = machine_info()
    import torch

    settings = {
        "model": embedder.name, "device": embedder.device, "precision": str(getattr(embedder, "dtype", "")),
        "image_form": getattr(embedder, "image_form", ""),
        "batch_size": batch_size, "ingest_workers": ingest_workers, "decode_workers": cores,
        "torch_threads": torch.get_num_threads(), "gpu_decode": modes, "decode_count": args.decode_count,
        "cpu_count": args.cpu_count,
        "count": args.count, "distinct": min(args.count, args.distinct or args.count),
        "naive_count": args.naive_count, "repeat": args.repeat, "store": "sqlite",
        "cpu_precision_setting": cpu_precision_setting(), "cpu_native_bf16": cpu_has_native_bf16(),
        "gpu_decode_setting": os.environ.get("IMAGE_SEARCH_GPU_DECODE", ""),
    }
    print(_machine_line(machine))
    print(f"Settings: model {settings['model']} on {settings['device']} ({settings['precision']}), batch "
          f"{batch_size}, ingest workers {ingest_workers}, decode-only workers {cores}, torch threads "
          f"{settings['torch_threads']}; naive baseline on {args.naive_count} images per size; best of "
          f"{args.repeat}.", flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="image-search-bench-") as scratch:
        scratch = Path(scratch)
        corpus = [(label, folder, image_files(folder)) for label, folder in corpus_folders(args, scratch)]
        for label, folder, paths in corpus:
            if not paths:
                print(f"{label}: no images in {folder}, skipped.", file=sys.stderr)
        corpus = [entry for entry in corpus if entry[2]]
        if corpus:  # one-time costs (creating the store, first imports) are not part of any row
            warm_up = link_folder([Path(p) for p in corpus[0][2][:2]], scratch / "warm-up")
            for mode in modes:  # and the first use of each reader and decoder
                measure_ingest(warm_up, scratch / "home", f"warmup-{mode}", args, mode)
        for label, folder, paths in corpus:
            megapixels, file_kb = describe_files(paths[:500])
            naive = measure_naive(embedder, paths[:args.naive_count])
            for mode in modes:
                mode_folder, mode_paths = folder, paths
                if mode == CPU_MODE and args.cpu_count and args.cpu_count < len(paths):  # the slow rows: fewer files
                    mode_paths = paths[:args.cpu_count]
                    mode_folder = link_folder([Path(p) for p in mode_paths], scratch / f"{folder.name}-cpu")
                row = Row(label, mode, len(mode_paths), megapixels, file_kb, naive=naive)
                decode_paths = mode_paths[:args.decode_count] if args.decode_count else mode_paths
                # Each measure right before the others, best of --repeat: on a shared machine the ratios then
                # compare like with like.
                for _ in range(args.repeat):
                    row.model = max(row.model, measure_model(embedder, batch_size, args.model_seconds))
                    row.decode_only = max(row.decode_only,
                                          measure_decode(embedder, decode_paths, batch_size, cores, mode))
                    speed, seconds, _, row.skipped, extra = measure_ingest(mode_folder, scratch / "home",
                                                                           f"bench{len(rows)}", args, mode)
                    if speed > row.ingest:
                        row.ingest, row.ingest_seconds, row.extra = speed, seconds, extra
                if args.raw_seconds > 0 and (on_gpu or mode != CPU_MODE):
                    row.extra["raw"] = measure_raw_decode(embedder, paths, mode, 256, args.raw_seconds)
                rows.append(row)
                print(_row_line(row), flush=True)
        _compare_with_best_decoder(rows)
    machine["load_average_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    print()
    print(table(rows))
    return {"benchmark": "ingest", "machine": machine, "settings": settings,
            "results": [row.to_dict() for row in rows]}


def _compare_with_best_decoder(rows: list[Row]) -> None:
    """For each device-decoding row: its ingest over the best (b) of any device decoder at that size."""
    for row in rows:
        best = max((other.decode_only for other in rows if other.label == row.label and other.decode != CPU_MODE),
                   default=0.0)
        if row.decode != CPU_MODE and best:
            row.extra["ingest_vs_best_decode"] = round(row.ingest / best, 3)


def corpus_folders(args, scratch: Path):
    """(label, folder) for each row: the --images folders, or a folder of `count` generated photos per size."""
    if args.images:
        for folder in args.images:
            yield Path(folder).name or str(folder), Path(folder)
        return
    for megapixels in args.sizes:
        distinct = min(args.count, args.distinct or args.count)
        files = generated_photos(args.corpus, megapixels, distinct, os.cpu_count() or 1)
        yield size_label(megapixels), link_folder(files, scratch / f"{megapixels:g}mp", args.count)


def _machine_line(machine: dict) -> str:
    gpus = ", ".join(machine["gpus"]) or "no GPU"
    return (f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
            f"{machine['memory_gb']} GB, {gpus}; load average {machine['load_average_at_start']} at start.")


def _row_line(row: Row) -> str:
    line = (f"{row.label} ({row.decode} decode): (a) model {row.model:.1f}, (b) decode {row.decode_only:.1f}, "
            f"(c) naive {row.naive:.1f}, (d) ingest {row.ingest:.1f} images/s")
    extra = row.extra
    if "steady" in extra:
        line += (f"; steady {extra['steady']:.1f}/s, embedding {extra['embed_seconds']:.2f} s + index and commit "
                 f"{extra['other_seconds']:.2f} s of {row.ingest_seconds:.2f} s")
    if "raw" in extra:
        line += "; raw decoder " + ", ".join(f"{key} {value}" for key, value in extra["raw"].items())
    if extra.get("profile"):
        busy = ", ".join(f"{stage} {entry['seconds'] / max(row.ingest_seconds, 1e-9):.2f}"
                         for stage, entry in extra["profile"].items())
        line += f"\n    profile (threads busy, seconds per second of the ingest): {busy}"
    return line


def table(rows: list[Row]) -> str:
    header = ["size", "decode", "images", "MP", "KB/file", "(a) model", "(b) decode", "(c) naive", "(d) ingest",
              "d/min(a,b)", "d/c"]
    lines = [header]
    for row in rows:
        lines.append([row.label, row.decode, str(row.images), f"{row.megapixels:.1f}", f"{row.file_kb:.0f}",
                      f"{row.model:.1f}", f"{row.decode_only:.1f}", f"{row.naive:.1f}", f"{row.ingest:.1f}",
                      f"{row.ingest_vs_bound:.2f}", f"{row.ingest_vs_naive:.1f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(width) if i > 1 else cell.ljust(width) for i, (cell, width) in
                      enumerate(zip(line, widths))) for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text) + "\n(images/s; (d) is the whole ingest: scan, read, embed, index, commit)"


# -- capture cost -----------------------------------------------------------------------------------------------
def measure_facts_alone(paths: list[str], min_seconds: float = 1.0) -> float:
    """CPU milliseconds to compute one file's facts (both hashes, header and EXIF) from its bytes in memory: the
    work capture adds to a reader worker. CPU time of this thread, so other load on a shared machine does not
    count (it still slows the caches)."""
    from image_search.pipeline.facts import facts_from_bytes

    files = [Path(path).read_bytes() for path in paths[:50]]
    done, started, cpu_started = 0, time.perf_counter(), time.thread_time()
    while done < len(files) or time.perf_counter() - started < min_seconds:
        facts_from_bytes(files[done % len(files)])
        done += 1
    return (time.thread_time() - cpu_started) / done * 1000


def run_capture_cost(args) -> dict:
    """Ingest speed with capture on and off, on the same files, alternating which goes first."""
    from image_search.models import load_model

    embedder = load_model(args.model, args.device)
    embedder.prepare_image_tower()
    args.device = embedder.device
    machine = machine_info()
    print(_machine_line(machine))
    results = []
    with tempfile.TemporaryDirectory(prefix="image-search-capture-") as scratch:
        scratch = Path(scratch)
        corpus = [(label, folder, image_files(folder)) for label, folder in corpus_folders(args, scratch)]
        corpus = [entry for entry in corpus if entry[2]]
        if corpus:  # one-time costs (creating the store, first imports) are not part of any row
            warm_up = link_folder([Path(p) for p in corpus[0][2][:2]], scratch / "warm-up")
            measure_ingest(warm_up, scratch / "home", "warmup", args, False)
        runs = 0
        for label, folder, paths in corpus:
            megapixels, file_kb = describe_files(paths)
            best = {True: 0.0, False: 0.0}
            for attempt in range(args.repeat):
                for capture in ((True, False) if attempt % 2 == 0 else (False, True)):
                    speed, *_ = measure_ingest(folder, scratch / "home", f"capture{runs}", args, False, capture)
                    runs += 1
                    best[capture] = max(best[capture], speed)
            cost = 1 - best[True] / best[False] if best[False] else 0.0
            row = {"label": label, "images": len(paths), "megapixels": round(megapixels, 2),
                   "file_kb": round(file_kb, 1), "ingest_capture_off": round(best[False], 2),
                   "ingest_capture_on": round(best[True], 2), "cost_percent": round(100 * cost, 1),
                   "facts_cpu_ms_per_file": round(measure_facts_alone(paths), 3)}
            results.append(row)
            print(f"{label}: ingest {row['ingest_capture_off']:.1f} images/s without capture, "
                  f"{row['ingest_capture_on']:.1f} with it: capture costs {row['cost_percent']:.1f}% "
                  f"({row['facts_cpu_ms_per_file']:.2f} CPU ms per file alone, {row['file_kb']:.0f} KB files)", flush=True)
    machine["load_average_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {"benchmark": "ingest-capture-cost", "machine": machine,
            "settings": {"model": embedder.name, "device": embedder.device, "count": args.count,
                         "repeat": args.repeat, "workers": args.workers, "batch_size": args.batch_size},
            "results": results}


# -- memory check -----------------------------------------------------------------------------------------------
def run_memory(args) -> dict:
    """Peak memory of ingests of different sizes, each in a fresh child process."""
    counts = args.memory_counts
    results = []
    with tempfile.TemporaryDirectory(prefix="image-search-memory-") as scratch:
        scratch = Path(scratch)
        files = generated_photos(args.corpus, args.memory_size, min(MEMORY_DISTINCT_PHOTOS, max(counts)),
                                 os.cpu_count() or 1)
        for count in counts:
            folder = link_folder(files, scratch / f"images-{count}", count)
            command = [sys.executable, "-m", "evaluation.benchmark_ingest", "--memory-child", str(folder),
                       "--model", args.model]
            for flag, value in (("--device", args.device), ("--batch-size", args.batch_size),
                                ("--workers", args.workers)):
                if value is not None:
                    command += [flag, str(value)]
            print(f"Ingesting {count} images of {size_label(args.memory_size)} in a child process...",
                  file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if done.returncode != 0:
                raise SystemExit(f"The memory-check ingest of {count} images failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{count:>7} images: {result['seconds']:.1f} s, peak RSS main process "
                  f"{result['peak_rss_mb']:.0f} MB, largest reader worker {result['peak_worker_rss_mb']:.0f} MB",
                  flush=True)
            shutil.rmtree(folder)
    first, last = results[0], results[-1]
    growth = last["peak_rss_mb"] - first["peak_rss_mb"]
    extra_images = last["indexed"] - first["indexed"]
    index_mb = extra_images * last["dim"] * 4 / 2**20
    summary = (f"Peak RSS of the ingesting process grew by {growth:.0f} MB from {first['indexed']} to "
               f"{last['indexed']} images ({growth * 1024 / max(extra_images, 1):.2f} KB per extra image; the "
               f"in-memory index itself takes {last['dim'] * 4 / 1024:.1f} KB per image, {index_mb:.1f} MB for the "
               "extra images). Reader workers' RSS includes the pages they share with that process.")
    print(summary)
    return {"benchmark": "ingest-memory", "machine": machine_info(),
            "settings": {"model": args.model, "device": args.device, "megapixels": args.memory_size,
                         "counts": counts, "batch_size": args.batch_size, "workers": args.workers},
            "results": results, "growth_mb": round(growth, 1), "summary": summary}


def memory_child(args) -> int:
    """Ingest one folder and print the peak memory of this process and of its reader workers as JSON."""
    from image_search.config import Settings
    from image_search.service import ImageSearch
    from image_search.ingest import ingest_folder

    with tempfile.TemporaryDirectory(prefix="image-search-memory-home-") as home:
        engine = ImageSearch(Settings(data_home=Path(home), model_name=args.model, device=args.device,
                                      database=None))
        started = time.perf_counter()
        report = ingest_folder(engine, args.memory_child, "memory", model_name=args.model,
                               batch_size=args.batch_size, workers=args.workers, progress=False)
        seconds = time.perf_counter() - started
        dim = engine.dataset("memory").dim
        engine.close()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20
    print(json.dumps({"images": report.indexed + len(report.skipped), "indexed": report.indexed, "dim": dim,
                      "seconds": round(seconds, 2), "images_per_second": round(report.indexed / seconds, 2),
                      "peak_rss_mb": round(own, 1), "peak_worker_rss_mb": round(workers, 1)}))
    return 0


# -- command line -----------------------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"'{text}' must list positive numbers, e.g. 0.3,2,12")
    return values


def _counts(text: str) -> list[int]:
    values = _floats(text)
    if any(value != int(value) for value in values):
        raise argparse.ArgumentTypeError(f"'{text}' must list whole numbers, e.g. 1000,5000")
    return [int(value) for value in values]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers of 1 or more, got {text!r}")
    return values


def parse_args(argv=None):
    from cli.common import ToolParser, add_json_flag

    parser = ToolParser(prog="python -m evaluation.benchmark_ingest", description=__doc__.strip(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model to embed with (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--sizes", type=_floats, default=_floats(DEFAULT_SIZES),
                        help=f"megapixels of the generated photos, comma-separated (default: {DEFAULT_SIZES})")
    parser.add_argument("--count", type=_positive, default=DEFAULT_COUNT,
                        help=f"generated photos per size (default: {DEFAULT_COUNT})")
    parser.add_argument("--distinct", type=_positive, default=None,
                        help="generate only this many distinct photos per size and let the --count files cycle "
                             "through them (hard links: same decoding work, less generation; default: --count)")
    parser.add_argument("--images", action="append", metavar="DIR",
                        help="measure this folder of images instead of generated photos (repeatable: one row each)")
    parser.add_argument("--corpus", type=Path, default=default_corpus_folder(),
                        help="where generated photos are cached (default: %(default)s)")
    parser.add_argument("--naive-count", type=_positive, default=DEFAULT_NAIVE_COUNT,
                        help=f"images per size for the slow naive baseline (default: {DEFAULT_NAIVE_COUNT})")
    parser.add_argument("--batch-size", type=_positive, default=None,
                        help="batch size for (a), (b) and (d) (default: the ingest's default for the device)")
    parser.add_argument("--workers", type=int, default=None,
                        help="reader workers for (d) (default: the ingest's default; (b) always uses all cores)")
    parser.add_argument("--gpu-decode", choices=("off", "on", "both"), default=None,
                        help="measure (b) and (d) with JPEGs decoded by CPU worker processes, by the threaded reader "
                             "with each device decoder that works here, or both (default: both on CUDA, off "
                             "without)")
    parser.add_argument("--cpu-count", type=_positive, default=None,
                        help="measure the CPU-decoding rows on only this many of the files (they are the slow ones; "
                             "default: all)")
    parser.add_argument("--decode-count", type=_positive, default=None,
                        help="measure (b) on only this many of the files (default: all)")
    parser.add_argument("--raw-seconds", type=float, default=2.0,
                        help="on CUDA, seconds to time each decoder alone on files in memory (0: skip; default: 2)")
    parser.add_argument("--model-seconds", type=float, default=4.0,
                        help="minimum seconds to time the model alone (default: 4)")
    parser.add_argument("--repeat", type=_positive, default=1,
                        help="measure (a), (b) and (d) this many times per size and keep the best (for shared "
                             "machines; default: 1)")
    add_json_flag(parser)
    parser.add_argument("--memory", action="store_true",
                        help="instead of speed, measure peak memory of ingests of --memory-counts images")
    parser.add_argument("--memory-counts", type=_counts, default=_counts(DEFAULT_MEMORY_COUNTS),
                        help=f"image counts for --memory (default: {DEFAULT_MEMORY_COUNTS})")
    parser.add_argument("--memory-size", type=float, default=0.3,
                        help="megapixels of the photos for --memory (default: 0.3)")
    parser.add_argument("--memory-child", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--ray-overhead", action="store_true",
                        help="ingest the same files locally and through --ray (Ray started on this machine) and "
                             "report the share of the local speed that Ray keeps")
    parser.add_argument("--ray-block-files", type=_int_list, default=None, metavar="N[,N...]",
                        help="for --ray-overhead: a Ray row for each number of files per actor block (default: the "
                             "ingest's own choice)")
    parser.add_argument("--ray-blocks-at-once", type=_int_list, default=None, metavar="N[,N...]",
                        help="for --ray-overhead: a Ray row for each number of blocks an actor embeds at once "
                             "(default: the ingest's own choice)")
    parser.add_argument("--checkpoint-cost", action="store_true",
                        help="instead of speed, measure ingests with and without checkpoints")
    parser.add_argument("--checkpoint-images", type=_positive, default=None,
                        help="for --checkpoint-cost: a checkpoint every this many images (default: the ingest's "
                             "own, 10,000 or a minute)")
    parser.add_argument("--capture-cost", action="store_true",
                        help="instead of speed, measure what recording hashes and EXIF costs: ingests of the same "
                             "files with capture on and off (best of --repeat each)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 or more")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random or local weights only: never wait on the network
    if args.memory_child:
        return memory_child(args)
    from cli.common import print_result, text_to_stderr_under_json

    with text_to_stderr_under_json(args):
        result = (run_memory(args) if args.memory else run_checkpoint_cost(args) if args.checkpoint_cost
                  else run_capture_cost(args) if args.capture_cost
                  else run_ray_overhead(args) if args.ray_overhead else run_speed(args))
    print_result(args, None, result)
    return 0


if __name__ == "__main__":
    from cli.common import run_tool

    run_tool(main)
