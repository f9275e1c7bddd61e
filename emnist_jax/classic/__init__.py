"""The original study's classic experiments (sections 3-5): mutual information, RandomForests on the
top pixels, PCA with three classifiers, and logistic regression in JAX.

Nothing is imported here, so that :mod:`emnist_jax.classic.config` (the report's profiles and
``--help``) loads without scikit-learn or JAX. The modules, from the bottom up:

- :mod:`~emnist_jax.classic.config`: ``ClassicConfig`` and the shared argument checks;
- :mod:`~emnist_jax.classic.protocol`: the seeded split and timing every study shares;
- :mod:`~emnist_jax.classic.mutual_info`: mutual information in JAX, pixel ranking;
- :mod:`~emnist_jax.classic.knn_mi`: scikit-learn's k-NN mutual information, as the study called it;
- :mod:`~emnist_jax.classic.pca`: PCA features (nested components, standardised scores);
- :mod:`~emnist_jax.classic.logreg`: one-vs-rest logistic regression as pure JAX functions;
- :mod:`~emnist_jax.classic.estimator`: the same as a scikit-learn estimator;
- :mod:`~emnist_jax.classic.forests`: RandomForests grown a few trees at a time, side by side;
- :mod:`~emnist_jax.classic.pca_sweep`: PCA(n), then three classifiers, for each n;
- :mod:`~emnist_jax.classic.studies`: the four studies the report runs, as result objects;
- :mod:`~emnist_jax.classic.study_reference`: the study's numpy logistic regression, a test reference.
"""
