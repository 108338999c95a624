"""The README's "use the fused ops in your own model" example runs as printed."""
import re
from pathlib import Path


def test_fused_ops_example_runs(capsys):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Use the fused ops in your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "-ELBO" in capsys.readouterr().out


def test_console_scripts_name_the_cli_mains():
    """pyproject's [project.scripts] (zf-train, zf-evaluate, zf-sample) point at the mains of
    ``python -m zf_kernels.train|evaluate|sample``, which take argv and return an exit status."""
    import importlib
    import inspect
    import tomllib
    scripts = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"zf-train", "zf-evaluate", "zf-sample"}
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert module == f"zf_kernels.{name.removeprefix('zf-')}" and attr == "main", name
        main = getattr(importlib.import_module(module), attr)
        assert list(inspect.signature(main).parameters)[0] == "argv", name


def test_an_older_torch_is_refused_by_name_and_pyproject_asks_for_the_same():
    """zf_kernels.MIN_TORCH, the oldest torch the suite has passed under: below it the import
    says so (torch 2.4's custom_op otherwise failed deep inside torch.library); pyproject's
    dependency names the same floor."""
    import subprocess
    import sys
    import tomllib

    import zf_kernels
    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={zf_kernels.MIN_TORCH}" in deps
    probe = ("import torch; from torch.torch_version import TorchVersion; "
             "torch.__version__ = TorchVersion({!r}); import zf_kernels")
    older = subprocess.run([sys.executable, "-c", probe.format("2.7.1")], capture_output=True, text=True)
    assert older.returncode != 0 and "zf_kernels needs torch >= 2.8, found torch 2.7.1" in older.stderr, older.stderr
    dev_build = subprocess.run([sys.executable, "-c", probe.format("2.8.0a0+git1234")], capture_output=True, text=True)
    assert dev_build.returncode == 0, dev_build.stderr
