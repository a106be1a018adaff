"""Comparison of evaluated runs: one table in the layout of the paper's Table 1, and a plot.

Reads <workdir>/eval/metrics.json of each run (written by `main.py --mode=eval`) and puts every
row (MOE-EBM contributes a pre-LD and a post-LD row) next to the paper's figure for the same
system. The paper's numbers are PolyMNIST with 10,000 samples per FID set; ours carry their own
counts, so the table states them per row.

  python main.py --mode=compare --workdir=W1 --workdir=W2 --compare_dir=OUT
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from typing import Any, Sequence

from moe_ebm_jax import config_lib
from moe_ebm_jax.evaluators import coherence
from moe_ebm_jax.generation import LdMode

# The paper's Table 1 (docs/method.md, section 2): (joint coherence, cross coherence,
# joint FID, cross FID); None where the paper has no number. Rows marked * there were copied from
# the MMVAE+ paper.
PAPER_TABLE = {
    'MMVAE': (0.232, 0.844, 164.71, 150.83),
    'mmJSD': (0.060, 0.778, 180.55, 222.09),
    'MoPoE': (0.141, 0.720, 107.11, 178.27),
    'MMVAE+': (0.344, 0.869, 96.01, 92.81),
    'EBM-MMVAE': (0.340, 0.856, 129.66, 152.01),
    'EBM-MMVAE+': (0.531, 0.877, 100.65, 95.37),
    'MOE-EBM pre-LD': (None, 0.885, None, 94.72),
    'MOE-EBM post-LD': (0.574, 0.943, 98.23, 90.32),
}

# (our model name, metrics tag) -> the paper's row. MVAE is not in the paper's table.
PAPER_ROW = {
    ('mmvae', 'q'): 'MMVAE',
    ('mmjsd', 'q'): 'mmJSD',
    ('mopoe', 'q'): 'MoPoE',
    ('mmvaeplus', 'q'): 'MMVAE+',
    ('ebm_mmvae', 'pre_ld'): 'EBM-MMVAE',
    ('ebm_mmvaeplus', 'pre_ld'): 'EBM-MMVAE+',
    ('moe_ebm', 'pre_ld'): 'MOE-EBM pre-LD',
    ('moe_ebm', 'post_ld'): 'MOE-EBM post-LD',
}

# Which row of a run carries the joint numbers (they do not depend on the posterior mode): the
# row the paper reports them in. Default 'q'.
JOINT_ROW_TAG = {'moe_ebm': 'post_ld', 'ebm_mmvae': 'pre_ld', 'ebm_mmvaeplus': 'pre_ld'}

METRICS = ('joint_coherence', 'cross_coherence', 'joint_fid', 'cross_fid')


class CompareError(ValueError):
  """A run that cannot be compared (no evaluation, unreadable or incomplete metrics)."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One system of one run: our numbers (None where not measured) and the paper's."""
  run: str  # The workdir as given.
  model: str  # config model name, e.g. 'moe_ebm'.
  tag: str  # 'q', 'pre_ld' or 'post_ld'.
  step: int
  ours: dict[str, float | None]
  paper_name: str | None
  paper: dict[str, float | None]
  counts: str  # Sample counts behind our numbers.
  # Coherence per number of observed modalities (MoPoE protocol): {'1': .., ..}; {} if absent.
  subsets: dict[str, float] = dataclasses.field(default_factory=dict)
  # The run's config.json flattened ('model.name': ...), without the training seed: runs that
  # agree on it repeat one experiment (seed_summary). {} if the run has no config.json.
  config: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def label(self) -> str:
    return self.model + LdMode(self.tag).label


def load_metrics(workdir: str) -> dict[str, Any]:
  """<workdir>/eval/metrics.json, or a CompareError that says how to make it."""
  path = os.path.join(workdir, 'eval', 'metrics.json')
  if not os.path.exists(path):
    raise CompareError(f'{path} does not exist: evaluate the run first '
                       f'(python main.py --config=... --workdir={workdir} --mode=eval).')
  try:
    with open(path) as f:
      metrics = json.load(f)
  except (OSError, ValueError) as e:
    raise CompareError(f'{path} is unreadable: {e}') from e
  for key in ('model', 'step', 'coherence'):
    if not isinstance(metrics, dict) or key not in metrics:
      raise CompareError(f'{path} has no {key!r}: not written by --mode=eval of this version.')
  return metrics


def rows_of_run(workdir: str, metrics: dict[str, Any]) -> list[Row]:
  """The table rows of one evaluated run: one per posterior mode (q, or pre- and post-LD)."""
  c = metrics['coherence']
  fid = metrics.get('fid') or None
  tags = [mode.value for mode in LdMode.present(c)]
  if not tags:
    raise CompareError(f'{workdir}: metrics.json has no cross coherence (q, pre_ld or post_ld).')
  counts = f"cross {c['num_test_examples']} test, joint {c['num_joint_samples']}"
  counts += f", FID N={fid['num_samples']}" if fid else ', no FID'
  rows = []
  joint_tag = JOINT_ROW_TAG.get(metrics['model'], 'q')
  for tag in tags:
    joint_row = tag == joint_tag
    ours = {
        'joint_coherence': c['joint_coherence'] if joint_row else None,
        'cross_coherence': c[tag]['cross_coherence'],
        'joint_fid': fid['joint_fid'] if fid and joint_row else None,
        'cross_fid': fid[tag]['cross_fid'] if fid else None,
    }
    paper_name = PAPER_ROW.get((metrics['model'], tag))
    paper_values = PAPER_TABLE[paper_name] if paper_name else (None,) * len(METRICS)
    rows.append(Row(run=workdir, model=metrics['model'], tag=tag, step=int(metrics['step']),
                    ours=ours, paper_name=paper_name, paper=dict(zip(METRICS, paper_values)),
                    counts=counts, subsets=dict(c[tag].get('subset_coherence', {})),
                    config=_config_without_seed(workdir)))
  return rows


def _flat(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
  return out


def _config_without_seed(workdir: str) -> dict[str, Any]:
  """<workdir>/config.json flattened to dotted keys, without the training seed ({} if absent).

  A key the run's version did not write yet (a field added later) takes this version's default
  for the run's model, the behaviour that version had: so a run from before `ebm.energy_weight`
  groups with 'beta' runs and not with 'one' runs.
  """
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      config = _flat(json.load(f))
  except (OSError, ValueError):
    return {}
  if config.get('model.name') in config_lib.model_names():
    defaults = _flat(config_lib.base_config(config['model.name']).to_dict())
    config = {**{k: v for k, v in defaults.items() if isinstance(v, (str, int, float, bool))},
              **config}
  config.pop('seed', None)
  return config


def _same_experiment(a: dict[str, Any], b: dict[str, Any]) -> bool:
  """Equal configs but for the seed. A key only one of them has (not a config key of this
  version, e.g. one a later version removed) does not separate them."""
  if not a or not b:
    return a == b
  return all(a[k] == b[k] for k in a.keys() & b.keys())


@dataclasses.dataclass(frozen=True)
class SeedGroup:
  """One system over runs that differ only in the training seed (same step and counts)."""
  label: str
  step: int
  runs: tuple[str, ...]
  values: dict[str, list[float]]  # metric (or 'inputs=k') -> one value per run.

  def mean(self, metric: str) -> float:
    return statistics.fmean(self.values[metric])

  def spread(self, metric: str) -> float:
    """Sample standard deviation over runs (n - 1); 0 for one run."""
    v = self.values[metric]
    return statistics.stdev(v) if len(v) > 1 else 0.0


def seed_summary(rows: Sequence[Row]) -> list[SeedGroup]:
  """Rows grouped by system, step, counts and config except the seed, in first-seen order."""
  groups: list[list[Row]] = []
  for r in rows:
    for members in groups:
      first = members[0]
      if ((first.label, first.step, first.counts) == (r.label, r.step, r.counts) and
          all(_same_experiment(m.config, r.config) for m in members)):
        members.append(r)
        break
    else:
      groups.append([r])
  out = []
  for members in groups:
    label, step = members[0].label, members[0].step
    label += _what_differs(members[0], [g[0] for g in groups if g is not members])
    values = {}
    for metric in ('joint_coherence', 'cross_coherence'):
      if all(r.ours[metric] is not None for r in members):
        values[metric] = [r.ours[metric] for r in members]
    for k in sorted(set.intersection(*(set(r.subsets) for r in members)), key=int):
      values[f'inputs={k}'] = [r.subsets[k] for r in members]
    out.append(SeedGroup(label=label, step=step, runs=tuple(r.run for r in members),
                         values=values))
  return out


# Two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond 30).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
  return T975.get(df) or (T975[max(k for k in T975 if k <= df)] if df < 30 else 1.96)


def interval(values: Sequence[float]) -> tuple[float, float, float, float]:
  """(mean, sample sd, low, high) of the 95% t-interval of the mean; sd and width 0 for one."""
  mean = statistics.fmean(values)
  if len(values) < 2:
    return mean, 0.0, mean, mean
  sd = statistics.stdev(values)
  half = t975(len(values) - 1) * sd / math.sqrt(len(values))
  return mean, sd, mean - half, mean + half


# results_table's rows: (name, (run, coherence tag) -> value or None).
RESULT_ROWS = (
    ('joint coherence', lambda r, tag: r['coherence'].get('joint_coherence')),
    ('joint class balance', lambda r, tag: coherence.class_balance(
        r['coherence'].get('joint_class_share'), r.get('num_classes', 0))),
    ('cross coherence', lambda r, tag: r['coherence'][tag]['cross_coherence']),
    ('latent accuracy', lambda r, tag: r['latent_probe'][
        'post_ld' if tag == 'post_ld' else 'pre_ld']['mean']))


def directed_rows(names: list[str]) -> tuple:
  """Cross coherence each way, from the [source][target] matrix: for two modalities only (more
  would be M (M - 1) columns)."""
  if len(names) != 2:
    return ()
  cell = lambda s, t: lambda r, tag: r['coherence'][tag]['cross_coherence_matrix'][s][t]
  return ((f'cross {names[0]} -> {names[1]}', cell(0, 1)),
          (f'cross {names[1]} -> {names[0]}', cell(1, 0)))


def check_table_folder(results: dict, config_file: str, variant: str, overrides: dict) -> None:
  """Raises ValueError if any run in results.json was made with another config file or variant
  or other --set overrides than this call's (every run of a table folder shares them): tabling
  or resuming it beside this call's runs would mix two experiments. num_train_steps may differ
  (a longer one extends a run). Entries written before the config argument was kept
  ('config' missing) are checked on their overrides only.

  results: {run name: {'model', 'config' ('file:model[,variant]'), 'overrides' {key: text}}}.
  """
  strip = lambda o: {k: config_lib.parse_override_value(str(v)) for k, v in o.items()
                     if k != 'num_train_steps'}
  for name, entry in sorted(results.items()):
    expected = f'{config_file}:{entry["model"]}' + (f',{variant}' if variant else '')
    problems = []
    if entry.get('config', expected) != expected:
      problems.append(f'config {entry["config"]!r} there, {expected!r} now')
    if strip(entry.get('overrides', {})) != strip(overrides):
      problems.append(f'--set {entry.get("overrides", {})} there, {overrides} now '
                      '(num_train_steps aside)')
    if problems:
      raise ValueError(f'{name} in results.json is another experiment: ' + '; '.join(problems) +
                       '. Use another --out, or the same arguments as that table.')


def results_table(results: dict, models: list[str]) -> str:
  """experiments/table.py's table: per model (and per pre-/post-LD tag) the mean, sample sd and
  95% t-interval over its runs of every row (a model with one run: its value alone).
  results: {run name: {'model', 'coherence', 'latent_probe', 'num_classes', 'modalities'}} as
  table.py writes them."""
  names = next((r['modalities'] for r in results.values() if 'modalities' in r), [])
  rows = RESULT_ROWS + directed_rows(names)
  lines = ['| model | runs | ' + ' | '.join(
      f'{name}: mean, sd [95% interval]' for name, _ in rows) + ' |',
           '|---' * (len(rows) + 2) + '|']
  for model in models:
    runs = [r for r in results.values() if r['model'] == model]
    if not runs:
      continue
    # The coherence tags the runs were evaluated with: 'q', or 'pre_ld' (and 'post_ld').
    for tag in [mode.value for mode in LdMode.present(runs[0]['coherence'])]:
      cells = []
      for _, get in rows:
        values = [get(r, tag) for r in runs]
        if any(v is None for v in values):
          cells.append('-')
          continue
        mean, sd, lo, hi = interval(values)
        # One run has no spread: its value alone, not an sd of 0 that reads as certainty.
        cells.append(f'{mean:.3f}, {sd:.3f} [{lo:.3f}, {hi:.3f}]' if len(values) > 1
                     else f'{mean:.3f}')
      label = model + LdMode(tag).label
      lines.append(f'| {label} | {len(runs)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def paired_table(results: dict, models: list[str], baseline: str) -> str:
  """Each model (and pre-/post-LD tag) minus `baseline` at the same training seed: per row the
  mean, sample sd and 95% t-interval of the per-seed differences, and on how many seeds the
  model is higher. Pairing removes what a seed does to both (data order, initialisation), so
  the interval is narrower than the difference of two unpaired ones when seeds agree.
  results: as for results_table, each run with its 'seed'. Empty when `baseline` has no runs.
  """
  base = {r['seed']: r for r in results.values() if r['model'] == baseline}
  if not base:
    return ''
  names = next((r['modalities'] for r in results.values() if 'modalities' in r), [])
  rows = RESULT_ROWS + directed_rows(names)
  base_tag = next(t for t in ('q', 'pre_ld') if t in next(iter(base.values()))['coherence'])
  lines = [f'| minus {baseline}, same seed | seeds | ' + ' | '.join(
      f'{name}: mean, sd [95% interval], higher' for name, _ in rows) + ' |',
           '|---' * (len(rows) + 2) + '|']
  for model in models:
    runs = sorted((r for r in results.values()
                   if r['model'] == model and model != baseline and r['seed'] in base),
                  key=lambda r: r['seed'])
    if not runs:
      continue
    for tag in [mode.value for mode in LdMode.present(runs[0]['coherence'])]:
      cells = []
      for _, get in rows:
        pairs = [(get(r, tag), get(base[r['seed']], base_tag)) for r in runs]
        if any(a is None or b is None for a, b in pairs):
          cells.append('-')
          continue
        diffs = [a - b for a, b in pairs]
        mean, sd, lo, hi = interval(diffs)
        higher = f'{sum(d > 0 for d in diffs)}/{len(diffs)}'
        cells.append(f'{mean:+.3f}, {sd:.3f} [{lo:+.3f}, {hi:+.3f}], {higher}'
                     if len(diffs) > 1 else f'{mean:+.3f}, {higher}')
      label = model + LdMode(tag).label
      lines.append(f'| {label} | {len(runs)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _what_differs(row: Row, others: Sequence[Row], limit: int = 3) -> str:
  """' (key=value, ...)': the config keys in which `row` differs from another group of the
  same system and step, so that two such groups read apart; '' when no other group has them."""
  keys = sorted({k for o in others if (o.label, o.step) == (row.label, row.step)
                 for k in row.config.keys() & o.config.keys() if row.config[k] != o.config[k]})
  if not keys:
    return ''
  shown = ', '.join(f'{k}={row.config[k]}' for k in keys[:limit])
  return f' ({shown}{", ..." if len(keys) > limit else ""})'


def seed_table(groups: Sequence[SeedGroup]) -> str:
  """Mean +- sample std over seeds, and every run's value, per system and metric."""
  metrics = []
  for g in groups:
    metrics += [m for m in g.values if m not in metrics]
  lines = ['| system | step | runs | ' + ' | '.join(metrics) + ' |',
           '|---' * (3 + len(metrics)) + '|']
  for g in groups:
    cells = []
    for m in metrics:
      if m not in g.values:
        cells.append('-')
        continue
      each = ', '.join(f'{v:.3f}' for v in g.values[m])
      cells.append(f'{g.mean(m):.3f} +- {g.spread(m):.3f} ({each})' if len(g.runs) > 1
                   else f'{g.mean(m):.3f}')
    lines.append(f'| {g.label} | {g.step} | {len(g.runs)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def collect(workdirs: Sequence[str]) -> list[Row]:
  """Rows of every run, in the order given. Every run is read before anything is written."""
  if not workdirs:
    raise CompareError('no runs to compare: pass --workdir once per run.')
  rows = []
  for w in workdirs:
    rows += rows_of_run(w, load_metrics(w))
  return rows


def _fmt(value: float | None, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def markdown_table(rows: Sequence[Row]) -> str:
  """Table 1's columns for our runs, each followed by the paper's figure for that system."""
  lines = ['| run | system | step | joint coh. (paper) | cross coh. (paper) | joint FID (paper) '
           '| cross FID (paper) | counts |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    cells = []
    for metric, spec in zip(METRICS, ('.3f', '.3f', '.2f', '.2f')):
      cells.append(f'{_fmt(r.ours[metric], spec)} ({_fmt(r.paper[metric], spec)})')
    system = r.label + (f' ~ {r.paper_name}' if r.paper_name else ' (not in the paper)')
    lines.append(f'| {r.run} | {system} | {r.step} | ' + ' | '.join(cells) + f' | {r.counts} |')
  return '\n'.join(lines)


def report(rows: Sequence[Row], plot_file: str | None) -> str:
  text = ['# Comparison', '',
          'Ours first, the paper\'s Table 1 in parentheses (PolyMNIST; its FIDs use 10,000 samples '
          'per set; ours use the N in the counts column, and small N biases FID upwards, so only '
          'FIDs with equal N compare). "-": not defined for that row or not measured.', '',
          markdown_table(rows), '']
  groups = seed_summary(rows)
  if any(len(g.runs) > 1 for g in groups):
    text += ['## Over seeds', '',
             'Runs whose config.json differ only in the training seed, grouped: mean +- sample '
             'standard deviation, then each run\'s value. inputs=k: coherence given k observed '
             'modalities (MoPoE protocol).', '', seed_table(groups), '']
  if plot_file:
    text += [f'![comparison]({plot_file})', '']
  return '\n'.join(text)


def plot(rows: Sequence[Row], path: str) -> bool:
  """Coherence and FID per system, ours beside the paper's, as a PNG. False if matplotlib is
  missing (it is optional: pip install '.[plot]')."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  matplotlib.use('Agg')  # Files only; no display needed.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  titles = ('joint coherence (higher is better)', 'cross coherence (higher is better)',
            'joint FID (lower is better)', 'cross FID (lower is better)')
  fig, axes = plt.subplots(1, 4, figsize=(4 * 4, 1.2 + 0.45 * len(rows)), squeeze=False)
  labels = [f'{r.label}\n{os.path.basename(os.path.normpath(r.run))}' for r in rows]
  positions = range(len(rows))
  for ax, metric, title in zip(axes[0], METRICS, titles):
    # NaN draws no bar: a number that does not exist must not read as 0.
    ours = [float('nan') if r.ours[metric] is None else r.ours[metric] for r in rows]
    paper = [float('nan') if r.paper[metric] is None else r.paper[metric] for r in rows]
    ax.barh([p + 0.2 for p in positions], ours, height=0.4, label='this run', color='tab:blue')
    ax.barh([p - 0.2 for p in positions], paper, height=0.4, label='paper', color='tab:gray')
    ax.set_title(title, fontsize=9)
    if 'coherence' in metric:
      ax.set_xlim(0, 1)
    ax.set_yticks(list(positions))
    ax.set_yticklabels(labels if metric == METRICS[0] else [], fontsize=8)
    ax.invert_yaxis()
  axes[0][0].legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def compare(workdirs: Sequence[str], out_dir: str) -> dict[str, Any]:
  """Writes out_dir/comparison.md, comparison.json, seeds.json (runs grouped over training
  seeds) and (with matplotlib) comparison.png.

  Returns {'rows': [...], 'table': markdown, 'plot': file name or None, 'seeds': [...]}.
  """
  rows = collect(workdirs)
  os.makedirs(out_dir, exist_ok=True)
  plot_file = 'comparison.png' if plot(rows, os.path.join(out_dir, 'comparison.png')) else None
  text = report(rows, plot_file)
  with open(os.path.join(out_dir, 'comparison.md'), 'w') as f:
    f.write(text)
  records = [dict(dataclasses.asdict(r), label=r.label) for r in rows]
  for r in records:
    r.pop('config')  # The runs' config.json hold it.
  groups = [dict(dataclasses.asdict(g), mean={m: g.mean(m) for m in g.values},
                 spread={m: g.spread(m) for m in g.values}) for g in seed_summary(rows)]
  with open(os.path.join(out_dir, 'comparison.json'), 'w') as f:
    json.dump(records, f, indent=2)
  with open(os.path.join(out_dir, 'seeds.json'), 'w') as f:
    json.dump(groups, f, indent=2)
  return {'rows': records, 'table': markdown_table(rows), 'plot': plot_file,
          'seeds': groups}
