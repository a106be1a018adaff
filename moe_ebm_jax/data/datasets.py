"""Datasets: a list of modality specs and a data source, and the registry that names them.

A dataset is `Dataset(name, modalities, source, num_classes)`: `source(split)` returns a
random-access source (len, __getitem__) of examples {modality name: array, 'label': int} for the
splits 'train' and 'test'. config.data.name picks a registered dataset; its builder reads
config.data and returns the Dataset without loading anything (sources load on first use).
A dataset also says what generic code asks of it: `fingerprint` (a key for caches of what is
computed from its data; default: a digest of both splits) and `make_scorer` (how coherence
reads its modalities; default: coherence_scorers' label and MLP readers).

Registered:
  'polymnist'         M 28x28 RGB images of one digit on M backgrounds (polymnist.py registers
                      it, with its TFDS fingerprint and the CNN classifiers of classifiers.py).
  'mnist_label'       MNIST image (28, 28, 1) + its digit as a categorical modality (MVAE's
                      bimodal MNIST).
  'synthetic_mixture' M vectors of different dimensions from a shared cluster (one of K) and a
                      shared continuous factor, through fixed nonlinear maps, each with private
                      noise: a problem whose latent structure is known.
A user's own arrays: `from_arrays(...)`; a new dataset: `@register('name')` on a function
config.data -> Dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np
from absl import logging

from moe_ebm_jax import cache
from moe_ebm_jax import registry
from moe_ebm_jax.data import missing
from moe_ebm_jax.vae import modalities as modalities_lib

SPLITS = ('train', 'test')
DataError = modalities_lib.DataError  # Specs or data that do not fit: main.py's one-line error.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset and what generic code asks of it.

  Attributes:
    name: config.data.name.
    modalities: the specs, in model order.
    source: source(split) -> random-access examples {modality name: array, 'label': int}.
    num_classes: classes of the label (0: the examples carry none).
    description: one line for logs.
    fingerprint: () -> str, a key that changes when the data does (caches of classifiers and
      FID statistics); None: `fingerprint()` below digests both splits.
    make_scorer: (config, dataset) -> coherence_scorers.Scorer, how coherence reads decodes of
      this dataset as classes; None: coherence_scorers.default_scorer (each spec's
      `coherence`: label, MLP classifier, a reader of one's own, or none).
    incomplete: the training split's examples carry 'observed' masks (missing modalities).
  """
  name: str
  modalities: tuple[modalities_lib.ModalitySpec, ...]
  source: Callable[[str], Any]
  num_classes: int = 0
  description: str = ''
  fingerprint: Callable[[], str] | None = None
  make_scorer: Callable[[ml_collections.ConfigDict, 'Dataset'], Any] | None = None
  incomplete: bool = False  # Its training examples lack modalities (data/missing.py).

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.modalities)


class ArraySource:
  """A random-access source over in-memory arrays: example i is {name: arrays[name][i],
  'label': labels[i]} (no 'label' without labels)."""

  def __init__(self, arrays: Mapping[str, np.ndarray], labels: np.ndarray | None = None):
    lengths = {name: len(a) for name, a in arrays.items()}
    if labels is not None:
      lengths['label'] = len(labels)
    if len(set(lengths.values())) != 1:
      raise DataError(f'every array needs the same number of examples; got {lengths}.')
    self._arrays = dict(arrays)
    self._labels = labels
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = {name: a[i] for name, a in self._arrays.items()}
    if self._labels is not None:
      example['label'] = self._labels[i]
    return example

  def columns(self) -> dict[str, np.ndarray]:
    """Every example at once: {name: (N, *shape)}, and 'label' (N,) when there are labels."""
    columns = dict(self._arrays)
    if self._labels is not None:
      columns['label'] = np.asarray(self._labels)
    return columns


DATASETS: registry.Registry = registry.Registry('dataset')


def register(name: str, **owned):
  """Decorator: registers a builder config.data -> Dataset under `name` (config.data.name), with
  the config.data fields it owns (`config`: -> {'data': {field: default}}; `validate`:
  registry.py). A dataset that sets no data.num_modalities has as many as its specs."""
  return DATASETS.register(name, **owned)


_USER_MODULES: dict[str, Any] = {}  # Modules that register a user's datasets, by path or name.


def module_key(module: str) -> str:
  """config.data.module as kept: a file ('my_data.py', a path) made absolute, so that it is
  found from any working directory; a module name ('lab.my_data') as it is."""
  if module.endswith('.py') or os.sep in module:
    return os.path.abspath(os.path.expanduser(module))
  return module


def import_module(module: str) -> None:
  """Imports the module that registers a dataset of one's own (config.data.module), once per
  process: a file ('my_data.py', relative to the working directory) or a module name importable
  from it ('lab.my_data')."""
  key = module_key(module)
  if key in _USER_MODULES:
    return
  if os.path.isabs(key):  # A file (module_key made its path absolute).
    path = key
    if not os.path.isfile(path):
      raise DataError(f'config.data.module={module!r}: no such file ({path}).')
    name = 'moe_ebm_jax_data_' + ''.join(c if c.isalnum() else '_' for c in path)
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
      spec.loader.exec_module(loaded)
    except BaseException:
      del sys.modules[name]
      raise
  else:
    if os.getcwd() not in sys.path:  # As `python -m` would: modules beside the working directory.
      sys.path.append(os.getcwd())
    try:
      loaded = importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module.split('.')[0] and e.name != module:
        raise  # The module was found; something it imports was not.
      raise DataError(f'config.data.module={module!r}: no such module (from {os.getcwd()}); '
                      'give a file path (my_data.py) or a module on sys.path.') from None
  _USER_MODULES[key] = loaded


_BUILT: dict[tuple, Dataset] = {}  # Datasets built in this process, by builder and config.data.


def get(data_config: ml_collections.ConfigDict) -> Dataset:
  """The Dataset that config.data describes (nothing is loaded yet). Its builder runs once per
  process for a given config.data (a dataset of arrays is made and checked once); the module
  that registers it (config.data.module) is imported first."""
  if data_config.get('module') and data_config.name not in DATASETS:
    import_module(data_config.module)
  if data_config.name not in DATASETS:
    raise ValueError(f'config.data.name={data_config.name!r} is not one of '
                     f'{sorted(DATASETS)}' + ('' if data_config.get('module') else
                                             ' (a dataset of your own: config.data.module, '
                                             'docs/usage.md)') + '.')
  key = _key(data_config)
  if key not in _BUILT:
    dataset = DATASETS[data_config.name](data_config)
    modalities_lib.check_specs(dataset.modalities)
    _BUILT[key] = dataset
  return _BUILT[key]


# config.data fields that the input pipeline reads and no builder does: a config that changes
# only these (configs/*.py after base_config) keeps the dataset built.
PIPELINE_KEYS = ('train_subset', 'test_subset', 'num_threads', 'prefetch_batches', 'num_workers')


def _key(data_config: ml_collections.ConfigDict) -> tuple:
  fields = {k: v for k, v in data_config.to_dict().items() if k not in PIPELINE_KEYS}
  return (data_config.name, id(DATASETS[data_config.name]),
          json.dumps(fields, sort_keys=True, default=repr))


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(data_config: ml_collections.ConfigDict) -> str:
  """A key (hex digits) that changes when config.data's dataset does: its own `fingerprint`
  (PolyMNIST: its TFDS build's), else a sha256 of the specs and of every array of both splits
  (read through the sources once per process). Cache keys of what is computed from the data."""
  key = _key(data_config)
  if key not in _FINGERPRINTS:
    dataset = get(data_config)
    _FINGERPRINTS[key] = (dataset.fingerprint() if dataset.fingerprint else
                          _digest(dataset))
  return _FINGERPRINTS[key]


def _digest(dataset: Dataset) -> str:
  h = hashlib.sha256(repr(dataset.modalities).encode())
  for split in SPLITS:
    source = dataset.source(split)
    if hasattr(source, 'columns'):  # The arrays at once, not example by example.
      columns = source.columns()
    else:
      rows = [source[i] for i in range(len(source))]
      columns = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in (rows[0] if rows else {})}
    h.update(f'{split}:{len(source)}'.encode())
    for k in sorted(columns):
      a = np.ascontiguousarray(columns[k])
      h.update(f'{k}:{a.dtype}:{a.shape}'.encode())
      h.update(a.tobytes())
  return h.hexdigest()


def remember(data_config: ml_collections.ConfigDict, dataset: Dataset) -> None:
  """Keeps `dataset` as what `get(data_config)` returns: config_lib sets num_modalities from a
  dataset it has built, and the config then differs from the one it was built for."""
  _BUILT[_key(data_config)] = dataset


def prepare(data_config: ml_collections.ConfigDict) -> Dataset:
  """Builds or loads every split of the dataset now (--mode=prepare), so that training starts
  on data that is there."""
  dataset = get(data_config)
  for split in SPLITS:
    source = dataset.source(split)
    logging.info('%s %s: %d examples.', dataset.name, split, len(source))
  return dataset


def from_arrays(name: str, train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                modalities, train_labels=None, test_labels=None, num_classes: int = 0, *,
                train_observed: Mapping[str, np.ndarray] | None = None,
                test_observed: Mapping[str, np.ndarray] | None = None,
                nan_rows_missing: bool = False, empty_examples: str = 'error') -> Dataset:
  """A Dataset over in-memory arrays {modality name: (N, *shape)} per split, checked against the
  specs before any work (shapes, dtypes, label ranges).

  Missing entries, as the user declares them (missing.from_user): `*_observed` {name: (N,)
  bool}, masked arrays (whole rows masked), None rows, or all-NaN rows with
  nan_rows_missing=True. An example with no modality left: an error, or with
  empty_examples='skip' left out (and counted in the log)."""
  if empty_examples not in ('error', 'skip'):
    raise ValueError(f"empty_examples={empty_examples!r}, expected 'error' or 'skip'.")
  modalities = tuple(modalities)
  modalities_lib.check_specs(modalities)
  sources = {}
  for split, arrays, labels, observed in (('train', train, train_labels, train_observed),
                                          ('test', test, test_labels, test_observed)):
    names = [s.name for s in modalities]
    if set(arrays) != set(names):
      raise DataError(f'the {split} arrays have modalities {sorted(arrays)}, the specs '
                       f'{sorted(names)}.')
    arrays, masks = missing.from_user(arrays, modalities, observed, nan_rows_missing,
                                      f'{split} data')
    for spec in modalities:
      modalities_lib.check_data(spec, arrays[spec.name], f'{split} data')
    if labels is not None:
      labels = np.asarray(labels)
      if not np.issubdtype(labels.dtype, np.integer) or (
          num_classes and labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataError(f'{split} labels: integers in [0, {num_classes}) expected, got '
                         f'{labels.dtype} in [{labels.min()}, {labels.max()}].')
    if masks is not None and missing.empty(masks).any():
      none = missing.empty(masks)
      if empty_examples == 'error':
        raise DataError(f'{int(none.sum())} {split} examples have no modality (the first: '
                        f"{int(np.argmax(none))}); leave them out, or empty_examples='skip'.")
      logging.info('%s %s: %d examples without any modality left out.', name, split,
                   int(none.sum()))
      keep = ~none
      arrays = {k: v[keep] for k, v in arrays.items()}
      masks = {k: v[keep] for k, v in masks.items()}
      labels = labels[keep] if labels is not None else None
    source = ArraySource(arrays, labels)
    sources[split] = missing.IncompleteSource(source, masks) if masks is not None else source
  return Dataset(name, modalities, sources.__getitem__,
                 num_classes if train_labels is not None else 0,
                 incomplete=isinstance(sources['train'], missing.IncompleteSource))


# ----------------------------------------------------------------------------- MNIST + label


@functools.lru_cache(maxsize=4)
def _mnist_split(path: str | None, cache_dir: str, split: str):
  from moe_ebm_jax.data import mnist  # pylint: disable=g-import-not-at-top
  data = mnist.load_mnist(path, cache_dir=cache_dir)
  x, y = (data.x_train, data.y_train) if split == 'train' else (data.x_test, data.y_test)
  return ArraySource({'image': x[..., None], 'digit': y.astype(np.int32)}, y.astype(np.int32))


@register('mnist_label')
def mnist_label_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
  """MNIST's 28x28 grey digit (Bernoulli likelihood, as MVAE's) and the digit as a categorical
  modality; the label is the digit. MNIST's own train/test split."""
  network = data_config.get('image_network', 'resnet')
  specs = (modalities_lib.image_spec('image', (28, 28, 1), likelihood='bernoulli',
                                     encoder=network, decoder=network),
           modalities_lib.label_spec('digit', 10))
  return Dataset('mnist_label', specs,
                 lambda split: _mnist_split(data_config.get('mnist'),
                                            cache.root(data_config.get('data_dir'), 'mnist'), split),
                 num_classes=10, description='MNIST image + digit label')


# ----------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(frozen=True)
class MixtureMaps:
  """The fixed generative maps of the synthetic mixture (drawn from the dataset seed).

  centers (K, E): the clusters' embeddings; per modality m: w1 (E + F, H), b1 (H,), w2 (H, D_m).
  x_m = tanh([centers[c], s] @ w1 + b1) @ w2 + noise_m * eps, s ~ N(0, I_F), eps ~ N(0, I).
  """
  centers: np.ndarray
  layers: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]


def mixture_maps(num_clusters: int, dims, factor_dim: int, separation: float, seed: int,
                 hidden: int = 32, embed_dim: int = 8) -> MixtureMaps:
  rng = np.random.default_rng([seed, 0])
  centers = rng.normal(size=(num_clusters, embed_dim)) * separation / np.sqrt(2 * embed_dim)
  layers = []
  for d in dims:
    w1 = rng.normal(size=(embed_dim + factor_dim, hidden)) / np.sqrt(embed_dim + factor_dim)
    b1 = rng.normal(size=(hidden,)) * 0.1
    w2 = rng.normal(size=(hidden, d)) / np.sqrt(hidden) * 2.0
    layers.append((w1, b1, w2))
  return MixtureMaps(centers, tuple(layers))


def sample_mixture(maps: MixtureMaps, num_examples: int, noise, factor_dim: int,
                   rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
  """(per-modality float32 arrays (N, D_m), clusters (N,), shared factors (N, F))."""
  k = len(maps.centers)
  clusters = rng.integers(0, k, num_examples)
  factors = rng.normal(size=(num_examples, factor_dim))
  shared = np.concatenate([maps.centers[clusters], factors], axis=1)
  xs = []
  for (w1, b1, w2), sigma in zip(maps.layers, noise):
    clean = np.tanh(shared @ w1 + b1) @ w2
    xs.append((clean + sigma * rng.normal(size=clean.shape)).astype(np.float32))
  return xs, clusters.astype(np.int32), factors.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _mixture_split(num_clusters, dims, factor_dim, noise, separation, seed, size, split):
  maps = mixture_maps(num_clusters, dims, factor_dim, separation, seed)
  # Each split from its own stream: no example is in both.
  rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
  xs, clusters, _ = sample_mixture(maps, size, noise, factor_dim, rng)
  return ArraySource({f'v{m}': x for m, x in enumerate(xs)}, clusters)


def mixture_options() -> ml_collections.ConfigDict:
  """config.data fields of the synthetic mixture (configs/synthetic_mixture.py)."""
  c = ml_collections.ConfigDict()
  c.num_clusters = 4  # K
  c.dims = (2, 8, 16)  # One vector modality per entry (M = len(dims)), of that dimension.
  c.factor_dim = 1  # The shared continuous factor's dimension.
  c.noise = (0.1,)  # Private noise std per modality; one entry: the same for every modality.
  c.separation = 6.0  # Distance scale between the clusters' embeddings.
  c.num_train = 8192
  c.num_test = 2048
  return c


@register('synthetic_mixture', config=lambda: {'data': mixture_options()})
def synthetic_mixture_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
  c = data_config
  dims = tuple(int(d) for d in c.dims)
  noise = tuple(float(n) for n in c.noise)
  noise = noise * len(dims) if len(noise) == 1 else noise
  if len(noise) != len(dims):
    raise ValueError(f'config.data.noise has {len(noise)} entries for {len(dims)} modalities '
                     '(config.data.dims).')
  if c.num_clusters < 2:
    raise ValueError(f'config.data.num_clusters={c.num_clusters} must be >= 2.')
  specs = tuple(modalities_lib.vector_spec(f'v{m}', d) for m, d in enumerate(dims))
  sizes = {'train': c.num_train, 'test': c.num_test}
  return Dataset(
      'synthetic_mixture', specs,
      lambda split: _mixture_split(c.num_clusters, dims, c.factor_dim, noise,
                                   float(c.separation), c.seed, sizes[split], split),
      num_classes=c.num_clusters,
      description=f'synthetic mixture: K={c.num_clusters}, dims {dims}, noise {noise}')
