"""Incomplete data: which modalities each example has, as a seeded function of the dataset.

An observation mask is {modality name: (N,) bool}, True where example i has modality m. Masks
are drawn once per split from the whole split (config.data.missing_*, `masks_for`), so an
example's mask does not depend on data.train_subset, the batch, the process count or a resume.
The input pipeline wraps a split's source in `IncompleteSource`: each example carries
'observed' {name: bool} beside its modalities, and a missing modality's entry is zeros of the
spec's shape, so batches keep their shapes under jit (masks, never ragged arrays).

Two ways to make a complete dataset incomplete (the first modality is never masked by either,
so no example is left empty; MultiVae's PolyMNIST keeps its first modality the same way):
  missing completely at random: data.missing_ratio = r: every other modality is missing with
      probability r, independently per example and modality.
  missing not at random: data.missing_by_class = {name: (p_0, ..., p_{C-1})}: modality `name`
      of an example of class c is missing with probability p_c (modalities not named: always
      observed).
The test split stays complete unless data.missing_in_test.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from moe_ebm_jax.vae import modalities as modalities_lib

Masks = dict[str, np.ndarray]
SPLITS = ('train', 'test')
DataError = modalities_lib.DataError


def complete(num_examples: int, names: Sequence[str]) -> Masks:
  return {n: np.ones(num_examples, bool) for n in names}


def _stream(seed: int, split: str, modality: int) -> np.random.Generator:
  # One stream per split and modality: masking another modality, or changing the ratio of
  # one, leaves the others' draws as they were.
  return np.random.default_rng([seed, SPLITS.index(split), modality])


def missing_completely_at_random(num_examples: int, names: Sequence[str], ratio: float,
                                 seed: int, split: str = 'train') -> Masks:
  """Every modality but the first missing with probability `ratio`, independently."""
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f'data.missing_ratio={ratio!r} must be in [0, 1).')
  masks = complete(num_examples, names)
  for m, name in enumerate(names[1:], start=1):
    masks[name] = _stream(seed, split, m).random(num_examples) >= ratio
  return masks


def missing_by_class(labels: np.ndarray, names: Sequence[str],
                     probabilities: Mapping[str, Sequence[float]], seed: int,
                     split: str = 'train') -> Masks:
  """Modality `name` of an example of class c missing with probability probabilities[name][c];
  the first modality and those not named always observed."""
  labels = np.asarray(labels)
  masks = complete(len(labels), names)
  for name, p in probabilities.items():
    if name not in names:
      raise ValueError(f'data.missing_by_class names {name!r}, not one of the modalities '
                       f'{list(names)}.')
    if name == names[0]:
      raise ValueError(f'data.missing_by_class masks {name!r}, the first modality, which '
                       'generated masks always keep (so that no example is left empty).')
    p = np.asarray(p, float)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
      raise ValueError(f'data.missing_by_class[{name!r}]={tuple(p)!r}: one probability in '
                       '[0, 1] per class expected.')
    if labels.size and labels.max() >= len(p):
      raise ValueError(f'data.missing_by_class[{name!r}] has {len(p)} probabilities; the '
                       f'labels reach class {labels.max()}.')
    masks[name] = _stream(seed, split, names.index(name)).random(len(labels)) >= p[labels]
  return masks


def from_user(arrays: Mapping[str, Any], specs, observed: Mapping[str, Any] | None = None,
              nan_rows_missing: bool = False, what: str = 'data'
              ) -> tuple[dict[str, np.ndarray], Masks | None]:
  """A user's arrays with missing entries -> (arrays with zeros there, masks or None if every
  entry is present). Missing is what the user declares, never guessed:
    observed[name]: (N,) bool, False where the example lacks the modality;
    a numpy masked array: a row whose entries are all masked (a partly masked row: an error);
    None in place of a row (a list or an object array of rows);
    a row of NaN, only with nan_rows_missing=True (any other non-finite value stays an error).
  """
  observed = dict(observed or {})
  unknown = set(observed) - {s.name for s in specs}
  if unknown:
    raise DataError(f'observation masks for {sorted(unknown)}, which are not modalities.')
  filled, masks, any_missing = {}, {}, False
  for spec in specs:
    a = arrays[spec.name]
    if isinstance(a, np.ma.MaskedArray):
      row_masks = np.ma.getmaskarray(a).reshape(len(a), -1)
      partly = row_masks.any(axis=1) & ~row_masks.all(axis=1)
      if partly.any():
        raise DataError(f'modality {spec.name!r}: {int(partly.sum())} rows of the {what} are '
                        f'partly masked (the first: {int(np.argmax(partly))}); a missing '
                        'modality is a whole masked row (values missing inside one are not '
                        'modelled).')
      present = ~row_masks.all(axis=1)
      a = np.ma.getdata(a)
    elif isinstance(a, (list, tuple)) or (isinstance(a, np.ndarray) and a.dtype == object):
      present = np.array([row is not None for row in a], bool)
      if not present.any():
        raise DataError(f'modality {spec.name!r}: every row of the {what} is None.')
      rows = [np.asarray(row) for row in a if row is not None]
      template = np.zeros_like(rows[0])
      a = np.stack([np.asarray(row) if row is not None else template for row in a])
    else:
      a = np.asarray(a)
      present = np.ones(len(a), bool)
      if nan_rows_missing and np.issubdtype(a.dtype, np.floating) and a.size:
        present = ~np.isnan(a.reshape(len(a), -1)).all(axis=1)
    if spec.name in observed:
      given = np.asarray(observed[spec.name])
      if given.dtype != bool or given.shape != (len(a),):
        raise DataError(f'modality {spec.name!r}: the {what}\'s observation mask must be bool '
                        f'({len(a)},), got {given.dtype} {given.shape}.')
      present = present & given
    if not present.all():
      a = a.copy()
      a[~present] = 0  # Never read by a model; zeros keep the checks and the shapes.
      any_missing = True
    filled[spec.name], masks[spec.name] = a, present
  return filled, (masks if any_missing else None)


def empty(masks: Masks) -> np.ndarray:
  """(N,) bool: the examples that have no observed modality."""
  return ~np.any(np.stack(list(masks.values())), axis=0)


def combine(a: Masks | None, b: Masks | None) -> Masks | None:
  """Observed in both (None: complete)."""
  if a is None or b is None:
    return a if b is None else b
  return {n: a[n] & b[n] for n in a}


def configured(data_config) -> bool:
  """Whether config.data asks for generated masks."""
  return bool(data_config.get('missing_ratio')) or bool(data_config.get('missing_by_class'))


def validate(data_config, names: Sequence[str], num_classes: int) -> None:
  """Raises ValueError naming the bad config.data field (nothing is loaded)."""
  d = data_config
  ratio, by_class = d.get('missing_ratio', 0.0), d.get('missing_by_class')
  if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
    raise ValueError(f'data.missing_ratio={ratio!r} must be a number in [0, 1).')
  if ratio and by_class:
    raise ValueError('data.missing_ratio and data.missing_by_class both set: choose one.')
  if by_class is not None and not isinstance(by_class, Mapping):
    raise ValueError(f'data.missing_by_class={by_class!r} must be a dict {{modality name: one '
                     'probability per class}, e.g. \'{"digit": [0.9, 0.1, ...]}\'.')
  if by_class:
    if not num_classes:
      raise ValueError('data.missing_by_class needs labels; this dataset carries none.')
    for name, p in dict(by_class).items():
      if name not in names or name == names[0]:
        raise ValueError(f'data.missing_by_class: {name!r} must be one of {list(names[1:])} '
                         '(the first modality is always kept).')
      p = np.asarray(p, float)
      if p.shape != (num_classes,) or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f'data.missing_by_class[{name!r}] must be {num_classes} '
                         'probabilities in [0, 1], one per class.')
  policy = d.get('incomplete_examples', 'masked')
  if policy not in INCOMPLETE_EXAMPLES:
    raise ValueError(f'data.incomplete_examples={policy!r} must be one of {INCOMPLETE_EXAMPLES}.')
  if not isinstance(d.get('missing_seed', 0), int):
    raise ValueError(f'data.missing_seed={d.get("missing_seed")!r} must be an integer.')


def masks_for(data_config, split: str, source, names: Sequence[str]) -> Masks | None:
  """The masks config.data asks for on `split` of `source` (None: the split stays complete)."""
  d = data_config
  if not configured(d) or (split == 'test' and not d.get('missing_in_test', False)):
    return None
  seed = d.get('missing_seed', 0)
  if d.get('missing_ratio'):
    return missing_completely_at_random(len(source), names, float(d.missing_ratio), seed, split)
  labels = _labels(source)
  return missing_by_class(labels, names, dict(d.missing_by_class), seed, split)


def _labels(source) -> np.ndarray:
  columns = getattr(source, 'columns', None)
  if columns is not None:
    return np.asarray(columns()['label'])
  return np.asarray([source[i]['label'] for i in range(len(source))])


INCOMPLETE_EXAMPLES = ('masked', 'dropped')


def batch_observed(batch, names: Sequence[str]) -> np.ndarray:
  """A host batch's observation mask as (M, B) bool in `names`' order; every entry True for a
  complete batch (one without 'observed')."""
  b = len(next(iter(batch['x'].values())))
  if 'observed' not in batch:
    return np.ones((len(names), b), bool)
  return np.stack([np.asarray(batch['observed'][n], bool) for n in names])


def summary(masks: Masks) -> str:
  """One line: the share of examples that have each modality."""
  return ', '.join(f'{n} {m.mean():.1%}' for n, m in masks.items())


class IncompleteSource:
  """A random-access source whose examples carry 'observed' {name: bool}; a missing modality's
  entry is zeros (its spec's shape and the source's dtype), so nothing of it reaches a model."""

  def __init__(self, source, masks: Masks):
    lengths = {n: len(m) for n, m in masks.items()}
    if set(lengths.values()) != {len(source)}:
      raise DataError(f'masks of lengths {lengths} for a source of {len(source)} examples.')
    none = empty(masks)
    if none.any():
      raise DataError(f'{int(none.sum())} examples have no observed modality (the first: '
                      f'{int(np.argmax(none))}).')
    self._source = source
    self._masks = {n: np.asarray(m, bool) for n, m in masks.items()}

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = dict(self._source[i])
    observed = {n: bool(m[i]) for n, m in self._masks.items()}
    for name, seen in observed.items():
      if not seen:
        example[name] = np.zeros_like(np.asarray(example[name]))
    example['observed'] = observed
    return example

  @property
  def masks(self) -> Masks:
    return dict(self._masks)

  @property
  def base(self):
    """The source it masks."""
    return self._source

  def columns(self) -> dict[str, np.ndarray]:
    """Every example at once, as __getitem__ gives them: the modalities (zeros where missing),
    'label', and 'observed:<name>' (N,) bool."""
    base = getattr(self._source, 'columns', None)
    if base is not None:
      columns = dict(base())
    else:
      rows = [self._source[i] for i in range(len(self._source))]
      columns = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in (rows[0] if rows else {})}
    for name, m in self._masks.items():
      if not m.all():
        columns[name] = np.where(m.reshape((-1,) + (1,) * (columns[name].ndim - 1)),
                                 columns[name], 0).astype(columns[name].dtype)
      columns[f'observed:{name}'] = m
    return columns


class CompleteRows:
  """The examples of an IncompleteSource that have every modality, as a complete source (no
  'observed'): data.incomplete_examples = 'dropped', what a user without masked objectives
  trains on."""

  def __init__(self, source: IncompleteSource):
    keep = np.all(list(source.masks.values()), axis=0)
    if not keep.any():
      raise DataError('no example has every modality: data.incomplete_examples=\'dropped\' '
                      'leaves nothing to train on.')
    self._source, self._rows, self._masks = source.base, np.flatnonzero(keep), source.masks

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self._source[int(self._rows[i])]

  @property
  def masks(self) -> Masks:
    """The masks of the full split the rows were chosen by."""
    return dict(self._masks)

  @property
  def rows(self) -> np.ndarray:
    """The kept examples' indices in the full split."""
    return self._rows.copy()

  def columns(self) -> dict[str, np.ndarray]:
    base = getattr(self._source, 'columns', None)
    if base is not None:
      return {k: np.asarray(v)[self._rows] for k, v in base().items()}
    rows = [self[i] for i in range(len(self))]
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
