"""Config fields that hold a registered component, and the one way to validate Python values against config
models: errors become a :class:`~crosstask.errors.ConfigError` that names the key path, the value and what
is allowed. Below the experiment config (``crosstask.config``), so data and models can use it too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import SerializeAsAny, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from crosstask.errors import ConfigError
from crosstask.registry import ComponentConfig, Registry


def component(registry: Registry) -> Any:
    """A config field holding one component of ``registry``, given as ``name`` or ``{name: ..., **params}``."""

    def validate(value: Any, handler: Any) -> ComponentConfig:
        if isinstance(value, ComponentConfig):
            value = value.model_dump()
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise PydanticCustomError(
                "component",
                "expected the {family}'s name or a mapping with 'name:', got {value}",
                {"family": registry.family, "value": _shown(value)},
            )
        if "name" not in value:
            raise PydanticCustomError(
                "component",
                "missing 'name:' choosing the {family}. Choices: {choices}",
                {"family": registry.family, "choices": ", ".join(registry.names())},
            )
        if value["name"] not in registry:
            raise PydanticCustomError(
                "component", "{message}", {"message": registry.unknown_message(value["name"])}
            )
        return registry.get(value["name"]).config.model_validate(dict(value))

    return Annotated[SerializeAsAny[ComponentConfig], WrapValidator(validate), ComponentField(registry)]


class ComponentField:
    """Marks a config field as a component of ``registry`` (read by :func:`apply_overrides`)."""

    def __init__(self, registry: Registry):
        self.registry = registry


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a message, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_component(kind: Any, value: Any, where: str = "argument") -> ComponentConfig:
    """Validate one component (e.g. ``DatasetComponent``) given by name or mapping, outside an experiment."""
    return validate_python(TypeAdapter(kind), value, where)


def validate_python(model: Any, value: Any, where: str) -> Any:
    """Validate a Python argument ``where`` with a pydantic model or TypeAdapter; errors name ``where.key``."""
    validate = model.validate_python if isinstance(model, TypeAdapter) else model.model_validate
    try:
        return validate(value)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, "arguments", prefix=(where,), fix="Fix the argument(s) above.")
        ) from None


def format_validation_error(
    exc: ValidationError, source: str, prefix: Sequence[str] = (), fix: str | None = None
) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors(include_url=False):
        loc = _dotted((*prefix, *err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            lines.append(f"  - {loc}: required key is missing")
            continue
        given = err.get("input")
        shown = (
            ""
            if isinstance(given, dict | list) or err["type"] in ("unknown_key", "component")
            else f" = {given!r}"
        )
        lines.append(f"  - {loc or '(top level)'}{shown}: {message}")
    lines.append(
        fix or f"Fix the key(s) above in {source}, or override them on the command line as key.path=value."
    )
    return "\n".join(lines)


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "json-or-python", "lax-or-strict")):
            continue  # pydantic's internal validator names
        else:
            out += ("." if out else "") + str(part)
    return out
