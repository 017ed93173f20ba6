"""CPU threads (graphreg.runtime.threads): the count a run uses, its sources (argument, --threads,
GRAPHREG_THREADS, the available cores), bad values, the OpenMP wait policy, batch workers' share."""

import json
import os
import subprocess
import sys

import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from graphreg.runtime import threads
from graphreg.apps.cli import app
from graphreg.errors import GraphregError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OPENMP_ENV = ("GRAPHREG_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _fresh_python(code: str, **env) -> str:
    """stdout of ``python -c code`` in a fresh process, with no thread settings inherited but ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in _OPENMP_ENV}
    clean["PYTHONPATH"] = ROOT + os.pathsep + clean.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace",
                            env={**clean, **env}, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("value", [1, 3, "2", " 4 "])
def test_parse_threads_accepts_positive_integers(value):
    assert threads.parse_threads(value) == int(value)


@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, True, "0", "-2", "1.5", "two", "", None])
def test_parse_threads_rejects_bad_values(value):
    with pytest.raises(GraphregError, match=r"^threads: expected an integer >= 1, got "):
        threads.parse_threads(value)


def test_resolve_threads_argument_then_environment_then_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    assert threads.resolve_threads() == 6
    assert threads.resolve_threads(share=4) == 1  # each of 4 workers: 6 // 4 cores
    assert threads.resolve_threads(share=10) == 1  # never 0
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.resolve_threads() == 3
    assert threads.resolve_threads(share=4) == 3  # an explicit count is per process
    assert threads.resolve_threads(2) == 2
    monkeypatch.setenv(threads.ENV_VAR, "abc")
    with pytest.raises(GraphregError, match=r"GRAPHREG_THREADS: expected an integer >= 1, got 'abc'"):
        threads.resolve_threads()


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", None), ("150000 100000", 1.5), ("100000 100000", 1.0)])
def test_cgroup_quota_caps_the_cores(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert threads._cgroup_cpu_limit(tmp_path) == expected
    affinity = len(os.sched_getaffinity(0))
    cap = {None: affinity, 1.5: min(affinity, 2), 1.0: 1}[expected]
    assert threads.available_cores(tmp_path) == cap


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads._cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert threads._cgroup_cpu_limit(tmp_path) == 0.5
    assert threads.available_cores(tmp_path) == 1


def test_use_threads_sets_and_restores_torch_and_simpleitk():
    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    target = 1 if before[0] != 1 else 2
    with threads.use_threads(target) as count:
        assert count == target
        assert torch.get_num_threads() == target
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == target
    assert (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()) == before


def test_environment_variable_reaches_torch_in_a_fresh_process():
    code = ("import graphreg, os, torch\n"
            "from graphreg.runtime.threads import openmp_wait_policy, use_threads\n"
            "with use_threads() as n:\n"
            "    print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], openmp_wait_policy())\n")
    assert _fresh_python(code, GRAPHREG_THREADS="1").split() == ["1", "1", "PASSIVE", "OMP_WAIT_POLICY=PASSIVE"]
    default = threads.available_cores()
    assert _fresh_python(code).split()[:2] == [str(default), str(default)]


def test_wait_policy_is_left_to_the_user_and_to_an_earlier_torch():
    policy = "from graphreg.runtime.threads import openmp_wait_policy; print(openmp_wait_policy())"
    assert _fresh_python("import graphreg; " + policy, OMP_WAIT_POLICY="ACTIVE") == "OMP_WAIT_POLICY=ACTIVE"
    assert _fresh_python("import graphreg; " + policy, GOMP_SPINCOUNT="1000") == "GOMP_SPINCOUNT=1000"
    assert _fresh_python("import torch, graphreg; " + policy) == "spinning (torch was imported before graphreg)"


def _register_args(tmp_path, *extra):
    from graphreg.apps.demo import DEMO_PAIR

    return ["register", str(DEMO_PAIR / "fixed.nii.gz"), str(DEMO_PAIR / "moving.nii.gz"),
            "--fixed-mask", str(DEMO_PAIR / "fixed_mask.nii.gz"), "--moving-mask", str(DEMO_PAIR / "moving_mask.nii.gz"),
            "--out", str(tmp_path / "out"), "--device", "cpu", *extra]


def _main(args, monkeypatch, capsys):
    from graphreg.apps.cli import main

    monkeypatch.setattr(sys, "argv", ["graphreg"] + args)
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "two"])
def test_cli_rejects_bad_thread_counts_in_one_line(tmp_path, monkeypatch, capsys, value):
    code, err = _main(_register_args(tmp_path, "--threads", value), monkeypatch, capsys)
    assert code == 2 and err == f"error: threads: expected an integer >= 1, got '{value}'\n"
    assert not (tmp_path / "out").exists()


def test_cli_rejects_a_bad_environment_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHREG_THREADS", "0")
    for args in (_register_args(tmp_path), ["demo", "--out", str(tmp_path / "demo")],
                 ["train", "--config", str(tmp_path / "recipe.yaml")]):
        code, err = _main(args, monkeypatch, capsys)
        assert code == 2 and err.startswith("error: GRAPHREG_THREADS: expected an integer >= 1, got '0'"), (args, err)


@pytest.mark.parametrize("command", ["register", "demo", "batch", "train", "evaluate", "viz"])
def test_every_computing_command_has_threads(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert "--threads" in result.output


def test_bench_run_has_threads():
    result = CliRunner().invoke(app, ["bench", "run", "--help"], env={"COLUMNS": "200"})
    assert "--threads" in result.output


@pytest.mark.slow
def test_cli_threads_reach_torch_and_the_report(tmp_path):
    """A fresh ``graphreg register --threads 1`` process runs with one torch thread and says so."""
    config = tmp_path / "tiny.yaml"
    config.write_text("preprocess: {spacing_mm: 4.0}\nkeypoints: {num_points: 300, nms_size: 1}\n"
                      "levels: [{radius: 3, step: 2.0}]\ninstance_opt: {iterations: 3}\n")
    clean = {k: v for k, v in os.environ.items() if k not in _OPENMP_ENV}
    clean["PYTHONPATH"] = ROOT + os.pathsep + clean.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "graphreg.apps.cli"] + _register_args(tmp_path, "--threads", "1",
                                                                                     "--config", str(config)),
                            capture_output=True, encoding="utf-8", errors="replace", env=clean, cwd=ROOT, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["threads"] == 1
    assert report["openmp_wait_policy"] == "OMP_WAIT_POLICY=PASSIVE"


def test_api_rejects_bad_threads_before_any_work():
    from graphreg import register

    with pytest.raises(GraphregError, match=r"^threads: expected an integer >= 1, got 0"):
        register("missing_fixed.nii.gz", "missing_moving.nii.gz", threads=0)


def test_batch_gives_each_local_worker_its_share(monkeypatch, tmp_path):
    import graphreg.apps.batch as batch

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\na.nii.gz,b.nii.gz\nc.nii.gz,d.nii.gz\n")
    seen = []

    def fake_dask(todo, task, scheduler, workers, address, out_dir, finished):
        seen.append((scheduler, workers, task["threads"]))
        for pair in todo:
            finished({"id": pair.id, "status": "ok", "seconds": None, "error": ""})

    monkeypatch.setattr(batch, "_run_on_dask", fake_dask)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    batch.run_batch(pairs, tmp_path / "a", workers=2, scheduler="processes")
    batch.run_batch(pairs, tmp_path / "b", workers=3, scheduler="processes")
    batch.run_batch(pairs, tmp_path / "c", workers=16, scheduler="processes")
    batch.run_batch(pairs, tmp_path / "d", workers=2, scheduler="processes", threads=3)
    batch.run_batch(pairs, tmp_path / "e", scheduler="dask", scheduler_address="tcp://127.0.0.1:1")
    assert seen == [("processes", 2, 4), ("processes", 3, 2), ("processes", 16, 1), ("processes", 2, 3),
                    ("dask", 1, None)]
    with pytest.raises(GraphregError, match="threads: expected an integer >= 1"):
        batch.run_batch(pairs, tmp_path / "f", workers=2, scheduler="processes", threads=0)
