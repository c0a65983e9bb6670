"""Where the start of an ingest through Ray goes: python -m evaluation.profile_ray_start [--model M] [--device D]

Every ingest through --ray starts its actors, and each actor is a new process that imports torch and loads the
model before its first file. This times those steps inside one Ray actor on this machine, and a Ray Data pipeline
of one trivial actor (Ray Data's own start), so that the fixed seconds the Ray rows of benchmark_ingest carry can
be told apart.
"""

from __future__ import annotations

import argparse
import json
import time


def _stages(model_name: str, device: str, submitted: float, threads: int | None = None,
            profile_first_build: bool = False) -> dict:
    """The start-up steps' seconds in this new process; threads: PyTorch's (None: as an ingest's actor sets
    them). With them, where a build of the model spends its time (cProfile, on this thread): the first build
    (profile_first_build, which then runs on this thread rather than load_model's), or a second one."""
    started = time.time()
    stages = {"process_start": started - submitted}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now

    import torch

    lap("import_torch")
    if device.startswith("cuda"):
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
        lap("cuda_init")
    from image_search.ingest.ray_workers import cores_of_this_actor
    from image_search.models.loading import load_model

    lap("import_image_search")
    stages["threads"] = threads or cores_of_this_actor(device)  # Ray gives a worker one
    torch.set_num_threads(stages["threads"])
    first_profile = None
    if profile_first_build:
        embedder, first_profile = _build_profile(model_name, device, 40)
    else:
        embedder = load_model(model_name, device)
    lap("load_model")
    side = embedder.input_size
    pixels = torch.randint(0, 256, (256, 3, side, side), dtype=torch.uint8)
    embedder.encode_pixels(pixels)
    lap("first_batch_of_256")
    embedder.encode_pixels(pixels)
    lap("second_batch_of_256")
    result = {name: round(seconds, 3) for name, seconds in stages.items()}
    if first_profile:
        result["first_build_profile"] = first_profile
    else:
        result["second_build_profile"] = _build_profile(model_name, device)[1]
    return result


def _build_profile(model_name: str, device: str, lines: int = 25):
    """A build of the model, and the functions it spends most time in (cumulative, then by their own time), as
    pstats prints them."""
    import cProfile
    import io
    import pstats

    from image_search.models.loading import _build
    from image_search.models.registry import parse_model_name

    profiler = cProfile.Profile()
    profiler.enable()
    embedder = _build(parse_model_name(model_name), device)
    profiler.disable()
    found = []
    for order in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(lines)
        found += [line.rstrip() for line in text.getvalue().splitlines() if line.strip()][-lines - 1:]
    return embedder, found


def _outside_ray(model_name: str, device: str) -> dict:
    """The same steps in a plain new process (no Ray), on every core, with the first build profiled."""
    import os
    import subprocess
    import sys

    code = ("import json, sys, time; from evaluation.profile_ray_start import _stages; "
            f"print(json.dumps(_stages({model_name!r}, {device!r}, time.time(), {os.cpu_count()}, True)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


class _Nothing:
    def __call__(self, batch):
        return batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32:random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    import ray

    outside = _outside_ray(args.model, args.device)
    began = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="warning")
    result = {"outside_ray": outside, "ray_init": round(time.perf_counter() - began, 3)}
    gpus = 1 if args.device.startswith("cuda") else 0
    # max_calls=1: each call in a new worker process, as an ingest's actor is
    stages = ray.remote(num_gpus=gpus, num_cpus=1, max_calls=1)(_stages)
    for attempt in ("first_new_process", "second_new_process"):
        result[attempt] = ray.get(stages.remote(args.model, args.device, time.time()))
    from ray.data import ActorPoolStrategy

    began = time.perf_counter()
    ray.data.from_items([{"x": 1}]).map_batches(_Nothing, compute=ActorPoolStrategy(size=1), num_gpus=gpus,
                                                batch_size=1).take_all()
    result["ray_data_trivial_actor_pipeline"] = round(time.perf_counter() - began, 3)
    ray.shutdown()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
