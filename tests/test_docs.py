"""Every ```python block in README.md and docs/*.md runs; the API reference builds cleanly.

Blocks of one page share a namespace and run in order, in a temporary working directory.
A block preceded by the line ``<!-- no-test -->`` is skipped (for code that needs downloaded
weights or real data sets); the skips are counted and must stay few. Shell blocks are not run
here (CI runs README's commands), but every script and module they name must exist.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SKIP = "<!-- no-test -->"
MAX_SKIPPED = 6


def blocks(page: Path) -> list[tuple[str, str, bool, int]]:
    """``(language, code, skipped, line)`` of each fenced block of `page`."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        out.append((m.group(1), m.group(2), before == SKIP, text.count("\n", 0, m.start()) + 1))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for lang, code, skipped, line in blocks(page):
        if lang not in ("python", "py") or skipped:
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - re-raised with the block's location
            raise AssertionError(f"{page.name}, code block at line {line} failed: {exc!r}") from exc


def test_skipped_blocks_are_few():
    skipped = [f"{p.name}:{line}" for p in PAGES for _, _, s, line in blocks(p) if s]
    n_python = sum(lang in ("python", "py") for p in PAGES for lang, *_ in blocks(p))
    assert n_python > 0
    assert len(skipped) <= MAX_SKIPPED, skipped
    if skipped:  # reported in pytest's warnings summary
        warnings.warn(
            f"{len(skipped)} of {n_python} doc code blocks not run: {skipped}", stacklevel=1
        )


def test_commands_name_real_scripts_and_modules():
    # Anywhere on a page (shell blocks and inline code): scripts, modules and benchmarks exist.
    for page in PAGES:
        text = page.read_text()
        for script in re.findall(r"\b((?:examples|docs)/[\w/]+\.py)\b", text):
            assert (ROOT / script).is_file(), f"{page.name} names missing {script}"
        for module in re.findall(r"python3? -m (ram_ot[\w.]*)", text):
            path = ROOT / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
                f"{page.name} names missing module {module}"
            )
        for bench in re.findall(r"python3? -m ram_ot\.bench ([a-z][\w-]*)", text):
            assert (ROOT / "ram_ot" / "bench" / f"{bench.replace('-', '_')}.py").is_file(), (
                f"{page.name} names missing benchmark {bench}"
            )


def test_example_commands_use_real_options():
    # Every --option written after examples/<script>.py in a shell block is one the script accepts.
    used: dict[str, set[tuple[str, str]]] = {}
    for page in PAGES:
        for lang, code, _, line in blocks(page):
            if lang in ("python", "py", "text"):
                continue
            for command in code.replace("\\\n", " ").splitlines():
                m = re.search(r"(examples/\w+\.py)([^&|;#]*)", command)
                if m:
                    for option in re.findall(r"(?<!\S)(--[a-z][\w-]*)", m.group(2)):
                        used.setdefault(m.group(1), set()).add((option, f"{page.name}:{line}"))
    assert "examples/train_coco.py" in used
    for script, options in used.items():
        out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        known = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", out.stdout))
        unknown = sorted((o, where) for o, where in options if o not in known)
        assert not unknown, f"{script} does not accept {unknown}"


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    shell = [code for lang, code, _, _ in blocks(ROOT / "README.md") if lang == "bash"]
    assert "examples/train_coco.py --demo" in shell[0]
    test_command = shell[1].strip().split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == test_command  # CI runs exactly README's test command
    assert text.index(shell[0]) < text.index(shell[1]) < text.index("---")


def test_api_reference_builds_without_warnings(tmp_path):
    if importlib.util.find_spec("sphinx") is None:
        pytest.fail("building the API reference needs Sphinx: pip install -e '.[docs]'")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
           str(ROOT / "docs" / "api"), str(tmp_path / "html")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "html" / "index.html").is_file()
