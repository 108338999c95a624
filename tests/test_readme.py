"""The README's "use the fused ops in your own model" example runs as printed."""
import re
from pathlib import Path


def test_fused_ops_example_runs(capsys):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Use the fused ops in your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "-ELBO" in capsys.readouterr().out
