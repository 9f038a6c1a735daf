"""Build a tiny llama-architecture model directory for the MLX servers.

The model has random weights (its output is gibberish) and exists only so that
vllm-mlx and mlx_lm.server can be started and exercised for protocol and speed
tests without any network access. Building it takes about a second.

Needs numpy, safetensors and tokenizers, which the backend venvs under
``.backends/`` have (through mlx-lm's transformers dependency); the main project
venv does not need them. Run it as::

    .backends/vllm-mlx/bin/python tests/support/tiny_model.py OUTDIR

The directory is complete when ``.complete`` exists in it; a complete directory is
left alone (pass ``--force`` to rebuild).

Note on the weights: the rows of the output projection that belong to the special
tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) are zero, so greedy
decoding never ends a reply early by chance; every request should set
``max_tokens`` (or stop strings) because the model never stops by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

SEED = 1234
VOCAB_SIZE = 512
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
MAX_POS = 2048

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
COMPLETE_MARK = ".complete"


def _training_text() -> list[str]:
    """A few kB of deterministic text (same tokenizer on every machine)."""
    words = [
        "the",
        "a",
        "an",
        "model",
        "server",
        "token",
        "stream",
        "request",
        "reply",
        "chat",
        "cell",
        "notebook",
        "python",
        "kernel",
        "magic",
        "route",
        "local",
        "fast",
        "slow",
        "queue",
        "wait",
        "busy",
        "idle",
        "error",
        "retry",
        "timeout",
        "health",
        "status",
        "ready",
        "load",
        "unload",
        "prompt",
        "answer",
        "user",
        "assistant",
        "system",
        "message",
        "content",
        "delta",
        "usage",
        "done",
        "json",
        "http",
        "port",
        "host",
        "name",
        "list",
        "table",
        "code",
        "data",
        "value",
        "key",
        "text",
        "line",
        "word",
        "number",
        "time",
        "is",
        "are",
        "was",
        "be",
        "run",
        "runs",
        "ran",
        "start",
        "stop",
        "kill",
        "restart",
        "send",
        "get",
        "put",
        "post",
        "and",
        "or",
        "not",
        "with",
        "from",
        "into",
        "over",
        "under",
        "for",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "as",
        "it",
        "this",
    ]
    lines = [
        "Hello! How are you today? I am fine, thank you.",
        "def main(argv):\n    return 0\n",
        "import json, os, sys\nprint(json.dumps({'a': 1, 'b': [2, 3]}))",
        "The quick brown fox jumps over the lazy dog. 0123456789",
        "What is the capital of France? Paris is the capital of France.",
        "Summarise this cell in one sentence, please.",
    ]
    state = SEED
    for i in range(400):
        n = 5 + i % 11
        sent = []
        for _ in range(n):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            sent.append(words[state % len(words)])
        lines.append(" ".join(sent).capitalize() + (".", "?", "!", ",")[i % 4])
    return lines


def _build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    if tok.get_vocab_size() > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer vocab {tok.get_vocab_size()} > {VOCAB_SIZE}")
    tok.save(str(out / "tokenizer.json"))


def _special_ids(out: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if any(v is None for v in ids.values()):
        raise RuntimeError(f"special tokens missing from tokenizer: {ids}")
    return ids


def _build_weights(out: Path, special_ids: dict[str, int]) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(SEED)
    head_dim = HIDDEN // HEADS

    def w(rows: int, cols: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(VOCAB_SIZE, HIDDEN, 0.5)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = w(HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * head_dim)
        tensors[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE)
        tensors[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    lm_head = w(VOCAB_SIZE, HIDDEN, 0.5)
    for tid in special_ids.values():
        lm_head[tid] = 0.0  # never picked greedily: replies do not stop by chance
    tensors["lm_head.weight"] = lm_head
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", "utf-8")


def _build_configs(out: Path, special_ids: dict[str, int]) -> None:
    eos = special_ids["<|im_end|>"]
    bos = special_ids["<|endoftext|>"]
    _write_json(
        out / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HIDDEN // HEADS,
            "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": MAX_POS,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        },
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POS,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
    )
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": bos, "eos_token_id": [eos], "pad_token_id": bos},
    )


def is_complete(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / COMPLETE_MARK).is_file() and all((p / f).is_file() for f in FILES)


def build_tiny_model(path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the tiny model into ``path`` (created if needed) and return it.

    Skips the work when ``path`` already holds a complete model. The files are
    built in a temporary sibling directory and moved into place, so a crash
    never leaves a half-written model that looks complete.
    """
    out = Path(path).resolve()
    if not force and is_complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        _build_tokenizer(tmp)
        ids = _special_ids(tmp)
        _build_weights(tmp, ids)
        _build_configs(tmp, ids)
        (tmp / COMPLETE_MARK).write_text("ok\n")
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--force"]
    if len(args) != 1:
        print(f"usage: {Path(__file__).name} OUTDIR [--force]", file=sys.stderr)
        return 2
    out = build_tiny_model(args[0], force="--force" in argv)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
