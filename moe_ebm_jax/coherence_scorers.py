"""How a decode of each modality is read as a class, for coherence: `make_scorer(config)`.

A modality's spec says how (modalities.ModalitySpec.coherence):
  'label'       a categorical modality is the label itself: its decode's argmax;
  'classifier'  a classifier of that modality: PolyMNIST's images use the digit classifiers of
                classifiers.py (trained on first use, cached next to the dataset); any other
                modality an MLP on the flattened data, trained here on the train split's
                (data, label) pairs and cached by a digest of the data it was trained on;
  'none'        not scored (its predictions are -1).

  a name registered with modalities.register_coherence: the user's own reader (a better
                classifier of a modality, say), built by its factory(config, spec, dataset).

A scorer maps decodes {name: (N, *shape)} (as generation.py returns them: probabilities
(N, K) for a categorical modality) to predicted classes int32 (N, M), -1 where not scored.
Each scoring classifier's test accuracy is in its info; `weak_readers` lists those under a
threshold, for the log and the report (coherence read through a weak classifier is unreliable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from moe_ebm_jax import datasets
from moe_ebm_jax import modalities as modalities_lib

MLP_HIDDEN = (256,)
MLP_STEPS = 1500
MLP_BATCH = 256
MLP_LEARNING_RATE = 1e-3
CACHE_FORMAT = 1


@dataclasses.dataclass
class Scorer:
  """classify(decodes {name: (N, ...)}) -> int32 (N, M), -1 for modalities not scored; `scored`
  (M,) bool; `info`: what each modality's reading is, with its test accuracy."""
  classify: Callable[[dict[str, Any]], np.ndarray]
  scored: tuple[bool, ...]
  info: dict[str, Any]

  def __call__(self, decodes) -> np.ndarray:
    return self.classify(decodes)


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


def _all(source, name: str, spec) -> np.ndarray:
  """One modality of a whole split as the model reads it (N, *shape), and the labels."""
  rows = [source[i] for i in range(len(source))]
  data = np.stack([np.asarray(r[name]) for r in rows])
  labels = np.asarray([r['label'] for r in rows], np.int32)
  return modalities_lib.to_model_input(spec, data), labels


def train_mlp(x: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int = 0,
              steps: int = MLP_STEPS, batch: int = MLP_BATCH):
  """An MLP classifier trained with Adam on (x, labels): its params."""
  model = MlpClassifier(MLP_HIDDEN, num_classes)
  params = model.init(jax.random.PRNGKey(seed), jnp.asarray(x[:1]))
  mean, std = float(x.mean()), float(x.std()) + 1e-6
  tx = optax.adam(MLP_LEARNING_RATE)
  opt = tx.init(params)

  @jax.jit
  def run(params, opt, key):
    def step(carry, k):
      params, opt = carry
      idx = jax.random.randint(k, (batch,), 0, len(x))
      def loss_fn(p):
        logits = model.apply(p, (jnp.asarray(x)[idx] - mean) / std)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)[idx]
                                                               ).mean()
      grads = jax.grad(loss_fn)(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt), None
    (params, opt), _ = jax.lax.scan(step, (params, opt), jax.random.split(key, steps))
    return params

  params = run(params, opt, jax.random.PRNGKey(seed + 1))
  return {'params': params, 'mean': mean, 'std': std}


def mlp_predict(trained, x) -> np.ndarray:
  num_classes = trained['params']['params']['out']['bias'].shape[-1]
  model = MlpClassifier(MLP_HIDDEN, num_classes)
  logits = model.apply(trained['params'], (jnp.asarray(x) - trained['mean']) / trained['std'])
  return np.asarray(jnp.argmax(logits, -1), np.int32)


def _digest(*arrays, extra: str) -> str:
  h = hashlib.sha256(extra.encode())
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def _cache_root(config: ml_collections.ConfigDict) -> str:
  base = config.data.get('data_dir') or os.path.expanduser('~/.cache/moe_ebm_jax')
  return os.path.join(base, 'modality_classifiers')


def load_or_train_mlp(config, spec, train_source, test_source, num_classes: int):
  """The modality's MLP classifier and its test accuracy: cached (keyed by a digest of the
  train data, labels and settings), or trained now."""
  x, labels = _all(train_source, spec.name, spec)
  settings = json.dumps({'format': CACHE_FORMAT, 'hidden': MLP_HIDDEN, 'steps': MLP_STEPS,
                         'batch': MLP_BATCH, 'lr': MLP_LEARNING_RATE, 'classes': num_classes})
  path = os.path.join(_cache_root(config), f'{spec.name}-{_digest(x, labels, extra=settings)}.npz')
  trained = None
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        leaves = [f[f'leaf_{i}'] for i in range(len(f.files) - 2)]
        mean, std = float(f['mean']), float(f['std'])
      template = jax.eval_shape(lambda: train_mlp(x[:2], labels[:2], num_classes, steps=1)
                                )['params']
      trained = {'params': jax.tree.unflatten(jax.tree.structure(template), leaves),
                 'mean': mean, 'std': std}
    except Exception as e:  # A damaged cache is retrained.
      logging.warning('Classifier cache %s unreadable (%s): training again.', path, e)
      trained = None
  if trained is None:
    logging.info('Coherence classifier of %r: training an MLP on %d examples.', spec.name, len(x))
    trained = train_mlp(x, labels, num_classes)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    leaves = {f'leaf_{i}': np.asarray(v) for i, v in enumerate(jax.tree.leaves(trained['params']))}
    tmp = path + '.tmp.npz'
    np.savez(tmp, mean=trained['mean'], std=trained['std'], **leaves)
    os.replace(tmp, path)
  x_test, y_test = _all(test_source, spec.name, spec)
  accuracy = float(np.mean(mlp_predict(trained, x_test) == y_test))
  return trained, accuracy


def accuracies(info: dict[str, Any], names) -> dict[str, float]:
  """{modality: test accuracy} of every scoring classifier in a scorer's info."""
  if info.get('accuracies'):  # PolyMNIST's bank: one accuracy per modality.
    return dict(zip(names, info['accuracies']))
  return {name: r['test_accuracy'] for name, r in (info.get('readings') or {}).items()
          if isinstance(r, dict) and r.get('test_accuracy') is not None}


def weak_readers(info: dict[str, Any], names, threshold: float) -> dict[str, float]:
  """The modalities whose classifier's test accuracy is under `threshold`."""
  return {n: a for n, a in accuracies(info, names).items() if a < threshold}


def make_scorer(config: ml_collections.ConfigDict) -> Scorer:
  """The coherence scorer of config's dataset (classifiers load or train here)."""
  dataset = datasets.get(config.data)
  specs = dataset.modalities
  if dataset.name == 'polymnist':
    from moe_ebm_jax import classifiers  # pylint: disable=g-import-not-at-top
    logging.info('Coherence classifiers: loading them (trained on first use of a dataset).')
    bank = classifiers.load_or_train(config.data)
    return Scorer(bank.classify, (True,) * len(specs),
                  {'architecture': bank.architecture,
                   'accuracies': [round(a, 4) for a in bank.accuracies],
                   'cache_dir': bank.cache_dir})
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
      trained, acc = load_or_train_mlp(config, spec, dataset.source('train'),
                                       dataset.source('test'), dataset.num_classes)
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
