"""Recipes: flat YAML read into one dataclass. Every key has help text; unknown keys are errors."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill.warehouse.journey import TEACHER_PROMPT
from distill.errors import ConfigError



@dataclass
class Recipe:
    # what to run
    name: str = field(default="run", metadata={"help": "Name of the recipe; run ids start with it."})
    # problems
    dataset: str = field(default="builtin:addition", metadata={
        "help": "Where problems come from: a local .jsonl/.json/.parquet/.csv file (relative to the recipe's "
                "folder or the working directory), a Hugging Face dataset id, or builtin:addition."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset (or key of a JSON file)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a Hub dataset."})
    dataset_options: dict = field(default_factory=dict, metadata={
        "help": "Options of a built-in task, e.g. {count: 40, digits: [1, 2], seed: 0}."})
    question_field: str = field(default="question", metadata={"help": "Column holding the problem text."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the reference answer."})
    answer_format: str = field(default="auto", metadata={
        "help": "auto | gsm8k | raw. gsm8k takes the text after '####'; auto does so when it is there."})
    domain: str = field(default="math", metadata={"help": "Domain label stored on every trace."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N problems."})
    # teacher
    model: str = field(default="smollm2-135m", metadata={
        "help": "Teacher: an alias (smollm2-135m, the embedded default), a Hugging Face id or a local path."})
    backend: str = field(default="auto", metadata={
        "help": "auto | vllm | transformers | openai. auto = openai when api_base is set, else vllm if installed, "
                "else transformers."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype for the teacher."})
    max_model_len: int | None = field(default=None, metadata={"help": "vLLM context length (prompt + output)."})
    gpu_memory_utilization: float | None = field(default=None, metadata={
        "help": "vLLM memory share; default 0.9 on GPU, 0.4 on CPU."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel size (GPUs per engine)."})
    # API teachers (backend: openai): any OpenAI-compatible server
    api_base: str | None = field(default=None, metadata={
        "help": "backend openai: the server's base URL, e.g. http://127.0.0.1:8000/v1 or https://api.deepseek.com/v1."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "backend openai: name of the environment variable holding the API key (never logged or stored)."})
    api_mode: str = field(default="chat", metadata={
        "help": "backend openai: chat (/v1/chat/completions) | completions (/v1/completions, chat template applied locally)."})
    tokenizer: str | None = field(default=None, metadata={
        "help": "backend openai, api_mode completions: alias, path or id whose chat template builds the prompt "
                "(default: model)."})
    api_send_seed: bool = field(default=True, metadata={
        "help": "backend openai: send a per-sample seed (turn off for servers that reject or crash on seeds)."})
    concurrency: int = field(default=16, metadata={"help": "backend openai: requests in flight at once."})
    request_timeout: float = field(default=600.0, metadata={
        "help": "backend openai: seconds per request (long CoT takes minutes)."})
    max_retries: int = field(default=6, metadata={
        "help": "backend openai: retries on 429/5xx/timeouts/dropped connections, with backoff and jitter."})
    price_input_per_mtok: float | None = field(default=None, metadata={
        "help": "USD per million prompt tokens; with the output price, cost is recorded per sample and run."})
    price_output_per_mtok: float | None = field(default=None, metadata={"help": "USD per million completion tokens."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message of every prompt."})
    few_shot: list = field(default_factory=list, metadata={
        "help": "Example turns shown before each problem: a list of {question, answer}."})
    prompt_template: str = field(default="{question}", metadata={"help": "User message; {question} is replaced."})
    # sampling (R1 release defaults)
    n: int = field(default=4, metadata={"help": "Samples per problem."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (R1: 0.6)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling (R1: 0.95)."})
    max_tokens: int = field(default=1024, metadata={"help": "Most new tokens per sample; longer ones are truncated."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    stop: list = field(default_factory=list, metadata={"help": "Extra stop strings."})
    # verification and filters
    verifier: str = field(default="math", metadata={"help": "Verifier of the answers (math)."})
    filters: list = field(default_factory=lambda: ["truncation", "rejection"], metadata={
        "help": "Filters in order: names, or {name: {param: value}}. The first that drops a sample names it."})
    keep_per_problem: int | None = field(default=None, metadata={
        "help": "Rejection sampling: keep at most this many accepted samples per problem (null = all)."})
    prefer: str = field(default="first", metadata={
        "help": "Which accepted samples fill keep_per_problem: first | shortest | diverse."})
    pass_rate_min: float | None = field(default=None, metadata={
        "help": "Drop problems whose pass rate (correct / samples) is below this (too hard)."})
    pass_rate_max: float | None = field(default=None, metadata={
        "help": "Drop problems whose pass rate is above this (too easy)."})
    # journey learning data
    journey: str | None = field(default=None, metadata={
        "help": "After sampling, build journey rows (a wrong path, noticed, then a right one): null | template "
                "(a reflection grounded in the verifier's finding, then a correct sample) | teacher (the teacher is "
                "shown the wrong path and continues; kept only if the continuation verifies)."})
    journey_max_wrong: int = field(default=2, metadata={
        "help": "Most wrong branches in one journey (teacher: rounds of asking again after a wrong continuation)."})
    journey_per_problem: int = field(default=2, metadata={"help": "Most journeys started per problem."})
    journey_n: int = field(default=1, metadata={
        "help": "teacher mode: continuations sampled per wrong path and round; the first that verifies is kept."})
    journey_prompt: str = field(default=TEACHER_PROMPT, metadata={
        "help": "teacher mode: the user turn showing the wrong path; {question} and {attempt} are replaced."})
    journey_few_shot: list = field(default_factory=list, metadata={
        "help": "teacher mode: worked corrections shown first, a list of {question, attempt, answer} (the answer "
                "continues the attempt: reasoning, </think>, final answer)."})
    verify_workers: int = field(default=2, metadata={"help": "Processes for verification of large batches."})
    # execution
    task_runner: str = field(default="threads", metadata={
        "help": "threads | dask | ray: where shard tasks run. dask without dask_address starts a local cluster."})
    parallel_shards: int = field(default=2, metadata={
        "help": "Shards in flight (threads, or local Dask workers). One engine per process serves them in turn."})
    dask_address: str | None = field(default=None, metadata={
        "help": "Address of an existing Dask scheduler (or Ray cluster) to run shards on."})
    # storage
    warehouse: str = field(default="./distill-data", metadata={"help": "Warehouse root folder."})
    shard_size: int = field(default=8, metadata={
        "help": "Problems per new shard (one part file). A problem keeps the shard it was first given in a run."})
    checkpoint_seconds: float = field(default=30.0, metadata={
        "help": "Finished samples are written to a checkpoint at least this often while a shard generates "
                "(0 = every sample as it finishes): a crash loses at most this much and what was in flight."})

    def __post_init__(self):
        def bad(key, expected):
            raise ConfigError(f"recipe key {key!r}: expected {expected}, got {getattr(self, key)!r}")

        if self.task_runner not in ("threads", "dask", "ray"):
            bad("task_runner", "threads, dask or ray")
        for key in ("n", "max_tokens", "shard_size", "tensor_parallel_size", "verify_workers", "parallel_shards"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "a whole number >= 1")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            bad("limit", "a whole number >= 1")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            bad("temperature", "a number >= 0")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1]")
        if "{question}" not in self.prompt_template:
            bad("prompt_template", "a string containing {question}")
        if not isinstance(self.few_shot, list) or any(
                not isinstance(s, dict) or set(s) != {"question", "answer"} for s in self.few_shot):
            bad("few_shot", "a list of {question: ..., answer: ...}")
        if self.keep_per_problem is not None and (not isinstance(self.keep_per_problem, int) or self.keep_per_problem < 1):
            bad("keep_per_problem", "a whole number >= 1 or null")
        if self.prefer not in ("first", "shortest", "diverse"):
            bad("prefer", "first, shortest or diverse")
        for key in ("pass_rate_min", "pass_rate_max"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, (int, float)) or not 0 <= v <= 1):
                bad(key, "a number in [0, 1] or null")
        if self.api_mode not in ("chat", "completions"):
            bad("api_mode", "chat or completions")
        if not isinstance(self.checkpoint_seconds, (int, float)) or self.checkpoint_seconds < 0:
            bad("checkpoint_seconds", "a number of seconds >= 0")
        for key in ("concurrency", "max_retries"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < (1 if key == "concurrency" else 0):
                bad(key, "a whole number >= " + ("1" if key == "concurrency" else "0"))
        if self.journey not in (None, "template", "teacher"):
            bad("journey", "null, template or teacher")
        for key in ("journey_max_wrong", "journey_per_problem", "journey_n"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "a whole number >= 1")
        if "{attempt}" not in self.journey_prompt or "{question}" not in self.journey_prompt:
            bad("journey_prompt", "a string containing {question} and {attempt}")
        if not isinstance(self.journey_few_shot, list) or any(
                not isinstance(s, dict) or set(s) != {"question", "attempt", "answer"} for s in self.journey_few_shot):
            bad("journey_few_shot", "a list of {question: ..., attempt: ..., answer: ...}")
        if not isinstance(self.dataset_options, dict):
            bad("dataset_options", "a mapping")
        if not isinstance(self.filters, list):
            bad("filters", "a list of filter names or {name: {params}}")
        for spec in self.filters:
            if not (isinstance(spec, str) or (isinstance(spec, dict) and len(spec) == 1)):
                raise ConfigError(f"recipe key 'filters': each entry is a name or {{name: {{params}}}}, got {spec!r}")

    def filter_specs(self) -> list[tuple[str, dict]]:
        return [(s, {}) if isinstance(s, str) else (next(iter(s)), next(iter(s.values())) or {}) for s in self.filters]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The keys that make a run what it is: which problems, which samples, which decisions."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_KEYS}

    def fingerprint(self) -> str:
        """Same problems, samples and decisions, same fingerprint: a rerun lands in the same run and resumes it,
        whatever changed in how or where it runs (EXECUTION_KEYS)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]


KEYS = {f.name: f for f in dataclasses.fields(Recipe)}

# How and where a run executes: none of these changes a sample (its identity is the rendered prompt, the
# teacher, the sampling parameters and its index) nor a decision, so changing one between calls keeps the
# run id, and the run resumes instead of starting over. (The teacher's dtype and engine settings are here
# too: the model is the same model, whichever engine or precision serves it.)
EXECUTION_KEYS = frozenset({
    "backend", "dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size",
    "api_base", "api_key_env", "api_mode", "tokenizer", "api_send_seed", "concurrency", "request_timeout",
    "max_retries", "price_input_per_mtok", "price_output_per_mtok", "verify_workers",
    "task_runner", "parallel_shards", "dask_address", "warehouse", "shard_size", "checkpoint_seconds",
})
assert EXECUTION_KEYS <= set(KEYS), EXECUTION_KEYS - set(KEYS)


def parse_set(pairs: list[str]) -> dict:
    """`--set key=value` overrides; the value is read as YAML (numbers, lists, null)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def read_config(path: str | Path, known: list[str], overrides: dict | None = None, what: str = "recipe") -> dict:
    """A YAML mapping whose keys must all be `known` (as must the --set overrides), overrides applied."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of keys to values")
    for source, keys in ((str(path), data), ("--set", overrides or {})):
        unknown = sorted(set(keys) - set(known))
        if unknown:
            raise ConfigError(unknown_key(source, unknown[0], known, what))
    data.update(overrides or {})
    return data


def unknown_key(source: str, key, known, what: str = "recipe") -> str:
    """One short line: the closest known key when there is one, never the whole list (50-odd keys)."""
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}?" if close else f"every {what} key is listed in README.md"
    return f"{source}: unknown key {key!r} — {hint}"


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    data = read_config(path, list(KEYS), overrides)
    data.setdefault("name", Path(path).stem)
    return Recipe(**data)


def reference_markdown(config: type = Recipe) -> str:
    """A key reference of a config dataclass (the recipe by default; also TrainConfig, PipelineConfig),
    generated from its fields' defaults and help so it cannot drift from the code."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # `|` would end the cell; `<` would start an HTML tag on GitHub and hide `</think>`
        help_text = f.metadata["help"].replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{f.name}` | `{json.dumps(default).replace('|', chr(92) + '|')}` | {help_text} |")
    return "\n".join(rows)


def write_section(readme: Path, name: str, body: str) -> bool:
    """Rewrite what stands between README's `<!-- NAME:start -->` and `<!-- NAME:end -->`; True if it changed."""
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the markers <!-- {name}:start --> and <!-- {name}:end --> on lines of their own")
    new = text[:text.index(start) + len(start)] + body + text[text.index(end):]
    if new != text:
        readme.write_text(new)
    return new != text


def write_readme_reference(readme: Path) -> bool:
    """Rewrite README's recipe reference between its markers; True if it changed."""
    return write_section(readme, "recipe-reference", reference_markdown())


if __name__ == "__main__":  # python -m distill.flows.recipe: refresh README.md's recipe reference
    print("README.md updated" if write_readme_reference(Path("README.md")) else "README.md already current")
