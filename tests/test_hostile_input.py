"""Broken and hostile files: each is reported (or ignored) and never stops an ingest."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.common import CLI_FIXES
from image_search.ingest import ingest_folder, printable
from image_search.search import search_by_image, search_by_text
from server.server import APP_FIXES
from tests.conftest import REPO


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, side: int = 40000) -> None:
    """A tiny file that claims 1.6 billion pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side * 3 + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
                     + _png_chunk(b"IEND", b""))


@pytest.fixture
def hostile_folder(tmp_path, photos) -> Path:
    folder = tmp_path / "hostile"
    folder.mkdir()
    good = sorted(photos.iterdir())
    shutil.copy(good[0], folder / "good.jpg")
    (folder / "zero.jpg").write_bytes(b"")
    data = good[1].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("not an image at all")
    write_png_bomb(folder / "bomb.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one_pixel.png")
    gradient = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(gradient).save(folder / "sixteen_bit.png")  # uint16 -> a 16-bit greyscale PNG
    Image.open(good[2]).convert("CMYK").save(folder / "cmyk.jpg")
    Image.open(good[3]).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    rgba = Image.open(good[4]).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    frames = [Image.open(p).convert("RGB").resize((64, 48)) for p in good[5:8]]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.open(good[8]).save(folder / "as.webp")
    Image.open(good[9]).save(folder / "as.bmp")
    Image.open(good[10]).save(folder / "as.tiff")
    shutil.copy(good[11], folder / "jpeg_named.png")  # wrong extension: recognised by content
    shutil.copy(good[11], folder / "no_extension")
    return folder


EXPECTED_INDEXED = {"good.jpg", "one_pixel.png", "sixteen_bit.png", "cmyk.jpg", "palette.png", "alpha.png",
                    "animated.gif", "as.webp", "as.bmp", "as.tiff", "jpeg_named.png", "no_extension"}
EXPECTED_SKIPPED = {"zero.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not an image",
                    "bomb.png": "decompression-bomb"}


def test_every_kind_of_broken_file_is_reported_and_the_rest_indexed(sqlite_engine, hostile_folder):
    report = ingest_folder(sqlite_engine, hostile_folder, "hostile", progress=False)
    skipped = {os.path.basename(p): reason for p, reason in report.skipped}
    assert set(skipped) == set(EXPECTED_SKIPPED), skipped
    for name, words in EXPECTED_SKIPPED.items():
        assert words in skipped[name], (name, skipped[name])
    indexed = {os.path.basename(r.path) for r in search_by_text(sqlite_engine, "hostile", "anything", 100)}
    assert indexed == EXPECTED_INDEXED


def test_odd_modes_are_converted_like_a_viewer_shows_them(hostile_folder):
    from image_search.pipeline.decode import load_rgb

    sixteen = np.asarray(load_rgb(str(hostile_folder / "sixteen_bit.png")))
    assert sixteen.dtype == np.uint8 and sixteen.min() == 0 and sixteen.max() == 255  # scaled, not clipped
    alpha = load_rgb(str(hostile_folder / "alpha.png"))
    assert alpha.mode == "RGB"
    assert load_rgb(str(hostile_folder / "animated.gif")).size == (64, 48)


def test_exif_orientation_is_applied(tmp_path):
    from image_search.pipeline.decode import load_rgb

    image = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(str(tmp_path / "rotated.jpg")).size == (40, 80)


def test_symlinks_are_not_followed_by_default(sqlite_engine, tmp_path, photos):
    folder = tmp_path / "links"
    (folder / "inner").mkdir(parents=True)
    shutil.copy(sorted(photos.iterdir())[0], folder / "inner" / "real.jpg")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(sorted(photos.iterdir())[1], outside / "secret.jpg")
    os.symlink(outside, folder / "to_outside")
    os.symlink(outside / "secret.jpg", folder / "secret_link.jpg")
    os.symlink(folder, folder / "inner" / "loop")
    os.symlink(folder / "missing.jpg", folder / "dangling.jpg")
    report = ingest_folder(sqlite_engine, folder, "links", progress=False)
    assert report.total == 1 and report.symlinks_skipped == 4
    said = "Did not follow 4 symbolic links ({})."
    assert said.format("ingest with follow_symlinks=True to follow links that stay inside the folder") in report.lines()
    assert said.format("use --follow-symlinks to follow links that stay inside the folder") in report.lines(
        fixes=CLI_FIXES)
    assert said.format("the app does not follow links; copy the files they point to into the folder to include "
                       "them") in report.lines(fixes=APP_FIXES)
    followed = ingest_folder(sqlite_engine, folder, "links2", progress=False, follow_symlinks=True)
    paths = {r.path for r in search_by_text(sqlite_engine, "links2", "x", 10)}
    assert followed.total == 1 and paths == {str(folder / "inner" / "real.jpg")}  # loop ended, outside not read


def test_awkward_file_names_round_trip(engine, tmp_path, photos):
    folder = tmp_path / "names"
    folder.mkdir()
    names = ["with space.jpg", "quote'single.jpg", 'quote"double.jpg', "new\nline.jpg", "ünïcödé 写真.jpg"]
    sources = sorted(photos.iterdir())
    for name, source in zip(names, sources):
        shutil.copy(source, folder / name)
    raw = os.path.join(os.fsencode(folder), b"latin1-\xe9t\xe9.jpg")
    shutil.copy(sources[5], raw)
    report = ingest_folder(engine, folder, "names", progress=False)
    assert report.total == 6 and not report.skipped
    latin = os.fsdecode(raw)
    results = search_by_image(engine, "names", latin, 1)
    assert results[0].path == latin and os.path.exists(results[0].path)  # the exact bytes come back
    assert results[0].to_dict()["path"].endswith("latin1-\ufffdt\ufffd.jpg")  # shown readably
    for name in names:
        assert search_by_image(engine, "names", folder / name, 1)[0].path == str(folder / name)


def test_a_folder_of_50000_entries(sqlite_engine, tmp_path, photos):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(50_000):
        (folder / f"f{i:05d}.dat").touch()
    shutil.copy(sorted(photos.iterdir())[0], folder / "one.jpg")
    report = ingest_folder(sqlite_engine, folder, "many", progress=False, workers=1)
    assert report.total == 1 and report.ignored == 50_000 and not report.skipped


def test_unreadable_files_are_reported(tmp_path, photos):
    """Permission denied. Root reads everything, so as root the ingest runs without the capabilities that let it
    override file permissions (setpriv drops them from the bounding set)."""
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("running as root without setpriv (util-linux) to drop privileges")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    folder = tmp_path / "perm"
    folder.mkdir()
    shutil.copy(sorted(photos.iterdir())[0], folder / "readable.jpg")
    shutil.copy(sorted(photos.iterdir())[1], folder / "locked.jpg")
    os.chmod(folder / "locked.jpg", 0o000)
    (folder / "closed").mkdir()
    shutil.copy(sorted(photos.iterdir())[2], folder / "closed" / "inside.jpg")
    os.chmod(folder / "closed", 0o000)
    home = tmp_path / "perm-home"
    script = ("from image_search.service import ImageSearch; from image_search.config import Settings;"
              "from image_search.ingest import ingest_folder; from pathlib import Path;"
              f"e = ImageSearch(Settings(Path({str(home)!r}), 'test-tiny', 'cpu', None));"
              f"r = ingest_folder(e, {str(folder)!r}, 'perm', progress=False, workers=0);"
              "print(r.total); [print(p, '|', why) for p, why in r.skipped]")
    try:
        result = subprocess.run([*prefix, sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    finally:
        os.chmod(folder / "closed", 0o755)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "1"
    problems = "\n".join(lines[1:])
    assert "locked.jpg | permission denied" in problems
    assert "closed | cannot list folder: Permission denied" in problems


def test_long_and_empty_text_queries(sqlite_engine, photos):
    from image_search.errors import InvalidInputError

    ingest_folder(sqlite_engine, photos, "p", progress=False)
    assert len(search_by_text(sqlite_engine, "p", "x" * 10_000, 3)) == 3
    for empty in ["", "   ", "\n\t"]:
        with pytest.raises(InvalidInputError, match="empty"):
            search_by_text(sqlite_engine, "p", empty)
