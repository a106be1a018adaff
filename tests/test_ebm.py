"""Tests for moe_ebm_jax.ebm: the EBM loss and its gradient, the posterior chain's target against
a direct numpy sum, expert picking, and the prior / posterior Langevin chains."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.data import polymnist
from moe_ebm_jax.latent import ebm
from moe_ebm_jax.vae import models
from moe_ebm_jax.vae import networks

M, B, DW, DZ = 3, 2, 2, 3
ENERGY = networks.EnergyMLP(hidden=(8, 8))


def _random_vae_params(vae, seed):
  """Known random VAE params from shapes alone: kernels N(0, 1 / fan_in), biases N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)

  def draw(leaf):  # Stacked leaves: (M, ..., out); kernels have ndim >= 3, biases (M, out).
    fan_in = np.prod(leaf.shape[1:-1]) if leaf.ndim >= 3 else 100.0
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree.map(draw, jax.eval_shape(vae.init, jax.random.key(0)))


@pytest.fixture(scope='module')
def energy_params():
  params = jax.jit(ENERGY.init)(jax.random.key(0), jnp.zeros((1, DZ)))
  # Nonzero biases, so that f is not odd-symmetric by accident.
  return jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)


@pytest.fixture(scope='module')
def tiny():
  vae = models.MultimodalVAE(polymnist.specs(M), widths=(2, 2, 2), latent_w=DW, latent_z=DZ)
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.uniform(size=(B, M, 28, 28, 3)), jnp.float32)
  return vae, _random_vae_params(vae, 0), images


# ------------------------------------------------------------------ (a) ebm_loss


def test_ebm_loss_value_gradient_and_stopped_samples(energy_params):
  rng = np.random.default_rng(2)
  z_prior = jnp.asarray(rng.laplace(size=(6, DZ)), jnp.float32)
  z_post = jnp.asarray(rng.normal(size=(5, DZ)), jnp.float32)
  f = lambda p, z: ENERGY.apply(p, z)
  loss, diag = ebm.ebm_loss(ENERGY, energy_params, z_prior, z_post)
  f_prior = np.asarray(f(energy_params, z_prior), np.float64)
  f_post = np.asarray(f(energy_params, z_post), np.float64)
  np.testing.assert_allclose(float(loss), f_prior.mean() - f_post.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(diag['ebm_loss']), float(loss))
  np.testing.assert_allclose(float(diag['energy_prior']), -f_prior.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(diag['energy_posterior']), -f_post.mean(), rtol=1e-5,
                             atol=1e-6)

  # d loss / d a = mean grad f(prior) - mean grad f(post).
  grad = jax.grad(lambda p: ebm.ebm_loss(ENERGY, p, z_prior, z_post)[0])(energy_params)
  g_prior = jax.grad(lambda p: f(p, z_prior).mean())(energy_params)
  g_post = jax.grad(lambda p: f(p, z_post).mean())(energy_params)
  for g, gp, gq in zip(*map(jax.tree.leaves, (grad, g_prior, g_post))):
    np.testing.assert_allclose(g, gp - gq, rtol=1e-5, atol=1e-6)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad)) > 1e-3

  # Samples are constants: no gradient reaches them, although f itself depends on z.
  dz_prior, dz_post = jax.grad(lambda a, b: ebm.ebm_loss(ENERGY, energy_params, a, b)[0],
                               argnums=(0, 1))(z_prior, z_post)
  np.testing.assert_array_equal(dz_prior, 0.0)
  np.testing.assert_array_equal(dz_post, 0.0)
  assert float(jnp.abs(jax.grad(lambda z: f(energy_params, z).mean())(z_prior)).max()) > 1e-3


def test_energy_l2_penalty_adds_the_squared_energies(energy_params):
  rng = np.random.default_rng(3)
  z_prior = jnp.asarray(rng.laplace(size=(6, DZ)), jnp.float32)
  z_post = jnp.asarray(rng.normal(size=(5, DZ)), jnp.float32)
  f = lambda p, z: ENERGY.apply(p, z)
  lam = 0.3
  loss, diag = ebm.ebm_loss(ENERGY, energy_params, z_prior, z_post, energy_l2=lam)
  f_prior = np.asarray(f(energy_params, z_prior), np.float64)
  f_post = np.asarray(f(energy_params, z_post), np.float64)
  contrastive = f_prior.mean() - f_post.mean()
  np.testing.assert_allclose(float(loss), contrastive + lam * ((f_prior ** 2).mean() +
                                                               (f_post ** 2).mean()), rtol=1e-5)
  np.testing.assert_allclose(float(diag['ebm_loss']), contrastive, rtol=1e-5, atol=1e-6)
  # d/da of lam * mean f^2 = 2 lam mean(f grad f): check on the bias of the output layer, where
  # grad f = 1, so its gradient is 1/n - 1/n + 2 lam (mean f_prior + mean f_post) = 2 lam (...).
  grad = jax.grad(lambda p: ebm.ebm_loss(ENERGY, p, z_prior, z_post, energy_l2=lam)[0])(
      energy_params)
  out_bias = [g for path, g in jax.tree_util.tree_leaves_with_path(grad)
              if 'bias' in jax.tree_util.keystr(path)][-1]
  np.testing.assert_allclose(float(out_bias.reshape(())), 2 * lam * (f_prior.mean() +
                                                                      f_post.mean()), rtol=1e-4)


# ------------------------------------------------------------------ (b) posterior_log_prob


def _np_laplace(x, loc, scale):
  x = np.asarray(x, np.float64)
  return np.sum(-np.abs(x - loc) / scale - math.log(scale) - math.log(2.0), axis=-1)


def _np_posterior_log_prob(vae, vae_params, energy_params, images, observed, w, z, w_state):
  """Direct sum: observed Laplace likelihoods of decoder means + f(z) + log p0(z) [+ log p(w)].

  w (M, B, DW) fixed latents, or w_state (B, M, DW) the chain's own (then also log p(w)).
  """
  dec = jax.jit(vae.decoder.apply)
  x = np.asarray(images, np.float64)
  f = np.asarray(ENERGY.apply(energy_params, z), np.float64)
  out = np.zeros(B)
  for b in range(B):
    for m in range(M):
      if not observed[m]:
        continue
      w_mb = w[m, b] if w_state is None else w_state[b, m]
      mean = dec(models.modality_params(vae_params['decoders'], m),
                 jnp.concatenate([w_mb, z[b]])[None])[0]
      mean = np.asarray(mean, np.float64)
      s = vae.likelihood_scale
      out[b] += np.sum(-np.abs(x[b, m] - mean) / s - math.log(2 * s))
    out[b] += f[b] + _np_laplace(z[b], 0.0, 1.0)
    if w_state is not None:
      out[b] += sum(_np_laplace(w_state[b, m], 0.0, 1.0) for m in range(M))
  return out


@pytest.mark.parametrize('latents', ['z', 'zw'])
def test_posterior_log_prob_matches_direct_sum(tiny, energy_params, latents):
  vae, vae_params, images = tiny
  rng = np.random.default_rng(3)
  z = jnp.asarray(rng.laplace(size=(B, DZ)), jnp.float32)
  w = jnp.asarray(rng.laplace(size=(M, B, DW)), jnp.float32)
  w_state = jnp.asarray(rng.laplace(size=(B, M, DW)), jnp.float32)
  state = {'z': z} if latents == 'z' else {'z': z, 'w': w_state}

  @jax.jit
  def log_prob(images, observed, w, state):
    return ebm.posterior_log_prob(vae, vae_params, ENERGY, energy_params, images, observed,
                                  w)(state)

  observed = np.array([True, False, True])
  lp = log_prob(images, jnp.asarray(observed), w, state)
  assert lp.shape == (B,)
  ref = _np_posterior_log_prob(vae, vae_params, energy_params, images, observed, w, z,
                               None if latents == 'z' else w_state)
  # |lp| ~ 7e3 (two 2352-pixel likelihoods) in float32: rtol 1e-5 is a few ulps.
  np.testing.assert_allclose(lp, ref, rtol=1e-5)

  # The excluded modality's image and private latent do not enter.
  images_1 = images.at[:, 1].set(1.0 - images[:, 1])
  w_1 = w.at[1].set(w[1] + 3.0)
  state_1 = state if latents == 'z' else {'z': z, 'w': w_state.at[:, 1].set(0.0)}
  lp_1 = log_prob(images_1, jnp.asarray(observed), w_1, state_1)
  if latents == 'z':
    np.testing.assert_array_equal(lp_1, lp)
  else:  # Only log p(w_1) changes: the likelihood of modality 1 is still excluded.
    dlog_pw = _np_laplace(np.zeros(DW), 0, 1) - _np_laplace(w_state[:, 1], 0, 1)
    np.testing.assert_allclose(lp_1 - lp, dlog_pw, rtol=1e-3, atol=2e-3)
  # Including it does change the value.
  lp_all = log_prob(images, jnp.ones(M, bool), w, state)
  assert np.all(np.abs(lp_all - lp) > 100.0)
  if latents == 'zw':  # The state's w is used, not the fixed argument.
    np.testing.assert_array_equal(log_prob(images, jnp.asarray(observed), w + 1.0, state), lp)


# ------------------------------------------------------------------ (c) pick_expert


def test_pick_expert_rows_and_balance():
  m, b, d = 3, 5, 2
  samples = (100.0 * jnp.arange(m)[:, None, None] + 10.0 * jnp.arange(b)[None, :, None]
             + jnp.arange(d)[None, None, :])  # samples[e, i, j] = 100 e + 10 i + j.
  keys = jax.random.split(jax.random.key(4), 3000)
  picked = np.asarray(jax.jit(jax.vmap(ebm.pick_expert, (0, None)))(keys, samples))
  assert picked.shape == (3000, b, d)
  expert = np.round(picked[..., 0] / 100.0).astype(int)  # (keys, b)
  # Each row is a whole row of one expert, at the example's own position.
  np.testing.assert_array_equal(picked, np.asarray(samples)[expert, np.arange(b)])
  # 15000 draws: each expert's count is Binomial(15000, 1/3), SD 58; allow 5 SD.
  counts = np.bincount(expert.ravel(), minlength=m)
  np.testing.assert_allclose(counts, 5000, atol=5 * math.sqrt(15000 * 2 / 9))
  # And per example position too (3000 draws each: SD 26; 5 SD).
  for i in range(b):
    np.testing.assert_allclose(np.bincount(expert[:, i], minlength=m), 1000,
                               atol=5 * math.sqrt(3000 * 2 / 9))


# ------------------------------------------------------------------ (d) Langevin chains


def test_sample_prior_with_zero_energy_samples_laplace(energy_params):
  """f = 0 leaves the base Laplace(0, 1): mean 0, variance 2.

  n = 10000 chains x 3 dims = 30000 draws. Mean SE sqrt(2 / 30000) = 0.008, tolerance 0.04;
  variance SE sqrt((E z^4 - 4) / 30000) = sqrt(20 / 30000) = 0.026, tolerance 0.13 (5 SE).
  Unadjusted Langevin at s = 0.1 biases the Laplace variance by < 0.5% (test_langevin.py).
  The chains start from Laplace(0, 1) already, so a correct sampler stays there; a wrong drift
  sign or a nonzero f would push them off within the 400 steps (2 time units).
  """
  n, d, s, steps = 10_000, DZ, 0.1, 400
  params = jax.tree.map(lambda p: p, energy_params)  # A copy: the fixture stays as it is.
  params['params']['dense_out'] = jax.tree.map(jnp.zeros_like, params['params']['dense_out'])
  z_test = jax.random.normal(jax.random.key(5), (7, d))
  np.testing.assert_array_equal(ENERGY.apply(params, z_test), 0.0)

  run = jax.jit(functools.partial(ebm.sample_prior, ENERGY, batch_size=n, latent_dim=d,
                                  num_steps=steps, step_size=s))
  key = jax.random.key(6)
  z, diag = run(params, key)
  assert z.shape == (n, d)
  z = np.asarray(z, np.float64)
  np.testing.assert_allclose(z.mean(), 0.0, atol=0.04)
  np.testing.assert_allclose(z.var(), 2.0, atol=0.13)
  # The gradient is only the base score -sign(z): per-example norm sqrt(d) at every step.
  np.testing.assert_allclose(diag['grad_norm'], math.sqrt(d), rtol=1e-5)
  # The chains did move away from their Laplace start (same key split as sample_prior).
  z0 = np.asarray(jax.random.laplace(jax.random.split(key)[0], (n, d)))
  assert np.mean(np.abs(z - z0)) > 0.5


class _LinearEnergy:
  """f(z) = z . c: a stand-in for the energy network (sample_prior only calls .apply)."""

  @staticmethod
  def apply(c, z):
    return z @ c


def test_base_log_prob_families():
  z = jax.random.normal(jax.random.key(3), (5, 4)) * 2
  np.testing.assert_array_equal(ebm.base_log_prob('laplace', z), models.standard_laplace_log_prob(z))
  np.testing.assert_allclose(ebm.base_log_prob('gaussian', z),
                             -0.5 * (z ** 2).sum(-1) - 2 * np.log(2 * np.pi), rtol=1e-6)
  with pytest.raises(ValueError, match="EBM base 'cauchy'"):
    ebm.base_log_prob('cauchy', z)


def test_gaussian_base_with_a_linear_energy_is_the_shifted_gaussian():
  """exp(c . z) N(0, I) = N(c, I) for any c: the prior chain lands there (ULA at s = 0.1 inflates
  the variance by 1 / (1 - s^2 / 4) - 1 = 0.25%). 4000 chains x 2 dims, 800 steps (4 time
  units, e^-4 of the start's offset left): mean SE 0.016, tolerance 0.08."""
  c = jnp.array([3.0, -2.0])
  z, _ = jax.jit(functools.partial(ebm.sample_prior, _LinearEnergy, batch_size=4000,
                                   latent_dim=2, num_steps=800, step_size=0.1,
                                   base='gaussian'))(c, jax.random.key(7))
  z = np.asarray(z, np.float64)
  np.testing.assert_allclose(z.mean(0), c, atol=0.08)
  np.testing.assert_allclose(z.var(0), 1.0, atol=0.08)


def test_laplace_base_with_a_steeper_linear_energy_is_improper():
  """exp(3 z) Laplace(0, 1) has no normaliser (3 > 1, the Laplace slope): on z > 0 the score is
  3 - 1 = 2, so every chain drifts outward at 2 s^2 / 2 = 0.01 per step, without end. An MLP
  energy grows linearly far out and nothing bounds its slope: what the Gaussian base prevents."""
  steps = 800
  z, _ = jax.jit(functools.partial(ebm.sample_prior, _LinearEnergy, batch_size=2000,
                                   latent_dim=1, num_steps=steps, step_size=0.1,
                                   base='laplace'))(jnp.array([3.0]), jax.random.key(8))
  z = np.asarray(z, np.float64)
  # The drift alone moves a chain 8 units; the start (Laplace(0, 1)) and the noise
  # (sd 0.1 sqrt(800) = 2.8) average out over 2000 chains: mean 8 (+0.25 from the chains that
  # start below 0, where the score is 4), SE ~0.07.
  np.testing.assert_allclose(z.mean(), 0.01 * steps, atol=1.0)


@pytest.mark.parametrize('latents', ['z', 'zw'])
def test_sample_posterior_shapes_and_ascent(tiny, energy_params, latents):
  vae, vae_params, images = tiny
  rng = np.random.default_rng(7)
  z0 = jnp.asarray(rng.laplace(size=(B, DZ)), jnp.float32)
  w = jnp.asarray(rng.laplace(size=(M, B, DW)), jnp.float32)
  steps = 6

  @jax.jit
  def run(z0, w, key):
    return ebm.sample_posterior(vae, vae_params, ENERGY, energy_params, images, z0, w, key,
                                num_steps=steps, step_size=0.01, noise_scale=0.0,
                                latents=latents)

  state, diag = run(z0, w, jax.random.key(8))
  expected = {'z': (B, DZ)} if latents == 'z' else {'z': (B, DZ), 'w': (B, M, DW)}
  assert {k: v.shape for k, v in state.items()} == expected
  lp = np.asarray(diag['log_prob'], np.float64)
  assert lp.shape == (steps,)
  # Gradient ascent with a tiny step: the log prob rises at every step.
  assert np.all(np.diff(lp) > 0), lp
  assert np.all(np.isfinite(lp))
  assert float(jnp.abs(state['z'] - z0).max()) > 0


def test_sample_posterior_rejects_unknown_latents(tiny, energy_params):
  vae, vae_params, images = tiny
  with pytest.raises(ValueError, match='posterior latents'):
    ebm.sample_posterior(vae, vae_params, ENERGY, energy_params, images, jnp.zeros((B, DZ)),
                         jnp.zeros((M, B, DW)), jax.random.key(0), num_steps=1,
                         step_size=0.1, latents='w')


@pytest.mark.parametrize('base', ['gaussian', 'laplace'])
def test_log_partition_of_an_exponential_tilt_is_its_closed_form(base):
  # exp(c.z) p0(z): Z = exp(|c|^2 / 2) under N(0, I), prod 1 / (1 - c_i^2) under Laplace(0, 1).
  c = jnp.array([0.4, -0.3])
  want = (float(c @ c) / 2 if base == 'gaussian' else float(-jnp.log(1 - c**2).sum()))
  f = lambda z: z @ c
  got = ebm.log_partition_grid(f, base, 2, half_width=30.0, num=1201)
  assert float(got) == pytest.approx(want, abs=2e-3)
  mc = ebm.log_partition_monte_carlo(f, base, 2, jax.random.PRNGKey(0), num=400_000)
  assert float(mc) == pytest.approx(want, abs=0.02)
  # One dimension, and a density that integrates to one (f = 0): log Z = 0.
  assert float(ebm.log_partition_grid(lambda z: z[:, 0] * 0.5, base, 1, half_width=30.0)) == \
      pytest.approx(0.125 if base == 'gaussian' else -float(jnp.log(0.75)), abs=2e-3)
  assert float(ebm.log_partition_grid(lambda z: 0.0 * z[:, 0], base, 2)) == \
      pytest.approx(0.0, abs=2e-3 if base == 'gaussian' else 2e-2)
  with pytest.raises(ValueError, match='D = 1 or 2'):
    ebm.log_partition_grid(f, base, 3)


def test_chain_against_density_tells_exact_samples_from_a_shrunken_chain():
  """f = 0 (the density is p0 = N(0, I), Z = 1): exact draws sit at the sampling-noise distance
  and the closed-form mean radius sqrt(pi / 2); draws shrunk to half their radius are far off."""
  f = lambda z: jnp.zeros(z.shape[:-1])
  draws = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (4000, 2)))
  exact = ebm.chain_against_density(f, 'gaussian', draws, jax.random.PRNGKey(4))
  shrunk = ebm.chain_against_density(f, 'gaussian', draws / 2, jax.random.PRNGKey(4))
  assert exact['log_z'] == pytest.approx(0.0, abs=1e-3)
  assert exact['mean_radius_density'] == pytest.approx(np.sqrt(np.pi / 2), abs=1e-3)
  assert exact['mean_radius_chain'] == pytest.approx(np.sqrt(np.pi / 2), abs=0.05)
  assert exact['tv_chain'] < 2 * exact['tv_exact_draws'] + 0.02
  assert shrunk['tv_chain'] > 0.3 and shrunk['mean_radius_chain'] < 0.7


@pytest.mark.parametrize('family', ebm.BASES)
def test_a_scaled_base_is_the_family_at_that_scale(family):
  """p0 = family(0, s^2 I): its closed-form density, draws of that spread, log Z = 0 for f = 0
  over a grid that widens with s, and the tilt's log Z: for N(0, s^2 I) and f = c.z it is
  s^2 |c|^2 / 2 (the Laplace's: -sum log(1 - s^2 c^2))."""
  base = ebm.Base(family, 3.0)
  z = jnp.array([[1.5, -6.0], [0.0, 9.0]])
  if family == 'gaussian':
    want = -0.5 * (z ** 2).sum(-1) / 9 - 2 * np.log(3 * np.sqrt(2 * np.pi))
  else:
    want = -np.abs(z).sum(-1) / 3 - 2 * np.log(2 * 3)
  np.testing.assert_allclose(base.log_prob(z), want, rtol=1e-6)
  draws = np.asarray(base.sample(jax.random.PRNGKey(0), (40_000, 2)))
  np.testing.assert_allclose(draws.std(0), [3 if family == 'gaussian' else 3 * np.sqrt(2)] * 2,
                             rtol=0.03)
  assert float(ebm.log_partition_grid(lambda z: 0.0 * z[:, 0], base, 2)) == \
      pytest.approx(0.0, abs=2e-3 if family == 'gaussian' else 2e-2)
  c = jnp.array([0.1, -0.2])
  tilt = 9 * float(c @ c) / 2 if family == 'gaussian' else -float(jnp.log(1 - 9 * c ** 2).sum())
  assert float(ebm.log_partition_grid(lambda z: z @ c, base, 2, half_width=60.0, num=2001)) == \
      pytest.approx(tilt, abs=5e-3)
  with pytest.raises(ValueError, match='must be > 0'):
    ebm.Base(family, 0.0)
