"""Generation recipes: flat YAML read into typed sections.

A recipe file is flat YAML (`n: 8`, `temperature: 0.7`, …): every key belongs to exactly one section,
so the loader puts it there. A section may also be written as a mapping (`sampling: {n: 8}`). The
sections say what a key means, and which keys make a run what it is:

- identity: `name` and the sections problems, teacher, prompt, sampling, selection, journeys decide
  which problems, which samples and which decisions a run has; they are what the run id hashes;
- execution: the sections serving (which engine serves the teacher, and how) and execution (runners,
  concurrency of shards, the warehouse) never change a sample or a decision, so changing one keeps
  the run id and a rerun resumes instead of starting over.

Validation is one place (`distill.config`): strict types, constraints on the fields, a validator where
a constraint can't say it, and one `ConfigError` line naming the key.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from distill.config import Config, key, read_config, reference_markdown, write_section
from distill.errors import ConfigError
from distill.generators import pick_backend
from distill.verifiers.judge import split_verifier
from distill.warehouse.journey import TEACHER_PROMPT

Number = int | float  # an int stays an int (a sample's identity hashes the value as written)


class Section(Config):
    what = "recipe"


class Problems(Section):
    """Which problems: the dataset and how to read it."""

    dataset: str = key("builtin:addition",
                       "Where problems come from: a local .jsonl/.json/.parquet/.csv file (relative to the recipe's "
                       "folder or the working directory), a Hugging Face dataset id, or builtin:addition.")
    dataset_split: str = key("train", "Split of a Hub dataset (or key of a JSON file).")
    dataset_config: str | None = key(None, "Config name of a Hub dataset.")
    dataset_options: dict = key(help="Options of a built-in task, e.g. {count: 40, digits: [1, 2], seed: 0}.",
                                factory=dict, expected="a mapping")
    question_field: str = key("question", "Column holding the problem text.")
    answer_field: str = key("answer", "Column holding the reference answer.")
    answer_format: str = key("auto", "auto | gsm8k | raw. gsm8k takes the text after '####'; auto does so when it "
                                     "is there.")
    domain: str = key("math", "Domain label stored on every trace.")
    limit: int | None = key(None, "Use only the first N problems.", expected="a whole number >= 1", ge=1)
    import_shape: str | None = key(
        None, "`distill import`: how the source's rows hold traces: messages | sharegpt | openr1 | "
              "prompt_completion; null (or auto) = told from the columns.",
        expected="null, auto, messages, sharegpt, openr1 or prompt_completion")
    import_fields: dict | None = key(
        None, "`distill import`: the source's columns by role, over the shape's defaults, e.g. {question: problem, "
              "answer: solution, completion: response, reasoning: reasoning_content, teacher: model, generations: "
              "outputs, messages: chat}.", expected="null or a mapping of role to column")

    @field_validator("import_shape")
    @classmethod
    def _import_shape(cls, v):
        from distill.generators.imported import SHAPES

        if v is not None and v != "auto" and v not in SHAPES:
            raise ValueError(f"null, auto or one of {', '.join(SHAPES)}")
        return None if v == "auto" else v  # one way of saying "detect", so one run id

    @field_validator("import_fields")
    @classmethod
    def _import_fields(cls, v):
        from distill.generators.imported import ROLES

        if v is not None and (any(k not in ROLES or not isinstance(c, str) or not c for k, c in v.items())):
            raise ValueError(f"a mapping of role ({', '.join(ROLES)}) to a column name")
        return v or None


class Teacher(Section):
    """Which model writes the samples (part of every sample's identity)."""

    model: str = key("smollm2-135m", "Teacher: an alias (smollm2-135m, the embedded default), a Hugging Face id or "
                                     "a local path.")


class Prompt(Section):
    """What the teacher is shown: system prompt, worked examples, the user turn."""

    system_prompt: str | None = key(None, "System message of every prompt.")
    few_shot: list = key(help="Example turns shown before each problem: a list of {question, answer}.", factory=list)
    prompt_template: str = key("{question}", "User message; {question} is replaced.")

    @field_validator("few_shot")
    @classmethod
    def _few_shot(cls, v):
        if any(not isinstance(s, dict) or set(s) != {"question", "answer"} for s in v):
            raise ValueError("a list of {question: ..., answer: ...}")
        return v

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v):
        if "{question}" not in v:
            raise ValueError("a string containing {question}")
        return v


class Sampling(Section):
    """How samples are drawn (R1 release defaults). All but `n` are part of every sample's identity."""

    n: int = key(4, "Samples per problem.", expected="a whole number >= 1", ge=1)
    temperature: Number = key(0.6, "Sampling temperature (R1: 0.6).", expected="a number >= 0", ge=0)
    top_p: Number = key(0.95, "Nucleus sampling (R1: 0.95).", expected="a number in (0, 1]", gt=0, le=1)
    max_tokens: int = key(1024, "Most new tokens per sample; longer ones are truncated.",
                          expected="a whole number >= 1", ge=1)
    seed: int = key(0, "Sampling seed.")
    stop: list = key(help="Extra stop strings.", factory=list)


class Selection(Section):
    """What is kept: the verifier, the filters and their thresholds, rejection sampling per problem."""

    verifier: str = key("math", "Verifier of the answers: math | code | countdown | format; judge (an LLM judge "
                                "asked whether the final answer equals the reference; needs judge_model) or "
                                "NAME+judge (both verdicts kept, e.g. math+judge).")
    judge_model: str | None = key(None, "verifier judge or NAME+judge: the judge model, as its server names it "
                                        "(served at judge_api_base).", validate_default=True)
    judge_uses: Literal["rules", "judge", "either", "both"] | None = key(
        None, "Which verdict rejection and pass rates go by: rules | judge | either | both (null: rules for "
              "NAME+judge, judge for judge).", expected="rules, judge, either, both or null", validate_default=True)
    filters: list = key(help="Filters in order: names, or {name: {param: value}}. The first that drops a sample "
                             "names it.", factory=lambda: ["truncation", "rejection"])
    keep_per_problem: int | None = key(None, "Rejection sampling: keep at most this many accepted samples per "
                                             "problem (null = all).", expected="a whole number >= 1 or null", ge=1)
    prefer: Literal["first", "shortest", "diverse"] = key(
        "first", "Which accepted samples fill keep_per_problem: first | shortest | diverse.",
        expected="first, shortest or diverse")
    pass_rate_min: Number | None = key(None, "Drop problems whose pass rate (correct / samples) is below this "
                                             "(too hard).", expected="a number in [0, 1] or null", ge=0, le=1)
    pass_rate_max: Number | None = key(None, "Drop problems whose pass rate is above this (too easy).",
                                       expected="a number in [0, 1] or null", ge=0, le=1)
    pass_rate_from: str | None = key(
        None, "Apply pass_rate_min/max to this earlier run's pass rates (e.g. a cheap model's), before generation: "
              "problems outside the range, or that run never sampled, are never sent to the teacher (counted in the "
              "run record's problems_skipped); this run's own pass rates are then recorded, not thresholded.")
    global_dedup: bool | dict | None = key(
        None, "Once every shard is stored: exact and near duplicates over all of the run's kept samples (MinHash "
              "LSH clusters, each keeps its lowest trace_id), decided as one and stored beside the parts (see "
              "`distill dedup`): null | true | {threshold: 0.85, scope: dataset or problem}.",
        expected="null, true or {threshold: a number in (0, 1], scope: dataset or problem}")
    global_decontam: dict | None = key(
        None, "Once every shard is stored: every sample of a problem that overlaps an eval set is dropped, stored "
              "beside the parts (see `distill decontam`): null | {against: [{path: data/x.jsonl, field: problem}], "
              "n: 13, max_share: 0}.", expected="null or {against: [...], n: 13, max_share: 0}")

    @field_validator("verifier")
    @classmethod
    def _verifier(cls, v):
        try:
            split_verifier(v)
        except ConfigError:
            raise ValueError("a verifier name, judge, or NAME+judge (e.g. math+judge)") from None
        return v

    @field_validator("judge_model")
    @classmethod
    def _judge_model(cls, v, info: ValidationInfo):
        if "verifier" not in info.data:
            return v
        judge = split_verifier(info.data["verifier"])[1]
        if judge and not v:
            raise ValueError(f"the judge's model name when verifier is {info.data['verifier']!r}")
        if v is not None and not judge:  # else it would name another run for nothing
            raise ValueError(f"null with verifier {info.data['verifier']!r} (no judge: use NAME+judge)")
        return v

    @field_validator("judge_uses")
    @classmethod
    def _judge_uses(cls, v, info: ValidationInfo):
        if v is None or "verifier" not in info.data:
            return v
        rules, judge = split_verifier(info.data["verifier"])
        if not judge or (rules is None and v != "judge"):
            raise ValueError(f"null or judge with verifier {info.data['verifier']!r}" if judge else
                             f"null with verifier {info.data['verifier']!r} (no judge to use)")
        return v

    def uses(self) -> str:
        """The verdict that decides (filters.basic.verdict): judge_uses, or its default for the verifier."""
        rules, judge = split_verifier(self.verifier)
        return self.judge_uses or ("rules" if rules else "judge")

    @field_validator("filters")
    @classmethod
    def _filters(cls, v):
        if any(not (isinstance(s, str) or (isinstance(s, dict) and len(s) == 1)) for s in v):
            raise ValueError("a list whose entries are each a filter name or {name: {params}}")
        return v

    @field_validator("pass_rate_from")
    @classmethod
    def _pass_rate_from(cls, v, info):
        if v is not None and info.data.get("pass_rate_min") is None and info.data.get("pass_rate_max") is None:
            raise ValueError("a run id, with pass_rate_min or pass_rate_max set (the range it selects problems by)")
        return v

    def own_pass_rate_range(self) -> tuple[float | None, float | None]:
        """The thresholds this run's selection applies to its own pass rates: none when they were applied, before
        generation, to another run's (pass_rate_from)."""
        return (None, None) if self.pass_rate_from else (self.pass_rate_min, self.pass_rate_max)

    @field_validator("global_dedup")
    @classmethod
    def _global_dedup(cls, v):
        """Every way of saying the same thing is one value (so one run id): off is null, on is every option."""
        if v is None or v is False:
            return None
        opts = {} if v is True else v
        threshold, scope = opts.get("threshold", 0.85), opts.get("scope", "dataset")
        if (set(opts) - {"threshold", "scope"} or isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                or not 0 < threshold <= 1 or scope not in ("dataset", "problem")):
            raise ValueError("null, true or {threshold: a number in (0, 1], scope: dataset or problem}")
        return {"threshold": threshold, "scope": scope}

    @field_validator("global_decontam")
    @classmethod
    def _global_decontam(cls, v):
        if v is None:
            return None
        against, n, max_share = v.get("against"), v.get("n", 13), v.get("max_share", 0.0)
        if (set(v) - {"against", "n", "max_share"} or not isinstance(against, list) or not against
                or any(not isinstance(a, str) and not (isinstance(a, dict) and "path" in a) for a in against)
                or isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(max_share, bool)
                or not isinstance(max_share, (int, float)) or not 0 <= max_share < 1):
            raise ValueError("null or {against: [{path: FILE.jsonl, field: problem}, ...], n: a whole number >= 1, "
                             "max_share: a number in [0, 1)}")
        return {"against": against, "n": n, "max_share": max_share}


class Journeys(Section):
    """Journey-learning rows: a wrong path, noticed, then a right one."""

    journey: Literal["template", "teacher"] | None = key(
        None, "After sampling, build journey rows (a wrong path, noticed, then a right one): null | template "
              "(a reflection grounded in the verifier's finding, then a correct sample) | teacher (the teacher is "
              "shown the wrong path and continues; kept only if the continuation verifies).",
        expected="null, template or teacher")
    journey_max_wrong: int = key(2, "Most wrong branches in one journey (teacher: rounds of asking again after a "
                                    "wrong continuation).", expected="a whole number >= 1", ge=1)
    journey_per_problem: int = key(2, "Most journeys started per problem.", expected="a whole number >= 1", ge=1)
    journey_n: int = key(1, "teacher mode: continuations sampled per wrong path and round; the first that "
                            "verifies is kept.", expected="a whole number >= 1", ge=1)
    journey_prompt: str = key(TEACHER_PROMPT, "teacher mode: the user turn showing the wrong path; {question} and "
                                              "{attempt} are replaced.")
    journey_few_shot: list = key(help="teacher mode: worked corrections shown first, a list of {question, attempt, "
                                      "answer} (the answer continues the attempt: reasoning, </think>, final "
                                      "answer).", factory=list)

    @field_validator("journey_prompt")
    @classmethod
    def _prompt(cls, v):
        if "{attempt}" not in v or "{question}" not in v:
            raise ValueError("a string containing {question} and {attempt}")
        return v

    @field_validator("journey_few_shot")
    @classmethod
    def _few_shot(cls, v):
        if any(not isinstance(s, dict) or set(s) != {"question", "attempt", "answer"} for s in v):
            raise ValueError("a list of {question: ..., attempt: ..., answer: ...}")
        return v


class Serving(Section):
    """How the teacher is served: the engine and its settings, or the API server. Never part of a sample's
    identity: the model is the same model whichever engine, precision or server runs it."""

    backend: str = key("auto", "auto | vllm | transformers | openai. auto = openai when api_base is set, else vllm "
                               "if installed, else transformers.")
    dtype: str = key("bfloat16", "Weights dtype for the teacher.")
    max_model_len: int | None = key(None, "vLLM context length (prompt + output).")
    gpu_memory_utilization: Number | None = key(None, "vLLM memory share; default 0.9 on GPU, 0.4 on CPU.")
    tensor_parallel_size: int = key(1, "vLLM tensor parallel size (GPUs per engine).",
                                    expected="a whole number >= 1", ge=1)
    data_parallel_size: int = key(1, "vLLM data parallel size: engine replicas, each of tensor_parallel_size GPUs "
                                     "(GPUs used = data × tensor). vLLM's offline engine takes > 1 on TPU only.",
                                  expected="a whole number >= 1", ge=1)
    api_base: str | None = key(None, "backend openai: the server's base URL, e.g. http://127.0.0.1:8000/v1 or "
                                     "https://api.deepseek.com/v1.")
    api_key_env: str = key("OPENAI_API_KEY", "backend openai: name of the environment variable holding the API key "
                                             "(never logged or stored).")
    api_mode: Literal["chat", "completions"] = key(
        "chat", "backend openai: chat (/v1/chat/completions) | completions (/v1/completions, chat template applied "
                "locally).", expected="chat or completions")
    tokenizer: str | None = key(None, "backend openai, api_mode completions: alias, path or id whose chat template "
                                      "builds the prompt (default: model).")
    api_send_seed: bool = key(True, "backend openai: send a per-sample seed (turn off for servers that reject or "
                                    "crash on seeds).")
    concurrency: int = key(16, "backend openai: requests in flight at once.", expected="a whole number >= 1", ge=1)
    request_timeout: Number = key(600.0, "backend openai: seconds per request (long CoT takes minutes).",
                                  expected="a number of seconds > 0", gt=0)
    max_retries: int = key(6, "backend openai: retries on 429/5xx/timeouts/dropped connections, with backoff and "
                              "jitter.", expected="a whole number >= 0", ge=0)
    judge_api_base: str | None = key(None, "verifier judge or NAME+judge: the judge's OpenAI-compatible server, e.g. "
                                           "http://127.0.0.1:8001/v1 (null: api_base).")
    judge_api_key_env: str | None = key(None, "Name of the environment variable holding the judge server's API key "
                                              "(null: api_key_env).")
    judge_concurrency: int = key(8, "Judge requests in flight at once.", expected="a whole number >= 1", ge=1)
    price_input_per_mtok: Number | None = key(None, "USD per million prompt tokens; with the output price, cost is "
                                                    "recorded per sample and run.")
    price_output_per_mtok: Number | None = key(None, "USD per million completion tokens.")


class Execution(Section):
    """Where and how the work runs, and where it is stored. Never part of a run's identity."""

    verify_workers: int = key(2, "Processes for verification of large batches.", expected="a whole number >= 1",
                              ge=1)
    task_runner: Literal["threads", "dask", "ray"] = key(
        "threads", "threads | dask | ray: where shard tasks run. dask or ray without dask_address starts a local "
                   "cluster.", expected="threads, dask or ray")
    parallel_shards: int = key(2, "Shards in flight (threads, or local Dask or Ray workers). One engine per process "
                                  "serves them in turn.", expected="a whole number >= 1", ge=1)
    dask_address: str | None = key(None, "Address of an existing Dask scheduler (or Ray cluster) to run shards on.")
    warehouse: str = key("./distill-data", "Warehouse root: a folder, or object storage (s3://bucket/prefix, "
                                           "gs://…, any fsspec URL; endpoint and keys from the AWS variables).")
    workers: int = key(1, "Independent `distill run` processes sharing this run, on one machine or many (set by "
                          "--worker K/N): each takes every workers-th shard; the last to finish builds journeys.",
                       expected="a whole number >= 1", ge=1)
    worker: int = key(0, "Which of the `workers` this process is: 0 to workers - 1.", expected="a whole number >= 0",
                      ge=0)
    dedup_workers: int = key(1, "Processes computing MinHash signatures for global_dedup (worth it on many cores "
                                "for large runs; fewer than 4,096 distinct texts are signed in this process).",
                             expected="a whole number >= 1", ge=1)
    shard_size: int = key(8, "Problems per new shard (one part file). A problem keeps the shard it was first given "
                             "in a run.", expected="a whole number >= 1", ge=1)
    checkpoint_seconds: Number = key(30.0, "Finished samples are written to a checkpoint at least this often while "
                                           "a shard generates (0 = every sample as it finishes): a crash loses at "
                                           "most this much and what was in flight.",
                                     expected="a number of seconds >= 0", ge=0)


# The sections in the order README lists them; the first six (and `name`) are the run's identity.
SECTIONS: dict[str, type[Section]] = {
    "problems": Problems, "teacher": Teacher, "prompt": Prompt, "sampling": Sampling, "selection": Selection,
    "journeys": Journeys, "serving": Serving, "execution": Execution,
}
IDENTITY_SECTIONS = ("problems", "teacher", "prompt", "sampling", "selection", "journeys")
SECTION_OF = {k: s for s, cls in SECTIONS.items() for k in cls.model_fields}
KEYS = ["name", *SECTION_OF]  # every flat key, in order
EXECUTION_KEYS = frozenset(k for k, s in SECTION_OF.items() if s not in IDENTITY_SECTIONS)
# Identity keys that enter the run id only when set (not null): added after run ids were first recorded.
ONLY_WHEN_SET = frozenset({"global_dedup", "global_decontam", "pass_rate_from", "import_shape", "import_fields",
                           "judge_model", "judge_uses"})


class Recipe(Config):
    """A generation recipe: `name` and one typed section per concern (see the module docstring)."""

    what = "recipe"
    name: str = key("run", "Name of the recipe; run ids start with it.")
    problems: Problems = Field(default_factory=Problems)
    teacher: Teacher = Field(default_factory=Teacher)
    prompt: Prompt = Field(default_factory=Prompt)
    sampling: Sampling = Field(default_factory=Sampling)
    selection: Selection = Field(default_factory=Selection)
    journeys: Journeys = Field(default_factory=Journeys)
    serving: Serving = Field(default_factory=Serving)
    execution: Execution = Field(default_factory=Execution)

    @model_validator(mode="before")
    @classmethod
    def _sections_from_flat_keys(cls, data):
        """Flat keys (what recipe files, --set and stored run records hold) go to their sections."""
        if not isinstance(data, dict):
            return data
        out: dict = {}
        for k, v in data.items():
            if k in SECTION_OF:
                section = out.setdefault(SECTION_OF[k], {})
                if isinstance(section, dict):
                    section[k] = v
            elif k in SECTIONS and isinstance(v, dict):
                out.setdefault(k, {}).update(v)
            else:
                out[k] = v  # `name`, a section given whole (a model), or an unknown key pydantic refuses
        return out

    @classmethod
    def key_names(cls) -> list[str]:
        return KEYS

    def to_dict(self) -> dict:
        """The flat mapping a recipe file holds (and run records store)."""
        flat = {"name": self.name}
        for s in SECTIONS:
            flat.update(getattr(self, s).model_dump())
        return flat

    def filter_specs(self) -> list[tuple[str, dict]]:
        return [(s, {}) if isinstance(s, str) else (next(iter(s)), next(iter(s.values())) or {})
                for s in self.selection.filters]

    def identity(self) -> dict:
        """The keys that make a run what it is: which problems, which samples, which decisions. A key added
        after run ids were first recorded (ONLY_WHEN_SET) counts only when it is set: a recipe that leaves
        it out keeps the run id it had, and resumes its run."""
        return {k: v for k, v in self.to_dict().items()
                if k not in EXECUTION_KEYS and not (k in ONLY_WHEN_SET and v is None)}

    def fingerprint(self) -> str:
        """Same problems, samples and decisions, same fingerprint: a rerun lands in the same run and resumes it,
        whatever changed in how or where it runs (the serving and execution sections)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]

    def backend_name(self) -> str:
        """`auto` is the openai backend when the recipe names a server, else vllm if installed, else transformers."""
        s = self.serving
        return "openai" if s.backend == "auto" and s.api_base else pick_backend(s.backend)

    def judge_settings(self) -> dict:
        """The openai backend's settings for the judge: its server (judge_api_base, else api_base), key
        variable and concurrency; temperature 0 and a few tokens are the judge step's own."""
        s = self.serving
        base = s.judge_api_base or s.api_base
        if not base:
            raise ConfigError(f"verifier {self.selection.verifier!r} asks a judge: set judge_api_base, e.g. "
                              "--set judge_api_base=http://127.0.0.1:8001/v1")
        return {"model": self.selection.judge_model, "api_base": base,
                "api_key_env": s.judge_api_key_env or s.api_key_env, "concurrency": s.judge_concurrency,
                "request_timeout": s.request_timeout, "max_retries": s.max_retries}

    def teacher_settings(self) -> dict:
        """What a teacher backend may take from the recipe (each backend picks the keys it declares)."""
        return {"model": self.teacher.model, "seed": self.sampling.seed, **self.serving.model_dump()}


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    data = read_config(path, [*KEYS, *SECTIONS], overrides)
    data.setdefault("name", Path(path).stem)
    return Recipe.build(data)


def recipe_reference() -> str:
    """README's recipe reference: one table per section, generated from the fields."""
    parts = []
    for name, cls in {"run": None, **SECTIONS}.items():
        fields = {"name": Recipe.model_fields["name"]} if cls is None else cls.model_fields
        kind = ("identity" if name == "run" or name in IDENTITY_SECTIONS else "execution: never changes the run id")
        doc = "The run's name." if cls is None else " ".join((cls.__doc__ or "").split())
        parts.append(f"**{name}** ({kind}). {doc}\n\n{reference_markdown(fields)}")
    return "\n\n".join(parts)


def write_readme_reference(readme: Path) -> bool:
    """Rewrite README's recipe reference between its markers; True if it changed."""
    return write_section(readme, "recipe-reference", recipe_reference())


if __name__ == "__main__":  # python -m distill.flows.recipe: refresh README.md's recipe reference
    print("README.md updated" if write_readme_reference(Path("README.md")) else "README.md already current")
