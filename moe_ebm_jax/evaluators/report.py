"""report.md: the evaluation's numbers (metrics.json) in the layout of the paper's Table 1, with
the coherence classifiers' quality, what the FID numbers are, and the figures."""

from __future__ import annotations

import os
from typing import Any

from moe_ebm_jax import workdir
from moe_ebm_jax.evaluators.fid import MIN_RANKING_FID_SAMPLES
from moe_ebm_jax.evaluators.fid import PAPER_FID_SAMPLES
from moe_ebm_jax.generation import LdMode


def summary(metrics: dict[str, Any]) -> str:
  """One line of the headline numbers: joint coherence, cross coherence per mode, joint FID."""
  c = metrics['coherence']
  cross = ', '.join(f"{c[mode.value]['cross_coherence']:.3f}{mode.label}"
                    for mode in LdMode.present(c))
  fid = metrics.get('fid')
  return (f"joint coherence {c['joint_coherence']:.3f}, cross coherence {cross}" +
          (f", joint FID {fid['joint_fid']:.2f} (N={fid['num_samples']})" if fid else ''))


def write_report(out_dir: str, metrics: dict[str, Any], figures: dict[str, str]) -> None:
  """metrics.json and a Markdown report with the table in the layout of the paper's Table 1."""
  workdir.write_metrics(out_dir, metrics)
  c = metrics['coherence']
  modes = LdMode.present(c)
  tags = [mode.value for mode in modes]
  m = len(c[tags[0]]['cross_coherence_matrix'])
  names = metrics.get('modalities') or [f'm{i}' for i in range(m)]  # Older metrics: none kept.
  fid_metrics = metrics.get('fid')
  fmt = lambda v, spec: 'n/a' if v is None else format(v, spec)
  lines = [f"# Evaluation of {metrics['model']} at step {metrics['step']}", '']
  if metrics.get('failed'):
    lines += [f"**This evaluation stopped part way** ({metrics['failed']}): the numbers below "
              'are all it computed; the figures are missing.', '']
  lines += [f"Coherence: {c['num_test_examples']} test examples (cross); "
            f"{c.get('num_joint_samples', 0)} joint samples.  ",
            _classifier_line(metrics['classifiers'], names)]
  if metrics.get('prior'):  # Absent in reports written before it existed.
    lines += ['', f"Joint generation: {metrics['prior']}, each w_m ~ p(w)."]
  weak = metrics.get('weak_scorers') or {}
  if weak.get('accuracies'):
    lines += ['', '**Coherence read through weak classifiers**: ' + ', '.join(
        f'{n} (test accuracy {a:.3f})' for n, a in weak['accuracies'].items()) +
              f", under {weak['threshold']} (eval.min_scorer_accuracy): the coherence numbers "
              'that involve them say as much about the classifier as about the model. A better '
              'reader: modalities.register_coherence (docs/usage.md).']
  lines += ['', *_fid_note(metrics, tags)]
  n_fid = fid_metrics['num_samples'] if fid_metrics else 0
  # Labelled where the numbers are, so that a copied table keeps its warning.
  biased = (f' (N = {n_fid:,} < {MIN_RANKING_FID_SAMPLES:,}: biased, does not rank models)'
            if 0 < n_fid < MIN_RANKING_FID_SAMPLES else '')
  no_fid = 'not computed'
  lines += ['', f'| model | joint coherence | cross coherence | joint FID{biased} | '
                f'cross FID{biased} |', '|---|---|---|---|---|']
  for mode in modes:
    tag = mode.value
    name = metrics['model'] + mode.label
    joint_row = mode is not LdMode.PRE_LD  # Joint generation does not use the posterior.
    joint_coh = c['joint_coherence'] if joint_row else None
    if fid_metrics:
      joint_fid = fmt(fid_metrics['joint_fid'] if joint_row else None, '.2f')
      cross_fid = fmt(fid_metrics[tag]['cross_fid'], '.2f')
    else:
      joint_fid, cross_fid = (no_fid if joint_row else 'n/a'), no_fid
    lines.append(f"| {name} | {fmt(joint_coh, '.3f')} | {c[tag]['cross_coherence']:.3f} | "
                 f"{joint_fid} | {cross_fid} |")
  if c.get('joint_class_share'):  # Absent in reports written before it existed.
    lines += ['', 'Joint samples whose modalities agree, by the class they agree on (fractions of '
                  'all joint samples; they sum to the joint coherence): ' +
              ', '.join(f'{k}: {v:.3f}' for k, v in enumerate(c['joint_class_share'])) + '.']
  for tag in tags:
    by_class = c[tag].get('cross_coherence_by_class')  # Absent before it existed.
    if by_class:
      lines += ['', f'Cross coherence by the test examples\' class ({tag}): ' +
                ', '.join(f'{k}: {v:.3f}' for k, v in by_class.items()) + '.']
  lines += ['', 'Conditional coherence per number of observed modalities (MoPoE protocol):', '']
  lines += ['| inputs | ' + ' | '.join(tags) + ' |', '|---' * (len(tags) + 1) + '|']
  sizes = list(c[tags[0]]['subset_coherence'])
  for size in sizes:
    lines.append(f'| {size} | ' + ' | '.join(f"{c[t]['subset_coherence'][size]:.3f}"
                                              for t in tags) + ' |')
  lines += ['', 'Cross coherence per source (rows) and target (columns):', '']
  for tag in tags:
    lines += [f'{tag}:', '', _matrix_table(c[tag]['cross_coherence_matrix'], '.3f', True, names),
              '']
  if fid_metrics:
    lines += [f'Joint FID per modality{biased}: ' + ', '.join(
        f'{names[i]} {v:.2f}' for i, v in enumerate(fid_metrics['joint_fid_per_modality'])) + '.',
              '',
              'Cross FID per source (rows) and target (columns), self-reconstruction on the '
              f'diagonal{biased}:', '']
    for tag in tags:
      lines += [f'{tag}:', '', _matrix_table(fid_metrics[tag]['cross_fid_matrix'], '.2f', False,
                                             names), '']
  captions = {'joint': 'Joint samples (rows: samples; columns: modalities).',
              'pre_post_ld': 'From the first modality: source, pre-LD decodes, post-LD decodes.',
              'prior_trajectory': 'Prior Langevin chains (rows), modality 0 along the chain.'}
  for name, file in figures.items():
    if name.startswith('scatter_'):
      captions[name] = (f'{name[8:]}: test data and joint samples (coloured by the class their '
                        'decodes are read as).')
    caption = captions.get(name, f'Cross generation from {name.rsplit("_", 1)[-1]} (rows: test '
                                 'examples): the source, then every modality.')
    lines += [f'{caption}', '', f'![{name}]({file})', '']
  lines.append(f"Evaluation took {metrics['eval_seconds']:.0f} s.")
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _classifier_line(classifiers: dict[str, Any], names) -> str:
  """The coherence classifiers' test accuracy per modality: coherence is only as good as they."""
  readings = classifiers.get('readings')
  if readings:  # coherence_scorers: how each modality is read.
    return 'Coherence reads ' + '; '.join(
        f'{name}: ' + (r if isinstance(r, str) else
                       f"{r['classifier']} classifier, test accuracy {r['test_accuracy']:.4f}")
        for name, r in readings.items()) + '.'
  accuracies = classifiers.get('accuracies')
  if not accuracies:
    return (f"Coherence classifiers: {classifiers.get('description', 'injected by the caller')}"
            ' (no test accuracies recorded).')
  architecture = classifiers.get('architecture')
  return ('Coherence classifiers' + (f' ({architecture})' if architecture else '') +
          ', test accuracy per modality: ' +
          ', '.join(f'{names[i]} {a:.4f}' for i, a in enumerate(accuracies)) + '.')


def _fid_note(metrics: dict[str, Any], tags: list[str]) -> list[str]:
  """What the FID numbers are (or why there are none), for a reader of the report."""
  fid_metrics = metrics.get('fid')
  why = (f'FID compares Gaussians fitted to the {MIN_RANKING_FID_SAMPLES:,}-d Inception pool3 '
         f'features, so from fewer than ~{MIN_RANKING_FID_SAMPLES:,} samples per set their '
         'covariance is rank-deficient and FID is biased upwards by an amount that depends on '
         f'the model: such numbers do not rank models (the paper uses N = '
         f'{PAPER_FID_SAMPLES:,}).')
  again = (f'`--mode=eval --config.eval.num_fid_samples={PAPER_FID_SAMPLES}` on this workdir, '
           f'on an accelerator (configs/polymnist.py keeps N = {PAPER_FID_SAMPLES:,})')
  if not fid_metrics:
    m = len(metrics['coherence'][tags[0]]['cross_coherence_matrix'])
    ld = 2 if LdMode.POST_LD.value in tags else 1
    sets = m * (1 + m * ld)
    images = (sets + m) * PAPER_FID_SAMPLES  # Generated sets, then the test reference once.
    cross = f'{m * m} (source, target) sets' + (', pre- and post-LD' if ld == 2 else '')
    return [
        '**FID: not computed** (eval.num_fid_samples = 0). ' + why + ' The standard FID network '
        f'runs at ~4-8 images/s on a 2-core CPU, and N = {PAPER_FID_SAMPLES:,} per set over this '
        f'model\'s {sets} sets (joint: {m} modalities; cross: {cross}) plus the reference '
        f'statistics of {m} x {PAPER_FID_SAMPLES:,} test images is {images:,} images, '
        f'~{images / 8 / 3600:.0f}-{images / 4 / 3600:.0f} hours there. Run FID with ' + again +
        '.']
  n = fid_metrics['num_samples']
  head = (f"FID ({metrics.get('fid_network', 'unknown network')}): {n:,} generated vs {n:,} test "
          'images per modality and set')
  if n < MIN_RANKING_FID_SAMPLES:
    return [f'{head}. **N = {n:,} < {MIN_RANKING_FID_SAMPLES:,}: biased, does not rank models**: '
            'the FID numbers below are diagnostics, not results. ' + why + ' For results, '
            'run ' + again + '.']
  if n < PAPER_FID_SAMPLES:
    return [f'{head} (the paper: {PAPER_FID_SAMPLES:,}). FID falls as N grows: compare runs at '
            'the same N.']
  return [f'{head}, as the paper.']


def _matrix_table(matrix, spec: str, blank_diagonal: bool, names) -> str:
  m = len(matrix)
  rows = ['| source | ' + ' | '.join(names) + ' |', '|---' * (m + 1) + '|']
  for s in range(m):
    cells = ['-' if blank_diagonal and s == d else format(matrix[s][d], spec) for d in range(m)]
    rows.append(f'| {names[s]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows)
