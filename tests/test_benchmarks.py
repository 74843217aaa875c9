"""benchmarks/bench.py runs unattended (no timing is asserted): every part, every line, fidelity printed.

It runs on a tiny checkpoint here; the GPU mode shares every code path except the device branches.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from altclip_adapters.inference.runtimes import cpu_has_bf16

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_cpu_benchmark_prints_every_line_with_its_fidelity(tiny_dir, tmp_path):
    command = [sys.executable, str(BENCH), "--device", "cpu", "--checkpoint", str(tiny_dir), "--workdir", str(tmp_path),
               "--dtype", "fp32", "bf16", "--compile"]
    env = {**os.environ, "ALTCLIP_CACHE": str(tmp_path / "cache")}  # OpenVINO conversions: not into ~/.cache
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for line in ("altclip --help (vs import torch)", "from_pretrained + read all weights", "peak memory growth", "image tower fp32, batch 2",
                 "text tower fp32, 6-40 tok", "image tower torch int8", "text tower torch int8", "image tower fp32 compiled ",
                 "image tower fp32 compiled vs ref eager", "image tower bf16", "text tower bf16", "JPEGs -> embeddings"):
        assert line in out, f"missing line {line!r} in:\n{out}"
    cosines = {name.strip(): float(cos) for name, cos in re.findall(r"^  (.+?) ref .* cos(?: to ref \w+)? ([\d.]+)", out, re.M)}
    bf16 = cpu_has_bf16()  # the runtime rows: OpenVINO f32 (+ bf16 where the CPU has it) and plain OpenVINO of the ref
    assert len(cosines) == 9 + 1 + 6 + 4 * bf16, cosines  # + end to end on the default runtime; OpenVINO rows
    assert re.search(r"JPEGs -> embeddings, (openvino bf16|torch float32), 0 workers", out)
    for line in ("image tower openvino default (", "text tower openvino default (", "image tower openvino f32", "text tower openvino f32", "image tower openvino int8", "image tower plain OpenVINO",
                 "text tower plain OpenVINO", "ratios (images / texts) of our default CPU path"):
        assert line in out, f"missing line {line!r} in:\n{out}"
    for name, cos in cosines.items():
        floor = 0.999 if "int8" in name else 0.99 if "bf16" in name else 0.99999
        assert cos >= floor, (name, cos)
    assert "FAILED" not in out and re.search(r"^total \d+ s$", out, re.M)
    assert re.search(r"^peak memory: this process \d+\.\d\d GiB, largest child process \d+\.\d\d GiB$", out, re.M)


def test_benchmark_leaves_no_temporary_files(tiny_dir, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    command = [sys.executable, str(BENCH), "--device", "cpu", "--checkpoint", str(tiny_dir), "--only", "startup", "e2e"]
    env = {**os.environ, "TMPDIR": str(temp), "ALTCLIP_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"altclip --help \(vs import torch\) +ref +[\d.]+ s +ours +[\d.]+ s +ours/ref +[\d.]+x", result.stdout)
    assert "JPEGs -> embeddings" in result.stdout  # written into the work folder, which is gone now
    assert [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_")] == []
