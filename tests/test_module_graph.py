"""docs/DESIGN.md's module picture is generated from the code, and the layering rules hold."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "docs" / "module_graph.py"


def _graph():
    spec = importlib.util.spec_from_file_location("module_graph_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_design_md_block_is_current_and_rules_hold():
    """As a contributor runs it: stale picture or a broken rule -> exit 1 with the reason."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_real_tree_imports_resolve_to_modules():
    graph = _graph()
    modules = graph.read_modules()
    assert {"pipeline.run", "transforms.read", "model.osnet"} <= set(modules)
    assert "transforms.read" in modules["pipeline.build"].imports
    assert not graph.problems(modules)
    beam = graph.uses_beam(modules)
    assert beam["transforms.read"] and not beam["transforms.crop_codec"] and not beam["model.osnet"]


def test_back_arrow_cycle_and_beam_in_model_are_reported(tmp_path):
    graph = _graph()
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/run.py": "from transforms import read\n",
        "transforms/__init__.py": "",
        "transforms/read.py": "import apache_beam as beam\nfrom .codec import decode\n",
        "transforms/codec.py": "def decode():\n    from pipeline.run import x  # back arrow, lazily\n",
        "model/__init__.py": "",
        "model/net.py": "from transforms.codec import decode\n",
        "model/a.py": "from model import b\n",
        "model/b.py": "from . import a\n",
    })
    modules = graph.read_modules(root)
    assert modules["transforms.read"].imports == {"transforms.codec"}
    found = "\n".join(graph.problems(modules))
    assert "transforms.codec imports pipeline.run: transforms may not import from pipeline" in found
    assert "model.net imports transforms.codec: model may not import from transforms" in found
    assert "import cycle: model.a -> model.b -> model.a" in found
    # net -> codec -> (lazily) pipeline.run -> transforms.read -> apache_beam
    assert "model.net imports Apache Beam (model/ must stay Beam-free)" in found
    assert "model.a imports Apache Beam" not in found


def test_beam_reached_through_another_module_counts(tmp_path):
    graph = _graph()
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "", "transforms/__init__.py": "",
        "model/__init__.py": "", "model/io.py": "from apache_beam.io.filesystems import FileSystems\n",
        "model/net.py": "import model.io\n",
    })
    found = graph.problems(graph.read_modules(root))
    assert "model.net imports Apache Beam (model/ must stay Beam-free)" in found
    assert "model.io imports Apache Beam (model/ must stay Beam-free)" in found


def test_stale_block_is_refused(tmp_path):
    design = tmp_path / "DESIGN.md"
    graph = _graph()
    design.write_text(f"# Design\n{graph.BEGIN}\nold picture\n{graph.END}\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--design", str(design)],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "is stale" in done.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--write", "--design", str(design)], cwd=REPO_ROOT, check=True)
    assert "flowchart TB" in design.read_text() and design.read_text().startswith("# Design\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--design", str(design)],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
