"""Every code block of README.md runs, on a CPU, as a new user would run it.

Each bash block runs command by command in a scratch folder of its own, in order, after the
commands of earlier blocks that make what it uses (a checkpoint, a service), with smaller
budgets substituted for speed (epochs, attacks, PGD steps: the options change, never the
commands). ``pip install`` and the test command itself are what CI runs around this test,
so they are skipped. Python blocks run as scripts in a folder of their own. A block that
fails fails the test with its command and stderr.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# smaller budgets for CI: (pattern, replacement) on each command line
BUDGET = [
    (r"--epochs \d+", "--epochs 1"),
    (r"--num-attacks \d+", "--num-attacks 12"),
    (r"--defense-steps \d+", "--defense-steps 2"),
    (r"^advrank demo$", "advrank demo --epochs 2 --num-attacks 12 --defense-epochs 1 "
                        "--defense-steps 2"),
    (r"^(advrank universal .*)$", r"\1 --steps 5"),
    (r"^(advrank (audit|evaluate) --model .*)$", r"\1 --input-size 64"),
    (r"^(advrank audit (?!--oracle).*)$", r"\1 --steps 2"),  # an endpoint's audit has no PGD
    (r"--query-budget \d+", "--query-budget 40"),
]
#: the README's service ports; the test serves on free ones instead
PORTS = ("8765", "8766", "8767", "8768")
SKIP = (r"^pip install", r"^python -m pytest", r"^python -m venv", r"^\. \.venv/bin/activate")


def blocks(lang: str) -> list[str]:
    text = README.read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """Command lines of a bash block: comments dropped, continuations joined, ``&&`` split."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def budget(command: str) -> str:
    for pattern, replacement in BUDGET:
        command = re.sub(pattern, replacement, command)
    return command


def run(argv_or_cmd, cwd: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(argv_or_cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, shell=isinstance(argv_or_cmd, str))
    assert proc.returncode == 0, f"{argv_or_cmd}\n{proc.stderr[-3000:]}"


def test_readme_has_the_blocks_this_test_expects():
    assert len(blocks("bash")) >= 2 and len(blocks("python")) >= 2
    assert any("advrank demo" in b for b in blocks("bash"))
    # the quick look, which test_bash_block_runs runs on a folder of 20 pictures
    quick = [c for b in blocks("bash") for c in commands(b) if " --quick" in c]
    assert quick and all(c.startswith("advrank audit ") and "imagefolder:photos" in c
                         and "--num-attacks" not in c for c in quick)


def test_measured_figures_are_the_files():
    """README's measured figures (demo, install, tests, suite) are the phrases
    scripts/readme_figures.py renders from results/readme-figures.json, where each has its
    date, commit, machine and command."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "readme_figures", README.parent / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = json.loads((README.parent / "results" / "readme-figures.json").read_text())
    figures = figures["figures"]
    assert set(figures) == set(module.PHRASES)
    text = " ".join(README.read_text().split())
    for name, phrase in module.phrases(figures).items():
        assert phrase in text, f"README does not say {phrase!r} ({name})"
        assert all(figures[name].get(k) for k in ("date", "commit", "machine", "command"))


def make_inputs(command: str, cwd: Path, image_folder: Path) -> None:
    """What a README command names but a new user would bring: their pictures (a generated
    folder), their text queries (one per class of that folder) and their model's weights
    (random weights of the named architecture)."""
    folder = re.search(r"--data imagefolder:(\S+)", command)
    if folder and not (cwd / folder.group(1)).exists():
        shutil.copytree(image_folder, cwd / folder.group(1))
    queries = re.search(r"--queries text:(\S+)", command)
    if queries and folder and not (cwd / queries.group(1)).exists():  # a query per class
        classes = sorted(p.name for p in image_folder.iterdir() if p.is_dir())
        (cwd / queries.group(1)).write_text("".join(f"{c}\t{c}\n" for c in classes)
                                            + "a picture of something\n")
    weights, model = re.search(r"--weights (\S+)", command), re.search(r"--model timm:(\S+)",
                                                                      command)
    if weights and model and not (cwd / weights.group(1)).exists():
        import timm
        from safetensors.torch import save_file

        net = timm.create_model(model.group(1), pretrained=False)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(cwd / weights.group(1)))


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def start_service(argv: list[str], cwd: Path) -> subprocess.Popen:
    """A README command ending in ``&`` (``advrank serve``): started in the background on
    loopback; returns once it says where it serves."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    assert line.startswith("serving on "), f"{argv}: {line!r}"
    return proc


def curl(argv: list[str]) -> list[str]:
    """A README ``curl`` line as the test runs it: failing on an HTTP error, quiet."""
    return [argv[0], "--fail", "--silent", "--show-error", *argv[1:]]


#: what a command makes for later blocks: a checkpoint (``--out NAME.pt``), a service (``&``)
MAKES = re.compile(r"--out (\S+\.pt)\b")
SERVES = re.compile(r"--port (\d+)")


def made_by(command: str) -> list[str]:
    """What later blocks may need from ``command``: its checkpoint, or ``port:N`` for a
    service it starts."""
    if command.endswith("&"):
        return [f"port:{p}" for p in SERVES.findall(command)]
    return MAKES.findall(command)


def needs(command: str) -> list[str]:
    """The checkpoints (any ``NAME.pt`` token) and services (``127.0.0.1:PORT``) ``command``
    uses, not counting what it makes."""
    files = re.findall(r"(?:^|[\s=])([\w.-]+\.pt)\b", command)
    used = files + [f"port:{p}" for p in re.findall(r"127\.0\.0\.1:(\d+)", command)]
    return [thing for thing in used if thing not in made_by(command)]


def block_commands(index: int) -> list[str]:
    """Block ``index``'s commands, preceded by the earlier blocks' commands that make what it
    uses before it makes it itself (a checkpoint, a service), their own needs first."""
    earlier = [c for b in blocks("bash")[:index] for c in commands(b)]
    maker = {}
    for command in earlier:
        for thing in made_by(command):
            maker.setdefault(thing, command)
    out: list[str] = []
    have: set[str] = set()

    def add(command: str) -> None:
        for thing in needs(command):
            if thing not in have and thing in maker and maker[thing] != command:
                add(maker[thing])
        if command not in out:
            out.append(command)
            have.update(made_by(command))

    for command in commands(blocks("bash")[index]):
        add(command)
    return out


def run_commands(lines: list[str], cwd: Path, small: Path, image_folder: Path,
                 small_image_folder: Path) -> None:
    """README command lines in ``cwd`` (the quick look in ``small``): services on free ports
    in the background, stopped at the end."""
    ports, services = {p: free_port() for p in PORTS}, []
    try:
        for command in lines:
            if any(re.match(p, command) for p in SKIP):
                continue
            quick = " --quick" in command
            where = small if quick else cwd
            make_inputs(command, where, small_image_folder if quick else image_folder)
            background = command.endswith("&")
            line = budget(command.rstrip("& "))
            for readme_port, port in ports.items():
                line = line.replace(readme_port, port)
            argv = shlex.split(line)
            if argv[0] == "curl":  # the service's own examples, against it
                run(curl(argv), cwd)
                continue
            if argv[0] == "torchrun":  # torchrun is torch.distributed.run
                run([sys.executable, "-m", "torch.distributed.run", *argv[1:]], cwd)
                continue
            assert argv[0] == "advrank", f"unexpected README command: {command}"
            argv = [sys.executable, "-m", "advrank", *argv[1:]]
            if background:
                services.append(start_service(argv, where))
            else:
                run(argv, where)
    finally:
        for proc in services:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_blocks_find_what_they_use():
    """Every checkpoint or service a block uses is made in it or by an earlier block (the
    split into one test per block loses nothing a reader following README would have)."""
    for index in range(len(blocks("bash"))):
        made: set[str] = set()
        for command in block_commands(index):
            missing = [t for t in needs(command) if t not in made]
            assert not missing, f"block {index}: {command} uses {missing}, made nowhere before"
            made.update(made_by(command))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_bash_block_runs(index, tmp_path, image_folder, small_image_folder):
    """Block ``index``'s commands in a folder of their own, after those of earlier blocks
    that make what it uses (:func:`block_commands`); the quick look (``--quick``) in a folder
    whose pictures are 20 (the smallest collection it must fit). One test per block, so that
    blocks run side by side on the suite's workers."""
    small = tmp_path / "small"
    small.mkdir()
    run_commands(block_commands(index), tmp_path, small, image_folder, small_image_folder)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(tmp_path, index):
    script = tmp_path / f"block{index}.py"
    script.write_text(blocks("python")[index])
    run([sys.executable, str(script)], tmp_path)
