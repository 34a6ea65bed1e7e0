"""A local static file server that honours single Range requests (as object stores do), for
tests of http(s) shards."""

import contextlib
import http.server
import io
import threading
from functools import partial
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    honour_range = True  # a test turns it off to play a server that ignores Range

    def log_message(self, *args):
        pass

    def send_head(self):
        header = self.headers.get("Range")
        if not header or not self.honour_range:
            return super().send_head()
        data = Path(self.translate_path(self.path)).read_bytes()
        start, end = (int(x) for x in header.removeprefix("bytes=").split("-"))
        body = data[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that hangs up early (a refused Range read) is expected
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """http://127.0.0.1:PORT serving `folder`, for the duration of the block."""
    server = QuietServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
