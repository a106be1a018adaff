r"""Post-hoc priors against each run's own prior, on the runs of an experiments/table.py folder.

  python experiments/table.py --config=configs/synthetic_mixture.py --variant=z2 \
      --models=mmvaeplus,ebm_mmvaeplus --seeds=0,1,2 --set=num_train_steps=9000 --out=/tmp/mix
  python experiments/posthoc_table.py --table=/tmp/mix \
      --fits='gmm:num_components=4' --fits='gmm:component_choices=(1,2,4,8,16)' --fits=flow

For every run <table>/<model>_s<seed> and every --fits entry (a posthoc prior with
config.posthoc overrides), `main.py --mode=fit_prior` fits it to the run's final checkpoint and
evaluates with it (<run>/eval_posthoc_<prior>, moved to <run>/posthoc_evals/<entry>/ so entries
of one prior do not overwrite each other). Writes <out>/posthoc.json (every number, the fit's
time and likelihood) and <out>/posthoc.md: per model and prior the joint coherence and its class
balance (mean, sd, 95% t-interval over seeds), each post-hoc prior minus the run's own prior at
the same seed (paired), the cross coherence after the prior's posterior refinement (an EBM's),
and medians over seeds of the fit's seconds and of the seconds to draw the joint samples' z
(fit_prior.sampling_seconds, both priors timed in one process). A finished entry is not redone.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from moe_ebm_jax.evaluators import coherence  # noqa: E402
from moe_ebm_jax.evaluators import comparison  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TABLE = flags.DEFINE_string('table', None, 'An experiments/table.py output folder.',
                             required=True)
_FITS = flags.DEFINE_multi_string('fits', ['gmm', 'flow'],
                                  "'<prior>[:key=value;...]': posthoc overrides per entry.")
_OUT = flags.DEFINE_string('out', None, 'Where posthoc.json/.md go (default: --table).')
_BOUNDS = flags.DEFINE_string('bounds', None, 'A .jsonl of experiments/true_bound.py rows '
                              '(--posthoc=...) for these runs: adds the log p(X) table.')


def entry_args(entry: str) -> tuple[str, list[str]]:
  """'gmm:num_components=4;covariance=diag' -> ('gmm', ['--config.posthoc.prior=gmm', ...])."""
  prior, _, rest = entry.partition(':')
  args = [f'--config.posthoc.prior={prior}']
  for item in filter(None, rest.split(';')):
    args.append(f'--config.posthoc.{item}')
  return prior, args


def numbers(metrics: dict, num_classes: int) -> dict:
  c = metrics['coherence']
  out = {'joint_coherence': c.get('joint_coherence'),
         'class_balance': coherence.class_balance(c.get('joint_class_share'), num_classes),
         'cross_coherence': c[next(t for t in ('q', 'pre_ld') if t in c)]['cross_coherence']}
  if 'post_ld' in c:  # The prior refines the posterior (an EBM): cross coherence after it.
    out['cross_coherence_post_ld'] = c['post_ld']['cross_coherence']
  return out


def main(argv):
  del argv
  table, out = _TABLE.value, _OUT.value or _TABLE.value
  os.makedirs(out, exist_ok=True)
  results = json.load(open(os.path.join(table, 'results.json')))
  record_path = os.path.join(out, 'posthoc.json')
  record = json.load(open(record_path)) if os.path.exists(record_path) else {'runs': {}}
  for name, run in sorted(results.items()):
    workdir = os.path.join(table, name)
    model = run['model']
    entry_record = record['runs'].setdefault(name, {'model': model, 'seed': run['seed']})
    num_classes = run.get('num_classes', 0)
    timed = entry_record.get('own', {}).get('sample_seconds')  # Kept from an earlier call.
    entry_record['own'] = numbers(run, num_classes)
    if timed is not None:
      entry_record['own']['sample_seconds'] = timed
    for entry in _FITS.value:
      if entry in entry_record:
        continue
      prior, args = entry_args(entry)
      command = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={run["config"]}',
                 f'--workdir={workdir}', '--mode=fit_prior', f'--config.seed={run["seed"]}',
                 *[f'--config.{k}={v}' for k, v in run['overrides'].items()], *args]
      start = time.time()
      done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
      if done.returncode:
        raise SystemExit(f'{name} {entry}: failed:\n{done.stderr[-3000:]}')
      folder = os.path.join(workdir, 'posthoc_evals', entry.replace('/', '_'))
      shutil.rmtree(folder, ignore_errors=True)
      os.makedirs(os.path.dirname(folder), exist_ok=True)
      shutil.move(os.path.join(workdir, f'eval_posthoc_{prior}'), folder)
      metrics = json.load(open(os.path.join(folder, 'metrics.json')))
      entry_record[entry] = {**numbers(metrics, num_classes), 'fit': metrics['posthoc']['fit'],
                             'seconds': round(time.time() - start, 1)}
      if 'sampling' in metrics:  # Drawing N z, timed in the same process for both priors.
        entry_record[entry]['sample_seconds'] = metrics['sampling']['seconds']
        entry_record['own'].setdefault('sample_seconds', metrics['sampling']['own_seconds'])
      print(f'{name} {entry}: {entry_record[entry]}', flush=True)
      with open(record_path, 'w') as f:
        json.dump(record, f, indent=1)
  text = markdown(record, ['own'] + list(_FITS.value))
  if _BOUNDS.value:
    rows = [json.loads(line) for line in open(_BOUNDS.value) if line.strip()]
    text += '\n' + bounds_markdown(rows, table, results)
  with open(os.path.join(out, 'posthoc.md'), 'w') as f:
    f.write(text)
  print(open(os.path.join(out, 'posthoc.md')).read())


def markdown(record: dict, entries: list[str]) -> str:
  fmt = lambda v: '{:.3f}, {:.3f} [{:.3f}, {:.3f}]'.format(*v)
  runs = record['runs'].values()
  models = sorted({r['model'] for r in runs})
  lines = ['| model | prior | joint coherence | joint class balance | minus own prior (joint '
           'coherence, paired) | cross coherence after its refinement | fit, s | drawing the '
           'joint samples\' z, s | seeds |', '|---|---|---|---|---|---|---|---|---|']
  median = lambda values: f'{sorted(values)[len(values) // 2]:.3g}' if values else '-'
  for model in models:
    mine = [r for r in runs if r['model'] == model]
    for entry in entries:
      have = [r for r in mine if entry in r]
      if not have:
        continue
      joint = [r[entry]['joint_coherence'] for r in have]
      balance = [r[entry]['class_balance'] for r in have if r[entry]['class_balance'] is not None]
      paired = [r[entry]['joint_coherence'] - r['own']['joint_coherence'] for r in have]
      refined = [r[entry]['cross_coherence_post_ld'] for r in have
                 if 'cross_coherence_post_ld' in r[entry]]
      fit = [r[entry]['fit']['seconds'] for r in have if 'fit' in r[entry]]
      draw = [r[entry]['sample_seconds'] for r in have if 'sample_seconds' in r[entry]]
      lines.append(f'| {model} | {entry} | {fmt(comparison.interval(joint))} | '
                   f'{fmt(comparison.interval(balance)) if balance else "n/a"} | '
                   f'{"-" if entry == "own" else fmt(comparison.interval(paired))} | '
                   f'{fmt(comparison.interval(refined)) if refined else "-"} | '
                   f'{median(fit)} | {median(draw)} | {len(have)} |')
  return '\n'.join(lines) + '\n'


def _fitted_label(workdir: str, prior: str, step: int) -> str:
  """What the post-hoc prior true_bound read was: the last fit of that name to the step."""
  meta = json.load(open(os.path.join(workdir, 'posthoc', prior, f'step_{step}', 'meta.json')))
  if prior == 'gmm':
    return f"gmm, K = {meta['fit']['num_components']}, {meta['source']}"
  return f"{prior}, {meta['source']}"


def bounds_markdown(rows: list[dict], table: str, results: dict) -> str:
  """log p(X) (nats per test tuple, true_bound.py's importance sampling with normalised
  priors) per model and prior, over seeds, and each prior minus the run's own (paired): the
  last row of each run in `rows` counts."""
  fmt = lambda v: '{:.2f}, {:.2f} [{:.2f}, {:.2f}]'.format(*v)
  by_run = {}
  for row in rows:
    by_run[os.path.basename(row['workdir'].rstrip('/'))] = row
  lines = ['| model | prior | log p(X): mean, sd [95% interval] | minus own prior (paired) | '
           'seeds |', '|---|---|---|---|---|']
  for model in sorted({results[n]['model'] for n in by_run if n in results}):
    mine = {n: r for n, r in by_run.items() if n in results and results[n]['model'] == model}
    suffixes = [k[len('log_px'):] for k in next(iter(mine.values())) if k.startswith('log_px')]
    for suffix in suffixes:
      have = {n: r for n, r in mine.items() if 'log_px' + suffix in r}
      values = [r['log_px' + suffix] for r in have.values()]
      paired = [r['log_px' + suffix] - r['log_px'] for r in have.values()]
      if not suffix:
        label = 'own'
      elif suffix == '_p0':
        label = 'p0 alone (the EBM without f_a)'
      else:
        labels = {_fitted_label(os.path.join(table, n), suffix[1:], r['step'])
                  for n, r in have.items()}
        label = ' / '.join(sorted(labels))
      lines.append(f'| {model} | {label} | {fmt(comparison.interval(values))} | '
                   f'{"-" if not suffix else fmt(comparison.interval(paired))} | {len(have)} |')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  app.run(main)
