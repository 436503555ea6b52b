"""Every module of the installed package imports, and the floors of the design hold.

A broken binary dependency (e.g. a torchaudio built against another torch, which raises
`OSError: ... undefined symbol` on import) must fail here, in CI, not in a user's run.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import efficient_tagging

MODULES = sorted(m.name for m in pkgutil.walk_packages(efficient_tagging.__path__, "efficient_tagging."))
PACKAGE_DIR = Path(efficient_tagging.__file__).resolve().parent

# DESIGN.md floors, bottom up: a module may import only from its own floor or the floors below.
FLOORS = [
    {"audio", "resample", "labels", "hub", "locking", "interrupt", "hardware", "textfile"},
    {"frontends"},
    {"models", "complexity"},
    {"data"},
    {"tagging", "export"},
    {"train"},
    {"labelling"},
    {"cli"},
]
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def test_walk_finds_the_layout():
    for name in ("efficient_tagging.frontends.mel", "efficient_tagging.frontends.ast_fbank",
                 "efficient_tagging.tagging.tagger", "efficient_tagging.tagging.ensemble",
                 "efficient_tagging.labelling", "efficient_tagging.cli.audioset", "efficient_tagging.cli.label",
                 "efficient_tagging.cli.prepare", "efficient_tagging.cli.tag", "efficient_tagging.cli.complexity"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_pinned_stack_is_the_working_pair():
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == "2.11.0"
    assert torchvision.__version__.split("+")[0] == "0.26.0"
    try:  # optional: the tests' oracle (the `oracle` extra), pinned to the torch it loads with
        import torchaudio
    except ImportError:
        return
    assert torchaudio.__version__.split("+")[0] == "2.11.0"


def test_every_module_is_on_a_floor():
    rooms = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert rooms <= set(FLOOR_OF), f"modules on no floor (add them to FLOORS): {sorted(rooms - set(FLOOR_OF))}"


def test_public_names_at_top_level():
    for name in ("get_model", "AudioTagger", "AugmentMelSTFT", "TeacherEnsemble", "save_checkpoint", "ASTFbank",
                 "LabelMap", "build_frontend"):
        assert hasattr(efficient_tagging, name), name


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE_DIR).parts[0].removesuffix(".py")


def _imported_rooms(path: Path) -> set[str]:
    """Top-level rooms of the package that `path` imports (relative or absolute imports)."""
    tree = ast.parse(path.read_text())
    package_parts = path.relative_to(PACKAGE_DIR).parent.parts
    rooms = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[:len(package_parts) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # `from . import x` at the package root
                    target = [alias.name for alias in node.names]
                    rooms.update(target)
                    continue
            elif node.module and node.module.startswith("efficient_tagging."):
                target = node.module.split(".")[1:]
            else:
                continue
            rooms.add(target[0])
    return rooms


def test_no_module_imports_from_a_higher_floor():
    upward = []
    for path in PACKAGE_DIR.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE_DIR:
            continue  # the package root re-exports the public names of every floor
        room = _room(path)
        for imported in _imported_rooms(path):
            if imported in FLOOR_OF and room in FLOOR_OF and FLOOR_OF[imported] > FLOOR_OF[room]:
                upward.append(f"{path.relative_to(PACKAGE_DIR)} imports {imported}")
    assert not upward, "imports up the floors: " + "; ".join(sorted(upward))
