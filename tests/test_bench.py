"""fastgan bench's statistics: interleaved rounds, min/median/max, cold vs warm, and the verdict
that says when the spread is too wide to call a winner (timings themselves are not asserted)."""
import pytest

from fastgan import bench


def _recorder(calls, who, fail_after=None):
    def fn():
        calls.append(who)
        if fail_after is not None and calls.count(who) > fail_after:
            raise RuntimeError("boom")
    return fn


def test_measure_times_a_cold_call_then_interleaves_rotating_rounds():
    calls = []
    fns = {w: _recorder(calls, w) for w in ("fastgan", "eager", "compile")}
    out = bench.measure(fns, min_run_time=0.0, reps=6, sync=lambda: None)  # one call per block
    # three calls each first (cold, warm-up, estimate), contender by contender
    assert calls[:9] == ["fastgan"] * 3 + ["eager"] * 3 + ["compile"] * 3
    rounds = [calls[9 + 3 * r: 12 + 3 * r] for r in range(6)]
    assert rounds[0] == ["fastgan", "eager", "compile"]
    assert rounds[1] == ["eager", "compile", "fastgan"]
    assert rounds[2] == ["compile", "fastgan", "eager"]
    assert rounds[3] == rounds[0] and len(calls) == 9 + 18
    for w in fns:
        assert len(out[w]["times"]) == 6 and out[w]["cold"] > 0
    assert bench.REPS >= 5


def test_measure_blocks_fill_the_run_time_and_a_failing_contender_is_reported(capsys):
    calls = []
    fns = {"fastgan": _recorder(calls, "fastgan"), "eager": _recorder(calls, "eager", fail_after=4)}
    out = bench.measure(fns, min_run_time=0.05, reps=5, sync=lambda: None, label="fam case")
    assert out["eager"] is None  # failed in its first round
    assert "fam case [eager] failed in round" in capsys.readouterr().out
    assert len(out["fastgan"]["times"]) == 5
    assert calls.count("fastgan") > 3 + 5  # blocks of many calls, not one


def _m(times, cold=1e-3):
    return {"cold": cold, "times": times}


def test_summarise_reports_min_median_max_cold_and_paired_ratios():
    f = [1.0e-3, 1.2e-3, 1.1e-3, 0.9e-3, 1.0e-3]
    e = [2.0e-3, 2.6e-3, 2.2e-3, 2.0e-3, 1.9e-3]
    c = [1.1e-3, 1.0e-3, 1.3e-3, 0.8e-3, 1.0e-3]
    row = bench.summarise("fam", "case", {"fastgan": _m(f, 5e-3), "eager": _m(e), "compile": _m(c, 2.0)})
    assert row["fastgan_ms"] == pytest.approx(1.0) and row["fastgan_min_ms"] == pytest.approx(0.9)
    assert row["fastgan_max_ms"] == pytest.approx(1.2) and row["fastgan_cold_ms"] == pytest.approx(5.0)
    assert row["compile_cold_ms"] == pytest.approx(2000.0)
    assert row["vs_eager"] == pytest.approx(2.0)  # ratio of medians
    per_round = [a / b for a, b in zip(e, f)]
    assert row["vs_eager_min"] == pytest.approx(min(per_round)) and row["vs_eager_max"] == pytest.approx(max(per_round))
    assert row["call_eager"] == "fastgan"  # every round: fastgan faster
    assert row["call_compile"] == "too close to call"  # rounds on both sides of 1
    slow = bench.summarise("fam", "case", {"fastgan": _m(e), "eager": _m(f)})
    assert slow["call_eager"] == "eager" and slow["vs_eager"] < 1


def test_rows_and_tables_label_warm_cold_and_the_undecided(monkeypatch, capsys):
    def suite(device, quick):
        calls = []
        return [bench.Case("fake", "noop 1x1", {w: _recorder(calls, w) for w in bench.CONTENDERS}, bytes=8)]
    monkeypatch.setitem(bench.SUITES, "fake", suite)
    monkeypatch.setattr(bench, "_suites", lambda: dict(bench.SUITES))
    rows = bench.run("cpu", quick=True, families=["fake"])
    (row,) = rows
    for w in bench.CONTENDERS:
        assert row[f"{w}_min_ms"] <= row[f"{w}_ms"] <= row[f"{w}_max_ms"]
    assert row["call_eager"] in ("fastgan", "eager", "too close to call") and row["fastgan_GBps"] > 0
    undecided = dict(row, call_eager="too close to call")
    line = bench.format_row(undecided)
    assert "?" in line and "cold" in line and "[" in line
    md = bench.markdown(bench.environment("cpu"), [undecided])
    assert "median [min-max]" in md and "too close to call" in md and "Cold" in md
    assert md.splitlines()[-1].count("|") == 11
    assert row["fastgan_path"] == "-" and md.splitlines()[-1].endswith("| - |")  # no fastgan op ran
    with pytest.raises(ValueError, match="unknown op families"):
        bench.run("cpu", quick=True, families=["nope"])


def test_profile_step_script_groups_the_time():
    """bench/profile_step.py (docs/benchmarks.md's step profile) runs and its groups add up to 100%."""
    import os
    import re
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "profile_step.py"), "--size", "16",
                          "--width", "8", "--batch", "4", "--steps", "1", "--channels-last"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if "ms/step" in line]
    assert [r.split()[0] for r in rows] == ["fastgan", "eager"], out.stdout
    for r in rows:
        shares = [int(v) for v in re.findall(r"(\d+)%", r)]
        assert len(shares) == 5 and 97 <= sum(shares) <= 103, r
        assert shares[0] > 0, r  # convolutions are found


def test_rows_name_the_path_the_fallback_ran(monkeypatch):
    """A case whose fastgan contender ran the measured eager fallback says so in its row."""
    import torch

    from fastgan.ops import _choose, bias_act
    monkeypatch.setitem(_choose._MODE, "bias_act", "auto")
    _choose.clear()
    x = torch.randn(2, 3, 4, 4)

    def suite(device, quick):
        return [bench.Case("fake", "bias_act", {"fastgan": lambda: bias_act(x, None, act="relu"),
                                                "eager": lambda: torch.relu(x)}),
                bench.Case("fake", "two keys", {"fastgan": lambda: (bias_act(x, None, act="relu"),
                                                                   bias_act(x, None, act="tanh")),
                                                "eager": lambda: torch.relu(x)})]
    monkeypatch.setitem(bench.SUITES, "fake", suite)
    monkeypatch.setattr(bench, "_suites", lambda: dict(bench.SUITES))
    try:
        first, second = bench.run("cpu", quick=True, families=["fake"])
        (key,) = [k for k in _choose._cache if k[6] == "relu"]
        (tanh,) = [k for k in _choose._cache if k[6] == "tanh"]
        label = {True: "eager", False: "fused"}
        assert first["fastgan_path"] == label[_choose._cache[key][0]]
        both = [_choose._cache[k][0] for k in (key, tanh)]
        assert second["fastgan_path"] == (label[both[0]] if both[0] == both[1] else "eager 1/2")
        assert f"path {second['fastgan_path']}" in bench.format_row(second)
        _choose._cache[key] = (True,) + _choose._cache[key][1:]
        _choose._cache[tanh] = (False,) + _choose._cache[tanh][1:]
        assert _choose.summary([key, tanh, key]) == "eager 1/2"
    finally:
        _choose.clear()


def test_rows_name_the_conv_transpose_paths(monkeypatch):
    """A case's row names the conv-transpose paths its fastgan contender's launcher chose (measured
    afresh per case), counted where several shapes chose differently, after the fallback's label."""
    import torch

    import fastgan
    from fastgan.ops import conv_transpose2d_act
    x, w = torch.randn(2, 3, 5, 4), torch.randn(3, 2, 4, 4)

    def suite(device, quick):
        return [bench.Case("fake", "one", {"fastgan": lambda: conv_transpose2d_act(x, w, stride=2, padding=1),
                                           "eager": lambda: x.sum()})]
    monkeypatch.setitem(bench.SUITES, "fake", suite)
    monkeypatch.setattr(bench, "_suites", lambda: dict(bench.SUITES))
    for pin in ("aten", "aten_cl", "fused"):  # a pin is not cached: the launcher ran, but chose nothing
        monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", pin)
        assert bench.run("cpu", quick=True, families=["fake"])[0]["fastgan_path"] == "-"
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "auto")
    (row,) = bench.run("cpu", quick=True, families=["fake"])
    (entry,) = fastgan._C.conv_transpose_paths()
    assert row["fastgan_path"] == entry[1] and entry[1] in ("aten", "aten_cl", "fused")
    conv = [("k1", "aten"), ("k2", "fused"), ("k3", "aten")]
    assert bench._paths("-", conv) == "aten 2/3 fused 1/3"
    assert bench._paths("eager 1/2", conv[:1]) == "eager 1/2; aten"
    assert bench._paths("fused", []) == "fused" and bench._paths("-", []) == "-"
