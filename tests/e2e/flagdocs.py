"""The flag tables in docs/, generated from each binary's own `--help`.

A block in a Markdown file under docs/

    <!-- flags: tollgate proxy -->
    (anything)
    <!-- end flags -->

holds the table of `tollgate proxy --help`'s options: flag, environment variable, default and
what it does, in the binary's own words. `test_docs.py` fails when a block differs from what the
binaries say now, or when a command (subcommands included) has no block; rerun this file to
rewrite the blocks:

    cargo build -p tollgate-operator -p tollgate-sidecar
    tests/.venv/bin/python tests/e2e/flagdocs.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Each binary and the name its commands go by in the docs (kubectl runs kubectl-tollgate as a plugin).
BINARIES = {"tollgate": "tollgate", "tollgate-operator": "tollgate-operator", "kubectl-tollgate": "kubectl tollgate"}
BLOCK = re.compile(r"(<!-- flags: (?P<command>[^>]+?) -->\n)(?P<body>.*?)(<!-- end flags -->)", re.S)
# clap's notes after the help; a value may hold brackets itself (`[default: [::]:8443]`).
NOTE = re.compile(r"\s*\[(env|default|possible values|aliases): ((?:[^\[\]]|\[[^\]]*\])*)\]")


@dataclass
class Option:
    flag: str
    env: str
    default: str
    help: str


@dataclass
class Help:
    options: list[Option]
    subcommands: list[str]


def parse(text: str) -> Help:
    """Reads clap's `--help`: its `Arguments:`, `Options:` and `Commands:` sections, in either
    layout (help beside the flag, or on the lines below it)."""
    options: list[Option] = []
    subcommands: list[str] = []
    section = None
    entry: list[str] | None = None

    def finish() -> None:
        if entry is None:
            return
        head, *rest = entry
        parts = re.split(r"\s{2,}", head.strip(), maxsplit=1)
        flag = parts[0]
        words = " ".join([parts[1]] if len(parts) > 1 else []) + " " + " ".join(r.strip() for r in rest)
        notes = dict(NOTE.findall(words))
        words = NOTE.sub("", words).strip()
        if flag in ("-h, --help", "-V, --version"):
            return
        if "possible values" in notes:
            values = notes["possible values"].replace(", ", " | ")
            words = f"{words} ({values})".strip()
        options.append(Option(flag, notes.get("env", "").rstrip("="), notes.get("default", ""), words))

    for line in text.splitlines():
        if re.match(r"^[A-Z][\w ]*:$", line):
            finish()
            entry = None
            section = line[:-1]
            continue
        if section == "Commands":
            m = re.match(r"^  (\S+)", line)
            if m and m.group(1) != "help":
                subcommands.append(m.group(1))
            continue
        if section not in ("Options", "Arguments"):
            continue
        if re.match(r"^ {2,6}[-<\[]", line):
            finish()
            entry = [line]
        elif entry is not None and line.strip():
            entry.append(line)
    finish()
    return Help(options, subcommands)


def render(options: list[Option]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    def code(s: str) -> str:
        return f"`{s}`" if s else ""

    rows = ["| flag | env | default | |", "|---|---|---|---|"]
    for o in options:
        default = o.default if o.default not in ('""', "") else ""
        rows.append(f"| {code(cell(o.flag))} | {code(o.env)} | {code(cell(default))} | {cell(o.help)} |")
    return "\n".join(rows) + "\n"


def commands(bin_dir: Path) -> dict[str, str]:
    """Every command of every binary, by the name the docs use, with its rendered table."""
    out: dict[str, str] = {}

    def visit(binary: str, args: list[str]) -> None:
        text = subprocess.run([bin_dir / binary, *args, "--help"], capture_output=True, text=True, check=True).stdout
        h = parse(text)
        name = " ".join([BINARIES[binary], *args])
        if h.options:
            out[name] = render(h.options)
        for sub in h.subcommands:
            visit(binary, [*args, sub])

    for binary in BINARIES:
        visit(binary, [])
    return out


def rewrite(text: str, tables: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        command = m.group("command")
        if command not in tables:
            raise KeyError(f"a flags block names `{command}`, which has no options or does not exist")
        return m.group(1) + tables[command] + m.group(4)

    return BLOCK.sub(one, text)


def documented(text: str) -> set[str]:
    return {m.group("command") for m in BLOCK.finditer(text)}


if __name__ == "__main__":
    bins = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "debug"
    tables = commands(bins)
    seen: set[str] = set()
    for doc in sorted(DOCS.glob("*.md")):
        text = doc.read_text()
        doc.write_text(rewrite(text, tables))
        seen |= documented(text)
    missing = sorted(set(tables) - seen)
    if missing:
        sys.exit(f"no flags block in {DOCS} for: {', '.join(missing)}")
