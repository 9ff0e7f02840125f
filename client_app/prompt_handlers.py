"""Train and evaluate handlers: everything that needs torch.

What a reply may carry is fixed here and in :mod:`client_app.secure_handlers`, nowhere else:
training metrics, the example count, the site id, and either the domain-level prompt ``P_G``
(baselines that share it), sealed secret shares (``secfpp``), or the clipped update and reduced
prompt in plaintext (``clustered``, the ablation twin). The class-level prompt ``P_L`` stays in
``context.state`` and the site's state directory.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from prompts.learner import MODES, HierarchicalPrompt
from prompts.training import TrainConfig, evaluate_prompt, train_prompt

from .local_store import LocalPromptStore, StoredPrompt
from .runtime import SiteRuntime, site_runtime
from .settings import ClientSettings, site_config_from_context

log = logging.getLogger("secfpp.client")

GLOBAL_KEY = "global-ctx"
#: Clustered modes train like ``hierarchical`` but share differently: ``secfpp`` seals secret
#: shares of the update and of z_i; ``clustered`` (the ablation twin) sends them in the clear.
CLUSTER_MODES = ("secfpp", "clustered")
TRAIN_MODES = (*MODES, *CLUSTER_MODES)
EVAL_MODES = (*TRAIN_MODES, "zeroshot")
_STATE_ARRAYS = "private-prompt"
#: Suffix of the slot that holds a round's ``P_L`` until the server commits the round.
PENDING = ".pending"
_DP_HISTORY = "dp-sgd-history"
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


def _received_global(message: Message, runtime: SiteRuntime) -> torch.Tensor | None:
    """The ``P_G`` a baseline server sent in full, if any."""
    records = message.content.array_records
    if "arrays" in records and GLOBAL_KEY in records["arrays"]:
        return torch.from_numpy(records["arrays"][GLOBAL_KEY].numpy().copy())
    return None


def _from_offset(offset, runtime: SiteRuntime) -> torch.Tensor | None:
    """SecFPP's ``P_G`` from the offset the server sent.

    The server holds cluster prompts as offsets from the public initial prompt, which depends
    on the backbone and is computed by the sites only.
    """
    if offset is None:
        return None
    offset = torch.from_numpy(offset.astype("float32"))
    if offset.numel() != runtime.global_init.numel():
        raise ValueError(
            f"the received P_G offset has {offset.numel()} values, this site's prompt has "
            f"{runtime.global_init.numel()} (another backbone or n-ctx?)"
        )
    return runtime.global_init + offset.reshape(runtime.global_init.shape)


def _restore_private(
    context: Context, runtime: SiteRuntime, run_name: str, newest_round: int
) -> StoredPrompt | None:
    """The site's private parts for this run, from memory or disk, if not newer than allowed.

    ``run_name`` may carry the :data:`PENDING` suffix: SecFPP keeps a round's new ``P_L``
    pending until the server says it committed that round.
    """
    stored = None
    if _STATE_ARRAYS + run_name in context.state.array_records:
        meta = context.state[_STATE_META + run_name]
        arrays = context.state[_STATE_ARRAYS + run_name]
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
    context.state[_STATE_ARRAYS + stored.run_name] = ArrayRecord(arrays)
    context.state[_STATE_META + stored.run_name] = ConfigRecord(
        {"run-name": stored.run_name, "server-round": stored.server_round}
    )
    LocalPromptStore(runtime.config.state_path).save(stored)


def _committed_private(
    context: Context, runtime: SiteRuntime, run_name: str, committed_round: int
) -> StoredPrompt | None:
    """SecFPP's two-phase ``P_L``: promote the pending round once the server committed it.

    A round the server skipped (it keeps the previous prompts) is rolled back here too: its
    pending ``P_L`` is dropped, so site and server stay in step.
    """
    pending = _restore_private(context, runtime, run_name + PENDING, 1 << 62)
    if pending is not None:
        if pending.server_round <= committed_round:
            _keep_private(
                context,
                runtime,
                StoredPrompt(run_name, pending.server_round, pending.local_ctx, pending.global_ctx),
            )
        else:
            log.info(
                "%s: round %d was not committed by the server; its P_L is dropped",
                runtime.config.site_id,
                pending.server_round,
            )
        for name in (_STATE_ARRAYS + run_name + PENDING, _STATE_META + run_name + PENDING):
            if name in context.state:
                del context.state[name]
        LocalPromptStore(runtime.config.state_path).path(run_name + PENDING).unlink(missing_ok=True)
    return _restore_private(context, runtime, run_name, committed_round)


def _assemble_prompt(
    runtime: SiteRuntime, mode: str, received: torch.Tensor | None, stored: StoredPrompt | None
) -> HierarchicalPrompt:
    prompt = runtime.new_prompt()
    if mode in ("hierarchical", "local", *CLUSTER_MODES) and stored is not None:
        prompt.load_parts(local_ctx=stored.local_ctx)
    if mode == "local":
        if stored is not None and stored.global_ctx is not None:
            prompt.load_parts(global_ctx=stored.global_ctx)
    elif mode != "zeroshot" and received is not None:
        prompt.load_parts(global_ctx=received)
    return prompt


def _train_config(
    training: dict, context: Context, runtime: SiteRuntime, server_round: int, use_local: bool
) -> TrainConfig:
    settings = ClientSettings.from_run_config(dict(context.run_config))
    epochs = int(training.get("local-epochs", 2))
    return TrainConfig(
        epochs=epochs,
        batch_size=int(training.get("batch-size", 32)),
        lr=float(training.get("learning-rate", 0.01)),
        train_global=True,
        train_local=use_local,
        use_local=use_local,
        seed=settings.seed * 100_003 + server_round * 1_009 + runtime.config.data.partition_id,
        dp=_dp_sgd(context, epochs),
    )


def _dp_sgd(context: Context, epochs: int):
    """DP-SGD settings when the run asks for ``dp = "dp-sgd"`` (else ``None``).

    The budget covers the whole run: ``num-server-rounds x local-epochs`` planned epochs.
    """
    run = dict(context.run_config)
    if run.get("dp", "none") != "dp-sgd":
        return None
    from prompts.dp import DPSGDConfig

    return DPSGDConfig(
        max_grad_norm=float(run.get("dp-clip", 1.0)),
        target_delta=float(run.get("dp-delta", 1e-5)),
        target_epsilon=float(run.get("dp-epsilon", 8.0)),
        planned_epochs=int(run.get("num-server-rounds", 1)) * epochs,
    )


def _train(runtime: SiteRuntime, prompt, config: TrainConfig, context: Context):
    """Train, carrying the DP-SGD accountant's history across rounds in the site's state."""
    import json

    history = ()
    if config.dp is not None and _DP_HISTORY in context.state.config_records:
        history = json.loads(str(context.state[_DP_HISTORY]["history"]))
    result = train_prompt(
        runtime.backbone,
        prompt,
        runtime.text_inputs,
        runtime.train_features,
        runtime.train_labels,
        config,
        dp_history=history,
    )
    if config.dp is not None:
        context.state[_DP_HISTORY] = ConfigRecord(
            {"history": json.dumps([list(h) for h in result.dp_history])}
        )
    return result


def train(message: Message, context: Context) -> Message:
    """Train ``P_G`` (a copy) and ``P_L`` locally; reply with ``P_G`` only when it is shared."""
    config = _config(message)
    mode = _mode(config, TRAIN_MODES)
    if mode in CLUSTER_MODES:
        return train_clustered(message, context)
    runtime, settings = _runtime(context)
    server_round = int(config["server-round"])
    stored = _restore_private(context, runtime, settings.run_name, server_round - 1)
    prompt = _assemble_prompt(runtime, mode, _received_global(message, runtime), stored)
    use_local = mode != "global"
    result = _train(
        runtime,
        prompt,
        _train_config(dict(config), context, runtime, server_round, use_local),
        context,
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
    _log_training(runtime, server_round, result)
    content = RecordDict({"site": ConfigRecord({"site-id": runtime.config.site_id})})
    if mode != "local":
        content["arrays"] = ArrayRecord(
            {GLOBAL_KEY: Array(prompt.global_ctx.detach().cpu().numpy())}
        )
    content["metrics"] = MetricRecord(
        {
            "num-examples": result.num_examples,
            "train-loss": result.loss,
            "train-accuracy": result.accuracy,
            "train-seconds": result.seconds,
            **({"epsilon": result.epsilon} if result.epsilon is not None else {}),
        }
    )
    return Message(content, reply_to=message)


def _log_training(runtime: SiteRuntime, server_round: int, result) -> None:
    log.info(
        "%s round %d: train loss %.4f acc %.3f (%d examples, %.2fs)",
        runtime.config.site_id,
        server_round,
        result.loss,
        result.accuracy,
        result.num_examples,
        result.seconds,
    )


def train_clustered(message: Message, context: Context) -> Message:
    """SecFPP and its twin: evaluate, train, and share the update and descriptor.

    Evaluation rides on the train message (the prompt as the last round left it). A SecFPP site
    that lost its session key (a restart) re-announces a fresh one instead of training; the
    server re-admits it from the next round.
    """
    from secpc import messages as wire
    from secpc.protocol import append_stats, clip

    request = wire.TrainRequest.from_content(message.content)
    if request.mode == "secfpp":
        from .secure_handlers import announce, has_session_key

        if not has_session_key(context):
            settings = ClientSettings.from_run_config(dict(context.run_config))
            site = site_config_from_context(dict(context.node_config), settings)
            announcement, _ = announce(context, site)
            log.warning("%s: no session key for this run (restarted?); re-announcing", site.site_id)
            return Message(
                wire.TrainReply(site.site_id, rekey=announcement).to_content(), reply_to=message
            )
    runtime, settings = _runtime(context)
    server_round = request.server_round
    stored = _committed_private(context, runtime, settings.run_name, request.committed_round)
    prompt = _assemble_prompt(runtime, request.mode, _from_offset(request.offset, runtime), stored)
    pre_loss, pre_acc = evaluate_prompt(
        runtime.backbone, prompt, runtime.text_inputs, runtime.test_features, runtime.test_labels
    )
    base_global = prompt.global_ctx.detach().clone()
    result = _train(
        runtime,
        prompt,
        _train_config(request.training, context, runtime, server_round, True),
        context,
    )
    _keep_private(
        context,
        runtime,
        StoredPrompt(
            run_name=settings.run_name + PENDING,
            server_round=server_round,
            local_ctx=prompt.local_ctx.detach(),
            global_ctx=None,
        ),
    )
    _log_training(runtime, server_round, result)
    protocol = request.protocol
    update = (prompt.global_ctx.detach() - base_global).cpu().double().numpy().ravel()
    offset = prompt.personalized() - runtime.global_init.to(runtime.device).unsqueeze(0)
    z = _descriptor(offset.cpu().double().numpy(), runtime, protocol)
    _, clipped_u = clip(update, protocol.update_bound)
    _, clipped_z = clip(z, protocol.z_bound)
    if protocol.dp_epsilon:
        # Distributed DP: the update's L2 norm is bounded before the statistics are appended.
        update = _l2_clip(update, protocol.dp_clip)
    # Training statistics ride on the secure sums: the server sees only cluster means of them.
    # DP-SGD does not cover loss and accuracy computed without noise, so they are not shared.
    covered = result.epsilon is None
    stats = (
        result.accuracy if covered else 0.0,
        min(result.loss / 10.0, 1.0) if covered else 0.0,
        clipped_u / max(1, update.size),
        clipped_z / max(1, z.size),
        1.0,
    )
    shared = append_stats(update, stats, protocol)
    reply = wire.TrainReply(
        site_id=runtime.config.site_id,
        evaluation=wire.Evaluation(pre_acc, pre_loss, int(runtime.test_labels.numel())),
        update_dim=int(update.size),
        train_seconds=result.seconds,
        epsilon=result.epsilon,
    )
    if request.mode == "secfpp":
        from .secure_handlers import seal_shares

        reply.shares, figures = seal_shares(context, request, shared, z)
        reply.crypto_seconds = figures["crypto-seconds"]
    else:
        # The twin sends exactly the values SecFPP secret-shares (clipped and quantized), so
        # the two differ by the crypto alone, not by rounding.
        from secpc.params import dequantize, quantize

        up, zp = protocol.update_params, protocol.z_params
        reply.plain = (
            dequantize(quantize(clip(shared, protocol.update_bound)[0], up), up),
            dequantize(quantize(clip(z, protocol.z_bound)[0], zp), zp),
        )
    return Message(reply.to_content(), reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """Accuracy of the site's personalized prompt on its held-out images."""
    runtime, settings = _runtime(context)
    config = _config(message)
    mode = _mode(config, EVAL_MODES)
    server_round = int(config["server-round"])
    if mode in CLUSTER_MODES:
        from secpc import messages as wire

        request = wire.EvaluateRequest.from_content(message.content)
        received = _from_offset(request.offset, runtime)
        stored = _committed_private(context, runtime, settings.run_name, request.committed_round)
    else:
        received = _received_global(message, runtime)
        stored = _restore_private(context, runtime, settings.run_name, server_round)
    prompt = _assemble_prompt(runtime, mode, received, stored)
    loss, accuracy = evaluate_prompt(
        runtime.backbone,
        prompt,
        runtime.text_inputs,
        runtime.test_features,
        runtime.test_labels,
        use_local=mode in ("hierarchical", "local", *CLUSTER_MODES),
    )
    examples = int(runtime.test_labels.numel())
    if mode in CLUSTER_MODES:
        reply = wire.EvaluateReply(
            runtime.config.site_id, wire.Evaluation(accuracy, loss, examples)
        )
        return Message(reply.to_content(), reply_to=message)
    return Message(
        RecordDict(
            {
                "metrics": MetricRecord(
                    {"num-examples": examples, "accuracy": accuracy, "loss": loss}
                ),
                "site": ConfigRecord({"site-id": runtime.config.site_id}),
            }
        ),
        reply_to=message,
    )


def _l2_clip(values, bound: float):
    """Scale ``values`` down to L2 norm ``bound`` if it is larger."""
    import numpy as np

    norm = float(np.linalg.norm(values))
    return values * (bound / norm) if norm > bound else values


def _descriptor(prompt_offset, runtime: SiteRuntime, protocol):
    """The site's reduced descriptor ``z_i`` (:mod:`prompts.descriptor`), ``z-dim`` long.

    Image-statistics blocks (mean and spread of the frozen training features) carry the visual
    domain, which the prompts alone do not; the prompt block joins with a positive
    ``descriptor-prompt-weight``. Blocks split ``z-dim`` evenly; any remainder is zero.
    """
    import numpy as np

    from prompts.descriptor import DescriptorConfig, site_descriptor

    blocks = 3 if protocol.descriptor_prompt_weight > 0 else 2
    config = DescriptorConfig(
        block_dim=max(1, protocol.z_dim // blocks),
        prompt_weight=protocol.descriptor_prompt_weight,
        seed=protocol.projection_seed,
    )
    z = site_descriptor(prompt_offset, runtime.train_features.cpu().numpy(), config)
    return np.pad(z, (0, max(0, protocol.z_dim - z.size)))[: protocol.z_dim]
