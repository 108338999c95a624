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
