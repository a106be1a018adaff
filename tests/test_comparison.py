"""--mode=compare: evaluated runs side by side with the paper's Table 1, and the plot."""

import json
import os
import subprocess
import sys

import pytest

from moe_ebm_jax.evaluators import comparison

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_metrics(workdir, model, tags, *, joint=0.25, fid=True, step=100):
  """A metrics.json in the layout evaluation.write_report produces; cross coherence of tag i is
  0.5 + 0.1 i and its cross FID 200 - 10 i, so every number in the table is known."""
  coherence = {'joint_coherence': joint, 'num_joint_samples': 500, 'num_test_examples': 300}
  fid_metrics = {'num_samples': 50, 'joint_fid': 150.0}
  for i, tag in enumerate(tags):
    coherence[tag] = {'cross_coherence': 0.5 + 0.1 * i}
    fid_metrics[tag] = {'cross_fid': 200.0 - 10 * i}
  metrics = {'model': model, 'step': step, 'coherence': coherence,
             'fid': fid_metrics if fid else None}
  os.makedirs(os.path.join(workdir, 'eval'))
  with open(os.path.join(workdir, 'eval', 'metrics.json'), 'w') as f:
    json.dump(metrics, f)
  return str(workdir)


def test_rows_carry_our_numbers_and_the_papers(tmp_path):
  plus = write_metrics(tmp_path / 'plus', 'mmvaeplus', ['q'])
  ebm = write_metrics(tmp_path / 'ebm', 'moe_ebm', ['pre_ld', 'post_ld'], joint=0.125)
  mvae = write_metrics(tmp_path / 'mvae', 'mvae', ['q'], fid=False)
  rows = comparison.collect([plus, ebm, mvae])
  assert [r.label for r in rows] == ['mmvaeplus', 'moe_ebm pre-LD', 'moe_ebm post-LD', 'mvae']
  plus_row, pre, post, mvae_row = rows
  assert plus_row.ours == {'joint_coherence': 0.25, 'cross_coherence': 0.5, 'joint_fid': 150.0,
                           'cross_fid': 200.0}
  assert plus_row.paper == {'joint_coherence': 0.344, 'cross_coherence': 0.869,
                            'joint_fid': 96.01, 'cross_fid': 92.81}
  # Joint numbers belong to the post-LD row of MOE-EBM (as in the paper), not to pre-LD.
  assert pre.ours['joint_coherence'] is None and pre.ours['joint_fid'] is None
  assert pre.ours['cross_coherence'] == 0.5 and pre.paper['cross_coherence'] == 0.885
  assert post.ours['joint_coherence'] == 0.125 and post.ours['cross_fid'] == 190.0
  assert post.paper_name == 'MOE-EBM post-LD' and post.paper['joint_coherence'] == 0.574
  assert mvae_row.paper_name is None and mvae_row.ours['cross_fid'] is None
  assert 'no FID' in mvae_row.counts and 'FID N=50' in plus_row.counts

  table = comparison.markdown_table(rows).splitlines()
  assert table[0].startswith('| run | system | step | joint coh. (paper) | cross coh. (paper)')
  assert f'| {plus} | mmvaeplus ~ MMVAE+ | 100 | 0.250 (0.344) | 0.500 (0.869) | 150.00 (96.01) ' \
         f'| 200.00 (92.81) |' in table[2]
  assert '| - (-) | 0.500 (0.885) | - (-) | 200.00 (94.72) |' in table[3]
  assert 'mvae (not in the paper)' in table[5] and '| - (-) |' in table[5]


def test_ablation_rows_carry_the_joint_numbers_on_pre_ld(tmp_path):
  run = write_metrics(tmp_path / 'abl', 'ebm_mmvae', ['pre_ld', 'post_ld'], joint=0.3)
  pre, post = comparison.collect([run])
  assert pre.paper_name == 'EBM-MMVAE' and pre.ours['joint_coherence'] == 0.3
  assert post.paper_name is None and post.ours['joint_coherence'] is None


def test_unevaluated_or_broken_runs_are_clear_errors(tmp_path):
  with pytest.raises(comparison.CompareError, match='--mode=eval'):
    comparison.collect([str(tmp_path / 'never_evaluated')])
  with pytest.raises(comparison.CompareError, match='pass --workdir'):
    comparison.collect([])
  broken = tmp_path / 'broken'
  os.makedirs(broken / 'eval')
  (broken / 'eval' / 'metrics.json').write_text('{"model": "mmvaeplus"')
  with pytest.raises(comparison.CompareError, match='unreadable'):
    comparison.collect([str(broken)])
  (broken / 'eval' / 'metrics.json').write_text('{"model": "mmvaeplus", "step": 3}')
  with pytest.raises(comparison.CompareError, match="no 'coherence'"):
    comparison.collect([str(broken)])


def run_main(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_main_compare_writes_table_json_and_plot(tmp_path):
  pytest.importorskip('matplotlib')
  plus = write_metrics(tmp_path / 'plus', 'mmvaeplus', ['q'])
  ebm = write_metrics(tmp_path / 'ebm', 'moe_ebm', ['pre_ld', 'post_ld'])
  out = tmp_path / 'cmp'
  result = run_main('--mode=compare', f'--workdir={plus}', f'--workdir={ebm}',
                    f'--compare_dir={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'mmvaeplus ~ MMVAE+' in result.stdout
  text = (out / 'comparison.md').read_text()
  assert 'moe_ebm post-LD ~ MOE-EBM post-LD' in text and '![comparison](comparison.png)' in text
  records = json.loads((out / 'comparison.json').read_text())
  assert [r['label'] for r in records] == ['mmvaeplus', 'moe_ebm pre-LD', 'moe_ebm post-LD']
  png = (out / 'comparison.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000


@pytest.mark.slow
def test_main_rejects_missing_runs_and_several_workdirs_for_train(tmp_path):
  result = run_main('--mode=compare', f'--workdir={tmp_path / "nothing"}',
                    f'--compare_dir={tmp_path / "cmp"}')
  assert result.returncode != 0 and '--mode=eval' in result.stderr
  assert 'Traceback' not in result.stderr  # The reason alone, as for any bad input.
  assert not os.path.exists(tmp_path / 'cmp')  # Nothing written before every run was read.
  result = run_main('--config=configs/smoke.py:mmvaeplus', f'--workdir={tmp_path / "a"}',
                    f'--workdir={tmp_path / "b"}')
  assert result.returncode != 0 and 'exactly one --workdir' in result.stderr
  result = run_main(f'--workdir={tmp_path / "a"}')
  assert result.returncode != 0 and '--config is required' in result.stderr


def _seeded_run(path, model, seed, *, cross, joint, subsets, lr=3e-3, **more):
  """An evaluated run with a config.json that differs from its siblings' only by `seed` (and
  by the keys in `more`, added to its 'ebm' section)."""
  coherence = {'joint_coherence': joint, 'num_joint_samples': 500, 'num_test_examples': 300,
               'q': {'cross_coherence': cross, 'subset_coherence': subsets}}
  os.makedirs(os.path.join(path, 'eval'))
  with open(os.path.join(path, 'eval', 'metrics.json'), 'w') as f:
    json.dump({'model': model, 'step': 100, 'coherence': coherence, 'fid': None}, f)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump({'seed': seed, 'optim': {'learning_rate': lr}, 'model': {'name': model},
               'ebm': more}, f)
  return str(path)


def test_runs_differing_only_in_seed_are_grouped_with_mean_and_sample_std(tmp_path):
  a = _seeded_run(tmp_path / 'a', 'mmvaeplus', 0, cross=0.5, joint=0.2,
                  subsets={'1': 0.5, '2': 0.6})
  # A key the first run's version did not write yet does not separate the runs.
  b = _seeded_run(tmp_path / 'b', 'mmvaeplus', 1, cross=0.7, joint=0.3,
                  subsets={'1': 0.7, '2': 0.8}, energy_weight='beta')
  c = _seeded_run(tmp_path / 'c', 'mmvaeplus', 0, cross=0.9, joint=0.1,
                  subsets={'1': 0.9, '2': 0.9}, lr=1e-3)  # Another experiment.
  groups = comparison.seed_summary(comparison.collect([a, b, c]))
  assert [g.runs for g in groups] == [(a, b), (c,)]
  pair = groups[0]
  assert pair.mean('cross_coherence') == pytest.approx(0.6)
  # Two values 0.1 either side of the mean: sample std (n - 1) = 0.1 * sqrt(2).
  assert pair.spread('cross_coherence') == pytest.approx(0.1 * 2 ** 0.5)
  assert pair.mean('joint_coherence') == pytest.approx(0.25)
  assert pair.values['inputs=2'] == [0.6, 0.8]
  assert groups[1].spread('cross_coherence') == 0.0
  table = comparison.seed_table(groups)
  assert '0.600 +- 0.141 (0.500, 0.700)' in table
  result = comparison.compare([a, b, c], str(tmp_path / 'cmp'))
  assert len(result['seeds']) == 2 and list(result['seeds'][0]['runs']) == [a, b]
  assert '## Over seeds' in (tmp_path / 'cmp' / 'comparison.md').read_text()


def test_a_run_from_before_a_new_key_groups_with_that_keys_default(tmp_path):
  # The run without ebm.energy_weight (written before the key existed) behaved as the default
  # 'beta': it must group with the 'beta' run, never with the 'one' runs, whatever the order.
  old = _seeded_run(tmp_path / 'old', 'moe_ebm', 0, cross=0.5, joint=0.2, subsets={'1': 0.5})
  one0 = _seeded_run(tmp_path / 'one0', 'moe_ebm', 0, cross=0.6, joint=0.2, subsets={'1': 0.6},
                     energy_weight='one')
  beta = _seeded_run(tmp_path / 'beta', 'moe_ebm', 1, cross=0.7, joint=0.2, subsets={'1': 0.7},
                     energy_weight='beta')
  one1 = _seeded_run(tmp_path / 'one1', 'moe_ebm', 1, cross=0.8, joint=0.2, subsets={'1': 0.8},
                     energy_weight='one')
  for order in ([old, one0, beta, one1], [one0, old, one1, beta]):
    groups = comparison.seed_summary(comparison.collect(order))
    assert sorted(sorted(g.runs) for g in groups) == sorted([sorted([old, beta]),
                                                             sorted([one0, one1])])
  # The two groups of one system say what sets them apart.
  labels = {g.runs[0]: g.label for g in groups}
  assert labels[one0] == 'moe_ebm (ebm.energy_weight=one)'
  assert labels[old] == 'moe_ebm (ebm.energy_weight=beta)'
