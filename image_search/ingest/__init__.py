"""Ingesting a folder into a dataset: plan, embed, commit.

Re-ingesting the same folder is incremental: unchanged files (same size and modification time) keep their
vectors, new and changed files are embedded, vanished files are removed; unchanged files stored without their
facts (hashes, EXIF: datasets from before schema 3) get them, without being embedded again (backfill.py). plan.py
reads the dataset and the folder and decides what to do; embed.py turns the files to embed into vectors;
checkpoint.py saves them as they come, so that an ingest that was killed resumes where it was; commit.py builds the
next generation and makes it visible in one transaction (and recovers from an ingest that was killed); report.py
says what happened.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..config import test_batch_delay
from ..errors import InvalidInputError
from ..pipeline.scan import printable
from ..models import parse_model_name
from ..datasets.names import validate_dataset_name
from .backfill import backfill_facts
from .checkpoint import CheckpointOwner, checkpoint_writer
from .commit import commit_generation, end_journal, recover_interrupted, start_generation
from .embed import EmbedFiles, embed_locally
from .plan import Plan, check_input_folder, make_plan
from .report import IngestReport

if TYPE_CHECKING:
    from ..service import ImageSearch

__all__ = ["EmbedFiles", "IngestReport", "Plan", "check_input_folder", "embed_locally", "ingest_folder",
           "make_plan", "recover_interrupted"]


def ingest_folder(service: ImageSearch, input_dir, name: str, *, model_name: str | None = None,
                  batch_size: int | None = None, workers: int | None = None, rebuild: bool = False,
                  follow_symlinks: bool = False, progress: bool = True, verify: bool = False,
                  embed: EmbedFiles = embed_locally) -> IngestReport:
    name = validate_dataset_name(name)
    root = check_input_folder(input_dir, service.settings.allowed_roots)
    if batch_size is not None and batch_size < 1:
        raise InvalidInputError(f"Batch size {batch_size} is not valid; use a positive number.")
    requested_model = parse_model_name(model_name).name if model_name else None  # a bad name: refused at once
    started = time.perf_counter()
    with service.lock(name, "ingest"):
        plan = make_plan(service, root, name, model_name=requested_model, rebuild=rebuild,
                         follow_symlinks=follow_symlinks, verify=verify)
        report = IngestReport(dataset=name, root=root, model=plan.embedder.name, recovered=plan.recovered,
                              model_seconds=plan.model_seconds, skipped=list(plan.scan.problems),
                              symlinks_skipped=plan.scan.symlinks_skipped, reused=plan.reused,
                              to_embed=len(plan.to_embed), created=plan.existing is None,
                              recovered_images=len(plan.saved.records), notes=list(plan.saved.notes))
        if plan.repair:
            report.notes.append(f"{plan.repair.rstrip('.')}; repaired it by embedding all {len(plan.to_embed)} "
                                "files again.")
        if plan.verification is not None:
            report.notes.extend(plan.verification.lines())
            report.content_changed = list(plan.verification.changed)
        generation = start_generation(service, plan)
        # the readers open each file where the scan found it (links resolved), and refuse what replaced it since
        paths = [entry.read_path for entry in plan.to_embed]
        owner = CheckpointOwner(generation.uid, generation.base_generation, plan.embedder.name, plan.embedder.dim,
                                plan.root)
        delay = test_batch_delay()
        with checkpoint_writer(service.data_home, name, owner, service.settings.checkpoints,
                               plan.saved) as checkpoints:
            embed_started = time.perf_counter()
            for batch in embed(plan.embedder, paths, batch_size=batch_size, workers=workers, progress=progress):
                report.skipped.extend((plan.to_embed[position].path, reason) for position, reason in batch.skipped)
                report.ignored += len(batch.ignored)
                files = [plan.to_embed[position] for position in batch.positions]
                records = generation.add(batch.vectors, files, batch.facts) if files else []
                checkpoints.add(batch.vectors, records)
                if delay:
                    time.sleep(delay)
            report.embed_seconds = time.perf_counter() - embed_started
        if checkpoints.failure:
            report.notes.append(checkpoints.failure)
        refreshed = backfill_facts(plan.facts_missing, workers=workers or None, progress=progress)
        report.facts_updated = len(refreshed)
        report.checkpoints_written, report.checkpoint_seconds = checkpoints.chunks_written, checkpoints.write_seconds
        report.indexed = len(generation.added) - report.recovered_images
        report.removed = len(plan.removed_ids)
        report.total = generation.index.count
        if report.total == 0 and not plan.incremental:
            end_journal(service, plan)
            first = f" (first: {printable(report.skipped[0][0])}: {report.skipped[0][1]})" if report.skipped else ""
            raise InvalidInputError(
                f"No usable images were found in {printable(root)}: {len(report.skipped)} files could not be read"
                f"{first} and {report.ignored} are not images; nothing was saved.")
        index_changed = commit_generation(service, plan, generation, refreshed)
        report.changed = index_changed or bool(refreshed)
        report.notes.extend(generation.notes)
    if index_changed:
        service.forget_index(name)
    report.seconds = time.perf_counter() - started
    return report
