"""What ``--gallery`` says: a parsed backend address (:class:`BackendSpec`), kept apart from the
backend factory in :mod:`gallery_tools.backend` so that the backends can import it without a
cycle."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gallery_tools.errors import GalleryError

__all__ = ["BackendSpec", "parse_spec", "DEFAULT_SPEC", "LITE_NAME"]

DEFAULT_SPEC = "faiss"
LITE_NAME = "faces"  # the alias of a Milvus Lite gallery (one gallery per Lite directory)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")  # Milvus collection/alias names


@dataclass(frozen=True)
class BackendSpec:
    """A parsed ``--gallery`` value. ``uri`` never carries credentials (they come from the
    environment at connect time)."""

    kind: str               # "faiss" | "milvus" | "milvus-lite"
    uri: str = ""           # http://HOST:PORT for a server, the Lite directory path for Lite
    name: str = ""          # the serving alias; collections are NAME_gGGGGGGGG

    def __str__(self) -> str:
        if self.kind == "milvus":
            return f"milvus://{self.uri.removeprefix('http://')}/{self.name}"
        if self.kind == "milvus-lite":
            return f"milvus-lite:{self.uri}"
        return self.kind


def parse_spec(spec: str | None) -> BackendSpec:
    """``faiss``, ``milvus://HOST:PORT/NAME`` or ``milvus-lite:PATH`` (PATH ends in ``.db``;
    relative paths are resolved against the workspace). Bad values raise GalleryError."""
    spec = (spec or DEFAULT_SPEC).strip()
    if spec == DEFAULT_SPEC:
        return BackendSpec("faiss")
    if spec.startswith("milvus-lite:"):
        path = spec.removeprefix("milvus-lite:")
        if not path.endswith(".db") or path == ".db":
            raise GalleryError(f"--gallery {spec}: a Milvus Lite path must end in .db "
                               "(e.g. milvus-lite:milvus.db)")
        return BackendSpec("milvus-lite", path, LITE_NAME)
    if spec.startswith("milvus://"):
        m = re.fullmatch(r"milvus://([^/@\s]+):(\d{1,5})/([^/\s]+)", spec)
        if "@" in spec:
            raise GalleryError("--gallery: put no credentials in the gallery address; set "
                               "MILVUS_TOKEN (or MILVUS_USER and MILVUS_PASSWORD) instead")
        if not m or not _NAME.match(m.group(3)) or not 0 < int(m.group(2)) < 65536:
            raise GalleryError(f"--gallery {spec}: expected milvus://HOST:PORT/NAME (NAME: "
                               "letters, digits and _, not starting with a digit)")
        return BackendSpec("milvus", f"http://{m.group(1)}:{m.group(2)}", m.group(3))
    raise GalleryError(f"--gallery {spec}: expected faiss, milvus://HOST:PORT/NAME or "
                       "milvus-lite:PATH")
