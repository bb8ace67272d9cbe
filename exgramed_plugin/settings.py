"""Every switch of the plugin in one typed object, read once, validated, logged once.

A switch has one name in every channel: the lower-case key of ``--model_kwargs`` (``mga_alpha``),
which swift turns into the upper-case environment variable (``MGA_ALPHA``), which is also what a
recipe's ``ENV:`` block sets. :func:`parse_settings` reads those sources with one parser per type;
a bad value names the setting, the value and the allowed ones. Library code receives the
resulting :class:`PluginSettings` (or one of its parts) and never reads the environment itself.

This module imports nothing heavy: the swift side builds the object from swift's arguments
(``swift_glue/run_settings.py``), the CLIs from their own arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

LOSS_TYPE = "exgra_mga"
POOLINGS = ("masked", "padded")
MESSAGE_FLOWS = ("original", "standard")
OBJECTIVES = ("mga", "infonce", "siglip")
PROMPT_STYLES = ("simple", "v0")
RESPONSE_MODES = ("original", "clean", "raw")
DENSE_CONNECTORS = ("none", "sci", "dci", "sti")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# Environment variables of the plugin that are paths rather than switches (read where they are used).
PATH_VARIABLES = ("EXGRAMED_DATA_ROOT", "EXGRAMED_DEMO_DIR", "EXGRAMED_IMAGE_ROOT",
                  # data/hub_benchmarks.py: local copies of the hub benchmarks, embedded-image cache
                  "EXGRAMED_VQA_RAD_HF_DIR", "EXGRAMED_PATHVQA_HF_DIR", "EXGRAMED_SLAKE_HF_DIR",
                  "EXGRAMED_HUB_IMAGE_CACHE",
                  # data/mc_benchmarks.py: local copies of the multiple-choice benchmarks, MMMU's test answers
                  "EXGRAMED_PMC_VQA_DIR", "EXGRAMED_OMNIMEDVQA_DIR", "EXGRAMED_MMMU_DIR", "EXGRAMED_MEDXPERTQA_DIR",
                  "EXGRAMED_MMMU_ANSWERS")
# Prefixes that mark a key as ours: an unknown key with one of them is a typo, refused.
_OUR_PREFIXES = ("MGA_", "EXGRAMED_")


class SettingsError(ValueError):
    """A setting with an unknown name or a value that does not parse / is not allowed."""


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean ({'/'.join(sorted(_TRUE))} or {'/'.join(sorted(_FALSE))})")


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        if value is None or str(value).strip().lower() in {"", "none", "null"}:
            return None
        return parse(value)
    return parse_optional


def _solver_names() -> tuple[str, ...]:
    from .alignment import SOLVERS  # torch; only needed when a solver is named
    return tuple(SOLVERS)


@dataclass(frozen=True)
class _Spec:
    """How one setting is parsed and checked."""

    key: str  # lower-case --model_kwargs key; the environment variable is key.upper()
    attribute: str
    parse: Callable[[Any], Any]
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None

    def value_of(self, raw: Any) -> Any:
        try:
            value = self.parse(raw)
        except (TypeError, ValueError) as error:
            raise SettingsError(f"{self.key.upper()}={raw!r}: {error}") from None
        choices = self.choices() if callable(self.choices) else self.choices
        if choices is not None and value is not None and value not in choices:
            raise SettingsError(f"{self.key.upper()}={raw!r}: expected one of {', '.join(choices)}")
        problem = self.check(value) if self.check is not None and value is not None else None
        if problem:
            raise SettingsError(f"{self.key.upper()}={raw!r}: {problem}")
        return value


def _at_least(bound: float) -> Callable[[Any], str | None]:
    return lambda value: None if value >= bound else f"must be >= {bound}"


@dataclass(frozen=True)
class MGASettings:
    """The multi-graph alignment head (``mga_*`` in config.json, ``MGA_*`` in the environment).

    ``enabled`` is decided per run (``--loss_type exgra_mga`` or ``MGA_ENABLED``); the module is
    built only when it is on and ``alpha > 0``.
    """

    enabled: bool = False
    alpha: float = 1.0
    k: int = 5
    lambda_val: float = 80.0
    gumbel_scale: float = 0.05
    solver: str = "auto"
    solver_search: int = 0  # tabu iterations per node of "auto" above 10 x 10 (0: the step's ~2 ms budget)
    hidden_features: int | None = None
    message_flow: str = "original"
    use_message_passing: bool = True
    fidelity: bool = False
    pooling: str = "masked"
    after_de: bool = True
    global_graph: bool = False
    seed: int = 0
    objective: str = "mga"
    text_packing: bool = True

    @property
    def active(self) -> bool:
        """Whether the run builds and trains the alignment module."""
        return self.enabled and self.alpha > 0

    def config_values(self) -> dict[str, Any]:
        """The ``mga_*`` config fields (as saved in config.json), ``mga_enabled`` = :attr:`active`."""
        values = {f"mga_{name}": getattr(self, name) for name in _MGA_CONFIG_FIELDS}
        values["mga_lambda"] = values.pop("mga_lambda_val")
        values["mga_enabled"] = self.active
        return values

    @classmethod
    def from_config(cls, config: Any) -> "MGASettings":
        """The settings a checkpoint was trained with (its config's ``mga_*`` fields)."""
        values = {}
        for name in _MGA_CONFIG_FIELDS:
            config_name = "mga_lambda" if name == "lambda_val" else f"mga_{name}"
            if hasattr(config, config_name):
                values[name] = getattr(config, config_name)
        return cls(enabled=bool(getattr(config, "mga_enabled", False)), **values)


_MGA_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(MGASettings) if f.name != "enabled")


@dataclass(frozen=True)
class TemplateSettings:
    """Switches of the ``exgra_med`` template (``EXGRAMED_*``).

    ``legacy_tokenization`` None = what the checkpoint says (``mm_legacy_tokenization``).
    """

    prompt_style: str = "simple"
    response_mode: str = "original"
    legacy_tokenization: bool | None = None


@dataclass(frozen=True)
class LoaderSettings:
    """Options for loading published checkpoints (§1.9): a vision tower that is not where the
    checkpoint says, the dense connector and BiomedCLIP's layer count when they cannot be inferred."""

    vision_tower: str | None = None
    dense_connector: str | None = None
    num_l: int | None = None


_SPECS: tuple[_Spec, ...] = (
    _Spec("mga_enabled", "mga.enabled", _optional(parse_bool)),
    _Spec("mga_alpha", "mga.alpha", float, check=_at_least(0.0)),
    _Spec("mga_k", "mga.k", int, check=_at_least(1)),
    _Spec("mga_lambda", "mga.lambda_val", float, check=_at_least(0.0)),
    _Spec("mga_gumbel_scale", "mga.gumbel_scale", float, check=_at_least(0.0)),
    _Spec("mga_solver", "mga.solver", str, choices=_solver_names),
    _Spec("mga_solver_search", "mga.solver_search", int, check=_at_least(0)),
    _Spec("mga_hidden_features", "mga.hidden_features", _optional(int), check=_at_least(1)),
    _Spec("mga_message_flow", "mga.message_flow", str, choices=MESSAGE_FLOWS),
    _Spec("mga_use_message_passing", "mga.use_message_passing", parse_bool),
    _Spec("mga_fidelity", "mga.fidelity", parse_bool),
    _Spec("mga_pooling", "mga.pooling", str, choices=POOLINGS),
    _Spec("mga_after_de", "mga.after_de", parse_bool),
    _Spec("mga_global_graph", "mga.global_graph", parse_bool),
    _Spec("mga_seed", "mga.seed", int),
    _Spec("mga_objective", "mga.objective", str, choices=OBJECTIVES),
    _Spec("mga_text_packing", "mga.text_packing", parse_bool),
    _Spec("exgramed_prompt_style", "template.prompt_style", str, choices=PROMPT_STYLES),
    _Spec("exgramed_response_mode", "template.response_mode", str, choices=RESPONSE_MODES),
    _Spec("exgramed_legacy_tokenization", "template.legacy_tokenization", _optional(parse_bool)),
    _Spec("vision_tower", "loader.vision_tower", _optional(str)),
    _Spec("exgramed_dense_connector", "loader.dense_connector", _optional(str), choices=DENSE_CONNECTORS),
    _Spec("exgramed_num_l", "loader.num_l", _optional(int), check=_at_least(1)),
)
SETTING_KEYS = tuple(spec.key for spec in _SPECS)
_SPEC_BY_KEY = {spec.key: spec for spec in _SPECS}


@dataclass(frozen=True)
class PluginSettings:
    """All switches of one process. ``explicit`` holds the keys some source actually set;
    ``training`` false: a swift infer / export / deploy run, which may build the graph network (to
    load an adapter's) but never reads extended answers."""

    mga: MGASettings = field(default_factory=MGASettings)
    template: TemplateSettings = field(default_factory=TemplateSettings)
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    explicit: frozenset[str] = frozenset()
    training: bool = True

    def replace(self, **values: Any) -> "PluginSettings":
        """A copy with settings changed by key (``mga_k=3``, ``exgramed_prompt_style="v0"``), validated."""
        return _assemble(self, values, source="arguments")

    def describe(self) -> dict[str, Any]:
        """Every setting by key, for the one log line and for saving beside a checkpoint."""
        return {spec.key: _get(self, spec.attribute) for spec in _SPECS}


def _get(settings: PluginSettings, attribute: str) -> Any:
    part, name = attribute.split(".")
    return getattr(getattr(settings, part), name)


def _assemble(base: PluginSettings, values: Mapping[str, Any], source: str) -> PluginSettings:
    parts: dict[str, dict[str, Any]] = {"mga": {}, "template": {}, "loader": {}}
    for key, raw in values.items():
        spec = _SPEC_BY_KEY.get(key)
        if spec is None:
            raise SettingsError(f"unknown setting {key!r} ({source}); known: {', '.join(SETTING_KEYS)}")
        part, name = spec.attribute.split(".")
        parts[part][name] = spec.value_of(raw)
    if parts["mga"].get("enabled", True) is None:
        parts["mga"].pop("enabled")
    mga = dataclasses.replace(base.mga, **parts["mga"])
    if mga.solver_search and mga.solver != "auto":
        raise SettingsError(f"MGA_SOLVER_SEARCH={mga.solver_search} ({source}): the search belongs to "
                            f"MGA_SOLVER=auto, not {mga.solver!r}")
    return PluginSettings(
        mga=mga,
        template=dataclasses.replace(base.template, **parts["template"]),
        loader=dataclasses.replace(base.loader, **parts["loader"]),
        explicit=base.explicit | frozenset(values),
        training=base.training,
    )


def ours_in_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The plugin's settings among environment variables, by lower-case key; unknown ``MGA_*`` /
    ``EXGRAMED_*`` names are refused (a typo would otherwise be ignored)."""
    found: dict[str, str] = {}
    for name, value in environ.items():
        key = name.lower()
        if key in _SPEC_BY_KEY:
            found[key] = value
        elif name.startswith(_OUR_PREFIXES) and name not in PATH_VARIABLES:
            raise SettingsError(f"unknown setting {name} (environment); known: "
                                f"{', '.join(k.upper() for k in SETTING_KEYS)}")
    return found


def parse_settings(environ: Mapping[str, str] | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   loss_type: str | None = None) -> PluginSettings:
    """Settings from the environment, then ``--model_kwargs`` (which win, as swift exports them over
    the environment), with ``enabled`` from ``--loss_type`` unless ``mga_enabled`` says otherwise."""
    from_kwargs: dict[str, Any] = {}
    for key, value in (model_kwargs or {}).items():  # first: swift has exported them to the environment too
        lowered = str(key).lower()
        if lowered in _SPEC_BY_KEY:
            from_kwargs[lowered] = value
        elif lowered.upper().startswith(_OUR_PREFIXES):
            raise SettingsError(f"unknown setting {key!r} (--model_kwargs); known: {', '.join(SETTING_KEYS)}")
    values: dict[str, Any] = {**ours_in_environment(environ or {}), **from_kwargs}
    enabled = _SPEC_BY_KEY["mga_enabled"].value_of(values.pop("mga_enabled", None))
    settings = _assemble(PluginSettings(), values, source="environment / --model_kwargs")
    if enabled is None:
        enabled = loss_type == LOSS_TYPE
    else:
        settings = dataclasses.replace(settings, explicit=settings.explicit | {"mga_enabled"})
    return dataclasses.replace(settings, mga=dataclasses.replace(settings.mga, enabled=enabled))


def with_saved_mga(settings: PluginSettings, saved: MGASettings, source: str) -> PluginSettings:
    """Resume: the checkpoint's saved MGA settings win; an explicit different value is refused."""
    saved_values = saved.config_values()
    saved_values.pop("mga_enabled")
    conflicts = []
    for key, value in saved_values.items():
        current = _get(settings, _SPEC_BY_KEY[key].attribute)
        if key in settings.explicit and current != value:
            conflicts.append(f"{key.upper()}={current!r} (saved: {value!r})")
    if conflicts:
        raise SettingsError(f"resuming from {source}, whose saved MGA settings differ from this run's: "
                            f"{'; '.join(conflicts)}. Drop them to resume with the saved settings.")
    return _assemble(settings, saved_values, source=f"saved in {source}")


def apply_mga_to_config(config: Any, settings: PluginSettings) -> MGASettings:
    """Write the explicitly set ``mga_*`` values onto a model config (the rest keep the checkpoint's
    values) and decide ``mga_enabled`` for this run; returns the effective MGA settings."""
    for key in settings.explicit:
        spec = _SPEC_BY_KEY[key]
        part, name = spec.attribute.split(".")
        if part == "mga" and name != "enabled":
            setattr(config, key, getattr(settings.mga, name))
    config.mga_enabled = bool(settings.mga.enabled and float(config.mga_alpha) > 0)
    return MGASettings.from_config(config)


def mga_settings_of(config: Any) -> MGASettings:
    """The effective MGA settings of this run for a model with ``config``: an ``exgra_med`` config carries
    them (the checkpoint's ``mga_*`` values with this run's explicit ones applied at load,
    :func:`apply_mga_to_config`); the other model types take the run's."""
    if config is not None and hasattr(config, "mga_enabled"):
        return MGASettings.from_config(config)
    return current_settings().mga


_CURRENT: list[PluginSettings] = []
_LOGGED: list[PluginSettings] = []


def use_settings(settings: PluginSettings) -> PluginSettings:
    """Make ``settings`` this process's settings: called at start-up by the swift glue (once per
    swift arguments object) or by a CLI that builds its own."""
    _CURRENT[:] = [settings]
    _log_once(settings)
    return settings


def clear_settings() -> None:
    """Forget the process's settings (between runs of a long-lived process, and in tests)."""
    _CURRENT.clear()


def current_settings() -> PluginSettings:
    """This process's settings. Without a start-up call (a Python API user building a model or a
    template directly, a dataloader worker) they are parsed from the environment as it is now."""
    if _CURRENT:
        return _CURRENT[0]
    settings = parse_settings(os.environ)
    _log_once(settings)
    return settings


def _log_once(settings: PluginSettings) -> None:
    if _LOGGED and _LOGGED[0] == settings:
        return
    _LOGGED[:] = [settings]
    log_settings(settings)


def log_settings(settings: PluginSettings) -> None:
    logger.info("exgramed settings: %s", settings.describe())
