"""Cross coherence of every checkpoint a run kept: its convergence curve, read after training.

Training stays as fast as without it: the run only keeps its checkpoints (configs' ',long'
variants keep every 250-step one); this reads them afterwards. The CLI is
experiments/coherence_curve.py; experiments/table.py --coherence_curve=K calls it for every run.
"""

import json
import os
import time

from absl import logging
import jax

from moe_ebm_jax import checkpointing
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import metric_logging
from moe_ebm_jax import model_state
from moe_ebm_jax import parallel
from moe_ebm_jax.evaluators import coherence as coherence_lib
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.generation import LdMode

FILENAME = 'coherence_curve.json'


def coherence_curve(config, workdir: str, num_test: int, classify, scored=None) -> list[dict]:
  """[{'step', 'test_loss', 'cross_coherence_<tag>' for tag in q / pre_ld / post_ld}], by step.

  Args:
    config: the run's config.
    workdir: the run's folder; every checkpoint kept there is read.
    num_test: the first num_test test tuples (the same ones at every step).
    classify, scored: as evaluators.coherence.CoherenceEvaluator's (coherence_scorers.make_scorer
      (config) has both).
  """
  path = os.path.join(workdir, FILENAME)
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      done = {p['step']: p for p in json.load(f)['points'] if p.get('num_test') == num_test}
  model = model_state.make_model(config)
  abstract = model_state.abstract_state(config, model, parallel.make_mesh())
  losses = dict(metric_logging.read_scalars(os.path.join(workdir, 'tensorboard')).get(
      'eval/test_loss', []))
  gen = common.Generators(model, config.eval_batch_size, config.eval.clip_for_coherence)
  evaluator = coherence_lib.CoherenceEvaluator(
      gen, classify, input_pipeline.first_test_batches(config, num_test), scored=scored,
      cross_only=True)
  with checkpointing.Checkpointer(workdir, keep_latest=config.keep_checkpoints,
                                  keep_best=config.keep_best_checkpoints) as ckpt:
    steps = ckpt.all_steps()
    for step in steps:
      if step in done:
        continue
      start = time.time()
      state, _ = ckpt.restore(abstract, step=step)
      # The same key at every step: the curve's changes are the model's, not the sampler's.
      coherence = evaluator.run(state, jax.random.PRNGKey(config.seed + 2))
      point = {'step': step, 'num_test': num_test, 'test_loss': losses.get(step)}
      for mode in LdMode.present(coherence):
        point[f'cross_coherence_{mode.value}'] = round(coherence[mode.value]['cross_coherence'], 4)
      done[step] = point
      logging.info('%s step %d: %s (%.0f s)', workdir, step,
                   {k: v for k, v in point.items() if k.startswith('cross')},
                   time.time() - start)
      with open(path, 'w') as f:
        json.dump({'points': [done[s] for s in sorted(done)]}, f, indent=1)
  return [done[s] for s in sorted(done)]
