"""The documentation against the code: every `tfvae …` command written in the
README and the documentation site parses with the current click commands, no
page numbers periods of work, and the built site opens in a real browser with
its navigation, search and generated references."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from chromium import Browser, Server, find_chromium
from PIL import Image

from tfvae.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")


def documented_commands(page: Path | str) -> list[tuple[int, str]]:
    """The `tfvae …` lines of a page's (or a text's) fenced code blocks,
    continuations joined, prompts dropped: (line number, command)."""
    text = page.read_text() if isinstance(page, Path) else page
    commands, inside, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            continue
        text = line.strip().removeprefix("$ ")
        if pending:
            pending += " " + text
        elif text.startswith("tfvae ") or text == "tfvae":
            pending, start = text, number
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append((start, pending))
        pending = ""
    return commands


def words(command: str) -> list[str]:
    """The arguments after `tfvae`, without a trailing `# comment` or what a
    shell would do with the output (`| jq`, `> file`, `&& next`)."""
    words = shlex.split(command, comments=True)[1:]
    for i, word in enumerate(words):
        if word in {"|", ">", ">>", "&&", "||", ";", "&"}:
            return words[:i]
    return words


def parse(args: list[str]) -> None:
    """Parse a command line as `tfvae` would, without running the command:
    an unknown command or option, or a value the option refuses, raises."""
    try:
        with cli.main.make_context("tfvae", list(args)) as ctx:
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                return
            name, command, rest = cli.main.resolve_command(ctx, rest)
            command.make_context(name, rest, parent=ctx)
    except click.exceptions.Exit as done:  # --help and --version
        assert done.exit_code == 0


@pytest.fixture
def paths_need_not_exist(monkeypatch):
    """Documentation names run folders and data that exist on the reader's
    machine, not here: every path parses as if it existed. `--import` names
    the reader's own module, which is not imported."""
    commands = [cli.main, *cli.main.commands.values()]
    for param in (p for c in commands for p in c.params):
        if isinstance(param.type, click.Path):
            monkeypatch.setattr(param.type, "exists", False)
        if param.name == "imports":
            monkeypatch.setattr(param, "callback", None)
    monkeypatch.setattr(cli.RunOrModel, "convert", lambda self, value, *_: Path(value))


def test_the_pages_have_commands():
    """The collection finds the commands (a broken fence rule would pass
    every page vacuously): the README's quick tour alone has several."""
    readme = documented_commands(ROOT / "README.md")
    names = {words(command)[0] for _, command in readme if words(command)}
    assert {"train", "evaluate", "sample", "export"} <= names
    assert sum(len(documented_commands(page)) for page in PAGES) > 40


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_parses(page, paths_need_not_exist):
    wrong = []
    for number, command in documented_commands(page):
        try:
            parse(words(command))
        except click.ClickException as error:
            wrong.append(f"{page.name}:{number}: {command}\n    {error.format_message()}")
    assert not wrong, "\n".join(wrong)


def test_every_commands_help_examples_parse(paths_need_not_exist):
    """The examples in `tfvae COMMAND --help` are documentation too."""
    helps = [cli.main.help, *(command.help for command in cli.main.commands.values())]
    examples = [line.strip() for text in helps for line in text.splitlines()]
    examples = [line for line in examples if line.startswith("tfvae ")]
    assert len(examples) > 2 * len(cli.main.commands)
    for example in examples:
        parse(words(example))


def test_a_renamed_option_fails_the_parse(paths_need_not_exist):
    """The check can fail: a misspelt option and a refused value raise."""
    parse(["train", "--epochs", "3", "--latent-dim", "32,16"])
    with pytest.raises(click.NoSuchOption):
        parse(["train", "--epoch", "3"])
    with pytest.raises(click.BadParameter):
        parse(["sample", "runs/x", "--temperature", "nan"])
    with pytest.raises(click.UsageError):
        parse(["trian"])


PERIODS_OF_WORK = re.compile(
    r"\bsessions?[\s_-]*\d|\b(this|last|next|previous|earlier|later|each|every) session\b",
    re.IGNORECASE,
)


def test_no_file_numbers_periods_of_work():
    """The repository speaks of commits, dates and versions."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    found = []
    for name in tracked:
        path = ROOT / name
        if PERIODS_OF_WORK.search(name):
            found.append(name)
        if path.suffix not in {".md", ".py", ".json", ".txt", ".yml", ".toml", ".csv"}:
            continue
        if not path.is_file() or "node_modules" in path.parts:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if PERIODS_OF_WORK.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The documentation site as `mkdocs build --strict` builds it."""
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def _needs_chromium() -> None:
    try:
        find_chromium()
    except FileNotFoundError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(str(err))
        pytest.skip(str(err))


SEARCH = """new Promise((done, fail) => {
    const box = document.querySelector(".md-search__input");
    box.focus();
    box.value = %s;
    box.dispatchEvent(new Event("input", {bubbles: true}));
    box.dispatchEvent(new KeyboardEvent("keyup", {bubbles: true}));
    const started = Date.now();
    const look = () => {
        const hits = [...document.querySelectorAll(".md-search-result__item")];
        if (hits.length) return done(hits.map(hit => hit.textContent));
        if (Date.now() - started > 20000) return fail(new Error("no search results"));
        setTimeout(look, 100);
    };
    look();
})"""


def walk_site(site: Path, screenshots: Path) -> dict[str, list[str]]:
    """Open the served site as a reader does: the home page's navigation, a
    search, the generated command-line and API pages; a screenshot of each."""
    seen = {}
    with Server(site) as server, Browser(window=(1280, 900)) as browser:
        page = browser.new_page()
        page.goto(server.url + "index.html")
        seen["navigation"] = page.evaluate(
            "[...document.querySelectorAll('.md-nav__link')].map(a => a.textContent.trim())"
        )
        seen["search"] = page.evaluate(SEARCH % '"importance"')
        (screenshots / "search.png").write_bytes(page.screenshot())
        for name in ("cli", "api"):
            page.goto(server.url + f"reference/{name}/index.html")
            seen[name] = [page.evaluate("document.querySelector('article').innerText")]
            (screenshots / f"{name}.png").write_bytes(page.screenshot())
        seen["errors"] = page.errors
    return seen


def test_the_site_opens_in_a_browser(site, tmp_path):
    """Served over HTTP, the site has its navigation, a working search and
    the generated references; screenshots show real pages, not blank ones."""
    _needs_chromium()
    seen = walk_site(site, tmp_path)
    for title in ("Getting started", "Command line", "Python API", "Speed"):
        assert title in seen["navigation"]
    assert seen["search"], "the search found nothing"
    cli_page, api_page = seen["cli"][0], seen["api"][0]
    for command in ("train", "evaluate", "score", "sample", "export"):
        assert f"tfvae {command}" in cli_page
    assert "--latent-dim" in cli_page and "--temperature" in cli_page
    assert "VAE" in api_page and "Returns" in api_page
    assert seen["errors"] == []
    for name in ("search", "cli", "api"):
        pixels = np.asarray(Image.open(tmp_path / f"{name}.png").convert("L"))
        assert pixels.shape[1] == 1280 and pixels.std() > 10
