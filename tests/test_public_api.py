"""The front door: image_search's public API is all that the command-line tools and the server use, and the core's
own words name no command-line flag."""

from __future__ import annotations

import ast
import re
import shutil

import pytest

import image_search
from tests.conftest import REPO

FACES = sorted([*(REPO / "cli").glob("*.py"), *(REPO / "server").glob("*.py")])


def imports(path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file, at any depth (the tools import inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), [alias.name for alias in node.names]))
    return found


def test_the_faces_import_only_the_package_and_its_public_names():
    assert len(FACES) >= 8
    for path in FACES:
        for module, names in imports(path):
            where = f"{path.relative_to(REPO)} imports {module} {names}"
            if module.split(".")[0] == "image_search":
                assert module == "image_search", where  # never a submodule
                assert set(names) <= set(image_search.__all__), where  # never a submodule by name either
            if path.parent.name == "server":
                assert module.split(".")[0] != "cli", where  # the server has no part of the command-line tools


def test_the_public_names_exist():
    for name in image_search.__all__:
        assert getattr(image_search, name) is not None, name
    assert "ImageSearch" in dir(image_search)
    with pytest.raises(AttributeError):
        image_search.no_such_name  # noqa: B018
    service = image_search.ImageSearch
    for method in ("open", "ingest", "search_text", "search_image", "search_vectors", "datasets", "dataset",
                   "find_dataset", "delete", "evaluate_self_retrieval", "evaluate_categories", "model",
                   "prepare_model", "answers_text", "check_default_model_weights", "canonical_model_name", "close",
                   "find_duplicates"):
        assert callable(getattr(service, method)), method
    assert issubclass(image_search.DatasetNotFoundError, image_search.ImageSearchError)


def test_the_front_door_ingests_searches_lists_and_deletes(tmp_path, photos, monkeypatch):
    for variable in ("DB_HOST", "IMAGE_SEARCH_INDEX", "IMAGE_SEARCH_NPROBE", "IMAGE_SEARCH_EF_SEARCH"):
        monkeypatch.delenv(variable, raising=False)  # SQLite in tmp_path, whatever this machine's settings
    folder = tmp_path / "case"
    shutil.copytree(photos, folder)
    search = image_search.ImageSearch.open(data_home=tmp_path / "home", model="test-tiny", device="cpu")
    try:
        assert search.default_model == "test-tiny" and search.answers_text("test-tiny")
        assert not search.answers_text("efficientnet-lite0")
        search.check_default_model_weights()  # test-tiny has nothing to download
        report = search.ingest(folder, "case", progress=False)
        assert isinstance(report, image_search.IngestReport) and report.total == 12
        [record] = search.datasets()
        assert isinstance(record, image_search.DatasetRecord) and search.answers_text(record)
        assert search.find_dataset("case") == record == search.dataset("case") and search.find_dataset("no") is None
        by_text = search.search_text("case", "a photo", 3)
        assert len(by_text) == 3 and isinstance(by_text[0], image_search.SearchResult)
        assert search.search_image("case", folder / "photo_00003.jpg", 1)[0].path == str(folder / "photo_00003.jpg")
        with pytest.raises(image_search.ModelMismatchError):
            search.search_text("case", "a photo", 3, model="ViT-B-32:random")
        assert search.delete("case").name == "case" and search.datasets() == []
        with pytest.raises(image_search.DatasetNotFoundError):
            search.search_text("case", "a photo")
    finally:
        search.close()


def _flags_of(parser) -> set[str]:
    import argparse

    flags = set()
    for action in parser._actions:
        flags.update(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                flags |= _flags_of(subparser)
    return flags


def test_no_message_of_the_core_names_a_command_line_flag():
    """The spellings in flags live in the command line's face (image_search/command_line.py's CLI_FIXES); the rest
    of the core says what to do in words and carries a Fix for the faces (docstrings may mention the tools)."""
    from cli import cli_datasets, cli_demo, cli_duplicates, cli_evaluation, cli_preprocess, cli_search
    from evaluation import evaluate
    from server import server

    flags = set().union(*(_flags_of(tool.build_parser()) for tool in (
        cli_datasets, cli_demo, cli_duplicates, cli_evaluation, cli_preprocess, cli_search, evaluate, server)))
    flags -= {"--help"}
    assert {"--rebuild", "--model", "--device", "--follow-symlinks", "--keep", "--threshold", "--export"} <= flags
    for path in sorted((REPO / "image_search").rglob("*.py")):
        if path.name == "command_line.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                named = sorted(set(re.findall(r"--[a-z][a-z_-]*", node.value)) & flags)
                named += ["python -m"] if "python -m" in node.value else []
                assert not named, f"{path.relative_to(REPO)}:{node.lineno} names {named}: {node.value!r}"
