"""Evaluation: coherence formulas on known inputs, conditional generation's expert choice, the
report of a trained smoke run, and the evaluation at the end of training."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from moe_ebm_jax import checkpointing
from moe_ebm_jax import evaluation
from moe_ebm_jax import generation
from moe_ebm_jax import model_state
from moe_ebm_jax import train
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.evaluators import coherence
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.evaluators import comparison
from moe_ebm_jax.evaluators import fid as fid_eval
from moe_ebm_jax.evaluators import report as report_lib

from test_train import smoke_config


def test_cross_coherence_is_mean_over_sources_per_target_then_targets():
  correct = np.array([[9, .2, .4], [.6, 9, .8], [.1, .3, 9]])  # Diagonal ignored.
  per_target = [np.mean([.6, .1]), np.mean([.2, .3]), np.mean([.4, .8])]
  assert coherence.cross_coherence(correct) == pytest.approx(np.mean(per_target))


def test_joint_coherence_and_subsets():
  predictions = np.array([[1, 1, 1], [1, 2, 1], [3, 3, 3], [0, 0, 5]])
  assert coherence.joint_coherence(predictions) == 0.5
  assert coherence.subsets(3) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
  assert len(coherence.subsets(5)) == 30
  assert coherence.subset_coherence({(0,): .2, (1,): .4, (0, 1): .9}) == {1: pytest.approx(.3),
                                                                          2: .9}


def test_joint_class_share_counts_agreeing_samples_by_class():
  predictions = np.array([[2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 2, 1], [3, 3, 0], [1, 1, 1],
                          [2, 2, 2], [0, 1, 2]])
  shares = coherence.joint_class_share(predictions)
  assert shares == [1 / 8, 1 / 8, 3 / 8, 0.0]  # Class 3 is predicted, never agreed on.
  assert sum(shares) == coherence.joint_coherence(predictions)
  # Balance: entropy of the agreed classes over log K. 1/5, 1/5, 3/5 over K = 4:
  p = np.array([1, 1, 3]) / 5
  assert coherence.class_balance(shares, 4) == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
  assert coherence.class_balance([0.2, 0.2, 0.2, 0.2], 4) == pytest.approx(1.0)
  assert coherence.class_balance([0.0, 0.9], 4) == 0.0
  assert coherence.class_balance([], 4) is None and coherence.class_balance([0.0], 4) is None


def test_cross_coherence_by_class_counts_each_class_and_its_examples_that_have_the_source():
  # 2 modalities, 5 examples: classes 0, 0, 1, 1, 2. Source 1 missing from example 3, so class 1
  # counts example 2 only from source 1; class 2 has no example with source 1: not listed.
  labels = np.array([0, 0, 1, 1, 2])
  right = [np.array([[1, 1], [1, 0], [1, 1], [1, 0], [1, 1]], bool),  # Decodes from source 0.
           np.array([[1, 1], [0, 1], [0, 1], [1, 1], [1, 1]], bool)]  # From source 1.
  has = [np.ones(5, bool), np.array([1, 1, 1, 0, 0], bool)]
  out = coherence.cross_coherence_by_class(labels, right, has)
  # Class 0: 0 -> 1 right on 1 of 2, 1 -> 0 on 1 of 2. Class 1: 0 -> 1 on 1 of 2; 1 -> 0 on
  # example 2 only, wrong.
  assert out == {'0': pytest.approx(np.mean([1 / 2, 1 / 2])), '1': pytest.approx(np.mean([1 / 2,
                                                                                          0.0]))}
  # A target not scored leaves the other: only target 0 (from source 1) counts.
  assert coherence.cross_coherence_by_class(labels, right, has, scored=[True, False]) == {
      '0': 0.5, '1': 0.0}


@pytest.fixture(scope='module')
def trained(polymnist_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('eval_run'))
  config = smoke_config(polymnist_dir, 'moe_ebm', num_train_steps=4, eval_every_steps=4,
                        **{'eval.num_fid_samples': 8})  # Smoke scale has none: opted in.
  state = train.train_and_evaluate(config, workdir)
  return config, workdir, state


@pytest.mark.slow
def test_conditional_generation_draws_z_from_an_expert_in_the_subset(trained):
  config, _, state = trained
  model = model_state.make_model(config)
  images = jnp.asarray(np.random.default_rng(0).random((8, 5, 28, 28, 3), np.float32))
  key = jax.random.PRNGKey(3)
  subset = jnp.array([False, True, False, True, False])
  decodes, z, _ = jax.jit(functools.partial(generation.conditional_generate, model=model,
                                            post_ld=False))(state, images, subset, key)
  assert sorted(decodes) == [f'm{m}' for m in range(5)]
  decodes = generation.stack_images(decodes, model.vae.names)
  assert decodes.shape == (8, 5, 28, 28, 3)
  assert 0.0 <= float(decodes.min()) and float(decodes.max()) <= 1.0
  # Every expert's sample with the same noise: z must be the sample of m1 or m3, and both
  # must occur over enough examples.
  k_z = jax.random.split(key, 4)[0]
  _, k_noise = jax.random.split(k_z)
  post = model.vae.encode(state.vae_params, images)
  eps = np.asarray(jax.random.laplace(k_noise, (8, post.z_loc.shape[-1])))
  z_each = np.asarray(post.z_loc) + np.asarray(post.z_scale) * eps[None]
  for b in range(8):
    matches = [m for m in range(5) if np.allclose(z_each[m, b], z[b], atol=1e-5)]
    assert matches and set(matches) <= {1, 3}


def channel_means(images):
  """A cheap stand-in for the FID network: (N, 28, 28, 3) -> per-channel means (N, 3)."""
  return jnp.mean(jnp.asarray(images), axis=(1, 2))


def test_fid_scorer_closed_form_under_a_constant_shift():
  # Features = channel means; shifting every image by c shifts the mean by c and keeps the
  # covariance, so FID = 3 c^2. 13 images in chunks of 5 also checks the zero padding.
  images = np.random.default_rng(0).uniform(0.2, 0.6, (13, 28, 28, 3)).astype(np.float32)
  reference = fid_eval.reference_statistics(channel_means, images[:, None], chunk=5)
  scorer = fid_eval.FidScorer(channel_means, reference, chunk=5)
  assert scorer(images, 0) == pytest.approx(0.0, abs=1e-6)
  assert scorer(images + 0.1, 0) == pytest.approx(3 * 0.1**2, rel=1e-4)
  assert scorer.num_images == 26


@pytest.mark.slow
def test_constant_classifier_gives_closed_form_coherence(trained, polymnist_dir):
  config, workdir, _ = trained
  constant = lambda decodes: np.full((len(decodes['m0']), len(decodes)), 7)
  metrics = evaluation.evaluate_run(config, workdir, classify=constant, features=channel_means)
  from moe_ebm_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  labels = np.concatenate([b['label'] for b in input_pipeline.eval_dataset(config)])[
      :config.eval.num_test_examples]
  expected = float(np.mean(labels == 7))
  c = metrics['coherence']
  assert c['joint_coherence'] == 1.0 and c['num_joint_samples'] == config.eval.num_joint_samples
  assert c['joint_class_share'] == [0.0] * 7 + [1.0]  # Every sample agrees on class 7.
  assert c['num_test_examples'] == config.eval.num_test_examples
  for tag in ('pre_ld', 'post_ld'):
    assert c[tag]['cross_coherence'] == pytest.approx(expected)
    assert all(v == pytest.approx(expected) for v in c[tag]['subset_coherence'].values())
    assert sorted(c[tag]['subset_coherence']) == ['1', '2', '3', '4']
  # FID: every field, with its sample count, and means consistent with the matrices.
  f = metrics['fid']
  n = config.eval.num_fid_samples
  assert f['num_samples'] == n and len(f['joint_fid_per_modality']) == 5
  assert f['joint_fid'] == pytest.approx(np.mean(f['joint_fid_per_modality']), abs=1e-3)
  assert f['num_feature_images'] == n * (5 + 2 * 25)  # Joint, then pre- and post-LD cross.
  for tag in ('pre_ld', 'post_ld'):
    matrix = np.array(f[tag]['cross_fid_matrix'])
    assert matrix.shape == (5, 5) and np.all(matrix >= 0) and np.all(np.isfinite(matrix))
    assert f[tag]['cross_fid'] == pytest.approx(matrix.mean(), abs=1e-3)
  out = os.path.join(workdir, 'eval')
  with open(os.path.join(out, 'metrics.json')) as fh:
    saved = json.load(fh)
  assert saved['step'] == 4 and saved['fid']['num_samples'] == n
  report = open(os.path.join(out, 'report.md')).read()
  assert 'moe_ebm post-LD' in report and 'moe_ebm pre-LD' in report
  assert f'{n} generated vs {n} test images' in report and 'cross FID' in report
  # N = 8 FID numbers are labelled as not ranking models, in the table header and the notes.
  biased = 'N = 8 < 2,048: biased, does not rank models'
  assert f'| joint FID ({biased}) | cross FID ({biased}) |' in report
  assert f'Joint FID per modality ({biased})' in report and 'not results' in report
  assert 'Coherence classifiers: injected by the caller (no test accuracies recorded).' in report
  assert f"{f['post_ld']['cross_fid']:.2f}" in report
  for name in ('joint_samples.png', 'cross_from_m0.png', 'pre_vs_post_ld_from_m0.png',
               'prior_langevin_trajectory.png'):
    assert os.path.getsize(os.path.join(out, name)) > 100 and name in report
  # Labelled figures: RGB, 28-px tiles shown at 56 px with 2-px padding, under a title band
  # and a column-label band and right of a row-label margin (metric_logging.labelled_grid).
  n_img = config.num_image_samples
  picks = min(config.ebm.prior_steps, 8)  # Chain steps shown (distinct for so few steps).
  layouts = {'joint_samples.png': (n_img, 5), 'cross_from_m0.png': (n_img, 6),
             'pre_vs_post_ld_from_m0.png': (n_img, 11),
             'prior_langevin_trajectory.png': (min(n_img, 4), picks)}
  for name, (rows, cols) in layouts.items():
    with Image.open(os.path.join(out, name)) as image:
      figure = np.asarray(image)
    grid_h, grid_w = rows * 58 + 2, cols * 58 + 2
    assert figure.ndim == 3 and figure.shape[-1] == 3, name
    assert figure.shape[0] > grid_h + 20 and figure.shape[1] > grid_w, (name, figure.shape)
    assert (figure[:figure.shape[0] - grid_h] < 128).any(), name  # Title and labels drawn.
    # The grid's padding lines (white) sit where the layout puts them.
    top, left = figure.shape[0] - grid_h, figure.shape[1] - grid_w
    for r in range(rows + 1):
      assert (figure[top + r * 58:top + r * 58 + 2, left:] == 255).all(), (name, r)
    for k in range(cols + 1):
      assert (figure[top:, left + k * 58:left + k * 58 + 2] == 255).all(), (name, k)
  # --mode=compare reads this run's real metrics.json into the paper's rows.
  pre, post = comparison.collect([workdir])
  assert (pre.paper_name, post.paper_name) == ('MOE-EBM pre-LD', 'MOE-EBM post-LD')
  assert post.ours['joint_coherence'] == 1.0 and pre.ours['joint_coherence'] is None
  assert pre.ours['cross_coherence'] == pytest.approx(expected)
  assert post.ours['cross_fid'] == pytest.approx(f['post_ld']['cross_fid'])
  assert f'N={n}' in post.counts


def test_eval_without_checkpoint_is_a_clear_error(polymnist_dir, tmp_path, monkeypatch):
  from moe_ebm_jax.data import classifiers  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.evaluators import inception  # pylint: disable=g-import-not-at-top

  def must_not_run(*args, **kwargs):
    raise AssertionError('loaded classifiers or the FID network before finding a checkpoint')

  monkeypatch.setattr(classifiers, 'load_or_train', must_not_run)
  monkeypatch.setattr(inception, 'load_params', must_not_run)
  with pytest.raises(FileNotFoundError, match='train first'):
    evaluation.evaluate_run(smoke_config(polymnist_dir, 'mmvaeplus'), str(tmp_path))


@pytest.mark.slow
def test_eval_of_a_run_with_another_model_config_is_refused(trained, tmp_path):
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.model.posterior_scale_multiplier = 0.5
  before = open(os.path.join(workdir, 'config.json')).read()
  with pytest.raises(checkpointing.IncompatibleRunError, match='posterior_scale_multiplier'):
    evaluation.evaluate_run(other, workdir, classify=lambda d: np.zeros((len(d['m0']), len(d)), int))
  assert open(os.path.join(workdir, 'config.json')).read() == before


@pytest.mark.slow
@pytest.mark.parametrize('clip', [False, True])
def test_coherence_classifies_raw_means_as_the_reference_unless_told_to_clip(trained, clip):
  config, _, state = trained
  config = config.copy_and_resolve_references()
  config.eval.clip_for_coherence = clip
  model = model_state.make_model(config)
  seen = []

  def classify(decodes):
    images = np.stack([decodes[f'm{m}'] for m in range(5)], axis=1)
    seen.append(images)
    return np.zeros(images.shape[:2], int)

  images = np.random.default_rng(1).random((6, 5, 28, 28, 3), np.float32)
  x = {f'm{m}': images[:, m] for m in range(5)}
  gen = common.Generators(model, config.eval_batch_size, clip)
  coherence.CoherenceEvaluator(gen, classify, [{'x': x, 'label': np.zeros(6, int)}],
                               num_joint=4, cross_only=True).run(state, jax.random.PRNGKey(0))
  assert len(seen) == 5 * len(gen.modes) + 1  # Each source and LD mode, then joint.
  # The decodes the classifier got equal the generation functions' raw or clipped means.
  expected, _, _ = jax.jit(functools.partial(
      generation.conditional_generate, model=model, post_ld=False, clip=clip))(
          state, jnp.asarray(images), jnp.arange(5) == 0,
          jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 0), 0))
  expected = generation.stack_images(expected, model.vae.names)
  np.testing.assert_allclose(seen[0], expected, rtol=1e-6, atol=1e-6)
  everything = np.concatenate([s.reshape(-1) for s in seen])
  inside = (everything >= 0) & (everything <= 1)
  assert inside.all() if clip else not inside.all()  # Untrained decoders overshoot [0, 1].


@pytest.mark.slow
def test_coherence_on_incomplete_test_data_counts_the_examples_that_have_the_inputs(trained):
  """Per source, the accuracy over the examples that have it: a classifier right on rows 0-2
  only, m1 missing from rows 0-1, m2 from rows 3-5."""
  config, _, state = trained
  model = model_state.make_model(config)
  right = np.array([True, True, True, False, False, False])
  labels = np.array([0, 1, 0, 1, 2, 2])
  classify = lambda decodes: np.where(right[:, None], labels[:, None], 9) * np.ones((1, 5), int)
  images = np.random.default_rng(2).random((6, 5, 28, 28, 3), np.float32)
  observed = {f'm{m}': np.ones(6, bool) for m in range(5)}
  observed['m1'][:2] = False
  observed['m2'][3:] = False
  batch = {'x': {f'm{m}': images[:, m] for m in range(5)}, 'label': labels,
           'observed': observed}
  gen = common.Generators(model, config.eval_batch_size, False)
  out = coherence.CoherenceEvaluator(gen, classify, [batch], cross_only=True).run(
      state, jax.random.PRNGKey(0))
  assert out['num_examples_per_source'] == {'m0': 6, 'm1': 4, 'm2': 3, 'm3': 6, 'm4': 6}
  expected = {0: 3 / 6, 1: 1 / 4, 2: 3 / 3, 3: 3 / 6, 4: 3 / 6}  # Right among the counted.
  for mode in gen.modes:  # pre- and post-LD
    pairs = np.asarray(out[mode.value]['cross_coherence_matrix'])
    for src, value in expected.items():
      np.testing.assert_allclose(np.delete(pairs[src], src), value, atol=1e-4)
    # By class: 0 (rows 0, 2) right wherever counted. Class 1 (rows 1, 3): from m1 row 3 only
    # (wrong), from m2 row 1 only (right), from the others half right: per-source accuracies
    # 0.5, 0, 1, 0.5, 0.5, whose mean over ordered pairs is 0.5. Class 2 (rows 4-5) has no
    # example with m2: not listed.
    assert out[mode.value]['cross_coherence_by_class'] == {'0': 1.0, '1': 0.5}


class FakeBank:
  """Stands in for classifiers.load_or_train's bank: fixed accuracies, always predicts 7."""
  architecture = 'fake'
  accuracies = [0.99, 0.981, 0.97, 0.9612, 0.95]
  num_modalities = 5
  cache_dir = '/nowhere'

  def predict(self, images):
    return np.full(images.shape[:2], 7)

  def classify(self, decodes):
    return np.full((len(decodes['m0']), len(decodes)), 7)


@pytest.mark.slow
def test_training_ends_with_the_evaluation_once(polymnist_dir, tmp_path, monkeypatch):
  from moe_ebm_jax.data import classifiers  # pylint: disable=g-import-not-at-top
  loads = []
  monkeypatch.setattr(classifiers, 'load_or_train', lambda data: loads.append(data) or FakeBank())
  workdir = str(tmp_path / 'run')
  config = smoke_config(polymnist_dir, 'mmvaeplus', num_train_steps=4, eval_every_steps=4,
                        **{'eval.at_end_of_training': True, 'eval.num_fid_samples': 0})
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4 and len(loads) == 1
  out = os.path.join(workdir, 'eval')
  with open(os.path.join(out, 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 4 and metrics['model'] == 'mmvaeplus' and 'fid' not in metrics
  assert metrics['classifiers']['accuracies'] == FakeBank.accuracies
  assert metrics['coherence']['num_test_examples'] == config.eval.num_test_examples
  assert workdir_lib.evaluated_step(workdir) == 4
  report = open(os.path.join(out, 'report.md')).read()
  assert '# Evaluation of mmvaeplus at step 4' in report
  assert ('Coherence classifiers (fake), test accuracy per modality: m0 0.9900, m1 0.9810, '
          'm2 0.9700, m3 0.9612, m4 0.9500.') in report
  # Why there is no FID, in words: the bias below 2,048 samples, the paper's N, the CPU cost
  # (30 sets of 10,000 plus 5 x 10,000 reference images at 4-8 images/s), where to run it.
  assert '**FID: not computed** (eval.num_fid_samples = 0)' in report
  for words in ('fewer than ~2,048 samples per set', 'rank-deficient', 'do not rank models',
                'the paper uses N = 10,000', '~4-8 images/s on a 2-core CPU',
                "this model's 30 sets (joint: 5 modalities; cross: 25 (source, target) sets)",
                '350,000 images, ~12-24 hours', 'on an accelerator',
                '--config.eval.num_fid_samples=10000'):
    assert words in report, words
  assert '| mmvaeplus | 1.000 |' in report and '| not computed | not computed |' in report
  for name in ['joint_samples.png'] + [f'cross_from_m{m}.png' for m in range(5)]:
    assert os.path.getsize(os.path.join(out, name)) > 100 and name in report
  assert comparison.collect([workdir])[0].ours['cross_fid'] is None

  # A relaunch of the finished run finds the evaluation of its final step and leaves it.
  def must_not_run(*args, **kwargs):
    raise AssertionError('evaluated again')

  mtimes = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
  with monkeypatch.context() as patch:
    patch.setattr(evaluation, 'evaluate_state', must_not_run)
    assert int(train.train_and_evaluate(config, workdir).step) == 4
  assert mtimes == {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
  # Trained on, the run ends at a new final step: evaluated again, for that step.
  config.num_train_steps = 6
  assert int(train.train_and_evaluate(config, workdir).step) == 6
  assert workdir_lib.evaluated_step(workdir) == 6 and len(loads) == 2
  assert '# Evaluation of mmvaeplus at step 6' in open(os.path.join(out, 'report.md')).read()


@pytest.mark.slow
def test_switched_off_or_interrupted_training_writes_no_evaluation(polymnist_dir, tmp_path,
                                                                   monkeypatch):
  called = []
  monkeypatch.setattr(evaluation, 'evaluate_state', lambda *a, **k: called.append(a))
  config = smoke_config(polymnist_dir, 'mmvaeplus', num_train_steps=2, eval_every_steps=2,
                        **{'eval.at_end_of_training': False})
  train.train_and_evaluate(config, str(tmp_path / 'off'))
  assert not called and not os.path.exists(tmp_path / 'off' / 'eval')
  config.eval.at_end_of_training = True
  train.train_and_evaluate(config, str(tmp_path / 'on'))
  assert len(called) == 1 and int(called[0][2].step) == 2


def report_metrics(model, tags, **extra):
  """The metrics evaluate_state writes, with made-up numbers."""
  matrix = np.full((5, 5), 0.5).tolist()
  coherence = {'num_test_examples': 10, 'num_joint_samples': 10, 'joint_coherence': 0.25}
  for tag in tags:
    coherence[tag] = {'cross_coherence': 0.5, 'cross_coherence_matrix': matrix,
                      'subset_coherence': {'1': 0.5}}
  return dict({'model': model, 'step': 7, 'coherence': coherence, 'eval_seconds': 1.0,
               'classifiers': {'architecture': 'paper', 'accuracies': [0.98] * 5}}, **extra)


def fid_metrics(n, tags):
  matrix = np.full((5, 5), 80.0).tolist()
  return dict({'num_samples': n, 'joint_fid': 90.0, 'joint_fid_per_modality': [90.0] * 5},
              **{t: {'cross_fid': 80.0, 'cross_fid_matrix': matrix} for t in tags})


def test_report_says_what_fid_is_and_why_it_is_missing(tmp_path):
  tags = ('pre_ld', 'post_ld')

  def report(**extra):
    report_lib.write_report(str(tmp_path), report_metrics('moe_ebm', tags, **extra), {})
    return (tmp_path / 'report.md').read_text()

  text = report()
  assert 'm4 0.9800' in text and '**FID: not computed**' in text
  # 5 joint + 2 x 25 cross sets and the reference: 600,000 images at 8 to 4 images/s.
  assert "55 sets (joint: 5 modalities; cross: 25 (source, target) sets, pre- and post-LD)" in text
  assert '600,000 images, ~21-42 hours' in text
  assert '| moe_ebm pre-LD | n/a | 0.500 | n/a | not computed |' in text
  text = report(fid=fid_metrics(100, tags), fid_network='net')
  assert 'N = 100 < 2,048: biased, does not rank models' in text and '80.00' in text
  text = report(fid=fid_metrics(5000, tags), fid_network='net')
  assert 'biased, does not rank models' not in text and 'not computed' not in text
  assert 'FID (net): 5,000 generated vs 5,000 test images per modality and set (the paper: ' \
         '10,000). FID falls as N grows: compare runs at the same N.' in text
  assert '| joint FID | cross FID |' in text
  text = report(fid=fid_metrics(10_000, tags), fid_network='net')
  assert 'per modality and set, as the paper.' in text
  assert json.loads((tmp_path / 'metrics.json').read_text())['fid']['num_samples'] == 10_000


@pytest.mark.slow
def test_only_process_zero_writes_the_report(trained, tmp_path, monkeypatch):
  """Processes sharing a workdir all evaluate (the generation spans every device), but only
  process 0 writes eval/: two writers of one metrics.json could leave it torn."""
  config, _, state = trained
  constant = lambda decodes: np.full((len(decodes['m0']), len(decodes)), 7)
  config = config.copy_and_resolve_references()
  config.eval.num_fid_samples = 0
  monkeypatch.setattr(evaluation.jax, 'process_index', lambda: 1)
  metrics = evaluation.evaluate_state(config, str(tmp_path), state, classify=constant)
  assert metrics['step'] == int(state.step) and 'joint_coherence' in metrics['coherence']
  out = tmp_path / 'eval'
  assert not out.exists() or not os.listdir(out)
  monkeypatch.setattr(evaluation.jax, 'process_index', lambda: 0)
  evaluation.evaluate_state(config, str(tmp_path), state, classify=constant)
  assert {'metrics.json', 'report.md', 'joint_samples.png'} <= set(os.listdir(out))
