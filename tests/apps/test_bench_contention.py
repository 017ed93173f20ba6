"""``graphreg bench contention``: settings, medians and ratios, the table, and one real (tiny) run."""

import json

import psutil
import pytest
from typer.testing import CliRunner

from graphreg.apps.bench.contention import (check_settings, format_contention, register_command, summarize_runs)
from graphreg.apps.cli import app
from graphreg.apps.demo import DEMO_PAIR
from graphreg.errors import GraphregError


def test_settings_are_checked():
    assert check_settings(["default", "1", " 2", "spin"]) == ["default", "1", "2", "spin"]
    for bad in (["0"], ["x"], ["1.5"], []):
        with pytest.raises(GraphregError, match="settings: expected"):
            check_settings(bad)


def test_register_command_per_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHREG_THREADS", "7")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    argv, env = register_command(DEMO_PAIR, "default", tmp_path)
    assert "--threads" not in argv and "GRAPHREG_THREADS" not in env and "OMP_WAIT_POLICY" not in env
    argv, env = register_command(DEMO_PAIR, "2", tmp_path)
    assert argv[argv.index("--threads") + 1] == "2"
    argv, env = register_command(DEMO_PAIR, "spin", tmp_path)
    assert "--threads" not in argv and env["GOMP_SPINCOUNT"] == "300000"


def _run(scenario, setting, wall, pipeline=None):
    return {"scenario": scenario, "setting": setting, "status": "ok", "wall_s": wall,
            "pipeline_s": wall - 5 if pipeline is None else pipeline}


def test_medians_and_the_default_against_the_best_fixed_count():
    runs = [_run("alone", "default", w) for w in (10, 12, 30)] + [_run("alone", "1", w) for w in (15, 16, 14)] \
        + [_run("alone", "2", w) for w in (11, 9, 10)] + [_run("busy", "default", 20), _run("busy", "1", 16)] \
        + [{"scenario": "busy", "setting": "2", "status": "failed", "error": "exit 2: x"}]
    summary = summarize_runs(runs, ["default", "1", "2"])
    assert set(summary) == {"alone", "busy"}
    alone = summary["alone"]
    assert alone["median_wall_s"] == {"default": 12.0, "1": 15.0, "2": 10.0}
    assert alone["default_vs_best_fixed_wall"] == pytest.approx(1.2)
    assert alone["default_vs_best_fixed_pipeline"] == pytest.approx(7 / 5)
    busy = summary["busy"]
    assert busy["n"] == {"default": 1, "1": 1, "2": 0} and busy["median_wall_s"]["2"] is None
    assert busy["default_vs_best_fixed_wall"] == pytest.approx(20 / 16)
    document = {"settings": ["default", "1", "2"], "summary": summary, "repeats": 3, "cores": 2,
                "load_before": [4.0, 3.0, 2.0], "load_after": [5.0, 4.0, 3.0], "runs": runs}
    table = format_contention(document)
    assert "load average 4.0 before, 5.0 after" in table
    assert "12.0 (7.0)" in table and "1.20 (1.40)" in table
    assert "beside a busy 2-thread process" in table and "1 run(s) failed" in table


@pytest.mark.slow
def test_contention_command_runs_on_a_tiny_config(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("preprocess: {spacing_mm: 4.0}\nkeypoints: {num_points: 300, nms_size: 1}\n"
                      "levels: [{radius: 3, step: 2.0}]\ninstance_opt: {iterations: 3}\n")
    out = tmp_path / "contention.json"
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    result = CliRunner().invoke(app, ["bench", "contention", "--config", str(config), "--settings", "default,1",
                                      "--scenarios", "busy", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert [(r["scenario"], r["setting"], r["status"]) for r in document["runs"]] == \
        [("busy", "default", "ok"), ("busy", "1", "ok")]
    assert document["runs"][1]["threads"] == 1
    assert document["runs"][0]["openmp_wait_policy"] == "OMP_WAIT_POLICY=PASSIVE"
    assert document["summary"]["busy"]["default_vs_best_fixed_wall"] > 0
    assert "beside a busy 2-thread process" in result.output
    # the burner and the registrations are gone
    assert {child.pid for child in psutil.Process().children(recursive=True)} <= before


def test_processes_started_together_are_timed_each(tmp_path):
    """Two commands started at once: each gets its own wall time and its report's pipeline time."""
    import sys

    from graphreg.apps.bench.contention import _run_together

    commands = []
    for index, seconds in enumerate((0.2, 2.0)):
        out = tmp_path / f"run{index}"
        out.mkdir()
        (out / "report.json").write_text(json.dumps({"seconds_total": seconds, "threads": 1}))
        commands.append(([sys.executable, "-c", f"import time; time.sleep({seconds})"], None, out))
    fast, slow = _run_together(commands, timeout_s=60)
    assert fast["status"] == slow["status"] == "ok"
    assert fast["wall_s"] < 1.5 < 2.0 <= slow["wall_s"]
    assert (fast["pipeline_s"], slow["threads"]) == (0.2, 1)
