"""The SecFPP ClientApp: thin registrations that import their handlers lazily.

In deployment every message starts a fresh ``flwr-clientapp`` process, and importing torch
costs seconds there; the key-setup and SecPC handlers need only numpy and ``cryptography``,
so nothing torch-dependent is imported at module level. Train and evaluate go to the site's
worker (:mod:`client_app.worker`) when one answers on the site's socket, which keeps torch, the
backbone and the features loaded between messages; without one they run here.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Local training (and, for SecFPP, sealing the round's secret shares)."""
    from .worker_link import run_handler

    return run_handler("train", message, context, _in_process("train"))


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Personalized accuracy on the site's held-out images."""
    from .worker_link import run_handler

    return run_handler("evaluate", message, context, _in_process("evaluate"))


def _in_process(op: str):
    """The torch handler ``op``, imported only when it runs here."""

    def handle(message: Message, context: Context) -> Message:
        from . import prompt_handlers

        return getattr(prompt_handlers, op)(message, context)

    return handle


@app.query("keysetup")
def keysetup(message: Message, context: Context) -> Message:
    """SecFPP key setup: announce a fresh X25519 key signed by the site's identity key."""
    from .secure_handlers import keysetup as handle

    return handle(message, context)


@app.query("secpc")
def secpc(message: Message, context: Context) -> Message:
    """SecFPP exchange 2: coded cluster sums and distances on the shares this site holds."""
    from .secure_handlers import secpc as handle

    return handle(message, context)
