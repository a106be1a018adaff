"""cache.py: the cache root, atomic writes, sha256, and the checked parameter store."""

import hashlib
import json
import os

import jax
import numpy as np
import pytest

from moe_ebm_jax import cache


def test_root_is_data_dir_else_the_home_cache(tmp_path):
  assert cache.root(str(tmp_path), 'fid', 'x') == os.path.join(str(tmp_path), 'fid', 'x')
  assert cache.root(None, 'mnist') == os.path.join(os.path.expanduser('~'), '.cache',
                                                   'moe_ebm_jax', 'mnist')
  assert cache.root('') == os.path.expanduser('~/.cache/moe_ebm_jax')


def test_atomic_write_creates_the_folder_and_replaces_whole(tmp_path):
  path = str(tmp_path / 'new' / 'a.json')
  cache.atomic_write(path, lambda f: f.write('first'))
  cache.atomic_write(path, lambda f: f.write(b'second'), 'wb')
  with open(path) as f:
    assert f.read() == 'second'
  assert os.listdir(tmp_path / 'new') == ['a.json']  # No temporary file left behind.


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
  path = str(tmp_path / 'a.txt')
  cache.atomic_write(path, lambda f: f.write('old'))

  def half_then_fail(f):
    f.write('half of the new')
    raise RuntimeError('disk full')

  with pytest.raises(RuntimeError, match='disk full'):
    cache.atomic_write(path, half_then_fail)
  with open(path) as f:
    assert f.read() == 'old'
  assert os.listdir(tmp_path) == ['a.txt']
  with pytest.raises(RuntimeError):
    cache.atomic_write(str(tmp_path / 'b.txt'), half_then_fail)
  assert os.listdir(tmp_path) == ['a.txt']


def test_file_sha256_is_hashlibs(tmp_path):
  data = bytes(range(256)) * 5000  # > 1 MiB: several reads.
  (tmp_path / 'f').write_bytes(data)
  assert cache.file_sha256(str(tmp_path / 'f')) == hashlib.sha256(data).hexdigest()
  (tmp_path / 'abc').write_bytes(b'abc')
  assert cache.file_sha256(str(tmp_path / 'abc')) == (
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')  # FIPS 180-2's.


PARAMS = {'dense': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3),
                    'bias': np.array([0.5, -1.0, 2.0], np.float32)},
          'steps': np.array(7, np.int32)}
META = {'architecture': 'mlp', 'hidden': (4, 2)}


def template():
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), PARAMS)


def test_save_then_load_round_trips(tmp_path):
  cache.save_tree(str(tmp_path / 'c'), PARAMS, META)
  params, meta = cache.load_tree(str(tmp_path / 'c'), template(), META)
  jax.tree.map(np.testing.assert_array_equal, params, PARAMS)
  assert jax.tree.map(lambda a: a.dtype, params) == jax.tree.map(lambda a: a.dtype, PARAMS)
  assert meta['hidden'] == [4, 2] and meta['params_sha256'] == cache.file_sha256(
      str(tmp_path / 'c' / cache.TREE_FILENAME))


@pytest.mark.parametrize('damage, match', [
    ('flip', 'does not match the sha256'),
    ('meta', 'cached architecture=.cnn., wanted .mlp.'),
    ('json', 'unreadable'),
    ('missing', 'nothing cached'),
])
def test_damaged_or_mismatching_caches_raise_cache_error(tmp_path, damage, match):
  d = str(tmp_path)
  cache.save_tree(d, PARAMS, META)
  npz, meta_path = os.path.join(d, cache.TREE_FILENAME), os.path.join(d, cache.META_FILENAME)
  if damage == 'flip':  # Bytes changed in the middle of the npz.
    with open(npz, 'r+b') as f:
      f.seek(os.path.getsize(npz) // 2)
      f.write(b'\x00corrupt\x00')
  elif damage == 'meta':
    with open(meta_path) as f:
      meta = json.load(f)
    with open(meta_path, 'w') as f:
      json.dump({**meta, 'architecture': 'cnn'}, f)
  elif damage == 'json':
    with open(meta_path, 'w') as f:
      f.write('{not json')
  else:
    os.remove(npz)
  with pytest.raises(cache.CacheError, match=match):
    cache.load_tree(d, template(), META)
  assert issubclass(cache.CacheError, ValueError)


def test_a_template_of_other_shapes_or_values_not_finite_raise(tmp_path):
  d = str(tmp_path)
  cache.save_tree(d, PARAMS, META)
  wider = dict(template(), steps=jax.ShapeDtypeStruct((2,), np.int32))
  with pytest.raises(cache.CacheError, match=r'steps is int32\(\), wanted int32\(2,\)'):
    cache.load_tree(d, wider, META)
  with pytest.raises(cache.CacheError, match='has parameters'):
    cache.load_tree(d, {'dense': template()['dense']}, META)
  nan = jax.tree.map(lambda a: a, PARAMS)
  nan['dense']['bias'] = np.array([np.nan, 0, 0], np.float32)
  cache.save_tree(d, nan, META)
  with pytest.raises(cache.CacheError, match='dense/bias is not finite'):
    cache.load_tree(d, template(), META)
