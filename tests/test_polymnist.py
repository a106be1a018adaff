"""PolyMNIST: the generation protocol on real MNIST, the TFDS dataset, determinism, errors."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from moe_ebm_jax.data import polymnist

M = 5


@pytest.fixture(scope='module')
def backgrounds():
  return polymnist.load_backgrounds(M)


@pytest.fixture(scope='module')
def test_plan(mnist_arrays, backgrounds):
  return polymnist.plan_split(mnist_arrays['y_test'], backgrounds, seed=0, split='test')


@pytest.mark.parametrize('split', ['train', 'test'])
def test_every_mnist_index_once_per_modality_and_labels_agree(mnist_arrays, backgrounds, split):
  labels = mnist_arrays[f'y_{split}']
  plan = polymnist.plan_split(labels, backgrounds, seed=0, split=split)
  n = len(labels)
  assert plan.indices.shape == (n, M)
  for m in range(M):
    np.testing.assert_array_equal(np.sort(plan.indices[:, m]), np.arange(n))
  tuple_labels = labels[plan.indices]
  assert (tuple_labels == tuple_labels[:, :1]).all()
  np.testing.assert_array_equal(plan.labels, tuple_labels[:, 0])
  # Stored in the order of the modality-0 index, and the modalities are differently paired.
  np.testing.assert_array_equal(plan.indices[:, 0], np.arange(n))
  for m in range(1, M):
    assert np.mean(plan.indices[:, m] == plan.indices[:, 0]) < 0.01


def test_digit_pixels_are_the_inverted_background_exactly_at_the_mask(mnist_arrays, backgrounds,
                                                                      test_plan):
  digits = mnist_arrays['x_test']
  rows = np.random.default_rng(1).choice(len(test_plan.indices), 200, replace=False)
  for i in rows:
    images = polymnist.render(digits, backgrounds, test_plan, i, i + 1)[0]
    for m, bg in enumerate(backgrounds):
      r, c = test_plan.offsets[i, m]
      h, w = bg.image.shape[:2]
      assert 0 <= r <= h - 28 and 0 <= c <= w - 28
      crop = bg.image[r:r + 28, c:c + 28].astype(int)
      mask = digits[test_plan.indices[i, m]] > 128
      got = images[m].astype(int)
      np.testing.assert_array_equal(got[mask], 255 - crop[mask])
      np.testing.assert_array_equal(got[~mask], crop[~mask])


def test_crops_cover_the_background_uniformly(backgrounds, test_plan):
  # Offsets are uniform over all valid corners: mean near the middle, spread near uniform's.
  for m, bg in enumerate(backgrounds):
    for axis, size in enumerate(bg.image.shape[:2]):
      values = test_plan.offsets[:, m, axis]
      hi = size - 28
      assert values.min() >= 0 and values.max() <= hi
      assert abs(values.mean() - hi / 2) < 0.03 * hi
      assert abs(values.std() - hi / np.sqrt(12)) < 0.03 * hi


def test_plan_is_deterministic_and_seed_sensitive(mnist_arrays, backgrounds):
  labels = mnist_arrays['y_test']
  a = polymnist.plan_split(labels, backgrounds, seed=0, split='test')
  b = polymnist.plan_split(labels, backgrounds, seed=0, split='test')
  c = polymnist.plan_split(labels, backgrounds, seed=1, split='test')
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_array_equal(a.offsets, b.offsets)
  assert np.mean(a.indices[:, 1:] == c.indices[:, 1:]) < 0.01
  assert np.mean(a.offsets == c.offsets) < 0.05


def test_tfds_data_source_reads_the_dataset(polymnist_dir, mnist_arrays):
  sources = tfds.data_source('polymnist', data_dir=polymnist_dir, download=False)
  assert len(sources['train']) == 60000 and len(sources['test']) == 10000
  info = tfds.builder('polymnist', data_dir=polymnist_dir).info
  features = info.features
  for m in range(M):
    assert features[f'm{m}'].shape == (28, 28, 3) and features[f'm{m}'].np_dtype == np.uint8
  assert features['label'].num_classes == 10
  assert features['mnist_index'].shape == (M,)
  assert len(info.metadata['fingerprint']) == 64
  for split in ('train', 'test'):
    example = sources[split][17]
    assert sorted(example) == sorted([f'm{m}' for m in range(M)] + ['label', 'mnist_index'])
    assert example['m3'].dtype == np.uint8 and example['m3'].shape == (28, 28, 3)
    # The stored indices address this split's MNIST, and the label is theirs in every modality.
    np.testing.assert_array_equal(mnist_arrays[f'y_{split}'][example['mnist_index']],
                                  np.full(M, example['label']))


def read_split(source):
  """All examples of a split, in tuple order (by modality-0 MNIST index)."""
  examples = source.__getitems__(list(range(len(source))))
  order = np.argsort([e['mnist_index'][0] for e in examples])
  examples = [examples[i] for i in order]
  images = np.stack([np.stack([e[f'm{m}'] for m in range(M)]) for e in examples])
  labels = np.array([e['label'] for e in examples])
  indices = np.stack([e['mnist_index'] for e in examples])
  return images, labels, indices


def test_stored_test_split_is_the_protocol_output(polymnist_dir, mnist_arrays, backgrounds,
                                                  test_plan):
  # Everything read back equals the pure functions' output, and the recorded fingerprint is that
  # of the data actually stored.
  builder = tfds.builder('polymnist', data_dir=polymnist_dir)
  images, labels, indices = read_split(builder.as_data_source(split='test'))
  np.testing.assert_array_equal(indices, test_plan.indices)
  np.testing.assert_array_equal(labels, test_plan.labels)
  np.testing.assert_array_equal(images, polymnist.render(mnist_arrays['x_test'], backgrounds,
                                                         test_plan))
  fingerprints = builder.info.metadata['split_fingerprints']
  assert polymnist.split_fingerprint(images, labels, indices) == fingerprints['test']
  assert builder.info.metadata['fingerprint'] == polymnist.dataset_fingerprint(fingerprints)


def test_train_and_test_use_disjoint_mnist_splits(polymnist_dir, mnist_arrays):
  # Each stored train image must be its train digit composited (mask pixels differ from the
  # unmasked crop): checked via the test digits failing that for the same index.
  sources = tfds.data_source('polymnist', data_dir=polymnist_dir, download=False)
  train = sources['train']
  for i in range(0, 60000, 6007):
    e = train[i]
    idx = e['mnist_index']
    assert (mnist_arrays['y_train'][idx] == e['label']).all()
    assert idx.max() < 60000
  _, _, test_indices = read_split(sources['test'])
  for m in range(M):
    np.testing.assert_array_equal(np.sort(test_indices[:, m]), np.arange(10000))


@pytest.fixture(scope='module')
def three_modality_build(mnist_npz, backgrounds_dir, tmp_path_factory):
  """PolyMNIST with 3 modalities, seed 1 and folder backgrounds, built once for this module
  (the smaller build: 3 images a tuple instead of 5)."""
  data_dir = str(tmp_path_factory.mktemp('polymnist_m3'))
  builder = polymnist.builder(num_modalities=3, seed=1, backgrounds=backgrounds_dir,
                              data_dir=data_dir, mnist_path=mnist_npz)
  builder.download_and_prepare()
  return builder


def _files(builder) -> dict[str, str]:
  folder = builder.data_dir
  # Files only: other tests may cache classifiers in a subfolder of a dataset.
  return {n: os.path.join(folder, n) for n in sorted(os.listdir(folder))
          if os.path.isfile(os.path.join(folder, n))}


@pytest.mark.slow
def test_two_builds_with_one_seed_are_byte_identical(three_modality_build, mnist_npz,
                                                     backgrounds_dir, tmp_path):
  again = polymnist.builder(num_modalities=3, seed=1, backgrounds=backgrounds_dir,
                            data_dir=str(tmp_path), mnist_path=mnist_npz)
  again.download_and_prepare()
  first, second = _files(three_modality_build), _files(again)
  assert list(first) == list(second)
  assert sum(n.endswith(tuple(f'of-{k:05d}' for k in range(1, 99))) for n in first) >= 2
  for name in first:
    with open(first[name], 'rb') as a, open(second[name], 'rb') as b:
      assert a.read() == b.read(), name


@pytest.mark.slow
def test_other_seed_and_modality_count_and_folder_backgrounds(three_modality_build, polymnist_dir,
                                                              backgrounds_dir):
  builder = three_modality_build
  meta = builder.info.metadata
  assert builder.builder_config.name.startswith('m3_seed1_bg')
  assert [b['name'] for b in meta['backgrounds']] == sorted(os.listdir(backgrounds_dir))[:3]
  default = tfds.builder('polymnist', data_dir=polymnist_dir).info.metadata
  assert meta['fingerprint'] != default['fingerprint']
  example = builder.as_data_source(split='test')[0]
  assert sorted(example) == ['label', 'm0', 'm1', 'm2', 'mnist_index']


def test_folder_backgrounds_are_taken_in_name_order(backgrounds_dir):
  bgs = polymnist.load_backgrounds(4, backgrounds_dir)
  assert [b.name for b in bgs] == sorted(os.listdir(backgrounds_dir))[:4]
  first = np.asarray(Image.open(os.path.join(backgrounds_dir, bgs[0].name)).convert('RGB'))
  np.testing.assert_array_equal(bgs[0].image, first)


def test_background_errors(tmp_path):
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / 'a.png')
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / 'b.png')
  with pytest.raises(polymnist.PolymnistError, match='holds 2 images'):
    polymnist.load_backgrounds(3, str(tmp_path))
  Image.fromarray(np.zeros((27, 100, 3), np.uint8)).save(tmp_path / 'c.png')
  with pytest.raises(polymnist.PolymnistError, match='at least 28x28'):
    polymnist.load_backgrounds(3, str(tmp_path))
  corrupt = tmp_path / 'corrupt'
  corrupt.mkdir()
  (corrupt / 'a.jpg').write_bytes(b'not an image')
  (corrupt / 'b.jpg').write_bytes(b'not an image')
  with pytest.raises(polymnist.PolymnistError, match='cannot read background .*a.jpg'):
    polymnist.load_backgrounds(2, str(corrupt))
  with pytest.raises(polymnist.PolymnistError, match='does not exist'):
    polymnist.load_backgrounds(2, str(tmp_path / 'missing'))
  with pytest.raises(polymnist.PolymnistError, match='>= 2'):
    polymnist.load_backgrounds(1)
  with pytest.raises(polymnist.PolymnistError, match='fewer than'):
    polymnist.load_backgrounds(len(polymnist.SKIMAGE_BACKGROUNDS) + 1)


def test_bad_background_fails_before_mnist_is_loaded(tmp_path):
  # The build checks backgrounds first: no MNIST given, none reachable, yet the error is theirs.
  with pytest.raises(polymnist.PolymnistError, match='holds 0 images'):
    polymnist.builder(num_modalities=2, backgrounds=str(tmp_path), data_dir=str(tmp_path / 'd'),
                      mnist_path=None).download_and_prepare()
  assert not (tmp_path / 'd' / 'polymnist').exists() or not any(
      p.name == '1.0.0' for p in (tmp_path / 'd' / 'polymnist').rglob('1.0.0'))
