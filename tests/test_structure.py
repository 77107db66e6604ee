"""Module boundaries of the package, checked on its source (the lint job checks style).

* safegrad's private modules call each other only through names without a leading underscore;
* version knowledge (``TF_VERSION``) is used only by the compat layer;
* no module is over 350 lines unless its docstring says why;
* no module-level name shadows a standard-library module.
"""

import ast
import os
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "safegrad")
MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py"))
COMPAT_LAYER = {"_tf", "_compat", "_keras_compat"}
MAX_LINES = 350


def _tree(module):
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        source = f.read()
    return source, ast.parse(source)


def private_uses(module):
    """(line, text) of each private name this module takes from another safegrad module."""
    _, tree = _tree(module)
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "safegrad":
            for alias in node.names:
                if node.module == "safegrad" and alias.name in MODULES:  # a module, e.g. _compat
                    module_aliases[alias.asname or alias.name] = alias.name
                elif alias.name.startswith("_") and alias.name != "__version__":
                    found.append((node.lineno, "from {} import {}".format(node.module, alias.name)))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
        ):
            found.append((node.lineno, "{}.{}".format(node.value.id, node.attr)))
    return found


@pytest.mark.parametrize("module", MODULES)
def test_modules_use_only_each_others_public_names(module):
    assert private_uses(module) == []


def test_the_check_itself_finds_a_private_import(tmp_path, monkeypatch):
    (tmp_path / "_a.py").write_text("from safegrad._b import _hidden\nfrom safegrad import _b\nx = _b._secret\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "MODULES", ["_a", "_b"])
    assert [text for _, text in private_uses("_a")] == ["from safegrad._b import _hidden", "_b._secret"]


@pytest.mark.parametrize("module", sorted(set(MODULES) - COMPAT_LAYER))
def test_version_knowledge_lives_in_the_compat_layer(module):
    _, tree = _tree(module)
    uses = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "TF_VERSION"]
    imports = [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and any(a.name == "TF_VERSION" for a in node.names)
    ]
    assert uses + imports == []


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_small_or_say_why(module):
    source, tree = _tree(module)
    lines = source.count("\n")
    if lines > MAX_LINES:
        assert "longer than" in (ast.get_docstring(tree) or ""), "{} has {} lines".format(module, lines)


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names: Python >= 3.10")
@pytest.mark.parametrize("module", MODULES)
def test_no_name_shadows_a_standard_library_module(module):
    _, tree = _tree(module)
    defined = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    } | {
        target.id for node in tree.body if isinstance(node, ast.Assign)
        for target in node.targets if isinstance(target, ast.Name)
    }
    assert sorted(defined & set(sys.stdlib_module_names)) == []


@pytest.mark.parametrize("script", ["bench_step.py", "bench_scale.py", "bench_models.py", "bench_memory.py", "run.py"])
def test_benchmark_scripts_still_import(script):
    # The benchmarks run outside the matrix (tox -e bench-*): at least their imports are checked here.
    path = os.path.join(os.path.dirname(PACKAGE), "benchmarks", script)
    result = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-3000:]
