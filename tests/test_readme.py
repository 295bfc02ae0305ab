"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(first) == 2
    assert "rawflow demo" in first[0] and "pytest" in first[1]


def test_readme_links_stay_inside_the_repository():
    """Seen: the README cited a ``DESIGN.md §3`` that is not in the repository (issue 13, item 18)."""
    root = README.parent
    for doc in [README, root / "rawflow" / "check" / "README.md", root / "benchmarks" / "README.md",
                *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "DESIGN.md" not in text, doc  # a file outside the repository
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_install_notes_are_true():
    import tomllib

    text = README.read_text()
    extras = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "jax" in extras and any(r.startswith("jax") for r in extras["jax"])  # rawflow/check's JAX example
    assert "pip install -e '.[jax]'" in (README.parent / "rawflow" / "check" / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text  # the CPU build before '.[interop]'
    assert text.index("whl/cpu") < text.index("pip install -e '.[interop]'      #")


def test_no_docstring_cites_a_file_outside_the_repository():
    root = README.parent
    sources = [*(root / "rawflow").rglob("*.py"), *(root / "kernels").glob("*.py"), *(root / "benchmarks").glob("*.py")]
    assert sources
    bad = [str(p.relative_to(root)) for p in sources if "DESIGN.md" in p.read_text()]
    assert not bad, bad
