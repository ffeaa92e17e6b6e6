"""Continuous batched decoding: rows (each with its own adapter slot, sampling and stops) share every
forward pass; new rows are prefilled and merged into the running KV cache between steps, finished rows
leave at once.

Failures stay with the row that causes them: each row's own work (its generator, sampling, logprobs,
detokenizing, stop strings, callbacks) is guarded per row, and a prefill pass that fails is retried one
request at a time, so only the request whose rows break it fails (`RowState.error`); its neighbours finish
with their normal output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from ftserve.engine.detokenize import decode_reply
from ftserve.engine.grammar import RowGrammar
from ftserve.engine.lora import BASE_SLOT, LoraContext
from ftserve.engine.sampling import Sampling, sample, shape_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextDelta:
    """New text of choice `index` (what a stream sends next; a possible stop-string prefix is held back)."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """Choice `index` has finished: its row's outputs (text, finish_reason, logprobs) are final."""

    index: int
    reason: str


RowEvent = TextDelta | Finished
# Receives a request's row events, from the thread that generates (the batcher, or a backend's loop).
Listener = Callable[[RowEvent], None]


@dataclass(eq=False)
class RowState:
    """The engine's own state of a row: set at submit and while generating, read by nobody else."""

    index: int = 0  # the row's choice index within its request (events name it)
    adapter: str | None = None  # adapter key within the base; None = the base
    listen: Listener | None = None
    cancelled: Callable[[], bool] | None = None
    grammar: RowGrammar | None = None  # the row's place in its constraint's grammar
    error: BaseException | None = None  # what failed this row alone
    abandoned: bool = False  # another row of its request failed: drop it at the next step
    job: Any = None  # the scheduler's request this row belongs to
    sent: int = 0  # characters of text sent as TextDelta
    slot: int = BASE_SLOT
    pending: int = 0  # sampled, not yet fed to the model
    gen: torch.Generator | None = None


@dataclass(eq=False)
class Row:
    """One sequence to generate. In: the prompt's token ids and the sampling (set by whoever makes the row; the
    engine never changes them). Out: what the engine fills in while generating. `state` is the engine's own."""

    prompt_ids: list[int]
    sampling: Sampling
    # Filled while generating:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    token_logprobs: list[float] = field(default_factory=list)
    stop_logprob: float | None = None  # of the end-of-text token that ended the row, when logprobs are on
    stop_token: int | None = None  # the end-of-text token that ended the row, if one did
    stop_top_logprobs: dict[int, float] | None = None
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    # With sampling.prompt_logprobs: per prompt token, its logprob and alternatives (None for the first).
    prompt_token_logprobs: list[float | None] = field(default_factory=list)
    prompt_top_logprobs: list[dict[int, float] | None] = field(default_factory=list)
    was_cancelled: bool = False
    state: RowState = field(default_factory=RowState, repr=False)


def attach(rows: list[Row], adapter: str | None, listen: Listener | None, cancelled: Callable[[], bool] | None) -> None:
    """A request's rows as a backend takes them at submit: their adapter, listener and cancellation check."""
    for i, row in enumerate(rows):
        row.state.index, row.state.adapter, row.state.listen, row.state.cancelled = i, adapter, listen, cancelled


def notify_finished(row: Row, reason: str) -> None:
    """Tell the row's listener it has finished (a listener that raises is logged: the row is finished anyway)."""
    if row.state.listen is None:
        return
    try:
        row.state.listen(Finished(row.state.index, reason))
    except Exception:  # the listener went away
        log.exception("a row listener failed")


def emit(row: Row, tok: PreTrainedTokenizerBase, final: bool) -> None:
    """Decode the row's tokens, cut at a stop string, and send the new text (holding back a possible stop prefix)."""
    listen = row.state.listen
    if not final and listen is None and not row.sampling.stop:
        return  # no listener and no stop string to find: decoding once at the end is enough
    text = decode_reply(tok, row.prompt_ids, row.token_ids)
    for stop in row.sampling.stop:
        cut = text.find(stop)
        if cut != -1:
            text, final = text[:cut], True
            row.finish_reason = "stop"
    if not final:
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        hold = max((len(s) - 1 for s in row.sampling.stop), default=0)
        text = text[: len(text) - hold] if hold else text
    if len(text) > row.state.sent:
        if listen is not None:
            listen(TextDelta(row.state.index, text[row.state.sent :]))
        row.state.sent = len(text)
    if final:
        row.text = text


def _draw(row: Row, logits: torch.Tensor, greedy: int) -> int:
    if row.sampling.temperature <= 0 and not row.sampling.shapes_logits:
        return greedy  # one argmax over the whole batch beats one per row
    return sample(shape_logits(logits, row.sampling, row.token_ids), row.sampling, row.state.gen)


def _draw_constrained(row: Row, grammar: RowGrammar, logits: torch.Tensor, greedy: int) -> int:
    """A token from the row's distribution restricted to what its grammar allows.

    The free draw is tried first and kept when the grammar allows it; only otherwise are the logits masked and
    the draw made again. Both are exact: the greedy pick over the allowed tokens is the free argmax when that is
    allowed, and a draw from p kept only when allowed (else drawn from p masked) is a draw from p masked. Top-p
    is the exception (the nucleus of p masked is not the nucleus of p, masked): it always masks first."""
    s = row.sampling
    allowed = grammar.allowed()
    if s.temperature <= 0 or s.top_p >= 1.0:
        first = _draw(row, logits, greedy)
        if first < allowed.shape[0] and allowed[first]:
            return first
    masked = grammar.mask(shape_logits(logits, s, row.token_ids), allowed)
    # numpy's argmax: a fraction of torch's on one CPU row
    return int(masked.numpy().argmax()) if s.temperature <= 0 else sample(masked, s, row.state.gen)


def advance(row: Row, logits: torch.Tensor, greedy: int, tok: PreTrainedTokenizerBase, stop_ids: set[int]) -> bool:
    """Sample the row's next token from its logits (`greedy`: their argmax); True when the row has finished.

    A constrained row draws from its logits masked by its grammar; its logprobs stay the model's own."""
    grammar = row.state.grammar
    token = _draw(row, logits, greedy) if grammar is None else _draw_constrained(row, grammar, logits, greedy)
    if row.sampling.logprobs is not None:
        lp = torch.log_softmax(logits.float(), -1)
        top = lp.topk(max(row.sampling.logprobs, 1))
        alternatives = {int(t): float(v) for v, t in zip(top.values, top.indices, strict=True)}
        if token in stop_ids:
            row.stop_logprob, row.stop_top_logprobs = float(lp[token]), alternatives
        else:
            row.token_logprobs.append(float(lp[token]))
            row.top_logprobs.append(alternatives)
    return accept(row, token, tok, stop_ids)


def accept(row: Row, token: int, tok: PreTrainedTokenizerBase, stop_ids: set[int]) -> bool:
    """Take the row's next token (from this engine or another one): stop tokens, stop strings, max_tokens
    and the text sent so far are handled here alone; True when the row has finished. A row with a grammar
    (the builtin engine's constrained rows) advances its matcher here too."""
    grammar = row.state.grammar
    if token in stop_ids:
        row.stop_token = token
        row.finish_reason = "stop"
        emit(row, tok, final=True)
        return True
    if grammar is not None:
        grammar.accept(token)
    row.token_ids.append(token)
    row.state.pending = token
    emit(row, tok, final=False)
    if row.finish_reason == "stop" or (grammar is not None and grammar.complete):
        row.finish_reason = "stop"  # a stop string, or a grammar that allows nothing but the end
        emit(row, tok, final=True)
        return True
    if len(row.token_ids) >= row.sampling.max_tokens:
        row.finish_reason = "length"
        emit(row, tok, final=True)
        return True
    return False


def prompt_logprobs(row: Row, logits: torch.Tensor) -> None:
    """The prompt tokens' logprobs from its prefill logits (`logits`: the row's last len(prompt) positions):
    position p predicts token p + 1; the first token has none."""
    ids = torch.tensor(row.prompt_ids[1:], dtype=torch.long)
    lp = torch.log_softmax(logits[:-1].float(), -1)
    picked = lp.gather(1, ids[:, None])[:, 0].tolist()
    top = lp.topk(max(row.sampling.logprobs or 0, 1), dim=-1)
    row.prompt_token_logprobs = [None, *picked]
    row.prompt_top_logprobs = [None] + [
        {int(t): float(v) for v, t in zip(vals, idx, strict=True)}
        for vals, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def _first_token(
    row: Row,
    logits: torch.Tensor | None,
    last: torch.Tensor,
    greedy: int,
    tok: PreTrainedTokenizerBase,
    stop_ids: set[int],
) -> bool:
    """A newly prefilled row: its generator, its prompt logprobs, its first token; True when it has finished."""
    seed = row.sampling.seed
    row.state.gen = torch.Generator().manual_seed(seed) if seed is not None else None
    if logits is not None:
        prompt_logprobs(row, logits)
    if row.sampling.max_tokens <= 0:  # scoring only (echo with max_tokens 0)
        row.finish_reason = "length"
        emit(row, tok, final=True)
        return True
    return advance(row, last, greedy, tok, stop_ids)


def _final_text(row: Row, tok: PreTrainedTokenizerBase) -> bool:
    emit(row, tok, final=True)
    return True


def guarded(row: Row, work: Callable[[], bool]) -> bool:
    """Run one row's own work; whatever it raises fails that row alone (finished, with `state.error`)."""
    try:
        return work()
    except Exception as exc:
        row.state.error = exc
        return True


def is_cancelled(row: Row) -> bool:
    """Whether the row should leave now: its client went away, or another row of its request failed."""
    check = row.state.cancelled
    return row.state.abandoned or guarded(row, lambda: check is not None and bool(check()))


# Prefill passes that keep every position's logits (prompt logprobs) are split to stay under this size.
FULL_LOGITS_BYTES = 256 * 1024 * 1024


class DecodeBatch:
    """The live rows of one base and their KV cache: left padded, every row's tokens end at the last column."""

    def __init__(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        stop_ids: set[int],
        device: torch.device,
        ctx: LoraContext,
    ) -> None:
        self.model, self.tok, self.stop_ids, self.device, self.ctx = model, tok, stop_ids, device, ctx
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.positions = torch.zeros((0, 1), dtype=torch.long, device=device)
        self.pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        self.vocab = int(getattr(getattr(model, "config", None), "vocab_size", None) or len(tok))

    def __len__(self) -> int:
        return len(self.rows)

    def _forward(  # type: ignore[no-untyped-def]
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        cache: DynamicCache,
        slots: list[int],
        keep: int = 1,
    ):
        """One pass; `keep`: the last positions whose logits to compute (0: all of them)."""
        self.ctx.set(slots)
        width = ids.shape[1]
        # The last positions by index, not by slice: a slice of a prefill's hidden states is not contiguous, and
        # torch's linear then runs the LM head as a batched matmul over a copy of its weight per row (SmolLM2
        # bf16 on CPU, 16 rows: 7 s instead of 30 ms). Indexing gives the LM head a contiguous input.
        last: int | torch.Tensor = keep
        if 0 < keep < width:
            last = torch.arange(width - keep, width, device=ids.device)
        try:
            return self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=last
            )
        finally:
            self.ctx.release()

    def admit(self, groups: list[list[Row]]) -> list[Row]:
        """Prefill new rows (each group: one request's rows) together, sample their first tokens and merge them
        into the batch; returns the rows already finished, failed ones (`state.error`) included.

        Rows asking for prompt logprobs get passes of their own that keep every position's logits (the others
        keep only the last); a pass that fails is retried one group at a time, so only its culprit fails.
        """
        scored = [g for g in groups if any(r.sampling.prompt_logprobs for r in g)]
        plain = [g for g in groups if not any(r.sampling.prompt_logprobs for r in g)]
        finished = self._admit_groups(plain, full=False) if plain else []
        chunk: list[list[Row]] = []
        for group in scored:
            rows = sum(len(g) for g in chunk) + len(group)
            width = max(len(r.prompt_ids) for g in [*chunk, group] for r in g)
            if chunk and rows * width * self.vocab * 4 > FULL_LOGITS_BYTES:
                finished += self._admit_groups(chunk, full=True)
                chunk = []
            chunk.append(group)
        if chunk:
            finished += self._admit_groups(chunk, full=True)
        return finished

    def _admit_groups(self, groups: list[list[Row]], full: bool) -> list[Row]:
        rows = [r for g in groups for r in g]
        try:
            logits, cache, mask, pos = self._prefill(rows, full)
        except Exception as exc:
            if len(groups) > 1:  # find the culprit: each request alone
                return [r for g in groups for r in self._admit_groups([g], full)]
            for r in rows:
                r.state.error = exc
            return rows
        width = mask.shape[1]
        last = logits[:, -1, :].float().cpu()
        greedy = last.argmax(-1).tolist()
        done = []
        for i, r in enumerate(rows):
            own = logits[i, width - len(r.prompt_ids) :] if full else None
            if guarded(r, partial(_first_token, r, own, last[i], greedy[i], self.tok, self.stop_ids)):
                done.append(r)
        if len(done) == len(rows):  # all finished at once (scoring only, say): nothing joins the batch
            return done
        self._merge(rows, cache, mask, pos[:, -1:] + 1)
        self._drop(done)
        return done

    def _prefill(self, rows: list[Row], full: bool) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
        """One forward pass over the rows' distinct prompts, left padded: (logits, cache, mask, positions) per row.
        Rows with the same prompt and adapter (a request's `n` choices, a reinforcement group) share one row of
        the pass; its cache and logits are copied to each of them, and each samples with its own generator."""
        keys = [(tuple(r.prompt_ids), r.state.slot) for r in rows]
        first: dict[tuple[tuple[int, ...], Any], int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        if len(first) == len(rows):
            return self._prefill_rows(rows, full)
        logits, cache, mask, pos = self._prefill_rows([rows[i] for i in first.values()], full)
        slot_of = {key: n for n, key in enumerate(first)}
        index = torch.tensor([slot_of[key] for key in keys], device=self.device)
        cache.batch_select_indices(index)
        return logits[index.to(logits.device)], cache, mask[index], pos[index]

    def _prefill_rows(
        self, rows: list[Row], full: bool
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
        """One forward pass over the rows' prompts, left padded: (logits, cache, mask, positions)."""
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self._forward(ids, mask, pos, cache, [r.state.slot for r in rows], keep=0 if full else 1)
        return out.logits.cpu() if full else out.logits, cache, mask, pos

    def _merge(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor) -> None:
        if self.cache is None or not self.rows:
            self.rows, self.cache, self.mask, self.positions = list(rows), cache, mask, pos
            return
        width = max(self.mask.shape[1], mask.shape[1])
        merged = []
        for (_, ok, ov), (_, nk, nv) in zip(_layers(self.cache), _layers(cache), strict=True):
            merged.append(
                (
                    torch.cat([_left_pad(ok, width), _left_pad(nk, width)]),
                    torch.cat([_left_pad(ov, width), _left_pad(nv, width)]),
                )
            )
        self.cache = DynamicCache(ddp_cache_data=merged)
        self.mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self.positions = torch.cat([self.positions, pos])
        self.rows.extend(rows)

    def step(self) -> list[Row]:
        """Feed every row's pending token and sample the next; returns the rows that finished."""
        cancelled = [r for r in self.rows if is_cancelled(r)]
        for r in cancelled:
            r.was_cancelled, r.finish_reason = True, r.finish_reason or "stop"
            if r.state.error is None and not r.state.abandoned:
                guarded(r, partial(_final_text, r, self.tok))
        self._drop(cancelled)
        if not self.rows:
            return cancelled
        assert self.cache is not None
        ids = torch.tensor([[r.state.pending] for r in self.rows], device=self.device)
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        out = self._forward(ids, self.mask, self.positions, self.cache, [r.state.slot for r in self.rows])
        self.positions = self.positions + 1
        logits = out.logits[:, -1, :].float().cpu()
        greedy = logits.argmax(-1).tolist()
        done = [
            r
            for i, r in enumerate(self.rows)
            if guarded(r, partial(advance, r, logits[i], greedy[i], self.tok, self.stop_ids))
        ]
        self._drop(done)
        return cancelled + done

    def _drop(self, done: list[Row]) -> None:
        """Remove finished rows from the batch and trim cache columns no remaining row uses."""
        if not done:
            return
        gone = {id(r) for r in done}
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows or self.cache is None:
            self.rows, self.cache = [], None
            return
        idx = torch.tensor(keep, device=self.device)
        self.mask = self.mask[idx]
        self.positions = self.positions[idx]
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self.mask = self.mask[:, start:]
        for layer, keys, values in _layers(self.cache):
            layer.keys = keys[idx, :, start:]
            layer.values = values[idx, :, start:]


def _layers(cache: DynamicCache) -> list[tuple[DynamicLayer, torch.Tensor, torch.Tensor]]:
    """Each layer's (store, keys, values); rows can be merged and dropped only in full-attention caches."""
    layers = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.is_sliding or layer.keys is None or layer.values is None:
            raise TypeError(f"continuous batching needs full-attention KV caches, not {type(layer).__name__}")
        layers.append((layer, layer.keys, layer.values))
    return layers


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
