"""Command line for the data layer.

    python -m emnist_jax.data info [--data SRC] [--split S] [--out DIR]
    python -m emnist_jax.data download [--split S|all] [--dest DIR] [--format matlab|gzip]

``info --out`` follows the report's rules (:mod:`emnist_jax.report.output`): the figures are drawn
into a hidden private folder that replaces ``--out`` whole, and an existing ``--out`` is replaced
only when ``data info`` made it (its marker, nothing but its own files, this user's folder); a
folder of the user's own files is refused and left as it was.

Exit codes: 0 ok, 2 bad input or data, or an unusable --out/--dest (one line on stderr, no
traceback), 130 interrupted, 141 when the reader of stdout went away (``info | head -1``: the
status a Unix filter killed by SIGPIPE reports, so ``set -o pipefail`` scripts see the same
as with ``cat``; nothing after the lost line is done, the figures included).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from emnist_jax.data import SPLITS, EmnistDataError, download, load
from emnist_jax.data.formats import os_reason
from emnist_jax.data.official import ARCHIVES

EXIT_BROKEN_PIPE = 141


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:6.2f}" if whole else "     -"


def info(data: str, split: str | None, out: str) -> None:
    from emnist_jax.report import output  # the --out rules every command that writes a folder follows

    try:
        target = output.check_target(out, output.DATA_INFO)  # before loading: refused in a second, not minutes
    except output.OutputError as error:
        raise EmnistDataError(str(error)) from None
    start = time.perf_counter()
    dataset = load(data, split)
    seconds = time.perf_counter() - start
    kind = "SYNTHETIC embedded default (not comparable with real EMNIST)" if dataset.synthetic else "EMNIST"
    train, test = dataset.class_counts("train"), dataset.class_counts("test")
    print(f"source : {dataset.source}  [{kind}]")
    print(f"split  : {dataset.split}, {dataset.n_classes} classes, loaded in {seconds:.1f} s")
    print(f"train  : {len(dataset.train_labels):,} images   test: {len(dataset.test_labels):,} images   "
          f"shape {dataset.train_images.shape[1:]} {dataset.train_images.dtype}, upright")
    print(f"balance: train {train.min():,}..{train.max():,} per class "
          f"(min '{dataset.classes[train.argmin()]}', max '{dataset.classes[train.argmax()]}'), "
          f"test {test.min():,}..{test.max():,}")
    print("\nlabel char    train    test  train%")
    for label, char in enumerate(dataset.classes):
        print(f"{label:5d} {char:>4} {train[label]:8,d} {test[label]:7,d} {_percent(train[label], train.sum())}")
    sys.stdout.flush()  # a closed pipe shows here, before any figure is drawn
    from emnist_jax import plots  # matplotlib only when a figure is wanted

    names = ("samples.png", "class_distribution.png")
    staging = None
    try:  # both figures in a hidden folder, swapped in whole: a failed run leaves nothing and removes nothing
        output.clean_stale(target.parent, lambda line: print(line, file=sys.stderr))
        staging = output.Staging(target, output.DATA_INFO)
        plots.save(plots.sample_grid(dataset), staging.folder / names[0])
        subtitle = f"{dataset.split}, {'SYNTHETIC embedded default' if dataset.synthetic else dataset.source}"
        plots.save(plots.class_distribution(train, test, dataset.classes, subtitle), staging.folder / names[1])
        staging.commit()
    except output.OutputError as error:
        raise EmnistDataError(str(error)) from None
    except OSError as error:
        raise EmnistDataError(f"--out {out}: cannot write the figures: {os_reason(error)}") from None
    finally:
        if staging is not None:
            staging.discard()  # nothing left once committed
    print("".join(f"\nwrote {target / name}" for name in names))


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emnist_jax.data", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p_info = commands.add_parser("info", help="print counts and class balance, draw samples of every class")
    p_info.add_argument("--data", default="default",
                        help="'default' (embedded synthetic set), emnist-<split>.mat, a folder of IDX files, "
                             "matlab.zip or gzip.zip (default: %(default)s)")
    p_info.add_argument("--split", choices=list(SPLITS),
                        help="split to read (default: from the .mat file name, else byclass)")
    p_info.add_argument("--out", default=os.path.join("reports", "data-info"),
                        help="folder for samples.png and class_distribution.png (default: %(default)s)")
    p_down = commands.add_parser("download", help="fetch and verify the official archive, extract a split")
    p_down.add_argument("--split", default="byclass", choices=[*SPLITS, "all"], help="(default: %(default)s)")
    p_down.add_argument("--dest", default="emnist", help="download folder (default: %(default)s)")
    p_down.add_argument("--format", default="matlab", choices=list(ARCHIVES),
                        help="matlab.zip (.mat files, as the study) or gzip.zip (IDX files) (default: %(default)s)")
    args = parser.parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings  # a cache warning is one line, like the errors
    try:
        if args.command == "info":
            info(args.data, args.split, args.out)
        else:
            # A bar on a terminal only, as tqdm does by default: logs get the one-line outcome.
            for path in download(args.split, args.dest, args.format, progressbar=sys.stderr.isatty()):
                print(f"verified {path}")
        sys.stdout.flush()
    except EmnistDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read stdout stopped (`info | head -1`): stop quietly, as a Unix filter does.
        # Point stdout at devnull so that the interpreter's final flush cannot fail again.
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
