"""One-vs-rest logistic regression: the study's algorithm and the Newton solver in JAX, vs numpy and sklearn."""

import numpy as np

from . import common


class LogisticRegression:
    params = [common.backend()]
    param_names = ["backend"]
    timeout = 600

    def setup_cache(self):
        return common.pca_features()

    def setup(self, data, backend):
        from emnist_jax import logreg

        self.train, self.y_train, self.test, self.y_test = data
        logreg.ovr_fit_gd(self.train, self.y_train, 62, n_iter=100).coef.block_until_ready()
        logreg.ovr_fit(self.train, self.y_train, 62).coef.block_until_ready()

    def time_study_gd_jax_100_iterations(self, data, backend):
        from emnist_jax import logreg

        logreg.ovr_fit_gd(self.train, self.y_train, 62, n_iter=100).coef.block_until_ready()

    def time_study_gd_numpy_2_iterations(self, data, backend):
        from emnist_jax import study_reference

        study_reference.fit(self.train.astype(np.float64), self.y_train, max_iter=2)

    def time_newton_jax(self, data, backend):
        from emnist_jax import logreg

        logreg.ovr_fit(self.train, self.y_train, 62).coef.block_until_ready()

    def time_sklearn_lbfgs(self, data, backend):
        from sklearn.linear_model import LogisticRegression

        LogisticRegression().fit(self.train, self.y_train)

    def track_test_score_newton_jax(self, data, backend):
        from emnist_jax import logreg

        params = logreg.ovr_fit(self.train, self.y_train, 62)
        return float((np.asarray(logreg.ovr_predict(params, self.test)) == self.y_test).mean())

    track_test_score_newton_jax.unit = "accuracy"

    def track_test_score_sklearn(self, data, backend):
        from sklearn.linear_model import LogisticRegression

        return float(LogisticRegression().fit(self.train, self.y_train).score(self.test, self.y_test))

    track_test_score_sklearn.unit = "accuracy"


class PCASweep:
    """The PCA stage at three sizes: PCA + sklearn LogisticRegression + RandomForest + JAX OvR."""

    params = [common.backend()]
    param_names = ["backend"]
    timeout = 600

    def setup_cache(self):
        return common.study_rows(5000)

    def time_pca_sweep(self, data, backend):
        from emnist_jax.baselines import pca_sweep

        pca_sweep(*data, n_components=(2, 10, 29), rf_trees=20, logreg_max_iter=1000)
