"""Fashion-MNIST from its four gzipped IDX files, parsed with numpy.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``00 00 <dtype> <ndim>``, then
``ndim`` big-endian uint32 dimension sizes, then the values in C order, big-endian. Fashion-MNIST (Xiao et al. 2017,
arXiv:1708.07747) uses dtype 0x08 (uint8): images (N, 28, 28) and labels (N,) in 0..9.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ganops.data.errors import DataError

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
LOCAL_DIR = Path("data/raw/fashion-mnist")  # relative to the working directory
INSTALL_COMMAND = "sudo apt-get install dataset-fashion-mnist"

# IDX dtype codes -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _all_present(directory: Path) -> bool:
    return all((directory / name).is_file() for pair in FILES.values() for name in pair)


def find_fashion_mnist_dir(directory: str | Path | None = None) -> Path:
    """Return the directory holding the four Fashion-MNIST ``.gz`` files.

    Args:
        directory: look only here; None = :data:`SYSTEM_DIR`, then ``data/raw/fashion-mnist`` under the cwd.

    Raises:
        DataError: no candidate directory holds all four files; the message lists the paths looked in, the missing
            files, the install command and the manual alternative.
    """
    candidates = [Path(directory)] if directory is not None else [SYSTEM_DIR, LOCAL_DIR]
    for cand in candidates:
        if _all_present(cand):
            return cand
    needed = [name for pair in FILES.values() for name in pair]
    looked = "\n".join(
        f"  - {c.resolve()} (missing: {', '.join(n for n in needed if not (c / n).is_file())})" for c in candidates
    )
    raise DataError(
        "Fashion-MNIST files not found. Looked in:\n"
        f"{looked}\n"
        f"Install them with `{INSTALL_COMMAND}` (puts them in {SYSTEM_DIR}), or put the four files "
        f"{', '.join(needed)} under {LOCAL_DIR}/ (or set prepare.fashion_mnist_dir)."
    )


def read_idx_gz(path: str | Path) -> np.ndarray:
    """Parse one gzipped IDX file.

    Returns:
        The array in native byte order with the shape from the header (e.g. uint8 (N, 28, 28)).

    Raises:
        DataError: the file is not valid gzip or is truncated, the magic is wrong, or the payload length disagrees
            with the header's dimensions; the message names the file and the numbers.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(
            f"{path}: cannot decompress ({type(err).__name__}: {err}); the file is truncated or not gzip. "
            "Re-download or reinstall it."
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}, expected 0000<dtype><ndim>)")
    ndim = raw[3]
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise DataError(f"{path}: IDX header declares {ndim} dimensions but the file has only {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header_bytes
    if got != expected:
        raise DataError(
            f"{path}: header says shape {dims} ({expected} payload bytes) but the file holds {got} payload bytes; "
            "the file is truncated or corrupt. Re-download or reinstall it."
        )
    return np.frombuffer(raw, dtype, offset=header_bytes).reshape(dims).astype(dtype.newbyteorder("="))


def load_fashion_mnist(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read both splits from ``directory``.

    Returns:
        ``{"train": (images, labels), "test": (...)}``: images uint8 (N, 28, 28) 0..255, labels int64 (N,) 0..9.

    Raises:
        DataError: a file is malformed (see :func:`read_idx_gz`), image and label counts differ, the images are not
            3-D uint8, or a label lies outside 0..9.
    """
    out = {}
    for split, (images_name, labels_name) in FILES.items():
        images, labels = read_idx_gz(directory / images_name), read_idx_gz(directory / labels_name)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{directory / images_name}: expected uint8 (N, H, W), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"{directory / labels_name}: holds {labels.shape} labels but {images_name} holds "
                f"{images.shape[0]} images; the pair must match"
            )
        if labels.size and int(labels.max()) >= len(CLASS_NAMES):
            bad = np.unique(labels[labels >= len(CLASS_NAMES)])[:10].tolist()
            raise DataError(f"{directory / labels_name}: labels {bad} outside 0..{len(CLASS_NAMES) - 1}")
        out[split] = (images, labels.astype(np.int64))
    return out
