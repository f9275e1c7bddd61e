"""``python -m emnist_jax.report``: see :mod:`emnist_jax.report`."""

import sys

from emnist_jax.report.cli import main

sys.exit(main())
