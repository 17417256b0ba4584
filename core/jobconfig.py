"""One base for the studio's job configs — train (core.train.config), evaluate (core.evaluate.config), export
(core.deploy.export) and deploy (core.deploy.config) — so a field is written once and everything else is derived:

* :meth:`JobConfig.from_dict` / ``from_yaml`` / ``from_file`` — validation with one error format:
  ``invalid <what>: field: why; other_field: why`` (the config's own error class, a ``ValueError``).
* field metadata (:func:`meta`, read with :func:`field_meta`): where a field sits on a tab's form (group, row,
  column), its label, the condition under which it applies (``only={"objective": "grpo"}``), extra CLI choices;
  the field's ``description`` is its help text.
* :func:`add_flags` — argparse flags generated from the fields: ``--field-name`` (or a name kept from an older CLI),
  help = the description, choices = the ``Literal``'s values, booleans as ``--flag/--no-flag``, lists as several
  values; every flag defaults to "not given", so the config's own default applies (and ``--help`` shows it).
  :func:`flag_values` reads back what was given, as a dict for ``from_dict``.
* :func:`choices_of`, :func:`int_fields`, :func:`form_fields` — the choice lists, the int coercion and the form's
  fields of a config, derived from its types and metadata instead of copied by hand.

It needs only pydantic and PyYAML: it sits on the config floor, under every job.
"""
from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

META_KEY = "fts"


class ConfigError(ValueError):
    """A config a person can fix; the message names the field and what is wrong."""


def format_validation_error(exc: ValidationError, what: str = "config") -> str:
    """``invalid <what>: loc: message; …`` — pydantic's messages without their "Value error, " prefix, an unknown
    field named as such."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        parts.append(f"{loc}: {msg}")
    return f"invalid {what}: " + "; ".join(parts)


class JobConfig(BaseModel):
    """A job's typed config: unknown fields refused, one ``from_dict`` with one error format."""

    model_config = ConfigDict(extra="forbid")

    #: what the error messages call it ("invalid <what>: …") and the error raised (a ValueError subclass)
    config_what: ClassVar[str] = "config"
    config_error: ClassVar[type[ValueError]] = ConfigError

    @classmethod
    def error_class(cls) -> type[ValueError]:
        """The error a bad config raises (a config whose error class sits on a higher floor imports it here)."""
        return cls.config_error

    @classmethod
    def from_dict(cls, data: dict):
        try:
            return cls(**data)
        except ValidationError as exc:
            raise cls.error_class()(format_validation_error(exc, cls.config_what)) from None

    @classmethod
    def from_yaml(cls, text: str):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise cls.error_class()(f"config is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise cls.error_class()("config YAML must be a mapping of field: value")
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path):
        p = Path(path)
        if not p.is_file():
            raise cls.error_class()(f"config file not found: {p}")
        return cls.from_yaml(p.read_text(encoding="utf-8"))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---- field metadata ---------------------------------------------------------------------------------------------
def meta(*, label: str | None = None, at: tuple | None = None, only: dict | None = None, info: str | None = None,
         minimum: float | None = None, widget: str | None = None, choices: tuple | None = None,
         flag: str | None = None) -> dict:
    """A field's ``json_schema_extra``: where it sits on a form and how it is asked for.

    ``at=(group, row, column)`` places it on the form (fields of one group and row share a row, left to right by
    column); ``only={"field": value}`` — it applies only when that field has that value (its input is hidden and
    ignored otherwise); ``widget`` — another widget than the type's (``radio``, ``checkboxes``, ``text``); ``choices``
    — the values a plain ``str`` field accepts (a ``Literal`` gives its own); ``flag`` — the CLI flag's name where an
    older CLI named it otherwise."""
    given = {"label": label, "at": list(at) if at else None, "only": only, "info": info, "minimum": minimum,
             "widget": widget, "choices": list(choices) if choices else None, "flag": flag}
    return {META_KEY: {k: v for k, v in given.items() if v is not None}}


def field_meta(field: FieldInfo) -> dict:
    extra = field.json_schema_extra
    return dict(extra.get(META_KEY, {})) if isinstance(extra, dict) else {}


def _unwrap_optional(tp):
    """``X`` of ``X | None`` / ``Optional[X]``; anything else as it is."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def base_type(field: FieldInfo):
    """The field's type without ``None``: ``int``, ``float``, ``str``, ``bool``, ``list``, or a ``Literal``."""
    tp = _unwrap_optional(field.annotation)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return tp
    if origin in (list, tuple, set):
        return list
    return tp


def choices_of(model: type[BaseModel], name: str) -> list:
    """The values a field accepts: its ``Literal``'s, or those its metadata lists; [] for a free one."""
    field = model.model_fields[name]
    tp = base_type(field)
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    return list(field_meta(field).get("choices") or [])


def int_fields(model: type[BaseModel]) -> list[str]:
    """The fields whose type is ``int`` (a form's number box may send 4.0: it is coerced)."""
    return [n for n, f in model.model_fields.items() if base_type(f) is int]


def form_fields(model: type[BaseModel], group: str | None = None) -> dict[str, dict]:
    """{field: metadata} of the fields placed on a form (``at``), in form order (group, row, column); ``group``:
    only that group's."""
    placed = {n: field_meta(f) for n, f in model.model_fields.items() if field_meta(f).get("at")}
    if group is not None:
        placed = {n: m for n, m in placed.items() if m["at"][0] == group}
    return dict(sorted(placed.items(), key=lambda kv: (kv[1]["at"][0], *kv[1]["at"][1:])))


def form_rows(model: type[BaseModel], group: str) -> list[list[str]]:
    """A form group's fields as rows (each a list of field names, left to right)."""
    rows: dict[int, list[str]] = {}
    for name, m in form_fields(model, group).items():
        rows.setdefault(m["at"][1], []).append(name)
    return [rows[r] for r in sorted(rows)]


def applies(model: type[BaseModel], name: str, values: dict) -> bool:
    """Whether a field applies to a config with these values (its ``only`` condition holds, or it has none);
    ``only={"target": ["tgi", "vllm"]}``: any of these values."""
    only = field_meta(model.model_fields[name]).get("only") or {}
    return all(values.get(k) in (v if isinstance(v, list) else [v]) for k, v in only.items())


# ---- CLI flags ----------------------------------------------------------------------------------------------------
def flag_of(model: type[BaseModel], name: str) -> str:
    return "--" + (field_meta(model.model_fields[name]).get("flag") or name).replace("_", "-")


def _help(field: FieldInfo) -> str:
    text = (field.description or "").rstrip(".")
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if default not in (None, "", [], False):
        shown = ", ".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown})" if text else f"default: {shown}"
    return text.replace("%", "%%")  # argparse formats help strings


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], *, fields=None, exclude=(),
              required=(), help_text: dict | None = None) -> list[str]:
    """One flag per field of ``model`` (``fields``: these only, in this order; ``exclude``: all but these) on
    ``parser``. A flag not given reads as None (the config's default applies); ``help_text``: {field: help} where a
    CLI says more than the description. Returns the fields added, for :func:`flag_values`."""
    names = [n for n in (fields or model.model_fields) if n not in exclude]
    for name in names:
        field = model.model_fields[name]
        tp = base_type(field)
        kw: dict[str, Any] = {"dest": name, "default": None, "help": (help_text or {}).get(name) or _help(field)}
        choices = choices_of(model, name)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif tp is list:
            kw["nargs"], kw["metavar"] = "+", "NAME"
        else:
            kw["type"] = tp if tp in (int, float) else str
            kw["metavar"] = None if choices else {int: "N", float: "X"}.get(tp, "TEXT")
        if choices and tp is not bool:
            kw["choices"] = choices
        if name in required:
            kw["required"] = True
        parser.add_argument(flag_of(model, name), **kw)
    return names


def flag_values(args: argparse.Namespace, fields) -> dict:
    """{field: value} of the flags given (a flag not given is left out, so the config's default applies)."""
    return {n: getattr(args, n) for n in fields if getattr(args, n, None) is not None}


__all__ = ["ConfigError", "JobConfig", "add_flags", "applies", "base_type", "choices_of", "field_meta", "flag_of",
           "flag_values", "form_fields", "form_rows", "format_validation_error", "int_fields", "meta"]
