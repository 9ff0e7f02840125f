"""The SecFPP ClientApp: train and evaluate a site's hierarchical prompt.

What a reply may carry is fixed here and nowhere else: training metrics, the example count,
the site id, and (when the strategy shares it) the domain-level prompt ``P_G``. The
class-level prompt ``P_L`` stays in ``context.state`` and the site's state directory.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from prompts.learner import MODES, HierarchicalPrompt
from prompts.training import TrainConfig, evaluate_prompt, train_prompt

from .local_store import LocalPromptStore, StoredPrompt
from .runtime import ClientSettings, SiteRuntime, site_config_from_context, site_runtime

log = logging.getLogger("secfpp.client")

app = ClientApp()

GLOBAL_KEY = "global-ctx"
EVAL_MODES = (*MODES, "zeroshot")
_STATE_ARRAYS = "private-prompt"
_STATE_META = "private-prompt-meta"


def _runtime(context: Context) -> tuple[SiteRuntime, ClientSettings]:
    settings = ClientSettings.from_run_config(dict(context.run_config))
    config = site_config_from_context(dict(context.node_config), settings)
    return site_runtime(config, settings), settings


def _config(message: Message) -> ConfigRecord:
    if "config" not in message.content.config_records:
        raise ValueError("message has no 'config' record")
    return message.content["config"]


def _mode(config: ConfigRecord, allowed: tuple[str, ...]) -> str:
    mode = str(config.get("mode", ""))
    if mode not in allowed:
        raise ValueError(f"config 'mode': expected one of {allowed}, got {mode!r}")
    return mode


def _received_global(message: Message) -> torch.Tensor | None:
    records = message.content.array_records
    if "arrays" not in records or GLOBAL_KEY not in records["arrays"]:
        return None
    return torch.from_numpy(records["arrays"][GLOBAL_KEY].numpy().copy())


def _restore_private(
    context: Context, runtime: SiteRuntime, run_name: str, newest_round: int
) -> StoredPrompt | None:
    """The site's private parts for this run, from memory or disk, if not newer than allowed."""
    stored = None
    if _STATE_ARRAYS in context.state.array_records:
        meta = context.state[_STATE_META]
        arrays = context.state[_STATE_ARRAYS]
        stored = StoredPrompt(
            run_name=str(meta["run-name"]),
            server_round=int(meta["server-round"]),
            local_ctx=torch.from_numpy(arrays["local-ctx"].numpy().copy()),
            global_ctx=(
                torch.from_numpy(arrays["global-ctx"].numpy().copy())
                if "global-ctx" in arrays
                else None
            ),
        )
    else:
        stored = LocalPromptStore(runtime.config.state_path).load(run_name)
    # Parts from another run, or from a later round of an earlier run with the same name,
    # belong to a different history: start fresh rather than mix them in.
    if stored is None or stored.run_name != run_name or stored.server_round > newest_round:
        return None
    return stored


def _keep_private(context: Context, runtime: SiteRuntime, stored: StoredPrompt) -> None:
    arrays = {"local-ctx": Array(stored.local_ctx.detach().cpu().numpy())}
    if stored.global_ctx is not None:
        arrays["global-ctx"] = Array(stored.global_ctx.detach().cpu().numpy())
    context.state[_STATE_ARRAYS] = ArrayRecord(arrays)
    context.state[_STATE_META] = ConfigRecord(
        {"run-name": stored.run_name, "server-round": stored.server_round}
    )
    LocalPromptStore(runtime.config.state_path).save(stored)


def _assemble_prompt(
    runtime: SiteRuntime, mode: str, received: torch.Tensor | None, stored: StoredPrompt | None
) -> HierarchicalPrompt:
    prompt = runtime.new_prompt()
    if mode in ("hierarchical", "local") and stored is not None:
        prompt.load_parts(local_ctx=stored.local_ctx)
    if mode == "local":
        if stored is not None and stored.global_ctx is not None:
            prompt.load_parts(global_ctx=stored.global_ctx)
    elif mode != "zeroshot" and received is not None:
        prompt.load_parts(global_ctx=received)
    return prompt


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train ``P_G`` (a copy) and ``P_L`` locally; reply with ``P_G`` only when it is shared."""
    runtime, settings = _runtime(context)
    config = _config(message)
    mode = _mode(config, MODES)
    server_round = int(config["server-round"])
    stored = _restore_private(context, runtime, settings.run_name, server_round - 1)
    prompt = _assemble_prompt(runtime, mode, _received_global(message), stored)
    use_local = mode != "global"
    result = train_prompt(
        runtime.backbone,
        prompt,
        runtime.text_inputs,
        runtime.train_features,
        runtime.train_labels,
        TrainConfig(
            epochs=int(config.get("local-epochs", 2)),
            batch_size=int(config.get("batch-size", 32)),
            lr=float(config.get("learning-rate", 0.01)),
            train_global=True,
            train_local=use_local,
            use_local=use_local,
            seed=settings.seed * 100_003 + server_round * 1_009 + runtime.config.data.partition_id,
        ),
    )
    _keep_private(
        context,
        runtime,
        StoredPrompt(
            run_name=settings.run_name,
            server_round=server_round,
            local_ctx=prompt.local_ctx.detach(),
            global_ctx=prompt.global_ctx.detach() if mode == "local" else None,
        ),
    )
    log.info(
        "%s round %d: train loss %.4f acc %.3f (%d examples, %.2fs)",
        runtime.config.site_id,
        server_round,
        result.loss,
        result.accuracy,
        result.num_examples,
        result.seconds,
    )
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "num-examples": result.num_examples,
                    "train-loss": result.loss,
                    "train-accuracy": result.accuracy,
                    "train-seconds": result.seconds,
                }
            ),
            "site": ConfigRecord({"site-id": runtime.config.site_id}),
        }
    )
    if mode != "local":
        content["arrays"] = ArrayRecord(
            {GLOBAL_KEY: Array(prompt.global_ctx.detach().cpu().numpy())}
        )
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Accuracy of the site's personalized prompt on its held-out images."""
    runtime, settings = _runtime(context)
    config = _config(message)
    mode = _mode(config, EVAL_MODES)
    server_round = int(config["server-round"])
    stored = _restore_private(context, runtime, settings.run_name, server_round)
    prompt = _assemble_prompt(runtime, mode, _received_global(message), stored)
    loss, accuracy = evaluate_prompt(
        runtime.backbone,
        prompt,
        runtime.text_inputs,
        runtime.test_features,
        runtime.test_labels,
        use_local=mode in ("hierarchical", "local"),
    )
    return Message(
        RecordDict(
            {
                "metrics": MetricRecord(
                    {
                        "num-examples": int(runtime.test_labels.numel()),
                        "accuracy": accuracy,
                        "loss": loss,
                    }
                ),
                "site": ConfigRecord(
                    {"site-id": runtime.config.site_id, "domain": runtime.data.domain}
                ),
            }
        ),
        reply_to=message,
    )
