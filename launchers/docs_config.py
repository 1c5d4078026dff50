"""Generate docs/configuration.md from the typed configs and the defaults in conf/.

`python -m launchers.docs_config > docs/configuration.md` prints the reference: per registered stage
(clinsynth/core/registry.py) every field of its config model with type, default (conf/config.yaml
composed without overrides, or the group option that selects a union member), role and reason, then the
launcher's own keys. tests/unit/test_docs_config.py compares the committed file with this output, so
the reference cannot drift from the code. `--check` exits 1 when the file differs.
"""

from __future__ import annotations

import difflib
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from omegaconf import OmegaConf
from pydantic import BaseModel

from clinsynth.core.config import nested_models, role_of
from clinsynth.core.registry import BUILTIN_STAGE_MODULES, StageSpec, registered
from launchers.config import compose_config, conf_dir
from launchers.validate import Launcher, Resources

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
COMMAND = "python -m launchers.docs_config > docs/configuration.md"
ABSENT = object()
_MISSING = "???"
_INTERP = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


# ---- conf/ as files: group options, their package, their comments ---------------------------


@dataclass(frozen=True)
class Option:
    """One file of a config group (conf/<group>/<name>.yaml) and where its keys land."""

    group: str
    name: str
    package: str
    data: dict[str, Any]
    comments: dict[str, str]
    about: str

    def at(self, dotted: str) -> Any:
        """The file's raw value at a full dotted key, or ABSENT."""
        if self.package and not (dotted == self.package or dotted.startswith(self.package + ".")):
            return ABSENT
        rest = dotted[len(self.package) :].lstrip(".") if self.package else dotted
        return _get(self.data, rest) if rest else self.data


def _get(node: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def _comments(text: str, package: str) -> dict[str, str]:
    """Dotted key -> its end-of-line comment (`key: value  # why`), keys prefixed by `package`."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        rest = m.group("rest")
        hit = re.search(r"\s#\s?(.*)$", rest)
        if hit and hit.group(1).strip():
            key = ".".join(k for _, k in stack)
            out[f"{package}.{key}" if package else key] = hit.group(1).strip()
    return out


def _about(text: str) -> str:
    """The first sentence of a file's header comment, after its command line."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body.startswith("@package"):
            continue
        if "python -m launch" in body:
            paren = re.search(r"\s\s+\((.+)\)\s*$", body)
            if paren:
                lines.append(paren.group(1) + ".")
            continue
        lines.append(body)
    joined = " ".join(lines)
    m = re.search(r"^(.+?[.])(\s|$)", joined)
    first = m.group(1) if m else joined
    return first if len(first) <= 200 else first[:197].rstrip() + "…"


def load_options(conf: Path) -> dict[str, list[Option]]:
    """Every config group under conf/ (not experiment/), its options in name order."""
    groups: dict[str, list[Option]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        if len(rel.parts) < 2 or rel.parts[0] == "experiment" or path.name.startswith("_"):
            continue
        group = "/".join(rel.parts[:-1])
        text = path.read_text(encoding="utf-8")
        pkg = re.search(r"^# @package (\S+)", text, re.M)
        package = pkg.group(1) if pkg else group.replace("/", ".")
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        assert isinstance(loaded, dict)
        data = {str(k): v for k, v in loaded.items() if k != "defaults"}
        groups.setdefault(group, []).append(
            Option(group, path.stem, package, data, _comments(text, package), _about(text))
        )
    return groups


def default_choices(conf: Path) -> dict[str, str | None]:
    """conf/config.yaml's defaults list: group -> the option it selects (None: `group: null`)."""
    raw = OmegaConf.to_container(OmegaConf.load(conf / "config.yaml"), resolve=False)
    assert isinstance(raw, dict)
    out: dict[str, str | None] = {}
    for item in raw.get("defaults") or []:
        if isinstance(item, dict):
            for group, choice in item.items():
                out[str(group)] = None if choice is None else str(choice)
    return out


# ---- types, values and cells ---------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A short, readable type: `int`, `'a' \\| 'b'`, `list[str]`, `ModelName`, `str \\| null`."""
    if annotation is type(None):
        return "null"
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(_value(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation))
    if origin in (list, tuple, dict, set):
        inner = ", ".join(type_name(a) for a in get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def bounds(info: Any) -> str:
    """`≥ 1`, `0 < x ≤ 1`, pattern and length limits from the field's metadata."""
    parts = []
    for meta in info.metadata:
        if isinstance(meta, at.Ge):
            parts.append(f"≥ {meta.ge}")
        elif isinstance(meta, at.Gt):
            parts.append(f"> {meta.gt}")
        elif isinstance(meta, at.Le):
            parts.append(f"≤ {meta.le}")
        elif isinstance(meta, at.Lt):
            parts.append(f"< {meta.lt}")
        elif isinstance(meta, at.MinLen):
            parts.append(f"len ≥ {meta.min_length}")
        elif isinstance(meta, at.MaxLen):
            parts.append(f"len ≤ {meta.max_length}")
    return ", ".join(parts)


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if v is True or v is False:
        return str(v).lower()
    if isinstance(v, str):
        return v if v else '""'
    if isinstance(v, dict):
        return "{}" if not v else "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def default_cell(v: Any) -> str:
    if v is ABSENT:
        return "—"
    if v == _MISSING:
        return "**required**"
    text = _value(v)
    if isinstance(v, dict) and len(text) > 60:
        return f"{{…}} ({len(v)} keys)"
    return f"`{text}`" if len(text) <= 80 else f"`{text[:77]}…`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _why(model: type[BaseModel], name: str) -> str:
    extra = model.model_fields[name].json_schema_extra
    return str(extra.get("why") or "") if isinstance(extra, dict) else ""


def _tag(model: type[BaseModel]) -> tuple[str, Any] | None:
    """(field, value) of a union member's discriminator: a field typed as a one-value Literal."""
    for name, info in model.model_fields.items():
        args = get_args(info.annotation)
        if get_origin(info.annotation) is Literal and len(args) == 1:
            return name, args[0]
    return None


# ---- the walk ----------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    when: str
    type: str
    default: str
    role: str
    why: str


class Reference:
    """Rows of the reference, from the models and the raw (unresolved) default config."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf
        raw = OmegaConf.to_container(compose_config([]), resolve=False)
        assert isinstance(raw, dict)
        self.raw: dict[str, Any] = {str(k): v for k, v in raw.items()}
        self.groups = load_options(conf)
        self.choices = default_choices(conf)
        self.comments = _comments((conf / "config.yaml").read_text(encoding="utf-8"), "")
        for group, choice in self.choices.items():
            for opt in self.groups.get(group, []):
                if opt.name == choice:
                    self.comments = {**opt.comments, **self.comments}
        #: union members whose fields are listed already: later unions refer to them
        self.members_seen: dict[type[BaseModel], str] = {}
        #: role of rows whose model declares none (the launcher's keys)
        self.role = ""

    def lookup(self, root: dict[str, Any], dotted: str) -> Any:
        """Raw value at `dotted`, following `${a.b}` references to other keys on the way."""
        node: Any = root
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            ref = _INTERP.match(node) if isinstance(node, str) else None
            if ref:
                return self.lookup(self.raw, ".".join([ref.group(1), *parts[i:]]))
            if not isinstance(node, dict) or part not in node:
                return ABSENT
            node = node[part]
        return node

    def resolved(self, node: Any) -> Any:
        """A raw value with `${a.b}` references followed (not `${oc.env:...}`)."""
        for _ in range(10):
            ref = _INTERP.match(node) if isinstance(node, str) else None
            if not ref:
                break
            node = self.lookup(self.raw, ref.group(1))
        return node

    def group_choices(self, key: str) -> str:
        """`group x=`: its options, the default in bold, for the group that sets `key`."""
        group = key.replace(".", "/")
        if group not in self.groups:
            return ""
        default = self.choices.get(group, ABSENT)
        shown = [f"**{o.name}**" if o.name == default else o.name for o in self.groups[group]]
        return f"group `{group}=`: {', '.join(shown)}" + (" (default: none)" if default is None else "")

    def rows(
        self, model: type[BaseModel], prefix: str = "", when: str = "", source: Any = None
    ) -> Iterator[Row]:
        """Rows of `model`'s fields; `source` is where defaults come from (None: the default config)."""
        for name, info in model.model_fields.items():
            key = f"{prefix}{name}"
            members = nested_models(info.annotation)
            role = role_of(model, name) or self.role
            comment = self.comments.get(key, "")
            if source is not None:
                comment = source.comments.get(key, "") or comment
            note = _note(_why(model, name), comment)
            value = self.lookup(self.raw, key) if source is None else source.at(key)
            if value is ABSENT and not info.is_required() and source is None:
                value = info.default
            if not members:
                extra = bounds(info)
                typ = type_name(info.annotation) + (f" ({extra})" if extra else "")
                yield Row(key, when, typ, default_cell(value), role, note)
                continue
            choices = self.group_choices(key)
            note = note + (" — " if note and choices else "") + choices
            if len(members) == 1:
                nullable = " or null" if type(None) in _flat_args(info.annotation) else ""
                if role or choices or nullable:
                    shown = "`null`" if value is None else ""
                    yield Row(key, when, "section" + nullable, shown, role, note)
                if value is not None:
                    yield from self.rows(members[0], f"{key}.", when, source)
                continue
            yield from self.union_rows(key, members, info.annotation, when, role, note, value, source)

    def union_rows(
        self,
        key: str,
        members: list[type[BaseModel]],
        annotation: Any,
        when: str,
        role: str,
        note: str,
        value: Any,
        source: Any,
    ) -> Iterator[Row]:
        nullable = " | null" if type(None) in _flat_args(annotation) else ""
        tags = [_tag(m) for m in members]
        typ = "one of: " + ", ".join(
            f"{t[0]}={t[1]}" if t else m.__name__ for m, t in zip(members, tags, strict=True)
        )
        shown = f"`{value}`" if isinstance(value, str) and _INTERP.match(value) else default_cell(value)
        yield Row(key, when, typ + nullable, "" if isinstance(value, dict) else shown, role, note)
        current = self.resolved(value)
        for member, tag in zip(members, tags, strict=True):
            label = f"{tag[0]}={tag[1]}" if tag else member.__name__
            sub_when = f"{when}, {label}" if when else label
            if isinstance(current, dict) and tag and current.get(tag[0]) == tag[1]:
                self.members_seen.setdefault(member, f"{key}.*` ({label}")
                yield from self.rows(member, f"{key}.", sub_when, source)
                continue
            group = key.replace(".", "/")
            opts = [
                o
                for o in self.groups.get(group, [])
                if tag and isinstance(o.at(key), dict) and o.at(key).get(tag[0]) == tag[1]
            ]
            picked = ", ".join(f"`{group}={o.name}`" for o in opts)
            seen = self.members_seen.get(member)
            if seen is not None:
                why = f"the fields of `{seen})" + (f"; presets: {picked}" if picked else "")
                yield Row(f"{key}.*", sub_when, member.__name__, "", role, why)
                continue
            self.members_seen[member] = f"{key}.*` ({label}"
            if len(opts) == 1:
                yield from self.rows(member, f"{key}.", f"{sub_when} ({picked})", opts[0])
            else:
                label = sub_when + (f" ({picked})" if picked else "")
                yield from self.rows(member, f"{key}.", label, _Nothing())


def _note(why: str, comment: str) -> str:
    """The model's reason, then the conf/ comment when it says something else."""
    if not comment:
        return why
    if not why:
        return comment
    same = difflib.SequenceMatcher(None, why.lower(), comment.lower()).ratio() > 0.6
    if same or comment.lower() in why.lower():
        return why
    return f"{why} — conf: {comment}"


def _flat_args(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _flat_args(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [x for a in get_args(annotation) for x in _flat_args(a)]
    return [annotation]


class _Nothing:
    """A defaults source without values: the field is set by a preset chosen on the command line."""

    def __init__(self) -> None:
        self.comments: dict[str, str] = {}

    def at(self, dotted: str) -> Any:
        return ABSENT


# ---- the document ------------------------------------------------------------------------


HEADER = f"""\
# Configuration reference

<!-- generated by `{COMMAND}`; do not edit: tests/unit/test_docs_config.py fails when this file is stale -->

Every key a launch reads, generated from the typed config models (`clinsynth/core/config.py`,
one model per stage registered in `clinsynth/core/registry.py`, and the launcher's models in
`launchers/validate.py`) and the defaults in `conf/`. Regenerate with `{COMMAND}`.

- **default**: the value in `conf/config.yaml` composed without overrides (interpolations such as
  `${{train.model}}` are shown unresolved); for a member of a union that the defaults do not select,
  the value in the group option that selects it (named in *when*); **required**: `???` in conf/, set
  it on the command line; —: no default here (a preset chosen on the command line sets it).
- **role**: `identity` fields enter the stage id (changing one gives a new stage folder, and new
  folders for every stage after it); `operational` fields say how or where a stage runs and never
  enter an id (workers, batch sizes, timeouts, URLs of equivalent servers). *why* is the model's
  reason (`identity(why=…)`, `operational(why=…)`), then the comment beside the key in conf/.
- **when**: the union member (`kind=vllm`) a row belongs to, and the group option that selects it.
- The models declare types, bounds and roles, never values: a key missing from conf/ is a launch
  error. See the whole composed config of a launch with `python -m launch --cfg +experiment=smoke`.
"""


def _table(rows: Sequence[Row]) -> list[str]:
    out = ["| key | when | type | default | role | why |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| `{r.key}` | {cell(r.when)} | {cell(r.type)} | {cell(r.default)} | {r.role} | {cell(r.why)} |"
        )
    return out


def _paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _stage_head(spec: StageSpec, ref: Reference) -> list[str]:
    needs = spec.needs if not callable(spec.needs) else None
    if needs is None:
        needs_text = "decided from the config (`" + spec.needs.__qualname__ + "`)"  # type: ignore[union-attr]
    else:
        needs_text = ", ".join(f"`{n}`" for n in needs) or "nothing"
    kind = "array (one task per shard)" if spec.array else "one job (one or more ranks)"
    model = spec.config
    assert model is not None
    lines = [
        f"## `{spec.name}`",
        "",
        _paragraph(spec.fn.__doc__),
        "",
        f"- module `{spec.module}`, config model `{model.__module__}.{model.__qualname__}`, "
        f"version {spec.version}",
        f"- needs: {needs_text}; runs as {kind}",
        "- reads the top-level keys: "
        + (", ".join(f"`{k}`" for k in spec.keys) or f"none — {_paragraph(model.__doc__)}"),
    ]
    presets = ref.groups.get(f"resources/{spec.name}", [])
    default = ref.choices.get(f"resources/{spec.name}")
    if presets:
        lines.append(
            f"- resources presets (`resources/{spec.name}=`): "
            + "; ".join(f"**{o.name}**" if default == o.name else o.name for o in presets)
        )
    groups = [g for g in ref.groups if g.split("/")[0] in spec.keys and not g.startswith("resources")]
    if groups:
        lines += ["", "| group | option | what it is |", "|---|---|---|"]
        for g in groups:
            for o in ref.groups[g]:
                name = f"**{o.name}** (default)" if ref.choices.get(g) == o.name else o.name
                lines.append(f"| `{g}` | {name} | {cell(o.about)} |")
    return [*lines, ""]


def render(conf: Path | None = None) -> str:
    conf = conf or conf_dir()
    ref = Reference(conf)
    out = [HEADER]
    # the built-in stages only: plugin or test stages registered in this process are not clinsynth's
    specs = [s for s in registered().values() if s.config is not None and s.module in BUILTIN_STAGE_MODULES]
    # pipeline order, not import order: a test that imported evaluate first must not reorder the file
    specs.sort(key=lambda s: BUILTIN_STAGE_MODULES.index(s.module))
    out += ["## Stages", ""]
    out += [f"- [`{s.name}`](#{s.name}): {_paragraph(s.fn.__doc__)}" for s in specs]
    out.append("")
    documented: dict[str, tuple[str, Any]] = {}
    for spec in specs:
        assert spec.config is not None
        out += _stage_head(spec, ref)
        shared, own = [], []
        for key, info in spec.config.model_fields.items():
            seen = documented.get(key)
            if seen is not None and seen[1] == info.annotation:
                shared.append(f"`{key}` (as in [`{seen[0]}`](#{seen[0]}))")
            else:
                own.append(key)
                documented.setdefault(key, (spec.name, info.annotation))
        rows = [r for r in ref.rows(spec.config) if r.key.split(".")[0] in own]
        if shared:
            out += [f"Shared keys documented above: {', '.join(shared)}.", ""]
        if rows:
            out += [*_table(rows), ""]
    out += _launcher(ref)
    return "\n".join(out).rstrip() + "\n"


def _launcher(ref: Reference) -> list[str]:
    lines = [
        "## Launcher keys",
        "",
        "Read by `launchers/` only, validated by `launchers/validate.py`, all operational: none of them",
        "enters a run id or a stage id (`name` and `pipeline` enter the run id).",
        "",
    ]
    ref.role = "operational"
    rows = [r for r in ref.rows(Launcher)]
    for r in rows:
        if r.key in ("name", "pipeline"):
            r.role = "run id"
    lines += [*_table(rows), ""]
    lines += [
        "### `resources.<stage>`",
        "",
        "`resources.default` (conf/resources/_base.yaml) overlaid with `resources.<stage>` (the stage's",
        "`resources/<stage>=` preset and single keys such as `resources.train.time_min=720`). Only `shards`",
        "enters the stage id (an array's layout); the doctor stage's resources enter its id because its",
        "result describes where it ran.",
        "",
    ]
    rows = list(ref.rows(Resources, "resources.<stage>.", "", _Base(ref.conf)))
    for r in rows:
        if r.key.endswith(".shards"):
            r.role = "identity"
    ref.role = ""
    lines += [*_table(rows), ""]
    return lines + _presets(ref)


#: the resources keys shown per preset (the rest are in the table above)
PRESET_KEYS = (
    "nodes",
    "tasks_per_node",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "time_min",
    "shards",
    "partition",
    "exclusive",
)


def _presets(ref: Reference) -> list[str]:
    """Every `resources/<stage>=<preset>` with its shape (conf/resources/_base.yaml overlaid)."""
    base = _Base(ref.conf).data
    head = " | ".join(k.replace("_", " ") for k in PRESET_KEYS)
    lines = [
        "### Resources presets",
        "",
        "Each `conf/resources/<stage>/<preset>.yaml`, overlaid on `_base.yaml`; the default preset of each",
        "stage in bold. Select one with `resources/<stage>=<preset>`, change one key with",
        "`resources.<stage>.<key>=…`.",
        "",
        f"| preset | {head} | what it is |",
        "|---|" + "---:|" * len(PRESET_KEYS) + "---|",
    ]
    for group, opts in ref.groups.items():
        if not group.startswith("resources/"):
            continue
        for o in opts:
            values = {**base, **o.data}
            name = f"`{group}={o.name}`"
            if ref.choices.get(group) == o.name:
                name = f"**{name}**"
            cells = " | ".join(cell(_value(values.get(k))) for k in PRESET_KEYS)
            lines.append(f"| {name} | {cells} | {cell(o.about)} |")
    return [*lines, ""]


class _Base:
    """conf/resources/_base.yaml as a defaults source for `resources.<stage>.*`."""

    def __init__(self, conf: Path) -> None:
        path = conf / "resources" / "_base.yaml"
        text = path.read_text(encoding="utf-8")
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        assert isinstance(data, dict)
        self.data: dict[str, Any] = {str(k): v for k, v in data.items()}
        self.comments = _comments(text, "resources.<stage>")

    def at(self, dotted: str) -> Any:
        return _get(self.data, dotted.removeprefix("resources.<stage>."))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if args == ["--check"]:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if args:
        print(f"usage: {COMMAND}   (or --check)", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
