"""Each file in examples/ runs as a user runs it, and does what it says."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name: str) -> str:
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'examples', name)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_examples_are_short():
  names = [n for n in os.listdir(os.path.join(ROOT, 'examples')) if n.endswith('.py')]
  assert len(names) >= 4  # A dataset, an objective, a sampler, a prior.
  for name in names:
    with open(os.path.join(ROOT, 'examples', name)) as f:
      # A prior with its own posterior inference is the longest extension point.
      assert len(f.readlines()) <= (85 if name == 'new_prior.py' else 60), name


@pytest.mark.slow
def test_new_objective_trains():
  losses = [float(x) for x in re.findall(r'step \d+: loss (\S+)', run_example('new_objective.py'))]
  assert len(losses) == 5 and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]  # Five steps on one batch: the joint ELBO improves.


@pytest.mark.slow
def test_new_sampler_hits_a_known_target_and_runs_the_ebm_chains():
  out = run_example('new_sampler.py')
  got = re.search(r'got \[\s*(\S+)\s+(\S+)\s*\] \[\s*(\S+)\s+(\S+)\s*\]', out)
  assert got, out
  mean, var = np.array(got.groups()[:2], float), np.array(got.groups()[2:], float)
  # 10,000 chains: mean SE <= 0.01, variance SE 1.4%; the last steps' bias is under 1%.
  np.testing.assert_allclose(mean, [1.0, -2.0], atol=0.05)
  np.testing.assert_allclose(var, [0.25, 1.0], rtol=0.06)
  ebm_loss = float(re.search(r'EBM loss (\S+)', out).group(1))
  assert np.isfinite(ebm_loss)


@pytest.mark.slow
def test_dataset_from_arrays_trains_and_evaluates_above_chance():
  out = run_example('dataset_from_arrays.py')
  got = re.search(r'cross coherence (\S+), joint coherence (\S+)', out)
  assert got, out
  cross, joint = float(got.group(1)), float(got.group(2))
  assert 0.0 <= joint <= 1.0
  # 300 steps on two views that share one of 3 classes: well above chance (1/3) across views.
  assert cross > 0.5, out


@pytest.mark.slow
def test_new_prior_trains_inside_the_step_and_refines_the_posterior():
  out = run_example('new_prior.py')
  nll = [float(v) for v in re.search(r'every 50 steps: (.*)', out).group(1).split()]
  assert len(nll) == 4 and np.all(np.isfinite(nll))
  assert nll[-1] < nll[0]  # The mixture fits the posterior samples better as it learns.
  before, after = map(float, re.search(r'refinement: (\S+) -> (\S+)', out).groups())
  assert after > before  # Gradient ascent on log p(x_S | z, w_S) + log p(z) raised it.
  # Evaluation asked the prior, not its class, whether to report post-refinement numbers.
  line = re.search(r'cross coherence: (.*)', out).group(1).split()
  assert set(line[::2]) == {'pre_ld', 'post_ld'}


@pytest.mark.slow
def test_dataset_module_trains_and_evaluates_through_main(mnist_npz, tmp_path):
  """The module of examples/dataset_module.py, named in main.py's config argument: three
  modalities of two image sizes and a label, trained a few steps, evaluated, figures drawn."""
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, 'main.py',
       '--config=configs/cpu.py:mmvaeplus,examples/dataset_module.py:three_views',
       f'--workdir={workdir}', '--config.num_train_steps=30', f'--config.data.mnist={mnist_npz}',
       f'--config.data.data_dir={tmp_path / "data"}', '--config.eval.num_test_examples=100',
       '--config.eval.num_joint_samples=100'],
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((workdir / 'eval' / 'metrics.json').read_text())
  assert metrics['modalities'] == ['grey', 'colour', 'digit'] and metrics['complete']
  readings = metrics['classifiers']['readings']
  assert readings['grey']['test_accuracy'] > 0.9 and readings['colour']['test_accuracy'] > 0.9
  assert {'cross_from_grey.png', 'cross_from_colour.png', 'joint_samples.png'} <= set(
      os.listdir(workdir / 'eval'))


@pytest.mark.slow
def test_new_posthoc_prior_is_fitted_saved_and_evaluated_and_its_density_is_a_kde():
  out = run_example('new_posthoc_prior.py')
  own, kde, bandwidth, workdir = re.search(
      r'own prior (\S+), KDE (\S+); bandwidth (\S+); fitted in (\S+)', out).groups()
  assert 0 <= float(own) <= 1 and 0 <= float(kde) <= 1 and float(bandwidth) > 0
  assert os.path.exists(os.path.join(workdir, 'posthoc', 'kde', 'step_300', 'params.npz'))
  # Its density against the formula, in numpy: the mean of N(z; z_i, h^2 I) over the points.
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'new_posthoc_prior', os.path.join(ROOT, 'examples', 'new_posthoc_prior.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rng = np.random.default_rng(0)
  points, z, h = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)), 0.4
  expected = np.log(np.mean(np.exp(-0.5 * ((z[:, None] - points) ** 2).sum(-1) / h ** 2), 1)) - (
      3 * np.log(h * np.sqrt(2 * np.pi)))
  log_p = module.KdePrior(7).log_prob({'points': points, 'bandwidth': h}, 1.0)(z)
  np.testing.assert_allclose(np.asarray(log_p), expected, rtol=1e-5)


@pytest.mark.slow
def test_incomplete_data_trains_masked_and_dropped_above_chance():
  out = run_example('incomplete_data.py')
  got = re.search(r'masked \(every example\) (\S+), dropped \(complete examples only\) (\S+)', out)
  assert got, out
  masked, dropped = float(got.group(1)), float(got.group(2))
  # 300 steps on views that share one of 3 classes, 30% of the codes present: above chance.
  assert masked > 0.5 and dropped > 0.5, out
