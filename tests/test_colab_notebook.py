"""The Colab notebook: valid nbformat 4, and its code cells run in order in smoke mode on CPU.

The cells run in a fresh interpreter (one namespace, as in a notebook kernel), with
CRITICAL_KL_SMOKE=1 and the persistent XLA compilation cache of the other tests. Lines of IPython
syntax (`!...`, `%...`) and IPython imports are dropped: IPython is no dependency of the package,
so `display` and `Image` are stand-ins that print, and `get_ipython()` is one that fails on any
shell command, so that a smoke run that would install something fails the test.
"""
import json
import os
import subprocess
import sys

import nbformat

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")
CACHE = os.path.join(ROOT, ".pytest_cache", "xla")

RUNNER = r"""
import json, sys, time

import jax

jax.config.update("jax_compilation_cache_dir", sys.argv[2])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

IPYTHON_ONLY = ("!", "%", "from IPython", "import IPython")


class Shell:
  def system(self, command):
    raise AssertionError(f"shell command in a smoke run: {command}")


# What the IPython-only lines would have provided (IPython is not a dependency of the package).
namespace = {"__name__": "__main__", "get_ipython": Shell, "Image": lambda path: f"<image {path}>",
             "display": print}
start = time.time()
with open(sys.argv[1]) as f:
  cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
for i, cell in enumerate(cells):
  lines = "".join(cell["source"]).splitlines()
  code = "\n".join(l for l in lines if not l.lstrip().startswith(IPYTHON_ONLY))
  exec(compile(code, f"<code cell {i}>", "exec"), namespace)
  print(f"CELL {i} DONE {time.time() - start:.1f}s", flush=True)
"""


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_valid_nbformat_4():
  with open(NOTEBOOK) as f:
    raw = json.load(f)
  assert raw["nbformat"] == 4
  nb = nbformat.reads(json.dumps(raw), as_version=4)
  nbformat.validate(nb)
  cells = _code_cells(nb)
  tags = [c.metadata.get("tags", []) for c in cells]
  # The SMOKE switch comes first and the install cell right after it, before anything imports jax.
  assert "smoke-switch" in tags[0] and "CRITICAL_KL_SMOKE" in cells[0].source
  assert "install" in tags[1] and "REPO_URL" in cells[1].source
  assert "critical_kl[tpu] @ git+" in cells[1].source
  assert not any("import jax" in c.source for c in cells[:2])
  # No outputs are stored: the notebook is source, not a record of one run.
  assert all(not c.outputs and c.execution_count is None for c in cells)


def test_notebook_runs_in_smoke_mode(tmp_path):
  env = dict(os.environ, CRITICAL_KL_SMOKE="1", CRITICAL_KL_WORKDIR=str(tmp_path),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", RUNNER, NOTEBOOK, CACHE], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  with open(NOTEBOOK) as f:
    num_code = sum(c["cell_type"] == "code" for c in json.load(f)["cells"])
  assert f"CELL {num_code - 1} DONE" in proc.stdout, proc.stdout[-2000:]
  assert "smoke run" in proc.stdout
  assert os.path.getsize(tmp_path / "learning_curves.png") > 1000
  with open(tmp_path / "summary.json") as f:
    summary = json.load(f)
  assert list(summary["arms"]) == ["standard", "prioritized", "matched", "oracle", "no_kl"]
  assert summary["config"]["num_seeds"] == 2  # the smoke sizes were in force
