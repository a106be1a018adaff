"""Per-modality digit classifiers for the coherence metrics (../shared/docs/method.md section 5).

One classifier per modality, trained on that modality of the PolyMNIST train split and scored on
the test split. All M classifiers train together in one jitted step: their parameters are stacked
on a leading M axis and applied modality by modality in an unrolled loop (not `jax.vmap` over the
parameters: on XLA:CPU a vmapped convolution over stacked kernels becomes a grouped convolution
and runs ~16x slower). Adam is elementwise, so one optimiser over the stacked parameters is M
independent optimisers.

Trained classifiers are cached next to the dataset, keyed by its fingerprint:

  <prepared builder's data_dir>/classifiers/<dataset fingerprint>/
      params.npz    the stacked parameters, flattened ('/'-joined paths -> (M, ...) arrays)
      meta.json     architecture, training settings, per-modality test accuracies, sha256 of
                    params.npz (a corrupt or incompatible cache is retrained, with a log line)

Usage:
  bank = classifiers.load_or_train(config.data)
  digits = bank.predict(images)  # float (N, M, 28, 28, 3) in [0, 1] -> int32 (N, M)
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from moe_ebm_jax import input_pipeline
from moe_ebm_jax import mnist as mnist_lib

PyTree = Any

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 3)
MIN_ACCURACY = 0.98  # Below this a classifier is too weak for coherence numbers (warning).
CACHE_SUBDIR = 'classifiers'
PARAMS_FILENAME = 'params.npz'
META_FILENAME = 'meta.json'
CACHE_FORMAT = 1

# Architectures by name: conv channels, dense width, dropout rate. 'reference' is the MMVAE+
# coherence classifier; 'wide' and 'deep' are the same layout with more channels / a third
# convolution and lighter dropout (the reference needs many epochs to pass 98% on CPU).
# Default 4 epochs: measured here 0.9864 0.9852 0.9807 0.9856 0.9811 test accuracy (m0..m4) in
# about 20 minutes; 2 epochs gave 0.972-0.983 in 450 s.
ARCHITECTURES = {
    'reference': dict(features=(10, 20), hidden=128, dropout_rate=0.5),
    'wide': dict(features=(32, 64), hidden=128, dropout_rate=0.1),
    'deep': dict(features=(32, 64, 128), hidden=128, dropout_rate=0.1),
}
DEFAULT_ARCHITECTURE = 'deep'


class DigitClassifier(nn.Module):
  """The MMVAE+ PolyMNIST digit classifier (or a wider one of the same layout).

  conv 3->f0 (k4 s2 p1), dropout, ReLU, conv f0->f1 (k4 s2 p1), dropout, ReLU, [more such
  convolutions], flatten (7 * 7 * f1 = 980 for the reference), dense `hidden`, dropout, ReLU,
  dense 10.

  Attributes:
    features: output channels of the convolutions; (10, 20) is the reference.
    hidden: width of the hidden dense layer.
    dropout_rate: dropout after each layer but the last (0.5 in the reference).
  """
  features: Sequence[int] = (10, 20)
  hidden: int = 128
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Images float (B, 28, 28, 3) NHWC in [0, 1] -> logits float32 (B, 10).

    Dropout needs a 'dropout' rng when `deterministic` is False.
    """
    for f in self.features:
      x = nn.Conv(f, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))(x)
      x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
      x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)  # (B, 7 * 7 * features[-1]) for two convolutions.
    x = nn.Dense(self.hidden)(x)
    x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
    x = nn.relu(x)
    return nn.Dense(NUM_CLASSES)(x)


def make_module(architecture: str = DEFAULT_ARCHITECTURE) -> DigitClassifier:
  if architecture not in ARCHITECTURES:
    raise ValueError(f'unknown classifier architecture {architecture!r}; choose one of '
                     f'{tuple(ARCHITECTURES)}.')
  return DigitClassifier(**ARCHITECTURES[architecture])


def init_params(module: DigitClassifier, key: jax.Array, num_modalities: int) -> PyTree:
  """M independent initialisations stacked on a leading axis: leaves (M, ...)."""
  dummy = jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32)
  keys = jax.random.split(key, num_modalities)
  per_modality = [module.init(k, dummy)['params'] for k in keys]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *per_modality)


def _modality_params(params: PyTree, m) -> PyTree:
  return jax.tree.map(lambda p: p[m], params)


def apply_all(module: DigitClassifier, params: PyTree, images: jax.Array, *,
              deterministic: bool = True, key: jax.Array | None = None) -> jax.Array:
  """Classifier m on modality m, for every m (unrolled loop).

  Args:
    module: the classifier.
    params: stacked parameters, leaves (M, ...).
    images: float (B, M, 28, 28, 3).
    deterministic: no dropout when True; otherwise `key` seeds it (folded with m).
    key: PRNG key for dropout.

  Returns:
    Logits float32 (B, M, 10).
  """
  num_modalities = images.shape[1]
  logits = []
  for m in range(num_modalities):
    rngs = None if deterministic else {'dropout': jax.random.fold_in(key, m)}
    logits.append(module.apply({'params': _modality_params(params, m)}, images[:, m],
                               deterministic=deterministic, rngs=rngs))
  return jnp.stack(logits, axis=1)


@dataclasses.dataclass
class ClassifierBank:
  """The M trained classifiers of one dataset.

  Attributes:
    params: stacked parameters, leaves (M, ...).
    accuracies: test accuracy of classifier m on modality m, length M.
    architecture: key of ARCHITECTURES.
    num_modalities: M.
    meta: the cache's metadata (training settings, timings, fingerprint).
    trained: True when this call trained them, False when they came from the cache.
    cache_dir: where they are cached (None when not cached).
  """
  params: PyTree
  accuracies: tuple[float, ...]
  architecture: str
  num_modalities: int
  meta: dict[str, Any]
  trained: bool
  cache_dir: str | None = None

  def __post_init__(self):
    module = make_module(self.architecture)
    self._predict = jax.jit(lambda p, x: jnp.argmax(apply_all(module, p, x), -1).astype(jnp.int32))
    self._predict_one = jax.jit(
        lambda p, x: jnp.argmax(module.apply({'params': p}, x), -1).astype(jnp.int32))

  def predict(self, images: jax.Array) -> jax.Array:
    """float (N, M, 28, 28, 3) in [0, 1] -> int32 (N, M): classifier m's digit for modality m."""
    if images.ndim != 5 or images.shape[1] != self.num_modalities:
      raise ValueError(f'images of shape {images.shape}, expected (N, {self.num_modalities}, '
                       '28, 28, 3).')
    return self._predict(self.params, images)

  def predict_modality(self, images: jax.Array, m: int) -> jax.Array:
    """float (N, 28, 28, 3) in [0, 1] -> int32 (N,): classifier m's digits."""
    if not 0 <= m < self.num_modalities:
      raise ValueError(f'modality {m} not in [0, {self.num_modalities}).')
    return self._predict_one(_modality_params(self.params, m), images)


# Training.


def make_train_step(module: DigitClassifier, tx: optax.GradientTransformation) -> Callable:
  """Jitted (params, opt_state, images (B, M, 28, 28, 3), labels (B,), key) -> (params,
  opt_state, loss): one Adam step of all M classifiers on the sum of their mean cross-entropies.
  """

  def loss_fn(params, images, labels, key):
    logits = apply_all(module, params, images, deterministic=False, key=key)  # (B, M, 10).
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels[:, None].repeat(logits.shape[1], 1))
    return losses.mean(0).sum()  # Sum over modalities: independent gradients per classifier.

  @jax.jit
  def train_step(params, opt_state, images, labels, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss / images.shape[1]

  return train_step


def _count_correct_fn(module: DigitClassifier) -> Callable:

  @jax.jit
  def count_correct(params, images, labels):
    predictions = jnp.argmax(apply_all(module, params, images), -1)  # (B, M).
    return jnp.sum(predictions == labels[:, None], axis=0)  # (M,).

  return count_correct


def evaluate(module: DigitClassifier, params: PyTree, config_data: ml_collections.ConfigDict, *,
             split: str = 'test', batch_size: int = 500,
             subset: int | None = None) -> tuple[float, ...]:
  """Accuracy of classifier m on modality m over (the first `subset` examples of) `split`."""
  source = input_pipeline.data_source(config_data, split)
  ds = input_pipeline.make_dataset(source, num_modalities=config_data.num_modalities,
                                   batch_size=batch_size, shuffle=False, num_epochs=1,
                                   drop_remainder=False, subset=subset)
  count_correct = _count_correct_fn(module)
  correct, total = 0, 0
  for batch in _iterate(ds, config_data):
    correct = correct + count_correct(params, batch['images'], batch['label'])
    total += len(batch['label'])
  return tuple(float(c) / total for c in np.asarray(correct))


def _iterate(ds: grain.MapDataset, config_data: ml_collections.ConfigDict):
  options = grain.ReadOptions(num_threads=config_data.num_threads,
                              prefetch_buffer_size=config_data.prefetch_batches)
  return iter(ds.to_iter_dataset(options))


def train(config_data: ml_collections.ConfigDict, *, architecture: str = DEFAULT_ARCHITECTURE,
          num_epochs: int = 4, batch_size: int = 128, learning_rate: float = 2e-3,
          lr_schedule: str = 'cosine', seed: int = 0, train_subset: int | None = None,
          max_steps: int | None = None, test_subset: int | None = None
          ) -> tuple[PyTree, tuple[float, ...], dict[str, Any]]:
  """Trains the M classifiers on the train split; returns (params, test accuracies, info).

  Args:
    config_data: config.data (which PolyMNIST; its train/test_subset are NOT used).
    architecture: key of ARCHITECTURES.
    num_epochs: passes over the (subset of the) train split.
    batch_size: examples (tuples of M images) per step.
    learning_rate: Adam's (initial) learning rate.
    lr_schedule: 'cosine' (decay to 0 over the run) or 'constant'.
    seed: initialisation, shuffling and dropout.
    train_subset: train on the first N train tuples only (tests).
    max_steps: stop after this many steps (tests).
    test_subset: score on the first N test tuples only (tests).
  """
  module = make_module(architecture)
  num_modalities = config_data.num_modalities
  key_init, key_dropout = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(module, key_init, num_modalities)
  source = input_pipeline.data_source(config_data, 'train')
  input_pipeline.check_modalities(source, num_modalities)
  ds = input_pipeline.make_dataset(source, num_modalities=num_modalities, batch_size=batch_size,
                                   seed=seed, shuffle=True, num_epochs=num_epochs,
                                   subset=train_subset)
  total_steps = len(ds) if max_steps is None else min(len(ds), max_steps)
  if lr_schedule == 'cosine':
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, max(total_steps, 1)))
  elif lr_schedule == 'constant':
    tx = optax.adam(learning_rate)
  else:
    raise ValueError(f"lr_schedule={lr_schedule!r}, expected 'cosine' or 'constant'.")
  opt_state = tx.init(params)
  train_step = make_train_step(module, tx)
  start = time.time()
  step, loss = 0, float('nan')
  for batch in _iterate(ds, config_data):
    if max_steps is not None and step >= max_steps:
      break
    params, opt_state, loss = train_step(params, opt_state, batch['images'], batch['label'],
                                         jax.random.fold_in(key_dropout, step))
    step += 1
    if step % 100 == 0:
      logging.info('Classifiers: step %d, loss %.4f, %.1f s.', step, float(loss),
                   time.time() - start)
  params = jax.block_until_ready(params)
  train_seconds = time.time() - start
  accuracies = evaluate(module, params, config_data, subset=test_subset)
  info = {'steps': step, 'final_loss': float(loss), 'train_seconds': round(train_seconds, 1),
          'eval_seconds': round(time.time() - start - train_seconds, 1)}
  logging.info('Trained %d %s classifiers in %.1f s (%d steps); test accuracies %s.',
               num_modalities, architecture, train_seconds, step,
               ', '.join(f'{a:.4f}' for a in accuracies))
  return params, accuracies, info


# Cache.


def _flatten(params: PyTree) -> dict[str, np.ndarray]:
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def _atomic_write(directory: str, name: str, write: Callable[[Any], None], mode: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{name}.')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600.
    os.replace(tmp, os.path.join(directory, name))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save(cache_dir: str, params: PyTree, meta: dict[str, Any]) -> None:
  """Writes params.npz then meta.json (with the npz's sha256), each atomically."""
  os.makedirs(cache_dir, exist_ok=True)
  flat = _flatten(params)
  _atomic_write(cache_dir, PARAMS_FILENAME, lambda f: np.savez(f, **flat), 'wb')
  meta = {**meta, 'params_sha256': mnist_lib.file_sha256(os.path.join(cache_dir, PARAMS_FILENAME))}
  _atomic_write(cache_dir, META_FILENAME, lambda f: json.dump(meta, f, indent=2), 'w')


class CacheError(ValueError):
  """A cached bank that is missing, corrupt or does not match what was asked for."""


def load(cache_dir: str, template: PyTree, expected: dict[str, Any]) -> tuple[PyTree, dict]:
  """Reads a cached bank; raises CacheError unless it is intact and matches.

  Args:
    cache_dir: the bank's directory.
    template: stacked parameters of the right structure and shapes (e.g. from init_params).
    expected: metadata entries that must be equal (architecture, modalities, training settings).
  """
  meta_path = os.path.join(cache_dir, META_FILENAME)
  params_path = os.path.join(cache_dir, PARAMS_FILENAME)
  if not os.path.exists(meta_path) or not os.path.exists(params_path):
    raise CacheError(f'no cached classifiers in {cache_dir}')
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise CacheError(f'{meta_path} is unreadable: {e}') from e
  if not isinstance(meta, dict):
    raise CacheError(f'{meta_path} is not a JSON object')
  for k, v in expected.items():
    if meta.get(k) != v:
      raise CacheError(f'cached {k}={meta.get(k)!r}, wanted {v!r}')
  if meta.get('params_sha256') != mnist_lib.file_sha256(params_path):
    raise CacheError(f'{params_path} does not match the sha256 in {META_FILENAME}')
  accuracies = meta.get('accuracies')
  if not (isinstance(accuracies, list) and len(accuracies) == expected['num_modalities']):
    raise CacheError(f'{meta_path} has no accuracies for {expected["num_modalities"]} modalities')
  want = _flatten(template)
  try:
    with np.load(params_path, allow_pickle=False) as f:
      got = {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except  # zip, npy or pickle errors.
    raise CacheError(f'{params_path} is unreadable: {e}') from e
  if set(got) != set(want):
    raise CacheError(f'{params_path} has parameters {sorted(got)}, wanted {sorted(want)}')
  for k, v in want.items():
    if got[k].shape != v.shape or got[k].dtype != v.dtype:
      raise CacheError(f'{params_path}: {k} is {got[k].dtype}{got[k].shape}, wanted '
                       f'{v.dtype}{v.shape}')
    if not np.all(np.isfinite(got[k])):
      raise CacheError(f'{params_path}: {k} is not finite')
  params = flax.traverse_util.unflatten_dict(got, sep='/')
  return jax.tree.map(jnp.asarray, params), meta


def cache_dir_for(config_data: ml_collections.ConfigDict) -> tuple[str, str]:
  """(<data_dir>/classifiers/<fingerprint>, fingerprint) of the dataset (built if needed)."""
  b = input_pipeline.prepare(config_data)
  fingerprint = b.info.metadata.get('fingerprint')
  if not fingerprint:
    raise ValueError(f'the PolyMNIST in {b.data_dir} has no fingerprint: rebuild it.')
  return os.path.join(os.fspath(b.data_dir), CACHE_SUBDIR, fingerprint), fingerprint


def load_or_train(config_data: ml_collections.ConfigDict, *,
                  architecture: str = DEFAULT_ARCHITECTURE, num_epochs: int = 4,
                  batch_size: int = 128, learning_rate: float = 2e-3,
                  lr_schedule: str = 'cosine', seed: int = 0, train_subset: int | None = None,
                  max_steps: int | None = None, test_subset: int | None = None,
                  min_accuracy: float = MIN_ACCURACY,
                  use_cache: bool = True) -> ClassifierBank:
  """The coherence classifiers of the dataset `config_data` describes: cached, or trained now.

  The cache (<builder data_dir>/classifiers/<dataset fingerprint>/) is used when it is intact
  and was trained with the same architecture and settings; otherwise (missing, corrupt,
  incompatible) the classifiers are trained and the cache is (re)written. A test accuracy below
  `min_accuracy` is logged as a warning.

  Args:
    config_data: config.data. Its train_subset / test_subset are ignored: the classifiers use
      the whole splits unless `train_subset` / `test_subset` say otherwise.
    architecture, num_epochs, batch_size, learning_rate, lr_schedule, seed, train_subset,
      max_steps, test_subset: see `train`.
    min_accuracy: warn below this test accuracy.
    use_cache: False trains and neither reads nor writes the cache.
  """
  module = make_module(architecture)
  num_modalities = config_data.num_modalities
  cache_dir, fingerprint = cache_dir_for(config_data)
  expected = {
      'format': CACHE_FORMAT, 'fingerprint': fingerprint, 'architecture': architecture,
      'architecture_config': {k: list(v) if isinstance(v, tuple) else v
                              for k, v in ARCHITECTURES[architecture].items()},
      'num_modalities': num_modalities, 'num_epochs': num_epochs, 'batch_size': batch_size,
      'learning_rate': learning_rate, 'lr_schedule': lr_schedule, 'seed': seed,
      'train_subset': train_subset, 'max_steps': max_steps, 'test_subset': test_subset,
  }
  if use_cache:
    template = jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0), num_modalities))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    try:
      params, meta = load(cache_dir, template, expected)
    except CacheError as e:
      if os.path.exists(cache_dir):
        logging.warning('Retraining the coherence classifiers: %s.', e)
      else:
        logging.info('No coherence classifiers cached in %s: training them.', cache_dir)
    else:
      accuracies = tuple(float(a) for a in meta['accuracies'])
      logging.info('Loaded the coherence classifiers from %s; test accuracies %s.', cache_dir,
                   ', '.join(f'{a:.4f}' for a in accuracies))
      _check_accuracies(accuracies, min_accuracy)
      return ClassifierBank(params, accuracies, architecture, num_modalities, meta, trained=False,
                            cache_dir=cache_dir)
  params, accuracies, info = train(
      config_data, architecture=architecture, num_epochs=num_epochs, batch_size=batch_size,
      learning_rate=learning_rate, lr_schedule=lr_schedule, seed=seed, train_subset=train_subset,
      max_steps=max_steps, test_subset=test_subset)
  meta = {**expected, 'accuracies': list(accuracies), **info}
  if use_cache:
    save(cache_dir, params, meta)
    logging.info('Cached the coherence classifiers in %s.', cache_dir)
  _check_accuracies(accuracies, min_accuracy)
  return ClassifierBank(params, accuracies, architecture, num_modalities, meta, trained=True,
                        cache_dir=cache_dir if use_cache else None)


def _check_accuracies(accuracies: Sequence[float], min_accuracy: float) -> None:
  low = {m: a for m, a in enumerate(accuracies) if a < min_accuracy}
  if low:
    logging.warning('Coherence classifiers below %.2f test accuracy: %s (all: %s). Coherence '
                    'numbers will understate the models.', min_accuracy,
                    ', '.join(f'm{m}={a:.4f}' for m, a in low.items()),
                    ', '.join(f'{a:.4f}' for a in accuracies))
