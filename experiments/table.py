r"""One dataset's table: every model x every training seed, trained, evaluated, probed; resumable.

  python experiments/table.py --config=configs/synthetic_mixture.py --out=/tmp/table_mixture
  python experiments/table.py --config=configs/synthetic_mixture.py --variant=z2 \
      --models=mmvaeplus,moe_ebm --seeds=0,1,2 --set=num_train_steps=6000 --out=/tmp/t

Each run is `main.py --config=<config>:<model>[,<variant>] --config.seed=<seed>` in
<out>/<model>_s<seed> (main.py resumes an interrupted run and skips an evaluated one), then the
linear probe of the shared latent (latent_probe.py) on its final state. <out>/results.json is
rewritten after every run (a finished run is not redone; a folder holding a run made with another
config file, variant or --set values than this call's is refused, num_train_steps aside);
<out>/table.md holds mean, sample sd
and a 95% t-interval over seeds per model and metric, then each model minus the first
(--models' baseline) at the same seed (paired: mean, sd, interval, seeds higher); <out>/curves.png the test loss of every
run against the step (the convergence evidence) and, with --coherence_curve=K, the cross
coherence of each kept checkpoint on K test tuples (moe_ebm_jax/evaluators/curves.py) beside it.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import metric_logging
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.data import coherence_scorers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.evaluators import comparison
from moe_ebm_jax.evaluators import curves
from moe_ebm_jax.evaluators import latent_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string('config', None, 'Config file (its get_config takes the model).',
                              required=True)
_VARIANT = flags.DEFINE_string('variant', '', 'Appended to the config argument: <model>,<variant>.')
_MODELS = flags.DEFINE_list('models', ['mmvaeplus', 'ebm_mmvaeplus', 'moe_ebm'],
                             'Models; the first is the baseline of the paired differences.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds (config.seed).')
_SET = flags.DEFINE_multi_string('set', [], 'key=value config overrides for every run.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.', required=True)
_PROBE_TRAIN = flags.DEFINE_integer('probe_train', 10_000,
                                    'Training examples the linear probe is fitted on.')
_CURVE_TEST = flags.DEFINE_integer(
    'coherence_curve', 0, 'Cross coherence of every kept checkpoint of each run on this many test '
    'tuples (coherence_curve.py; needs a config that keeps them, e.g. ,long); 0: none.')

def run_metrics(config, workdir: str) -> dict:
  """The run's evaluation, its latent probe and its test-loss curve."""
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    metrics = json.load(f)
  model, state = workdir_lib.restore_latest(config, workdir)
  whole = config.copy_and_resolve_references()
  whole.data.test_subset = None  # The probe's training examples: not the test split's subset.
  limit = lambda c, split, n: [b for _, b in zip(range(-(-n // c.eval_batch_size)),
                                                 input_pipeline.eval_dataset(c, split))]
  probe = latent_probe.probe(
      model, state, limit(whole, 'train', _PROBE_TRAIN.value),
      limit(config, 'test', config.eval.num_test_examples or 10**9),
      datasets.get(config.data).num_classes, jax.random.PRNGKey(config.seed + 3))
  scalars = metric_logging.read_scalars(os.path.join(workdir, 'tensorboard'))
  curve = sorted(dict(scalars.get('eval/test_loss', [])).items())
  out = {'coherence': metrics['coherence'], 'latent_probe': probe, 'step': metrics['step'],
         'test_loss_curve': curve, 'num_classes': datasets.get(config.data).num_classes,
         'modalities': list(datasets.get(config.data).names)}
  if _CURVE_TEST.value:
    out['coherence_curve'] = coherence_curve(config, workdir)
  return out


def coherence_curve(config, workdir: str) -> list[dict]:
  """The run's curve on --coherence_curve test tuples, from its kept checkpoints."""
  scorer = coherence_scorers.make_scorer(config)
  return curves.coherence_curve(config, workdir, _CURVE_TEST.value, scorer.classify,
                                scorer.scored)


def _curve_tag(points: list[dict]) -> str:
  """The cross coherence a curve plots: post-LD where there is one, else pre-LD, else q."""
  return next(t for t in ('post_ld', 'pre_ld', 'q') if f'cross_coherence_{t}' in points[0])


def plot_curves(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  with_curves = any(r.get('coherence_curve') for r in results.values())
  fig, axes = plt.subplots(1, 1 + with_curves, figsize=(7 + 6 * with_curves, 4.5), squeeze=False)
  ax = axes[0, 0]
  colours = {}
  for r in sorted(results.values(), key=lambda r: (r['model'], r['seed'])):
    first = r['model'] not in colours
    colour = colours.setdefault(r['model'], f'C{len(colours)}')
    steps, losses = zip(*r['test_loss_curve']) if r['test_loss_curve'] else ((), ())
    ax.plot(steps, losses, color=colour, lw=1, label=r['model'] if first else None)
    points = r.get('coherence_curve')
    if with_curves and points:
      tag = _curve_tag(points)
      axes[0, 1].plot([p['step'] for p in points], [p[f'cross_coherence_{tag}'] for p in points],
                      color=colour, lw=1, marker='.',
                      label=f"{r['model']} ({tag})" if first else None)
  ax.set(xlabel='training step', ylabel="test loss (the model's own objective)",
         title='Test loss of every run (one line per seed)')
  ax.legend()
  if with_curves:
    n = next(r['coherence_curve'][0]['num_test'] for r in results.values()
             if r.get('coherence_curve'))
    axes[0, 1].set(xlabel='training step', ylabel='cross coherence (single sources)',
                   title=f'Cross coherence of every kept checkpoint ({n} test tuples)')
    axes[0, 1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  log_setup.setup(debug=False)
  os.makedirs(_OUT.value, exist_ok=True)
  results_path = os.path.join(_OUT.value, 'results.json')
  results = {}
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
  # Every run already in the folder must be this call's experiment: checked before any
  # training, evaluation or rewrite of results.json.
  first = config_lib.from_file(_CONFIG.value, _MODELS.value[0] + (
      f',{_VARIANT.value}' if _VARIANT.value else ''))
  try:
    comparison.check_table_folder(results, _CONFIG.value, _VARIANT.value,
                                  dict(config_lib.apply_override(first, i) for i in _SET.value))
  except ValueError as e:
    raise SystemExit(str(e)) from None
  for model in _MODELS.value:
    for seed in _SEEDS.value:
      name = f'{model}_s{seed}'
      arg = model + (f',{_VARIANT.value}' if _VARIANT.value else '')
      config = config_lib.from_file(_CONFIG.value, arg)
      config.seed = int(seed)
      overrides = [config_lib.apply_override(config, item) for item in _SET.value]
      config_lib.validate(config)
      config_arg = f'{_CONFIG.value}:{arg}'
      # Done at this length: skipped. A longer --set=num_train_steps=N extends the run (main.py
      # resumes its last checkpoint and trains on), so a table grows until its curves are flat.
      if name in results and results[name]['step'] == config.num_train_steps:
        if 'num_classes' not in results[name]:  # Written before the class balance was tabled.
          results[name]['num_classes'] = datasets.get(config.data).num_classes
        if _CURVE_TEST.value and not results[name].get('coherence_curve'):
          # Tabled before the curve was asked for: read it from the kept checkpoints, no training.
          results[name]['coherence_curve'] = coherence_curve(config,
                                                             os.path.join(_OUT.value, name))
          with open(results_path, 'w') as f:
            json.dump(results, f, indent=1)
        continue
      workdir = os.path.join(_OUT.value, name)
      start = time.time()
      cmd = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={_CONFIG.value}:{arg}',
             f'--workdir={workdir}', f'--config.seed={seed}',
             *[f'--config.{k}={v}' for k, v in overrides]]
      logging.info('%s: %s', name, ' '.join(cmd[1:]))
      with open(os.path.join(_OUT.value, f'{name}.log'), 'a') as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
      if proc.returncode:
        raise SystemExit(f'{name} failed: see {_OUT.value}/{name}.log')
      results[name] = {'model': model, 'seed': int(seed), 'config': config_arg,
                       'overrides': dict(overrides),
                       'seconds': time.time() - start, **run_metrics(config, workdir)}
      with open(results_path, 'w') as f:
        json.dump(results, f, indent=1)
      logging.info('%s done in %.0f s: %s', name, time.time() - start,
                   json.dumps(results[name]['coherence'].get('joint_coherence')))
  text = comparison.results_table(results, _MODELS.value)
  # The paired differences against the first model (the baseline by convention: MMVAE+).
  paired = comparison.paired_table(results, _MODELS.value, _MODELS.value[0])
  if paired.count('\n') > 1:
    text += '\n\n' + paired
  with open(os.path.join(_OUT.value, 'table.md'), 'w') as f:
    f.write(f'{_CONFIG.value} {_VARIANT.value} {_SET.value}\n\n{text}\n')
  plot_curves(results, os.path.join(_OUT.value, 'curves.png'))
  print(text)


if __name__ == '__main__':
  app.run(main)
