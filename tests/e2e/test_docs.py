"""The docs stay true: the flag tables are what the binaries' `--help` says now, every command has
one, and every relative link (and its #anchor) in the project's Markdown leads somewhere."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import flagdocs

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [ROOT / f for f in listed if (ROOT / f).exists() and "node_modules" not in f]


def prose(text: str, code_spans: bool = False) -> str:
    """The text outside fenced code blocks, where a `](x)` is a link; without its code spans
    unless asked (a heading's anchor keeps their text, as GitHub's does)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            out.append(line if code_spans else re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text(), code_spans=True).splitlines():
        m = re.match(r"^#{1,6} (.*)$", line)
        if not m:
            continue
        base = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_docs_flag_tables_are_what_each_binary_help_says(debug_bins):
    tables = flagdocs.commands(debug_bins)
    stale, seen = [], set()
    for doc in sorted(flagdocs.DOCS.glob("*.md")):
        text = doc.read_text()
        seen |= flagdocs.documented(text)
        if flagdocs.rewrite(text, tables) != text:
            stale.append(doc.relative_to(ROOT))
    assert not stale, f"flag tables differ from --help in {stale}: run tests/.venv/bin/python tests/e2e/flagdocs.py"
    missing = sorted(set(tables) - seen)
    assert not missing, f"commands with options but no flags block in docs/: {missing}"
    # The tables hold what a user looks for: the proxy's policy source and the operator's default.
    assert "`--policy <POLICY>` | `TOLLGATE_POLICY`" in (ROOT / "docs/configuration.md").read_text()
    assert "`--default-action <DEFAULT_ACTION>` | `TOLLGATE_DEFAULT_ACTION` | `deny`" in (ROOT / "docs/operator.md").read_text()


def test_docs_flag_parser_reads_both_help_layouts():
    beside = """Usage: x [OPTIONS]

Options:
      --url <URL>        The listener [env: X_URL=] [default: http://127.0.0.1:9091]
      --json             Print JSON
  -h, --help             Print help
"""
    below = """Options:
      --listen <LISTEN>
          Where it listens; `[::]` is both families [env: L=] [default: [::]:8443]
      --mode <MODE>
          How [default: a] [possible values: a, b]
"""
    h = flagdocs.parse(beside)
    assert [(o.flag, o.env, o.default, o.help) for o in h.options] == [
        ("--url <URL>", "X_URL", "http://127.0.0.1:9091", "The listener"),
        ("--json", "", "", "Print JSON"),
    ]
    h = flagdocs.parse(below)
    assert [(o.flag, o.env, o.default, o.help) for o in h.options] == [
        ("--listen <LISTEN>", "L", "[::]:8443", "Where it listens; `[::]` is both families"),
        ("--mode <MODE>", "", "a", "How (a | b)"),
    ]


def test_docs_every_relative_link_and_anchor_resolves():
    files = markdown_files()
    assert ROOT / "README.md" in files and len(files) > 8, files
    broken = []
    for md in files:
        for target in LINK.findall(prose(md.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            where = f"{md.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_docs_readme_front_page_names_both_commands_and_links_each_topic():
    readme = (ROOT / "README.md").read_text()
    assert "examples/quickstart.sh" in readme and "tests/run.sh" in readme
    for topic in ["policy", "install", "operator", "configuration", "security", "troubleshooting", "performance", "architecture",
                  "observability"]:
        assert f"(docs/{topic}.md" in readme, topic
    # A front page, not the reference: the reference lives in docs/. (It carries the tables of
    # MCP methods, of the dashboard and alerts, and of the performance targets, which a front
    # page owes its readers.)
    assert len(readme) < 15_000, len(readme)
