"""Tests for moe_ebm_jax.objectives: the MMVAE+ formula against a float64 numpy reference, and
the ELBO / IWAE / DReG estimators on a 1-D Gaussian model whose answers are known in closed form.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from moe_ebm_jax import config_lib
from moe_ebm_jax.data import polymnist
from moe_ebm_jax.vae import models
from moe_ebm_jax.vae import objectives

M, B, DW, DZ = 3, 4, 2, 3
BETA = 2.5
LIK_SCALE = 0.75


def _random_params(vae, seed):
  """Known random params from shapes alone (Flax's init would compile a sampler per shape):
  kernels N(0, 1 / fan_in), biases N(0, 0.1^2), nonzero auxiliary-prior logits."""
  rng = np.random.default_rng(seed)

  def draw(leaf):  # Stacked leaves: (M, ..., out); kernels have ndim >= 3, biases (M, out).
    fan_in = np.prod(leaf.shape[1:-1]) if leaf.ndim >= 3 else 100.0
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

  params = jax.tree.map(draw, jax.eval_shape(vae.init, jax.random.key(0)))
  params['aux_prior_logits'] = jnp.asarray(rng.normal(size=(M, DW)), jnp.float32)
  return params


@pytest.fixture(scope='module')
def tiny():
  """A tiny MMVAE+ (3 modalities, widths 2), random images in [0, 1], nonzero aux logits."""
  vae = models.MultimodalVAE(polymnist.specs(M), widths=(2, 2, 2), latent_w=DW, latent_z=DZ)
  params = _random_params(vae, 0)
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(B, M, 28, 28, 3)), jnp.float32)
  return vae, params, images


# ------------------------------------------------------------------ (a) K = 1 MMVAE+ objective


def _np_laplace(x, loc, scale):
  """Laplace log-density summed over the last axis, float64."""
  x, loc, scale = (np.asarray(a, np.float64) for a in (x, loc, scale))
  return np.sum(-np.abs(x - loc) / scale - np.log(scale) - math.log(2.0), axis=-1)


def _np_posteriors(vae, params, images):
  """Posterior locs and scales (M, B, D) in float64 from the raw encoder outputs."""
  enc = jax.jit(vae.encoder.apply)
  out = {'w_loc': [], 'w_scale': [], 'z_loc': [], 'z_scale': []}
  for m in range(M):
    w_loc, w_logits, z_loc, z_logits = (
        np.asarray(t, np.float64)
        for t in enc(models.modality_params(params['encoders'], m), images[:, m]))
    out['w_loc'].append(w_loc)
    out['z_loc'].append(z_loc)
    out['w_scale'].append(scipy.special.softmax(w_logits, axis=-1) * DW + 1e-6)
    out['z_scale'].append(scipy.special.softmax(z_logits, axis=-1) * DZ + 1e-6)
  return {k: np.stack(v) for k, v in out.items()}


def _np_mmvaeplus_lw(vae, params, images, latents, log_prior_z, beta):
  """lw[r, b] of docs/method.md, section 1.3, (K = 1) with explicit loops over r, d and b; also its
  reconstruction and KL parts."""
  q = _np_posteriors(vae, params, images)
  dec = jax.jit(vae.decoder.apply)
  x = np.asarray(images, np.float64)
  w = np.asarray(latents.w, np.float64)[:, 0]  # (M, B, DW)
  z = np.asarray(latents.z, np.float64)[:, 0]  # (M, B, DZ)
  w_aux = np.asarray(latents.w_aux, np.float64)[:, :, 0]  # (Md, Mr, B, DW)
  lw, recon, kl = np.zeros((M, B)), np.zeros((M, B)), np.zeros((M, B))
  for r in range(M):
    for b in range(B):
      log_px = 0.0
      for d in range(M):
        w_d = w[r, b] if d == r else w_aux[d, r, b]
        latent = np.concatenate([w_d, z[r, b]])[None].astype(np.float32)
        mean = np.asarray(dec(models.modality_params(params['decoders'], d), latent)[0],
                          np.float64)
        log_px += np.sum(-np.abs(x[b, d] - mean) / LIK_SCALE - math.log(2 * LIK_SCALE))
      log_qz_each = [_np_laplace(z[r, b], q['z_loc'][m, b], q['z_scale'][m, b])
                     for m in range(M)]
      log_qz = scipy.special.logsumexp(log_qz_each) - math.log(M)
      log_qw = _np_laplace(w[r, b], q['w_loc'][r, b], q['w_scale'][r, b])
      log_pz = log_prior_z(z[r, b])
      log_pw = _np_laplace(w[r, b], 0.0, 1.0)
      recon[r, b] = log_px
      kl[r, b] = log_qz + log_qw - log_pz - log_pw
      lw[r, b] = log_px + beta * (log_pz + log_pw - log_qz - log_qw)
  return lw, recon, kl


def _np_base_prior(z):
  return _np_laplace(z, 0.0, 1.0)


def _np_custom_prior(z):
  return _np_laplace(z, 0.0, 1.0) + 0.3 * np.sum(z**2, axis=-1)


def _jax_custom_prior(z):
  return models.standard_laplace_log_prob(z) + 0.3 * jnp.sum(z**2, axis=-1)


@functools.partial(jax.jit, static_argnums=0, static_argnames=('log_prior_z',))
def _elbo_k1(vae, params, images, key, beta=BETA, log_prior_z=models.standard_laplace_log_prob):
  """The K = 1 objective, jitted (beta traced: one compile per prior)."""
  return objectives.mmvaeplus_objective(vae, params, images, key, beta=beta, num_samples=1,
                                        estimator='elbo', log_prior_z=log_prior_z)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _same_latents(vae, params, images, key, num_samples):
  """The samples the objective draws internally: same key, same posteriors."""
  post = vae.encode(params, images)
  return objectives.sample_latents(key, post, vae.aux_prior_scale(params), num_samples)


@pytest.mark.parametrize('prior', ['base', 'custom'])
def test_mmvaeplus_elbo_matches_numpy_reference(tiny, prior):
  vae, params, images = tiny
  key = jax.random.key(7)
  jax_prior, np_prior = {'base': (models.standard_laplace_log_prob, _np_base_prior),
                         'custom': (_jax_custom_prior, _np_custom_prior)}[prior]
  loss, aux = _elbo_k1(vae, params, images, key, beta=BETA, log_prior_z=jax_prior)
  latents = _same_latents(vae, params, images, key, 1)
  # The very same samples (up to XLA fusion differences in the jitted encoder).
  for mine, theirs in zip(latents, aux.latents):
    np.testing.assert_allclose(theirs, mine, rtol=1e-5, atol=1e-6)
  lw, recon, kl = _np_mmvaeplus_lw(vae, params, images, latents, np_prior, BETA)
  # |loss| ~ 1e4 from float32 sums over 3 x 2352 pixels: rtol 1e-5 is a few float32 ulps.
  np.testing.assert_allclose(float(loss), -lw.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(aux.metrics['bound']), lw.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(aux.metrics['recon']), recon.mean(), rtol=1e-5)
  # The KL part is small next to the likelihood: check it on its own, tightly.
  np.testing.assert_allclose(float(aux.metrics['kl']), kl.mean(), rtol=1e-5, atol=1e-4)
  # MMVAE's Laplace scales are softmax * D, so their arithmetic mean is 1 for every posterior
  # and only the mean log scale says how concentrated they are (< 0 by Jensen unless all equal).
  scales = np.asarray(aux.post.z_scale, np.float64)
  np.testing.assert_allclose(scales.mean(-1), 1.0, rtol=1e-4)
  np.testing.assert_allclose(float(aux.metrics['posterior_log_scale_z']), np.log(scales).mean(),
                             rtol=1e-4, atol=1e-6)
  assert float(aux.metrics['posterior_log_scale_z']) < 0


def test_mmvaeplus_prior_term_enters_times_beta(tiny):
  vae, params, images = tiny
  key = jax.random.key(7)
  z = np.asarray(_same_latents(vae, params, images, key, 1).z, np.float64)
  extra = 0.3 * np.sum(z**2, axis=-1).mean()  # Custom minus base log prior, mean over (r, b).
  for beta in (1.0, 2.5):
    run = functools.partial(_elbo_k1, vae, params, images, key, beta=beta)
    loss_base, _ = run()
    loss_custom, _ = run(log_prior_z=_jax_custom_prior)
    np.testing.assert_allclose(float(loss_base - loss_custom), beta * extra,
                               rtol=1e-3, atol=5e-3)


# ------------------------------------------------------------------ (b) estimators, 1-D Gaussian

X = jnp.array([-1.0, 0.5, 2.0])  # B = 3 observations, one model each.
LOG_PX = -0.5 * np.asarray(X, np.float64)**2 / 2 - 0.5 * np.log(2 * np.pi * 2)  # N(x; 0, 2).
POST_MU, POST_SIGMA = np.asarray(X) / 2, np.sqrt(0.5)  # Exact posterior N(x / 2, 1 / 2).


def _log_normal(x, mu, sigma):
  return -0.5 * ((x - mu) / sigma)**2 - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi)


def _gauss_log_weights_fn(params, key, k):
  """p(z) = N(0, 1), p(x | z) = N(z, 1), q = N(mu, exp(log_sigma)): lw (S=1, K, B)."""
  mu, log_sigma = params

  def fn(grad_weights, stop_posterior):
    eps = jax.random.normal(key, (1, k, X.shape[0]))
    z = mu + jnp.exp(log_sigma) * eps
    if grad_weights is not None:
      z = objectives.scale_gradient(z, grad_weights)
    q_mu, q_log_sigma = jax.lax.stop_gradient(params) if stop_posterior else params
    lw = (_log_normal(z, 0.0, 1.0) + _log_normal(X, z, 1.0)
          - _log_normal(z, q_mu, jnp.exp(q_log_sigma)))
    return lw, None

  return fn


@functools.partial(jax.jit, static_argnames=('estimator', 'k'))
def _gauss_loss(params, key, estimator, k):
  loss, bound, _ = objectives.importance_weighted_loss(_gauss_log_weights_fn(params, key, k),
                                                       estimator)
  return loss, bound


@functools.partial(jax.jit, static_argnames=('estimator', 'k'))
def _gauss_grad(params, key, estimator, k):
  return jax.grad(lambda p: _gauss_loss(p, key, estimator, k)[0])(params)


def _params(mu, sigma):
  return (jnp.asarray(mu, jnp.float32) * jnp.ones(3), jnp.log(sigma) * jnp.ones(3))


EXACT = _params(POST_MU, POST_SIGMA)
OFF_MU, OFF_SIGMA = POST_MU + 0.5, 1.0  # q != posterior.
OFF = _params(OFF_MU, OFF_SIGMA)


@pytest.mark.parametrize('estimator', ['elbo', 'iwae', 'dreg'])
@pytest.mark.parametrize('k', [1, 7])
def test_exact_posterior_bounds_equal_log_px(estimator, k):
  loss, bound = _gauss_loss(EXACT, jax.random.key(k), estimator, k)
  assert bound.shape == (1, 3)
  np.testing.assert_allclose(bound[0], LOG_PX, atol=1e-5)
  if estimator != 'dreg':  # The DReG surrogate's value is not the bound.
    np.testing.assert_allclose(float(loss), -LOG_PX.mean(), atol=1e-5)


@pytest.mark.parametrize('k', [1, 7])
def test_dreg_gradient_vanishes_at_exact_posterior(k):
  key = jax.random.key(3)
  g_dreg = _gauss_grad(EXACT, key, 'dreg', k)
  for g in g_dreg:
    np.testing.assert_allclose(g, 0.0, atol=1e-5)
  # The naive (reparameterised IWAE) gradient keeps the score term: d/dmu loss = eps / (sigma B).
  g_iwae = _gauss_grad(EXACT, key, 'iwae', k)
  assert float(jnp.abs(g_iwae[0]).max()) > 0.05
  if k == 1:
    eps = jax.random.normal(key, (1, 1, 3))[0, 0]
    np.testing.assert_allclose(g_iwae[0], eps / (POST_SIGMA * 3), rtol=1e-4, atol=1e-6)


def test_elbo_mean_is_log_px_minus_kl():
  k = 20_000
  _, bound = _gauss_loss(OFF, jax.random.key(11), 'elbo', k)
  lw, _ = _gauss_log_weights_fn(OFF, jax.random.key(11), k)(None, False)
  se = np.asarray(lw[0]).std(axis=0) / np.sqrt(k)
  kl = (np.log(POST_SIGMA / OFF_SIGMA)
        + (OFF_SIGMA**2 + (OFF_MU - POST_MU)**2) / (2 * POST_SIGMA**2) - 0.5)
  assert np.all(kl > 0.3)  # Far from zero compared with the tolerance.
  np.testing.assert_allclose(bound[0], LOG_PX - kl, atol=float(5 * se.max()))


def test_iwae_bound_increases_with_k():
  keys = jax.random.split(jax.random.key(12), 20_000)
  means, ses = [], []
  for k in (1, 5, 50):
    bounds = np.asarray(jax.vmap(lambda key: _gauss_loss(OFF, key, 'iwae', k)[1][0])(keys))
    means.append(bounds.mean(0))
    ses.append(bounds.std(0) / np.sqrt(len(keys)))
  for lo, hi, se_lo, se_hi in zip(means[:-1], means[1:], ses[:-1], ses[1:]):
    assert np.all(hi - lo > 5 * np.hypot(se_lo, se_hi)), (lo, hi)
  # At K = 50 the gap to log p(x) is ~0.003, about 5 standard errors: test at 3.
  assert np.all(LOG_PX - means[-1] > 3 * ses[-1]), (means[-1], LOG_PX)


def test_dreg_gradient_is_unbiased():
  k = 5
  keys = jax.random.split(jax.random.key(13), 20_000)
  grads = {est: jax.vmap(lambda key, est=est: _gauss_grad(OFF, key, est, k))(keys)
           for est in ('iwae', 'dreg')}
  for g_iwae, g_dreg in zip(grads['iwae'], grads['dreg']):
    g_iwae, g_dreg = np.asarray(g_iwae, np.float64), np.asarray(g_dreg, np.float64)
    diff = g_dreg - g_iwae  # Paired over the same keys: the tightest standard error.
    se = diff.std(0) / np.sqrt(len(keys))
    assert np.all(se > 0)  # The two estimators do differ draw by draw.
    assert np.all(np.abs(diff.mean(0)) < 4 * se), (diff.mean(0), se)
    # The point of DReG: lower variance than the IWAE encoder gradient.
    assert np.all(g_dreg.var(0) < g_iwae.var(0))


def test_unknown_estimator_raises():
  with pytest.raises(ValueError, match='unknown estimator'):
    objectives.importance_weighted_loss(_gauss_log_weights_fn(EXACT, jax.random.key(0), 1),
                                        'rws')


# ------------------------------------------------------------------ (c) IWAE / DReG on MMVAE+


@pytest.fixture(scope='module')
def multi_sample(tiny):
  """Per estimator (loss, aux, grads) of the K = 3 objective, same key, and the log-weights
  recomputed from the returned samples: one jit for all (one compile)."""
  vae, params, images = tiny

  @jax.jit
  def run(params, images, key):
    out = {}
    for estimator in ('iwae', 'dreg'):
      fn = functools.partial(objectives.mmvaeplus_objective, vae, x=images, key=key,
                             beta=BETA, num_samples=3, estimator=estimator)
      (loss, aux), grads = jax.value_and_grad(fn, has_aux=True)(params)
      lw, _ = objectives.mmvaeplus_log_weights(vae, params, images, aux.post, aux.latents,
                                               models.standard_laplace_log_prob, BETA)
      out[estimator] = (loss, aux, grads, lw)
    return out

  return run(params, images, jax.random.key(21))


@pytest.mark.parametrize('estimator', ['iwae', 'dreg'])
def test_mmvaeplus_multi_sample_estimators(multi_sample, estimator):
  loss, aux, grads, lw = multi_sample[estimator]
  assert np.isfinite(float(loss))
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
  assert float(jnp.abs(grads['aux_prior_logits']).max()) > 0  # Cross decodes reach r_d(w).
  assert lw.shape == (M, 3, B)
  lw64 = np.asarray(lw, np.float64)
  bound = (scipy.special.logsumexp(lw64, axis=1) - np.log(3)).mean()
  np.testing.assert_allclose(float(aux.metrics['bound']), bound, rtol=1e-5)
  if estimator == 'iwae':
    np.testing.assert_allclose(float(loss), -bound, rtol=1e-5)
  else:
    # The surrogate's value is the self-normalised average sum_k w~_k lw_k.
    w = scipy.special.softmax(lw64, axis=1)
    np.testing.assert_allclose(float(loss), -(w * lw64).sum(1).mean(), rtol=1e-5)


def test_mmvaeplus_dreg_changes_only_encoder_gradients(multi_sample):
  """Decoder and auxiliary-prior gradients are sum_k w~_k grad lw_k under both estimators; only
  the encoder's (through the samples, w~^2, and without the score term) differ."""
  g_iwae, g_dreg = multi_sample['iwae'][2], multi_sample['dreg'][2]
  for name in ('decoders', 'aux_prior_logits'):
    for a, b in zip(jax.tree.leaves(g_iwae[name]), jax.tree.leaves(g_dreg[name])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))
  diffs = [float(jnp.abs(a - b).max()) for a, b in
           zip(jax.tree.leaves(g_iwae['encoders']), jax.tree.leaves(g_dreg['encoders']))]
  assert max(diffs) > 1e-3


def test_posterior_scale_multiplier_scales_only_the_scales():
  base = models.MultimodalVAE(polymnist.specs(2), widths=(2, 2, 2), latent_w=3, latent_z=4)
  scaled = models.MultimodalVAE(polymnist.specs(2), widths=(2, 2, 2), latent_w=3, latent_z=4,
                                posterior_scale_multiplier=0.1)
  params = jax.jit(base.init)(jax.random.PRNGKey(0))  # Compiled: op by op takes 10x longer.
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 2, 28, 28, 3))
  a, b = jax.jit(base.encode)(params, images), jax.jit(scaled.encode)(params, images)
  np.testing.assert_array_equal(a.z_loc, b.z_loc)
  np.testing.assert_array_equal(a.w_loc, b.w_loc)
  np.testing.assert_allclose(b.z_scale, 0.1 * a.z_scale, rtol=1e-6)
  np.testing.assert_allclose(b.w_scale, 0.1 * a.w_scale, rtol=1e-6)
  # The reference's softmax scales of one example sum to D; scaled ones to 0.1 D.
  np.testing.assert_allclose(b.z_scale.sum(-1), 0.4, rtol=1e-4)


def test_an_objective_is_one_function_and_one_decorator_and_names_are_unique():
  with pytest.raises(ValueError, match="'mopoe' is already registered"):
    objectives.register('mopoe', aggregation='mopoe', distribution='gaussian',
                        private_latents=False)(objectives.mopoe_objective)

  @objectives.register('test_half_mopoe', aggregation='mopoe', distribution='gaussian',
                       private_latents=False)
  def half_mopoe(*args, **kwargs):
    loss, aux = objectives.mopoe_objective(*args, **kwargs)
    return 0.5 * loss, aux

  try:
    # No other entry anywhere: the objective's name is a model name (fixed prior).
    config = config_lib.base_config('test_half_mopoe')
    config_lib.validate(config)
    assert (config.model.objective, config.model.prior) == ('test_half_mopoe', 'fixed')
    assert config.model.distribution == 'gaussian' and config.model.latent_w == 0
    assert 'test_half_mopoe' in config_lib.model_names()
  finally:
    del objectives.OBJECTIVES['test_half_mopoe']
  with pytest.raises(ValueError, match="unknown model 'test_half_mopoe'"):
    config_lib.base_config('test_half_mopoe')


# ------------------------------------------------------------------ per-modality likelihood weights


@pytest.mark.parametrize('name', ['mmvaeplus', 'mmvae', 'mvae', 'mmjsd', 'mopoe'])
def test_likelihood_weights_scale_each_modalitys_reconstruction_term(tiny, name):
  """For a fixed key every objective is affine in each weight (log p(x_m | .) enters once per
  draw, times w_m); weights of 1 are the unweighted objective bit for bit; with w_0 = 0 decoder 0
  gets exactly no gradient."""
  spec = objectives.get(name)
  _, _, images = tiny
  vae = models.MultimodalVAE(polymnist.specs(M), widths=(2, 2, 2),
                             latent_w=DW if spec.private_latents else 0, latent_z=DZ,
                             distribution=spec.distribution)
  params = _random_params(vae, 3)
  if not spec.private_latents:
    params.pop('aux_prior_logits', None)
  key = jax.random.PRNGKey(5)
  kwargs = dict(beta=BETA, num_samples=1, estimator='elbo')

  def loss(weights):
    weighted = dataclasses.replace(vae, likelihood_weights=weights)
    return float(spec.fn(weighted, params, images, key, **kwargs)[0])

  base = loss(())
  assert loss((1.0, 1.0, 1.0)) == base
  low, high = loss((0.0, 1.0, 1.0)), loss((2.0, 1.0, 1.0))
  assert high - base == pytest.approx(base - low, rel=1e-4)
  assert abs(high - base) > 1.0  # Modality 0's reconstruction is not negligible.
  grad = lambda weights: jax.grad(lambda p: spec.fn(
      dataclasses.replace(vae, likelihood_weights=weights), p, images, key, **kwargs)[0])(
          params)['decoders']
  grads = grad((0.0, 1.0, 1.0))
  assert all(np.all(np.asarray(g)[0] == 0) for g in jax.tree.leaves(grads))
  grads = grad((1.0, 1.0, 1.0))
  assert any(np.any(np.asarray(g)[0] != 0) for g in jax.tree.leaves(grads))


def test_the_vae_needs_its_modalities():
  with pytest.raises(ValueError, match='needs the specs of its modalities'):
    models.MultimodalVAE((), widths=(2, 2, 2))
  assert models.MultimodalVAE(polymnist.specs(4), widths=(2, 2, 2)).num_modalities == 4


def test_likelihood_weights_are_checked():
  with pytest.raises(ValueError, match=r'expected 3 finite weights >= 0, one per modality'):
    models.MultimodalVAE(polymnist.specs(3), widths=(2, 2, 2), likelihood_weights=(1.0, 2.0))
  with pytest.raises(ValueError, match='expected 3 finite weights'):
    models.MultimodalVAE(polymnist.specs(3), widths=(2, 2, 2), likelihood_weights=(1, -1, 1))
  config = config_lib.base_config('mvae')
  # (A bare float is refused earlier, by ml_collections' type lock.)
  for bad in ((1.0, -1.0), (1.0, float('nan')), (1.0, 'heavy')):
    config.model.likelihood_weights = bad
    with pytest.raises(ValueError, match='model.likelihood_weights=.* must be a tuple of finite'):
      config_lib.validate(config)
  config.model.likelihood_weights = (1.0, 50.0)
  assert models.make_vae(config, (
      models.modalities_lib.image_spec('a', (28, 28, 1)),
      models.modalities_lib.ModalitySpec('b', (), 'int32', 'mlp', 'mlp', 'categorical',
                                         num_classes=10))).likelihood_weights == (1.0, 50.0)
