import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_asv_check_finds_no_problem_in_the_benchmarks():
    asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    assert asv, "asv is part of the test extra"
    result = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "No problems found" in result.stdout
