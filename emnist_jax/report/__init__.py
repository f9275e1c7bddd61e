"""``python -m emnist_jax.report``: one command from the EMNIST files to a complete study report.

    python -m emnist_jax.report                                   # embedded default, byclass, quick
    python -m emnist_jax.report --data emnist/emnist-byclass.mat --profile full
    python -m emnist_jax.report --only mi,rf --out reports/mi-only
    python -m emnist_jax.report --profile full --resume           # after Ctrl-C, SIGTERM or a crash

Runs the stages data, mi, rf, pca, logreg and cnn, times each, and writes ``index.html``,
``report.md``, ``metrics.json`` and PNG figures into a folder under ``reports/``.

- ``cli``: parse and validate the command line, then ``runner.run``.
- ``runner``: load, run or reuse each stage, write, swap in; exit codes.
- ``usage``: the CPU seconds and peak memory a stage's log line and metrics.json show.
- ``stages``: one function per stage, data + profile in, a result out (the math is in the study modules).
- ``sections``: each stage's text, captioned tables and figures, from its result.
- ``comparison``: the table of the original study's numbers beside this run's.
- ``writers``: metrics.json, index.html and report.md.
- ``output``: what ``--out`` may replace, the hidden folder a run writes into, the final swap.
- ``store``: finished stages' results for ``--resume``.

Measured: ``quick`` on the embedded default on the 2-core development machine: see README.
"""

from emnist_jax.report.cli import main
from emnist_jax.report.runner import STAGE_NAMES as STAGES

__all__ = ["STAGES", "main"]
