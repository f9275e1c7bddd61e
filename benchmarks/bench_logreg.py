"""One-vs-rest logistic regression: the study's algorithm and the penalised solvers in JAX, vs numpy and sklearn.

All on the study's setting: 29 standardised PCA components of the first 10,000 rows, 70 % split
(7,000 x 29, 62 classes). JAX programs are compiled in ``setup``, outside the timings; the
compilation itself is timed in ``LogisticRegressionCompile``.
"""

import numpy as np

from . import common

#: iterations of the study's gradient ascent in both implementations (like with like; the study ran 5,000)
GD_ITERATIONS = 20


class LogisticRegression:
    params = [common.backend()]
    param_names = ["backend"]
    timeout = 600

    def setup_cache(self):
        return common.pca_features()

    def setup(self, data, backend):
        from emnist_jax import logreg

        self.train, self.y_train, self.test, self.y_test = data
        logreg.ovr_fit_gd(self.train, self.y_train, 62, n_iter=GD_ITERATIONS).coef.block_until_ready()
        logreg.ovr_fit(self.train, self.y_train, 62).coef.block_until_ready()
        logreg.ovr_fit(self.train, self.y_train, 62, solver="lbfgs").coef.block_until_ready()
        self.model = logreg.OneVsRestLogisticRegression().fit(self.train, self.y_train)

    def time_study_gd_jax(self, data, backend):
        from emnist_jax import logreg

        logreg.ovr_fit_gd(self.train, self.y_train, 62, n_iter=GD_ITERATIONS).coef.block_until_ready()

    def time_study_gd_numpy(self, data, backend):
        from emnist_jax.classic import study_reference

        study_reference.fit(self.train.astype(np.float64), self.y_train, max_iter=GD_ITERATIONS)

    def time_newton_jax(self, data, backend):
        from emnist_jax import logreg

        logreg.ovr_fit(self.train, self.y_train, 62).coef.block_until_ready()

    def time_lbfgs_jax(self, data, backend):
        from emnist_jax import logreg

        logreg.ovr_fit(self.train, self.y_train, 62, solver="lbfgs").coef.block_until_ready()

    def time_estimator_fit(self, data, backend):
        from emnist_jax.logreg import OneVsRestLogisticRegression

        OneVsRestLogisticRegression().fit(self.train, self.y_train)

    def time_estimator_predict(self, data, backend):
        self.model.predict(self.test)

    def time_sklearn_lbfgs(self, data, backend):
        from sklearn.linear_model import LogisticRegression

        LogisticRegression().fit(self.train, self.y_train)

    def track_test_score_newton_jax(self, data, backend):
        from emnist_jax import logreg

        params = logreg.ovr_fit(self.train, self.y_train, 62)
        return float((np.asarray(logreg.ovr_predict(params, self.test)) == self.y_test).mean())

    track_test_score_newton_jax.unit = "accuracy"

    def track_test_score_lbfgs_jax(self, data, backend):
        from emnist_jax import logreg

        params = logreg.ovr_fit(self.train, self.y_train, 62, solver="lbfgs")
        return float((np.asarray(logreg.ovr_predict(params, self.test)) == self.y_test).mean())

    track_test_score_lbfgs_jax.unit = "accuracy"

    def track_test_score_estimator(self, data, backend):
        return float(self.model.score(self.test, self.y_test))

    track_test_score_estimator.unit = "accuracy"

    def track_test_score_sklearn(self, data, backend):
        from sklearn.linear_model import LogisticRegression

        return float(LogisticRegression().fit(self.train, self.y_train).score(self.test, self.y_test))

    track_test_score_sklearn.unit = "accuracy"


class LogisticRegressionCompile:
    """Compile time of the public Newton fit, every JAX cache cleared first (a real compile, not a cache hit).

    Timed as the first call of ``ovr_fit(..., max_iter=1)``: its one Newton step on 7,000 x 29
    costs milliseconds; the rest is tracing and compiling the fit and its result check.
    """

    params = [common.backend()]
    param_names = ["backend"]
    number = 1
    warmup_time = 0

    def setup(self, backend):
        rng = np.random.default_rng(common.SEED)
        self.X = rng.normal(size=(7000, 29)).astype(np.float32)
        self.y = np.arange(7000) % 62

    def time_compile_newton(self, backend):
        import warnings

        import jax

        from emnist_jax import logreg

        jax.clear_caches()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one step does not converge, by design
            logreg.ovr_fit(self.X, self.y, 62, max_iter=1).coef.block_until_ready()


class PCASweep:
    """The PCA stage at three sizes: PCA + sklearn LogisticRegression + RandomForest + JAX OvR."""

    params = [common.backend()]
    param_names = ["backend"]
    timeout = 600

    def setup_cache(self):
        return common.study_rows(5000)

    def time_pca_sweep(self, data, backend):
        from emnist_jax.classic.pca_sweep import pca_sweep

        pca_sweep(*data, n_components=(2, 10, 29), rf_trees=20, logreg_max_iter=1000)
