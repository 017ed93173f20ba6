"""Cohort registration: every pair of a CSV table, resumable, failure-isolated, serial or on Dask.

``graphreg batch PAIRS.csv --out DIR`` (and :func:`run_batch`) registers each row of ``PAIRS.csv``
with :func:`graphreg.register` and saves it with :meth:`graphreg.Registration.save` into
``DIR/<id>/``. The table:

===================  ========  ===========================================================
column               required  content
===================  ========  ===========================================================
``fixed``            yes       fixed image (any format :func:`graphreg.read_image` reads)
``moving``           yes       moving image
``fixed_mask``       no        fixed lung mask (computed when the cell is empty)
``moving_mask``      no        moving lung mask
``landmarks``        no        CSV ``x,y,z`` world mm on the fixed image, mapped into the
                               moving image (``landmarks_moved.csv``)
``moving_landmarks`` no        the corresponding moving landmarks (same rows): the TRE before
                               and after registration goes into the report and the summary
``id``               no        name of the result folder (letters, digits, ``._-``); default
                               ``<row number, 4 digits>_<fixed file name without extension>``
===================  ========  ===========================================================

Relative paths are relative to the CSV's folder. The table is checked before anything runs
(:class:`~graphreg.errors.InputFileError` naming the line and column); a missing image is a
failure of its pair only.

Convention:
    - Resumable: a pair whose ``DIR/<id>/report.json`` is complete (:func:`result_is_complete`)
      is skipped. Result folders appear atomically (:class:`graphreg.io.outputs.ResultDirectory`),
      so an interrupted pair leaves nothing under its final name and is run again; an incomplete
      folder left by other means is replaced.
    - Failure isolation: an exception in one pair is caught; its traceback is written to
      ``DIR/<id>.error.txt`` (removed again when the pair later succeeds) and its one-line message
      to the summary; the other pairs go on. A worker process that dies (segfault, out of memory)
      fails only the pair it was running.
    - ``DIR/summary.csv`` (one row per pair, in table order, rewritten after every pair) has the
      columns of :data:`SUMMARY_COLUMNS`; ``quality`` is a registered pair's status from the
      quality checks (``ok``, ``suspect`` or ``failed``, :mod:`graphreg.checks`; empty for methods
      without them) and ``quality_reasons`` says why.
    - Schedulers: ``"local"`` runs the pairs one after another in this process; ``"processes"``
      starts a Dask ``distributed.LocalCluster`` of ``workers`` worker processes, each registering
      with ``threads`` CPU threads, by default its share of the cores
      (:func:`graphreg.runtime.threads.resolve_threads` with ``share=workers``);
      ``"dask"`` submits to a running Dask
      scheduler at ``scheduler_address`` (its workers must see the paths and have graphreg
      installed). With CUDA and no explicit ``device``, Dask worker ``i`` (LocalCluster names its
      workers ``0 .. n - 1``) uses GPU ``i % torch.cuda.device_count()``; workers with other names
      use the current CUDA device (e.g. the one ``dask-cuda`` pinned). A script that calls
      :func:`run_batch` with ``"processes"`` needs the ``if __name__ == "__main__":`` guard (worker
      processes are spawned and import the main module).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from graphreg.errors import GraphregError, InputFileError, is_int_at_least
from graphreg.runtime.threads import resolve_threads, use_threads

#: columns a pairs table may have
PAIR_COLUMNS = ("id", "fixed", "moving", "fixed_mask", "moving_mask", "landmarks", "moving_landmarks")
_REQUIRED_COLUMNS = ("fixed", "moving")
_PATH_COLUMNS = ("fixed", "moving", "fixed_mask", "moving_mask", "landmarks", "moving_landmarks")
#: columns of ``summary.csv``
SUMMARY_COLUMNS = ("id", "status", "quality", "quality_reasons", "seconds", "tre_before_mm", "tre_after_mm",
                   "tre_after_p75_mm",
                   "folding_percent", "std_log_jacobian", "n_keypoints", "method", "device", "worker",
                   "result", "error")
#: report keys that :meth:`Registration.report` always writes
_REPORT_KEYS = ("graphreg_version", "method", "seconds_total", "batch")
SCHEDULERS = ("local", "processes", "dask")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".img", ".hdr")


@dataclass(frozen=True)
class BatchPair:
    """One row of a pairs table, paths resolved.

    Attributes:
        id: name of the result folder ``DIR/<id>``.
        line: line of the row in the CSV file (the header is line 1), for messages.
        source: the CSV file.
        fixed, moving: image paths; fixed_mask, moving_mask, landmarks, moving_landmarks: paths or None.
    """

    id: str
    line: int
    source: Path
    fixed: Path
    moving: Path
    fixed_mask: Optional[Path] = None
    moving_mask: Optional[Path] = None
    landmarks: Optional[Path] = None
    moving_landmarks: Optional[Path] = None

    def where(self, column: str) -> str:
        """``"pairs.csv line 4, column 'moving'"`` for error messages."""
        return f"{self.source.name} line {self.line}, column '{column}'"

    def inputs(self) -> dict:
        """The pair's paths as strings (None for empty cells)."""
        return {name: None if getattr(self, name) is None else str(getattr(self, name)) for name in _PATH_COLUMNS}


@dataclass
class BatchResult:
    """What :func:`run_batch` did.

    Attributes:
        rows: one summary row (dict with :data:`SUMMARY_COLUMNS`) per pair, in table order.
        summary_path: ``DIR/summary.csv``.
    """

    rows: list
    summary_path: Path
    counts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {status: sum(row["status"] == status for row in self.rows)
                       for status in ("ok", "skipped", "failed")}

    @property
    def n_failed(self) -> int:
        return self.counts["failed"]


# ---------------------------------------------------------------------- the table
def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "pair"


def read_pairs_csv(path: Union[str, os.PathLike]) -> list[BatchPair]:
    """Read and check a pairs table (see the module docstring).

    Returns:
        the pairs in table order, paths resolved against the CSV's folder.

    Raises:
        InputFileError: the file is missing or empty; a required column is missing, a column is
            unknown or repeated; a row has too many cells, an empty required cell, an invalid or
            repeated id, ``moving_landmarks`` without ``landmarks``. The message names the line
            (the header is line 1) and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"pairs: {path} not found (expected a CSV with columns fixed, moving, ...)")
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text))
    rows = [(reader.line_num, row) for row in reader]
    rows = [(line, row) for line, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise InputFileError(f"pairs: {path} is empty; expected a header line with columns fixed, moving, ...")
    header_line, header = rows[0]
    header = [name.strip() for name in header]
    for name in header:
        if name not in PAIR_COLUMNS:
            raise InputFileError(f"pairs: {path.name} line {header_line}, column '{name}': unknown column "
                                 f"(known: {', '.join(PAIR_COLUMNS)})")
        if header.count(name) > 1:
            raise InputFileError(f"pairs: {path.name} line {header_line}, column '{name}': appears twice")
    for name in _REQUIRED_COLUMNS:
        if name not in header:
            raise InputFileError(f"pairs: {path.name} line {header_line}: missing column '{name}' "
                                 f"(found: {', '.join(header)})")
    if len(rows) == 1:
        raise InputFileError(f"pairs: {path.name} has a header but no pairs")

    base = path.resolve().parent
    pairs: list[BatchPair] = []
    seen: dict[str, int] = {}
    for number, (line, cells) in enumerate(rows[1:], start=1):
        if len(cells) > len(header):
            raise InputFileError(f"pairs: {path.name} line {line}: {len(cells)} cells for {len(header)} columns")
        values = {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(header)}
        for name in _REQUIRED_COLUMNS:
            if not values[name]:
                raise InputFileError(f"pairs: {path.name} line {line}, column '{name}': empty; expected a path")
        if values.get("moving_landmarks") and not values.get("landmarks"):
            raise InputFileError(f"pairs: {path.name} line {line}, column 'moving_landmarks': given without "
                                 f"'landmarks' (the fixed landmarks it pairs with)")
        pair_id = values.get("id", "")
        if pair_id:
            if not _ID_PATTERN.match(pair_id):
                raise InputFileError(f"pairs: {path.name} line {line}, column 'id': expected letters, digits and "
                                     f"'._-' (a folder name), got {pair_id!r}")
        else:
            pair_id = f"{number:04d}_{_safe_id(_stem(values['fixed']))}"
        if pair_id in seen:
            raise InputFileError(f"pairs: {path.name} line {line}, column 'id': {pair_id!r} is also the id of "
                                 f"line {seen[pair_id]}")
        seen[pair_id] = line
        resolved = {name: (base / values[name]) if values.get(name) else None for name in _PATH_COLUMNS}
        pairs.append(BatchPair(id=pair_id, line=line, source=path, **resolved))
    return pairs


def check_pair_files(pair: BatchPair) -> None:
    """Raise :class:`InputFileError` naming the line and column when a file of ``pair`` is missing."""
    for name in _PATH_COLUMNS:
        value = getattr(pair, name)
        if value is not None and not value.exists():
            raise InputFileError(f"{pair.where(name)}: {value} not found")


# ---------------------------------------------------------------------- result folders
def read_complete_report(folder: Union[str, os.PathLike]) -> Optional[dict]:
    """The report of a finished result folder, or None when ``folder`` is not one.

    Finished means: ``report.json`` is a JSON object with the keys a batch report always has
    (``graphreg_version``, ``method``, ``seconds_total``, ``batch``), and the files it lists
    (``files``: the outputs chosen for the run) exist and are not empty.
    """
    folder = Path(folder)
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or any(key not in report for key in _REPORT_KEYS):
        return None
    for name in report.get("files", []):
        if not (folder / name).is_file() or (folder / name).stat().st_size == 0:
            return None
    return report


def result_is_complete(folder: Union[str, os.PathLike]) -> bool:
    """True when ``folder`` holds a finished batch result (see :func:`read_complete_report`)."""
    return read_complete_report(folder) is not None


def _row(pair: BatchPair, out_dir: Path, status: str, report: Optional[dict] = None, seconds: Optional[float] = None,
         error: str = "", worker: str = "") -> dict:
    report = report or {}
    jacobian = report.get("jacobian") or {}
    quality = report.get("quality") or {}
    row = {
        "id": pair.id, "status": status, "quality": quality.get("status"),
        "quality_reasons": "; ".join(quality.get("reasons") or []),
        "seconds": seconds if seconds is not None else report.get("seconds_total"),
        "tre_before_mm": report.get("tre_before_mm"), "tre_after_mm": report.get("tre_after_mm"),
        "tre_after_p75_mm": report.get("tre_after_p75_mm"),
        "folding_percent": jacobian.get("folding_percent"), "std_log_jacobian": jacobian.get("std_log_jacobian"),
        "n_keypoints": report.get("n_keypoints"), "method": report.get("method"), "device": report.get("device"),
        "worker": worker, "result": str(out_dir / pair.id) if status != "failed" else "", "error": error,
    }
    return row


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _failed(pair: BatchPair, out_dir: Path, error: BaseException, seconds: Optional[float], worker: str,
            details: Optional[str] = None) -> dict:
    from graphreg.io.atomic import atomic_write_text

    text = details or "".join(traceback.format_exception(type(error), error, error.__traceback__))
    atomic_write_text(out_dir / f"{pair.id}.error.txt",
                      f"pair {pair.id} ({pair.source} line {pair.line})\n{text}")
    return _row(pair, out_dir, "failed", seconds=seconds, error=_one_line(error), worker=worker)


# ---------------------------------------------------------------------- one pair (runs on a worker)
def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return ""


def worker_device(worker: str) -> str:
    """The device of a worker: CPU without CUDA; else GPU ``int(worker) % n_gpus`` for workers named
    by a number (Dask LocalCluster), the current CUDA device for others."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if worker.isdigit():
        return f"cuda:{int(worker) % torch.cuda.device_count()}"
    return "cuda"


def register_pair(pair: BatchPair, out_dir: Union[str, os.PathLike], method: str = "corrfield",
                  config: Optional[dict] = None, model: Optional[str] = None, device: Optional[str] = None,
                  threads: Optional[int] = None, outputs=None) -> dict:
    """Register one pair into ``out_dir/<id>`` and return its summary row; never raises for a failure
    of the pair (it is written to ``out_dir/<id>.error.txt`` and the row's ``error``).

    Args:
        config: the registration configuration as a plain mapping (as :func:`graphreg.load_config`
            accepts).
        device: ``"cpu"``, ``"cuda[:N]"`` or None (see :func:`worker_device`).
        threads: CPU threads for this pair (None: :func:`graphreg.runtime.threads.resolve_threads`); a bad
            count raises :class:`~graphreg.errors.GraphregError`.
        outputs: the outputs to write (:func:`graphreg.result.output_kinds.parse_outputs`; None: the defaults).
    """
    with use_threads(threads) as count:
        return _register_pair(pair, Path(out_dir), method, config, model, device, count, outputs)


def _register_pair(pair: BatchPair, out_dir: Path, method: str, config: Optional[dict], model: Optional[str],
                   device: Optional[str], threads: int, outputs) -> dict:
    """:func:`register_pair` with its thread count applied."""
    import numpy as np

    from graphreg.api import register
    from graphreg.io.landmarks import read_landmarks
    from graphreg.ops.metrics import landmark_errors, summarize_errors
    from graphreg.result.registration import file_checksum

    worker = _worker_name()
    start = time.perf_counter()
    try:
        check_pair_files(pair)
        landmarks = {}
        for name in ("landmarks", "moving_landmarks"):
            if getattr(pair, name) is not None:
                marks = read_landmarks(getattr(pair, name))
                if marks.space != "world":
                    raise InputFileError(f"{pair.where(name)}: expected a world-mm CSV with an 'x,y,z' header")
                landmarks[name] = marks.points
        result = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method=method, config=config,
                          device=device or worker_device(worker), model=model, threads=threads)
        extras: dict[str, Any] = {
            "batch": {"id": pair.id, "table": str(pair.source), "line": pair.line, "worker": worker},
            "inputs": pair.inputs(),
            "input_sha256": {name: file_checksum(path) for name, path in pair.inputs().items() if path},
        }
        if "moving_landmarks" in landmarks:
            fixed_mm, moving_mm = landmarks["landmarks"], landmarks["moving_landmarks"]
            before = summarize_errors(landmark_errors(fixed_mm, moving_mm))
            after = summarize_errors(landmark_errors(result.transform_points(fixed_mm), moving_mm))
            extras.update({"tre_before_mm": before["mean_mm"], "tre_before_p75_mm": before["p75_mm"],
                           "tre_after_mm": after["mean_mm"], "tre_after_p75_mm": after["p75_mm"],
                           "tre_after_max_mm": after["max_mm"], "n_landmarks": after["n_points"]})
        fixed_points = landmarks.get("landmarks")
        result.save(out_dir / pair.id, fixed_landmarks_mm=None if fixed_points is None else np.asarray(fixed_points),
                    overwrite=True, outputs=outputs, started=start, **extras)
    except Exception as error:  # noqa: BLE001 - isolation of one pair's failure is the point
        return _failed(pair, out_dir, error, time.perf_counter() - start, worker)
    (out_dir / f"{pair.id}.error.txt").unlink(missing_ok=True)
    report = json.loads((out_dir / pair.id / "report.json").read_text(encoding="utf-8"))
    return _row(pair, out_dir, "ok", report, seconds=time.perf_counter() - start, worker=worker)


# ---------------------------------------------------------------------- the batch
def write_summary(rows: Sequence[dict], path: Union[str, os.PathLike]) -> Path:
    """Write ``rows`` as CSV with the columns :data:`SUMMARY_COLUMNS` (floats rounded), atomically."""
    from graphreg.io.tables import write_csv_table

    return write_csv_table(rows, SUMMARY_COLUMNS, path, digits=4)


def _scheduler(scheduler: Optional[str], workers: int, address: Optional[str]) -> str:
    if not is_int_at_least(workers, 1):
        raise GraphregError(f"workers: expected an integer >= 1, got {workers!r}")
    if scheduler is None:
        scheduler = "dask" if address else ("processes" if workers > 1 else "local")
    if scheduler not in SCHEDULERS:
        raise GraphregError(f"scheduler: expected one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if scheduler == "dask" and not address:
        raise GraphregError("scheduler_address: scheduler 'dask' needs the address of a running Dask scheduler "
                            "(e.g. tcp://10.0.0.1:8786)")
    if address and scheduler != "dask":
        raise GraphregError(f"scheduler_address: given with scheduler {scheduler!r}; it is used only with 'dask'")
    if scheduler == "local" and workers > 1:
        raise GraphregError(f"workers: scheduler 'local' runs one pair at a time, got workers={workers}; "
                            f"use scheduler 'processes' for parallel pairs")
    return scheduler


def _local_cluster(workers: int, threads: int):
    from distributed import LocalCluster

    thread_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                        env=thread_env)


def run_batch(pairs_csv: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], method: str = "corrfield",
              config: Any = None, model: Union[str, os.PathLike, None] = None, device: Optional[str] = None,
              workers: int = 1, scheduler: Optional[str] = None, scheduler_address: Optional[str] = None,
              progress: Optional[Callable[[str], None]] = None, threads: Optional[int] = None,
              outputs=None, region: Optional[str] = None) -> BatchResult:
    """Register every pair of ``pairs_csv`` into ``out_dir`` (see the module docstring).

    Args:
        pairs_csv: the pairs table.
        out_dir: one result folder per pair, ``<id>.error.txt`` for failures, ``summary.csv``.
        method, model, device: as for :func:`graphreg.register` (``device`` None: see
            :func:`worker_device`).
        config: a :class:`~graphreg.core.config.RegistrationConfig`, YAML path or mapping; checked here,
            sent to the workers as a mapping.
        workers: parallel pairs (worker processes) for ``scheduler="processes"``.
        scheduler: ``"local"``, ``"processes"`` or ``"dask"``; None: ``"dask"`` when
            ``scheduler_address`` is given, else ``"processes"`` for ``workers > 1``, else ``"local"``.
        scheduler_address: address of a running Dask scheduler (``tcp://host:8786``).
        progress: receives one line per finished pair.
        threads: CPU threads of each pair's registration (an integer >= 1); None:
            ``$GRAPHREG_THREADS``, else for ``"processes"`` each worker's share of the cores
            (:func:`graphreg.runtime.threads.resolve_threads`), for ``"local"`` every core, for ``"dask"``
            the workers' own default.
        outputs: the outputs each pair writes (:func:`graphreg.result.output_kinds.parse_outputs`; None: the
            defaults); a finished pair is skipped whatever it holds.
        region: ``"lungs"`` or ``"body"`` for every pair, as for :func:`graphreg.register` (None:
            the config's ``region.mode``); checked before anything runs.

    Returns:
        :class:`BatchResult`; ``result.n_failed`` pairs failed (the others are done or skipped).

    Raises:
        InputFileError: a malformed table (before anything runs).
        GraphregError / ConfigError: bad arguments or configuration.
    """
    from graphreg.core.config import load_config
    from graphreg.methods.registry import method_info
    from graphreg.result.output_kinds import parse_outputs

    kinds = parse_outputs(outputs)
    scheduler = _scheduler(scheduler, workers, scheduler_address)
    if scheduler != "dask" or threads is not None:  # a remote worker's default is its own
        threads = resolve_threads(threads, share=workers if scheduler == "processes" else 1)
    method_info(method)
    pairs = read_pairs_csv(pairs_csv)
    from graphreg.api import region_config

    loaded = load_config(config)
    loaded.region = region_config(loaded, region, method)
    settings = loaded.to_dict()
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise GraphregError(f"out: {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.csv"
    task = {"out_dir": out_dir, "method": method, "config": settings,
            "model": None if model is None else str(Path(model).resolve()), "device": device, "threads": threads,
            "outputs": kinds}

    rows: dict[str, dict] = {}
    todo: list[BatchPair] = []
    for pair in pairs:
        report = read_complete_report(out_dir / pair.id)
        if report is None:
            todo.append(pair)
        elif report.get("method") != method:
            rows[pair.id] = _failed(pair, out_dir, GraphregError(
                f"out: {out_dir / pair.id} holds a {report.get('method')!r} result, not {method!r}; "
                f"use another --out"), None, "", details="method mismatch with the existing result\n")
        else:
            rows[pair.id] = _row(pair, out_dir, "skipped", report)

    def finished(row: dict) -> None:
        rows[row["id"]] = row
        write_summary([rows[p.id] for p in pairs if p.id in rows], summary_path)
        if progress:
            seconds = "" if row["seconds"] is None else f" {row['seconds']:.1f} s"
            quality = f", quality {row['quality']}" if row.get("quality") else ""
            note = row["error"] or (row["quality_reasons"] if row.get("quality") not in (None, "ok") else "")
            progress(f"[{len(rows)}/{len(pairs)}] {row['id']}: {row['status']}{seconds}{quality}"
                     + (f" ({note})" if note else ""))

    write_summary([rows[p.id] for p in pairs if p.id in rows], summary_path)
    if progress and len(todo) < len(pairs):
        progress(f"{len(pairs) - len(todo)} of {len(pairs)} pairs already done or refused; running {len(todo)}")
    if scheduler == "local":
        for pair in todo:
            finished(register_pair(pair, **task))
    elif todo:
        _run_on_dask(todo, task, scheduler, workers, scheduler_address, out_dir, finished)
    return BatchResult([rows[p.id] for p in pairs], summary_path)


def _run_on_dask(todo: list[BatchPair], task: dict, scheduler: str, workers: int, address: Optional[str],
                 out_dir: Path, finished: Callable[[dict], None]) -> None:
    """Submit one task per pair and collect the rows as they finish (a dead worker fails its pair)."""
    from graphreg.runtime.extras import require_extra

    require_extra("batch", f"scheduler {scheduler!r}")
    from distributed import Client, as_completed

    cluster = None
    if scheduler == "processes":
        cluster = _local_cluster(workers, task["threads"])
        client = Client(cluster)
    else:
        client = Client(address, timeout="60s")
    try:
        futures = {client.submit(register_pair, pair, **task, key=f"graphreg-batch-{pair.id}-{os.getpid()}",
                                 pure=False): pair for pair in todo}
        for future in as_completed(futures):
            pair = futures[future]
            try:
                row = future.result()
            except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: the pair's process died
                row = _failed(pair, out_dir, error, None, "")
            finished(row)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["BatchPair", "BatchResult", "PAIR_COLUMNS", "SCHEDULERS", "SUMMARY_COLUMNS",
           "check_pair_files", "read_complete_report", "read_pairs_csv", "register_pair", "result_is_complete",
           "run_batch", "worker_device", "write_summary"]
