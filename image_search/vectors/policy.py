"""Which kind of index a dataset of a given size is stored in, and how an IVF index is laid out for its size."""

from __future__ import annotations

import math

from .base import VectorIndex
from .kinds import AUTO, FLAT, IVF, IVF_SQ8

# Auto choice, from evaluation/benchmark_search.py (README, "Large collections"): on the 2-core machine an exact
# scan for one query took 1.7-6.6 ms at 20k vectors, 5.5-8 ms at 50k and 75 ms at 1M, while IVF stayed at 1-1.4 ms
# up to 100k with recall@10 1.000 at 20k-50k and 0.998 at 100k. At 1M, IVF holds 2 GB and a query scans ~60 MB
# (3-4 ms, and the scan pushes the text tower's weights out of the CPU cache: +2-3 ms per text query), while
# IVF-SQ8 holds 0.5 GB and scans a quarter of that (1.6-1.9 ms) at recall 0.968. So from COMPACT_FROM images, where
# full-precision vectors pass 0.5 GB, auto stores 8-bit codes. Going back to exact needs half as many images
# (hysteresis), so a dataset near the line does not change kind on every ingest; a compact or hand-picked
# approximate kind stays for as long as the dataset stays large.
APPROXIMATE_FROM = 20_000
APPROXIMATE_KIND = IVF
COMPACT_FROM = 250_000
COMPACT_KIND = IVF_SQ8

# IVF layout: about 2 * sqrt(n) lists (a power of two), trained by k-means on TRAIN_PER_LIST sampled vectors per
# list. A query scans the nprobe lists nearest to it: at least 1/SCAN_FRACTION of the lists and at least
# MIN_SCANNED vectors (cheap, and what keeps recall high on small datasets). Measured on the benchmark: recall@10
# vs exact 0.98 at 1M vectors (2048 lists, nprobe 64), more on smaller sets; 1/64 of the lists gave 0.96.
TRAIN_PER_LIST = 40
TRAIN_ITERATIONS = 10
MIN_PER_LIST = 39  # faiss' own minimum of training points per centroid
SCAN_FRACTION = 32
MIN_SCANNED = 8192


def choose_kind(count: int, requested: str = AUTO, current: str | None = None) -> str:
    if requested != AUTO:
        return requested if count > 0 else FLAT  # nothing to train on yet; the next ingest builds it
    if current not in (None, FLAT, APPROXIMATE_KIND):
        return current if count >= APPROXIMATE_FROM // 2 else FLAT
    if count >= COMPACT_FROM:
        return COMPACT_KIND
    if count >= APPROXIMATE_FROM or (current == APPROXIMATE_KIND and count >= APPROXIMATE_FROM // 2):
        return APPROXIMATE_KIND
    return FLAT


def _ideal_lists(count: int) -> float:
    return max(1.0, min(2.0 * math.sqrt(count), count / MIN_PER_LIST))


def lists_for(count: int) -> int:
    """A power of two near the ideal, never more than the training sample can support."""
    nearest = 2 ** max(0, round(math.log2(_ideal_lists(count))))
    supported = 2 ** max(0, math.floor(math.log2(max(1.0, count / MIN_PER_LIST))))
    return min(nearest, supported)


def nprobe_for(nlist: int, count: int) -> int:
    wanted = max(nlist / SCAN_FRACTION, nlist * MIN_SCANNED / max(1, count))
    return max(1, min(nlist, math.ceil(wanted)))


# A search among a share of the ids (a search filter) finds the best allowed ids among the allowed vectors of what
# it scans, so it must scan enough of them. Measured on the benchmark's 100k vectors (IVF, 512 lists, nprobe 42,
# recall@10 0.999 unfiltered), with random 50%, 10% and 1% of the ids allowed: at the same nprobe the filtered
# recall was 0.998, 0.996 and 0.977 (the lists scanned held ~4000, ~800 and ~80 allowed vectors); scanning 3 times
# the lists for 1% gave 0.997. Scanning more costs in proportion to the lists scanned, allowed or not (the scan
# streams every code of a list from memory: 10x the lists took 11 ms filtered at 10% against 3.4 ms), so an IVF
# search scans more lists only until they hold about MIN_ALLOWED_SCANNED allowed vectors (or 4k), and an HNSW
# search keeps a candidate list long enough to meet as many. At 1M (2048 lists, nprobe 64) that is no widening
# down to 1%. An HNSW search with few allowed ids scores them all instead: that is exact, and cheaper than the graph
# walk it replaces (about ef_search * M distances) once there are fewer allowed ids than that.
MIN_ALLOWED_SCANNED = 256


def filtered_nprobe(nprobe: int, lists: int, count: int, allowed: int, k: int) -> int:
    if allowed >= count:
        return nprobe
    wanted = max(MIN_ALLOWED_SCANNED, 4 * k)
    return max(nprobe, min(lists, math.ceil(wanted * lists / max(1, allowed))))


def filtered_ef_search(ef_search: int, count: int, allowed: int, k: int) -> int:
    if allowed >= count:
        return ef_search
    wanted = max(MIN_ALLOWED_SCANNED, 4 * k)
    return max(ef_search, min(count, math.ceil(wanted * count / max(1, allowed))))


def hnsw_scores_every_allowed(allowed: int, ef_search: int, neighbours: int) -> bool:
    return allowed <= ef_search * neighbours


def needs_relayout(kind: str, lists: int | None, count: int) -> bool:
    """An IVF trained for a much smaller (or larger) dataset: its lists are too long (or too short).

    Relaying out once the ideal number of lists is ~2.8x away from the current one means each rebuild follows
    an ~8x change in size, so the rebuilds of a growing dataset cost about as much as one build in total.
    """
    if kind not in (IVF, IVF_SQ8):
        return False
    ratio = _ideal_lists(count) / lists
    return ratio >= 2 ** 1.5 or ratio <= 2 ** -1.5


def fit(index: VectorIndex, requested: str = AUTO) -> VectorIndex:
    """The index this content should be stored in (`requested`: a kind, or AUTO to choose by size): `index`
    itself when it already is the right kind and layout (its nprobe retuned to its new size), else a new index of
    that kind, from the same backend, with the same ids and vectors."""
    count = index.count
    current = index.kind
    kind = choose_kind(count, requested, current)
    if kind == current and not needs_relayout(kind, index.lists, count):
        if kind in (IVF, IVF_SQ8):
            index.set_search_effort(nprobe=nprobe_for(index.lists, count))
        return index
    layout = {}
    if kind in (IVF, IVF_SQ8):
        lists = lists_for(count)
        layout = {"lists": lists, "nprobe": nprobe_for(lists, count)}
    return type(index).build(kind, index.dim, index.export, count, **layout)

