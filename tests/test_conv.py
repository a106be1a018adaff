"""conv.py: the 3x3 convolution and every formulation of its kernel gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.vae import conv
from moe_ebm_jax.vae import networks


def _numpy_kernel_grad(x, dy):
  """wgrad[i, j, c, d] = sum_{n,h,w} x_pad[n, h + i, w + j, c] dy[n, h, w, d], by loops."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  n, h, w, c = x.shape
  x_pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((3, 3, c, dy.shape[-1]))
  for i in range(3):
    for j in range(3):
      out[i, j] = np.einsum('nhwc,nhwd->cd', x_pad[:, i:i + h, j:j + w], dy)
  return out


def _lax_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


# (C, D) pairs that reach every formulation: folded with D <= 64 and with D > 64, both patch
# formulations, and the narrow case left to XLA.
CASES = [((2, 6, 5, 20, 24), 'folded'), ((2, 5, 4, 20, 80), 'folded'),
         ((3, 6, 6, 20, 3), 'output_patches'), ((2, 6, 7, 3, 40), 'input_patches'),
         ((2, 5, 5, 5, 6), 'xla')]


@pytest.mark.parametrize('shape,formulation', CASES)
def test_kernel_grad_formulations_match_direct_sums(shape, formulation):
  n, h, w, c, d = shape
  assert conv.matmul_formulation(c, d) == formulation
  x = jax.random.normal(jax.random.PRNGKey(0), (n, h, w, c))
  dy = jax.random.normal(jax.random.PRNGKey(1), (n, h, w, d))
  kernel = jnp.zeros((3, 3, c, d))
  expected = _numpy_kernel_grad(x, dy)
  for fn in (conv._matmul_kernel_grad, conv._xla_kernel_grad):
    got = np.asarray(jax.jit(fn)(x, dy, kernel))
    assert got.shape == (3, 3, c, d)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('c,d', [(16, 16), (16, 80), (16, 3), (3, 32)])
def test_kernel_grad_summed_over_chunks_of_examples(c, d):
  n, h = 40, 28  # 40 * 28 * 28 rows > conv._CHUNK_ROWS: two chunks of 20 examples.
  assert conv._chunk_size(n, conv._CHUNK_ROWS // (h * h)) == 20
  x = jax.random.normal(jax.random.PRNGKey(0), (n, h, h, c))
  dy = jax.random.normal(jax.random.PRNGKey(1), (n, h, h, d))
  got = jax.jit(conv._matmul_kernel_grad)(x, dy, jnp.zeros((3, 3, c, d)))
  np.testing.assert_allclose(got, _numpy_kernel_grad(x, dy), rtol=1e-4, atol=2e-3)


def test_chunk_size():
  assert conv._chunk_size(640, 32) == 32
  assert conv._chunk_size(100, 400) == 100  # Small enough already.
  assert conv._chunk_size(96, 40) == 32
  assert conv._chunk_size(641, 32) == 641  # No useful divisor: one product.


@pytest.mark.parametrize('backward', conv.BACKWARD_MODES)
@pytest.mark.parametrize('shape', [c[0] for c in CASES])
def test_conv3x3_values_and_gradients_match_xla_autodiff(backward, shape):
  n, h, w, c, d = shape
  x = jax.random.normal(jax.random.PRNGKey(2), (n, h, w, c))
  kernel = jax.random.normal(jax.random.PRNGKey(3), (3, 3, c, d))
  target = jax.random.normal(jax.random.PRNGKey(4), (n, h, w, d))
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)) * target)
  ours = jax.jit(jax.value_and_grad(loss(lambda x, k: conv.conv3x3(x, k, backward)), (0, 1)))
  ref = jax.value_and_grad(loss(_lax_conv), (0, 1))
  (v, (gx, gk)), (v_ref, (gx_ref, gk_ref)) = ours(x, kernel), ref(x, kernel)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-4)


def test_conv3x3_module_is_nn_conv_with_the_same_parameters():
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 7, 7, 4))  # Two leading batch axes.
  ours = networks.Conv3x3(6, param_init='lecun')  # Flax's initialisers, as nn.Conv's.
  ref = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)))
  key = jax.random.PRNGKey(6)
  params, params_ref = ours.init(key, x), ref.init(key, x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, params_ref)
  jax.tree.map(np.testing.assert_array_equal, params, params_ref)  # Same initialisation.
  params = jax.tree.map(lambda p: p + 0.3, params)  # A non-zero bias.
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_decoder_gradients_agree_across_backward_modes():
  latents = jax.random.normal(jax.random.PRNGKey(7), (3, 2, 12))
  grads = {}
  for backward in conv.BACKWARD_MODES:
    dec = networks.Decoder((4, 16, 20), conv_backward=backward)
    params = dec.init(jax.random.PRNGKey(8), latents)  # Same parameters in every mode.
    grads[backward] = jax.grad(lambda p, z: jnp.mean(dec.apply(p, z) ** 2), (0, 1))(params,
                                                                                  latents)
  for backward in ('auto', 'matmul'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 grads[backward], grads['xla'])


def test_bad_arguments_are_refused():
  x, kernel = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 5))
  with pytest.raises(ValueError, match='choose one of'):
    conv.conv3x3(x, kernel, 'fast')
  with pytest.raises(ValueError, match=r'\(3, 3, C, D\)'):
    conv.conv3x3(x, jnp.zeros((3, 3, 4, 5)))
