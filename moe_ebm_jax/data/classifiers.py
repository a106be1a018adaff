"""Per-modality digit classifiers for the coherence metrics (docs/method.md, section 5).

One classifier per modality, trained on that modality of the PolyMNIST train split and scored on
the test split: PolyMNIST's coherence scorer (`make_scorer`, its Dataset.make_scorer). All M
classifiers train together in one compiled program: their parameters are stacked on a leading M
axis, the splits are decoded once into uint8 arrays in memory, and
coherence_scorers.train_classifier runs many steps per call in a jitted `lax.scan`, gathering
each batch from the arrays. Adam is elementwise, so one optimiser over the stacked parameters is
M independent optimisers.

The default architecture ('fast') computes its strided 4x4 convolutions as matmuls over patches
(space-to-depth, `patch_conv`), which keeps XLA:CPU's slow convolution kernel gradients out of
the step and lets `jax.vmap` run the M classifiers as batched matmuls. The convolutional
architectures ('reference', the MMVAE+ classifier, and wider ones) are applied modality by
modality in an unrolled loop instead: on XLA:CPU a vmapped convolution over stacked kernels
becomes a grouped convolution and runs ~16x slower.

Trained classifiers are cached (cache.save_tree) keyed by the dataset's fingerprint:

  <cache.root(config.data.data_dir)>/classifiers/<datasets.fingerprint(config.data)>/
      params.npz    the stacked parameters, flattened ('/'-joined paths -> (M, ...) arrays)
      meta.json     architecture, training settings, per-modality test accuracies, sha256 of
                    params.npz (a corrupt or incompatible cache is retrained, with a log line)

Usage:
  bank = classifiers.load_or_train(config.data)
  digits = bank.predict(images)  # float (N, M, 28, 28, 3) in [0, 1] -> int32 (N, M)
  digits = bank.classify({name: (N, 28, 28, 3), ...})  # the same, by modality name
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from moe_ebm_jax import cache
from moe_ebm_jax.data import coherence_scorers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.vae import modalities as modalities_lib

PyTree = Any

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 3)
MIN_ACCURACY = 0.98  # Below this a classifier is too weak for coherence numbers (warning).
CACHE_SUBDIR = 'classifiers'
PARAMS_FILENAME = cache.TREE_FILENAME
META_FILENAME = cache.META_FILENAME
CACHE_FORMAT = 2

# Architectures by name: conv channels, dense width, dropout rate. 'reference' is the MMVAE+
# coherence classifier; 'wide' and 'deep' are the same layout with more channels / a third
# convolution and lighter dropout; 'fast' is 'wide' without dropout, its convolutions as
# matmuls over patches (the same function: tests/test_classifiers.py).
# Measured here (2 cores, docs/speed.md "Coherence classifiers"): 'deep', 4 epochs with dropout
# through grain batches, 711 s for 0.9807-0.9864; 'fast' with the defaults below (2 epochs,
# batch 128, Adam 5e-3 warm-up + cosine, label smoothing 0.1, in-memory arrays) ~2 minutes in
# all for 0.9826-0.9875 on m0..m4. Dropout 0.1 cost +50% per step on CPU (threefry masks) for
# no better accuracy than label smoothing.
ARCHITECTURES = {
    'reference': dict(features=(10, 20), hidden=128, dropout_rate=0.5),
    'wide': dict(features=(32, 64), hidden=128, dropout_rate=0.1),
    'deep': dict(features=(32, 64, 128), hidden=128, dropout_rate=0.1),
    'fast': dict(features=(32, 64), hidden=128, dropout_rate=0.0, patches=True),
}
DEFAULT_ARCHITECTURE = 'fast'
# Training defaults of load_or_train / train (the cache is keyed by all of them).
DEFAULTS = dict(architecture=DEFAULT_ARCHITECTURE, num_epochs=2, batch_size=128,
                learning_rate=5e-3, lr_schedule='warmup_cosine', label_smoothing=0.1, seed=0)
WARMUP_FRACTION = 0.05  # Of the steps, for lr_schedule='warmup_cosine'.


class DigitClassifier(nn.Module):
  """The MMVAE+ PolyMNIST digit classifier (or a wider one of the same layout).

  conv 3->f0 (k4 s2 p1), dropout, ReLU, conv f0->f1 (k4 s2 p1), dropout, ReLU, [more such
  convolutions], flatten (7 * 7 * f1 = 980 for the reference), dense `hidden`, dropout, ReLU,
  dense 10.

  Attributes:
    features: output channels of the convolutions; (10, 20) is the reference.
    hidden: width of the hidden dense layer.
    dropout_rate: dropout after each layer but the last (0.5 in the reference).
    patches: compute each convolution as `patch_conv` (a Dense over 4x4 patches; parameters
      'PatchConv_i' with kernel (16 * C_in, C_out)) instead of nn.Conv; the input is centred
      (x - 0.5) first. Same function class, matmuls only.
  """
  features: Sequence[int] = (10, 20)
  hidden: int = 128
  dropout_rate: float = 0.5
  patches: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Images float (B, 28, 28, 3) NHWC in [0, 1] -> logits float32 (B, 10).

    Dropout needs a 'dropout' rng when `deterministic` is False.
    """
    if self.patches:
      x = x - 0.5
    for i, f in enumerate(self.features):
      if self.patches:
        x = nn.Dense(f, name=f'PatchConv_{i}')(patch_conv_inputs(x))
      else:
        x = nn.Conv(f, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))(x)
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
      x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)  # (B, 7 * 7 * features[-1]) for two convolutions.
    x = nn.Dense(self.hidden)(x)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
    x = nn.relu(x)
    return nn.Dense(NUM_CLASSES)(x)


def patch_conv_inputs(x: jax.Array) -> jax.Array:
  """The 4x4 patches of a stride-2, padding-1 convolution, by slicing (no convolution).

  Args:
    x: (B, H, W, C).

  Returns:
    (B, H_out, W_out, 16 * C) with H_out = (H - 2) // 2 + 1 (likewise W), so that
    patch_conv_inputs(x) @ k.reshape(16 * C, C_out) is the convolution with kernel k (4, 4, C,
    C_out) on x padded by 1 (features ordered (row block, column block, row, column, channel)
    after the kernel's reshape in `conv_kernel_to_patch_kernel`).
  """
  b, h, w, c = x.shape
  h_out, w_out = (h - 2) // 2 + 1, (w - 2) // 2 + 1
  # Pad by 1 (the convolution's padding), plus 1 more on odd sides so space-to-depth divides;
  # the extra row/column is never inside an output's window.
  x = jnp.pad(x, ((0, 0), (1, 1 + h % 2), (1, 1 + w % 2), (0, 0)))
  hb, wb = x.shape[1] // 2, x.shape[2] // 2
  # Space-to-depth: block (i, j) holds the 2x2 pixels (2i + r, 2j + s), features (r, s, c).
  x = x.reshape(b, hb, 2, wb, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hb, wb, 4 * c)
  # Output (i, j) covers padded rows 2i..2i+3 = blocks i and i + 1 (likewise columns).
  x = jnp.concatenate([x[:, :-1, :-1], x[:, :-1, 1:], x[:, 1:, :-1], x[:, 1:, 1:]], axis=-1)
  return x[:, :h_out, :w_out]


def conv_kernel_to_patch_kernel(kernel: jax.Array) -> jax.Array:
  """A conv kernel (4, 4, C, C_out) as the (16 * C, C_out) matrix patch_conv_inputs expects.

  Kernel tap (2a + r, 2d + s) multiplies feature (a, d, r, s, c) of the patches: block offsets
  (a, d) in {0, 1}^2 in the concatenation's order, then the space-to-depth order (r, s, c).
  """
  c, c_out = kernel.shape[2:]
  k = kernel.reshape(2, 2, 2, 2, c, c_out)  # (a, r, d, s, c, c_out).
  return k.transpose(0, 2, 1, 3, 4, 5).reshape(16 * c, c_out)


def make_module(architecture: str = DEFAULT_ARCHITECTURE) -> DigitClassifier:
  """The DigitClassifier of ARCHITECTURES[architecture]."""
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
  """Classifier m on modality m, for every m (vmapped for patch modules, else unrolled).

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
  if module.patches:  # Batched matmuls; an unrolled loop of convs otherwise (module docstring).
    keys = jax.random.split(key, num_modalities) if not deterministic else None

    def one(p, x, k=None):
      rngs = None if k is None else {'dropout': k}
      return module.apply({'params': p}, x, deterministic=deterministic, rngs=rngs)

    if deterministic:
      return jax.vmap(one, in_axes=(0, 1), out_axes=1)(params, images)
    return jax.vmap(one, in_axes=(0, 1, 0), out_axes=1)(params, images, keys)
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
    names: the modalities' names (the keys of `classify`'s decodes), M of them.
    meta: the cache's metadata (training settings, timings, fingerprint).
    trained: True when this call trained them, False when they came from the cache.
    cache_dir: where they are cached (None when not cached).
  """
  params: PyTree
  accuracies: tuple[float, ...]
  architecture: str
  num_modalities: int
  names: tuple[str, ...]
  meta: dict[str, Any]
  trained: bool
  cache_dir: str | None = None

  def __post_init__(self):
    if len(self.names) != self.num_modalities:
      raise ValueError(f'{len(self.names)} names {self.names} for {self.num_modalities} '
                       'classifiers.')
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

  def classify(self, decodes) -> np.ndarray:
    """Decodes {name: (N, 28, 28, 3)} of `names` (as generation.py returns them) -> int32
    (N, M): the coherence scorer's contract (coherence_scorers.py)."""
    images = jnp.stack([jnp.asarray(decodes[name]) for name in self.names], 1)
    return np.asarray(self.predict(images))

  def predict_modality(self, images: jax.Array, m: int) -> jax.Array:
    """float (N, 28, 28, 3) in [0, 1] -> int32 (N,): classifier m's digits."""
    if not 0 <= m < self.num_modalities:
      raise ValueError(f'modality {m} not in [0, {self.num_modalities}).')
    return self._predict_one(_modality_params(self.params, m), images)


# Training.


def load_split(config_data: ml_collections.ConfigDict, split: str,
               subset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A split of images decoded into memory: (images uint8 (N, M, 28, 28, 3), labels int32 (N,)).

  The dataset's M modalities must all be 28x28 RGB images (PolyMNIST's). The first `subset`
  tuples when given. PolyMNIST's train split is ~0.7 GB; decoding it takes ~10 s here.
  """
  dataset = datasets.get(config_data)
  not_images = [s.name for s in dataset.modalities if tuple(s.shape) != IMAGE_SHAPE]
  if not_images or not dataset.num_classes:
    raise ValueError(f'the digit classifiers read labelled {IMAGE_SHAPE} images; dataset '
                     f'{dataset.name!r} has ' + (f'modalities {not_images} of other shapes.'
                                                 if not_images else 'no labels.'))
  source = dataset.source(split)
  modalities_lib.check_source(source, dataset.modalities, f'{dataset.name} {split} split')
  n = len(source) if subset is None else min(subset, len(source))
  keys = dataset.names
  images = np.empty((n, len(keys)) + IMAGE_SHAPE, np.uint8)
  labels = np.empty((n,), np.int32)
  block = 5000
  for start in range(0, n, block):
    examples = source.__getitems__(list(range(start, min(n, start + block))))
    for j, example in enumerate(examples):
      images[start + j] = np.stack([example[k] for k in keys])
      labels[start + j] = example['label']
  return images, labels


def make_loss_fn(module: DigitClassifier, label_smoothing: float = 0.0) -> Callable:
  """(params, images uint8 or float (B, M, 28, 28, 3), labels (B,), key) -> scalar loss: the sum
  over modalities of each classifier's mean cross-entropy (so each gets its own gradient)."""

  def loss_fn(params, images, labels, key):
    if images.dtype == jnp.uint8:
      images = images.astype(jnp.float32) / 255.0
    logits = apply_all(module, params, images, deterministic=False, key=key)  # (B, M, 10).
    targets = optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets[:, None])  # (B, M).
    return losses.mean(0).sum()

  return loss_fn


def accuracies_on(module: DigitClassifier, params: PyTree, images: np.ndarray,
                  labels: np.ndarray, *, batch_size: int = 1000) -> tuple[float, ...]:
  """Accuracy of classifier m on modality m: images uint8 (N, M, 28, 28, 3), labels (N,)."""

  @jax.jit
  def count_correct(params, images, labels):
    logits = apply_all(module, params, images.astype(jnp.float32) / 255.0)
    return jnp.sum(jnp.argmax(logits, -1) == labels[:, None], axis=0)  # (M,).

  correct = np.zeros(images.shape[1], np.int64)
  for start in range(0, len(labels), batch_size):
    correct += np.asarray(count_correct(params, images[start:start + batch_size],
                                        labels[start:start + batch_size]))
  return tuple(float(c) / len(labels) for c in correct)


def make_schedule(learning_rate: float, lr_schedule: str, total_steps: int) -> optax.Schedule:
  total_steps = max(total_steps, 1)
  if lr_schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, int(WARMUP_FRACTION * total_steps), total_steps)
  if lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(learning_rate, total_steps)
  if lr_schedule == 'constant':
    return optax.constant_schedule(learning_rate)
  raise ValueError(f"lr_schedule={lr_schedule!r}, expected 'warmup_cosine', 'cosine' or "
                   "'constant'.")


def train(config_data: ml_collections.ConfigDict, *,
          architecture: str = DEFAULTS['architecture'], num_epochs: int = DEFAULTS['num_epochs'],
          batch_size: int = DEFAULTS['batch_size'],
          learning_rate: float = DEFAULTS['learning_rate'],
          lr_schedule: str = DEFAULTS['lr_schedule'],
          label_smoothing: float = DEFAULTS['label_smoothing'], seed: int = DEFAULTS['seed'],
          train_subset: int | None = None, max_steps: int | None = None,
          test_subset: int | None = None) -> tuple[PyTree, tuple[float, ...], dict[str, Any]]:
  """Trains the M classifiers on the train split; returns (params, test accuracies, info).

  Args:
    config_data: config.data (which PolyMNIST; its train/test_subset are NOT used).
    architecture: key of ARCHITECTURES.
    num_epochs: passes over the (subset of the) train split; each a fresh seeded permutation,
      its last incomplete batch dropped.
    batch_size: examples (tuples of M images) per step.
    learning_rate: Adam's peak learning rate.
    lr_schedule: 'warmup_cosine' (linear warm-up over WARMUP_FRACTION of the steps, cosine decay
      to 0), 'cosine' (decay to 0 over the run) or 'constant'.
    label_smoothing: optax.smooth_labels' alpha for the training targets.
    seed: initialisation, shuffling and dropout.
    train_subset: train on the first N train tuples only (tests).
    max_steps: stop after this many steps (tests).
    test_subset: score on the first N test tuples only (tests).
  """
  module = make_module(architecture)
  start = time.time()
  train_images, train_labels = load_split(config_data, 'train', train_subset)
  test_images, test_labels = load_split(config_data, 'test', test_subset)
  load_seconds = time.time() - start
  num_modalities = train_images.shape[1]
  logging.info('Classifiers: decoded %d train and %d test tuples into memory in %.1f s.',
               len(train_labels), len(test_labels), load_seconds)
  if len(train_labels) < batch_size:
    raise ValueError(f'batch_size={batch_size} exceeds the {len(train_labels)} train tuples.')
  order = coherence_scorers.epoch_batches(len(train_labels), batch_size, num_epochs, seed)
  if max_steps is not None:
    order = order[:max_steps]
  step = len(order)
  tx = optax.adam(make_schedule(learning_rate, lr_schedule, step))
  key_init, key_dropout = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(module, key_init, num_modalities)
  train_start = time.time()
  # The loss is the sum of the M classifiers' (each its own gradient); reported per classifier.
  params, loss = coherence_scorers.train_classifier(
      make_loss_fn(module, label_smoothing), params, tx, train_images, train_labels, order,
      key_dropout, what=f'{num_modalities} classifiers')
  loss /= num_modalities
  train_seconds = time.time() - train_start
  accuracies = accuracies_on(module, params, test_images, test_labels)
  info = {'steps': step, 'final_loss': loss, 'load_seconds': round(load_seconds, 1),
          'train_seconds': round(train_seconds, 1),
          'eval_seconds': round(time.time() - train_start - train_seconds, 1)}
  info['total_seconds'] = round(time.time() - start, 1)
  logging.info('Trained %d %s classifiers in %.1f s in all (%d steps, %.1f s of them '
               'training); test accuracies %s.', num_modalities, architecture,
               info['total_seconds'], step, train_seconds,
               ', '.join(f'{a:.4f}' for a in accuracies))
  return params, accuracies, info


# Cache.


CacheError = cache.CacheError


def save(cache_dir: str, params: PyTree, meta: dict[str, Any]) -> None:
  """The bank's params.npz and meta.json (cache.save_tree)."""
  cache.save_tree(cache_dir, params, meta)


def load(cache_dir: str, template: PyTree, expected: dict[str, Any]) -> tuple[PyTree, dict]:
  """A cached bank (cache.load_tree) with an accuracy per modality; CacheError otherwise.

  Args:
    cache_dir: the bank's directory.
    template: stacked parameters of the right structure and shapes (e.g. from init_params).
    expected: metadata entries that must be equal (architecture, modalities, training settings).
  """
  params, meta = cache.load_tree(cache_dir, template, expected)
  accuracies = meta.get('accuracies')
  if not (isinstance(accuracies, list) and len(accuracies) == expected['num_modalities']):
    raise CacheError(f'{cache_dir} has no accuracies for {expected["num_modalities"]} modalities')
  return jax.tree.map(jnp.asarray, params), meta


def cache_dir_for(config_data: ml_collections.ConfigDict) -> tuple[str, str]:
  """(<cache.root(data_dir)>/classifiers/<fingerprint>, fingerprint) of config.data's dataset
  (datasets.fingerprint: PolyMNIST's is its build's, built if needed)."""
  fingerprint = datasets.fingerprint(config_data)
  return cache.root(config_data.get('data_dir'), CACHE_SUBDIR, fingerprint), fingerprint


def load_or_train(config_data: ml_collections.ConfigDict, *,
                  architecture: str = DEFAULTS['architecture'],
                  num_epochs: int = DEFAULTS['num_epochs'],
                  batch_size: int = DEFAULTS['batch_size'],
                  learning_rate: float = DEFAULTS['learning_rate'],
                  lr_schedule: str = DEFAULTS['lr_schedule'],
                  label_smoothing: float = DEFAULTS['label_smoothing'],
                  seed: int = DEFAULTS['seed'], train_subset: int | None = None,
                  max_steps: int | None = None, test_subset: int | None = None,
                  min_accuracy: float = MIN_ACCURACY,
                  use_cache: bool = True) -> ClassifierBank:
  """The coherence classifiers of the dataset `config_data` describes: cached, or trained now.

  The cache (cache_dir_for: <data_dir>/classifiers/<dataset fingerprint>/) is used when it is intact
  and was trained with the same architecture and settings; otherwise (missing, corrupt,
  incompatible) the classifiers are trained and the cache is (re)written. A test accuracy below
  `min_accuracy` is logged as a warning.

  Args:
    config_data: config.data. Its train_subset / test_subset are ignored: the classifiers use
      the whole splits unless `train_subset` / `test_subset` say otherwise.
    architecture, num_epochs, batch_size, learning_rate, lr_schedule, label_smoothing, seed,
      train_subset, max_steps, test_subset: see `train`.
    min_accuracy: warn below this test accuracy.
    use_cache: False trains and neither reads nor writes the cache.
  """
  module = make_module(architecture)
  names = datasets.get(config_data).names
  num_modalities = len(names)
  cache_dir, fingerprint = cache_dir_for(config_data)
  expected = {
      'format': CACHE_FORMAT, 'fingerprint': fingerprint, 'architecture': architecture,
      'architecture_config': {k: list(v) if isinstance(v, tuple) else v
                              for k, v in ARCHITECTURES[architecture].items()},
      'num_modalities': num_modalities, 'num_epochs': num_epochs, 'batch_size': batch_size,
      'learning_rate': learning_rate, 'lr_schedule': lr_schedule,
      'label_smoothing': label_smoothing, 'seed': seed,
      'train_subset': train_subset, 'max_steps': max_steps, 'test_subset': test_subset,
  }
  if use_cache:
    template = jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0), num_modalities))
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
      _check_accuracies(accuracies, min_accuracy, names)
      return ClassifierBank(params, accuracies, architecture, num_modalities, names, meta,
                            trained=False, cache_dir=cache_dir)
  params, accuracies, info = train(
      config_data, architecture=architecture, num_epochs=num_epochs, batch_size=batch_size,
      learning_rate=learning_rate, lr_schedule=lr_schedule, label_smoothing=label_smoothing,
      seed=seed, train_subset=train_subset, max_steps=max_steps, test_subset=test_subset)
  meta = {**expected, 'accuracies': list(accuracies), **info}
  if use_cache:
    save(cache_dir, params, meta)
    logging.info('Cached the coherence classifiers in %s.', cache_dir)
  _check_accuracies(accuracies, min_accuracy, names)
  return ClassifierBank(params, accuracies, architecture, num_modalities, names, meta,
                        trained=True, cache_dir=cache_dir if use_cache else None)


def _check_accuracies(accuracies: Sequence[float], min_accuracy: float,
                      names: Sequence[str]) -> None:
  low = {name: a for name, a in zip(names, accuracies) if a < min_accuracy}
  if low:
    logging.warning('Coherence classifiers below %.2f test accuracy: %s (all: %s). Coherence '
                    'numbers will understate the models.', min_accuracy,
                    ', '.join(f'{name}={a:.4f}' for name, a in low.items()),
                    ', '.join(f'{a:.4f}' for a in accuracies))


def make_scorer(config: ml_collections.ConfigDict,
                dataset: datasets.Dataset) -> coherence_scorers.Scorer:
  """The coherence scorer of a dataset of M 28x28 RGB digit images (PolyMNIST's
  Dataset.make_scorer): its classifier bank, loaded or trained now."""
  logging.info('Coherence classifiers of %s: loading them (trained on first use of a dataset).',
               dataset.name)
  bank = load_or_train(config.data)
  return coherence_scorers.Scorer(bank.classify, (True,) * bank.num_modalities,
                                  {'architecture': bank.architecture,
                                   'accuracies': [round(a, 4) for a in bank.accuracies],
                                   'cache_dir': bank.cache_dir})
