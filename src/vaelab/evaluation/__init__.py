"""Measuring a trained model: likelihoods (ELBO, importance-sampled NLL, bits/dim), the quality of
its samples (Parzen window, Fréchet distance), the linear autoencoder against PCA, and what its
codes hold (probes). Each works against what a model declares it can do
(:mod:`vaelab.models.base`: ``Encoder``, ``Sampler``, ``HasLikelihood``), never its name."""
