"""experiments/: the research probes run at smoke scale (coherence probe, inspect_chains, the
GPU comparison script) and their bookkeeping."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'experiments', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_coherence_probe_at_smoke_scale(tmp_path, private_polymnist_dir, mnist_npz):
  out = tmp_path / 'probe.json'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'coherence_probe.py'),
       '--config=configs/smoke.py:mmvaeplus', '--at=2,4', '--num_test=24', '--num_joint=8',
       '--norms', '--log_every=2', f'--config.data.data_dir={private_polymnist_dir}',
       f'--config.data.mnist={mnist_npz}', '--classifier_max_steps=2',
       '--classifier_test_subset=32', f'--json_out={out}'],
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(out.read_text())
  assert [p['step'] for p in record['probes']] == [2, 4]
  assert [entry['step'] for entry in record['log']] == [2, 4]
  for probe in record['probes']:
    matrix = np.array(probe['matrix_q'])
    assert matrix.shape == (5, 5) and ((0 <= matrix) & (matrix <= 1)).all()
    # Cross coherence is the mean over the off-diagonal pairs, counted over 24 tuples.
    off = matrix[~np.eye(5, dtype=bool)]
    assert probe['cross_coherence_q'] == pytest.approx(off.mean(), abs=1e-3)
    assert 0 <= probe['joint_coherence'] <= 1
    norms = probe['norms']
    assert set(norms) == {'grad', 'update', 'param'}
    assert 'decoders/params/conv_out/kernel' in norms['grad']
    assert all(v > 0 for v in norms['update'].values())
  assert record['config']['model']['name'] == 'mmvaeplus'
  assert '| 4 |' in result.stdout


@pytest.mark.slow
def test_coherence_probe_stops_on_steps_that_are_all_skipped(tmp_path, private_polymnist_dir,
                                                            mnist_npz):
  """Every step's energy counts as an explosion, so every update is skipped: the probe stops
  with the reason instead of probing a model that no longer trains."""
  out = tmp_path / 'probe.json'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'coherence_probe.py'),
       '--config=configs/smoke.py:moe_ebm', '--at=4', '--num_test=8', '--log_every=2',
       '--config.ebm.max_abs_energy=1e-12', '--config.max_consecutive_bad_steps=2',
       f'--config.data.data_dir={private_polymnist_dir}', f'--config.data.mnist={mnist_npz}',
       '--classifier_max_steps=2', '--classifier_test_subset=32', f'--json_out={out}'],
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Stopped at step 2: 2 bad steps in a row (an energy exceeded' in result.stderr
  record = json.loads(out.read_text())
  assert record['probes'] == [] and record['log'][-1]['skipped_steps'] == 2


def test_digit_entropy_is_zero_for_one_digit_and_ln10_for_all_equally():
  inspect_chains = _load('inspect_chains')
  assert inspect_chains._entropy(np.full(50, 3)) == 0.0
  assert inspect_chains._entropy(np.repeat(np.arange(10), 7)) == pytest.approx(np.log(10))
  assert inspect_chains._entropy(np.array([1, 1, 2, 2])) == pytest.approx(np.log(2))


@pytest.mark.slow
def test_inspect_chains_at_smoke_scale(tmp_path, private_polymnist_dir, mnist_npz):
  """A 2-step smoke MOE-EBM looked inside. With a tiny step size the Langevin drift is negligible,
  so each coordinate moves by the noise alone: RMS move = s * sqrt(K) (times E sqrt(chi2_D / D))."""
  common = [f'--config.data.data_dir={private_polymnist_dir}', f'--config.data.mnist={mnist_npz}',
            '--config.ebm.persistent_chains=16']
  workdir = tmp_path / 'run'
  train = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/smoke.py:moe_ebm', f'--workdir={workdir}',
       '--config.num_train_steps=2', '--config.log_every_steps=1', *common], capture_output=True, text=True, timeout=600,
      cwd=ROOT)
  assert train.returncode == 0, train.stderr[-3000:]
  out = tmp_path / 'inside'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'inspect_chains.py'),
       '--config=configs/smoke.py:moe_ebm', f'--workdir={workdir}', f'--out={out}',
       '--num_test=32', '--sweep_steps=8', '--sweep_step_sizes=0.001,0.1', '--num_joint=16',
       '--long_prior_steps=12', '--rows=3', '--classifier_max_steps=2',
       '--classifier_test_subset=32', *common],
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((out / 'inside.json').read_text())
  assert record['step'] == 2 and record['num_test'] == 32
  for stats in record['energies'].values():
    assert np.isfinite([stats['mean'], stats['std']]).all() and stats['min'] <= stats['max']
  tiny, large = record['sweep']
  assert (tiny['steps'], tiny['step_size'], large['step_size']) == (8, 0.001, 0.1)
  noise_only = 0.001 * np.sqrt(8)
  assert tiny['moves']['drift_first_step'] < 0.05 * 0.001
  assert 0.75 * noise_only < tiny['moves']['rms_move'] < 1.1 * noise_only
  assert large['moves']['rms_move'] > 10 * tiny['moves']['rms_move']
  for entry in record['sweep']:
    assert 0 <= entry['post_ld_cross_coherence'] <= 1
  # With persistent chains: also p0 alone (f_a unused).
  assert set(record['joint_by_prior_steps']) == {'0', '5', '12', 'p0'}
  assert 'p0 alone, f_a unused' in (out / 'inside.md').read_text()
  for joint in record['joint_by_prior_steps'].values():
    assert 0 <= joint['joint_coherence'] <= 1
    assert 0 <= joint['agreed_digit_entropy'] <= np.log(10) + 1e-9
    assert 0 <= joint['m0_digit_entropy'] <= np.log(10) + 1e-9
  for name in record['figures'].values():
    assert (out / name).stat().st_size > 1000
  assert {'posterior_chain', 'prior_chain', 'training_energies'} <= set(record['figures'])
  assert '## Cross coherence' in (out / 'inside.md').read_text()


@pytest.mark.slow
def test_ebm_effect_gpu_script_at_smoke_scale(tmp_path, private_polymnist_dir, mnist_npz):
  """The GPU comparison script end to end on the CPU (MOE-EBM only: the probe's MMVAE+ path is
  test_coherence_probe_at_smoke_scale's): JSON with both probes and the printed table."""
  out = tmp_path / 'effect'
  env = dict(os.environ, OUT=str(out), SCALE='smoke', DATA_DIR=private_polymnist_dir, MODELS='moe_ebm',
             PYTHON=sys.executable, MNIST=mnist_npz)
  result = subprocess.run(['bash', os.path.join(ROOT, 'experiments', 'ebm_effect_gpu.sh')],
                          capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  record = json.loads((out / 'moe_ebm.json').read_text())
  assert [p['step'] for p in record['probes']] == [2, 4]
  for probe in record['probes']:
    for tag in ('pre_ld', 'post_ld'):
      assert 0 <= probe[f'cross_coherence_{tag}'] <= 1
    assert 0 <= probe['joint_coherence'] <= 1
  assert 'moe_ebm | 4 |' in result.stdout


def test_table_interval_is_students_t():
  from moe_ebm_jax.evaluators import comparison as table  # pylint: disable=g-import-not-at-top
  mean, sd, lo, hi = table.interval([1.0, 2.0, 3.0])
  assert (mean, sd) == (2.0, 1.0)
  assert (lo, hi) == pytest.approx((2 - 4.303 / np.sqrt(3), 2 + 4.303 / np.sqrt(3)))
  assert table.interval([0.5]) == (0.5, 0.0, 0.5, 0.5)
  assert table.t975(40) == 1.96 and table.t975(12) == 2.228  # Conservative between entries.


def test_table_reads_cross_coherence_each_way_from_source_target_matrix():
  """Two modalities: a column per direction, [source][target] of the matrix; three: none."""
  from moe_ebm_jax.evaluators import comparison  # pylint: disable=g-import-not-at-top
  def run(seed, matrix):
    return {'model': 'm', 'seed': seed, 'modalities': ['image', 'digit'], 'num_classes': 10,
            'latent_probe': {'pre_ld': {'mean': 0.5}},
            'coherence': {'joint_coherence': 0.5, 'joint_class_share': [0.05] * 10,
                          'q': {'cross_coherence': 0.0, 'cross_coherence_matrix': matrix}}}
  results = {'a': run(0, [[1, 0.2], [0.8, 1]]), 'b': run(1, [[1, 0.4], [0.6, 1]])}
  header, _, row = comparison.results_table(results, ['m']).splitlines()
  names = [c.split(':')[0].strip() for c in header.split('|')[3:-1]]
  cells = dict(zip(names, [c.split(',')[0].strip() for c in row.split('|')[3:-1]]))
  assert cells['cross image -> digit'] == '0.300' and cells['cross digit -> image'] == '0.700'
  assert comparison.directed_rows(['a', 'b', 'c']) == ()
  # One run: its value alone, no sd or interval.
  _, _, single = comparison.results_table({'a': results['a']}, ['m']).splitlines()
  assert single.split('|')[3].strip() == '0.500' and '[' not in single


def test_table_refuses_a_folder_holding_another_experiment():
  from moe_ebm_jax.evaluators import comparison  # pylint: disable=g-import-not-at-top
  results = {'moe_ebm_s0': {'model': 'moe_ebm', 'config': 'configs/c.py:moe_ebm,long',
                            'overrides': {'data.data_dir': '/d', 'num_train_steps': '6000',
                                          'model.likelihood_weights': '(1,50)'}},
             'mmvaeplus_s0': {'model': 'mmvaeplus',  # Written before 'config' was kept.
                              'overrides': {'data.data_dir': '/d',
                                            'model.likelihood_weights': '(1,50)'}}}
  same = {'data.data_dir': '/d', 'model.likelihood_weights': '(1, 50)'}  # Spacing: the same.
  check = lambda variant, overrides: comparison.check_table_folder(
      results, 'configs/c.py', variant, overrides)
  check('long', same)
  check('long', {**same, 'num_train_steps': '9000'})  # Longer or shorter: the same experiment.
  # A new seed or model in the folder with other settings is refused too: any entry differs.
  with pytest.raises(ValueError, match=r'mmvaeplus_s0 .*optim.learning_rate.*another --out'):
    check('long', {**same, 'optim.learning_rate': '1e-3'})
  with pytest.raises(ValueError, match=r"moe_ebm_s0 .*config 'configs/c.py:moe_ebm,long' there"):
    check('quick', same)
  with pytest.raises(ValueError, match='--set'):
    check('long', {'data.data_dir': '/d'})
  comparison.check_table_folder({}, 'configs/other.py', '', {'x': '1'})  # An empty folder.


@pytest.mark.slow
def test_table_runs_every_seed_then_resumes_without_retraining(tmp_path):
  """MOE-EBM x 2 seeds on the smoke synthetic mixture: trained, evaluated, probed pre- and
  post-LD, tabled; a second call finds every run done and trains nothing; a longer one extends."""
  out = tmp_path / 'table'
  cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'table.py'),
         '--config=configs/smoke.py', '--variant=synthetic_mixture', '--models=moe_ebm',
         '--seeds=0,1', f'--out={out}', '--set=num_train_steps=4', '--set=eval_every_steps=2',
         '--set=eval.at_end_of_training=True', f'--set=data.data_dir={tmp_path / "data"}',
         '--probe_train=64', '--coherence_curve=16']
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / 'results.json').read_text())
  assert sorted(results) == ['moe_ebm_s0', 'moe_ebm_s1']
  for run in results.values():
    assert run['step'] == 4 and [s for s, _ in run['test_loss_curve']] == [2, 4]
    for mode in ('pre_ld', 'post_ld', 'private'):  # MOE-EBM: MMVAE+'s private latents too.
      assert 0 <= run['latent_probe'][mode]['mean'] <= 1
    assert run['latent_probe']['num_train'] == 64
    # Every kept checkpoint (eval and checkpoint every 2 steps) read on 16 test examples.
    assert [p['step'] for p in run['coherence_curve']] == [2, 4]
    assert all(0 <= p['cross_coherence_post_ld'] <= 1 for p in run['coherence_curve'])
  assert results['moe_ebm_s0']['coherence'] != results['moe_ebm_s1']['coherence']
  text = (out / 'table.md').read_text()
  assert '| moe_ebm pre-LD | 2 |' in text and '| moe_ebm post-LD | 2 |' in text
  assert (out / 'curves.png').stat().st_size > 1000
  logs = {p.name: p.stat().st_size for p in out.glob('*.log')}
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert again.returncode == 0, again.stderr[-3000:]
  assert {p.name: p.stat().st_size for p in out.glob('*.log')} == logs  # Nothing retrained.
  assert (out / 'table.md').read_text() == text
  # A longer run for seed 0 only: it resumes at step 4 and trains on to 6; seed 1 is kept.
  longer = [c if c != '--set=num_train_steps=4' else '--set=num_train_steps=6' for c in cmd]
  longer = [c if c != '--seeds=0,1' else '--seeds=0' for c in longer]
  extended = subprocess.run(longer, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert extended.returncode == 0, extended.stderr[-3000:]
  results = json.loads((out / 'results.json').read_text())
  assert [s for s, _ in results['moe_ebm_s0']['test_loss_curve']] == [2, 4, 6]
  # Read again: steps 5 (the smoke config's periodic checkpoint) and 6 added, 2 and 4 kept.
  assert [p['step'] for p in results['moe_ebm_s0']['coherence_curve']] == [2, 4, 5, 6]
  assert results['moe_ebm_s1']['step'] == 4
  assert 'Resumed from step 4' in (out / 'moe_ebm_s0.log').read_text()
  # Another --set in the same folder: refused before anything is trained or rewritten.
  before = (out / 'results.json').read_text()
  mixed = subprocess.run(longer + ['--set=optim.learning_rate=0.5'], capture_output=True,
                         text=True, timeout=900, cwd=ROOT)
  assert mixed.returncode != 0 and 'is another experiment' in mixed.stderr, mixed.stderr[-2000:]
  assert (out / 'results.json').read_text() == before
  # Post-hoc priors on the table's runs (experiments/posthoc_table.py): fitted, evaluated apart,
  # paired with each run's own prior.
  fitted = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'posthoc_table.py'), f'--table={out}',
       '--fits=gmm:num_components=2;covariance=diag', '--fits=ebm:ebm_steps=3'],
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert fitted.returncode == 0, fitted.stderr[-3000:]
  record = json.loads((out / 'posthoc.json').read_text())['runs']
  results = json.loads((out / 'results.json').read_text())
  for name in ('moe_ebm_s0', 'moe_ebm_s1'):
    own, gmm = record[name]['own'], record[name]['gmm:num_components=2;covariance=diag']
    assert own['joint_coherence'] == results[name]['coherence']['joint_coherence']
    assert 0 <= gmm['joint_coherence'] <= 1 and gmm['fit']['num_components'] == 2
    # Timed: drawing the joint samples' z from each prior, the run's own too.
    assert gmm['sample_seconds'] > 0 and own['sample_seconds'] > 0
    # The post-hoc EBM (3 updates here) refines the posterior at evaluation, as MOE-EBM's does.
    ebm = record[name]['ebm:ebm_steps=3']
    assert ebm['fit']['steps'] == 3 and 0 <= ebm['cross_coherence_post_ld'] <= 1
    assert (out / name / 'posthoc_evals' / 'gmm:num_components=2;covariance=diag' /
            'report.md').exists()
  assert '| moe_ebm | gmm:num_components=2;covariance=diag |' in (out / 'posthoc.md').read_text()
  # The normalised bound of the trained run (experiments/true_bound.py): log Z estimated, and
  # IWAE >= ELBO exactly (logmeanexp >= mean over the same samples), with and without f_a.
  bounds = tmp_path / 'bounds.jsonl'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'true_bound.py'),
       '--config=configs/smoke.py:moe_ebm,synthetic_mixture', f'--workdir={out / "moe_ebm_s0"}',
       f'--config.data.data_dir={tmp_path / "data"}', '--config.num_train_steps=6',
       '--num_samples=4', '--posthoc=gmm,ebm', f'--json_out={bounds}'],
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads(bounds.read_text().splitlines()[-1])
  assert row['step'] == 6 and row['num_test'] > 0 and np.isfinite(row['log_z_monte_carlo'])
  assert row['iwae'] >= row['elbo'] and row['iwae_p0'] >= row['elbo_p0']
  # With the post-hoc mixture fitted above as the prior: its own bounds beside the run's.
  assert row['iwae_gmm'] >= row['elbo_gmm'] and np.isfinite(row['log_px_gmm'])
  # And with the post-hoc EBM, normalised by its own log Z.
  assert np.isfinite(row['log_z_monte_carlo_ebm']) and row['iwae_ebm'] >= row['elbo_ebm']
  # The log p(X) table from those rows: each prior paired with the run's own at its seed.
  again = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'posthoc_table.py'), f'--table={out}',
       '--fits=gmm:num_components=2;covariance=diag', '--fits=ebm:ebm_steps=3',
       f'--bounds={bounds}'], capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert again.returncode == 0, again.stderr[-3000:]
  lines = (out / 'posthoc.md').read_text().splitlines()
  gmm_line = next(line for line in lines if line.startswith('| moe_ebm | gmm, K = 2, samples |'))
  paired = row['log_px_gmm'] - row['log_px']  # One seed: the interval is the value.
  assert f'{paired:.2f}, 0.00 [{paired:.2f}, {paired:.2f}]' in gmm_line


@pytest.mark.slow
def test_coherence_curve_of_checkpoints_equals_the_probe_of_the_same_training(
    tmp_path, private_polymnist_dir, mnist_npz):
  """Cross coherence read from a run's kept checkpoints (coherence_curve.py) equals the probe's
  of the same training held in memory (coherence_probe.py: same step function, data, seed and
  key), pre- and post-LD; a second call recomputes nothing."""
  data = [f'--config.data.data_dir={private_polymnist_dir}', f'--config.data.mnist={mnist_npz}']
  probe_json = tmp_path / 'probe.json'
  probe = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'coherence_probe.py'),
       '--config=configs/smoke.py:moe_ebm', '--at=2,4', '--num_test=24', *data,
       '--classifier_max_steps=2', '--classifier_test_subset=32', f'--json_out={probe_json}'],
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert probe.returncode == 0, probe.stderr[-3000:]
  workdir = tmp_path / 'run'
  settings = ['--config.num_train_steps=4', '--config.checkpoint_every_steps=2',
              '--config.eval_every_steps=2', '--config.keep_checkpoints=3',
              '--config.eval.at_end_of_training=False']
  train = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), '--config=configs/smoke.py:moe_ebm',
       f'--workdir={workdir}', *data, *settings], capture_output=True, text=True, timeout=900,
      cwd=ROOT)
  assert train.returncode == 0, train.stderr[-3000:]
  curve_cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'coherence_curve.py'),
               '--config=configs/smoke.py:moe_ebm', f'--workdir={workdir}', '--num_test=24',
               '--classifier_max_steps=2', '--classifier_test_subset=32', *data, *settings]
  curve = subprocess.run(curve_cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert curve.returncode == 0, curve.stderr[-3000:]
  points = json.loads((workdir / 'coherence_curve.json').read_text())['points']
  assert [p['step'] for p in points] == [2, 4]
  assert all(p['test_loss'] is not None and np.isfinite(p['test_loss']) for p in points)
  probes = json.loads(probe_json.read_text())['probes']
  for point, expected in zip(points, probes):
    for tag in ('pre_ld', 'post_ld'):
      assert point[f'cross_coherence_{tag}'] == expected[f'cross_coherence_{tag}'], tag
  before = (workdir / 'coherence_curve.json').stat().st_mtime_ns
  again = subprocess.run(curve_cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (workdir / 'coherence_curve.json').stat().st_mtime_ns == before


def test_paired_table_differences_runs_at_the_same_seed():
  """Per seed model minus baseline: mean, sample sd, Student's t interval, seeds higher; a seed
  the baseline lacks is left out, and the baseline's own tag ('q') pairs with pre- and post-LD."""
  from moe_ebm_jax.evaluators import comparison  # pylint: disable=g-import-not-at-top
  def run(model, seed, cross, post=None):
    tags = {'q': {'cross_coherence': cross}} if post is None else {
        'pre_ld': {'cross_coherence': cross}, 'post_ld': {'cross_coherence': post}}
    return {'model': model, 'seed': seed, 'num_classes': 0,
            'latent_probe': {'pre_ld': {'mean': 0.9}, 'post_ld': {'mean': 0.8}},
            'coherence': {'joint_coherence': 0.5 + seed / 10, 'joint_class_share': None, **tags}}
  results = {'b0': run('base', 0, 0.70), 'b1': run('base', 1, 0.80), 'b2': run('base', 2, 0.75),
             'm0': run('ebm', 0, 0.72, 0.71), 'm1': run('ebm', 1, 0.81, 0.83),
             'm2': run('ebm', 2, 0.74, 0.80), 'm3': run('ebm', 3, 0.99, 0.99)}
  lines = comparison.paired_table(results, ['base', 'ebm'], 'base').splitlines()
  assert len(lines) == 4 and lines[0].startswith('| minus base, same seed | seeds |')
  pre = [c.strip() for c in lines[2].split('|')[1:-1]]
  post = [c.strip() for c in lines[3].split('|')[1:-1]]
  assert pre[:2] == ['ebm pre-LD', '3'] and post[:2] == ['ebm post-LD', '3']
  diffs = np.array([0.02, 0.01, -0.01])  # Seed 3 has no baseline run.
  half = 4.303 * diffs.std(ddof=1) / np.sqrt(3)
  assert pre[4] == (f'{diffs.mean():+.3f}, {diffs.std(ddof=1):.3f} '
                    f'[{diffs.mean() - half:+.3f}, {diffs.mean() + half:+.3f}], 2/3')
  assert post[4].endswith('3/3') and post[4].startswith('+0.030')  # 0.01, 0.03, 0.05.
  assert pre[2].startswith('+0.000, 0.000') and pre[2].endswith('0/3')  # Joint: equal per seed.
  # Latent accuracy by tag: the baseline's 'q' probe (0.9) against pre- (0.9) and post-LD (0.8).
  assert pre[5].startswith('+0.000') and post[5].startswith('-0.100, 0.000')
  assert comparison.paired_table(results, ['ebm'], 'none') == ''


@pytest.mark.slow
def test_latent_plane_draws_each_post_hoc_priors_samples(tmp_path):
  """A 2-D shared latent: the aggregate posterior, the run's priors and two post-hoc priors
  fitted to it, each panel with the share of samples whose decodes agree."""
  workdir = tmp_path / 'run'
  common = [sys.executable, os.path.join(ROOT, 'main.py'),
            '--config=configs/smoke.py:ebm_mmvaeplus,synthetic_mixture',
            f'--workdir={workdir}', '--config.model.latent_z=2', '--config.num_train_steps=4',
            f'--config.data.data_dir={tmp_path / "data"}', '--config.ebm.posterior_steps=2']
  for extra in ([], ['--mode=fit_prior', '--config.posthoc.prior=gmm',
                     '--config.posthoc.num_components=2'],
                ['--mode=fit_prior', '--config.posthoc.prior=ebm', '--config.posthoc.ebm_steps=2']):
    done = subprocess.run(common + extra, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
  out = tmp_path / 'plane.png'
  plane = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'latent_plane.py'),
       *[a for a in common[2:] if not a.startswith('--config.ebm')], '--posthoc=gmm,ebm',
       '--num_samples=64', f'--out={out}'], capture_output=True, text=True, timeout=900,
      cwd=ROOT)
  assert plane.returncode == 0, plane.stderr[-3000:]
  numbers = json.loads(out.with_suffix('.json').read_text())
  panels = [k for k in numbers if k.startswith('post-hoc')]
  assert any(k.startswith('post-hoc gmm: a 2-component') for k in panels), panels
  assert all(0 <= numbers[k]['agree'] <= 1 for k in panels if 'against' not in k)
  chain = numbers['post-hoc ebm: its chain against its exp(f_a) p0 / Z']
  assert 0 <= chain['tv_chain'] <= 1 and np.isfinite(chain['log_z'])
  assert out.stat().st_size > 10_000


INCOMPLETE_TABLE_CHECK = r"""
import sys
sys.path.insert(0, sys.argv[1])
import incomplete_table as module  # Its own process: its flags clash with other scripts'.
mnar = '{"v1": [0.9, 0.9, 0.1, 0.1]}'
got = module.settings(['0', '0.5'], ['masked', 'dropped'], mnar)
assert got == [
    ('r0', 'complete', []),
    ('r0.5', 'masked', ['data.missing_ratio=0.5', 'data.incomplete_examples=masked']),
    ('r0.5', 'dropped', ['data.missing_ratio=0.5', 'data.incomplete_examples=dropped']),
    ('mnar', 'masked', ['data.missing_by_class=' + mnar, 'data.incomplete_examples=masked']),
    ('mnar', 'dropped', ['data.missing_by_class=' + mnar, 'data.incomplete_examples=dropped'])], got

def run(seed, cross, tag='q'):  # What the record keeps of a table.py run.
  return module.run_summary({'seed': seed, 'seconds': 1.0, 'coherence': {
      'joint_coherence': 0.5, tag: {'cross_coherence': cross}}})

record = {'r0.5_masked': {'mmvaeplus': [run(0, 0.9), run(1, 0.7)],
                          'moe_ebm': [run(0, 0.8, 'post_ld')]},
          'r0.5_dropped': {'mmvaeplus': [run(1, 0.6), run(0, 0.5)],
                           'moe_ebm': [run(0, 0.8, 'post_ld')]}}
text = module.tables(record, ['mmvaeplus', 'moe_ebm'], got)
# Paired by seed, not by position: 0.9 - 0.5 and 0.7 - 0.6.
assert '| mmvaeplus | r0.5 | 2 | 0.250, 0.212 [' in text, text
assert '| moe_ebm | r0.5 | 1 | 0.000 | 0.000 |' in text, text  # Its post-LD number, one seed.
assert '| mmvaeplus | r0.5 | masked | 2 | 0.800, 0.141 [' in text, text
module.plot(record, ['mmvaeplus', 'moe_ebm'], ['0', '0.5'], sys.argv[2], 'check')

# Missing not at random: classes grouped as the mask treats them, labelled with their spans.
groups = module.class_groups('{"v2": [0.5, 0.5, 0.1, 0.5], "v1": [0.9, 0.9, 0.1, 0.1]}')
assert groups == [('v1 missing 0.9, v2 missing 0.5', [0, 1]),
                  ('v1 missing 0.1, v2 missing 0.1', [2]),
                  ('v1 missing 0.1, v2 missing 0.5', [3])], groups
assert module._span([0, 1, 2, 5, 7, 8]) == '0-2, 5, 7-8'
def raw_by_class(seed, per_class, shares, tag='q'):
  return {'seed': seed, 'seconds': 12.34, 'coherence': {
      'joint_coherence': sum(shares), 'joint_class_share': shares,
      tag: {'cross_coherence': 0.0, 'cross_coherence_by_class': per_class}},
      'latent_probe': {'num_train': 64, 'pre_ld': {'per_modality': {'v1': 0.9}, 'mean': 0.9},
                       'private': {'per_modality': {'v1': 0.3}, 'mean': 0.3}}}
def by_class(*args):
  return module.run_summary(raw_by_class(*args))
two = module.class_groups('{"v1": [0.9, 0.9, 0.1, 0.1]}')
mnar = {'mnar_masked': {'mmvaeplus': [
            by_class(0, {'0': 0.2, '1': 0.4, '2': 0.9, '3': 0.7}, [0.1, 0.1, 0.2, 0.2]),
            by_class(1, {'0': 0.4, '1': 0.6, '2': 0.8, '3': 0.8}, [0.3, 0.1, 0.0, 0.0])]},
        'r0_complete': {'mmvaeplus': [run(0, 0.9)]}}  # Evaluated before the classes were.
text = module.mnar_table(mnar, ['mmvaeplus'], two)
# Classes 0-1: cross 0.3 (seed 0) and 0.5 (seed 1); joint share 0.2 / 0.6 and 0.4 / 0.4.
# Classes 2-3: cross 0.8 and 0.8; joint share 0.4 / 0.6 and 0 / 0.4.
assert ('| mmvaeplus | mnar | masked | 2 | 0.400, 0.141 [-0.871, 1.671] | 0.800, 0.000 '
        '[0.800, 0.800] | 0.667, 0.471 [') in text, text
assert '| 0.333, 0.471 [' in text, text
assert '| mmvaeplus | r0 | complete | 1 | - | - | - | - |' in text, text
assert 'classes 0-1 (v1 missing 0.9)' in text, text
kept = module.run_summary(raw_by_class(0, {'0': 0.2, '1': 0.4, '2': 0.9, '3': 0.7},
                                        [0.1, 0.1, 0.2, 0.2]))
assert kept == {'seed': 0, 'seconds': 12.3, 'cross coherence': 0.0, 'joint coherence': sum(
                    [0.1, 0.1, 0.2, 0.2]),
                'cross coherence by class': {'0': 0.2, '1': 0.4, '2': 0.9, '3': 0.7},
                'joint class share': [0.1, 0.1, 0.2, 0.2],
                'probe': {'pre_ld': {'v1': 0.9}, 'private': {'v1': 0.3}}}, kept

# The probes: a column per latent and source modality, mean over the seeds that have it.
probed = {'r0.5_masked': {'mmvaeplus': [
    {'probe': {'pre_ld': {'v1': 0.9, 'v2': 0.5}, 'private': {'v1': 0.3}}},
    {'probe': {'pre_ld': {'v1': 0.7, 'v2': 0.5}, 'private': {'v1': 0.5}}},
    {'probe': {}}]}}  # Probed before the probes were kept: left out.
text = module.probe_table(probed, ['mmvaeplus'], got)
assert '| model | setting | examples | z from v1 | z from v2 | w from v1 |' in text, text
assert ('| mmvaeplus | r0.5 | masked | 0.800, 0.141 [-0.471, 2.071] | 0.500, 0.000 [0.500, '
        '0.500] | 0.400, 0.141 [') in text, text
assert module.probe_table({}, ['mmvaeplus'], got) == ''

# A record carries the table across machines: what it holds is not trained again; the rest
# goes seed by seed (seed 0 of every setting and model first).
record = {'settings': {'r0_complete': {'mmvaeplus': [run(0, 0.9), run(2, 0.9)]},
                       'r0.5_masked': {'moe_ebm': [run(0, 0.8)]}}}
todo = module.pending(record, got[:2], ['mmvaeplus', 'moe_ebm'], ['0', '1', '2'])
assert [(n, p, m, s) for n, p, _, m, s in todo] == [
    ('r0', 'complete', 'moe_ebm', '0'), ('r0.5', 'masked', 'mmvaeplus', '0'),
    ('r0', 'complete', 'mmvaeplus', '1'), ('r0', 'complete', 'moe_ebm', '1'),
    ('r0.5', 'masked', 'mmvaeplus', '1'), ('r0.5', 'masked', 'moe_ebm', '1'),
    ('r0', 'complete', 'moe_ebm', '2'), ('r0.5', 'masked', 'mmvaeplus', '2'),
    ('r0.5', 'masked', 'moe_ebm', '2')], todo
module.add_run(record, 'r0_complete', 'mmvaeplus', run(1, 0.7))
module.add_run(record, 'r0_complete', 'mmvaeplus', run(2, 0.6))  # Replaces seed 2's entry.
assert [(r['seed'], r['cross coherence']) for r in record['settings']['r0_complete'][
    'mmvaeplus']] == [(0, 0.9), (1, 0.7), (2, 0.6)], record
import json, os, tempfile
path = os.path.join(tempfile.mkdtemp(), 'incomplete.json')
mine = {'config': 'configs/mnist_label.py', 'variant': 'mlp', 'set': []}
assert module.load_record(path, mine) == {**mine, 'settings': {}}
with open(path, 'w') as f:
  json.dump({**mine, 'settings': record['settings'], 'note': 'kept'}, f)
assert module.load_record(path, mine)['note'] == 'kept'
try:
  module.load_record(path, {**mine, 'variant': 'conv'})
  raise AssertionError('a record of another experiment was taken')
except ValueError as e:
  assert 'holds another experiment' in str(e), e
print('INCOMPLETE_TABLE_OK')
"""


def test_incomplete_table_settings_and_masked_minus_dropped_by_seed(tmp_path):
  """The settings each table folder gets, and the paired differences of made-up runs."""
  figure = tmp_path / 'p.png'
  proc = subprocess.run([sys.executable, '-c', INCOMPLETE_TABLE_CHECK,
                         os.path.join(ROOT, 'experiments'), str(figure)],
                        capture_output=True, text=True, timeout=300, check=False)
  assert 'INCOMPLETE_TABLE_OK' in proc.stdout, proc.stderr[-3000:]
  assert figure.stat().st_size > 0


def test_incomplete_table_tables_a_record_without_training_and_refuses_another(tmp_path):
  """--tables_only writes the tables of a kept record and trains nothing (no table folder); a
  record of another experiment is refused in one line."""
  summary = lambda seed, cross: {'seed': seed, 'seconds': 1.0, 'cross coherence': cross,
                                 'joint coherence': 0.5, 'cross coherence by class': None,
                                 'joint class share': None, 'probe': {}}
  record = tmp_path / 'kept.json'
  record.write_text(json.dumps({
      'config': 'configs/smoke.py', 'variant': 'synthetic_mixture', 'set': [], 'note': 'n',
      'settings': {'r0.5_masked': {'mmvaeplus': [summary(0, 0.9), summary(1, 0.7)]}}}))
  out = tmp_path / 'out'
  cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'incomplete_table.py'),
         '--config=configs/smoke.py', '--models=mmvaeplus', '--seeds=0,1', '--ratios=0.5',
         f'--record={record}', f'--out={out}', '--tables_only']
  proc = subprocess.run(cmd + ['--variant=synthetic_mixture'], capture_output=True, text=True,
                        timeout=300, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| mmvaeplus | r0.5 | masked | 2 | 0.800, 0.141 [' in (out / 'incomplete.md').read_text()
  assert sorted(p.name for p in out.iterdir()) == ['incomplete.md', 'incomplete.png']
  assert json.loads(record.read_text())['note'] == 'n'  # Not rewritten: nothing ran.
  proc = subprocess.run(cmd + ['--variant=mlp'], capture_output=True, text=True, timeout=300,
                        cwd=ROOT, check=False)
  assert proc.returncode != 0 and 'holds another experiment' in proc.stderr, proc.stderr[-3000:]
