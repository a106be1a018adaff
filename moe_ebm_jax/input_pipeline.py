"""Input pipeline: PolyMNIST from TFDS's random-access data source, batched by grain.

Batches are dicts of numpy arrays:
  'images':      float32 (B, M, 28, 28, 3) in [0, 1]
  'label':       int32 (B,)
  'mnist_index': int32 (B, M)
where B is the per-process batch (config.batch_size // jax.process_count()).

Each process reads only its rows of every global batch, and the global batches are the same
whatever the number of processes; shuffling is seeded and reshuffles every epoch; the
iterator's position is a small dict (get_state / set_state) that goes into checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags
from absl import logging

from moe_ebm_jax import polymnist


def builder(data_config: ml_collections.ConfigDict) -> polymnist.Polymnist:
  """The PolyMNIST builder that `data_config` describes (config.data)."""
  if data_config.name != 'polymnist':
    raise ValueError(f"config.data.name={data_config.name!r}: only 'polymnist' is supported.")
  return polymnist.builder(num_modalities=data_config.num_modalities, seed=data_config.seed,
                           backgrounds=data_config.backgrounds, data_dir=data_config.data_dir,
                           mnist_path=data_config.mnist)


@functools.lru_cache(maxsize=None)
def _announce_ready(name: str, data_dir: str, fingerprint: str | None) -> None:
  """Logs that a dataset is ready, once per process (every evaluation reopens it)."""
  logging.info('PolyMNIST %s is ready in %s (fingerprint %s).', name, data_dir, fingerprint)


def prepare(data_config: ml_collections.ConfigDict) -> polymnist.Polymnist:
  """Builds the dataset unless it is already there; returns the prepared builder.

  An existing directory that is incomplete or does not match is rebuilt by TFDS (it writes into
  a temporary directory and renames it when done, so an interrupted build leaves no half data).
  """
  b = builder(data_config)
  if b.is_prepared():
    _announce_ready(b.builder_config.name, b.data_dir, b.info.metadata.get('fingerprint'))
    return b
  logging.info('Building PolyMNIST %s into %s (about a minute on 2 CPU cores) ...',
               b.builder_config.name, b.data_dir)
  start = time.time()
  # TFDS prints its own 'Downloading and preparing' / 'prepared' lines to stdout: these log lines
  # say the same.
  with contextlib.redirect_stdout(io.StringIO()):
    b.download_and_prepare()
  logging.info('Built PolyMNIST in %.1f s: %s (fingerprint %s).', time.time() - start,
               {k: v.num_examples for k, v in b.info.splits.items()}, b.info.metadata['fingerprint'])
  return b


def data_source(data_config: ml_collections.ConfigDict, split: str):
  """Random-access source of one split (builds the dataset on first use)."""
  return prepare(data_config).as_data_source(split=split)


class ToTuple(grain.transforms.Map):
  """One example dict {m0..m{M-1}, label, mnist_index} -> {images (M, 28, 28, 3) uint8, ...}."""

  def __init__(self, num_modalities: int):
    self._keys = [f'm{m}' for m in range(num_modalities)]

  def map(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        'images': np.stack([example[k] for k in self._keys]),
        'label': np.int32(example['label']),
        'mnist_index': np.asarray(example['mnist_index'], np.int32),
    }


def to_float(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """uint8 -> float32 in [0, 1], on whole batches (vectorised)."""
  return {**batch, 'images': batch['images'].astype(np.float32) * np.float32(1 / 255)}


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'batch_size {global_batch_size} does not divide over {process_count} '
                     'processes.')
  return global_batch_size // process_count


def make_dataset(source,
                 *,
                 num_modalities: int,
                 batch_size: int,
                 seed: int = 0,
                 shuffle: bool = True,
                 num_epochs: int | None = None,
                 drop_remainder: bool = True,
                 subset: int | None = None,
                 process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """A grain MapDataset of this process's rows of each global batch.

  Every process walks the same seeded order of examples; global batch g is elements
  [g * batch_size, (g + 1) * batch_size) of it, and process p reads only its rows
  [p * b, (p + 1) * b) of each (b = batch_size // process_count). So the global batches, and
  hence training, do not depend on how many processes feed them.

  Args:
    source: random-access source (len, __getitem__) of example dicts, e.g. from `data_source`.
    num_modalities: M; the source must have features m0..m{M-1}.
    batch_size: the GLOBAL batch size; each process yields batch_size // process_count rows.
    seed: shuffling seed; every epoch is a different permutation derived from it.
    shuffle: shuffle (training) or keep the stored order (evaluation).
    num_epochs: None repeats forever.
    drop_remainder: drop the last incomplete global batch.
    subset: use only the first `subset` examples of the split (smoke and CPU scales).
    process_index, process_count: which rows of each global batch this process reads.
  """
  local_batch = per_process_batch_size(batch_size, process_count)
  ds = grain.MapDataset.source(source)
  if subset is not None:
    if not 0 < subset <= len(ds):
      raise ValueError(f'subset={subset} must be in [1, {len(ds)}].')
    ds = ds[:subset]
  if drop_remainder and len(ds) < batch_size:
    raise ValueError(f'{len(ds)} examples, fewer than one batch of {batch_size}.')
  if shuffle:
    ds = ds.shuffle(seed=seed)  # Before repeat: a new permutation every epoch.
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ordered = ds
  if drop_remainder:
    num_local = len(ordered) // batch_size * local_batch
  else:
    if process_count > 1:
      raise ValueError('drop_remainder=False needs one process: a partial last batch does not '
                       'split evenly over processes.')
    num_local = len(ordered)

  def global_position(j: int) -> int:  # Local element j -> its place in the global order.
    return (j // local_batch) * batch_size + process_index * local_batch + j % local_batch

  ds = grain.MapDataset.range(num_local).map(lambda j: ordered[global_position(j)])
  ds = ds.map(ToTuple(num_modalities))
  ds = ds.batch(local_batch, drop_remainder=drop_remainder)
  return ds.map(to_float)


def check_modalities(source, num_modalities: int) -> None:
  """Fails early when the data's modality count differs from the config's."""
  keys = set(source[0])
  have = sum(1 for k in keys if k.startswith('m') and k[1:].isdigit())
  if have != num_modalities:
    raise ValueError(f'the dataset has {have} modalities, the config says {num_modalities}.')


def train_iterator(config: ml_collections.ConfigDict, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Infinite shuffled training batches; checkpoint with it.get_state() / it.set_state()."""
  source = data_source(config.data, 'train')
  check_modalities(source, config.data.num_modalities)
  ds = make_dataset(source, num_modalities=config.data.num_modalities,
                    batch_size=config.batch_size, seed=config.seed, shuffle=True,
                    num_epochs=None, subset=config.data.train_subset,
                    process_index=process_index, process_count=process_count)
  # Threads decode and batch ahead of the training step; the state stays {'next_index': n}.
  read_options = grain.ReadOptions(num_threads=config.data.num_threads,
                                   prefetch_buffer_size=config.data.prefetch_batches)
  it_ds = ds.to_iter_dataset(read_options)
  if config.data.num_workers:
    # Worker w produces batches w, w + W, ... (spawned processes: safe beside JAX); the batches
    # and their order are those of the in-process iterator. grain's workers read absl flags:
    # outside an absl app (tests, notebooks) take their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(
        grain.multiprocessing.MultiprocessingOptions(num_workers=config.data.num_workers))
  return iter(it_ds)


def workers_of_position(state: dict[str, Any]) -> int:
  """How many worker processes the iterator that saved `state` had (0: none)."""
  return len(state['iterators_in_use_states']) if 'iterators_in_use_states' in state else 0


def restore_position(it: grain.DatasetIterator, state: dict[str, Any],
                     config: ml_collections.ConfigDict) -> None:
  """it.set_state(state), with a clear error when the worker count differs from the saver's."""
  saved = workers_of_position(state)
  if saved != config.data.num_workers:
    raise ValueError(
        f'the checkpoint\'s data position was saved with data.num_workers={saved}, the config '
        f'has {config.data.num_workers}: resume with --config.data.num_workers={saved} (each '
        'worker count keeps its position in another form).')
  it.set_state(state)


def eval_dataset(config: ml_collections.ConfigDict, split: str = 'test', process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """One ordered pass over `split`; the last partial batch is kept on one process only."""
  source = data_source(config.data, split)
  check_modalities(source, config.data.num_modalities)
  return make_dataset(source, num_modalities=config.data.num_modalities,
                      batch_size=config.eval_batch_size, shuffle=False, num_epochs=1,
                      drop_remainder=process_count > 1, subset=config.data.test_subset,
                      process_index=process_index, process_count=process_count)

