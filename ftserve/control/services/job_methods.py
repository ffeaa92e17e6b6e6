"""A job's method (supervised | dpo): its hyperparameters, the file formats it trains on, and the extensions
that mean something for it; every refusal a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

from ftserve.control.db.tables import File
from ftserve.control.services import catalog
from ftserve.core.errors import bad_request
from ftserve.core.schemas.jobs import DpoHyperparameters, Hyperparameters, JobCreate, Method, MethodType


def method_of(req: JobCreate) -> tuple[MethodType, Hyperparameters]:
    """The job's method type and its hyperparameters, from `method` or the deprecated top level."""
    method = req.method or Method()
    if method.type == "reinforcement":
        raise bad_request(
            "Reinforcement fine-tuning is not supported: use method.type 'supervised' or 'dpo'",
            param="method.type",
            code="unsupported_method",
        )
    for other in ("supervised", "dpo", "reinforcement"):
        if other != method.type and getattr(method, other) is not None:
            raise bad_request(
                f"method.{other} is only for method.type '{other}', and this job's is '{method.type}'",
                param=f"method.{other}",
            )
    top = req.hyperparameters
    nested: Hyperparameters | None
    if method.type == "dpo":
        nested = method.dpo.hyperparameters if method.dpo else None
    else:
        nested = method.supervised.hyperparameters if method.supervised else None
    shared = Hyperparameters.model_fields
    if top is not None and nested is not None and top.model_dump() != nested.model_dump(include=set(shared)):
        raise bad_request(
            f"Pass hyperparameters either at the top level or in method.{method.type}, not both",
            param="hyperparameters",
        )
    chosen = nested or top or Hyperparameters()
    if method.type == "dpo" and not isinstance(chosen, DpoHyperparameters):
        chosen = DpoHyperparameters(**chosen.model_dump())
    return method.type, chosen


# Which file formats each method trains on.
METHOD_FORMATS: dict[str, tuple[str, ...]] = {"supervised": ("prompt_completion", "chat"), "dpo": ("preference",)}


def check_format(method: MethodType, f: File, param: str) -> None:
    """A DPO job needs preference pairs, a supervised job prompt/completion or chat examples."""
    if f.format in METHOD_FORMATS[method]:
        return
    if method == "dpo":
        hint = "DPO trains on preference pairs (input, preferred_output, non_preferred_output)"
    else:
        hint = "supervised jobs train on prompt/completion or chat examples; preference pairs need method.type 'dpo'"
    raise bad_request(
        f"File {f.id} is in the {f.format} format, which method.type '{method}' cannot train on: {hint}",
        param=param,
        code="invalid_file_format",
    )


LORA_SHAPE = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules")


def check_extensions(method: MethodType, resolved: catalog.ResolvedModel, ext: dict[str, Any]) -> None:
    """Extensions that would change nothing are refused rather than ignored."""
    if method == "dpo" and "prompt_loss_weight" in ext:
        raise bad_request(
            "prompt_loss_weight is for supervised jobs: DPO trains on the two replies only",
            param="extensions.prompt_loss_weight",
            code="invalid_extensions",
        )
    # A job that continues a fine-tuned model trains that model's adapter: its LoRA shape is fixed.
    given = [k for k in LORA_SHAPE if k in ext]
    if resolved.job_id is not None and given:
        raise bad_request(
            f"'{resolved.name}' is a fine-tuned model: training continues its adapter, whose LoRA settings are "
            f"fixed; remove extensions.{given[0]}",
            param=f"extensions.{given[0]}",
            code="invalid_extensions",
        )
