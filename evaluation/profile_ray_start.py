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


def _stages(model_name: str, device: str, submitted: float) -> dict:
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
    from image_search.models.loading import load_model

    lap("import_image_search")
    embedder = load_model(model_name, device)
    lap("load_model")
    side = embedder.input_size
    pixels = torch.randint(0, 256, (256, 3, side, side), dtype=torch.uint8)
    embedder.encode_pixels(pixels)
    lap("first_batch_of_256")
    embedder.encode_pixels(pixels)
    lap("second_batch_of_256")
    return {name: round(seconds, 3) for name, seconds in stages.items()}


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

    began = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="warning")
    result = {"ray_init": round(time.perf_counter() - began, 3)}
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
