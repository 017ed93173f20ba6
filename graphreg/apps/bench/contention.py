"""``graphreg bench contention``: registration time on a shared host, default threads against fixed counts.

Every run is a fresh ``graphreg register`` process on one pair (as a user runs it), timed from
start to exit (``wall_s``) and by its own ``report.json`` (``pipeline_s``: reading to field, no
writing). Three scenarios:

- ``alone``: one registration.
- ``pair``: two registrations of the same setting started at once (each run's time counts).
- ``busy``: one registration beside a process with two busy threads (:data:`BURNER`, started
  before the registration and stopped after it; it stops itself after ``timeout_s`` regardless).

Settings: ``default`` (no ``--threads``; ``GRAPHREG_THREADS``, ``OMP_NUM_THREADS``,
``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` removed from the environment), an integer ``N``
(``--threads N``), or ``spin`` (the default thread count with idle OpenMP threads spinning as
libgomp does when nothing is set, ``GOMP_SPINCOUNT=300000``: graphreg before ``docs/threads.md``).
Each repeat runs every scenario, and within it every setting, so settings are compared close in
time; the order of the settings rotates from one repeat to the next, so that a load rising or
falling during the benchmark does not favour the setting that runs first. The table gives medians
over the repeats.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from graphreg.errors import GraphregError
from graphreg.runtime.threads import ENV_VAR, available_cores, parse_threads

SCENARIOS = ("alone", "pair", "busy")
SCENARIO_TITLES = {"alone": "alone", "pair": "two at once", "busy": "beside a busy 2-thread process"}
DEFAULT_SETTINGS = ("default", "1", "2")
#: libgomp's spin count when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set
LIBGOMP_DEFAULT_SPIN = "300000"
#: the variables a ``default`` run must not inherit
_THREAD_ENV = (ENV_VAR, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY",
               "GOMP_SPINCOUNT")
#: a process with two threads hashing 1 MiB buffers (hashlib releases the GIL) until killed or argv[1] s
BURNER = ("import hashlib, sys, threading, time\n"
          "end = time.monotonic() + float(sys.argv[1])\n"
          "data = bytes(1 << 20)\n"
          "def spin():\n"
          "    while time.monotonic() < end:\n"
          "        hashlib.sha256(data).digest()\n"
          "workers = [threading.Thread(target=spin) for _ in range(2)]\n"
          "[w.start() for w in workers]\n"
          "[w.join() for w in workers]\n")
#: the pair folder's files (the layout of assets/demo and the generated benchmark pairs)
PAIR_FILES = {"fixed": "fixed.nii.gz", "moving": "moving.nii.gz", "fixed_mask": "fixed_mask.nii.gz",
              "moving_mask": "moving_mask.nii.gz"}


def check_settings(settings: Sequence[str]) -> list[str]:
    """``settings`` checked: each ``"default"``, ``"spin"`` or an integer >= 1 (as text).

    Raises:
        GraphregError: ``"settings: expected 'default', 'spin' or an integer >= 1, got 'x'"``.
    """
    checked = []
    for setting in settings:
        if setting not in ("default", "spin"):
            try:
                setting = str(parse_threads(setting))
            except GraphregError:
                raise GraphregError(f"settings: expected 'default', 'spin' or an integer >= 1, got {setting!r}") \
                    from None
        checked.append(setting)
    if not checked:
        raise GraphregError("settings: expected at least one setting, got none")
    return checked


def register_command(pair_dir: Path, setting: str, out: Path, config: Optional[Path] = None) -> tuple[list, dict]:
    """The argv and environment of one ``graphreg register`` run of ``setting``."""
    argv = [sys.executable, "-m", "graphreg.apps.cli", "register", str(pair_dir / PAIR_FILES["fixed"]),
            str(pair_dir / PAIR_FILES["moving"]), "--fixed-mask", str(pair_dir / PAIR_FILES["fixed_mask"]),
            "--moving-mask", str(pair_dir / PAIR_FILES["moving_mask"]), "--out", str(out), "--overwrite",
            "--device", "cpu"]
    if config is not None:
        argv += ["--config", str(config)]
    env = {key: value for key, value in os.environ.items() if key not in _THREAD_ENV}
    if setting == "spin":
        env["GOMP_SPINCOUNT"] = LIBGOMP_DEFAULT_SPIN
    elif setting != "default":
        argv += ["--threads", setting]
    return argv, env


def _run_together(commands: Sequence[tuple[list, dict, Path]], timeout_s: float) -> list[dict]:
    """Start every command at once; wall seconds, exit status and the report's pipeline seconds of each."""
    started = []
    try:
        for argv, env, out in commands:
            started.append((subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                             encoding="utf-8", errors="replace"), time.perf_counter(), out))
        with ThreadPoolExecutor(max_workers=len(started)) as pool:  # each process's own end time
            return list(pool.map(lambda job: _wait(*job, timeout_s), started))
    finally:  # an interrupted benchmark leaves no registration running
        for process, _, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait(process: subprocess.Popen, start: float, out: Path, timeout_s: float) -> dict:
    """The result of one started registration process (see :func:`_run_together`)."""
    import json

    try:
        _, stderr = process.communicate(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"status": "failed", "error": f"time-out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - start
    if process.returncode != 0:
        tail = " ".join(stderr.strip().splitlines()[-1:])
        return {"status": "failed", "error": f"exit {process.returncode}: {tail}", "wall_s": wall}
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"status": "ok", "wall_s": wall, "pipeline_s": report.get("seconds_total"),
            "threads": report.get("threads"), "openmp_wait_policy": report.get("openmp_wait_policy"),
            "field_sha256": report.get("field_sha256")}


def run_scenario(scenario: str, setting: str, pair_dir: Path, work: Path, config: Optional[Path] = None,
                 timeout_s: float = 600.0) -> list[dict]:
    """One repeat of ``scenario`` with ``setting``: one result per registration process."""
    copies = 2 if scenario == "pair" else 1
    commands = []
    for index in range(copies):
        out = work / f"{scenario}_{setting}_{index}"
        argv, env = register_command(pair_dir, setting, out, config)
        commands.append((argv, env, out))
    burner = None
    if scenario == "busy":
        burner = subprocess.Popen([sys.executable, "-c", BURNER, str(timeout_s)])
        time.sleep(0.5)  # both of its threads are running
    try:
        load = os.getloadavg()[0]
        results = _run_together(commands, timeout_s)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return [dict(result, scenario=scenario, setting=setting, load_1min=load) for result in results]


def summarize_runs(runs: Sequence[dict], settings: Sequence[str]) -> dict:
    """Medians per scenario and setting, and the default's ratio to the best fixed thread count.

    Returns:
        ``{scenario: {"median_wall_s": {setting: s}, "median_pipeline_s": {...}, "n": {...},
        "default_vs_best_fixed_wall": ratio or None, "default_vs_best_fixed_pipeline": ...}}``.
    """
    summary = {}
    fixed = [s for s in settings if s.isdigit()]
    for scenario in SCENARIOS:
        rows = [r for r in runs if r["scenario"] == scenario and r["status"] == "ok"]
        if not rows:
            continue
        entry = {"median_wall_s": {}, "median_pipeline_s": {}, "n": {}}
        for setting in settings:
            mine = [r for r in rows if r["setting"] == setting]
            entry["n"][setting] = len(mine)
            for key in ("wall_s", "pipeline_s"):
                values = [r[key] for r in mine if r.get(key) is not None]
                entry[f"median_{key}"][setting] = float(np.median(values)) if values else None
        for key in ("wall", "pipeline"):
            medians = entry[f"median_{key}_s"]
            best = [medians[s] for s in fixed if medians.get(s) is not None]
            default = medians.get("default")
            entry[f"default_vs_best_fixed_{key}"] = default / min(best) if best and default is not None else None
        summary[scenario] = entry
    return summary


def format_contention(document: dict) -> str:
    """The table of medians: one row per scenario, ``wall s (pipeline s)`` per setting, the ratio."""
    settings = document["settings"]
    head = ["scenario"] + [("--threads " + s) if s.isdigit() else s for s in settings] + ["default/best fixed"]
    rows = [head]
    for scenario, entry in document["summary"].items():
        cells = [SCENARIO_TITLES[scenario]]
        for setting in settings:
            wall, pipe = entry["median_wall_s"][setting], entry["median_pipeline_s"][setting]
            cells.append("-" if wall is None else f"{wall:.1f} ({pipe:.1f})" if pipe is not None else f"{wall:.1f}")
        ratio_wall, ratio_pipe = entry["default_vs_best_fixed_wall"], entry["default_vs_best_fixed_pipeline"]
        cells.append("-" if ratio_wall is None else f"{ratio_wall:.2f} ({ratio_pipe:.2f})")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"median seconds, wall of the process (pipeline), {document['repeats']} repeat(s); "
             f"{document['cores']} cores; load average {document['load_before'][0]:.1f} before, "
             f"{document['load_after'][0]:.1f} after"]
    lines += ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                        enumerate(zip(row, widths))) for row in rows]
    failed = [r for r in document["runs"] if r["status"] != "ok"]
    if failed:
        lines.append(f"{len(failed)} run(s) failed, e.g. {failed[0]['scenario']} {failed[0]['setting']}: "
                     f"{failed[0]['error']}")
    return "\n".join(lines)


def run_contention(pair_dir: Path, config: Optional[Path] = None, settings: Sequence[str] = DEFAULT_SETTINGS,
                   scenarios: Sequence[str] = SCENARIOS, repeats: int = 3, timeout_s: float = 600.0,
                   progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the contention benchmark (see the module docstring); returns the JSON-ready document.

    Raises:
        GraphregError: a missing pair file, an unknown scenario or setting, ``repeats`` < 1.
    """
    pair_dir = Path(pair_dir)
    for name in PAIR_FILES.values():
        if not (pair_dir / name).is_file():
            raise GraphregError(f"pair: expected {name} in {pair_dir} (files {', '.join(PAIR_FILES.values())})")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        raise GraphregError(f"scenarios: expected some of {', '.join(SCENARIOS)}, got {list(scenarios)}")
    settings = check_settings(settings)
    repeats = parse_threads(repeats, "repeats")
    document = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "pair": str(pair_dir), "config": None if config is None else str(config), "settings": settings,
                "scenarios": list(scenarios), "repeats": repeats, "cores": available_cores(),
                "load_before": list(os.getloadavg()), "runs": []}
    with tempfile.TemporaryDirectory(prefix="graphreg_contention_") as work:
        for repeat in range(repeats):
            order = settings[repeat % len(settings):] + settings[:repeat % len(settings)]
            for scenario in scenarios:
                for setting in order:
                    results = run_scenario(scenario, setting, pair_dir, Path(work), config, timeout_s)
                    for result in results:
                        document["runs"].append(dict(result, repeat=repeat))
                    if progress:
                        times = ", ".join(f"{r['wall_s']:.1f} s" if r["status"] == "ok" else r["error"]
                                          for r in results)
                        progress(f"repeat {repeat + 1}/{repeats} {SCENARIO_TITLES[scenario]}, {setting}: {times} "
                                 f"(load {results[0]['load_1min']:.1f})")
    document["load_after"] = list(os.getloadavg())
    document["summary"] = summarize_runs(document["runs"], settings)
    return document
