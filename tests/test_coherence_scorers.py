"""coherence_scorers: the one classifier trainer, the MLP readers and their cache, and the
scorer a dataset brings (Dataset.make_scorer) against the default readers."""

import os

import jax
import numpy as np
import optax

from moe_ebm_jax import cache
from moe_ebm_jax import config_lib
from moe_ebm_jax.data import coherence_scorers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.vae import modalities as mods


def blobs(n, rng, dim=6, classes=3):
  """Well separated Gaussian clusters: the class means at distance ~6, unit noise."""
  labels = rng.integers(0, classes, n).astype(np.int32)
  means = 3 * np.eye(classes, dim)
  return (means[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_epoch_batches_are_permutations_of_whole_batches():
  order = coherence_scorers.epoch_batches(10, 3, 2, seed=0)
  assert order.shape == (6, 3) and order.dtype == np.int32
  for epoch in (order[:3], order[3:]):  # 3 batches of 3: 9 distinct rows of 10 per epoch.
    assert len(set(epoch.ravel())) == 9 and epoch.max() < 10
  np.testing.assert_array_equal(order, coherence_scorers.epoch_batches(10, 3, 2, seed=0))


def test_train_classifier_runs_every_step_in_order():
  """A 'loss' whose gradient counts the rows seen: after training, params = -lr * the sum of
  every batch's x, whatever the chunking."""
  x = np.arange(20, dtype=np.float32)
  order = coherence_scorers.epoch_batches(20, 4, 3, seed=1)[:13]  # 13 steps: chunks of 13.

  def loss_fn(p, xb, yb, key):
    del yb, key
    return p * xb.sum()

  params, loss = coherence_scorers.train_classifier(
      loss_fn, np.float32(0), optax.sgd(1.0), x, np.zeros(20, np.int32), order,
      jax.random.PRNGKey(0))
  assert float(params) == -float(x[order].sum())
  assert np.isfinite(loss)


def test_the_mlp_reader_learns_separable_classes():
  rng = np.random.default_rng(0)
  x, y = blobs(2000, rng)
  x_test, y_test = blobs(500, rng)
  trained = coherence_scorers.train_mlp(x, y, 3, steps=300)
  # The Bayes rule of these blobs is right ~99% of the time; chance is 1/3.
  assert np.mean(coherence_scorers.mlp_predict(trained, x_test) == y_test) > 0.95


def _register_blobs(name):
  rng = np.random.default_rng(1)
  (xa, y), (xt, yt) = blobs(1000, rng), blobs(300, rng)
  arrays = lambda x, y: {'v': x, 'label_view': y}
  specs = (mods.vector_spec('v', 6), mods.label_spec('label_view', 3))
  datasets.register(name)(lambda c: datasets.from_arrays(
      name, arrays(xa, y), arrays(xt, yt), specs, train_labels=y, test_labels=yt,
      num_classes=3))
  config = config_lib.base_config('mmvaeplus', name)
  config.data.num_modalities = 2
  return config


def test_the_default_scorer_caches_its_mlp_and_retrains_a_damaged_cache(tmp_path, monkeypatch):
  config = _register_blobs('blobs_for_scorers')
  config.data.data_dir = str(tmp_path)
  monkeypatch.setattr(coherence_scorers, 'MLP_STEPS', 200)
  scorer = coherence_scorers.make_scorer(config)
  assert scorer.scored == (True, True)
  reading = scorer.info['readings']['v']
  assert reading['test_accuracy'] > 0.95
  fingerprint = datasets.fingerprint(config.data)
  directory = cache.root(str(tmp_path), 'modality_classifiers', f'{fingerprint[:16]}-v')
  assert os.path.exists(os.path.join(directory, cache.META_FILENAME))

  real_train = coherence_scorers.train_mlp
  calls = []
  monkeypatch.setattr(coherence_scorers, 'train_mlp',
                      lambda *a, **k: calls.append(1) or real_train(*a, **k))
  again = coherence_scorers.make_scorer(config)
  assert not calls and again.info == scorer.info  # Read from the cache.
  decodes = {'v': np.array([[3, 0, 0, 0, 0, 0], [0, 0, 3, 0, 0, 0]], np.float32),
             'label_view': np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]], np.float32)}
  np.testing.assert_array_equal(again(decodes), [[0, 1], [2, 0]])
  with open(os.path.join(directory, cache.TREE_FILENAME), 'r+b') as f:
    f.seek(100)
    f.write(b'\x00corrupt\x00')
  coherence_scorers.make_scorer(config)
  assert calls == [1]  # Retrained.


def test_a_dataset_brings_its_own_scorer():
  own = coherence_scorers.Scorer(lambda d: np.zeros((1, 2), np.int32), (True, False),
                                 {'description': 'mine'})
  seen = []

  def make_scorer(config, dataset):
    seen.append((config.data.name, dataset.name))
    return own

  specs = (mods.vector_spec('a', 2), mods.vector_spec('b', 2))
  arrays = {'a': np.zeros((4, 2), np.float32), 'b': np.zeros((4, 2), np.float32)}
  datasets.register('with_own_scorer')(lambda c: datasets.Dataset(
      'with_own_scorer', specs, lambda split: datasets.ArraySource(arrays),
      make_scorer=make_scorer))
  config = config_lib.base_config('mmvaeplus', 'with_own_scorer')
  assert coherence_scorers.make_scorer(config) is own
  assert seen == [('with_own_scorer', 'with_own_scorer')]


def test_fingerprints_follow_the_data():
  def arrays_dataset(name, value):
    spec = (mods.vector_spec('a', 2), mods.vector_spec('b', 2))
    train = {'a': np.full((4, 2), value, np.float32), 'b': np.zeros((4, 2), np.float32)}
    datasets.register(name)(lambda c: datasets.from_arrays(name, train, train, spec))
    return config_lib.base_config('mmvaeplus', name).data

  same_a, same_b = arrays_dataset('fp_a', 1.0), arrays_dataset('fp_b', 1.0)
  other = arrays_dataset('fp_c', 2.0)
  fp = datasets.fingerprint(same_a)
  assert len(fp) == 64 and fp == datasets.fingerprint(same_b) != datasets.fingerprint(other)
  mixture = config_lib.base_config('mmvaeplus', 'synthetic_mixture')
  mixture.data.num_train, mixture.data.num_test = 64, 32
  seeded = config_lib.base_config('mmvaeplus', 'synthetic_mixture')
  seeded.data.num_train, seeded.data.num_test, seeded.data.seed = 64, 32, 1
  assert datasets.fingerprint(mixture.data) != datasets.fingerprint(seeded.data)

  pinned = datasets.Dataset('pinned', (mods.vector_spec('a', 2),), lambda split: None,
                            fingerprint=lambda: 'abc')
  datasets.register('pinned')(lambda c: pinned)
  assert datasets.fingerprint(config_lib.base_config('mmvaeplus', 'pinned').data) == 'abc'
