#!/usr/bin/env python3
"""Check that the commands the docs show are commands that work.

Run by .ci/run after the tests (it needs target/debug/switchctl). It reads
every ```sh / ```bash block of README.md and docs/*.md, and:

- a `switchctl ...` line (also inside `cargo run -- ...`): the real binary
  parses it (the line is run with `--help` appended, so clap checks every
  subcommand and flag before it, and nothing is started);
- a script of the repository (`packaging/...sh`, `benches/...sh`,
  `tests/...sh`): it exists and `bash -n` accepts it;
- every relative Markdown link and every repository path written in
  backquotes (`examples/...`, `src/...`) points at a file that exists;
- README's first command, the demo, is run for real (debug build).

Lines that need a real host (systemctl, apt, useradd, ssh, tar of
/var/lib/...) are the documented subset left out: they are listed, not run.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "debug" / "switchctl"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = {"<tag>": "v1", "<shell>": "bash", "<bash|zsh|fish>": "bash", "<user>": "deploy"}
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "<", "&"}

failures = []
skipped = []


def fail(doc, line, why):
    failures.append(f"{doc.relative_to(ROOT)}: {line!r}: {why}")


def shell_lines(text):
    """Lines of sh/bash fences, continuations joined, comments dropped."""
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                yield line


def words_until_operator(line):
    for k, v in PLACEHOLDERS.items():
        line = line.replace(k, v)
    try:
        words = shlex.split(line)
    except ValueError:
        return []
    out = []
    for w in words:
        if w in OPERATORS or w.startswith(">") or w.startswith("2>"):
            break
        out.append(w)
    return out


def check_switchctl(doc, line, args):
    out = subprocess.run([str(BIN), *args, "--help"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        fail(doc, line, f"switchctl does not accept it: {out.stderr.strip().splitlines()[:1]}")


def check_line(doc, line):
    words = words_until_operator(line)
    # Leading VAR=value assignments (RUSTFLAGS=..., PROFILE=...).
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if not words:
        return
    cmd = words[0]
    if cmd == "switchctl":
        check_switchctl(doc, line, words[1:])
    elif cmd == "cargo" and "--" in words and words[1] == "run":
        check_switchctl(doc, line, words[words.index("--") + 1 :])
    elif re.match(r"^(packaging|benches|tests)/.*\.sh$", cmd):
        script = ROOT / cmd
        if not script.is_file():
            fail(doc, line, f"{cmd} does not exist")
        elif subprocess.run(["bash", "-n", str(script)]).returncode != 0:
            fail(doc, line, f"{cmd} does not parse")
    elif cmd == "cargo":
        pass  # cargo itself; what it runs is checked elsewhere (CI runs the tests)
    else:
        skipped.append(f"{doc.relative_to(ROOT)}: {line}")


def check_paths(doc, text):
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (doc.parent / target).exists():
            fail(doc, target, "the link points at a missing file")
    for path in re.findall(r"`((?:src|proxy|tests|docs|examples|packaging|benches)/[A-Za-z0-9_./-]+)`", text):
        if "*" in path or "<" in path:
            continue
        if not (ROOT / path).exists():
            fail(doc, path, "names a file the repository does not have")


def main():
    if not BIN.is_file():
        sys.exit(f"{BIN} is missing: run `cargo build` first")
    for doc in DOCS:
        text = doc.read_text()
        for line in shell_lines(text):
            check_line(doc, line)
        check_paths(doc, text)
    demo = subprocess.run([str(BIN), "demo"], capture_output=True, text=True, timeout=300)
    if demo.returncode != 0 or "failed: 0" not in demo.stdout:
        failures.append(f"README.md: `switchctl demo` failed (exit {demo.returncode}):\n{demo.stdout[-2000:]}\n{demo.stderr[-2000:]}")
    print(f"checked {len(DOCS)} documents; not run here (need a real host): {len(skipped)} line(s)")
    for s in skipped:
        print(f"  - {s}")
    if failures:
        print("FAILED:")
        for f in failures:
            print(f"  - {f}")
        sys.exit(1)
    print("docs: every checked command works")


if __name__ == "__main__":
    main()
