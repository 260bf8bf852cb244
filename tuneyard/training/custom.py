"""Custom training methods: Python scripts an operator uploads, run as jobs like the built-ins.

Uploaded code (methods, and GRPO reward files) is a server operator's decision: uploading or
deleting it needs TUNEYARD_ALLOW_CODE_UPLOADS=true and a project admin who is also marked as the
server's operator, and a training runs it only while the setting is on, in a process of its own
(tuneyard.training.code_process says what that process can and cannot reach).

The contract. A method script is one Python file. Tuneyard reads four module-level literals
from it without running it (each must be a plain literal that `ast.literal_eval` accepts):

    DESCRIPTION = "LoRA on the answers with a plain PyTorch loop."
    FORMATS = ["chat", "prompt_completion"]   # chat, prompt_completion, alpaca, preference,
                                              # prompt_only: the dataset formats it trains on
    RESULT = "adapter"                        # "adapter": a PEFT adapter folder, which
                                              # becomes a customized model; "full": a whole
                                              # model folder, which becomes a complete model
    PARAMETERS = {                            # its own parameters; each one's type is its
        "rank": {"default": 8, "description": "LoRA rank r."},  # default's: bool, int,
    }                                                            # float, str or list

and defines `def train(config, output_dir, report):`, which a training job calls in a
process of its own. A training of the method accepts every common parameter (the loop, the
optimiser, data limits, the adapter and LoRA fields; see GET /api/v1/training-methods) plus
PARAMETERS, each type-checked; unknown names are refused before any job starts. `adapter` is
"lora" or "qlora" for an adapter method and "full" for a full one.

`config` is a dict: "params" (every parameter, defaults filled in), "base_model_path" (the
base model's HF folder), "records_path" (the dataset's normalised records, one JSON object a
line, as the Datasets section of the README shows them), "dataset_format" and "seed".

`output_dir` is an empty folder. When `train` returns, it must hold, for RESULT "adapter",
adapter_config.json and adapter_model.safetensors whose modules exist in the base model
(`PeftModel.save_pretrained` writes both), or for RESULT "full", config.json and the weights
as *.safetensors (`save_pretrained`). The base model's tokenizer is added if the script saved
none. The folder then becomes the training's model, named and carded like a built-in's.

`report` is how the script talks back:
- `report.records()` yields the dataset's records (at most `max_samples` when that is set);
- `report.metrics(step, loss=..., **more)` records one step's numbers: the training's metric
  series, charts and comparisons read them as they read a built-in method's;
- `report.progress(percent, message=None)` sets the progress bar and the ETA;
- `report.should_stop()` is True once a cancel was asked for: return soon after (a script still
  running two minutes after a cancel is stopped); the training ends cancelled;
- `report.log` is a `logging.Logger` writing to the job's log (so do print and stderr).

The script runs in a process of its own with a scrubbed environment (no Tuneyard settings, no
database address); it reports through `report`, and only the job process writes to the
database. Its working directory and HOME are a scratch folder that is removed afterwards.

An exception in the script fails the training with the exception's message, and whatever it
wrote is removed. Custom methods keep no checkpoints: resuming one runs `train` from the start.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, Strict, create_model
from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.config import Settings, get_settings
from tuneyard.datasets.parsing import FORMATS as RECORD_FORMATS
from tuneyard.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import METHOD_NAME_MAX, Training, TrainingMethodScript, new_id
from tuneyard.storage import Layout, atomic_file, delete_on_commit
from tuneyard.training.methods import TrainingMethod, all_methods, get_method
from tuneyard.training.params import CommonParams

# A training records its method's name, so a method name is never longer than that column.
NAME_MAX = METHOD_NAME_MAX
NAME_RE = re.compile(rf"^[a-z][a-z0-9_-]{{0,{NAME_MAX - 1}}}$")
MAX_SCRIPT_BYTES = 1_000_000
PARAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DATASET_FORMATS = tuple(fmt.name for fmt in RECORD_FORMATS)
RESULTS = ("adapter", "full")
LITERALS = ("DESCRIPTION", "FORMATS", "RESULT", "PARAMETERS")
# The Python type of a parameter's default, by the name stored with the method.
PARAM_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "list": list}
PARAMETER_SHAPE = '{"default": <literal>, "description": "..."}'
EXAMPLES = {
    "DESCRIPTION": 'DESCRIPTION = "What the method does"',
    "FORMATS": 'FORMATS = ["chat"]',
    "RESULT": 'RESULT = "adapter"',
    "PARAMETERS": 'PARAMETERS = {"rank": {"default": 8, "description": "LoRA rank r."}}',
}


@dataclass(frozen=True)
class ScriptSpec:
    """What a method script declares, read without running it."""

    description: str
    formats: list[str]
    result: str
    # name -> {"type": "int", "default": 8, "description": "..."}
    parameters: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CustomMethod:
    """An uploaded method, shaped like a built-in TrainingMethod where the service reads one."""

    name: str
    description: str
    params_model: type[CommonParams]
    formats: tuple[str, ...]
    result: str
    script_id: str
    path: Path
    digest: str
    needs_chat_template: bool = False
    check_dataset: None = None  # an uploaded method states its formats only

    @property
    def title(self) -> str:
        return self.name

    def schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()

    @classmethod
    def of(cls, row: TrainingMethodScript) -> CustomMethod:
        return cls(
            name=row.name,
            description=row.description,
            params_model=params_model(row.name, row.result, row.parameters),
            formats=tuple(row.formats),
            result=row.result,
            script_id=row.id,
            path=Path(row.path),
            digest=row.digest,
        )


# -- reading a script ------------------------------------------------------------------------


def _top_level_literals(tree: ast.Module) -> dict[str, ast.expr]:
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in LITERALS:
                found[target.id] = value
    return found


def _literal(name: str, node: ast.expr | None) -> Any:
    if node is None:
        raise Invalid(f"The method script must set {name} at the top level, e.g. {EXAMPLES[name]}.")
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, RecursionError):  # not a literal, or e.g. a list as a key
        raise Invalid(
            f"{name} (line {node.lineno}) must be a plain literal, read without running the "
            f"script, e.g. {EXAMPLES[name]}."
        ) from None


def _is_plain_json(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, list):
        return all(_is_plain_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v) for k, v in value.items())
    return False


def _type_name(default: Any) -> str | None:
    # bool first: True is also an int
    for name in ("bool", "int", "float", "str", "list"):
        if isinstance(default, PARAM_TYPES[name]):
            return name
    return None


def _read_parameters(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise Invalid(f"PARAMETERS must be a dict of name -> {PARAMETER_SHAPE}.")
    parameters = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not PARAM_NAME_RE.fullmatch(name):
            raise Invalid(
                f"PARAMETERS has the name {name!r}; a parameter name is a lowercase letter, "
                "then up to 63 lowercase letters, digits or '_'."
            )
        if name in CommonParams.model_fields:
            raise Invalid(
                f"PARAMETERS['{name}'] is a common parameter every method already has; "
                "drop it from PARAMETERS (the script reads it from config['params'])."
            )
        if hasattr(CommonParams, name):
            raise Invalid(f"PARAMETERS['{name}'] is a reserved name; choose another.")
        if not isinstance(spec, dict) or set(spec) != {"default", "description"}:
            raise Invalid(f"PARAMETERS['{name}'] must be {PARAMETER_SHAPE}.")
        default, description = spec["default"], spec["description"]
        kind = _type_name(default)
        if kind is None or not _is_plain_json(default):
            raise Invalid(
                f"PARAMETERS['{name}'] has the default {default!r}; a default is a bool, int, "
                "float, str or list of plain values, and gives the parameter its type."
            )
        if not isinstance(description, str) or not description.strip():
            raise Invalid(f"PARAMETERS['{name}'] needs a description: say what it does.")
        parameters[name] = {"type": kind, "default": default, "description": description.strip()}
    return parameters


def _check_train_function(tree: ast.Module) -> None:
    wanted = "The method script must define `def train(config, output_dir, report):`"
    train = next(
        (
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "train"
        ),
        None,
    )
    if train is None:
        raise Invalid(f"{wanted} at the top level.")
    if isinstance(train, ast.AsyncFunctionDef):
        raise Invalid(f"{wanted}; train is async here, make it a plain function.")
    args = train.args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    takes_three = required <= 3 and (positional >= 3 or args.vararg is not None)
    if not takes_three or None in args.kw_defaults:
        raise Invalid(f"{wanted}; it must take exactly those three arguments.")


def read_script(source: bytes, filename: str = "method.py") -> ScriptSpec:
    """Check a method script and read what it declares, without running any of it."""
    try:
        text = source.decode("utf-8")
        tree = ast.parse(text, filename)
        compile(tree, filename, "exec", dont_inherit=True)
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError) as exc:
        raise Invalid(f"The method script is not valid UTF-8 Python: {exc}") from None
    nodes = _top_level_literals(tree)
    values = {name: _literal(name, nodes.get(name)) for name in LITERALS}

    description = values["DESCRIPTION"]
    if not isinstance(description, str) or not description.strip():
        raise Invalid('DESCRIPTION must be a non-empty string, e.g. DESCRIPTION = "What it does".')
    formats = values["FORMATS"]
    if (
        not isinstance(formats, list | tuple)
        or not formats
        or not all(isinstance(f, str) for f in formats)
    ):
        raise Invalid(
            f"FORMATS must be a non-empty list of dataset formats, e.g. {EXAMPLES['FORMATS']}."
        )
    unknown = [f for f in formats if f not in DATASET_FORMATS]
    if unknown:
        raise Invalid(
            f"FORMATS has the unknown format '{unknown[0]}'; use {', '.join(DATASET_FORMATS)}."
        )
    result = values["RESULT"]
    if result not in RESULTS:
        raise Invalid(f'RESULT must be "adapter" or "full", not {result!r}.')
    _check_train_function(tree)
    return ScriptSpec(
        description=description.strip(),
        formats=list(dict.fromkeys(formats)),
        result=result,
        parameters=_read_parameters(values["PARAMETERS"]),
    )


class UploadedMethodParams(CommonParams):
    """The common parameters as an uploaded method takes them."""

    single_process_reason: ClassVar[str | None] = (
        "an uploaded method runs its own training loop, in one process"
    )


def params_model(name: str, result: str, parameters: dict[str, dict[str, Any]]):
    """The common parameters plus the script's own, each strictly of its default's type."""
    if result == "adapter":
        adapter = (
            Literal["lora", "qlora"],
            Field(
                "lora",
                description="lora: low-rank adapter; qlora: LoRA on a 4-bit base (CUDA GPU "
                "only). This method makes an adapter.",
            ),
        )
    else:
        adapter = (
            Literal["full"],
            Field("full", description="full: this method trains and saves a whole model."),
        )
    fields: dict[str, Any] = {"adapter": adapter}
    for param, spec in parameters.items():
        kind = PARAM_TYPES[spec["type"]]
        fields[param] = (
            Annotated[kind, Strict()],
            Field(spec["default"], description=spec["description"]),
        )
    return create_model(f"{name}Params", __base__=UploadedMethodParams, **fields)


# -- who may upload code, and whether it runs -------------------------------------------------


def code_upload_refusal(principal: Principal) -> str | None:
    """Why `principal` may not upload or delete code (methods, reward files); None if they may:
    a project's admin who is also the server's operator, on a server that allows code uploads."""
    if not principal.allows("admin"):
        return principal.refusal("admin")
    if not get_settings().allow_code_uploads:
        return (
            "Uploading code is turned off on this server: uploaded training methods and reward "
            "files run as code on the machine that trains. The server's operator can turn it "
            "on with TUNEYARD_ALLOW_CODE_UPLOADS=true."
        )
    if not principal.operator:
        return (
            "Uploading code needs an admin who is also the server's operator: uploaded code "
            "runs with the server's rights. Ask the operator to upload it, or to make you an "
            "operator with `tuneyard users operator NAME`."
        )
    return None


def require_code_uploads(principal: Principal) -> None:
    principal.require("admin")
    reason = code_upload_refusal(principal)
    if reason is not None:
        raise Forbidden(reason)


def require_code_runs(settings: Settings, what: str) -> None:
    """Uploaded code runs only while the server allows code uploads."""
    if not settings.allow_code_uploads:
        raise Forbidden(
            f"{what} is uploaded code, and this server runs no uploaded code "
            "(TUNEYARD_ALLOW_CODE_UPLOADS is off). The server's operator can turn it on."
        )


# -- the service -----------------------------------------------------------------------------


def _builtin_names() -> list[str]:
    return [method.name for method in all_methods()]


def find_method(session: Session, principal: Principal, name: str) -> TrainingMethod | CustomMethod:
    """A built-in method, or one uploaded to the principal's project."""
    if name in _builtin_names():
        return get_method(name)
    row = _script(session, principal.project_id, name)
    if row is None:
        names = sorted([*_builtin_names(), *_custom_names(session, principal)])
        raise Invalid(f"Unknown training method '{name}'; choose one of: {', '.join(names)}.")
    return CustomMethod.of(row)


def custom_method_of(session: Session, training: Training) -> CustomMethod:
    """The uploaded method a training runs (the job looks it up with the training's project)."""
    row = _script(session, training.project_id, training.method)
    if row is None:
        raise Invalid(
            f"The training method '{training.method}' was deleted; upload it again to run "
            "this training."
        )
    return CustomMethod.of(row)


def _script(session: Session, project_id: str, name: str) -> TrainingMethodScript | None:
    return session.scalar(
        select(TrainingMethodScript).where(
            TrainingMethodScript.project_id == project_id, TrainingMethodScript.name == name
        )
    )


def _custom_names(session: Session, principal: Principal) -> list[str]:
    return list(
        session.scalars(
            select(TrainingMethodScript.name).where(
                TrainingMethodScript.project_id == principal.project_id
            )
        )
    )


def list_methods(session: Session, principal: Principal) -> list[TrainingMethod | CustomMethod]:
    """The built-in methods, then the project's uploaded ones, each by name."""
    rows = session.scalars(
        select(TrainingMethodScript)
        .where(TrainingMethodScript.project_id == principal.project_id)
        .order_by(TrainingMethodScript.name)
    )
    return [*all_methods(), *(CustomMethod.of(row) for row in rows)]


def add_method(session: Session, principal: Principal, name: str, source: bytes) -> CustomMethod:
    """Store a method script (an admin who is the operator, with code uploads on: it runs as
    code in training jobs)."""
    require_code_uploads(principal)
    if len(source) > MAX_SCRIPT_BYTES:
        raise TooLarge("A training method script is at most 1 MB of Python.")
    if not NAME_RE.fullmatch(name or ""):
        raise Invalid(
            f"A method name is 1-{NAME_MAX} characters: a lowercase letter, then lowercase "
            "letters, digits, '_' or '-'."
        )
    if name in _builtin_names():
        raise Invalid(f"'{name}' is a built-in training method; give yours another name.")
    spec = read_script(source, f"{name}.py")
    if _script(session, principal.project_id, name) is not None:
        raise Conflict(
            f"A training method named '{name}' already exists. Delete it first with "
            f"`tuneyard train rm-method {name}`, or choose another name."
        )
    script_id = new_id()
    path = Layout().method_script(principal.project_id, script_id)
    row = TrainingMethodScript(
        id=script_id,
        project_id=principal.project_id,
        name=name,
        description=spec.description,
        formats=spec.formats,
        result=spec.result,
        parameters=spec.parameters,
        path=str(path),
        digest=hashlib.sha256(source).hexdigest(),
        created_by=principal.user_id,
    )
    session.add(row)
    session.flush()
    with atomic_file(path, "wb") as handle:
        handle.write(source)
    return CustomMethod.of(row)


def delete_method(session: Session, principal: Principal, name: str) -> None:
    require_code_uploads(principal)
    if name in _builtin_names():
        raise Invalid(f"'{name}' is a built-in training method; only uploaded ones are deleted.")
    row = _script(session, principal.project_id, name)
    if row is None:
        raise NotFound(f"No training method '{name}'. List them with `tuneyard train methods`.")
    jobs.ensure_not_in_use(
        session, UseKey(Resource.TRAINING_METHOD, row.id), f"Training method {name}"
    )
    session.delete(row)
    session.flush()
    delete_on_commit(session, row, Path(row.path))
