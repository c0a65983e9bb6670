"""Which threads run PyTorch's CPU work, and how many OpenMP threads a query gets.

A query (a few texts, or one image) makes the towers a chain of small matrix products that mostly stream the
weights, so it is as fast as the memory bandwidth its threads draw: the ViT-B-32 text tower took 8 ms on two idle
cores and 12 ms on one. Two things in libgomp (the OpenMP runtime of PyTorch, which FAISS shares once PyTorch is
loaded) decide whether the second thread helps:

- Every operator's team waits for its slowest thread. On a busy machine that is a whole scheduling slice: with an
  ingest running, one query took 28 ms on one thread and 770 ms on two. So a query gets a second thread only when
  the cores were otherwise idle over the last second (BusyMeter).
- libgomp keeps a pool of worker threads for every thread that started parallel work, for as long as that thread
  lives. Once the pools hold more threads than there are cores, idle workers no longer spin between operators, and
  each of a query's ~100 operators waits for a sleeping worker to wake: the two-thread query then took 18 ms, no
  faster than one thread. So queries run on one long-lived query thread, and other parallel work in a long-lived
  process (loading a model, a server's ingest) runs on a thread that ends with it, taking its pool along.

Both kinds of thread carry a native (Linux) name, QUERY_THREAD_NAME and PASSING_THREAD_NAME, which the threads
they create inherit: libgomp's workers of a passing thread are named like it, so anyone can see in
/proc/<pid>/task/*/comm (or top -H) whose workers are alive.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

QUERY_MAX_THREADS = 2  # measured on 2 cores; on small products more threads mostly add synchronisation
QUERY_THREAD_NAME = "query"  # native thread names: at most 15 bytes (Linux)
PASSING_THREAD_NAME = "passing"

_query_thread: ThreadPoolExecutor | None = None
_query_threads = 1
_process_threads = 1
_lock = threading.Lock()


def run_query_work(work, *args):
    """work(*args) on the query thread, with one OpenMP thread per idle core (at most QUERY_MAX_THREADS)."""
    return _query_executor().submit(_with_idle_cores, work, *args).result()


def _query_executor() -> ThreadPoolExecutor:
    global _query_thread, _query_threads, _process_threads
    with _lock:
        if _query_thread is None:
            import torch

            _process_threads = torch.get_num_threads()
            _query_threads = min(_process_threads, QUERY_MAX_THREADS)
            _query_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query",
                                               initializer=name_native_thread, initargs=(QUERY_THREAD_NAME,))
            busy_meter.start()
        return _query_thread


def _with_idle_cores(work, *args):
    import torch

    threads = max(1, min(_query_threads, idle_cores()))
    restore = None
    if torch.get_num_threads() != threads:  # (the first call also lets PyTorch initialise this thread's count)
        restore = _set_this_threads_count(threads)
    started = time.monotonic()
    try:
        return work(*args)
    finally:
        busy_meter.count_query(threads * (time.monotonic() - started))
        if restore is not None:
            restore()


def _set_this_threads_count(threads: int):
    """Set the calling thread's OpenMP thread count; returns what undoes any wider effect, or None.

    torch.set_num_threads would also change the count that every thread adopts when it first runs parallel work,
    so a model load or an ingest that starts while a query runs on one thread would run on one thread too. The
    OpenMP runtime's own setting is per thread; it is reached in the libgomp that PyTorch loaded."""
    import torch

    omp_set_num_threads = _libgomp_setter()
    if omp_set_num_threads is not None:
        omp_set_num_threads(threads)
        return None
    default = _process_threads
    torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(default)


def _libgomp_setter():
    global _omp_setter
    if _omp_setter is False:
        import ctypes

        import torch

        _omp_setter = None
        library = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
        try:
            _omp_setter = ctypes.CDLL(library).omp_set_num_threads if os.path.exists(library) else None
        except (OSError, AttributeError):
            _omp_setter = None
    return _omp_setter


_omp_setter = False  # not looked up yet


def usable_cpus() -> set[int]:
    """The CPUs this process may run on: fewer than the machine has under taskset, or in a container given a
    cpuset (os.cpu_count counts them all)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    return max(1, len(usable_cpus()))


def run_in_passing_thread(work, *args, **kwargs):
    """work(*args, **kwargs) on a new thread that ends when it returns, so that its OpenMP pool ends too."""
    outcome: dict = {}

    def run() -> None:
        name_native_thread(PASSING_THREAD_NAME)
        try:
            outcome["value"] = work(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = error

    # a daemon, so that Ctrl-C while the caller waits can still end the process
    thread = threading.Thread(target=run, name=f"passing-{getattr(work, '__name__', 'work')}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def name_native_thread(name: str) -> None:
    """Give the calling thread a native name (Linux prctl PR_SET_NAME; elsewhere nothing happens). Threads it
    creates from then on start with the same name."""
    global _prctl
    if _prctl is False:
        _prctl = None
        if sys.platform.startswith("linux"):
            try:
                _prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                pass
    if _prctl is not None:
        _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


_PR_SET_NAME = 15  # linux/prctl.h
_prctl = False  # not looked up yet


# -- how busy the cores are -------------------------------------------------------------------------------------
def idle_cores() -> int:
    """How many of this process's cores had no work but the queries' over the last second (0 where unknown).

    Sustained work counts, wherever it runs (another process, or an ingest in this one); a kernel thread that
    runs for a moment does not, which a snapshot of the runnable threads could not tell apart."""
    busy = busy_meter.others_busy()
    if busy is None:
        return 0
    usable = len(busy_meter.cpus)
    return max(0, min(usable, usable - math.ceil(busy - BusyMeter.TRANSIENT)))


class BusyMeter:
    """Samples the CPU time of this process's cores (Linux /proc/stat) four times a second, on a daemon thread,
    and says how many cores' worth of it went to other work than the queries over the last second."""

    PERIOD = 0.25  # seconds between samples
    WINDOW = 1.0  # seconds looked back
    TRANSIENT = 0.5  # a core counts as busy once other work took more than half of it

    def __init__(self) -> None:
        self.cpus = usable_cpus()
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=int(self.WINDOW / self.PERIOD) + 2)
        self._query_seconds = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None


    def start(self) -> None:
        with self._lock:
            if self._thread is None and self._busy_seconds() is not None:
                self._thread = threading.Thread(target=self._sample_forever, name="busy-meter", daemon=True)
                self._thread.start()

    def count_query(self, core_seconds: float) -> None:
        with self._lock:
            self._query_seconds += core_seconds

    def others_busy(self) -> float | None:
        """Cores' worth of non-query work over the last WINDOW seconds; None before there is a WINDOW of samples."""
        now = self._sample()
        if now is None:
            return None
        with self._lock:
            old = next((s for s in self._samples if now[0] - s[0] <= self.WINDOW + self.PERIOD), None)
        if old is None or now[0] - old[0] < self.WINDOW - self.PERIOD:
            return None
        work = (now[1] - old[1]) - (now[2] - old[2])
        return max(0.0, work / (now[0] - old[0]))

    def _sample_forever(self) -> None:
        while True:
            sample = self._sample()
            if sample is not None:
                with self._lock:
                    self._samples.append(sample)
            time.sleep(self.PERIOD)

    def _sample(self) -> tuple[float, float, float] | None:
        busy = self._busy_seconds()
        if busy is None:
            return None
        with self._lock:
            return time.monotonic(), busy, self._query_seconds

    def _busy_seconds(self) -> float | None:
        """CPU seconds that this process's cores spent busy since boot (stolen by the hypervisor included)."""
        try:
            with open("/proc/stat") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return None
        ticks = 0
        for line in lines:
            name, _, values = line.partition(" ")
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values.split()[:8])
                ticks += user + nice + system + irq + softirq + steal
        return ticks / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
busy_meter = BusyMeter()
