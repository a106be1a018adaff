"""The linear probe of the shared latent: the classifier against the Bayes rule of two Gaussians,
the unimodal means against the aggregation's closed form, the probe end to end."""

import math
import os

import jax
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import model_state
from moe_ebm_jax import optimizers
from moe_ebm_jax.evaluators import latent_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_logistic_regression_reaches_the_bayes_accuracy_of_two_gaussians():
  """Classes N(-mu, I) and N(+mu, I), |2 mu| = 2: the Bayes rule is linear, accuracy Phi(1)."""
  rng = np.random.default_rng(0)
  mu = np.array([0.6, -0.8])  # |mu| = 1.

  def draw(n):
    y = rng.integers(0, 2, n)
    return rng.normal(size=(n, 2)) + np.where(y[:, None] == 1, mu, -mu) + 3.0, y  # Offset: the
  train_x, train_y = draw(4000)                                                  # standardising.
  test_x, test_y = draw(40000)
  classifier = latent_probe.fit_linear_classifier(train_x, train_y, 2)
  accuracy = np.mean(latent_probe.predict(classifier, test_x) == test_y)
  bayes = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # Phi(1) = 0.8413; the test set's sd of an accuracy: 0.0018.
  assert abs(accuracy - bayes) < 0.008
  # The fitted boundary's normal is mu's direction (in the standardised coordinates).
  w = (classifier['w'][:, 1] - classifier['w'][:, 0]) / classifier['scale']
  assert np.dot(w / np.linalg.norm(w), mu) > 0.99


def test_separated_clusters_are_classified_exactly():
  rng = np.random.default_rng(1)
  centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], float)
  y = rng.integers(0, 4, 800)
  x = centres[y] + rng.normal(size=(800, 3))
  classifier = latent_probe.fit_linear_classifier(x[:400], y[:400], 4)
  assert np.array_equal(latent_probe.predict(classifier, x[400:]), y[400:])


def smoke_mixture(model):
  config = config_lib.from_file(os.path.join(ROOT, 'configs', 'smoke.py'),
                                f'{model},synthetic_mixture')
  config_lib.validate(config)
  return config


def probed_at_init(config):
  """(model, state at init, train batches, test batches, the probe of that state)."""
  model = model_state.make_model(config)
  vae_tx, ebm_tx = optimizers.make_optimizers(config)
  state = model_state.init_state(model, vae_tx, ebm_tx, jax.random.PRNGKey(0))
  train = list(input_pipeline.eval_dataset(config, 'train'))
  test = list(input_pipeline.eval_dataset(config, 'test'))
  return model, state, train, test, latent_probe.probe(model, state, train, test, 4,
                                                       jax.random.PRNGKey(1))


@pytest.mark.parametrize('model_name', ['mmvaeplus', 'mvae'])
def test_unimodal_means_are_the_expert_or_its_product_with_the_prior(model_name):
  config = smoke_mixture(model_name)
  model = model_state.make_model(config)
  params = model.vae.init(jax.random.PRNGKey(0))
  batch = next(iter(input_pipeline.eval_dataset(config, 'test')))
  means = np.asarray(latent_probe.unimodal_means(model, params, batch['x']))
  post = model.vae.encode(params, batch['x'])
  loc, scale = np.asarray(post.z_loc, np.float64), np.asarray(post.z_scale, np.float64)
  if model.aggregation == 'poe':  # Precision-weighted with N(0, 1): loc / (1 + s^2).
    expected = (loc / (scale ** 2 + 1e-8)) / (1 / (scale ** 2 + 1e-8) + 1 / (1 + 1e-8))
  else:
    expected = loc
  np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_probe_reports_pre_and_post_ld_for_moe_ebm_and_matches_a_direct_fit():
  model, state, train, test, result = probed_at_init(smoke_mixture('moe_ebm'))
  private = {'private'} if model.vae.latent_w else set()
  assert set(result) == {'pre_ld', 'post_ld', 'num_train', 'num_test'} | private
  assert result['num_train'] == sum(len(b['label']) for b in train)
  for mode in ('pre_ld', 'post_ld', *private):
    per = result[mode]['per_modality']
    assert list(per) == ['v0', 'v1', 'v2'] and all(0 <= a <= 1 for a in per.values())
  # Pre-LD is the classifier fitted directly on the encoders' means.
  z = lambda batches: np.concatenate(
      [np.asarray(latent_probe.unimodal_means(model, state.vae_params, b['x'])) for b in batches],
      axis=1)
  y = lambda batches: np.concatenate([b['label'] for b in batches])
  train_z, test_z = z(train), z(test)
  classifier = latent_probe.fit_linear_classifier(train_z[1], y(train), 4)
  direct = np.mean(latent_probe.predict(classifier, test_z[1]) == y(test))
  assert result['pre_ld']['per_modality']['v1'] == pytest.approx(direct, abs=1e-9)


def test_each_modalitys_probe_fits_and_scores_the_examples_that_have_it():
  """Incomplete data: the probe of v1 equals a direct fit on v1's observed rows only."""
  config = smoke_mixture('mmvaeplus')
  config.data.missing_ratio, config.data.missing_in_test = 0.5, True
  model, state, train, test, result = probed_at_init(config)
  cat = lambda batches, f: np.concatenate([f(b) for b in batches], axis=-1)
  means = lambda b: np.asarray(latent_probe.unimodal_means(model, state.vae_params, b['x']))
  seen = lambda b: np.asarray(b['observed']['v1'])
  train_z, test_z = cat(train, lambda b: np.moveaxis(means(b), -1, 0)), cat(
      test, lambda b: np.moveaxis(means(b), -1, 0))
  fit, score = cat(train, seen), cat(test, seen)
  assert 0.3 < fit.mean() < 0.7 and 0.3 < score.mean() < 0.7
  train_y, test_y = cat(train, lambda b: b['label']), cat(test, lambda b: b['label'])
  classifier = latent_probe.fit_linear_classifier(train_z[:, 1][:, fit].T, train_y[fit], 4)
  direct = np.mean(latent_probe.predict(classifier, test_z[:, 1][:, score].T) == test_y[score])
  assert result['pre_ld']['per_modality']['v1'] == pytest.approx(direct, abs=1e-9)


@pytest.mark.parametrize('model_name', ['mmvaeplus', 'mopoe'])
def test_private_probe_is_a_direct_fit_on_the_private_means_where_there_are_any(model_name):
  """MMVAE+ (private latents w): the 'private' probe of v2 equals a classifier fitted directly on
  the mean of q(w_2 | x_2); MoPoE (latent_w = 0) has no private probe."""
  model, state, train, test, result = probed_at_init(smoke_mixture(model_name))
  if not model.vae.latent_w:
    assert 'private' not in result and 'pre_ld' in result
    return
  w = lambda batches: np.concatenate(
      [np.asarray(model.vae.encode(state.vae_params, b['x']).w_loc[2]) for b in batches])
  y = lambda batches: np.concatenate([b['label'] for b in batches])
  assert w(test).shape == (sum(len(b['label']) for b in test), model.vae.latent_w)
  classifier = latent_probe.fit_linear_classifier(w(train), y(train), 4)
  direct = np.mean(latent_probe.predict(classifier, w(test)) == y(test))
  assert result['private']['per_modality']['v2'] == pytest.approx(direct, abs=1e-9)
