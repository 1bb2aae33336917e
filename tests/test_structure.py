"""The package's structure, read from its source with `ast` (nothing is imported to check it).

1. No import cycles between paddlebloom's modules. Every import counts, function-local ones too: a
   cycle hidden inside a function is still a cycle (checkpoint <-> convert_hf was one). Importing
   `a.b.c` also runs the `__init__` of each package on the way that the importer is not inside.
2. Imports sit at the top of their module. A function-local import is allowed only when it carries
   a marker comment, on its line or in the comment lines just above it, saying why it must wait:
       # optional: <package> - <why>   a third-party package only this code path needs, too heavy (or
                                        too rarely installed) to load for everything else; e.g.
                                        `import matplotlib  # optional: matplotlib - only for plots`
       # lazy: <why>                   any other deliberate deferral, e.g. a module deployment must
                                        not load, named with the reason
   A circular import is never a reason: move the shared code to the module both sides can import.
3. Inside the package a name is imported from the module that defines it (a package's __init__ may
   gather its submodules' names): no second door to the same helper, as atomic writes once had
   (paddlebloom.atomic and paddlebloom.checkpoint).
4. Deployment (the exported program, its tokenizer, the engine and the data templates) does not load
   the training model stack: a fresh interpreter importing the serving and deploy entry points has
   no paddlebloom.model, paddlebloom.loading, paddlebloom.training or paddlenlp in sys.modules.
"""

import ast
import os
import re
import subprocess
import sys

from conftest import ROOT, _env

PACKAGE = "paddlebloom"
MARKER = re.compile(r"#\s*(optional|lazy):\s*\S")

# Files whose function-local imports another change removes: their local imports are neither checked
# for markers nor counted as edges. Empty: the adapter interface (issue 15) cleaned the files it listed.
PENDING = set()


def package_files():
    """{module name: path relative to ROOT} for every source file of the package (not build output)."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)
                parts = rel[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = rel
    return modules


def _is_package(module, modules):
    return modules.get(module, "").endswith("__init__.py")


def _imports(tree):
    """(node, inside a function?) for every import statement of a module."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _targets(node, module, modules):
    """The package modules an import statement loads (the named ones; `from m import sub` adds m.sub)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if _is_package(module, modules) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return []
    return [source] + [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]


def _with_packages(target, importer):
    """`target` and the packages whose __init__ importing it runs, less those enclosing the importer
    (already running or run: `from . import sampler` inside paddlebloom.engine loads only the sampler)."""
    parts = target.split(".")
    chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [m for m in chain if not importer.startswith(m + ".")]


def _comment_block(lines, lineno):
    """The import's own line and the comment lines directly above it."""
    block, n = [lines[lineno - 1]], lineno - 1
    while n >= 1 and lines[n - 1].strip().startswith("#"):
        block.append(lines[n - 1])
        n -= 1
    return block


def import_graph():
    """({module: {imported modules}}, [(file, line, statement) of unmarked function-local imports])."""
    modules = package_files()
    graph, unmarked = {m: set() for m in modules}, []
    for module, rel in modules.items():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines()
        for node, local in _imports(ast.parse(source, rel)):
            if local and rel in PENDING:
                continue
            if local and not any(MARKER.search(line) for line in _comment_block(lines, node.lineno)):
                unmarked.append((rel, node.lineno, lines[node.lineno - 1].strip()))
            for target in _targets(node, module, modules):
                graph[module].update(t for t in _with_packages(target, module) if t in modules and t != module)
    return graph, unmarked


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for nxt in sorted(graph[module]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    graph, _ = import_graph()
    assert (
        "paddlebloom.weights" in graph["paddlebloom.checkpoint"]
        and "paddlebloom.weights" in graph["paddlebloom.convert_hf"]
    )
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_cycles_through_functions_and_packages():
    # The checker itself: a cycle closed by a function-local import, and one closed through a
    # package __init__ that imports its own submodule, are both found; a DAG is not reported.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    tree = ast.parse("def f():\n    from .checkpoint import x\n")
    ((node, local),) = _imports(tree)
    modules = {
        "paddlebloom": "paddlebloom/__init__.py",
        "paddlebloom.checkpoint": "paddlebloom/checkpoint.py",
        "paddlebloom.engine": "paddlebloom/engine/__init__.py",
        "paddlebloom.engine.decoder": "paddlebloom/engine/decoder.py",
    }
    assert local and _targets(node, "paddlebloom.convert_hf", modules) == ["paddlebloom.checkpoint"]
    assert _with_packages("paddlebloom.engine.decoder", "paddlebloom.serving.api") == [
        "paddlebloom.engine",
        "paddlebloom.engine.decoder",
    ]
    assert _with_packages("paddlebloom.engine.decoder", "paddlebloom.engine.beam") == ["paddlebloom.engine.decoder"]


def test_function_local_imports_say_why():
    _, unmarked = import_graph()
    listing = "\n".join(f"  {rel}:{line}: {text}" for rel, line, text in unmarked)
    assert not unmarked, (
        "function-local imports without a `# optional: <package>` or `# lazy: <why>` comment "
        f"(move them to the module top, see this file's docstring):\n{listing}"
    )


def _defined_names(tree):
    """Names a module defines at its top level (functions, classes, assignments, also under if/try)."""
    names, pending = set(), list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)  # not its body: a function's locals are not the module's names
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            pending += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return names


def reexported_imports():
    """(file, line, module, name) of every `from paddlebloom.M import name` where M does not define name."""
    modules = package_files()
    trees = {m: ast.parse(open(os.path.join(ROOT, rel), encoding="utf-8").read(), rel) for m, rel in modules.items()}
    defined = {m: _defined_names(tree) for m, tree in trees.items()}
    found = []
    for module, tree in trees.items():
        for node, _ in _imports(tree):
            source = (_targets(node, module, modules) or [None])[0] if isinstance(node, ast.ImportFrom) else None
            if source not in modules or _is_package(source, modules):
                continue
            found += [
                (modules[module], node.lineno, source, alias.name)
                for alias in node.names
                if f"{source}.{alias.name}" not in modules and alias.name not in defined[source]
            ]
    return found


def test_names_are_imported_from_where_they_are_defined():
    listing = "\n".join(f"  {rel}:{line}: {name} from {source}" for rel, line, source, name in reexported_imports())
    assert not listing, (
        f"imported through a module that only imports them (import from the defining module):\n{listing}"
    )


def test_pending_files_exist():
    # The allow-list names real files (a renamed file must not silently escape the check).
    missing = sorted(rel for rel in PENDING if not os.path.isfile(os.path.join(ROOT, rel)))
    assert not missing, f"PENDING lists files that do not exist: {missing}"


def test_deployment_does_not_load_the_training_stack():
    code = (
        "import sys\n"
        "import paddlebloom.serving.cli, paddlebloom.serving.server, paddlebloom.deploy.cli\n"
        "heavy = ('paddlebloom.model', 'paddlebloom.loading', 'paddlebloom.training', 'paddlenlp')\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", f"deployment imports the training stack: {proc.stdout.strip()}"
