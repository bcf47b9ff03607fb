"""``manage.py serve_models``: the model server (loaded bases and adapters, one batching decode loop).

The web processes send it their chat requests (``SERVING_URL``); it listens on ``SERVING_HOST:SERVING_PORT``
(127.0.0.1 by default: it trusts its callers to have checked visibility) until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the model server: the chat requests of every web process decoded in shared batches."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="Address to listen on (default: SERVING_HOST).")
        parser.add_argument("--port", type=int, default=None, help="Port (default: SERVING_PORT).")
        parser.add_argument("--preload", action="append", default=[],
                            help="A base model folder to load before accepting requests (repeatable).")

    def handle(self, *args, **options):
        # torch, transformers and peft load here, in this process only
        from serving.engine import Job
        from serving.inference import GenerationRequest
        from serving.server import ModelServer

        if settings.SERVING_TORCH_THREADS:
            import torch  # the model server's own process: torch is what it runs

            torch.set_num_threads(settings.SERVING_TORCH_THREADS)
        host = options["host"] or settings.SERVING_HOST
        port = options["port"] or settings.SERVING_PORT
        server = ModelServer(host, port)
        for path in options["preload"]:  # one token through the engine loads the base
            list(server.engine.submit(Job(path, None, None, GenerationRequest(
                messages=[{"role": "user", "content": "hi"}], max_new_tokens=1))))

        def stop(*_):
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"Model server listening on http://{host}:{server.server_address[1]}", ending="\n")
        self.stdout.flush()
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            server.engine.stop()
