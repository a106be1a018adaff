r"""Incomplete data (issue 48): coherence against the share of missing modalities, each model
trained on every example with masks ('masked') against on the complete examples only
('dropped', what a user would otherwise do), paired by seed.

  python experiments/incomplete_table.py --config=configs/synthetic_mixture.py \
      --models=mmvaeplus,mopoe,moe_ebm --seeds=0,1,2 --ratios=0,0.2,0.5,0.8 --out=/tmp/inc_mix
  python experiments/incomplete_table.py --config=configs/mnist_label.py --variant=mlp \
      --mnar='{"digit": [0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]}' --ratios= \
      --record=docs/results/incomplete_mnist.json --out=/tmp/inc_mnist

Each setting is one experiments/table.py folder, <out>/<setting>_<policy> (resumable, as
table.py), with data.missing_ratio (or data.missing_by_class, --mnar: missing not at random)
and data.incomplete_examples set; the ratio 0 is complete data, trained once. Runs go seed by
seed (seed 0 of every setting and model first), one table.py call each. Test data stays
complete (every model is scored on the same test set). Writes --record (default
<out>/incomplete.json: every run's numbers, after every run; a run it already holds is not
trained again, so a record kept in git carries a long table across machines that lose their
folders), <out>/incomplete.md (mean, sd and 95% t-interval over seeds per model, setting
and policy; then masked minus dropped, paired by seed; with --mnar, complete data against the
missing-not-at-random runs per group of classes the mask treats alike: cross coherence over
their test examples, their share of the agreeing joint samples) and <out>/incomplete.png
(coherence against the ratio: each seed a point, a line through the means).
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from moe_ebm_jax import log_setup
from moe_ebm_jax.evaluators import comparison

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string('config', None, 'Config file (its get_config takes the model).',
                              required=True)
_VARIANT = flags.DEFINE_string('variant', '', 'Appended to the config argument: <model>,<variant>.')
_MODELS = flags.DEFINE_list('models', ['mmvaeplus', 'mopoe', 'moe_ebm'], 'Models.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds.')
_RATIOS = flags.DEFINE_list('ratios', ['0', '0.2', '0.5', '0.8'],
                            'data.missing_ratio values (missing completely at random).')
_MNAR = flags.DEFINE_string('mnar', '', 'A data.missing_by_class dict as JSON: one more setting, '
                            'missing not at random.')
_POLICIES = flags.DEFINE_list('policies', ['masked', 'dropped'], 'data.incomplete_examples.')
_SET = flags.DEFINE_multi_string('set', [], 'key=value config overrides for every run.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.', required=True)
_RECORD = flags.DEFINE_string('record', '', 'The record of finished runs, read and rewritten '
                              '(default <out>/incomplete.json).')
_TABLES_ONLY = flags.DEFINE_bool('tables_only', False, 'Write the tables and figure of the '
                                 'record as it stands; train nothing.')


def settings(ratios, policies, mnar: str = '') -> list[tuple[str, str, list[str]]]:
  """(setting name, policy, table.py --set items) for every table folder."""
  out = []
  for ratio in ratios:
    if float(ratio) == 0:
      out.append(('r0', 'complete', []))
      continue
    for policy in policies:
      out.append((f'r{ratio}', policy,
                  [f'data.missing_ratio={ratio}', f'data.incomplete_examples={policy}']))
  if mnar:
    by_class = json.loads(mnar)
    for policy in policies:
      out.append(('mnar', policy, [f'data.missing_by_class={json.dumps(by_class)}',
                                   f'data.incomplete_examples={policy}']))
  return out


def tag_of(run: dict) -> str:
  """The coherence the model reports: post-LD where it refines its posterior, else q's."""
  c = run['coherence']
  return 'post_ld' if 'post_ld' in c else ('pre_ld' if 'pre_ld' in c else 'q')


METRICS = ('cross coherence', 'joint coherence')


def run_summary(run: dict) -> dict:
  """What the record keeps of one table.py run: seed, seconds, METRICS, per-class numbers and
  the linear probes' accuracy per source modality ({'pre_ld' | 'post_ld' | 'private': {name:
  accuracy}}; 'private': of the private latent w, absent for runs probed before it existed)."""
  c = run['coherence']
  probe = run.get('latent_probe') or {}
  return {'seed': run['seed'], 'seconds': round(run['seconds'], 1),
          'cross coherence': c[tag_of(run)]['cross_coherence'],
          'joint coherence': c.get('joint_coherence'),
          'cross coherence by class': c[tag_of(run)].get('cross_coherence_by_class'),
          'joint class share': c.get('joint_class_share'),
          'probe': {k: v['per_modality'] for k, v in probe.items() if isinstance(v, dict)}}


def pending(record: dict, setting_list, models, seeds) -> list[tuple[str, str, list[str], str,
                                                                     str]]:
  """(setting, policy, --set items, model, seed) of every run the record lacks, seed by seed.
  record['settings']: {'<setting>_<policy>': {model: [run_summary]}}."""
  done = {(key, model, run['seed']) for key, by_model in record.get('settings', {}).items()
          for model, runs in by_model.items() for run in runs}
  return [(name, policy, items, model, seed) for seed in seeds
          for name, policy, items in setting_list for model in models
          if (f'{name}_{policy}', model, int(seed)) not in done]


def load_record(path: str, experiment: dict) -> dict:
  """The record at path (a new one if absent), refused if it holds another experiment.
  experiment: {'config', 'variant', 'set'}; other keys of the file (notes) are kept."""
  if not os.path.exists(path):
    return {**experiment, 'settings': {}}
  with open(path) as f:
    record = json.load(f)
  theirs = {k: record.get(k) for k in experiment}
  if theirs != experiment:
    raise ValueError(f'{path} holds another experiment: {theirs}, not {experiment}')
  return record


def add_run(record: dict, key: str, model: str, summary: dict) -> None:
  """Puts a run_summary into record['settings'][key][model], in seed order."""
  runs = record['settings'].setdefault(key, {}).setdefault(model, [])
  runs[:] = sorted([r for r in runs if r['seed'] != summary['seed']] + [summary],
                   key=lambda r: r['seed'])


def class_groups(mnar: str) -> list[tuple[str, list[int]]]:
  """The classes that a --mnar dict treats alike, with a label: [(label, classes)], e.g.
  {"digit": [0.9, 0.9, 0.1]} -> [('digit missing 0.9', [0, 1]), ('digit missing 0.1', [2])]."""
  by_class = json.loads(mnar)
  names = sorted(by_class)
  groups: dict[tuple[float, ...], list[int]] = {}
  for c in range(len(by_class[names[0]])):
    groups.setdefault(tuple(by_class[n][c] for n in names), []).append(c)
  return [(', '.join(f'{n} missing {p:g}' for n, p in zip(names, key)), classes)
          for key, classes in groups.items()]


def group_metrics(run: dict, classes: list[int]) -> dict[str, float | None]:
  """One run's (run_summary's) numbers over a group of classes: mean cross coherence over the
  classes' test examples (None for a run evaluated before cross_coherence_by_class existed) and
  the share of the agreeing joint samples that agree on one of them."""
  by_class = run['cross coherence by class']
  shares = run['joint class share'] or []
  agreed = sum(shares)
  return {'cross': (float(np.mean([by_class[str(k)] for k in classes]))
                    if by_class and all(str(k) in by_class for k in classes) else None),
          'joint share': (sum(shares[k] for k in classes if k < len(shares)) / agreed
                          if agreed else None)}


def mnar_table(record: dict, models, groups) -> str:
  """Markdown: complete data against the missing-not-at-random runs, per group of classes the
  mask treats alike (class_groups): cross coherence over the group's test examples and the
  share of agreeing joint samples that show one of its classes, mean over seeds."""
  head = ' | '.join(f'cross coherence, classes {_span(classes)} ({label})'
                    for label, classes in groups)
  joint = ' | '.join(f'joint share, classes {_span(classes)}' for _, classes in groups)
  lines = [f'| model | setting | examples | seeds | {head} | {joint} |',
           '|---' * (4 + 2 * len(groups)) + '|']
  for model in models:
    for key in ('r0_complete', 'mnar_masked', 'mnar_dropped'):
      runs = record.get(key, {}).get(model, [])
      if not runs:
        continue
      name, policy = key.split('_')
      per_group = [[group_metrics(r, classes) for r in runs] for _, classes in groups]
      cells = [cell([g[metric] for g in group]) for metric in ('cross', 'joint share')
               for group in per_group]
      lines.append(f'| {model} | {name} | {policy} | {len(runs)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _span(classes: list[int]) -> str:
  """[0, 1, 2, 5] -> '0-2, 5'."""
  parts, i = [], 0
  while i < len(classes):
    j = i
    while j + 1 < len(classes) and classes[j + 1] == classes[j] + 1:
      j += 1
    parts.append(f'{classes[i]}' if i == j else f'{classes[i]}-{classes[j]}')
    i = j + 1
  return ', '.join(parts)


def cell(values: list[float]) -> str:
  if not values or any(v is None for v in values):
    return '-'
  mean, sd, lo, hi = comparison.interval(values)
  return f'{mean:.3f}, {sd:.3f} [{lo:.3f}, {hi:.3f}]' if len(values) > 1 else f'{mean:.3f}'


def tables(record: dict, models, setting_list) -> str:
  """Markdown: per model, setting and policy the metrics over seeds; then masked - dropped.
  record: {'<setting>_<policy>': {model: [run_summary]}}."""
  head = ' | '.join(f'{m}: mean, sd [95% interval]' for m in METRICS)
  lines = [f'| model | setting | examples | seeds | {head} |', '|---' * (4 + len(METRICS)) + '|']
  for model in models:
    for name, policy, _ in setting_list:
      runs = record.get(f'{name}_{policy}', {}).get(model, [])
      if runs:
        lines.append(f'| {model} | {name} | {policy} | {len(runs)} | ' + ' | '.join(
            cell([r[m] for r in runs]) for m in METRICS) + ' |')
  lines += ['', 'Masked minus dropped, paired by seed:', '',
            f'| model | setting | seeds | {head} |', '|---' * (3 + len(METRICS)) + '|']
  for model in models:
    for name in dict.fromkeys(n for n, p, _ in setting_list if p == 'masked'):
      masked = {r['seed']: r for r in record.get(f'{name}_masked', {}).get(model, [])}
      # (settings not run yet are absent from the record)
      dropped = {r['seed']: r for r in record.get(f'{name}_dropped', {}).get(model, [])}
      seeds = sorted(set(masked) & set(dropped))
      if seeds:
        lines.append(f'| {model} | {name} | {len(seeds)} | ' + ' | '.join(
            cell([masked[s][m] - dropped[s][m] for s in seeds]) for m in METRICS)
                     + ' |')
  return '\n'.join(lines)


PROBES = {'pre_ld': 'z', 'post_ld': 'z post-LD', 'private': 'w'}


def probe_table(record: dict, models, setting_list) -> str:
  """Markdown: the linear probes' accuracy (mean over the seeds that have it) per model, setting,
  policy, latent and source modality: where each model keeps the label."""
  runs_of = lambda model, name, policy: record.get(f'{name}_{policy}', {}).get(model, [])
  columns = sorted({(kind, m) for model in models for name, policy, _ in setting_list
                    for r in runs_of(model, name, policy)
                    for kind, per in (r.get('probe') or {}).items() for m in per},
                   key=lambda c: (list(PROBES).index(c[0]), c[1]))
  if not columns:
    return ''
  lines = ['| model | setting | examples | ' + ' | '.join(
      f'{PROBES[kind]} from {m}' for kind, m in columns) + ' |', '|---' * (3 + len(columns)) + '|']
  for model in models:
    for name, policy, _ in setting_list:
      runs = [r for r in runs_of(model, name, policy) if r.get('probe')]
      if runs:
        lines.append(f'| {model} | {name} | {policy} | ' + ' | '.join(
            cell([r['probe'][k][m] for r in runs if m in r['probe'].get(k, {})] or [None])
            for k, m in columns) + ' |')
  return '\n'.join(lines)


def plot(record: dict, models, ratios, path: str, title: str) -> None:
  """Cross and joint coherence against the missing ratio: one panel per metric, a line per
  model and policy through the means over seeds, each seed a point of its own.

  Seeds are drawn rather than interval bars: with 2-3 seeds a t-interval spans more than the
  [0, 1] a coherence lives in and hides what the seeds did.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4), squeeze=False)
  lines = [(model, policy) for model in models for policy in ('masked', 'dropped')]
  step = min(np.diff(sorted(float(r) for r in ratios)), default=1.0)

  def shift(j):  # Line j's points sit a little apart from the other lines'.
    return (j - (len(lines) - 1) / 2) * 0.12 * step / len(lines)

  for ax, metric in zip(axes[0], METRICS):
    for i, (model, policy) in enumerate(lines):
      color, style = f'C{models.index(model)}', '-' if policy == 'masked' else '--'
      xs, means = [], []
      for ratio in ratios:
        key = 'r0_complete' if float(ratio) == 0 else f'r{ratio}_{policy}'
        values = [r[metric] for r in record.get(key, {}).get(model, [])]
        if values and None not in values:
          complete = float(ratio) == 0  # Both policies' lines start from the same runs.
          x = float(ratio) + shift(i - (policy == 'dropped' and complete))
          xs.append(x), means.append(float(np.mean(values)))
          if not (complete and policy == 'dropped'):
            ax.scatter([x] * len(values), values, s=12, color=color, alpha=0.6,
                       marker='o' if policy == 'masked' else 'x')
      if xs:
        ax.plot(xs, means, linestyle=style, color=color, label=f'{model}, {policy}')
    ax.set_xlabel('missing ratio (each modality but the first)')
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.suptitle(f'{title}\n(test data complete; lines: mean over seeds, points: seeds)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_tables(summaries: dict, setting_list, out: str, title: str) -> str:
  """<out>/incomplete.md and incomplete.png from the record's settings; returns the markdown."""
  text = tables(summaries, _MODELS.value, setting_list)
  if _MNAR.value:
    text += ('\n\nMissing not at random, by the classes the mask treats alike (joint share: '
             'of the agreeing joint samples, the share on those classes):\n\n' +
             mnar_table(summaries, _MODELS.value, class_groups(_MNAR.value)))
  probes = probe_table(summaries, _MODELS.value, setting_list)
  if probes:
    text += ('\n\nLinear probe of the label from one modality\'s latent (test accuracy; z: the '
             'shared latent, w: the private one), mean over the seeds probed:\n\n' + probes)
  with open(os.path.join(out, 'incomplete.md'), 'w') as f:
    f.write(text + '\n')
  plot(summaries, _MODELS.value, _RATIOS.value, os.path.join(out, 'incomplete.png'), title)
  return text


def main(argv):
  del argv
  log_setup.setup(debug=False)
  os.makedirs(_OUT.value, exist_ok=True)
  record_path = _RECORD.value or os.path.join(_OUT.value, 'incomplete.json')
  experiment = {'config': _CONFIG.value, 'variant': _VARIANT.value, 'set': _SET.value}
  try:
    record = load_record(record_path, experiment)
  except ValueError as e:
    raise SystemExit(str(e)) from None
  setting_list = settings(_RATIOS.value, _POLICIES.value, _MNAR.value)
  title = f'Incomplete training data: {os.path.basename(_CONFIG.value)} {_VARIANT.value}'
  todo = pending(record, setting_list, _MODELS.value, _SEEDS.value)
  logging.info('%d runs to train (the record holds the others)%s', len(todo),
               '; --tables_only: none trained' if _TABLES_ONLY.value else '')
  if _TABLES_ONLY.value:
    todo = []
  text = write_tables(record['settings'], setting_list, _OUT.value, title)
  for step, (name, policy, items, model, seed) in enumerate(todo, 1):
    folder = os.path.join(_OUT.value, f'{name}_{policy}')
    cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'table.py'),
           f'--config={_CONFIG.value}', f'--variant={_VARIANT.value}', f'--models={model}',
           f'--seeds={seed}', f'--out={folder}', *[f'--set={s}' for s in _SET.value + items]]
    logging.info('%d/%d %s_%s: %s', step, len(todo), name, policy, ' '.join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    if proc.returncode:
      raise SystemExit(f'{name}_{policy} failed: see {folder}/*.log')
    with open(os.path.join(folder, 'results.json')) as f:
      run = json.load(f)[f'{model}_s{seed}']
    # Read again: notes edited, or runs added by another call, while this run trained are kept.
    record = load_record(record_path, experiment)
    add_run(record, f'{name}_{policy}', model, run_summary(run))
    with open(record_path, 'w') as f:  # After every run: a stop loses at most the one running.
      json.dump(record, f, indent=1)
    text = write_tables(record['settings'], setting_list, _OUT.value, title)
  print(text)


if __name__ == '__main__':
  app.run(main)
