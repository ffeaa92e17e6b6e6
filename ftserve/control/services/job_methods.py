"""A job's method (one of ftserve/core/methods' registered ones): its hyperparameters, the file formats it
trains on, and the extensions that mean something for it; every refusal a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

from ftserve.control.db.tables import File
from ftserve.control.services import catalog
from ftserve.core import methods
from ftserve.core.errors import bad_request
from ftserve.core.methods import MethodSpec
from ftserve.core.schemas.jobs import Hyperparameters, JobCreate, Method


def method_of(req: JobCreate) -> tuple[MethodSpec, Hyperparameters]:
    """The job's method and its hyperparameters, from `method` or the deprecated top level."""
    method = req.method or Method()
    spec = methods.find(method.type)
    if spec is None:  # the wire schema accepts OpenAI's other types so that they are refused by name here
        allowed = " or ".join(f"'{name}'" for name in methods.names())
        raise bad_request(
            f"{method.type.capitalize()} fine-tuning is not supported: use method.type {allowed}",
            param="method.type",
            code="unsupported_method",
        )
    for other in (name for name in Method.model_fields if name != "type"):
        if other != method.type and getattr(method, other) is not None:
            raise bad_request(
                f"method.{other} is only for method.type '{other}', and this job's is '{method.type}'",
                param=f"method.{other}",
            )
    top = req.hyperparameters
    block = getattr(method, spec.name)
    nested: Hyperparameters | None = block.hyperparameters if block is not None else None
    shared = Hyperparameters.model_fields
    if top is not None and nested is not None and top.model_dump() != nested.model_dump(include=set(shared)):
        raise bad_request(
            f"Pass hyperparameters either at the top level or in method.{method.type}, not both",
            param="hyperparameters",
        )
    chosen = nested or top or Hyperparameters()
    if not isinstance(chosen, spec.hyperparameters):  # the top level holds only the shared three
        chosen = spec.hyperparameters(**chosen.model_dump())
    return spec, chosen


def method_config(req: JobCreate, method: MethodSpec) -> dict[str, Any] | None:
    """The method block's own fields the job keeps (its MethodSpec's config_fields), as sent; 400 if one is
    missing (a reinforcement job without its grader)."""
    if not method.config_fields:
        return None
    block = getattr(req.method or Method(), method.name)
    if block is None:
        raise bad_request(
            f"method.{method.name} is required for method.type '{method.name}': it holds the "
            + " and ".join(method.config_fields),
            param=f"method.{method.name}",
        )
    return block.model_dump(mode="json", include=set(method.config_fields), exclude_none=True)  # type: ignore[no-any-return]


def check_format(method: MethodSpec, f: File, param: str) -> None:
    """The file's format is one the method trains on (a DPO job needs preference pairs, and so on)."""
    if f.format in method.formats:
        return
    raise bad_request(
        f"File {f.id} is in the {f.format} format, which method.type '{method.name}' cannot train on: "
        f"{method.format_hint}",
        param=param,
        code="invalid_file_format",
    )


LORA_SHAPE = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules")


def check_extensions(method: MethodSpec, resolved: catalog.ResolvedModel, ext: dict[str, Any]) -> None:
    """Extensions that would change nothing are refused rather than ignored."""
    for name, why in method.refused_extensions.items():
        if name in ext:
            raise bad_request(why, param=f"extensions.{name}", code="invalid_extensions")
    # A job that continues a fine-tuned model trains that model's adapter: its LoRA shape is fixed.
    given = [k for k in LORA_SHAPE if k in ext]
    if resolved.job_id is not None and given:
        raise bad_request(
            f"'{resolved.name}' is a fine-tuned model: training continues its adapter, whose LoRA settings are "
            f"fixed; remove extensions.{given[0]}",
            param=f"extensions.{given[0]}",
            code="invalid_extensions",
        )
