"""The mutants of tests/mutation_check.py still point at code that exists: each snippet occurs
exactly once in its file, each mutant changes it, and the tests it names exist. (Running the
mutants takes tens of minutes: `python tests/mutation_check.py`, not part of the suite.)"""
from pathlib import Path

import mutation_check

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutant_snippet_occurs_once_and_its_tests_exist():
    assert mutation_check.snippet_problems() == []
    names = [m.name for m in mutation_check.MUTANTS]
    assert len(names) == len(set(names))
    for m in mutation_check.MUTANTS:
        assert m.old != m.new and m.tests, m.name
        for t in m.tests:
            assert (ROOT / t.split("::")[0]).is_file(), (m.name, t)


def test_snippet_problems_names_a_moved_snippet(tmp_path):
    for other in mutation_check.MUTANTS:
        (tmp_path / other.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / other.path).write_text((ROOT / other.path).read_text())
    m = mutation_check.MUTANTS[0]
    (tmp_path / m.path).write_text((ROOT / m.path).read_text().replace(m.old, "moved"))
    assert mutation_check.snippet_problems(tmp_path) == [f"{m.name}: its snippet occurs 0 times in {m.path}"]
