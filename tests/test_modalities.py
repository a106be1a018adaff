"""Modality specs: likelihoods against closed forms, the families' shapes, the one-line errors,
and a VAE over different modalities against the same computation done by hand."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.vae import modalities as mods
from moe_ebm_jax.vae import models


def test_likelihoods_match_their_closed_forms():
  rng = np.random.default_rng(0)
  x, out = rng.random((4, 3, 5)).astype(np.float32), rng.normal(size=(4, 3, 5)).astype(np.float32)
  image = mods.image_spec('i', (3, 5, 1))
  spec = dataclasses.replace(image, shape=(3, 5))
  lap = mods.likelihood(spec).log_prob(spec, x, out, 0.5)
  np.testing.assert_allclose(lap, (-np.abs(x - out) / 0.5 - math.log(2 * 0.5)).sum((1, 2)),
                             rtol=1e-5)
  gauss = mods.likelihood(dataclasses.replace(spec, likelihood='gaussian'))
  np.testing.assert_allclose(
      gauss.log_prob(spec, x, out, 0.5),
      (-0.5 * ((x - out) / 0.5) ** 2 - math.log(0.5 * math.sqrt(2 * math.pi))).sum((1, 2)),
      rtol=1e-5)
  p = 1 / (1 + np.exp(-out))
  bern = mods.likelihood(dataclasses.replace(spec, likelihood='bernoulli'))
  np.testing.assert_allclose(bern.log_prob(spec, x, out, None),
                             (x * np.log(p) + (1 - x) * np.log(1 - p)).sum((1, 2)), rtol=1e-4)
  np.testing.assert_allclose(bern.mean(spec, out), p, rtol=1e-6)
  label = mods.label_spec('y', 5)
  logits, y = rng.normal(size=(4, 5)).astype(np.float32), np.array([0, 4, 2, 2])
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(mods.likelihood(label).log_prob(label, y, logits, None),
                             logp[np.arange(4), y], rtol=1e-5)
  assert mods.likelihood(label).out_shape(label) == (5,)


@pytest.mark.parametrize('spec, message', [
    (mods.ModalitySpec('img', (28, 28, 3), likelihood='categorical', num_classes=10),
     "modality 'img': likelihood 'categorical' models ('int32',) data, not 'float32'"),
    (mods.image_spec('img', (30, 30, 3)), "modality 'img': shape (30, 30, 3): the 'resnet' family"),
    (mods.vector_spec('v', 4, encoder='resnet'), "modality 'v': encoder 'resnet' needs float images"),
    (mods.vector_spec('v', 4, encoder='embedding'), "modality 'v': encoder 'embedding' reads"),
    (mods.label_spec('y', 1), "modality 'y': num_classes 1 must be >= 2"),
    (mods.vector_spec('v', 4, coherence='label'), "modality 'v': coherence 'label' reads"),
    (mods.vector_spec('v', 4, likelihood='poisson'), "modality 'v': likelihood 'poisson' is not"),
    (mods.vector_spec('v', 4, likelihood_scale=0.0), "modality 'v': likelihood_scale 0.0 must"),
])
def test_specs_that_do_not_fit_fail_in_one_line_naming_modality_and_field(spec, message):
  with pytest.raises(ValueError, match='^' + message.replace('(', r'\(').replace(')', r'\)')):
    mods.check_spec(spec)


def test_data_that_does_not_fit_its_spec_is_refused():
  with pytest.raises(ValueError, match=r"modality 'v': shape \(5,\) of the data differs"):
    mods.check_data(mods.vector_spec('v', 4), np.zeros((3, 5), np.float32))
  with pytest.raises(ValueError, match=r"modality 'y': labels of the data span \[0, 7\], outside"):
    mods.check_data(mods.label_spec('y', 5), np.array([0, 7]))
  with pytest.raises(ValueError, match="modality 'y': dtype float32 of the data"):
    mods.check_data(mods.label_spec('y', 5), np.zeros(3, np.float32))
  with pytest.raises(ValueError, match="modality 'v': dtype int64 of the data"):
    mods.check_data(mods.vector_spec('v', 2), np.zeros((3, 2), np.int64))
  with pytest.raises(ValueError, match="a bernoulli likelihood needs data in"):
    mods.check_data(mods.vector_spec('v', 2, likelihood='bernoulli'), np.full((3, 2), 2.0))
  with pytest.raises(ValueError, match="modality names must be unique"):
    mods.check_specs([mods.vector_spec('v', 2), mods.vector_spec('v', 3)])


def test_registries_refuse_a_duplicate_name():
  with pytest.raises(ValueError, match="'mlp' is already registered"):
    mods.register_encoder('mlp')(lambda *a: None)
  with pytest.raises(ValueError, match="'resnet' is already registered"):
    mods.register_decoder('resnet')(lambda *a: None)
  with pytest.raises(ValueError, match="'laplace' is already registered"):
    mods.register_likelihood('laplace', mods.LIKELIHOODS['gaussian'])


@pytest.mark.parametrize('shape', [(28, 28, 3), (32, 32, 3), (28, 28, 1), (16, 8, 2)])
def test_resnet_family_takes_images_of_any_multiple_of_four(shape):
  spec = mods.image_spec('img', shape)
  options = mods.NetworkOptions(widths=(2, 2, 2))
  enc, dec = mods.encoder(spec, 3, 4, options), mods.decoder(spec, options)
  x = jnp.zeros((2,) + shape)
  outs = enc.apply(enc.init(jax.random.PRNGKey(0), x), x)
  assert [o.shape for o in outs] == [(2, 3), (2, 3), (2, 4), (2, 4)]
  latents = jnp.zeros((5, 2, 7))
  assert dec.apply(dec.init(jax.random.PRNGKey(1), latents), latents).shape == (5, 2) + shape


def _mixed_vae(**kwargs):
  specs = (mods.image_spec('img', (8, 8, 1), likelihood='bernoulli'),
           mods.vector_spec('vec', 3, likelihood_scale=0.3), mods.label_spec('lab', 4))
  return models.MultimodalVAE(modalities=specs, widths=(2, 2, 2), latent_w=2, latent_z=3,
                              mlp_hidden=(5,), **kwargs)


def _mixed_batch(b=4):
  rng = np.random.default_rng(1)
  return {'img': jnp.asarray(rng.random((b, 8, 8, 1)), jnp.float32),
          'vec': jnp.asarray(rng.normal(size=(b, 3)), jnp.float32),
          'lab': jnp.asarray(rng.integers(0, 4, b), jnp.int32)}


def test_a_vae_over_different_modalities_scores_each_by_its_own_likelihood():
  vae = _mixed_vae()
  assert not vae.stacked and vae.names == ('img', 'vec', 'lab')
  params = vae.init(jax.random.PRNGKey(0))
  assert sorted(params['encoders']) == ['img', 'lab', 'vec']
  x = _mixed_batch()
  post = vae.encode(params, x)
  assert post.z_loc.shape == (3, 4, 3) and post.w_loc.shape == (3, 4, 2)
  latents = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 4, 5))  # (M, K, B, Dw + Dz)
  got = np.asarray(vae.log_likelihood(params, latents, x))
  assert got.shape == (3, 2, 4)
  # By hand: each decoder's output under its likelihood's formula, in numpy.
  out = [np.asarray(vae._decoder(m).apply(params['decoders'][n], latents[m]))  # pylint: disable=protected-access
         for m, n in enumerate(vae.names)]
  img, vec, lab = (np.asarray(x[n]) for n in vae.names)
  want_img = (img * out[0] - np.log1p(np.exp(out[0]))).sum((-3, -2, -1))
  want_vec = (-0.5 * ((vec - out[1]) / 0.3) ** 2 - np.log(0.3 * np.sqrt(2 * np.pi))).sum(-1)
  logp = out[2] - np.log(np.exp(out[2]).sum(-1, keepdims=True))
  want_lab = np.take_along_axis(logp, np.broadcast_to(lab, (2, 4))[..., None], -1)[..., 0]
  np.testing.assert_allclose(got, np.stack([want_img, want_vec, want_lab]), rtol=2e-4, atol=1e-4)
  means = vae.means(vae.decode(params, latents[:, 0]))
  assert [m.shape for m in means] == [(4, 8, 8, 1), (4, 3), (4, 4)]
  with pytest.raises(ValueError, match=r"the batch has no modality \['lab'\]"):
    vae.encode(params, {'img': x['img'], 'vec': x['vec']})


def test_stacked_params_equal_modality_by_modality_application():
  """The stacked fast path computes what per-modality params applied one by one compute."""
  specs = tuple(mods.image_spec(f'm{i}', (8, 8, 3)) for i in range(3))
  stacked = models.MultimodalVAE(modalities=specs, widths=(2, 2, 2), latent_w=2, latent_z=3)
  single = dataclasses.replace(stacked, stack_identical=False)
  assert stacked.stacked and not single.stacked
  params = stacked.init(jax.random.PRNGKey(0))
  per_name = {k: ({n: models.modality_params(v, i) for i, n in enumerate(stacked.names)}
                  if k in ('encoders', 'decoders') else v) for k, v in params.items()}
  x = {s.name: jax.random.uniform(jax.random.PRNGKey(i), (4, 8, 8, 3))
       for i, s in enumerate(specs)}
  for a, b in zip(stacked.encode(params, x), single.encode(per_name, x)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  latents = jax.random.normal(jax.random.PRNGKey(5), (3, 2, 4, 5))
  np.testing.assert_allclose(stacked.log_likelihood(params, latents, x),
                             single.log_likelihood(per_name, latents, x), rtol=1e-5)
  # A stacked model also reads a stacked array (B, M, *shape).
  np.testing.assert_allclose(stacked.log_likelihood(params, latents, jnp.stack(list(x.values()), 1)),
                             stacked.log_likelihood(params, latents, x), rtol=0)
