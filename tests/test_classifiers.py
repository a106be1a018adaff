"""Coherence classifiers: shapes, a real (small) training run, predict, and the cache."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax.data import classifiers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.data import polymnist
from moe_ebm_jax.evaluators import common

# Small enough for CPU CI (120 steps of the default net), large enough to learn digits.
SMALL = dict(num_epochs=3, batch_size=100, train_subset=4000, test_subset=500)


@pytest.fixture(scope='module')
def config(private_polymnist_dir):
  c = config_lib.base_config('moe_ebm')
  c.data.data_dir = private_polymnist_dir
  return c


@pytest.fixture(scope='module')
def bank(config):
  """Trained once for the module on the small subset (this also writes the cache)."""
  return classifiers.load_or_train(config.data, **SMALL)


@pytest.fixture(scope='module')
def test_batch(config):
  dataset = datasets.get(config.data)
  ds = input_pipeline.make_dataset(dataset.source('test'), modalities=dataset.modalities,
                                   batch_size=64, shuffle=False, num_epochs=1)
  batch = ds[0]
  return {'images': common.batch_images(batch, dataset.names), 'label': batch['label']}


@pytest.mark.slow
@pytest.mark.parametrize('architecture', sorted(classifiers.ARCHITECTURES))
def test_module_shapes(architecture):
  module = classifiers.make_module(architecture)
  x = jnp.zeros((4, 28, 28, 3))
  variables = module.init(jax.random.PRNGKey(0), x)
  assert module.apply(variables, x).shape == (4, 10)
  dropped = module.apply(variables, jnp.ones((4, 28, 28, 3)), deterministic=False,
                         rngs={'dropout': jax.random.PRNGKey(1)})
  assert dropped.shape == (4, 10)
  stacked = classifiers.init_params(module, jax.random.PRNGKey(0), 3)
  assert classifiers.apply_all(module, stacked, jnp.zeros((2, 3, 28, 28, 3))).shape == (2, 3, 10)


def test_reference_architecture_layout():
  params = classifiers.make_module('reference').init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 28, 28, 3)))['params']
  shapes = {k: v['kernel'].shape for k, v in params.items()}
  assert shapes == {'Conv_0': (4, 4, 3, 10), 'Conv_1': (4, 4, 10, 20), 'Dense_0': (980, 128),
                    'Dense_1': (128, 10)}


@pytest.mark.parametrize('shape', [(2, 28, 28, 3, 32), (3, 14, 14, 32, 64), (2, 7, 7, 8, 5),
                                   (1, 6, 9, 2, 3)])
def test_patch_conv_equals_strided_convolution(shape):
  """patch_conv_inputs @ the reshaped kernel is lax's 4x4 stride-2 padding-1 convolution."""
  b, h, w, c, c_out = shape
  kx, kk = jax.random.split(jax.random.PRNGKey(sum(shape)))
  x = jax.random.normal(kx, (b, h, w, c))
  kernel = jax.random.normal(kk, (4, 4, c, c_out))
  want = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')
  got = jnp.einsum('bhwk,ko->bhwo', classifiers.patch_conv_inputs(x),
                   classifiers.conv_kernel_to_patch_kernel(kernel), precision='highest')
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_fast_architecture_is_the_wide_layout_as_matmuls():
  """'fast' with 'wide''s weights (kernels reshaped) gives 'wide''s logits on centred inputs."""
  wide = classifiers.DigitClassifier(features=(32, 64), hidden=128, dropout_rate=0.0)
  fast = classifiers.make_module('fast')
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 3))
  p = wide.init(jax.random.PRNGKey(1), x)['params']
  q = {f'PatchConv_{i}': {'kernel': classifiers.conv_kernel_to_patch_kernel(p[f'Conv_{i}']['kernel']),
                          'bias': p[f'Conv_{i}']['bias']} for i in range(2)}
  q.update(Dense_0=p['Dense_0'], Dense_1=p['Dense_1'])
  assert jax.tree.map(jnp.shape, q) == jax.tree.map(
      jnp.shape, fast.init(jax.random.PRNGKey(2), x)['params'])
  np.testing.assert_allclose(fast.apply({'params': q}, x), wide.apply({'params': p}, x - 0.5),
                             rtol=1e-4, atol=1e-4)


def test_classify_reads_the_decodes_by_modality_name():
  module = classifiers.make_module('fast')
  params = classifiers.init_params(module, jax.random.PRNGKey(0), 2)
  bank = classifiers.ClassifierBank(params, (1.0, 1.0), 'fast', 2, ('left', 'right'), {},
                                    trained=True)
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 2, 28, 28, 3))
  got = bank.classify({'right': images[:, 1], 'left': images[:, 0]})
  np.testing.assert_array_equal(got, bank.predict(images))
  swapped = bank.classify({'right': images[:, 0], 'left': images[:, 1]})
  np.testing.assert_array_equal(swapped, bank.predict(images[:, ::-1]))
  with pytest.raises(ValueError, match='1 names'):
    classifiers.ClassifierBank(params, (1.0, 1.0), 'fast', 2, ('left',), {}, trained=True)


def test_load_split_refuses_what_the_digit_classifiers_cannot_read():
  config = config_lib.base_config('mmvaeplus', 'synthetic_mixture')
  with pytest.raises(ValueError, match=r"dataset 'synthetic_mixture' has modalities \['v0', 'v1', "
                                       r"'v2'\] of other shapes"):
    classifiers.load_split(config.data, 'test')


@pytest.mark.slow
def test_small_training_is_well_above_chance(bank, config):
  assert bank.trained
  assert len(bank.accuracies) == config.data.num_modalities
  assert min(bank.accuracies) > 0.5, bank.accuracies  # Chance is 0.1.


@pytest.mark.slow
def test_predict_matches_each_classifier(bank, test_batch):
  images = jnp.asarray(test_batch['images'])
  predictions = bank.predict(images)
  assert predictions.shape == images.shape[:2] and predictions.dtype == jnp.int32
  module = classifiers.make_module(bank.architecture)
  for m in range(bank.num_modalities):
    params_m = jax.tree.map(lambda p, m=m: p[m], bank.params)
    want = jnp.argmax(module.apply({'params': params_m}, images[:, m]), -1)
    np.testing.assert_array_equal(predictions[:, m], want)
    np.testing.assert_array_equal(bank.predict_modality(images[:, m], m), want)
  # The classifiers are real: most of the batch is right.
  assert np.mean(np.asarray(predictions) == test_batch['label'][:, None]) > 0.5


@pytest.mark.slow
def test_cache_is_keyed_by_fingerprint_and_reused(bank, config, test_batch, monkeypatch):
  fingerprint = polymnist.prepare(config.data).info.metadata['fingerprint']
  assert datasets.fingerprint(config.data) == fingerprint  # The record's key is the build's.
  assert os.path.basename(bank.cache_dir) == fingerprint
  assert os.path.basename(os.path.dirname(bank.cache_dir)) == classifiers.CACHE_SUBDIR
  with open(os.path.join(bank.cache_dir, classifiers.META_FILENAME)) as f:
    meta = json.load(f)
  assert meta['fingerprint'] == fingerprint
  assert meta['architecture'] == classifiers.DEFAULT_ARCHITECTURE == bank.architecture
  assert meta['accuracies'] == list(bank.accuracies)

  def no_training(*args, **kwargs):
    raise AssertionError('trained although the cache was valid')

  monkeypatch.setattr(classifiers, 'train', no_training)
  loaded = classifiers.load_or_train(config.data, **SMALL)
  assert not loaded.trained and loaded.accuracies == bank.accuracies
  images = jnp.asarray(test_batch['images'])
  np.testing.assert_array_equal(loaded.predict(images), bank.predict(images))


@pytest.mark.slow
def test_corrupt_or_incompatible_cache_is_retrained(bank, config, monkeypatch):
  calls = []
  real_train = classifiers.train

  def counting_train(*args, **kwargs):
    calls.append(kwargs)
    return real_train(*args, **kwargs)

  monkeypatch.setattr(classifiers, 'train', counting_train)
  tiny = dict(SMALL, max_steps=2)  # Other settings: incompatible with the cached bank.
  first = classifiers.load_or_train(config.data, **tiny)
  assert first.trained and len(calls) == 1
  params_path = os.path.join(first.cache_dir, classifiers.PARAMS_FILENAME)
  with open(params_path, 'r+b') as f:  # Flip bytes in the middle of the npz.
    f.seek(os.path.getsize(params_path) // 2)
    f.write(b'\x00corrupt\x00')
  again = classifiers.load_or_train(config.data, **tiny)
  assert again.trained and len(calls) == 2
  with open(os.path.join(first.cache_dir, classifiers.META_FILENAME), 'w') as f:
    f.write('{not json')
  assert classifiers.load_or_train(config.data, **tiny).trained and len(calls) == 3
  assert not classifiers.load_or_train(config.data, **tiny).trained and len(calls) == 3
