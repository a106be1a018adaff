"""Incomplete data's masks (data/missing.py) and their way through the input pipeline."""

import json

import numpy as np
import pytest

from moe_ebm_jax import checkpointing
from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import model_state
from moe_ebm_jax.data import coherence_scorers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.data import missing
from moe_ebm_jax.vae import modalities
from moe_ebm_jax.vae import objectives

NAMES = ('a', 'b', 'c')


def binomial_bound(n, p):  # 5 standard deviations of a rate from n draws.
  return 5 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_missing_completely_at_random_keeps_the_first_and_drops_the_rest_at_the_ratio():
  n, ratio = 20_000, 0.3
  masks = missing.missing_completely_at_random(n, NAMES, ratio, seed=4)
  assert masks['a'].all()  # MultiVae's rule: no example is left empty.
  for name in ('b', 'c'):
    assert masks[name].dtype == bool and masks[name].shape == (n,)
    assert abs((~masks[name]).mean() - ratio) < binomial_bound(n, ratio)
  # Independent across modalities: both missing as often as the product says.
  both = (~masks['b'] & ~masks['c']).mean()
  assert abs(both - ratio ** 2) < binomial_bound(n, ratio ** 2)
  again = missing.missing_completely_at_random(n, NAMES, ratio, seed=4)
  other = missing.missing_completely_at_random(n, NAMES, ratio, seed=5)
  assert all(np.array_equal(masks[k], again[k]) for k in NAMES)
  assert not np.array_equal(masks['b'], other['b'])
  # The test split draws from its own stream.
  test = missing.missing_completely_at_random(n, NAMES, ratio, seed=4, split='test')
  assert not np.array_equal(masks['b'], test['b'])
  assert all(missing.missing_completely_at_random(50, NAMES, 0.0, 4)[k].all() for k in NAMES)


def test_missing_by_class_follows_each_class_probability():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 30_000)
  p = (0.9, 0.0, 0.5)
  masks = missing.missing_by_class(labels, NAMES, {'c': p}, seed=1)
  assert masks['a'].all() and masks['b'].all()
  for cls, prob in enumerate(p):
    rate = (~masks['c'][labels == cls]).mean()
    assert abs(rate - prob) < binomial_bound((labels == cls).sum(), prob)
  assert masks['c'][labels == 1].all()  # Probability 0: never missing.


@pytest.mark.parametrize('by_class, message', [
    ({'z': (0.5,) * 3}, 'not one of the modalities'),
    ({'a': (0.5,) * 3}, 'the first modality'),
    ({'b': (0.5, 1.5, 0.0)}, 'one probability in'),
    ({'b': (0.5,) * 2}, 'has 2 probabilities'),
])
def test_missing_by_class_refuses_bad_probabilities(by_class, message):
  with pytest.raises(ValueError, match=message):
    missing.missing_by_class(np.array([0, 1, 2]), NAMES, by_class, seed=0)


def test_incomplete_source_zeroes_missing_entries_and_refuses_empty_examples():
  source = datasets.ArraySource({'a': np.arange(8.).reshape(4, 2), 'b': np.arange(4) + 1},
                                np.zeros(4, np.int32))
  masks = {'a': np.array([True, True, False, True]), 'b': np.array([True, False, True, True])}
  incomplete = missing.IncompleteSource(source, masks)
  assert len(incomplete) == 4
  ex = incomplete[1]
  assert ex['observed'] == {'a': True, 'b': False}
  np.testing.assert_array_equal(ex['a'], [2., 3.])
  assert ex['b'] == 0 and np.asarray(ex['b']).dtype == np.asarray(source[1]['b']).dtype
  np.testing.assert_array_equal(incomplete[2]['a'], [0., 0.])
  with pytest.raises(missing.DataError, match='1 examples have no observed modality'):
    missing.IncompleteSource(source, {'a': masks['a'], 'b': np.array([True, True, False, True])})
  with pytest.raises(missing.DataError, match='masks of lengths'):
    missing.IncompleteSource(source, {'a': masks['a'][:3], 'b': masks['b']})


def mixture_config(**data):
  c = config_lib.base_config('mmvaeplus', 'synthetic_mixture')
  c.data.num_train, c.data.num_test = 256, 64
  c.batch_size = c.eval_batch_size = 32
  for k, v in data.items():
    c.data[k] = v
  return c


def test_batches_carry_the_masks_with_zeros_where_missing_and_the_data_elsewhere():
  complete = input_pipeline.train_iterator(mixture_config())
  config = mixture_config(missing_ratio=0.5, missing_seed=3)
  incomplete = input_pipeline.train_iterator(config)
  names = datasets.get(config.data).names
  source = datasets.get(config.data).source('train')
  masks = missing.masks_for(config.data, 'train', source, names)
  seen_missing = 0
  for _ in range(12):  # Past one epoch of 8 batches: the masks follow their examples.
    full, part = next(complete), next(incomplete)
    assert set(part['observed']) == set(names) and 'observed' not in full
    for name in names:
      obs = part['observed'][name]
      assert obs.dtype == bool and obs.shape == (32,)
      np.testing.assert_array_equal(part['x'][name][obs], full['x'][name][obs])
      assert not part['x'][name][~obs].any()
      seen_missing += (~obs).sum()
    # Each row's mask is its example's, whatever batch or epoch it falls in.
    rows = [np.flatnonzero((source.columns()['v0'] == v).all(axis=1))[0]
            for v in full['x']['v0']]
    for name in names:
      np.testing.assert_array_equal(part['observed'][name], masks[name][rows])
  assert seen_missing > 0
  assert all(next(incomplete)['observed'][names[0]].all() for _ in range(3))


def test_masks_do_not_depend_on_the_process_count():
  config = mixture_config(missing_ratio=0.4)
  single = input_pipeline.train_iterator(config)
  halves = [input_pipeline.train_iterator(config, process_index=p, process_count=2)
            for p in range(2)]
  for _ in range(5):
    batch, rows = next(single), [next(h) for h in halves]
    for name in batch['observed']:
      np.testing.assert_array_equal(
          np.concatenate([r['observed'][name] for r in rows]), batch['observed'][name])


def test_the_test_split_stays_complete_unless_asked():
  config = mixture_config(missing_ratio=0.5)
  assert all('observed' not in b for b in input_pipeline.eval_dataset(config, 'test'))
  config.data.missing_in_test = True
  batches = list(input_pipeline.eval_dataset(config, 'test'))
  assert sum((~b['observed']['v1']).sum() for b in batches) > 0


# A user's objective written for complete batches (supports_incomplete left False).
COMPLETE_ONLY = 'complete_only_for_test_missing'
if COMPLETE_ONLY not in objectives.OBJECTIVES:
  objectives.register(COMPLETE_ONLY, aggregation='moe', distribution='laplace',
                      private_latents=True)(objectives.mmvaeplus_objective)


@pytest.mark.parametrize('model', config_lib.MODELS)
def test_every_built_in_model_accepts_incomplete_data(model):
  config = config_lib.base_config(model, 'synthetic_mixture')
  config.data.missing_ratio = 0.3
  config_lib.validate(config)  # Raises for an objective that cannot train on it.


@pytest.mark.parametrize('data, message', [
    (dict(missing_ratio=1.0), r'data.missing_ratio=1.0 must be a number in \[0, 1\)'),
    (dict(missing_ratio=0.2, missing_by_class={'v1': (0.5,) * 4}), 'both set'),
    (dict(missing_by_class={'v0': (0.5,) * 4}), 'first modality is always kept'),
    (dict(missing_by_class={'v9': (0.5,) * 4}), r"must be one of \['v1', 'v2'\]"),
    (dict(missing_by_class={'v1': (0.5,) * 3}), 'must be 4 probabilities'),
    (dict(missing_by_class=0.5), r'missing_by_class=0.5 must be a dict \{modality name: one '
     r'probability per class\}'),
    # An objective registered without supports_incomplete refuses before any work.
    (dict(missing_ratio=0.2), f"model.objective='{COMPLETE_ONLY}' cannot train on incomplete "
     r"data yet \(data.missing_ratio=0.2.*objectives that can: \['mmjsd', 'mmvae', "
     r"'mmvaeplus', 'mopoe', 'mvae'"),
])
def test_config_errors_are_one_line_and_name_the_field(data, message):
  config = mixture_config(**data)
  config.model.objective = COMPLETE_ONLY
  with pytest.raises(ValueError, match=message) as e:
    config_lib.validate(config)
  assert '\n' not in str(e.value)


def test_a_run_resumes_only_with_its_own_masks(tmp_path):
  keys, added = model_state.COMPATIBLE_KEYS, model_state.ADDED_KEY_DEFAULTS
  assert checkpointing.check_or_write_run_config(tmp_path, mixture_config(), keys, added)
  with pytest.raises(checkpointing.IncompatibleRunError, match='data.missing_ratio: 0.0 in the run'):
    checkpointing.check_or_write_run_config(tmp_path, mixture_config(missing_ratio=0.5), keys,
                                            added)
  with pytest.raises(checkpointing.IncompatibleRunError, match='data.missing_seed'):
    checkpointing.check_or_write_run_config(tmp_path, mixture_config(missing_seed=1), keys, added)
  # A run written before these keys existed had complete data: it resumes with the defaults.
  stored = json.loads((tmp_path / 'config.json').read_text())
  for key in ('missing_ratio', 'missing_by_class', 'missing_seed', 'missing_in_test'):
    del stored['data'][key]
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  assert not checkpointing.check_or_write_run_config(tmp_path, mixture_config(), keys, added)


# ----------------------------------------------------------------------------- the user's gaps

SPECS = (modalities.vector_spec('v', 3), modalities.label_spec('tag', 4))


def user_arrays(n=12, seed=0):
  rng = np.random.default_rng(seed)
  return {'v': rng.normal(size=(n, 3)).astype(np.float32), 'tag': rng.integers(0, 4, n)}


def test_every_way_of_declaring_missing_rows_gives_the_same_dataset():
  arrays = user_arrays()
  gone_v, gone_tag = np.array([1, 4, 7]), np.array([2, 4])  # Example 4 lacks both.
  observed = {'v': ~np.isin(np.arange(12), gone_v), 'tag': ~np.isin(np.arange(12), gone_tag)}
  expected = {k: np.where(observed[k].reshape((-1,) + (1,) * (a.ndim - 1)), a, 0)
              for k, a in arrays.items()}
  as_mask = missing.from_user(arrays, SPECS, observed)
  v_masked = np.ma.masked_array(arrays['v'], np.repeat(~observed['v'][:, None], 3, axis=1))
  v_nan = arrays['v'].copy()
  v_nan[gone_v] = np.nan
  tag_none = [None if i in gone_tag else t for i, t in enumerate(arrays['tag'])]
  as_masked = missing.from_user({'v': v_masked, 'tag': tag_none}, SPECS)
  as_nan = missing.from_user({'v': v_nan, 'tag': tag_none}, SPECS, nan_rows_missing=True)
  for filled, masks in (as_mask, as_masked, as_nan):
    for k in arrays:
      np.testing.assert_array_equal(masks[k], observed[k])
      np.testing.assert_array_equal(filled[k], expected[k])
  assert missing.empty(as_mask[1]).tolist() == [i == 4 for i in range(12)]
  assert missing.from_user(arrays, SPECS)[1] is None  # Nothing missing: complete.


def test_undeclared_or_partial_gaps_are_errors():
  arrays = user_arrays()
  v = arrays['v'].copy()
  v[3] = np.nan
  with pytest.raises(modalities.DataError, match='hold NaN or infinite values'):  # NaN rows, not declared.
    datasets.from_arrays('n', {**arrays, 'v': v}, arrays, SPECS)
  v[5, 0] = np.nan  # A partly NaN row stays an error even when NaN rows are declared missing.
  v[3] = 0.0
  with pytest.raises(modalities.DataError, match='hold NaN or infinite values'):
    datasets.from_arrays('n', {**arrays, 'v': v}, arrays, SPECS, nan_rows_missing=True)
  mask = np.zeros((12, 3), bool)
  mask[2, 1] = True
  with pytest.raises(modalities.DataError, match='1 rows of the train data are partly masked'):
    datasets.from_arrays('n', {**arrays, 'v': np.ma.masked_array(arrays['v'], mask)}, arrays,
                         SPECS)
  with pytest.raises(modalities.DataError, match=r'observation mask must be bool \(12,\)'):
    datasets.from_arrays('n', arrays, arrays, SPECS, train_observed={'v': np.ones(12)})


def test_examples_with_nothing_left_are_an_error_or_skipped_and_counted():
  arrays = user_arrays()
  observed = {'v': np.arange(12) != 4, 'tag': np.arange(12) % 4 != 0}  # 4 lacks both.
  with pytest.raises(modalities.DataError, match=r'1 train examples have no modality \(the '
                     'first: 4\\)'):
    datasets.from_arrays('e', arrays, arrays, SPECS, train_observed=observed)
  dataset = datasets.from_arrays('e', arrays, arrays, SPECS, train_labels=arrays['tag'],
                                 num_classes=4, train_observed=observed, empty_examples='skip')
  train = dataset.source('train')
  assert dataset.incomplete and len(train) == 11 and len(dataset.source('test')) == 12
  kept = np.arange(12) != 4
  np.testing.assert_array_equal([train[i]['observed']['tag'] for i in range(11)],
                                observed['tag'][kept])
  np.testing.assert_array_equal([train[i]['label'] for i in range(11)], arrays['tag'][kept])


def test_a_users_gaps_and_the_configs_combine_and_coherence_readers_see_only_observed_rows():
  rng = np.random.default_rng(1)
  n = 64
  arrays = {'v': rng.normal(size=(n, 3)).astype(np.float32), 'w': rng.normal(size=(n, 2)),
            'tag': rng.integers(0, 4, n)}
  specs = SPECS[:1] + (modalities.vector_spec('w', 2), SPECS[1])
  arrays['w'] = arrays['w'].astype(np.float32)
  own = {'w': np.arange(n) % 3 != 0}
  name = 'users_gaps_for_test_missing'
  datasets.register(name)(lambda c: datasets.from_arrays(
      name, arrays, arrays, specs, train_labels=arrays['tag'], num_classes=4,
      train_observed=own))
  config = config_lib.base_config('mmvaeplus', name)
  config.batch_size = config.eval_batch_size = 16
  dataset = datasets.get(config.data)
  assert dataset.incomplete and isinstance(dataset.source('test'), datasets.ArraySource)
  config_lib.validate(config)  # MMVAE+ trains on the user's gaps; a complete-only objective:
  config.model.objective = COMPLETE_ONLY
  with pytest.raises(ValueError, match=f"dataset '{name}' has missing entries"):
    config_lib.validate(config)
  config.data.missing_ratio = 0.5
  _, source = input_pipeline._source(config, 'train')  # pylint: disable=protected-access
  drawn = missing.missing_completely_at_random(n, dataset.names, 0.5, 0)
  for k in dataset.names:
    np.testing.assert_array_equal(source.masks[k], own.get(k, True) & drawn[k])
  x, labels = coherence_scorers._all(source, 'w', specs[1])  # pylint: disable=protected-access
  seen = source.masks['w']
  np.testing.assert_array_equal(x, arrays['w'][seen])
  np.testing.assert_array_equal(labels, arrays['tag'][seen])
  # The data's key for caches tells the gaps apart, the same each time.
  complete = datasets.from_arrays('c', arrays, arrays, specs)
  digest = datasets._digest  # pylint: disable=protected-access
  assert digest(dataset) == digest(dataset) != digest(complete)


def test_dropped_incomplete_examples_leave_the_complete_ones_as_complete_data():
  """data.incomplete_examples='dropped' (the baseline): the examples with every modality, no
  masks, any objective."""
  config = mixture_config(missing_ratio=0.5, missing_seed=2, incomplete_examples='dropped')
  _, source = input_pipeline._source(config, 'train')  # pylint: disable=protected-access
  masks = missing.masks_for(config.data, 'train', datasets.get(config.data).source('train'),
                            ('v0', 'v1', 'v2'))
  keep = np.flatnonzero(np.all(list(masks.values()), axis=0))
  assert 0.15 < len(keep) / 256 < 0.35  # About (1 - 0.5)^2 of them.
  np.testing.assert_array_equal(source.rows, keep)
  full = datasets.get(config.data).source('train')
  for i in (0, len(keep) - 1):
    example = source[i]
    assert 'observed' not in example
    np.testing.assert_array_equal(example['v1'], full[int(keep[i])]['v1'])
  np.testing.assert_array_equal(source.columns()['v2'], full.columns()['v2'][keep])
  batch = next(input_pipeline.train_iterator(config))
  assert 'observed' not in batch
  config.model.objective = COMPLETE_ONLY
  config_lib.validate(config)  # No masks reach the objective: any one trains.
  config.data.incomplete_examples = 'skip'
  with pytest.raises(ValueError, match=r"data.incomplete_examples='skip' must be one of"):
    config_lib.validate(config)


def test_a_run_saves_its_masks_and_a_resume_with_other_gaps_is_refused(tmp_path):
  config = mixture_config(missing_ratio=0.5, missing_seed=4)
  input_pipeline.record_masks(config, str(tmp_path))
  _, source = input_pipeline._source(config, 'train')  # pylint: disable=protected-access
  with np.load(tmp_path / input_pipeline.MASKS_FILE) as saved:
    assert sorted(saved.files) == ['v0', 'v1', 'v2']
    for name in saved.files:
      np.testing.assert_array_equal(saved[name], source.masks[name])
  input_pipeline.record_masks(config, str(tmp_path))  # The same masks: resumes.
  np.savez_compressed(tmp_path / input_pipeline.MASKS_FILE,
                      **dict(source.masks, v1=~source.masks['v1']))
  with pytest.raises(ValueError, match='observation masks differ') as e:
    input_pipeline.record_masks(config, str(tmp_path))
  assert '\n' not in str(e.value)
  complete = tmp_path / 'complete'
  input_pipeline.record_masks(mixture_config(), str(complete))  # Complete data: nothing saved.
  assert not complete.exists()
