"""OpenAI's `reinforcement` method, GRPO-style: per step, a group of completions per prompt sampled by ftserve's
engine with the policy's current LoRA weights (training/rollouts), each graded as it finishes (ftserve/graders,
in a pool, while the other groups still generate), group-relative advantages, then TRL's GRPO loss
(methods/rft_loss) and one optimizer step. A job stopped while its step samples or grades abandons the step
before its optimizer step (StepAbandoned), so a cancel or pause lands in about a second, not after the step. On a
torchrun gang each rank samples, grades and backpropagates its share of a step's prompts with its own engine; the
loss's denominator and the metrics are the whole step's (a gang's step is never abandoned: its ranks would leave
their lockstep, so a stop lands at the check between steps)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel
from pydantic import TypeAdapter
from transformers import PreTrainedTokenizerBase

from ftserve import graders
from ftserve.core.config import Settings
from ftserve.core.methods.reinforcement import REINFORCEMENT
from ftserve.core.schemas.graders import Grader as WireGrader
from ftserve.core.schemas.graders import GraderErrors
from ftserve.graders.base import Grader, GradeResult, Sample
from ftserve.graders.http_judge import HttpJudge, judge_url
from ftserve.graders.multi import Multi
from ftserve.models.tools import parse_tool_calls
from ftserve.training.config import TrainingConfig
from ftserve.training.export import RESULT_COLUMNS
from ftserve.training.hyperparams import ReinforcementResolved
from ftserve.training.methods.base import MethodJob, Metrics, StepAbandoned, StepOutcome, StepWarning
from ftserve.training.methods.rft_data import PromptItem, load_prompts
from ftserve.training.methods.rft_loss import GrpoConfig, backward_step, group_advantages
from ftserve.training.ports import JobStopped, JobStore
from ftserve.training.rank import SINGLE, Gang
from ftserve.training.rollouts import STOP_POLL_SECONDS, Rollouts, Row, Sampling
from ftserve.training.tokenize import TokenizeStats
from ftserve.training.trainer import LoraTrainer

RFT_COLUMNS = ["train_reward_mean", "valid_reward_mean", "train_sample_tokens_mean", "train_grader_errors"]
# Completions per forward pass of the loss (their rows padded to the longest of them).
ROWS_PER_PASS = 8
# Sampling temperature of rollouts and evaluations (TRL's GRPO default): the policy's own distribution.
TEMPERATURE = 1.0


@dataclass
class Graded:
    """One sampled completion: its row and its grade."""

    row: Row
    grade: GradeResult

    @property
    def completion(self) -> list[int]:
        """The sampled tokens, with the stop token that ended them (it is trained on, as TRL does)."""
        stop = [] if self.row.stop_token is None else [self.row.stop_token]
        return self.row.token_ids + stop


@dataclass
class _Tally:
    """Graded samples as sums: a gang adds every rank's (fixed-size vectors, the same on every rank whatever it
    sampled), so the metrics are the whole step's."""

    count: float = 0.0
    reward: float = 0.0
    reward_squares: float = 0.0
    lengths: float = 0.0
    errors: float = 0.0
    subs: dict[str, list[float]] = field(default_factory=dict)  # sub-grader → [reward sum, count]

    def add(self, g: Graded) -> None:
        self.count += 1
        self.reward += g.grade.reward
        self.reward_squares += g.grade.reward**2
        for name, value in g.grade.sub_rewards.items():
            sums = self.subs.setdefault(name, [0.0, 0.0])
            sums[0] += value
            sums[1] += 1
        self.errors += int(_failed(g.grade.errors))
        self.lengths += len(g.completion)

    def vector(self, names: tuple[str, ...]) -> list[float]:
        """The sums, the sub-graders' in the order of `names` (the grader's, not what this rank happened to see)."""
        head = [self.count, self.reward, self.reward_squares, self.lengths, self.errors]
        return head + [v for name in names for v in self.subs.get(name, [0.0, 0.0])]

    @classmethod
    def from_vector(cls, values: list[float], names: tuple[str, ...]) -> _Tally:
        count, reward, squares, lengths, errors = values[:5]
        subs = {name: values[5 + 2 * i : 7 + 2 * i] for i, name in enumerate(names)}
        return cls(count, reward, squares, lengths, errors, {k: v for k, v in subs.items() if v[1]})

    def std(self) -> float:
        """The rewards' (unbiased) standard deviation."""
        if self.count < 2:
            return 0.0
        return math.sqrt(max(0.0, (self.reward_squares - self.reward**2 / self.count) / (self.count - 1)))

    def metrics(self, prefix: str) -> Metrics:
        n = max(self.count, 1.0)
        out: Metrics = {f"{prefix}_reward_mean": self.reward / n}
        out.update({f"{prefix}_reward_mean_{k}": total / seen for k, (total, seen) in self.subs.items()})
        out[f"{prefix}_sample_tokens_mean"] = self.lengths / n
        out[f"{prefix}_grader_errors"] = self.errors
        return out


def _failed(errors: GraderErrors) -> bool:
    return any(value is True for value in errors.model_dump().values())


class Reinforcement:
    """Reinforcement fine-tuning on prompts with a grader."""

    csv_columns = RESULT_COLUMNS + RFT_COLUMNS

    def __init__(
        self,
        model: PeftModel,
        tok: PreTrainedTokenizerBase,
        train: list[PromptItem],
        valid: list[PromptItem],
        grader: Grader,
        rollouts: Rollouts,
        hp: ReinforcementResolved,
        max_completion: int,
        seed: int,
        device: torch.device,
        workers: int = 4,
        release: Callable[[], None] | None = None,
        stopped: Callable[[], bool] | None = None,
        gang: Gang = SINGLE,
    ) -> None:
        self.model, self.tok, self.train, self.valid = model, tok, train, valid
        self.n_train, self.n_valid = len(train), len(valid)
        self.grader, self.rollouts, self.hp = grader, rollouts, hp
        self.max_completion, self.seed, self.device = max_completion, seed, device
        self.loss = GrpoConfig()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grader")
        self.release = release  # what the job's grader holds (a judge's client and key), dropped at close
        self.stopped = stopped  # whether the job is no longer ours: asked while a training step samples and grades
        self.gang = gang
        # The sub-grader names every rank sums metrics for, in one order, from the grader itself.
        self.subs = tuple(grader.graders) if isinstance(grader, Multi) else ()

    def prepare(self, trainer: LoraTrainer, resumed: bool) -> str | None:
        self.rollouts.publish()
        return (
            f"Sampling {self.hp.group_size} answers per prompt (compute_multiplier {self.hp.compute_multiplier}) of "
            f"up to {self.max_completion} tokens with ftserve's engine on the policy's live weights"
        )

    def train_step(self, trainer: LoraTrainer, indices: list[int], step: int) -> StepOutcome:
        """Sample and grade a group per prompt, then one optimizer step on TRL's GRPO loss. In a gang, this rank's
        share of the prompts (a group never spans ranks); the loss is over the whole step's completion tokens, so
        the gradients the trainer sums over the gang are one process's."""
        group = self.hp.group_size
        mine = self._share(len(indices))
        began = time.monotonic()
        graded = self._sample([self.train[indices[k]] for k in mine], mine, group, self._seed(step), self.stopped)
        sampled = time.monotonic() - began
        advantages = group_advantages(torch.tensor([g.grade.reward for g in graded]), group)
        (total,) = self.gang.sums([float(sum(len(g.completion) for g in graded))])
        trainer.begin_step()
        loss = self._backward(trainer, graded, advantages, int(total))
        trainer.finish_step()
        self.rollouts.publish()
        tally = _Tally()
        for g in graded:
            tally.add(g)
        tokens = sum(len(self.train[indices[k]].ids) for k in mine) * group + tally.lengths
        summed = self.gang.sums([loss, tokens, *tally.vector(self.subs)])
        (slowest,) = self.gang.maxes([sampled])
        whole = _Tally.from_vector(summed[2:], self.subs)
        metrics: Metrics = {"train_loss": summed[0], "train_mean_token_accuracy": None, **whole.metrics("train")}
        metrics["train_reward_std"] = whole.std()
        metrics["rollout_seconds"] = slowest
        return StepOutcome(metrics, int(summed[1]))

    def evaluate(self, trainer: LoraTrainer, indices: list[int] | None, prefix: str, step: int) -> Metrics:
        """Every eval_interval steps of the job (and at each epoch's end), the mean reward of one answer per
        validation prompt over eval_samples of them (the same ones each time, so evaluations compare). The
        schedule is the job's step number's, so a resumed run keeps it. In a gang each rank answers its share."""
        if prefix == "valid" and step % self.hp.eval_interval != 0:
            return {}
        prompts = self.valid[: self.hp.eval_samples]
        mine = self._share(len(prompts))
        tally = _Tally()
        for g in self._sample([prompts[k] for k in mine], mine, 1, self.seed):
            tally.add(g)
        whole = _Tally.from_vector(self.gang.sums(tally.vector(self.subs)), self.subs)
        return {f"{prefix}_loss": None, **whole.metrics(prefix)}

    def step_message(self, metrics: Metrics) -> str:
        text = f"training loss={metrics['train_loss']:.4f}, reward={metrics['train_reward_mean']:.4f}"
        if metrics.get("valid_reward_mean") is not None:
            text += f", validation reward={metrics['valid_reward_mean']:.4f}"
        return text

    def health(self, metrics: dict[str, Any]) -> StepWarning | None:
        return None

    def close(self) -> None:
        """Stop the grader pool (grades not started are dropped: a step that failed mid-sampling left them), the
        sampling engine's thread, and what the grader holds; each even if the one before failed."""
        try:
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            try:
                self.rollouts.close()
            finally:
                if self.release is not None:
                    self.release()

    def _seed(self, step: int) -> int:
        """The rollouts' seed at the job's step `step`: a resumed run samples as an uninterrupted one would."""
        return (self.seed * 1_000_003 + step * 7_919) % 2**31

    def _share(self, count: int) -> list[int]:
        """The positions of this rank's prompts among a step's (or an evaluation's) `count`: every size-th."""
        return list(range(self.gang.rank, count, self.gang.size))

    def _sample(
        self,
        prompts: list[PromptItem],
        positions: list[int],
        n: int,
        seed: int,
        stopped: Callable[[], bool] | None = None,
    ) -> list[Graded]:
        """n answers per prompt, each graded in the pool as soon as its prompt's group finishes. Prompt i is at
        `positions[i]` in its step: its j-th answer's seed follows from that, not from the rows this process
        samples, so one process and a gang draw every answer alike. With `stopped` (a training step's; an
        evaluation runs to its end), StepAbandoned once it says so, while the answers are sampled or graded: the
        grades not started are dropped, one running finishes in the pool (its grader's own time limit bounds it)."""
        futures: dict[int, list[Future[GradeResult]]] = {}

        def on_group(i: int, rows: list[Row]) -> None:
            futures[i] = [self.pool.submit(self._grade, prompts[i], row) for row in rows]

        def sampling(k: int) -> Sampling:
            row = positions[k // n] * n + k % n
            return Sampling(max_tokens=self.max_completion, temperature=TEMPERATURE, seed=(seed + row) % 2**31)

        try:
            groups = self.rollouts.sample([p.ids for p in prompts], n, sampling, on_group, stopped)
            pending = [f for fs in futures.values() for f in fs]
            while stopped is not None and wait(pending, STOP_POLL_SECONDS).not_done:
                if stopped():
                    raise StepAbandoned("the job stopped while its rollouts were graded")
        except StepAbandoned:
            for future in (f for fs in futures.values() for f in fs):
                future.cancel()
            raise
        return [
            Graded(row, future.result())
            for i, rows in enumerate(groups)
            for row, future in zip(rows, futures[i], strict=True)
        ]

    def _grade(self, prompt: PromptItem, row: Row) -> GradeResult:
        calls: list[dict[str, Any]] = []
        if prompt.tools:
            _content, parsed = parse_tool_calls(row.text, set(prompt.tools))
            calls = [{"name": c.name, "arguments": c.arguments} for c in parsed]
        try:
            return self.grader.grade(Sample.from_text(row.text, calls), prompt.item)
        except Exception as exc:  # a grader's own failure scores 0, flagged; it never ends the job
            return GradeResult.failed(other_error=True, python_grader_runtime_error_details=str(exc)[:500])

    def _backward(self, trainer: LoraTrainer, graded: list[Graded], advantages: torch.Tensor, total: int) -> float:
        rows = [(g.row.prompt_ids, g.completion) for g in graded]
        pad = int(self.tok.pad_token_id or 0)
        return backward_step(
            self.model, rows, advantages, self.loss, trainer.backward, pad, self.device, ROWS_PER_PASS, total=total
        )


class ReinforcementTraining:
    """The reinforcement method's training side: prompts as tokens, then Reinforcement with its grader and the
    engine that samples for it."""

    method = REINFORCEMENT
    unit = "prompts"
    dropped_why = "with no room left for an answer"
    block_mask = False

    def tokenize(
        self, settings: Settings, file_id: str, tok: PreTrainedTokenizerBase, config: TrainingConfig
    ) -> tuple[list[Any], TokenizeStats]:
        return load_prompts(settings, file_id, tok, config.max_seq_len, config.max_completion_tokens)

    def build(self, job: MethodJob, train: list[Any], valid: list[Any]) -> Reinforcement:
        spec, settings = job.spec, job.settings
        assert job.hp.reinforcement is not None
        limits = graders.limits_for(settings.python_grader_timeout_seconds, settings.python_grader_memory_bytes)
        wire = _grader_model(spec.method_config)
        judging, release = _judging(job, wire)
        try:
            grader = graders.build(wire, limits, judging)
            rollouts = Rollouts(job.model, job.tok, settings.engine(), job.device, spec.id)
        except BaseException:
            if release is not None:  # the judge's key made for the job is revoked even if the job never starts
                release()
            raise
        return Reinforcement(
            job.model,
            job.tok,
            train,
            valid,
            grader,
            rollouts,
            job.hp.reinforcement,
            job.config.max_completion_tokens,
            spec.seed,
            job.device,
            release=release,
            # A gang's ranks would each see the stop at their own moment and leave the step's collectives out of
            # step: on a gang the loop's check between steps (rank 0's, broadcast) stops it instead.
            stopped=_stopped(job.store) if job.gang.size == 1 else None,
            gang=job.gang,
        )


def _stopped(store: JobStore) -> Callable[[], bool]:
    """Whether the job is no longer ours to train, by the loop's own check (training/loop): asked mid-step, it
    lets the loop's check before the step say what follows (stop, pause, or the step again)."""

    def stopped() -> bool:
        try:
            store.check()
        except JobStopped:
            return True
        return False

    return stopped


def _judging(job: MethodJob, wire: Any) -> tuple[graders.JudgeConfig, Callable[[], None] | None]:
    """A judge for the grader's model graders, if it has any: the serving path over HTTP, as the job's org (a key
    made for the job, revoked when it ends); and what to release at the end."""
    map_ = job.settings.grader_model_map
    if not uses_a_judge(wire):
        return graders.JudgeConfig(model_map=map_), None
    url = judge_url(job.settings, serves_inference=True)
    authorization = job.store.judge_authorization()
    judge = HttpJudge(url or "http://127.0.0.1", authorization)

    def release() -> None:
        judge.close()
        job.store.revoke_judge_authorization()

    return graders.JudgeConfig(judge=judge, model_map=map_), release


def uses_a_judge(wire: Any) -> bool:
    """Whether the grader (or a sub-grader of a multi) is a model grader."""
    if wire.type in ("score_model", "label_model"):
        return True
    if wire.type == "multi":
        subs = wire.graders.values() if isinstance(wire.graders, dict) else [wire.graders]
        return any(uses_a_judge(sub) for sub in subs)
    return False


def _grader_model(config: dict[str, Any]) -> Any:
    """The job's grader as its wire model (stored as sent; job creation checked it)."""
    return _GRADER.validate_python(config["grader"])


_GRADER: TypeAdapter[Any] = TypeAdapter(WireGrader)
