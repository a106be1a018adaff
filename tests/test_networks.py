"""Tests for moe_ebm_jax.networks: shapes, exact paper parameter counts, and reference forwards."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.vae import networks

SMOKE = (8, 16, 32)
PAPER = (64, 128, 256)


def _conv_ref(x, kernel, bias=None):
  """Cross-correlation, stride 1, zero 'same' padding, in numpy: NHWC x HWIO -> NHWC."""
  kh, kw = kernel.shape[:2]
  ph, pw = kh // 2, kw // 2
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
  for i in range(kh):
    for j in range(kw):
      out += np.einsum('bhwc,cd->bhwd', xp[:, i:i + h, j:j + w], kernel[i, j])
  return out if bias is None else out + bias


def _lrelu_ref(x):
  return np.where(x >= 0, x, 0.2 * x)


def _resblock_ref(x, p):
  dx = _conv_ref(_lrelu_ref(x), p['conv_0']['kernel'], p['conv_0']['bias'])
  dx = _conv_ref(_lrelu_ref(dx), p['conv_1']['kernel'], p['conv_1']['bias'])
  shortcut = _conv_ref(x, p['shortcut']['kernel']) if 'shortcut' in p else x
  return shortcut + 0.1 * dx


def _random_like(tree, seed):
  """The same tree with every leaf replaced by known float32 normal values."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32), tree)


def _fast_init(module, x, seed=0):
  """Known parameters, N(0, 1 / fan_in), from shapes alone.

  module.init would compile a truncated-normal sampler per kernel shape (about 0.5 s each on
  CPU); the shape tests here do not need Flax's initialisers.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  fill = lambda a: (rng.normal(size=a.shape) / math.sqrt(math.prod(a.shape[:-1]) or 1))
  return jax.tree_util.tree_map(lambda a: fill(a).astype(np.float32), shapes)


@pytest.mark.parametrize('fin,fout', [(4, 4), (4, 6), (6, 4)])
def test_resblock_matches_reference(fin, fout):
  x = np.random.default_rng(0).normal(size=(2, 5, 5, fin)).astype(np.float32)
  block = networks.ResBlock(fout)
  shapes = jax.eval_shape(block.init, jax.random.key(0), x)['params']
  # Identity shortcut iff widths agree; the projection is a bias-free 1x1 conv.
  hidden = min(fin, fout)
  assert shapes['conv_0']['kernel'].shape == (3, 3, fin, hidden)
  assert shapes['conv_0']['bias'].shape == (hidden,)
  assert shapes['conv_1']['kernel'].shape == (3, 3, hidden, fout)
  assert shapes['conv_1']['bias'].shape == (fout,)
  if fin == fout:
    assert 'shortcut' not in shapes
  else:
    assert set(shapes['shortcut']) == {'kernel'}
    assert shapes['shortcut']['kernel'].shape == (1, 1, fin, fout)

  params = _random_like(shapes, seed=1)
  got = block.apply({'params': params}, x)
  want = _resblock_ref(x.astype(np.float64),
                       jax.tree_util.tree_map(lambda a: a.astype(np.float64), params))
  assert got.shape == (2, 5, 5, fout)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_avg_pool_counts_padding():
  x = np.random.default_rng(0).uniform(size=(1, 28, 28, 2)).astype(np.float32)
  y14 = networks.avg_pool_3x3_s2(x)
  assert y14.shape == (1, 14, 14, 2)
  assert networks.avg_pool_3x3_s2(y14).shape == (1, 7, 7, 2)
  # PyTorch AvgPool2d(3, 2, 1): window sums over the zero-padded input, always divided by 9.
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.stack([np.stack([xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum((0, 1)) / 9
                             for j in range(14)]) for i in range(14)])[None]
  np.testing.assert_allclose(y14, want, rtol=1e-5, atol=1e-6)


def test_upsample_nearest():
  x = np.arange(2 * 2 * 3 * 2, dtype=np.float32).reshape(2, 2, 3, 2)
  want = x.repeat(2, axis=1).repeat(2, axis=2)
  np.testing.assert_array_equal(networks.upsample_nearest_2x(x), want)


def test_encoder_shapes_and_separate_towers():
  enc = networks.Encoder(SMOKE, latent_w=4, latent_z=6)
  x = jnp.zeros((3, 28, 28, 3))
  variables = _fast_init(enc, x)
  assert set(variables['params']) == {'tower_w', 'tower_z'}
  outs = enc.apply(variables, x)
  assert [o.shape for o in outs] == [(3, 4), (3, 4), (3, 6), (3, 6)]
  # Flatten width 7 * 7 * w2 feeds each head.
  assert variables['params']['tower_z']['loc']['kernel'].shape == (7 * 7 * SMOKE[2], 6)


def test_decoder_shape_and_leading_dims():
  dec = networks.Decoder(SMOKE, out_channels=3)
  k, b, d = 3, 2, 10
  latent = jax.random.normal(jax.random.key(1), (k, b, d))
  variables = _fast_init(dec, latent[0])
  apply = jax.jit(dec.apply)
  out = apply(variables, latent)
  assert out.shape == (k, b, 28, 28, 3)
  per_k = jnp.stack([apply(variables, latent[i]) for i in range(k)])
  assert float(jnp.std(out)) > 1e-3  # Not trivially zero.
  np.testing.assert_allclose(out, per_k, rtol=1e-5, atol=1e-5)
  assert apply(variables, latent[0, 0]).shape == (28, 28, 3)


def test_paper_parameter_counts():
  key = jax.random.key(0)
  x = jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32)
  latent = jax.ShapeDtypeStruct((1, 64), jnp.float32)
  enc = jax.eval_shape(networks.Encoder(PAPER, 32, 32).init, key, x)
  dec = jax.eval_shape(networks.Decoder(PAPER, 3).init, key, latent)
  n_enc, n_dec = networks.count_params(enc), networks.count_params(dec)
  assert n_enc == 2_946_048
  assert n_dec == 1_485_251
  # The reference total for 5 modalities, with 32 auxiliary-prior logits each.
  assert 5 * (n_enc + n_dec + 32) == 22_156_655


def test_count_params_concrete():
  params = {'a': jnp.zeros((2, 3)), 'b': {'c': jnp.zeros(4), 'd': jnp.zeros(())}}
  assert networks.count_params(params) == 11


@pytest.mark.parametrize('lead', [(), (5,), (3, 5)])
def test_energy_mlp_shape(lead):
  mlp = networks.EnergyMLP((16, 16))
  z = jnp.ones(lead + (8,))
  variables = mlp.init(jax.random.key(0), z)
  assert mlp.apply(variables, z).shape == lead


def test_energy_mlp_matches_reference_exact_gelu():
  mlp = networks.EnergyMLP((7, 5), activation='gelu')
  z = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  shapes = jax.eval_shape(mlp.init, jax.random.key(0), z)['params']
  assert set(shapes) == {'dense_0', 'dense_1', 'dense_out'}
  params = _random_like(shapes, seed=2)
  erf = np.vectorize(math.erf)
  gelu = lambda v: 0.5 * v * (1 + erf(v / math.sqrt(2)))  # The erf form, as PyTorch nn.GELU.
  h = z.astype(np.float64)
  for name in ('dense_0', 'dense_1'):
    h = gelu(h @ params[name]['kernel'] + params[name]['bias'])
  want = (h @ params['dense_out']['kernel'] + params['dense_out']['bias'])[:, 0]
  np.testing.assert_allclose(mlp.apply({'params': params}, z), want, rtol=1e-4, atol=1e-4)


def test_energy_mlp_activations():
  z = jnp.linspace(-2, 2, 24).reshape(4, 6)
  variables = networks.EnergyMLP((8,), 'relu').init(jax.random.key(0), z)
  outs = {name: networks.EnergyMLP((8,), name).apply(variables, z)
          for name in networks.ACTIVATIONS}
  for name, out in outs.items():
    assert out.shape == (4,) and bool(jnp.all(jnp.isfinite(out))), name
  np.testing.assert_allclose(outs['swish'], outs['silu'])
  assert not np.allclose(outs['gelu'], outs['relu'])
  assert not np.allclose(outs['leaky_relu'], outs['relu'])
  with pytest.raises(ValueError, match='unknown activation'):
    networks.EnergyMLP((8,), 'softplusx').init(jax.random.key(0), z)


def _layers(tree, path=()):
  """(path, kernel, bias or None) of every layer in a params tree."""
  if 'kernel' in tree:
    yield path, np.asarray(tree['kernel']), (np.asarray(tree['bias']) if 'bias' in tree else None)
    return
  for name, sub in tree.items():
    if isinstance(sub, dict):
      yield from _layers(sub, path + (name,))


def _init_all(init):
  key = jax.random.key(3)
  enc = networks.Encoder(SMOKE, 8, 8, param_init=init).init(key, jnp.zeros((1, 28, 28, 3)))
  dec = networks.Decoder(SMOKE, 3, param_init=init).init(key, jnp.zeros((1, 16)))
  mlp = networks.EnergyMLP((200, 200), param_init=init).init(key, jnp.zeros((1, 32)))
  return [layer for tree in (enc, dec, mlp) for layer in _layers(tree['params'])]


@pytest.mark.slow
def test_pytorch_init_is_uniform_within_one_over_sqrt_fan_in():
  layers = _init_all('pytorch')
  assert len(layers) == 2 * 11 + 10 + 3  # Two towers, a decoder, the energy MLP.
  for path, kernel, bias in layers:
    fan_in = math.prod(kernel.shape[:-1])
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound, path
    if kernel.size >= 2000:  # Uniform(-b, b): std b / sqrt(3), and it reaches its bounds.
      assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.05), path
      assert np.abs(kernel).max() > 0.98 * bound, path
    if bias is not None:
      assert 0 < np.abs(bias).max() <= bound, path
  shortcuts = [k for p, k, b in layers if p[-1] == 'shortcut']
  assert shortcuts and all(k.shape[:2] == (1, 1) for k in shortcuts)  # Bias-free, fan_in = C.


@pytest.mark.slow
def test_pytorch_init_bounds_are_torchs():
  """The bound is what torch's own Conv2d / Linear draw within, for our layers' shapes."""
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  for path, kernel, bias in _init_all('pytorch'):
    if kernel.ndim == 4:
      kh, kw, cin, cout = kernel.shape
      layer = torch.nn.Conv2d(cin, cout, (kh, kw), bias=bias is not None)
    else:
      layer = torch.nn.Linear(*kernel.shape)
    ours = 1 / math.sqrt(math.prod(kernel.shape[:-1]))
    theirs = layer.weight.detach().abs().max().item()
    assert theirs <= ours * (1 + 1e-6), path
    if kernel.size >= 2000:
      assert theirs > 0.98 * ours, path
      assert layer.weight.detach().std().item() == pytest.approx(kernel.std(), rel=0.05), path
    if bias is not None:
      assert layer.bias.detach().abs().max().item() <= ours * (1 + 1e-6), path


@pytest.mark.slow
def test_lecun_init_is_flaxs_default():
  pytorch = {p: k for p, k, _ in _init_all('pytorch')}
  for path, kernel, bias in _init_all('lecun'):
    if bias is not None:
      assert not bias.any(), path  # Zero biases.
    if kernel.size >= 2000:  # Three times the variance of PyTorch's default.
      assert kernel.var() / pytorch[path].var() == pytest.approx(3.0, rel=0.1), path
  with pytest.raises(ValueError, match='choose one of'):
    networks.Conv3x3(4, param_init='xavier').init(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))
