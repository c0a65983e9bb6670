"""The GPU ingest path: the JPEG header reader, the threaded reader (every position exactly once, per-file fallback to
the CPU, memory bounds, stopping), the device resize, and each device decoder's fidelity to open_clip's reference.

Without CUDA the reader runs with torchvision's CPU decoder on the CPU, so CI tests the whole path but the device
decoders themselves; the tests marked needs_cuda run those on a GPU machine (evaluation/gpu_bench.sh runs them)."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.sample_images import make_photo
from image_search.models import load_model
from image_search.pipeline import thread_reader
from image_search.pipeline.batches import embed_files
from image_search.pipeline.cpu_reader import iter_batches
from image_search.pipeline.decode import read_pixels
from image_search.pipeline.device_decoders import (DECODERS, NVIMGCODEC, TorchvisionDecoder, available_decoders,
                                                   make_decoder, nvimgcodec_module)
from image_search.pipeline.device_resize import model_pixels_on_device
from image_search.pipeline.gpu_decode import upright
from image_search.pipeline.facts import facts_from_bytes, jpeg_facts
from image_search.pipeline.jpeg_header import parse_jpeg_header
from image_search.pipeline.thread_reader import ReaderStats, ThreadReader
from tests.test_fast_ingest import reference_embeddings, reference_pixels, save_photo, varied_photos  # noqa: F401

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU; run on the GPU machine (evaluation/gpu_bench.sh)")


@pytest.fixture(scope="module")
def tiny():
    return load_model("test-tiny", "cpu")


@pytest.fixture(scope="module")
def vit():
    return load_model("ViT-B-32:random", "cpu")


@pytest.fixture
def mixed(tmp_path):
    """Paths of every kind of file a seized drive holds, and what the CPU reader makes of each."""
    paths = [save_photo(tmp_path / f"good{i}.jpg", i, 320 + 16 * i, 240, orientation=1 + i % 8) for i in range(7)]
    paths.append(save_photo(tmp_path / "progressive.jpg", 20, 300, 200, progressive=True))
    make_photo(21, 200, 150).save(tmp_path / "picture.png")
    paths.append(str(tmp_path / "picture.png"))
    make_photo(22, 200, 150).convert("L").save(tmp_path / "grey.jpg", quality=90)
    paths.append(str(tmp_path / "grey.jpg"))
    data = open(paths[0], "rb").read()
    (tmp_path / "corrupt.jpg").write_bytes(data[:600] + b"\x00" * 3000 + data[-2:])  # header, garbage, end marker
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a picture")
    (tmp_path / "notes.txt").write_text("case notes")
    paths += [str(tmp_path / name) for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "text.jpg",
                                                 "notes.txt")]
    paths.append(str(tmp_path / "vanished.jpg"))  # listed, then gone before it was read
    return paths


def read_all(paths, geometry, min_side, **options):
    """Run a ThreadReader to the end: ({position: pixels}, {position: reason}, [ignored], [facts by position])."""
    pixels, skipped, ignored, facts = {}, {}, [], {}
    for chunk in ThreadReader(paths, geometry=geometry, min_side=min_side, **options):
        rows = chunk.pixels if chunk.pixels is not None else []
        assert len(rows) == len(chunk.positions) == len(chunk.facts)
        for position, row, fact in zip(chunk.positions, rows, chunk.facts):
            assert position not in pixels, f"position {position} came back twice"
            pixels[position] = row.cpu().numpy()
            facts[position] = fact
        for position, reason in chunk.skipped:
            assert position not in skipped
            skipped[position] = reason
        ignored += chunk.ignored
    assert not set(pixels) & set(skipped) and not (set(pixels) | set(skipped)) & set(ignored)
    assert sorted([*pixels, *skipped, *ignored]) == list(range(len(paths))), "every position exactly once"
    return pixels, skipped, ignored, facts


def cpu_reader_outcome(paths, geometry, min_side):
    pixels, skipped, ignored = {}, {}, []
    for batch in iter_batches(paths, geometry=geometry, min_side=min_side, batch_size=4, workers=0):
        if batch.pixels is not None:
            pixels.update(zip(batch.positions, batch.pixels.numpy()))
        skipped.update(batch.skipped)
        ignored += batch.ignored
    return pixels, skipped, ignored


# -- the JPEG header ----------------------------------------------------------------------------------------------
def test_jpeg_header_agrees_with_pillow(varied_photos):
    for path in varied_photos:
        header = parse_jpeg_header(open(path, "rb").read())
        with Image.open(path) as image:
            assert (header.width, header.height) == image.size, path
            assert header.orientation == image.getexif().get(0x0112, 1), path
            assert header.gpu_decodable == (not image.info.get("progressive")), path


def test_jpeg_header_leaves_unusual_files_to_the_cpu(tmp_path, varied_photos):
    make_photo(1, 64, 48).convert("CMYK").save(tmp_path / "cmyk.jpg", format="JPEG")
    make_photo(1, 64, 48).convert("L").save(tmp_path / "grey.jpg", format="JPEG")
    make_photo(1, 64, 48).save(tmp_path / "two.mpo", format="MPO", save_all=True,
                               append_images=[make_photo(2, 64, 48)])
    data = open(varied_photos[0], "rb").read()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    for name in ("cmyk.jpg", "grey.jpg", "two.mpo", "truncated.jpg"):
        header = parse_jpeg_header((tmp_path / name).read_bytes())
        assert header is not None and not header.gpu_decodable, name
    make_photo(1, 64, 48).save(tmp_path / "png.jpg", format="PNG")
    for data in ((tmp_path / "png.jpg").read_bytes(), b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xe1\x00\x01garbage"):
        assert parse_jpeg_header(data) is None


# -- the threaded reader, on the CPU --------------------------------------------------------------------------------
def test_reader_returns_every_position_once_with_the_cpu_readers_outcome(mixed, tiny):
    pixels, skipped, ignored, _ = read_all(mixed, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg",
                                           threads=3, decode_batch=2)
    cpu_pixels, cpu_skipped, cpu_ignored = cpu_reader_outcome(mixed, tiny.geometry, tiny.input_size)
    assert set(pixels) == set(cpu_pixels) and set(skipped) == set(cpu_skipped) and sorted(ignored) == cpu_ignored
    assert skipped == cpu_skipped  # the same reasons, in the same words
    for position, row in pixels.items():
        assert np.abs(row.astype(float) - cpu_pixels[position]).mean() < 2.0, mixed[position]


def test_reader_without_a_device_decoder_decodes_everything_on_the_cpu(mixed, tiny):
    pixels, _, _, _ = read_all(mixed, tiny.geometry, tiny.input_size, device="cpu", decoder=None, threads=2)
    cpu_pixels, _, _ = cpu_reader_outcome(mixed, tiny.geometry, tiny.input_size)
    assert set(pixels) == set(cpu_pixels)
    assert all(np.array_equal(pixels[p], cpu_pixels[p]) for p in pixels)


class RecordingDecoder:
    """The real (CPU) torchvision decoder, which refuses the files in `refuse` as a device refuses what it does not
    support, or fails every call (`fail_calls`), and records the size of each call."""

    def __init__(self, refuse=(), fail_calls=False, delay=0.0):
        self.inner = TorchvisionDecoder("cpu")
        self.refuse = [bytes(data) for data in refuse]
        self.fail_calls = fail_calls
        self.delay = delay
        self.calls = []

    def decode(self, files):
        self.calls.append(len(files))
        time.sleep(self.delay)
        if self.fail_calls:
            raise RuntimeError("device out of memory")
        decoded = self.inner.decode(files)
        return [None if bytes(data) in self.refuse else image for data, image in zip(files, decoded)]


def use_decoder(monkeypatch, decoder):
    monkeypatch.setattr(thread_reader, "make_decoder", lambda _name, _device: decoder)


def test_files_the_device_refuses_are_decoded_on_the_cpu_from_the_bytes_read(tmp_path, tiny, monkeypatch):
    paths = [save_photo(tmp_path / f"p{i}.jpg", i, 320, 240) for i in range(5)]
    decoder = RecordingDecoder(refuse=[open(paths[2], "rb").read()])
    use_decoder(monkeypatch, decoder)
    stats = ReaderStats()
    pixels, skipped, _, _ = read_all(paths, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg",
                                     threads=2, decode_batch=8, stats=stats)
    assert sorted(pixels) == list(range(5)) and not skipped
    assert np.array_equal(pixels[2], read_pixels(paths[2], tiny.geometry, tiny.input_size))  # the CPU's pixels
    assert np.abs(pixels[0].astype(float) - reference_pixels(tiny, paths[0])).mean() < 1.0  # the device's
    assert sum(decoder.calls) == 5 and stats.counts["device refused"] == 1 and stats.counts["CPU decode"] == 1


def test_a_failed_decoding_call_sends_its_files_to_the_cpu(tmp_path, tiny, monkeypatch):
    paths = [save_photo(tmp_path / f"p{i}.jpg", i, 320, 240) for i in range(4)]
    use_decoder(monkeypatch, RecordingDecoder(fail_calls=True))
    pixels, skipped, _, _ = read_all(paths, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg",
                                     threads=2, decode_batch=2)
    assert not skipped
    for position, path in enumerate(paths):
        assert np.array_equal(pixels[position], read_pixels(path, tiny.geometry, tiny.input_size))


def test_a_decoder_that_cannot_start_leaves_everything_to_the_cpu(mixed, tiny, monkeypatch):
    def broken(_name, _device):
        raise RuntimeError("no decoder library")

    monkeypatch.setattr(thread_reader, "make_decoder", broken)
    pixels, _, _, _ = read_all(mixed, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg", threads=2)
    assert set(pixels) == set(cpu_reader_outcome(mixed, tiny.geometry, tiny.input_size)[0])


@pytest.mark.parametrize("large", [True, False])
def test_cpu_threads_decode_large_jpegs_while_the_device_queue_is_full(tmp_path, tiny, monkeypatch, large):
    """A slow device (its queue of 2 files fills at once): large pictures are decoded by reader threads meanwhile,
    small ones wait for the device."""
    paths = [save_photo(tmp_path / f"p{i}.jpg", i, 320, 240) for i in range(12)]
    decoder = RecordingDecoder(delay=0.3)
    use_decoder(monkeypatch, decoder)
    monkeypatch.setattr(thread_reader, "ASSIST_MIN_PIXELS", 320 * 240 if large else 320 * 240 + 1)
    stats = ReaderStats()
    pixels, _, _, _ = read_all(paths, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg", threads=3,
                               decode_batch=1, decoding_threads=1, stats=stats)
    assert sorted(pixels) == list(range(12))
    on_cpu = stats.counts.get("CPU decode", 0)
    assert (on_cpu >= 1) if large else (on_cpu == 0)
    assert on_cpu + stats.counts["device decode"] == 12 and sum(decoder.calls) >= 1


def test_a_decoding_call_holds_at_most_its_pixel_budget(tmp_path, tiny, monkeypatch):
    paths = [save_photo(tmp_path / f"p{i}.jpg", i, 320, 240) for i in range(7)]
    decoder = RecordingDecoder()
    use_decoder(monkeypatch, decoder)
    monkeypatch.setattr(thread_reader, "pixels_per_call", lambda _device: 2 * 320 * 240)
    pixels, _, _, _ = read_all(paths, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg", threads=2,
                               decode_batch=100, decoding_threads=1)
    assert sorted(pixels) == list(range(7)) and sum(decoder.calls) == 7 and max(decoder.calls) <= 2


def test_reader_with_one_file_in_flight_finishes(mixed, tiny):
    pixels, _, _, _ = read_all(mixed, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg", threads=3,
                               decode_batch=2, max_in_flight=1)
    assert set(pixels) == set(cpu_reader_outcome(mixed, tiny.geometry, tiny.input_size)[0])


def test_facts_come_with_their_files_from_the_bytes_read(mixed, tiny):
    pixels, _, _, facts = read_all(mixed, tiny.geometry, tiny.input_size, device="cpu", decoder="nvjpeg",
                                   threads=3, decode_batch=2, capture=True)
    for position in pixels:  # device-decoded JPEGs and CPU-decoded files (progressive, PNG, greyscale) alike
        data = open(mixed[position], "rb").read()
        assert facts[position] == facts_from_bytes(data), mixed[position]
        assert facts[position].sha256 == hashlib.sha256(data).hexdigest()


def exif_photo(path, seed, **tags):
    exif = Image.Exif()
    for tag, value in tags.get("base", {}).items():
        exif[tag] = value
    detail = exif.get_ifd(0x8769)
    for tag, value in tags.get("detail", {}).items():
        detail[tag] = value
    gps = exif.get_ifd(0x8825)
    for tag, value in tags.get("gps", {}).items():
        gps[tag] = value
    make_photo(seed, 120, 90).save(path, format="JPEG", exif=exif.tobytes())
    return open(path, "rb").read()


def test_jpeg_facts_without_pillow_equal_pillows(tmp_path):
    from PIL.TiffImagePlugin import IFDRational

    cases = [
        {},
        {"base": {0x010F: "Canon", 0x0110: "EOS R5\x00  ", 0x0112: 6},
         "detail": {0x9003: "2021:05:04 10:11:12", 0x9011: "+02:00", 0xA434: "RF24-105mm F4 L"},
         "gps": {1: "S", 2: (IFDRational(33, 1), IFDRational(51, 1), IFDRational(3117, 100)), 3: "E",
                 4: (IFDRational(151, 1), IFDRational(12, 1), IFDRational(4000, 100))}},
        {"base": {0x010F: "Apple", 0x0112: 9}, "detail": {0x9003: "0000:00:00 00:00:00"},
         "gps": {1: "N", 2: (IFDRational(91, 1), IFDRational(0, 1), IFDRational(0, 1))}},  # nonsense: left out
        {"base": {0x0110: "x" * 500}, "gps": {2: (IFDRational(1, 0), IFDRational(2, 1), IFDRational(3, 1)),
                                              4: (IFDRational(1, 1), IFDRational(2, 1), IFDRational(3, 1))}},
    ]
    for i, tags in enumerate(cases):
        data = exif_photo(tmp_path / f"e{i}.jpg", i, **tags)
        assert jpeg_facts(data, parse_jpeg_header(data)) == facts_from_bytes(data), tags
    data = exif_photo(tmp_path / "cut.jpg", 9, **cases[1])
    start, end = parse_jpeg_header(data).exif_block
    damaged = data[:start + 8] + b"\xff" * (end - start - 8) + data[end:]  # its directories overwritten
    assert jpeg_facts(damaged, parse_jpeg_header(damaged)).camera_make is None


def test_reader_stops_its_threads_when_the_caller_stops(tmp_path, tiny):
    paths = [save_photo(tmp_path / f"p{i}.jpg", i, 320, 240) for i in range(3)] * 200
    chunks = iter(ThreadReader(paths, geometry=tiny.geometry, min_side=tiny.input_size, device="cpu",
                               decoder="nvjpeg", threads=2, decode_batch=4, max_in_flight=16))
    next(chunks)
    chunks.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(t.name.startswith("image-") for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("image-")]


def test_the_reader_says_when_its_last_file_is_taken_before_its_last_pictures_arrive(tmp_path, tiny):
    """What lets a Ray actor start its next block's reader while this one drains (ingest/ray_workers.py)."""
    paths = [save_photo(tmp_path / f"p{i}.jpg", i, 320, 240) for i in range(3)] * 40
    taken = threading.Event()
    chunks = iter(ThreadReader(paths, geometry=tiny.geometry, min_side=tiny.input_size, device="cpu", decoder=None,
                               threads=1, max_in_flight=4, all_taken=taken))
    first = next(chunks)
    assert not taken.is_set()  # at most 4 files between the reader and this thread: most are still to be taken
    rest = list(chunks)
    assert taken.is_set()
    assert sorted(first.positions + [p for chunk in rest for p in chunk.positions]) == list(range(len(paths)))
    ahead = threading.Event()
    unbounded = iter(ThreadReader(paths, geometry=tiny.geometry, min_side=tiny.input_size, device="cpu", decoder=None,
                                  threads=1, all_taken=ahead))
    first = next(unbounded)
    assert ahead.wait(60)  # every file read ahead of this thread, which has not yet taken their pictures
    rest = list(unbounded)
    assert rest and sorted(first.positions + [p for chunk in rest for p in chunk.positions]) == list(range(len(paths)))
    nothing = threading.Event()
    assert list(ThreadReader([], geometry=tiny.geometry, min_side=tiny.input_size, device="cpu", decoder=None,
                             threads=1, all_taken=nothing)) == [] and nothing.is_set()
    stopped = threading.Event()
    early = iter(ThreadReader(paths, geometry=tiny.geometry, min_side=tiny.input_size, device="cpu", decoder=None,
                              threads=1, max_in_flight=4, all_taken=stopped))
    next(early)
    early.close()  # a caller that stops early frees the turn too
    assert stopped.is_set()


def test_a_transform_that_only_knows_pil_images_runs_on_the_cpu(tmp_path, tiny):
    paths = [save_photo(tmp_path / f"p{i}.jpg", i, 320, 240) for i in range(3)]

    def pil_only_geometry(image):
        if not isinstance(image, Image.Image):
            raise TypeError("expects a PIL image")
        return tiny.geometry(image)

    assert model_pixels_on_device([torch.zeros(3, 240, 320, dtype=torch.uint8)], [1], pil_only_geometry) == \
        ([], None)
    pixels, _, _, _ = read_all(paths, pil_only_geometry, tiny.input_size, device="cpu", decoder="nvjpeg", threads=2)
    assert all(np.array_equal(pixels[p], read_pixels(paths[p], pil_only_geometry, tiny.input_size)) for p in range(3))


# -- the device resize ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_resize_equals_the_models_transform_on_the_upright_tensor(vit, orientation):
    """Resizing in the stored orientation, then turning, gives torchvision's Resize + CenterCrop of the upright
    picture (to rounding), for odd and even sizes, both shapes, and pictures smaller than the model input."""
    for seed, (width, height) in enumerate([(633, 474), (474, 633), (301, 224), (150, 120), (1800, 500)]):
        image = torch.from_numpy(np.asarray(make_photo(seed, width, height)).transpose(2, 0, 1).copy())
        expected = vit.geometry(upright(image, orientation).contiguous()).int()
        done, pixels = model_pixels_on_device([image], [orientation], vit.geometry)
        assert done == [0] and pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.uint8
        difference = (pixels[0].int() - expected).abs()
        assert difference.max() <= 2 and difference.float().mean() < 0.05, (width, height)


def test_pictures_resized_together_equal_each_resized_alone(vit):
    images = [torch.from_numpy(np.asarray(make_photo(seed, 640, 480)).transpose(2, 0, 1).copy())
              for seed in range(4)]
    images.insert(2, None)  # not decoded: left for the CPU
    done, together = model_pixels_on_device(images, [6, 1, 1, 6, 6], vit.geometry)
    assert sorted(done) == [0, 1, 3, 4]
    for row, index in enumerate(done):
        assert torch.equal(together[row], model_pixels_on_device([images[index]], [[6, 1, 1, 6, 6][index]],
                                                                  vit.geometry)[1][0])


# -- the device decoders ------------------------------------------------------------------------------------------
def test_without_cuda_only_torchvisions_decoder_is_offered():
    assert available_decoders("cpu") == ["nvjpeg"]


@needs_cuda
def test_nvimgcodec_is_offered_when_installed():
    if nvimgcodec_module() is None:
        pytest.skip("nvImageCodec is not installed (pipenv install --categories gpu)")
    assert available_decoders("cuda") == ["nvjpeg", NVIMGCODEC]  # nvJPEG first: the faster whole ingest


@needs_cuda
@pytest.mark.parametrize("name", DECODERS)
def test_each_device_decoder_decodes_like_pillow(name, varied_photos):
    if name not in available_decoders("cuda"):
        pytest.skip(f"{name} does not work on this machine")
    files = [open(path, "rb").read() for path in varied_photos]
    decoded = make_decoder(name, "cuda").decode(files)
    for path, data, image in zip(varied_photos, files, decoded):
        if not parse_jpeg_header(data).gpu_decodable:
            continue
        with Image.open(path) as picture:
            expected = np.asarray(picture.convert("RGB")).transpose(2, 0, 1).astype(float)
        assert image is not None and image.is_cuda and tuple(image.shape) == expected.shape, path
        assert np.abs(image.cpu().numpy().astype(float) - expected).mean() < 3.0, path


@needs_cuda
@pytest.mark.parametrize("name", DECODERS)
def test_each_device_decoder_gives_open_clips_reference_embeddings(name, varied_photos):
    if name not in available_decoders("cuda"):
        pytest.skip(f"{name} does not work on this machine")
    embedder = load_model("ViT-B-32:random", "cuda")
    rows = {}
    for batch in embed_files(embedder, varied_photos, batch_size=4, workers=3, decode_on_device=True,
                             decoder=name):
        assert not batch.skipped and not batch.ignored
        rows.update(zip(batch.positions, batch.vectors))
    fast = np.stack([rows[i] for i in range(len(varied_photos))])
    cosines = (fast * reference_embeddings(embedder, varied_photos)).sum(axis=1)
    assert cosines.min() >= 0.99, dict(zip(varied_photos, cosines.round(4)))


@needs_cuda
@pytest.mark.parametrize("name", DECODERS)
def test_each_device_decoder_loses_no_file(name, mixed):
    if name not in available_decoders("cuda"):
        pytest.skip(f"{name} does not work on this machine")
    tiny = load_model("test-tiny", "cuda")
    pixels, skipped, ignored, _ = read_all(mixed, tiny.geometry, tiny.input_size, device="cuda", decoder=name,
                                           threads=3, decode_batch=4)
    cpu_pixels, cpu_skipped, cpu_ignored = cpu_reader_outcome(mixed, tiny.geometry, tiny.input_size)
    assert set(pixels) == set(cpu_pixels) and skipped == cpu_skipped and sorted(ignored) == cpu_ignored
    for position, row in pixels.items():
        assert np.abs(row.astype(float) - cpu_pixels[position]).mean() < 3.0, mixed[position]
