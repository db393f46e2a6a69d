"""Engine-agnostic continual learning (CWR*, latent replay, learner, metrics). Never imports torch."""
