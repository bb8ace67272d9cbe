"""`exgramed download`: the checkpoints and data the original project publishes on the Hugging Face hub.

Why a command: the data repos must end up where the registered dataset names look for them
(``$EXGRAMED_DATA_ROOT/{VQA-RAD,SLAKE,PATH-VQA}/{split}_w_options_new.json``, ``.../llava_med/...``),
with real files next to their images (the hub cache stores symlinks into ``blobs/``, and relative
image paths resolve against the JSON file's real folder). So every repo is fetched into the hub
cache with ``huggingface_hub.snapshot_download`` (resumable, offline-aware), then data repos are
mirrored into the data root with hard links (a copy only across file systems), archives are
extracted, and the expected files are checked. ``snapshot_download(local_dir=...)`` is not used for
the placing: offline it only returns an already filled ``local_dir`` and never copies a cached
snapshot there (huggingface_hub 1.x), and placing from the cache offline is what an air-gapped
machine needs.

Assumptions (the repos' file lists are not in docs/method.md; its §4.1 only names the JSON
files): the VQA repos hold ``{train,val,test}_w_options_new.json`` at their top level with the
images in folders or archives beside them (``.zip``/``.tar[.gz]`` archives are extracted in place);
``Extended-Caption-GPT`` holds the ``llava_med_*_2_conversations.json`` files (images: the LLaVA-Med
PMC images, not in that repo). What does not match is reported, never guessed around.

No network: with ``HF_HUB_OFFLINE=1``, or when the hub endpoint does not answer an HTTP request of
huggingface_hub's own session within a few seconds, only the local cache is used, and a repo that
is not there stops the command at once with a message naming the repo id and how to place its
files by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common.jsonio import JsonFileError, print_summary, read_json

logger = logging.getLogger(__name__)

ORG = "MERGE-Group"
DATA_ROOT_ENV = "EXGRAMED_DATA_ROOT"
DEFAULT_DATA_ROOT = "~/exgramed_data"
NETWORK_PROBE_TIMEOUT_S = 5.0
VQA_SPLITS = ("train", "val", "test")
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class HubRepo:
    """One published repo: its short name, hub id and type, and (data) the folder under the data root."""

    name: str
    repo_id: str
    repo_type: str  # "model" or "dataset"
    data_folder: str | None = None
    expected_files: tuple[str, ...] = ()
    description: str = ""


CHECKPOINTS: tuple[HubRepo, ...] = tuple(
    HubRepo(name, f"{ORG}/{name}", "model", description=description) for name, description in (
        ("llava-med-10", "LLaVA-Med, 10% of the PMC-15M pre-training"),
        ("llava-med-40", "LLaVA-Med, 40% of the PMC-15M pre-training"),
        ("exgra-med-10", "ExGra-Med, 10% pre-training"),
        ("exgra-med-40", "ExGra-Med, 40% pre-training"),
        ("exgra-med", "ExGra-Med base (100% pre-training)"),
        ("exgra-med-dci", "ExGra-Med + DCI dense connector"),
        ("exgra-med-dci-vqa-rad", "ExGra-Med DCI fine-tuned on VQA-RAD"),
        ("exgra-med-dci-slake", "ExGra-Med DCI fine-tuned on SLAKE"),
        ("exgra-med-dci-pathvqa", "ExGra-Med DCI fine-tuned on PathVQA"),
    ))

_VQA_FILES = tuple(f"{split}_w_options_new.json" for split in VQA_SPLITS)
DATASETS: tuple[HubRepo, ...] = (
    HubRepo("VQA-RAD", f"{ORG}/VQA-RAD", "dataset", "VQA-RAD", _VQA_FILES, "VQA-RAD with options (vqa_rad_*)"),
    HubRepo("SLAKE", f"{ORG}/SLAKE", "dataset", "SLAKE", _VQA_FILES, "SLAKE English with options (slake_*)"),
    HubRepo("PATH-VQA", f"{ORG}/PATH-VQA", "dataset", "PATH-VQA", _VQA_FILES, "PathVQA with options (pathvqa_*)"),
    HubRepo("Extended-Caption-GPT", f"{ORG}/Extended-Caption-GPT", "dataset", "llava_med",
            tuple(f"llava_med_alignment_{f}_2_conversations.json" for f in (10, 40, 100))
            + tuple(f"llava_med_instruct_{f}_inline_mention_2_conversations.json" for f in (10, 40, 100)),
            "LLaVA-Med stage-1/2 data with extended answers (llava_med_*)"),
)
ALL_REPOS: tuple[HubRepo, ...] = CHECKPOINTS + DATASETS
_ALIASES = {"pathvqa": "PATH-VQA", "path_vqa": "PATH-VQA", "vqa_rad": "VQA-RAD", "vqarad": "VQA-RAD",
            "extended-captions": "Extended-Caption-GPT", "llava_med": "Extended-Caption-GPT"}


class HubDownloadError(RuntimeError):
    """A repo could not be fetched; the message names it and says how to place its files by hand."""


def find_repo(name: str) -> HubRepo:
    """A repo by short name, hub id (``MERGE-Group/...``) or alias, case-insensitively."""
    wanted = _ALIASES.get(name.lower(), name).lower()
    for repo in ALL_REPOS:
        if wanted in (repo.name.lower(), repo.repo_id.lower()):
            return repo
    known = ", ".join(r.name for r in ALL_REPOS)
    raise ValueError(f"unknown repo {name!r}; known: {known} (or 'checkpoints', 'data', 'all')")


def select_repos(names: Sequence[str]) -> list[HubRepo]:
    """Expand ``checkpoints``/``data``/``all`` and drop duplicates, keeping order."""
    selected: list[HubRepo] = []
    for name in names:
        group = {"checkpoints": CHECKPOINTS, "data": DATASETS, "all": ALL_REPOS}.get(name.lower())
        for repo in group if group is not None else (find_repo(name),):
            if repo not in selected:
                selected.append(repo)
    return selected


def default_data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).expanduser()


def hub_is_reachable(timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """The hub endpoint answers a ``HEAD`` within ``timeout`` s, sent through huggingface_hub's own
    session (so ``HF_ENDPOINT``, proxies and headers are the downloads' ones). In offline mode
    (``HF_HUB_OFFLINE=1``) the library refuses the request at once: False without any traffic.
    Any HTTP answer counts: a hub that is up but failing is left to ``snapshot_download``'s own
    fallback to the cache. The name lookup is not bounded by ``timeout``; callers that must not
    block run this in a thread (``exgramed doctor``)."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except (OfflineModeIsEnabled, httpx.HTTPError, OSError):
        return False
    return True


def manual_placement_hint(repo: HubRepo, cache_dir: Path | None, data_root: Path, model_flag: str = "--model") -> str:
    """How to get the files of ``repo`` onto this machine without this command's network access;
    ``model_flag``: the option of the calling command that takes a checkpoint folder."""
    kind = "--repo-type dataset " if repo.repo_type == "dataset" else ""
    prefix = "datasets" if repo.repo_type == "dataset" else "models"
    cache = cache_dir or Path("$HF_HUB_CACHE (default ~/.cache/huggingface/hub)")
    lines = [f"On a machine with network: `hf download {repo.repo_id} {kind}--local-dir {repo.name}`, copy the "
             "folder here, then either"]
    if repo.data_folder:
        lines.append(f"  * put its files in {data_root / repo.data_folder}/ (expected: "
                     f"{', '.join(repo.expected_files[:3])}{', ...' if len(repo.expected_files) > 3 else ''}; "
                     "the registered dataset names then work without this command), or")
    else:
        lines.append(f"  * pass the folder itself as `{model_flag} <folder>`, or")
    lines.append(f"  * lay it out as the hub cache: {cache}/{prefix}--{repo.repo_id.replace('/', '--')}/"
                 "snapshots/<commit>/<files> with refs/main holding <commit>, and rerun this command.")
    return "\n".join(lines)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a real file) to ``dst``; copy when linking is impossible (other file system)."""
    if dst.exists():
        if os.path.samefile(src, dst) or dst.stat().st_size == src.stat().st_size:
            return
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def mirror_snapshot(snapshot: Path, target: Path) -> int:
    """Real files of a cache snapshot (whose entries are symlinks into ``blobs/``) under ``target``."""
    count = 0
    for path in sorted(snapshot.rglob("*")):
        if path.is_dir():
            continue
        relative = path.relative_to(snapshot)
        if relative.parts[0] == ".cache":
            continue
        _link_or_copy(Path(os.path.realpath(path)), target / relative)
        count += 1
    return count


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_ARCHIVE_SUFFIXES)


def extract_archives(folder: Path) -> list[Path]:
    """Extract every archive under ``folder`` in place once (a ``.<name>.extracted`` marker remembers it)."""
    from tqdm import tqdm

    extracted = []
    for archive in sorted(p for p in folder.rglob("*") if _is_archive(p)):
        marker = archive.with_name(f".{archive.name}.extracted")
        if marker.exists():
            continue
        destination = archive.parent.resolve()
        logger.info("extracting %s", archive)
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as handle:
                members = handle.infolist()
                for member in tqdm(members, desc=archive.name, unit="file", leave=False):
                    if not (destination / member.filename).resolve().is_relative_to(destination):
                        raise HubDownloadError(f"{archive}: member {member.filename!r} escapes the folder")
                    handle.extract(member, destination)
        else:
            with tarfile.open(archive) as handle:
                handle.extractall(destination, filter="data")
        marker.write_text("", encoding="utf-8")
        extracted.append(archive)
    return extracted


def check_data_folder(repo: HubRepo, folder: Path) -> list[str]:
    """Problems with a materialised data folder: missing expected files, unresolvable images."""
    problems = []
    for name in repo.expected_files:
        path = folder / name
        if path.is_file():
            continue
        elsewhere = [str(p.relative_to(folder)) for p in folder.rglob(name)]
        where = f" (found at {', '.join(elsewhere)}; image paths are relative to the file, so set " \
                f"EXGRAMED_DATA_ROOT or pass the file itself)" if elsewhere else ""
        problems.append(f"{path} not found{where}")
    for name in repo.expected_files:
        path = folder / name
        if not path.is_file() or repo.data_folder == "llava_med":
            continue
        try:
            rows = read_json(path)
        except JsonFileError as error:
            problems.append(str(error))
            continue
        except OSError as error:
            problems.append(f"{path}: unreadable ({error})")
            continue
        missing = [row.get("image") for row in rows[:20]
                   if row.get("image") and not (folder / str(row["image"])).is_file()]
        if missing:
            problems.append(f"{path}: images not found relative to {folder} (e.g. {missing[:3]}); extract or move "
                            f"them there, or set EXGRAMED_IMAGE_ROOT")
    return problems


@dataclass
class DownloadResult:
    name: str
    repo_id: str
    repo_type: str
    snapshot: str
    local_path: str | None
    files: int
    problems: list[str]


def fetch_snapshot(repo: HubRepo, *, cache_dir: Path | None, local_only: bool, revision: str | None,
                   data_root: Path, model_flag: str = "--model") -> Path:
    """``snapshot_download`` into the hub cache (resumes partial files); errors name the repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(repo.repo_id, repo_type=repo.repo_type, revision=revision,
                                 cache_dir=None if cache_dir is None else str(cache_dir),
                                 local_files_only=local_only)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        why = ("not in the local hub cache and the hub is not reachable (offline)" if local_only
               else f"download failed: {type(error).__name__}: {error}")
        raise HubDownloadError(f"{repo.repo_id} ({repo.repo_type}): {why}.\n"
                               f"{manual_placement_hint(repo, cache_dir, data_root, model_flag)}") from error
    return Path(path)


def download(names: Sequence[str], *, cache_dir: str | Path | None = None, data_root: str | Path | None = None,
             checkpoints_dir: str | Path | None = None, offline: bool | None = None, revision: str | None = None,
             extract: bool = True, model_flag: str = "--model") -> list[DownloadResult]:
    """Fetch the named repos (see :data:`ALL_REPOS`); data repos are placed under ``data_root``.

    ``offline=None`` follows ``HF_HUB_OFFLINE`` and falls back to the cache when the hub does not
    answer. Offline, every requested repo is looked up in the cache first, so a missing one stops the
    command before any work.
    """
    from huggingface_hub import constants

    repos = select_repos(names)
    cache = None if cache_dir is None else Path(cache_dir).expanduser()
    root = default_data_root() if data_root is None else Path(data_root).expanduser()
    if offline is None:
        offline = bool(constants.HF_HUB_OFFLINE)
        if not offline and not hub_is_reachable():
            logger.warning("%s does not answer within %.0f s: using the local hub cache only", constants.ENDPOINT,
                           NETWORK_PROBE_TIMEOUT_S)
            offline = True
    snapshots: dict[str, Path] = {}
    if offline:  # fail fast, before placing anything
        for repo in repos:
            snapshots[repo.name] = fetch_snapshot(repo, cache_dir=cache, local_only=True, revision=revision,
                                                  data_root=root, model_flag=model_flag)
    results = []
    for repo in repos:
        logger.info("%s (%s)", repo.repo_id, repo.repo_type)
        snapshot = snapshots.get(repo.name) or fetch_snapshot(repo, cache_dir=cache, local_only=False,
                                                               revision=revision, data_root=root, model_flag=model_flag)
        local_path: Path | None = None
        problems: list[str] = []
        files = sum(1 for p in snapshot.rglob("*") if not p.is_dir())
        if repo.data_folder is not None:
            local_path = root / repo.data_folder
            files = mirror_snapshot(snapshot, local_path)
            if extract:
                extract_archives(local_path)
            problems = check_data_folder(repo, local_path)
        elif checkpoints_dir is not None:
            local_path = Path(checkpoints_dir).expanduser() / repo.name
            files = mirror_snapshot(snapshot, local_path)
        for problem in problems:
            logger.warning("%s: %s", repo.name, problem)
        results.append(DownloadResult(repo.name, repo.repo_id, repo.repo_type, str(snapshot),
                                      None if local_path is None else str(local_path), files, problems))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed download",
        description="Fetch the original project's checkpoints and data from the Hugging Face hub (resumable); "
                    "data repos are placed under the data root so --dataset vqa_rad_test etc. work.")
    parser.add_argument("names", nargs="*", help="repo names (see --list), or checkpoints / data / all")
    parser.add_argument("--list", action="store_true", help="list the known repos and exit")
    parser.add_argument("--data-root", default=None,
                        help=f"where data repos go (default: ${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT})")
    parser.add_argument("--checkpoints-dir", default=None,
                        help="also place checkpoints as real files under DIR/<name> (default: hub cache only)")
    parser.add_argument("--cache-dir", default=None, help="hub cache (default: HF_HUB_CACHE)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--offline", action="store_true", help="use the local hub cache only (as HF_HUB_OFFLINE=1)")
    parser.add_argument("--no-extract", action="store_true", help="leave archives of data repos packed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list or not args.names:
        for repo in ALL_REPOS:
            place = f"-> <data root>/{repo.data_folder}" if repo.data_folder else "-> hub cache"
            print(f"{repo.name:24s} {repo.repo_type:8s} {repo.repo_id:40s} {place:28s} {repo.description}")
        return 0 if args.list else 2
    try:
        results = download(args.names, cache_dir=args.cache_dir, data_root=args.data_root,
                           checkpoints_dir=args.checkpoints_dir, offline=True if args.offline else None,
                           revision=args.revision, extract=not args.no_extract)
    except (HubDownloadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for result in results:
        print(f"{result.repo_id}: {result.files} file(s), {result.local_path or result.snapshot}")
        for problem in result.problems:
            print(f"  warning: {problem}")
    if any(r.repo_type == "dataset" for r in results):
        root = Path(args.data_root).expanduser() if args.data_root else default_data_root()
        print(f"\nfor the registered dataset names: export {DATA_ROOT_ENV}={root.resolve()}")
    print_summary({"repos": [r.__dict__ for r in results]})
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
