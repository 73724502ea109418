"""The encoder tasks at the engine seam, on tiny random BERTs loaded through the production
loader; expected values come from plain transformers, computed independently here."""

import asyncio

import pytest
import torch

from engines import EngineError, ErrorCode, RequestContext
from engines.tasks import Task
from tests.helpers import reference_logits

TEXTS = ["The capital of France is [MASK].", "Hello world", "A much longer sentence about a [MASK] and a [MASK] in Paris."]
CTX = RequestContext("test")


def ids_of(engine, texts):
    return [engine.tokenizer.encode(t) for t in texts]


def test_tasks_are_inferred_from_architectures(encoder_engines):
    for task, engine in encoder_engines.items():
        assert engine.capabilities.tasks == frozenset({Task(task)})


async def test_sequence_classification_matches_reference(encoder_engines, tiny_bert_dirs):
    engine = encoder_engines["sequence_classification"]
    results = await engine.classify(ids_of(engine, TEXTS), CTX)
    for result, (ids, logits) in zip(results, reference_logits(tiny_bert_dirs["sequence_classification"], "BertForSequenceClassification", TEXTS)):
        assert result.labels == ("negative", "neutral", "positive") and result.prompt_tokens == len(ids)
        assert torch.allclose(torch.tensor(result.logits), logits, atol=1e-5)


async def test_token_classification_matches_reference(encoder_engines, tiny_bert_dirs):
    engine = encoder_engines["token_classification"]
    results = await engine.classify_tokens(ids_of(engine, TEXTS), CTX)
    for result, (ids, logits) in zip(results, reference_logits(tiny_bert_dirs["token_classification"], "BertForTokenClassification", TEXTS)):
        assert result.token_ids == tuple(ids) and result.labels[1] == "B-PER"
        assert torch.allclose(torch.tensor(result.logits), logits, atol=1e-5)


async def test_fill_mask_matches_reference(encoder_engines, tiny_bert_dirs):
    engine = encoder_engines["fill_mask"]
    masked = [TEXTS[0], TEXTS[2]]
    results = await engine.fill_mask(ids_of(engine, masked), CTX)
    mask_id = engine.tokenizer.hf.mask_token_id
    for result, (ids, logits) in zip(results, reference_logits(tiny_bert_dirs["fill_mask"], "BertForMaskedLM", masked)):
        positions = [i for i, t in enumerate(ids) if t == mask_id]
        assert result.positions == tuple(positions) and len(result.logits) == len(positions)
        assert torch.allclose(torch.tensor(result.logits), logits[positions], atol=1e-5)


async def test_concurrent_requests_equal_singles(encoder_engines):
    engine = encoder_engines["sequence_classification"]
    ids = ids_of(engine, [f"Review number {i}: {'great' if i % 2 else 'terrible'} product" for i in range(20)])
    singles = [(await engine.classify([x], CTX))[0].logits for x in ids]
    together = await asyncio.gather(*(engine.classify([x], CTX) for x in ids))
    for one, many in zip(singles, together):
        assert torch.allclose(torch.tensor(one), torch.tensor(many[0].logits), atol=1e-6)


async def test_wrong_task_and_bad_inputs(encoder_engines):
    clf = encoder_engines["sequence_classification"]
    with pytest.raises(EngineError) as exc:
        await clf.fill_mask(ids_of(clf, TEXTS[:1]), CTX)
    assert exc.value.code is ErrorCode.UNSUPPORTED and exc.value.reason == "unsupported_model"
    mlm = encoder_engines["fill_mask"]
    with pytest.raises(EngineError, match="MASK"):
        await mlm.fill_mask(ids_of(mlm, ["no mask here"]), CTX)
    with pytest.raises(EngineError) as exc:
        await clf.classify([[101] * 500], CTX)
    assert exc.value.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(EngineError) as exc:
        await clf.classify([[]], CTX)
    assert exc.value.param == "input"


async def test_both_engines_implement_the_whole_protocol(encoder_engines, tiny_engine):
    from engines.protocol import Engine

    for engine in [tiny_engine, *encoder_engines.values()]:
        assert isinstance(engine, Engine)
    with pytest.raises(EngineError) as exc:
        await tiny_engine.classify([[1, 2]], CTX)
    assert exc.value.reason == "unsupported_model"
