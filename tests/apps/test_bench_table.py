"""Tests of the peer comparison in graphreg.apps.bench.runner.summarize / peer_ratios and the table."""

import json

import pytest

from graphreg.apps.bench.runner import compute_seconds, peer_ratios, summarize
from graphreg.apps.bench.table import format_peer_ratios, format_table


def row(method, pair, seconds, tre, rss, status="ok"):
    return {"method": method, "pair": pair, "status": status, "error": None if status == "ok" else "X: y",
            "tre_before": {"mean_mm": 8.0}, "tre": {"mean_mm": tre, "std_mm": 1.0, "p75_mm": tre + 0.5,
                                                    "max_mm": tre + 3.0},
            "jacobian": {"std_log_jacobian": 0.05, "folding_percent": 0.0}, "dice_before": 0.9, "dice": 0.97,
            "timings": {"total": seconds}, "seconds_total": seconds, "peak_rss_mb": rss}


ROWS = [
    row("identity", "p1", 0.01, 8.0, 300), row("corrfield", "p1", 10.0, 1.0, 900),
    row("elastix", "p1", 100.0, 1.5, 600), row("convexadam", "p1", 40.0, 1.2, 1800),
    row("identity", "p2", 0.01, 8.0, 300), row("corrfield", "p2", 12.0, 1.2, 1000),
    row("elastix", "p2", 150.0, 1.7, 500), row("convexadam", "p2", 60.0, 1.4, 2000, status="failed"),
]


def test_peer_ratios_are_medians_of_per_pair_ratios_on_common_pairs():
    ratios = peer_ratios(ROWS)
    assert set(ratios) == {"corrfield"}  # identity is a reference, peers are not compared with themselves
    elastix = ratios["corrfield"]["elastix"]
    assert elastix["n_pairs"] == 2
    assert elastix["time_ratio"] == pytest.approx((10 / 100 + 12 / 150) / 2)
    assert elastix["speedup"] == pytest.approx(1 / elastix["time_ratio"])
    assert elastix["tre_mean_mm"] == pytest.approx(1.1) and elastix["peer_tre_mean_mm"] == pytest.approx(1.6)
    assert elastix["peak_rss_ratio"] == pytest.approx((900 / 600 + 1000 / 500) / 2)
    convexadam = ratios["corrfield"]["convexadam"]  # its p2 run failed: only p1 counts
    assert convexadam["n_pairs"] == 1 and convexadam["time_ratio"] == pytest.approx(0.25)
    assert convexadam["tre_mean_mm"] == pytest.approx(1.0)


def test_a_peers_package_import_is_left_out_of_the_ratio():
    rows = [dict(r) for r in ROWS]
    for r in rows:
        if r["method"] == "elastix":
            r["timings"] = {"import": 20.0, "register": r["seconds_total"] - 20.0}
    elastix = peer_ratios(rows)["corrfield"]["elastix"]
    assert elastix["time_ratio"] == pytest.approx((10 / 80 + 12 / 130) / 2)
    assert compute_seconds(rows[2]) == pytest.approx(80.0) and compute_seconds(rows[1]) == pytest.approx(10.0)
    assert compute_seconds({"seconds_total": None}) is None


def test_reverse_rows_are_compared_with_the_peers_reverse_rows():
    reverse = [{**r, "direction": "reverse", "seconds_total": 2 * r["seconds_total"]} for r in ROWS]
    summary = summarize(ROWS + reverse)
    assert summary["corrfield (reverse)"]["direction"] == "reverse"
    assert summary["corrfield (reverse)"]["n_pairs"] == 2
    ratio = summary["corrfield (reverse)"]["vs_peers"]["elastix"]["time_ratio"]
    assert ratio == pytest.approx(peer_ratios(ROWS)["corrfield"]["elastix"]["time_ratio"])
    assert set(peer_ratios(ROWS + reverse)) == {"corrfield", "corrfield (reverse)"}


def test_no_peers_no_ratios():
    rows = [r for r in ROWS if r["method"] in ("identity", "corrfield")]
    assert peer_ratios(rows) == {}
    assert "vs_peers" not in summarize(rows)["corrfield"]
    assert format_peer_ratios(summarize(rows)) == ""
    assert "time ratio" not in format_table(rows)


def test_summary_and_table_show_the_ratios():
    summary = summarize(ROWS)
    assert summary["corrfield"]["vs_peers"] == json.loads(json.dumps(peer_ratios(ROWS)))["corrfield"]
    assert "vs_peers" not in summary["elastix"]
    text = format_table(ROWS, summary)
    lines = text.splitlines()
    line = next(l for l in lines if l.startswith("corrfield") and "elastix" in l)
    cells = line.split()
    assert cells[2] == "2" and cells[3] == "0.090" and cells[4] == "11.1x"
    assert any(l.startswith("corrfield") and "convexadam" in l and "4.0x" in l for l in lines)
    assert "p75" in lines[0] and "fold%" in lines[0] and "peak MB" in lines[0]


def test_markdown_summary_names_the_run_and_its_numbers():
    from graphreg.apps.bench.markdown import markdown_summary, method_rows

    document = {"created": "2026-12-06T14:00:00+00:00", "graphreg_version": "0.4.0", "commit": "abcdef1234567890",
                "machine": {"cpu": "AMD EPYC", "cores": 2, "gpu": None, "load_average": 3.5}, "rows": ROWS}
    by_method = {r["method"]: r for r in method_rows(ROWS)}
    assert by_method["corrfield"]["tre_mean_mm"] == pytest.approx(1.1)
    assert by_method["corrfield"]["worst_pair_mm"] == pytest.approx(1.2)
    assert by_method["corrfield"]["tre_max_mm"] == pytest.approx(4.2)
    assert by_method["convexadam"]["n_ok"] == 1 and by_method["convexadam"]["seconds"] == pytest.approx(40.0)
    text = markdown_summary(document)
    assert text.startswith("Measured 2026-12-06 with graphreg 0.4.0 (commit abcdef1234) on AMD EPYC, 2 cores")
    assert "2 pairs (p1, p2)" in text
    assert "| corrfield | 2/2 | 1.10 | 1.60 | 1.20 | 4.2 | 0.000 | 0.050 | 11.0 | 0.09× elastix, 0.25× convexadam |" in text
    assert "| convexadam | 1/2 |" in text and text.count("| – |") == 3  # identity and the peers have no ratio


def test_summary_command_replaces_the_marked_block(tmp_path, run_cli):
    from graphreg.apps.bench.markdown import BEGIN, END

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"created": "2026-12-06", "graphreg_version": "0.4.0", "commit": None,
                                 "machine": {}, "rows": ROWS}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x → y\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n", encoding="utf-8")
    code, out, _ = run_cli(["bench", "summary", bench, "--into", readme])
    assert code in (0, None) and "updated" in out
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and "| corrfield | 2/2 |" in text and text.endswith(f"{END}\nafter\n")
    assert "no commit recorded" in text
    readme.write_text("no markers here\n")
    code, _, err = run_cli(["bench", "summary", bench, "--into", readme])
    assert code == 2 and "expected exactly one" in err and readme.read_text() == "no markers here\n"
    code, _, err = run_cli(["bench", "summary", tmp_path / "missing.json"])
    assert code == 2 and "missing.json" in err


def test_markdown_summary_has_a_row_per_direction():
    from graphreg.apps.bench.markdown import method_rows

    reverse = [dict(r, direction="reverse", tre=dict(r["tre"], mean_mm=r["tre"]["mean_mm"] + 1.0)) for r in ROWS]
    by_method = {r["method"]: r for r in method_rows(ROWS + reverse)}
    assert by_method["corrfield"]["tre_mean_mm"] == pytest.approx(1.1)
    assert by_method["corrfield (reverse)"]["tre_mean_mm"] == pytest.approx(2.1)
    assert by_method["corrfield (reverse)"]["n_pairs"] == 2
