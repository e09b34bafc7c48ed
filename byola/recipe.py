"""Typed pretraining recipes: every section is a dataclass that holds its defaults, rejects unknown keys and wrong
types with the key's dotted path, and is checked with the other sections (model vs frontend, method vs encoder,
optimizer arguments, run length) before any data or model work.

A recipe is a YAML file (``recipes/<name>.yaml``, or a path) with ``modality`` (a key of
:data:`byola.modalities.MODALITIES`, default ``audio``), ``seed``, the modality's sections (audio: ``data``,
``frontend``, ``norm``, ``augment``; image: ``data``, ``augment``) and the shared ``model``, ``method``, ``optim``
and ``train``. ``base: NAME`` inherits another recipe: its sections are merged key by key with this file's. The
resolved recipe (:meth:`Recipe.to_dict`) is complete: every default is written out.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import inspect
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
import yaml
from torch import nn

from byola.engine.methods import METHOD_KEYS, MethodSpec, build_method, get_method, method_spec_overrides
from byola.engine.optim import LARS
from byola.engine.trainer import AMP_MODES, LR_SCHEDULES, Trainer, require_tensorboard
from byola.errors import UsageError
from byola.modalities import MODALITIES, Modality
from byola.models import ENCODERS, build_encoder
from byola.runtime import check_device

__all__ = ["RecipeError", "Recipe", "TrainSection", "NamedSection", "RECIPES_DIR", "OPTIMIZERS", "RESUMABLE",
           "load_recipe", "resolve_config", "load", "parse_section", "resume_changes", "check_corpus_size"]

RECIPES_DIR = Path(str(importlib.resources.files("byola.recipes")))  # the repository's recipes/ folder
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "lars": LARS}
# Sections whose keys are keyword arguments of the encoder, the method and the optimizer: overrides may add keys.
OPEN_SECTIONS = ("model", "method", "optim")
# Values a resumed run may change: they do not change the numbers (or, train.steps / train.epochs, extend the run).
RESUMABLE = ("train.steps", "train.epochs", "train.progress", "train.tensorboard", "train.sync_timing", "train.device",
             "train.checkpoint_every", "train.keep_checkpoints", "train.prefetch_factor", "data.num_workers",
             "data.cache_dir")


class RecipeError(UsageError):
    """A recipe value that cannot work; ``str()`` is one line naming the key."""


class _UnknownKey(RecipeError, KeyError):
    """An override or recipe key that names nothing (a KeyError too, for callers that catch lookups)."""

    __str__ = ValueError.__str__


def _unknown_key(key: str, known: Iterable[str], section: str = "", note: str = "") -> _UnknownKey:
    """The error for ``section.key`` when ``section`` holds only ``known``: one line naming the closest known keys
    (``difflib``), then all of them and ``note``."""
    known = list(known)
    prefix = f"{section}." if section else ""
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""
    return _UnknownKey(f"unknown key {prefix}{key}{hint}", f"known keys: {', '.join(known)}{note}")


def _scalar_kinds(*targets: Callable[..., Any] | None) -> dict[str, type]:
    """``{keyword: bool or float}`` for the keywords of ``targets`` whose default is a bool or a number (an int
    default may take a float value, as torch's ``weight_decay=0``)."""
    kinds = {}
    for target in filter(None, targets):
        for p in inspect.signature(target).parameters.values():
            if isinstance(p.default, (bool, int, float)):
                kinds[p.name] = bool if isinstance(p.default, bool) else float
    return kinds


def _keywords(target: Callable[..., Any] | None, *skip: str) -> list[str] | None:
    """The keyword arguments ``target`` names, except ``skip``; None for no target or one taking any (``**``)."""
    params = inspect.signature(target).parameters.values() if target is not None else ()
    if not params or any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip]


# ------------------------------------------------------------------------------------------------------ sections
def _trainer_default(name: str) -> Any:
    return inspect.signature(Trainer).parameters[name].default


@dataclass(frozen=True)
class TrainSection:
    """The training loop (:class:`byola.engine.trainer.Trainer`; its defaults) and the process's device settings.
    ``steps``, when set, overrides ``epochs``."""

    batch_size: int = field(metadata={"min": 1})
    epochs: int | None = field(default=None, metadata={"min": 1})
    steps: int | None = field(default=None, metadata={"min": 1})
    lr_schedule: Literal[LR_SCHEDULES] = _trainer_default("lr_schedule")
    warmup_steps: int = field(default=_trainer_default("warmup_steps"), metadata={"min": 0})
    min_lr_ratio: float = field(default=_trainer_default("min_lr_ratio"), metadata={"min": 0})
    accum_steps: int = field(default=_trainer_default("accum_steps"), metadata={"min": 1})
    sync_bn: bool = _trainer_default("sync_bn")
    amp: Literal[AMP_MODES] = _trainer_default("amp")
    grad_clip: float | None = field(default=_trainer_default("grad_clip"), metadata={"min": 0})
    checkpoint_every: int = field(default=_trainer_default("checkpoint_every"), metadata={"min": 1})
    keep_checkpoints: int = field(default=_trainer_default("keep_checkpoints"), metadata={"min": 1})
    prefetch_factor: int | None = field(default=_trainer_default("prefetch_factor"), metadata={"min": 1})
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    device: str | None = None
    progress: bool = True
    tensorboard: bool = _trainer_default("tensorboard")
    sync_timing: bool = _trainer_default("sync_timing")

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None:
            raise RecipeError("train: set train.steps or train.epochs")
        if self.min_lr_ratio > 1:
            raise RecipeError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class NamedSection:
    """``model``, ``method`` and ``optim``: a registry name and its keyword arguments (checked with the other
    sections by :func:`load`, where the encoder, method and optimizer are built on the meta device)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


# --------------------------------------------------------------------------------------------------- type checks
def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {plural}"
        return f"a list of {len(args)} {plural}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
            dict: "a mapping"}.get(hint, getattr(hint, "__name__", str(hint)))


def _typed(value: Any, hint: Any, path: str) -> Any:
    """``value`` checked against the type ``hint`` (numbers as their type, lists as tuples where declared); strings
    given for other types (command-line values) are read as YAML first."""
    if value in ("null", "~") and type(None) in typing.get_args(hint):
        return None
    try:
        return _convert(value, hint)
    except (TypeError, ValueError):
        if isinstance(value, str):
            try:
                return _convert(_parse(value), hint)
            except (TypeError, ValueError):
                pass
    raise RecipeError(f"{path} must be {_describe(hint)}, got {value!r}")


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _convert(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError(value)
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(value)
    if hint is type(None):
        if value is None:
            return None
        raise TypeError(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_convert(v, args[0]) for v in value]
        elif len(value) == len(args):
            items = [_convert(v, a) for v, a in zip(value, args)]
        else:
            raise ValueError(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise TypeError(value)
    raise TypeError(f"unsupported type {hint}")


def _parse(text: str) -> Any:
    """A command-line string as YAML, with numbers such as ``1e-4`` (a string for YAML 1.1) read as floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_section(cls: type, data: Any, path: str) -> Any:
    """An instance of the dataclass ``cls`` (a recipe section) from the mapping ``data``: unknown keys, missing
    required keys, wrong types (the field annotations) and values below a field's ``metadata["min"]`` raise
    :class:`RecipeError` naming ``path.key``; ``ValueError`` from the section's ``__post_init__`` is wrapped too."""
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _unknown_key(unknown[0], fields, path)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{key} is required")
            continue
        value = _typed(data[name], hints[name], key)
        low = f.metadata.get("min")
        if low is not None and value is not None and value < low:
            raise RecipeError(f"{key} must be >= {low}, got {value}")
        values[name] = value
    try:
        return cls(**values)
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{path}: {err}") from None


def section_dict(section: Any) -> dict[str, Any]:
    """A section as plain YAML/JSON types (tuples as lists)."""
    if isinstance(section, NamedSection):
        return section.to_dict()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}


def _named(data: Any, path: str, default_name: str | None = None) -> NamedSection:
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must be a mapping, got {data!r}")
    params = dict(data)
    name = params.pop("name", default_name)
    if not isinstance(name, str):
        raise RecipeError(f"{path}.name is required (a string)")
    return NamedSection(name, params)


# -------------------------------------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """A resolved, checked recipe. ``inputs`` holds the modality's sections by name (e.g. ``inputs["data"]``)."""

    modality: str
    seed: int
    inputs: dict[str, Any]
    model: NamedSection
    method: NamedSection
    optim: NamedSection
    train: TrainSection

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> Recipe:
        """Parse and type-check a complete or partial recipe mapping (defaults fill what it leaves out)."""
        if not isinstance(cfg, dict):
            raise RecipeError(f"a recipe is a mapping, got {type(cfg).__name__}")
        name = cfg.get("modality", "audio")
        if name not in MODALITIES:
            raise RecipeError(f"modality must be one of {', '.join(MODALITIES)}, got {name!r}")
        modality = MODALITIES[name]
        known = ("modality", "seed", *modality.sections, "model", "method", "optim", "train")
        unknown = [k for k in cfg if k not in known]
        if unknown:
            raise _unknown_key(unknown[0], known)
        for section in ("model", "method", "train"):
            if section not in cfg:
                raise RecipeError(f"the recipe has no {section!r} section")
        return cls(modality=name, seed=_typed(cfg.get("seed", 0), int, "seed"),
                   inputs={k: parse_section(t, cfg.get(k, {}), k) for k, t in modality.sections.items()},
                   model=_named(cfg["model"], "model"), method=_named(cfg["method"], "method"),
                   optim=_named(cfg.get("optim", {}), "optim", default_name="adam"),
                   train=parse_section(TrainSection, cfg["train"], "train"))

    def to_dict(self) -> dict[str, Any]:
        """The complete recipe (every default written out), as written to ``config.yaml`` and into checkpoints."""
        return {"modality": self.modality, "seed": self.seed,
                **{k: section_dict(v) for k, v in self.inputs.items()},
                **{k: section_dict(getattr(self, k)) for k in ("model", "method", "optim", "train")}}

    @property
    def modality_entry(self) -> Modality:
        """The recipe's modality (``byola.modalities.MODALITIES[modality]``): its data, views and export."""
        return MODALITIES[self.modality]

    def method_spec(self) -> MethodSpec:
        """The method's spec with the recipe's spec-field overrides (what :func:`build_method` resolves)."""
        return get_method(self.method.name, **method_spec_overrides(dict(self.method.params)))

    def encoder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`byola.models.build_encoder` (without ``name``): the method's backbone options,
        the modality's input settings (e.g. ``n_mels`` from the front end) and ``model``'s own values."""
        backbone = self.method_spec().backbone_options()
        clash = sorted(set(backbone) & set(self.model.params))
        if clash:
            raise RecipeError(f"model.{clash[0]} is set by the method {self.method.name!r} "
                              f"(change it as method.{clash[0]})")
        return {**self.modality_entry.encoder_inputs(self.inputs), **backbone, **self.model.params}

    def build_engine(self) -> tuple[nn.Module, nn.Module]:
        """``(encoder, method)`` built from the recipe (on the current default device)."""
        encoder = build_encoder(self.model.name, **self.encoder_kwargs())
        return encoder, build_method(self.method.name, encoder, encoder.embed_dim, **self.method.params)

    def optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The recipe's optimizer (``optim.name`` with ``optim``'s other keys) over ``params`` (parameters or parameter
        groups); the Trainer's optimizer factory."""
        return OPTIMIZERS[self.optim.name](params, **self.optim.params)

    def open_keys(self) -> dict[str, list[str] | None]:
        """The keys ``model``, ``method`` and ``optim`` may hold besides ``name``: the keyword arguments of the encoder
        class and :func:`build_encoder`, of :func:`build_method` and of the optimizer class (None: not known, an
        unknown name or a target taking ``**kwargs``)."""
        encoder = _keywords(ENCODERS.get(self.model.name))
        build_options = [p for p in inspect.signature(build_encoder).parameters if p not in ("name", "params")]
        return {"model": None if encoder is None else encoder + build_options,
                "method": sorted(METHOD_KEYS),
                "optim": _keywords(OPTIMIZERS.get(self.optim.name), "params")}

    def check(self) -> None:
        """Cross-section checks, before any data or model work: the keys of ``model``, ``method`` and ``optim``
        (:meth:`open_keys`), the modality's own (e.g. ``model.n_mels`` vs ``frontend.n_mels``), the method and encoder
        built on the meta device (nothing allocated), the optimizer built on one parameter. Raises
        :class:`RecipeError`."""
        for section, known in self.open_keys().items():
            unknown = sorted(set(getattr(self, section).params) - set(known)) if known is not None else []
            if unknown:
                raise _unknown_key(unknown[0], known, section)
        # the type of a value the builders would only compare or multiply (optim.lr='abc'), named by its key
        for section, targets in (("model", (ENCODERS.get(self.model.name), build_encoder)),
                                 ("optim", (OPTIMIZERS.get(self.optim.name),))):
            kinds = _scalar_kinds(*targets)
            for key, value in getattr(self, section).params.items():
                if key in kinds and value is not None:
                    _typed(value, kinds[key], f"{section}.{key}")
        try:
            self.modality_entry.check(self.inputs, self.model.params)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        try:
            self.method_spec()
        except ValueError as err:
            raise RecipeError(f"method: {err}") from None
        try:
            with torch.device("meta"):
                encoder = build_encoder(self.model.name, **self.encoder_kwargs())
        except RecipeError:
            raise
        except (TypeError, ValueError) as err:
            raise RecipeError(f"model {self.model.to_dict()}: {err}") from None
        try:
            with torch.device("meta"):
                build_method(self.method.name, encoder, encoder.embed_dim, **self.method.params)
        except (TypeError, ValueError, RuntimeError) as err:
            raise RecipeError(f"method {self.method.to_dict()}: {err}") from None
        if self.optim.name not in OPTIMIZERS:
            raise RecipeError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.optim.name!r}")
        try:
            self.optimizer([nn.Parameter(torch.zeros(1))])
        except (TypeError, ValueError) as err:
            raise RecipeError(f"optim {self.optim.to_dict()}: {err}") from None
        if self.train.device is not None:
            check_device(self.train.device, option="--train.device")
        if self.train.tensorboard:  # a missing `tensorboard` extra is refused before any data work
            try:
                require_tensorboard()
            except UsageError as err:
                raise RecipeError(f"train.tensorboard: {err}") from None


def check_corpus_size(recipe: Recipe, items: int, world_size: int) -> int:
    """``train.batch_size`` x processes must fit the corpus (one batch at least; the epoch's tail is dropped).
    Returns the run's optimizer steps (``train.steps``, or those ``train.epochs`` make of this corpus)."""
    needed = recipe.train.batch_size * world_size
    if items < needed:
        raise RecipeError(f"train.batch_size {recipe.train.batch_size} x {world_size} process(es) needs at least "
                          f"{needed} items, the data has {items}: lower train.batch_size")
    if recipe.train.steps is not None:
        return recipe.train.steps
    steps = recipe.train.epochs * (items // needed) // recipe.train.accum_steps
    if steps < 1:
        raise RecipeError(f"train.epochs {recipe.train.epochs} of {items // needed} batches with train.accum_steps "
                          f"{recipe.train.accum_steps} make no optimizer step")
    return steps


# ------------------------------------------------------------------------------------------------- loading + overrides
def load_recipe(recipe: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a dict, with its ``base`` (a name in :data:`RECIPES_DIR` or a path, relative to the file)
    merged in: sections key by key, this file's values win. ``recipe`` is a YAML path or a name in
    :data:`RECIPES_DIR`."""
    path = Path(recipe)
    if not path.exists():
        named = RECIPES_DIR / f"{recipe}.yaml"
        if not named.exists():
            known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
            raise FileNotFoundError(f"recipe {recipe!r} is neither a file nor one of {known}")
        path = named
    path = path.resolve()
    if path in _seen:
        raise RecipeError(f"recipe {path} inherits from itself (base chain {' -> '.join(map(str, _seen))})")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise RecipeError(f"{path}: not valid YAML ({where}{getattr(err, 'problem', None) or err})") from None
    if not isinstance(cfg, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    base_path = path.parent / f"{base}.yaml" if (path.parent / f"{base}.yaml").exists() else base
    merged = load_recipe(base_path, _seen + (path,))
    for key, value in cfg.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _leaves(cfg: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in cfg.items():
        out.extend(_leaves(v, prefix + (k,)) if isinstance(v, dict) and v else [prefix + (k,)])
    return out


def _key_path(cfg: dict[str, Any], key: str) -> tuple[str, ...]:
    if "." in key or "__" in key:
        path = tuple(key.replace("__", ".").split("."))
        node = cfg
        for i, part in enumerate(path):
            if not isinstance(node, dict):
                raise _UnknownKey(f"override {key!r}: {'.'.join(path[:i])} is not a section")
            if part not in node and not (i == len(path) - 1 and i == 1 and path[0] in OPEN_SECTIONS):
                raise _unknown_key(part, node, ".".join(path[:i]), f" (an override adds new keys only directly "
                                                                   f"under {', '.join(OPEN_SECTIONS)})")
            node = node.get(part, {})
        return path
    if key in cfg:
        return (key,)
    matches = [p for p in _leaves(cfg) if p[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        leaves = _leaves(cfg)
        names = difflib.get_close_matches(key, sorted({p[-1] for p in leaves}), n=3)
        close = [".".join(p) for name in names for p in leaves if p[-1] == name]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise _UnknownKey(f"override {key!r} matches no recipe value{hint}", "use a dotted key such as 'optim.lr'")
    raise _UnknownKey(f"override {key!r} is ambiguous: {', '.join('.'.join(m) for m in matches)}")


def resolve_config(recipe: str | os.PathLike | dict[str, Any], overrides: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The complete recipe (:meth:`Recipe.to_dict`) with ``overrides`` applied and type-checked.

    Keys are dotted paths (``"optim.lr"``; ``"optim__lr"`` is the same, for Python keyword arguments) or flat leaf
    names when unique in the recipe (``lr``, ``epochs``, ``batch_size``; an ambiguous name such as ``name`` raises
    and lists the dotted candidates). A string given for a non-string value is read as YAML (``"1e-4"``,
    ``"[1.0, 1.5]"``, ``"null"``). New keys are accepted only directly under ``model``, ``method`` and ``optim``
    (keyword arguments of the encoder, the method and the optimizer). Two keys naming one value raise.
    """
    raw = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    cfg = Recipe.from_dict(raw).to_dict()
    given: dict[tuple[str, ...], str] = {}
    for key, value in (overrides or {}).items():
        path = _key_path(cfg, key)
        if path in given:  # e.g. train.batch_size and batch_size: one would silently win
            raise RecipeError(f"{'.'.join(path)} given twice (as {given[path]} and {key})", "give it once")
        given[path] = key
        node = cfg
        for part in path[:-1]:
            node = node[part]
        old = node.get(path[-1])
        if isinstance(value, str) and not isinstance(old, str) and path[0] in OPEN_SECTIONS:
            value = _parse(value)  # typed sections convert their strings themselves
        if isinstance(old, dict) and isinstance(value, dict):
            value = {**old, **value}
        node[path[-1]] = value
    return Recipe.from_dict(cfg).to_dict()


def load(recipe: str | os.PathLike | dict[str, Any], overrides: dict[str, Any] | None = None) -> Recipe:
    """The checked :class:`Recipe` of ``recipe`` with ``overrides`` (see :func:`resolve_config`): every section
    typed and every cross-section check of :meth:`Recipe.check` done. Raises :class:`RecipeError` (or
    ``FileNotFoundError`` for an unknown recipe name)."""
    parsed = Recipe.from_dict(resolve_config(recipe, overrides))
    parsed.check()
    return parsed


def resume_changes(before: dict[str, Any], after: Recipe) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (then, now)}`` between a run's saved recipe and the one it is resumed with. A change outside
    :data:`RESUMABLE` raises :class:`RecipeError` naming it: training state (optimizer, schedule, statistics)
    carries the old values, so the run could not honour it and its records would lie."""
    then = Recipe.from_dict(before).to_dict()
    now = after.to_dict()
    changed = {}
    for path in sorted(set(_leaves(then)) | set(_leaves(now))):
        a, b = _get(then, path), _get(now, path)
        if a != b:
            changed[".".join(path)] = (a, b)
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        shown = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise RecipeError(f"cannot resume with changed settings: {shown}; a resumed run keeps its recipe (it may "
                          f"change only {', '.join(RESUMABLE)}): start a new run with another --out")
    return changed


def _get(cfg: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = cfg
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
