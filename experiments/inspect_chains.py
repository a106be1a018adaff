r"""Looks inside a trained EBM-prior model's Langevin chains: where does MOE-EBM's effect come from?

  python experiments/inspect_chains.py --config=configs/polymnist_cpu.py:moe_ebm,quick \
      --workdir=runs/moe_ebm_quick --out=/tmp/inside --num_test=500 \
      --sweep_steps=2,5,10 --sweep_step_sizes=0.03,0.1

Restores the latest checkpoint of --workdir (read-only; the config must match the run's at the
keys a resume checks, sampler settings may differ) and writes to --out:

- energies: f_a (the negative energy) at the prior chain's start (p0 draws) and end, at the
  encoders' samples z ~ q(z | x_m) and at the training posterior chain's end, over test tuples;
- moves: for each posterior Langevin setting (steps K, step size s) of the sweep, the training
  chain (every modality observed, started at one expert's sample): the RMS move per coordinate
  against the posterior's scale and the spread between the experts' means, the first step's
  drift (s^2 / 2 |grad|) against its noise (s), and the gain in log pi and in f_a;
- sweep: cross coherence pre-LD and post-LD (MMVAE+ protocol, single sources, the first
  --num_test test tuples) for every setting, and joint coherence with prior chains of 0, the
  trained length and --long_prior_steps steps (with persistent chains also from p0 alone, f_a
  unused), with the entropy of the digits generated (a
  chain that collapses to one mode is coherent and useless);
- figures: the posterior chain from m0 decoded as m1 step by step, the prior chain continued
  past its trained length decoded as m0, and the energies over training from TensorBoard;
- inside.json (everything) and inside.md (the tables, with the figures).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from moe_ebm_jax import config_lib
from moe_ebm_jax import figures
from moe_ebm_jax import generation
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import metric_logging
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.data import classifiers
from moe_ebm_jax.evaluators import coherence as coherence_lib
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.latent import ebm as ebm_lib
from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import models

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config file and model.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run (checkpoints, tensorboard/).')
_OUT = flags.DEFINE_string('out', None, 'Where to write inside.json, inside.md and figures.')
_NUM_TEST = flags.DEFINE_integer('num_test', 500, 'First K test tuples.')
_SWEEP_STEPS = flags.DEFINE_list('sweep_steps', ['2', '5', '10'], 'Posterior Langevin steps.')
_SWEEP_SIZES = flags.DEFINE_list('sweep_step_sizes', ['0.03', '0.1'], 'Posterior step sizes.')
_NUM_JOINT = flags.DEFINE_integer('num_joint', 1000, 'Prior samples per joint coherence.')
_LONG_PRIOR = flags.DEFINE_integer('long_prior_steps', 200, 'The continued prior chain\'s length.')
_ROWS = flags.DEFINE_integer('rows', 6, 'Examples (chains) per figure.')
_CLF_MAX_STEPS = flags.DEFINE_integer(
    'classifier_max_steps', None, 'Train the coherence classifiers for at most this many steps '
    '(None: the library default). For quick tests only.')
_CLF_TEST_SUBSET = flags.DEFINE_integer(
    'classifier_test_subset', None, 'Score the classifiers on the first N test tuples only.')


def _stats(x) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  return {'mean': float(x.mean()), 'std': float(x.std()), 'min': float(x.min()),
          'max': float(x.max())}


def posterior_probe(model, state, images: jax.Array, key: jax.Array, *, num_steps: int,
                    step_size: float) -> dict[str, jax.Array]:
  """The training posterior chain (all modalities observed) from one expert's sample, measured.

  images (B, M, 28, 28, 3) -> per-example arrays (B,): rms_move, posterior_scale,
  expert_spread, f_start, f_end, log_prob_gain; and per-step batch means (K,) grad_norm.
  """
  vae = model.vae
  k_z, k_w, k_pick, k_ld = jax.random.split(key, 4)
  post = vae.encode(state.vae_params, images)  # (M, B, D)
  z_q = dists.sample(vae.distribution, k_z, post.z_loc, post.z_scale)
  w_q = dists.sample(vae.distribution, k_w, post.w_loc, post.w_scale)
  m, b = z_q.shape[:2]
  expert = jax.random.randint(k_pick, (b,), 0, m)
  z0 = z_q[expert, jnp.arange(b)]
  # Laplace scales (std = sqrt(2) x scale). MMVAE+'s softmax scales sum to D, so their mean is
  # 1 by construction: the median coordinate's says how sure the encoder is.
  scale = post.z_scale[expert, jnp.arange(b)]
  final, diag = ebm_lib.sample_posterior(
      vae, state.vae_params, model.prior.energy, state.prior_params, images, z0, w_q, k_ld,
      num_steps=num_steps, step_size=step_size, noise_scale=model.prior.prior_chain.noise_scale,
      latents=model.prior.posterior_latents, unroll=model.prior.prior_chain.unroll, base=model.prior.p0)
  f = lambda z: model.prior.energy.apply(state.prior_params, z)
  log_prob = ebm_lib.posterior_log_prob(vae, state.vae_params, model.prior.energy, state.prior_params,
                                        images, jnp.ones((m,), bool), w_q, model.prior.p0)
  out = {
      'rms_move': jnp.sqrt(jnp.mean(jnp.square(final['z'] - z0), axis=-1)),
      'posterior_scale': jnp.median(scale, axis=-1),
      # RMS over coordinates of the experts' means about their average: how far apart the
      # modalities put one tuple's z.
      'expert_spread': jnp.sqrt(jnp.mean(jnp.square(
          post.z_loc - post.z_loc.mean(axis=0, keepdims=True)), axis=(0, 2))),
      'f_start': f(z0), 'f_end': f(final['z']),
      'grad_norm': diag['grad_norm'] if num_steps else jnp.zeros((0,)),
  }
  if model.prior.posterior_latents == 'z':  # log pi at the end (the chain reports it before a step).
    out['log_prob_gain'] = log_prob({'z': final['z']}) - log_prob({'z': z0})
  return out


def energies(model, state, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
  """f_a at p0 draws, prior-chain ends, each expert's q samples and training posterior-chain
  ends: each (B,) (the experts' (M * B,))."""
  vae = model.vae
  k_p0, k_prior, k_post, k_q = jax.random.split(key, 4)
  b = images.shape[0]
  f = lambda z: model.prior.energy.apply(state.prior_params, z)
  z_prior, _ = ebm_lib.sample_prior(
      model.prior.energy, state.prior_params, k_prior, b, vae.latent_z, num_steps=model.prior.prior_chain.num_steps,
      step_size=model.prior.prior_chain.step_size, noise_scale=model.prior.prior_chain.noise_scale,
      unroll=model.prior.prior_chain.unroll, base=model.prior.p0)
  post = vae.encode(state.vae_params, images)
  z_q = dists.sample(vae.distribution, k_q, post.z_loc, post.z_scale)
  probe = posterior_probe(model, state, images, k_post, num_steps=model.prior.posterior_chain.num_steps,
                          step_size=model.prior.posterior_chain.step_size)
  return {'p0 draws (chain start)': f(model.prior.p0.sample(k_p0, z_prior.shape)),
          'prior chain end': f(z_prior), 'q(z | x_m), every expert': f(z_q).reshape(-1),
          'posterior chain end': probe['f_end']}


def _entropy(labels: np.ndarray) -> float:
  """Entropy (nats) of the empirical distribution of digit labels; ln 10 = 2.30 is uniform."""
  if not len(labels):
    return 0.0
  p = np.bincount(labels, minlength=10) / len(labels)
  p = p[p > 0]
  return max(0.0, float(-(p * np.log(p)).sum()))  # max: no '-0.00' for a single digit.


def with_prior(model, **changes):
  """`model` with its EBM prior's settings changed (priors.EnergyPrior's fields)."""
  return dataclasses.replace(model, prior=dataclasses.replace(model.prior, **changes))


def with_chain(model, which: str, **changes):
  """`model` with the EBM's 'prior_chain' or 'posterior_chain' (a samplers.Chain) changed."""
  return with_prior(model, **{which: dataclasses.replace(getattr(model.prior, which), **changes)})


def joint_diagnostics(config, model, state, classify, key: jax.Array, num: int) -> dict:
  """Joint coherence over `num` prior samples, and whether coherent samples are diverse: the
  entropy of the agreed digits (a chain that collapses every sample to one mode scores high
  coherence with entropy ~0) and of modality 0's predicted digits."""
  generate = jax.jit(functools.partial(generation.joint_generate, model=model,
                                       num_samples=config.eval_batch_size,
                                       clip=config.eval.clip_for_coherence))
  predictions, n = [], 0
  while n < num:
    samples, _ = generate(state, jax.random.fold_in(key, n))
    predictions.append(np.asarray(classify(samples)))
    n += len(predictions[-1])
  predictions = np.concatenate(predictions)[:num]
  agree = np.all(predictions == predictions[:, :1], axis=1)
  return {'joint_coherence': float(agree.mean()),
          'agreed_digit_entropy': _entropy(predictions[agree, 0]),
          'm0_digit_entropy': _entropy(predictions[:, 0])}


def _chain_figures(model, state, images: np.ndarray, key: jax.Array, out: str, *,
                   num_steps: int, step_size: float, long_prior: int) -> dict[str, str]:
  """Posterior chain from m0 decoded as m1; the prior chain continued, decoded as m0."""
  vae, m = model.vae, model.vae.num_modalities
  files = {}
  rows = images.shape[0]
  mask = jnp.zeros((m,), bool).at[0].set(True)
  ld_model = with_chain(model, 'posterior_chain', num_steps=num_steps, step_size=step_size)
  k_gen, k_w, k_prior = jax.random.split(key, 3)
  _, z_pre, _ = jax.jit(functools.partial(generation.conditional_generate, model=ld_model,
                                          post_ld=False))(state, images, mask, k_gen)
  _, _, trajectory = jax.jit(functools.partial(
      generation.conditional_generate, model=ld_model, post_ld=True, keep_trajectory=True))(
          state, images, mask, k_gen)
  picks = np.unique(np.linspace(0, num_steps - 1, num=min(num_steps, 6)).round().astype(int))
  zs = jnp.concatenate([z_pre[None], trajectory[picks]])  # (T, B, Dz): z ~ q, then the chain.
  w1 = vae.sample_prior(k_w, (rows, vae.latent_w))  # One w for m1 per row, fixed along the chain.
  decoder_1 = models.modality_params(state.vae_params['decoders'], 1)
  decodes = jax.vmap(lambda z: vae.decoder.apply(decoder_1, jnp.concatenate([w1, z], -1)))(zs)
  tiles = np.concatenate([images[:, None, 0], np.clip(np.asarray(decodes), 0, 1).swapaxes(0, 1)],
                         axis=1)
  name = 'posterior_chain_m0_to_m1.png'
  figures.save_png(os.path.join(out, name), figures.labelled_grid(
      tiles, title=f'Posterior Langevin from m0 (step size {step_size}), z decoded as m1 with '
                   'w_1 ~ p(w) fixed along each chain',
      col_labels=['source m0', 'z ~ q'] + [f'step {i + 1}' for i in picks],
      row_labels=[f'test {i + 1}' for i in range(rows)]))
  files['posterior_chain'] = name

  prior_model = with_chain(model, 'prior_chain', num_steps=long_prior)
  _, diag = jax.jit(functools.partial(
      ebm_lib.sample_prior, model.prior.energy, batch_size=rows, latent_dim=vae.latent_z,
      num_steps=long_prior, step_size=prior_model.prior.prior_chain.step_size,
      noise_scale=model.prior.prior_chain.noise_scale, keep_trajectory=True))(state.prior_params, k_prior)
  trajectory = diag['trajectory']
  marks = sorted({0, 4, 9, 29, model.prior.prior_chain.num_steps - 1, (model.prior.prior_chain.num_steps + long_prior) // 2 - 1,
                  long_prior - 1} - {-1})
  marks = [i for i in marks if 0 <= i < long_prior]
  w0 = jnp.zeros((rows, vae.latent_w))  # The median of p(w).
  decoder_0 = models.modality_params(state.vae_params['decoders'], 0)
  decodes = jax.vmap(lambda z: vae.decoder.apply(decoder_0, jnp.concatenate([w0, z], -1)))(
      trajectory[np.array(marks)])
  name = 'prior_chain_continued_m0.png'
  figures.save_png(os.path.join(out, name), figures.labelled_grid(
      np.clip(np.asarray(decodes), 0, 1).swapaxes(0, 1),
      title=f'Prior Langevin continued to {long_prior} steps (trained with '
            f'{model.prior.prior_chain.num_steps}), z decoded as m0 with w at the median of p(w)',
      col_labels=[f'step {i + 1}' for i in marks],
      row_labels=[f'chain {i + 1}' for i in range(rows)]))
  files['prior_chain'] = name
  return files


def _training_energy_figure(workdir: str, out: str) -> str | None:
  """Energies of prior-chain and posterior samples over training (TensorBoard scalars)."""
  logdir = os.path.join(workdir, 'tensorboard')
  try:
    scalars = metric_logging.read_scalars(logdir)
  except (OSError, ValueError) as e:
    logging.warning('no training energies (%s): %s', logdir, e)
    return None
  series = {k: scalars[f'train/{k}'] for k in ('energy_prior', 'energy_posterior')
            if f'train/{k}' in scalars}
  if not series:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
  for tag, label in (('energy_prior', 'prior-chain samples'),
                     ('energy_posterior', 'posterior samples')):
    if tag in series:
      steps, values = zip(*series[tag])
      ax.plot(steps, values, label=label)
  ax.set_title(f'Energy -f_a over training ({os.path.basename(workdir.rstrip("/"))})')
  ax.set_xlabel('training step')
  ax.set_ylabel('energy (-f_a), batch mean')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  name = 'training_energies.png'
  fig.savefig(os.path.join(out, name))
  plt.close(fig)
  return name


def _row(cells) -> str:
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def write_markdown(record: dict, out: str) -> None:
  lines = [f"# Inside the chains of {record['model']} at step {record['step']}", '',
           f"{record['num_test']} test tuples; trained with {record['prior_steps']} prior steps "
           f"(size {record['prior_step_size']}) and {record['posterior_steps']} posterior steps "
           f"(size {record['posterior_step_size']}).", '',
           '## f_a (the negative energy) where the samples are', '',
           _row(['samples', 'mean', 'std', 'min', 'max']), _row(['---'] * 5)]
  for name, s in record['energies'].items():
    lines.append(_row([name] + [f'{s[k]:.3g}' for k in ('mean', 'std', 'min', 'max')]))
  lines += ['', '## Posterior Langevin moves (training chain: every modality observed)', '',
            'Per coordinate: RMS move over the chain; the median coordinate\'s posterior '
            'Laplace scale of the starting expert (the mean is 1 by construction); the RMS spread of the experts\' means; the first step\'s drift '
            '(s^2/2 |grad| / sqrt(D)) and noise (s).', '',
            _row(['steps', 'step size', 'RMS move', 'posterior scale', 'expert spread',
                  'drift, step 1', 'noise', 'log pi gain', 'f_a gain']),
            _row(['---'] * 9)]
  for r in record['sweep']:
    mv = r['moves']
    lines.append(_row([r['steps'], r['step_size'], f"{mv['rms_move']:.3g}",
                       f"{mv['posterior_scale']:.3g}", f"{mv['expert_spread']:.3g}",
                       f"{mv['drift_first_step']:.3g}", f"{r['step_size']:.3g}",
                       f"{mv.get('log_prob_gain', float('nan')):.4g}", f"{mv['f_gain']:.3g}"]))
  lines += ['', f"## Cross coherence (first {record['num_test']} test tuples, chance 0.1)", '',
            f"pre-LD (z ~ q): {record['pre_ld_cross_coherence']:.3f}", '',
            _row(['steps', 'step size', 'post-LD', 'post - pre']), _row(['---'] * 4)]
  for r in record['sweep']:
    lines.append(_row([r['steps'], r['step_size'], f"{r['post_ld_cross_coherence']:.3f}",
                       f"{r['post_ld_cross_coherence'] - record['pre_ld_cross_coherence']:+.3f}"]))
  lines += ['', f"## Joint coherence by prior chain length ({record['num_joint']} samples)", '',
            'Entropy (nats) of the digits the coherent samples agree on, and of modality 0\'s '
            'predicted digits: ln 10 = 2.30 for all ten digits equally often, 0 for one digit.',
            '', _row(['prior steps', 'joint coherence', 'agreed-digit entropy',
                      'm0 digit entropy']), _row(['---'] * 4)]
  for steps, value in record['joint_by_prior_steps'].items():
    label = {'p0': 'none: p0 alone, f_a unused'}.get(steps, steps)
    if steps == '0' and 'p0' in record['joint_by_prior_steps']:
      label = '0 (from the persistent chains)'
    lines.append(_row([label, f"{value['joint_coherence']:.3f}",
                       f"{value['agreed_digit_entropy']:.2f}",
                       f"{value['m0_digit_entropy']:.2f}"]))
  lines.append('')
  for name in record['figures'].values():
    lines += [f'![{name}]({name})', '']
  with open(os.path.join(out, 'inside.md'), 'w') as f:
    f.write('\n'.join(lines))


def main(argv):
  del argv
  log_setup.setup()  # Dependencies' INFO chatter off, as main.py does.
  config = _CONFIG.value
  config_lib.validate(config)
  if config.model.prior != 'ebm':
    raise app.UsageError(f'{config.model.name} has no EBM prior: nothing to look inside.')
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  start = time.time()
  model, state = workdir_lib.restore_latest(config, _WORKDIR.value)
  bank = classifiers.load_or_train(config.data, max_steps=_CLF_MAX_STEPS.value,
                                   test_subset=_CLF_TEST_SUBSET.value)
  batches = input_pipeline.first_test_batches(config, _NUM_TEST.value)
  key = jax.random.PRNGKey(config.seed + 7)
  record = {'model': config.model.name, 'workdir': _WORKDIR.value, 'step': int(state.step),
            'num_test': sum(len(b['label']) for b in batches), 'num_joint': _NUM_JOINT.value,
            'prior_steps': model.prior.prior_chain.num_steps, 'prior_step_size': model.prior.prior_chain.step_size,
            'posterior_steps': model.prior.posterior_chain.num_steps,
            'posterior_step_size': model.prior.posterior_chain.step_size, 'sweep': [], 'figures': {}}

  def write():
    with open(os.path.join(out, 'inside.json'), 'w') as f:
      json.dump(record, f, indent=1)

  energy_fn = jax.jit(functools.partial(energies, model))
  parts = [energy_fn(state, jnp.asarray(common.batch_images(b, model.vae.names)), jax.random.fold_in(key, i))
           for i, b in enumerate(batches)]
  record['energies'] = {k: _stats(np.concatenate([p[k] for p in parts])) for k in parts[0]}
  logging.info('energies: %s', record['energies'])
  write()

  settings = [(int(k), float(s)) for k in _SWEEP_STEPS.value for s in _SWEEP_SIZES.value]
  pre = None
  for num_steps, step_size in settings:
    t0 = time.time()
    probe_fn = jax.jit(functools.partial(posterior_probe, model, num_steps=num_steps,
                                         step_size=step_size))
    parts = [jax.device_get(probe_fn(state, jnp.asarray(common.batch_images(b, model.vae.names)), jax.random.fold_in(key, i)))
             for i, b in enumerate(batches)]
    cat = lambda k: np.concatenate([p[k] for p in parts])
    moves = {k: float(cat(k).mean()) for k in ('rms_move', 'posterior_scale', 'expert_spread')}
    moves['f_gain'] = float((cat('f_end') - cat('f_start')).mean())
    if 'log_prob_gain' in parts[0]:
      moves['log_prob_gain'] = float(cat('log_prob_gain').mean())
    grad_norms = np.mean([p['grad_norm'] for p in parts], axis=0)
    dim = model.vae.latent_z
    moves['grad_norm_per_step'] = [round(float(g), 3) for g in grad_norms]
    moves['drift_first_step'] = float(0.5 * step_size**2 * grad_norms[0] / np.sqrt(dim))
    ld_model = with_chain(model, 'posterior_chain', num_steps=num_steps, step_size=step_size)
    evaluator = coherence_lib.CoherenceEvaluator(
        common.Generators(ld_model, config.eval_batch_size, config.eval.clip_for_coherence),
        bank.classify, batches, cross_only=True)
    coherence = evaluator.run(state, jax.random.fold_in(key, 1))
    pre_now = coherence['pre_ld']['cross_coherence']
    if pre is not None and abs(pre_now - pre) > 1e-9:
      raise AssertionError('pre-LD coherence changed across settings: keys are not fixed.')
    pre = pre_now
    record['pre_ld_cross_coherence'] = pre
    record['sweep'].append({'steps': num_steps, 'step_size': step_size, 'moves': moves,
                            'post_ld_cross_coherence': coherence['post_ld']['cross_coherence'],
                            'seconds': round(time.time() - t0, 1)})
    logging.info('sweep %d steps, size %g: %s', num_steps, step_size, record['sweep'][-1])
    write()

  record['joint_by_prior_steps'] = {}
  for prior_steps in sorted({0, model.prior.prior_chain.num_steps, _LONG_PRIOR.value}):
    record['joint_by_prior_steps'][str(prior_steps)] = joint_diagnostics(
        config, with_chain(model, 'prior_chain', num_steps=prior_steps), state, bank.classify,
        jax.random.fold_in(key, 2), _NUM_JOINT.value)
    write()
  if model.prior.persistent_chains:
    # With persistent chains 0 steps start from the chains' states (f_a's density already);
    # the base alone, f_a unused, is the row that shows what f_a adds to joint coherence.
    record['joint_by_prior_steps']['p0'] = joint_diagnostics(
        config, with_chain(with_prior(model, persistent_chains=0), 'prior_chain', num_steps=0),
        state,
        bank.classify, jax.random.fold_in(key, 2), _NUM_JOINT.value)
    write()

  rows = min(_ROWS.value, len(batches[0]['label']))
  best = max(record['sweep'], key=lambda r: r['post_ld_cross_coherence'])
  record['figures'] = _chain_figures(
      model, state, common.batch_images(batches[0], model.vae.names)[:rows], jax.random.fold_in(key, 3), out,
      num_steps=max(int(k) for k in _SWEEP_STEPS.value), step_size=best['step_size'],
      long_prior=_LONG_PRIOR.value)
  energy_figure = _training_energy_figure(_WORKDIR.value, out)
  if energy_figure:
    record['figures']['training_energies'] = energy_figure
  record['seconds'] = round(time.time() - start, 1)
  write()
  write_markdown(record, out)
  print(open(os.path.join(out, 'inside.md')).read())


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir', 'out'])
  app.run(main)
