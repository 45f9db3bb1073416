"""``tune.space``: config keys mapped to distributions, checked before anything starts.

A space is written against the task's config (``train.optimizer.lr: {loguniform: [1e-4, 1e-2]}``),
so its keys are checked against the resolved config (every default spelled out): a key the
task does not have, a distribution with bad bounds, or a value the config would refuse is one
line naming the key, before Ray starts. The Ray Tune domains are built only at the end.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, get_args

from pydantic import BaseModel

from ..errors import ConfigError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
# Set by visionkit tune itself, the same for every trial.
FIXED = {
    "task": "every trial trains the same task",
    "tune": "the search cannot search itself",
    "output": "each trial's run directory is placed under the tune directory",
    "ray": "every trial gets the same workers and resources (set ray.* outside tune.space)",
}


@dataclass(frozen=True)
class Param:
    key: str  # a dotted config key
    kind: str  # one of DISTRIBUTIONS
    args: tuple  # choice/grid: the values; the others: (low, high)

    def candidates(self) -> list[Any]:
        """Values the config must accept: every choice, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        low, high = self.args
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def interior(self) -> float:
        """A fractional value inside a ``uniform``/``loguniform`` range, as its samples are: the
        middle (geometric for loguniform), moved off a whole number."""
        low, high = self.args
        value = math.sqrt(low * high) if self.kind == "loguniform" else (low + high) / 2
        if float(value).is_integer():
            value += min(0.25, (high - value) / 2)
        return value

    def domain(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](*self.args)

    def describe(self) -> str:
        return f"{self.key} {self.kind}{list(self.args)}"


# YAML 1.2 floats that PyYAML (YAML 1.1) reads as strings: 1e-4, 3E+2 (it wants 1.0e-4).
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml12(value: Any) -> Any:
    """``{loguniform: [1e-4, 1e-2]}`` as written: numbers, not the strings PyYAML makes of them."""
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()) else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution, as {{{'|'.join(DISTRIBUTIONS)}: [...]}} "
                          f"(e.g. {{loguniform: [1e-4, 1e-2]}}), got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown distribution {kind!r}{hint}; allowed: {', '.join(DISTRIBUTIONS)}")
    where = f"{where}.{kind}"
    if not isinstance(args, list):
        raise ConfigError(f"{where}: expected a list, got {args!r}")
    args = [_yaml12(a) for a in args]
    if kind in ("choice", "grid"):
        if not args:
            raise ConfigError(f"{where}: empty; give at least one value")
        return Param(key, kind, tuple(args))
    if len(args) != 2 or not all(_number(a) for a in args):
        raise ConfigError(f"{where}: expected [low, high], two numbers, got {args!r}")
    low, high = args
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: expected [low, high], two integers (high excluded), got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: bounds must be > 0 (it samples log(value)), got {args!r}")
    if not low < high:
        raise ConfigError(f"{where}: expected low < high, got {args!r}")
    return Param(key, kind, (low, high))


def section_model(annotation: Any) -> Optional[type[BaseModel]]:
    """The model of a field that holds a section (``Optional[EMAConfig]``: EMAConfig), else None."""
    inner = [a for a in get_args(annotation) if a is not type(None)]
    model = inner[0] if len(inner) == 1 else annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _model_keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(f"{prefix}{name}")
        sub = section_model(field.annotation)
        if sub is not None:
            keys += _model_keys(sub, f"{prefix}{name}.")
    return keys


def flat_keys(config: dict[str, Any], sections: Optional[dict[str, type[BaseModel]]] = None,
              prefix: str = "") -> list[str]:
    """Every dotted key of a config, sections included. ``sections``: the model of each top-level
    section, so that the keys of a section left out (``train.early_stopping: null``) count too."""
    keys = []
    for name, value in config.items():
        key = f"{prefix}{name}"
        keys.append(key)
        model = (sections or {}).get(name)
        if isinstance(value, dict):
            keys += flat_keys(value, model and {n: section_model(f.annotation) for n, f in model.model_fields.items()},
                              f"{key}.")
        elif value is None and model is not None:
            keys += _model_keys(model, f"{key}.")
    return keys


def set_key(config: dict[str, Any], key: str, value: Any) -> None:
    """Sets a dotted key; a section that is null is switched on (validation adds its defaults)."""
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_space(space: Any, config: dict[str, Any], validate: Callable[[dict[str, Any]], None],
                asha: bool = False, optuna: bool = False,
                sections: Optional[dict[str, type[BaseModel]]] = None) -> list[Param]:
    """Checks ``tune.space`` against ``config`` (the resolved config a trial starts from).

    ``validate`` raises :class:`ConfigError` for a config the task refuses; it is called with
    every candidate value in place (every choice, both ends of a range, and a fractional value
    inside a float range), so ``train.batch_size: {choice: [0, 8]}`` or ``{uniform: [8, 64]}``
    fails here, not in every trial an hour later. ``sections``: see :func:`flat_keys`."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.space: empty; map at least one config key to a distribution, "
                          "e.g. train.optimizer.lr: {loguniform: [1e-4, 1e-2]}")
    known = flat_keys(config, sections)
    params = []
    for key, spec in space.items():
        where = f"tune.space.{key}"
        top = str(key).split(".")[0]
        if top in FIXED:
            raise ConfigError(f"{where}: {top}.* cannot be searched: {FIXED[top]}")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: not a key of the {config.get('task')} config{hint}")
        if asha and key == "train.epochs":
            raise ConfigError(f"{where}: with scheduler asha every trial runs up to the same train.epochs "
                              "(ASHA's max_t); search train.epochs with scheduler fifo")
        param = _param(key, spec, where)
        if optuna and param.kind == "grid":
            raise ConfigError(f"{where}: grid is not supported by search optuna (Optuna samples); use choice")
        if optuna and param.kind == "choice" and not all(v is None or isinstance(v, (bool, int, float, str))
                                                         for v in param.args):
            raise ConfigError(f"{where}: search optuna can only choose between single values "
                              f"(numbers, strings, booleans), got {list(param.args)!r}")
        for value in param.candidates():
            problem = _refusal(config, key, value, validate)
            off = _null_section(config, key)
            if problem and off and "required key is missing" in problem:
                raise ConfigError(f"{where}: switches on {off} (null in the config), which then lacks a key: {problem}; "
                                  "set it in the config")
            if problem:
                raise ConfigError(f"{where}: the value {value!r} does not fit the config: {problem}")
        if param.kind in ("uniform", "loguniform"):
            inside = param.interior()
            problem = _refusal(config, key, inside, validate)
            if problem and not _refusal(config, key, round(inside), validate):
                low, high = param.args
                raise ConfigError(f"{where}.{param.kind}: samples fractional values (e.g. {inside:g}) and {key} takes "
                                  f"whole numbers: use {{randint: [{math.ceil(low)}, {math.floor(high) + 1}]}} "
                                  "(high excluded)")
            if problem:
                raise ConfigError(f"{where}: the value {inside!r} does not fit the config: {problem}")
        params.append(param)
    return params


def _null_section(config: dict[str, Any], key: str) -> Optional[str]:
    """The section above ``key`` that is null in ``config`` (``train.early_stopping``), if any."""
    node, parts = config, key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.get(part)
        if node is None:
            return ".".join(parts[:i + 1])
    return None


def _refusal(config: dict[str, Any], key: str, value: Any, validate: Callable[[dict[str, Any]], None]) -> str:
    """Why the task refuses ``config`` with ``key`` set to ``value`` ('' when it does not)."""
    trial = copy.deepcopy(config)
    set_key(trial, key, value)
    try:
        validate(trial)
    except ConfigError as exc:
        return str(exc)
    return ""


def trial_config(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``config`` with a trial's sampled ``values`` (dotted keys) in place."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        set_key(out, key, value)
    return out


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def check_optuna_installed() -> Optional[str]:
    """None when Optuna can be imported, else the one-line reason."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        return ("tune.search: optuna needs the optuna package, which is not installed: "
                "pip install 'visionkit[tune-optuna]' (or set tune.search: random)")
    return None
