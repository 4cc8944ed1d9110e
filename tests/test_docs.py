"""Every command the docs show runs here or in CI (STYLE.md, "Docs"), and the docs hang together.

The docs are README.md, docs/*.md, bench/README.md and bench/proxies/README.md. Each fenced block
of commands (``bash``, ``sh``, ``shell``, ``console``, ``python``) or options (``yaml``) carries
exactly one marker comment on the nearest non-blank line above its opening fence:

- ``<!-- docs: run -->``: run here, offline (``HF_HUB_OFFLINE=1``), in a temporary folder whose
  entries link to the repository's (so the committed files are there and new files land in the
  temporary folder); a block with the same text elsewhere is run once. Exit 0 expected.
- ``<!-- docs: ci -->``: ``.ci/run`` runs each command (its line may add flags at the end).
- ``<!-- docs: slow -->``: offline but minutes long (the demo, the proxy suite, training).
- ``<!-- docs: needs-hub -->``: needs the model hub, other downloads or a GPU.
- ``<!-- docs: config -->`` (yaml only): a ``DIFFCLS_CONFIG`` file; it must load and validate.

``slow`` and ``needs-hub`` commands are checked for their shape: ``diffcls`` subcommands and
``clip_benchmark eval``, ``torchrun`` and the bench scripts accept every flag shown; every
``--model`` is a registered diffusion model or an open_clip model; every ``--pretrained`` is a
zoo name, an open_clip tag of the model named beside it, a folder of the repository or a hub id;
every ``--dataset`` is a webdataset or a dataset CLIP_benchmark builds; every ``--set`` override
and every config file of the repository that a command names loads and validates; pinned
packages are pinned the same way in ``.ci/run``.

A block without a marker fails, and so does a fence without a language.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness_server import run_harness

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md", REPO / "bench" / "proxies" / "README.md"]
CI_RUN = REPO / ".ci" / "run"
CI_WORKFLOW = REPO / "docs" / "ci-workflow.yml"
README_MAX_LINES = 160

MARKERS = {
    "bash": {"run", "ci", "slow", "needs-hub"},
    "python": {"run", "slow", "needs-hub"},
    "yaml": {"config"},
}
MARKER = re.compile(r"<!--\s*docs:\s*([\w-]+)\s*-->")
FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    markers: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def kind(self) -> str:
        """``bash`` for every shell flavour, ``yaml`` for both spellings, else the language."""
        return {"sh": "bash", "shell": "bash", "console": "bash", "yml": "yaml"}.get(self.lang, self.lang)

    @property
    def marker(self) -> str:
        return self.markers[0] if len(self.markers) == 1 else ""


def read_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the markers on the line above it."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.group(1), match.group(2).strip().lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end])
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        markers = tuple(MARKER.findall(lines[above])) if above >= 0 else ()
        blocks.append(Block(path, i + 1, lang, body + "\n", markers))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in read_blocks(path)]
CHECKED = [b for b in ALL_BLOCKS if b.kind in MARKERS]


def blocks_marked(marker: str, kinds=("bash", "python")) -> list[Block]:
    return [b for b in CHECKED if b.marker == marker and b.kind in kinds]


# ---------------------------------------------------------------- parsing shell commands
def command_lines(block: Block) -> list[str]:
    """The commands of a shell block, continuation lines joined (``console``: the ``$`` lines)."""
    lines = block.text.splitlines()
    if block.lang == "console":
        kept, going_on = [], False
        for line in lines:
            if line.startswith("$ ") or going_on:
                kept.append(line[2:] if line.startswith("$ ") else line)
                going_on = line.rstrip().endswith("\\")
        lines = kept
    out, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def pieces(command: str, keep_env: bool = False) -> list[list[str]]:
    """A command line split into simple commands at ``&&``, ``||``, ``|`` and ``;``, each a token list
    without leading ``VAR=value`` assignments; ``$(which clip_benchmark)`` reads as ``clip_benchmark``
    and other command substitutions as one placeholder word (``keep_env``: keep the assignments)."""
    command = command.replace("$(which clip_benchmark)", "clip_benchmark")
    previous = None
    while previous != command:
        previous, command = command, re.sub(r"\$\([^()]*\)", "SUBSTITUTED", command)
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    out, current = [], []
    for token in lexer:
        if token in {"&&", "||", "|", ";", "&"}:
            out.append(current)
            current = []
        else:
            current.append(token)
    out.append(current)
    return [p if keep_env else strip_env(p) for p in out if strip_env(p)]


def env_of(tokens: list[str]) -> dict[str, str]:
    env = {}
    for token in tokens:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):
            break
        key, _, value = token.partition("=")
        env[key] = value
    return env


def strip_env(tokens: list[str]) -> list[str]:
    return tokens[len(env_of(tokens)) :]


def ci_pieces() -> list[list[str]]:
    return [p for line in command_lines(Block(CI_RUN, 0, "bash", CI_RUN.read_text(), ())) for p in pieces(line)]


# ---------------------------------------------------------------- what exists
@functools.cache
def help_flags(*argv: str) -> frozenset[str]:
    """Every ``--flag`` a command's ``--help`` lists."""
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, f"{' '.join(argv)} --help failed:\n{result.stderr[-2000:]}"
    return frozenset(re.findall(r"--[A-Za-z][\w-]*", result.stdout))


@functools.cache
def harness_flags() -> frozenset[str]:
    """Every ``--flag`` ``clip_benchmark eval --help`` lists (forked from the tests' harness server)."""
    script = Path(sys.executable).with_name("clip_benchmark")
    result = run_harness(["eval", "--help"], {**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300, script=str(script) if script.exists() else None)
    assert result.returncode == 0, f"clip_benchmark eval --help failed:\n{result.stderr[-2000:]}"
    return frozenset(re.findall(r"--[A-Za-z][\w-]*", result.stdout))


def torchrun_flags() -> frozenset[str]:
    script = Path(sys.executable).with_name("torchrun")
    return help_flags(*([str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]))


@functools.cache
def zoo_names() -> frozenset[str]:
    import json
    from importlib import resources

    return frozenset(json.loads((resources.files("diffcls_plugin") / "zoo" / "checkpoints.json").read_text()))


@functools.cache
def open_clip_models() -> frozenset[str]:
    import open_clip

    return frozenset(open_clip.list_models())


def diffusion_models() -> list[str]:
    from diffcls_plugin.samplers import SAMPLERS_BY_MODEL

    return list(SAMPLERS_BY_MODEL.names())


@functools.cache
def harness_builder_source() -> str:
    return Path(importlib.util.find_spec("clip_benchmark.datasets.builder").origin).read_text()


def pyproject_extras() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the keys of the [project.optional-dependencies] table
        table = text.split("[project.optional-dependencies]", 1)[-1].split("\n[", 1)[0]
        return set(re.findall(r"^([\w-]+)\s*=", table, flags=re.M))
    return set(tomllib.loads(text)["project"].get("optional-dependencies", {}))


def ci_pins() -> set[str]:
    return {t for p in ci_pieces() for t in p if "==" in t}


# ---------------------------------------------------------------- shape checks
def values_after(tokens: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (several after one flag, as argparse's nargs='+', or repeated)."""
    out = []
    for i, token in enumerate(tokens):
        if token == flag:
            for value in tokens[i + 1 :]:
                if value.startswith("-"):
                    break
                out.append(value)
        elif token.startswith(flag + "="):
            out.append(token.split("=", 1)[1])
    return out


def flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--")]


def check_names(tokens: list[str], model_flag: str, pretrained_flag: str, dataset_flag: str, root_flag: str) -> list[str]:
    problems = []
    models = values_after(tokens, model_flag)
    for model in models:
        if model not in diffusion_models() and model not in open_clip_models():
            problems.append(f"--model {model}: neither a registered diffusion model ({', '.join(diffusion_models())}) nor an open_clip model")
    for pretrained in values_after(tokens, pretrained_flag):
        known = (
            pretrained in zoo_names()
            or (REPO / pretrained).is_dir()
            or re.fullmatch(r"[\w.-]+/[\w.-]+", pretrained)
            and not pretrained.startswith(("bench/", "tests/", "docs/"))
        )
        if not known:
            import open_clip

            known = any(pretrained in open_clip.list_pretrained_tags_by_model(m) for m in models if m in open_clip_models())
        if not known:
            problems.append(
                f"--pretrained {pretrained}: not a zoo name ({', '.join(sorted(zoo_names()))}), "
                "an open_clip tag of the model, a folder of the repository or a hub id"
            )
    for dataset in values_after(tokens, dataset_flag):
        if not dataset.startswith("wds/") and f'"{dataset}"' not in harness_builder_source():
            problems.append(f"--dataset {dataset}: not a webdataset and not a dataset clip_benchmark builds")
    for root in values_after(tokens, root_flag):
        if root.startswith(("bench/", "tests/")) and not (REPO / root).is_dir():
            problems.append(f"{root_flag} {root}: no such folder in the repository")
    return problems


def check_config_file(name: str) -> list[str]:
    """A config file the command names: validated when the repository holds it."""
    from diffcls_plugin.config import load_config

    if not (REPO / name).is_file():
        return []
    try:
        load_config(REPO / name)
    except Exception as err:  # noqa: BLE001 - report any failure
        return [f"{name}: {err}"]
    return []


def check_harness_eval(tokens: list[str], env: dict[str, str]) -> list[str]:
    problems = [f"clip_benchmark eval has no {flag} (see clip_benchmark eval --help)" for flag in flags(tokens) if flag not in harness_flags()]
    problems += check_names(tokens, "--model", "--pretrained", "--dataset", "--dataset_root")
    if "DIFFCLS_CONFIG" in env:
        problems += check_config_file(env["DIFFCLS_CONFIG"])
    return problems


def check_diffcls(tokens: list[str], env: dict[str, str]) -> list[str]:
    from diffcls_plugin.cli import main

    if not tokens or tokens[0] == "--help":
        return []
    sub, args = tokens[0], tokens[1:]
    if sub not in main.commands:
        return [f"diffcls has no command {sub!r} (has {', '.join(sorted(main.commands))})"]
    command = main.commands[sub]
    own = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    problems = []
    for flag in flags(args):
        if flag not in own and not (sub == "eval" and flag in harness_flags()):
            problems.append(f"diffcls {sub} has no {flag}" + (" (nor has clip_benchmark eval)" if sub == "eval" else ""))
    problems += check_names(args, "--model", "--pretrained", "--dataset", "--dataset-root")
    from diffcls_plugin.config import load_config

    for override in values_after(args, "--set"):
        try:
            load_config(None, [override])
        except Exception as err:  # noqa: BLE001
            problems.append(f"--set {override}: {err}")
    for name in values_after(args, "--config"):
        problems += check_config_file(name)
    if sub == "run":
        from diffcls_plugin.workflows.benchmark import load_benchmark

        config = next((a for a in args if not a.startswith("-")), None)
        if config is None or not (REPO / config).is_file():
            problems.append(f"diffcls run {config}: no such config in the repository")
        else:
            try:
                load_benchmark(REPO / config)
            except Exception as err:  # noqa: BLE001
                problems.append(f"diffcls run {config}: {err}")
    for reference in values_after(args, "--reference"):
        if reference.startswith("benchmark_configs/") and not (REPO / reference).is_file():
            problems.append(f"--reference {reference}: no such file in the repository")
    return problems


def check_script(tokens: list[str]) -> list[str]:
    """``python path/to/script.py --flags``: the script exists and defines every flag."""
    script = REPO / tokens[0]
    if not script.is_file():
        return [f"{tokens[0]}: no such script in the repository"]
    sources = script.read_text() + "".join(p.read_text() for p in script.parent.glob("common.py"))
    return [f"{tokens[0]} defines no {flag}" for flag in flags(tokens[1:]) if f'"{flag}"' not in sources and f"'{flag}'" not in sources]


def check_pip(tokens: list[str]) -> list[str]:
    problems = []
    if tokens[:1] != ["install"]:
        return [f"pip {' '.join(tokens)}: only `pip install` is checked"]
    extras = pyproject_extras()
    for token in tokens[1:]:
        match = re.fullmatch(r"\.\[([\w,-]+)\]", token)
        if match:
            problems += [f"pip install {token}: pyproject.toml has no extra {e!r}" for e in match.group(1).split(",") if e not in extras]
        elif "==" in token and token not in ci_pins():
            problems.append(f"pip install {token}: .ci/run pins {sorted(ci_pins())}")
    return problems


UNCHECKED = {"echo", "mkdir", "cd", "export", "tee", "apt-get", "head", "grep", "cat", ".", "source", "ls"}


def check_shape(tokens: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Problems with one simple command's shape (empty: fine)."""
    env = env or {}
    program, args = tokens[0], tokens[1:]
    if program in UNCHECKED:
        return []
    if program == "clip_benchmark":
        return check_harness_eval(args[1:], env) if args[:1] == ["eval"] else [f"clip_benchmark {args[:1]}: only eval is checked"]
    if program == "diffcls":
        return check_diffcls(args, env)
    if program == "torchrun":
        start = next((i for i, t in enumerate(args) if t == "clip_benchmark" or t.endswith(".py")), None)
        if start is None:
            return ["torchrun: no clip_benchmark or script to run"]
        problems = [f"torchrun has no {flag}" for flag in flags(args[:start]) if flag not in torchrun_flags()]
        return problems + check_shape(args[start:], env)
    if program in {"srun", "bash"}:
        inner = values_after(args, "-c")
        if program == "bash" and not inner:
            return ["bash without -c"]
        return [problem for command in inner for piece in pieces(command) for problem in check_shape(piece)]
    if program in {"python", "python3"}:
        if args[:1] == ["-m"]:
            return [] if args[1] in {"venv", "pytest", "pip"} else [f"python -m {args[1]}: not checked"]
        return check_script(args)
    if program == "pip":
        return check_pip(args)
    return [f"no shape check for {program!r}: add one to tests/test_docs.py"]


# ---------------------------------------------------------------- the tests
def test_every_command_block_carries_exactly_one_known_marker():
    problems = []
    for block in ALL_BLOCKS:
        if not block.lang:
            problems.append(f"{block.where}: a fence without a language (```bash, ```python, ```yaml, ```text ...)")
        elif block.kind in MARKERS:
            allowed = sorted(MARKERS[block.kind])
            if len(block.markers) != 1:
                problems.append(
                    f"{block.where}: {len(block.markers)} markers above a {block.lang} block; "
                    f"put exactly one of {', '.join(f'<!-- docs: {m} -->' for m in allowed)} on the line above it"
                )
            elif block.marker not in MARKERS[block.kind]:
                problems.append(f"{block.where}: unknown marker {block.marker!r} for a {block.lang} block; use one of {allowed}")
    assert not problems, "\n".join(problems)


def test_the_docs_have_runnable_and_checked_blocks():
    """The scan finds what the docs show (a broken parser would pass every other test)."""
    assert len(blocks_marked("run")) >= 5
    assert blocks_marked("ci") and blocks_marked("needs-hub") and blocks_marked("slow")
    assert blocks_marked("config", kinds=("yaml",))


def test_readme_is_short_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES, f"README.md has {len(readme.splitlines())} lines (at most {README_MAX_LINES})"
    linked = {Path(target.split("#")[0]).as_posix() for target in re.findall(r"\]\(([^)\s]+)\)", readme)}
    missing = [p.relative_to(REPO).as_posix() for p in sorted((REPO / "docs").glob("*.md")) if p.relative_to(REPO).as_posix() not in linked]
    assert not missing, f"README.md's index does not link {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    problems = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                problems.append(f"{path.relative_to(REPO)}: link {target} points nowhere")
            elif anchor and resolved.suffix == ".md":
                headings = [slug(h) for h in re.findall(r"^#+ (.+)$", resolved.read_text(), flags=re.M)]
                if anchor not in headings:
                    problems.append(f"{path.relative_to(REPO)}: link {target}: no heading #{anchor} in {resolved.name}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", blocks_marked("ci", kinds=("bash",)), ids=lambda b: b.where)
def test_ci_blocks_are_run_by_ci(block):
    ci = ci_pieces()
    missing = [" ".join(piece) for line in command_lines(block) for piece in pieces(line) if not any(c[: len(piece)] == piece for c in ci)]
    assert not missing, f"{block.where}: .ci/run does not run {missing}"


def test_the_ci_workflow_runs_what_ci_runs():
    """docs/ci-workflow.yml's diffcls steps are the ones .ci/run checks (it may add flags)."""
    steps = yaml.safe_load(CI_WORKFLOW.read_text())["jobs"]["smoke"]["steps"]
    runs = [line for step in steps if "run" in step for line in step["run"].splitlines()]
    ci = ci_pieces()
    diffcls = [piece for line in runs for piece in pieces(line) if piece[0] == "diffcls"]
    assert len(diffcls) == 3
    missing = [" ".join(p) for p in diffcls if not any(c[: len(p)] == p for c in ci)]
    assert not missing, f"docs/ci-workflow.yml runs {missing}, which .ci/run does not"


@pytest.mark.parametrize("block", blocks_marked("slow") + blocks_marked("needs-hub"), ids=lambda b: f"{b.marker}:{b.where}")
def test_commands_that_are_not_run_here_have_a_valid_shape(block):
    if block.kind == "python":
        compile(block.text, block.where, "exec")
        return
    problems = [
        f"{' '.join(piece)}\n    {problem}"
        for line in command_lines(block)
        for piece in pieces(line, keep_env=True)
        for problem in check_shape(strip_env(piece), env_of(piece))
    ]
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", blocks_marked("config", kinds=("yaml",)), ids=lambda b: b.where)
def test_config_blocks_load_and_validate(block, tmp_path):
    from diffcls_plugin.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(block.text)
    load_config(path)


def _unique(blocks: list[Block]) -> list[Block]:
    seen, out = set(), []
    for block in blocks:
        if block.text not in seen:
            seen.add(block.text)
            out.append(block)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One DIFFCLS_CACHE for every block: the embedded digits are written once."""
    return tmp_path_factory.mktemp("diffcls-cache")


def run_block(block: Block, folder: Path, cache: Path) -> subprocess.CompletedProcess:
    """Run one block in ``folder/work``, whose entries link to the repository's."""
    work = folder / "work"
    work.mkdir()
    for entry in REPO.iterdir():  # the committed files, read in place; what a block writes stays here
        if not entry.name.startswith(".") and entry.name not in {"results", "__pycache__"}:
            (work / entry.name).symlink_to(entry)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DIFFCLS_CACHE": str(cache), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DIFFCLS_CONFIG", None)
    env.setdefault("OMP_NUM_THREADS", "1")  # one torch thread: on a busy machine two spin against each other (3x slower)
    argv = [sys.executable, "-c", block.text] if block.kind == "python" else ["bash", "-c", "set -euo pipefail\n" + block.text]
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)


BLOCKS_AT_ONCE = 2  # each block's commands run one after another: two blocks keep two CPUs busy


@pytest.fixture(scope="module", autouse=True)
def block_runs(request, tmp_path_factory, cache):
    """The run blocks of the selected tests below, started when this module's first test starts (they
    run while the checks above do), two at a time, each in its own folder (the shared cache's digits
    are written atomically, whichever block gets there first): ``block.where`` -> the future of its process."""
    blocks = [item.callspec.params["block"] for item in request.session.items if getattr(item, "originalname", None) == "test_run_blocks_run_offline"]
    pool = concurrent.futures.ThreadPoolExecutor(BLOCKS_AT_ONCE)
    runs = {block.where: pool.submit(run_block, block, tmp_path_factory.mktemp("block"), cache) for block in blocks}
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("block", _unique(blocks_marked("run")), ids=lambda b: b.where)
def test_run_blocks_run_offline(block, block_runs):
    result = block_runs[block.where].result()
    assert result.returncode == 0, f"{block.where} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


# ---------------------------------------------------------------- the options reference
def documented_options() -> dict[str, dict[str, str]]:
    """docs/options.md's tables: section ('' for the top level) -> key -> default as written."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in (REPO / "docs" / "options.md").read_text().splitlines():
        heading = re.match(r"^#+ (.*)$", line)
        if heading:
            title = heading.group(1)
            name = re.match(r"^`([\w-]+)`", title)
            current = "" if title.strip().lower() == "top-level options" else (name.group(1) if name else None)
            continue
        row = re.match(r"^\| `([\w-]+)` \| `([^`]*)` \|", line)
        if row and current is not None:
            sections.setdefault(current, {})[row.group(1)] = row.group(2)
    return sections


def code_options() -> dict[str, dict[str, object]]:
    from diffcls_plugin.config import DiffclsConfig
    from diffcls_plugin.prefilter import PrefilterOptions
    from diffcls_plugin.samplers import SAMPLERS

    defaults = DiffclsConfig()
    out = {
        "": {f.name: getattr(defaults, f.name) for f in dataclasses.fields(DiffclsConfig) if f.name != "samplers"},
        "prefilter": PrefilterOptions().to_dict(),
    }
    for name in SAMPLERS:
        options = SAMPLERS.get(name).options_cls().to_dict()
        options.pop("preset")
        out[name] = options
    return out


def test_the_options_reference_matches_the_code_both_ways():
    documented, code = documented_options(), code_options()
    problems = []
    for section in sorted(set(code) | set(documented)):
        title = f"section {section!r}" if section else "the top-level options"
        if section not in documented:
            problems.append(f"docs/options.md has no table for {title}")
            continue
        if section not in code:
            problems.append(f"docs/options.md documents {title}, which the code does not have")
            continue
        for key in code[section]:
            if key not in documented[section]:
                problems.append(f"docs/options.md lacks {section or 'top-level'}.{key} (default {code[section][key]!r})")
            elif yaml.safe_load(documented[section][key]) != code[section][key]:
                problems.append(
                    f"docs/options.md gives {section or 'top-level'}.{key} the default {documented[section][key]!r}; the code's is {code[section][key]!r}"
                )
        problems += [
            f"docs/options.md documents {section or 'top-level'}.{key}, which the code does not have; delete its row"
            for key in documented[section]
            if key not in code[section]
        ]
    assert not problems, "\n".join(problems)


def test_every_preset_and_model_name_is_in_the_options_reference():
    from diffcls_plugin.samplers import SAMPLERS

    text = (REPO / "docs" / "options.md").read_text()
    missing = []
    for name in SAMPLERS:
        spec = SAMPLERS.get(name)
        if not re.search(rf"^### `{name}` \(`--model {spec.model_name}`\)$", text, flags=re.M):
            missing.append(f"a '### `{name}` (`--model {spec.model_name}`)' heading")
        missing += [f"{name} preset {preset!r}" for preset in spec.options_cls.PRESETS if f"`{preset}`" not in text]
    assert not missing, f"docs/options.md lacks {missing}"
