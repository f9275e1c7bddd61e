"""Training configuration, validated when made. The defaults are the original study's recipe (section 6).

No JAX here: the command line's ``--help`` and the report's profiles import this module, and
importing JAX costs seconds. Fields left at ``None`` ("auto" for ``conv_impl``) are chosen per
backend by :meth:`TrainConfig.resolved` from :data:`BACKEND_DEFAULTS`, each choice with its source.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

#: "fused" (cnn/fused.py: needs g++) and "onednn" (cnn/onednn.py: the optional extra) run on the CPU only
CONV_IMPLS = ("xla", "slices", "onednn", "fused")
NATIVE = {"fused": "emnist_jax.cnn.fused", "onednn": "emnist_jax.cnn.onednn"}
LOOPS = ("scan", "unroll")
#: The arithmetic of the products (matrix products and convolutions). "default" is JAX's own choice
#: per backend: full float32 on a CPU, TensorFloat-32 on NVIDIA GPUs from Ampere on, bfloat16
#: passes on a TPU (docs.jax.dev, 'Matmul precision'). "float32" asks for true float32 everywhere,
#: "tensorfloat32" for TF32 products; "bfloat16" computes the layers in bfloat16. Parameters, Adam's
#: state, the loss and the metrics stay float32 under every choice.
PRECISIONS = ("default", "float32", "tensorfloat32", "bfloat16")
#: the precisions the CPU extensions (float32 only) do not compute in: "auto" takes an XLA form for them
REDUCED_PRECISIONS = ("tensorfloat32", "bfloat16")
PROTOCOLS = ("study", "official")
MAX_SEED = 2**32 - 1   # sklearn's random_state and a 32-bit PRNG seed both stop here


@dataclasses.dataclass(frozen=True)
class BackendDefaults:
    conv_impl: str
    steps_per_call: int
    loop: str
    source: str        # where the choice comes from: a measurement (with its place) or "guessed"
    grad_chunk: int = 0  # images per gradient chunk inside a step (0: the whole batch at once)


#: Per-backend execution choices. None of them changes the model or the recipe: the
#: convolution forms compute the same layers, and K steps per call (scanned or unrolled) are K
#: ordinary steps; they only change speed (and float rounding).
BACKEND_DEFAULTS = {
    "cpu": BackendDefaults(
        "slices", 4, "unroll",
        "measured on the 2-core development machine with benchmarks/side_by_side_cnn.py (docs/performance.md, "
        "'CNN throughput on a CPU'): slices K=4 was the fastest JAX variant at batch 64 (1,975 images/s against "
        "1,725 for xla K=1, mallopt tuned); lax.scan over xla-convolution steps ran 134 images/s "
        "(10-40x slower), a scan over slice steps was fine; unrolled K=4 slices is what was measured"),
    "gpu": BackendDefaults(
        "slices", 64, "scan",
        "measured on one NVIDIA H100 80 GB with JAX 0.11.2 (CUDA 13), 2026-11-27, outside the repository "
        "(docs/performance.md, 'GPU runs'): slices under one lax.scan of K=64 steps reached "
        "346,978 images/s at batch 64 with a 3.7 s first call, against 50,809 for xla K=1 and "
        "335,000 for slices unrolled K=8 (~10 s to compile); throughput is flat from K=8 on"),
    "tpu": BackendDefaults(
        "xla", 64, "scan",
        "guessed, not measured: XLA's native convolution maps onto the TPU's matrix unit, and a "
        "scan of 64 steps per call amortises the per-call overhead as it did on the H100"),
}

UNKNOWN_BACKEND = BackendDefaults("xla", 1, "unroll", "no measurement for this backend: XLA's own choices")

#: The CPU's first choice: the fused C++ kernels (``emnist_jax.cnn.fused``), where they build for an
#: instruction set they were measured fast on (``fused.MEASURED_FAST_ON``).
CPU_FUSED = BackendDefaults(
    "fused", 4, "scan", grad_chunk=0, source=
    "measured on the 2-core development machine, shared with other jobs, by benchmarks/side_by_side_cnn.py "
    "(reports/performance/cpu.md; docs/performance.md, 'CNN throughput on a CPU'): fused K=4 scan trained 6,579 / 7,487 "
    "images/s at batch 64 / 256 against 4,649 / 5,321 for K=1 unrolled, 5,863 / 5,796 for K=8 scan and "
    "3,145 / 3,698 for onednn K=4 scan in the same run (the run 45 minutes before: 3,930 / 3,209 against "
    "2,626 / 2,727 and 2,120 / 3,801), and 2.28x / 2.32x PyTorch eager in interleaved rounds; a scan of 4 "
    "compiles in 1-2 s")

#: The CPU's choice where the fused kernels cannot be built but oneDNN's convolution is installed
#: (``pip install -e '.[onednn]'``); without either the CPU falls back to BACKEND_DEFAULTS["cpu"].
CPU_ONEDNN = BackendDefaults(
    "onednn", 4, "scan", grad_chunk=0, source=
    "measured on the 2-core development machine, shared with other jobs, by benchmarks/side_by_side_cnn.py "
    "(reports/performance/cpu.md; docs/performance.md, 'CNN throughput on a CPU'): onednn K=4 scan trained 3,918 / 3,898 "
    "images/s at batch 64 / 256 against 2,836 / 3,397 for onednn K=1 and 3,347 / 2,987 for K=8 scan in the same "
    "run, and 1.18x / 1.13x PyTorch eager in interleaved rounds (1.30x / 1.10x in the run before); a scan compiles "
    "in ~1.5 s where K=4 unrolled took ~3.5-4.5 s at about the same speed; gradient chunks of 64 at batch 256 "
    "gave no measurable gain (2,645 against 2,740 images/s, best of 6 interleaved rounds)")


def native_available(impl: str) -> bool:
    """True where the CPU extension behind ``impl`` ("fused" or "onednn") can run here (imports JAX;
    builds the extension on first call)."""
    import importlib

    return importlib.import_module(NATIVE[impl]).available()


def onednn_available() -> bool:
    """True where oneDNN's convolution can run here (the optional extra, built on first call)."""
    return native_available("onednn")


def fused_available() -> bool:
    """True where our fused kernels can run here (built with g++ on first call)."""
    return native_available("fused")


def fused_not_default_reason() -> str | None:
    """None where ``conv_impl="auto"`` takes our fused kernels on this CPU, else why not (imports JAX;
    builds the extension on first call where its target was measured fast)."""
    from emnist_jax.cnn import fused

    return fused.not_default_reason()


#: Why the CPU default is not the fused kernels, said once per process and reason
_SAID: set[str] = set()


def _say_fallback(reason: str, impl: str) -> None:
    """One line when the fused kernels cannot be built or loaded, with the speed that costs (a target
    they were not measured on, or a user's EMNIST_JAX_FUSED=0, is a choice, not a loss)."""
    if reason in _SAID or reason.startswith(("turned off", "the build target")):
        return
    _SAID.add(reason)
    import warnings

    warnings.warn(f"the fused CPU kernels cannot be used ({reason}); the CNN trains with the {impl} form "
                  "instead, about 2-3x slower on a CPU where they build (install g++, or set CXX)",
                  RuntimeWarning, stacklevel=3)


def available_conv_impls() -> tuple[str, ...]:
    """The convolution forms that can run in this installation (the CPU extensions only where they build)."""
    return tuple(c for c in CONV_IMPLS if c not in NATIVE or native_available(c))


class ConfigError(ValueError):
    """A configuration value out of its range; ``field`` names it, the message is one line."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field
        self.problem = message


def _int(value, field: str, low: int, high: int | None = None, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(field, f"must be an integer{' or None' if none_ok else ''}, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(field, f"must be {bounds}, got {value}")


def _real(value, field: str, below_one: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    if below_one and not 0 <= value < 1:
        raise ConfigError(field, f"must be in [0, 1), got {value}")
    if not below_one and value <= 0:
        raise ConfigError(field, f"must be > 0, got {value}")


def _choice(value, field: str, options: tuple[str, ...], none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if value not in options:
        allowed = ", ".join(repr(o) for o in options) + (" or None" if none_ok else "")
        raise ConfigError(field, f"must be one of {allowed}, got {value!r}")


def _field(default, help: str, metavar: str | None = None, choices: tuple[str, ...] | None = None):
    """A TrainConfig field whose ``help`` (and ``metavar``, ``choices``) its command-line option shows."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train and how; every field is checked when the object is made (:class:`ConfigError`)."""

    # Each field's help is its command-line option's (python -m emnist_jax.cnn --help).
    epochs: int = _field(10, "passes over the training images", "N")
    batch_size: int = _field(64, "images per step, over all devices (of all processes)", "B")
    learning_rate: float = _field(1e-3, "Adam's step size (Keras Adam()'s default)", "LR")
    b1: float = _field(0.9, "Adam's first-moment decay", "B1")
    b2: float = _field(0.999, "Adam's second-moment decay", "B2")
    eps: float = _field(1e-7, "Adam's epsilon (Keras's default, not optax's 1e-8)", "EPS")
    protocol: str = _field("study", "study: seeded split of the train file, the hold-out evaluated; official: the "
                                    "train file against the test file", choices=PROTOCOLS)
    holdout_fraction: float = _field(0.33, "the study protocol's hold-out share of the train file", "F")
    seed: int = _field(0, f"seeds the split, the initial weights and the batch order (0..{MAX_SEED})", "S")
    eval_batch_size: int = _field(1024, "images per evaluation batch", "B")
    conv_impl: str = _field("auto", "convolution form: xla (lax.conv_general_dilated), slices (9 shifted slices and "
                                    "one matmul), fused (the project's C++ kernels through jax.ffi; CPU only, needs "
                                    "a C++ compiler) or onednn (CPU only, pip install '.[onednn]'); auto: per backend "
                                    "(docs/kernels.md)", choices=CONV_IMPLS + ("auto",))
    steps_per_call: int | None = _field(None, "training steps per jitted call", "K")
    grad_chunk: int | None = _field(None, "images per gradient chunk inside a step (0: the whole batch)", "N")
    loop: str | None = _field(None, "run the K steps of a call as one lax.scan or unrolled", choices=LOOPS)
    log_every: int = _field(50, "update the progress bar every N calls (each update waits for the device)", "N")
    precision: str = _field("default", "arithmetic of the matrix products and convolutions: default (JAX's per "
                                       "backend: float32 on a CPU, TF32 on recent NVIDIA GPUs), float32, "
                                       "tensorfloat32 or bfloat16 (layers in bfloat16; parameters, Adam's state "
                                       "and the loss in float32); the fused and onednn forms compute in float32 "
                                       "(docs/performance.md, 'Precision and evaluation')", choices=PRECISIONS)

    def __post_init__(self) -> None:
        self._as_python_numbers()
        _int(self.epochs, "epochs", 1)
        _int(self.batch_size, "batch_size", 1)
        _real(self.learning_rate, "learning_rate")
        _real(self.b1, "b1", below_one=True)
        _real(self.b2, "b2", below_one=True)
        _real(self.eps, "eps")
        _choice(self.protocol, "protocol", PROTOCOLS)
        if isinstance(self.holdout_fraction, bool) or not isinstance(self.holdout_fraction, numbers.Real) \
                or not 0 < self.holdout_fraction < 1:
            raise ConfigError("holdout_fraction", f"must lie strictly between 0 and 1, got {self.holdout_fraction!r}")
        _int(self.seed, "seed", 0, MAX_SEED)
        _int(self.eval_batch_size, "eval_batch_size", 1)
        _choice(self.conv_impl, "conv_impl", CONV_IMPLS + ("auto",))
        _int(self.steps_per_call, "steps_per_call", 1, none_ok=True)
        _int(self.grad_chunk, "grad_chunk", 0, none_ok=True)
        _choice(self.loop, "loop", LOOPS, none_ok=True)
        _int(self.log_every, "log_every", 1)
        _choice(self.precision, "precision", PRECISIONS)

    def _as_python_numbers(self) -> None:
        """numpy scalars (np.int64, np.float32, np.str_) as Python's own values: a checkpoint records
        the config as JSON, which takes no numpy scalar. Booleans are left to the checks to refuse."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) in (int, float, str, bool) or value is None:
                continue
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, field.name, int(value))
            elif isinstance(value, numbers.Real):
                object.__setattr__(self, field.name, float(value))
            elif isinstance(value, str):
                object.__setattr__(self, field.name, str(value))

    def resolved(self, backend: str | None = None) -> "TrainConfig":
        """Fill the per-backend choices (:data:`BACKEND_DEFAULTS`) for ``backend`` ("cpu", "gpu",
        "tpu"; default: JAX's default backend). Fields set explicitly are kept. On the CPU, "auto"
        takes the fused kernels (:data:`CPU_FUSED`) where they build, else oneDNN's convolution
        (:data:`CPU_ONEDNN`) where it is installed, else BACKEND_DEFAULTS["cpu"] (always so for the
        reduced precisions, which those float32 kernels do not compute in); ``"fused"`` or
        ``"onednn"`` where it cannot run is a :class:`ConfigError` saying why."""
        if backend is None:
            import jax

            backend = jax.default_backend()
        defaults = BACKEND_DEFAULTS.get(backend, UNKNOWN_BACKEND)
        reduced = self.precision in REDUCED_PRECISIONS
        if self.conv_impl in NATIVE and reduced:
            raise ConfigError("conv_impl", f"{self.conv_impl!r} computes in float32; precision {self.precision!r} "
                                           "needs one of the XLA forms (xla, slices) or conv_impl auto")
        if self.conv_impl in NATIVE:
            if backend != "cpu":
                raise ConfigError("conv_impl", f"{self.conv_impl!r} runs on the CPU only, this backend is {backend!r}")
            import importlib

            module = importlib.import_module(NATIVE[self.conv_impl])
            if not module.available():
                raise ConfigError("conv_impl", f"{self.conv_impl!r} cannot run here: {module.unavailable_reason()}")
            defaults = CPU_FUSED if self.conv_impl == "fused" else CPU_ONEDNN
        elif backend == "cpu" and self.conv_impl == "auto" and not reduced:
            reason = fused_not_default_reason()
            if reason is None:
                defaults = CPU_FUSED
            else:
                defaults = CPU_ONEDNN if onednn_available() else defaults
                _say_fallback(reason, defaults.conv_impl)
        return dataclasses.replace(
            self,
            conv_impl=defaults.conv_impl if self.conv_impl == "auto" else self.conv_impl,
            steps_per_call=self.steps_per_call or defaults.steps_per_call,
            loop=self.loop or defaults.loop,
            grad_chunk=defaults.grad_chunk if self.grad_chunk is None else self.grad_chunk,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


#: Fields that define a run's numbers; a checkpoint made under other values is another run.
#: (epochs only says where to stop; eval_batch_size and log_every change no number; the
#: execution choices conv_impl, steps_per_call, loop and grad_chunk change speed and float rounding;
#: precision changes the products' rounding, more than rounding order under bfloat16.)
RUN_FIELDS = ("seed", "batch_size", "protocol", "holdout_fraction", "learning_rate", "b1", "b2", "eps")
EXECUTION_FIELDS = ("conv_impl", "steps_per_call", "loop", "grad_chunk", "precision")
