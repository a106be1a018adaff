"""On-disk caches: where they live, how a file is written whole, and a checked parameter store.

  root(data_dir, *parts)        the cache folder: data_dir, else ~/.cache/moe_ebm_jax
  atomic_write(path, write)     a file a reader never sees half of
  file_sha256(path)             a file's sha256 (hex)
  save_tree(dir, params, meta)  params.npz + meta.json (with params.npz's sha256)
  load_tree(dir, template, expected_meta) -> (params, meta), or CacheError

Every cache of the package writes through `atomic_write`; trained parameters (the coherence
classifiers) go through `save_tree` / `load_tree`, so a corrupt, partial or stale cache is
refused the same way everywhere. numpy only: the MNIST loader can use it without jax.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import IO, Any, Callable, Mapping

import numpy as np

DEFAULT_ROOT = '~/.cache/moe_ebm_jax'
TREE_FILENAME = 'params.npz'
META_FILENAME = 'meta.json'

PyTree = Any


class CacheError(ValueError):
  """A cache that is missing, corrupt, or does not match what was asked for."""


def root(data_dir: str | None = None, *parts: str) -> str:
  """The cache folder `data_dir` (config.data.data_dir) if given, else ~/.cache/moe_ebm_jax,
  joined with `parts` (e.g. root(None, 'fid') -> '/home/me/.cache/moe_ebm_jax/fid')."""
  return os.path.join(data_dir or os.path.expanduser(DEFAULT_ROOT), *parts)


def atomic_write(path: str, write: Callable[[IO], None], mode: str = 'w') -> None:
  """Writes `path` whole or not at all: write(f) fills a temporary file in the same folder,
  which is then renamed over `path` (os.replace is atomic there), so a reader never sees half
  a file and a failed write leaves none. Creates the folder. mode: 'w' (text) or 'wb'."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache is shared like any file.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def file_sha256(path: str) -> str:
  """The sha256 of a file's bytes, as 64 hex digits (read 1 MiB at a time)."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _flatten(tree: PyTree, prefix: str = '') -> dict[str, Any]:
  """A tree of nested dicts -> {'a/b/c': leaf} (flax's flatten_dict(tree, sep='/'))."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(_flatten(v, f'{prefix}{k}/'))
    else:
      flat[f'{prefix}{k}'] = v
  return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts (the inverse of _flatten)."""
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save_tree(directory: str, params: PyTree, meta: Mapping[str, Any]) -> None:
  """Writes <directory>/params.npz (the nested-dict tree `params`, jax or numpy leaves, under
  '/'-joined keys), then <directory>/meta.json (`meta`, JSON-able, plus 'params_sha256' of the
  npz), each atomically: meta.json, written last, vouches for the npz."""
  flat = {k: np.asarray(v) for k, v in _flatten(params).items()}
  tree_path = os.path.join(directory, TREE_FILENAME)
  atomic_write(tree_path, lambda f: np.savez(f, **flat), 'wb')
  meta = {**meta, 'params_sha256': file_sha256(tree_path)}
  atomic_write(os.path.join(directory, META_FILENAME),
               lambda f: json.dump(meta, f, indent=2), 'w')


def load_tree(directory: str, template: PyTree, expected_meta: Mapping[str, Any]
              ) -> tuple[PyTree, dict[str, Any]]:
  """Reads what save_tree wrote; raises CacheError unless it is intact and matches.

  Args:
    directory: the cache's folder.
    template: a nested-dict tree of the wanted structure, leaves with .shape and .dtype (arrays
      or jax.ShapeDtypeStruct, e.g. from jax.eval_shape of an init).
    expected_meta: entries meta.json must hold, compared after a JSON round trip (tuples as
      lists).

  Returns:
    (params: the tree, numpy leaves of the template's shapes and dtypes, all finite;
     meta: the whole meta.json).
  """
  meta_path = os.path.join(directory, META_FILENAME)
  tree_path = os.path.join(directory, TREE_FILENAME)
  if not os.path.exists(meta_path) or not os.path.exists(tree_path):
    raise CacheError(f'nothing cached in {directory}')
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise CacheError(f'{meta_path} is unreadable: {e}') from e
  if not isinstance(meta, dict):
    raise CacheError(f'{meta_path} is not a JSON object')
  for k, v in json.loads(json.dumps(dict(expected_meta))).items():
    if meta.get(k) != v:
      raise CacheError(f'cached {k}={meta.get(k)!r}, wanted {v!r}')
  if meta.get('params_sha256') != file_sha256(tree_path):
    raise CacheError(f'{tree_path} does not match the sha256 in {META_FILENAME}')
  try:
    with np.load(tree_path, allow_pickle=False) as f:
      got = {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except  # zip, npy or pickle errors.
    raise CacheError(f'{tree_path} is unreadable: {e}') from e
  want = _flatten(template)
  if set(got) != set(want):
    raise CacheError(f'{tree_path} has parameters {sorted(got)}, wanted {sorted(want)}')
  for k, v in want.items():
    if got[k].shape != tuple(v.shape) or got[k].dtype != v.dtype:
      raise CacheError(f'{tree_path}: {k} is {got[k].dtype}{got[k].shape}, wanted '
                       f'{v.dtype}{tuple(v.shape)}')
    if not np.all(np.isfinite(got[k])):
      raise CacheError(f'{tree_path}: {k} is not finite')
  return _unflatten(got), meta
