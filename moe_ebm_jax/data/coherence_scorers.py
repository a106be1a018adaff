"""How a decode of each modality is read as a class, for coherence: `make_scorer(config)`.

A modality's spec says how (modalities.ModalitySpec.coherence):
  'label'       a categorical modality is the label itself: its decode's argmax;
  'classifier'  an MLP on the flattened data, trained here on the train split's (data, label)
                pairs and cached under the dataset's fingerprint (cache.save_tree);
  'none'        not scored (its predictions are -1).

  a name registered with modalities.register_coherence: the user's own reader (a better
                classifier of a modality, say), built by its factory(config, spec, dataset).

A dataset can bring its own scorer instead (datasets.Dataset.make_scorer): PolyMNIST's is the
bank of CNN digit classifiers of classifiers.py.

Every classifier here trains with `train_classifier`: Adam-like steps over in-memory arrays, many
per compiled call (a `lax.scan` over batches gathered inside the program).

A scorer maps decodes {name: (N, *shape)} (as generation.py returns them: probabilities
(N, K) for a categorical modality) to predicted classes int32 (N, M), -1 where not scored.
Each scoring classifier's test accuracy is in its info; `weak_readers` lists those under a
threshold, for the log and the report (coherence read through a weak classifier is unreliable).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from moe_ebm_jax import cache
from moe_ebm_jax.data import datasets
from moe_ebm_jax.vae import modalities as modalities_lib

PyTree = Any

MLP_HIDDEN = (256,)
MLP_STEPS = 1500
MLP_BATCH = 256
MLP_LEARNING_RATE = 1e-3
CACHE_SUBDIR = 'modality_classifiers'
CACHE_FORMAT = 2  # 2: cache.save_tree under the dataset's fingerprint, epochs of permutations.


@dataclasses.dataclass
class Scorer:
  """classify(decodes {name: (N, ...)}) -> int32 (N, M), -1 for modalities not scored; `scored`
  (M,) bool; `info`: what each modality's reading is, with its test accuracy."""
  classify: Callable[[dict[str, Any]], np.ndarray]
  scored: tuple[bool, ...]
  info: dict[str, Any]

  def __call__(self, decodes) -> np.ndarray:
    return self.classify(decodes)


# ----------------------------------------------------------------------------- training


def epoch_batches(num_examples: int, batch_size: int, num_epochs: int, seed: int) -> np.ndarray:
  """Row indices int32 (num_epochs * (num_examples // batch_size), batch_size): per epoch a
  fresh permutation (numpy's default_rng(seed), drawn in turn), its incomplete last batch
  dropped."""
  rng = np.random.default_rng(seed)
  per_epoch = num_examples // batch_size
  return np.concatenate([rng.permutation(num_examples)[:per_epoch * batch_size]
                         for _ in range(num_epochs)]).reshape(-1, batch_size).astype(np.int32)


def chunk_size(total_steps: int, cap: int = 64) -> int:
  """Steps per compiled call: a divisor of total_steps near `cap` when there is one (one
  program), else `cap` (a second program for the remainder)."""
  for d in range(min(cap, total_steps), max(cap // 4, 1) - 1, -1):
    if total_steps % d == 0:
      return d
  return min(cap, total_steps)


def make_train_chunk(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """Jitted (params, opt_state, x (N, ...), labels (N,), batch_indices int32 (S, B), step0,
  key) -> (params, opt_state, mean loss over the S steps).

  One call runs S steps of `tx` on loss_fn(params, x[rows], labels[rows], fold_in(key, step0 +
  s)) in a `lax.scan`, step s on the rows batch_indices[s], gathered inside the program (no host
  round trip per step). The arrays are arguments, not closed-over constants, which would be
  baked into the compiled program.
  """

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_chunk(params, opt_state, x, labels, batch_indices, step0, key):

    def step(carry, inputs):
      params, opt_state = carry
      s, rows = inputs
      loss, grads = jax.value_and_grad(loss_fn)(
          params, jnp.take(x, rows, axis=0), jnp.take(labels, rows, axis=0),
          jax.random.fold_in(key, step0 + s))
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    steps = jnp.arange(batch_indices.shape[0])
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (steps, batch_indices))
    return params, opt_state, losses.mean()

  return train_chunk


def train_classifier(loss_fn: Callable, params: PyTree, tx: optax.GradientTransformation,
                     x: np.ndarray, labels: np.ndarray, order: np.ndarray, key: jax.Array, *,
                     what: str = 'Classifier') -> tuple[PyTree, float]:
  """Trains `params` on in-memory (x, labels), one step per row of `order`.

  Args:
    loss_fn: (params, x batch (B, ...), labels (B,), key) -> scalar loss.
    params: the initial parameters.
    tx: the optimiser.
    x: inputs (N, ...); labels: int (N,).
    order: int32 (S, B), the rows of each step (e.g. epoch_batches).
    key: PRNG key; step s gets fold_in(key, s) (dropout).
    what: the log lines' subject.

  Returns:
    (trained params, the last chunk's mean loss).
  """
  train_chunk = make_train_chunk(loss_fn, tx)
  opt_state = tx.init(params)
  x, labels = jnp.asarray(x), jnp.asarray(labels)
  total, chunk = len(order), chunk_size(len(order))
  start, step, loss = time.time(), 0, float('nan')
  while step < total:
    rows = order[step:step + chunk]
    params, opt_state, loss = train_chunk(params, opt_state, x, labels, rows, np.int32(step), key)
    step += len(rows)
    loss = float(loss)  # Waits for the chunk: the rate below is real.
    elapsed = time.time() - start
    logging.info('%s: step %d/%d, loss %.4f, %.1f steps/s, ETA %.0f s.', what, step, total, loss,
                 step / elapsed, (total - step) * elapsed / step)
  return params, loss


# ----------------------------------------------------------------------------- MLP readers


class MlpClassifier(nn.Module):
  """Flattened data (N, F) -> class logits (N, K)."""
  hidden: tuple[int, ...]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[:1] + (-1,)).astype(jnp.float32)
    for i, width in enumerate(self.hidden):
      h = jax.nn.relu(nn.Dense(width, name=f'dense_{i}')(h))
    return nn.Dense(self.num_classes, name='out')(h)


def _all(source, name: str, spec) -> tuple[np.ndarray, np.ndarray]:
  """One modality of a whole split as the model reads it (N, *shape), and the labels (N,): the
  examples that have it (incomplete data: data/missing.py)."""
  rows = [source[i] for i in range(len(source))]
  rows = [r for r in rows if r.get('observed', {}).get(name, True)]
  data = np.stack([np.asarray(r[name]) for r in rows])
  labels = np.asarray([r['label'] for r in rows], np.int32)
  return modalities_lib.to_model_input(spec, data), labels


def _init_mlp(num_classes: int, example_shape, seed: int) -> PyTree:
  """{'params': the MLP's variables, 'mean', 'std': float32 () of the input normalisation}."""
  model = MlpClassifier(MLP_HIDDEN, num_classes)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(example_shape)))
  return {'params': variables, 'mean': np.float32(0), 'std': np.float32(1)}


def train_mlp(x: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int = 0,
              steps: int = MLP_STEPS, batch: int = MLP_BATCH) -> PyTree:
  """An MLP classifier of x (N, ...) -> labels (N,), trained with Adam by train_classifier
  for `steps` batches of epochs of permutations: {'params', 'mean', 'std'} (mlp_predict's)."""
  batch = min(batch, len(x))
  model = MlpClassifier(MLP_HIDDEN, num_classes)
  trained = _init_mlp(num_classes, x.shape[1:], seed)
  mean, std = np.float32(x.mean()), np.float32(x.std() + 1e-6)

  def loss_fn(variables, xb, yb, key):
    del key  # No dropout.
    logits = model.apply(variables, (xb - mean) / std)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  order = epoch_batches(len(x), batch, -(-steps // (len(x) // batch)), seed)[:steps]
  variables, _ = train_classifier(loss_fn, trained['params'], optax.adam(MLP_LEARNING_RATE),
                                  x, labels, order, jax.random.PRNGKey(seed), what='MLP reader')
  return {'params': variables, 'mean': mean, 'std': std}


def mlp_predict(trained: PyTree, x) -> np.ndarray:
  """train_mlp's classifier on x (N, ...) -> classes int32 (N,)."""
  num_classes = trained['params']['params']['out']['bias'].shape[-1]
  model = MlpClassifier(MLP_HIDDEN, num_classes)
  logits = model.apply(trained['params'], (jnp.asarray(x) - trained['mean']) / trained['std'])
  return np.asarray(jnp.argmax(logits, -1), np.int32)


def load_or_train_mlp(config: ml_collections.ConfigDict, spec: modalities_lib.ModalitySpec,
                      dataset: datasets.Dataset) -> tuple[PyTree, float]:
  """The modality's MLP classifier and its test accuracy: cached under
  <cache.root(config.data.data_dir)>/modality_classifiers/<dataset fingerprint>-<modality>, or
  trained now on the train split (a missing, corrupt or stale cache is retrained)."""
  fingerprint = datasets.fingerprint(config.data)
  directory = cache.root(config.data.get('data_dir'), CACHE_SUBDIR,
                         f'{fingerprint[:16]}-{spec.name}')
  expected = {'format': CACHE_FORMAT, 'fingerprint': fingerprint, 'modality': spec.name,
              'hidden': MLP_HIDDEN, 'steps': MLP_STEPS, 'batch': MLP_BATCH,
              'learning_rate': MLP_LEARNING_RATE, 'num_classes': dataset.num_classes, 'seed': 0}
  template = jax.eval_shape(lambda: _init_mlp(dataset.num_classes, spec.shape, 0))
  try:
    trained, meta = cache.load_tree(directory, template, expected)
    if not isinstance(meta.get('test_accuracy'), float):
      raise cache.CacheError(f'{directory} holds no test accuracy')
    return trained, meta['test_accuracy']
  except cache.CacheError as e:
    logging.info('Coherence classifier of %r: training an MLP (%s).', spec.name, e)
  x, labels = _all(dataset.source('train'), spec.name, spec)
  trained = train_mlp(x, labels, dataset.num_classes)
  x_test, y_test = _all(dataset.source('test'), spec.name, spec)
  accuracy = float(np.mean(mlp_predict(trained, x_test) == y_test))
  cache.save_tree(directory, trained, {**expected, 'test_accuracy': accuracy})
  return trained, accuracy


# ----------------------------------------------------------------------------- scorers


def accuracies(info: dict[str, Any], names) -> dict[str, float]:
  """{modality: test accuracy} of every scoring classifier in a scorer's info."""
  if info.get('accuracies'):  # A bank of classifiers (PolyMNIST's): one accuracy per modality.
    return dict(zip(names, info['accuracies']))
  return {name: r['test_accuracy'] for name, r in (info.get('readings') or {}).items()
          if isinstance(r, dict) and r.get('test_accuracy') is not None}


def weak_readers(info: dict[str, Any], names, threshold: float) -> dict[str, float]:
  """The modalities whose classifier's test accuracy is under `threshold`."""
  return {n: a for n, a in accuracies(info, names).items() if a < threshold}


def make_scorer(config: ml_collections.ConfigDict) -> Scorer:
  """The coherence scorer of config's dataset: its own (Dataset.make_scorer), else
  default_scorer. Classifiers load or train here."""
  dataset = datasets.get(config.data)
  return (dataset.make_scorer or default_scorer)(config, dataset)


def default_scorer(config: ml_collections.ConfigDict, dataset: datasets.Dataset) -> Scorer:
  """Each modality read as its spec's `coherence` says: a reader of one's own
  (modalities.register_coherence), 'label', 'classifier' (an MLP) or 'none'."""
  specs = dataset.modalities
  if not dataset.num_classes:
    raise ValueError(f'coherence needs labels: dataset {dataset.name!r} carries none (set '
                     'config.eval.at_end_of_training=False, or give labels).')
  readers, info = [], {}
  for spec in specs:
    if spec.coherence in modalities_lib.COHERENCE_READERS:  # One of the user's own.
      read, info[spec.name] = modalities_lib.COHERENCE_READERS[spec.coherence](config, spec,
                                                                               dataset)
      readers.append(read)
    elif spec.coherence == 'label':
      readers.append(lambda v: np.asarray(jnp.argmax(v, -1), np.int32))
      info[spec.name] = 'its decoded class (argmax)'
    elif spec.coherence == 'classifier':
      trained, acc = load_or_train_mlp(config, spec, dataset)
      readers.append(lambda v, t=trained: mlp_predict(t, v))
      info[spec.name] = {'classifier': f'MLP {MLP_HIDDEN}', 'test_accuracy': round(acc, 4)}
    else:
      readers.append(None)
      info[spec.name] = 'not scored'
  scored = tuple(r is not None for r in readers)
  if sum(scored) < 2:
    raise ValueError(f'coherence needs two scored modalities; dataset {dataset.name!r} has '
                     f'{sum(scored)} (spec.coherence).')

  def classify(decodes):
    n = len(next(iter(decodes.values())))
    return np.stack([r(decodes[s.name]) if r else np.full(n, -1, np.int32)
                     for s, r in zip(specs, readers)], axis=1)

  return Scorer(classify, scored, {'readings': info})
