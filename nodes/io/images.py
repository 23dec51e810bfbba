"""Particle images by RELION image name (``000123@Extract/job007/Movies/mic001.mrcs``).

:class:`ImageSource` maps each particle row to (stack file, 0-based section) and reads
batches lazily: every stack is opened once with ``mrcfile.mmap`` (read only, permissive),
a batch is read file by file with sorted indices, and nothing loads a whole large stack.
Paths in image names are relative to the project directory.

RELION rules kept (``Image::read`` on ``N@stack`` names): the index before ``@`` is 1-based with any number of
digits; complex modes (3, 4) are refused. RELION refuses ``N@file.mrc`` (stacks must be
``.mrcs``); we read it when the file is a stack of 2-D images and warn once, since a
RELION job on the same project would fail.

Example::

    source = ImageSource(table.particles["rlnImageName"], project_dir=".", box_size=64)
    images = source.read([3, 0, 499])          # (3, 64, 64) float32, in the order asked
    for idx, imgs in source.iter_batches(100):
        ...
    source.close()

See also: :mod:`emclass2d.nodes.io.particles` (the table), :mod:`emclass2d.nodes.io.mrc`.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import mrcfile
import numpy as np

from emclass2d.nodes.io.mrc import COMPLEX_MODES

_NAME_RE = re.compile(r"^\s*(\d+)@(.+?)\s*$")


class ImageReadError(ValueError):
    """A particle image cannot be read: missing stack, bad index, wrong size or mode."""


def parse_image_name(name: str) -> tuple[int | None, str]:
    """``"000012@stack.mrcs" -> (12, "stack.mrcs")``; ``"img.mrc" -> (None, "img.mrc")``.

    The index is 1-based (any digit width). ``None`` means the whole file is one image.
    Raises ValueError for an empty name or index 0.
    """
    text = str(name).strip()
    if not text:
        raise ValueError("empty image name")
    match = _NAME_RE.match(text)
    if match is None:
        if "@" in text:
            raise ValueError(f"image name {text!r}: expected <index>@<file> with a positive integer index")
        return None, text
    index = int(match.group(1))
    if index < 1:
        raise ValueError(f"image name {text!r}: image indices start at 1")
    return index, match.group(2)


class ImageSource:
    """Lazy reader of particle images named ``N@path`` (one per particle row).

    image_names: one rlnImageName per particle, in table order.
    project_dir: directory that relative paths are resolved against.
    box_size: expected image size N (rlnImageSize of the optics table), or None to accept
        whatever the files hold (all must then agree).
    row_labels: how to name particle i in errors (default "particle i+1"); ParticleTable
        passes "row R of <file> data_particles".
    max_open: most stacks kept memory-mapped at once (least recently used closed first),
        so data sets with thousands of micrograph stacks stay under the open-file limit.
    """

    def __init__(
        self,
        image_names: Sequence[str],
        project_dir: str | os.PathLike[str] = ".",
        box_size: int | None = None,
        row_labels: Sequence[str] | None = None,
        max_open: int = 256,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.box_size = box_size
        self.max_open = max(1, int(max_open))
        names = [str(n) for n in image_names]
        self._row_labels = list(row_labels) if row_labels is not None else None
        files: dict[str, int] = {}
        file_of = np.empty(len(names), dtype=np.int64)
        section = np.empty(len(names), dtype=np.int64)
        self._whole_file = np.zeros(len(names), dtype=bool)
        for i, name in enumerate(names):
            try:
                index, path = parse_image_name(name)
            except ValueError as exc:
                raise ImageReadError(f"{self._row(i)}: bad rlnImageName ({exc})") from None
            file_of[i] = files.setdefault(path, len(files))
            section[i] = 0 if index is None else index - 1
            self._whole_file[i] = index is None
        self._names = names
        self._paths = list(files)  # as written in the STAR file
        self._file_of = file_of
        self._section = section
        self._open: OrderedDict[int, mrcfile.mrcmemmap.MrcMemmap] = OrderedDict()
        self._checked: set[int] = set()

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._names)

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def files(self) -> list[Path]:
        """Resolved paths of every stack, in order of first use."""
        return [self.resolve(p) for p in self._paths]

    def resolve(self, path: str) -> Path:
        """A path from an image name, resolved against the project directory."""
        p = Path(path)
        return p if p.is_absolute() else self.project_dir / p

    def location(self, i: int) -> tuple[Path, int]:
        """(stack file, 0-based section) of particle i."""
        return self.resolve(self._paths[self._file_of[i]]), int(self._section[i])

    def close(self) -> None:
        """Close every open memory map (the source can still be read afterwards)."""
        while self._open:
            _, mrc = self._open.popitem(last=False)
            mrc.close()

    def _row(self, i: int) -> str:
        if self._row_labels is not None:
            return self._row_labels[i]
        return f"particle {i + 1}"

    # ------------------------------------------------------------------ opening
    def _first_row_of(self, f: int) -> int:
        return int(np.flatnonzero(self._file_of == f)[0])

    def _stack(self, f: int):
        mrc = self._open.get(f)
        if mrc is not None:
            self._open.move_to_end(f)
            return mrc
        path = self.resolve(self._paths[f])
        first = self._first_row_of(f)
        if not path.is_file():
            raise ImageReadError(
                f"{path}: image stack not found (referred to by {self._row(first)}, "
                f"rlnImageName {self._names[first]!r}; paths are relative to the project directory {self.project_dir})"
            )
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except Exception as exc:  # corrupt headers raise assorted errors
            raise ImageReadError(f"{path}: not a readable MRC file ({exc}); referred to by {self._row(first)}") from exc
        if mrc.data is None:
            mrc.close()
            raise ImageReadError(f"{path}: invalid MRC header or truncated data; referred to by {self._row(first)}")
        if f not in self._checked:
            try:
                self._check_stack(f, path, mrc)
            except ImageReadError:
                mrc.close()
                raise
            self._checked.add(f)
        self._open[f] = mrc
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return mrc

    def _check_stack(self, f: int, path: Path, mrc) -> None:
        mode = int(mrc.header.mode)
        first = self._first_row_of(f)
        if mode in COMPLEX_MODES or np.iscomplexobj(mrc.data):
            raise ImageReadError(f"{path}: MRC mode {mode} holds complex numbers; particle images must be real")
        shape = mrc.data.shape
        ny, nx = shape[-2], shape[-1]
        if self.box_size is not None and (nx != self.box_size or ny != self.box_size):
            raise ImageReadError(
                f"{path}: images are {nx} x {ny} px but data_optics rlnImageSize is {self.box_size} "
                f"(first particle from this file: {self._row(first)})"
            )
        if nx != ny:
            raise ImageReadError(f"{path}: images are {nx} x {ny} px; particle images must be square")
        rows = np.flatnonzero(self._file_of == f)
        n_sections = 1 if len(shape) == 2 else shape[0]
        whole = self._whole_file[rows]
        if whole.any() and n_sections != 1:
            r = int(rows[whole][0])
            raise ImageReadError(
                f"{path}: holds {n_sections} sections but {self._row(r)} names it without an index "
                f"(rlnImageName {self._names[r]!r}); use <index>@{self._paths[f]}"
            )
        sections = self._section[rows]
        bad = sections >= n_sections
        if bad.any():
            r = int(rows[bad][0])
            raise ImageReadError(
                f"{self._row(r)}: rlnImageName {self._names[r]!r} asks for image {int(self._section[r]) + 1} "
                f"but {path} holds {n_sections} image(s)"
            )
        if path.suffix.lower() == ".mrc" and n_sections > 1:
            warnings.warn(
                f"{path}: a .mrc file used as a particle stack; RELION only reads stacks named .mrcs "
                "(rename the file and the rlnImageName entries to use this project with RELION)",
                stacklevel=3,
            )

    def check(self) -> None:
        """Open every stack once and validate it (existence, mode, size, indices).

        Cheap (headers and memory maps only); call before a long run to fail early.
        """
        for f in range(len(self._paths)):
            self._stack(f)

    # ------------------------------------------------------------------ reading
    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images of particles ``indices`` (any order, repeats allowed) as (B, N, N) float32.

        Reads each stack once per call with its sections sorted (sequential disk access).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"particle index out of range 0..{len(self) - 1}")
        out: np.ndarray | None = None
        files = self._file_of[idx]
        for f in np.unique(files):
            mrc = self._stack(int(f))
            where = np.flatnonzero(files == f)
            sections = self._section[idx[where]]
            order = np.argsort(sections, kind="stable")
            data = mrc.data
            if data.ndim == 2:
                block = np.broadcast_to(data, (len(where),) + data.shape)
            else:
                uniq, inverse = np.unique(sections[order], return_inverse=True)
                block = data[uniq][inverse]
            if out is None:
                n = data.shape[-1]
                out = np.empty((idx.size, n, n), dtype=np.float32)
            out[where[order]] = block
        if out is None:
            n = self.box_size or 0
            return np.empty((0, n, n), dtype=np.float32)
        return out

    def iter_batches(self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, images)`` in consecutive chunks of ``batch_size`` particles."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, idx.size, max(1, int(batch_size))):
            chunk = idx[start:start + batch_size]
            yield chunk, self.read(chunk)
