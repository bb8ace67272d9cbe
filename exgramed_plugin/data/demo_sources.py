"""The offline source images of the demo data: which medical images PyPI packages ship, the facts
their questions rest on, their licences, and how to load them.

Why its own module: these are the only real inputs of the demo data (see
:mod:`exgramed_plugin.data.demo_data` for the table and the files built from them). A source is a
file inside an installed wheel, found through the import system, so it works without network
access; a missing package or file fails loudly naming what to install, and no image is ever
substituted. Greyscale DICOM is windowed to the 1st-99th percentile (robust to each file's value
range) and copied to RGB.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DemoSource", "SOURCES", "load_source", "package_version", "resolve_source_file"]

_PYDICOM_LICENCE = "MIT"
_PYDICOM_DATA_LICENCE = "MIT"
_SKIMAGE_LICENCE = "BSD-3-Clause"
_NEMA_NOTE = (
    "NEMA WG04 DICOM compression test image (ftp://medical.nema.org/MEDICAL/Dicom/DataSets/WG04/), "
    "redistributed by pydicom; its test_files/README.txt: 'I believe there is no restriction on "
    "using any of these files in this manner.'"
)


@dataclass(frozen=True)
class DemoSource:
    """One real image inside an installed PyPI package, and the facts its questions rest on."""

    key: str
    distribution: str  # PyPI name, for error messages and sources.json
    module: str  # importable top-level module that holds the file
    file: str  # path relative to the module's directory
    modality: str  # OPEN answer to "what modality"
    organ: str  # OPEN answer to "which organ"
    licence: str  # licence of the distribution
    provenance: str  # where the image itself comes from, per the package's own documentation
    caption: str  # short caption (LLaVA-Med style gpt answer)
    description: str  # one factual sentence used to extend answers
    not_no: frozenset[str] = frozenset()  # organs visible too, never used for a "no" question

    @property
    def file_in_package(self) -> str:
        """Path as it appears inside the installed wheel (``<module>/<file>``)."""
        return f"{self.module}/{self.file}"


SOURCES: tuple[DemoSource, ...] = (
    DemoSource(
        key="xray_chest",
        distribution="pydicom-data",
        module="data_store",
        file="data/RG1_UNCI.dcm",
        modality="x-ray",
        organ="chest",
        licence=_PYDICOM_DATA_LICENCE,
        provenance=_NEMA_NOTE + " DICOM: Modality CR, BodyPartExamined CHEST.",
        caption="Frontal chest radiograph.",
        description=(
            "It is a frontal computed radiograph of the chest, in which the air-filled lungs "
            "appear dark and the ribs, spine and heart appear bright."
        ),
        not_no=frozenset({"spine", "shoulder"}),
    ),
    DemoSource(
        key="xray_leg",
        distribution="pydicom-data",
        module="data_store",
        file="data/RG3_UNCI.dcm",
        modality="x-ray",
        organ="leg",
        licence=_PYDICOM_DATA_LICENCE,
        provenance=_NEMA_NOTE
        + " DICOM: Modality CR, BodyPartExamined EXTREMITY, StudyDescription 'Non-ossifying "
        "fibroma of distal tibia'.",
        caption="Radiograph of the lower leg.",
        description=(
            "It is a computed radiograph of the lower leg showing the tibia and fibula down to the "
            "ankle; the study is labelled as a non-ossifying fibroma of the distal tibia."
        ),
    ),
    DemoSource(
        key="ct_spine",
        distribution="pydicom",
        module="pydicom",
        file="data/test_files/CT_small.dcm",
        modality="ct",
        organ="spine",
        licence=_PYDICOM_LICENCE,
        provenance=_NEMA_NOTE + " Downsized by pydicom to 128x128 from CT1_UNC.",
        caption="Axial CT slice through a vertebra.",
        description=(
            "It is an axial computed tomography slice through a thoracic vertebral body and its "
            "spinal canal, with the aorta in front of the spine."
        ),
        not_no=frozenset({"chest"}),
    ),
    DemoSource(
        key="ct_head",
        distribution="pydicom-data",
        module="data_store",
        file="data/693_UNCI.dcm",
        modality="ct",
        organ="head",
        licence=_PYDICOM_DATA_LICENCE,
        provenance="pydicom regression data set for issue #693 (uncompressed version); DICOM: "
        "Modality CT, SeriesDescription '5/5mm Plain'.",
        caption="Axial non-contrast CT of the head.",
        description=(
            "It is an axial non-contrast computed tomography slice of the head, in which the skull "
            "appears as a bright ring around the brain."
        ),
        not_no=frozenset({"eye"}),
    ),
    DemoSource(
        key="mri_head",
        distribution="pydicom",
        module="pydicom",
        file="data/test_files/MR_small.dcm",
        modality="mri",
        organ="head",
        licence=_PYDICOM_LICENCE,
        provenance=_NEMA_NOTE + " Downsized by pydicom to 64x64 from MR1_UNC.",
        caption="Axial T2-weighted MRI of the head.",
        description=(
            "It is an axial, heavily T2-weighted 3D spin-echo magnetic resonance slice of the head "
            "(TR 4000 ms, TE 240 ms), in which fluid appears bright."
        ),
        not_no=frozenset({"eye"}),
    ),
    DemoSource(
        key="mri_shoulder",
        distribution="pydicom-data",
        module="data_store",
        file="data/MR2_UNCI.dcm",
        modality="mri",
        organ="shoulder",
        licence=_PYDICOM_DATA_LICENCE,
        provenance=_NEMA_NOTE + " DICOM: Modality MR, StudyDescription SHOULDER, T1W/SE.",
        caption="T1-weighted MRI of the shoulder.",
        description=(
            "It is a T1-weighted spin-echo magnetic resonance image of the shoulder showing the "
            "humeral head and the surrounding muscles."
        ),
        not_no=frozenset({"chest"}),
    ),
    DemoSource(
        key="fundus_eye",
        distribution="scikit-image",
        module="skimage",
        file="data/retina.jpg",
        modality="fundus photograph",
        organ="eye",
        licence=_SKIMAGE_LICENCE,
        provenance="skimage.data.retina(): 'Fundus photograph of normal left eye' by Mikael "
        "Haggstrom, Wikimedia Commons, CC0 1.0 public domain dedication (per the skimage "
        "docstring).",
        caption="Fundus photograph of the retina.",
        description=(
            "It is a colour fundus photograph of a normal left eye showing the optic disc, the "
            "macula and the retinal blood vessels."
        ),
        not_no=frozenset({"head"}),
    ),
    DemoSource(
        key="histology_colon",
        distribution="scikit-image",
        module="skimage",
        file="data/ihc.png",
        modality="histology",
        organ="colon",
        licence=_SKIMAGE_LICENCE,
        provenance="skimage.data.immunohistochemistry(): colonic glands, FHL2 revealed with DAB, "
        "hematoxylin counterstain; acquired at the Center for Microscopy And Molecular Imaging "
        "(CMMI); 'No known copyright restrictions' (per the skimage docstring).",
        caption="Immunohistochemistry of colonic glands.",
        description=(
            "It is a histology section of colonic glands stained by immunohistochemistry, with the "
            "brown DAB signal marking FHL2 protein and blue hematoxylin counterstain."
        ),
    ),
)


def resolve_source_file(module: str, distribution: str, file: str) -> Path:
    """Find ``file`` inside an installed package, or fail loudly (never substitute an image)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"make_demo_data needs the PyPI package {distribution!r} (module {module!r}) for its "
            f"bundled image {file!r}; install it with `pip install {distribution}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise FileNotFoundError(
            f"{distribution} {package_version(distribution)} is installed but does not contain {file!r} "
            f"(looked at {path}); install a version that ships it, e.g. `pip install -U "
            f"{distribution}`."
        )
    return path


def package_version(distribution: str) -> str:
    """The installed version of ``distribution`` (``unknown`` when it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _window_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Window to the 1st-99th percentile and scale to uint8: robust to each file's value range."""
    arr = pixels.astype(np.float64)
    lo, hi = np.percentile(arr, [1.0, 99.0])
    if hi <= lo:  # flat image: avoid dividing by zero
        hi = lo + 1.0
    scaled = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def _load_dicom(path: Path) -> Image.Image:
    """Decode an uncompressed one-frame greyscale DICOM to RGB (MONOCHROME1 inverted)."""
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a declared dependency
        raise ModuleNotFoundError(
            "make_demo_data needs the PyPI package 'pydicom' to decode DICOM files; install it "
            "with `pip install pydicom`."
        ) from exc
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise ValueError(f"{path.name}: expected one greyscale frame, got shape {pixels.shape}")
    grey = _window_to_uint8(pixels)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1: low values are bright
    return Image.fromarray(np.stack([grey] * 3, axis=-1))  # HxWx3 uint8 -> RGB


def load_source(source: DemoSource) -> Image.Image:
    """The source's image as RGB (DICOM decoded, other files opened with PIL)."""
    path = resolve_source_file(source.module, source.distribution, source.file)
    if path.suffix.lower() == ".dcm":
        return _load_dicom(path)
    with Image.open(path) as im:  # same pixels as skimage.data.<name>() without importing skimage
        return im.convert("RGB")
