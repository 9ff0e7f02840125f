"""The SecFPP ClientApp: thin registrations that import their handlers lazily.

In deployment every message starts a fresh ``flwr-clientapp`` process, and importing torch
costs seconds there; the key-setup and SecPC handlers need only numpy and ``cryptography``,
so nothing torch-dependent is imported at module level.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Local training (and, for SecFPP, sealing the round's secret shares)."""
    from .prompt_handlers import train as handle

    return handle(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Personalized accuracy on the site's held-out images."""
    from .prompt_handlers import evaluate as handle

    return handle(message, context)


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
