"""distill export: the dataset TRL reads, its card, reproducibility, and the Hub push over real HTTP."""
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from distill.warehouse.export import export
from distill.errors import DistillError
from distill.warehouse.store import Warehouse

PROMPT = [{"role": "system", "content": "Think, then box."}, {"role": "user", "content": "What is 1 + 1?"},
          {"role": "assistant", "content": "<think>1+1=2</think>\\boxed{2}"}]


@pytest.fixture
def wh_dir(tmp_path, make_trace):
    wh = Warehouse(tmp_path / "wh")
    traces = []
    for p in range(6):
        q = [*PROMPT, {"role": "user", "content": f"What is {p} + 2?"}]
        for i, ok in enumerate([True, False, True, None]):
            ans = p + 2 if ok else p + 3
            traces.append(make_trace(f"<think>{p} and 2 make {ans}.</think>\n\\boxed{{{ans}}}",
                                     trace_id=f"t{p}{i}", run_id="run-a", problem_id=f"p{p}", sample_index=i,
                                     prompt=q, reference=str(p + 2), correct=ok, kept=bool(ok),
                                     verdict_reason="match" if ok else "mismatch", extracted_answer=str(ans),
                                     rejected_by=None if ok else ("wrong_answer" if ok is False else "unverifiable"),
                                     completion_tokens=10 + i))
    wh.write_part("run-a", 0, traces)
    wh.write_run({"run_id": "run-a", "status": "finished", "teacher": "smollm2-135m", "backend": "vllm",
                  "recipe": {"n": 4, "temperature": 0.6, "top_p": 0.95, "dataset": "builtin:addition",
                             "verifier": "math", "filters": ["truncation", "rejection"]},
                  "versions": {"distill": "0.1.0"}, "command": "distill run recipes/default.yaml", "timings": {}})
    wh.refresh()
    return tmp_path / "wh"


def test_shortcut_export_is_the_messages_shape_with_the_question_only(wh_dir, tmp_path):
    res = export(wh_dir, tmp_path / "out")
    assert res.splits == {"train": 12}
    rows = pq.read_table(tmp_path / "out" / "data" / "train-00000-of-00001.parquet").to_pylist()
    user, assistant = rows[0]["messages"]
    assert user["role"] == "user" and user["content"].startswith("What is ") and "Think, then box" not in user["content"]
    assert assistant["content"].startswith("<think>\n") and "\n</think>\n\n\\boxed{" in assistant["content"]


@pytest.mark.slow
def test_round_trip_through_datasets_and_trl_collator(wh_dir, tmp_path):
    import datasets
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from distill.generators.models import resolve_model

    export(wh_dir, tmp_path / "out", test_size=0.3)
    ds = datasets.load_dataset(str(tmp_path / "out"))
    assert set(ds) == {"train", "test"} and len(ds["train"]) + len(ds["test"]) == 12
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    examples = [{"input_ids": tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]}
                for r in ds["train"].select(range(2))]
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(examples)
    assert batch["input_ids"].shape[0] == 2 and batch["labels"].shape == batch["input_ids"].shape


def test_splits_never_share_a_problem(wh_dir, tmp_path):
    export(wh_dir, tmp_path / "out", test_size=0.5, seed=3)
    ids = {s: {r["problem_id"] for r in pq.read_table(tmp_path / "out" / "data" / f"{s}-00000-of-00001.parquet").to_pylist()}
           for s in ("train", "test")}
    assert ids["train"] and ids["test"] and not ids["train"] & ids["test"]


def test_export_is_byte_identical_when_repeated(wh_dir, tmp_path):
    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "out").rglob("*.*"))}

    export(wh_dir, tmp_path / "out", test_size=0.3, command="distill export --out out")
    first = digest()
    export(wh_dir, tmp_path / "out", test_size=0.3, command="distill export --out out", overwrite=True)
    assert digest() == first and len(first) == 3


def test_card_numbers_equal_sql(wh_dir, tmp_path):
    card = export(wh_dir, tmp_path / "out").card
    _, rows = Warehouse(wh_dir).query("select run_id, problems, samples, truncated, correct, unverifiable, kept, "
                                      "completion_tokens from funnel")
    assert f"| {' | '.join(str(v) for v in rows[0])} |" in card
    for text in ("smollm2-135m", '"temperature": 0.6', "| run-a | wrong_answer | 6 |", "| run-a | unverifiable | 6 |",
                 "builtin:addition", "distill run recipes/default.yaml", "| train | 12 |"):
        assert text in card


def test_where_predicate_selects(wh_dir, tmp_path):
    assert export(wh_dir, tmp_path / "out", where="problem_id in ('p0', 'p1')").splits == {"train": 4}


def test_journey_rows_put_a_wrong_path_before_the_correct_one(wh_dir, tmp_path):
    export(wh_dir, tmp_path / "out", variant="journey")
    rows = pq.read_table(tmp_path / "out" / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert len(rows) == 12
    r = next(r for r in rows if r["problem_id"] == "p0")
    think = r["messages"][1]["content"]
    assert think.index("0 and 2 make 3.") < think.index("3 is not right") < think.index("0 and 2 make 2.")
    assert r["parents"][0] == "t01" and r["parents"][1] in ("t00", "t02")


def test_write_in_where_is_refused_and_changes_nothing(wh_dir, tmp_path):
    with pytest.raises(DistillError):
        export(wh_dir, tmp_path / "out", where="true; delete from traces")
    assert Warehouse(wh_dir).query("select count(*) from traces")[1] == [(24,)]
    assert not (tmp_path / "out").exists()


def test_no_rows_and_unknown_runs_are_clear(wh_dir, tmp_path):
    with pytest.raises(DistillError, match="no rows match"):
        export(wh_dir, tmp_path / "out", where="false")
    with pytest.raises(DistillError, match="unknown run 'nope' \\(runs: run-a\\)"):
        export(wh_dir, tmp_path / "out", runs=["nope"])


def test_refuses_to_replace_a_folder_it_did_not_write(wh_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(DistillError, match="not a distill export"):
        export(wh_dir, tmp_path / "out")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_an_earlier_export_is_replaced_only_with_overwrite(wh_dir, tmp_path):
    out = tmp_path / "out"
    run_cli("export", "--out", str(out), "--test-size", "0.5", "--warehouse", str(wh_dir))
    test_split = out / "data" / "test-00000-of-00001.parquet"
    before = test_split.read_bytes()
    r = run_cli("export", "--out", str(out), "--warehouse", str(wh_dir))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "holds an earlier distill export" in r.stderr and "--overwrite" in r.stderr
    assert test_split.read_bytes() == before  # the earlier export, test split included, is untouched
    r = run_cli("export", "--out", str(out), "--overwrite", "--warehouse", str(wh_dir))
    assert r.returncode == 0 and not test_split.exists() and (out / "data" / "train-00000-of-00001.parquet").exists()


class FakeHub(BaseHTTPRequestHandler):
    """Records requests and answers as the Hub API does for create_repo / preupload / commit."""
    log: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.log.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/api/repos/create":
            reply = {"url": f"http://{self.headers['Host']}/datasets/org/set", "name": "org/set"}
        elif "/preupload/" in self.path:
            reply = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                               for f in json.loads(body)["files"]]}
        elif "/commit/" in self.path:
            reply = {"commitUrl": f"http://{self.headers['Host']}/datasets/org/set/commit/abc", "commitOid": "abc"}
        elif self.path.startswith("/api/validate-yaml"):
            reply = {}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_hub_push_over_http_sends_the_files_and_never_shows_the_token(wh_dir, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = "hf_" + "x" * 34
    try:
        proc = run_cli("export", "--out", str(tmp_path / "out"), "--warehouse", str(wh_dir), "--hub", "org/set",
                       "--private", timeout=120,
                       env={"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_TOKEN": token,
                            "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"})
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    paths = [p for p, _, _ in FakeHub.log]
    assert paths[0] == "/api/repos/create" and json.loads(FakeHub.log[0][2]).get("visibility") == "private"
    commit = next(body for p, _, body in FakeHub.log if "/commit/" in p)
    committed = [json.loads(line)["value"]["path"] for line in commit.splitlines() if b'"file"' in line]
    assert sorted(committed) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert all(h.get("authorization") == f"Bearer {token}" for _, h, _ in FakeHub.log)
    assert token not in proc.stdout + proc.stderr
    assert token not in "".join(p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file())
