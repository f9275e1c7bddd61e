"""Mutual information: our JAX estimator vs scikit-learn's, time and agreement."""

import numpy as np

from . import common


class MutualInformation:
    params = [common.backend()]
    param_names = ["backend"]
    timeout = 600

    def setup_cache(self):
        return common.study_rows()

    def setup(self, data, backend):
        from emnist_jax.classic.mutual_info import mutual_information

        self.X, self.y = data
        mutual_information(self.X, self.y, 62).block_until_ready()  # compiled outside the timing

    def time_jax(self, data, backend):
        from emnist_jax.classic.mutual_info import mutual_information

        mutual_information(self.X, self.y, 62).block_until_ready()

    def time_sklearn_discrete(self, data, backend):
        from emnist_jax.classic.knn_mi import sklearn_mutual_information

        sklearn_mutual_information(self.X, self.y, discrete=True)

    def time_sklearn_default_2000_rows_98_pixels(self, data, backend):
        # The study's k-NN estimator costs about 0.1 s per pixel even on few rows (all 784 pixels
        # of 50,000 rows took 325 s here); every 8th pixel of 2,000 rows keeps it to seconds.
        from emnist_jax.classic.knn_mi import sklearn_mutual_information

        sklearn_mutual_information(self.X[:2000, ::8], self.y[:2000], discrete=False, seed=common.SEED)

    def track_spearman_vs_sklearn_discrete(self, data, backend):
        from scipy.stats import spearmanr

        from emnist_jax.classic.knn_mi import sklearn_mutual_information
        from emnist_jax.classic.mutual_info import mutual_information

        ours = np.asarray(mutual_information(self.X, self.y, 62))
        return float(spearmanr(ours, sklearn_mutual_information(self.X, self.y, discrete=True)).statistic)

    track_spearman_vs_sklearn_discrete.unit = "Spearman rho"


class MutualInformationCompile:
    """Trace + compile time of the jitted MI kernel, as its own figure: every JAX cache is cleared
    inside the timed body, so each sample is a real compile (without it, a cache hit: 0.001 s)."""

    params = [common.backend()]
    param_names = ["backend"]
    number = 1
    warmup_time = 0

    def setup(self, backend):
        import jax.numpy as jnp

        self.X = jnp.zeros((common.N_ROWS, 784), jnp.uint8)
        self.y = jnp.zeros(common.N_ROWS, jnp.int32)

    def time_compile(self, backend):
        import jax

        from emnist_jax.classic.mutual_info import joint_counts

        jax.clear_caches()
        joint_counts.lower(self.X, self.y, n_classes=62).compile()
