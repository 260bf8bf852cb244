"""The image process: `python -m tuneyard.images.server`. Serves one generation at a time over
a Unix socket, keeping the last pipeline loaded, and exits after
TUNEYARD_IMAGE_PROCESS_IDLE_SECONDS without work."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from tuneyard.config import get_settings
from tuneyard.images.process import address, authkey, process_dir

log = logging.getLogger("tuneyard.images.server")


class StopRequested(Exception):
    """The job asked to stop (it was cancelled) or went away."""


class ImageServer:
    def __init__(self) -> None:
        self.loaded: Any = None
        self.key: tuple | None = None
        self.busy = False
        self.last_active = time.monotonic()

    def pipeline(self, spec: dict[str, Any]) -> tuple[Any, bool]:
        from tuneyard.images.pipeline import LoadedPipeline

        key = (spec["path"], spec["source"], spec.get("config_path"))
        if self.key == key:
            return self.loaded, True
        self.loaded = self.key = None  # free the old one before loading the next
        self.loaded = LoadedPipeline(spec)
        self.key = key
        return self.loaded, False

    def release(self) -> bool:
        """Drop the loaded pipeline and give its memory back; True if one was loaded."""
        held = self.loaded is not None
        self.loaded = self.key = None
        if held:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.info("released the pipeline")
        return held

    def serve(self, conn: Connection) -> None:
        from tuneyard.images.pipeline import png_bytes

        request = conn.recv()
        if request == "release":
            conn.send({"released": self.release()})
            return

        def on_step(step: int) -> None:
            while conn.poll():
                if conn.recv() == "cancel":
                    raise StopRequested()
            conn.send({"step": step})

        try:
            loaded, reused = self.pipeline(request["model"])
            source = Path(request["source"]) if request.get("source") else None
            image = loaded.generate(
                request["recipe"], source, on_step, request.get("adapter_files")
            )
            conn.send(
                {
                    "png": png_bytes(image, request["recipe"]),
                    "width": image.width,
                    "height": image.height,
                    "reused": reused,
                    "device": loaded.plan["device"],
                    "dtype": loaded.plan["dtype"],
                }
            )
        except (StopRequested, EOFError, BrokenPipeError, ConnectionResetError):
            log.info("request stopped")
        except Exception as exc:  # the job reports it; the process serves the next one
            log.error("generation failed:\n%s", traceback.format_exc())
            with contextlib.suppress(OSError):
                conn.send({"error": f"{type(exc).__name__}: {exc}"})


def _exit_when_idle(server: ImageServer, idle_seconds: float) -> None:
    while True:
        time.sleep(min(1.0, idle_seconds))
        if not server.busy and time.monotonic() - server.last_active > idle_seconds:
            log.info("idle for %.0f s; exiting", idle_seconds)
            logging.shutdown()
            os._exit(0)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    settings = get_settings()
    folder = process_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    listener = Listener(address(settings), family="AF_UNIX", authkey=authkey(settings))
    (folder / "pid").write_text(str(os.getpid()))
    server = ImageServer()
    watchdog = threading.Thread(
        target=_exit_when_idle,
        args=(server, settings.image_process_idle_seconds),
        daemon=True,
    )
    watchdog.start()
    log.info("image process %s serving %s", os.getpid(), settings.data_dir)
    while True:
        try:
            conn = listener.accept()
        except Exception:  # a client that failed the key; wait for the next
            log.warning("refused a connection", exc_info=True)
            continue
        server.busy = True
        try:
            with conn:
                server.serve(conn)
        finally:
            server.busy = False
            server.last_active = time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
