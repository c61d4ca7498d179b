"""Connecting to Milvus for a gallery: a server from the environment's settings, or an in-process
Milvus Lite server for a ``.db`` directory (shared by the galleries of this process and released
with the last one). Errors become one-line GalleryErrors; credentials never appear in them.

Environment: ``MILVUS_URI`` (overrides ``http://HOST:PORT``), ``MILVUS_TOKEN`` or ``MILVUS_USER``
+ ``MILVUS_PASSWORD``, ``MILVUS_DB_NAME``, ``MILVUS_TIMEOUT`` (seconds, default 10).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from gallery_tools.backend_spec import BackendSpec
from gallery_tools.errors import GalleryError

__all__ = ["connect", "disconnect", "reason", "redact"]

_lite_users: dict[str, int] = {}   # Lite directory -> open galleries in this process
_lite_guard = threading.Lock()


def _quiet() -> None:
    """pymilvus logs every failed RPC with a traceback, and Milvus Lite logs its own errors;
    this module turns them into one-line GalleryErrors instead. (Called after importing
    pymilvus, whose import configures its loggers.)"""
    for name in ("pymilvus", "pymilvus.milvus_client", "milvus_lite"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def reason(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(msg).split())[:300]


def redact(uri: str) -> str:
    """A URI fit for messages: any ``user:password@`` removed."""
    return re.sub(r"//[^/@]*@", "//", uri)


def connect(spec: BackendSpec) -> Any:
    """A MilvusClient for ``spec``; GalleryError (one line, no credentials) when it cannot."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise GalleryError("this gallery lives in Milvus but pymilvus is not installed "
                           "(pip install 'facekd[milvus]')") from None
    _quiet()
    timeout = float(os.environ.get("MILVUS_TIMEOUT", "10"))
    if spec.kind == "milvus-lite":
        try:
            import milvus_lite  # noqa: F401  (pymilvus starts it for a .db path)
        except ImportError:
            raise GalleryError("this gallery lives in Milvus Lite but milvus-lite is not "
                               "installed (pip install 'facekd[milvus]')") from None
        Path(spec.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            client = MilvusClient(uri=spec.uri, timeout=timeout)
        except Exception as exc:
            raise GalleryError(f"{spec.uri}: cannot open the Milvus Lite database (another "
                               f"process may be using it): {reason(exc)}") from None
        with _lite_guard:
            _lite_users[spec.uri] = _lite_users.get(spec.uri, 0) + 1
        return client
    uri = os.environ.get("MILVUS_URI") or spec.uri
    user = os.environ.get("MILVUS_USER", "")
    token = os.environ.get("MILVUS_TOKEN") or (
        f"{user}:{os.environ.get('MILVUS_PASSWORD', '')}" if user else "")
    try:
        return MilvusClient(uri=uri, token=token, db_name=os.environ.get("MILVUS_DB_NAME", ""),
                            timeout=timeout)
    except Exception as exc:
        raise GalleryError(f"cannot connect to Milvus at {redact(uri)}: {reason(exc)} "
                           "(check the server, MILVUS_URI and MILVUS_TOKEN)") from None


def disconnect(client: Any, spec: BackendSpec) -> None:
    try:
        client.close()
    except Exception:  # closing a dead connection must not mask the caller's error
        pass
    if spec.kind != "milvus-lite":
        return
    with _lite_guard:
        left = _lite_users.get(spec.uri, 1) - 1
        _lite_users[spec.uri] = left
    if left <= 0:  # the in-process Lite server holds the directory's lock until released
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(spec.uri)
        _lite_users.pop(spec.uri, None)
