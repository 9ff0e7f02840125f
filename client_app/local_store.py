"""The on-site store of the prompt parts that never leave the site.

``P_L`` (and, for the ``local`` baseline, the site's own ``P_G``) lives in ``context.state``
while the SuperNode runs and is also written atomically to the site's state directory, so a
restarted SuperNode picks up where it left off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prompts.features import atomic_torch_save


@dataclass
class StoredPrompt:
    """Private prompt parts of one run, as kept on the site.

    Attributes
    ----------
    run_name : str
        The federation run these parts belong to (run config ``run-name``).
    server_round : int
        Last round whose training produced these parts.
    local_ctx : torch.Tensor
        ``P_L``.
    global_ctx : torch.Tensor or None
        The site's own ``P_G``, kept only when it is not shared (``local`` baseline).
    """

    run_name: str
    server_round: int
    local_ctx: torch.Tensor
    global_ctx: torch.Tensor | None = None


class LocalPromptStore:
    """Reads and writes a site's private prompt parts in ``<state-dir>/prompts/``.

    Parameters
    ----------
    state_dir : str or Path
        The site's state directory.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.folder = Path(state_dir).expanduser() / "prompts"

    def path(self, run_name: str) -> Path:
        """File holding the parts of ``run_name``."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_name) or "default"
        return self.folder / f"{safe}.pt"

    def save(self, stored: StoredPrompt) -> None:
        """Write atomically: a crash mid-write keeps the previous round's parts."""
        payload = {
            "run_name": stored.run_name,
            "server_round": stored.server_round,
            "local_ctx": stored.local_ctx.detach().cpu(),
            "global_ctx": None if stored.global_ctx is None else stored.global_ctx.detach().cpu(),
        }
        atomic_torch_save(payload, self.path(stored.run_name))

    def load(self, run_name: str) -> StoredPrompt | None:
        """The stored parts of ``run_name``, or ``None`` when there are none.

        Raises
        ------
        ValueError
            If the file exists but is not a prompt store (named in the message).
        """
        path = self.path(run_name)
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return StoredPrompt(
                run_name=str(payload["run_name"]),
                server_round=int(payload["server_round"]),
                local_ctx=payload["local_ctx"],
                global_ctx=payload["global_ctx"],
            )
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"{path}: not a readable prompt store ({exc})") from exc
