"""The grain pipeline: shapes and ranges, seeded shuffling, per-process sharding, checkpointable
position, subsets, and the errors."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax.data import datasets
from moe_ebm_jax.data import polymnist
from moe_ebm_jax.vae import modalities

M = 5
SPECS = polymnist.specs(M)


def images(batch):
  """A PolyMNIST batch's modalities stacked: (B, M, 28, 28, 3)."""
  return np.stack([batch['x'][f'm{m}'] for m in range(M)], axis=1)


@pytest.fixture(scope='module')
def config(polymnist_dir):
  c = config_lib.base_config('moe_ebm')
  c.data.data_dir = polymnist_dir
  c.batch_size = 32
  c.eval_batch_size = 64
  c.data.train_subset = 320
  c.data.test_subset = 100
  return c


@pytest.fixture(scope='module')
def train_source(polymnist_dir):
  return tfds.data_source('polymnist', data_dir=polymnist_dir, split='train', download=False)


def first_index(batch):
  return batch['mnist_index'][:, 0].tolist()


def test_batches_are_float_images_in_unit_range_matching_the_source(config, train_source):
  it = input_pipeline.train_iterator(config)
  batch = next(it)
  assert sorted(batch['x']) == [f'm{m}' for m in range(M)]
  assert all(a.shape == (32, 28, 28, 3) and a.dtype == np.float32 for a in batch['x'].values())
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert batch['mnist_index'].shape == (32, M) and batch['mnist_index'].dtype == np.int32
  assert 0.0 <= images(batch).min() and images(batch).max() <= 1.0
  # Each row is the stored tuple, scaled by 1/255: find it by its modality-0 index.
  by_index = {int(train_source[i]['mnist_index'][0]): i for i in range(320)}
  for row in (0, 7, 31):
    example = train_source[by_index[int(batch['mnist_index'][row, 0])]]
    stored = np.stack([example[f'm{m}'] for m in range(M)]).astype(np.float32) / 255
    np.testing.assert_allclose(images(batch)[row], stored, atol=1e-6)
    assert batch['label'][row] == example['label']


def epoch(ds, num_batches):
  it = iter(ds)
  return [first_index(next(it)) for _ in range(num_batches)]


def test_shuffling_is_seeded_covers_each_example_once_and_reshuffles_per_epoch(train_source):
  kwargs = dict(modalities=SPECS, batch_size=32, subset=320)
  ds = input_pipeline.make_dataset(train_source, seed=0, **kwargs)
  two_epochs = epoch(ds, 20)
  first, second = sum(two_epochs[:10], []), sum(two_epochs[10:], [])
  subset_ids = sorted(int(train_source[i]['mnist_index'][0]) for i in range(320))
  assert sorted(first) == subset_ids and sorted(second) == subset_ids
  assert first != second  # A new permutation every epoch.
  assert epoch(input_pipeline.make_dataset(train_source, seed=0, **kwargs), 20) == two_epochs
  assert epoch(input_pipeline.make_dataset(train_source, seed=1, **kwargs), 10)[0] != two_epochs[0]
  stored_order = epoch(input_pipeline.make_dataset(train_source, shuffle=False, **kwargs), 1)[0]
  assert stored_order == [int(train_source[i]['mnist_index'][0]) for i in range(32)]


@pytest.mark.parametrize('process_count', [2, 4])
def test_process_rows_assemble_the_single_process_batches(train_source, process_count):
  # Each process reads its rows of every global batch: concatenated in process order they are
  # exactly the batches one process reads, so training does not depend on the process count.
  kwargs = dict(modalities=SPECS, batch_size=32, subset=320, seed=3)
  single = list(input_pipeline.make_dataset(train_source, num_epochs=1, **kwargs))
  shards = [list(input_pipeline.make_dataset(train_source, process_index=p,
                                             process_count=process_count, num_epochs=1,
                                             **kwargs))
            for p in range(process_count)]
  assert [len(s) for s in shards] == [10] * process_count
  for g, batch in enumerate(single):
    rows = [shards[p][g] for p in range(process_count)]
    assert all(r['label'].shape[0] == 32 // process_count for r in rows)
    np.testing.assert_array_equal(np.concatenate([images(r) for r in rows]), images(batch))
    for key in ('label', 'mnist_index'):
      np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), batch[key])
  seen = [i for s in shards for b in s for i in first_index(b)]
  assert len(seen) == len(set(seen)) == 320


def test_iterator_position_restores_exactly(config):
  it = input_pipeline.train_iterator(config)
  for _ in range(13):  # Past one epoch of 10 batches.
    next(it)
  state = it.get_state()
  expected = [first_index(next(it)) for _ in range(3)]
  resumed = input_pipeline.train_iterator(config)
  resumed.set_state(state)
  assert [first_index(next(resumed)) for _ in range(3)] == expected


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_restore_exactly(config):
  """Two worker processes: the in-process iterator's batches in its order; positions restore."""
  plain = input_pipeline.train_iterator(config)
  expected = [next(plain) for _ in range(16)]  # Past one epoch of 10 batches.
  workers = config.copy_and_resolve_references()
  workers.data.num_workers = 2
  it = input_pipeline.train_iterator(workers)
  got = [next(it) for _ in range(13)]
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a['mnist_index'], b['mnist_index'])
    np.testing.assert_array_equal(images(a), images(b))
  state = it.get_state()
  assert input_pipeline.workers_of_position(state) == 2
  resumed = input_pipeline.train_iterator(workers)
  input_pipeline.restore_position(resumed, state, workers)
  assert [first_index(next(resumed)) for _ in range(3)] == [first_index(b) for b in expected[13:]]
  # A position of two workers does not fit the in-process iterator, and says so.
  with pytest.raises(ValueError, match='saved with data.num_workers=2, the config has 0'):
    input_pipeline.restore_position(input_pipeline.train_iterator(config), state, config)
  for iterator in (it, resumed):
    iterator.close()


def test_subset_and_drop_remainder(train_source):
  ds = input_pipeline.make_dataset(train_source, modalities=SPECS, batch_size=32, subset=100,
                                   num_epochs=1)
  assert [b['label'].shape[0] for b in ds] == [32, 32, 32]
  ds = input_pipeline.make_dataset(train_source, modalities=SPECS, batch_size=32, subset=100,
                                   num_epochs=1, drop_remainder=False, shuffle=False)
  assert [b['label'].shape[0] for b in ds] == [32, 32, 32, 4]


def test_eval_dataset_is_one_ordered_pass(config):
  batches = list(input_pipeline.eval_dataset(config))
  assert [b['label'].shape[0] for b in batches] == [64, 36]
  again = list(input_pipeline.eval_dataset(config))
  assert [first_index(b) for b in batches] == [first_index(b) for b in again]


def test_errors(train_source, config):
  with pytest.raises(ValueError, match='does not divide over 3 processes'):
    input_pipeline.make_dataset(train_source, modalities=SPECS, batch_size=32, process_count=3)
  with pytest.raises(ValueError, match='subset=0'):
    input_pipeline.make_dataset(train_source, modalities=SPECS, batch_size=32, subset=0)
  with pytest.raises(ValueError, match='fewer than one batch'):
    input_pipeline.make_dataset(train_source, modalities=SPECS, batch_size=64, subset=40)
  with pytest.raises(ValueError, match='needs one process'):
    input_pipeline.make_dataset(train_source, modalities=SPECS, batch_size=32, process_count=2,
                                drop_remainder=False, num_epochs=1)
  six = polymnist.specs(6)
  with pytest.raises(ValueError, match="modality 'm5': the PolyMNIST split has no such field"):
    modalities.check_source(train_source, six, 'PolyMNIST split')
  small = (dataclasses.replace(SPECS[0], shape=(32, 32, 3)),)
  with pytest.raises(ValueError, match=r"modality 'm0': shape \(28, 28, 3\) of the data differs "
                     r"from the spec's \(32, 32, 3\)"):
    modalities.check_source(train_source, small, 'data')
  bad = config.copy_and_resolve_references()
  bad.data.name = 'mnist'
  with pytest.raises(ValueError, match="data.name='mnist' is not one of"):
    datasets.get(bad.data)
