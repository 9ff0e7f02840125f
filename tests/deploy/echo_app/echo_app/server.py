"""ServerApp: one query exchange per round with every node; writes results.json."""

import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` echo rounds and write the replies."""
    cfg = context.run_config
    if cfg.get("fail"):
        raise RuntimeError("echo app asked to fail (run config fail=true)")
    nodes = []
    for _ in range(60):
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= int(cfg["min-nodes"]):
            break
        time.sleep(1)
    rounds = []
    for rnd in range(1, int(cfg["num-server-rounds"]) + 1):
        start = time.monotonic()
        msgs = [
            Message(
                RecordDict({"config": ConfigRecord({"round": rnd})}),
                dst_node_id=node,
                message_type="query",
            )
            for node in nodes
        ]
        replies = list(grid.send_and_receive(msgs, timeout=120))
        sites = sorted(str(r.content["echo"]["site-config"]) for r in replies if r.has_content())
        rounds.append({"round": rnd, "seconds": time.monotonic() - start, "sites": sites})
    out = Path(str(cfg["outputs-dir"])) / f"run-{grid.run.run_id}"
    out.mkdir(parents=True, exist_ok=True)
    result = {"nodes": len(nodes), "rounds": rounds, "cwd": os.getcwd()}
    (out / "results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
