"""The package's import graph stays layered: no cycle, and the directions that matter.

Read from the source with ast (imports inside functions included: a lazy import is still a
dependency), so nothing is imported to check it.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'moe_ebm_jax'


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The package modules `path` imports, anywhere in the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = {f'{node.module}.{a.name}' for a in node.names}
      # `from pkg import module` depends on the module; `from module import name` on the module.
      found.update(names & modules or {node.module})
  return {m for m in found if m in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
  paths = sorted(PACKAGE.rglob('*.py'))
  modules = {module_name(p) for p in paths}
  return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of `graph` as [a, b, ..., a], or None (depth-first search, three colours)."""
  colour, stack = {}, []

  def visit(node):
    colour[node] = 'grey'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if colour.get(nxt) == 'grey':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in colour and (cycle := visit(nxt)):
        return cycle
    colour[node] = 'black'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in colour and (cycle := visit(node)):
      return cycle
  return None


def reaches(graph: dict[str, set[str]], start: str, target: str) -> bool:
  seen, todo = set(), [start]
  while todo:
    node = todo.pop()
    if node == target:
      return True
    if node not in seen:
      seen.add(node)
      todo.extend(graph.get(node, ()))
  return False


def test_the_checker_finds_cycles_and_paths_on_known_graphs():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert reaches({'a': {'b'}, 'b': {'c'}}, 'a', 'c') and not reaches({'a': {'b'}}, 'b', 'a')


def test_the_checker_reads_the_package():
  graph = import_graph()
  assert len(graph) > 30 and 'moe_ebm_jax.train' in graph
  assert 'moe_ebm_jax.model_state' in graph['moe_ebm_jax.train']


def test_no_import_cycle():
  assert find_cycle(import_graph()) is None


def test_only_the_priors_know_the_ebm():
  """Training, generation and evaluation reach the EBM through the prior interface."""
  graph = import_graph()
  ebm = 'moe_ebm_jax.latent.ebm'
  importers = sorted(m for m, deps in graph.items() if ebm in deps)
  assert importers == ['moe_ebm_jax.latent.priors'], importers
  for module in ('moe_ebm_jax.generation', 'moe_ebm_jax.evaluation', 'moe_ebm_jax.train'):
    assert not reaches({m: d - {'moe_ebm_jax.model_state', 'moe_ebm_jax.latent.priors'}
                        for m, d in graph.items()}, module, ebm), module
  evaluators = [m for m in graph if m.startswith('moe_ebm_jax.evaluators')]
  assert evaluators and not any(ebm in graph[m] for m in evaluators)


def test_data_does_not_import_models_or_training():
  graph = import_graph()
  upper = {'moe_ebm_jax.vae.models', 'moe_ebm_jax.vae.objectives', 'moe_ebm_jax.latent.priors',
           'moe_ebm_jax.model_state', 'moe_ebm_jax.train', 'moe_ebm_jax.evaluation'}
  data = [m for m in graph if m.startswith('moe_ebm_jax.data.')]
  assert len(data) >= 4
  for module in data + ['moe_ebm_jax.vae.modalities', 'moe_ebm_jax.input_pipeline']:
    assert not any(reaches(graph, module, up) for up in upper), module


def test_the_folders_are_layered():
  """Package to package, imports run one way: vae below data and latent, both below the
  evaluators; no subpackage imports the trainer's modules above it."""
  graph = import_graph()
  package = lambda m: m.split('.')[1] if m.count('.') >= 2 else 'top'
  below = {'vae': set(), 'latent': {'vae'}, 'data': {'vae'},
           'evaluators': {'vae', 'latent', 'data'}}
  for module, deps in graph.items():
    if package(module) not in below:
      continue
    for dep in deps:
      if package(dep) != 'top':
        assert package(dep) in below[package(module)] | {package(module)}, (module, dep)
  trainer = {'moe_ebm_jax.train', 'moe_ebm_jax.model_state', 'moe_ebm_jax.config_lib',
             'moe_ebm_jax.evaluation'}
  for module in (m for m in graph if package(m) in ('vae', 'latent', 'data')):
    assert not graph[module] & trainer, module
