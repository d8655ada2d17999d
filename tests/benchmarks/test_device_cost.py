"""The main job's mesh layout and per-device cost (benchmarks/device_cost.py);
``examples/char_lm.py --devices`` end to end: tests/test_examples.py."""

from jax.sharding import PartitionSpec as P

from benchmarks import device_cost

HLO = """\
  %all-reduce.1 = f32[8,4]{1,0} all-reduce(f32[8,4]{1,0} %x), replica_groups={}
  %ag = (bf16[16]{0}, f32[2]{0}) all-gather-start(bf16[2]{0} %y, f32[1]{0} %z)
  %agd = (bf16[16]{0}, f32[2]{0}) all-gather-done((bf16[16]{0}, f32[2]{0}) %ag)
  %add.3 = f32[8,4]{1,0} add(f32[8,4]{1,0} %a, f32[8,4]{1,0} %b)
  %cp = s8[3]{0} collective-permute(s8[3]{0} %q), source_target_pairs={{0,1}}
"""


def test_collective_bytes_counts_each_collective_once():
  """all-reduce 8*4*4, the all-gather's start (not its done) 16*2 + 2*4,
  collective-permute 3; the add is not a collective."""
  assert device_cost.collective_bytes(HLO) == 128 + 40 + 3


def test_fsdp_spec_splits_the_first_axis_the_mesh_divides():
  assert device_cost.fsdp_spec((8, 3), 4) == P("d")
  assert device_cost.fsdp_spec((3, 8), 4) == P(None, "d")
  assert device_cost.fsdp_spec((3, 5), 4) == P()
  assert device_cost.fsdp_spec((2,), 4) == P()


def test_cost_table_has_a_row_per_optimizer():
  results = {"adamw": dict(flops_ratio=0.3, state_ratio=0.25, collective_mb=1.5)}
  table = device_cost.cost_table(results, 4).splitlines()
  assert table[0].startswith("| optimizer (4 devices) |")
  assert table[2] == "| adamw | 0.300 | 0.250 | 1.50 |"
