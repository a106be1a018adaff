"""Named components (datasets, encoder and decoder families, likelihoods, objectives, samplers,
priors): a dict that refuses a name registered twice and says what is registered when a name is
unknown.

A component may own part of the config: `config` (a function -> {section: {field: default}}) adds
its fields to the sections named (config_lib.base_config merges them), and `validate` (a function
of the whole config that raises ValueError('invalid config: ...')) checks them (config_lib.validate
runs every registered one)."""

from __future__ import annotations

from typing import Any, Callable


class Registry(dict):
  """name -> component. `what` names the kind in messages ('sampler', 'dataset', ...)."""

  def __init__(self, what: str):
    super().__init__()
    self.what = what
    self.configs: dict[str, Callable[[], dict[str, Any]]] = {}
    self.validators: dict[str, Callable[[Any], None]] = {}

  def add(self, name: str, value: Any, *, config: Callable[[], dict[str, Any]] | None = None,
          validate: Callable[[Any], None] | None = None) -> Any:
    if name in self:
      raise ValueError(f'{self.what} {name!r} is already registered ({self[name]!r}).')
    self[name] = value
    if config is not None:
      self.configs[name] = config
    if validate is not None:
      self.validators[name] = validate
    return value

  def register(self, name: str, **owned) -> Callable[[Any], Any]:
    """Decorator: registers the decorated function or class under `name` (with `config` and
    `validate`, as `add`); returns it."""
    return lambda value: self.add(name, value, **owned)

  def lookup(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise ValueError(f'unknown {self.what} {name!r}; registered: {sorted(self)}.') from None


def check(ok: bool, message: str) -> None:
  """Raises ValueError('invalid config: <message>') unless `ok`: what validators call."""
  if not ok:
    raise ValueError(f'invalid config: {message}')
