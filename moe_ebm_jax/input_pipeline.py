"""Input pipeline: any dataset (datasets.py) as batches, by grain.

Batches are dicts of numpy arrays:
  'x':      {modality name: (B, *shape)}, float32 (stored uint8 images scaled to [0, 1]) or
            int32 (categorical modalities), as the dataset's modality specs say
  'label':  int32 (B,), when the examples carry one
  'observed': {modality name: (B,) bool}, only for incomplete data (data/missing.py): False
            where the example lacks the modality (its 'x' entry is then zeros)
  and any other per-example field of the source (PolyMNIST: 'mnist_index' int32 (B, M)),
where B is the per-process batch (config.batch_size // jax.process_count()).

Each process reads only its rows of every global batch, and the global batches are the same
whatever the number of processes; shuffling is seeded and reshuffles every epoch; the
iterator's position is a small dict (get_state / set_state) that goes into checkpoints.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging

from moe_ebm_jax.data import datasets
from moe_ebm_jax.data import missing
from moe_ebm_jax.vae import modalities as modalities_lib


def _int32_if_integer(a: np.ndarray) -> np.ndarray:
  return a.astype(np.int32) if np.issubdtype(a.dtype, np.integer) else a


class ToExample(grain.transforms.Map):
  """A source's example {name: array, 'label': int, ...} -> {'x': {name: array}, 'label': int32,
  the other fields as arrays}."""

  def __init__(self, specs: Sequence[modalities_lib.ModalitySpec]):
    self._names = tuple(s.name for s in specs)

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    out = {k: _int32_if_integer(np.asarray(v)) for k, v in example.items()
           if k not in self._names and k != 'observed'}
    out['x'] = {n: np.asarray(example[n]) for n in self._names}
    if 'observed' in example:  # Incomplete data (data/missing.py): a bool per modality.
      out['observed'] = {n: np.bool_(example['observed'][n]) for n in self._names}
    return out


class ToModelInput(grain.transforms.Map):
  """Batches' modalities as the model reads them (uint8 -> float32 in [0, 1], labels int32),
  on whole batches (vectorised)."""

  def __init__(self, specs: Sequence[modalities_lib.ModalitySpec]):
    self._specs = tuple(specs)

  def map(self, batch: dict[str, Any]) -> dict[str, Any]:
    x = {s.name: modalities_lib.to_model_input(s, batch['x'][s.name]) for s in self._specs}
    return {**batch, 'x': x}


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'batch_size {global_batch_size} does not divide over {process_count} '
                     'processes.')
  return global_batch_size // process_count


def make_dataset(source,
                 *,
                 modalities: Sequence[modalities_lib.ModalitySpec],
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
    modalities: the dataset's modality specs; the source's examples have a field per name.
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
  ds = ds.map(ToExample(modalities))
  ds = ds.batch(local_batch, drop_remainder=drop_remainder)
  return ds.map(ToModelInput(modalities))


def _source(config: ml_collections.ConfigDict, split: str, log: bool = True):
  """The split's source, with the observation masks config.data asks for (data/missing.py)."""
  dataset = datasets.get(config.data)
  source = dataset.source(split)
  modalities_lib.check_source(source, dataset.modalities, f'{dataset.name} {split} split')
  masks = missing.masks_for(config.data, split, source, dataset.names)
  if masks is not None:
    if isinstance(source, missing.IncompleteSource):  # The user's own gaps, and the config's.
      masks, source = missing.combine(source.masks, masks), source.base
    source = missing.IncompleteSource(source, masks)
  if isinstance(source, missing.IncompleteSource):
    if log:
      logging.info('%s %s: incomplete, observed %s.', dataset.name, split,
                   missing.summary(source.masks))
    if config.data.get('incomplete_examples', 'masked') == 'dropped':
      full, source = len(source), missing.CompleteRows(source)
      if log:
        logging.info('%s %s: %d of %d examples have every modality; the others are dropped '
                   '(data.incomplete_examples).', dataset.name, split, len(source), full)
  return dataset, source


MASKS_FILE = 'observed_train.npz'


def record_masks(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Incomplete training data: a new run writes the train split's observation masks
  {name: (N,) bool} to <workdir>/observed_train.npz; a resume checks they are still those
  (another dataset's gaps under the same config are refused: ValueError, one line)."""
  _, source = _source(config, 'train', log=False)
  masks = getattr(source, 'masks', None)
  if masks is None:
    return
  path = os.path.join(workdir, MASKS_FILE)
  if not os.path.exists(path):
    os.makedirs(workdir, exist_ok=True)
    np.savez_compressed(path, **masks)
    return
  with np.load(path) as saved:
    same = set(saved.files) == set(masks) and all(np.array_equal(saved[n], masks[n])
                                                  for n in masks)
  if not same:
    raise ValueError(f'the train split\'s observation masks differ from those this run trained '
                     f'with ({path}): the data or its declared gaps changed; use another '
                     'workdir.')


def train_iterator(config: ml_collections.ConfigDict, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Infinite shuffled training batches; checkpoint with it.get_state() / it.set_state()."""
  dataset, source = _source(config, 'train')
  ds = make_dataset(source, modalities=dataset.modalities,
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
  """One ordered pass over `split` (its subset: data.train_subset or data.test_subset); the
  last partial batch is kept on one process only."""
  dataset, source = _source(config, split)
  subset = config.data.train_subset if split == 'train' else config.data.test_subset
  return make_dataset(source, modalities=dataset.modalities,
                      batch_size=config.eval_batch_size, shuffle=False, num_epochs=1,
                      drop_remainder=process_count > 1, subset=subset,
                      process_index=process_index, process_count=process_count)



def first_test_batches(config: ml_collections.ConfigDict, count: int | None
                       ) -> list[dict[str, np.ndarray]]:
  """The first `count` test tuples (None: all) as eval batches of config.eval_batch_size
  ({'x': {name: (b, *shape)}, 'label': (b,)}, the last one cut to `count`)."""
  batches, seen = [], 0
  for batch in eval_dataset(config):
    if count is not None and seen >= count:
      break
    if count is not None and seen + len(batch['label']) > count:
      batch = jax.tree.map(lambda v: v[:count - seen], batch)
    batches.append(batch)
    seen += len(batch['label'])
  return batches
