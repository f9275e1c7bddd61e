"""The report's files: ``metrics.json``, ``index.html`` and ``report.md`` (from ``templates/``).

Each is written to a temporary name and renamed; the whole folder is swapped in by ``output.py``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from emnist_jax.report.output import write_text_atomic
from emnist_jax.report.schema import LIBRARIES


def fmt(value: Any) -> str:
    """A table cell: 4 decimals for small floats, thousands separators for the rest."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]], caption: str = "") -> dict:
    return {"headers": headers, "rows": [[fmt(v) for v in row] for row in rows], "caption": caption}


def environment() -> dict:
    """Versions, devices and CPU of this run, for ``metrics.json``."""
    import jax

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "versions": versions, "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def write_metrics(folder: Path, metrics: dict) -> None:
    write_text_atomic(folder / "metrics.json", json.dumps(metrics, indent=1) + "\n")


def write_documents(folder: Path, context: dict) -> None:
    """``index.html`` and ``report.md`` from the templates; ``context`` as :func:`runner.run` builds it."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("emnist_jax", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    for template, name in (("report.html.j2", "index.html"), ("report.md.j2", "report.md")):
        write_text_atomic(folder / name, env.get_template(template).render(**context))
