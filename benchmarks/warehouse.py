"""Warehouse ingest and query speed, against the JSONL + pandas baseline measured in the same run.

    .venv/bin/python benchmarks/warehouse.py [--traces 1000000] [--root DIR] [--baseline-traces 100000]
                                             [--s3 [--s3-traces 200000]]

1. Generates N synthetic traces shaped like long-CoT samples, vectorised as Arrow tables that match
   `warehouse.schema.SCHEMA` exactly (no Python Trace objects): reasoning of ~1-4k characters of
   Zipf-distributed words (so it compresses like text, not to nothing), completion = <think>reasoning
   </think> + answer (as the generators store it), a prompt of 1-4 messages, a scores map of 6-9
   filters, kept / rejected_by / rejected_stage, many run_ids and problem_ids, some journey rows.
2. Ingest: each shard is written as a part file the way `Warehouse.write_part` writes one (same path,
   temporary name, zstd, fsync, rename), then one `Warehouse.refresh()`. Timed with one writer, and
   again with one writer thread per core (the store is built for many writers). Baseline: the same
   table written as JSONL with pandas (`to_pandas().to_json(lines=True)`, fsync'd too), one writer.
   Also against raw `pq.write_table` of the same table with the warehouse's options (zstd, the
   dictionary columns), no temporary name, no fsync, no rename: what the warehouse's discipline costs.
3. Queries: `select * from funnel` and `select count(*) from traces where reasoning like '%word%'`
   through `Warehouse.query`, against the same answers from pandas after `pd.read_json(lines=True)`
   of every JSONL file, load time included (a user pays it on every fresh question).

4. With --s3: object storage. The script starts moto's S3 server (`moto_server`, from the venv of the
   Python running it) on a free local port, creates a bucket, sets the AWS_* variables distill reads,
   and writes the first --s3-traces traces (whole parts; the same tables as above) to
   `Warehouse("s3://<bucket>/wh")`, one writer, against raw `pq.write_table` to the same S3
   filesystem and against the local filesystem's times for the same parts. Then the same queries
   through `Warehouse.query`, whose every call lists the store and builds the views over Arrow
   datasets on it (an S3 warehouse has no catalog file): that listing is in the query times, and is
   also timed alone (`connect()`). The server is killed at the end, also on an error. moto is a
   Python server on this machine, so the S3 numbers bound a real store's throughput per client from
   below; they do not predict it.

Memory: 1M traces are ~5 GB of text (the completion repeats the reasoning). pandas holds all of it
in memory, so the pandas side runs on whole runs making up at most --baseline-traces traces, in a
child process that is killed if its memory passes --max-baseline-gib, and its times are scaled
linearly to N (stated in the output). The answers are checked against DuckDB's on the same runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from distill.warehouse.schema import SCHEMA, SCHEMA_VERSION, from_table, to_table  # noqa: E402
from distill.warehouse.store import DICTIONARY_COLUMNS, Warehouse  # noqa: E402

SEARCH_WORD = "backtrack"  # a rare word of the vocabulary: a selective full-text search
COMMON = ("the so we is of and to a that then it this let me check wait but now add step so number "
          "answer because first second equals which gives sum total each again so if not correct "
          "hmm ok yes right no case term value both multiply divide subtract factor prime root "
          "square equation solve find means x y n k = + - * / 2 3 4 5 10 12 100 . , : ; ( ) "
          "Wait, So Let Hmm, Therefore Alternatively, Actually, \n\n").split(" ")
FILTERS = ["truncation", "rejection", "length", "language", "repetition", "code_in_cot",
           "long_paragraph", "dedup", "decontam"]
REASONS = {  # rejected_by → rejected_stage, with how often a rejected sample gets it
    "wrong_answer": ("rejection", 0.55), "too_long": ("length", 0.08), "language_mixing": ("language", 0.07),
    "repetition": ("repetition", 0.10), "code_in_cot": ("code_in_cot", 0.04),
    "long_paragraph": ("long_paragraph", 0.04), "duplicate": ("dedup", 0.10), "not_selected": ("selection", 0.02),
}
TEACHERS = ["deepseek-ai/DeepSeek-R1", "Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"]
SOURCES = ["numina_math", "gsm8k", "math", "aime", "countdown"]
SYSTEM = "You are a helpful assistant. Think step by step inside <think> </think>, then give the final answer."


# -- synthetic data ------------------------------------------------------------------------------
def _strings(offsets: np.ndarray, data: pa.Buffer | bytes) -> pa.Array:
    """A string array over `data` cut at `offsets` (n + 1 increasing int32 positions), zero-copy."""
    data = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int32)), data)


def make_corpus(rng: np.random.Generator, size: int) -> pa.Buffer:
    """`size` bytes of ASCII text: Zipf-distributed words (common CoT words first, then made-up ones)."""
    vocab_size = 20_000
    lengths = rng.integers(2, 11, vocab_size)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    made_up = _strings(np.concatenate([[0], np.cumsum(lengths)]), letters[rng.integers(0, 26, lengths.sum())].tobytes())
    words = COMMON + made_up.to_pylist()[: vocab_size - len(COMMON)]
    words[3000] = SEARCH_WORD
    vocab = pa.array(words)
    weights = 1.0 / np.arange(1, vocab_size + 1)
    cdf = np.cumsum(weights) / weights.sum()
    chunks, have = [], 0
    while have < size:
        ids = np.searchsorted(cdf, rng.random(2_000_000))
        text = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(ids)], pa.int32()), vocab.take(ids)), " ")
        chunks.append(text[0].as_py().encode())
        have += len(chunks[-1]) + 1
    return pa.py_buffer(b" ".join(chunks)[:size])


def _slices(rng: np.random.Generator, corpus: pa.Buffer, lengths: np.ndarray) -> pa.Array:
    """Consecutive pieces of the corpus with these lengths, from a random place in it."""
    start = int(rng.integers(0, corpus.size - int(lengths.sum()) - 1))
    return _strings(start + np.concatenate([[0], np.cumsum(lengths)]), corpus)


def _hex_ids(rng: np.random.Generator, n: int, width: int = 24) -> pa.Array:
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[rng.integers(0, 16, (n, width))]
    return _strings(np.arange(0, n * width + 1, width), digits.tobytes())


def _numbered(prefix: str, numbers: np.ndarray, width: int = 7) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0"), "")


def _choice(rng: np.random.Generator, values: list, n: int, p=None) -> pa.Array:
    return pa.array(np.asarray(values, dtype=object)[rng.choice(len(values), n, p=p)], pa.string())


def make_shard(rng: np.random.Generator, corpus: pa.Buffer, run: int, shard: int, n: int,
               samples_per_problem: int = 8) -> pa.Table:
    """One shard of run `run`: n samples, `samples_per_problem` per problem, every column of SCHEMA."""
    run_id = f"bench-{run:04d}"
    cols: dict[str, pa.Array] = {}
    problem = (run * 7919 + shard * n // samples_per_problem + np.arange(n) // samples_per_problem) % 200_000
    sample_index = np.arange(n) % samples_per_problem
    cols["trace_id"] = _hex_ids(rng, n)
    cols["run_id"] = pa.array(np.full(n, run_id, dtype=object), pa.string())
    cols["problem_id"] = _numbered("p", problem)
    cols["sample_index"] = pa.array(sample_index, pa.int32())
    journey = rng.random(n) < 0.02
    cols["kind"] = pa.array(np.where(journey, "journey", "sample").astype(object), pa.string())
    n_parents = np.where(journey, 2, 0)
    cols["parents"] = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(n_parents)]), pa.int32()),
                                               cols["trace_id"].take(rng.integers(0, n, n_parents.sum())))
    source = rng.integers(0, len(SOURCES), n)
    cols["source"] = pa.array(np.asarray(SOURCES, dtype=object)[source], pa.string())
    cols["domain"] = pa.array(np.where(source == 4, "countdown", "math").astype(object), pa.string())

    # prompt: [user] | [system, user] | [user, assistant, user] | [system, user, assistant, user]
    patterns = [["user"], ["system", "user"], ["user", "assistant", "user"], ["system", "user", "assistant", "user"]]
    kind = rng.choice(4, n, p=[0.3, 0.4, 0.1, 0.2])
    roles = np.concatenate([np.asarray(patterns[k], dtype=object) for k in range(4)])[
        np.concatenate([np.arange(sum(map(len, patterns[:k])), sum(map(len, patterns[: k + 1]))) for k in kind])]
    n_msgs = np.array([len(p) for p in patterns])[kind]
    content = _slices(rng, corpus, rng.integers(60, 400, len(roles)))
    content = pc.if_else(pa.array(roles == "system"), SYSTEM, content)
    cols["prompt"] = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(n_msgs)]), pa.int32()),
        pa.StructArray.from_arrays([pa.array(roles, pa.string()), content], fields=list(SCHEMA.field("prompt").type.value_type)))
    gold = rng.integers(0, 10_000, n)
    cols["reference"] = pc.cast(pa.array(gold), pa.string())

    cols["teacher"] = pa.array(np.full(n, TEACHERS[run % len(TEACHERS)], dtype=object), pa.string())
    cols["backend"] = pa.array(np.full(n, ["vllm", "openai"][run % 2], dtype=object), pa.string())
    max_tokens = [4096, 8192, 16384][run % 3]
    cols["sampling"] = pa.array(np.full(n, json.dumps({"max_tokens": max_tokens, "n": samples_per_problem, "seed": run,
                                                       "stop": [], "temperature": 0.6, "top_p": 0.95},
                                                      sort_keys=True, separators=(",", ":")), dtype=object), pa.string())
    reasoning_len = rng.integers(1000, 4000, n)
    reasoning = _slices(rng, corpus, reasoning_len)
    finish = np.where(rng.random(n) < 0.05, "length", "stop")
    correct_roll = rng.random(n)
    correct = np.where(correct_roll < 0.6, True, False)
    correct_null = (correct_roll > 0.9) | (finish == "length")
    shown = np.where(correct, gold, gold + rng.integers(1, 50, n))
    answer = pc.binary_join_element_wise("The answer is \\boxed{", pc.cast(pa.array(shown), pa.string()), "}.", "")
    answer = pc.if_else(pa.array(finish == "length"), "", answer)  # truncated: the think block never closed
    cols["completion"] = pc.if_else(
        pa.array(finish == "length"), pc.binary_join_element_wise("<think>", reasoning, ""),
        pc.binary_join_element_wise("<think>", reasoning, "</think>\n\n", answer, ""))
    cols["reasoning"] = reasoning
    cols["answer"] = answer
    cols["finish_reason"] = pa.array(finish.astype(object), pa.string())
    cols["prompt_tokens"] = pa.array(rng.integers(30, 400, n), pa.int32())
    cols["completion_tokens"] = pa.array(np.where(finish == "length", max_tokens, reasoning_len // 4 + 12), pa.int32())
    cols["latency_s"] = pa.array(rng.gamma(2.0, 8.0, n))

    cols["correct"] = pa.array(correct, pa.bool_(), mask=correct_null)
    cols["verifier"] = pa.array(np.where(source == 4, "countdown", "math").astype(object), pa.string())
    cols["verdict_reason"] = pa.array(np.where(correct_null, np.where(finish == "length", "no_answer", "unparsable_gold"),
                                               np.where(correct, "match", "mismatch")).astype(object), pa.string())
    cols["extracted_answer"] = pc.if_else(pa.array(finish == "length"), pa.scalar(None, pa.string()),
                                          pc.cast(pa.array(shown), pa.string()))

    n_scores = rng.integers(6, len(FILTERS) + 1, n)
    present = np.arange(len(FILTERS))[None, :] < n_scores[:, None]
    keys = pa.array(np.broadcast_to(np.asarray(FILTERS, dtype=object), (n, len(FILTERS)))[present], pa.string())
    values = rng.random(len(keys))
    cols["scores"] = pa.MapArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(n_scores)]), pa.int32()), keys,
                                             pa.array(values, mask=rng.random(len(keys)) < 0.03))
    names = list(REASONS)
    p = np.array([REASONS[r][1] for r in names])
    reason = np.asarray(names, dtype=object)[rng.choice(len(names), n, p=p / p.sum())]
    reason = np.where(finish == "length", "truncated", np.where(~correct & ~correct_null, "wrong_answer", reason))
    kept = (finish != "length") & (correct | correct_null) & (rng.random(n) < 0.8)
    stage = np.vectorize({**{r: s for r, (s, _) in REASONS.items()}, "truncated": "truncation"}.get, otypes=[object])(reason)
    cols["kept"] = pa.array(kept)
    cols["rejected_by"] = pa.array(np.where(kept, None, reason), pa.string())
    cols["rejected_stage"] = pa.array(np.where(kept, None, stage), pa.string())
    base_us = 1_790_000_000_000_000 + run * 86_400_000_000
    cols["created_at"] = pa.array(base_us + np.sort(rng.integers(0, 3_600_000_000, n)), pa.int64()).cast(
        SCHEMA.field("created_at").type)
    cols["schema_version"] = pa.array(np.full(n, SCHEMA_VERSION), pa.int16())
    cols["cost_usd"] = pa.array(np.round(rng.random(n) * 0.01, 6), pa.float64())

    missing = [f.name for f in SCHEMA if f.name not in cols]
    if missing:  # a column added to SCHEMA after this benchmark was written: nulls, and say so once
        if missing != NOTED:  # once, not once per part
            print(f"note: SCHEMA has columns this benchmark does not fill, written as nulls: {missing}", file=sys.stderr)
            NOTED[:] = missing
    arrays = [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in SCHEMA]
    return pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, SCHEMA)], schema=SCHEMA)


# -- the two ways to write -----------------------------------------------------------------------
def write_jsonl(root: Path, run_id: str, shard: int, table: pa.Table) -> Path:
    """The baseline: one JSON object per line, one file per shard, as pandas writes it."""
    path = root / "jsonl" / f"run_id={run_id}" / f"part-{shard:05d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_pandas().to_json(path, orient="records", lines=True, date_format="iso")
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return path


NOTED: list[str] = []  # the missing columns already reported

def write_raw(path: str, table: pa.Table, filesystem=None) -> None:
    """The ingest baseline: pyarrow's own write of the table, with the options the warehouse uses for a part
    (Warehouse._write_parquet); no schema check, temporary name, fsync or rename."""
    pq.write_table(table, path, filesystem=filesystem, compression="zstd", use_dictionary=DICTIONARY_COLUMNS)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# -- object storage: moto's S3 server on this machine ---------------------------------------------
MOTO_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class MotoServer:
    """moto's standalone S3 server on 127.0.0.1, in its own process group; the AWS_* variables distill's
    Storage reads point at it while the block runs. Killed when the block ends, however it ends."""

    def __init__(self, bucket: str = "distill-bench"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.proc: subprocess.Popen | None = None
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> Self:
        exe = Path(sys.executable).parent / "moto_server"
        if not exe.exists():
            raise SystemExit(f"--s3 needs moto's server ({exe} is missing): pip install 'moto[server]'")
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:  # start-up takes seconds on a busy machine: poll until the port answers HTTP
                try:
                    urllib.request.urlopen(self.endpoint, timeout=2).close()
                    break
                except urllib.error.HTTPError:  # an answer, if not a 200
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self._log.seek(0)
                        raise SystemExit(f"moto_server did not start on port {self.port}:\n"
                                         f"{self._log.read()[-2000:].decode(errors='replace')}")
                    time.sleep(0.2)
            import boto3

            boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=MOTO_KEYS["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=MOTO_KEYS["AWS_SECRET_ACCESS_KEY"],
                         region_name=MOTO_KEYS["AWS_REGION"]).create_bucket(Bucket=self.bucket)
            for k, v in {"AWS_ENDPOINT_URL": self.endpoint, **MOTO_KEYS}.items():
                self._saved[k] = os.environ.get(k)
                os.environ[k] = v
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()


# -- the pandas side of the queries (runs in a child process) -----------------------------------
def pandas_baseline(files: list[str], word: str) -> dict:
    import pandas as pd

    t = time.perf_counter()
    df = pd.concat([pd.read_json(f, lines=True) for f in files], ignore_index=True)
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    samples = df[df["kind"] == "sample"]  # the funnel counts samples; journey rows have a view of their own
    by = samples["run_id"]
    funnel = pd.DataFrame({
        "problems": samples.groupby("run_id")["problem_id"].nunique(),
        "samples": samples.groupby("run_id").size(),
        "truncated": samples["finish_reason"].eq("length").groupby(by).sum(),
        "correct": samples["correct"].eq(True).groupby(by).sum(),
        "unverifiable": samples["correct"].isna().groupby(by).sum(),
        "kept": samples["kept"].eq(True).groupby(by).sum(),
        "completion_tokens": samples.groupby("run_id")["completion_tokens"].sum(),
    })
    funnel_s = time.perf_counter() - t

    t = time.perf_counter()
    like = int(df["reasoning"].str.contains(word, regex=False).sum())
    like_s = time.perf_counter() - t
    rows = {r: [int(v) for v in vals] for r, vals in zip(funnel.index, funnel.itertuples(index=False))}
    return {"rows": len(df), "load_s": load_s, "funnel_s": funnel_s, "like_s": like_s, "like": like,
            "funnel": rows, "pandas": pd.__version__, "string_dtype": str(df["reasoning"].dtype)}


def run_pandas_child(files: list[Path], word: str, max_gib: float) -> dict:
    """The pandas baseline in its own process, killed if its memory passes max_gib; peak RSS recorded."""
    args = [sys.executable, os.path.abspath(__file__), "--_pandas-baseline", word, *map(str, files)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    try:
        import psutil

        child = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, child.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            if peak > max_gib * 2**30:
                proc.kill()
                raise SystemExit(f"the pandas baseline passed {max_gib} GiB and was stopped: lower --baseline-traces")
            time.sleep(0.1)
    except ImportError:  # no psutil: no watchdog, only the peak the child reports
        pass
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the pandas baseline failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss"] = max(peak, result.get("maxrss", 0))
    return result


# -- the benchmark -------------------------------------------------------------------------------
def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--shard-size", type=int, default=10_000, help="traces per part file")
    ap.add_argument("--shards-per-run", type=int, default=2)
    ap.add_argument("--baseline-traces", type=int, default=100_000,
                    help="at most this many traces (whole runs) for the in-memory pandas side; scaled to --traces")
    ap.add_argument("--max-baseline-gib", type=float, default=12.0, help="stop the pandas child above this RSS")
    ap.add_argument("--writers", type=int, default=os.cpu_count() or 2, help="threads for the parallel ingest row")
    ap.add_argument("--root", help="warehouse root (default: a temporary folder, removed at the end)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--s3", action="store_true",
                    help="also measure an S3 warehouse, on a moto server this script starts and stops")
    ap.add_argument("--s3-traces", type=int, default=200_000,
                    help="with --s3: the first this many traces (whole parts) go to S3 too; moto is a Python "
                         "server that keeps the objects in its memory")
    args = ap.parse_args()

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="distill-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.s3:  # a kill (SIGTERM) unwinds like an error, so the moto server and the temporary folder go too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with MotoServer() if args.s3 else nullcontext() as moto:
            run(args, root, moto)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


def timed_pair(a, b, flip: bool) -> tuple[float, float]:
    """The times of a() and b(), b first when `flip` (alternated, so that neither always goes first)."""
    if flip:
        tb = timed(b)[0]
        return timed(a)[0], tb
    ta = timed(a)[0]
    return ta, timed(b)[0]


def run(args, root: Path, moto: MotoServer | None = None) -> None:
    rng = np.random.default_rng(args.seed)
    n_shards = -(-args.traces // args.shard_size)
    shard_rows = [min(args.shard_size, args.traces - s * args.shard_size) for s in range(n_shards)]
    runs_of = [s // args.shards_per_run for s in range(n_shards)]
    n_base_shards = min(n_shards, max(args.shards_per_run, args.baseline_traces // args.shard_size
                                      // args.shards_per_run * args.shards_per_run))
    base_runs = sorted({f"bench-{runs_of[s]:04d}" for s in range(n_base_shards)})
    wh = Warehouse(root / "warehouse")
    # object storage (--s3): the first n_s3 parts go to an S3 warehouse too; when that is not all of them, a
    # local twin warehouse of the same parts answers the same queries (untimed writes)
    n_s3 = min(n_shards, -(-args.s3_traces // args.shard_size)) if moto else 0
    s3_rows = sum(shard_rows[:n_s3])
    s3 = Warehouse(f"s3://{moto.bucket}/wh") if moto else None
    twin = Warehouse(root / "s3-twin") if moto and n_s3 < n_shards else None
    (root / "raw").mkdir(exist_ok=True)

    t = time.perf_counter()
    corpus = make_corpus(rng, 256 * 2**20)
    print(f"corpus: {gib(corpus.size)} of text in {time.perf_counter() - t:.1f} s; writing {args.traces:,} traces "
          f"in {n_shards} parts to {root}", file=sys.stderr)

    # The same tables go three ways: parts with one writer, parts again with `writers` threads
    # (overwriting the same files with the same bytes), and JSONL for the baseline's runs. With the one
    # writer, each table is also written by raw pq.write_table (then fsync'd, timed apart, and deleted),
    # and with --s3 the first n_s3 to S3, by the warehouse and raw, the order alternating part by part.
    one_s = par_s = jsonl_s = gen_s = pq_s = fsync_s = 0.0
    s3_one_s = s3_pq_s = sub_one_s = sub_pq_s = 0.0  # S3, and the local times of the same parts
    raw_bytes = jsonl_rows = sub_bytes = 0
    pool = ThreadPoolExecutor(args.writers)
    for first in range(0, n_shards, args.writers):
        batch = range(first, min(first + args.writers, n_shards))
        t = time.perf_counter()
        tables = {s: make_shard(rng, corpus, runs_of[s], s, shard_rows[s]) for s in batch}
        gen_s += time.perf_counter() - t
        raw_bytes += sum(pc.sum(pc.binary_length(tb[c])).as_py() or 0 for tb in tables.values()
                         for c in ("reasoning", "completion", "answer"))
        for s, tb in tables.items():
            run_id, raw = f"bench-{runs_of[s]:04d}", root / "raw" / f"part-{s:05d}.parquet"
            one, bare = timed_pair(partial(wh.write_table, run_id, s, tb), partial(write_raw, str(raw), tb), s % 2 == 1)
            one_s, pq_s = one_s + one, pq_s + bare
            fsync_s += timed(fsync_file, raw)[0]
            raw.unlink()
            if s < n_s3:
                s3_raw = f"{s3.storage.base}/raw/part-{s:05d}.parquet"
                up, bare_up = timed_pair(partial(s3.write_table, run_id, s, tb),
                                         partial(write_raw, s3_raw, tb, s3.storage.fs), s % 2 == 1)
                s3_one_s, s3_pq_s, sub_one_s, sub_pq_s = s3_one_s + up, s3_pq_s + bare_up, sub_one_s + one, sub_pq_s + bare
                s3.storage.fs.delete_file(s3_raw)
                sub_bytes += Path(wh.part_path(run_id, s)).stat().st_size
                if twin:
                    twin.write_table(run_id, s, tb)
        t = time.perf_counter()
        list(pool.map(lambda s: wh.write_table(f"bench-{runs_of[s]:04d}", s, tables[s]), batch))
        par_s += time.perf_counter() - t
        for s, tb in tables.items():
            if s < n_base_shards:
                jsonl_s += timed(write_jsonl, root, f"bench-{runs_of[s]:04d}", s, tb)[0]
                jsonl_rows += tb.num_rows
        print(f"\r  {min(first + args.writers, n_shards)}/{n_shards} parts", end="", file=sys.stderr, flush=True)
    pool.shutdown()
    print(file=sys.stderr)
    refresh_s = timed(wh.refresh)[0]
    if moto:
        s3_refresh_s = timed(s3.refresh)[0]
        sub_refresh_s = timed(twin.refresh)[0] if twin else refresh_s
    parquet_bytes = sum(p.stat().st_size for p in wh.parts())
    jsonl_files = sorted((root / "jsonl").glob("run_id=*/part-*.jsonl"))
    jsonl_bytes = sum(p.stat().st_size for p in jsonl_files)

    # today's API for comparison: Trace objects through write_part (to_table included), a side root
    sample = make_shard(rng, corpus, 0, 0, min(5_000, args.shard_size))
    traces = from_table(sample)
    assert to_table(traces).equals(sample), "the vectorised table differs from what to_table makes of its rows"
    side = Warehouse(root / "write_part")
    write_part_s = timed(side.write_part, "bench-0000", 0, traces)[0]
    del traces

    # queries: distill through Warehouse.query (a fresh read-only connection each time, as the CLI does)
    total = wh.query("select count(*), count(distinct trace_id) from traces")[1][0]
    assert total == (args.traces, args.traces), f"the catalog sees {total}, expected {args.traces} rows"
    like_sql = f"select count(*) from traces where reasoning like '%{SEARCH_WORD}%'"
    funnel_times, like_times = [], []
    for _ in range(3):
        funnel_times.append(timed(wh.query, "select * from funnel")[0])
        like_times.append(timed(wh.query, like_sql)[0])
    _, funnel_rows = wh.query("select * from funnel order by run_id")
    like_count = wh.query(like_sql)[1][0][0]
    placeholders = ", ".join("?" * len(base_runs))
    _, sub_funnel = wh.query(f"select run_id, problems, samples, truncated, correct, unverifiable, kept, "
                             f"completion_tokens from funnel where run_id in ({placeholders}) order by run_id", base_runs)
    sub_like = wh.query(f"{like_sql} and run_id in ({placeholders})", base_runs)[1][0][0]

    if moto:  # the same queries on S3, each call listing the store and building its views (no catalog file)
        near = twin or wh  # the local warehouse of the same parts
        s3_total = s3.query("select count(*), count(distinct trace_id) from traces")[1][0]
        assert s3_total == (s3_rows, s3_rows), f"the S3 warehouse sees {s3_total}, expected {s3_rows} rows"
        s3_connect, s3_funnel, s3_like, near_funnel, near_like = [], [], [], [], []
        for _ in range(3):
            s3_connect.append(timed(lambda: s3.connect().close())[0])
            s3_funnel.append(timed(s3.query, "select * from funnel")[0])
            s3_like.append(timed(s3.query, like_sql)[0])
            if twin:
                near_funnel.append(timed(twin.query, "select * from funnel")[0])
                near_like.append(timed(twin.query, like_sql)[0])
        if not twin:
            near_funnel, near_like = funnel_times, like_times
        s3_answer = s3.query("select * from funnel order by run_id")[1]
        assert s3_answer == near.query("select * from funnel order by run_id")[1], "S3 and local disagree on the funnel"
        s3_matches, near_matches = s3.query(like_sql)[1][0][0], near.query(like_sql)[1][0][0]
        assert s3_matches == near_matches, f"S3 counts {s3_matches} matches, local {near_matches}"

    # the pandas side, on the baseline's runs, checked against DuckDB on the same runs
    print(f"pandas baseline on {jsonl_rows:,} traces ({len(base_runs)} runs) ...", file=sys.stderr)
    base = run_pandas_child(jsonl_files, SEARCH_WORD, args.max_baseline_gib)
    assert base["rows"] == jsonl_rows
    assert {r[0]: list(r[1:]) for r in sub_funnel} == base["funnel"], "pandas and DuckDB disagree on the funnel"
    assert base["like"] == sub_like, f"pandas counts {base['like']} matches, DuckDB {sub_like}"
    scale = args.traces / jsonl_rows

    ingest_one = args.traces / (one_s + refresh_s)
    ingest_par = args.traces / (par_s + refresh_s)
    ingest_jsonl = jsonl_rows / jsonl_s
    ingest_pq = args.traces / pq_s
    funnel_s, like_s = statistics.median(funnel_times), statistics.median(like_times)
    base_funnel = (base["load_s"] + base["funnel_s"]) * scale
    base_like = (base["load_s"] + base["like_s"]) * scale

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    n = f"{args.traces:,}"
    print()
    print(f"### distill warehouse vs JSONL + pandas, {n} traces, {os.cpu_count()} cores\n")
    print("| measure | distill | JSONL + pandas | distill vs baseline | target | met |")
    print("|---|---|---|---|---|---|")
    print(f"| ingest, 1 writer (traces/s) | {ingest_one:,.0f} | {ingest_jsonl:,.0f} | {ingest_one / ingest_jsonl:.1f}x "
          f"| ≥ 50,000/s | {ok(ingest_one >= 50_000)} |")
    print(f"| ingest, {args.writers} writer threads (traces/s) | {ingest_par:,.0f} | (1 writer) {ingest_jsonl:,.0f} "
          f"| {ingest_par / ingest_jsonl:.1f}x | ≥ 50,000/s | {ok(ingest_par >= 50_000)} |")
    print(f"| ingest, 1 writer, vs raw `pq.write_table` (traces/s) | {ingest_one:,.0f} | (raw pq.write_table) "
          f"{ingest_pq:,.0f} | {ingest_one / ingest_pq:.2f}x | ≥ 0.8x | {ok(ingest_one / ingest_pq >= 0.8)} |")
    print(f"| funnel query, all {n} (s) | {funnel_s:.3f} | {base_funnel:.1f} | {base_funnel / funnel_s:.0f}x faster "
          f"| < 1 s, ≥ 20x | {ok(funnel_s < 1 and base_funnel / funnel_s >= 20)} |")
    print(f"| `reasoning like '%{SEARCH_WORD}%'`, all {n} (s) | {like_s:.3f} | {base_like:.1f} "
          f"| {base_like / like_s:.0f}x faster | ≥ 20x | {ok(base_like / like_s >= 20)} |")
    if moto:
        m = f"{s3_rows:,}"
        s3_ingest = s3_rows / (s3_one_s + s3_refresh_s)
        s3_ingest_pq = s3_rows / s3_pq_s
        near_ingest = s3_rows / (sub_one_s + sub_refresh_s)
        sf, sl = statistics.median(s3_funnel), statistics.median(s3_like)
        nf, nl = statistics.median(near_funnel), statistics.median(near_like)
        print(f"| S3 (moto): ingest, 1 writer, vs raw `pq.write_table` to S3, {m} (traces/s) | {s3_ingest:,.0f} "
              f"| (raw pq.write_table to S3) {s3_ingest_pq:,.0f} | {s3_ingest / s3_ingest_pq:.2f}x | — | |")
        print(f"| S3 (moto) vs local: ingest, 1 writer, same {m} (traces/s) | {s3_ingest:,.0f} | (local) "
              f"{near_ingest:,.0f} | {s3_ingest / near_ingest:.2f}x | — | |")
        print(f"| S3 (moto) vs local: funnel query, same {m}, listing included (s) | {sf:.3f} | (local) {nf:.3f} "
              f"| {sf / nf:.1f}x slower | — | |")
        print(f"| S3 (moto) vs local: `reasoning like '%{SEARCH_WORD}%'`, same {m}, listing included (s) | {sl:.3f} "
              f"| (local) {nl:.3f} | {sl / nl:.1f}x slower | — | |")
    print()
    print("Details:")
    print(f"- data: {n} traces in {len(wh.parts())} parts, {len(funnel_rows)} runs, "
          f"{wh.query('select count(distinct problem_id) from traces')[1][0][0]:,} problems; "
          f"{gib(raw_bytes)} of reasoning+completion+answer text; Parquet {gib(parquet_bytes)} on disk "
          f"({raw_bytes / parquet_bytes:.1f}x smaller than the text); the search word is in {like_count:,} reasonings.")
    print(f"- distill ingest = part writes (write_part's pattern: zstd, fsync, rename) + one refresh "
          f"({refresh_s:.2f} s): 1 writer {one_s:.1f} s, {args.writers} threads {par_s:.1f} s; generating the "
          f"tables took {gen_s:.1f} s and is not counted. Today's API, Trace objects through write_part "
          f"(to_table included): {sample.num_rows / write_part_s:,.0f} traces/s on {sample.num_rows:,} traces.")
    print(f"- raw pq.write_table of every part (zstd, the dictionary columns; no schema check, temporary name, "
          f"fsync or rename), 1 writer, alternating with the warehouse's write part by part: {pq_s:.1f} s; an fsync "
          f"of each raw file afterwards took {fsync_s:.1f} s more ({args.traces / (pq_s + fsync_s):,.0f} traces/s "
          f"with it: the warehouse's 1 writer is {ingest_one / (args.traces / (pq_s + fsync_s)):.2f}x of raw + fsync).")
    print(f"- distill queries: median of 3 through Warehouse.query; funnel {', '.join(f'{x:.3f}' for x in funnel_times)} s, "
          f"like {', '.join(f'{x:.3f}' for x in like_times)} s.")
    print(f"- baseline ingest: to_pandas().to_json(lines=True) + fsync, 1 writer, measured on the "
          f"{jsonl_rows:,} traces of the baseline's runs ({gib(jsonl_bytes)} of JSONL).")
    subset = (f"on {base['rows']:,} traces ({len(base_runs)} whole runs), NOT all {n}, to keep memory safe; the "
              f"table scales its times by {scale:.2f} (linear in rows)" if scale != 1 else f"on all {n} traces")
    print(f"- baseline queries: pandas {base['pandas']} (strings as {base['string_dtype']}) in a child process, "
          f"measured {subset}; peak RSS {gib(base['peak_rss'])}. Measured: read_json of {len(jsonl_files)} files "
          f"{base['load_s']:.1f} s, funnel {base['funnel_s']:.2f} s, str.contains {base['like_s']:.2f} s; each query "
          f"counts the load, as a fresh session pays it. pandas' answers equal DuckDB's on the same runs "
          f"(funnel rows and match count).")
    if moto:
        from importlib.metadata import version

        twin_note = (f"a local twin warehouse of the same {n_s3} parts (written untimed) answered the local side"
                     if twin else f"the local side is the main warehouse ({n_s3} parts, all of them)")
        print(f"- S3: moto_server {version('moto')} on 127.0.0.1 (a Python server on this machine, objects in its memory, "
              f"sharing the cores with this script; so a lower bound for a real store's throughput per client, not a "
              f"prediction), pyarrow's S3FileSystem, Warehouse('s3://{moto.bucket}/wh'). Ingest: the first {n_s3} parts "
              f"({m} traces, {gib(sub_bytes)} of Parquet), 1 writer, alternating part by part with raw pq.write_table "
              f"to the same S3FileSystem: write_table {s3_one_s:.1f} s + refresh {s3_refresh_s:.2f} s, raw "
              f"{s3_pq_s:.1f} s; the local filesystem on the same parts (the 1-writer pass): write_table "
              f"{sub_one_s:.1f} s + refresh {sub_refresh_s:.2f} s, raw {sub_pq_s:.1f} s.")
        print(f"- S3 queries: median of 3 through Warehouse.query. An S3 warehouse has no catalog file: every "
              f"connection lists the store and builds the views over Arrow datasets, and that is in each query's time; "
              f"connect() alone took {', '.join(f'{x:.3f}' for x in s3_connect)} s. Funnel "
              f"{', '.join(f'{x:.3f}' for x in s3_funnel)} s, like {', '.join(f'{x:.3f}' for x in s3_like)} s; local "
              f"funnel {', '.join(f'{x:.3f}' for x in near_funnel)} s, like {', '.join(f'{x:.3f}' for x in near_like)} s "
              f"({twin_note}). S3's answers equal the local ones (funnel rows, {s3_matches:,} matches).")
    load = os.getloadavg()
    print(f"- machine: {os.cpu_count()} cores, load average {load[0]:.2f} at the end (other work on the machine "
          f"shows up as noise: rerun to see the spread).")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_pandas-baseline":
        import resource

        result = pandas_baseline(sys.argv[3:], sys.argv[2])
        result["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
    else:
        main()
