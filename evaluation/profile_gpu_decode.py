"""Where GPU ingest time can go, stage by stage, on the photos the ingest benchmark generates:
python -m evaluation.profile_gpu_decode [--sizes 2,12,0.3] [--json FILE]

For each size, with files already in memory unless said otherwise, images/s of:
  read        reading the files from the page cache with one thread per core (read safely: as the reader does)
  facts       SHA-256 + MD5 + EXIF fields (facts.jpeg_facts), one thread per core
  hash        SHA-256 + MD5 of each file's bytes, one thread per core (what facts capture costs)
  header      jpeg_header.parse_jpeg_header in one thread (Python under the interpreter lock)
  cpu         Pillow with DCT scaling + the model's resize, one thread per core (the CPU's share)
  DECODER/B   each device decoder variant in calls of B files, one thread; x2: two threads at once, each with its
              own decoder and CUDA stream (as the reader runs them); +resize: with the turn, resize and crop
The lowest of a path's stages is that path's bound; the benchmark's profile says how busy each stage was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SECONDS = 1.5


def rate(work, items: int, seconds: float = SECONDS) -> float:
    work()
    done, started = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - started < seconds:
        work()
        done += items
    return round(done / (time.perf_counter() - started), 1)


def nvimgcodec_variants():
    from image_search.pipeline.device_decoders import nvimgcodec_module

    codec = nvimgcodec_module()
    if codec is None:
        return {}
    kinds = codec.BackendKind
    # its CUDA-only backend alone could not be created on the H200 (status 7): not measured
    return {"nvimgcodec-hw": [kinds.HW_GPU_ONLY], "nvimgcodec-hw+cuda": [kinds.HW_GPU_ONLY, kinds.GPU_ONLY]}


def make_variant(name: str, backends, device: str):
    from image_search.pipeline.device_decoders import NvImageCodecDecoder, make_decoder

    decoder = make_decoder("nvimgcodec" if backends else "nvjpeg", device)
    if backends:
        codec = decoder._codec
        decoder._decoder = codec.Decoder(device_id=decoder._index,
                                         backends=[codec.Backend(kind) for kind in backends])
    assert backends is None or isinstance(decoder, NvImageCodecDecoder)
    return decoder


def profile_size(embedder, files: list[bytes], cores: int, batches: list[int], paths: list[str]) -> dict:
    import torch

    from image_search.pipeline.decode import pixels_from_bytes, read_scanned_image
    from image_search.pipeline.facts import jpeg_facts
    from image_search.pipeline.device_resize import model_pixels_on_device
    from image_search.pipeline.jpeg_header import parse_jpeg_header

    result = {}
    with ThreadPoolExecutor(cores) as pool:
        result["read"] = rate(lambda: list(pool.map(lambda p: Path(p).read_bytes(), paths)), len(paths))
        real = [os.path.realpath(p) for p in paths]
        result["read safely"] = rate(lambda: list(pool.map(read_scanned_image, real)), len(real))
        headers_once = [parse_jpeg_header(d) for d in files]
        result["facts"] = rate(lambda: list(pool.map(jpeg_facts, files, headers_once)), len(files))

        def hashes(data):
            hashlib.sha256(data).digest()
            hashlib.md5(data).digest()
        result["hash"] = rate(lambda: list(pool.map(hashes, files)), len(files))
        result["cpu"] = rate(lambda: list(pool.map(
            lambda d: pixels_from_bytes(d, "JPEG", embedder.geometry, embedder.input_size), files)), len(files))
    result["header"] = rate(lambda: [parse_jpeg_header(d) for d in files], len(files))
    headers = [parse_jpeg_header(d) for d in files]
    orientations = [h.orientation if h else 1 for h in headers]
    variants = {"nvjpeg": None, **nvimgcodec_variants()}
    for name, backends in variants.items():
        for batch in batches:
            chunk = (files * (batch // len(files) + 1))[:batch]
            try:
                decoders = [make_variant(name, backends, embedder.device) for _ in range(2)]
            except Exception as error:  # noqa: BLE001
                result[f"{name}/{batch}"] = f"failed: {error}"[:200]
                continue
            streams = [torch.cuda.Stream() for _ in decoders]

            def decode(k=0, resize=False):
                with torch.cuda.stream(streams[k]):
                    images = decoders[k].decode(chunk)
                    if resize:
                        model_pixels_on_device(images, orientations[:1] * len(images), embedder.geometry)
                streams[k].synchronize()

            def both(resize=False):
                threads = [threading.Thread(target=decode, args=(k, resize)) for k in range(2)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            try:
                result[f"{name}/{batch}"] = rate(decode, batch)
                result[f"{name}/{batch} x2"] = rate(both, 2 * batch)
                result[f"{name}/{batch} x2 +resize"] = rate(lambda: both(True), 2 * batch)
            except Exception as error:  # noqa: BLE001
                result[f"{name}/{batch}"] = f"failed: {error}"[:200]
            del decoders
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.profile_gpu_decode", description=__doc__)
    parser.add_argument("--sizes", default="2,12,0.3")
    parser.add_argument("--distinct", type=int, default=64, help="distinct photos per size (default: 64)")
    parser.add_argument("--batches", default="128,256")
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/image-search-benchmark-photos"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evaluation.benchmark_ingest import generated_photos
    from image_search.models import load_model

    embedder = load_model("ViT-B-32:random", "cuda")
    cores = os.cpu_count() or 1
    results = {}
    for megapixels in [float(s) for s in args.sizes.split(",")]:
        photos = generated_photos(args.corpus, megapixels, args.distinct, cores)
        files = [photo.read_bytes() for photo in photos]
        results[f"{megapixels:g} MP"] = profile_size(embedder, files, cores, [int(b) for b in args.batches.split(",")],
                                                    [str(p) for p in photos])
        print(f"{megapixels:g} MP ({sum(map(len, files)) / len(files) / 1024:.0f} KB/file):", flush=True)
        for stage, value in results[f"{megapixels:g} MP"].items():
            print(f"  {stage:32} {value}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
