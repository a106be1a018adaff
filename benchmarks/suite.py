r"""The speed benchmarks in one command: a JSON record and readable tables.

  python benchmarks/suite.py                                   # everything (long on a CPU)
  python benchmarks/suite.py --paper_models=mmvaeplus,moe_ebm --steps=3 --json_out=/tmp/b.json
  python benchmarks/suite.py --scales=cpu --sections=matmul,train --models=mmvaeplus

Sections (--sections, default all):
  matmul          f32 (n, n) @ (n, n) through jax (n = 2048 on a CPU, 8192 elsewhere), at the
                  default precision and at HIGHEST: the machine's reference rate;
                  every GFLOP/s below is also given as a fraction of it.
  train           per model and scale, the training step that train.py runs (jitted, data
                  parallel over --devices devices, synthetic batches): compile time, median
                  s/step after --warmup steps (min, max), examples/s, FLOPs per step from XLA's
                  cost analysis, GFLOP/s, XLA's memory plan (arguments + outputs + temporaries),
                  recompilations after the first step (must be 0; the run fails otherwise) and
                  host callbacks in the compiled step (must be 0).
  langevin        prior chain (config.ebm.prior_steps steps, batch --batch_size) and ONE
                  posterior Langevin step through all decoders (a chain of
                  --posterior_chain_steps steps, divided), per scale.
  ebm_overhead    MOE-EBM's training step minus MMVAE+'s (--steps pairs of steps timed
                  alternately, median difference) set against its chains timed alone: prior
                  chain + posterior_steps x one posterior step.
  generation      joint generation of --batch_size examples (MMVAE+, and MOE-EBM with its prior
                  chain) and cross generation from m0 to all modalities (MMVAE+ pre-LD,
                  MOE-EBM post-LD).
  fid             FID feature extraction (Inception-v3 at 299x299) in images/s; the weights are
                  random (speed does not depend on them, and no download is needed).
  input_pipeline  examples/s of the real training input pipeline (needs --data_dir holding
                  PolyMNIST), against the training step's examples/s at each scale.

Scales: 'paper' = configs/polymnist.py, 'cpu' = configs/polymnist_cpu.py (the default two), and
'smoke' = configs/smoke.py (for tests), all at --batch_size (default 128). FLOPs come from
XLA's cost analysis, which counts the body of a rolled loop (lax.scan with unroll=1) once: a
train step's FLOPs are counted on the same step lowered with model.conv_backward='xla' (conv.py's
products run in loops over chunks of examples), and figures from programs that still loop
(Langevin chains, modality_loop='map') are marked as lower bounds.
Runs unchanged on GPU and TPU; --host_devices=N splits a CPU into N devices for sharding checks.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import resource
import statistics
import sys
import time

from absl import app
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # configs/ and moe_ebm_jax/ from a checkout.

SECTIONS = ('matmul', 'train', 'langevin', 'ebm_overhead', 'generation', 'fid',
            'input_pipeline')
SCALES = {'paper': 'polymnist', 'cpu': 'polymnist_cpu', 'smoke': 'smoke'}
ALL_MODELS = ('mmvaeplus', 'moe_ebm', 'ebm_mmvaeplus', 'ebm_mmvae', 'mmvae', 'mvae', 'mmjsd',
              'mopoe')

_SECTIONS = flags.DEFINE_list('sections', list(SECTIONS), f'Any of {SECTIONS}.')
_SCALES = flags.DEFINE_list('scales', ['paper', 'cpu'], f'Any of {tuple(SCALES)}.')
_MODELS = flags.DEFINE_list('models', list(ALL_MODELS), 'Models for the train section.')
_PAPER_MODELS = flags.DEFINE_list('paper_models', None,
                                  'Models at the paper scale (default: --models).')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed training steps per model.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls of the smaller benchmarks.')
_POSTERIOR_CHAIN = flags.DEFINE_integer(
    'posterior_chain_steps', 4, 'The posterior step is timed as a chain of this many steps.')
_DEVICES = flags.DEFINE_integer('devices', 0, 'Use the first N devices (0: all).')
_HOST_DEVICES = flags.DEFINE_integer('host_devices', 0,
                                     'Split the CPU into N devices (XLA host platform).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'PolyMNIST data_dir for input_pipeline.')
_OVERRIDES = flags.DEFINE_multi_string(
    'set', [], "Config overrides KEY=VALUE applied to every config, e.g. "
    "--set=model.conv_backward=xla (Python literals, else strings).")
_JSON_OUT = flags.DEFINE_string('json_out', None,
                                'Also write the JSON record here (rewritten after each section).')


# ----------------------------------------------------------------------------- helpers


def _block(x):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(x)


def timed_calls(fn, *args, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of fn(*args), after one untimed call."""
  _block(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _block(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def summary(times: list[float]) -> dict[str, float]:
  return {'median_s': statistics.median(times), 'min_s': min(times), 'max_s': max(times),
          'n': len(times)}


class CompileCounter:
  """Counts XLA backend compilations (jax.monitoring events) while active."""

  def __init__(self):
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    self.count = 0
    self.seconds = 0.0
    self.active = False
    monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    del kwargs
    if self.active and event.endswith('backend_compile_duration'):
      self.count += 1
      self.seconds += duration

  def __enter__(self):
    self.count, self.seconds, self.active = 0, 0.0, True
    return self

  def __exit__(self, *exc):
    self.active = False


def cost_flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def memory_plan_bytes(compiled) -> int | None:
  """XLA's static memory plan of one device: arguments + outputs + temporaries - aliased."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes -
             mem.alias_size_in_bytes)


HOST_MARKERS = ('callback', 'outfeed', 'infeed', 'host_compute', 'send(', 'recv(')


def host_transfers(hlo_text: str) -> int:
  """Instructions in compiled HLO that go to the host (Python callbacks, in/outfeed, send/recv)."""
  lines = hlo_text.lower().splitlines()
  return sum(1 for line in lines if any(m in line for m in HOST_MARKERS) and '=' in line)


_RNG_LOOP_MARKERS = ('threefry', 'jit(_uniform)', 'jit(_normal)', 'random_bits')
_FLOAT_TYPES = re.compile(r'\b(f16|bf16|f32|f64)\[')


def has_loops(hlo_text: str) -> bool:
  """Whether the program has loops besides the PRNG's own (threefry rounds, no FLOPs).

  PRNG loops are told by name (compiled HLO) or by a loop state without floating-point values.
  """
  for line in hlo_text.splitlines():
    if ' while(' not in line or any(m in line for m in _RNG_LOOP_MARKERS):
      continue
    if _FLOAT_TYPES.search(line.split(' while(')[0]):
      return True
  return False


def get_config(scale: str, model: str):
  import importlib  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{SCALES[scale]}').get_config(model)
  config.batch_size = _BATCH.value
  config.eval_batch_size = _BATCH.value
  for item in _OVERRIDES.value:
    config_lib.apply_override(config, item)
  return config


# ----------------------------------------------------------------------------- sections


def bench_matmul(repeats: int) -> dict:
  """f32 matmul rate at the default precision (the one the models run at) and at HIGHEST.

  The two differ on accelerators: GPUs run a default-precision f32 product on TF32 tensor cores
  and TPUs on bf16 passes, while HIGHEST is full f32; a CPU runs both alike. The size is 2048 on
  a CPU and 8192 elsewhere (2048 leaves an accelerator mostly idle).
  """
  import jax  # pylint: disable=g-import-not-at-top
  n = 2048 if jax.default_backend() == 'cpu' else 8192
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jax.numpy.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jax.numpy.float32)
  highest = jax.lax.Precision.HIGHEST
  s = summary(timed_calls(jax.jit(lambda a, b: a @ b), a, b, repeats=max(repeats, 10)))
  s_highest = summary(timed_calls(jax.jit(lambda a, b: jax.numpy.matmul(a, b, precision=highest)),
                                  a, b, repeats=max(repeats, 10)))
  return {**s, 'gflops': 2 * n**3 / s['median_s'] / 1e9, 'shape': [n, n, n],
          'highest_median_s': s_highest['median_s'],
          'highest_gflops': 2 * n**3 / s_highest['median_s'] / 1e9}


def _train_setup(scale: str, model_name: str, mesh):
  """(config, model_state.Model, compiled steps, initial state, a synthetic batch on the mesh)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import config_lib  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import model_state  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import parallel  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import train  # pylint: disable=g-import-not-at-top
  config = get_config(scale, model_name)
  config_lib.validate(config)
  parallel.check_batch_divides(
      {k: config[k] for k in ('batch_size', 'eval_batch_size')}, mesh.size)
  model = model_state.make_model(config)
  steps = train.compile_steps(config, model, mesh)
  state = steps['init'](jax.random.PRNGKey(0))
  # A batch as the input pipeline gives it: {modality: (B, *shape)} of each spec's dtype.
  rng = np.random.default_rng(0)
  x = {s.name: (rng.integers(0, max(s.num_classes, 1), (config.batch_size,) + s.shape, np.int32)
                if s.dtype == 'int32' else
                rng.random((config.batch_size,) + s.shape, np.float32))
       for s in model.vae.modalities}
  return config, model, steps, state, jax.device_put(x, steps['batch'])


def _posterior_steps(model) -> int:
  """The EBM's posterior chain length (0 for a prior without one)."""
  chain = getattr(model.prior, 'posterior_chain', None)
  return chain.num_steps if chain else 0


def bench_train(scale: str, model_name: str, mesh, counter: CompileCounter,
                compiled_runs: dict | None = None) -> dict:
  """The train section's row of one model; its compiled step, state and batch go into
  `compiled_runs[(scale, model_name)]` for the ebm_overhead section to reuse."""
  from moe_ebm_jax import model_state  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import train  # pylint: disable=g-import-not-at-top
  config, model, steps, state, batch = _train_setup(scale, model_name, mesh)
  start = time.perf_counter()
  lowered = steps['train'].lower(state, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  hlo = compiled.as_text()
  flops, flops_hlo = cost_flops(compiled), hlo
  if config.model.get('conv_backward', 'xla') != 'xla' and has_loops(hlo):
    # XLA's cost analysis counts a loop body once, and conv.py's products run in loops over
    # chunks of examples (on a CPU): count the same maths with XLA's own convolutions (lowered
    # only; where a backend has no cost analysis before optimisation, keep the compiled one).
    reference = config.copy_and_resolve_references()
    reference.model.conv_backward = 'xla'
    reference_steps = train.compile_steps(reference, model_state.make_model(reference), mesh)
    reference_lowered = reference_steps['train'].lower(state, batch)
    reference_flops = cost_flops(reference_lowered)
    if reference_flops is not None:
      flops = reference_flops
      flops_hlo = reference_lowered.compiler_ir('hlo').as_hlo_text()
  # Every call goes through the jitted function as train.py calls it; the compilation above
  # is in its cache, so any compilation from here on is a recompilation.
  with counter:
    for _ in range(_WARMUP.value + 1):
      state, metrics = steps['train'](state, batch)
    _block(metrics)
    times = []
    for _ in range(_STEPS.value):
      start = time.perf_counter()
      state, metrics = steps['train'](state, batch)
      _block(metrics)
      times.append(time.perf_counter() - start)
  recompiles = counter.count
  if compiled_runs is not None:
    compiled_runs[(scale, model_name)] = (steps['train'], state, batch,
                                          _posterior_steps(model))
  if recompiles:
    raise RuntimeError(f'{scale}/{model_name}: the train step compiled {recompiles} more times '
                       'after the first step.')
  s = summary(times)
  out = {'scale': scale, 'model': model_name, 'widths': list(config.model.widths),
         'batch_size': config.batch_size, 'devices': mesh.size, **s,
         'examples_per_s': config.batch_size / s['median_s'], 'lower_s': lower_s,
         'compile_s': compile_s, 'flops_per_step': flops,
         'flops_lower_bound': has_loops(flops_hlo), 'gflops_per_s': (flops / s['median_s'] / 1e9
                                                                if flops else None),
         'memory_plan_bytes': memory_plan_bytes(compiled), 'recompiles': recompiles,
         'host_transfers': host_transfers(hlo),
         'posterior_steps': config.ebm.posterior_steps if model.prior.refines_posterior else 0,
         'prior_steps': config.ebm.prior_steps if model.prior.refines_posterior else 0,
         'conv_backward': config.model.get('conv_backward', 'xla (before conv.py)')}
  if out['host_transfers']:
    raise RuntimeError(f'{scale}/{model_name}: the compiled step has {out["host_transfers"]} '
                       'host transfers.')
  return out


def _model_parts(scale: str, model_name: str):
  """(config, model_state.Model, initialised TrainState) of `model_name` at `scale`."""
  import jax  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import model_state  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import optimizers  # pylint: disable=g-import-not-at-top
  config = get_config(scale, model_name)
  model = model_state.make_model(config)
  vae_tx, ebm_tx = optimizers.make_optimizers(config)
  state = jax.jit(functools.partial(model_state.init_state, model, vae_tx, ebm_tx))(
      jax.random.PRNGKey(0))
  return config, model, state


def _compiled_stats(fn, *args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  compiled = jax.jit(fn).lower(*args).compile()
  return {'flops': cost_flops(compiled), 'flops_lower_bound': has_loops(compiled.as_text())}


def bench_langevin(scale: str, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.latent import ebm as ebm_lib  # pylint: disable=g-import-not-at-top
  config, model, state = _model_parts(scale, 'moe_ebm')
  b, vae = config.batch_size, model.vae
  prior = jax.jit(lambda p, k: ebm_lib.sample_prior(
      model.prior.energy, p, k, b, vae.latent_z, num_steps=model.prior.prior_chain.num_steps,
      step_size=model.prior.prior_chain.step_size, noise_scale=model.prior.prior_chain.noise_scale,
      unroll=model.prior.prior_chain.unroll, base=model.prior.p0)[0])
  key = jax.random.PRNGKey(1)
  prior_times = timed_calls(prior, state.prior_params, key, repeats=repeats)
  images = jax.random.uniform(key, (b, vae.num_modalities, 28, 28, 3))
  z0 = jax.random.normal(key, (b, vae.latent_z))
  w = jax.random.normal(key, (vae.num_modalities, b, vae.latent_w))

  chain = _POSTERIOR_CHAIN.value

  def posterior_chain(vae_params, ebm_params, images, z0, w, k):
    return ebm_lib.sample_posterior(vae, vae_params, model.prior.energy, ebm_params, images, z0, w, k,
                                    num_steps=chain, step_size=model.prior.posterior_chain.step_size,
                                    noise_scale=model.prior.prior_chain.noise_scale,
                                    latents=model.prior.posterior_latents,
                                    unroll=model.prior.prior_chain.unroll, base=model.prior.p0)[0]['z']

  args = (state.vae_params, state.prior_params, images, z0, w, key)
  # Per step: a chain of `chain` steps (compiled as in training) divided by `chain`. (A lone
  # one-step chain measured ~2x slower per step than chains of 2 or more on XLA:CPU.)
  post_times = [t / chain for t in timed_calls(jax.jit(posterior_chain), *args,
                                               repeats=repeats)]
  post_stats = _compiled_stats(posterior_chain, *args)
  if post_stats['flops'] is not None:
    post_stats['flops'] /= chain
  prior_stats = _compiled_stats(prior, state.prior_params, key)
  return {'scale': scale, 'batch_size': b, 'widths': list(vae.widths),
          'prior_chain': {'steps': model.prior.prior_chain.num_steps, **summary(prior_times), **prior_stats},
          'posterior_step': {'decoders': vae.num_modalities, 'chain_steps': chain,
                             **summary(post_times),
                             **post_stats,
                             'gflops_per_s': (post_stats['flops'] / statistics.median(post_times)
                                              / 1e9 if post_stats['flops'] else None)},
          'posterior_steps_in_training': model.prior.posterior_chain.num_steps}


def bench_generation(scale: str, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import generation  # pylint: disable=g-import-not-at-top
  out = {'scale': scale, 'num_samples': _BATCH.value}
  key = jax.random.PRNGKey(2)
  for name in ('mmvaeplus', 'moe_ebm'):
    config, model, state = _model_parts(scale, name)
    n, m = config.batch_size, config.data.num_modalities
    joint = jax.jit(lambda s, k: generation.joint_generate(s, k, model=model, num_samples=n)[0])
    images = jax.random.uniform(key, (n, m, 28, 28, 3))
    source = jnp.arange(m) == 0
    post_ld = model.prior.refines_posterior
    cross = jax.jit(lambda s, x, k: generation.conditional_generate(
        s, x, source, k, model=model, post_ld=post_ld)[0])
    out[name] = {'joint': summary(timed_calls(joint, state, key, repeats=repeats)),
                 'cross_from_m0': summary(timed_calls(cross, state, images, key,
                                                      repeats=repeats)),
                 'cross_post_ld': post_ld,
                 'posterior_steps': model.prior.posterior_chain.num_steps if post_ld else 0}
  return out


def bench_fid(repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import config_lib  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.evaluators import inception  # pylint: disable=g-import-not-at-top
  batch = config_lib.base_config('mmvaeplus').eval.fid_batch_size
  net = inception.InceptionV3()
  images = jax.random.uniform(jax.random.PRNGKey(3), (batch, 28, 28, 3))
  params = jax.jit(net.init)(jax.random.PRNGKey(4), inception.preprocess(images[:1]))['params']
  features = inception.make_feature_fn(params, model=net)
  times = timed_calls(features, images, repeats=max(1, repeats // 2))
  s = summary(times)
  return {**s, 'batch': batch, 'images_per_s': batch / s['median_s'], 'weights': 'random'}


def bench_input_pipeline(data_dir: str, batches: int = 100) -> dict:
  from moe_ebm_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  out = {}
  for scale in _SCALES.value:
    config = get_config(scale, 'mmvaeplus')
    config.data.data_dir = data_dir
    it = input_pipeline.train_iterator(config)
    for _ in range(1 + 2 * config.data.num_workers):  # Files open, threads and workers running.
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - start
    it.close()
    out[scale] = {'batches': batches, 'batch_size': config.batch_size,
                  'num_threads': config.data.num_threads,
                  'num_workers': config.data.num_workers,
                  'examples_per_s': batches * config.batch_size / seconds}
  return out


# ----------------------------------------------------------------------------- report


def _fmt(x, spec='.3g', none='-'):
  return none if x is None else format(x, spec)


def tables(record: dict) -> str:
  lines = []
  mm = record.get('matmul')
  rate = mm['gflops'] if mm else None
  lines.append(f"# Benchmarks: {record['device']} x {record['num_devices']}, "
               f"jax {record['jax']}, {record['date']}")
  if mm:
    n = mm['shape'][0]
    lines.append(f"\njax f32 matmul {n}^3: {rate:.1f} GFLOP/s at the default precision, "
                 f"{mm['highest_gflops']:.1f} at HIGHEST (medians of {mm['n']})")
  if record.get('train'):
    lines += ['', '| scale | model | widths | batch | s/step median (min-max) | examples/s | '
              'GFLOP/step | GFLOP/s | of matmul | compile s | memory plan MB | recompiles | '
              'host transfers |', '|' + '---|' * 13]
    for r in record['train']:
      gf = r['gflops_per_s']
      lb = '>=' if r['flops_lower_bound'] else ''
      lines.append(
          f"| {r['scale']} | {r['model']} | {tuple(r['widths'])} | {r['batch_size']} | "
          f"{r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) | "
          f"{r['examples_per_s']:.1f} | {lb}{_fmt(r['flops_per_step'] and r['flops_per_step'] / 1e9, '.0f')} | "
          f"{lb}{_fmt(gf, '.1f')} | {lb}{_fmt(gf and rate and gf / rate, '.2f')} | "
          f"{r['compile_s']:.1f} | {_fmt(r['memory_plan_bytes'] and r['memory_plan_bytes'] / 2**20, '.0f')} | "
          f"{r['recompiles']} | {r['host_transfers']} |")
  if record.get('langevin'):
    lines += ['', '| scale | prior chain (steps, batch) ms | one posterior step through the '
              'decoders, s | its GFLOP/s |', '|---|---|---|---|']
    for r in record['langevin']:
      p, q = r['prior_chain'], r['posterior_step']
      lines.append(f"| {r['scale']} | {p['median_s'] * 1e3:.2f} ({p['steps']}, {r['batch_size']}) "
                   f"| {q['median_s']:.3f} ({q['decoders']} decoders) | "
                   f"{_fmt(q['gflops_per_s'], '.1f')} |")
  if record.get('ebm_overhead'):
    lines += ['', '| scale | MOE-EBM step - MMVAE+ step (pairs timed alternately), s | prior '
              'chain + posterior steps x one posterior step, s | unexplained, s |',
              '|---|---|---|---|']
    for r in record['ebm_overhead']:
      lo, hi = r['measured_extra_range_s']
      lines.append(f"| {r['scale']} | {r['measured_extra_s']:.3f} ({lo:.3f} to {hi:.3f}, "
                   f"{r['pairs']} pairs) | {r['chains_s']:.3f} "
                   f"({r['prior_chain_s'] * 1e3:.1f} ms + {r['posterior_steps']} x "
                   f"{r['posterior_step_s']:.3f}) | {r['unexplained_s']:+.3f} |")
  if record.get('generation'):
    lines += ['', '| scale | N | MMVAE+ joint s | MMVAE+ cross m0 -> all s | MOE-EBM joint '
              '(prior chain) s | MOE-EBM cross post-LD s |', '|---|---|---|---|---|---|']
    for r in record['generation']:
      a, e = r['mmvaeplus'], r['moe_ebm']
      lines.append(f"| {r['scale']} | {r['num_samples']} | {a['joint']['median_s']:.3f} | "
                   f"{a['cross_from_m0']['median_s']:.3f} | {e['joint']['median_s']:.3f} | "
                   f"{e['cross_from_m0']['median_s']:.3f} ({e['posterior_steps']} LD steps) |")
  if record.get('fid'):
    f = record['fid']
    lines.append(f"\nFID features: {f['images_per_s']:.1f} images/s (batch {f['batch']}, "
                 f"median {f['median_s']:.2f} s per batch)")
  if record.get('input_pipeline'):
    steps = {(r['scale'], r['model']): r['examples_per_s'] for r in record.get('train', [])}
    for scale, r in record['input_pipeline'].items():
      step_rate = max((v for (s, _), v in steps.items() if s == scale), default=None)
      ratio = f", {r['examples_per_s'] / step_rate:.0f}x the fastest train step" if step_rate else ''
      lines.append(f"Input pipeline ({scale}, {r.get('num_workers', 0)} worker process(es), "
                   f"{r['num_threads']} thread(s) each): "
                   f"{r['examples_per_s']:.0f} examples/s{ratio}")
  for note in record.get('notes', []):
    lines.append(f'\nNote: {note}')
  return '\n'.join(lines)


def paired_ebm_extra(scale: str, mesh, pairs: int, compiled_runs: dict | None = None) -> dict:
  """MOE-EBM's training step minus MMVAE+'s, the two steps timed alternately.

  Separate runs of each drift apart by a few percent (the machine's speed varies over minutes),
  as much as the posterior steps cost; alternating steps cancels the drift: the median of
  `pairs` differences between neighbouring steps.
  """
  runs, posterior_steps = {}, None
  for name in ('mmvaeplus', 'moe_ebm'):
    if compiled_runs and (scale, name) in compiled_runs:  # Compiled and warm (train section).
      step, state, batch, posterior_steps = compiled_runs[(scale, name)]
    else:
      _, model, steps, state, batch = _train_setup(scale, name, mesh)
      step, posterior_steps = steps['train'], _posterior_steps(model)
    for _ in range(2):  # Compiles if new; then an untimed step.
      state, metrics = step(state, batch)
    _block(metrics)
    runs[name] = [step, state, batch]  # posterior_steps: MOE-EBM's, the last.
  times = {name: [] for name in runs}
  for _ in range(pairs):
    for name, run in runs.items():
      start = time.perf_counter()
      run[1], metrics = run[0](run[1], run[2])
      _block(metrics)
      times[name].append(time.perf_counter() - start)
  diffs = [b - a for a, b in zip(times['mmvaeplus'], times['moe_ebm'])]
  return {'pairs': pairs, 'median_extra_s': statistics.median(diffs), 'min_extra_s': min(diffs),
          'max_extra_s': max(diffs), 'mmvaeplus_s': times['mmvaeplus'],
          'moe_ebm_s': times['moe_ebm'], 'posterior_steps': posterior_steps}


def ebm_overhead(scale: str, paired: dict, langevin_row: dict) -> dict:
  """The paired extra cost set against MOE-EBM's chains timed alone."""
  k = paired['posterior_steps']
  chains = langevin_row['prior_chain']['median_s'] + k * langevin_row['posterior_step']['median_s']
  return {'scale': scale, 'measured_extra_s': paired['median_extra_s'],
          'measured_extra_range_s': [paired['min_extra_s'], paired['max_extra_s']],
          'pairs': paired['pairs'], 'chains_s': chains,
          'prior_chain_s': langevin_row['prior_chain']['median_s'], 'posterior_steps': k,
          'posterior_step_s': langevin_row['posterior_step']['median_s'],
          'unexplained_s': paired['median_extra_s'] - chains}


def main(argv):
  del argv
  from moe_ebm_jax import log_setup  # pylint: disable=g-import-not-at-top
  log_setup.setup()  # Dependencies' INFO chatter off, as main.py does.
  unknown = set(_SECTIONS.value) - set(SECTIONS)
  unknown |= {s for s in _SCALES.value if s not in SCALES}
  if unknown:
    raise app.UsageError(f'unknown sections or scales: {sorted(unknown)}')
  if _HOST_DEVICES.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_num_cpu_devices', _HOST_DEVICES.value)
  import jax  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import parallel  # pylint: disable=g-import-not-at-top
  # --host_devices splits the CPU, also on a machine whose default backend is an accelerator.
  devices = jax.devices('cpu' if _HOST_DEVICES.value else None)[:_DEVICES.value or None]
  mesh = parallel.make_mesh(devices)
  sections = set(_SECTIONS.value)
  record = {'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'jax': jax.__version__,
            'backend': jax.default_backend(), 'device': devices[0].device_kind,
            'num_devices': len(devices), 'cpu': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(), 'flags': sys.argv[1:],
            'xla_flags': os.environ.get('XLA_FLAGS', ''), 'notes': []}
  try:
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    record['cpu'] = names[0] if names else record['cpu']
  except OSError:
    pass
  print(f"Benchmarks on {record['device']} x {len(devices)} ({record['cpu']}), jax "
        f"{record['jax']}", flush=True)

  def save():  # After each section: a run cut short keeps what it measured.
    if _JSON_OUT.value:
      with open(_JSON_OUT.value + '.tmp', 'w') as f:
        json.dump(record, f, indent=1)
      os.replace(_JSON_OUT.value + '.tmp', _JSON_OUT.value)

  if 'matmul' in sections:
    record['matmul'] = bench_matmul(_REPEATS.value)
    print(f"matmul: {record['matmul']['gflops']:.1f} GFLOP/s (HIGHEST "
          f"{record['matmul']['highest_gflops']:.1f})", flush=True)
    save()
  counter = CompileCounter()
  compiled_runs = {}  # (scale, model) -> the train section's compiled step, state, batch.
  if 'train' in sections:
    record['train'] = []
    for scale in _SCALES.value:
      models = _PAPER_MODELS.value if scale == 'paper' and _PAPER_MODELS.value else _MODELS.value
      for name in models:
        row = bench_train(scale, name, mesh, counter, compiled_runs)
        record['train'].append(row)
        print(f"train {scale}/{name}: {row['median_s']:.3f} s/step, compile "
              f"{row['compile_s']:.1f} s", flush=True)
        save()
  if 'langevin' in sections:
    record['langevin'] = []
    for scale in _SCALES.value:
      record['langevin'].append(bench_langevin(scale, _REPEATS.value))
      print(f"langevin {scale}: {record['langevin'][-1]['posterior_step']['median_s']:.3f} s "
            'per posterior step', flush=True)
      save()
  if 'ebm_overhead' in sections:
    record['ebm_overhead'] = []
    for scale in _SCALES.value:
      langevin_row = next((r for r in record.get('langevin', []) if r['scale'] == scale), None)
      if langevin_row is None:
        langevin_row = bench_langevin(scale, _REPEATS.value)
      paired = paired_ebm_extra(scale, mesh, _STEPS.value, compiled_runs)
      record['ebm_overhead'].append(ebm_overhead(scale, paired, langevin_row))
      print(f"ebm_overhead {scale}: {paired['median_extra_s']:.3f} s", flush=True)
      save()
  if 'generation' in sections:
    record['generation'] = [bench_generation(s, _REPEATS.value) for s in _SCALES.value]
    print('generation done', flush=True)
    save()
  if 'fid' in sections:
    record['fid'] = bench_fid(_REPEATS.value)
    print(f"fid: {record['fid']['images_per_s']:.1f} images/s", flush=True)
    save()
  if 'input_pipeline' in sections:
    if _DATA_DIR.value:
      record['input_pipeline'] = bench_input_pipeline(_DATA_DIR.value)
    else:
      record['notes'].append('input_pipeline skipped: no --data_dir.')
  record['max_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if jax.default_backend() != 'cpu':
    stats = devices[0].memory_stats() or {}
    record['device_peak_bytes'] = stats.get('peak_bytes_in_use')
  print(tables(record))
  print(json.dumps(record))
  save()


if __name__ == '__main__':
  app.run(main)
