"""The side-by-side command's report (benchmarks/side_by_side_cnn.py): ratios, repeats, files.

Only its pure parts run here (the measurements take minutes and need PyTorch).
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import side_by_side_cnn as sbs


def row(impl, batch, train, evaluation, default=False):
    return {"impl": impl, "batch": batch, "train": train, "eval": evaluation, "compile_s": 1.0,
            "default": default, "malloc": "tuned"}


def test_ratios_divide_by_the_mean_of_pytorch_before_and_after():
    rows = sbs.mean_of_repeats([row("PyTorch eager, channels_last", 64, 1000.0, 4000.0),
                                row("ours", 64, 1650.0, 6000.0, default=True),
                                row("PyTorch eager, channels_last", 64, 1200.0, 2000.0),
                                row("ours", 256, 900.0, None)])
    sbs.with_ratios(rows, peak=400.0)
    torch, ours, alone = rows
    assert torch["train"] == 1100.0 and torch["eval"] == 3000.0 and len(torch["runs"]) == 2
    assert ours["train_vs_torch"] == pytest.approx(1.5) and ours["eval_vs_torch"] == pytest.approx(2.0)
    assert ours["train_gflops"] == pytest.approx(1650 * 45.9 / 1e3)
    assert ours["eval_gflops"] == pytest.approx(6000 * 15.44 / 1e3)
    assert ours["train_fraction_of_peak"] == pytest.approx(1650 * 45.9 / 1e3 / 400)
    assert alone["train_vs_torch"] is None and alone["eval_vs_torch"] is None   # no PyTorch at batch 256


def test_interleaved_ratios_are_medians_of_the_rounds_own_ratios():
    rounds = [{"malloc": "tuned", "batch": 64, "round": r, "ours_variant": "onednn K=4 scan", "ours": ours,
               "torch": torch, "ours_eval": 2.0 * ours, "torch_eval": torch} for r, (ours, torch) in
              enumerate([(1200.0, 1000.0), (1300.0, 1300.0), (3000.0, 2000.0)])]
    (m,) = sbs.interleaved_medians(rounds)
    assert (m["ours"], m["torch"], m["rounds"]) == (1300.0, 1300.0, 3)
    assert m["train_ratio"] == pytest.approx(1.2)           # of 1.2, 1.0, 1.5: not 1300 / 1300
    assert m["train_ratio_range"] == pytest.approx((1.0, 1.5)) and m["eval_ratio"] == pytest.approx(2.4)


def test_report_files_are_written_whole(tmp_path):
    rows = sbs.mean_of_repeats([row("PyTorch eager, channels_last", 64, 1000.0, 4000.0),
                                row("ours, onednn K=4 scan (CPU default)", 64, 1500.0, 5000.0, default=True)])
    sbs.with_ratios(rows, peak=400.0)
    report = {"date": "d", "command": "python benchmarks/side_by_side_cnn.py", "versions": {"jax": "0"},
              "machine": {"cpu": "cpu", "cpus": 2, "simd": ["avx512f"], "load_average_at_start": (0.1, 0.2, 0.3),
                          "load_average_at_end": (1.0, 0.5, 0.4)},
              "malloc_settings": ["tuned"], "matmul_peak_gflops": {"tuned": 400.0}, "rows": rows,
              "notes": ["a note"]}
    text = sbs.markdown(report)
    assert "| ours, onednn K=4 scan (CPU default) | 64 | 1,500 (1.50x) | 5,000 (1.25x) | 69 | 77 | 1.0 |" in text
    assert "fp32 matrix peak (jnp.dot 2048^3) 400 GFLOP/s" in text and "- a note" in text
    assert "at start 0.10, 0.20, 0.30, at end 1.00, 0.50, 0.40" in text
    path = tmp_path / "out" / "cpu.json"
    sbs.write_atomic(str(path), json.dumps(report).encode())
    sbs.chart(report, str(tmp_path / "out" / "cpu.png"))
    assert json.loads(path.read_text())["rows"][1]["train_vs_torch"] == pytest.approx(1.5)
    assert (tmp_path / "out" / "cpu.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path / "out")) == ["cpu.json", "cpu.png"]   # no temporary left behind
