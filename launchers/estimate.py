"""GPU- and CPU-hours per stage of a planned launch, from token counts and stated throughputs.

A dry run with `estimate=<name>` (conf/estimate/) prints this after the sbatch files. Work counts
are derived from the config (patients, stays per patient, splits, narrative sections, max_tokens,
epochs, shards, GPUs per task) and from the prompts the code builds; what a config cannot say
(characters per token, throughputs, load times) is an `Assumed` value with its reason, and every
assumption that entered the numbers is printed beside them. GPU stages are counted in GPU-hours
(all GPUs a task holds, load time included), CPU stages in CPU-hours; each stage's time per task
is checked against its `resources.<stage>.time_min`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from clinsynth.letters.devset import DEV_LETTERS

if TYPE_CHECKING:
    from launchers.plan import Plan, PlannedStage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Assumed(_Strict):
    """A number the config cannot derive, with where it comes from (printed with the estimate)."""

    value: float = Field(gt=0)
    why: str = Field(min_length=1)


class Histogram(_Strict):
    """Share of patients with k letters when every inpatient stay gets one."""

    shares: dict[int, float]
    why: str = Field(min_length=1)

    def mean_capped(self, cap: int | None) -> float:
        total = sum(self.shares.values())
        return sum(min(k, cap or k) * s for k, s in self.shares.items()) / total


class PassRates(_Strict):
    template: Assumed
    llm: Assumed


class Engine(_Strict):
    """One vLLM engine of a model preset on the GPUs of one task."""

    prefill_tokens_per_s: Assumed
    decode_tokens_per_s: Assumed
    load_min: Assumed


class TrainAssumptions(_Strict):
    params_b: dict[str, Assumed]
    mfu: Assumed
    peak_tflops: Assumed
    startup_min: Assumed


class CpuRates(_Strict):
    """Per CPU core."""

    cohort_patients_per_s: Assumed
    resources_per_patient: Assumed
    ingest_resources_per_s: Assumed
    sample_specs_per_s: Assumed
    template_letters_per_s: Assumed
    verify_letters_per_s: Assumed
    dataset_letters_per_s: Assumed
    rules_letters_per_s: Assumed
    evaluate_docs_per_s: Assumed
    export_records_per_s: Assumed


class Estimate(_Strict):
    """conf/estimate/<name>.yaml: the assumptions behind a dry run's GPU-hour estimate."""

    gpu: str
    patients: Assumed | None = None
    letters_per_patient: Histogram
    chars_per_token: Assumed
    letter_chars: Assumed
    answer_chars: Assumed
    generate_prompt_chars: Assumed
    generate_output_tokens: Assumed
    verify_pass_rate: PassRates
    engines: dict[str, Engine]
    train: TrainAssumptions
    cpu: CpuRates


@dataclass
class StageEstimate:
    stage: str
    work: str
    tasks: int
    parallel: int  # tasks running at once
    gpus_per_task: int
    gpu_hours: float | None
    cpu_hours: float | None
    task_hours: float | None  # wall-clock of one task, load included
    limit_hours: float

    @property
    def wall_hours(self) -> float | None:
        if self.task_hours is None:
            return None
        return self.task_hours * math.ceil(self.tasks / max(1, self.parallel))


@dataclass
class _Work:
    """The counts the stages share, derived once per plan from the config (`derived` says from which
    keys), and the assumptions that entered the numbers (`used`)."""

    est: Estimate
    plain: dict[str, Any]
    derived: list[str] = field(default_factory=list)
    used: dict[str, Assumed | Histogram] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _cache: dict[str, float] = field(default_factory=dict)

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.plain
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def use(self, name: str, a: Assumed) -> float:
        self.used[name] = a
        return a.value

    def tokens(self, chars: float) -> float:
        return chars / self.use("chars_per_token", self.est.chars_per_token)

    def once(self, key: str, make: Callable[[], float]) -> float:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # ---- counts every stage shares

    def patients(self) -> float:
        def make() -> float:
            if self.get("source.kind", "synthetic") == "synthetic":
                n = float(self.get("cohort.patients"))
                self.derived.append(f"patients {n:,.0f} (cohort.patients)")
                return n
            if self.est.patients is None:
                raise _Unknown(
                    f"source={self.get('source.kind')}: the number of patients is not in the config; "
                    "set estimate.patients.value=N (and .why)"
                )
            return self.use("patients", self.est.patients)

        return self.once("patients", make)

    def letters(self) -> float:
        def make() -> float:
            cap = self.get("sample.sampler.stays_per_patient")
            per = self.est.letters_per_patient.mean_capped(cap)
            self.used["letters_per_patient"] = self.est.letters_per_patient
            n = self.patients() * per
            self.derived.append(
                f"letters {n:,.0f} = patients x {per:.3f} (sample.sampler.stays_per_patient={cap} "
                "over letters_per_patient)"
            )
            return n

        return self.once("letters", make)

    def split(self, name: str) -> float:
        splits = self.get("sample.sampler.splits") or {}
        total = sum(float(v) for v in splits.values()) or 1.0
        return float(splits.get(name, 0.0)) / total

    def test_letters(self) -> float:
        def make() -> float:
            n = self.letters() * self.split("test") if self.get("extract.test_letters", True) else 0.0
            dev = len(DEV_LETTERS) if self.get("extract.dev_letters", True) else 0
            self.derived.append(
                f"letters to extract {n + dev:,.0f} = test split {self.split('test'):.2f} "
                f"(sample.sampler.splits) of the letters + {dev} development letters (extract.dev_letters)"
                + ("; extract.letters: not counted" if self.get("extract.letters") else "")
            )
            return n + dev

        return self.once("test_letters", make)

    def llm_letters(self) -> bool:
        return self.get("generate.letters.mode", "template") != "template"

    def pass_rate(self) -> float:
        if self.llm_letters():
            return self.use("verify_pass_rate.llm", self.est.verify_pass_rate.llm)
        return self.use("verify_pass_rate.template", self.est.verify_pass_rate.template)

    def calls_per_letter(self) -> float:
        """LLM calls per letter: hybrid writes each narrative section the recipe has (the sampler's
        section probabilities per letter type), llm writes the whole letter in one call."""
        mode = self.get("generate.letters.mode", "template")
        if mode == "llm":
            return 1.0
        if mode == "template":
            return 0.0
        narrative = list(self.get("generate.letters.narrative_sections") or [])
        types = self.get("sample.sampler.letter_types") or {}
        sections = self.get("sample.sampler.sections") or {}
        total = sum(float(w) for w in types.values()) or 1.0
        calls = sum(
            float(w) / total * sum(float((sections.get(t) or {}).get(s, 0.0)) for s in narrative)
            for t, w in types.items()
        )
        self.derived.append(
            f"LLM calls per letter {calls:.2f} (generate.letters.narrative_sections over "
            "sample.sampler.letter_types x sections)"
        )
        return calls

    def example_tokens(self) -> float:
        def make() -> float:
            from clinsynth.training.chat import prompt_messages

            schema = str(self.get("dataset.schema_in_prompt", "compact"))
            overhead = sum(len(m["content"]) for m in prompt_messages("", schema_in_prompt=schema))
            letter = self.use("letter_chars", self.est.letter_chars)
            answer = self.use("answer_chars", self.est.answer_chars)
            n = self.tokens(overhead + letter + answer)
            self.derived.append(
                f"tokens per training example {n:,.0f} = (prompt {overhead:,} characters with "
                f"dataset.schema_in_prompt={schema} + letter + answer) / chars_per_token"
            )
            cap = self.get("dataset.max_tokens")
            if cap and n > float(cap):
                self.warnings.append(
                    f"dataset: the mean example ({n:,.0f} tokens) is over dataset.max_tokens={cap}: "
                    "most examples would be dropped"
                )
            return n

        return self.once("example_tokens", make)


class _Unknown(Exception):
    """The estimate of a stage needs something neither the config nor the assumptions say."""


def _resources(st: PlannedStage) -> tuple[int, int, int, float]:
    """(tasks, tasks at once, GPUs per task, time limit in hours) of a planned stage."""
    r = st.resources
    tasks = st.shards
    parallel = min(tasks, int(r.get("array_parallelism", 64) or 64))
    gpus = int(r.get("gpus_per_node", 0) or 0) * int(r.get("nodes", 1))
    return tasks, parallel, gpus, float(r.get("time_min", 60)) / 60


def _cpu(w: _Work, st: PlannedStage, work: str, cpu_hours: float, cores_per_task: int) -> StageEstimate:
    tasks, parallel, gpus, limit = _resources(st)
    if gpus:
        w.warnings.append(
            f"{st.name}: runs on CPUs here ({work}) but each task holds {gpus} GPU(s) "
            f"(resources.{st.name}.gpus_per_node): pick a CPU resources preset"
        )
    per_task = cpu_hours / tasks / max(1, cores_per_task)
    return StageEstimate(st.name, work, tasks, parallel, gpus, None, cpu_hours, per_task, limit)


def _engine(w: _Work, model: str) -> Engine:
    engine = w.est.engines.get(model)
    if engine is None:
        raise _Unknown(f"no throughput assumed for model {model}: add estimate.engines.{model}")
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "load_min"):
        w.use(f"engines.{model}.{key}", getattr(engine, key))
    return engine


def _check_gpus(w: _Work, st: PlannedStage, backend: dict[str, Any]) -> None:
    """The engine's tensor parallelism fills the GPUs its task holds, and there are GPUs at all."""
    gpus = _resources(st)[2]
    tp = int(backend.get("tensor_parallel_size", 1) or 1)
    if not gpus:
        w.warnings.append(f"{st.name}: no GPUs in resources.{st.name}; the engine rates assume {tp} GPU(s)")
    elif backend.get("kind") == "vllm" and tp != gpus:
        w.warnings.append(
            f"{st.name}: the engine uses tensor_parallel_size={tp} GPUs but each task holds {gpus} "
            f"(resources.{st.name}.gpus_per_node)"
        )


def _gpu(st: PlannedStage, work: str, engine: Engine, tokens_in: float, tokens_out: float) -> StageEstimate:
    tasks, parallel, gpus, limit = _resources(st)
    seconds = tokens_in / engine.prefill_tokens_per_s.value + tokens_out / engine.decode_tokens_per_s.value
    load_h = engine.load_min.value / 60
    task_hours = seconds / tasks / 3600 + load_h
    gpu_hours = (seconds / 3600 + load_h * tasks) * max(1, gpus)
    return StageEstimate(st.name, work, tasks, parallel, gpus, gpu_hours, None, task_hours, limit)


# ---- one function per stage kind: (work, hours) from the counts above


def _cohort(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.patients()
    rate = w.use("cpu.cohort_patients_per_s", w.est.cpu.cohort_patients_per_s)
    return _cpu(w, st, f"{n:,.0f} patients", n / rate / 3600, 1)


def _ingest(w: _Work, st: PlannedStage) -> StageEstimate:
    res = w.patients() * w.use("cpu.resources_per_patient", w.est.cpu.resources_per_patient)
    rate = w.use("cpu.ingest_resources_per_s", w.est.cpu.ingest_resources_per_s)
    cores = int(st.resources.get("cpus_per_task", 1))  # validation runs on every CPU of the task
    return _cpu(w, st, f"{res:,.0f} FHIR resources", res / rate / 3600, cores)


def _sample(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.letters()
    rate = w.use("cpu.sample_specs_per_s", w.est.cpu.sample_specs_per_s)
    return _cpu(w, st, f"{n:,.0f} letter recipes", n / rate / 3600, 1)


def _generate(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.letters()
    if not w.llm_letters():
        rate = w.use("cpu.template_letters_per_s", w.est.cpu.template_letters_per_s)
        return _cpu(w, st, f"{n:,.0f} template letters", n / rate / 3600, 1)
    calls = n * w.calls_per_letter()
    prompt = w.use("generate_prompt_chars", w.est.generate_prompt_chars)
    cap = float(w.get("generate.letters.max_tokens") or 0) or math.inf
    out_per_call = min(w.use("generate_output_tokens", w.est.generate_output_tokens), cap)
    tokens_in, tokens_out = calls * w.tokens(prompt), calls * out_per_call
    model = str(w.get("generate.model.name"))
    engine = _engine(w, model)
    _check_gpus(w, st, w.get("generate.backend") or {})
    work = (
        f"{n:,.0f} letters, {calls:,.0f} LLM calls ({model}): {tokens_in / 1e6:,.1f}M prompt + "
        f"{tokens_out / 1e6:,.1f}M output tokens"
    )
    est = _gpu(st, work, engine, tokens_in, tokens_out)
    if cap < math.inf:
        bound = _gpu(st, work, engine, tokens_in, calls * cap)
        w.derived.append(
            f"generate at its bound (every call writes generate.letters.max_tokens={cap:.0f} tokens): "
            f"{bound.gpu_hours:,.0f} GPU-h, {bound.task_hours or 0:.1f} h per task"
        )
    return est


def _verify(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.letters()
    rate = w.use("cpu.verify_letters_per_s", w.est.cpu.verify_letters_per_s)
    cores = int(st.resources.get("cpus_per_task", 1))  # one worker pool over every CPU of the task
    return _cpu(w, st, f"{n:,.0f} letters", n / rate / 3600, cores)


def _dataset(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.letters() * w.pass_rate()
    if w.get("dataset.include_failed", False):
        n = w.letters()
    w.example_tokens()
    rate = w.use("cpu.dataset_letters_per_s", w.est.cpu.dataset_letters_per_s)
    return _cpu(w, st, f"{n:,.0f} verified letters -> chat examples", n / rate / 3600, 1)


def _train(w: _Work, st: PlannedStage) -> StageEstimate:
    tasks, parallel, gpus, limit = _resources(st)
    examples = w.letters() * w.split("train") * (1.0 if w.get("dataset.include_failed") else w.pass_rate())
    epochs = float(w.get("train.epochs", 1) or 1)
    seen = examples * epochs
    max_steps, batch = w.get("train.max_steps"), int(w.get("train.effective_batch", 1) or 1)
    how = (
        f"{examples:,.0f} train examples (letters x train split x verify pass rate) x {epochs:g} epoch(s) "
        "(train.epochs)"
    )
    if max_steps:
        seen = float(max_steps) * batch
        how = f"train.max_steps={max_steps} x train.effective_batch={batch} examples"
    tokens = seen * w.example_tokens()
    model = str(w.get("train.model.name"))
    params = w.est.train.params_b.get(model)
    if params is None:
        raise _Unknown(f"no parameter count assumed for model {model}: add estimate.train.params_b.{model}")
    n = w.use(f"train.params_b.{model}", params) * 1e9
    mfu = w.use("train.mfu", w.est.train.mfu)
    peak = w.use("train.peak_tflops", w.est.train.peak_tflops) * 1e12
    startup_h = w.use("train.startup_min", w.est.train.startup_min) / 60
    method = str(w.get("train.method", "lora"))
    flops_per_token = (6.0 if method == "full" else 4.0) * n  # train_report.json's MFU convention
    gpu_seconds = tokens * flops_per_token / (mfu * peak)
    ranks = max(1, gpus or st.ranks)
    task_hours = gpu_seconds / ranks / 3600 + startup_h
    w.derived.append(
        f"train tokens {tokens / 1e6:,.1f}M = {how} x tokens per example; "
        f"{flops_per_token / n:.0f}N FLOP per token ({method}) on {ranks} GPU(s) (resources.train)"
    )
    return StageEstimate(
        st.name, f"{tokens / 1e6:,.1f}M tokens, {model} {method}", tasks, parallel, gpus,
        gpu_seconds / 3600 + startup_h * ranks, None, task_hours, limit,
    )  # fmt: skip


def _extract(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.test_letters()
    kind = str(w.get("extract.extractor.kind"))
    if kind == "rules":
        rate = w.use("cpu.rules_letters_per_s", w.est.cpu.rules_letters_per_s)
        return _cpu(w, st, f"{n:,.0f} letters (rules)", n / rate / 3600, 1)
    from clinsynth.extraction.prompts import finetuned_messages, oneshot_messages

    if kind == "finetuned":
        schema = str(w.get("dataset.schema_in_prompt", "compact"))
        messages = finetuned_messages("", schema_in_prompt=schema)
    else:
        schema = str(w.get("extract.extractor.schema_in_prompt", "compact"))
        messages = oneshot_messages("", schema_in_prompt=schema)
    overhead = sum(len(m["content"]) for m in messages)
    tokens_in = n * w.tokens(overhead + w.use("letter_chars", w.est.letter_chars))
    cap = float(w.get("extract.max_tokens") or 0) or math.inf
    answer = min(w.tokens(w.use("answer_chars", w.est.answer_chars)), cap)
    model = str(w.get("extract.model.name") if kind != "finetuned" else w.get("train.model.name"))
    engine = _engine(w, model)
    _check_gpus(w, st, w.get("extract.backend") or {})
    work = (
        f"{n:,.0f} letters ({kind}, {model}): {tokens_in / 1e6:,.1f}M prompt + "
        f"{n * answer / 1e6:,.1f}M output tokens"
    )
    w.derived.append(
        f"extract prompt {overhead:,} characters ({kind}, schema_in_prompt={schema}) + a letter; answer "
        f"{answer:,.0f} tokens = answer_chars / chars_per_token, at most extract.max_tokens"
    )
    return _gpu(st, work, engine, tokens_in, n * answer)


def _evaluate(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.test_letters()
    rate = w.use("cpu.evaluate_docs_per_s", w.est.cpu.evaluate_docs_per_s)
    return _cpu(w, st, f"{n:,.0f} documents scored", n / rate / 3600, 1)


def _export(w: _Work, st: PlannedStage) -> StageEstimate:
    n = w.test_letters()
    rate = w.use("cpu.export_records_per_s", w.est.cpu.export_records_per_s)
    return _cpu(w, st, f"{n:,.0f} predictions -> FHIR Bundles", n / rate / 3600, 1)


#: stage name -> its estimate; a stage without one is listed as such
ESTIMATORS: dict[str, Callable[[_Work, PlannedStage], StageEstimate]] = {
    "cohort": _cohort,
    "ingest": _ingest,
    "sample": _sample,
    "generate": _generate,
    "verify": _verify,
    "dataset": _dataset,
    "train": _train,
    "extract": _extract,
    "evaluate": _evaluate,
    "export": _export,
}


@dataclass
class PlanEstimate:
    gpu: str
    stages: list[StageEstimate]
    missing: dict[str, str]  # stage -> why it has no estimate
    derived: list[str]
    used: dict[str, Assumed | Histogram]
    warnings: list[str]

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours or 0.0 for s in self.stages)

    @property
    def cpu_hours(self) -> float:
        return sum(s.cpu_hours or 0.0 for s in self.stages)


def _left(s: StageEstimate, units: int, n_units: int, array: bool) -> StageEstimate:
    """Only what a launch submits: the missing tasks of an array (a multi-rank job reruns whole)."""
    if not array or units >= n_units or n_units <= 0:
        return s
    share = units / n_units
    s.tasks = units
    s.parallel = min(s.parallel, units)
    s.gpu_hours = None if s.gpu_hours is None else s.gpu_hours * share
    s.cpu_hours = None if s.cpu_hours is None else s.cpu_hours * share
    s.work += f" ({units} of {n_units} tasks left)"
    return s


def estimate_plan(plan: Plan, todo: Mapping[str, tuple[int, int]] | None = None) -> PlanEstimate | None:
    """The estimate of the planned stages, or None when the config selects no `estimate`.

    `todo`: stage -> (units to submit, units in all), the launch's decisions; a stage with none to
    submit (done, reused, running) is not counted. None: every planned stage, whole."""
    raw = plan.plain.get("estimate")
    if not raw:
        return None
    est = Estimate.model_validate(raw)
    w = _Work(est, plan.plain)
    stages: list[StageEstimate] = []
    missing: dict[str, str] = {}
    for st in plan.stages:
        units, n_units = (todo or {}).get(st.name, (1, 1))
        if units == 0:
            missing[st.name] = "not counted: nothing to submit (done, reused or running)"
            continue
        fn = ESTIMATORS.get(st.name)
        if fn is None:
            missing[st.name] = "not estimated: no estimate for this stage"
            continue
        try:
            s = _left(fn(w, st), units, n_units, st.shards > 1)
        except _Unknown as exc:
            missing[st.name] = f"not estimated: {exc}"
            continue
        if s.task_hours is not None and s.task_hours > s.limit_hours:
            w.warnings.append(
                f"{st.name}: ~{s.task_hours:.1f} h per task is over resources.{st.name}.time_min="
                f"{s.limit_hours * 60:.0f} ({s.limit_hours:.1f} h): raise it or add shards"
            )
        stages.append(s)
    return PlanEstimate(est.gpu, stages, missing, w.derived, w.used, w.warnings)


def _h(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if x >= 0.05 else f"{x:.2f}"


def _row(s: StageEstimate) -> tuple[str, ...]:
    tasks = f"{s.tasks} ({s.parallel} at once)" if s.tasks > 1 else "1"
    return (
        s.stage, s.work, tasks, str(s.gpus_per_task or "-"), _h(s.gpu_hours), _h(s.cpu_hours),
        _h(s.task_hours), _h(s.limit_hours), _h(s.wall_hours),
    )  # fmt: skip


def format_estimate(e: PlanEstimate) -> list[str]:
    """Plain lines: the table, what was derived, then every assumption used with its reason."""
    head = ("stage", "work", "tasks", "GPUs/task", "GPU-h", "CPU-h", "h/task", "limit h", "wall h")
    wall = sum(s.wall_hours or 0.0 for s in e.stages)
    rows = [
        head,
        *map(_row, e.stages),
        ("total", "", "", "", _h(e.gpu_hours), _h(e.cpu_hours), "", "", _h(wall)),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = [f"--- estimate: GPU-hours per stage on {e.gpu} (derived from the config; assumptions below) ---"]
    for r in rows:
        cells = zip(r, widths, strict=True)
        out.append(
            "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(cells)).rstrip()
        )
    for stage, why in e.missing.items():
        out.append(f"{stage}: {why}")
    out.append(
        "GPU-h: every GPU a task holds, model load included; wall h: one stage after another, "
        "tasks beyond array_parallelism wait"
    )
    out.append("derived:")
    out += [f"  {d}" for d in e.derived]
    out.append("assumed (conf/estimate/; replace a number once a run measured it):")
    for key, a in e.used.items():
        if isinstance(a, Histogram):
            value = f"{a.mean_capped(None):.2f} letters per patient uncapped"
        else:
            value = f"{a.value:g}"
        out.append(f"  {key} = {value}: {' '.join(a.why.split())}")
    out += [f"warning: estimate: {x}" for x in e.warnings]
    return out
