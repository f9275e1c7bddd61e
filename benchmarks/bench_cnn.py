"""The study's CNN: training and evaluation throughput, compile time, accuracy after short training.

The convolution is a parameter, set to what ``TrainConfig().resolved()`` picks here (on a CPU
"fused" where g++ builds our kernels, else "onednn" with the optional extra, else "slices";
``asv run --python=same`` measures the project's own environment, extras included): a fallback shows
as another parameter value, not as a slowdown.
"""

import numpy as np

from . import common


def default_conv() -> str:
    """The convolution the default configuration runs on this backend and installation."""
    from emnist_jax.cnn import TrainConfig

    return TrainConfig().resolved().conv_impl


class TrainStep:
    """One jitted call of K training steps (K, loop and convolution per backend, see TrainConfig.resolved)."""

    params = ([64, 256], [common.backend()], [default_conv()])
    param_names = ["batch", "backend", "conv"]
    timeout = 300

    def setup(self, batch, backend, conv):
        import jax
        import jax.numpy as jnp

        from emnist_jax.cnn import TrainConfig
        from emnist_jax.cnn.placement import make_mesh
        from emnist_jax.cnn.programs import train_calls
        from emnist_jax.cnn.steps import create_state, zero_sums

        self.config = TrainConfig(batch_size=batch, conv_impl=conv).resolved()
        self.mesh = make_mesh()
        rng = np.random.default_rng(common.SEED)
        self.images = jnp.asarray(rng.integers(0, 256, (4096, 28, 28), dtype=np.uint8))
        self.labels = jnp.asarray(rng.integers(0, 62, 4096).astype(np.int32))
        self.index = jnp.asarray(rng.integers(0, 4096, (1, self.config.steps_per_call, batch)).astype(np.int32))
        self.state = create_state(self.config, 62)
        self.sums = zero_sums()
        self.train_calls = train_calls
        self.call()
        jax.block_until_ready(self.sums)

    def call(self):
        self.state, self.sums = self.train_calls(self.state, self.images, self.labels, self.index, 0, self.sums,
                                                 mesh=self.mesh, loop=self.config.loop)

    def time_train_call(self, batch, backend, conv):
        import jax

        self.call()
        jax.block_until_ready(self.sums)

    def track_train_images_per_second(self, batch, backend, conv):
        import time

        import jax

        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < 3.0:
            self.call()
            calls += 1
        jax.block_until_ready(self.sums)
        return calls * self.config.steps_per_call * batch / (time.perf_counter() - start)

    track_train_images_per_second.unit = "images/s"


class EvalStep:
    params = ([64, 256], [common.backend()], [default_conv()])
    param_names = ["batch", "backend", "conv"]

    def setup(self, batch, backend, conv):
        import jax
        import jax.numpy as jnp

        from emnist_jax.cnn import TrainConfig
        from emnist_jax.cnn.placement import make_mesh
        from emnist_jax.cnn.programs import eval_batch
        from emnist_jax.cnn.steps import create_state

        config = TrainConfig(conv_impl=conv).resolved()
        self.state = create_state(config, 62)
        self.mesh = make_mesh()
        rng = np.random.default_rng(common.SEED)
        self.x = jnp.asarray(rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8))
        self.y = jnp.zeros(batch, jnp.int32)
        self.mask = jnp.ones(batch)
        self.eval_batch = eval_batch
        jax.block_until_ready(self.run())

    def run(self):
        return self.eval_batch(self.state.params, self.x, self.y, self.mask, apply_fn=self.state.apply_fn,
                               mesh=self.mesh)

    def time_eval_batch(self, batch, backend, conv):
        import jax

        jax.block_until_ready(self.run())


class Compile:
    """Trace + compile of the training call, as its own figure (JAX's caches cleared in the timed body,
    so this is a real compile, not a cache hit)."""

    params = ([common.backend()], [default_conv()])
    param_names = ["backend", "conv"]
    timeout = 300
    number = 1          # every call compiles for real: no calibration or warm-up rounds
    warmup_time = 0

    def setup(self, backend, conv):
        import jax.numpy as jnp

        from emnist_jax.cnn import TrainConfig
        from emnist_jax.cnn.placement import make_mesh
        from emnist_jax.cnn.steps import create_state, zero_sums

        self.config = TrainConfig(conv_impl=conv).resolved()
        self.state = create_state(self.config, 62)
        self.mesh = make_mesh()
        self.args = (jnp.zeros((256, 28, 28), jnp.uint8), jnp.zeros(256, jnp.int32),
                     jnp.zeros((1, self.config.steps_per_call, 64), jnp.int32), 0, zero_sums())

    def time_compile_train_call(self, backend, conv):
        import jax

        from emnist_jax.cnn.programs import train_calls

        jax.clear_caches()
        train_calls.lower(self.state, *self.args, mesh=self.mesh, loop=self.config.loop).compile()


class ShortTraining:
    """Accuracy on 2,000 test images after 1 epoch on 6,000 embedded-default images (seeded)."""

    params = [common.backend()]
    param_names = ["backend"]
    timeout = 600

    def setup_cache(self):
        import dataclasses

        from emnist_jax.cnn import TrainConfig, train_and_evaluate

        ds = common.default_dataset()
        small = dataclasses.replace(ds, train_images=ds.train_images[:6000], train_labels=ds.train_labels[:6000],
                                    test_images=ds.test_images[:2000], test_labels=ds.test_labels[:2000])
        result = train_and_evaluate(small, TrainConfig(epochs=1, protocol="official"), progress=False)
        return result.evaluations["test"].accuracy

    def track_test_accuracy_after_1_epoch(self, accuracy, backend):
        return accuracy

    track_test_accuracy_after_1_epoch.unit = "accuracy"
