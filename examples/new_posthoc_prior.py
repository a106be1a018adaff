r"""A new post-hoc prior: a Gaussian kernel density estimate of q(z | X), fitted after training
(bandwidth by Scott's rule) and evaluated as the built-in 'gmm', 'flow' and 'ebm' are.

  python examples/new_posthoc_prior.py   # ~1 minute on 2 CPU cores, the synthetic mixture"""

import dataclasses
import json
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from moe_ebm_jax import config_lib, fit_prior, train
from moe_ebm_jax.latent import posthoc, priors


@dataclasses.dataclass(frozen=True)
class KdePrior(priors.Prior):  # Fitted, not learned in the step: `learn` changes nothing.
  num_points: int = 1024

  def init(self, key, latent_dim):  # The shapes a saved fit is loaded into.
    return {'points': jnp.zeros((self.num_points, latent_dim)), 'bandwidth': jnp.ones(())}

  def log_prob(self, params, beta):  # (..., D) -> (...): the mean of N(z; z_i, h^2 I).
    h, n = params['bandwidth'], self.num_points
    return lambda z: jax.nn.logsumexp(-0.5 * jnp.square(z[..., None, :] - params['points']).sum(
        -1) / h ** 2, -1) - math.log(n) - z.shape[-1] * (jnp.log(h) + 0.5 * math.log(2 * math.pi))

  def sample(self, params, key, num, latent_dim, keep_trajectory=False, state=None):
    pick = jax.random.randint(jax.random.fold_in(key, 1), (num,), 0, self.num_points)
    noise = jax.random.normal(key, (num, latent_dim))
    return params['points'][pick] + params['bandwidth'] * noise, {}

  def learn(self, params, state, keys, vae, vae_params, x, aux):
    return priors.PriorUpdate(jax.tree.map(jnp.zeros_like, params), state, {}, True, True)


def fit_kde(config, z, key):  # (config, z (N, D), key) -> (prior, params, state, info)
  points = np.asarray(z)[np.asarray(jax.random.permutation(key, len(z)))[:1024]]
  bandwidth = points.std(0).mean() * len(points) ** (-1 / (points.shape[1] + 4))  # Scott's.
  params = {'points': jnp.asarray(points), 'bandwidth': jnp.asarray(bandwidth, jnp.float32)}
  return KdePrior(len(points)), params, {}, {'bandwidth': float(bandwidth), 'seconds': 0.0}


posthoc.register('kde', fit_kde, KdePrior)


if __name__ == '__main__':
  config = config_lib.from_file(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                             'smoke.py'), 'mmvaeplus,synthetic_mixture')
  config.num_train_steps, config.data.train_subset, config.posthoc.prior = 300, None, 'kde'
  config.eval.num_joint_samples, config.eval.at_end_of_training = 500, True  # Own prior's too.
  train.train_and_evaluate(config, workdir := tempfile.mkdtemp())
  metrics = fit_prior.fit(config, workdir)  # Fitted, saved beside the checkpoint, evaluated.
  own = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))['coherence']
  kde, fit = metrics['coherence']['joint_coherence'], metrics['posthoc']['fit']
  print(f"joint coherence: own prior {own['joint_coherence']:.3f}, KDE {kde:.3f}; bandwidth "
        f"{fit['bandwidth']:.3f}; fitted in {workdir}")
