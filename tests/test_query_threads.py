"""Fast queries on the CPU: packed transformer weights, the query thread and its thread count, and threads that
end with their work (image_search/models/cpu/packed_weights.py, tower_forms.py, runtime/threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from tests.conftest import REPO, cpu_without_bf16, fresh_cpu_model

packed_weights = pytest.importorskip("image_search.models.cpu.packed_weights")
needs_packing = pytest.mark.skipif(not packed_weights.packing_available(), reason="this torch build has no oneDNN")
needs_packed_bf16 = pytest.mark.skipif(
    not packed_weights.packed_bf16_available(), reason="oneDNN packs bf16 weights only on CPUs with AVX512 (BW, VL "
    "and DQ) or AVX-NE-CONVERT, and this one has neither (or this torch build has no oneDNN)")


# -- packed blocks compute what open_clip's blocks compute -------------------------------------------------------
def _block(width=64, heads=4):
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(width, heads).eval()
    for parameter in block.parameters():  # LayerNorm's ones/zeros would hide a swapped bias or scale
        torch.nn.init.normal_(parameter, std=0.2)
    return block


@needs_packing
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 12), (2, 77)])
def test_packed_block_matches_open_clip_in_fp32(shape):
    import copy

    block = _block()
    fast = copy.deepcopy(block)
    fast.attn, fast.mlp.c_fc, fast.mlp.c_proj = (packed_weights.PackedSelfAttention(block.attn),
                                                 packed_weights.PackedLinear(block.mlp.c_fc),
                                                 packed_weights.PackedLinear(block.mlp.c_proj))
    batch, length = shape
    x = torch.randn(batch, length, 64)
    causal = torch.full((length, length), float("-inf")).triu(1)
    with torch.inference_mode():
        for mask in (None, causal):
            assert torch.allclose(fast(x, attn_mask=mask), block(x, attn_mask=mask), atol=1e-4, rtol=1e-4)


@needs_packing
def test_packed_self_attention_refuses_what_it_does_not_compute():
    attention = packed_weights.PackedSelfAttention(_block().attn)
    x, other = torch.randn(1, 3, 64), torch.randn(1, 3, 64)
    with pytest.raises(RuntimeError, match="self-attention only"):
        attention(x, other, other)
    with pytest.raises(RuntimeError, match="self-attention only"):
        attention(x, x, x, need_weights=True)


def test_only_plain_open_clip_blocks_are_packed():
    from open_clip.transformer import Transformer

    assert packed_weights.packable(Transformer(64, 2, 4))
    assert not packed_weights.packable(Transformer(64, 2, 4, scale_attn=True))  # open_clip's custom block
    assert not packed_weights.packable(Transformer(64, 2, 4, batch_first=False))
    assert not packed_weights.packable(torch.nn.Linear(4, 4))


# -- the tower forms chosen at load ------------------------------------------------------------------------------
QUERIES = ["a dog", "red car at night", "a man holding a knife in a dark kitchen next to a window"]


@needs_packing
def test_fp32_packed_towers_give_the_same_embeddings_as_open_clip(monkeypatch):
    from image_search.models import build_reference_model
    from image_search.models.cpu.tower_forms import probe_pixels

    reference = build_reference_model("test-tiny", "cpu")
    fast = fresh_cpu_model("test-tiny", monkeypatch, "fp32")
    assert (fast.image_form, fast.text_form) == ("fp32, packed", "fp32, packed")
    assert isinstance(fast.model.transformer.resblocks[0].attn, packed_weights.PackedSelfAttention)
    assert isinstance(fast.model.visual.transformer.resblocks[0].mlp.c_fc, packed_weights.PackedLinear)
    assert np.allclose(fast.encode_texts(QUERIES), reference.encode_texts(QUERIES), atol=1e-5)
    pixels = probe_pixels(fast.input_size)
    assert np.allclose(fast.encode_pixels(pixels), reference.encode_pixels(pixels), atol=1e-5)


@pytest.fixture(scope="module")
def vit_reference():
    from image_search.models import build_reference_model

    return build_reference_model("ViT-B-32:random", "cpu")


@needs_packed_bf16
def test_bf16_text_tower_stays_within_cosine_of_fp32(monkeypatch, vit_reference):
    reference = vit_reference
    fast = fresh_cpu_model("ViT-B-32:random", monkeypatch, "bf16")
    assert fast.text_form == "bf16, packed"
    assert fast.model.transformer.get_cast_dtype() == torch.bfloat16
    assert fast.model.token_embedding.weight.dtype == torch.float32  # the small parts stay fp32
    texts = QUERIES + [" ".join(["word"] * 70), "x"]
    cosines = (fast.encode_texts(texts) * reference.encode_texts(texts)).sum(axis=1)
    assert cosines.min() >= 0.999


def test_bf16_text_tower_without_packed_bf16_is_unpacked_and_stays_within_cosine_of_fp32(monkeypatch, caplog,
                                                                                          vit_reference):
    """An AVX2-only CPU (cpu_without_bf16): forced bf16 leaves the weights unpacked instead of failing."""
    cpu_without_bf16(monkeypatch)
    reference = vit_reference
    fast = fresh_cpu_model("ViT-B-32:random", monkeypatch, "bf16")
    assert fast.text_form == "bf16" and "failed" not in caplog.text
    assert fast.model.transformer.get_cast_dtype() == torch.bfloat16
    assert type(fast.model.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    texts = QUERIES + [" ".join(["word"] * 70), "x"]
    cosines = (fast.encode_texts(texts) * reference.encode_texts(texts)).sum(axis=1)
    assert cosines.min() >= 0.999


def test_without_packing_the_towers_stay_open_clip_modules(monkeypatch):
    from image_search.models.cpu import packed_weights as packing

    monkeypatch.setattr(packing, "packing_available", lambda: False)
    fp32 = fresh_cpu_model("test-tiny", monkeypatch, "fp32")
    assert (fp32.image_form, fp32.text_form) == ("fp32", "fp32")
    assert type(fp32.model.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    bf16 = fresh_cpu_model("test-tiny", monkeypatch, "bf16")
    assert (bf16.image_form, bf16.text_form) == ("bf16", "bf16")


@needs_packing
def test_a_packed_form_that_fails_falls_back(monkeypatch, caplog):
    from image_search.models.cpu import packed_weights as packing

    def refuse(_weight):
        raise RuntimeError("oneDNN cannot pack here")

    monkeypatch.setattr(packing, "_pack", refuse)
    embedder = fresh_cpu_model("test-tiny", monkeypatch, "fp32")
    assert (embedder.image_form, embedder.text_form) == ("fp32", "fp32")
    assert "failed (oneDNN cannot pack here)" in caplog.text
    assert embedder.encode_texts(["a dog"]).shape == (1, embedder.dim)


def test_the_image_tower_is_readied_on_first_use_only(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from image_search.models import parse_model_name
    from image_search.models.clip import _build_clip
    from image_search.models.cpu import tower_forms

    prepared = []
    real_prepare = tower_forms.prepare_image_tower
    monkeypatch.setattr(tower_forms, "prepare_image_tower",
                        lambda embedder: prepared.append(1) or real_prepare(embedder))
    embedder = _build_clip(parse_model_name("test-tiny"), "cpu")
    embedder.encode_texts(["a text search needs no image tower"])
    assert prepared == [] and embedder.image_form == "fp32" and embedder.dtype == torch.float32
    pixels = tower_forms.probe_pixels(embedder.input_size)
    with ThreadPoolExecutor(4) as pool:  # the first images arrive together: one preparation, same answers
        answers = list(pool.map(lambda _: embedder.encode_pixels(pixels), range(4)))
    assert prepared == [1] and embedder.image_form != "fp32" or not packed_weights.packing_available()
    assert all(np.allclose(answer, answers[0]) for answer in answers)
    embedder.prepare_image_tower()
    assert prepared == [1]


# -- the query thread ---------------------------------------------------------------------------------------------
def test_queries_run_on_the_query_thread_with_the_idle_cores(monkeypatch):
    from image_search.models import load_model
    from image_search.runtime import threads as runtime_threads

    embedder = load_model("test-tiny", "cpu")
    seen = []
    original = embedder._encode_texts
    monkeypatch.setattr(embedder, "_encode_texts", lambda texts: (
        seen.append((threading.current_thread().name, torch.get_num_threads())), original(texts))[1])
    limit = min(torch.get_num_threads(), runtime_threads.QUERY_MAX_THREADS)
    for idle, expected in ((0, 1), (1, 1), (8, limit)):  # no busy-meter reading yet counts as 0
        monkeypatch.setattr(runtime_threads, "idle_cores", lambda idle=idle: idle)
        embedder.encode_texts(["a dog"])
        assert seen[-1][0].startswith("query") and seen[-1][1] == expected
    embedder.encode_texts(["text"] * 16)  # a batch stays on the caller's thread
    assert seen[-1][0] == threading.current_thread().name


@pytest.mark.parametrize("openmp_setter", [True, False])
def test_a_one_thread_query_leaves_later_threads_every_core(monkeypatch, openmp_setter):
    """Threads adopt PyTorch's process-wide count when they first run parallel work: a query on one thread must
    not leave a model load or an ingest that starts afterwards with one thread (measured: half the speed)."""
    from image_search.models import load_model
    from image_search.runtime import threads as runtime_threads

    default = torch.get_num_threads()
    if default < 2:
        pytest.skip("needs two OpenMP threads")
    embedder = load_model("test-tiny", "cpu")
    if not openmp_setter:
        monkeypatch.setattr(runtime_threads, "_libgomp_setter", lambda: None)
    seen = []
    original = embedder._encode_texts
    monkeypatch.setattr(embedder, "_encode_texts", lambda texts: (seen.append(torch.get_num_threads()),
                                                                   original(texts))[1])
    later = []

    def count_in_a_new_thread():
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()

    monkeypatch.setattr(runtime_threads, "idle_cores", lambda: 0)
    embedder.encode_texts(["a dog"])
    count_in_a_new_thread()
    monkeypatch.setattr(runtime_threads, "idle_cores", lambda: 8)
    embedder.encode_texts(["a cat"])
    count_in_a_new_thread()
    assert seen == [1, min(default, runtime_threads.QUERY_MAX_THREADS)] and later == [default, default]


def test_idle_cores_counts_sustained_work_by_other_processes():
    from image_search.runtime.threads import BusyMeter, busy_meter, idle_cores

    busy_meter.start()
    time.sleep(BusyMeter.WINDOW + 2 * BusyMeter.PERIOD)  # a whole window of samples
    cores = len(busy_meter.cpus)
    assert 0 <= idle_cores() <= cores
    spin = "import time\nprint('spinning', flush=True)\nend = time.time() + 30\nwhile time.time() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
    try:
        for process in busy:  # a loaded machine can take a while to start Python: count from the spinning
            process.stdout.readline()
        time.sleep(BusyMeter.WINDOW + 2 * BusyMeter.PERIOD)
        samples = []
        for _ in range(5):  # over a whole second: sustained work counts in every reading
            samples.append(idle_cores())
            time.sleep(BusyMeter.PERIOD)
    finally:
        for process in busy:
            process.kill()
            process.wait()
            process.stdout.close()
    assert samples == [0] * 5, samples


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _others_busy_after_a_window_of_spinning(run_chunk) -> float:
    """One core spins for a whole window of the busy meter, 0.1 s at a time through run_chunk(work, seconds);
    then what the meter counts as other work than the queries."""
    from image_search.runtime.threads import BusyMeter, busy_meter

    for _ in range(round((BusyMeter.WINDOW + 2 * BusyMeter.PERIOD) / 0.1)):
        run_chunk(_spin, 0.1)
    busy = busy_meter.others_busy()
    assert busy is not None, "the busy meter had no window of samples"
    return busy


def _on_a_plain_thread() -> float:
    reading = []
    thread = threading.Thread(target=lambda: reading.append(
        _others_busy_after_a_window_of_spinning(lambda work, *args: work(*args))))
    thread.start()
    thread.join()
    return reading[0]


def test_query_work_is_not_counted_as_other_work():
    """A core spinning in query work reads about one core less of other work than the same spin on a plain
    thread. Comparing the two holds whatever else the machine runs (idle, every core busy, pinned to one core);
    in the order plain, query, query, plain, a load that rises or falls steadily meanwhile cancels out."""
    from image_search.runtime.threads import BusyMeter, busy_meter, run_query_work

    busy_meter.start()
    time.sleep(BusyMeter.WINDOW + 2 * BusyMeter.PERIOD)  # a whole window of samples
    readings = [_on_a_plain_thread(), _others_busy_after_a_window_of_spinning(run_query_work),
                _others_busy_after_a_window_of_spinning(run_query_work), _on_a_plain_thread()]
    plain, query = (readings[0] + readings[3]) / 2, (readings[1] + readings[2]) / 2
    assert plain - query >= 0.5, readings


def test_work_in_a_passing_thread_returns_or_raises_in_the_caller():
    from image_search.runtime.threads import run_in_passing_thread

    threads = []

    def work(value, *, twice=False):
        threads.append(threading.current_thread())
        if value is None:
            raise ValueError("no value")
        return value * (2 if twice else 1)

    assert run_in_passing_thread(work, 21, twice=True) == 42
    with pytest.raises(ValueError, match="no value"):
        run_in_passing_thread(work, None)
    assert all(thread is not threading.current_thread() and not thread.is_alive() for thread in threads)


THREAD_NAMES = """
import collections, json, os, sys, threading, time
import torch
torch.set_num_threads(2)  # even where this process may use one core: the workers are what is looked for
from image_search.runtime import threads as runtime_threads

def thread_names():
    names = collections.Counter()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as handle:
                names[handle.read().strip()] += 1
        except OSError:  # a thread that ended meanwhile
            pass
    return names

def passing_threads():
    return sum(count for name, count in thread_names().items() if name.startswith(runtime_threads.PASSING_THREAD_NAME))

def wait_for_passing_threads(at_most):  # workers end a moment after the thread that started them
    deadline = time.time() + 5
    while passing_threads() > at_most and time.time() < deadline:
        time.sleep(0.05)

def report():
    return {"torch_threads": torch.get_num_threads(), "passing": passing_threads(), "names": thread_names()}

named = runtime_threads.run_in_passing_thread(passing_threads)  # a passing thread sees itself by its name
from image_search.models import load_model
from image_search.models.cpu.tower_forms import probe_pixels
embedder = load_model("test-tiny", "cpu")  # on a passing thread
embedder.encode_texts(["a dog"])  # on the query thread
embedder.encode_pixels(probe_pixels(embedder.input_size))  # readies the image tower on a passing thread
wait_for_passing_threads(0)
after_load = dict(report(), named=named)

# the control: parallel work on a thread named like a passing thread, that stays alive
ready, stop = threading.Event(), threading.Event()
def long_lived():
    runtime_threads.name_native_thread(runtime_threads.PASSING_THREAD_NAME)
    for _ in range(10):
        torch.ones(4_000_000).mul(2).sum()  # parallel elementwise work: libgomp starts this thread's pool
    ready.set()
    stop.wait()
threading.Thread(target=long_lived, daemon=True).start()
ready.wait()
wait_for_passing_threads(1)
print(json.dumps({"load": after_load, "control": report()}))
"""


@pytest.fixture(scope="module")
def thread_names(tmp_path_factory) -> dict:
    """The threads, by native name, of a process that loaded a model, then ran the control (one process: it
    saves importing PyTorch twice)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")))
    result = subprocess.run([sys.executable, "-c", THREAD_NAMES], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_openmp_workers_carry_the_name_of_the_thread_that_started_them(thread_names):
    """The control for the next test: Linux gives a new thread its creator's name, so a living passing-named
    thread's OpenMP workers are visible by name."""
    threads = thread_names["control"]
    if threads["torch_threads"] < 2:
        pytest.skip("PyTorch runs one thread here, so no OpenMP workers start")
    assert threads["passing"] >= 2, threads  # the thread and at least one worker


def test_loading_a_model_leaves_no_openmp_workers_behind(thread_names):
    """OpenMP keeps a pool of workers for every thread that ran parallel work; extra pools make each operator of
    a later query wait for a sleeping worker (runtime_threads.py). Once a load has returned, no passing thread and
    none of its workers (named like it) remain; the query thread is there, by its name."""
    from image_search.runtime.threads import QUERY_THREAD_NAME

    threads = thread_names["load"]
    assert threads["named"] == 1 and threads["passing"] == 0, threads
    assert threads["names"].get(QUERY_THREAD_NAME, 0) >= 1, threads


def test_an_ingest_counts_only_the_cores_it_may_run_on():
    """Under taskset (or a container's cpuset) the readers and hashing threads are one per allowed core, not per
    core of the machine."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable cores to restrict the process to one")
    code = ("from image_search.pipeline.cpu_reader import default_workers; "
            "from image_search.runtime.threads import usable_cores; print(default_workers('cpu'), usable_cores())")
    one_core = min(os.sched_getaffinity(0))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
