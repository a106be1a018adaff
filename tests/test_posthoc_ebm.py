"""The post-hoc EBM: the project's latent EBM and chains trained on fixed latents reach a known
target as its chains do in training (tests/test_ebm.py)."""

import jax
import numpy as np
import optax
import pytest

from moe_ebm_jax.latent import ebm
from moe_ebm_jax.latent import posthoc_ebm
from moe_ebm_jax.latent import priors
from moe_ebm_jax.latent import samplers
from moe_ebm_jax.vae import networks

MEANS = np.array([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
SD = 0.5


def target_draws(n, seed):
  rng = np.random.default_rng(seed)
  return MEANS[rng.choice(4, size=n, p=WEIGHTS)] + SD * rng.normal(size=(n, 2))


def histogram(z):
  edges = np.linspace(-4, 4, 9)
  h = np.histogram2d(z[:, 0], z[:, 1], bins=[edges, edges])[0].ravel() / len(z)
  return np.append(h, 1 - h.sum())  # The rest of the plane as one more cell.


def energy_prior(persistent_chains):
  chain = lambda steps, size: samplers.Chain(steps, size, 1.0, 'langevin', True)
  return priors.EnergyPrior(networks.EnergyMLP(hidden=(64, 64)), chain(60, 0.4), chain(0, 0.1),
                            'q', 'z', 'one', 0.0, 1e4, ebm.Base('gaussian', 3.0),
                            persistent_chains, 0.05)


@pytest.mark.slow
def test_a_post_hoc_ebm_samples_a_known_mixture_with_its_weights():
  prior = energy_prior(1000)
  params, state, info = posthoc_ebm.fit(prior, target_draws(8192, 0), jax.random.PRNGKey(0),
                                        optax.adam(1e-3, b1=0.5, b2=0.999), steps=1000,
                                        batch_size=256)
  assert info['skipped'] == 0 and abs(info['ebm_loss']) < 0.05  # Chains and data balance.
  assert abs(info['mean_f_train'] - info['mean_f_held_out']) < 0.1  # No memorising.
  z = np.asarray(prior.sample(params, jax.random.PRNGKey(5), 4000, 2, state=state)[0])
  tv = lambda a, b: 0.5 * np.abs(histogram(a) - histogram(b)).sum()
  exact = target_draws(4000, 1)
  noise = tv(target_draws(4000, 2), exact)  # What sampling alone gives (~0.04).
  untrained = np.asarray(prior.p0.sample(jax.random.PRNGKey(6), (4000, 2)))
  assert tv(z, exact) < noise + 0.06 and tv(untrained, exact) > 0.5, (tv(z, exact), noise)
  near = [(np.linalg.norm(z - m, axis=1) < 4 * SD).mean() for m in MEANS]
  np.testing.assert_allclose(near, WEIGHTS, atol=0.06)
  # What the chains give is what the update saw: the chains' states were kept (persistent).
  assert state['chains'].shape == (1000, 2) and int(state['cursor']) == (1000 * 256) % 1000
