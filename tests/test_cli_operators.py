"""The command line as operators meet it: --version, a help text for every option, one table of
the environment variables (checked against the code and docs/environment.md), what --help
loads."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import env_vars
from engine.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "pandas", "pyarrow")


def run(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})}, **kw)


def _parsers(parser, path=("crypto-engine",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_and_command_has_a_help_text():
    missing, walked = [], 0
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            walked += 1
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                missing += [f"{' '.join(path)} {c}" for c in action.choices if not helps.get(c)]
                continue
            text = action.help() if callable(action.help) else action.help
            if not text or text is argparse.SUPPRESS or not text.strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert walked > 80  # the walk reached the commands' options
    assert not missing, f"options without a help text: {missing}"


def test_version_is_the_package_version():
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"crypto-engine {declared.group(1)}"


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["env"], ["rotate", "--help"],
                                  ["inventory", "--store", "x", "--help"]])
def test_help_and_version_load_no_heavy_module(args):
    """-X importtime lists every module the process imported, on stderr."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "engine", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "engine.cli" in imported  # the listing is real
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, heavy


def test_the_help_names_every_environment_variable():
    r = run("--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for v in env_vars.VARIABLES:
        assert v.name in flat
    assert "crypto-engine env" in flat


def test_env_command_prints_the_table():
    r = run("env", "--json")
    assert r.returncode == 0
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == [v.name for v in env_vars.VARIABLES]
    assert all(row["meaning"] and row["default"] for row in rows)
    r = run("env")
    assert r.returncode == 0 and "VAULT_TRANSIT_KEY" in r.stdout and "intelliflow-data-key" in r.stdout
    assert run("env", "--markdown").stdout == env_vars.markdown()


def test_docs_environment_md_is_the_table():
    docs = (ROOT / "docs" / "environment.md").read_text()
    assert docs == env_vars.markdown(), ("docs/environment.md differs from engine/env_vars.py: "
                                         "python -m engine.env_vars > docs/environment.md")


# ---- every variable the code reads is in the table ------------------------------------------

_NAME = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+|[A-Z]{2,}[A-Z0-9]*")
def _str(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_env(node) -> bool:
    text = ast.unparse(node)
    return text in ("env", "environ") or text.endswith(".environ")


def _reads_of(node):
    """The keys of every ``M.get(key)``, ``M.pop(key)``, ``getenv(key)`` and ``M[key]`` under
    ``node`` whose mapping is named env or environ."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and n.args:
            if isinstance(n.func, ast.Attribute) and n.func.attr in ("get", "pop") \
                    and _is_env(n.func.value):
                yield n.args[0]
            elif ast.unparse(n.func) in ("getenv", "os.getenv"):
                yield n.args[0]
        elif isinstance(n, ast.Subscript) and _is_env(n.value):
            yield n.slice


def read_variables(tree: ast.AST) -> set[str]:
    """The environment variable names a module reads: constants (or constants' names) given to
    ``env.get``/``os.environ[...]``/``getenv``; constants given to a function of the module
    that reads its parameter so (``num("X", ...)``; also engine.settings' ``env_flag`` and
    ``env_number``); the names of the tuple a ``for`` loop walks to read them
    (``for var, arg in (("VAULT_ADDR", "address"), ...): env.get(var)``); ``*_ENV`` constants."""
    consts = {n.targets[0].id: _str(n.value) for n in ast.walk(tree)
              if isinstance(n, ast.Assign) and len(n.targets) == 1
              and isinstance(n.targets[0], ast.Name) and _str(n.value)}
    found = {v for k, v in consts.items() if k.endswith("_ENV") and _NAME.fullmatch(v)}
    readers = {"env_flag": 1, "env_number": 1}  # engine.settings
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            for key in _reads_of(fn):
                if isinstance(key, ast.Name) and key.id in params:
                    readers[fn.name] = params.index(key.id)

    def value(node):
        return _str(node) if _str(node) is not None else \
            consts.get(node.id) if isinstance(node, ast.Name) else None

    def keys_in(node):
        yield from _reads_of(node)
        for n in ast.walk(node):
            if isinstance(n, ast.Call):
                at = readers.get(n.func.attr if isinstance(n.func, ast.Attribute)
                                 else getattr(n.func, "id", ""))
                if at is not None and len(n.args) > at:
                    yield n.args[at]

    keys = list(keys_in(tree))
    for n in ast.walk(tree):
        if isinstance(n, ast.For) and isinstance(n.iter, ast.Tuple):
            names = {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
            if any(isinstance(k, ast.Name) and k.id in names for b in n.body for k in keys_in(b)):
                keys += [e.elts[0] if isinstance(e, ast.Tuple) else e for e in n.iter.elts]
    found.update(v for v in map(value, keys) if v and _NAME.fullmatch(v))
    return found


def test_every_variable_the_code_reads_is_in_the_table():
    read: dict[str, list[str]] = {}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for name in read_variables(ast.parse(path.read_text(), str(path))):
            read.setdefault(name, []).append(str(path.relative_to(ROOT)))
    # the scan finds reads of every kind (a constant, a *_ENV name, a loop over a tuple)
    assert {"VAULT_TRANSIT_KEY", "VAULT_KV_PATH", "VAULT_NAMESPACE", "KEY_ROTATION_WEBHOOK",
            "ENGINE_BACKEND", "ENCRYPTION_MASTER_KEY", "ENGINE_STATE_DIR"} <= set(read)
    table = {v.name for v in env_vars.VARIABLES}
    unlisted = {n: where for n, where in read.items() if n not in table}
    assert not unlisted, f"read by the code but not in engine/env_vars.py: {unlisted}"
    assert not table - set(read), f"listed but read nowhere: {sorted(table - set(read))}"


def test_the_scan_sees_a_new_variable():
    source = ("import os\nX_ENV = 'A_ENV_NAME'\ndef f(env):\n    os.environ.get('NEW_ONE')\n"
              "    env['THIRD_ONE']\n    for var, a in (('FOURTH_ONE', 1),):\n        env.get(var)\n"
              "    def num(name, d):\n        return env.get(name)\n    num('FIFTH_ONE', 1)\n"
              "    env_flag(env, 'SIXTH_ONE', True)\n")
    assert read_variables(ast.parse(source)) == {"A_ENV_NAME", "NEW_ONE", "THIRD_ONE",
                                                 "FOURTH_ONE", "FIFTH_ONE", "SIXTH_ONE"}


# ---- shell completion, through bash itself ---------------------------------------------------

_COMPLETE = r'''
eval "$(crypto-engine completion bash)"
fn=$(complete -p crypto-engine | sed -E 's/.*-F ([^ ]+) .*/\1/')
complete_line() {
  COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}
  read -ra COMP_WORDS <<< "$COMP_LINE"
  [[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
  COMPREPLY=()
  "$fn" crypto-engine "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
  printf '%s\n' "${COMPREPLY[@]}"
  echo "--"
}
complete_line "$1"
'''


def complete(line: str) -> list[str]:
    """What bash offers for ``line`` (the real hook, run by bash with COMP_LINE, COMP_WORDS,
    COMP_POINT, COMP_CWORD set as readline sets them)."""
    bindir = os.path.dirname(sys.executable)
    r = subprocess.run(["bash", "-c", _COMPLETE, "complete", line], capture_output=True,
                       text=True, timeout=120,
                       env={**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"]})
    assert r.returncode == 0 and r.stdout.endswith("--\n"), r.stderr
    return [w.strip() for w in r.stdout.splitlines()[:-1] if w.strip()]


def test_bash_completes_a_command_and_an_option():
    assert complete("crypto-engine rot") == ["rotate", "rotation-scheduler"]
    assert complete("crypto-engine reencrypt --batch") == ["--batch-size"]
    assert "--if-needed" in complete("crypto-engine rotate --")
    assert complete("crypto-engine completion b") == ["bash"]
