"""Datasets: the synthetic mixture (deterministic, no train/test overlap, its known structure),
MNIST image + label, a user's arrays, their errors; and every model on every dataset."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import model_state
from moe_ebm_jax.data import datasets
from moe_ebm_jax.vae import modalities as mods
from moe_ebm_jax.vae import objectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mixture_config(**overrides):
  c = config_lib.base_config('mmvaeplus', 'synthetic_mixture')
  c.data.num_train, c.data.num_test = 512, 128
  for k, v in overrides.items():
    c.data[k] = v
  c.data.num_modalities = len(c.data.dims)
  return c


def arrays(source):
  rows = [source[i] for i in range(len(source))]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_synthetic_mixture_is_deterministic_disjoint_and_shaped_by_its_fields():
  config = mixture_config(dims=(2, 5, 7), num_clusters=3, noise=(0.1, 0.2, 0.3))
  config_lib.validate(config)
  dataset = datasets.get(config.data)
  assert dataset.names == ('v0', 'v1', 'v2') and dataset.num_classes == 3
  assert [s.shape for s in dataset.modalities] == [(2,), (5,), (7,)]
  datasets._mixture_split.cache_clear()  # pylint: disable=protected-access
  train, test = arrays(dataset.source('train')), arrays(dataset.source('test'))
  datasets._mixture_split.cache_clear()  # pylint: disable=protected-access
  again = arrays(datasets.get(config.data).source('train'))
  for k in train:
    np.testing.assert_array_equal(train[k], again[k])  # Rebuilt from the seed, bit for bit.
  assert len(train['label']) == 512 and len(test['label']) == 128
  assert set(np.unique(train['label'])) == {0, 1, 2}
  rows = {r.tobytes() for r in train['v2']}
  assert not any(r.tobytes() in rows for r in test['v2'])  # No test example is a train one.
  other = arrays(datasets.get(mixture_config(seed=1, dims=(2, 5, 7), num_clusters=3)
                              .data).source('train'))
  assert not np.array_equal(other['v0'], train['v0'])


def test_synthetic_clusters_are_recoverable_and_noise_is_private():
  """The cluster is what the modalities share: a nearest-class-mean rule on any one modality
  finds it far above chance; per-modality noise moves only its own modality."""
  config = mixture_config(noise=(0.05,), dims=(2, 8, 16), num_clusters=4)
  train = arrays(datasets.get(config.data).source('train'))
  for name in ('v0', 'v1', 'v2'):
    means = np.stack([train[name][train['label'] == k].mean(0) for k in range(4)])
    guess = np.argmin(((train[name][:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(guess == train['label']) > 0.6, name  # Chance is 0.25.
  noisier = arrays(datasets.get(mixture_config(noise=(0.05, 0.05, 1.0), dims=(2, 8, 16),
                                               num_clusters=4).data).source('train'))
  np.testing.assert_allclose(noisier['v0'], train['v0'], atol=1e-6)
  assert np.abs(noisier['v2'] - train['v2']).mean() > 0.5


def test_from_arrays_trains_batches_and_refuses_data_that_does_not_fit():
  rng = np.random.default_rng(0)
  specs = (mods.vector_spec('signal', 3), mods.label_spec('tag', 4))
  train = {'signal': rng.normal(size=(40, 3)).astype(np.float32), 'tag': rng.integers(0, 4, 40)}
  test = {'signal': rng.normal(size=(8, 3)).astype(np.float32), 'tag': rng.integers(0, 4, 8)}
  dataset = datasets.from_arrays('mine', train, test, specs, train_labels=train['tag'],
                                 test_labels=test['tag'], num_classes=4)
  ds = input_pipeline.make_dataset(dataset.source('train'), modalities=specs, batch_size=16,
                                   seed=0)
  batch = ds[0]
  assert batch['x']['signal'].shape == (16, 3) and batch['x']['signal'].dtype == np.float32
  assert batch['x']['tag'].dtype == np.int32
  np.testing.assert_array_equal(batch['label'], batch['x']['tag'])
  with pytest.raises(ValueError, match=r"modality 'signal': shape \(2,\) of the train data"):
    datasets.from_arrays('bad', {**train, 'signal': train['signal'][:, :2]}, test, specs)
  with pytest.raises(ValueError, match=r"modality 'tag': labels of the test data span"):
    datasets.from_arrays('bad', train, {**test, 'tag': test['tag'] + 4}, specs)
  with pytest.raises(ValueError, match=r"the train arrays have modalities \['signal'\]"):
    datasets.from_arrays('bad', {'signal': train['signal']}, test, specs)
  with pytest.raises(ValueError, match='the same number of examples'):
    datasets.ArraySource({'a': np.zeros(3), 'b': np.zeros(4)})


def test_mnist_label_batches_hold_an_image_and_its_digit(mnist_npz):
  config = config_lib.base_config('mvae', 'mnist_label')
  config.data.mnist = mnist_npz
  config.batch_size, config.data.train_subset = 32, 64
  config_lib.validate(config)
  batch = next(input_pipeline.train_iterator(config))
  image, digit = batch['x']['image'], batch['x']['digit']
  assert image.shape == (32, 28, 28, 1) and image.dtype == np.float32
  assert 0 <= image.min() and image.max() <= 1 and image.max() > 0.9
  np.testing.assert_array_equal(digit, batch['label'])


@pytest.mark.parametrize('dataset', ['polymnist', 'mnist_label'])
def test_image_network_mlp_gives_image_modalities_mlp_encoders_and_decoders(dataset):
  config = config_lib.base_config('mmvaeplus', dataset)
  config.data.image_network = 'mlp'
  config.model.mlp_hidden = (16,)
  config_lib.validate(config)
  vae = model_state.make_model(config).vae
  images = [s for s in vae.modalities if s.kind == 'image']
  assert images and all(s.encoder == s.decoder == 'mlp' for s in images)
  x = {s.name: jnp.zeros((3,) + s.shape, s.dtype) for s in vae.modalities}
  params = vae.init(jax.random.PRNGKey(0))
  post = vae.encode(params, x)
  assert post.z_loc.shape == (len(vae.modalities), 3, config.model.latent_z)
  config.data.image_network = 'dense'
  with pytest.raises(ValueError, match=r"data.image_network='dense' is not one of \['mlp',"):
    config_lib.validate(config)


def test_config_errors_name_the_dataset_and_field():
  config = mixture_config()
  config.data.num_modalities = 5
  with pytest.raises(ValueError, match=r"data.num_modalities=5: dataset 'synthetic_mixture' has "
                                       r"3 modalities \(v0, v1, v2\)"):
    config_lib.validate(config)
  config = mixture_config(noise=(0.1, 0.2))
  with pytest.raises(ValueError, match='noise has 2 entries for 3 modalities'):
    config_lib.validate(config)
  config = config_lib.base_config('mmvaeplus')
  config.data.name = 'cub'
  with pytest.raises(ValueError, match="data.name='cub' is not one of"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="'polymnist' is already registered"):
    datasets.register('polymnist')(lambda c: None)


def smoke(arg: str):
  return config_lib.from_file(os.path.join(ROOT, 'configs', 'smoke.py'), arg)


# Every model on PolyMNIST; on the other datasets one model of each kind that reads a modality
# differently in training or evaluation: private latents and a fixed prior (MMVAE+), one shared
# latent over subsets (MoPoE), the EBM prior with posterior Langevin (MOE-EBM). The objectives
# see modalities only through the VAE's encode/decode/likelihood, the same for every model.
MODEL_DATASET_PAIRS = ([(m, 'polymnist') for m in config_lib.MODELS] +
                       [(m, d) for d in ('mnist_label', 'synthetic_mixture')
                        for m in ('mmvaeplus', 'mopoe', 'moe_ebm')])


@pytest.mark.slow
@pytest.mark.parametrize('model,dataset', MODEL_DATASET_PAIRS)
def test_models_train_and_evaluate_on_every_dataset(model, dataset, polymnist_dir,
                                                    mnist_npz, tmp_path_factory):
  """Two steps, the test loss, then the evaluation: coherence read as the dataset says (the
  synthetic and MNIST modalities by classifiers trained here and cached for the session;
  PolyMNIST's by a stand-in, its classifiers have tests of their own), FID where the modalities
  are RGB images (with a stand-in feature network), figures."""
  from moe_ebm_jax import metric_logging, train  # pylint: disable=g-import-not-at-top
  config = smoke(f'{model},{dataset}')
  config.data.mnist = mnist_npz
  if dataset == 'polymnist':
    config.data.data_dir = polymnist_dir
    classify = lambda d: np.zeros((len(d['m0']), len(d)), int)
    features = lambda images: np.asarray(images).mean(axis=(1, 2))  # (N, 3) channel means.
  else:  # The classifier caches of the session: trained by the first test of each dataset.
    config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'shared_data')
    classify = features = None
  config.num_train_steps = config.eval_every_steps = 2
  config.eval.at_end_of_training = True
  config.eval.num_fid_samples = config.eval.fid_batch_size = 4  # Skipped but for RGB images.
  config.eval.num_joint_samples = 16
  config.eval.clip_for_coherence = True  # Coherence and figures share compiled functions.
  workdir = str(tmp_path_factory.mktemp('run'))
  state = train.train_and_evaluate(config, workdir, classify=classify, features=features)
  assert int(state.step) == 2 and int(state.skipped_steps) == 0
  scalars = metric_logging.read_scalars(os.path.join(workdir, 'tensorboard'))
  (step, loss), = scalars['eval/test_loss']
  assert step == 2 and np.isfinite(loss)
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    metrics = json.load(f)
  coherence = metrics['coherence']
  assert 0 <= coherence['joint_coherence'] <= 1 and coherence['num_joint_samples'] == 16
  tag = 'post_ld' if model == 'moe_ebm' else ('pre_ld' if 'ebm' in model else 'q')
  assert 0 <= coherence[tag]['cross_coherence'] <= 1
  if dataset == 'polymnist':
    assert coherence['joint_coherence'] == 1.0  # A constant classifier agrees with itself.
    assert np.isfinite(metrics['fid']['joint_fid']) and np.isfinite(metrics['fid'][tag]['cross_fid'])
  else:
    assert 'fid' not in metrics
  files = set(os.listdir(os.path.join(workdir, 'eval')))
  names = datasets.get(config.data).names
  assert {'report.md', 'joint_samples.png'} | {f'cross_from_{n}.png' for n in names} <= files
  if dataset == 'synthetic_mixture':
    assert 'scatter_v0.png' in files  # Its 2-D modality as a scatter plot.


def test_coherence_or_an_objective_the_data_cannot_serve_fails_before_any_work():
  rng = np.random.default_rng(0)
  specs = (mods.vector_spec('a', 2), mods.vector_spec('b', 3))
  arrays = {'a': rng.normal(size=(8, 2)).astype(np.float32),
            'b': rng.normal(size=(8, 3)).astype(np.float32)}
  datasets.register('unlabelled_views')(lambda c: datasets.from_arrays('u', arrays, arrays, specs))
  config = config_lib.base_config('mmvaeplus', 'unlabelled_views')
  with pytest.raises(ValueError, match="coherence needs labels and dataset 'u' carries none"):
    config_lib.validate(config)
  config.eval.at_end_of_training = False
  config_lib.validate(config)  # Training alone needs no labels.

  @objectives.register('stacked_only', aggregation='moe', distribution='laplace',
                       private_latents=True, identical_modalities=True)
  def stacked_only(vae, params, x, key, **kwargs):
    return objectives.mmvaeplus_objective(vae, params, x, key, **kwargs)

  config = config_lib.base_config('stacked_only', 'mnist_label')
  with pytest.raises(ValueError, match=r"model.objective='stacked_only' needs modalities of one "
                                       r"spec; dataset 'mnist_label' has image image \(28, 28, 1\)"):
    config_lib.validate(config)
  config_lib.validate(config_lib.base_config('stacked_only'))  # PolyMNIST: five alike.
