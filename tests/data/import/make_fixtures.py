"""Writes the import fixtures beside this file: `python tests/data/import/make_fixtures.py`.

Four GSM8K test questions (MIT, see ../README.md) with reasoning written here, some right and some wrong,
in each shape `distill import` reads. tests/test_import.py counts on what each file holds (its docstring
says how many samples are right, wrong, truncated or unverifiable).
"""
import json
from pathlib import Path

HERE = Path(__file__).parent
Q = {
    "janet": "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
             "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
             "duck egg. How much in dollars does she make every day at the farmers' market?",
    "robe": "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?",
    "josh": "Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 in repairs.  "
            "This increased the value of the house by 150%.  How much profit did he make?",
    "james": "James decides to run 3 sprints 3 times a week.  He runs 60 meters each sprint.  How many total meters "
             "does he run a week?",
}
GOLD = {"janet": "18", "robe": "3", "josh": "70000", "james": "540"}
SOLUTION = {  # GSM8K's worked solutions, ending in '#### answer'
    "janet": "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer\u2019s market.\n#### 18",
    "robe": "It takes 2/2=1 bolt of white fiber\nSo the total amount of fabric is 2+1=3 bolts of fabric\n#### 3",
    "josh": "The cost of the house and repairs came out to 80,000+50,000=$130,000\nHe increased the value of the house "
            "by 80,000*1.5=120,000\nSo the new value of the house is 120,000+80,000=$200,000\nSo he made a profit of "
            "200,000-130,000=$70,000\n#### 70000",
    "james": "He sprints 3*3=9 times\nSo he runs 9*60=540 meters\n#### 540",
}
RIGHT = {  # (reasoning, final answer)
    "janet": ("She uses 3 + 4 = 7 eggs, so 16 - 7 = 9 are left. At $2 each that is 9 * 2 = 18 dollars.",
              "She makes $\\boxed{18}$ dollars a day."),
    "robe": ("White fiber is half of 2, so 1 bolt. Total 2 + 1 = 3 bolts.", "It takes $\\boxed{3}$ bolts."),
    "josh": ("Cost 80000 + 50000 = 130000. New value 80000 * 2.5 = 200000. Profit 200000 - 130000 = 70000.",
             "His profit is $\\boxed{70000}$."),
    "james": ("3 sprints 3 times is 9 sprints, 9 * 60 = 540 meters.", "He runs $\\boxed{540}$ meters a week."),
}
WRONG = {
    "janet": ("She uses 3 eggs, so 16 - 3 = 13 are left... wait, I will keep 10. 10 * 2 = 20.",
              "She makes $\\boxed{20}$ dollars a day."),
    "robe": ("White fiber is half as much: 2 / 2 = 1. So 2 bolts of white? Then 2 + 2 = 4.", "It takes $\\boxed{4}$ bolts."),
    "josh": ("The value grew by 150% of 80000, which is 120000, minus the repairs 50000 gives 70000... no, 120000 - "
             "80000 = 40000, then 40000 + 10000 = 50000.", "His profit is $\\boxed{50000}$."),
    "james": ("He runs 3 sprints of 60 meters: 180 meters.", "He runs $\\boxed{180}$ meters a week."),
}


def think(k: str, right: bool) -> str:
    reasoning, answer = (RIGHT if right else WRONG)[k]
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def jsonl(name: str, rows: list[dict]) -> None:
    (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    # messages (TRL/OpenAI chat) with <think> tags and a model column: 5 samples, 3 right, 2 wrong
    jsonl("messages.jsonl", [
        {"messages": [{"role": "user", "content": Q[k]}, {"role": "assistant", "content": think(k, ok)}],
         "answer": GOLD[k], "model": "deepseek-ai/DeepSeek-R1"}
        for k, ok in (("janet", True), ("janet", False), ("robe", True), ("josh", False), ("james", True))])
    # ShareGPT (Bespoke-Stratos style: system column, <|begin_of_thought|> markers, GSM8K solutions as the
    # reference): 5 samples, 3 right, 2 wrong
    system = "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking process."
    stratos = lambda k, ok: ("<|begin_of_thought|>\n\n" + (RIGHT if ok else WRONG)[k][0] + "\n\n<|end_of_thought|>\n\n"
                             "<|begin_of_solution|>\n\n" + (RIGHT if ok else WRONG)[k][1] + "\n\n<|end_of_solution|>")
    jsonl("sharegpt.jsonl", [
        {"system": system, "conversations": [{"from": "human", "value": Q[k]}, {"from": "gpt", "value": stratos(k, ok)}],
         "answer": SOLUTION[k]}
        for k, ok in (("janet", True), ("robe", False), ("josh", True), ("james", False), ("james", True))])
    # prompt/completion columns: 6 samples, 4 right, 1 wrong, 1 with no answer to check (unverifiable)
    jsonl("prompt_completion.jsonl", [
        *({"prompt": Q[k], "completion": think(k, ok), "answer": GOLD[k]}
          for k, ok in (("janet", True), ("robe", True), ("josh", False), ("james", True), ("james", True))),
        {"prompt": "Tom has 3 apples and buys 4 more. How many apples does he have?",
         "completion": "<think>\n3 + 4 = 7.\n</think>\n\nHe has $\\boxed{7}$ apples."}])
    # DeepSeek API logs: the reasoning in the assistant turn's reasoning_content: 4 samples, 3 right, 1 wrong
    jsonl("reasoning_content.jsonl", [
        {"messages": [{"role": "system", "content": "Put the final answer in \\boxed{}."},
                      {"role": "user", "content": Q[k]},
                      {"role": "assistant", "content": (RIGHT if ok else WRONG)[k][1],
                       "reasoning_content": (RIGHT if ok else WRONG)[k][0]}],
         "answer": GOLD[k], "model": "deepseek-reasoner"}
        for k, ok in (("janet", True), ("robe", False), ("josh", True), ("james", True))])
    # OpenR1-Math-220k columns: `generations` (2 per row), `finish_reasons`, `answer` (null for james: the
    # reference is then the solution), and a `messages` column as OpenR1 has. 8 samples: 4 right, 3 wrong,
    # 1 truncated (josh's second: finish_reason length, no </think>)
    import pyarrow as pa
    import pyarrow.parquet as pq

    truncated = "<think>\nCost 80000 + 50000 = 130000. The value grows by 150%, so"
    rows = [("janet", [think("janet", True), think("janet", False)], ["stop", "stop"]),
            ("robe", [think("robe", True), think("robe", True)], ["stop", "stop"]),
            ("josh", [think("josh", False), truncated], ["stop", "length"]),
            ("james", [think("james", True), think("james", False)], ["stop", "stop"])]
    solution = {k: v.rsplit("####", 1)[0] + f"So the answer is $\\boxed{{{GOLD[k]}}}$." for k, v in SOLUTION.items()}
    pq.write_table(pa.Table.from_pylist([
        {"problem": Q[k], "solution": solution[k], "answer": None if k == "james" else GOLD[k],
         "generations": gens, "finish_reasons": fin,
         "messages": [{"role": "user", "content": Q[k]}, {"role": "assistant", "content": gens[0]}]}
        for k, gens, fin in rows]), HERE / "openr1.parquet")


if __name__ == "__main__":
    main()
