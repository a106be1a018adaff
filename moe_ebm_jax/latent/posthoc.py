"""Post-hoc priors as components: densities fitted to a trained model's aggregate posterior
after training (MultiVae's samplers), each a registered fitter that returns a prior of
priors.py's interface. config.posthoc selects and sets them (fit_prior.py runs them).

  def fit_name(settings, z, key) -> (prior, params, info)     z: (N, D) latents to fit
  posthoc.register('name', fit_name, MyPrior, config=..., validate=...)

The prior class is rebuilt from its dataclass fields when a fitted prior is loaded.
Registered: 'gmm' (a Gaussian mixture by EM, mixture.py), 'flow' (a coupling flow fitted by
maximum likelihood, flow.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ml_collections import config_dict

from moe_ebm_jax import registry
from moe_ebm_jax.latent import flow
from moe_ebm_jax.latent import mixture

FITTERS: registry.Registry = registry.Registry('post-hoc prior')
SOURCES = ('samples', 'means')  # What is fitted: z ~ q(z | X), or the mean of q(z | X).


@dataclasses.dataclass(frozen=True)
class Fitter:
  fit: Callable[..., tuple[Any, Any, dict]]  # (settings, z (N, D), key) -> (prior, params, info)
  prior: type  # The prior's class: a fitted prior is rebuilt as prior(**its fields).


def register(name: str, fit, prior: type, **owned) -> Fitter:
  """Registers `fit` under `name` (config.posthoc.prior), with the config.posthoc fields it owns
  (`config`, `validate`: registry.py). Names are unique."""
  return FITTERS.add(name, Fitter(fit, prior), **owned)


def get(name: str):
  return FITTERS.lookup(name)


def default_config() -> dict:
  """config.posthoc: which post-hoc prior fit_prior fits, and on what."""
  return {'posthoc': {
      'prior': config_dict.placeholder(str),  # A FITTERS name; None: the run's own prior.
      'source': 'samples',  # One of SOURCES (both are measured in docs/results.md).
      'num_train_examples': config_dict.placeholder(int),  # The first N train tuples; None: all.
      'seed': 0,  # Of the latents drawn and the fit's initialisation.
  }}


def validate(config) -> None:
  p, check = config.posthoc, registry.check
  check(p.prior is None or p.prior in FITTERS,
        f'posthoc.prior={p.prior!r} is not one of {sorted(FITTERS)}')
  check(p.source in SOURCES, f'posthoc.source={p.source!r}, expected one of {SOURCES}')
  check(p.num_train_examples is None or p.num_train_examples >= 2,
        f'posthoc.num_train_examples={p.num_train_examples!r} must be >= 2 or None')


def _gmm_config() -> dict:
  return {'posthoc': {
      'num_components': 10,  # K (MultiVae's default); see component_choices.
      'component_choices': (),  # K candidates, chosen by held-out likelihood; (): num_components.
      'covariance': 'full',  # 'full' (MultiVae's) or 'diag'.
      'max_iter': 500,
      'tol': 1e-3,  # Stop when the mean log-likelihood gains less (sklearn's default).
  }}


def _validate_gmm(config) -> None:
  p, check = config.posthoc, registry.check
  check(p.num_components >= 1, f'posthoc.num_components={p.num_components} must be >= 1')
  check(all(int(k) >= 1 for k in p.component_choices),
        f'posthoc.component_choices={p.component_choices!r} must be counts >= 1')
  check(p.covariance in mixture.COVARIANCES,
        f'posthoc.covariance={p.covariance!r}, expected one of {mixture.COVARIANCES}')


def fit_gmm(settings, z, key):
  """A Gaussian mixture fitted by EM (K fixed, or chosen by held-out likelihood)."""
  options = dict(covariance=settings.covariance, max_iter=settings.max_iter, tol=settings.tol)
  if settings.component_choices:
    params, info = mixture.fit_selecting(z, tuple(settings.component_choices), key, **options)
  else:
    params, info = mixture.fit(z, settings.num_components, key, **options)
    info['num_components'] = settings.num_components
  return mixture.GaussianMixturePrior(info['num_components'], settings.covariance), params, info


register('gmm', fit_gmm, mixture.GaussianMixturePrior, config=_gmm_config, validate=_validate_gmm)


def _flow_config() -> dict:
  return {'posthoc': {
      'flow_layers': 6,  # Coupling layers.
      'flow_hidden': (64, 64),  # Each layer's MLP.
      'flow_steps': 2000,  # Adam steps on minibatches of the latents.
      'flow_batch_size': 256,
      'flow_learning_rate': 1e-3,
  }}


def _validate_flow(config) -> None:
  p, check = config.posthoc, registry.check
  check(p.flow_layers >= 1 and all(int(w) >= 1 for w in p.flow_hidden),
        f'posthoc.flow_layers={p.flow_layers}, flow_hidden={p.flow_hidden!r}: positive counts')
  check(p.flow_steps >= 1 and p.flow_batch_size >= 1 and p.flow_learning_rate > 0,
        'posthoc.flow_steps, flow_batch_size and flow_learning_rate must be positive')


def fit_flow(settings, z, key):
  """A coupling flow fitted by maximum likelihood (10% of z held out to report its NLL)."""
  prior = flow.FlowPrior(settings.flow_layers, tuple(settings.flow_hidden))
  params, info = flow.fit(z, key, prior, steps=settings.flow_steps,
                          batch_size=settings.flow_batch_size,
                          learning_rate=settings.flow_learning_rate)
  return prior, params, info


register('flow', fit_flow, flow.FlowPrior, config=_flow_config, validate=_validate_flow)
