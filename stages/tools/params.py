"""``python -m stages params``: write params.yaml from conf/, the one source of the params.

::

    python -m stages params            # rewrite params.yaml from conf/ (atomically)
    python -m stages params --check    # write nothing; exit 1 if params.yaml is stale

conf/config.yaml holds every parameter with its comment; its ``defaults`` list names the default
profile (``profile: demo``), conf/profile/<name>.yaml, which may override or add keys (the demo
overrides nothing). params.yaml is config.yaml below that list, the profile merged in (values
from the profile; comments from config.yaml, or from the profile for a key config.yaml lacks),
under a generated header. Before writing, its values are checked against Hydra's composition of
the same profile (what ``dvc exp run -S profile=<name>`` writes), so the two never disagree.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import typer
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from stages.lib.common import atomic_path

ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    "# Written by `python -m stages params` from conf/config.yaml (+ conf/profile/{profile}.yaml):"
    "\n# edit those, never this file, then run it.\n"
)
#: What a stale params.yaml's check and test say.
STALE = "params.yaml is not what conf/ gives: run `python -m stages params`"
GLOBAL_PACKAGE = re.compile(r"^#\s*@package\s+_global_\s*$", re.MULTILINE)


def round_trip() -> YAML:
    """ruamel's comment-keeping loader and dumper, writing ``null`` and long lines as they are."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return rt


def split_config(text: str) -> tuple[str, str]:
    """``(default profile, body)`` of conf/config.yaml: the profile its ``defaults`` list names
    and the text below that list; above it only comments (the Hydra header, dropped)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("defaults:")), None)
    if start is None or any(line.strip() and line[0] != "#" for line in lines[:start]):
        raise ValueError("conf/config.yaml: start with comments, then the `defaults:` list")
    end = start + 1
    while end < len(lines) and lines[end].startswith((" ", "-")):
        end += 1
    defaults = yaml.safe_load("".join(lines[start:end]))["defaults"]
    profiles = [d["profile"] for d in defaults if isinstance(d, dict) and "profile" in d]
    if len(profiles) != 1:
        raise ValueError("conf/config.yaml: `defaults` must name one `profile`")
    return profiles[0], "".join(lines[end:]).lstrip("\n")


def read_profile(path: Path, rt: YAML) -> CommentedMap:
    """A profile's keys (empty when it only has comments); it must be ``@package _global_``."""
    text = path.read_text()
    if not GLOBAL_PACKAGE.search(text):
        raise ValueError(f"{path}: a profile starts with `# @package _global_`")
    return rt.load(text) or CommentedMap()


def merge(base: CommentedMap, override: CommentedMap) -> None:
    """Merge ``override`` into ``base`` as Hydra does (mappings key by key, anything else
    replaced), keeping ``base``'s comments; a new key brings its own comment."""
    for key, value in override.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            merge(base[key], value)
            continue
        if key not in base and key in override.ca.items:
            base.ca.items[key] = override.ca.items[key]
        base[key] = value


def render(conf: Path) -> tuple[str, str]:
    """``(default profile, params.yaml text)`` from the ``conf`` folder."""
    profile, body = split_config((conf / "config.yaml").read_text())
    rt = round_trip()
    params = rt.load(body)
    merge(params, read_profile(conf / "profile" / f"{profile}.yaml", rt))
    out = io.StringIO()
    rt.dump(params, out)
    return profile, HEADER.format(profile=profile) + "\n" + out.getvalue()


def compose(profile: str, conf: Path = ROOT / "conf") -> dict:
    """``conf`` composed by Hydra with ``profile=<profile>``, as ``dvc exp run -S`` does."""
    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        plugins = conf.resolve().parent / ".dvc" / "hydra"
        compose_and_dump(
            out, str(conf.resolve()), None, "config", str(plugins), [f"profile={profile}"]
        )
        return yaml.safe_load(out.read_text())


def params_text(conf: Path) -> str:
    """The params.yaml that ``conf`` gives, its values checked against Hydra's composition."""
    profile, text = render(conf)
    composed, written = compose(profile, conf), yaml.safe_load(text)
    if composed != written:
        keys = sorted(
            k for k in composed.keys() | written.keys() if composed.get(k) != written.get(k)
        )
        raise ValueError(
            f"conf/: the merged params differ from Hydra's composition of profile={profile} "
            f"under {keys} (an interpolation or a non-global profile?)"
        )
    return text


def refresh(root: Path, check: bool) -> bool:
    """Whether ``root``/params.yaml was stale; rewrite it (atomically) unless ``check``."""
    path = root / "params.yaml"
    text = params_text(root / "conf")
    stale = not path.is_file() or path.read_text() != text
    if stale and not check:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return stale


def main(
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if params.yaml is stale."
    ),
) -> None:
    """Write params.yaml from conf/config.yaml and its default profile."""
    stale = refresh(ROOT, check)
    if check and stale:
        typer.echo(STALE, err=True)
        raise typer.Exit(code=1)
    typer.echo("params.yaml: " + ("rewritten from conf/" if stale else "up to date"))
