"""benchmarks.memory: the step-time table times the torch references beside gradtx."""

from benchmarks import memory
from benchmarks.workloads import parse_workload


def test_time_table_has_torch_and_bitsandbytes_beside_gradtx():
  table = memory.time_table(parse_workload("gpt:1x32"), rounds=1)
  names = (*memory.TIMED, "torch AdamW (foreach)", "bitsandbytes AdamW8bit")
  rows = [line for line in table.splitlines() if line.startswith("| ") and "x adamw" not in line]
  assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(names)
  assert all(row.count("x |") == 2 for row in rows)  # both ratios filled in
