"""Golden records of a training run, compared in one of two modes.

A record holds, for one model: the machine that made it, a digest of the input batches, and the
run's values twice over: as bits (digests of every parameter and optimiser leaf, each step's
losses as float32 hex) and as sketches that a distance can be read from (each leaf's norm and
three random projections, in float64).

- exact, on the machine that made the record (`machine()` equal: CPU model, instruction sets,
  caches, usable cores, jax and jaxlib versions, XLA_FLAGS, backend): every bit equal.
- tolerant, on any other: the same computation up to float32 rounding. XLA:CPU's kernels round
  differently from one machine to the next (their blocking follows the caches, their thread
  partition the cores), so a bit-for-bit record only holds where it was made.

What the tolerant mode compares, each in units of float32's machine epsilon (EPS, 2^-23):
- batches and integer leaves (step counts): exactly; no float rounding enters them;
- `init`, the parameters at initialisation: every leaf within INIT_TOL;
- `grads`, the first step's gradients (the optimiser's first moment after one step): every leaf
  within GRADS_TOL. One forward and backward pass, no training dynamics to amplify rounding,
  and every term of the objective reaches them: the sharpest view of a change to the maths;
- `vae_loss` at each of the steps: within LOSS_TOL_ULPS units in the last place;
- `final`, the parameters after all the steps: the median leaf within FINAL_TOL (rounding
  differences grow over the steps, most of all through Langevin chains; the median leaf keeps
  the check on the whole run without the few chaotic leaves setting the tolerance).
The EBM's loss is compared only in exact mode: it is a difference of two mean energies close
to zero, whose rounding differences across machines reach 4 * 10^-4 of its value (MOE-EBM).

A leaf's distance is estimated from the sketches (the spread of a chi-squared with 3 degrees of
freedom: under a third of the truth 1 time in 22) and taken relative to the leaf's norm, or to
its tree's norm where the leaf is under FLOOR times that: zero up to rounding, as the EBM's
output-bias gradient (1 - 1), which one machine computes as 0 and another as a few EPS.

The tolerances come from measurements on XLA:CPU (benchmarks/golden_margins.py;
docs/contributing.md#golden-records): at least 4 times the largest rounding difference seen
between machine-like variants of the same run, and below what moving beta by 4 parts in 10^5
moves in 6 of the 8 models (a relative 10^-3 moves every model's gradients 9 to 160 times the
tolerance).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import re

import jax
import numpy as np

EPS = float(np.finfo(np.float32).eps)
INIT_TOL = 4 * EPS
GRADS_TOL = 16 * EPS
FINAL_TOL = 64 * EPS
LOSS_TOL_ULPS = 8
FLOOR = 1e-3
NUM_PROJECTIONS = 3
MODE_ENV = 'MOE_EBM_JAX_GOLDEN_MODE'
STATES = ('init', 'grads', 'final')
# What each state's leaf distances are summarised by, and the tolerance of that summary.
SUMMARIES = {'init': ('max', INIT_TOL), 'grads': ('max', GRADS_TOL),
             'final': ('median', FINAL_TOL)}
# XLA:CPU's kernels query these (cpuid): they choose the code and the blocking.
_ISA_FLAGS = ('avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_bf16', 'avx512_vnni',
              'amx_tile', 'amx_bf16', 'asimd', 'sve')


# ----------------------------------------------------------------------------- the machine


@functools.cache
def machine() -> dict:
  """What decides XLA:CPU's rounding here: CPU model, instruction sets, caches, usable cores,
  versions, flags. Machines that agree on all of it are taken to round alike (as CI's AMD EPYC
  machines have, run after run); one that differs in any of it compares tolerantly, which is
  safe, only less sharp."""
  info = {'cpu': platform.processor() or platform.machine(), 'isa': [], 'caches': []}
  cpuinfo = pathlib.Path('/proc/cpuinfo')
  if cpuinfo.exists():
    fields = {}
    for line in cpuinfo.read_text().splitlines():
      key, _, value = line.partition(':')
      fields.setdefault(key.strip(), value.strip())
    info['cpu'] = fields.get('model name') or fields.get('CPU part') or info['cpu']
    flags = set((fields.get('flags') or fields.get('Features') or '').split())
    info['isa'] = [f for f in _ISA_FLAGS if f in flags]
  caches = pathlib.Path('/sys/devices/system/cpu/cpu0/cache')
  for index in sorted(caches.glob('index*')):
    try:
      level, kind, size = ((index / n).read_text().strip() for n in ('level', 'type', 'size'))
    except OSError:
      continue
    info['caches'].append(f'L{level} {kind} {size}')
  info['cores'] = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (
      os.cpu_count())
  info['jax'] = jax.__version__
  info['jaxlib'] = importlib.metadata.version('jaxlib')
  info['xla_flags'] = os.environ.get('XLA_FLAGS', '')
  info['backend'] = jax.default_backend()
  return info


def machine_name(m: dict) -> str:
  isa = 'AVX-512' if 'avx512f' in m['isa'] else 'AVX2' if 'avx2' in m['isa'] else '/'.join(
      m['isa']) or 'no SIMD flags read'
  cores = f"{m['cores']} core{'' if m['cores'] == 1 else 's'}"
  return f"{m['cpu']} ({isa}, {cores}, jaxlib {m['jaxlib']})"


def made_here(record: dict) -> bool:
  return record.get('machine') == machine()


def mode_for(record: dict) -> str:
  """'exact' where this machine made the record, else 'tolerant'; MODE_ENV forces either (to see
  what another machine's run would check, or to hold a new machine to a record's bits)."""
  forced = os.environ.get(MODE_ENV, '')
  if forced not in ('', 'exact', 'tolerant'):
    raise ValueError(f'{MODE_ENV}={forced!r}: expected exact, tolerant or unset')
  return forced or ('exact' if made_here(record) else 'tolerant')


def header(path: pathlib.Path) -> str:
  """One line for the test run's header: the golden records' mode here, and why."""
  records = json.loads(path.read_text())
  modes = sorted({mode_for(r) for r in records.values()})
  makers = sorted({machine_name(r['machine']) for r in records.values()})
  line = f'golden records ({path.name}): {" and ".join(modes)} mode'
  if os.environ.get(MODE_ENV):
    return f'{line} (forced by {MODE_ENV})'
  if modes == ['exact']:
    return f'{line}: this machine made them ({machine_name(machine())})'
  fields = sorted({d.split(':')[0] for r in records.values()
                   for d in differences(machine(), r['machine'])})
  return (f'{line}: made on {", ".join(makers)}; here {machine_name(machine())} (differs in '
          f'{", ".join(fields)})')


def differences(a: dict, b: dict) -> list[str]:
  """The machine fields that differ, for saying why a comparison is tolerant."""
  return [f'{k}: {a.get(k)!r} here, {b.get(k)!r} in the record' for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


# ----------------------------------------------------------------------------- leaves


def leaf_digests(tree) -> list[str]:
  """Sorted sha256 digests (16 hex digits) of every leaf's dtype, shape and bytes."""
  return sorted(_digest(np.asarray(x)) for x in jax.tree.leaves(tree))


def _digest(x: np.ndarray) -> str:
  h = hashlib.sha256(f'{x.dtype}{x.shape}'.encode())
  h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


def _signs(n: int, k: int) -> np.ndarray:
  """(n,) float64 of +-1: projection k's signs (splitmix64 of the index; no RNG library's
  stream, so a record reads the same with any NumPy)."""
  x = np.arange(n, dtype=np.uint64) + np.uint64((k + 1) * 0x9E3779B97F4A7C15 % 2**64)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  x = x ^ (x >> np.uint64(31))
  return np.where(x >> np.uint64(63), 1.0, -1.0)


def sketch(tree) -> list[list]:
  """Per leaf: [kind, norm, projection_1..3] (floats; kind = dtype and shape) or [kind, digest]
  (integers), sorted by kind and norm. Two leaves' distance is estimated from their projections
  onto random signs: E[(s . (x - y))^2] = |x - y|^2."""
  out = []
  for x in jax.tree.leaves(tree):
    x = np.asarray(x)
    kind = f"{x.dtype}:{'x'.join(map(str, x.shape)) or 'scalar'}"
    if not np.issubdtype(x.dtype, np.floating):
      out.append([kind, _digest(x)])
      continue
    flat = x.astype(np.float64).ravel()
    proj = [float(_signs(flat.size, k) @ flat) for k in range(NUM_PROJECTIONS)]
    out.append([kind, float(np.linalg.norm(flat))] + proj)
  return sorted(out, key=lambda e: (e[0], e[1] if len(e) > 2 else 0.0))


def _round(entry: list) -> list:
  return [entry[0]] + [float(f'{v:.12g}') if isinstance(v, float) else v for v in entry[1:]]


def leaf_distances(got: list[list], want: list[list]) -> list[float]:
  """Each recorded leaf's distance to its match in `got` (leaves of the same kind, matched
  greedily nearest first: renaming or regrouping the pytree does not matter), relative to its
  norm, or to the tree's norm for a leaf under FLOOR times that (zero up to rounding, as the
  gradient of an energy's output bias, 1 - 1); inf where the leaves do not match up."""
  if sorted(e[0] for e in got) != sorted(e[0] for e in want):
    return [float('inf')]
  scale = FLOOR * np.sqrt(sum(e[1] ** 2 for e in want if len(e) > 2))
  out = []
  for kind in sorted({e[0] for e in want}):
    a = [e[1:] for e in got if e[0] == kind]
    b = [e[1:] for e in want if e[0] == kind]
    if len(b[0]) == 1:  # Integers: digests, equal or not.
      out += [0.0 if x == y else float('inf') for x, y in zip(sorted(a), sorted(b))]
      continue
    dist = np.empty((len(a), len(b)))
    for i, x in enumerate(a):
      for j, y in enumerate(b):
        proj = np.mean(np.square(np.subtract(x[1:], y[1:])))
        d = max(np.sqrt(proj), abs(x[0] - y[0]))  # |x - y| >= | |x| - |y| |.
        unit = y[0] if y[0] >= scale else scale / FLOOR  # Zero up to rounding: the tree's scale.
        dist[i, j] = d / unit if unit > 0 else (0.0 if d == 0 else np.inf)
    while dist.size:
      i, j = np.unravel_index(np.argmin(dist), dist.shape)
      out.append(float(dist[i, j]))
      dist = np.delete(np.delete(dist, i, 0), j, 1)
  return out


def ulps(a: float, b: float) -> int:
  """Units in the last place of float32 between a and b."""
  def ordered(v):
    i = int(np.float32(v).view(np.int32))
    return i if i >= 0 else -(i & 0x7FFFFFFF)
  return abs(ordered(a) - ordered(b))


# ----------------------------------------------------------------------------- records


def make_record(*, batches: str, init, grads, final, final_all, losses: dict[str, list[float]],
                skipped_steps: int) -> dict:
  """A model's record. init, grads, final: {'vae': tree, 'ebm': tree}; final_all: everything the
  exact mode hashes after the last step (parameters and optimiser states); losses: per step."""
  return {
      'machine': machine(),
      'batches': batches,
      'init': leaf_digests((init['vae'], init['ebm'])),
      'final': leaf_digests(final_all),
      **{name: [float(np.float32(v)).hex() for v in values]
         for name, values in losses.items() if values},
      'sketches': {state: {tree: [_round(e) for e in sketch(value[tree])] for tree in value}
                   for state, value in (('init', init), ('grads', grads), ('final', final))},
      'skipped_steps': skipped_steps,
  }


@dataclasses.dataclass(frozen=True)
class Check:
  """One line of a comparison: what was compared, whether it holds, and in tolerant mode its
  margin (the value over its tolerance: above 1 fails; inf where the structure differs)."""
  name: str
  ok: bool
  detail: str
  margin: float | None = None

  def __str__(self):
    return f'{"ok  " if self.ok else "FAIL"} {self.name}: {self.detail}'


def compare(got: dict, want: dict, mode: str) -> list[Check]:
  """Every check of `got` against the record `want` in `mode` ('exact' or 'tolerant')."""
  if mode not in ('exact', 'tolerant'):
    raise ValueError(f'mode={mode!r}, expected exact or tolerant')
  checks = [Check('batches', got['batches'] == want['batches'], 'digest of the input batches'),
            Check('skipped_steps', got['skipped_steps'] == want['skipped_steps'] == 0,
                  f"{got['skipped_steps']} skipped (recorded {want['skipped_steps']})")]
  if mode == 'exact':
    checks.append(Check('init', got['init'] == want['init'], 'parameters at initialisation'))
    for name in ('vae_loss', 'ebm_loss'):
      if name in want or name in got:
        a, b = got.get(name, []), want.get(name, [])
        steps = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        checks.append(Check(name, len(a) == len(b) and not steps,
                            f'{len(a)} steps (recorded {len(b)}), differing at {steps}'))
    checks.append(Check('final', got['final'] == want['final'],
                        'parameters and optimiser states after the last step'))
    return checks
  a, b = got.get('vae_loss', []), want.get('vae_loss', [])
  worst = max((ulps(float.fromhex(x), float.fromhex(y)) for x, y in zip(a, b)), default=0)
  m = worst / LOSS_TOL_ULPS if len(a) == len(b) else float('inf')
  checks.append(Check('vae_loss', m <= 1, f'{len(a)} steps (recorded {len(b)}), largest '
                      f'difference {worst} ulp (tolerance {LOSS_TOL_ULPS})', m))
  for state in STATES:
    how, tol = SUMMARIES[state]
    for tree in sorted(set(want['sketches'][state]) | set(got['sketches'][state])):
      d = leaf_distances(got['sketches'][state].get(tree, []),
                         want['sketches'][state].get(tree, []))
      value = float((max if how == 'max' else np.median)(d)) if d else 0.0
      checks.append(Check(f'{state}/{tree}', value <= tol, f'{how} of {len(d)} leaves '
                          f'{value / EPS:.3g} EPS (tolerance {tol / EPS:.0f} EPS)', value / tol))
  return checks


def margin(checks: list[Check]) -> float:
  """The largest margin of a tolerant comparison: above 1, it fails."""
  return max((c.margin for c in checks if c.margin is not None), default=0.0)


def dumps(records: dict) -> str:
  """JSON with each list of numbers or strings on one line (a leaf's sketch, a loss curve)."""
  text = json.dumps(records, indent=1, sort_keys=True)
  return re.sub(r'\[[^\[\]{}]*\]', lambda m: re.sub(r'\s*\n\s*', ' ', m.group(0))
                .replace('[ ', '[').replace(' ]', ']'), text) + '\n'
