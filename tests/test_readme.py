"""The README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in [b.strip() for b in _bash_blocks()], "the README's test command and .ci/run drifted apart"


def test_quick_start_has_demo_and_test_commands() -> None:
    blocks = [b.strip() for b in _bash_blocks()[:2]]
    assert all(b.startswith("pip install torch==2.13.0 && ") for b in blocks), "torch's CPU build must come first"
    assert "pytest" in blocks[1] and "pa " in blocks[0]


def test_readme_names_every_runs_status() -> None:
    """`pa runs` grew "outdated from STAGE" and the README's row still listed the statuses before it."""
    from policyalign.runs import PIPELINE, _status

    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `pa runs`"))
    done = {name: {"status": "done"} for name in PIPELINE}
    statuses = {
        _status({}),
        _status(done),
        _status(done, outdated=lambda: "filter"),
        _status({"synthesize": {"status": "running", "started": 1}}, active=True),
        _status({"synthesize": {"status": "running", "started": 1}}),
        _status({"synthesize": {"status": "done"}}, active=True),
        _status({**done, "eval_after": {"status": "failed", "started": 1}}),
        _status({"synthesize": {"status": "done"}}),
    }
    for status in statuses:
        shown = re.sub(r"\(\d+/\d+ stages done\)$", "(N/6 stages done)", status)
        shown = re.sub(r" \(\d+/\d+ stages\)$", "", shown)
        shown = re.sub(rf"\b({'|'.join(PIPELINE)})$", "STAGE", shown)
        assert shown in row, f"pa runs shows {status!r}; the README's `pa runs` row does not name {shown!r}"


def test_architecture_lists_every_module() -> None:
    """docs/ARCHITECTURE.md's layout is the module map: a module added without a line there is undocumented."""
    layout = (ROOT / "docs" / "ARCHITECTURE.md").read_text().split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"^  (\S+\.py)\b", layout, re.M))
    package = ROOT / "policyalign"
    missing = sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py" and p.name not in listed)
    missing += sorted(f"cli/{p.name}" for p in (package / "cli").glob("*.py")
                      if p.name != "__init__.py" and p.name not in layout)
    assert not missing, f"docs/ARCHITECTURE.md's layout does not list {missing}"


def test_architecture_signatures_name_real_parameters() -> None:
    """A call written out in docs/ARCHITECTURE.md (`keyed_name(ref, name)`) names only parameters the function
    has: the page fixes the contracts between modules, so a stale signature there misleads whoever builds on it."""
    import importlib
    import inspect

    functions: dict[str, object] = {}
    for path in sorted((ROOT / "policyalign").glob("*.py")):
        if path.stem.startswith("__"):
            continue
        module = importlib.import_module(f"policyalign.{path.stem}")
        for name, value in vars(module).items():
            if callable(value) and getattr(value, "__module__", "") == module.__name__:
                functions.setdefault(name, value)
    stale = []
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    # A default may hold parentheses of its own (`report_to=()`): a signature with one went unchecked.
    for match in re.finditer(r"`(?:[a-z_]+\.)?([A-Za-z_]\w*)\(((?:[^`()]|\([^`()]*\))*)\)", text):
        name, args = match.groups()
        if name not in functions or not args.strip():
            continue
        real = inspect.signature(functions[name]).parameters  # type: ignore[arg-type]
        named = [a.split("=")[0].split(":")[0].strip() for a in args.split(",")]
        stale += [f"{name}({arg})" for arg in named if re.fullmatch(r"\w+", arg) and arg not in real]
    assert not stale, f"docs/ARCHITECTURE.md names parameters these functions lack: {stale}"


def test_doc_commands_exist_with_their_options() -> None:
    """Every `pa ...` command README.md and packs/README.md show is a real command, and every option written
    after it is one that command takes: a user copies these lines as they are."""
    import typer

    from policyalign.cli import app

    root = typer.main.get_command(app)
    wrong = []
    for doc in ("README.md", "packs/README.md", "docs/ARCHITECTURE.md"):
        text = (ROOT / doc).read_text()
        for shown in re.findall(r"`(pa [^`]+)`", text) + re.findall(r"^(pa [^\n#]+)", text, re.M):
            for line in re.split(r"\s*(?:&&|/)\s+(?=pa )", shown):
                words, command, used = line.split()[1:], root, 0
                while used < len(words) and words[used] in getattr(command, "commands", {}):
                    command, used = command.commands[words[used]], used + 1  # type: ignore[attr-defined]
                options = {o for param in command.params for o in param.opts + param.secondary_opts}
                if not used and words and words[0] in options:  # an option of `pa` itself: `pa --version`
                    continue
                wrong += [f"{doc}: {line!r} (no such command)"] if not used else [
                    f"{doc}: {line!r} ({word})" for word in words[used:]
                    if word.strip("[]").startswith("-") and word.strip("[]").split("=")[0] not in options]
    assert not wrong, "\n".join(wrong)


def test_architecture_eval_json_names_the_keys_written(tmp_path: Path) -> None:
    """docs/ARCHITECTURE.md's eval.json record is the contract `pa eval --compare`, the card and `pa runs` read:
    every top-level key an evaluation writes is named there (in order), and every one named there is written."""
    import json

    from policyalign.evaluate import evaluate
    from policyalign.generation import greedy_params
    from policyalign.registry import Registry

    section = (ROOT / "docs" / "ARCHITECTURE.md").read_text().split("## eval.json", 1)[1]
    record = section[section.index("`{") + 2:section.index("}` where M holds")]
    while re.search(r"\{[^{}]*\}|\[[^\[\]]*\]", record):  # nested objects and lists: values, not keys
        record = re.sub(r"\{[^{}]*\}|\[[^\[\]]*\]", "", record)
    documented = re.findall(r'"(\w+)"', record)
    pack = Registry([ROOT / "packs"]).load(str(ROOT / "packs" / "general"))
    result = evaluate(pack, "tiny", out_dir=tmp_path / "eval", limit=1, params=greedy_params(2), sets=["benign"])
    written = list(json.loads(result.eval_json.read_text()))
    assert documented == written, f"docs/ARCHITECTURE.md's eval.json names {documented}; evaluate writes {written}"


def test_packs_readme_lists_the_files_pa_new_writes(tmp_path: Path) -> None:
    """packs/README.md's `packs/my-domain/` tree is what a user finds after `pa new my-domain --extends general`."""
    from policyalign.registry import Registry
    from policyalign.scaffold import new_pack

    text = (ROOT / "packs" / "README.md").read_text()
    tree = text.split("```\npacks/my-domain/\n", 1)[1].split("```", 1)[0]
    listed = sorted(line.split()[0] for line in tree.splitlines() if line.strip())
    made = new_pack("my-domain", tmp_path, "general", registry=Registry([ROOT / "packs"]))
    written = sorted(str(p.relative_to(made)) for p in made.rglob("*") if p.is_file())
    assert listed == written, f"packs/README.md lists {listed}; pa new writes {written}"


def test_readme_names_every_command() -> None:
    """Every `pa` command (and `pa pack` subcommand) is shown in README.md: a command added without a line there
    is one users do not find."""
    import typer

    from policyalign.cli import app

    text = (ROOT / "README.md").read_text()
    root = typer.main.get_command(app)
    paths = [(name,) if not hasattr(command, "commands") else (name, sub)  # a group: typer vendors click
             for name, command in root.commands.items()  # type: ignore[attr-defined]
             for sub in (getattr(command, "commands", None) or [None])]
    missing = [" ".join(p) for p in paths if not re.search(rf"`pa {' '.join(p)}\b", text)]
    assert not missing, f"README.md shows no `pa {missing}`"


def test_the_exit_codes_a_script_reads_are_documented_as_the_code_sets_them() -> None:
    """Neither README.md nor `pa --help` said which exit code means what, so a CI job could not tell bad input
    (fix and rerun) from a failed run or an interrupt. Both say it now, with the codes errors.py and the
    signal handling use."""
    import signal

    from typer.testing import CliRunner

    from policyalign.cli import CLOSED_PIPE, INTERRUPTED, Stopped, app, exit_code
    from policyalign.errors import HubError, HubUnavailableError, InvalidInputError, ModelError, PolicyAlignError, RunError
    from policyalign.hub import TRANSIENT_STATUSES

    readme = " ".join((ROOT / "README.md").read_text().split())
    shown = " ".join(CliRunner().invoke(app, ["--help"]).stdout.replace("│", " ").split())
    failure = PolicyAlignError.exit_code
    assert {RunError.exit_code, ModelError.exit_code, HubError.exit_code} == {failure}
    for text in (readme, shown):
        assert "Exit codes: 0 success" in text
        assert f"{InvalidInputError.exit_code} invalid input" in text and f"{failure} any other failure" in text
        assert f"{INTERRUPTED} interrupted by Ctrl-C" in text
        # a transient Hub failure (an outage: a CI job retries on this code alone) has its own
        assert f"{HubUnavailableError.exit_code} the Hub unavailable" in text and "worth retrying" in text
        # each HTTP status `hub.outage_kind` counts as an outage is named: 408 was left out of both
        named = text.split(f"{HubUnavailableError.exit_code} the Hub unavailable", 1)[1].split("worth retrying", 1)[0]
        assert all(str(status) in named for status in (*TRANSIENT_STATUSES, "5xx")), named
        assert f"{exit_code(Stopped(signal.SIGTERM))} by SIGTERM" in text and f"{exit_code(Stopped(signal.SIGHUP))} by SIGHUP" in text
        assert f"{CLOSED_PIPE} output into a closed pipe" in text


def test_readme_names_every_key_of_eval_compare_json(tmp_path: Path) -> None:
    """README's `pa eval --compare` row lists what `--json` gives a script; it left out `drift_kl`, added to
    `eval_report.comparison` after the row was written. Every top-level key and every row key is named there."""
    from policyalign.eval_report import comparison
    from policyalign.evaluate import evaluate
    from policyalign.generation import greedy_params
    from policyalign.registry import Registry

    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `pa eval --compare"))
    shown = set(re.findall(r"`(\w+)`", row.split("`--json` gives the same as data", 1)[1]))
    pack = Registry([ROOT / "packs"]).load(str(ROOT / "packs" / "general"))
    result = evaluate(pack, "tiny", out_dir=tmp_path / "eval", limit=1, params=greedy_params(2), sets=["benign"])
    compared = comparison(result.eval_json, result.eval_json)
    keys = set(compared) | {key for r in compared["rows"] for key in r}
    assert keys <= shown, f"README.md's `pa eval --compare` row does not name {sorted(keys - shown)}"


def test_the_commands_readme_says_take_quiet_take_it() -> None:
    """README says `--quiet` (`pa apply`, the stage commands and `pa eval`) draws no bars: each of them takes it."""
    import typer

    from policyalign.cli import app

    text = " ".join((ROOT / "README.md").read_text().split())
    named = re.search(r"`--quiet` \(([^)]*)\)", text)
    assert named and "the stage commands" in named.group(1), "README.md no longer says which commands take --quiet"
    commands = re.findall(r"`pa (\w+)`", named.group(1)) + ["synthesize", "filter", "distill"]
    root = typer.main.get_command(app)
    lacking = [name for name in commands
               if "--quiet" not in {o for p in root.commands[name].params for o in p.opts}]  # type: ignore[attr-defined]
    assert not lacking, f"README.md says these take --quiet; they do not: {lacking}"
