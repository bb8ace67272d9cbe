"""`exgramed doctor`: is this machine ready to run the plugin, and if not, what to do about it.

Why: the first problems on a new machine come before any training (a missing ``flash-attn``, a
deepspeed built for another CUDA toolkit, ``qwen_vl_utils`` absent, a data root without the
expected files, no hub access) and surface as tracebacks deep inside swift. Each check here is a
small function returning a :class:`Check` with a fix; :func:`render` prints them as one table.

The supported version ranges are read from this package's installed metadata (pyproject.toml's
dependencies), not repeated here. Only packages needed for CPU use fail the run (exit status 1);
GPU extras, optional extras, data and hub access are warnings. Nothing blocks for long: fragile
imports (deepspeed, flash-attn) run in a subprocess with a timeout, and the hub probe is bounded
to a few seconds and skipped entirely with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Literal

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from ..common.jsonio import print_summary
from .hub import hub_is_reachable

Status = Literal["ok", "warn", "fail"]
Importer = Callable[[str], Any]  # imports a module by name, raising on failure
Probe = Callable[[float], bool]  # True when the hub endpoint answers within the timeout

DISTRIBUTION = "exgramed-plugin"
HUB_TIMEOUT_S = 3.0  # the whole hub probe, DNS included
ISOLATED_IMPORT_TIMEOUT_S = 120.0
_ISOLATED_MODULES = frozenset({"deepspeed", "flash_attn"})  # CUDA extensions: may hang or abort the process
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of HF_HUB_OFFLINE
_ERROR_MARK = "EXGRAMED_IMPORT_ERROR: "
_CHILD_IMPORT = (
    "import importlib, sys\n"
    "try:\n"
    "    importlib.import_module(sys.argv[1])\n"
    "except BaseException as error:\n"
    f"    print({_ERROR_MARK!r} + (f'{{type(error).__name__}}: {{error}}'.splitlines() or [''])[0])\n"
    "    sys.exit(1)\n"
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table; ``fix`` says what to do when ``status`` is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Package:
    """A distribution the doctor checks: its import name, whether CPU use needs it, what it is for."""

    dist: str
    module: str
    required: bool
    purpose: str = ""
    install_flags: str = ""  # extra words for the pip fix


PACKAGES: tuple[Package, ...] = (
    Package("ms-swift", "swift", True),
    Package("torch", "torch", True),
    Package("transformers", "transformers", True),
    Package("peft", "peft", True),
    Package("deepspeed", "deepspeed", False, "GPU extra: --deepspeed zero2/zero3"),
    Package("flash-attn", "flash_attn", False, "GPU extra: --attn_impl flash_attn", "--no-build-isolation"),
)
EXTRAS: tuple[Package, ...] = (
    Package("qwen-vl-utils", "qwen_vl_utils", False, "swift's Qwen-VL models and templates"),
    Package("open-clip-torch", "open_clip", False, "BiomedCLIP vision tower of the published checkpoints"),
    Package("gradio", "gradio", False, "exgramed webui"),
    Package("easy-vqa", "easy_vqa", False, "exgramed experiment"),
)
# What the plugin registers, by the names users pass to swift.
REGISTRY_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("model type", "swift.model:MODEL_MAPPING", "exgra_med"),
    ("template", "swift.template:TEMPLATE_MAPPING", "exgra_med"),
    ("loss", "swift.loss:loss_map", "exgra_mga"),
    ("metric", "swift.metrics:eval_metrics_map", "exgra_vqa"),
)


class ChildImportError(ImportError):
    """An import that failed in a child interpreter; the message is the child's ``Type: first line``."""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    if isinstance(error, ChildImportError):
        return lines[0] if lines else "import failed"
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def import_in_subprocess(module: str, timeout: float = ISOLATED_IMPORT_TIMEOUT_S) -> None:
    """Import ``module`` in a fresh interpreter; raises :class:`ChildImportError` with its error line."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD_IMPORT, module], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ChildImportError(f"import {module} did not finish within {timeout:.0f} s") from None
    if done.returncode == 0:
        return
    marked = [line[len(_ERROR_MARK):] for line in done.stdout.splitlines() if line.startswith(_ERROR_MARK)]
    stderr = done.stderr.strip().splitlines()
    raise ChildImportError(marked[-1] if marked else stderr[-1] if stderr else f"exit status {done.returncode}")


def default_importer(module: str) -> Any:
    """In-process import, except CUDA extensions, which are imported in a subprocess with a timeout."""
    if module in _ISOLATED_MODULES:
        return import_in_subprocess(module)
    return importlib.import_module(module)


def dependency_ranges(requires: Iterable[str]) -> dict[str, SpecifierSet]:
    """Supported range per (canonical) distribution name, over all of its requirement lines."""
    ranges: dict[str, SpecifierSet] = {}
    for line in requires:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        ranges[name] = ranges.get(name, SpecifierSet()) & requirement.specifier
    return ranges


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip(package: Package, specifier: SpecifierSet, reinstall: bool = False) -> str:
    words = ["pip install", "--force-reinstall" if reinstall else "", package.install_flags,
             f"'{package.dist}{specifier}'" if str(specifier) else package.dist]
    return " ".join(word for word in words if word)


def check_plugin_metadata() -> tuple[Check, dict[str, SpecifierSet], str | None]:
    """The plugin's own installation, the dependency ranges and the Python range it declares."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return Check(DISTRIBUTION, "fail", "not installed: supported version ranges unknown",
                     "pip install -e . (in the checkout)"), {}, None
    ranges = dependency_ranges(distribution.requires or [])
    check = Check(DISTRIBUTION, "ok", f"{distribution.version}, {len(ranges)} declared dependencies")
    return check, ranges, distribution.metadata["Requires-Python"]


def check_python(version: Sequence[int], requires_python: str | None) -> Check:
    text = ".".join(str(part) for part in version[:3])
    specifier = SpecifierSet(requires_python or "")
    if specifier.contains(text, prereleases=True):
        return Check("python", "ok", f"{text} ({platform.python_implementation()}; supported {specifier or 'any'})")
    return Check("python", "fail", f"{text} is outside the supported {specifier}",
                 f"use a Python {specifier} interpreter for the virtual environment")


def check_package(package: Package, specifier: SpecifierSet, version: str | None, importer: Importer) -> Check:
    """Installed, in the supported range, and importable; a missing required package fails."""
    bad: Status = "fail" if package.required else "warn"
    purpose = f" ({package.purpose})" if package.purpose else ""
    supported = f"supported {specifier}" if str(specifier) else "any version"
    if version is None:
        return Check(package.dist, bad, f"not installed{purpose}", _pip(package, specifier))
    if not specifier.contains(version, prereleases=True):
        return Check(package.dist, bad, f"{version} is outside the {supported}{purpose}",
                     _pip(package, specifier, reinstall=True))
    try:
        importer(package.module)
    except Exception as error:  # an import may fail with anything (CUDA, ABI, missing symbols)
        fix = _pip(package, specifier, reinstall=True)
        if package.module in _ISOLATED_MODULES:
            fix += f", built for the CUDA toolkit of torch ({_torch_cuda() or 'CPU build'}; check CUDA_HOME)"
        return Check(package.dist, bad, f"{version} installed but `import {package.module}` fails: "
                                        f"{_first_line(error)}", fix)
    return Check(package.dist, "ok", f"{version} ({supported}), imports")


def _torch_cuda() -> str | None:
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "version", None), "cuda", None)


def check_gpu(torch: ModuleType | None) -> Check:
    """CUDA build and visible GPUs; none is fine for CPU use."""
    if torch is None:
        return Check("CUDA / GPU", "warn", "unknown: torch does not import", "fix the torch line above")
    cuda = torch.version.cuda
    if not torch.cuda.is_available():
        build = f"torch built for CUDA {cuda}, no GPU visible" if cuda else "CPU build of torch"
        return Check("CUDA / GPU", "ok", f"none ({build}; CPU use only)")
    devices = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        devices.append(f"{properties.name} ({properties.total_memory / 2**30:.1f} GiB)")
    return Check("CUDA / GPU", "ok", f"CUDA {cuda}, {len(devices)} GPU(s): {', '.join(devices)}")


def check_extra(package: Package, specifier: SpecifierSet, present: bool) -> Check:
    if present:
        version = _installed_version(package.dist)
        return Check(package.module, "ok", f"present{f' ({version})' if version else ''}: {package.purpose}")
    return Check(package.module, "warn", f"absent: needed for {package.purpose}", _pip(package, specifier))


def _name_prefix(names: list[str]) -> str:
    """``vqa_rad_train, vqa_rad_val`` -> ``vqa_rad_`` (the common prefix, up to an underscore)."""
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    return prefix[:prefix.rfind("_") + 1]


def check_datasets(environ: Mapping[str, str]) -> list[Check]:
    """Per root (data root, demo data): which registered dataset files exist, grouped by benchmark."""
    try:
        from ..swift_glue.datasets import DATA_ROOT_ENV, DEMO_DIR_ENV, registered_datasets
    except Exception as error:  # swift missing or broken: reported by the package checks
        return [Check("datasets", "warn", f"cannot list the registered datasets: {_first_line(error)}",
                      "fix the package lines above")]
    check_names = {DATA_ROOT_ENV: "data root", DEMO_DIR_ENV: "demo data"}
    by_root: dict[str, list[Any]] = {}
    for meta in registered_datasets():
        by_root.setdefault(meta.root_env, []).append(meta)
    checks = []
    for root_env, metas in by_root.items():
        root = Path(environ.get(root_env) or metas[0].default_root).expanduser()
        groups: dict[str, list[Any]] = {}
        for meta in metas:  # by benchmark folder
            groups.setdefault(PurePosixPath(meta.relative_path).parent.as_posix(), []).append(meta)
        lines, any_missing = [], False
        for folder, members in groups.items():
            prefix = _name_prefix([meta.dataset_name for meta in members])
            present, missing = [], []
            for meta in members:
                try:
                    meta.resolve_path(environ)
                    present.append(meta.dataset_name[len(prefix):])
                except FileNotFoundError:
                    missing.append(meta.dataset_name[len(prefix):])
            any_missing = any_missing or bool(missing)
            said = [f"{', '.join(present)} present"] if present else []
            said += [f"{', '.join(missing)} missing"] if missing else []
            lines.append(f"{folder if folder != '.' else prefix.rstrip('_')}: {'; '.join(said)}")
        source = f"${root_env}" if environ.get(root_env) else f"default, ${root_env} unset"
        lines.insert(0, f"{root} ({source}{'' if root.is_dir() else ', does not exist'})")
        if root_env == DEMO_DIR_ENV:
            fix = f"exgramed make-demo-data {root}"
        else:
            fix = (f"exgramed download data --data-root {root} (or set {root_env} to the folder holding "
                   "VQA-RAD/, SLAKE/, PATH-VQA/, llava_med/)")
        checks.append(Check(check_names.get(root_env, root_env), "warn" if any_missing else "ok",
                            "\n".join(lines), fix if any_missing else ""))
    return checks


def is_offline(environ: Mapping[str, str]) -> bool:
    return environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _answer_within(probe: Probe, seconds: float) -> bool | None:
    """``probe``'s answer, or None when it has none within ``seconds`` (a DNS lookup ignores socket timeouts)."""
    answers: list[bool] = []

    def ask() -> None:
        try:
            answers.append(bool(probe(seconds)))
        except Exception:
            answers.append(False)

    thread = threading.Thread(target=ask, name="exgramed-doctor-hub-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    return answers[0] if answers else None


def check_hub(environ: Mapping[str, str], probe: Probe = hub_is_reachable) -> Check:
    """Hub endpoint and cache; with ``HF_HUB_OFFLINE=1`` nothing is connected to."""
    from huggingface_hub import constants
    cache = Path(constants.HF_HUB_CACHE)
    where = f"cache {cache}{'' if cache.is_dir() else ' (not created yet)'}"
    if is_offline(environ):
        return Check("hub", "ok", f"offline (HF_HUB_OFFLINE=1): local cache only; {where}")
    answer = _answer_within(probe, HUB_TIMEOUT_S)
    if answer:
        return Check("hub", "ok", f"{constants.ENDPOINT} reachable; {where}")
    why = "did not answer" if answer is False else f"no answer within {HUB_TIMEOUT_S:.0f} s"
    return Check("hub", "warn", f"{constants.ENDPOINT} {why}; {where}",
                 "check the network / HTTPS_PROXY / HF_ENDPOINT, or set HF_HUB_OFFLINE=1 and use the cache "
                 "(exgramed download --help says how to place files by hand)")


def check_registration(importer: Importer) -> Check:
    """``register.py`` imports and swift's registries hold the plugin's names."""
    try:
        importer("exgramed_plugin.register")
        missing = []
        for what, location, name in REGISTRY_ENTRIES:
            module_name, attribute = location.split(":")
            if name not in getattr(importlib.import_module(module_name), attribute):
                missing.append(f"{what} {name!r} not in {module_name}.{attribute}")
    except Exception as error:
        return Check("register.py", "fail", f"import fails: {_first_line(error)}",
                     "python -c 'import exgramed_plugin.register' shows the traceback; fix the package lines above")
    if missing:
        return Check("register.py", "fail", "; ".join(missing),
                     "the installed ms-swift does not match the plugin: install the range on the ms-swift line")
    names = ", ".join(f"{what} {name}" for what, _, name in REGISTRY_ENTRIES)
    return Check("register.py", "ok", f"imports; registered: {names}")


def run_checks(environ: Mapping[str, str] | None = None, importer: Importer = default_importer,
               probe: Probe = hub_is_reachable) -> list[Check]:
    """Every check, in table order; ``environ``, ``importer`` and ``probe`` are injectable for tests."""
    environ = os.environ if environ is None else environ
    plugin, ranges, requires_python = check_plugin_metadata()
    checks = [check_python(sys.version_info, requires_python), plugin]
    for package in PACKAGES:
        checks.append(check_package(package, ranges.get(canonicalize_name(package.dist), SpecifierSet()),
                                    _installed_version(package.dist), importer))
    torch_ok = next(check for check in checks if check.name == "torch").status == "ok"
    checks.append(check_gpu(importlib.import_module("torch") if torch_ok else None))
    for package in EXTRAS:
        checks.append(check_extra(package, ranges.get(canonicalize_name(package.dist), SpecifierSet()),
                                  importlib.util.find_spec(package.module) is not None))
    checks.append(check_registration(importer))
    checks.extend(check_datasets(environ))
    checks.append(check_hub(environ, probe))
    return checks


def exit_status(checks: Iterable[Check]) -> int:
    """0 when nothing needed for CPU use failed (warnings allowed), else 1."""
    return 1 if any(check.status == "fail" for check in checks) else 0


def render(checks: Sequence[Check]) -> str:
    """The table: status, check, detail (continuation lines indented), and under a non-ok line its fix."""
    width = max(len(check.name) for check in checks)
    indent = " " * (7 + width + 2)
    lines = [f"{'STATUS':7s}{'CHECK':{width + 2}s}DETAIL"]
    for check in checks:
        first, *rest = check.detail.splitlines() or [""]
        lines.append(f"{check.status.upper():7s}{check.name:{width + 2}s}{first}")
        lines.extend(indent + line for line in rest)
        if check.fix and check.status != "ok":
            lines.append(f"{indent}fix: {check.fix}")
    counts = {status: sum(check.status == status for check in checks) for status in ("ok", "warn", "fail")}
    if counts["fail"]:
        verdict = "not ready: apply the fixes of the FAIL lines"
    else:
        verdict = "ready for CPU use" + (" (WARN lines: GPU extras, optional extras, data, hub)" if counts["warn"] else "")
    lines.append(f"\n{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failures: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exgramed doctor", description=__doc__.splitlines()[0])
    parser.parse_args([] if argv is None else argv)
    checks = run_checks()
    print(render(checks))
    status = exit_status(checks)
    print_summary({"checks": [check.__dict__ for check in checks]}, ok=status == 0)
    return status
