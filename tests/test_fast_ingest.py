"""The fast ingest path gives the embeddings of open_clip's own preprocessing, whatever the photo's size, shape or
EXIF orientation; the GPU-decoding path (run here with torchvision's CPU decoder) falls back per file; and the
ingest benchmark runs end to end. No timings are asserted: speed is measured by evaluation/benchmark_ingest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from evaluation.sample_images import make_photo
from image_search.models import load_model
from image_search.pipeline import gpu_decode
from image_search.pipeline.batches import embed_files
from image_search.pipeline.decode import read_pixels
from image_search.pipeline.encoded_jpeg import EncodedJpeg, pack, read_encoded_jpeg
from image_search.pipeline.gpu_decode import decode_batch, upright
from tests.conftest import cpu_without_bf16, fresh_cpu_model, run_tool

# (width, height, EXIF orientation, progressive): landscape and portrait phone shots, a panorama, a tall
# screenshot-like strip, a tiny image smaller than the model input, and a 12 MP photo.
PHOTOS = [
    (632, 474, 1, False),
    (1633, 1225, 6, False),  # a phone's portrait shot: stored landscape, turned by EXIF
    (1225, 1633, 1, True),
    (900, 700, 3, False),
    (700, 900, 8, False),
    (1800, 500, 2, False),
    (420, 1500, 5, False),
    (640, 480, 7, False),
    (640, 480, 4, False),
    (150, 120, 1, False),
    (4000, 3000, 6, False),
]


def save_photo(path, seed, width, height, orientation=1, progressive=False, **options):
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    make_photo(seed, width, height).save(path, format="JPEG", quality=90, exif=exif.tobytes(),
                                         progressive=progressive, **options)
    return str(path)


@pytest.fixture(scope="module")
def varied_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("varied")
    return [save_photo(folder / f"p{i:02d}_{w}x{h}_o{o}.jpg", 100 + i, w, h, o, progressive)
            for i, (w, h, o, progressive) in enumerate(PHOTOS)]


def upright_image(path) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def reference_embeddings(embedder, paths) -> np.ndarray:
    """open_clip's own transform on the full-size upright picture, one image at a time."""
    vectors = []
    with torch.inference_mode():
        for path in paths:
            pixels = embedder.reference_preprocess(upright_image(path)).unsqueeze(0)
            features = embedder.model.encode_image(pixels.to(embedder.device, embedder.dtype))
            vectors.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()[0])
    return np.stack(vectors)


def reference_pixels(embedder, path) -> np.ndarray:
    """The reference transform's output as 0..255 intensities (undoing its normalisation)."""
    tensor = embedder.reference_preprocess(upright_image(path)).numpy().astype(np.float64)
    mean, std = np.array(embedder.mean).reshape(3, 1, 1), np.array(embedder.std).reshape(3, 1, 1)
    return (tensor * std + mean) * 255.0


def fast_embeddings(embedder, paths, **options) -> np.ndarray:
    rows = {}
    for batch in embed_files(embedder, paths, workers=0, batch_size=4, **options):
        assert not batch.skipped and not batch.ignored
        rows.update(zip(batch.positions, batch.vectors))
    return np.stack([rows[i] for i in range(len(paths))])


@pytest.fixture(scope="module")
def tiny():
    return load_model("test-tiny", "cpu")


@pytest.fixture(scope="module")
def vit():
    # Random weights, but unlike test-tiny they tell a photo from its mirror image (cosine ~0.98), so a cosine
    # of 0.99 catches wrong orientation or cropping.
    return load_model("ViT-B-32:random", "cpu")


def test_fast_pixels_match_the_reference_transform(vit, varied_photos):
    """Reduced-size JPEG decoding + the model's resize gives nearly the reference's pixels (a mirror image or a
    90-degree turn would differ by tens of intensity levels)."""
    for path in varied_photos:
        fast = read_pixels(path, vit.geometry, vit.input_size).astype(np.float64)
        reference = reference_pixels(vit, path)
        assert fast.shape == reference.shape == (3, 224, 224)
        assert np.abs(fast - reference).mean() < 4.0, path
        assert np.abs(fast - reference[:, :, ::-1]).mean() > 10.0, path  # the check can tell a mirror image


def test_resize_crop_in_one_step_equals_open_clip_geometry(vit):
    """Resampling only the centre crop gives the two-step Resize + CenterCrop result (to rounding)."""
    from torchvision.transforms import Compose, Resize

    from image_search.pipeline.decode import resize_crop_plan, resize_and_crop

    plan = resize_crop_plan(vit.geometry)
    assert plan == (224, 224, Image.BICUBIC)
    for seed, (width, height) in enumerate([(224, 224), (225, 224), (300, 224), (224, 300), (633, 474),
                                            (1800, 500), (421, 1500), (409, 307)]):
        image = make_photo(seed, width, height)
        two_steps = np.asarray(vit.geometry(image)).astype(int)
        one_step = np.asarray(resize_and_crop(image, *plan)).astype(int)
        assert one_step.shape == two_steps.shape == (224, 224, 3)
        difference = np.abs(one_step - two_steps)
        assert difference.max() <= 2 and difference.mean() < 0.05, (width, height)
    assert resize_crop_plan(Compose([Resize((224, 224))])) is None  # anything else runs the transform itself


@pytest.mark.parametrize("model", ["tiny", "vit"])
def test_fast_embeddings_match_open_clip_reference(request, model, varied_photos):
    embedder = request.getfixturevalue(model)
    fast = fast_embeddings(embedder, varied_photos)
    reference = reference_embeddings(embedder, varied_photos)
    cosines = (fast * reference).sum(axis=1)
    assert cosines.min() >= 0.99, dict(zip(varied_photos, cosines.round(4)))


def test_gpu_decoding_path_matches_reference_on_cpu(vit, varied_photos):
    """The device-decoding path (threaded reader, torchvision's decoder, tensor resize) gives the reference
    embeddings too."""
    on_device = fast_embeddings(vit, varied_photos, decode_on_device=True)
    reference = reference_embeddings(vit, varied_photos)
    assert (on_device * reference).sum(axis=1).min() >= 0.99


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_tensors_like_pil_exif_transpose(orientation):
    array = np.random.default_rng(orientation).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image)).transpose(2, 0, 1)
    turned = upright(torch.from_numpy(array.transpose(2, 0, 1).copy()), orientation).numpy()
    assert np.array_equal(turned, expected)


def test_read_encoded_jpeg_leaves_unusual_files_to_the_cpu(tmp_path, varied_photos):
    baseline = read_encoded_jpeg(varied_photos[1])
    assert baseline is not None and baseline.orientation == 6 and baseline.pixels == 1633 * 1225
    progressive = varied_photos[2]
    assert read_encoded_jpeg(progressive) is None
    make_photo(1, 64, 48).convert("CMYK").save(tmp_path / "cmyk.jpg", format="JPEG")
    make_photo(1, 64, 48).convert("L").save(tmp_path / "grey.jpg", format="JPEG")
    make_photo(1, 64, 48).save(tmp_path / "png.jpg", format="PNG")
    data = open(varied_photos[0], "rb").read()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("cmyk.jpg", "grey.jpg", "png.jpg", "truncated.jpg", "empty.jpg", "missing.jpg"):
        assert read_encoded_jpeg(str(tmp_path / name)) is None, name


def _encoded(path) -> EncodedJpeg:
    data = np.fromfile(path, dtype=np.uint8)
    return EncodedJpeg(data, 1, 1)


def test_device_decoding_falls_back_to_the_cpu_per_file(tmp_path, tiny, monkeypatch):
    good = save_photo(tmp_path / "good.jpg", 1, 320, 240)
    refused = save_photo(tmp_path / "refused.jpg", 2, 320, 240)
    data = open(good, "rb").read()
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(data[:200] + b"\x00" * 300 + data[-2:])  # a JPEG's header and end, garbage between
    paths = [good, str(corrupt), refused]
    encoded = pack([(i, _encoded(p)) for i, p in enumerate(paths)])

    # The device refuses one valid file outright (as nvJPEG does with what it does not support).
    real_decode = gpu_decode._decode_jpegs
    calls = []

    def flaky_decode(files, device):
        calls.append(len(files))
        if any(torch.equal(f, encoded.file_bytes(2)) for f in files):
            raise RuntimeError("nvjpeg: unsupported")
        return real_decode(files, device)

    monkeypatch.setattr(gpu_decode, "_decode_jpegs", flaky_decode)
    result = decode_batch(encoded, paths, geometry=tiny.geometry, min_side=tiny.input_size, device="cpu")
    assert calls == [3, 1, 1, 1]  # the whole batch once, then each file on its own
    assert result.positions == [0, 2]  # the refused file was decoded on the CPU instead
    assert [p for p, _ in result.skipped] == [1] and "cannot decode" in result.skipped[0][1]
    assert result.cpu_fallbacks == 2
    cpu_pixels = torch.from_numpy(read_pixels(refused, tiny.geometry, tiny.input_size))
    assert torch.equal(result.pixels[1], cpu_pixels)
    device_pixels = result.pixels[0].double().numpy()
    assert np.abs(device_pixels - reference_pixels(tiny, good)).mean() < 1.0  # full-size decode, tensor resize


def test_device_decoding_falls_back_when_the_transform_only_knows_pil(tmp_path, tiny):
    path = save_photo(tmp_path / "photo.jpg", 3, 320, 240)

    def pil_only_geometry(image):
        if not isinstance(image, Image.Image):
            raise TypeError("expects a PIL image")
        return tiny.geometry(image)

    encoded = pack([(0, _encoded(path))])
    result = decode_batch(encoded, [path], geometry=pil_only_geometry, min_side=tiny.input_size, device="cpu")
    assert result.positions == [0] and result.cpu_fallbacks == 1 and not result.skipped


def test_device_decoding_bounds_memory_per_call(monkeypatch):
    monkeypatch.setattr(gpu_decode, "MAX_PIXELS_PER_CALL", 100)
    assert gpu_decode._chunks([60, 30, 20, 150, 10]) == [[0, 1], [2], [3], [4]]


def test_ingest_with_device_decoding_matches_cpu_ingest(engine, mixed_folder, tmp_path, monkeypatch):
    """The whole ingest with GPU decoding switched on (CPU decoder here): same files kept, same reasons."""
    from image_search.ingest import ingest_folder

    folder = tmp_path / "with-orientation"
    shutil.copytree(mixed_folder, folder)
    save_photo(folder / "turned.jpg", 9, 400, 300, orientation=6)
    save_photo(folder / "progressive.jpg", 10, 400, 300, progressive=True)
    plain = ingest_folder(engine, folder, "plain", progress=False)
    monkeypatch.setenv("IMAGE_SEARCH_GPU_DECODE", "1")
    paths = [entry for entry in sorted(folder.rglob("*")) if entry.is_file()]
    vectors_cpu = {}
    for batch in embed_files(engine.model("test-tiny"), [str(p) for p in paths], workers=0):
        vectors_cpu.update((str(paths[i]), v) for i, v in zip(batch.positions, batch.vectors))
    vectors_device = {}
    skipped_device = []
    for batch in embed_files(engine.model("test-tiny"), [str(p) for p in paths], workers=2,
                             decode_on_device=True, batch_size=3):
        vectors_device.update((str(paths[i]), v) for i, v in zip(batch.positions, batch.vectors))
        skipped_device += [str(paths[i]) for i, _ in batch.skipped]
    assert set(vectors_device) == set(vectors_cpu) and len(vectors_cpu) == plain.indexed == 10
    assert sorted(skipped_device) == sorted(p for p, _ in plain.skipped)
    for path, vector in vectors_cpu.items():
        assert float(vector @ vectors_device[path]) >= 0.99


def test_benchmark_runs_end_to_end(tmp_path):
    output = tmp_path / "bench.json"
    done = run_tool("evaluation.benchmark_ingest", "--count", 4, "--sizes", "0.3", "--model", "test-tiny",
                    "--device", "cpu", "--naive-count", 2, "--model-seconds", 0.2, "--corpus", tmp_path / "corpus",
                    "--json", output, env=_tool_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "d/min(a,b)" in done.stdout and "Machine:" in done.stdout
    result = json.loads(output.read_text())
    assert set(result) >= {"machine", "settings", "results"}
    assert {"cpu", "cores", "gpus"} <= set(result["machine"])
    assert result["settings"]["model"] == "test-tiny" and result["settings"]["device"] == "cpu"
    (row,) = result["results"]
    for key in ("model", "decode_only", "naive", "ingest"):
        assert row[key] > 0, key
    assert row["images"] == 4 and row["label"] == "0.3 MP" and row["skipped"] == 0
    assert row["ingest_vs_bound"] == pytest.approx(row["ingest"] / min(row["model"], row["decode_only"]), rel=0.01)
    assert row["ingest_vs_naive"] == pytest.approx(row["ingest"] / row["naive"], rel=0.01)
    assert len(list((tmp_path / "corpus" / "photos-0.3mp").glob("*.jpg"))) == 4  # cached for the next run


def test_benchmark_memory_mode(tmp_path):
    output = tmp_path / "memory.json"
    done = run_tool("evaluation.benchmark_ingest", "--memory", "--memory-counts", "3,6", "--memory-size", 0.05,
                    "--model", "test-tiny", "--device", "cpu", "--workers", 1, "--corpus", tmp_path / "corpus",
                    "--json", output, env=_tool_env(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert [r["indexed"] for r in result["results"]] == [3, 6]
    assert all(r["peak_rss_mb"] > 50 and r["peak_worker_rss_mb"] > 0 for r in result["results"])
    assert "Peak RSS of the ingesting process grew by" in result["summary"]


def test_benchmark_refuses_bad_sizes(tmp_path):
    done = run_tool("evaluation.benchmark_ingest", "--sizes", "two", env=_tool_env(tmp_path))
    assert done.returncode == 2 and "not a comma-separated list of numbers" in done.stderr


def _tool_env(tmp_path) -> dict:
    import os

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "IMAGE_SEARCH_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    return env


# -- CPU precision ----------------------------------------------------------------------------------------------
def _native_bf16() -> bool:
    from image_search.models.cpu.tower_forms import cpu_support

    return cpu_support().native_bf16


@pytest.mark.skipif(not _native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX), so its image tower "
                    "never runs in bf16 unasked; test_forced_bf16_without_bf16_support_runs_unpacked_and_stays_"
                    "within_cosine covers the fallback")
def test_bf16_image_tower_stays_within_cosine_of_fp32_on_photos(monkeypatch, varied_photos):
    fp32 = fresh_cpu_model("ViT-B-32:random", monkeypatch, "fp32")
    bf16 = fresh_cpu_model("ViT-B-32:random", monkeypatch, "bf16")
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert next(bf16.model.visual.parameters()).dtype == torch.bfloat16
    pixels = torch.from_numpy(np.stack([read_pixels(p, fp32.geometry, fp32.input_size) for p in varied_photos]))
    cosines = (bf16.encode_pixels(pixels) * fp32.encode_pixels(pixels)).sum(axis=1)
    assert cosines.min() >= 0.99


def test_the_cpu_precision_setting_takes_its_three_values_and_defaults_to_auto(monkeypatch):
    from image_search import config

    for raw, read in (("", "auto"), (" BF16 ", "bf16"), ("fp32", "fp32"), ("auto", "auto"), ("fp16", "auto")):
        monkeypatch.setenv("IMAGE_SEARCH_CPU_PRECISION", raw)
        assert config.cpu_precision_setting() == read, raw
    monkeypatch.delenv("IMAGE_SEARCH_CPU_PRECISION")
    assert config.cpu_precision_setting() == "auto"


def test_bf16_is_refused_when_probe_embeddings_drift(monkeypatch, caplog):
    from image_search.models.cpu import tower_forms

    monkeypatch.setattr(tower_forms, "PROBE_MIN_COSINE", 1.01)  # no model can pass: must fall back to fp32
    embedder = fresh_cpu_model("test-tiny", monkeypatch, "bf16")
    assert embedder.dtype == torch.float32
    assert next(embedder.model.visual.parameters()).dtype == torch.float32
    assert "differ from fp32" in caplog.text and embedder.image_form == embedder.text_form == "fp32"
    assert embedder.encode_pixels(tower_forms.probe_pixels(embedder.input_size)).dtype == np.float32


def test_auto_precision_follows_the_cpu(monkeypatch):
    from image_search.models.cpu import tower_forms

    native = fresh_cpu_model("test-tiny", monkeypatch, "auto")  # this CPU as it is
    assert native.dtype == (torch.bfloat16 if tower_forms.cpu_has_native_bf16() else torch.float32)
    monkeypatch.setattr(tower_forms, "cpu_has_native_bf16", lambda: False)
    assert fresh_cpu_model("test-tiny", monkeypatch, "auto").dtype == torch.float32
    monkeypatch.setattr(tower_forms, "cpu_has_native_bf16", lambda: True)
    assert fresh_cpu_model("test-tiny", monkeypatch, "auto").dtype == torch.bfloat16


def _cosines(embedder, reference, varied_photos, texts=("a dog", "red car at night", "x")):
    pixels = torch.from_numpy(np.stack([read_pixels(p, embedder.geometry, embedder.input_size)
                                        for p in varied_photos]))
    images = (embedder.encode_pixels(pixels) * reference.encode_pixels(pixels)).sum(axis=1)
    return images, (embedder.encode_texts(list(texts)) * reference.encode_texts(list(texts))).sum(axis=1)


def test_forced_bf16_without_bf16_support_runs_unpacked_and_stays_within_cosine(monkeypatch, caplog,
                                                                                  varied_photos):
    """On an AVX2-only CPU, IMAGE_SEARCH_CPU_PRECISION=bf16 gives bf16 towers with unpacked weights, without first
    trying the packing that PyTorch refuses there, and they still embed like fp32."""
    from image_search.models import build_reference_model

    cpu_without_bf16(monkeypatch)
    bf16 = fresh_cpu_model("test-tiny", monkeypatch, "bf16")
    assert (bf16.image_form, bf16.text_form) == ("bf16", "bf16") and bf16.dtype == torch.bfloat16
    assert "failed" not in caplog.text
    assert next(bf16.model.visual.parameters()).dtype == torch.bfloat16
    assert type(bf16.model.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    images, texts = _cosines(bf16, build_reference_model("test-tiny", "cpu"), varied_photos)
    assert images.min() >= 0.99 and texts.min() >= 0.99, (images, texts)


def test_auto_precision_without_bf16_support_is_fp32_and_embeds(monkeypatch, caplog, varied_photos):
    from image_search.models import build_reference_model
    from image_search.models.cpu.packed_weights import packing_available

    cpu_without_bf16(monkeypatch)
    auto = fresh_cpu_model("test-tiny", monkeypatch, "auto")
    form = "fp32, packed" if packing_available() else "fp32"
    assert (auto.image_form, auto.text_form) == (form, form) and auto.dtype == torch.float32
    assert "failed" not in caplog.text
    images, texts = _cosines(auto, build_reference_model("test-tiny", "cpu"), varied_photos)
    assert images.min() >= 0.9999 and texts.min() >= 0.9999, (images, texts)


def test_small_reader_batches_are_regrouped_for_the_model(tiny, photos, monkeypatch):
    from image_search.pipeline import batches

    monkeypatch.setattr(batches, "reader_batch_size", lambda _embedder, _size: 2)  # as on a GPU
    paths = [str(p) for p in sorted(photos.iterdir())]
    batches = list(embed_files(tiny, paths, workers=0, batch_size=5, decode_on_device=False))
    assert [len(b.positions) for b in batches] == [6, 6]
    assert [p for b in batches for p in b.positions] == list(range(12))
    reference = fast_embeddings(tiny, paths)
    assert (np.concatenate([b.vectors for b in batches]) * reference).sum(axis=1).min() >= 0.99


def test_gpu_decoding_is_on_by_default_and_can_be_turned_off(monkeypatch):
    from image_search.config import device_decode_requested

    monkeypatch.delenv("IMAGE_SEARCH_GPU_DECODE", raising=False)
    assert device_decode_requested()
    for off in ("0", "false", "off", "no"):
        monkeypatch.setenv("IMAGE_SEARCH_GPU_DECODE", off)
        assert not device_decode_requested()


def test_gpu_decoding_can_be_turned_off_in_dotenv(tmp_path):
    """The setting is read like every other one: a .env in the working directory counts, as .env.example says."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / ".env").write_text("IMAGE_SEARCH_GPU_DECODE=0\n")
    env = {key: value for key, value in os.environ.items() if key != "IMAGE_SEARCH_GPU_DECODE"}
    env["PYTHONPATH"] = str(REPO)
    answer = subprocess.run([sys.executable, "-c", "from image_search.config import device_decode_requested; "
                             "print(device_decode_requested())"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert answer.stdout.strip() == "False", answer.stderr
